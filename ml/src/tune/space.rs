//! Search spaces: the domain of every hyper-parameter, in code or in TOML.
//!
//! ```toml
//! [space]
//! lr = { type = "loguniform", low = 1e-4, high = 1e-2 }
//! dropout = { type = "uniform", low = 0.0, high = 0.5 }
//! hidden = { type = "int", low = 32, high = 512, log = true }
//! batch_size = { type = "choice", values = [16, 32, 64] }
//! momentum = { type = "quantized", low = 0.5, high = 0.99, q = 0.01 }
//! optimizer = { type = "grid", values = ["adam", "sgd"] }
//! ```
//!
//! Every numeric domain has an *internal* coordinate (the value itself, or
//! its logarithm for log domains) in which samplers work; `int` and
//! `quantized` values are rounded from it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::rng::SplitMix64;

/// One trial's hyper-parameters, by name.
pub type Params = BTreeMap<String, Value>;

/// The domain of one hyper-parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Domain {
    /// A float uniform in `[low, high)`.
    Uniform {
        /// Lower bound.
        low: f64,
        /// Upper bound.
        high: f64,
    },
    /// A float whose logarithm is uniform (`0 < low < high`).
    Loguniform {
        /// Lower bound.
        low: f64,
        /// Upper bound.
        high: f64,
    },
    /// An integer in `[low, high]` (both included), optionally log-uniform.
    Int {
        /// Smallest value.
        low: i64,
        /// Largest value.
        high: i64,
        /// Uniform in the logarithm (`low >= 1`).
        #[serde(default)]
        log: bool,
    },
    /// A float in `[low, high]` rounded to a multiple of `q` (from `low`).
    Quantized {
        /// Lower bound.
        low: f64,
        /// Upper bound.
        high: f64,
        /// The step.
        q: f64,
    },
    /// One of `values`, at random (or as TPE picks).
    Choice {
        /// The options.
        values: Vec<Value>,
    },
    /// Every one of `values`: trials go through the grid (the cartesian
    /// product of all grid parameters) in order.
    Grid {
        /// The options.
        values: Vec<Value>,
    },
}

impl Domain {
    /// Checks the bounds; the error says what is wrong with them.
    pub fn validate(&self) -> Result<(), String> {
        let finite = |a: f64, b: f64| a.is_finite() && b.is_finite();
        match *self {
            Domain::Uniform { low, high } if !(finite(low, high) && low < high) => Err(format!(
                "uniform needs finite low < high, got low = {low}, high = {high}"
            )),
            Domain::Loguniform { low, high } if !(finite(low, high) && 0.0 < low && low < high) => {
                Err(format!(
                    "loguniform needs 0 < low < high, got low = {low}, high = {high}"
                ))
            }
            Domain::Int { low, high, log } if low > high || (log && low < 1) => Err(format!(
                "int needs low <= high{}, got low = {low}, high = {high}",
                if log {
                    " and low >= 1 (log = true)"
                } else {
                    ""
                }
            )),
            Domain::Quantized { low, high, q }
                if !(finite(low, high) && low <= high && q.is_finite() && q > 0.0) =>
            {
                Err(format!(
                    "quantized needs finite low <= high and q > 0, got low = {low}, high = {high}, q = {q}"
                ))
            }
            Domain::Choice { ref values } | Domain::Grid { ref values } if values.is_empty() => {
                Err("needs at least one value".into())
            }
            _ => Ok(()),
        }
    }

    /// The options of `choice` and `grid`.
    pub fn options(&self) -> Option<&[Value]> {
        match self {
            Domain::Choice { values } | Domain::Grid { values } => Some(values),
            _ => None,
        }
    }

    /// The internal interval of a numeric domain (log for log domains;
    /// integers widened by half a step so that every value is as likely).
    pub fn bounds(&self) -> Option<(f64, f64)> {
        match *self {
            Domain::Uniform { low, high } => Some((low, high)),
            Domain::Loguniform { low, high } => Some((low.ln(), high.ln())),
            Domain::Int { low, high, log } => Some(if log {
                ((low as f64 - 0.5).max(0.5).ln(), (high as f64 + 0.5).ln())
            } else {
                (low as f64 - 0.5, high as f64 + 0.5)
            }),
            Domain::Quantized { low, high, q } => Some((low - q / 2.0, high + q / 2.0)),
            Domain::Choice { .. } | Domain::Grid { .. } => None,
        }
    }

    /// The value at internal coordinate `x` (clamped into the domain).
    pub fn from_internal(&self, x: f64) -> Value {
        match *self {
            Domain::Uniform { low, high } => json_f64(x.clamp(low, high)),
            Domain::Loguniform { low, high } => json_f64(x.exp().clamp(low, high)),
            Domain::Int { low, high, log } => {
                let v = if log { x.exp() } else { x };
                Value::from((v.round() as i64).clamp(low, high))
            }
            Domain::Quantized { low, high, q } => {
                let steps = ((x - low) / q).round().max(0.0);
                let top = ((high - low) / q).floor();
                json_f64(low + steps.min(top) * q)
            }
            // Not numeric: the first option (callers sample options by index).
            Domain::Choice { ref values } | Domain::Grid { ref values } => {
                values.first().cloned().unwrap_or(Value::Null)
            }
        }
    }

    /// The internal coordinate of `v`, for numeric domains.
    pub fn to_internal(&self, v: &Value) -> Option<f64> {
        let x = v.as_f64()?;
        match self {
            Domain::Loguniform { .. } | Domain::Int { log: true, .. } => Some(x.max(1e-300).ln()),
            Domain::Choice { .. } | Domain::Grid { .. } => None,
            _ => Some(x),
        }
    }

    /// The index of `v` among the options of `choice` / `grid`.
    pub fn index_of(&self, v: &Value) -> Option<usize> {
        self.options()?.iter().position(|o| o == v)
    }

    /// A value drawn at random.
    pub fn sample(&self, rng: &mut SplitMix64) -> Value {
        match self.bounds() {
            Some((lo, hi)) => self.from_internal(lo + rng.unit_f64() * (hi - lo)),
            None => {
                let opts = self.options().unwrap_or(&[]);
                if opts.is_empty() {
                    Value::Null
                } else {
                    opts[rng.below(opts.len() as u64) as usize].clone()
                }
            }
        }
    }
}

/// A float as JSON (non-finite floats, impossible after the clamps above,
/// become null).
fn json_f64(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// Every hyper-parameter's domain, by name (ordered, so a seed gives the
/// same trials whatever order the file lists them in).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SearchSpace(pub BTreeMap<String, Domain>);

impl SearchSpace {
    /// An empty space.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a parameter.
    pub fn with(mut self, name: impl Into<String>, domain: Domain) -> Self {
        self.0.insert(name.into(), domain);
        self
    }

    /// Checks every domain; the error names the parameter.
    pub fn validate(&self) -> Result<(), String> {
        for (name, d) in &self.0 {
            d.validate().map_err(|e| format!("space.{name}: {e}"))?;
        }
        Ok(())
    }

    /// The grid parameters and the number of points of their product.
    pub fn grid(&self) -> (Vec<(&String, &[Value])>, u64) {
        let dims: Vec<(&String, &[Value])> = self
            .0
            .iter()
            .filter_map(|(n, d)| match d {
                Domain::Grid { values } => Some((n, values.as_slice())),
                _ => None,
            })
            .collect();
        let size = dims
            .iter()
            .fold(1u64, |acc, (_, v)| acc.saturating_mul(v.len() as u64));
        (dims, size)
    }

    /// Point `index` of the grid (mixed radix, the first parameter by name
    /// varying slowest), wrapping around.
    pub fn grid_point(&self, index: u64) -> Params {
        let (dims, size) = self.grid();
        let mut rest = index % size.max(1);
        let mut out = Params::new();
        for (name, values) in dims.iter().rev() {
            let n = values.len() as u64;
            out.insert((*name).clone(), values[(rest % n) as usize].clone());
            rest /= n;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_stay_in_their_domains_and_seeds_repeat() {
        let d = [
            Domain::Uniform {
                low: -1.0,
                high: 2.0,
            },
            Domain::Loguniform {
                low: 1e-4,
                high: 1e-1,
            },
            Domain::Int {
                low: 3,
                high: 9,
                log: false,
            },
            Domain::Int {
                low: 16,
                high: 512,
                log: true,
            },
            Domain::Quantized {
                low: 0.5,
                high: 0.9,
                q: 0.1,
            },
        ];
        let mut g = SplitMix64::new(7);
        let mut seen_ints = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            for dom in &d {
                let v = dom.sample(&mut g);
                let x = v.as_f64().unwrap();
                match *dom {
                    Domain::Uniform { low, high } | Domain::Loguniform { low, high } => {
                        assert!(x >= low && x <= high, "{x} outside {dom:?}")
                    }
                    Domain::Int { low, high, log } => {
                        assert!(v.is_i64() && x >= low as f64 && x <= high as f64);
                        if !log {
                            seen_ints.insert(v.as_i64().unwrap());
                        }
                    }
                    Domain::Quantized { low, high, q } => {
                        let k = (x - low) / q;
                        assert!((k - k.round()).abs() < 1e-9 && x <= high + 1e-9, "{x}")
                    }
                    _ => unreachable!(),
                }
            }
        }
        assert_eq!(seen_ints, (3..=9).collect());
        let a: Vec<Value> = (0..5)
            .map(|_| d[1].sample(&mut SplitMix64::new(1)))
            .collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn bad_bounds_are_refused_with_the_parameter_named() {
        let s = SearchSpace::new().with(
            "lr",
            Domain::Loguniform {
                low: -1.0,
                high: 1.0,
            },
        );
        let e = s.validate().unwrap_err();
        assert!(e.starts_with("space.lr: loguniform needs 0 < low"), "{e}");
        assert!(
            Domain::Int {
                low: 5,
                high: 1,
                log: false
            }
            .validate()
            .is_err()
        );
        assert!(Domain::Choice { values: vec![] }.validate().is_err());
    }

    #[test]
    fn the_grid_is_enumerated_in_order() {
        let s = SearchSpace::new()
            .with(
                "a",
                Domain::Grid {
                    values: vec![1.into(), 2.into()],
                },
            )
            .with(
                "b",
                Domain::Grid {
                    values: vec!["x".into(), "y".into(), "z".into()],
                },
            );
        assert_eq!(s.grid().1, 6);
        let pts: Vec<String> = (0..6)
            .map(|i| {
                let p = s.grid_point(i);
                format!("{}{}", p["a"], p["b"].as_str().unwrap())
            })
            .collect();
        assert_eq!(pts, ["1x", "1y", "1z", "2x", "2y", "2z"]);
    }
}
