//! Data-loader actors: each owns one shard of the training rows and serves
//! it in batches, with a seeded shuffle per epoch, a prefetch buffer, and
//! credit-based flow control.
//!
//! ## Protocol
//! - The consumer grants credits (`Take::grant`, or [`LoaderMsg::Grant`]).
//!   The loader prepares batches ahead only while it holds unused credits and
//!   fewer than `prefetch` batches: its buffer never exceeds the credits its
//!   consumer granted, so a consumer that stops taking bounds the loader's
//!   memory.
//! - [`LoaderMsg::Take`] returns the next batch (and uses one credit, if
//!   any), or [`Delivery::EndOfData`] after the last epoch. Each batch says
//!   its epoch, its index and whether it ends the epoch.
//! - [`LoaderMsg::TakeMany`] returns up to `max` batches in one reply
//!   (ending with [`Delivery::EndOfData`] when the data runs out): one
//!   message per chunk instead of per batch. [`LoaderFeed`] wraps it for
//!   consumers that read a loader in order, with one chunk always in flight.
//! - A consumer may say where it expects to be (`Take::at`): the loader seeks
//!   there (batches are a pure function of seed, shard, epoch and index), so
//!   a loader restarted on another node continues where its consumer is.
//!   With a `state_dir`, a loader also records its position after every
//!   batch and a restarted loader resumes there on its own.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use manta_actors::{Actor, ActorError, ActorHandle, Context, Message, ReplyTo};
use serde::{Deserialize, Serialize};

use crate::MlError;
use crate::data::{Batch, Dataset, DatasetSpec, ShardPlan, make_batch};

/// The most batches one [`LoaderMsg::TakeMany`] returns (larger requests are
/// cut to this), which bounds a reply to a few MiB for typical batches.
pub const MAX_TAKE: u32 = 1024;

/// Batches prepared per self-sent `Fill` message.
const FILL_PER_MESSAGE: usize = 8;

/// A position in a loader's batch sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cursor {
    /// Epoch, from 0.
    pub epoch: u32,
    /// Batch within the epoch, from 0.
    pub batch: u32,
}

impl Cursor {
    /// The cursor of global step `step` with `bpe` batches per epoch.
    pub fn of_step(step: u64, bpe: u32) -> Self {
        Cursor {
            epoch: (step / u64::from(bpe)) as u32,
            batch: (step % u64::from(bpe)) as u32,
        }
    }
}

/// Arguments of a loader (kind `manta.loader`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderArgs {
    /// The dataset and its split.
    pub dataset: DatasetSpec,
    /// This loader's shard.
    pub shard: u32,
    /// Shards and batch size.
    pub plan: ShardPlan,
    /// Seed of the per-epoch shuffles.
    pub seed: u64,
    /// Epochs to serve.
    pub epochs: u32,
    /// Batches prepared ahead (within credits).
    #[serde(default = "default_prefetch")]
    pub prefetch: u32,
    /// Where to record the position after each batch (optional).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

fn default_prefetch() -> u32 {
    2
}

/// Messages of a loader.
#[derive(Debug, Serialize, Deserialize)]
pub enum LoaderMsg {
    /// Grants more credits.
    Grant(u32),
    /// Takes the next batch; `grant` adds credits first, `at` seeks first.
    Take {
        /// Seek here first (if different from the loader's position).
        at: Option<Cursor>,
        /// Credits granted with this request.
        grant: u32,
        /// Where the batch (or the end of the data) goes.
        reply: ReplyTo<Delivery>,
    },
    /// Takes up to `max` batches (at least one, at most [`MAX_TAKE`]): the
    /// reply lists them in order, its last element [`Delivery::EndOfData`]
    /// if the data ran out. `grant` and `at` work as
    /// in [`LoaderMsg::Take`]; each batch returned uses one credit.
    TakeMany {
        /// Seek here first (if different from the loader's position).
        at: Option<Cursor>,
        /// Credits granted with this request.
        grant: u32,
        /// The most batches wanted.
        max: u32,
        /// Where the batches go.
        reply: ReplyTo<Vec<Delivery>>,
    },
    /// Reports counters.
    Stats(ReplyTo<LoaderStats>),
    /// Prepares one batch ahead (sent by the loader to itself).
    Fill,
}

/// The answer to a take.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Delivery {
    /// The next batch.
    Batch(Batch),
    /// Every epoch has been served.
    EndOfData {
        /// Epochs served.
        epochs: u32,
    },
}

/// A loader's counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoaderStats {
    /// Position of the next batch to serve.
    pub next: Cursor,
    /// Prepared batches held.
    pub buffered: u32,
    /// Unused credits.
    pub credits: u32,
    /// The most batches ever held at once.
    pub max_buffered: u32,
    /// Batches served.
    pub served: u64,
    /// Rows in this shard.
    pub shard_rows: u32,
    /// Batches per epoch.
    pub batches_per_epoch: u32,
    /// Where this loader started (from its state file, or 0/0).
    pub resumed_at: Cursor,
}

impl Message for LoaderMsg {
    const NAME: &'static str = "manta.ml.LoaderMsg";
    const DECODE: Option<manta_actors::wire::Decode<Self>> =
        Some(manta_actors::wire::decode::<Self>);
}

/// A data-loader actor.
pub struct Loader {
    args: LoaderArgs,
    train: Option<Dataset>,
    rows: Vec<usize>,
    bpe: u32,
    /// Position of the next batch to prepare.
    prepare_at: Cursor,
    /// Position of the next batch to serve.
    next: Cursor,
    order: Option<(u32, Vec<usize>)>,
    buffer: VecDeque<Batch>,
    credits: u32,
    max_buffered: u32,
    served: u64,
    resumed_at: Cursor,
    fill_pending: bool,
}

impl Loader {
    /// A loader (its data is read in `started`).
    pub fn new(args: LoaderArgs) -> Self {
        Self {
            args,
            train: None,
            rows: Vec::new(),
            bpe: 0,
            prepare_at: Cursor { epoch: 0, batch: 0 },
            next: Cursor { epoch: 0, batch: 0 },
            order: None,
            buffer: VecDeque::new(),
            credits: 0,
            max_buffered: 0,
            served: 0,
            resumed_at: Cursor { epoch: 0, batch: 0 },
            fill_pending: false,
        }
    }

    fn state_file(&self) -> Option<PathBuf> {
        self.args.state_dir.as_ref().map(|d| {
            d.join(format!(
                "loader-{}-of-{}.json",
                self.args.shard, self.args.plan.shards
            ))
        })
    }

    fn done(&self, at: Cursor) -> bool {
        at.epoch >= self.args.epochs
    }

    fn advance(&self, c: Cursor) -> Cursor {
        if c.batch + 1 >= self.bpe {
            Cursor {
                epoch: c.epoch + 1,
                batch: 0,
            }
        } else {
            Cursor {
                epoch: c.epoch,
                batch: c.batch + 1,
            }
        }
    }

    fn build(&mut self, at: Cursor) -> Result<Batch, ActorError> {
        let train = self
            .train
            .as_ref()
            .ok_or_else(|| crate::fail("loader used before its data was loaded"))?;
        if self.order.as_ref().map(|(e, _)| *e) != Some(at.epoch) {
            let order = self.args.plan.epoch_order(
                self.args.seed,
                self.args.shard,
                at.epoch,
                self.rows.len(),
            );
            self.order = Some((at.epoch, order));
        }
        let order = self
            .order
            .as_ref()
            .map(|(_, o)| o.as_slice())
            .unwrap_or(&[]);
        let span = self
            .args
            .plan
            .batch_span(train.len(), self.rows.len(), at.batch);
        Ok(make_batch(
            train,
            &self.rows,
            &order[span],
            at.epoch,
            at.batch,
            self.bpe,
        ))
    }

    fn seek(&mut self, at: Cursor) {
        // A cursor past its epoch's last batch (a consumer's word, possibly
        // from another node) means the same step as its normal form: it
        // would otherwise index past the epoch's order.
        let at = if at.batch >= self.bpe && self.bpe > 0 {
            let epoch = u64::from(at.epoch) + u64::from(at.batch / self.bpe);
            Cursor {
                epoch: u32::try_from(epoch).unwrap_or(u32::MAX),
                batch: at.batch % self.bpe,
            }
        } else {
            at
        };
        if at != self.next {
            tracing::debug!(shard = self.args.shard, from = ?self.next, to = ?at, "loader seeks");
            self.buffer.clear();
            self.next = at;
            self.prepare_at = at;
        }
    }

    fn want_fill(&self) -> bool {
        (self.buffer.len() as u32) < self.credits.min(self.args.prefetch)
            && !self.done(self.prepare_at)
    }

    fn schedule_fill(&mut self, ctx: &Context<LoaderMsg>) {
        if self.want_fill() && !self.fill_pending {
            self.fill_pending = ctx.myself().tell(LoaderMsg::Fill).is_ok();
        }
    }

    /// Adds `grant` credits, seeks to `at` (if given) and serves up to `max`
    /// deliveries (at least one, at most [`MAX_TAKE`]; `EndOfData` ends
    /// them); then records the position and prepares ahead.
    fn take(
        &mut self,
        at: Option<Cursor>,
        grant: u32,
        max: u32,
        ctx: &Context<LoaderMsg>,
    ) -> Result<Vec<Delivery>, ActorError> {
        self.credits = self.credits.saturating_add(grant);
        if let Some(at) = at {
            self.seek(at);
        }
        let max = max.clamp(1, MAX_TAKE) as usize;
        let mut out = Vec::with_capacity(max.min(64));
        while out.len() < max {
            let d = self.serve_one()?;
            let end = matches!(d, Delivery::EndOfData { .. });
            out.push(d);
            if end {
                break;
            }
        }
        self.record();
        self.schedule_fill(ctx);
        Ok(out)
    }

    /// Serves the next batch (from the buffer, or built now), or
    /// `EndOfData`.
    fn serve_one(&mut self) -> Result<Delivery, ActorError> {
        if self.done(self.next) {
            return Ok(Delivery::EndOfData {
                epochs: self.args.epochs,
            });
        }
        let batch = match self.buffer.pop_front() {
            Some(b) => b,
            None => {
                let b = self.build(self.next)?;
                self.prepare_at = self.advance(self.next);
                b
            }
        };
        self.credits = self.credits.saturating_sub(1);
        self.next = self.advance(self.next);
        self.served += 1;
        Ok(Delivery::Batch(batch))
    }

    fn record(&self) {
        if let Some(path) = self.state_file() {
            let tmp = path.with_extension("json.tmp");
            let body = serde_json::to_vec(&self.next).unwrap_or_default();
            if let Err(e) = std::fs::write(&tmp, body).and_then(|()| std::fs::rename(&tmp, &path)) {
                tracing::warn!(file = %path.display(), error = %e, "loader could not record its position");
            }
        }
    }
}

impl Actor for Loader {
    type Msg = LoaderMsg;

    async fn started(&mut self, _ctx: &mut Context<LoaderMsg>) -> Result<(), ActorError> {
        let (train, _) = self
            .args
            .dataset
            .load_split()
            .map_err(|e| crate::fail(format!("loader {}: {e}", self.args.shard)))?;
        self.args
            .plan
            .validate(train.len())
            .map_err(|e| crate::fail(format!("loader {}: {e}", self.args.shard)))?;
        if self.args.shard >= self.args.plan.shards {
            return Err(crate::fail(format!(
                "loader shard {} out of range (shards: {})",
                self.args.shard, self.args.plan.shards
            )));
        }
        self.rows = self.args.plan.shard_rows(train.len(), self.args.shard);
        self.bpe = self.args.plan.batches_per_epoch(train.len());
        self.train = Some(train);
        if let Some(dir) = &self.args.state_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| crate::fail(format!("loader state dir {}: {e}", dir.display())))?;
        }
        if let Some(path) = self.state_file() {
            if let Ok(body) = std::fs::read(&path) {
                match serde_json::from_slice::<Cursor>(&body) {
                    Ok(c) => {
                        tracing::info!(
                            shard = self.args.shard,
                            epoch = c.epoch,
                            batch = c.batch,
                            "loader resumes"
                        );
                        self.next = c;
                        self.prepare_at = c;
                        self.resumed_at = c;
                    }
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "ignoring unreadable loader state")
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle(
        &mut self,
        msg: LoaderMsg,
        ctx: &mut Context<LoaderMsg>,
    ) -> Result<(), ActorError> {
        match msg {
            LoaderMsg::Grant(n) => {
                self.credits = self.credits.saturating_add(n);
                self.schedule_fill(ctx);
            }
            LoaderMsg::Fill => {
                self.fill_pending = false;
                // A few batches per message: fewer self-sends, while takes
                // still get in between.
                for _ in 0..FILL_PER_MESSAGE {
                    if !self.want_fill() {
                        break;
                    }
                    let at = self.prepare_at;
                    let batch = self.build(at)?;
                    self.buffer.push_back(batch);
                    self.max_buffered = self.max_buffered.max(self.buffer.len() as u32);
                    self.prepare_at = self.advance(at);
                }
                self.schedule_fill(ctx);
            }
            LoaderMsg::Take { at, grant, reply } => {
                let first = self.take(at, grant, 1, ctx)?.pop();
                // `take` serves at least one delivery.
                let first = first.ok_or_else(|| crate::fail("loader served nothing"))?;
                reply.send(first);
            }
            LoaderMsg::TakeMany {
                at,
                grant,
                max,
                reply,
            } => {
                reply.send(self.take(at, grant, max, ctx)?);
            }
            LoaderMsg::Stats(reply) => {
                reply.send(LoaderStats {
                    next: self.next,
                    buffered: self.buffer.len() as u32,
                    credits: self.credits,
                    max_buffered: self.max_buffered,
                    served: self.served,
                    shard_rows: self.rows.len() as u32,
                    batches_per_epoch: self.bpe,
                    resumed_at: self.resumed_at,
                });
            }
        }
        Ok(())
    }
}

type Pending = futures::future::BoxFuture<'static, Result<Vec<Delivery>, MlError>>;

/// Reads a loader in order, a chunk of batches per message, with the next
/// chunk always requested while the current one is consumed.
///
/// The feed keeps one chunk of credits granted beyond the chunk it asks
/// for, so the loader prepares the following chunk (within its `prefetch`;
/// set it to at least the chunk size for full overlap) while the current
/// one travels. The feed holds at most two chunks, the loader at most one.
/// It works the same for a loader on another node, since it only uses the
/// loader's handle.
pub struct LoaderFeed {
    loader: ActorHandle<LoaderMsg>,
    chunk: u32,
    timeout: Duration,
    ready: VecDeque<Batch>,
    pending: Option<Pending>,
    ended: Option<u32>,
    requested: bool,
}

impl LoaderFeed {
    /// A feed asking `chunk` batches per message (cut to 1..=[`MAX_TAKE`]),
    /// waiting up to `timeout` for each.
    pub fn new(loader: ActorHandle<LoaderMsg>, chunk: u32, timeout: Duration) -> Self {
        Self {
            loader,
            chunk: chunk.clamp(1, MAX_TAKE),
            timeout,
            ready: VecDeque::new(),
            pending: None,
            ended: None,
            requested: false,
        }
    }

    /// The number of epochs served, once `EndOfData` was seen.
    pub fn ended(&self) -> Option<u32> {
        self.ended
    }

    /// Sends the next chunk request. The ask is polled once here, which
    /// sends it (an ask sends on its first poll, local or remote) and
    /// leaves only the wait for the reply; no task is spawned, so a chunk
    /// costs one wake-up of the loader and one of this task.
    async fn request(&mut self) {
        let loader = self.loader.clone();
        // The first request grants an extra chunk of credits, kept topped up
        // by every later one: the loader prepares the next chunk (within its
        // prefetch) while this one travels, instead of idling until asked.
        let grant = if self.requested {
            self.chunk
        } else {
            2 * self.chunk
        };
        self.requested = true;
        let (chunk, timeout) = (self.chunk, self.timeout);
        let mut ask: Pending = Box::pin(async move {
            loader
                .ask(
                    |reply| LoaderMsg::TakeMany {
                        at: None,
                        grant,
                        max: chunk,
                        reply,
                    },
                    timeout,
                )
                .await
                .map_err(|e| MlError::Actor(format!("loader: {e}")))
        });
        self.pending = match futures::poll!(&mut ask) {
            std::task::Poll::Ready(reply) => Some(Box::pin(std::future::ready(reply))),
            std::task::Poll::Pending => Some(ask),
        };
    }

    /// The next batch, or `None` after the last epoch.
    pub async fn next(&mut self) -> Result<Option<Batch>, MlError> {
        loop {
            if self.pending.is_none() && self.ended.is_none() {
                self.request().await;
            }
            if let Some(b) = self.ready.pop_front() {
                return Ok(Some(b));
            }
            let Some(pending) = self.pending.take() else {
                return Ok(None);
            };
            for d in pending.await? {
                match d {
                    Delivery::Batch(b) => self.ready.push_back(b),
                    Delivery::EndOfData { epochs } => self.ended = Some(epochs),
                }
            }
        }
    }
}
