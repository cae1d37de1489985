//! # manta-ml: distributed training on Manta actors, with burn
//!
//! - [`data`] — CSV datasets (plain or gzip), a seeded stratified split, and
//!   the shard/batch plan ([`ShardPlan`]).
//! - [`device`] — `cpu` (burn NdArray) or `cuda:N` (feature `cuda`);
//!   model and training code is generic over the burn backend.
//! - [`model`] — an MLP ([`Mlp`]) and its parameters as plain vectors.
//! - [`optim`] — SGD with momentum and Adam over flat vectors, update for
//!   update the same as burn's.
//! - [`loader`] — data-loader actors: shards, seeded per-epoch shuffles,
//!   prefetch within credits granted by the consumer, resumable positions.
//! - [`ps`] — parameter-server shards: sync (averaged) or async (bounded
//!   staleness) updates, checkpoints, resume.
//! - [`worker`] — workers: pull, compute gradients with burn autodiff, push.
//! - [`job`] — a training job from a [`TrainConfig`]: in-process, or placed
//!   on the nodes of a cluster, under a supervisor.
//! - [`reference`] — the single-process burn loop (baseline and anchor).
//! - [`tune`] — hyper-parameter search: search spaces, searchers (grid,
//!   random, TPE), schedulers (ASHA, median stopping), trial actors, the
//!   SQLite experiment store, exports and plots.
//!
//! The actor kinds (`manta.ps`, `manta.loader`, `manta.worker`, and the
//! tuner's trials, `manta.tune.trial`) are registered with
//! [`register_kinds`], so that other nodes can host them.

pub mod config;
pub mod data;
pub mod device;
pub mod directory;
mod error;
pub mod job;
pub mod loader;
pub mod model;
pub mod optim;
pub mod ps;
pub mod reference;
pub mod rng;
pub mod tune;
mod wire;
pub mod worker;

pub use config::{LrDecay, TrainConfig};
pub use data::{Batch, Dataset, DatasetSpec, ShardPlan, Standardization};
pub use device::DeviceSpec;
pub use directory::Directory;
pub use error::{DataError, MlError};
pub use job::{Env, Progress, RunningJob, TrainReport, train};
pub use model::{Mlp, ModelSpec, ParamTensor};
pub use optim::OptimizerConfig;
pub use ps::Mode;
pub use wire::{idle_f32_bytes, recycle_f32s};

use manta_actors::{ActorError, Kind, KindRegistry};

/// Kind name of parameter-server shards.
pub const PS_KIND: &str = "manta.ps";
/// Kind name of data loaders.
pub const LOADER_KIND: &str = "manta.loader";
/// Kind name of workers.
pub const WORKER_KIND: &str = "manta.worker";

/// The typed token of the parameter-server kind ([`PS_KIND`]), for
/// `Cluster::spawn_on`.
pub fn ps_kind() -> Kind<ps::PsArgs, ps::PsMsg> {
    Kind::named(PS_KIND)
}

/// The typed token of the loader kind ([`LOADER_KIND`]).
pub fn loader_kind() -> Kind<loader::LoaderArgs, loader::LoaderMsg> {
    Kind::named(LOADER_KIND)
}

/// The typed token of the worker kind ([`WORKER_KIND`]).
pub fn worker_kind() -> Kind<worker::WorkerArgs, worker::WorkerMsg> {
    Kind::named(WORKER_KIND)
}

/// Registers the training actor kinds; workers find their peers through
/// `directory`. Trials of other nodes' tuners run here too, but not
/// command trials (see [`register_kinds_with`]).
pub fn register_kinds(kinds: &KindRegistry, directory: Directory) {
    register_kinds_with(kinds, directory, false);
}

/// [`register_kinds`]; with `command_trials`, a tuner elsewhere in the
/// cluster may also run command-line trials on this node (any command a
/// member holding the cluster secret names: opt in per node).
pub fn register_kinds_with(kinds: &KindRegistry, directory: Directory, command_trials: bool) {
    kinds.register(PS_KIND, ps::ParamServer::new);
    kinds.register(LOADER_KIND, loader::Loader::new);
    let workers = directory.clone();
    kinds.register(WORKER_KIND, move |args: worker::WorkerArgs| {
        worker::Worker::new(args, workers.clone())
    });
    tune::register_trial_kind(
        kinds,
        directory,
        tune::Trainables::default(),
        command_trials,
    );
}

pub(crate) fn fail(message: impl Into<String>) -> ActorError {
    message.into().into()
}
