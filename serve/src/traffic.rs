//! The traffic split of one model's versions: which version a request
//! without a version goes to.
//!
//! **Smooth weighted round-robin** (nginx's), not random draws: every pick
//! adds each version's weight to its running credit, takes the version
//! with the most credit (the first listed on a tie) and takes the total
//! weight back from it. Over any `total` consecutive picks after a change
//! each version gets exactly its weight, interleaved rather than in runs
//! (weights 90/10: one canary request in every ten), so a split is exact
//! and testable without a seed or a tolerance. Picks are serialised by the
//! split's lock, which holds only arithmetic.

use crate::error::TrafficError;

/// Weights of a model's versions, the running credits, and the stable
/// version a rollback returns to.
#[derive(Debug, Clone)]
pub(crate) struct Split {
    /// `(version, weight, credit)` in the model's version order.
    entries: Vec<(String, u32, i64)>,
    /// The version that last had all the traffic (or the heaviest one of
    /// the first split).
    stable: String,
}

impl Split {
    /// All traffic to `first` among `versions` (which holds it).
    pub(crate) fn new(versions: &[String], first: &str) -> Self {
        Self {
            entries: versions
                .iter()
                .map(|v| (v.clone(), u32::from(v == first) * 100, 0))
                .collect(),
            stable: first.to_owned(),
        }
    }

    /// The next version a request without one goes to.
    pub(crate) fn pick(&mut self) -> Option<String> {
        let total: i64 = self.entries.iter().map(|e| i64::from(e.1)).sum();
        if total == 0 {
            return None;
        }
        let mut best = 0;
        let mut best_credit = i64::MIN;
        for (i, e) in self.entries.iter_mut().enumerate() {
            e.2 += i64::from(e.1);
            if e.1 > 0 && e.2 > best_credit {
                best_credit = e.2;
                best = i;
            }
        }
        let chosen = self.entries.get_mut(best)?;
        chosen.2 -= total;
        Some(chosen.0.clone())
    }

    /// The weights, in version order.
    pub(crate) fn weights(&self) -> Vec<(String, u32)> {
        self.entries.iter().map(|e| (e.0.clone(), e.1)).collect()
    }

    /// The version a rollback sends all traffic to.
    pub(crate) fn stable(&self) -> &str {
        &self.stable
    }

    /// Sets the weights of the versions named (the others get 0) and
    /// restarts the rotation. A version given all the weight becomes the
    /// stable one.
    pub(crate) fn set(
        &mut self,
        model: &str,
        weights: &[(String, u32)],
    ) -> Result<(), TrafficError> {
        let mut next: Vec<(String, u32, i64)> =
            self.entries.iter().map(|e| (e.0.clone(), 0, 0)).collect();
        for (v, w) in weights {
            match next.iter_mut().find(|e| &e.0 == v) {
                Some(e) => e.1 = *w,
                None => {
                    return Err(TrafficError::UnknownVersion {
                        model: model.to_owned(),
                        version: v.clone(),
                    });
                }
            }
        }
        let total: u64 = next.iter().map(|e| u64::from(e.1)).sum();
        if total == 0 {
            return Err(TrafficError::NoWeight(model.to_owned()));
        }
        if total > u64::from(u32::MAX) {
            return Err(TrafficError::TooHeavy(model.to_owned()));
        }
        let mut live = next.iter().filter(|e| e.1 > 0);
        if let (Some(only), None) = (live.next(), live.next()) {
            self.stable = only.0.clone();
        }
        self.entries = next;
        Ok(())
    }

    /// Makes `version` the stable one again (a canary given all the
    /// traffic before its decision is not stable yet).
    pub(crate) fn keep_stable(&mut self, version: &str) {
        if self.entries.iter().any(|e| e.0 == version) {
            self.stable = version.to_owned();
        }
    }

    /// Adds `version` with weight 0 (requests reach it once a change
    /// gives it weight).
    pub(crate) fn add(&mut self, version: &str) {
        if !self.entries.iter().any(|e| e.0 == version) {
            self.entries.push((version.to_owned(), 0, 0));
        }
    }

    /// Removes `version`; refused while it has weight or is the stable one.
    pub(crate) fn remove(&mut self, model: &str, version: &str) -> Result<(), TrafficError> {
        let Some(at) = self.entries.iter().position(|e| e.0 == version) else {
            return Err(TrafficError::UnknownVersion {
                model: model.to_owned(),
                version: version.to_owned(),
            });
        };
        if self.entries[at].1 > 0 || self.stable == version {
            return Err(TrafficError::InUse {
                model: model.to_owned(),
                version: version.to_owned(),
            });
        }
        self.entries.remove(at);
        Ok(())
    }

    /// All traffic back to the stable version; answers it.
    pub(crate) fn rollback(&mut self, model: &str) -> Result<String, TrafficError> {
        let stable = self.stable.clone();
        self.set(model, &[(stable.clone(), 100)])?;
        Ok(stable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(weights: &[(&str, u32)]) -> Split {
        let names: Vec<String> = weights.iter().map(|w| w.0.to_owned()).collect();
        let mut s = Split::new(&names, &names[0]);
        let w: Vec<(String, u32)> = weights.iter().map(|w| (w.0.to_owned(), w.1)).collect();
        assert!(s.set("m", &w).is_ok());
        s
    }

    #[test]
    fn exact_over_one_round_and_interleaved() {
        let mut s = split(&[("1", 90), ("2", 10)]);
        let picks: Vec<String> = (0..100).filter_map(|_| s.pick()).collect();
        assert_eq!(picks.iter().filter(|v| *v == "2").count(), 10);
        // Never two canary picks in a row at 90/10.
        assert!(picks.windows(2).all(|w| !(w[0] == "2" && w[1] == "2")));
        let mut s = split(&[("1", 50), ("2", 50)]);
        let picks: Vec<String> = (0..10).filter_map(|_| s.pick()).collect();
        assert_eq!(picks, ["1", "2", "1", "2", "1", "2", "1", "2", "1", "2"]);
    }

    #[test]
    fn stable_follows_full_splits_and_rollback_returns_to_it() {
        let mut s = split(&[("1", 100), ("2", 0)]);
        assert_eq!(s.stable(), "1");
        let w = vec![("2".to_owned(), 20), ("1".to_owned(), 80)];
        assert!(s.set("m", &w).is_ok());
        assert_eq!(s.stable(), "1");
        assert_eq!(s.rollback("m").ok().as_deref(), Some("1"));
        assert!((0..7).all(|_| s.pick().as_deref() == Some("1")));
        assert!(s.set("m", &[("2".to_owned(), 1)]).is_ok());
        assert_eq!(s.stable(), "2");
        assert!(matches!(
            s.set("m", &[("3".to_owned(), 1)]),
            Err(TrafficError::UnknownVersion { .. })
        ));
        assert!(matches!(
            s.set("m", &[("1".to_owned(), 0)]),
            Err(TrafficError::NoWeight(_))
        ));
        // A refused change leaves the split as it was.
        assert_eq!(s.pick().as_deref(), Some("2"));
    }
}
