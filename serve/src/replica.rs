//! A replica: an actor holding one model, forming batches from the
//! requests in its mailbox (up to `max_batch_size` rows, waiting at most
//! `batch_wait_timeout` after the oldest request reached it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use manta_actors::{Actor, ActorError, Context, Message, ReplyTo};

use crate::deployment::SlotGuard;
use crate::model::Model;

/// One request as a replica holds it.
pub(crate) struct Request {
    pub(crate) input: Vec<f32>,
    pub(crate) rows: usize,
    /// When the router handed it to this replica.
    pub(crate) sent: Instant,
    pub(crate) reply: ReplyTo<Result<Vec<f32>, String>>,
    /// Frees the replica's slot (`max_ongoing_requests`) when the request
    /// is answered or dropped, not when its caller gives up: a replica's
    /// mailbox never holds more than its limit. `None` on a replica serving
    /// another node (see [`crate::remote`]): the router there holds the
    /// slot until the remote ask answers.
    pub(crate) _slot: Option<SlotGuard>,
}

/// A replica's messages (local only: the model's inputs stay in-process).
#[derive(Message)]
#[message(local)]
pub(crate) enum ReplicaMsg {
    /// Run this request in a batch.
    Infer(Request),
    /// The batch of this generation has waited long enough.
    Flush(u64),
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request").field("rows", &self.rows).finish()
    }
}

impl std::fmt::Debug for ReplicaMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Infer(r) => f.debug_tuple("Infer").field(r).finish(),
            Self::Flush(g) => f.debug_tuple("Flush").field(g).finish(),
        }
    }
}

/// Batching settings of a replica.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batching {
    pub(crate) max_batch_size: usize,
    pub(crate) batch_wait_timeout: Duration,
}

pub(crate) struct Replica {
    model: Option<Box<dyn Model>>,
    batching: Batching,
    pending: Vec<Request>,
    pending_rows: usize,
    /// Generation of the batch being formed; a `Flush` of an older one is
    /// stale.
    generation: u64,
    labels: Arc<[(&'static str, String); 2]>,
    /// Model calls run on this thread (see `INLINE_MAX`).
    inline: bool,
    /// Calls in a row that took at most `INLINE_MAX`.
    short_calls: u32,
}

/// A model call that takes at most this long runs better on the replica's
/// own runtime thread than handed to tokio's blocking pool and back (the
/// hand-off is two thread wake-ups per batch): after `INLINE_AFTER` such
/// calls in a row the replica calls the model inline, and goes back to the
/// blocking pool at the first call that takes longer. Tokio's guidance for
/// code between two awaits is 10-100 µs.
const INLINE_MAX: Duration = Duration::from_micros(100);
/// See [`INLINE_MAX`].
const INLINE_AFTER: u32 = 8;

impl Replica {
    pub(crate) fn new(
        model: Box<dyn Model>,
        batching: Batching,
        labels: Arc<[(&'static str, String); 2]>,
    ) -> Self {
        Self {
            model: Some(model),
            batching,
            pending: Vec::new(),
            pending_rows: 0,
            generation: 0,
            labels,
            inline: false,
            short_calls: 0,
        }
    }

    async fn run_batch(&mut self) -> Result<(), ActorError> {
        self.generation = self.generation.wrapping_add(1);
        let batch = std::mem::take(&mut self.pending);
        let rows = std::mem::take(&mut self.pending_rows);
        if batch.is_empty() {
            return Ok(());
        }
        let labels = self.labels.as_ref();
        let oldest = batch
            .iter()
            .map(|r| r.sent)
            .min()
            .unwrap_or_else(Instant::now);
        metrics::histogram!("manta_serve_batch_wait_seconds", labels)
            .record(oldest.elapsed().as_secs_f64());
        metrics::histogram!("manta_serve_batch_size", labels).record(batch.len() as f64);
        let mut input = Vec::with_capacity(batch.iter().map(|r| r.input.len()).sum());
        for r in &batch {
            input.extend_from_slice(&r.input);
        }
        let Some(mut model) = self.model.take() else {
            return Err(ActorError::from("replica lost its model"));
        };
        let started = Instant::now();
        let joined = if self.inline && model.may_run_inline() {
            // Short calls (see `INLINE_MAX`): on this thread, without the
            // hand-off to the blocking pool and back.
            let t = Instant::now();
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.infer(&input, rows)))
                .map(|out| (model, out, t.elapsed()))
                .map_err(|p| manta_actors::panic_text(p.as_ref()))
        } else {
            tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                let out = model.infer(&input, rows);
                (model, out, t.elapsed())
            })
            .await
            .map_err(|e| e.to_string())
        };
        metrics::histogram!("manta_serve_compute_seconds", labels)
            .record(started.elapsed().as_secs_f64());
        let (model, out) = match joined {
            Ok((model, out, took)) => {
                // Inline after `INLINE_AFTER` calls in a row of at most
                // `INLINE_MAX` (the model's own time, not the hand-off);
                // back on the blocking pool at the first longer one.
                if took <= INLINE_MAX {
                    self.short_calls = self.short_calls.saturating_add(1);
                    self.inline = self.short_calls >= INLINE_AFTER;
                } else {
                    self.short_calls = 0;
                    self.inline = false;
                }
                (model, out)
            }
            Err(e) => {
                let message = format!("model panicked: {e}");
                for r in batch {
                    r.reply.send(Err(message.clone()));
                }
                return Err(ActorError::from(message));
            }
        };
        let width = model.outputs();
        self.model = Some(model);
        match out {
            Ok(values) if values.len() == rows * width => {
                let mut at = 0;
                for r in batch {
                    let n = r.rows * width;
                    let Request { reply, _slot, .. } = r;
                    // The slot frees before the caller hears the answer.
                    drop(_slot);
                    reply.send(Ok(values[at..at + n].to_vec()));
                    at += n;
                }
            }
            Ok(values) => {
                let message = format!(
                    "model answered {} values for {rows} rows of {width}",
                    values.len()
                );
                for r in batch {
                    r.reply.send(Err(message.clone()));
                }
            }
            Err(message) => {
                for r in batch {
                    r.reply.send(Err(message.clone()));
                }
            }
        }
        Ok(())
    }
}

impl Replica {
    /// Takes a request into the batch being formed; `flush` tells the
    /// actor (through `me`) that a batch of a generation has waited long
    /// enough.
    pub(crate) async fn push<M: manta_actors::Message>(
        &mut self,
        request: Request,
        me: &manta_actors::ActorHandle<M>,
        flush: fn(u64) -> M,
    ) -> Result<(), ActorError> {
        if self.pending.is_empty() {
            // A new batch: flush it once its first request has
            // waited `batch_wait_timeout` since the router sent it.
            // A flush due now still goes behind the requests
            // already in the mailbox, so they join this batch.
            let wait = self
                .batching
                .batch_wait_timeout
                .saturating_sub(request.sent.elapsed());
            let generation = self.generation;
            let me = me.clone();
            if wait.is_zero() {
                let _ = me.tell(flush(generation));
            } else {
                // The replica may have stopped meanwhile: the tell fails.
                let job: crate::timer::Job = Box::new(move || {
                    let _ = me.tell(flush(generation));
                });
                // The precise timer thread; tokio's (1 ms ticks) only if
                // that thread could not start.
                if let Err(job) = crate::timer::at(Instant::now() + wait, job) {
                    tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        job();
                    });
                }
            }
        }
        self.pending_rows += request.rows;
        self.pending.push(request);
        if self.pending_rows >= self.batching.max_batch_size {
            self.run_batch().await?;
        }
        Ok(())
    }

    /// The batch of `generation` has waited long enough: runs it unless
    /// it ran already.
    pub(crate) async fn flush(&mut self, generation: u64) -> Result<(), ActorError> {
        if generation == self.generation {
            self.run_batch().await?;
        }
        Ok(())
    }
}

impl Actor for Replica {
    type Msg = ReplicaMsg;

    async fn handle(
        &mut self,
        msg: ReplicaMsg,
        ctx: &mut Context<ReplicaMsg>,
    ) -> Result<(), ActorError> {
        match msg {
            ReplicaMsg::Infer(request) => {
                self.push(request, ctx.myself(), ReplicaMsg::Flush).await?;
            }
            ReplicaMsg::Flush(generation) => self.flush(generation).await?,
        }
        Ok(())
    }
}
