//! Searchers: which hyper-parameters the next trial gets.
//!
//! - `grid`: one pass over the grid parameters' product; other parameters
//!   are drawn at random.
//! - `random`: every parameter drawn from its domain (grid parameters go
//!   through the grid in turn).
//! - `tpe`: the Tree-structured Parzen Estimator (Bergstra et al., 2011) in
//!   its univariate form (hyperopt's and Optuna's default): after
//!   `n_startup` random trials, the observations are split into the best
//!   `ceil(gamma * n)` ("good") and the rest; per parameter, a Parzen
//!   estimator (a mixture of Gaussians at the observed points plus a wide
//!   prior) is fitted to each part, `n_candidates` values are drawn from
//!   the good one, and the value with the largest ratio `l(x) / g(x)` wins.
//!
//! The whole searcher (spec, space, generator state, observations) is serde,
//! so the experiment store saves it and a resumed experiment continues with
//! the very next suggestion.

use serde::{Deserialize, Serialize};

use super::space::{Domain, Params, SearchSpace};
use crate::rng::SplitMix64;

/// Which searcher, with its settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SearcherSpec {
    /// The grid.
    Grid,
    /// Random search.
    #[default]
    Random,
    /// TPE.
    Tpe {
        /// Random trials before TPE starts modelling.
        #[serde(default = "n_startup")]
        n_startup: usize,
        /// Fraction of observations counted as good.
        #[serde(default = "gamma")]
        gamma: f64,
        /// Candidates drawn from the good estimator per parameter.
        #[serde(default = "n_candidates")]
        n_candidates: usize,
    },
}

fn n_startup() -> usize {
    10
}
fn gamma() -> f64 {
    0.25
}
fn n_candidates() -> usize {
    24
}

impl SearcherSpec {
    /// TPE with the defaults (`n_startup` 10, `gamma` 0.25, 24 candidates).
    pub fn tpe() -> Self {
        SearcherSpec::Tpe {
            n_startup: n_startup(),
            gamma: gamma(),
            n_candidates: n_candidates(),
        }
    }

    /// Checks the settings; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if let SearcherSpec::Tpe {
            gamma,
            n_candidates,
            ..
        } = *self
        {
            if !(gamma > 0.0 && gamma < 1.0) {
                return Err(format!(
                    "searcher.gamma: must be between 0 and 1, got {gamma}"
                ));
            }
            if n_candidates == 0 {
                return Err("searcher.n_candidates: must be at least 1".into());
            }
        }
        Ok(())
    }
}

/// One finished (or stopped) trial as the searcher learns from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Its hyper-parameters.
    pub params: Params,
    /// Its score, higher is better (the metric, negated in `min` mode).
    pub score: f64,
}

/// A searcher with its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Searcher {
    spec: SearcherSpec,
    space: SearchSpace,
    rng: SplitMix64,
    suggested: u64,
    observations: Vec<Observation>,
}

impl Searcher {
    /// A searcher over `space`, seeded.
    pub fn new(spec: SearcherSpec, space: SearchSpace, seed: u64) -> Self {
        Self {
            spec,
            space,
            rng: SplitMix64::derive(seed, &[0x7475_6e65]),
            suggested: 0,
            observations: Vec::new(),
        }
    }

    /// Suggestions made so far.
    pub fn suggested(&self) -> u64 {
        self.suggested
    }

    /// Observations so far.
    pub fn observations(&self) -> &[Observation] {
        &self.observations
    }

    /// The next trial's parameters; `None` when a grid search has gone
    /// through its grid.
    pub fn suggest(&mut self) -> Option<Params> {
        let (_, grid_size) = self.space.grid();
        if matches!(self.spec, SearcherSpec::Grid) && self.suggested >= grid_size {
            return None;
        }
        let mut params = self.space.grid_point(self.suggested);
        let model = match self.spec {
            SearcherSpec::Tpe {
                n_startup,
                gamma,
                n_candidates,
            } if self.observations.len() >= n_startup.max(2) => Some((gamma, n_candidates)),
            _ => None,
        };
        let space = self.space.0.clone();
        for (name, domain) in &space {
            if matches!(domain, Domain::Grid { .. }) {
                continue;
            }
            let v = match model {
                Some((gamma, n)) => self.tpe_value(name, domain, gamma, n),
                None => domain.sample(&mut self.rng),
            };
            params.insert(name.clone(), v);
        }
        self.suggested += 1;
        Some(params)
    }

    /// The state without the observations (they are in the store's trials
    /// table): small, so the controller saves it with every trial start
    /// and end.
    pub fn light_state(&self) -> String {
        #[derive(Serialize)]
        struct Light<'a> {
            spec: &'a SearcherSpec,
            space: &'a SearchSpace,
            rng: &'a SplitMix64,
            suggested: u64,
        }
        serde_json::to_string(&Light {
            spec: &self.spec,
            space: &self.space,
            rng: &self.rng,
            suggested: self.suggested,
        })
        .unwrap_or_default()
    }

    /// A searcher from [`light_state`](Self::light_state) and its
    /// observations.
    pub fn from_light_state(
        json: &str,
        observations: Vec<Observation>,
    ) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct Light {
            spec: SearcherSpec,
            space: SearchSpace,
            rng: SplitMix64,
            suggested: u64,
        }
        let l: Light = serde_json::from_str(json)?;
        Ok(Self {
            spec: l.spec,
            space: l.space,
            rng: l.rng,
            suggested: l.suggested,
            observations,
        })
    }

    /// Records a trial's outcome.
    pub fn observe(&mut self, params: Params, score: f64) {
        if score.is_finite() {
            self.observations.push(Observation { params, score });
        }
    }

    fn tpe_value(
        &mut self,
        name: &str,
        domain: &Domain,
        gamma: f64,
        n_candidates: usize,
    ) -> serde_json::Value {
        let mut obs: Vec<&Observation> = self
            .observations
            .iter()
            .filter(|o| o.params.contains_key(name))
            .collect();
        obs.sort_by(|a, b| b.score.total_cmp(&a.score));
        let n_good = ((gamma * obs.len() as f64).ceil() as usize).clamp(1, obs.len().max(1));
        let (good, bad) = obs.split_at(n_good.min(obs.len()));
        match domain.bounds() {
            Some((lo, hi)) => {
                let xs = |part: &[&Observation]| -> Vec<f64> {
                    part.iter()
                        .filter_map(|o| domain.to_internal(&o.params[name]))
                        .collect()
                };
                let l = Parzen::fit(&xs(good), lo, hi);
                let g = Parzen::fit(&xs(bad), lo, hi);
                let mut best = (f64::NEG_INFINITY, (lo + hi) / 2.0);
                for _ in 0..n_candidates {
                    let x = l.sample(&mut self.rng);
                    let ratio = l.log_pdf(x) - g.log_pdf(x);
                    if ratio > best.0 {
                        best = (ratio, x);
                    }
                }
                domain.from_internal(best.1)
            }
            None => {
                let opts = domain.options().unwrap_or(&[]);
                let k = opts.len();
                let weights = |part: &[&Observation]| -> Vec<f64> {
                    let mut w = vec![1.0; k];
                    for o in part {
                        if let Some(i) = domain.index_of(&o.params[name]) {
                            w[i] += 1.0;
                        }
                    }
                    let sum: f64 = w.iter().sum();
                    w.iter().map(|x| x / sum).collect()
                };
                let (l, g) = (weights(good), weights(bad));
                let mut best = (f64::NEG_INFINITY, 0);
                for _ in 0..n_candidates {
                    let mut u = self.rng.unit_f64();
                    let mut i = 0;
                    while i + 1 < k && u >= l[i] {
                        u -= l[i];
                        i += 1;
                    }
                    let ratio = l[i].ln() - g[i].ln();
                    if ratio > best.0 {
                        best = (ratio, i);
                    }
                }
                opts.get(best.1).cloned().unwrap_or(serde_json::Value::Null)
            }
        }
    }
}

/// A Parzen estimator on `[lo, hi]`: equal-weight Gaussians at the points
/// (bandwidth: the larger gap to a neighbour, clipped as hyperopt does) and
/// one prior Gaussian over the whole interval.
struct Parzen {
    mus: Vec<f64>,
    sigmas: Vec<f64>,
    lo: f64,
    hi: f64,
}

impl Parzen {
    fn fit(points: &[f64], lo: f64, hi: f64) -> Self {
        let width = hi - lo;
        let mut mus: Vec<f64> = points.to_vec();
        mus.push((lo + hi) / 2.0);
        mus.sort_by(f64::total_cmp);
        let n = mus.len();
        let min_sigma = width / (100f64).min(1.0 + n as f64);
        let sigmas = (0..n)
            .map(|i| {
                let left = if i > 0 {
                    mus[i] - mus[i - 1]
                } else {
                    mus[i] - lo
                };
                let right = if i + 1 < n {
                    mus[i + 1] - mus[i]
                } else {
                    hi - mus[i]
                };
                left.max(right).clamp(min_sigma, width)
            })
            .collect::<Vec<_>>();
        let mut p = Self {
            mus,
            sigmas,
            lo,
            hi,
        };
        // The prior component is as wide as the interval.
        if let Some(i) = p
            .mus
            .iter()
            .position(|&m| (m - (lo + hi) / 2.0).abs() < 1e-12)
        {
            p.sigmas[i] = width;
        }
        p
    }

    fn sample(&self, rng: &mut SplitMix64) -> f64 {
        let i = rng.below(self.mus.len() as u64) as usize;
        for _ in 0..32 {
            // Box-Muller.
            let u1 = rng.unit_f64().max(1e-300);
            let u2 = rng.unit_f64();
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            let x = self.mus[i] + self.sigmas[i] * z;
            if x >= self.lo && x <= self.hi {
                return x;
            }
        }
        self.mus[i].clamp(self.lo, self.hi)
    }

    fn log_pdf(&self, x: f64) -> f64 {
        let n = self.mus.len() as f64;
        let p: f64 = self
            .mus
            .iter()
            .zip(&self.sigmas)
            .map(|(m, s)| {
                let z = (x - m) / s;
                (-0.5 * z * z).exp() / (s * (std::f64::consts::TAU).sqrt())
            })
            .sum::<f64>()
            / n;
        p.max(1e-300).ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space2() -> SearchSpace {
        SearchSpace::new()
            .with(
                "x",
                Domain::Uniform {
                    low: -5.0,
                    high: 5.0,
                },
            )
            .with(
                "y",
                Domain::Uniform {
                    low: -5.0,
                    high: 5.0,
                },
            )
    }

    /// A known 2-D function, minimum 0 at (1, -2).
    fn f(p: &Params) -> f64 {
        let x = p["x"].as_f64().unwrap();
        let y = p["y"].as_f64().unwrap();
        (x - 1.0).powi(2) + (y + 2.0).powi(2)
    }

    fn best_after(spec: SearcherSpec, seed: u64, budget: usize) -> f64 {
        let mut s = Searcher::new(spec, space2(), seed);
        let mut best = f64::INFINITY;
        for _ in 0..budget {
            let p = s.suggest().unwrap();
            let v = f(&p);
            best = best.min(v);
            s.observe(p, -v);
        }
        best
    }

    #[test]
    fn tpe_beats_random_on_a_quadratic_with_a_fixed_budget() {
        let (mut tpe_sum, mut rnd_sum, mut tpe_wins) = (0.0, 0.0, 0);
        for seed in 0..10 {
            let t = best_after(SearcherSpec::tpe(), seed, 60);
            let r = best_after(SearcherSpec::Random, seed, 60);
            tpe_sum += t;
            rnd_sum += r;
            tpe_wins += usize::from(t < r);
        }
        eprintln!(
            "mean best of 60 trials: tpe {tpe_sum:.4}, random {rnd_sum:.4}; tpe wins {tpe_wins}/10"
        );
        assert!(tpe_sum < rnd_sum / 3.0, "tpe {tpe_sum} random {rnd_sum}");
        assert!(tpe_wins >= 7);
    }

    #[test]
    fn a_restored_searcher_suggests_what_the_original_would() {
        let mut a = Searcher::new(SearcherSpec::tpe(), space2(), 3);
        for _ in 0..15 {
            let p = a.suggest().unwrap();
            let v = f(&p);
            a.observe(p, -v);
        }
        let saved = serde_json::to_string(&a).unwrap();
        let mut b: Searcher = serde_json::from_str(&saved).unwrap();
        for _ in 0..5 {
            assert_eq!(a.suggest(), b.suggest());
        }
    }

    #[test]
    fn the_light_state_and_the_observations_restore_the_searcher() {
        let mut a = Searcher::new(SearcherSpec::tpe(), space2(), 4);
        for _ in 0..12 {
            let p = a.suggest().unwrap();
            let v = f(&p);
            a.observe(p, -v);
        }
        let mut b =
            Searcher::from_light_state(&a.light_state(), a.observations().to_vec()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.suggest(), b.suggest());
    }

    #[test]
    fn grid_search_goes_through_the_grid_once() {
        let space = SearchSpace::new()
            .with(
                "a",
                Domain::Grid {
                    values: vec![1.into(), 2.into(), 3.into()],
                },
            )
            .with(
                "lr",
                Domain::Loguniform {
                    low: 1e-3,
                    high: 1e-1,
                },
            );
        let mut s = Searcher::new(SearcherSpec::Grid, space, 0);
        let got: Vec<i64> = std::iter::from_fn(|| s.suggest())
            .map(|p| p["a"].as_i64().unwrap())
            .collect();
        assert_eq!(got, [1, 2, 3]);
    }

    #[test]
    fn tpe_handles_choices() {
        let space = SearchSpace::new().with(
            "c",
            Domain::Choice {
                values: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            },
        );
        let mut s = Searcher::new(SearcherSpec::tpe(), space, 1);
        let mut late_b = 0;
        for i in 0..60 {
            let p = s.suggest().unwrap();
            let good = p["c"] == "b";
            if i >= 30 && good {
                late_b += 1;
            }
            s.observe(p, if good { 1.0 } else { 0.0 });
        }
        assert!(late_b >= 20, "TPE picked the best choice {late_b}/30 times");
    }
}
