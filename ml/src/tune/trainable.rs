//! What a trial runs: the [`Trainable`] trait, and the registry of
//! trainables written in Rust ([`Trainables`]).
//!
//! A trainable runs one iteration at a time and returns that iteration's
//! metrics; it saves its state into a checkpoint directory and restores it
//! from one. The trial actor calls it on tokio's blocking pool, so an
//! iteration may compute for as long as it likes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::TuneError;
use super::space::Params;

/// One iteration's metrics, by name.
pub type Metrics = BTreeMap<String, f64>;

/// What a trainable is told about its trial.
#[derive(Debug, Clone, PartialEq)]
pub struct TrialInfo {
    /// The trial id (from 0).
    pub id: u64,
    /// Its hyper-parameters.
    pub params: Params,
    /// Its directory (checkpoints go in sub-directories).
    pub dir: PathBuf,
    /// The attempt (from 0; more after failures and resumes).
    pub attempt: u64,
    /// The most iterations it will be asked for, if bounded.
    pub max_iterations: Option<u64>,
}

/// A trainable: one iteration at a time, with checkpoints.
pub trait Trainable: Send + 'static {
    /// Runs the next iteration; returns its metrics. An error fails the
    /// trial (it is retried from its last checkpoint up to `max_failures`).
    fn step(&mut self) -> Result<Metrics, TuneError>;

    /// Writes the state into `dir` (an empty, existing directory).
    fn save(&mut self, dir: &Path) -> Result<(), TuneError>;

    /// Reads the state back from a directory [`save`](Self::save) wrote.
    fn restore(&mut self, dir: &Path) -> Result<(), TuneError>;

    /// The iterations this trainable runs at most on its own (e.g. the
    /// digits trainable's `epochs`); the trial completes there.
    fn max_iterations(&self) -> Option<u64> {
        None
    }
}

/// Builds a trial's trainable.
pub type TrainableFactory =
    Arc<dyn Fn(&TrialInfo) -> Result<Box<dyn Trainable>, TuneError> + Send + Sync>;

/// Trainables written in Rust, by name (`[trainable] kind = "rust"`).
#[derive(Clone, Default)]
pub struct Trainables(BTreeMap<String, TrainableFactory>);

impl Trainables {
    /// No trainables.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `make` under `name`.
    pub fn with(
        mut self,
        name: impl Into<String>,
        make: impl Fn(&TrialInfo) -> Result<Box<dyn Trainable>, TuneError> + Send + Sync + 'static,
    ) -> Self {
        self.0.insert(name.into(), Arc::new(make));
        self
    }

    /// The factory named `name`.
    pub fn get(&self, name: &str) -> Option<TrainableFactory> {
        self.0.get(name).cloned()
    }

    /// The names.
    pub fn names(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

impl std::fmt::Debug for Trainables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}
