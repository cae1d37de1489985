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
//!   readable checkpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use manta_actors::{Actor, ActorError, Context, Message, ReplyTo};
use serde::{Deserialize, Serialize};

use crate::error::MlError;
use crate::model::{ModelSpec, ParamTensor};
use crate::optim::{OptimizerConfig, SlotState};

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
    /// Number of workers.
    pub workers: u32,
    /// Checkpoints (optional).
    #[serde(default)]
    pub checkpoint: Option<CheckpointSpec>,
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
    /// or why they do not fit this shard (e.g. wrong shapes; the shard keeps
    /// running).
    Push(Gradients, ReplyTo<Result<Pushed, String>>),
    /// A worker has finished its data.
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
    /// Rows behind the applied updates.
    pub samples: u64,
    /// Pushes dropped as stale or malformed.
    pub rejected: u64,
    /// Workers that have finished.
    pub done_workers: u32,
    /// Whether every worker has finished.
    pub done: bool,
    /// The version this shard resumed from, if it loaded a checkpoint.
    pub restored_from: Option<u64>,
    /// The newest checkpoint written or loaded.
    pub last_checkpoint: Option<String>,
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
    pending: BTreeMap<u32, (Vec<Vec<f32>>, f32, u32)>,
    waiting_pulls: Vec<(u32, u64, ReplyTo<Params>)>,
    waiting_versions: Vec<(u64, ReplyTo<u64>)>,
    done: BTreeSet<u32>,
    restored_from: Option<u64>,
    last_checkpoint: Option<String>,
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
            pending: BTreeMap::new(),
            waiting_pulls: Vec::new(),
            waiting_versions: Vec::new(),
            done: BTreeSet::new(),
            restored_from: None,
            last_checkpoint: None,
        }
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
    fn push(&mut self, g: Gradients) -> Result<Pushed, String> {
        let Gradients {
            worker,
            version,
            grads,
            loss,
            samples,
        } = g;
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
        match self.args.mode {
            Mode::Sync => {
                self.pending.insert(worker, (grads, loss, samples));
                if self.pending.len() as u32 >= self.args.workers {
                    self.apply_pending();
                    self.after_update();
                }
            }
            Mode::Async { .. } => {
                self.samples += u64::from(samples);
                self.last_loss = loss;
                self.apply(&grads);
                self.after_update();
            }
        }
        Ok(Pushed {
            accepted: true,
            version: self.version,
        })
    }

    /// Sync mode: applies the average of the pending gradients.
    fn apply_pending(&mut self) {
        let n = self.pending.len() as f32;
        let mut sum: Vec<Vec<f32>> = Vec::new();
        let mut loss_sum = 0.0;
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
            }
            loss_sum += l;
            self.samples += u64::from(s);
        }
        if n > 1.0 {
            for acc in &mut sum {
                for a in acc.iter_mut() {
                    *a /= n;
                }
            }
        }
        self.last_loss = loss_sum / n;
        self.apply(&sum);
    }

    fn check_grads(&self, grads: &[Vec<f32>]) -> Result<(), String> {
        if grads.len() != self.params.len() {
            return Err(format!(
                "shard {} owns {} parameter tensors, the push carries {} gradients",
                self.args.shard,
                self.params.len(),
                grads.len()
            ));
        }
        for (p, g) in self.params.iter().zip(grads) {
            if p.values.len() != g.len() {
                return Err(format!(
                    "gradient of {} has {} values, the parameter has {} (shape {:?})",
                    p.name,
                    g.len(),
                    p.values.len(),
                    p.shape
                ));
            }
            if !all_finite(g) {
                return Err(format!("gradient of {} holds NaN or infinity", p.name));
            }
        }
        Ok(())
    }

    fn apply(&mut self, grads: &[Vec<f32>]) {
        let lr = self.args.lr;
        // A copy only if a reply still holds the parameters (a remote one
        // being written, say); otherwise updated in place.
        let params = Arc::make_mut(&mut self.params);
        for ((p, g), st) in params.iter_mut().zip(grads).zip(self.opt.iter_mut()) {
            self.args.optimizer.step(lr, &mut p.values, g, st);
        }
        self.version += 1;
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

    fn restore(&mut self) {
        let Some(dir) = self.shard_dir() else { return };
        let mut all = list_checkpoints(&dir);
        all.sort();
        for path in all.iter().rev() {
            let loaded = std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|b| postcard::from_bytes::<CheckpointFile>(&b).map_err(|e| e.to_string()))
                .and_then(|f| {
                    if f.magic != MAGIC
                        || f.model != self.args.model
                        || f.shard != self.args.shard
                        || f.shards != self.args.shards
                        || f.params.len() != self.params.len()
                        || f.optimizer.len() != self.params.len()
                    {
                        Err("written for another model or shard layout".to_owned())
                    } else {
                        Ok(f)
                    }
                });
            match loaded {
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
                    tracing::warn!(path = %path.display(), error = %e, "skipping unreadable checkpoint")
                }
            }
        }
    }
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
                reply.send(self.push(g));
            }
            PsMsg::PushPull(g, reply) => {
                let (worker, next) = (g.worker, g.version.saturating_add(1));
                // The outcome of the push is counted (and a rejection
                // logged) by `push`; the pull answers either way.
                let _ = self.push(g);
                self.pull(worker, next, reply);
            }
            PsMsg::WorkerDone { worker } => {
                self.done.insert(worker);
                self.wake_versions();
            }
            PsMsg::Status(reply) => {
                reply.send(PsStatus {
                    shard: self.args.shard,
                    version: self.version,
                    last_loss: self.last_loss,
                    samples: self.samples,
                    rejected: self.rejected,
                    done_workers: self.done.len() as u32,
                    done: self.is_done(),
                    restored_from: self.restored_from,
                    last_checkpoint: self.last_checkpoint.clone(),
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
