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
use manta_actors::{Actor, ActorError, ActorHandle, Context, Message, ReplyTo};
use serde::{Deserialize, Serialize};

use crate::data::Batch;
use crate::device::{DeviceSpec, OnBackend, with_backend};
use crate::directory::Directory;
use crate::error::MlError;
use crate::loader::{Cursor, Delivery, LoaderMsg};
use crate::model::{Mlp, ModelSpec, ParamTensor, loss_and_grads};
use crate::ps::{Gradients, Mode, Params, PsMsg, assign_shards};

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
    Stats(ReplyTo<WorkerStats>),
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
    const NAME: &'static str = "manta.ml.WorkerMsg";
    const DECODE: Option<manta_actors::wire::Decode<Self>> =
        Some(manta_actors::wire::decode::<Self>);
}

/// How long one request to a loader or parameter server may take. Long:
/// in synchronous mode a pull waits for the slowest worker (or for a worker
/// being restarted on another node).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// A worker that cannot reach its peers for this long fails (its supervisor
/// decides what next).
const GIVE_UP_AFTER: Duration = Duration::from_secs(90);
/// A request still unanswered after this long is logged (once), so that a
/// job that waits out [`REQUEST_TIMEOUT`] says on what.
const SLOW_REQUEST: Duration = Duration::from_secs(10);

/// Waits for `request`, warning once if it takes longer than
/// [`SLOW_REQUEST`] (`what` names it: the request and the peer).
async fn watched<F: std::future::Future>(
    worker: u32,
    what: impl FnOnce() -> String,
    request: F,
) -> F::Output {
    let started = tokio::time::Instant::now();
    let mut request = std::pin::pin!(request);
    tokio::select! {
        answer = &mut request => return answer,
        () = tokio::time::sleep(SLOW_REQUEST) => {}
    }
    let what = what();
    tracing::warn!(worker, waiting = ?started.elapsed(), "{what} still unanswered (times out after {REQUEST_TIMEOUT:?})");
    let answer = request.await;
    tracing::warn!(worker, took = ?started.elapsed(), "{what}: answered or failed");
    answer
}

/// A training worker.
pub struct Worker {
    args: WorkerArgs,
    directory: Directory,
    owner: Vec<u32>,
    ps: Option<Vec<ActorHandle<PsMsg>>>,
    loader: Option<ActorHandle<LoaderMsg>>,
    /// The batch taken ahead.
    ahead: Ahead,
    /// The parameters the last push was answered with.
    held: Option<Held>,
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
    let nested = if device == DeviceSpec::Cpu && work <= INLINE_WORK {
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

/// Parameters of every shard (shard order) and their versions.
struct Held {
    versions: Vec<u64>,
    params: Vec<Arc<Vec<ParamTensor>>>,
}

impl Held {
    fn from_replies(
        replies: Vec<Result<Params, manta_actors::AskError<PsMsg>>>,
        what: &str,
    ) -> Result<Self, MlError> {
        let mut held = Held {
            versions: Vec::with_capacity(replies.len()),
            params: Vec::with_capacity(replies.len()),
        };
        for (i, r) in replies.into_iter().enumerate() {
            match r {
                Ok(Params { version, params }) => {
                    held.versions.push(version);
                    held.params.push(params);
                }
                Err(e) => {
                    return Err(MlError::Actor(format!(
                        "{what} to parameter server {i}: {e}"
                    )));
                }
            }
        }
        Ok(held)
    }
}

/// The batch taken ahead from the loader: each step takes the next one
/// while its push travels.
///
/// Credits: the first take grants `prefetch + 1` and every later one 1, so
/// the loader keeps up to `prefetch` batches prepared. (Taking several
/// batches per message was measured slower here: 93k-102k against 111k-118k
/// samples/s with one worker, alternated runs.)
struct Ahead {
    /// The worker's index (for logs).
    worker: u32,
    /// The loader's registered name (for errors).
    loader: String,
    batch: Option<Batch>,
    prefetch: u32,
    bpe: u32,
    granted: bool,
}

impl Ahead {
    fn new(worker: u32, loader: String, prefetch: u32, bpe: u32) -> Self {
        Self {
            worker,
            loader,
            batch: None,
            prefetch,
            bpe,
            granted: false,
        }
    }

    fn holds(&self, step: u64) -> bool {
        let at = Cursor::of_step(step, self.bpe);
        self.batch.as_ref().is_some_and(|b| {
            Cursor {
                epoch: b.epoch,
                batch: b.index,
            } == at
        })
    }

    /// Takes the batch of `step` unless it is already here (a batch held
    /// for another step is dropped). End of data is not an error: `pop`
    /// then finds nothing.
    async fn fill_for(
        &mut self,
        loader: &ActorHandle<LoaderMsg>,
        step: u64,
    ) -> Result<(), MlError> {
        if self.holds(step) {
            return Ok(());
        }
        self.batch = None;
        let grant = if self.granted { 1 } else { self.prefetch + 1 };
        let take = loader.ask(
            |reply| LoaderMsg::Take {
                at: Some(Cursor::of_step(step, self.bpe)),
                grant,
                reply,
            },
            REQUEST_TIMEOUT,
        );
        let loader_name = &self.loader;
        let reply = watched(
            self.worker,
            || format!("take of step {step} from loader {loader_name}"),
            take,
        )
        .await;
        match reply {
            Ok(d) => {
                self.granted = true;
                if let Delivery::Batch(b) = d {
                    self.batch = Some(b);
                }
                Ok(())
            }
            Err(e) => {
                // A loader restarted elsewhere gets its credits again.
                self.granted = false;
                Err(MlError::Actor(format!(
                    "take from loader {}: {e}",
                    self.loader
                )))
            }
        }
    }

    /// The batch of `step`, if it is here.
    fn pop(&mut self, step: u64) -> Option<Batch> {
        if self.holds(step) {
            self.batch.take()
        } else {
            None
        }
    }
}

impl Worker {
    /// A worker resolving its peers through `directory`.
    pub fn new(args: WorkerArgs, directory: Directory) -> Self {
        let owner = assign_shards(&args.model, args.ps.len() as u32);
        let ahead = Ahead::new(
            args.index,
            args.loader.clone(),
            args.prefetch,
            args.batches_per_epoch,
        );
        Self {
            args,
            directory,
            owner,
            ps: None,
            loader: None,
            ahead,
            held: None,
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
            self.ahead.granted = false;
        }
        match (&self.ps, &self.loader) {
            (Some(p), Some(l)) => Ok((p.clone(), l.clone())),
            _ => Err(MlError::Actor("peers not resolved".into())),
        }
    }

    async fn step(&mut self) -> Result<StepOutcome, MlError> {
        let (ps, loader) = self.resolve()?;
        let sync = matches!(self.args.mode, Mode::Sync);
        if !sync && self.next >= self.total_steps() {
            return Ok(StepOutcome::Finished);
        }
        let index = self.args.index;
        // The parameters: those the last push answered with, or pulled (the
        // batch we expect, sync: the version we wait for, is fetched
        // meanwhile).
        let held = match self.held.take() {
            Some(held) => held,
            None => {
                let min_version = if sync { self.next } else { 0 };
                let pulls = join_all(ps.iter().enumerate().map(|(s, p)| {
                    let pull = p.ask(
                        |reply| PsMsg::Pull {
                            worker: index,
                            min_version,
                            reply,
                        },
                        REQUEST_TIMEOUT,
                    );
                    let what = move || format!("pull of version {min_version} from shard {s}");
                    watched(index, what, pull)
                }));
                let guess = self.next;
                let (pulls, filled) = futures::join!(pulls, self.ahead.fill_for(&loader, guess));
                let held = Held::from_replies(pulls, "pull");
                if held.is_err() {
                    self.ps = None;
                }
                self.loader_result(filled)?;
                held?
            }
        };
        // Sync: every version consumes one batch per loader, so the version
        // is the data position. Shards can differ only after one of them went
        // back to a checkpoint; the oldest one decides.
        let version = held.versions.iter().copied().min().unwrap_or(0);
        if sync && version >= self.total_steps() {
            return Ok(StepOutcome::Finished);
        }
        let step = if sync { version } else { self.next };
        let filled = self.ahead.fill_for(&loader, step).await;
        self.loader_result(filled)?;
        let Some(batch) = self.ahead.pop(step) else {
            return Ok(StepOutcome::Finished);
        };
        // Our own copy of each shard's values (a move when nothing else holds
        // them, as after a remote pull; a copy of the shard's values when it
        // is in this process).
        let mut shard_params: Vec<_> = held
            .params
            .into_iter()
            .map(|p| Arc::unwrap_or_clone(p).into_iter())
            .collect();
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
        // One message per shard pushes the gradients and brings back the
        // parameters of the next step (sync: once every worker has pushed);
        // the next step's batch is taken meanwhile. Stale or malformed
        // pushes are counted by the parameter server.
        let pushes = join_all(
            ps.iter()
                .zip(per_shard)
                .zip(&held.versions)
                .enumerate()
                .map(|(s, ((p, grads), &version))| {
                    let g = Gradients {
                        worker: index,
                        version,
                        grads,
                        loss,
                        samples,
                    };
                    let push = p.ask(|reply| PsMsg::PushPull(g, reply), REQUEST_TIMEOUT);
                    let what =
                        move || format!("push of step {step} (version {version}) to shard {s}");
                    watched(index, what, push)
                }),
        );
        let (replies, filled) = futures::join!(pushes, self.ahead.fill_for(&loader, step + 1));
        self.stats.steps += 1;
        self.next = step + 1;
        match Held::from_replies(replies, "push") {
            Ok(held) => self.held = Some(held),
            Err(e) => {
                self.ps = None;
                return Err(e);
            }
        }
        self.loader_result(filled)?;
        Ok(StepOutcome::Continue)
    }

    /// Forgets the loader's handle when it could not be reached (it is
    /// resolved again on the next try).
    fn loader_result(&mut self, r: Result<(), MlError>) -> Result<(), MlError> {
        if r.is_err() {
            self.loader = None;
        }
        r
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
    ) -> Result<(), ActorError> {
        match msg {
            WorkerMsg::Stats(reply) => {
                reply.send(self.stats.clone());
                Ok(())
            }
            WorkerMsg::Step => {
                if self.stats.finished {
                    return Ok(());
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
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_slow_request_is_named_once_and_still_answered() {
        let named = std::cell::Cell::new(0);
        let slow = async {
            tokio::time::sleep(SLOW_REQUEST * 2).await;
            7
        };
        let what = || {
            named.set(named.get() + 1);
            "pull".to_owned()
        };
        assert_eq!(watched(0, what, slow).await, 7);
        assert_eq!(named.get(), 1, "named once, when it turned slow");
        let fast = async { 8 };
        let what = || {
            named.set(named.get() + 1);
            "push".to_owned()
        };
        assert_eq!(watched(0, what, fast).await, 8);
        assert_eq!(named.get(), 1, "a prompt answer is not named");
    }
}
