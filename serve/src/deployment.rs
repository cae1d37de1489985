//! A deployment: N replica actors of one model version, a router picking
//! replicas by power of two choices on in-flight requests, and bounded
//! queues (`max_ongoing_requests` per replica, `max_queued_requests` per
//! deployment).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use manta_actors::{ActorHandle, ActorSystem, AskError, ExitReason};
use tokio::sync::Notify;

use crate::error::{ServeError, StartError};
use crate::model::ModelFactory;
use crate::replica::{Batching, Replica, ReplicaMsg, Request};

/// How a deployment runs: replicas, batching, queue bounds.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentOptions {
    /// Replica actors (at least one).
    #[serde(default = "one")]
    pub replicas: usize,
    /// Rows a replica batches at most (a larger request runs alone).
    #[serde(default = "one")]
    pub max_batch_size: usize,
    /// How long a replica waits for a batch to fill, in milliseconds,
    /// counted from when its oldest request was sent to it.
    #[serde(default)]
    pub batch_wait_timeout_ms: u64,
    /// Requests a replica holds at most (queued in its mailbox, batching
    /// or computing).
    #[serde(default = "default_ongoing")]
    pub max_ongoing_requests: usize,
    /// Requests the deployment holds waiting for a replica; beyond them
    /// requests are refused ([`ServeError::Overloaded`]).
    #[serde(default = "default_queued")]
    pub max_queued_requests: usize,
    /// How long a request may wait for its answer, in milliseconds.
    #[serde(default = "default_timeout")]
    pub request_timeout_ms: u64,
}

fn one() -> usize {
    1
}
fn default_ongoing() -> usize {
    8
}
fn default_queued() -> usize {
    64
}
fn default_timeout() -> u64 {
    30_000
}

impl Default for DeploymentOptions {
    fn default() -> Self {
        Self {
            replicas: 1,
            max_batch_size: 1,
            batch_wait_timeout_ms: 0,
            max_ongoing_requests: default_ongoing(),
            max_queued_requests: default_queued(),
            request_timeout_ms: default_timeout(),
        }
    }
}

impl DeploymentOptions {
    /// Checks that every count is positive.
    pub fn validate(&self) -> Result<(), String> {
        for (key, v) in [
            ("replicas", self.replicas),
            ("max_batch_size", self.max_batch_size),
            ("max_ongoing_requests", self.max_ongoing_requests),
        ] {
            if v == 0 {
                return Err(format!("{key} must be at least 1"));
            }
        }
        if self.request_timeout_ms == 0 {
            return Err("request_timeout_ms must be at least 1".into());
        }
        Ok(())
    }
}

struct Slot {
    handle: ActorHandle<ReplicaMsg>,
    in_flight: AtomicUsize,
}

struct Shared {
    model: String,
    version: String,
    key: String,
    options: DeploymentOptions,
    features: usize,
    outputs: usize,
    replicas: Vec<Slot>,
    queued: AtomicUsize,
    /// Woken whenever a replica slot frees up.
    freed: Notify,
    stopping: AtomicBool,
    rng: AtomicU64,
    labels: Arc<[(&'static str, String); 2]>,
}

/// Holds one of a replica's `max_ongoing_requests` slots; frees it (and
/// wakes queued requests) when dropped.
pub(crate) struct SlotGuard {
    shared: Arc<Shared>,
    replica: usize,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Some(slot) = self.shared.replicas.get(self.replica) {
            slot.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        self.shared.freed.notify_waiters();
    }
}

/// Counts a request waiting in the deployment's queue while it lives.
struct QueuedGuard<'a>(&'a Shared);

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        let now = self.0.queued.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!("manta_serve_queue_depth", self.0.labels.as_ref()).set(now as f64);
        // A stop waiting for the queue to empty looks again.
        self.0.freed.notify_waiters();
    }
}

/// A running deployment (cheap to clone).
#[derive(Clone)]
pub struct Deployment {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("model", &self.shared.model)
            .field("version", &self.shared.version)
            .field("replicas", &self.shared.replicas.len())
            .finish()
    }
}

impl Deployment {
    /// Starts `options.replicas` replica actors in `system`, each with a
    /// model from `factory`.
    pub async fn start(
        system: &ActorSystem,
        model: &str,
        version: &str,
        factory: ModelFactory,
        options: DeploymentOptions,
    ) -> Result<Self, StartError> {
        let key = format!("{model}:{version}");
        options
            .validate()
            .map_err(|e| StartError::Config(format!("deployment {key}: {e}")))?;
        let labels: Arc<[(&'static str, String); 2]> =
            Arc::new([("model", model.to_owned()), ("version", version.to_owned())]);
        let batching = Batching {
            max_batch_size: options.max_batch_size,
            batch_wait_timeout: Duration::from_millis(options.batch_wait_timeout_ms),
        };
        let mut replicas = Vec::with_capacity(options.replicas);
        let (mut features, mut outputs) = (0, 0);
        for i in 0..options.replicas {
            let spawn_err = |message: String| StartError::Spawn {
                deployment: key.clone(),
                replica: i,
                message,
            };
            let m = factory().map_err(spawn_err)?;
            if i == 0 {
                (features, outputs) = (m.features(), m.outputs());
            } else if (features, outputs) != (m.features(), m.outputs()) {
                return Err(spawn_err("replicas built different model shapes".into()));
            }
            let handle = system
                .spawn(Replica::new(m, batching, labels.clone()))
                .await
                .map_err(|e| spawn_err(e.to_string()))?;
            replicas.push(Slot {
                handle,
                in_flight: AtomicUsize::new(0),
            });
        }
        metrics::gauge!("manta_serve_replicas", labels.as_ref()).set(replicas.len() as f64);
        metrics::gauge!("manta_serve_queue_depth", labels.as_ref()).set(0.0);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(Self {
            shared: Arc::new(Shared {
                model: model.to_owned(),
                version: version.to_owned(),
                key,
                options,
                features,
                outputs,
                replicas,
                queued: AtomicUsize::new(0),
                freed: Notify::new(),
                stopping: AtomicBool::new(false),
                rng: AtomicU64::new(seed),
                labels,
            }),
        })
    }

    /// The model's name.
    pub fn model(&self) -> &str {
        &self.shared.model
    }

    /// The version's name.
    pub fn version(&self) -> &str {
        &self.shared.version
    }

    /// Values per input row.
    pub fn features(&self) -> usize {
        self.shared.features
    }

    /// Values per output row.
    pub fn outputs(&self) -> usize {
        self.shared.outputs
    }

    /// Its options.
    pub fn options(&self) -> &DeploymentOptions {
        &self.shared.options
    }

    /// Whether it takes requests (not stopping, every replica alive).
    pub fn is_ready(&self) -> bool {
        !self.shared.stopping.load(Ordering::Acquire)
            && self
                .shared
                .replicas
                .iter()
                .all(|s| s.handle.exit_reason().is_none())
    }

    /// Requests waiting for a replica now.
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }

    /// Requests held by each replica now.
    pub fn in_flight(&self) -> Vec<usize> {
        self.shared
            .replicas
            .iter()
            .map(|s| s.in_flight.load(Ordering::Acquire))
            .collect()
    }

    /// Runs `rows` rows (`input.len() == rows * features()`), answering
    /// `rows * outputs()` values. Waits for a replica slot in the
    /// deployment's queue when every replica is full, and is refused when
    /// the queue is full too.
    pub async fn infer(&self, input: Vec<f32>, rows: usize) -> Result<Vec<f32>, ServeError> {
        let s = &self.shared;
        if rows == 0 || input.len() != rows * s.features {
            return Err(ServeError::BadInput(format!(
                "{} values for {rows} rows of {} features",
                input.len(),
                s.features
            )));
        }
        let arrived = Instant::now();
        let slot = self.acquire().await?;
        metrics::histogram!("manta_serve_queue_seconds", s.labels.as_ref())
            .record(arrived.elapsed().as_secs_f64());
        let replica = slot.replica;
        let timeout = Duration::from_millis(s.options.request_timeout_ms);
        let sent = Instant::now();
        let answer = s.replicas[replica]
            .handle
            .ask(
                |reply| {
                    ReplicaMsg::Infer(Request {
                        input,
                        rows,
                        sent,
                        reply,
                        _slot: slot,
                    })
                },
                timeout,
            )
            .await;
        match answer {
            Ok(Ok(values)) => Ok(values),
            Ok(Err(message)) => Err(ServeError::Replica {
                deployment: s.key.clone(),
                message,
            }),
            Err(AskError::Timeout(timeout)) => Err(ServeError::Timeout {
                deployment: s.key.clone(),
                timeout,
            }),
            Err(e) => Err(ServeError::Replica {
                deployment: s.key.clone(),
                message: e.to_string(),
            }),
        }
    }

    async fn acquire(&self) -> Result<SlotGuard, ServeError> {
        let s = &self.shared;
        if s.stopping.load(Ordering::Acquire) {
            return Err(ServeError::Stopped(s.key.clone()));
        }
        if let Some(g) = self.try_pick() {
            return Ok(g);
        }
        // Every replica is full: wait in the deployment's bounded queue.
        let before = s.queued.fetch_add(1, Ordering::AcqRel);
        let _queued = QueuedGuard(s);
        if before >= s.options.max_queued_requests {
            return Err(ServeError::Overloaded {
                deployment: s.key.clone(),
                queued: before,
            });
        }
        metrics::gauge!("manta_serve_queue_depth", s.labels.as_ref()).set((before + 1) as f64);
        loop {
            let freed = s.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so a slot freed in between wakes
            // this request.
            freed.as_mut().enable();
            // A stopping deployment still serves the requests it queued.
            if let Some(g) = self.try_pick() {
                return Ok(g);
            }
            freed.await;
        }
    }

    /// Power of two choices: two random replicas, the one with fewer
    /// requests in flight if it has room, else the other, else any.
    fn try_pick(&self) -> Option<SlotGuard> {
        let s = &self.shared;
        let n = s.replicas.len();
        let r = self.random();
        let a = (r % n as u64) as usize;
        let b = if n > 1 {
            (a + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n
        } else {
            a
        };
        let load = |i: usize| s.replicas[i].in_flight.load(Ordering::Acquire);
        let (first, second) = if load(a) <= load(b) { (a, b) } else { (b, a) };
        std::iter::once(first)
            .chain(std::iter::once(second))
            .chain((0..n).map(|k| (a + k) % n))
            .find(|&i| self.try_acquire(i))
            .map(|replica| SlotGuard {
                shared: Arc::clone(&self.shared),
                replica,
            })
    }

    fn try_acquire(&self, i: usize) -> bool {
        let max = self.shared.options.max_ongoing_requests;
        self.shared.replicas[i]
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c < max).then_some(c + 1)
            })
            .is_ok()
    }

    /// SplitMix64 over a shared counter.
    fn random(&self) -> u64 {
        let mut z = self
            .shared
            .rng
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Refuses new requests ([`ServeError::Stopped`]); those queued or in
    /// flight are still answered.
    pub fn begin_stop(&self) {
        self.shared.stopping.store(true, Ordering::Release);
    }

    /// Stops taking requests, waits up to `grace` for the queued and
    /// in-flight ones to be answered, then stops the replicas. Answers
    /// whether everything drained in time.
    pub async fn stop(&self, grace: Duration) -> bool {
        self.begin_stop();
        let s = &self.shared;
        let drained = tokio::time::timeout(grace, async {
            loop {
                let freed = s.freed.notified();
                tokio::pin!(freed);
                freed.as_mut().enable();
                let busy = s.queued.load(Ordering::Acquire)
                    + s.replicas
                        .iter()
                        .map(|r| r.in_flight.load(Ordering::Acquire))
                        .sum::<usize>();
                if busy == 0 {
                    return;
                }
                freed.await;
            }
        })
        .await
        .is_ok();
        for r in &s.replicas {
            r.handle.stop(ExitReason::Shutdown(None));
        }
        metrics::gauge!("manta_serve_replicas", s.labels.as_ref()).set(0.0);
        drained
    }
}
