//! Optimizers over flat parameter vectors, as parameter servers run them.
//!
//! The update rules are burn 0.21's, operation for operation (`burn::optim`
//! `Sgd` with `Momentum`, and `Adam`), so that synchronous parameter-server
//! training reproduces a single-process burn loop; the equivalence test in
//! `tests/it` checks it.

use serde::{Deserialize, Serialize};

use crate::error::MlError;

/// Which optimizer the parameter servers apply, with its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// Stochastic gradient descent, optionally with momentum.
    Sgd {
        /// Momentum factor (0 = none).
        #[serde(default)]
        momentum: f32,
        /// Dampening of the momentum.
        #[serde(default)]
        dampening: f32,
        /// Nesterov momentum.
        #[serde(default)]
        nesterov: bool,
        /// L2 penalty added to the gradient.
        #[serde(default)]
        weight_decay: f32,
    },
    /// Adam.
    Adam {
        /// First-moment decay.
        #[serde(default = "beta1")]
        beta1: f32,
        /// Second-moment decay.
        #[serde(default = "beta2")]
        beta2: f32,
        /// Numerical stability term (burn's default 1e-5).
        #[serde(default = "epsilon")]
        epsilon: f32,
        /// L2 penalty added to the gradient.
        #[serde(default)]
        weight_decay: f32,
    },
}

fn beta1() -> f32 {
    0.9
}
fn beta2() -> f32 {
    0.999
}
fn epsilon() -> f32 {
    1e-5
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self::adam()
    }
}

/// Per-parameter optimizer state (what checkpoints keep).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SlotState {
    /// SGD momentum velocity (absent before the first step).
    Sgd {
        /// The velocity.
        velocity: Option<Vec<f32>>,
    },
    /// Adam moments.
    Adam {
        /// Steps taken.
        time: i32,
        /// First moment.
        #[serde(with = "crate::wire::f32s")]
        moment1: Vec<f32>,
        /// Second moment.
        #[serde(with = "crate::wire::f32s")]
        moment2: Vec<f32>,
    },
}

impl OptimizerConfig {
    /// Adam with burn's defaults.
    pub fn adam() -> Self {
        Self::Adam {
            beta1: beta1(),
            beta2: beta2(),
            epsilon: epsilon(),
            weight_decay: 0.0,
        }
    }

    /// Plain SGD with `momentum` (0 = none).
    pub fn sgd(momentum: f32) -> Self {
        Self::Sgd {
            momentum,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), MlError> {
        // (name, value, valid?, what a valid value is)
        let unit = |v: f32| (0.0..1.0).contains(&v);
        let non_negative = |v: f32| v >= 0.0 && v.is_finite();
        let checks: Vec<(&str, f32, bool, &str)> = match *self {
            Self::Sgd {
                momentum,
                dampening,
                weight_decay,
                ..
            } => vec![
                ("momentum", momentum, unit(momentum), "in [0, 1)"),
                ("dampening", dampening, unit(dampening), "in [0, 1)"),
                (
                    "weight_decay",
                    weight_decay,
                    non_negative(weight_decay),
                    ">= 0",
                ),
            ],
            Self::Adam {
                beta1,
                beta2,
                epsilon,
                weight_decay,
            } => vec![
                ("beta1", beta1, unit(beta1), "in [0, 1)"),
                ("beta2", beta2, unit(beta2), "in [0, 1)"),
                (
                    "epsilon",
                    epsilon,
                    epsilon > 0.0 && epsilon.is_finite(),
                    "> 0",
                ),
                (
                    "weight_decay",
                    weight_decay,
                    non_negative(weight_decay),
                    ">= 0",
                ),
            ],
        };
        match checks.into_iter().find(|c| !c.2) {
            Some((name, v, _, want)) => Err(MlError::Config(format!(
                "optimizer: {name} must be {want}, got {v}"
            ))),
            None => Ok(()),
        }
    }

    /// The optimizer's name, as errors give it.
    fn name(&self) -> &'static str {
        match self {
            Self::Sgd { .. } => "SGD",
            Self::Adam { .. } => "Adam",
        }
    }

    /// Checks that `state` (as a checkpoint restores it) belongs to this
    /// optimizer and fits a parameter of `len` values: the same kind, every
    /// vector `len` long, an Adam step count of at least 1 (a saved state
    /// has taken a step; 0 or below makes the bias corrections divide by
    /// zero or take roots of negatives).
    pub fn check_state(&self, len: usize, state: Option<&SlotState>) -> Result<(), StateError> {
        let length = |vector: &'static str, found: usize| {
            if found == len {
                Ok(())
            } else {
                Err(StateError::Length {
                    vector,
                    expected: len,
                    found,
                })
            }
        };
        match (self, state) {
            (_, None) => Ok(()),
            (Self::Sgd { .. }, Some(SlotState::Sgd { velocity })) => match velocity {
                Some(v) => length("velocity", v.len()),
                None => Ok(()),
            },
            (
                Self::Adam { .. },
                Some(SlotState::Adam {
                    time,
                    moment1,
                    moment2,
                }),
            ) => {
                if *time < 1 {
                    return Err(StateError::Time(*time));
                }
                length("moment1", moment1.len())?;
                length("moment2", moment2.len())
            }
            (_, Some(found)) => Err(StateError::Kind {
                expected: self.name(),
                found: found.name(),
            }),
        }
    }

    /// Checks that a step can be applied to a parameter of `len` values
    /// holding `state`: [`OptimizerConfig::check_state`], and an Adam step
    /// count that can still go up. Nothing fails in [`OptimizerConfig::step`]
    /// once this has passed (with a gradient of `len` values).
    pub fn check_step(&self, len: usize, state: Option<&SlotState>) -> Result<(), StateError> {
        self.check_state(len, state)?;
        match state {
            Some(SlotState::Adam { time, .. }) if time.checked_add(1).is_none() => {
                Err(StateError::TimeOverflow(*time))
            }
            _ => Ok(()),
        }
    }

    /// Applies one step to `param` with gradient `grad`. Refused, with
    /// nothing changed, when the gradient's length is not the parameter's
    /// or [`OptimizerConfig::check_step`] fails.
    pub fn step(
        &self,
        lr: f32,
        param: &mut [f32],
        grad: &[f32],
        state: &mut Option<SlotState>,
    ) -> Result<(), StateError> {
        if grad.len() != param.len() {
            return Err(StateError::Length {
                vector: "gradient",
                expected: param.len(),
                found: grad.len(),
            });
        }
        self.check_step(param.len(), state.as_ref())?;
        match *self {
            Self::Sgd {
                momentum,
                dampening,
                nesterov,
                weight_decay,
            } => {
                let mut g = decayed(param, grad, weight_decay);
                if momentum != 0.0 {
                    let velocity = match state.take() {
                        Some(SlotState::Sgd {
                            velocity: Some(mut v),
                        }) => {
                            for (v, g) in v.iter_mut().zip(&g) {
                                *v = g * (1.0 - dampening) + *v * momentum;
                            }
                            v
                        }
                        _ => g.clone(),
                    };
                    if nesterov {
                        for (g, v) in g.iter_mut().zip(&velocity) {
                            *g += v * momentum;
                        }
                    } else {
                        g.copy_from_slice(&velocity);
                    }
                    *state = Some(SlotState::Sgd {
                        velocity: Some(velocity),
                    });
                } else {
                    *state = Some(SlotState::Sgd { velocity: None });
                }
                for (w, g) in param.iter_mut().zip(&g) {
                    *w -= g * lr;
                }
            }
            Self::Adam {
                beta1,
                beta2,
                epsilon,
                weight_decay,
            } => {
                // One pass over parameters, gradients and moments (fresh
                // moments start at zero: 0 * beta + x == x, the same values
                // as starting from the first gradient). No temporary
                // vectors, and the loop vectorises.
                // `check_step` has passed: a state here is Adam's, with
                // moments of the gradient's length and a count that can go up.
                let time = match state {
                    Some(SlotState::Adam { time, .. }) => {
                        time.checked_add(1).ok_or(StateError::TimeOverflow(*time))?
                    }
                    _ => 1,
                };
                let (mut m1, mut m2) = match state.take() {
                    Some(SlotState::Adam {
                        moment1, moment2, ..
                    }) => (moment1, moment2),
                    _ => (vec![0.0; grad.len()], vec![0.0; grad.len()]),
                };
                let bc2 = (1.0 - beta2.powi(time)).sqrt();
                let combined = bc2 / (1.0 - beta1.powi(time));
                let eps = epsilon * bc2;
                let k = AdamStep {
                    beta1,
                    beta2,
                    combined,
                    eps,
                    lr,
                    weight_decay,
                };
                // Compiled for AVX2 where the CPU has it (eight lanes instead
                // of four). The same IEEE operations per value either way:
                // Rust never fuses a multiply and an add on its own.
                #[cfg(target_arch = "x86_64")]
                if let Some(v3) = pulp::x86::V3::try_new() {
                    v3.vectorize(
                        #[inline(always)]
                        || k.run(param, grad, &mut m1, &mut m2),
                    );
                } else {
                    k.run(param, grad, &mut m1, &mut m2);
                }
                #[cfg(not(target_arch = "x86_64"))]
                k.run(param, grad, &mut m1, &mut m2);
                *state = Some(SlotState::Adam {
                    time,
                    moment1: m1,
                    moment2: m2,
                });
            }
        }
        Ok(())
    }
}

impl SlotState {
    /// The optimizer this state is for, as errors give it.
    fn name(&self) -> &'static str {
        match self {
            Self::Sgd { .. } => "SGD",
            Self::Adam { .. } => "Adam",
        }
    }
}

/// Why an optimizer state does not fit a parameter, or cannot take another
/// step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The state of another optimizer.
    #[error("{found} state, but the optimizer is {expected}")]
    Kind {
        /// The configured optimizer.
        expected: &'static str,
        /// The optimizer the state is for.
        found: &'static str,
    },
    /// A vector whose length is not the parameter's.
    #[error("{vector}: expected {expected}, found {found}")]
    Length {
        /// `velocity`, `moment1`, `moment2` or `gradient`.
        vector: &'static str,
        /// The parameter's length.
        expected: usize,
        /// The vector's.
        found: usize,
    },
    /// An Adam step count below 1.
    #[error("Adam step count {0}: a saved state has taken at least one step")]
    Time(i32),
    /// An Adam step count that cannot go up.
    #[error("Adam step count {0}: another step would overflow it")]
    TimeOverflow(i32),
}

/// The constants of one Adam step (bias corrections folded in).
#[derive(Clone, Copy)]
struct AdamStep {
    beta1: f32,
    beta2: f32,
    combined: f32,
    eps: f32,
    lr: f32,
    weight_decay: f32,
}

impl AdamStep {
    /// One pass over parameters, gradients and moments: no temporary
    /// vectors, and a loop the compiler vectorises.
    #[inline(always)]
    fn run(self, param: &mut [f32], grad: &[f32], m1: &mut [f32], m2: &mut [f32]) {
        let (c1, c2) = (1.0 - self.beta1, 1.0 - self.beta2);
        let values = param
            .iter_mut()
            .zip(grad)
            .zip(m1.iter_mut().zip(m2.iter_mut()));
        for ((w, g), (m1, m2)) in values {
            let g = if self.weight_decay == 0.0 {
                *g
            } else {
                *w * self.weight_decay + g
            };
            *m1 = *m1 * self.beta1 + g * c1;
            *m2 = *m2 * self.beta2 + (g * g) * c2;
            let update = (*m1 * self.combined) / (m2.sqrt() + self.eps);
            *w -= update * self.lr;
        }
    }
}

/// The gradient with burn's L2 weight decay added (`w * penalty + g`).
fn decayed(param: &[f32], grad: &[f32], penalty: f32) -> Vec<f32> {
    if penalty == 0.0 {
        return grad.to_vec();
    }
    param
        .iter()
        .zip(grad)
        .map(|(w, g)| w * penalty + g)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{OptimizerConfig, SlotState, StateError};

    /// A step that cannot be taken is refused with nothing changed: a
    /// gradient of another length, a state of another optimizer or length,
    /// an Adam step count that would overflow.
    #[test]
    fn a_step_that_does_not_fit_is_refused_and_changes_nothing() {
        let adam = OptimizerConfig::adam();
        let mut w = vec![1.0f32; 4];
        let full = |time| {
            Some(SlotState::Adam {
                time,
                moment1: vec![0.5; 4],
                moment2: vec![0.25; 4],
            })
        };
        let mut st = full(i32::MAX);
        assert_eq!(
            adam.step(0.1, &mut w, &[1.0; 4], &mut st),
            Err(StateError::TimeOverflow(i32::MAX))
        );
        assert_eq!((&w, &st), (&vec![1.0; 4], &full(i32::MAX)));
        let mut st = full(3);
        assert_eq!(
            adam.step(0.1, &mut w, &[1.0; 3], &mut st),
            Err(StateError::Length {
                vector: "gradient",
                expected: 4,
                found: 3
            })
        );
        let mut sgd_state = Some(SlotState::Sgd {
            velocity: Some(vec![0.0; 3]),
        });
        assert_eq!(
            OptimizerConfig::sgd(0.9).step(0.1, &mut w, &[1.0; 4], &mut sgd_state),
            Err(StateError::Length {
                vector: "velocity",
                expected: 4,
                found: 3
            })
        );
        assert_eq!(
            adam.step(0.1, &mut w, &[1.0; 4], &mut sgd_state),
            Err(StateError::Kind {
                expected: "Adam",
                found: "SGD"
            })
        );
        assert_eq!((&w, &st), (&vec![1.0; 4], &full(3)));
        assert_eq!(adam.step(0.1, &mut w, &[1.0; 4], &mut st), Ok(()));
        assert!(matches!(st, Some(SlotState::Adam { time: 4, .. })));
    }

    /// Adam as written before the one-pass loop: decayed gradient copy,
    /// moments from the first gradient, then the update.
    fn adam_reference(
        (beta1, beta2, epsilon, wd): (f32, f32, f32, f32),
        lr: f32,
        w: &mut [f32],
        grad: &[f32],
        state: &mut Option<(i32, Vec<f32>, Vec<f32>)>,
    ) {
        let g: Vec<f32> = w
            .iter()
            .zip(grad)
            .map(|(w, g)| if wd == 0.0 { *g } else { w * wd + g })
            .collect();
        let (time, m1, m2) = match state.take() {
            Some((t, mut m1, mut m2)) => {
                for ((m1, m2), g) in m1.iter_mut().zip(m2.iter_mut()).zip(&g) {
                    *m1 = *m1 * beta1 + g * (1.0 - beta1);
                    *m2 = *m2 * beta2 + (g * g) * (1.0 - beta2);
                }
                (t + 1, m1, m2)
            }
            None => (
                1,
                g.iter().map(|g| g * (1.0 - beta1)).collect(),
                g.iter().map(|g| (g * g) * (1.0 - beta2)).collect(),
            ),
        };
        let bc2 = (1.0 - beta2.powi(time)).sqrt();
        let combined = bc2 / (1.0 - beta1.powi(time));
        let eps = epsilon * bc2;
        for ((w, m1), m2) in w.iter_mut().zip(&m1).zip(&m2) {
            *w -= ((m1 * combined) / (m2.sqrt() + eps)) * lr;
        }
        *state = Some((time, m1, m2));
    }

    /// The one-pass Adam (AVX2 where the CPU has it, as on the machines
    /// this runs on) gives the same values as the scalar three-pass form,
    /// step after step, with and without weight decay, at lengths that
    /// leave remainders after every vector width.
    #[test]
    fn one_pass_adam_equals_the_three_pass_form_value_for_value() {
        for wd in [0.0, 0.01] {
            for len in [1, 5, 8, 13, 64, 9_610] {
                let opt = OptimizerConfig::Adam {
                    beta1: 0.9,
                    beta2: 0.999,
                    epsilon: 1e-5,
                    weight_decay: wd,
                };
                let mut w: Vec<f32> = (0..len)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
                    .collect();
                let mut w_ref = w.clone();
                let (mut st, mut st_ref) = (None, None);
                for step in 0..5 {
                    let g: Vec<f32> = (0..len)
                        .map(|i| (((i * 53 + step * 17) % 97) as f32 - 48.0) / (7.0 + step as f32))
                        .collect();
                    opt.step(1e-3, &mut w, &g, &mut st).unwrap();
                    adam_reference((0.9, 0.999, 1e-5, wd), 1e-3, &mut w_ref, &g, &mut st_ref);
                    assert_eq!(
                        w, w_ref,
                        "weights differ at step {step}, len {len}, wd {wd}"
                    );
                    let Some(SlotState::Adam {
                        time,
                        moment1,
                        moment2,
                    }) = &st
                    else {
                        panic!("no Adam state");
                    };
                    let (t, m1, m2) = st_ref.as_ref().expect("reference state");
                    assert_eq!((time, moment1, moment2), (t, m1, m2));
                }
            }
        }
    }
}
