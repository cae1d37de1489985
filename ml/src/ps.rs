//! Parameter servers: each owns a shard of the model's parameters and the
//! optimizer state for it. Workers pull parameters and push gradients.
//!
//! - **Synchronous** mode: a shard waits for one gradient from every worker
//!   for its current version, averages them, applies the optimizer and moves
//!   to the next version; a worker's pull for the next version is answered
//!   (deferred reply) once that happens. With one worker this is exactly
//!   mini-batch training.
//! - **Asynchronous** mode: gradients are applied as they come, unless they
//!   were computed on parameters more than `staleness` versions old.
//! - **Checkpoints** every `every` versions: parameters, optimizer state and
//!   version, written atomically; a restarted shard resumes from its newest
//!   checkpoint that fits: one larger than this shard's checkpoints can be is
//!   refused before it is read, and every vector of one that is read is
//!   checked against the model and the optimizer ([`CheckpointError`]; the
//!   refusals are in [`PsStatus::refused_checkpoints`]).
//!
//! Only the job's workers count: a shard of a job with `workers` workers
//! takes pushes, push-pulls and worker-done messages from workers
//! `0..workers` (their indices) and refuses, counts and (once) logs any
//! other id ([`PushError::NotInJob`]). In a sync round each worker counts
//! once (its first push; a repeat is [`PushError::AlreadyPushed`]), and a
//! worker is done once. Pulls are open to any id (`u32::MAX` is the
//! driver's): they change nothing.
//!
//! The version counter never wraps: at `u64::MAX` an update is refused
//! ([`PushError::VersionOverflow`]), as is one an optimizer state cannot
//! take ([`PushError::Optimizer`]); nothing changes then.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use manta_actors::{Actor, ActorError, Context, Message, ReplyTo};
use serde::{Deserialize, Serialize};

use crate::error::MlError;
use crate::model::{ModelSpec, ParamTensor};
use crate::optim::{OptimizerConfig, SlotState, StateError};

/// How gradients are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Mode {
    /// Average every worker's gradient each step.
    Sync,
    /// Apply gradients as they arrive, dropping those computed on parameters
    /// more than `staleness` versions old.
    Async {
        /// The staleness bound, in versions.
        staleness: u64,
    },
}

/// Where and how often checkpoints are written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    /// The directory (one sub-directory per shard).
    pub dir: PathBuf,
    /// Write one every this many versions (0 = only when asked).
    pub every: u64,
    /// Checkpoints kept per shard.
    #[serde(default = "default_keep")]
    pub keep: u32,
    /// When a job starts: continue the newest earlier run in `dir` (true),
    /// or start a fresh run in a new sub-directory (false, the default).
    #[serde(default)]
    pub resume: bool,
}

fn default_keep() -> u32 {
    3
}

/// Arguments of a parameter-server shard (kind `manta.ps`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PsArgs {
    /// This shard.
    pub shard: u32,
    /// Number of shards.
    pub shards: u32,
    /// The model.
    pub model: ModelSpec,
    /// Seed of the initial parameters.
    pub init_seed: u64,
    /// The optimizer.
    pub optimizer: OptimizerConfig,
    /// Learning rate.
    pub lr: f32,
    /// Sync or async.
    pub mode: Mode,
    /// Number of workers: the job's workers are those with indices
    /// `0..workers`, and only they count.
    pub workers: u32,
    /// Checkpoints (optional).
    #[serde(default)]
    pub checkpoint: Option<CheckpointSpec>,
    /// The learning-rate schedule: the update of version `v` belongs to
    /// epoch `v / steps_per_epoch` of `epochs`.
    #[serde(default)]
    pub lr_decay: crate::config::LrDecay,
    /// Updates per epoch (sync: batches per epoch of one worker; async:
    /// that times the workers). Only read with a decaying rate.
    #[serde(default)]
    pub steps_per_epoch: u64,
    /// Epochs of the job. Only read with a decaying rate.
    #[serde(default)]
    pub epochs: u32,
    /// The input standardization the job trains with: written beside the
    /// checkpoints ([`INPUT_FILE`] in the run directory) by the shard that
    /// writes them, so that whichever node holds the checkpoints holds the
    /// statistics a served model needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<crate::data::Standardization>,
}

/// Which shard owns each parameter tensor: largest tensors first, each to
/// the shard holding the fewest values so far (ties to the lowest shard).
pub fn assign_shards(model: &ModelSpec, shards: u32) -> Vec<u32> {
    let shapes = model.shapes();
    let mut sizes: Vec<(usize, usize)> = shapes
        .iter()
        .enumerate()
        .map(|(i, (_, s))| (i, s.iter().product()))
        .collect();
    sizes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut load = vec![0usize; shards.max(1) as usize];
    let mut owner = vec![0u32; shapes.len()];
    for (i, n) in sizes {
        let (s, _) = load
            .iter()
            .enumerate()
            .min_by_key(|(s, l)| (**l, *s))
            .unwrap_or((0, &0));
        owner[i] = s as u32;
        load[s] += n;
    }
    owner
}

/// A worker's gradients for one shard, computed on `version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gradients {
    /// The pusher.
    pub worker: u32,
    /// The version the gradients were computed on.
    pub version: u64,
    /// One gradient per parameter of this shard, in order.
    #[serde(with = "crate::wire::f32_vecs")]
    pub grads: Vec<Vec<f32>>,
    /// The batch's loss.
    pub loss: f32,
    /// Rows in the batch.
    pub samples: u32,
}

impl Drop for Gradients {
    /// The vectors go back to the decode pool ([`crate::recycle_f32s`]):
    /// a worker's gradients, once encoded, hold the next parameters it
    /// pulls; a shard's decoded push, once applied, the next push.
    fn drop(&mut self) {
        crate::wire::recycle_f32s(std::mem::take(&mut self.grads));
    }
}

/// Messages of a parameter-server shard. Requests carry their typed reply.
#[derive(Debug, Serialize, Deserialize)]
pub enum PsMsg {
    /// The shard's parameters, at `min_version` or later (sync mode waits
    /// when this worker has pushed for the current version).
    Pull {
        /// The puller (`u32::MAX` for an observer).
        worker: u32,
        /// The version wanted.
        min_version: u64,
        /// Where the parameters go.
        reply: ReplyTo<Params>,
    },
    /// Gradients of the shard's parameters; answers what became of them,
    /// or why they were refused ([`PushError`] as text: wrong shapes, a
    /// worker outside the job, a repeat within a sync round, a counter at
    /// its limit; the shard keeps running).
    Push(Gradients, ReplyTo<Result<Pushed, String>>),
    /// A worker has finished its data (counted once per worker; an id
    /// outside the job is refused and counted in [`PsStatus::foreign`]).
    WorkerDone {
        /// The worker.
        worker: u32,
    },
    /// Reports counters.
    Status(ReplyTo<PsStatus>),
    /// Answers the version once it reaches the given one, or training is
    /// done.
    WaitVersion(u64, ReplyTo<u64>),
    /// Writes a checkpoint now; answers its path.
    Checkpoint(ReplyTo<Result<String, String>>),
    /// A push followed by a pull, in one round trip: the gradients are taken
    /// as by [`PsMsg::Push`] (a stale or malformed push is counted and
    /// dropped), then the reply is what a pull of the next version
    /// (`min_version: version + 1`) answers: in sync mode, once every worker
    /// has pushed for this version. A training step costs one message per
    /// shard instead of a push and a pull.
    PushPull(Gradients, ReplyTo<Params>),
}

/// A shard's parameters at a version: what pulls answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// Their version.
    pub version: u64,
    /// The shard's parameters, in model order: shared with the shard (no
    /// copy per pull; the shard copies them only if it must update them
    /// while a reply still holds them). `Arc::unwrap_or_clone` gives a
    /// puller its own. Encoded as a plain list.
    #[serde(with = "crate::wire::shared")]
    pub params: Arc<Vec<ParamTensor>>,
}

/// What became of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pushed {
    /// Whether the gradients will be applied (false: too stale).
    pub accepted: bool,
    /// The shard's version now.
    pub version: u64,
}

/// A shard's counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PsStatus {
    /// The shard.
    pub shard: u32,
    /// Updates applied.
    pub version: u64,
    /// Loss of the last update (mean over its gradients).
    pub last_loss: f32,
    /// Rows behind the applied updates (saturating at `u64::MAX`).
    pub samples: u64,
    /// Pushes (and push-pulls) dropped: stale, malformed, from a worker
    /// outside the job, repeated within a sync round, or refused at a
    /// counter's limit.
    pub rejected: u64,
    /// Pushes, push-pulls and worker-done messages refused because they
    /// named a worker outside the job (`0..workers`).
    pub foreign: u64,
    /// Pushes repeated by a worker within one sync round, and repeated
    /// worker-done messages: not counted again.
    pub duplicates: u64,
    /// Workers that have finished.
    pub done_workers: u32,
    /// Whether every worker has finished.
    pub done: bool,
    /// The version this shard resumed from, if it loaded a checkpoint.
    pub restored_from: Option<u64>,
    /// The newest checkpoint written or loaded.
    pub last_checkpoint: Option<String>,
    /// Checkpoints refused when the shard started, newest first, each as
    /// its [`CheckpointError`] (the file, and what does not fit); at most
    /// [`MAX_REFUSALS_KEPT`].
    pub refused_checkpoints: Vec<String>,
}

/// How many refused checkpoints [`PsStatus::refused_checkpoints`] lists.
pub const MAX_REFUSALS_KEPT: usize = 16;

/// Why a push (or the push of a push-pull) was refused. The reply of
/// [`PsMsg::Push`] carries it as text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PushError {
    /// The pusher is not one of the job's workers.
    #[error("worker {worker} is not one of this job's workers 0..{workers}; push refused")]
    NotInJob {
        /// The id the push named.
        worker: u32,
        /// The job's worker count.
        workers: u32,
    },
    /// The worker's gradient for this sync round is already held.
    #[error(
        "worker {worker} has already pushed for version {version}; its first push is the one counted"
    )]
    AlreadyPushed {
        /// The worker.
        worker: u32,
        /// The round's version.
        version: u64,
    },
    /// The number of gradients is not the number of tensors this shard owns.
    #[error("shard {shard} owns {expected} parameter tensors, the push carries {found} gradients")]
    Count {
        /// The shard.
        shard: u32,
        /// Tensors it owns.
        expected: usize,
        /// Gradients pushed.
        found: usize,
    },
    /// A gradient's length is not its parameter's.
    #[error(
        "gradient of {tensor} has {found} values, the parameter has {expected} (shape {shape:?})"
    )]
    Length {
        /// The parameter.
        tensor: String,
        /// Its number of values.
        expected: usize,
        /// The gradient's.
        found: usize,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A gradient holds NaN or infinity.
    #[error("gradient of {tensor} holds NaN or infinity")]
    NotFinite {
        /// The parameter.
        tensor: String,
    },
    /// The version counter is at its limit.
    #[error(
        "version {version} is the last the version counter holds: another update would overflow it"
    )]
    VersionOverflow {
        /// The shard's version.
        version: u64,
    },
    /// An optimizer state cannot take the update.
    #[error("optimizer state of {tensor}: {source}")]
    Optimizer {
        /// The parameter.
        tensor: String,
        /// What is wrong.
        source: StateError,
    },
}

/// Why a checkpoint file was not restored. Each names the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CheckpointError {
    /// It could not be opened or read.
    #[error("checkpoint {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        message: String,
    },
    /// It is larger than a checkpoint of this shard can be (refused before
    /// it is read).
    #[error(
        "checkpoint {path}: {size} bytes, more than the {limit} bytes a checkpoint of this shard can take"
    )]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
        /// The most a checkpoint of this shard takes, with a margin.
        limit: u64,
    },
    /// It does not decode as a checkpoint (cut short, or not one).
    #[error("checkpoint {path}: not a readable checkpoint: {message}")]
    Decode {
        /// The file.
        path: String,
        /// The decoder's error.
        message: String,
    },
    /// Bytes follow the checkpoint's end.
    #[error("checkpoint {path}: {trailing} bytes after the checkpoint's end")]
    Trailing {
        /// The file.
        path: String,
        /// How many.
        trailing: usize,
    },
    /// Another format version, model or shard layout.
    #[error("checkpoint {path}: written for another {what}: expected {expected}, found {found}")]
    Layout {
        /// The file.
        path: String,
        /// `format`, `model` or `shard layout`.
        what: &'static str,
        /// This shard's.
        expected: String,
        /// The file's.
        found: String,
    },
    /// A list of the wrong length.
    #[error("checkpoint {path}: {what}: expected {expected}, found {found}")]
    Count {
        /// The file.
        path: String,
        /// `parameter tensors` or `optimizer states`.
        what: &'static str,
        /// This shard's.
        expected: usize,
        /// The file's.
        found: usize,
    },
    /// A tensor of another name where the model has this one.
    #[error("checkpoint {path}: tensor {index}: name: expected {expected}, found {found}")]
    Name {
        /// The file.
        path: String,
        /// Its place among the shard's tensors.
        index: usize,
        /// The model's.
        expected: String,
        /// The file's.
        found: String,
    },
    /// A tensor of another shape.
    #[error("checkpoint {path}: {tensor}: shape: expected {expected:?}, found {found:?}")]
    Shape {
        /// The file.
        path: String,
        /// The tensor.
        tensor: String,
        /// The model's.
        expected: Vec<usize>,
        /// The file's.
        found: Vec<usize>,
    },
    /// A tensor with the wrong number of values.
    #[error("checkpoint {path}: {tensor}: parameter values: expected {expected}, found {found}")]
    Length {
        /// The file.
        path: String,
        /// The tensor.
        tensor: String,
        /// The model's.
        expected: usize,
        /// The file's.
        found: usize,
    },
    /// An optimizer state that does not fit its tensor or the optimizer.
    #[error("checkpoint {path}: {tensor}: optimizer state: {source}")]
    Optimizer {
        /// The file.
        path: String,
        /// The tensor.
        tensor: String,
        /// What does not fit.
        source: StateError,
    },
}

impl Message for PsMsg {
    const NAME: &'static str = "manta.ml.PsMsg";
    const DECODE: Option<manta_actors::wire::Decode<Self>> =
        Some(manta_actors::wire::decode::<Self>);
}

/// A checkpoint file's content.
#[derive(Debug, Serialize, Deserialize)]
struct CheckpointFile {
    magic: String,
    model: ModelSpec,
    shard: u32,
    shards: u32,
    version: u64,
    samples: u64,
    params: Vec<ParamTensor>,
    optimizer: Vec<Option<SlotState>>,
}

/// v2: parameter values and Adam moments as byte strings (v1 files are
/// skipped with a warning).
const MAGIC: &str = "manta-ps-checkpoint-v2";

/// A parameter-server shard.
pub struct ParamServer {
    args: PsArgs,
    /// Indices (into the model's parameters) this shard owns.
    owned: Vec<usize>,
    params: Arc<Vec<ParamTensor>>,
    opt: Vec<Option<SlotState>>,
    version: u64,
    samples: u64,
    last_loss: f32,
    rejected: u64,
    foreign: u64,
    duplicates: u64,
    /// Whether a message from outside the job has been logged (once).
    foreign_logged: bool,
    pending: BTreeMap<u32, (Vec<Vec<f32>>, f32, u32)>,
    waiting_pulls: Vec<(u32, u64, ReplyTo<Params>)>,
    waiting_versions: Vec<(u64, ReplyTo<u64>)>,
    done: BTreeSet<u32>,
    restored_from: Option<u64>,
    last_checkpoint: Option<String>,
    /// This shard wrote the run's input standardization.
    input_saved: bool,
    refused_checkpoints: Vec<String>,
}

impl ParamServer {
    /// A shard (parameters are initialised or restored in `started`).
    pub fn new(args: PsArgs) -> Self {
        Self {
            args,
            owned: Vec::new(),
            params: Arc::default(),
            opt: Vec::new(),
            version: 0,
            samples: 0,
            last_loss: f32::NAN,
            rejected: 0,
            foreign: 0,
            duplicates: 0,
            foreign_logged: false,
            pending: BTreeMap::new(),
            waiting_pulls: Vec::new(),
            waiting_versions: Vec::new(),
            done: BTreeSet::new(),
            restored_from: None,
            last_checkpoint: None,
            refused_checkpoints: Vec::new(),
            input_saved: false,
        }
    }

    /// Whether `worker` is one of the job's workers (`0..workers`); if not,
    /// the message (`what`) is counted and, the first time, logged.
    fn admit(&mut self, worker: u32, what: &str) -> Result<(), PushError> {
        if worker < self.args.workers {
            return Ok(());
        }
        self.foreign += 1;
        if self.foreign_logged {
            tracing::debug!(
                shard = self.args.shard,
                worker,
                workers = self.args.workers,
                "{what} from a worker outside the job refused"
            );
        } else {
            self.foreign_logged = true;
            tracing::warn!(
                shard = self.args.shard,
                worker,
                workers = self.args.workers,
                "{what} from a worker outside the job refused; later ones are only counted (PsStatus::foreign)"
            );
        }
        Err(PushError::NotInJob {
            worker,
            workers: self.args.workers,
        })
    }

    fn shard_dir(&self) -> Option<PathBuf> {
        self.args.checkpoint.as_ref().map(|c| {
            c.dir
                .join(format!("ps-{}-of-{}", self.args.shard, self.args.shards))
        })
    }

    fn is_done(&self) -> bool {
        self.done.len() as u32 >= self.args.workers
    }

    fn reply_params(&self) -> Params {
        Params {
            version: self.version,
            params: Arc::clone(&self.params),
        }
    }

    /// Answers a pull: the parameters now, or (sync mode, when this worker
    /// has pushed for the current version and wants a later one) once the
    /// version moves on.
    fn pull(&mut self, worker: u32, min_version: u64, reply: ReplyTo<Params>) {
        let wait = matches!(self.args.mode, Mode::Sync)
            && min_version > self.version
            && self.pending.contains_key(&worker);
        if wait {
            self.waiting_pulls.push((worker, min_version, reply));
        } else {
            reply.send(self.reply_params());
        }
    }

    /// Takes a worker's gradients computed on `version`: checked, then (sync)
    /// held until every worker has pushed for this version and applied as
    /// their average, or (async) applied unless too stale.
    fn push(&mut self, mut g: Gradients) -> Result<Pushed, PushError> {
        let (worker, version, loss, samples) = (g.worker, g.version, g.loss, g.samples);
        let grads = std::mem::take(&mut g.grads);
        if let Err(e) = self.admit(worker, "push") {
            self.rejected += 1;
            return Err(e);
        }
        if let Err(e) = self.check_grads(&grads) {
            self.rejected += 1;
            tracing::warn!(shard = self.args.shard, worker, error = %e, "push rejected");
            return Err(e);
        }
        let fresh = match self.args.mode {
            Mode::Sync => version == self.version,
            Mode::Async { staleness } => self.version.saturating_sub(version) <= staleness,
        };
        if !fresh {
            self.rejected += 1;
            return Ok(Pushed {
                accepted: false,
                version: self.version,
            });
        }
        if matches!(self.args.mode, Mode::Sync) && self.pending.contains_key(&worker) {
            self.rejected += 1;
            self.duplicates += 1;
            tracing::debug!(
                shard = self.args.shard,
                worker,
                version,
                "repeated push within a sync round refused"
            );
            return Err(PushError::AlreadyPushed { worker, version });
        }
        // Refused here, before it is held or anything changes, rather than
        // when the update is applied.
        if let Err(e) = self.check_update() {
            self.rejected += 1;
            tracing::warn!(shard = self.args.shard, worker, error = %e, "push refused");
            return Err(e);
        }
        match self.args.mode {
            Mode::Sync => {
                self.pending.insert(worker, (grads, loss, samples));
                // Only the job's workers are held, each once: every one has
                // pushed for this version.
                if self.pending.len() as u32 >= self.args.workers {
                    self.apply_pending()?;
                    self.after_update();
                }
            }
            Mode::Async { .. } => {
                let applied = self.apply(&grads);
                crate::wire::recycle_f32s(grads);
                applied?;
                self.samples = self.samples.saturating_add(u64::from(samples));
                self.last_loss = loss;
                self.after_update();
            }
        }
        Ok(Pushed {
            accepted: true,
            version: self.version,
        })
    }

    /// Whether an update can be applied now: the version counter can go up
    /// and every optimizer state can take a step.
    fn check_update(&self) -> Result<(), PushError> {
        if self.version.checked_add(1).is_none() {
            return Err(PushError::VersionOverflow {
                version: self.version,
            });
        }
        for (p, st) in self.params.iter().zip(&self.opt) {
            self.args
                .optimizer
                .check_step(p.values.len(), st.as_ref())
                .map_err(|source| PushError::Optimizer {
                    tensor: p.name.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Sync mode: applies the average of the pending gradients.
    fn apply_pending(&mut self) -> Result<(), PushError> {
        let n = self.pending.len() as f32;
        let mut sum: Vec<Vec<f32>> = Vec::new();
        let mut loss_sum = 0.0;
        let mut samples = 0u64;
        // Sum in worker order, so the result does not depend on arrival
        // order. The first gradient is the accumulator: the same sums as
        // starting from zeros (0 + a == a, up to the sign of a zero, which no
        // update can see), without the zeros.
        for (g, l, s) in std::mem::take(&mut self.pending).into_values() {
            if sum.is_empty() {
                sum = g;
            } else {
                for (acc, g) in sum.iter_mut().zip(&g) {
                    for (a, v) in acc.iter_mut().zip(g) {
                        *a += v;
                    }
                }
                crate::wire::recycle_f32s(g);
            }
            loss_sum += l;
            samples = samples.saturating_add(u64::from(s));
        }
        if n > 1.0 {
            for acc in &mut sum {
                for a in acc.iter_mut() {
                    *a /= n;
                }
            }
        }
        let applied = self.apply(&sum);
        crate::wire::recycle_f32s(sum);
        applied?;
        self.last_loss = loss_sum / n;
        self.samples = self.samples.saturating_add(samples);
        Ok(())
    }

    fn check_grads(&self, grads: &[Vec<f32>]) -> Result<(), PushError> {
        if grads.len() != self.params.len() {
            return Err(PushError::Count {
                shard: self.args.shard,
                expected: self.params.len(),
                found: grads.len(),
            });
        }
        for (p, g) in self.params.iter().zip(grads) {
            if p.values.len() != g.len() {
                return Err(PushError::Length {
                    tensor: p.name.clone(),
                    expected: p.values.len(),
                    found: g.len(),
                    shape: p.shape.clone(),
                });
            }
            if !all_finite(g) {
                return Err(PushError::NotFinite {
                    tensor: p.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// Applies one update (gradients checked by `check_grads`). Checked
    /// first by `check_update`, so that it applies whole or not at all.
    fn apply(&mut self, grads: &[Vec<f32>]) -> Result<(), PushError> {
        self.check_update()?;
        let next = self
            .version
            .checked_add(1)
            .ok_or(PushError::VersionOverflow {
                version: self.version,
            })?;
        let epoch = self.version / self.args.steps_per_epoch.max(1);
        let lr = self
            .args
            .lr_decay
            .rate(self.args.lr, epoch, u64::from(self.args.epochs));
        // A copy only if a reply still holds the parameters (a remote one
        // being written, say); otherwise updated in place.
        let params = Arc::make_mut(&mut self.params);
        for ((p, g), st) in params.iter_mut().zip(grads).zip(self.opt.iter_mut()) {
            // Cannot fail: `check_update` passed and `check_grads` matched
            // every gradient's length to its parameter's.
            self.args
                .optimizer
                .step(lr, &mut p.values, g, st)
                .map_err(|source| PushError::Optimizer {
                    tensor: p.name.clone(),
                    source,
                })?;
        }
        self.version = next;
        Ok(())
    }

    fn after_update(&mut self) {
        if let Some(c) = &self.args.checkpoint {
            if c.every > 0 && self.version % c.every == 0 {
                if let Err(e) = self.save() {
                    tracing::error!(shard = self.args.shard, error = %e, "checkpoint failed");
                }
            }
        }
        let version = self.version;
        let mut still = Vec::new();
        for (worker, min, reply) in std::mem::take(&mut self.waiting_pulls) {
            if min <= version {
                let _ = reply.send(self.reply_params());
            } else {
                still.push((worker, min, reply));
            }
        }
        self.waiting_pulls = still;
        self.wake_versions();
    }

    fn wake_versions(&mut self) {
        let (version, done) = (self.version, self.is_done());
        let mut still = Vec::new();
        for (v, reply) in self.waiting_versions.drain(..) {
            if v <= version || done {
                let _ = reply.send(version);
            } else {
                still.push((v, reply));
            }
        }
        self.waiting_versions = still;
    }

    /// Writes a checkpoint of the current version (atomically: a temporary
    /// file renamed into place) and prunes old ones.
    fn save(&mut self) -> Result<String, MlError> {
        let Some(dir) = self.shard_dir() else {
            return Err(MlError::Config("no checkpoint directory configured".into()));
        };
        let err = |path: &Path, e: &dyn std::fmt::Display| MlError::Checkpoint {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(&dir).map_err(|e| err(&dir, &e))?;
        if !self.input_saved {
            if let (Some(input), Some(run)) = (&self.args.input, dir.parent()) {
                save_input(run, input)?;
            }
            self.input_saved = true;
        }
        let file = CheckpointFile {
            magic: MAGIC.into(),
            model: self.args.model.clone(),
            shard: self.args.shard,
            shards: self.args.shards,
            version: self.version,
            samples: self.samples,
            params: self.params.to_vec(),
            optimizer: self.opt.clone(),
        };
        let bytes = postcard::to_allocvec(&file).map_err(|e| err(&dir, &e))?;
        let path = dir.join(format!("ckpt-{:012}.bin", self.version));
        let tmp = dir.join(format!(".ckpt-{:012}.tmp", self.version));
        std::fs::write(&tmp, &bytes).map_err(|e| err(&tmp, &e))?;
        std::fs::rename(&tmp, &path).map_err(|e| err(&path, &e))?;
        let keep = self.args.checkpoint.as_ref().map_or(3, |c| c.keep.max(1)) as usize;
        let mut all = list_checkpoints(&dir);
        all.sort();
        if all.len() > keep {
            for old in &all[..all.len() - keep] {
                let _ = std::fs::remove_file(old);
            }
        }
        let shown = path.display().to_string();
        tracing::debug!(shard = self.args.shard, version = self.version, path = %shown, "checkpoint written");
        self.last_checkpoint = Some(shown.clone());
        Ok(shown)
    }

    /// Resumes from the newest checkpoint that fits; those that do not are
    /// logged and listed in the status.
    fn restore(&mut self) {
        let Some(dir) = self.shard_dir() else { return };
        let mut all = list_checkpoints(&dir);
        all.sort();
        for path in all.iter().rev() {
            match self.load(path) {
                Ok(f) => {
                    tracing::info!(shard = self.args.shard, version = f.version, path = %path.display(), "parameter server resumes from checkpoint");
                    self.params = Arc::new(f.params);
                    self.opt = f.optimizer;
                    self.version = f.version;
                    self.samples = f.samples;
                    self.restored_from = Some(f.version);
                    self.last_checkpoint = Some(path.display().to_string());
                    return;
                }
                Err(e) => {
                    tracing::warn!(shard = self.args.shard, error = %e, "checkpoint refused");
                    if self.refused_checkpoints.len() < MAX_REFUSALS_KEPT {
                        self.refused_checkpoints.push(e.to_string());
                    }
                }
            }
        }
    }

    /// Reads one checkpoint file, bounded by the most a checkpoint of this
    /// shard can take, and checks it against the model, the shard layout
    /// and the optimizer.
    fn load(&self, path: &Path) -> Result<CheckpointFile, CheckpointError> {
        let shown = path.display().to_string();
        let io = |e: std::io::Error| CheckpointError::Io {
            path: shown.clone(),
            message: e.to_string(),
        };
        let limit = checkpoint_limit(&self.args.model, &self.owned);
        let file = std::fs::File::open(path).map_err(io)?;
        let size = file.metadata().map_err(io)?.len();
        if size > limit {
            return Err(CheckpointError::TooLarge {
                path: shown,
                size,
                limit,
            });
        }
        // Bounded again while reading, should the file grow meanwhile.
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        file.take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(io)?;
        let read = bytes.len() as u64;
        if read > limit {
            return Err(CheckpointError::TooLarge {
                path: shown,
                size: read,
                limit,
            });
        }
        let (f, rest) = postcard::take_from_bytes::<CheckpointFile>(&bytes).map_err(|e| {
            CheckpointError::Decode {
                path: shown.clone(),
                message: e.to_string(),
            }
        })?;
        if !rest.is_empty() {
            return Err(CheckpointError::Trailing {
                path: shown,
                trailing: rest.len(),
            });
        }
        self.check_restored(&f, &shown)?;
        Ok(f)
    }

    /// Checks a decoded checkpoint against this shard: format, model and
    /// shard layout, then every tensor this shard owns (name, shape, number
    /// of values) and its optimizer state.
    fn check_restored(&self, f: &CheckpointFile, path: &str) -> Result<(), CheckpointError> {
        let layout = |what, expected: String, found: String| CheckpointError::Layout {
            path: path.to_owned(),
            what,
            expected,
            found,
        };
        if f.magic != MAGIC {
            return Err(layout("format", MAGIC.to_owned(), f.magic.clone()));
        }
        if f.model != self.args.model {
            return Err(layout(
                "model",
                format!("{:?}", self.args.model.widths()),
                format!("{:?}", f.model.widths()),
            ));
        }
        if (f.shard, f.shards) != (self.args.shard, self.args.shards) {
            let of = |s: u32, n: u32| format!("shard {s} of {n}");
            return Err(layout(
                "shard layout",
                of(self.args.shard, self.args.shards),
                of(f.shard, f.shards),
            ));
        }
        let count = |what, found: usize| {
            if found == self.owned.len() {
                Ok(())
            } else {
                Err(CheckpointError::Count {
                    path: path.to_owned(),
                    what,
                    expected: self.owned.len(),
                    found,
                })
            }
        };
        count("parameter tensors", f.params.len())?;
        count("optimizer states", f.optimizer.len())?;
        let shapes = self.args.model.shapes();
        for (k, ((&i, p), st)) in self
            .owned
            .iter()
            .zip(&f.params)
            .zip(&f.optimizer)
            .enumerate()
        {
            // `owned` holds indices of `shapes` (from `assign_shards` over the
            // same model), so `get` finds each; a miss would be refused too.
            let Some((name, shape)) = shapes.get(i) else {
                return Err(CheckpointError::Count {
                    path: path.to_owned(),
                    what: "parameter tensors",
                    expected: shapes.len(),
                    found: i + 1,
                });
            };
            if p.name != *name {
                return Err(CheckpointError::Name {
                    path: path.to_owned(),
                    index: k,
                    expected: name.clone(),
                    found: p.name.clone(),
                });
            }
            if p.shape != *shape {
                return Err(CheckpointError::Shape {
                    path: path.to_owned(),
                    tensor: name.clone(),
                    expected: shape.clone(),
                    found: p.shape.clone(),
                });
            }
            let len = shape.iter().product::<usize>();
            if p.values.len() != len {
                return Err(CheckpointError::Length {
                    path: path.to_owned(),
                    tensor: name.clone(),
                    expected: len,
                    found: p.values.len(),
                });
            }
            self.args
                .optimizer
                .check_state(len, st.as_ref())
                .map_err(|source| CheckpointError::Optimizer {
                    path: path.to_owned(),
                    tensor: name.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}

/// The most bytes a checkpoint of the shard owning `owned` (indices into
/// `model`'s parameters) can take, with a margin: every length prefix and
/// number at its longest (10-byte varints), each tensor's name, shape and
/// values, and the largest optimizer state (Adam: two moments of the
/// tensor's length; an SGD velocity is one).
fn checkpoint_limit(model: &ModelSpec, owned: &[usize]) -> u64 {
    const VARINT: u64 = 10;
    const MARGIN: u64 = 64 << 10;
    let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let shapes = model.shapes();
    // Magic; model (inputs, classes, hidden widths and their count); shard,
    // shards, version, samples; the two list lengths.
    let mut limit = (as_u64(MAGIC.len()) + VARINT)
        .saturating_add(VARINT.saturating_mul(as_u64(model.hidden.len()).saturating_add(3)))
        .saturating_add(6 * VARINT);
    for (name, shape) in owned.iter().filter_map(|&i| shapes.get(i)) {
        let values = as_u64(shape.iter().product::<usize>()).saturating_mul(4);
        // Name; shape (count and dimensions); values; then the optimizer
        // slot: option and variant tags, step count, two moments.
        let tensor = (as_u64(name.len()) + VARINT)
            .saturating_add(VARINT.saturating_mul(as_u64(shape.len()).saturating_add(1)))
            .saturating_add(VARINT.saturating_add(values))
            .saturating_add(2 + VARINT)
            .saturating_add(2u64.saturating_mul(VARINT.saturating_add(values)));
        limit = limit.saturating_add(tensor);
    }
    limit.saturating_add(MARGIN)
}

/// Whether no value is NaN or infinite (their exponent bits are all ones).
/// Adding one to the exponent field carries into the sign bit exactly for
/// those, and OR-ing the results vectorises (a short-circuiting `any` over
/// `is_finite` does not: it was 4% of a one-worker training profile).
fn all_finite(values: &[f32]) -> bool {
    const EXPONENT: u32 = 0x7f80_0000;
    const ONE: u32 = 0x0080_0000;
    values
        .iter()
        .fold(0u32, |acc, v| acc | ((v.to_bits() & EXPONENT) + ONE))
        & 0x8000_0000
        == 0
}

fn list_checkpoints(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("ckpt-") && n.ends_with(".bin"))
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Actor for ParamServer {
    type Msg = PsMsg;

    async fn started(&mut self, _ctx: &mut Context<PsMsg>) -> Result<(), ActorError> {
        self.args
            .model
            .validate()
            .map_err(|e| crate::fail(e.to_string()))?;
        if self.args.workers == 0 {
            return Err(crate::fail(
                "a parameter-server shard needs at least one worker",
            ));
        }
        if self.args.shards == 0 || self.args.shard >= self.args.shards {
            return Err(crate::fail(format!(
                "parameter-server shard {} out of range (shards: {})",
                self.args.shard, self.args.shards
            )));
        }
        let owner = assign_shards(&self.args.model, self.args.shards);
        let all = self.args.model.init(self.args.init_seed);
        let mut params = Vec::new();
        for (i, p) in all.into_iter().enumerate() {
            if owner[i] == self.args.shard {
                self.owned.push(i);
                params.push(p);
            }
        }
        self.params = Arc::new(params);
        self.opt = vec![None; self.params.len()];
        self.restore();
        Ok(())
    }

    async fn handle(&mut self, msg: PsMsg, _: &mut Context<PsMsg>) -> Result<(), ActorError> {
        match msg {
            PsMsg::Pull {
                worker,
                min_version,
                reply,
            } => self.pull(worker, min_version, reply),
            PsMsg::Push(g, reply) => {
                reply.send(self.push(g).map_err(|e| e.to_string()));
            }
            PsMsg::PushPull(g, reply) => {
                let (worker, next) = (g.worker, g.version.saturating_add(1));
                // The outcome of the push is counted (and a rejection
                // logged) by `push`; the pull answers either way.
                let _ = self.push(g);
                self.pull(worker, next, reply);
            }
            PsMsg::WorkerDone { worker } => {
                if self.admit(worker, "worker-done").is_ok() {
                    if !self.done.insert(worker) {
                        self.duplicates += 1;
                        tracing::debug!(shard = self.args.shard, worker, "repeated worker-done");
                    }
                    self.wake_versions();
                }
            }
            PsMsg::Status(reply) => {
                reply.send(PsStatus {
                    shard: self.args.shard,
                    version: self.version,
                    last_loss: self.last_loss,
                    samples: self.samples,
                    rejected: self.rejected,
                    foreign: self.foreign,
                    duplicates: self.duplicates,
                    done_workers: self.done.len() as u32,
                    done: self.is_done(),
                    restored_from: self.restored_from,
                    last_checkpoint: self.last_checkpoint.clone(),
                    refused_checkpoints: self.refused_checkpoints.clone(),
                });
            }
            PsMsg::WaitVersion(v, reply) => {
                if v <= self.version || self.is_done() {
                    reply.send(self.version);
                } else {
                    self.waiting_versions.push((v, reply));
                }
            }
            PsMsg::Checkpoint(reply) => {
                reply.send(self.save().map_err(|e| e.to_string()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::all_finite;

    #[test]
    fn all_finite_finds_every_nan_and_infinity_and_nothing_else() {
        let finite = [
            0.0,
            -0.0,
            1.0,
            -1.5e-42, // subnormal
            f32::MIN_POSITIVE,
            f32::MAX,
            f32::MIN,
            f32::EPSILON,
        ];
        let bad = [
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::from_bits(0x7f80_0001), // a signalling NaN
            f32::from_bits(0xffff_ffff),
        ];
        for len in [1, 7, 8, 9, 33, 1000] {
            let mut v: Vec<f32> = (0..len).map(|i| finite[i % finite.len()]).collect();
            assert!(all_finite(&v), "{v:?}");
            for b in bad {
                for at in [0, len / 2, len - 1] {
                    let kept = v[at];
                    v[at] = b;
                    assert!(!all_finite(&v), "{b} at {at} of {len} missed");
                    v[at] = kept;
                }
            }
        }
        assert!(all_finite(&[]));
    }
}

/// A model's parameters read back from a job's checkpoints, for serving.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedModel {
    /// The model's shape, as the checkpoints record it.
    pub model: ModelSpec,
    /// The version (parameter-server step) of the checkpoints read.
    pub version: u64,
    /// Every parameter, in [`ModelSpec::shapes`] order.
    pub params: Vec<ParamTensor>,
}

/// Reads the newest checkpoint of every shard under `dir` and assembles the
/// model's parameters. `dir` is a run's directory (holding `ps-I-of-N`
/// sub-directories) or the configured checkpoint directory, in which case
/// its newest `run-*` sub-directory with a checkpoint in every shard is
/// read (a newer run stopped before its first save is passed over). Each file is refused unread
/// when it is larger than `max_bytes`; the shards must agree on the model,
/// the shard count and the version, and the parameters must fit the model.
pub fn load_saved_model(dir: &Path, max_bytes: u64) -> Result<SavedModel, MlError> {
    let err = |path: &Path, message: String| MlError::Checkpoint {
        path: path.display().to_string(),
        message,
    };
    let subdirs = |d: &Path, prefix: &str| -> Result<Vec<PathBuf>, MlError> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(d)
            .map_err(|e| err(d, e.to_string()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(prefix))
            })
            .collect();
        out.sort();
        Ok(out)
    };
    let mut shard_dirs = subdirs(dir, "ps-")?;
    if shard_dirs.is_empty() {
        // The newest run with a checkpoint in every shard: a run stopped
        // before its first save (Ctrl-C) leaves its directory empty, and
        // the one before it still serves.
        let runs = subdirs(dir, "run-")?;
        let Some(newest) = runs.last().cloned() else {
            return Err(err(dir, "no ps-* or run-* directories".into()));
        };
        let complete = |run: &PathBuf| -> Option<Vec<PathBuf>> {
            let shards = subdirs(run, "ps-").ok()?;
            (!shards.is_empty() && shards.iter().all(|d| !list_checkpoints(d).is_empty()))
                .then_some(shards)
        };
        match runs.iter().rev().find_map(|r| complete(r).map(|s| (r, s))) {
            Some((run, shards)) => {
                if run != &newest {
                    tracing::warn!(target: "manta::ps", newest = %newest.display(), serving = %run.display(), "the newest run has no complete checkpoint; loading the newest run that has one");
                }
                shard_dirs = shards;
            }
            None => {
                return Err(err(
                    &newest,
                    "no run-* directory holds a checkpoint in every ps-* directory".into(),
                ));
            }
        }
    }
    // The run's input standardization, if it trained on standardized
    // features: folded into the first layer below.
    let input = match shard_dirs[0].parent() {
        Some(run) => load_input(run)?,
        None => None,
    };
    let mut files = Vec::new();
    for d in &shard_dirs {
        let Some(newest) = list_checkpoints(d).into_iter().max() else {
            return Err(err(d, "no checkpoint files".into()));
        };
        let file = std::fs::File::open(&newest).map_err(|e| err(&newest, e.to_string()))?;
        let size = file
            .metadata()
            .map_err(|e| err(&newest, e.to_string()))?
            .len();
        if size > max_bytes {
            return Err(err(
                &newest,
                format!("{size} bytes, more than the {max_bytes} allowed"),
            ));
        }
        let mut bytes = Vec::new();
        file.take(max_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| err(&newest, e.to_string()))?;
        if bytes.len() as u64 > max_bytes {
            return Err(err(
                &newest,
                format!("more than the {max_bytes} bytes allowed"),
            ));
        }
        let (f, rest) = postcard::take_from_bytes::<CheckpointFile>(&bytes)
            .map_err(|e| err(&newest, format!("not a readable checkpoint: {e}")))?;
        if f.magic != MAGIC || !rest.is_empty() {
            return Err(err(&newest, "not a readable checkpoint".into()));
        }
        files.push((newest, f));
    }
    let Some((first_path, first)) = files.first() else {
        return Err(err(dir, "no checkpoint files".into()));
    };
    let (model, shards, version) = (first.model.clone(), first.shards, first.version);
    let first_path = first_path.display().to_string();
    model.validate()?;
    if files.len() != shards as usize {
        return Err(err(
            dir,
            format!("{} shard directories for {shards} shards", files.len()),
        ));
    }
    let owner = assign_shards(&model, shards);
    let mut slots: Vec<Option<ParamTensor>> = vec![None; owner.len()];
    for (path, f) in files {
        if f.model != model || f.shards != shards || f.version != version {
            return Err(err(
                &path,
                format!("does not match {first_path}: model, shard count or version differ"),
            ));
        }
        let owned = owner.iter().enumerate().filter(|(_, s)| **s == f.shard);
        if owned.clone().count() != f.params.len() {
            return Err(err(&path, "parameter count does not fit the shard".into()));
        }
        for ((i, _), p) in owned.zip(f.params) {
            slots[i] = Some(p);
        }
    }
    let mut params: Vec<ParamTensor> = slots.into_iter().flatten().collect();
    model.check(&params)?;
    if let Some((path, input)) = &input {
        crate::model::fold_standardization(&model, &mut params, input)
            .map_err(|e| err(path, format!("does not fit the checkpoint's model: {e}")))?;
    }
    Ok(SavedModel {
        model,
        version,
        params,
    })
}

/// The file in a run's directory holding the input standardization its
/// model was trained with (written by the job when `data.standardize` is
/// set; read by [`load_saved_model`]).
pub const INPUT_FILE: &str = "input.json";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputFile {
    standardize: crate::data::Standardization,
}

/// Writes the run's input standardization into `run` ([`INPUT_FILE`],
/// atomically).
pub fn save_input(run: &Path, input: &crate::data::Standardization) -> Result<(), MlError> {
    let path = run.join(INPUT_FILE);
    let err = |p: &Path, e: &dyn std::fmt::Display| MlError::Checkpoint {
        path: p.display().to_string(),
        message: e.to_string(),
    };
    let bytes = serde_json::to_vec_pretty(&InputFile {
        standardize: input.clone(),
    })
    .map_err(|e| err(&path, &e))?;
    let tmp = run.join(".input.json.tmp");
    std::fs::write(&tmp, bytes).map_err(|e| err(&tmp, &e))?;
    std::fs::rename(&tmp, &path).map_err(|e| err(&path, &e))
}

/// Reads `run`'s [`INPUT_FILE`] if there is one (at most 16 MiB).
fn load_input(run: &Path) -> Result<Option<(PathBuf, crate::data::Standardization)>, MlError> {
    let path = run.join(INPUT_FILE);
    let err = |message: String| MlError::Checkpoint {
        path: path.display().to_string(),
        message,
    };
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    const LIMIT: u64 = 16 << 20;
    let mut bytes = Vec::new();
    file.take(LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(e.to_string()))?;
    if bytes.len() as u64 > LIMIT {
        return Err(err(format!("more than the {LIMIT} bytes allowed")));
    }
    let f: InputFile = serde_json::from_slice(&bytes)
        .map_err(|e| err(format!("not an input standardization: {e}")))?;
    Ok(Some((path, f.standardize)))
}

/// Writes `params` as a one-shard checkpoint of `version` under `dir` (in
/// `dir/ps-0-of-1`, readable by [`load_saved_model`] and by a one-shard
/// parameter server resuming from `dir`). Answers the file's path.
pub fn save_model(
    dir: &Path,
    model: &ModelSpec,
    params: &[ParamTensor],
    version: u64,
) -> Result<PathBuf, MlError> {
    model.check(params)?;
    let err = |path: &Path, e: &dyn std::fmt::Display| MlError::Checkpoint {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let shard_dir = dir.join("ps-0-of-1");
    std::fs::create_dir_all(&shard_dir).map_err(|e| err(&shard_dir, &e))?;
    let file = CheckpointFile {
        magic: MAGIC.into(),
        model: model.clone(),
        shard: 0,
        shards: 1,
        version,
        samples: 0,
        params: params.to_vec(),
        optimizer: vec![None; params.len()],
    };
    let bytes = postcard::to_allocvec(&file).map_err(|e| err(&shard_dir, &e))?;
    let path = shard_dir.join(format!("ckpt-{version:012}.bin"));
    let tmp = shard_dir.join(format!(".ckpt-{version:012}.tmp"));
    std::fs::write(&tmp, &bytes).map_err(|e| err(&tmp, &e))?;
    std::fs::rename(&tmp, &path).map_err(|e| err(&path, &e))?;
    Ok(path)
}
