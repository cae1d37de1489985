//! Replicas on other nodes of a cluster.
//!
//! A deployment started with [`ClusterPlacement`] (`manta serve --seeds`)
//! runs its replicas as the actor kind [`REPLICA_KIND`] on member nodes
//! (`manta node` registers it, see [`register_kinds`]). The spawn
//! arguments carry the whole model (its [`ModelSpec`] and parameters, at
//! most [`MAX_REMOTE_PARAMS`] values) and the batching settings, so a node
//! needs no file of the serving one. The router stays on the serving node:
//! it holds the replica's slot (`max_ongoing_requests`) until the remote
//! ask ([`RemoteReplicaMsg::Infer`]) answers, and watches the replica. When
//! the replica's node dies, the asks in flight there end with `node down`
//! (HTTP 503), the router drops the replica at once and the deployment
//! starts a replacement on a live node.
//!
//! Replicas in the serving process itself stay local actors: their
//! requests are never serialised.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use manta_actors::{Actor, ActorError, Context, KindRegistry, Message, Placement, ReplyTo};
use manta_ml::{ModelSpec, ParamTensor};
use serde::{Deserialize, Serialize};

use crate::model::{MlpModel, Model};
use crate::replica::{Batching, Replica, Request};

/// The actor kind of a replica serving another node.
pub const REPLICA_KIND: &str = "manta.serve.replica";

/// The most parameter values a remote replica's model may carry (16 Mi
/// values, 64 MiB as `f32`; the spawn frame is bounded by the mesh's
/// frame limit as well). The digits MLP holds a few thousand to a few
/// hundred thousand.
pub const MAX_REMOTE_PARAMS: usize = 16 << 20;

/// Registers [`REPLICA_KIND`] into `kinds` (every node that may host
/// replicas of a serving process needs it; `manta node` has it).
pub fn register_kinds(kinds: &KindRegistry) {
    kinds.register(REPLICA_KIND, RemoteReplica::new);
}

/// The spawn arguments of a remote replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteReplicaArgs {
    /// The model's name (metrics labels).
    pub model: String,
    /// The version's name (metrics labels).
    pub version: String,
    /// The MLP's shape.
    pub spec: ModelSpec,
    /// Its parameters.
    pub params: Vec<ParamTensor>,
    /// See [`crate::DeploymentOptions::max_batch_size`].
    pub max_batch_size: usize,
    /// See [`crate::DeploymentOptions::batch_wait_timeout_ms`].
    pub batch_wait_timeout_ms: u64,
}

/// Messages of a remote replica.
#[derive(Debug, Serialize, Deserialize, Message)]
#[message(name = "manta.serve.RemoteReplicaMsg")]
pub enum RemoteReplicaMsg {
    /// Run `rows` rows (row-major) in a batch; answers `rows * outputs`
    /// values or why not.
    Infer {
        /// The rows.
        input: Vec<f32>,
        /// How many.
        rows: u32,
        /// The answer.
        reply: ReplyTo<Result<Vec<f32>, String>>,
    },
    /// The batch of this generation has waited long enough (sent by the
    /// replica to itself).
    Flush(u64),
}

/// A replica hosted for a serving process on another node: the local
/// replica's batching around an MLP built from the spawn arguments.
pub struct RemoteReplica {
    args: Option<RemoteReplicaArgs>,
    inner: Option<Replica>,
    features: usize,
}

impl RemoteReplica {
    /// A replica from its arguments (the model is built when it starts).
    pub fn new(args: RemoteReplicaArgs) -> Self {
        Self {
            args: Some(args),
            inner: None,
            features: 0,
        }
    }
}

impl Actor for RemoteReplica {
    type Msg = RemoteReplicaMsg;

    async fn started(&mut self, _: &mut Context<RemoteReplicaMsg>) -> Result<(), ActorError> {
        let Some(args) = self.args.take() else {
            return Err(ActorError::from("replica started twice"));
        };
        let values: usize = args.params.iter().map(|p| p.values.len()).sum();
        if values > MAX_REMOTE_PARAMS {
            return Err(ActorError::from(format!(
                "the model holds {values} parameter values, more than a remote replica takes ({MAX_REMOTE_PARAMS})"
            )));
        }
        if args.max_batch_size == 0 {
            return Err(ActorError::from("max_batch_size must be at least 1"));
        }
        let model = MlpModel::new(&args.spec, args.params)
            .map_err(|e| ActorError::from(format!("building the model: {e}")))?;
        self.features = model.features();
        let labels = Arc::new([("model", args.model), ("version", args.version)]);
        let batching = Batching {
            max_batch_size: args.max_batch_size,
            batch_wait_timeout: Duration::from_millis(args.batch_wait_timeout_ms),
        };
        self.inner = Some(Replica::new(Box::new(model), batching, labels));
        Ok(())
    }

    async fn handle(
        &mut self,
        msg: RemoteReplicaMsg,
        ctx: &mut Context<RemoteReplicaMsg>,
    ) -> Result<(), ActorError> {
        let Some(inner) = self.inner.as_mut() else {
            return Err(ActorError::from("replica without a model"));
        };
        match msg {
            RemoteReplicaMsg::Infer { input, rows, reply } => {
                let rows = rows as usize;
                if rows == 0 || input.len() != rows.saturating_mul(self.features) {
                    reply.send(Err(format!(
                        "{} values for {rows} rows of {} features",
                        input.len(),
                        self.features
                    )));
                    return Ok(());
                }
                let request = Request {
                    input,
                    rows,
                    sent: Instant::now(),
                    reply,
                    _slot: None,
                };
                inner
                    .push(request, ctx.myself(), RemoteReplicaMsg::Flush)
                    .await?;
            }
            RemoteReplicaMsg::Flush(generation) => inner.flush(generation).await?,
        }
        Ok(())
    }
}

/// Where a deployment's replicas run on a cluster: the member nodes
/// matching `placement` (client nodes, such as the serving process, are
/// never chosen), each replica taking `cpus` and `gpus` of what its node
/// advertises. Replicas spread: a new one goes to the node with the
/// fewest replicas of its deployment, then the most free CPUs. Clones
/// share the accounting, so the deployments of one server pack together.
#[derive(Clone)]
pub struct ClusterPlacement {
    cluster: manta_cluster::Cluster,
    membership: manta_cluster::Membership,
    placement: Placement,
    /// CPUs and GPUs taken by this server's replicas, by node id.
    used: Arc<Mutex<BTreeMap<String, (f64, u32)>>>,
}

impl std::fmt::Debug for ClusterPlacement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPlacement")
            .field("placement", &self.placement)
            .finish()
    }
}

impl ClusterPlacement {
    /// Replicas on the nodes of `node`'s cluster that match `placement`
    /// (its `resources` are ignored: each deployment says what a replica
    /// takes).
    pub fn new(node: &manta_cluster::Node, placement: Placement) -> Self {
        Self {
            cluster: node.cluster().clone(),
            membership: node.membership().clone(),
            placement: Placement {
                resources: None,
                ..placement
            },
            used: Arc::default(),
        }
    }

    fn used(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (f64, u32)>> {
        // Every critical section is a lookup or an addition: a poisoned
        // map is still consistent.
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node for one more replica taking `cpus`/`gpus`, given how many
    /// replicas of its deployment each node holds, other than the nodes in
    /// `refused` (they failed to start one); takes its resources.
    pub(crate) fn take(
        &self,
        cpus: f64,
        gpus: u32,
        role: Option<&str>,
        replicas_on: &BTreeMap<String, usize>,
        refused: &BTreeSet<String>,
    ) -> Option<manta_cluster::Offer> {
        let mut filter = self.placement.clone();
        if let Some(r) = role {
            filter.role = Some(r.to_owned());
        }
        let mut used = self.used();
        let free = |o: &manta_cluster::Offer| {
            let (c, g) = used.get(&o.id).copied().unwrap_or((0.0, 0));
            (o.resources.cpus - c, o.resources.gpus.saturating_sub(g))
        };
        let best = self
            .cluster
            .offers(&filter)
            .into_iter()
            .filter(|o| {
                let (c, g) = free(o);
                c + 1e-9 >= cpus && g >= gpus && !refused.contains(&o.id)
            })
            .min_by(|a, b| {
                let on = |o: &manta_cluster::Offer| replicas_on.get(&o.id).copied().unwrap_or(0);
                on(a)
                    .cmp(&on(b))
                    .then_with(|| free(b).0.total_cmp(&free(a).0))
                    .then_with(|| a.id.cmp(&b.id))
            })?;
        let e = used.entry(best.id.clone()).or_insert((0.0, 0));
        e.0 += cpus;
        e.1 += gpus;
        Some(best)
    }

    /// [`take`](Self::take), waiting up to
    /// [`manta_cluster::PLACEMENT_WAIT`] for a node with room (a node
    /// joining, a replica's resources given back), looking again at every
    /// change of the membership view and every half second.
    pub(crate) async fn take_waiting(
        &self,
        cpus: f64,
        gpus: u32,
        role: Option<&str>,
        replicas_on: &BTreeMap<String, usize>,
        refused: &BTreeSet<String>,
    ) -> Option<manta_cluster::Offer> {
        let deadline = tokio::time::Instant::now() + manta_cluster::PLACEMENT_WAIT;
        let mut view = self.membership.view();
        loop {
            view.borrow_and_update();
            if let Some(o) = self.take(cpus, gpus, role, replicas_on, refused) {
                return Some(o);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            let tick = (tokio::time::Instant::now() + Duration::from_millis(500)).min(deadline);
            if let Ok(Err(_)) = tokio::time::timeout_at(tick, view.changed()).await {
                // The view closed (the node stops): look again at the tick.
                tokio::time::sleep_until(tick).await;
            }
        }
    }

    /// Gives back what a replica on `node` took.
    pub(crate) fn release(&self, node: &str, cpus: f64, gpus: u32) {
        let mut used = self.used();
        if let Some(e) = used.get_mut(node) {
            e.0 = (e.0 - cpus).max(0.0);
            e.1 = e.1.saturating_sub(gpus);
            if e.0 <= 1e-9 && e.1 == 0 {
                used.remove(node);
            }
        }
    }

    pub(crate) fn cluster(&self) -> &manta_cluster::Cluster {
        &self.cluster
    }
}

/// What a deployment needs to run replicas on other nodes: where, what
/// each takes, and the model to send.
#[derive(Clone)]
pub struct RemoteReplicas {
    /// Where.
    pub placement: ClusterPlacement,
    /// CPUs a replica takes on its node (0: none counted).
    pub cpus: f64,
    /// GPUs a replica takes on its node.
    pub gpus: u32,
    /// A role its node must have.
    pub role: Option<String>,
    /// The model's shape.
    pub spec: ModelSpec,
    /// The model's parameters.
    pub params: Arc<Vec<ParamTensor>>,
}

impl std::fmt::Debug for RemoteReplicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteReplicas")
            .field("placement", &self.placement)
            .field("cpus", &self.cpus)
            .field("gpus", &self.gpus)
            .field("role", &self.role)
            .field("spec", &self.spec)
            .finish()
    }
}

impl RemoteReplicas {
    /// Checks the resources and the model's size.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if !(self.cpus.is_finite() && self.cpus >= 0.0) {
            return Err(format!(
                "cpus must be a number at least 0, got {}",
                self.cpus
            ));
        }
        let values: usize = self.params.iter().map(|p| p.values.len()).sum();
        if values > MAX_REMOTE_PARAMS {
            return Err(format!(
                "the model holds {values} parameter values, more than replicas on other nodes take ({MAX_REMOTE_PARAMS})"
            ));
        }
        Ok(())
    }

    /// The spawn arguments, encoded once per deployment.
    pub(crate) fn args(
        &self,
        model: &str,
        version: &str,
        batching: Batching,
    ) -> Result<manta_actors::ArgsValue, String> {
        let args = RemoteReplicaArgs {
            model: model.to_owned(),
            version: version.to_owned(),
            spec: self.spec.clone(),
            params: self.params.to_vec(),
            max_batch_size: batching.max_batch_size,
            batch_wait_timeout_ms: batching.batch_wait_timeout.as_millis() as u64,
        };
        serde_json::to_value(&args).map_err(|e| format!("encoding the replica's arguments: {e}"))
    }
}
