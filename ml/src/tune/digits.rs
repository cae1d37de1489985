//! The digits MLP of manta-ml as a trainable: one epoch per iteration.
//!
//! A trial starts from a `manta train` config ([`TrainConfig`]) and
//! overrides its keys with the trial's hyper-parameters:
//!
//! | parameter | key |
//! |---|---|
//! | `lr` | `training.lr` |
//! | `batch_size` | `training.batch_size` |
//! | `epochs` | `training.epochs` (the trial's iterations) |
//! | `seed` | `training.seed` |
//! | `split_seed` | `data.split_seed` (to check a chosen config on other splits) |
//! | `hidden` | `model.hidden` (an integer: one layer of that width; or a list) |
//! | `layers` | number of hidden layers, each `hidden` wide |
//! | `weight_decay` | `optimizer.weight_decay` |
//! | `momentum` | `optimizer.momentum` (SGD) |
//! | `optimizer` | `"adam"` or `"sgd"` |
//! | `lr_decay` | `training.lr_decay`: `"none"` or `"cosine"` (epoch `e` of `E` uses `lr · (1 + cos(π e / E)) / 2`) |
//! | `standardize` | `data.standardize`: every feature minus its mean over the training rows, over their standard deviation (after `data.scale`) |
//!
//! Rows: the config's train/test split (`data.split_seed`); the training
//! part is split again, stratified, into training and validation rows
//! (`validation_fraction`). Metrics every epoch: `loss` (mean over the
//! epoch), `val_accuracy` (what trials are ranked on), `epoch`; on the last
//! epoch also `test_accuracy` (reported, never used for ranking).
//!
//! The update rule is manta-ml's flat-vector optimizer (the parameter
//! servers' own, equal to burn's), so a checkpoint holds parameters,
//! optimizer state and the epoch, and a restored trial continues exactly.
//! With standardized features the statistics of the trial's training rows
//! (validation rows carved out first) go into the checkpoint too, and
//! [`checkpoint_model`] folds them into the first layer: the served model
//! takes the raw (scaled) features.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::TuneError;
use super::space::Params;
use super::trainable::{Metrics, Trainable, TrialInfo};
use crate::config::{LrDecay, TrainConfig};
use crate::data::{Dataset, Standardization};
use crate::model::{Mlp, ModelSpec, ParamTensor, accuracy, loss_and_grads};
use crate::optim::{OptimizerConfig, SlotState};
use crate::rng::SplitMix64;

type Train = burn::backend::Autodiff<burn::backend::NdArray<f32>>;
type Eval = burn::backend::NdArray<f32>;

/// The digits trainable.
pub struct DigitsTrainable {
    model: ModelSpec,
    optimizer: OptimizerConfig,
    lr: f32,
    batch_size: usize,
    seed: u64,
    epochs: u64,
    lr_decay: LrDecay,
    train: Dataset,
    val: Dataset,
    test: Dataset,
    state: DigitsState,
}

#[derive(Serialize, Deserialize)]
struct DigitsState {
    epoch: u64,
    params: Vec<ParamTensor>,
    slots: Vec<Option<SlotState>>,
    /// The standardization the parameters expect (none: raw features).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input: Option<Standardization>,
}

const CHECKPOINT_FILE: &str = "digits.json";

fn bad(key: &str, why: impl std::fmt::Display) -> TuneError {
    TuneError::Config(format!("hyper-parameter `{key}`: {why}"))
}

fn as_f32(key: &str, v: &Value) -> Result<f32, TuneError> {
    v.as_f64()
        .map(|x| x as f32)
        .ok_or_else(|| bad(key, format!("must be a number, got {v}")))
}

fn as_u64(key: &str, v: &Value) -> Result<u64, TuneError> {
    v.as_u64()
        .or_else(|| v.as_f64().filter(|x| *x >= 0.0).map(|x| x.round() as u64))
        .ok_or_else(|| bad(key, format!("must be a non-negative integer, got {v}")))
}

/// Standardizes the features of every set with the mean and standard
/// deviation of `train`'s (features constant there are only centred), and
/// answers those statistics.
pub fn standardize(train: &mut Dataset, others: &mut [&mut Dataset]) -> Standardization {
    let stats = Standardization::of(train);
    stats.apply(train);
    for d in others.iter_mut() {
        stats.apply(d);
    }
    stats
}

/// `base` with the trial's hyper-parameters applied.
pub fn apply_params(base: &TrainConfig, params: &Params) -> Result<TrainConfig, TuneError> {
    let mut c = base.clone();
    let mut layers = None;
    for (key, v) in params {
        match key.as_str() {
            "lr_decay" => {
                c.training.lr_decay = match v.as_str() {
                    Some("cosine") => LrDecay::Cosine,
                    Some("none") => LrDecay::None,
                    _ => {
                        return Err(bad(key, format!("must be \"none\" or \"cosine\", got {v}")));
                    }
                }
            }
            "standardize" => {
                c.data.standardize = v
                    .as_bool()
                    .ok_or_else(|| bad(key, format!("must be true or false, got {v}")))?;
            }
            "lr" => c.training.lr = as_f32(key, v)?,
            "batch_size" => c.training.batch_size = as_u64(key, v)? as u32,
            "epochs" => c.training.epochs = as_u64(key, v)? as u32,
            "seed" => c.training.seed = as_u64(key, v)?,
            "split_seed" => c.data.split_seed = as_u64(key, v)?,
            "hidden" => {
                c.model.hidden = match v {
                    Value::Array(a) => a
                        .iter()
                        .map(|x| as_u64(key, x).map(|n| n as usize))
                        .collect::<Result<_, _>>()?,
                    _ => vec![as_u64(key, v)? as usize],
                }
            }
            "layers" => layers = Some(as_u64(key, v)? as usize),
            "weight_decay" => {
                let w = as_f32(key, v)?;
                match &mut c.optimizer {
                    OptimizerConfig::Adam { weight_decay, .. }
                    | OptimizerConfig::Sgd { weight_decay, .. } => *weight_decay = w,
                }
            }
            "momentum" => match &mut c.optimizer {
                OptimizerConfig::Sgd { momentum, .. } => *momentum = as_f32(key, v)?,
                OptimizerConfig::Adam { .. } => {
                    return Err(bad(key, "only applies to optimizer = \"sgd\""));
                }
            },
            "optimizer" => {
                let keep = match &c.optimizer {
                    OptimizerConfig::Adam { weight_decay, .. }
                    | OptimizerConfig::Sgd { weight_decay, .. } => *weight_decay,
                };
                c.optimizer = match v.as_str() {
                    Some("adam") => OptimizerConfig::adam(),
                    Some("sgd") => OptimizerConfig::sgd(0.9),
                    _ => return Err(bad(key, format!("must be \"adam\" or \"sgd\", got {v}"))),
                };
                let (OptimizerConfig::Adam { weight_decay, .. }
                | OptimizerConfig::Sgd { weight_decay, .. }) = &mut c.optimizer;
                *weight_decay = keep;
            }
            other => {
                return Err(bad(
                    other,
                    "unknown to the digits trainable (known: lr, batch_size, epochs, seed, split_seed, hidden, layers, weight_decay, momentum, optimizer, lr_decay, standardize)",
                ));
            }
        }
    }
    if let Some(n) = layers {
        let width = c.model.hidden.first().copied().unwrap_or(64);
        c.model.hidden = vec![width; n];
    }
    c.validate()?;
    Ok(c)
}

impl DigitsTrainable {
    /// A trial of `base` with `info.params` applied.
    pub fn new(
        base: &TrainConfig,
        info: &TrialInfo,
        validation_fraction: f64,
    ) -> Result<Self, TuneError> {
        let c = apply_params(base, &info.params)?;
        // Standardized below, on the training rows left after the
        // validation rows are carved out.
        let raw = crate::data::DatasetSpec {
            standardize: false,
            ..c.data.clone()
        };
        let (mut train_all, mut test) = raw.load_split().map_err(crate::MlError::from)?;
        // Validation rows from their own file (`data.validation_path`), or
        // carved out of the training rows. No validation split (fraction
        // 0): train on every training row (to check a chosen config);
        // `val_accuracy` is then not reported.
        let own = raw
            .load_validation(&mut train_all, &mut test)
            .map_err(crate::MlError::from)?;
        let (mut train, mut val) = if let Some(val) = own {
            (train_all, val)
        } else if validation_fraction > 0.0 {
            train_all
                .stratified_split(
                    validation_fraction,
                    c.data.split_seed ^ 0x7661_6c69_6461_7465,
                )
                .map_err(crate::MlError::from)?
        } else {
            let empty = train_all.select(&[]);
            (train_all, empty)
        };
        let input = c
            .data
            .standardize
            .then(|| standardize(&mut train, &mut [&mut val, &mut test]));
        let model = ModelSpec {
            inputs: train.cols,
            hidden: c.model.hidden.clone(),
            classes: train.classes,
        };
        model.validate()?;
        let params = model.init(c.training.seed);
        let slots = vec![None; params.len()];
        // The trial ends at `epochs`, or earlier at the experiment's cap
        // (then the last epoch run reports the test accuracy).
        let mut epochs = u64::from(c.training.epochs);
        if let Some(m) = info.max_iterations {
            epochs = if info.params.contains_key("epochs") {
                epochs.min(m)
            } else {
                m
            };
        }
        Ok(Self {
            model,
            optimizer: c.optimizer.clone(),
            lr: c.training.lr,
            batch_size: c.training.batch_size as usize,
            seed: c.training.seed,
            epochs,
            lr_decay: c.training.lr_decay,
            train,
            val,
            test,
            state: DigitsState {
                epoch: 0,
                params,
                slots,
                input,
            },
        })
    }

    fn eval(&self, data: &Dataset) -> Result<f32, TuneError> {
        let device = burn::backend::ndarray::NdArrayDevice::Cpu;
        let m = Mlp::<Eval>::from_params(&self.model, &self.state.params, &device)?;
        Ok(accuracy(&m, data, &device)?)
    }
}

impl Trainable for DigitsTrainable {
    fn step(&mut self) -> Result<Metrics, TuneError> {
        let device = burn::backend::ndarray::NdArrayDevice::Cpu;
        let epoch = self.state.epoch;
        let mut order: Vec<usize> = (0..self.train.len()).collect();
        SplitMix64::derive(self.seed, &[0x6570_6f63, epoch]).shuffle(&mut order);
        let (mut loss_sum, mut batches) = (0.0f64, 0u32);
        let lr = self.lr_decay.rate(self.lr, epoch, self.epochs);
        for rows in order.chunks(self.batch_size.max(1)) {
            let batch = self.train.select(rows);
            let model = Mlp::<Train>::from_params(&self.model, &self.state.params, &device)?;
            let (loss, grads) =
                loss_and_grads(&model, &batch.features, &batch.labels, batch.cols, &device)?;
            loss_sum += f64::from(loss);
            batches += 1;
            for ((p, g), slot) in self
                .state
                .params
                .iter_mut()
                .zip(&grads)
                .zip(&mut self.state.slots)
            {
                self.optimizer
                    .step(lr, &mut p.values, g, slot)
                    .map_err(|e| TuneError::Config(format!("optimizer: {e}")))?;
            }
        }
        self.state.epoch += 1;
        let mut m = Metrics::new();
        let loss = loss_sum / f64::from(batches.max(1));
        m.insert("loss".into(), loss);
        m.insert("epoch".into(), self.state.epoch as f64);
        if !self.val.is_empty() {
            m.insert("val_accuracy".into(), f64::from(self.eval(&self.val)?));
        }
        if self.state.epoch >= self.epochs {
            m.insert("test_accuracy".into(), f64::from(self.eval(&self.test)?));
        }
        if !loss.is_finite() {
            return Err(TuneError::Trial {
                trial: u64::MAX,
                message: format!("loss diverged ({loss}) at epoch {}", self.state.epoch),
            });
        }
        Ok(m)
    }

    fn max_iterations(&self) -> Option<u64> {
        Some(self.epochs)
    }

    fn save(&mut self, dir: &Path) -> Result<(), TuneError> {
        let path = dir.join(CHECKPOINT_FILE);
        let bytes = serde_json::to_vec(&self.state).map_err(|e| TuneError::Store {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        std::fs::write(&path, bytes).map_err(|e| TuneError::io(&path, e))
    }

    fn restore(&mut self, dir: &Path) -> Result<(), TuneError> {
        let path = dir.join(CHECKPOINT_FILE);
        let bytes = std::fs::read(&path).map_err(|e| TuneError::io(&path, e))?;
        let state: DigitsState = serde_json::from_slice(&bytes).map_err(|e| TuneError::Store {
            path: path.display().to_string(),
            message: format!("not a digits checkpoint: {e}"),
        })?;
        self.model.check(&state.params)?;
        if state.slots.len() != state.params.len() {
            return Err(TuneError::Store {
                path: path.display().to_string(),
                message: "optimizer state does not fit the model".into(),
            });
        }
        // The statistics stay this trial's own (computed from its rows; a
        // checkpoint cloned from another trial of the same split, as PBT
        // does, holds the same ones).
        let input = self.state.input.take();
        self.state = state;
        self.state.input = input;
        Ok(())
    }
}

/// The model a digits trial's checkpoint directory holds: its spec (read
/// from the parameters' shapes: `layers.{i}.weight` is `[inputs, outputs]`)
/// and its parameters, checked against each other. What serving loads.
pub fn checkpoint_model(dir: &Path) -> Result<(ModelSpec, Vec<ParamTensor>), TuneError> {
    let path = dir.join(CHECKPOINT_FILE);
    let bytes = std::fs::read(&path).map_err(|e| TuneError::io(&path, e))?;
    let bad = |message: String| TuneError::Store {
        path: path.display().to_string(),
        message,
    };
    let state: DigitsState =
        serde_json::from_slice(&bytes).map_err(|e| bad(format!("not a digits checkpoint: {e}")))?;
    let widths: Vec<&[usize]> = state
        .params
        .iter()
        .step_by(2)
        .map(|p| p.shape.as_slice())
        .collect();
    let (Some(first), Some(last)) = (widths.first(), widths.last()) else {
        return Err(bad("the checkpoint holds no parameters".into()));
    };
    if widths.iter().any(|w| w.len() != 2) {
        return Err(bad("a layer's weight is not a matrix".into()));
    }
    let model = ModelSpec {
        inputs: first[0],
        hidden: widths[..widths.len() - 1].iter().map(|w| w[1]).collect(),
        classes: last[1],
    };
    model.validate()?;
    model
        .check(&state.params)
        .map_err(|e| bad(format!("parameters do not form an MLP: {e}")))?;
    let mut params = state.params;
    if let Some(input) = &state.input {
        crate::model::fold_standardization(&model, &mut params, input)
            .map_err(|e| bad(format!("its standardization: {e}")))?;
    }
    Ok((model, params))
}
