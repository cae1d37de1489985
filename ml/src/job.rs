//! A training job: parameter-server shards, loaders and workers under one
//! supervisor, in this process or placed on the nodes of a cluster; the
//! driver follows progress, evaluates, and reports.

use std::time::{Duration, Instant};

use manta_actors::{ActorHandle, ActorSystem, ChildFactory, KindRegistry, Placer};
use manta_supervision::{
    ChildSpec, Restart, Strategy, Supervisor, SupervisorHandle, SupervisorSpec,
};
use serde::Serialize;

use crate::config::TrainConfig;
use crate::data::{Dataset, ShardPlan};
use crate::device::{DeviceSpec, check_device};
use crate::directory::Directory;
use crate::error::MlError;
use crate::loader::LoaderArgs;
use crate::model::{Mlp, ModelSpec, ParamTensor, accuracy};
use crate::ps::{Mode, Params, PsArgs, PsMsg, PsStatus, assign_shards};
use crate::worker::WorkerArgs;
use crate::{LOADER_KIND, PS_KIND, WORKER_KIND};

/// Where a job runs.
pub enum Env<'a> {
    /// Everything in this process (its own actor system).
    InProcess,
    /// On the nodes of the cluster this node belongs to. Every node must
    /// have the ML kinds registered ([`crate::register_kinds`]) with a
    /// cluster [`Directory`].
    Cluster(&'a manta_cluster::Node),
}

/// What the driver reports while training.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Progress {
    /// The job's actors are up.
    Started {
        /// Updates to apply in all (sync), or batches to compute (async).
        total_steps: u64,
        /// Batches per epoch per worker.
        batches_per_epoch: u32,
        /// Epochs.
        epochs: u32,
        /// Workers.
        workers: u32,
        /// Training rows.
        train_rows: usize,
        /// Test rows.
        test_rows: usize,
        /// Features per row, as read from the data.
        features: usize,
        /// Classes (largest label + 1 over the data's files).
        classes: usize,
        /// Model parameters.
        params: usize,
    },
    /// Periodic progress.
    Step {
        /// Updates applied (parameter-server version).
        version: u64,
        /// Fractional epoch reached.
        epoch: f64,
        /// Loss of the latest update.
        loss: f32,
        /// Rows trained on.
        samples: u64,
        /// Rows per second since the start.
        samples_per_sec: f64,
    },
    /// An epoch has ended (sync) or its worth of rows has been seen (async).
    Epoch {
        /// The epoch just finished (from 1).
        epoch: u32,
        /// Loss of the latest update.
        loss: f32,
        /// Accuracy on the test split.
        test_accuracy: f32,
        /// Rows per second since the start.
        samples_per_sec: f64,
    },
}

/// The outcome of a job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainReport {
    /// Accuracy on the test split with the final parameters.
    pub test_accuracy: f32,
    /// Seconds from the actors being up to the last update.
    pub train_seconds: f64,
    /// Training rows per second.
    pub samples_per_sec: f64,
    /// The checkpoint directory holding the final parameters (if any).
    pub checkpoint: Option<String>,
    /// Updates applied (shard 0's version).
    pub steps: u64,
    /// Loss of the last update.
    pub final_loss: f32,
    /// Epochs.
    pub epochs: u32,
    /// Workers.
    pub workers: u32,
    /// `sync` or `async`.
    pub mode: String,
    /// Device of the workers.
    pub device: String,
    /// Training rows.
    pub train_rows: usize,
    /// Test rows.
    pub test_rows: usize,
    /// Features per row, as read from the data.
    pub features: usize,
    /// Classes (largest label + 1 over the data's files).
    pub classes: usize,
    /// Model parameters.
    pub params: usize,
    /// Pushes the parameter servers dropped (stale or malformed).
    pub rejected_pushes: u64,
    /// Checkpoint version a parameter server resumed from during the job.
    pub resumed_from: Option<u64>,
    /// The final parameters (not in the JSON report).
    #[serde(skip)]
    pub final_params: Vec<ParamTensor>,
}

/// The registered names of a job's actors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobNames {
    /// Parameter-server shards.
    pub ps: Vec<String>,
    /// Loaders.
    pub loaders: Vec<String>,
    /// Workers.
    pub workers: Vec<String>,
}

impl JobNames {
    /// The names for `config`.
    pub fn of(config: &TrainConfig) -> Self {
        let j = &config.job;
        let t = &config.training;
        Self {
            ps: (0..t.ps_shards).map(|i| format!("{j}.ps.{i}")).collect(),
            loaders: (0..t.loaders).map(|i| format!("{j}.loader.{i}")).collect(),
            workers: (0..t.workers).map(|i| format!("{j}.worker.{i}")).collect(),
        }
    }
}

/// A job whose actors have started.
pub struct RunningJob {
    /// Its supervisor.
    pub supervisor: SupervisorHandle,
    /// How names are resolved.
    pub directory: Directory,
    /// The registered names.
    pub names: JobNames,
    /// The model.
    pub model: ModelSpec,
    /// Its training rows.
    pub train: Dataset,
    /// Its test rows.
    pub test: Dataset,
    /// Batches per epoch per worker.
    pub batches_per_epoch: u32,
    /// This run's checkpoint directory (a `run-*` sub-directory of the
    /// configured one).
    pub checkpoint_dir: Option<std::path::PathBuf>,
    config: TrainConfig,
    /// Keeps the in-process system alive.
    _system: ActorSystem,
}

/// The kinds and system for an in-process job.
fn local_system() -> (ActorSystem, Directory) {
    let kinds = KindRegistry::new();
    let system = ActorSystem::with_kinds(kinds.clone());
    let directory = Directory::Local(system.clone());
    crate::register_kinds(&kinds, directory.clone());
    (system, directory)
}

fn value<T: Serialize>(what: &str, v: &T) -> Result<manta_actors::ArgsValue, MlError> {
    serde_json::to_value(v)
        .map_err(|e| MlError::Config(format!("{what}: cannot encode arguments: {e}")))
}

/// Starts a job's actors (without waiting for it to finish).
pub async fn start(config: &TrainConfig, env: Env<'_>) -> Result<RunningJob, MlError> {
    config.validate()?;
    let (train, test, input) = config.data.load_split_with_stats()?;
    let t = &config.training;
    let plan = ShardPlan {
        shards: t.loaders,
        batch_size: t.batch_size,
    };
    plan.validate(train.len())?;
    let bpe = plan.batches_per_epoch(train.len());
    let model = ModelSpec {
        inputs: train.cols,
        hidden: config.model.hidden.clone(),
        classes: train.classes,
    };
    model.validate()?;
    if matches!(env, Env::InProcess) {
        check_device(t.device)?;
    }
    let names = JobNames::of(config);
    let checkpoint = match &config.checkpoint {
        Some(c) => Some(crate::ps::CheckpointSpec {
            dir: run_dir(&c.dir, c.resume)?,
            ..c.clone()
        }),
        None => None,
    };
    let (system, directory, placer): (ActorSystem, Directory, Option<&dyn Placer>) = match env {
        Env::InProcess => {
            let (s, d) = local_system();
            (s, d, None)
        }
        Env::Cluster(node) => {
            let d = Directory::cluster();
            d.bind(node.names());
            (
                node.system().clone(),
                d,
                Some(node.cluster() as &dyn Placer),
            )
        }
    };
    let make = |kind: &str,
                args: manta_actors::ArgsValue,
                placement: &manta_actors::Placement|
     -> Result<std::sync::Arc<dyn ChildFactory>, MlError> {
        match placer {
            Some(p) => p.factory(kind, args, placement),
            None => system.kinds().prepare(kind, args),
        }
        .map_err(|e| MlError::Actor(format!("{kind}: {e}")))
    };
    let mut spec = SupervisorSpec::new(config.job.clone())
        .strategy(Strategy::OneForOne)
        .intensity(50, Duration::from_secs(60));
    for (i, name) in names.ps.iter().enumerate() {
        let args = PsArgs {
            shard: i as u32,
            shards: t.ps_shards,
            model: model.clone(),
            init_seed: t.seed,
            optimizer: config.optimizer.clone(),
            lr: t.lr,
            mode: config.mode(),
            workers: t.workers,
            checkpoint: checkpoint.clone(),
            lr_decay: t.lr_decay,
            steps_per_epoch: match config.mode() {
                crate::ps::Mode::Sync => u64::from(bpe),
                crate::ps::Mode::Async { .. } => u64::from(bpe) * u64::from(t.workers),
            },
            epochs: t.epochs,
            input: input.clone(),
        };
        let f = make(PS_KIND, value(PS_KIND, &args)?, &config.placement.ps)?;
        spec = spec.child(ChildSpec::worker(name.clone(), f).register(name.clone()));
    }
    for (i, name) in names.loaders.iter().enumerate() {
        let args = LoaderArgs {
            dataset: config.data.clone(),
            shard: i as u32,
            plan,
            seed: t.seed,
            epochs: t.epochs,
            prefetch: t.prefetch,
            state_dir: None,
        };
        let f = make(
            LOADER_KIND,
            value(LOADER_KIND, &args)?,
            &config.placement.loaders,
        )?;
        spec = spec.child(ChildSpec::worker(name.clone(), f).register(name.clone()));
    }
    for (i, name) in names.workers.iter().enumerate() {
        let args = WorkerArgs {
            index: i as u32,
            model: model.clone(),
            loader: names.loaders[i % names.loaders.len()].clone(),
            ps: names.ps.clone(),
            mode: config.mode(),
            epochs: t.epochs,
            batches_per_epoch: bpe,
            device: t.device,
            prefetch: t.prefetch,
        };
        let f = make(
            WORKER_KIND,
            value(WORKER_KIND, &args)?,
            &config.placement.workers,
        )?;
        spec = spec.child(
            ChildSpec::worker(name.clone(), f)
                .register(name.clone())
                .restart(Restart::Transient),
        );
    }
    let supervisor = Supervisor::start(&system, spec)
        .await
        .map_err(|e| MlError::Actor(format!("training job `{}` did not start: {e}", config.job)))?;
    Ok(RunningJob {
        supervisor,
        directory,
        names,
        model,
        train,
        test,
        batches_per_epoch: bpe,
        checkpoint_dir: checkpoint.map(|c| c.dir),
        config: config.clone(),
        _system: system,
    })
}

const ASK: Duration = Duration::from_secs(10);

/// Test accuracy of `params` on `test`, on the CPU.
fn accuracy_of(
    model: &ModelSpec,
    test: &Dataset,
    params: Vec<ParamTensor>,
) -> Result<f32, MlError> {
    type B = burn::backend::NdArray<f32>;
    let device = burn::backend::ndarray::NdArrayDevice::Cpu;
    let model = Mlp::<B>::from_owned_params(model, params, &device)?;
    accuracy(&model, test, &device)
}

impl RunningJob {
    /// A handle to parameter-server shard `i`, waiting (bounded) for its
    /// name to be visible (in a cluster, names travel by gossip).
    pub async fn ps(&self, i: usize) -> Result<ActorHandle<PsMsg>, MlError> {
        let name = &self.names.ps[i];
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.directory.resolve::<PsMsg>(name) {
                Ok(h) => return Ok(h),
                Err(e) if Instant::now() > deadline => {
                    return Err(MlError::Actor(format!("parameter server {name}: {e}")));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Every shard's status.
    pub async fn status(&self) -> Result<Vec<PsStatus>, MlError> {
        let mut out = Vec::new();
        for i in 0..self.names.ps.len() {
            match self.ps(i).await?.ask(PsMsg::Status, ASK).await {
                Ok(s) => out.push(s),
                Err(e) => {
                    return Err(MlError::Actor(format!(
                        "status of {}: {e}",
                        self.names.ps[i]
                    )));
                }
            }
        }
        Ok(out)
    }

    /// The full current parameters, assembled from every shard.
    pub async fn params(&self) -> Result<Vec<ParamTensor>, MlError> {
        let owner = assign_shards(&self.model, self.names.ps.len() as u32);
        let mut shards = Vec::new();
        for i in 0..self.names.ps.len() {
            let Params { params, .. } = self
                .ps(i)
                .await?
                .ask(
                    |reply| PsMsg::Pull {
                        worker: u32::MAX,
                        min_version: 0,
                        reply,
                    },
                    ASK,
                )
                .await
                .map_err(|e| MlError::Actor(format!("pull from {}: {e}", self.names.ps[i])))?;
            shards.push(std::sync::Arc::unwrap_or_clone(params).into_iter());
        }
        owner
            .iter()
            .map(|&s| {
                shards[s as usize]
                    .next()
                    .ok_or_else(|| MlError::Actor(format!("shard {s} sent too few parameters")))
            })
            .collect()
    }

    /// Test accuracy of the current parameters (evaluated on this node's
    /// CPU, on the blocking pool: the runtime threads keep serving the job's
    /// actors meanwhile, so a worker waiting for its pull is not held up).
    pub async fn evaluate(&self) -> Result<f32, MlError> {
        let params = self.params().await?;
        let (model, test) = (self.model.clone(), self.test.clone());
        tokio::task::spawn_blocking(move || accuracy_of(&model, &test, params))
            .await
            .map_err(|e| MlError::Actor(format!("evaluation panicked: {e}")))?
    }

    /// Follows the job to its end, reporting progress; then writes a final
    /// checkpoint (if configured) and stops the job's actors.
    pub async fn finish(
        self,
        mut on_progress: impl FnMut(&Progress),
    ) -> Result<TrainReport, MlError> {
        let t = &self.config.training;
        let sync = matches!(self.config.mode(), Mode::Sync);
        let bpe = u64::from(self.batches_per_epoch);
        let total = u64::from(t.epochs) * bpe * if sync { 1 } else { u64::from(t.workers) };
        on_progress(&Progress::Started {
            total_steps: total,
            batches_per_epoch: self.batches_per_epoch,
            epochs: t.epochs,
            workers: t.workers,
            train_rows: self.train.len(),
            test_rows: self.test.len(),
            features: self.model.inputs,
            classes: self.model.classes,
            params: self.model.param_count(),
        });
        let started = Instant::now();
        let rows_per_epoch = self.train.len() as u64;
        let mut epochs_reported = 0u32;
        let mut resumed_from = None;
        let last = loop {
            if let Some(reason) = self.supervisor.monitor().try_get() {
                return Err(MlError::Actor(format!(
                    "training job `{}` stopped before finishing: {reason}",
                    self.config.job
                )));
            }
            // Wait (bounded) for the next epoch boundary or the end.
            let next_epoch_version = if sync {
                (u64::from(epochs_reported) + 1) * bpe
            } else {
                u64::MAX
            };
            if let Ok(ps0) = self.ps(0).await {
                let _ = ps0
                    .ask(
                        |reply| PsMsg::WaitVersion(next_epoch_version, reply),
                        Duration::from_millis(500),
                    )
                    .await;
            }
            let status = match self.status().await {
                Ok(s) => s,
                // A shard being restarted: try again.
                Err(e) => {
                    tracing::debug!(error = %e, "status unavailable");
                    continue;
                }
            };
            resumed_from = status
                .iter()
                .filter_map(|s| s.restored_from)
                .max()
                .or(resumed_from);
            let s0 = &status[0];
            let secs = started.elapsed().as_secs_f64();
            let rate = s0.samples as f64 / secs.max(1e-9);
            let epoch = s0.samples as f64 / rows_per_epoch as f64;
            on_progress(&Progress::Step {
                version: s0.version,
                epoch,
                loss: s0.last_loss,
                samples: s0.samples,
                samples_per_sec: rate,
            });
            let reached = if sync {
                (s0.version / bpe) as u32
            } else {
                epoch.floor() as u32
            }
            .min(t.epochs);
            let done = status.iter().all(|s| s.done);
            if reached > epochs_reported && (!done || reached < t.epochs) {
                epochs_reported = reached;
                if let Ok(acc) = self.evaluate().await {
                    on_progress(&Progress::Epoch {
                        epoch: reached,
                        loss: s0.last_loss,
                        test_accuracy: acc,
                        samples_per_sec: rate,
                    });
                }
            }
            if done {
                break (status, secs);
            }
        };
        let (status, train_seconds) = last;
        let final_params = self.params().await?;
        let test_accuracy = accuracy_of(&self.model, &self.test, final_params.clone())?;
        let s0 = &status[0];
        let samples_per_sec = s0.samples as f64 / train_seconds.max(1e-9);
        if epochs_reported < t.epochs {
            on_progress(&Progress::Epoch {
                epoch: t.epochs,
                loss: s0.last_loss,
                test_accuracy,
                samples_per_sec,
            });
        }
        let mut checkpoint = None;
        if let Some(dir) = &self.checkpoint_dir {
            for i in 0..self.names.ps.len() {
                match self.ps(i).await?.ask(PsMsg::Checkpoint, ASK).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(why)) => {
                        return Err(MlError::Checkpoint {
                            path: dir.display().to_string(),
                            message: why,
                        });
                    }
                    Err(e) => {
                        return Err(MlError::Actor(format!(
                            "checkpoint of {}: {e}",
                            self.names.ps[i]
                        )));
                    }
                }
            }
            checkpoint = Some(dir.display().to_string());
        }
        self.supervisor.shutdown().await;
        Ok(TrainReport {
            test_accuracy,
            train_seconds,
            samples_per_sec,
            checkpoint,
            steps: s0.version,
            final_loss: s0.last_loss,
            epochs: t.epochs,
            workers: t.workers,
            mode: if sync { "sync".into() } else { "async".into() },
            device: t.device.to_string(),
            train_rows: self.train.len(),
            test_rows: self.test.len(),
            features: self.model.inputs,
            classes: self.model.classes,
            params: self.model.param_count(),
            rejected_pushes: status.iter().map(|s| s.rejected).sum(),
            resumed_from,
            final_params,
        })
    }
}

/// Runs a job to its end (see [`start`] and [`RunningJob::finish`]).
pub async fn train(
    config: &TrainConfig,
    env: Env<'_>,
    on_progress: impl FnMut(&Progress),
) -> Result<TrainReport, MlError> {
    start(config, env).await?.finish(on_progress).await
}

/// Whether `config` runs best in this process on a one-thread runtime: a
/// single worker on the CPU.
///
/// One worker's training is sequential in either mode: the worker computes
/// a gradient, the parameter server applies it and answers with the next
/// parameters, the worker computes again. A second thread only adds a
/// cross-thread wake-up to every message of a step (`cargo bench --bench ml
/// -- training`, one worker: 1.13x of the single-process loop's time per
/// sample on a two-thread runtime, 0.95-1.01x on one thread).
pub fn runs_on_one_thread(config: &TrainConfig) -> bool {
    config.training.workers == 1 && config.training.device == DeviceSpec::Cpu
}

/// A tokio runtime for running `config` in this process: one thread where
/// [`runs_on_one_thread`], else one per core. `manta train` without
/// `--seeds` uses it.
pub fn in_process_runtime(config: &TrainConfig) -> std::io::Result<tokio::runtime::Runtime> {
    use tokio::runtime::Builder;
    if runs_on_one_thread(config) {
        Builder::new_current_thread().enable_all().build()
    } else {
        Builder::new_multi_thread().enable_all().build()
    }
}

/// The device a config asks for, checked on this host.
pub fn check_config_device(config: &TrainConfig) -> Result<DeviceSpec, MlError> {
    check_device(config.training.device)?;
    Ok(config.training.device)
}

/// The checkpoint directory of this run: a new `run-<unix seconds>-<pid>`
/// under `dir`, or with `resume` the newest existing one (a new one when
/// there is none). Earlier runs are never overwritten.
fn run_dir(dir: &std::path::Path, resume: bool) -> Result<std::path::PathBuf, MlError> {
    let err = |e: std::io::Error| MlError::Checkpoint {
        path: dir.display().to_string(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    if resume {
        let newest = std::fs::read_dir(dir)
            .map_err(err)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("run-"))
            })
            .max();
        if let Some(p) = newest {
            return Ok(p);
        }
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut n = 0;
    loop {
        let p = dir.join(format!("run-{secs:012}-{}-{n}", std::process::id()));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
            Err(e) => return Err(err(e)),
        }
    }
}
