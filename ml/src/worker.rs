//! Training workers: each takes batches from its loader, pulls parameters
//! from every parameter-server shard, computes gradients with burn autodiff
//! on its device and pushes them back.
//!
//! A worker keeps no state a restart would lose: in synchronous mode its
//! position is the parameter servers' version (each version consumes one
//! batch from every loader), so a worker restarted on another node, or after
//! a parameter server went back to a checkpoint, continues in step.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use manta_actors::{Actor, ActorError, ActorHandle, Context, Message};
use serde::{Deserialize, Serialize};

use crate::data::Batch;
use crate::device::{DeviceSpec, OnBackend, with_backend};
use crate::directory::Directory;
use crate::error::MlError;
use crate::loader::{Cursor, Delivery, LoaderMsg, LoaderReply};
use crate::model::{Mlp, ModelSpec, ParamTensor, loss_and_grads};
use crate::ps::{Mode, PsMsg, PsReply, assign_shards};

/// Arguments of a worker (kind `manta.worker`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerArgs {
    /// This worker's index.
    pub index: u32,
    /// The model.
    pub model: ModelSpec,
    /// Registered name of its loader.
    pub loader: String,
    /// Registered names of the parameter-server shards, by shard.
    pub ps: Vec<String>,
    /// Sync or async.
    pub mode: Mode,
    /// Epochs to train.
    pub epochs: u32,
    /// Batches per epoch (the same for every loader).
    pub batches_per_epoch: u32,
    /// The device gradients are computed on.
    pub device: DeviceSpec,
    /// Batches the loader may prepare ahead.
    #[serde(default = "default_prefetch")]
    pub prefetch: u32,
}

fn default_prefetch() -> u32 {
    2
}

/// Messages of a worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum WorkerMsg {
    /// Runs one training step (the worker sends these to itself).
    Step,
    /// Reports counters.
    Stats,
}

/// A worker's counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// Steps computed.
    pub steps: u64,
    /// Steps retried after a peer could not be reached.
    pub retries: u64,
    /// Whether the worker has finished.
    pub finished: bool,
}

impl Message for WorkerMsg {
    type Reply = Option<WorkerStats>;
}

/// How long one request to a loader or parameter server may take. Long:
/// in synchronous mode a pull waits for the slowest worker (or for a worker
/// being restarted on another node).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// A worker that cannot reach its peers for this long fails (its supervisor
/// decides what next).
const GIVE_UP_AFTER: Duration = Duration::from_secs(90);

/// A training worker.
pub struct Worker {
    args: WorkerArgs,
    directory: Directory,
    owner: Vec<u32>,
    ps: Option<Vec<ActorHandle<PsMsg>>>,
    loader: Option<ActorHandle<LoaderMsg>>,
    granted: bool,
    /// Sync: the version to pull next. Async: steps done.
    next: u64,
    stats: WorkerStats,
    failing_since: Option<tokio::time::Instant>,
    backoff: Duration,
}

enum StepOutcome {
    Continue,
    Finished,
}

struct GradTask {
    model: ModelSpec,
    params: Vec<ParamTensor>,
    batch: Arc<Batch>,
}

impl OnBackend for GradTask {
    type Output = Result<(f32, Vec<Vec<f32>>), MlError>;
    fn run<B: burn::tensor::backend::AutodiffBackend>(self, device: B::Device) -> Self::Output {
        let model = Mlp::<B>::from_owned_params(&self.model, self.params, &device)?;
        loss_and_grads(
            &model,
            &self.batch.features,
            &self.batch.labels,
            self.batch.cols as usize,
            &device,
        )
    }
}

/// Steps estimated at or below this many multiply-adds (parameters x rows) run
/// inline on the actor's thread: a few hundred microseconds on one core,
/// less than the scheduler tolerates between two awaits on a multi-thread
/// runtime, and cheaper than handing the thread's other tasks to another
/// thread first (digits MLP, 9,610 parameters x 32 rows: 1 worker went from
/// 85-95k to 93-125k samples/s in alternated runs).
pub const INLINE_WORK: usize = 1 << 22;

/// Runs a gradient computation: small CPU steps inline (see
/// [`INLINE_WORK`]); larger ones and every CUDA step off the async
/// scheduler, on a multi-thread runtime in place (`block_in_place` hands
/// this thread's other tasks to another thread, and the step does not wait
/// for a thread hand-off), elsewhere on the blocking pool. A panic in burn
/// becomes an error either way.
async fn compute(device: DeviceSpec, task: GradTask) -> Result<(f32, Vec<Vec<f32>>), MlError> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let panicked = |p: &(dyn std::any::Any + Send)| {
        MlError::Actor(format!(
            "gradient computation panicked: {}",
            manta_actors::panic_text(p)
        ))
    };
    let in_place = |task: GradTask| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| with_backend(device, task)))
            .map_err(|p| panicked(p.as_ref()))
    };
    let work = task.model.param_count().saturating_mul(task.batch.rows());
    let multi_thread = Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread;
    let nested = if multi_thread && device == DeviceSpec::Cpu && work <= INLINE_WORK {
        in_place(task)
    } else if multi_thread {
        tokio::task::block_in_place(|| in_place(task))
    } else {
        tokio::task::spawn_blocking(move || with_backend(device, task))
            .await
            .map_err(|e| MlError::Actor(format!("gradient computation panicked: {e}")))
    };
    nested??
}

impl Worker {
    /// A worker resolving its peers through `directory`.
    pub fn new(args: WorkerArgs, directory: Directory) -> Self {
        let owner = assign_shards(&args.model, args.ps.len() as u32);
        Self {
            args,
            directory,
            owner,
            ps: None,
            loader: None,
            granted: false,
            next: 0,
            stats: WorkerStats {
                steps: 0,
                retries: 0,
                finished: false,
            },
            failing_since: None,
            backoff: Duration::from_millis(20),
        }
    }

    fn total_steps(&self) -> u64 {
        u64::from(self.args.epochs) * u64::from(self.args.batches_per_epoch)
    }

    fn resolve(&mut self) -> Result<(Vec<ActorHandle<PsMsg>>, ActorHandle<LoaderMsg>), MlError> {
        if self.ps.is_none() {
            let handles = self
                .args
                .ps
                .iter()
                .map(|n| self.directory.resolve::<PsMsg>(n))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| MlError::Actor(e.to_string()))?;
            self.ps = Some(handles);
        }
        if self.loader.is_none() {
            let l = self
                .directory
                .resolve::<LoaderMsg>(&self.args.loader)
                .map_err(|e| MlError::Actor(e.to_string()))?;
            self.loader = Some(l);
            self.granted = false;
        }
        match (&self.ps, &self.loader) {
            (Some(p), Some(l)) => Ok((p.clone(), l.clone())),
            _ => Err(MlError::Actor("peers not resolved".into())),
        }
    }

    /// Takes the batch at `step` from the loader.
    async fn take(
        &mut self,
        loader: &ActorHandle<LoaderMsg>,
        step: u64,
    ) -> Result<Option<Batch>, MlError> {
        let grant = if self.granted {
            1
        } else {
            self.args.prefetch + 1
        };
        let reply = loader
            .ask(
                LoaderMsg::Take {
                    at: Some(Cursor::of_step(step, self.args.batches_per_epoch)),
                    grant,
                },
                REQUEST_TIMEOUT,
            )
            .await;
        Self::delivery(
            reply,
            &mut self.granted,
            &mut self.loader,
            &self.args.loader,
        )
    }

    fn delivery(
        reply: Result<LoaderReply, manta_actors::AskError<LoaderMsg>>,
        granted: &mut bool,
        cached: &mut Option<ActorHandle<LoaderMsg>>,
        name: &str,
    ) -> Result<Option<Batch>, MlError> {
        match reply {
            Ok(LoaderReply::Delivery(Delivery::Batch(b))) => {
                *granted = true;
                Ok(Some(b))
            }
            Ok(LoaderReply::Delivery(Delivery::EndOfData { .. })) => Ok(None),
            Ok(other) => Err(MlError::Actor(format!(
                "loader answered a take with {other:?}"
            ))),
            Err(e) => {
                *cached = None;
                Err(MlError::Actor(format!("take from loader {name}: {e}")))
            }
        }
    }

    async fn step(&mut self) -> Result<StepOutcome, MlError> {
        let (ps, loader) = self.resolve()?;
        let sync = matches!(self.args.mode, Mode::Sync);
        if !sync && self.next >= self.total_steps() {
            return Ok(StepOutcome::Finished);
        }
        // The batch of the step we expect (sync: the version we wait for)
        // is fetched while the parameters are pulled.
        let guess = self.next;
        let min_version = if sync { self.next } else { 0 };
        let pulls = join_all(ps.iter().map(|p| {
            p.ask(
                PsMsg::Pull {
                    worker: self.args.index,
                    min_version,
                },
                REQUEST_TIMEOUT,
            )
        }));
        let grant = if self.granted {
            1
        } else {
            self.args.prefetch + 1
        };
        let take = loader.ask(
            LoaderMsg::Take {
                at: Some(Cursor::of_step(guess, self.args.batches_per_epoch)),
                grant,
            },
            REQUEST_TIMEOUT,
        );
        let (pulls, taken) = futures::join!(pulls, take);
        let mut shard_params = Vec::with_capacity(ps.len());
        let mut versions = Vec::with_capacity(ps.len());
        for (i, r) in pulls.into_iter().enumerate() {
            match r {
                Ok(PsReply::Params { version, params }) => {
                    versions.push(version);
                    shard_params.push(params.into_iter());
                }
                Ok(other) => {
                    return Err(MlError::Actor(format!(
                        "parameter server {i} answered a pull with {other:?}"
                    )));
                }
                Err(e) => {
                    self.ps = None;
                    return Err(MlError::Actor(format!(
                        "pull from parameter server {i}: {e}"
                    )));
                }
            }
        }
        // Sync: every version consumes one batch per loader, so the version
        // is the data position. Shards can differ only after one of them went
        // back to a checkpoint; the oldest one decides.
        let version = versions.iter().copied().min().unwrap_or(0);
        if sync && version >= self.total_steps() {
            return Ok(StepOutcome::Finished);
        }
        let step = if sync { version } else { self.next };
        let batch = if step == guess {
            Self::delivery(
                taken,
                &mut self.granted,
                &mut self.loader,
                &self.args.loader,
            )?
        } else {
            // The parameter servers are elsewhere than expected (one went
            // back to a checkpoint, or this worker was restarted).
            self.take(&loader, step).await?
        };
        let Some(batch) = batch else {
            return Ok(StepOutcome::Finished);
        };
        let mut params = Vec::with_capacity(self.owner.len());
        for &s in &self.owner {
            match shard_params.get_mut(s as usize).and_then(Iterator::next) {
                Some(p) => params.push(p),
                None => {
                    return Err(MlError::Actor(format!(
                        "parameter server {s} sent too few parameters"
                    )));
                }
            }
        }
        let samples = batch.rows() as u32;
        let task = GradTask {
            model: self.args.model.clone(),
            params,
            batch: Arc::new(batch),
        };
        let device = self.args.device;
        let (loss, grads) = compute(device, task).await?;
        let mut per_shard: Vec<Vec<Vec<f32>>> = vec![Vec::new(); ps.len()];
        for (g, &s) in grads.into_iter().zip(&self.owner) {
            per_shard[s as usize].push(g);
        }
        // Pushes are told, not asked: the next pull (to the same actor, so
        // behind the push in its mailbox) is what waits. Stale or malformed
        // pushes are counted by the parameter server.
        for (i, ((p, grads), &v)) in ps.iter().zip(per_shard).zip(&versions).enumerate() {
            let push = PsMsg::Push {
                worker: self.args.index,
                version: v,
                grads,
                loss,
                samples,
            };
            if let Err(e) = p.tell(push) {
                self.ps = None;
                return Err(MlError::Actor(format!(
                    "push to parameter server {i}: {}",
                    e.failure
                )));
            }
        }
        self.stats.steps += 1;
        self.next = step + 1;
        Ok(StepOutcome::Continue)
    }

    fn finish(&mut self, ctx: &mut Context<WorkerMsg>) {
        self.stats.finished = true;
        if let Ok((ps, _)) = self.resolve() {
            for p in ps {
                let _ = p.tell(PsMsg::WorkerDone {
                    worker: self.args.index,
                });
            }
        }
        tracing::info!(
            worker = self.args.index,
            steps = self.stats.steps,
            "worker finished"
        );
        ctx.stop(manta_actors::ExitReason::Normal);
    }
}

impl Actor for Worker {
    type Msg = WorkerMsg;

    async fn started(&mut self, ctx: &mut Context<WorkerMsg>) -> Result<(), ActorError> {
        self.args
            .model
            .validate()
            .map_err(|e| crate::fail(e.to_string()))?;
        if self.args.ps.is_empty() || self.args.batches_per_epoch == 0 {
            return Err(crate::fail(
                "a worker needs at least one parameter server and one batch per epoch",
            ));
        }
        ctx.myself()
            .tell(WorkerMsg::Step)
            .map_err(|e| crate::fail(e.to_string()))?;
        Ok(())
    }

    async fn handle(
        &mut self,
        msg: WorkerMsg,
        ctx: &mut Context<WorkerMsg>,
    ) -> Result<Option<WorkerStats>, ActorError> {
        match msg {
            WorkerMsg::Stats => Ok(Some(self.stats.clone())),
            WorkerMsg::Step => {
                if self.stats.finished {
                    return Ok(None);
                }
                match self.step().await {
                    Ok(StepOutcome::Continue) => {
                        self.failing_since = None;
                        self.backoff = Duration::from_millis(20);
                        ctx.myself()
                            .tell(WorkerMsg::Step)
                            .map_err(|e| crate::fail(e.to_string()))?;
                    }
                    Ok(StepOutcome::Finished) => self.finish(ctx),
                    Err(
                        e @ (MlError::Shape { .. }
                        | MlError::Device { .. }
                        | MlError::Config(_)
                        | MlError::Data(_)),
                    ) => {
                        return Err(crate::fail(format!("worker {}: {e}", self.args.index)));
                    }
                    Err(e) => {
                        let since = *self
                            .failing_since
                            .get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() > GIVE_UP_AFTER {
                            return Err(crate::fail(format!(
                                "worker {}: peers unreachable for {:?}: {e}",
                                self.args.index, GIVE_UP_AFTER
                            )));
                        }
                        self.stats.retries += 1;
                        tracing::debug!(worker = self.args.index, error = %e, retry_in = ?self.backoff, "step failed; retrying");
                        let me = ctx.myself().clone();
                        let delay = self.backoff;
                        self.backoff = (self.backoff * 2).min(Duration::from_secs(1));
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            let _ = me.tell(WorkerMsg::Step);
                        });
                    }
                }
                Ok(None)
            }
        }
    }
}
