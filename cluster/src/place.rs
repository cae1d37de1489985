//! Placement and remote spawn: choosing a node for an actor, spawning a
//! registered kind there, and the [`Placer`] supervisors use so that a child
//! placed on another node is supervised like a local one (through a local
//! proxy linked to the supervisor, which exits with the remote actor's exit
//! reason, `node down` included).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use libp2p::PeerId;
use manta_actors::{
    Actor, ActorError, ActorHandle, ActorSystem, AnyHandle, ArgsValue, ChildFactory, Context,
    ExitReason, Kind, Message, Placement, Placer, RemoteMessage, SpawnError, SpawnOptions,
    StartContext, WireError, message_type_name,
};
use serde::{Deserialize, Serialize};

use crate::config::Resources;
use crate::membership::{MemberState, Membership, actor_types, keys};
use crate::remote::Remoting;

/// How long a remote spawn may take.
pub const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a placement waits for a matching node to join (a node starting
/// its tree right after joining has not heard of the others yet).
pub const PLACEMENT_WAIT: Duration = Duration::from_secs(10);

/// How long a placement counts towards its node's load before gossip
/// reports the actor it started.
const RECENT_PLACEMENT: Duration = Duration::from_secs(3);

/// Where a [`Cluster::spawn_on`] puts an actor, and under which name.
#[derive(Debug, Clone, Default)]
pub struct SpawnOn {
    /// The nodes it may run on (default: any alive member).
    pub placement: Placement,
    /// The name it is registered under there (generated when `None`).
    pub name: Option<String>,
}

/// A cloneable handle to a node's cluster services: lookup, placement,
/// remote spawn.
#[derive(Clone)]
pub struct Cluster {
    pub(crate) me: PeerId,
    pub(crate) membership: Membership,
    pub(crate) remoting: Remoting,
    pub(crate) system: ActorSystem,
    seq: Arc<AtomicU64>,
    /// Random per `Cluster` value in generated names, so a restarted node
    /// (same id, sequence back at 0) does not reuse the names of actors its
    /// previous run placed on nodes that still run them.
    incarnation: u32,
    /// Recent placements by this node, per target: gossip reports actor
    /// counts a few rounds late, so back-to-back placements would otherwise
    /// all pick the same "least loaded" node.
    recent: Arc<std::sync::Mutex<std::collections::HashMap<PeerId, Vec<tokio::time::Instant>>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("me", &self.me).finish()
    }
}

impl Cluster {
    pub(crate) fn new(
        me: PeerId,
        membership: Membership,
        remoting: Remoting,
        system: ActorSystem,
    ) -> Self {
        Self {
            me,
            membership,
            remoting,
            system,
            seq: Arc::new(AtomicU64::new(0)),
            incarnation: rand::random(),
            recent: Arc::default(),
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> PeerId {
        self.me
    }

    /// Chooses the node for `placement`: the alive members (this node
    /// included) that match every field, least loaded first (registered
    /// actors per CPU).
    pub fn choose(&self, placement: &Placement) -> Result<PeerId, SpawnError> {
        let mut best: Option<(f64, PeerId)> = None;
        let recent = {
            let mut r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            let now = tokio::time::Instant::now();
            for v in r.values_mut() {
                v.retain(|t| now.duration_since(*t) < RECENT_PLACEMENT);
            }
            r.retain(|_, v| !v.is_empty());
            r.clone()
        };
        for m in self.membership.members() {
            let Some((peer, res)) = eligible(&m, placement) else {
                continue;
            };
            // Placements made in the last few seconds count too: gossip has
            // not yet told us about the actors they started, and without them
            // a burst of spawns would all pick the same node.
            let fresh = recent.get(&peer).map_or(0, |v| v.len());
            let load = (actor_types(&m.keys).len() as f64 + fresh as f64 + 1.0) / res.cpus.max(1.0);
            if best.is_none_or(|(l, _)| load < l) {
                best = Some((load, peer));
            }
        }
        best.map(|(_, p)| p)
            .ok_or_else(|| SpawnError::NoNodeMatches(Box::new(placement.clone())))
    }

    /// Like [`Cluster::choose`], waiting up to `wait` for a matching node to
    /// appear in the view.
    pub async fn choose_waiting(
        &self,
        placement: &Placement,
        wait: Duration,
    ) -> Result<PeerId, SpawnError> {
        let mut view = self.membership.view();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            view.borrow_and_update();
            match self.choose(placement) {
                Ok(p) => return Ok(p),
                Err(e) => {
                    if tokio::time::timeout_at(deadline, view.changed())
                        .await
                        .is_err()
                    {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Every alive member matching `placement` (node, role, labels,
    /// resources; client nodes only when named), with the resources it
    /// advertises: for callers that do their own accounting of what they
    /// placed (the tuner packs trials by the cpus and gpus each asks for).
    pub fn offers(&self, placement: &Placement) -> Vec<Offer> {
        self.membership
            .members()
            .into_iter()
            .filter_map(|m| {
                let (_, resources) = eligible(&m, placement)?;
                Some(Offer {
                    id: m.id,
                    name: m.name,
                    resources,
                })
            })
            .collect()
    }

    /// Spawns an actor of `kind` with `args` on a node matching
    /// `on.placement` (now: no waiting for nodes to join), registered there
    /// as `on.name` (generated when `None`); returns a handle that works
    /// from anywhere. The kind's token types the arguments and the handle:
    /// a node whose kind of that name takes another message type refuses
    /// before anything starts ([`SpawnError::WrongMessageType`]).
    ///
    /// ```no_run
    /// # async fn demo(cluster: manta_cluster::Cluster) -> Result<(), manta_actors::SpawnError> {
    /// # #[derive(Clone, serde::Serialize, serde::Deserialize)] struct CounterArgs { start: i64 }
    /// # #[derive(Debug, serde::Serialize, serde::Deserialize, manta_actors::Message)]
    /// # enum CounterMsg { Add(i64) }
    /// use manta_actors::{Kind, Placement};
    /// use manta_cluster::SpawnOn;
    /// // Returned by `kinds.register("counter", ...)`, or named for a kind
    /// // registered on the nodes that host it:
    /// let counter = Kind::<CounterArgs, CounterMsg>::named("counter");
    /// let on = SpawnOn {
    ///     placement: Placement { role: Some("worker".into()), ..Default::default() },
    ///     name: Some("acct-9".into()),
    /// };
    /// let acct = cluster.spawn_on(&counter, &CounterArgs { start: 0 }, &on).await?;
    /// acct.tell(CounterMsg::Add(1)).ok();
    /// # Ok(()) }
    /// ```
    pub async fn spawn_on<Args: Serialize, M: RemoteMessage>(
        &self,
        kind: &Kind<Args, M>,
        args: &Args,
        on: &SpawnOn,
    ) -> Result<ActorHandle<M>, SpawnError> {
        let name = kind.name();
        let args = serde_json::to_value(args).map_err(|e| SpawnError::BadArgs {
            kind: name.to_owned(),
            message: e.to_string(),
        })?;
        self.spawn_kind::<M>(&on.placement, name, args, on.name.clone())
            .await
    }

    /// [`spawn_on`](Self::spawn_on) for a kind known by name only, with
    /// arguments as a self-describing value (what tree files give).
    pub async fn spawn_kind<M: RemoteMessage>(
        &self,
        placement: &Placement,
        kind: &str,
        args: ArgsValue,
        name: Option<String>,
    ) -> Result<ActorHandle<M>, SpawnError> {
        let wrong_type = |actual: &str| SpawnError::WrongMessageType {
            kind: kind.to_owned(),
            expected: message_type_name::<M>().to_owned(),
            actual: actual.to_owned(),
        };
        // Refused before anything starts when this node knows the kind (and
        // by the target node otherwise)...
        if let Some(actual) = self.system.kinds().message_type(kind) {
            if actual != message_type_name::<M>() {
                return Err(wrong_type(actual));
            }
        }
        let (any, remote) = self
            .spawn_any(
                placement,
                kind,
                args,
                name,
                Some(message_type_name::<M>()),
                Duration::ZERO,
            )
            .await?;
        // ...and checked again against what was started.
        if any.message_type() != message_type_name::<M>() {
            any.stop(ExitReason::Shutdown(Some(
                "spawned with the wrong message type".into(),
            )));
            return Err(wrong_type(any.message_type()));
        }
        match remote {
            Some((peer, name)) => Ok(self.remoting.handle::<M>(peer, &name)),
            None => any
                .downcast::<M>()
                .ok_or_else(|| wrong_type("a handle of another type")),
        }
    }

    /// Spawns and returns an erased handle, plus the node and name when the
    /// actor runs elsewhere.
    async fn spawn_any(
        &self,
        placement: &Placement,
        kind: &str,
        args: ArgsValue,
        name: Option<String>,
        message: Option<&str>,
        wait: Duration,
    ) -> Result<(AnyHandle, Option<(PeerId, String)>), SpawnError> {
        let peer = self.choose_waiting(placement, wait).await?;
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(peer)
            .or_default()
            .push(tokio::time::Instant::now());
        let name = name.unwrap_or_else(|| {
            generated_name(
                kind,
                &self.me,
                self.incarnation,
                self.seq.fetch_add(1, Ordering::Relaxed),
            )
        });
        if peer == self.me {
            let h = self
                .system
                .kinds()
                .spawn(&self.system, kind, args, Some(name))
                .await?;
            return Ok((h, None));
        }
        let remote = |e: WireError| SpawnError::Remote {
            node: peer.to_string(),
            source: Box::new(e),
        };
        let ty = self
            .remoting
            .spawn_remote(peer, kind, &args, &name, message, SPAWN_TIMEOUT)
            .await
            .map_err(remote)?;
        let handle = self
            .remoting
            .erased_handle(peer, &name, &ty)
            .map_err(remote)?;
        Ok((handle, Some((peer, name))))
    }
}

/// A member that matches a placement, with what it offers.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    /// Its node id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The resources it advertises.
    pub resources: Resources,
}

/// `m`'s id and advertised resources when it is alive and matches every
/// field of `placement` (client nodes only when the placement names them).
fn eligible(m: &crate::membership::Member, placement: &Placement) -> Option<(PeerId, Resources)> {
    if m.state != MemberState::Alive {
        return None;
    }
    if let Some(n) = &placement.node {
        if *n != m.id && *n != m.name {
            return None;
        }
    }
    if let Some(r) = &placement.role {
        if !m.roles.contains(r) {
            return None;
        }
    }
    let labels: BTreeMap<String, String> = m
        .keys
        .get(keys::LABELS)
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    if placement
        .labels
        .iter()
        .any(|(k, v)| labels.get(k) != Some(v))
    {
        return None;
    }
    // Client nodes host nothing unless a placement names them.
    if labels
        .get(crate::node::CLIENT_LABEL)
        .is_some_and(|v| v == "true")
        && placement.node.is_none()
        && !placement.labels.contains_key(crate::node::CLIENT_LABEL)
    {
        return None;
    }
    let res: Resources = m
        .keys
        .get(keys::RESOURCES)
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or_default();
    if let Some(need) = &placement.resources {
        if res.cpus < need.cpus || res.gpus < need.gpus || res.memory_mb < need.memory_mb {
            return None;
        }
    }
    let peer = m.id.parse::<PeerId>().ok()?;
    Some((peer, res))
}

/// The name of an unnamed actor placed by node `me`: `kind-TAIL-INC-N`, where
/// TAIL is the end of the node id (every ed25519 PeerId starts with the same
/// `12D3KooW` multihash prefix; the end is the public key), INC this run's
/// incarnation (4 base-36 digits) and N the sequence.
fn generated_name(kind: &str, me: &PeerId, incarnation: u32, n: u64) -> String {
    let id = me.to_base58();
    let tail = &id[id.len().saturating_sub(NAME_TAIL)..];
    let mut inc = String::with_capacity(4);
    let mut v = incarnation % 36u32.pow(4);
    for _ in 0..4 {
        let d = v % 36;
        v /= 36;
        inc.insert(0, char::from_digit(d, 36).unwrap_or('0'));
    }
    format!("{kind}-{tail}-{inc}-{n}")
}

/// How many characters of the node id's end a generated name carries
/// (base58: 58^10 ≈ 4·10^17 values).
const NAME_TAIL: usize = 10;

impl Placer for Cluster {
    fn factory(
        &self,
        kind: &str,
        args: ArgsValue,
        placement: &Placement,
    ) -> Result<Arc<dyn ChildFactory>, SpawnError> {
        if !self.system.kinds().contains(kind) {
            return Err(SpawnError::UnknownKind(kind.to_owned()));
        }
        Ok(Arc::new(PlacedFactory {
            cluster: self.clone(),
            kind: kind.to_owned(),
            args,
            placement: placement.clone(),
        }))
    }
}

/// Starts a child on a node chosen at each start; the supervisor manages a
/// local proxy that mirrors the remote actor's life.
struct PlacedFactory {
    cluster: Cluster,
    kind: String,
    args: ArgsValue,
    placement: Placement,
}

impl ChildFactory for PlacedFactory {
    fn start(&self, ctx: StartContext) -> BoxFuture<'static, Result<AnyHandle, SpawnError>> {
        let cluster = self.cluster.clone();
        let kind = self.kind.clone();
        let args = self.args.clone();
        let placement = self.placement.clone();
        Box::pin(async move {
            let (remote, _) = cluster
                .spawn_any(
                    &placement,
                    &kind,
                    args,
                    ctx.name.clone(),
                    None,
                    PLACEMENT_WAIT,
                )
                .await?;
            if remote.cell().is_some() {
                // Placed on this very node: supervise it directly.
                if let Some(link) = &ctx.link {
                    if let Some(cell) = remote.cell() {
                        cell.link(link.clone());
                    }
                }
                return Ok(remote);
            }
            let proxy = Proxy {
                remote: Some(remote.clone()),
            };
            let opts = SpawnOptions {
                name: None,
                link: ctx.link,
            };
            let h = ctx.system.spawn_with(proxy, opts).await?;
            Ok(ProxyHandle { proxy: h, remote }.into_any())
        })
    }

    fn describe(&self) -> String {
        format!("{} placed by {:?}", self.kind, self.placement)
    }

    fn with_args(&self, args: ArgsValue) -> Result<Arc<dyn ChildFactory>, SpawnError> {
        // Checked here when this node knows the kind; the target node
        // decodes them again.
        let kinds = self.cluster.system.kinds();
        if kinds.contains(&self.kind) {
            kinds.prepare(&self.kind, args.clone())?;
        }
        Ok(Arc::new(PlacedFactory {
            cluster: self.cluster.clone(),
            kind: self.kind.clone(),
            args,
            placement: self.placement.clone(),
        }))
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum ProxyMsg {
    RemoteExited(ExitReason),
}

impl Message for ProxyMsg {
    const NAME: &'static str = "manta.cluster.ProxyMsg";
    const DECODE: Option<manta_actors::wire::Decode<Self>> =
        Some(manta_actors::wire::decode::<Self>);
}

/// Stands in for a remote child under a local supervisor.
struct Proxy {
    remote: Option<AnyHandle>,
}

impl Actor for Proxy {
    type Msg = ProxyMsg;

    async fn started(&mut self, ctx: &mut Context<ProxyMsg>) -> Result<(), ActorError> {
        if let Some(remote) = &self.remote {
            let monitor = remote.monitor();
            let me = ctx.myself().clone();
            tokio::spawn(async move {
                let reason = monitor.wait().await;
                let _ = me.tell(ProxyMsg::RemoteExited(reason));
            });
        }
        Ok(())
    }

    async fn handle(
        &mut self,
        msg: ProxyMsg,
        ctx: &mut Context<ProxyMsg>,
    ) -> Result<(), ActorError> {
        let ProxyMsg::RemoteExited(reason) = msg;
        // The remote is gone: exit with its reason, so the supervisor sees
        // exactly what happened there (`node down` included).
        self.remote = None;
        ctx.stop(reason);
        Ok(())
    }

    async fn stopped(&mut self, reason: &ExitReason, _: &mut Context<ProxyMsg>) {
        if let Some(remote) = self.remote.take() {
            remote.stop(reason.clone());
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Killed (brutal_kill) without `stopped`: the remote goes too.
        if let Some(remote) = self.remote.take() {
            remote.kill();
        }
    }
}

/// The supervisor's view of a placed child: the proxy's life, the remote's
/// identity.
struct ProxyHandle {
    proxy: ActorHandle<ProxyMsg>,
    remote: AnyHandle,
}

impl ProxyHandle {
    fn into_any(self) -> AnyHandle {
        AnyHandle::new(Arc::new(self))
    }
}

impl manta_actors::ErasedHandle for ProxyHandle {
    fn id(&self) -> manta_actors::ActorId {
        self.remote.id()
    }
    fn cell(&self) -> Option<manta_actors::ractor::ActorCell> {
        self.proxy.cell()
    }
    fn message_type(&self) -> &'static str {
        self.remote.message_type()
    }
    fn stop(&self, reason: ExitReason) {
        self.proxy.stop(reason)
    }
    fn kill(&self) {
        self.proxy.kill()
    }
    fn monitor(&self) -> manta_actors::Monitor {
        self.proxy.monitor()
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    // No `tell_wire`: bytes for a placed child go to the node it runs on,
    // never relayed through this one (their reply ids belong to the asker).
}
