//! A deployment: N replica actors of one model version, a router picking
//! replicas by power of two choices on in-flight requests, bounded
//! queues (`max_ongoing_requests` per replica, `max_queued_requests` per
//! deployment), and the autoscaler (replicas follow the requests in
//! flight, down to zero).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use manta_actors::{ActorHandle, ActorSystem, AskError, ExitReason};
use tokio::sync::Notify;

use crate::error::{ServeError, StartError};
use crate::model::ModelFactory;
use crate::remote::{RemoteReplicaMsg, RemoteReplicas};
use crate::replica::{Batching, Replica, ReplicaMsg, Request};

/// How a deployment runs: replicas, batching, queue bounds.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentOptions {
    /// Replica actors (at least one). With `autoscaling` the autoscaler
    /// decides (leave this at 1; the first count is
    /// `autoscaling.initial_replicas`).
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
    /// Replicas follow the load (see [`AutoscalingConfig`]); `None`: a
    /// fixed `replicas`.
    #[serde(default)]
    pub autoscaling: Option<AutoscalingConfig>,
}

/// Autoscaling on requests in flight per replica (Ray Serve's names and
/// rule): the autoscaler wants `ceil(ongoing / target_ongoing_requests)`
/// replicas, `ongoing` being the requests held by replicas plus those
/// queued, clamped to `[min_replicas, max_replicas]`; it scales up once
/// that has asked for more for `upscale_delay_s`, down once it has asked
/// for fewer for `downscale_delay_s`. From zero replicas a request starts
/// one at once (a cold start: the model's parameters stay in memory, so
/// it takes milliseconds) while it waits in the deployment's queue.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscalingConfig {
    /// Requests in flight per replica the autoscaler aims at.
    #[serde(default = "default_target")]
    pub target_ongoing_requests: f64,
    /// Fewest replicas (0: scale to zero when idle).
    #[serde(default = "one")]
    pub min_replicas: usize,
    /// Most replicas.
    #[serde(default = "one")]
    pub max_replicas: usize,
    /// Replicas at start (default `min_replicas`).
    #[serde(default)]
    pub initial_replicas: Option<usize>,
    /// Seconds the load must ask for more replicas before they start.
    #[serde(default = "default_upscale")]
    pub upscale_delay_s: f64,
    /// Seconds the load must ask for fewer replicas before some drain.
    #[serde(default = "default_downscale")]
    pub downscale_delay_s: f64,
}

fn default_target() -> f64 {
    2.0
}
fn default_upscale() -> f64 {
    30.0
}
fn default_downscale() -> f64 {
    600.0
}

impl Default for AutoscalingConfig {
    fn default() -> Self {
        Self {
            target_ongoing_requests: default_target(),
            min_replicas: 1,
            max_replicas: 1,
            initial_replicas: None,
            upscale_delay_s: default_upscale(),
            downscale_delay_s: default_downscale(),
        }
    }
}

impl AutoscalingConfig {
    /// Replicas at start.
    pub fn initial(&self) -> usize {
        self.initial_replicas.unwrap_or(self.min_replicas)
    }

    fn validate(&self) -> Result<(), String> {
        let t = self.target_ongoing_requests;
        if !(t.is_finite() && t > 0.0) {
            return Err(format!(
                "autoscaling.target_ongoing_requests must be a positive number, got {t}"
            ));
        }
        if self.max_replicas == 0 {
            return Err("autoscaling.max_replicas must be at least 1".into());
        }
        if self.min_replicas > self.max_replicas {
            return Err(format!(
                "autoscaling.min_replicas ({}) is above max_replicas ({})",
                self.min_replicas, self.max_replicas
            ));
        }
        let i = self.initial();
        if i < self.min_replicas || i > self.max_replicas {
            return Err(format!(
                "autoscaling.initial_replicas ({i}) is outside [min_replicas, max_replicas] = [{}, {}]",
                self.min_replicas, self.max_replicas
            ));
        }
        for (key, d) in [
            ("upscale_delay_s", self.upscale_delay_s),
            ("downscale_delay_s", self.downscale_delay_s),
        ] {
            if !(d.is_finite() && (0.0..=1e9).contains(&d)) {
                return Err(format!(
                    "autoscaling.{key} must be between 0 and 1e9 seconds, got {d}"
                ));
            }
        }
        Ok(())
    }
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
            autoscaling: None,
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
        if let Some(a) = &self.autoscaling {
            a.validate()?;
            if self.replicas != 1 {
                return Err(
                    "replicas does not apply with autoscaling: set autoscaling.initial_replicas"
                        .into(),
                );
            }
            if a.min_replicas == 0 && self.max_queued_requests == 0 {
                return Err(
                    "autoscaling.min_replicas = 0 needs max_queued_requests >= 1 (requests wait there for a cold start)"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

/// `in_flight` of a retired replica: no slot can be taken any more.
const CLOSED: usize = usize::MAX;

/// A replica actor: in this process (its requests never serialised) or
/// on another node of the cluster.
#[derive(Clone)]
pub(crate) enum ReplicaHandle {
    Local(ActorHandle<ReplicaMsg>),
    Remote {
        handle: ActorHandle<RemoteReplicaMsg>,
        /// Its node's id.
        node: String,
        /// Its node's name.
        name: String,
    },
}

impl ReplicaHandle {
    fn stop(&self, reason: ExitReason) {
        match self {
            Self::Local(h) => h.stop(reason),
            Self::Remote { handle, .. } => handle.stop(reason),
        }
    }

    fn exit_reason(&self) -> Option<ExitReason> {
        match self {
            Self::Local(h) => h.exit_reason(),
            Self::Remote { handle, .. } => handle.exit_reason(),
        }
    }
}

struct Slot {
    handle: ReplicaHandle,
    /// Requests held; [`CLOSED`] once retired.
    in_flight: AtomicUsize,
    /// Scaling down: the router takes it only when no other has room, and
    /// it is retired once empty.
    draining: AtomicBool,
    /// Requests to it that failed with a broken link (`NodeDown`) while
    /// the replica was not yet known gone, each counted for up to
    /// [`SUSPECT_HOLD`] or until the replica exits: while any counts, the
    /// router sends it nothing (its node is most likely dying, and a slot
    /// freed by such a failure must not take one more request there).
    suspect: AtomicU32,
}

/// How long a request lost with its replica's link keeps the router away
/// from that replica when the replica is not known gone: long enough for
/// the membership to see a dead node (a closed connection is seen within
/// milliseconds), short enough that a replica whose link merely broke
/// and reopened is back in use soon.
const SUSPECT_HOLD: Duration = Duration::from_secs(5);

/// Counts of answered requests, for canary decisions.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DeploymentStats {
    /// Requests answered with outputs.
    pub ok: u64,
    /// Requests that failed on the serving side (overload, timeout,
    /// replica failure, stopping); bad inputs are not counted.
    pub failed: u64,
    /// Mean latency of the answered ones (queue to answer), seconds.
    pub mean_latency_s: f64,
}

struct Shared {
    model: String,
    version: String,
    key: String,
    options: DeploymentOptions,
    features: usize,
    outputs: usize,
    system: ActorSystem,
    factory: ModelFactory,
    batching: Batching,
    replicas: RwLock<Vec<Arc<Slot>>>,
    queued: AtomicUsize,
    /// Woken whenever a replica slot frees up or a replica starts.
    freed: Notify,
    /// Wakes the autoscaler: the load changed, or the deployment stops.
    load: Arc<Notify>,
    /// Bumped before every `load` notification: the autoscaler looks
    /// again when it moved while it was acting.
    load_gen: AtomicU64,
    stopping: AtomicBool,
    /// Drained and stopped: the autoscaler ends.
    finished: AtomicBool,
    rng: AtomicU64,
    labels: Arc<[(&'static str, String); 2]>,
    /// Replicas started so far (initial ones and scale-ups).
    starts: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    latency_us: AtomicU64,
    /// Woken on every answered or failed request.
    answered: Notify,
    /// Woken on every change of replicas, slots or queue.
    changed: Notify,
    /// Replicas run on other nodes of a cluster (`None`: in this process).
    remote: Option<RemoteSide>,
    /// This deployment, for tasks that replace lost replicas.
    me: Weak<Shared>,
}

/// A deployment's replicas on other nodes: where and what to send.
struct RemoteSide {
    replicas: RemoteReplicas,
    /// The spawn arguments (the model included), encoded once.
    args: manta_actors::ArgsValue,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The autoscaler holds only a weak reference: let it see the end.
        self.load.notify_one();
    }
}

impl Shared {
    fn slots(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Slot>>> {
        // A poisoned lock only means a panic while holding it; the vector
        // itself is always whole (pushes and removals do not panic midway).
        self.replicas.read().unwrap_or_else(|p| p.into_inner())
    }

    fn slots_mut(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Slot>>> {
        self.replicas.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests held by replicas plus those queued.
    fn ongoing(&self) -> usize {
        // The queue first: a request leaving it took its slot before (see
        // `QueuedGuard`), so one moving meanwhile is counted at least once.
        let queued = self.queued.load(Ordering::Acquire);
        let held: usize = self
            .slots()
            .iter()
            .map(|s| s.in_flight.load(Ordering::Acquire))
            .filter(|&n| n != CLOSED)
            .sum();
        held + queued
    }

    /// The load moved (a slot taken or freed, a request queued or out of
    /// the queue, a replica replaced): the autoscaler looks again (else a
    /// change it did not see could leave requests waiting for the next
    /// one), and so does every `wait_until`.
    fn load_moved(&self) {
        if self.options.autoscaling.is_some() {
            self.load_gen.fetch_add(1, Ordering::AcqRel);
            self.load.notify_one();
        }
        self.changed.notify_waiters();
    }

    fn set_replica_gauge(&self, n: usize) {
        metrics::gauge!("manta_serve_replicas", self.labels.as_ref()).set(n as f64);
        self.changed.notify_waiters();
    }

    /// Builds and spawns one replica.
    async fn start_replica(&self) -> Result<Arc<Slot>, String> {
        if let Some(remote) = &self.remote {
            return self.start_remote_replica(remote).await;
        }
        let m = (self.factory)()?;
        if (m.features(), m.outputs()) != (self.features, self.outputs) {
            return Err(format!(
                "the model factory built a model of {}x{}, the deployment serves {}x{}",
                m.features(),
                m.outputs(),
                self.features,
                self.outputs
            ));
        }
        let handle = self
            .system
            .spawn(Replica::new(m, self.batching, self.labels.clone()))
            .await
            .map_err(|e| e.to_string())?;
        self.starts.fetch_add(1, Ordering::AcqRel);
        let monitor = handle.monitor();
        let slot = Arc::new(Slot {
            handle: ReplicaHandle::Local(handle),
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            suspect: AtomicU32::new(0),
        });
        // A replica whose model panicked stops: replaced like a lost one.
        self.watch(&slot, monitor, Box::new(|| ()));
        Ok(slot)
    }
}

impl Shared {
    /// Places one replica on a node of the cluster (waiting up to
    /// [`manta_cluster::PLACEMENT_WAIT`] for one with room) and watches
    /// it: when it exits (its node died), the router drops it and a
    /// replacement starts.
    async fn start_remote_replica(&self, remote: &RemoteSide) -> Result<Arc<Slot>, String> {
        let r = &remote.replicas;
        let on: std::collections::BTreeMap<String, usize> = {
            let mut on = std::collections::BTreeMap::new();
            for slot in self.slots().iter() {
                if let ReplicaHandle::Remote { node, .. } = &slot.handle {
                    *on.entry(node.clone()).or_insert(0) += 1;
                }
            }
            on
        };
        // A node that fails to start one (it lacks the kind, say) is
        // passed over for the next candidate.
        let mut refused = std::collections::BTreeSet::new();
        let mut errors = Vec::new();
        let (handle, offer) = loop {
            let offer = r
                .placement
                .take_waiting(r.cpus, r.gpus, r.role.as_deref(), &on, &refused)
                .await
                .ok_or_else(|| {
                    format!(
                        "no node can host a replica within {:?} (each takes {} cpus and {} gpus{}; nodes run `manta node`){}",
                        manta_cluster::PLACEMENT_WAIT,
                        r.cpus,
                        r.gpus,
                        r.role
                            .as_ref()
                            .map(|x| format!(", role `{x}`"))
                            .unwrap_or_default(),
                        if errors.is_empty() {
                            String::new()
                        } else {
                            format!("; refused by: {}", errors.join("; "))
                        }
                    )
                })?;
            let target = manta_actors::Placement {
                node: Some(offer.id.clone()),
                ..manta_actors::Placement::default()
            };
            match r
                .placement
                .cluster()
                .spawn_kind::<RemoteReplicaMsg>(
                    &target,
                    crate::remote::REPLICA_KIND,
                    remote.args.clone(),
                    None,
                )
                .await
            {
                Ok(h) => break (h, offer),
                Err(e) => {
                    r.placement.release(&offer.id, r.cpus, r.gpus);
                    let why = manta_actors::error_chain(&e);
                    tracing::warn!(deployment = %self.key, node = %offer.name, error = %why, "a node refused a replica; trying another");
                    errors.push(format!("{}: {why}", offer.name));
                    refused.insert(offer.id);
                }
            }
        };
        self.starts.fetch_add(1, Ordering::AcqRel);
        tracing::info!(deployment = %self.key, node = %offer.name, "replica started on another node");
        let slot = Arc::new(Slot {
            handle: ReplicaHandle::Remote {
                handle: handle.clone(),
                node: offer.id.clone(),
                name: offer.name,
            },
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            suspect: AtomicU32::new(0),
        });
        let placement = r.placement.clone();
        let (cpus, gpus) = (r.cpus, r.gpus);
        self.watch(
            &slot,
            handle.monitor(),
            Box::new(move || placement.release(&offer.id, cpus, gpus)),
        );
        Ok(slot)
    }

    /// Watches a replica: when it exits while still listed (its node died,
    /// its model panicked), the router drops it and a replacement starts
    /// ([`replica_lost`]). `on_exit` runs first, whatever the reason.
    fn watch(
        &self,
        slot: &Arc<Slot>,
        monitor: manta_actors::Monitor,
        on_exit: Box<dyn FnOnce() + Send>,
    ) {
        let me = self.me.clone();
        let watched = Arc::clone(slot);
        tokio::spawn(async move {
            let reason = monitor.wait().await;
            on_exit();
            let Some(s) = me.upgrade() else { return };
            // It may have died before its starter listed it: wait (bounded)
            // for the listing, which every starter announces on `changed`.
            let deadline = tokio::time::Instant::now() + 3 * manta_cluster::SPAWN_TIMEOUT;
            loop {
                let changed = s.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if s.slots().iter().any(|x| Arc::ptr_eq(x, &watched)) {
                    replica_lost(&s, &watched, &reason.to_string());
                    return;
                }
                // Retired, stopped, or already dropped by a failed request.
                if watched.in_flight.load(Ordering::Acquire) == CLOSED
                    || s.finished.load(Ordering::Acquire)
                    || tokio::time::timeout_at(deadline, changed).await.is_err()
                {
                    return;
                }
            }
        });
    }
}

/// A replica has exited on its own (its node died, its model panicked):
/// the router stops using it at once, and unless it was draining or the
/// deployment stops, a replacement starts on a live node. Idempotent: a
/// replica no longer listed (retired, stopped, already lost) is left
/// alone.
fn replica_lost(s: &Shared, slot: &Arc<Slot>, why: &str) {
    let count = {
        let mut slots = s.slots_mut();
        let before = slots.len();
        slots.retain(|x| !Arc::ptr_eq(x, slot));
        if slots.len() == before {
            return;
        }
        slots.len()
    };
    let node = match &slot.handle {
        ReplicaHandle::Remote { name, .. } => name.as_str(),
        ReplicaHandle::Local(_) => "this node",
    };
    tracing::warn!(deployment = %s.key, node, reason = why, replicas = count, "replica lost");
    s.set_replica_gauge(count);
    // Requests queued for a slot look again (at the live replicas).
    s.freed.notify_waiters();
    if slot.draining.load(Ordering::Acquire)
        || s.stopping.load(Ordering::Acquire)
        || s.finished.load(Ordering::Acquire)
    {
        return;
    }
    tokio::spawn(replace_replica(s.me.clone()));
}

/// Starts a replica in place of a lost one, trying again (backing off up
/// to 5 s) until one starts or the deployment stops.
async fn replace_replica(shared: Weak<Shared>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(s) = shared.upgrade() else { return };
        if s.stopping.load(Ordering::Acquire) || s.finished.load(Ordering::Acquire) {
            return;
        }
        match s.start_replica().await {
            Ok(slot) => {
                if s.finished.load(Ordering::Acquire) {
                    slot.handle.stop(ExitReason::Shutdown(None));
                    return;
                }
                let count = {
                    let mut slots = s.slots_mut();
                    slots.push(slot);
                    slots.len()
                };
                s.set_replica_gauge(count);
                s.freed.notify_waiters();
                s.load_moved();
                tracing::info!(deployment = %s.key, replicas = count, "replica replaced");
                return;
            }
            Err(e) => {
                tracing::warn!(deployment = %s.key, error = %e, "replacing a lost replica failed; trying again");
            }
        }
        drop(s);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// A request to `slot`'s replica was lost with its link while the replica
/// is not known gone: the router keeps away from it until it exits (and
/// leaves the router) or [`SUSPECT_HOLD`] passes.
fn suspect(s: &Shared, slot: &Arc<Slot>, handle: &ActorHandle<RemoteReplicaMsg>) {
    slot.suspect.fetch_add(1, Ordering::AcqRel);
    let monitor = handle.monitor();
    let (slot, me) = (Arc::clone(slot), s.me.clone());
    tokio::spawn(async move {
        // Exited: the watcher drops it from the router.
        let _ = tokio::time::timeout(SUSPECT_HOLD, monitor.wait()).await;
        slot.suspect.fetch_sub(1, Ordering::AcqRel);
        // Requests queued while it was avoided look again.
        if let Some(s) = me.upgrade() {
            s.freed.notify_waiters();
            s.load_moved();
        }
    });
}

/// Holds one of a replica's `max_ongoing_requests` slots; frees it (and
/// wakes queued requests) when dropped.
pub(crate) struct SlotGuard {
    shared: Arc<Shared>,
    slot: Arc<Slot>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slot.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.shared.freed.notify_waiters();
        self.shared.load_moved();
    }
}

/// Counts a request waiting in the deployment's queue while it lives.
struct QueuedGuard<'a>(&'a Shared);

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        let now = self.0.queued.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!("manta_serve_queue_depth", self.0.labels.as_ref()).set(now as f64);
        // A stop waiting for the queue to empty looks again; so does the
        // autoscaler (a look while this request moved from the queue to
        // its slot may have counted it twice).
        self.0.freed.notify_waiters();
        self.0.load_moved();
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
            .field("replicas", &self.replicas())
            .finish()
    }
}

impl Deployment {
    /// Starts `options.replicas` replica actors in `system` (with
    /// autoscaling: `autoscaling.initial_replicas`, and the autoscaler),
    /// each with a model from `factory`. The factory is kept: the
    /// autoscaler builds new replicas with it.
    pub async fn start(
        system: &ActorSystem,
        model: &str,
        version: &str,
        factory: ModelFactory,
        options: DeploymentOptions,
    ) -> Result<Self, StartError> {
        Self::start_with(system, model, version, factory, options, None).await
    }

    /// [`Deployment::start`] with the replicas on other nodes of a
    /// cluster (see [`crate::remote`]): placed by `remote`'s resources,
    /// each carrying the model; a replica whose node dies is dropped by
    /// the router at once and replaced on a live node. `factory` builds
    /// the same model here once, for its shape.
    pub async fn start_on(
        system: &ActorSystem,
        model: &str,
        version: &str,
        factory: ModelFactory,
        options: DeploymentOptions,
        remote: RemoteReplicas,
    ) -> Result<Self, StartError> {
        Self::start_with(system, model, version, factory, options, Some(remote)).await
    }

    async fn start_with(
        system: &ActorSystem,
        model: &str,
        version: &str,
        factory: ModelFactory,
        options: DeploymentOptions,
        remote: Option<RemoteReplicas>,
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
        // The shape, from a model built once (also when starting at zero).
        let probe = factory().map_err(|message| StartError::Spawn {
            deployment: key.clone(),
            replica: 0,
            message,
        })?;
        let (features, outputs) = (probe.features(), probe.outputs());
        drop(probe);
        let remote = match remote {
            Some(replicas) => {
                replicas
                    .validate()
                    .map_err(|e| StartError::Config(format!("deployment {key}: {e}")))?;
                if (replicas.spec.inputs, replicas.spec.classes) != (features, outputs) {
                    return Err(StartError::Config(format!(
                        "deployment {key}: the model factory builds {features}x{outputs}, the remote model is {}x{}",
                        replicas.spec.inputs, replicas.spec.classes
                    )));
                }
                let args = replicas
                    .args(model, version, batching)
                    .map_err(|e| StartError::Config(format!("deployment {key}: {e}")))?;
                Some(RemoteSide { replicas, args })
            }
            None => None,
        };
        let initial = options
            .autoscaling
            .as_ref()
            .map_or(options.replicas, AutoscalingConfig::initial);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let shared = Arc::new_cyclic(|me| Shared {
            me: me.clone(),
            remote,
            model: model.to_owned(),
            version: version.to_owned(),
            key: key.clone(),
            options,
            features,
            outputs,
            system: system.clone(),
            factory,
            batching,
            replicas: RwLock::new(Vec::with_capacity(initial)),
            queued: AtomicUsize::new(0),
            freed: Notify::new(),
            load: Arc::new(Notify::new()),
            load_gen: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            finished: AtomicBool::new(false),
            rng: AtomicU64::new(seed),
            labels,
            starts: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            latency_us: AtomicU64::new(0),
            answered: Notify::new(),
            changed: Notify::new(),
        });
        for i in 0..initial {
            let slot = shared
                .start_replica()
                .await
                .map_err(|message| StartError::Spawn {
                    deployment: key.clone(),
                    replica: i,
                    message,
                })?;
            shared.slots_mut().push(slot);
        }
        shared.set_replica_gauge(initial);
        metrics::gauge!("manta_serve_queue_depth", shared.labels.as_ref()).set(0.0);
        if let Some(cfg) = shared.options.autoscaling.clone() {
            tokio::spawn(autoscale(
                Arc::downgrade(&shared),
                Arc::clone(&shared.load),
                cfg,
            ));
        }
        Ok(Self { shared })
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

    /// Its model factory (what a new version with the same model reuses).
    pub fn factory(&self) -> ModelFactory {
        Arc::clone(&self.shared.factory)
    }

    /// Replicas taking requests now (not draining).
    pub fn replicas(&self) -> usize {
        self.shared
            .slots()
            .iter()
            .filter(|s| !s.draining.load(Ordering::Acquire))
            .count()
    }

    /// Where its replicas run on a cluster (`None`: in this process).
    pub fn remote_replicas(&self) -> Option<RemoteReplicas> {
        self.shared.remote.as_ref().map(|r| r.replicas.clone())
    }

    /// The node of each replica (draining ones included): its node's name
    /// for a replica on another node, `local` for one in this process.
    pub fn replica_nodes(&self) -> Vec<String> {
        self.shared
            .slots()
            .iter()
            .map(|s| match &s.handle {
                ReplicaHandle::Local(_) => "local".to_owned(),
                ReplicaHandle::Remote { name, .. } => name.clone(),
            })
            .collect()
    }

    /// Replica actors running now, draining ones included.
    pub fn replicas_running(&self) -> usize {
        self.shared.slots().len()
    }

    /// Replicas started so far (the first ones, scale-ups and cold
    /// starts).
    pub fn replica_starts(&self) -> u64 {
        self.shared.starts.load(Ordering::Acquire)
    }

    /// Whether it takes requests (not stopping, every replica alive; a
    /// deployment scaled to zero is ready: a request starts a replica).
    pub fn is_ready(&self) -> bool {
        !self.shared.stopping.load(Ordering::Acquire)
            && self
                .shared
                .slots()
                .iter()
                .all(|s| s.handle.exit_reason().is_none())
    }

    /// Sets its gauges again (a deployment started before the metrics
    /// recorder was installed would otherwise show none until it scales).
    pub(crate) fn publish_gauges(&self) {
        let s = &self.shared;
        s.set_replica_gauge(s.slots().len());
        metrics::gauge!("manta_serve_queue_depth", s.labels.as_ref())
            .set(s.queued.load(Ordering::Acquire) as f64);
    }

    /// Waits until `cond` holds, looking again at every change of its
    /// replicas, slots or queue; answers whether it held before `deadline`.
    pub async fn wait_until(
        &self,
        deadline: tokio::time::Instant,
        mut cond: impl FnMut(&Deployment) -> bool,
    ) -> bool {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            // Registered before looking: no change is missed.
            changed.as_mut().enable();
            if cond(self) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return cond(self);
            }
        }
    }

    /// Requests waiting for a replica now.
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Acquire)
    }

    /// Requests held by each replica now (draining ones included).
    pub fn in_flight(&self) -> Vec<usize> {
        self.shared
            .slots()
            .iter()
            .map(|s| s.in_flight.load(Ordering::Acquire))
            .filter(|&n| n != CLOSED)
            .collect()
    }

    /// Requests answered and failed so far.
    pub fn stats(&self) -> DeploymentStats {
        let ok = self.shared.ok.load(Ordering::Acquire);
        let us = self.shared.latency_us.load(Ordering::Acquire);
        DeploymentStats {
            ok,
            failed: self.shared.failed.load(Ordering::Acquire),
            mean_latency_s: if ok == 0 {
                0.0
            } else {
                us as f64 / ok as f64 / 1e6
            },
        }
    }

    /// Waits until `n` requests have been answered or failed in all
    /// (counted since it started), or until `deadline`; answers the stats
    /// then.
    pub async fn wait_answered(&self, n: u64, deadline: tokio::time::Instant) -> DeploymentStats {
        loop {
            let answered = self.shared.answered.notified();
            tokio::pin!(answered);
            // Registered before looking: no answer is missed.
            answered.as_mut().enable();
            let stats = self.stats();
            if stats.ok + stats.failed >= n
                || tokio::time::timeout_at(deadline, answered).await.is_err()
            {
                return self.stats();
            }
        }
    }

    /// Runs `rows` rows (`input.len() == rows * features()`), answering
    /// `rows * outputs()` values. Waits for a replica slot in the
    /// deployment's queue when every replica is full (or none runs yet),
    /// and is refused when the queue is full too. The whole request,
    /// queue included, is bounded by `request_timeout_ms`.
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
        let r = self.infer_checked(input, rows, arrived).await;
        match &r {
            Ok(_) => {
                s.ok.fetch_add(1, Ordering::AcqRel);
                s.latency_us
                    .fetch_add(arrived.elapsed().as_micros() as u64, Ordering::AcqRel);
            }
            Err(_) => {
                s.failed.fetch_add(1, Ordering::AcqRel);
            }
        }
        s.answered.notify_waiters();
        r
    }

    async fn infer_checked(
        &self,
        input: Vec<f32>,
        rows: usize,
        arrived: Instant,
    ) -> Result<Vec<f32>, ServeError> {
        let s = &self.shared;
        let timeout = Duration::from_millis(s.options.request_timeout_ms);
        let deadline = tokio::time::Instant::now() + timeout;
        let slot = match tokio::time::timeout_at(deadline, self.acquire()).await {
            Ok(slot) => slot?,
            Err(_) => {
                return Err(ServeError::Timeout {
                    deployment: s.key.clone(),
                    timeout,
                });
            }
        };
        metrics::histogram!("manta_serve_queue_seconds", s.labels.as_ref())
            .record(arrived.elapsed().as_secs_f64());
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(Duration::from_millis(1));
        let handle = match &slot.slot.handle {
            ReplicaHandle::Local(h) => h.clone(),
            ReplicaHandle::Remote { handle, name, .. } => {
                let (handle, name) = (handle.clone(), name.clone());
                return self
                    .infer_remote(slot, handle, &name, input, rows, left, timeout)
                    .await;
            }
        };
        let sent = Instant::now();
        let answer = handle
            .ask(
                |reply| {
                    ReplicaMsg::Infer(Request {
                        input,
                        rows,
                        sent,
                        reply,
                        _slot: Some(slot),
                    })
                },
                left,
            )
            .await;
        match answer {
            Ok(Ok(values)) => Ok(values),
            Ok(Err(message)) => Err(ServeError::Replica {
                deployment: s.key.clone(),
                message,
            }),
            Err(AskError::Timeout(_)) => Err(ServeError::Timeout {
                deployment: s.key.clone(),
                timeout,
            }),
            Err(e) => Err(ServeError::Replica {
                deployment: s.key.clone(),
                message: e.to_string(),
            }),
        }
    }

    /// The ask to a replica on another node. The slot stays held here
    /// until the answer (or the failure) arrives; a replica that is gone
    /// (its node died) is dropped from the router before the slot frees,
    /// so no later request picks it.
    #[allow(clippy::too_many_arguments)]
    async fn infer_remote(
        &self,
        slot: SlotGuard,
        handle: ActorHandle<RemoteReplicaMsg>,
        node: &str,
        input: Vec<f32>,
        rows: usize,
        left: Duration,
        timeout: Duration,
    ) -> Result<Vec<f32>, ServeError> {
        let s = &self.shared;
        let Ok(rows32) = u32::try_from(rows) else {
            return Err(ServeError::BadInput(format!("{rows} rows in one request")));
        };
        let answer = handle
            .ask(
                |reply| RemoteReplicaMsg::Infer {
                    input,
                    rows: rows32,
                    reply,
                },
                left,
            )
            .await;
        let result = match answer {
            Ok(Ok(values)) if values.len() == rows * s.outputs => Ok(values),
            Ok(Ok(values)) => Err(ServeError::Replica {
                deployment: s.key.clone(),
                message: format!(
                    "the replica on {node} answered {} values for {rows} rows of {}",
                    values.len(),
                    s.outputs
                ),
            }),
            Ok(Err(message)) => Err(ServeError::Replica {
                deployment: s.key.clone(),
                message,
            }),
            Err(AskError::Timeout(_)) => Err(ServeError::Timeout {
                deployment: s.key.clone(),
                timeout,
            }),
            // Gone, or its node's link lost the request in flight (the
            // node may be dying before its monitor says so): a retry goes
            // elsewhere. Only a replica known gone leaves the router.
            Err(e)
                if handle.exit_reason().is_some()
                    || matches!(e, AskError::NoReply(Some(ExitReason::NodeDown(_)))) =>
            {
                let message = e.to_string();
                if handle.exit_reason().is_some() {
                    replica_lost(s, &slot.slot, &message);
                } else {
                    // Before the slot frees (so no request takes it).
                    suspect(s, &slot.slot, &handle);
                }
                Err(ServeError::ReplicaLost {
                    deployment: s.key.clone(),
                    node: node.to_owned(),
                    message,
                })
            }
            Err(e) => Err(ServeError::Replica {
                deployment: s.key.clone(),
                message: format!("the replica on {node}: {e}"),
            }),
        };
        drop(slot);
        result
    }

    async fn acquire(&self) -> Result<SlotGuard, ServeError> {
        let s = &self.shared;
        if s.stopping.load(Ordering::Acquire) {
            return Err(ServeError::Stopped(s.key.clone()));
        }
        if let Some(g) = self.try_pick() {
            // The load grew without queueing (replicas filled this way,
            // and the requests queued behind them, would otherwise wait
            // for the next slot to free; a `wait_until` for "every request
            // held" would sleep to its deadline).
            s.load_moved();
            return Ok(g);
        }
        // Every replica is full (or none runs): wait in the deployment's
        // bounded queue.
        let before = s.queued.fetch_add(1, Ordering::AcqRel);
        let _queued = QueuedGuard(s);
        if before >= s.options.max_queued_requests {
            return Err(ServeError::Overloaded {
                deployment: s.key.clone(),
                queued: before,
            });
        }
        metrics::gauge!("manta_serve_queue_depth", s.labels.as_ref()).set((before + 1) as f64);
        s.load_moved();
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

    /// Power of two choices among the replicas not draining: two random
    /// ones, the one with fewer requests in flight if it has room, else
    /// the other, else any with room (draining ones last).
    fn try_pick(&self) -> Option<SlotGuard> {
        let s = &self.shared;
        let slots = s.slots();
        let n = slots.len();
        if n == 0 {
            return None;
        }
        let r = self.random();
        let a = (r % n as u64) as usize;
        let b = if n > 1 {
            (a + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n
        } else {
            a
        };
        let load = |i: usize| {
            let slot = &slots[i];
            if slot.draining.load(Ordering::Acquire) {
                usize::MAX
            } else {
                slot.in_flight.load(Ordering::Acquire)
            }
        };
        let (first, second) = if load(a) <= load(b) { (a, b) } else { (b, a) };
        let live = (0..n)
            .map(|k| (a + k) % n)
            .filter(|&i| !slots[i].draining.load(Ordering::Acquire));
        let draining = (0..n)
            .map(|k| (a + k) % n)
            .filter(|&i| slots[i].draining.load(Ordering::Acquire));
        std::iter::once(first)
            .chain(std::iter::once(second))
            .filter(|&i| !slots[i].draining.load(Ordering::Acquire))
            .chain(live)
            .chain(draining)
            // A replica whose link just lost a request takes none.
            .filter(|&i| slots[i].suspect.load(Ordering::Acquire) == 0)
            .find(|&i| self.try_acquire(&slots[i]))
            .map(|i| {
                s.changed.notify_waiters();
                SlotGuard {
                    shared: Arc::clone(&self.shared),
                    slot: Arc::clone(&slots[i]),
                }
            })
    }

    fn try_acquire(&self, slot: &Slot) -> bool {
        let max = self.shared.options.max_ongoing_requests;
        // A retired slot holds CLOSED, above any max.
        slot.in_flight
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
    /// in-flight ones to be answered, then stops the replicas and the
    /// autoscaler. Answers whether everything drained in time.
    pub async fn stop(&self, grace: Duration) -> bool {
        self.begin_stop();
        let s = &self.shared;
        let drained = tokio::time::timeout(grace, async {
            loop {
                let freed = s.freed.notified();
                tokio::pin!(freed);
                freed.as_mut().enable();
                if s.ongoing() == 0 {
                    return;
                }
                freed.await;
            }
        })
        .await
        .is_ok();
        s.finished.store(true, Ordering::Release);
        s.load.notify_one();
        let slots = std::mem::take(&mut *s.slots_mut());
        for r in &slots {
            r.handle.stop(ExitReason::Shutdown(None));
        }
        s.set_replica_gauge(0);
        drained
    }
}

/// The autoscaler of one deployment: looks at the load whenever it
/// changes (a request queued, a slot freed) or a delay runs out, and
/// starts, drains and retires replicas. Holds the deployment weakly: it
/// ends when the deployment stops or is dropped.
async fn autoscale(shared: Weak<Shared>, load: Arc<Notify>, cfg: AutoscalingConfig) {
    let up_delay = Duration::from_secs_f64(cfg.upscale_delay_s);
    let down_delay = Duration::from_secs_f64(cfg.downscale_delay_s);
    let mut up_since: Option<tokio::time::Instant> = None;
    let mut down_since: Option<tokio::time::Instant> = None;
    loop {
        let wake = load.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let Some(s) = shared.upgrade() else { return };
        if s.finished.load(Ordering::Acquire) {
            return;
        }
        let generation = s.load_gen.load(Ordering::Acquire);
        let now = tokio::time::Instant::now();
        retire_drained(&s);
        let ongoing = s.ongoing();
        tracing::trace!(deployment = %s.key, ongoing, "autoscaler looks");
        let active = s
            .slots()
            .iter()
            .filter(|x| !x.draining.load(Ordering::Acquire))
            .count();
        let wanted = (ongoing as f64 / cfg.target_ongoing_requests).ceil() as usize;
        let desired = wanted.clamp(cfg.min_replicas, cfg.max_replicas);
        let stopping = s.stopping.load(Ordering::Acquire);
        let mut next: Option<tokio::time::Instant> = None;
        if active == 0 && ongoing > 0 {
            // A request waits on a deployment at zero: start one now.
            up_since = None;
            scale_up(&s, desired.max(1)).await;
        } else if desired > active && !stopping {
            down_since = None;
            let since = *up_since.get_or_insert(now);
            if now >= since + up_delay {
                up_since = None;
                scale_up(&s, desired - active).await;
            } else {
                next = Some(since + up_delay);
            }
        } else if desired < active && !stopping {
            up_since = None;
            let since = *down_since.get_or_insert(now);
            if now >= since + down_delay {
                down_since = None;
                scale_down(&s, active - desired);
                retire_drained(&s);
            } else {
                next = Some(since + down_delay);
            }
        } else {
            up_since = None;
            down_since = None;
        }
        // The load moved while this looked or acted: look again now.
        let moved = s.load_gen.load(Ordering::Acquire) != generation;
        drop(s);
        if moved {
            continue;
        }
        match next {
            Some(at) => {
                let _ = tokio::time::timeout_at(at, wake).await;
            }
            None => wake.await,
        }
    }
}

/// Starts `n` replicas: draining ones are taken back first.
async fn scale_up(s: &Shared, mut n: usize) {
    for slot in s.slots().iter() {
        if n > 0 && slot.draining.swap(false, Ordering::AcqRel) {
            n -= 1;
        }
    }
    for _ in 0..n {
        match s.start_replica().await {
            Ok(slot) => {
                let count = {
                    let mut slots = s.slots_mut();
                    slots.push(slot);
                    slots.len()
                };
                s.set_replica_gauge(count);
                tracing::info!(deployment = %s.key, replicas = count, "scaled up");
            }
            Err(e) => {
                // Queued requests keep waiting (bounded by their timeout);
                // the next load change tries again.
                tracing::warn!(deployment = %s.key, error = %e, "starting a replica failed");
                break;
            }
        }
    }
    s.freed.notify_waiters();
    // Replicas taken back from draining are a change too (no gauge change
    // announces them).
    s.changed.notify_waiters();
}

/// Marks the `n` least busy replicas draining.
fn scale_down(s: &Shared, n: usize) {
    let slots = s.slots();
    let mut live: Vec<&Arc<Slot>> = slots
        .iter()
        .filter(|x| !x.draining.load(Ordering::Acquire))
        .collect();
    live.sort_by_key(|x| x.in_flight.load(Ordering::Acquire));
    for slot in live.into_iter().take(n) {
        slot.draining.store(true, Ordering::Release);
    }
    s.changed.notify_waiters();
}

/// Retires the draining replicas that hold no request: closes their slot
/// (so the router cannot take it) and stops them.
fn retire_drained(s: &Shared) {
    let mut retired = Vec::new();
    {
        let mut slots = s.slots_mut();
        slots.retain(|x| {
            let closed = x.draining.load(Ordering::Acquire)
                && x.in_flight
                    .compare_exchange(0, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
            if closed {
                retired.push(Arc::clone(x));
            }
            !closed
        });
        if !retired.is_empty() {
            s.set_replica_gauge(slots.len());
        }
    }
    for r in retired {
        r.handle.stop(ExitReason::Shutdown(None));
        tracing::info!(deployment = %s.key, "replica drained and stopped");
    }
}
