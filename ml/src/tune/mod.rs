//! # Hyper-parameter tuning on Manta actors (issue 18)
//!
//! An experiment ([`TuneConfig`], from code or a TOML file) runs trials of a
//! trainable with hyper-parameters chosen by a [searcher](search) from a
//! [search space](space); a [scheduler](schedule) and the stoppers decide
//! after each result whether a trial goes on. The controller (one actor)
//! owns the searcher, the scheduler and the [store] (SQLite in the
//! experiment directory); trials are actors under a supervisor that report
//! every result to the controller by message and get the decision as the
//! answer. Trainables: the [`Trainable`] trait (Rust), the digits MLP of
//! manta-ml ([`DigitsTrainable`]), and any external command (metrics read
//! from `name=value` lines on its standard output).
//!
//! [`run_on`] with [`crate::Env::Cluster`] runs the trials on the nodes of
//! a cluster (the kind [`TRIAL_KIND`]), placed by the cpus and gpus each
//! asks for (`[trial]`); checkpoints travel back to the controller as bytes
//! ([`transfer`]), and a trial whose node dies continues on another node
//! from its last checkpoint.
//!
//! ```no_run
//! # async fn f() -> Result<(), manta_ml::tune::TuneError> {
//! use manta_ml::tune::{TuneConfig, Trainables, run};
//! let config = TuneConfig::load(std::path::Path::new("examples/tune-digits.toml"))?;
//! let summary = run(config, &Trainables::default(), false, |_| {}).await?;
//! println!("best: {:?}", summary.best);
//! # Ok(()) }
//! ```

mod actors;
pub mod config;
pub mod digits;
pub mod external;
pub mod png;
pub mod report;
pub mod schedule;
pub mod search;
pub mod space;
pub mod store;
pub mod trainable;
pub mod transfer;

pub use actors::{
    Best, Event, PLACEMENT_WAIT, RemoteTrialArgs, Summary, TRIAL_KIND, TrialState,
    register_trial_kind, resume_config, run, run_on,
};
pub use config::{ExperimentSpec, MetricMode, TrainableSpec, TrialPlacement, TuneConfig};
pub use digits::DigitsTrainable;
pub use schedule::{Decision, Scheduler, SchedulerSpec, Stoppers};
pub use search::{Searcher, SearcherSpec};
pub use space::{Domain, Params, SearchSpace};
pub use store::Store;
pub use trainable::{Metrics, Trainable, TrainableFactory, Trainables, TrialInfo};

/// Tuning failed, or could not start.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// A bad configuration: the message names the file, and line and column
    /// where known, and the key.
    #[error("{0}")]
    Config(String),
    /// The experiment store could not be read or written.
    #[error("experiment store {path}: {message}")]
    Store {
        /// The database file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// The file in the experiment directory is not a Manta experiment.
    #[error("{path} is not a manta tune experiment store ({why}); refusing to touch it")]
    Foreign {
        /// The file.
        path: String,
        /// What gave it away.
        why: String,
    },
    /// A trial failed (as the trainable reported it).
    #[error("trial {trial}: {message}")]
    Trial {
        /// The trial id.
        trial: u64,
        /// What went wrong.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The ML layer failed (digits trainable).
    #[error(transparent)]
    Ml(#[from] crate::MlError),
    /// An actor of the experiment could not be started or reached.
    #[error("{0}")]
    Actor(String),
}

impl TuneError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        TuneError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
