//! Trial schedulers (continue or stop a trial after each result) and
//! stoppers.
//!
//! Scores are oriented: higher is better (the controller negates the metric
//! in `min` mode), so the rules below are written once.
//!
//! - `fifo`: every trial runs to its end.
//! - `asha` (Li et al., "A System for Massively Parallel Hyperparameter
//!   Tuning", 2020), in the stopping form of Ray's `AsyncHyperBandScheduler`:
//!   bracket `s` has rungs at `grace_period * reduction_factor^(k + s)` up to
//!   `max_t`; a trial reaching a rung is compared with the values recorded
//!   there before it, and stops when it is below their `(1 - 1/η)` quantile
//!   (linear interpolation, as numpy's `percentile`), i.e. continues only in
//!   the top `1/η`. The first trial at a rung always continues. A trial at
//!   `max_t` stops (it is complete).
//! - `median` (Golovin et al., Google Vizier, 2017): after `grace_period`
//!   iterations, a trial whose best score so far is below the median of the
//!   other trials' running means at the same iteration stops, once at least
//!   `min_samples` other trials have reached it.
//!
//! [`hyperband_brackets`] gives HyperBand's bracket sizes (Li et al., 2018,
//! Algorithm 1).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What the controller answers a trial's result with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// Run the next iteration.
    Continue,
    /// Stop the trial.
    Stop,
}

/// Which scheduler, with its settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SchedulerSpec {
    /// Run every trial to its end.
    #[default]
    Fifo,
    /// Asynchronous successive halving.
    Asha {
        /// The first rung (iterations).
        #[serde(default = "one")]
        grace_period: u64,
        /// η: one trial in η continues past each rung.
        #[serde(default = "three")]
        reduction_factor: f64,
        /// The most iterations a trial runs.
        max_t: u64,
        /// Brackets (trials are spread over them in turn).
        #[serde(default = "one_u32")]
        brackets: u32,
    },
    /// Median stopping.
    Median {
        /// Iterations before a trial can be stopped.
        #[serde(default = "one")]
        grace_period: u64,
        /// Other trials needed at the same iteration.
        #[serde(default = "three_usize")]
        min_samples: usize,
    },
}

fn one() -> u64 {
    1
}
fn one_u32() -> u32 {
    1
}
fn three() -> f64 {
    3.0
}
fn three_usize() -> usize {
    3
}

impl SchedulerSpec {
    /// Checks the settings; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if let SchedulerSpec::Asha {
            grace_period,
            reduction_factor,
            max_t,
            brackets,
        } = *self
        {
            if grace_period == 0 {
                return Err("scheduler.grace_period: must be at least 1".into());
            }
            if !(reduction_factor > 1.0 && reduction_factor.is_finite()) {
                return Err(format!(
                    "scheduler.reduction_factor: must be greater than 1, got {reduction_factor}"
                ));
            }
            if max_t < grace_period {
                return Err(format!(
                    "scheduler.max_t: must be at least grace_period ({grace_period}), got {max_t}"
                ));
            }
            if brackets == 0 {
                return Err("scheduler.brackets: must be at least 1".into());
            }
        }
        Ok(())
    }
}

/// One rung of an ASHA bracket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rung {
    /// The iteration it sits at.
    pub milestone: u64,
    /// Scores recorded there, by trial.
    pub recorded: BTreeMap<u64, f64>,
}

/// A scheduler with its state (serde: saved with the experiment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scheduler {
    spec: SchedulerSpec,
    /// ASHA: the rungs of each bracket, highest milestone first.
    brackets: Vec<Vec<Rung>>,
    /// Median: every trial's scores by iteration.
    history: BTreeMap<u64, Vec<(u64, f64)>>,
}

impl Scheduler {
    /// A scheduler with no trials seen.
    pub fn new(spec: SchedulerSpec) -> Self {
        let brackets = match spec {
            SchedulerSpec::Asha {
                grace_period,
                reduction_factor,
                max_t,
                brackets,
            } => (0..brackets)
                .map(|s| asha_rungs(grace_period, reduction_factor, max_t, s))
                .collect(),
            _ => Vec::new(),
        };
        Self {
            spec,
            brackets,
            history: BTreeMap::new(),
        }
    }

    /// The settings.
    pub fn spec(&self) -> &SchedulerSpec {
        &self.spec
    }

    /// The ASHA rungs (per bracket, highest first).
    pub fn rungs(&self) -> &[Vec<Rung>] {
        &self.brackets
    }

    /// The most iterations this scheduler lets a trial run.
    pub fn max_t(&self) -> Option<u64> {
        match self.spec {
            SchedulerSpec::Asha { max_t, .. } => Some(max_t),
            _ => None,
        }
    }

    /// Decides on `trial`'s result at `iteration` (from 1) with `score`.
    pub fn on_result(&mut self, trial: u64, iteration: u64, score: f64) -> Decision {
        match self.spec {
            SchedulerSpec::Fifo => Decision::Continue,
            SchedulerSpec::Asha {
                reduction_factor,
                max_t,
                ..
            } => {
                if iteration >= max_t {
                    return Decision::Stop;
                }
                let n = self.brackets.len().max(1) as u64;
                let Some(rungs) = self.brackets.get_mut((trial % n) as usize) else {
                    return Decision::Continue;
                };
                let mut decision = Decision::Continue;
                for rung in rungs.iter_mut() {
                    if iteration < rung.milestone || rung.recorded.contains_key(&trial) {
                        continue;
                    }
                    let values: Vec<f64> = rung.recorded.values().copied().collect();
                    if let Some(cutoff) =
                        percentile(&values, (1.0 - 1.0 / reduction_factor) * 100.0)
                        && score < cutoff
                    {
                        decision = Decision::Stop;
                    }
                    rung.recorded.insert(trial, score);
                    break;
                }
                decision
            }
            SchedulerSpec::Median {
                grace_period,
                min_samples,
            } => {
                let mine = self.history.entry(trial).or_default();
                mine.push((iteration, score));
                let best = mine
                    .iter()
                    .map(|&(_, s)| s)
                    .fold(f64::NEG_INFINITY, f64::max);
                if iteration < grace_period {
                    return Decision::Continue;
                }
                let means: Vec<f64> = self
                    .history
                    .iter()
                    .filter(|&(&t, _)| t != trial)
                    .filter_map(|(_, h)| {
                        let upto: Vec<f64> = h
                            .iter()
                            .filter(|&&(i, _)| i <= iteration)
                            .map(|&(_, s)| s)
                            .collect();
                        let reached = h.iter().any(|&(i, _)| i >= iteration);
                        (reached && !upto.is_empty())
                            .then(|| upto.iter().sum::<f64>() / upto.len() as f64)
                    })
                    .collect();
                if means.len() < min_samples {
                    return Decision::Continue;
                }
                match percentile(&means, 50.0) {
                    Some(median) if best < median => Decision::Stop,
                    _ => Decision::Continue,
                }
            }
        }
    }
}

/// The rungs of ASHA bracket `s`, highest milestone first.
fn asha_rungs(grace: u64, eta: f64, max_t: u64, s: u32) -> Vec<Rung> {
    let max_rungs = ((max_t as f64 / grace as f64).ln() / eta.ln() + 1.0 + 1e-9).floor() as i64;
    (0..(max_rungs - i64::from(s)).max(0))
        .rev()
        .map(|k| Rung {
            milestone: (grace as f64 * eta.powi((k + i64::from(s)) as i32)).round() as u64,
            recorded: BTreeMap::new(),
        })
        .collect()
}

/// The `q`-th percentile (0..=100) with linear interpolation between
/// closest ranks, as numpy's default; `None` for no values.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let pos = (q / 100.0).clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos - pos.floor());
    let next = v[(i + 1).min(v.len() - 1)];
    Some(v[i] + (next - v[i]) * frac)
}

/// HyperBand's brackets for a maximum of `max_t` iterations and factor
/// `eta`: `(n, r)` per bracket, most exploratory first: `n` trials start
/// with `r` iterations each (Li et al. 2018, Algorithm 1).
pub fn hyperband_brackets(max_t: u64, eta: u64) -> Vec<(u64, f64)> {
    let r_max = max_t as f64;
    let eta_f = eta as f64;
    let s_max = (r_max.ln() / eta_f.ln() + 1e-9).floor() as u32;
    (0..=s_max)
        .rev()
        .map(|s| {
            let n =
                ((f64::from(s_max + 1) / f64::from(s + 1)) * eta_f.powi(s as i32) - 1e-9).ceil();
            (n as u64, r_max * eta_f.powi(-(s as i32)))
        })
        .collect()
}

/// Stoppers: when a trial, or the whole experiment, ends early.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stoppers {
    /// Iterations per trial at most.
    #[serde(default)]
    pub max_iterations: Option<u64>,
    /// The experiment stops once a trial's metric reaches this (at least it
    /// in `max` mode, at most in `min` mode).
    #[serde(default)]
    pub metric_threshold: Option<f64>,
    /// A trial stops when its metric has not improved for a while.
    #[serde(default)]
    pub plateau: Option<Plateau>,
    /// Seconds for the whole experiment: then running trials are stopped
    /// (external commands killed) and no new one starts.
    #[serde(default)]
    pub time_budget_s: Option<f64>,
}

/// A plateau: `patience` iterations without an improvement over `min_delta`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plateau {
    /// Iterations without improvement before stopping.
    pub patience: u64,
    /// The smallest change counted as an improvement.
    #[serde(default)]
    pub min_delta: f64,
}

impl Stoppers {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_iterations == Some(0) {
            return Err("stop.max_iterations: must be at least 1".into());
        }
        if let Some(t) = self.time_budget_s
            && !(t > 0.0 && t.is_finite())
        {
            return Err(format!("stop.time_budget_s: must be positive, got {t}"));
        }
        if let Some(p) = &self.plateau
            && (p.patience == 0 || p.min_delta.is_nan() || p.min_delta < 0.0)
        {
            return Err("stop.plateau: patience must be at least 1 and min_delta >= 0".into());
        }
        Ok(())
    }

    /// Whether a trial with these oriented `scores` (one per iteration, in
    /// order) stops on its own account.
    pub fn trial_stops(&self, scores: &[f64]) -> bool {
        let it = scores.len() as u64;
        if self.max_iterations.is_some_and(|m| it >= m) {
            return true;
        }
        if let Some(p) = &self.plateau
            && it > p.patience
        {
            let cut = scores.len() - p.patience as usize;
            let before = scores[..cut]
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max);
            let after = scores[cut..]
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max);
            if after <= before + p.min_delta {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asha(grace: u64, eta: f64, max_t: u64, brackets: u32) -> Scheduler {
        Scheduler::new(SchedulerSpec::Asha {
            grace_period: grace,
            reduction_factor: eta,
            max_t,
            brackets,
        })
    }

    #[test]
    fn asha_rungs_sit_at_grace_times_powers_of_eta() {
        let s = asha(1, 3.0, 81, 3);
        let m: Vec<Vec<u64>> = s
            .rungs()
            .iter()
            .map(|b| b.iter().map(|r| r.milestone).collect())
            .collect();
        assert_eq!(
            m,
            [vec![81, 27, 9, 3, 1], vec![81, 27, 9, 3], vec![81, 27, 9]]
        );
        let s = asha(2, 2.0, 20, 1);
        let m: Vec<u64> = s.rungs()[0].iter().map(|r| r.milestone).collect();
        assert_eq!(m, [16, 8, 4, 2]);
    }

    /// Scripted curves: trial t's score at every iteration is `curve[t]`.
    /// With η = 3 only trials in the top third at a rung continue.
    #[test]
    fn asha_continues_only_the_top_third_at_each_rung() {
        let mut s = asha(1, 3.0, 9, 1);
        // Rung 1: scores arrive in this order.
        let at1 = [0.5, 0.2, 0.9, 0.1, 0.6, 0.95, 0.3];
        let mut got = Vec::new();
        for (t, &score) in at1.iter().enumerate() {
            got.push(s.on_result(t as u64, 1, score));
        }
        use Decision::{Continue as C, Stop as S};
        // cutoff = 66.7th percentile of the values before:
        // t0: none -> C; t1: [0.5] -> 0.2 < 0.5 S; t2: [0.2,0.5] cut 0.4 -> C;
        // t3: [0.2,0.5,0.9] cut 0.633 -> S; t4: [.1,.2,.5,.9] cut 0.5 -> C;
        // t5: [.1,.2,.5,.6,.9] cut .567 -> C; t6: [.1,.2,.5,.6,.9,.95] cut .7 -> S.
        assert_eq!(got, [C, S, C, S, C, C, S]);
        // Between rungs every trial continues.
        assert_eq!(s.on_result(0, 2, 0.0), C);
        // Rung 3: 0 first (continues), then 2 better, then 4 worse than both.
        assert_eq!(s.on_result(0, 3, 0.55), C);
        assert_eq!(s.on_result(2, 3, 0.91), C);
        assert_eq!(s.on_result(4, 3, 0.5), S);
        // max_t ends a trial.
        assert_eq!(s.on_result(2, 9, 0.99), S);
        // A trial recorded at a rung is not judged there twice.
        assert_eq!(s.on_result(2, 4, 0.0), C);
    }

    #[test]
    fn asha_keeps_about_one_in_eta_on_random_curves() {
        let mut s = asha(1, 4.0, 16, 1);
        let mut g = crate::rng::SplitMix64::new(5);
        let mut cont = 0;
        let n = 400;
        for t in 0..n {
            if s.on_result(t, 1, g.unit_f64()) == Decision::Continue {
                cont += 1;
            }
        }
        // Top quarter, plus the early arrivals judged on few values.
        assert!((90..=150).contains(&cont), "{cont} of {n} continued");
    }

    #[test]
    fn hyperband_brackets_match_the_paper() {
        // Li et al. 2018, Table 1: R = 81, eta = 3.
        let b = hyperband_brackets(81, 3);
        let n: Vec<u64> = b.iter().map(|x| x.0).collect();
        let r: Vec<f64> = b.iter().map(|x| x.1).collect();
        assert_eq!(n, [81, 34, 15, 8, 5]);
        assert_eq!(r, [1.0, 3.0, 9.0, 27.0, 81.0]);
    }

    #[test]
    fn median_stopping_stops_below_the_median_of_running_means() {
        let mut s = Scheduler::new(SchedulerSpec::Median {
            grace_period: 2,
            min_samples: 3,
        });
        for t in 0..3u64 {
            for i in 1..=4 {
                // Running means at 2: 0.5, 0.6, 0.7.
                assert_eq!(s.on_result(t, i, 0.5 + 0.1 * t as f64), Decision::Continue);
            }
        }
        // Within the grace period: continue whatever the score.
        assert_eq!(s.on_result(9, 1, 0.0), Decision::Continue);
        // Best so far 0.55 < median 0.6: stop.
        assert_eq!(s.on_result(9, 2, 0.55), Decision::Stop);
        // Another trial above the median continues.
        s.on_result(10, 1, 0.0);
        assert_eq!(s.on_result(10, 2, 0.65), Decision::Continue);
    }

    #[test]
    fn stoppers_end_trials_at_max_iterations_and_on_plateaus() {
        let st = Stoppers {
            max_iterations: Some(5),
            plateau: Some(Plateau {
                patience: 2,
                min_delta: 0.01,
            }),
            ..Default::default()
        };
        assert!(!st.trial_stops(&[0.1, 0.2]));
        assert!(!st.trial_stops(&[0.1, 0.2, 0.3]));
        assert!(st.trial_stops(&[0.1, 0.5, 0.505, 0.5]));
        assert!(st.trial_stops(&[0.1, 0.2, 0.3, 0.4, 0.5]));
        assert!(
            Stoppers {
                time_budget_s: Some(-1.0),
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }
}
