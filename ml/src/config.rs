//! Training configuration (TOML), as `manta train --config F` reads it.
//!
//! ```toml
//! [data]
//! path = "../ml/data/digits.csv.gz"   # relative to the config file
//! scale = 0.0625
//! standardize = false                 # true: (x - mean) / sd of the training rows
//!
//! [model]
//! hidden = [128]
//!
//! [optimizer]
//! kind = "adam"                       # or "sgd" (momentum, dampening, nesterov)
//!
//! [training]
//! lr = 0.001
//! batch_size = 32
//! epochs = 40
//! mode = "sync"                       # or "async" (with `staleness`)
//! workers = 2
//! loaders = 2
//! device = "cpu"                      # or "cuda:0"
//! seed = 0
//! lr_decay = "none"                   # or "cosine" (per epoch)
//!
//! [checkpoint]
//! dir = "target/train-digits"
//! every = 200
//!
//! [placement.workers]                 # only with --seeds
//! role = "worker"
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::DatasetSpec;
use crate::device::DeviceSpec;
use crate::error::MlError;
use crate::optim::OptimizerConfig;
use crate::ps::{CheckpointSpec, Mode};

/// A training job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Job name: prefixes the registered names of its actors.
    #[serde(default = "default_job")]
    pub job: String,
    /// The dataset.
    pub data: DatasetSpec,
    /// The model.
    #[serde(default)]
    pub model: ModelConfig,
    /// The optimizer.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// The schedule and layout.
    #[serde(default)]
    pub training: TrainingConfig,
    /// Checkpoints (optional).
    #[serde(default)]
    pub checkpoint: Option<CheckpointSpec>,
    /// Where actors run in a cluster (ignored in-process).
    #[serde(default)]
    pub placement: PlacementConfig,
}

fn default_job() -> String {
    "train".into()
}

/// Model settings (inputs and classes come from the data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self { hidden: vec![64] }
    }
}

/// Schedule and layout. Every key is optional (see `Default`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// Learning rate.
    pub lr: f32,
    /// Rows per batch (per worker).
    pub batch_size: u32,
    /// Passes over the training data.
    pub epochs: u32,
    /// `sync` or `async`.
    pub mode: ModeName,
    /// Async only: gradients computed on parameters more than this many
    /// versions old are dropped.
    pub staleness: u64,
    /// Workers.
    pub workers: u32,
    /// Data loaders (one per worker).
    pub loaders: u32,
    /// Parameter-server shards.
    pub ps_shards: u32,
    /// Batches a loader prepares ahead of its worker.
    pub prefetch: u32,
    /// The device workers compute on.
    pub device: DeviceSpec,
    /// Seed of the initial parameters and of the shuffles.
    pub seed: u64,
    /// Learning-rate schedule over the epochs: `none` (constant) or
    /// `cosine` (epoch `e` of `E` uses `lr · (1 + cos(π e / E)) / 2`).
    pub lr_decay: LrDecay,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            lr: 0.001,
            batch_size: 32,
            epochs: 10,
            mode: ModeName::Sync,
            staleness: 4,
            workers: 1,
            loaders: 1,
            ps_shards: 1,
            prefetch: 2,
            device: DeviceSpec::Cpu,
            seed: 0,
            lr_decay: LrDecay::None,
        }
    }
}

/// A learning-rate schedule over the epochs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrDecay {
    /// Constant.
    #[default]
    None,
    /// Cosine from `lr` towards 0, stepped once per epoch.
    Cosine,
}

impl LrDecay {
    /// The rate of epoch `epoch` (counted from 0) of `epochs`.
    pub fn rate(self, lr: f32, epoch: u64, epochs: u64) -> f32 {
        match self {
            Self::None => lr,
            Self::Cosine => {
                let t = epoch.min(epochs) as f64 / epochs.max(1) as f64;
                (f64::from(lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
            }
        }
    }
}

/// `sync` or `async`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModeName {
    /// Synchronous.
    Sync,
    /// Asynchronous.
    Async,
}

/// Placement of each actor group in a cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementConfig {
    /// Parameter servers.
    #[serde(default)]
    pub ps: manta_actors::Placement,
    /// Workers.
    #[serde(default)]
    pub workers: manta_actors::Placement,
    /// Loaders.
    #[serde(default)]
    pub loaders: manta_actors::Placement,
}

impl TrainConfig {
    /// Reads a config file; relative paths in it (data, checkpoints) are
    /// relative to the file. Errors name the file, and for syntax and type
    /// errors the line and column.
    pub fn load(path: &Path) -> Result<TrainConfig, MlError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| MlError::Config(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &path.display().to_string(), base)
    }

    /// Parses config text; `source` names it in errors, `base` anchors
    /// relative paths.
    pub fn parse(text: &str, source: &str, base: &Path) -> Result<TrainConfig, MlError> {
        let mut c: TrainConfig = toml::from_str(text)
            .map_err(|e| MlError::Config(format!("{source}: {}", e.to_string().trim_end())))?;
        c.data.path = absolute(base, &c.data.path);
        for p in [&mut c.data.test_path, &mut c.data.validation_path]
            .into_iter()
            .flatten()
        {
            *p = absolute(base, p);
        }
        if let Some(cp) = &mut c.checkpoint {
            cp.dir = absolute(base, &cp.dir);
        }
        c.validate()
            .map_err(|e| MlError::Config(format!("{source}: {e}")))?;
        Ok(c)
    }

    /// Checks the values; errors name the key.
    pub fn validate(&self) -> Result<(), MlError> {
        let t = &self.training;
        let bad = |key: &str, why: String| Err(MlError::Config(format!("{key}: {why}")));
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return bad(
                "training.lr",
                format!("must be a positive number, got {}", t.lr),
            );
        }
        if t.batch_size == 0 {
            return bad("training.batch_size", "must be at least 1".into());
        }
        if t.epochs == 0 {
            return bad("training.epochs", "must be at least 1".into());
        }
        if t.workers == 0 {
            return bad("training.workers", "must be at least 1".into());
        }
        if t.loaders != t.workers {
            return bad(
                "training.loaders",
                format!(
                    "must equal training.workers ({}): each worker reads one loader's shard; got {}",
                    t.workers, t.loaders
                ),
            );
        }
        if t.ps_shards == 0 {
            return bad("training.ps_shards", "must be at least 1".into());
        }
        if self.model.hidden.contains(&0) {
            return bad(
                "model.hidden",
                format!("layer sizes must be positive, got {:?}", self.model.hidden),
            );
        }
        self.data
            .validate()
            .map_err(|e| MlError::Config(e.to_string()))?;
        if self.job.is_empty() || self.job.contains(char::is_whitespace) {
            return bad(
                "job",
                format!(
                    "must be a non-empty name without spaces, got `{}`",
                    self.job
                ),
            );
        }
        self.optimizer
            .validate()
            .map_err(|e| MlError::Config(e.to_string()))?;
        Ok(())
    }

    /// The parameter-server mode.
    pub fn mode(&self) -> Mode {
        match self.training.mode {
            ModeName::Sync => Mode::Sync,
            ModeName::Async => Mode::Async {
                staleness: self.training.staleness,
            },
        }
    }
}

/// `p` anchored at `base`, absolute, with `.` and `..` resolved lexically
/// (the path need not exist yet).
pub(crate) fn absolute(base: &Path, p: &Path) -> PathBuf {
    use std::path::Component;
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    let abs = std::path::absolute(&joined).unwrap_or(joined);
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::LrDecay;

    #[test]
    fn cosine_decay_falls_from_lr_to_zero_over_the_epochs_and_none_stays() {
        assert_eq!(LrDecay::None.rate(0.5, 7, 10), 0.5);
        assert_eq!(LrDecay::Cosine.rate(0.5, 0, 10), 0.5);
        assert!((LrDecay::Cosine.rate(0.5, 5, 10) - 0.25).abs() < 1e-7);
        assert!(LrDecay::Cosine.rate(0.5, 10, 10).abs() < 1e-7);
        // Past the last epoch it stays at the end, never rises again.
        assert!(LrDecay::Cosine.rate(0.5, 15, 10).abs() < 1e-7);
        let mut last = f32::INFINITY;
        for e in 0..=10 {
            let r = LrDecay::Cosine.rate(0.5, e, 10);
            assert!(r <= last, "epoch {e}: {r} after {last}");
            last = r;
        }
    }
}
