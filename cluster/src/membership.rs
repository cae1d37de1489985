//! Cluster membership on chitchat 0.13 over the sealed transport.
//!
//! Each node writes only its own keys (name, roles, labels, resources,
//! addresses, registered actors, status). A watcher turns chitchat's view
//! into [`MemberEvent`]s. A node that leaves gracefully sets `status=left`
//! and pushes it to every live peer before it stops, so others see it leave
//! at once. If chitchat's task ends, the node says so and restarts gossip as
//! a new generation: never a silently frozen view.
//!
//! With a signer (every `manta node` has one: its ed25519 identity), a node
//! signs its own keys and believes another node's keys only when they carry
//! a valid signature by the key its id (a PeerId) embeds. A member that has
//! the cluster secret can still gossip about others; it can no longer
//! rewrite them (roles, actors, `left`), nor pose as a newer generation of
//! another node: defence in depth behind the sealed transport.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libp2p_identity::{Keypair, PeerId, PublicKey};

use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion,
    spawn_chitchat,
};
use tokio::net::UdpSocket;
use tokio::sync::{Mutex, Notify, broadcast, watch};

use crate::error::ClusterError;
use crate::seal::{Sealer, cluster_id};
use crate::secret::ClusterSecret;
use crate::status::{ClusterStatus, NodeStatus};
use crate::transport::{GossipStats, SealedTransport};

/// Keys a node gossips about itself.
pub(crate) mod keys {
    pub(crate) const NAME: &str = "name";
    pub(crate) const ROLES: &str = "roles";
    pub(crate) const LABELS: &str = "labels";
    pub(crate) const RESOURCES: &str = "resources";
    pub(crate) const ACTORS: &str = "actors";
    pub(crate) const P2P: &str = "p2p";
    /// The bulk lane's address (`IP:PORT`), where the node has one.
    pub(crate) const BULK: &str = "bulk";
    pub(crate) const GROUPS: &str = "groups";
    pub(crate) const STATUS: &str = "status";
    /// The node's ed25519 signature over all its other keys (hex).
    pub(crate) const SIG: &str = "sig";
}

/// What a node signs: a domain tag, everything its gossip identity is made
/// of (id, generation, gossip address: a copy of the node at another
/// address does not verify), then every key but the signature, in key
/// order, each length-prefixed.
fn signed_bytes<'a>(id: &ChitchatId, keys: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"manta-gossip-keys-v2\0");
    let mut put = |b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    };
    put(id.node_id.as_bytes());
    put(&id.generation_id.to_be_bytes());
    put(id.gossip_advertise_addr.to_string().as_bytes());
    let sorted: BTreeMap<&str, &str> = keys.filter(|(k, _)| *k != keys::SIG).collect();
    for (k, v) in sorted {
        put(k.as_bytes());
        put(v.as_bytes());
    }
    out
}

/// The signature of `keys` as the node incarnation `id`.
fn sign_keys<'a>(
    signer: &Keypair,
    id: &ChitchatId,
    keys: impl Iterator<Item = (&'a str, &'a str)>,
) -> Option<String> {
    match signer.sign(&signed_bytes(id, keys)) {
        Ok(sig) => Some(crate::hex::encode(&sig)),
        Err(e) => {
            tracing::error!(target: "manta::membership", error = %e, "cannot sign this node's gossip keys");
            None
        }
    }
}

/// Re-signs this node's keys after a change (in the same chitchat update,
/// so the change and its signature share a gossip round).
fn resign(c: &mut chitchat::Chitchat, signer: Option<&Keypair>) {
    let Some(signer) = signer else { return };
    let id = c.self_chitchat_id().clone();
    let sig = sign_keys(signer, &id, c.self_node_state().key_values());
    if let Some(sig) = sig {
        c.self_node_state().set(keys::SIG, sig);
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these maps leaves them consistent (each
    // update is one insert or retain), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Checks that `keys` carry the signature of node incarnation `id` (its
/// id, generation and gossip address).
fn verify_keys(id: &ChitchatId, keys: &BTreeMap<String, String>) -> Result<(), &'static str> {
    let peer: PeerId = id.node_id.parse().map_err(|_| "its id is not a peer id")?;
    // The id's multihash: code 0 (identity), a one-byte length (ed25519
    // keys are 36 bytes in protobuf), then the key itself.
    let hash = peer.to_bytes();
    let key = match hash.as_slice() {
        [0, len, key @ ..] if usize::from(*len) == key.len() => key,
        _ => return Err("its peer id does not embed a public key"),
    };
    let key = PublicKey::try_decode_protobuf(key)
        .map_err(|_| "its peer id's public key cannot be decoded")?;
    let sig = keys.get(keys::SIG).ok_or("its keys are not signed")?;
    let sig = crate::hex::decode(sig).map_err(|_| "its signature is not hex")?;
    let msg = signed_bytes(id, keys.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if key.verify(&msg, &sig) {
        Ok(())
    } else {
        Err("its signature does not match its keys")
    }
}

/// Membership settings.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// This node's id (its PeerId).
    pub node_id: String,
    /// Human name.
    pub name: String,
    /// Cluster name.
    pub cluster: String,
    /// Cluster secret; `None` seals with the open development key.
    pub secret: Option<ClusterSecret>,
    /// Where to bind gossip (port 0 allowed).
    pub listen: SocketAddr,
    /// Seeds, `host:port`.
    pub seeds: Vec<String>,
    /// Gossip round interval.
    pub gossip_interval: Duration,
    /// Phi-accrual threshold.
    pub phi_threshold: f64,
    /// Longest heartbeat interval counted by the detector.
    pub max_interval: Duration,
    /// How long dead nodes are remembered.
    pub dead_node_grace_period: Duration,
    /// How long deleted keys are remembered.
    pub marked_for_deletion_grace_period: Duration,
    /// Replay window for sealed datagrams.
    pub replay_window: Duration,
    /// Initial self keys (roles, labels, resources, p2p...).
    pub keys: BTreeMap<String, String>,
    /// The node ids the mesh has authenticated and is connected to. When
    /// set, a node is a member only once it is in this set, and alive only
    /// while gossip and the mesh both say so.
    pub mesh_gate: Option<watch::Receiver<std::collections::BTreeSet<String>>>,
    /// This node's identity key. When set, this node signs its own keys,
    /// and believes another node's keys only when they carry a valid
    /// signature by the key embedded in that node's id (a PeerId); nodes
    /// whose keys do not verify are not members.
    pub signer: Option<Keypair>,
}

impl MembershipConfig {
    /// Defaults for a node: gossip every 200 ms, phi 8, dead nodes
    /// forgotten after 5 minutes, a 30 s replay window.
    pub fn new(node_id: impl Into<String>, name: impl Into<String>, listen: SocketAddr) -> Self {
        Self {
            node_id: node_id.into(),
            name: name.into(),
            cluster: "manta".to_owned(),
            secret: None,
            listen,
            seeds: Vec::new(),
            gossip_interval: Duration::from_millis(200),
            phi_threshold: 8.0,
            max_interval: Duration::from_secs(2),
            dead_node_grace_period: Duration::from_secs(300),
            marked_for_deletion_grace_period: Duration::from_secs(300),
            replay_window: Duration::from_secs(30),
            keys: BTreeMap::new(),
            mesh_gate: None,
            signer: None,
        }
    }
}

/// Alive, dead or left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum MemberState {
    /// Heartbeating.
    Alive,
    /// Declared dead by the failure detector.
    Dead,
    /// Left gracefully.
    Left,
}

impl MemberState {
    /// `alive`, `dead` or `left`.
    pub fn as_str(&self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
        }
    }
}

/// A member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// Node id.
    pub id: String,
    /// Incarnation (boot time, ms).
    pub generation: u64,
    /// Human name.
    pub name: String,
    /// Gossip address.
    pub gossip: SocketAddr,
    /// Roles.
    pub roles: Vec<String>,
    /// Registered actor names.
    pub actors: Vec<String>,
    /// State.
    pub state: MemberState,
    /// Every key the node gossips.
    pub keys: BTreeMap<String, String>,
}

/// A change in membership.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MemberEvent {
    /// A node joined (or came back).
    NodeUp(Member),
    /// A node stopped heartbeating.
    NodeDown(Member),
    /// A node left gracefully.
    NodeLeft(Member),
}

/// The `actors` key: a JSON object, registered name -> message type.
pub(crate) fn actor_types(keys: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    keys.get(keys::ACTORS)
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default()
}

fn split_list(s: Option<&String>) -> Vec<String> {
    s.map(|v| {
        v.split(',')
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect()
    })
    .unwrap_or_default()
}

struct Inner {
    config: MembershipConfig,
    local: SocketAddr,
    handle: Mutex<Option<ChitchatHandle>>,
    transport: SealedTransport,
    events: broadcast::Sender<MemberEvent>,
    view: watch::Sender<Vec<Member>>,
    /// What gossip alone says (before the mesh gate): who to dial.
    gossip_view: watch::Sender<Vec<Member>>,
    stop: Notify,
    /// Set before a deliberate stop (leave, kill), so the end of the gossip
    /// task is not mistaken for a crash.
    stopping: std::sync::atomic::AtomicBool,
    restarts: std::sync::atomic::AtomicU64,
    /// The last keys of each node incarnation (id, generation, gossip
    /// address) whose signature verified: a delta that updates some keys
    /// before their signature arrives leaves the node as it was, not
    /// unsigned.
    verified: std::sync::Mutex<HashMap<ChitchatId, BTreeMap<String, String>>>,
    /// Incarnations whose keys never verified (logged once), with the keys
    /// that failed: unchanged keys are not checked again every round.
    rejected: std::sync::Mutex<HashMap<ChitchatId, BTreeMap<String, String>>>,
    /// How many such pairs were seen in all.
    rejected_total: std::sync::atomic::AtomicU64,
    /// The lane this node uses to each member (for `manta status`).
    lanes: std::sync::Mutex<BTreeMap<String, String>>,
}

/// A running membership.
#[derive(Clone)]
pub struct Membership {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("node_id", &self.inner.config.node_id)
            .field("gossip", &self.inner.local)
            .finish()
    }
}

fn generation_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn spawn_gossip(
    config: &MembershipConfig,
    local: SocketAddr,
    transport: &SealedTransport,
    mut keys: Vec<(String, String)>,
) -> Result<ChitchatHandle, ClusterError> {
    let generation = generation_now();
    keys.retain(|(k, _)| k != keys::SIG);
    let chitchat_id = ChitchatId::new(config.node_id.clone(), generation, local);
    if let Some(signer) = &config.signer {
        let sig = sign_keys(
            signer,
            &chitchat_id,
            keys.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        if let Some(sig) = sig {
            keys.push((keys::SIG.to_owned(), sig));
        }
    }
    let cc = ChitchatConfig {
        chitchat_id,
        cluster_id: cluster_id(config.secret.as_ref(), &config.cluster),
        gossip_interval: config.gossip_interval,
        listen_addr: local,
        seed_nodes: config.seeds.clone(),
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: config.phi_threshold,
            sampling_window_size: 1_000,
            max_interval: config.max_interval,
            initial_interval: config.gossip_interval,
            dead_node_grace_period: config.dead_node_grace_period,
        },
        marked_for_deletion_grace_period: config.marked_for_deletion_grace_period,
        catchup_callback: None,
        extra_liveness_predicate: None,
        // Explicit: every node of a cluster must speak the same version.
        protocol_version: ProtocolVersion::V0,
    };
    spawn_chitchat(cc, keys, transport)
        .await
        .map_err(|e| ClusterError::Gossip(format!("{e:#}")))
}

impl Membership {
    /// Binds gossip, joins through the seeds and starts watching.
    pub async fn start(config: MembershipConfig) -> Result<Membership, ClusterError> {
        let socket = UdpSocket::bind(config.listen).await?;
        let local = socket.local_addr()?;
        let transport = SealedTransport::new(
            Sealer::for_cluster(config.secret.as_ref(), &config.cluster),
            config.replay_window.as_millis() as u64,
        )
        .with_socket(socket);
        let mut keys = config.keys.clone();
        keys.insert(keys::NAME.to_owned(), config.name.clone());
        keys.insert(keys::STATUS.to_owned(), "alive".to_owned());
        let handle = spawn_gossip(&config, local, &transport, keys.into_iter().collect()).await?;
        let (events, _) = broadcast::channel(1024);
        let (view, _) = watch::channel(Vec::new());
        let (gossip_view, _) = watch::channel(Vec::new());
        let inner = Arc::new(Inner {
            config,
            local,
            handle: Mutex::new(Some(handle)),
            transport,
            events,
            view,
            gossip_view,
            stop: Notify::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            restarts: std::sync::atomic::AtomicU64::new(0),
            verified: std::sync::Mutex::new(HashMap::new()),
            rejected: std::sync::Mutex::new(HashMap::new()),
            rejected_total: std::sync::atomic::AtomicU64::new(0),
            lanes: std::sync::Mutex::new(BTreeMap::new()),
        });
        let m = Membership { inner };
        m.refresh(&mut HashMap::new()).await;
        tokio::spawn(m.clone().watch());
        Ok(m)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.inner.config.node_id
    }

    /// The bound gossip address (the real port when 0 was asked for).
    pub fn gossip_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// Membership events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<MemberEvent> {
        self.inner.events.subscribe()
    }

    /// Delivers every membership event from now on to `actor`, as the
    /// message `wrap` builds; stops when the actor is gone.
    pub fn subscribe_actor<M: manta_actors::Message>(
        &self,
        actor: manta_actors::ActorHandle<M>,
        wrap: impl Fn(MemberEvent) -> M + Send + 'static,
    ) {
        let mut events = self.subscribe();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(ev) => {
                        if actor.tell(wrap(ev)).is_err() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(target: "manta::membership", skipped = n, "a subscribed actor missed membership events");
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }

    /// The current view (this node included).
    pub fn members(&self) -> Vec<Member> {
        self.inner.view.borrow().clone()
    }

    /// A watch on the view.
    pub fn view(&self) -> watch::Receiver<Vec<Member>> {
        self.inner.view.subscribe()
    }

    /// A watch on what gossip alone says, before the mesh has confirmed
    /// anyone: the nodes the mesh should dial.
    pub fn gossip_view(&self) -> watch::Receiver<Vec<Member>> {
        self.inner.gossip_view.subscribe()
    }

    /// Gossip transport counters.
    pub fn stats(&self) -> Arc<GossipStats> {
        self.inner.transport.stats()
    }

    /// How often gossip had to be restarted.
    pub fn gossip_restarts(&self) -> u64 {
        self.inner
            .restarts
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many (node, generation) pairs gossiped keys that never carried
    /// that node's valid signature, since start (only counted when this
    /// node has a signer). Such nodes are not members.
    pub fn rejected_nodes(&self) -> u64 {
        self.inner
            .rejected_total
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets one of this node's own keys.
    pub async fn set_key(&self, key: &str, value: &str) {
        if let Some(h) = self.inner.handle.lock().await.as_ref() {
            let signer = self.inner.config.signer.as_ref();
            h.with_chitchat(|c| {
                c.self_node_state().set(key, value);
                resign(c, signer);
            })
            .await;
        }
    }

    /// Publishes the registered actor names with their message types.
    pub async fn set_actors(&self, actors: &BTreeMap<String, String>) {
        let json = serde_json::to_string(actors).unwrap_or_else(|_| "{}".to_owned());
        self.set_key(keys::ACTORS, &json).await;
    }

    /// Leaves gracefully: marks this node `left`, pushes that to every live
    /// peer, gives it a few gossip rounds to spread, then stops gossip.
    pub async fn leave(&self) {
        self.inner
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut guard = self.inner.handle.lock().await;
        if let Some(h) = guard.as_ref() {
            let peers: Vec<SocketAddr> = h
                .with_chitchat(|c| {
                    c.self_node_state().set(keys::STATUS, "left");
                    resign(c, self.inner.config.signer.as_ref());
                    let me = c.self_chitchat_id().clone();
                    c.live_nodes()
                        .filter(|id| **id != me)
                        .map(|id| id.gossip_advertise_addr)
                        .collect()
                })
                .await;
            for _ in 0..3 {
                for p in &peers {
                    let _ = h.gossip(*p);
                }
                tokio::time::sleep(self.inner.config.gossip_interval).await;
            }
        }
        if let Some(h) = guard.take() {
            let _ = h.shutdown().await;
        }
        self.inner.stop.notify_one();
    }

    async fn refresh(&self, prev: &mut HashMap<String, Member>) {
        let guard = self.inner.handle.lock().await;
        let Some(h) = guard.as_ref() else { return };
        let states = h
            .with_chitchat(|c| {
                let live: std::collections::HashSet<ChitchatId> = c.live_nodes().cloned().collect();
                let dead: std::collections::HashSet<ChitchatId> = c.dead_nodes().cloned().collect();
                let me = c.self_chitchat_id().clone();
                let mut out = Vec::new();
                for (id, st) in c.node_states() {
                    let state = if live.contains(id) || *id == me {
                        MemberState::Alive
                    } else if dead.contains(id) {
                        MemberState::Dead
                    } else {
                        continue;
                    };
                    let keys: BTreeMap<String, String> = st
                        .key_values()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect();
                    out.push((id.clone(), state, keys));
                }
                (me, out)
            })
            .await;
        drop(guard);
        let (me, states) = states;
        let members: Vec<Member> = self
            .believed(&me, states)
            .into_iter()
            .filter_map(|(id, state, mut keys)| {
                keys.remove(keys::SIG);
                let state = if keys.get(keys::STATUS).map(String::as_str) == Some("left") {
                    MemberState::Left
                } else {
                    state
                };
                // A node that never sent its name is not a member yet.
                let name = keys.get(keys::NAME).cloned()?;
                Some(Member {
                    id: id.node_id.to_string(),
                    generation: id.generation_id,
                    name,
                    gossip: id.gossip_advertise_addr,
                    roles: split_list(keys.get(keys::ROLES)),
                    actors: actor_types(&keys).into_keys().collect(),
                    state,
                    keys,
                })
            })
            .collect();
        // Keep only the newest generation of each node; of two copies of
        // one generation (which a valid signature, covering the gossip
        // address, rules out) the live one, never a dead copy over it.
        let mut newest: BTreeMap<String, Member> = BTreeMap::new();
        for m in members {
            match newest.get(&m.id) {
                Some(old)
                    if old.generation > m.generation
                        || (old.generation == m.generation
                            && (old.state == MemberState::Alive
                                || m.state != MemberState::Alive)) => {}
                _ => {
                    newest.insert(m.id.clone(), m);
                }
            }
        }
        self.inner
            .gossip_view
            .send_replace(newest.values().cloned().collect());
        let me = &self.inner.config.node_id;
        if let Some(gate) = &self.inner.config.mesh_gate {
            let connected = gate.borrow().clone();
            newest.retain(|id, m| {
                if id == me || m.state != MemberState::Alive || connected.contains(id) {
                    return true;
                }
                // Gossip says alive but the mesh has not (or no longer)
                // authenticated it: not a member yet, or down now.
                match prev.get(id) {
                    Some(p) if p.state == MemberState::Alive && p.generation == m.generation => {
                        m.state = MemberState::Dead;
                        true
                    }
                    Some(p) if p.state == MemberState::Dead && p.generation == m.generation => {
                        m.state = MemberState::Dead;
                        true
                    }
                    _ => false,
                }
            });
        }
        for m in newest.values() {
            if &m.id == me {
                continue;
            }
            let before = prev.get(&m.id);
            let was = before.map(|b| (b.state, b.generation));
            let ev = match (was, m.state) {
                (None, MemberState::Alive) => Some(MemberEvent::NodeUp(m.clone())),
                (Some((_, g)), MemberState::Alive) if g != m.generation => {
                    Some(MemberEvent::NodeUp(m.clone()))
                }
                (Some((s, _)), MemberState::Alive) if s != MemberState::Alive => {
                    Some(MemberEvent::NodeUp(m.clone()))
                }
                (Some((MemberState::Alive, _)), MemberState::Dead) => {
                    Some(MemberEvent::NodeDown(m.clone()))
                }
                (Some((s, _)), MemberState::Left) if s != MemberState::Left => {
                    Some(MemberEvent::NodeLeft(m.clone()))
                }
                _ => None,
            };
            if let Some(ev) = ev {
                match &ev {
                    MemberEvent::NodeUp(m) => {
                        tracing::info!(target: "manta::membership", node = %m.id, name = %m.name, gossip = %m.gossip, "node up")
                    }
                    MemberEvent::NodeDown(m) => {
                        tracing::warn!(target: "manta::membership", node = %m.id, name = %m.name, "node down")
                    }
                    MemberEvent::NodeLeft(m) => {
                        tracing::info!(target: "manta::membership", node = %m.id, name = %m.name, "node left")
                    }
                }
                let _ = self.inner.events.send(ev);
            }
        }
        *prev = newest.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let list: Vec<Member> = newest.into_values().collect();
        self.write_board(&list);
        self.inner.view.send_replace(list);
    }

    /// Writes what `manta status` answers: the members in `list`, the
    /// lanes to them, the datagrams dropped.
    fn write_board(&self, list: &[Member]) {
        let lanes = lock(&self.inner.lanes).clone();
        let status = ClusterStatus {
            nodes: list
                .iter()
                .map(|m| NodeStatus {
                    id: m.id.clone(),
                    name: m.name.clone(),
                    state: m.state.as_str().to_owned(),
                    roles: m.roles.clone(),
                    gossip: m.gossip.to_string(),
                    actors: m.actors.clone(),
                    lane: lanes.get(&m.id).cloned(),
                })
                .collect(),
            dropped: self.inner.transport.stats().dropped(),
        };
        if let Ok(json) = serde_json::to_vec(&status) {
            *self
                .inner
                .transport
                .board()
                .write()
                .unwrap_or_else(|e| e.into_inner()) = json;
        }
    }

    /// Sets which lane this node uses to each member (by id), as `manta
    /// status` shows it.
    pub fn set_lanes(&self, lanes: BTreeMap<String, String>) {
        {
            let mut l = lock(&self.inner.lanes);
            if *l == lanes {
                return;
            }
            *l = lanes;
        }
        let list = self.inner.view.borrow().clone();
        self.write_board(&list);
    }

    /// The node states whose keys this node believes: all of them without
    /// a signer; with one, this incarnation's own and those whose keys carry a
    /// valid signature by their node (or, while a newer update has not
    /// verified yet, the last keys of that generation that did).
    fn believed(
        &self,
        me: &ChitchatId,
        states: Vec<(ChitchatId, MemberState, BTreeMap<String, String>)>,
    ) -> Vec<(ChitchatId, MemberState, BTreeMap<String, String>)> {
        if self.inner.config.signer.is_none() {
            return states;
        }
        let present: std::collections::HashSet<ChitchatId> =
            states.iter().map(|(id, _, _)| id.clone()).collect();
        let mut verified = lock(&self.inner.verified);
        let mut rejected = lock(&self.inner.rejected);
        // Forgotten nodes are forgotten here too.
        verified.retain(|k, _| present.contains(k));
        rejected.retain(|k, _| present.contains(k));
        let mut out = Vec::with_capacity(states.len());
        for (id, state, keys) in states {
            // This incarnation's own state needs no proof; any other one
            // under this node's id (an earlier generation, or somebody
            // posing as a newer one) does.
            if id == *me {
                out.push((id, state, keys));
                continue;
            }
            // Unchanged since it last verified: no signature check again.
            if verified.get(&id) == Some(&keys) {
                out.push((id, state, keys));
                continue;
            }
            // Unchanged since it last failed: no check again either.
            if rejected.get(&id) == Some(&keys) {
                if let Some(last) = verified.get(&id) {
                    out.push((id, state, last.clone()));
                }
                continue;
            }
            match verify_keys(&id, &keys) {
                Ok(()) => {
                    rejected.remove(&id);
                    verified.insert(id.clone(), keys.clone());
                    out.push((id, state, keys));
                }
                Err(why) => {
                    let first = rejected.insert(id.clone(), keys).is_none();
                    if let Some(last) = verified.get(&id) {
                        out.push((id, state, last.clone()));
                    } else if first {
                        self.inner
                            .rejected_total
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(target: "manta::membership", node = %id.node_id, generation = id.generation_id, gossip = %id.gossip_advertise_addr, reason = why, "ignoring a node whose gossiped keys are not signed by it");
                    }
                }
            }
        }
        out
    }

    async fn watch(self) {
        let mut prev: HashMap<String, Member> = self
            .members()
            .into_iter()
            .map(|m| (m.id.clone(), m))
            .collect();
        loop {
            let (mut live, terminated) = {
                let guard = self.inner.handle.lock().await;
                let Some(h) = guard.as_ref() else { return };
                let live = h.with_chitchat(|c| c.live_nodes_watcher()).await;
                (live, h.termination_watcher())
            };
            tokio::pin!(terminated);
            let mut tick = tokio::time::interval(self.inner.config.gossip_interval);
            let mut gate = self.inner.config.mesh_gate.clone();
            let outcome = loop {
                let gate_changed = async {
                    match gate.as_mut() {
                        Some(g) => {
                            if g.changed().await.is_err() {
                                futures::future::pending::<()>().await
                            }
                        }
                        None => futures::future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    _ = self.inner.stop.notified() => return,
                    r = &mut terminated => break r,
                    _ = live.changed() => self.refresh(&mut prev).await,
                    _ = gate_changed => self.refresh(&mut prev).await,
                    _ = tick.tick() => self.refresh(&mut prev).await,
                }
            };
            if self
                .inner
                .stopping
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                return;
            }
            // Gossip ended without a leave: say so loudly and restart it as
            // a new generation.
            let why = match outcome {
                Ok(()) => "stopped".to_owned(),
                Err(e) => format!("{e:#}"),
            };
            tracing::error!(target: "manta::membership", reason = %why, "gossip task ended unexpectedly; restarting gossip as a new generation");
            self.inner
                .restarts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let keys: Vec<(String, String)> = self
                .members()
                .into_iter()
                .find(|m| m.id == self.inner.config.node_id)
                .map(|m| m.keys.into_iter().collect())
                .unwrap_or_default();
            let restarted = loop {
                match spawn_gossip(
                    &self.inner.config,
                    self.inner.local,
                    &self.inner.transport,
                    keys.clone(),
                )
                .await
                {
                    Ok(h) => break h,
                    Err(e) => {
                        tracing::error!(target: "manta::membership", error = %e, "cannot restart gossip; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            *self.inner.handle.lock().await = Some(restarted);
        }
    }

    /// Stops gossip without a word, as `kill -9` would: no leave, no restart
    /// (tests use it for failure detection in one process). Feature
    /// `testing` only.
    #[cfg(feature = "testing")]
    pub async fn kill_for_test(&self) {
        self.inner
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.stop.notify_one();
        if let Some(h) = self.inner.handle.lock().await.take() {
            h.abort();
        }
    }

    /// Aborts the gossip task as a crash would (tests use it to prove the
    /// watcher restarts gossip). Feature `testing` only.
    #[cfg(feature = "testing")]
    pub async fn crash_gossip_for_test(&self) {
        if let Some(h) = self.inner.handle.lock().await.as_ref() {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail by panicking

    use super::*;

    fn signed(kp: &Keypair, generation: u64) -> (String, BTreeMap<String, String>) {
        let id = kp.public().to_peer_id().to_string();
        let mut keys: BTreeMap<String, String> = [("name", "a"), ("roles", "x,y")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let sig = sign_keys(
            kp,
            &incarnation(&id, generation),
            keys.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .unwrap();
        keys.insert(keys::SIG.to_owned(), sig);
        (id, keys)
    }

    fn incarnation(id: &str, generation: u64) -> ChitchatId {
        ChitchatId::new(
            id.to_owned(),
            generation,
            SocketAddr::from(([127, 0, 0, 1], 7000)),
        )
    }

    fn verify(
        id: &str,
        generation: u64,
        keys: &BTreeMap<String, String>,
    ) -> Result<(), &'static str> {
        verify_keys(&incarnation(id, generation), keys)
    }

    #[test]
    fn signed_keys_verify_and_every_change_breaks_them() {
        let kp = Keypair::generate_ed25519();
        let (id, keys) = signed(&kp, 7);
        assert_eq!(verify(&id, 7, &keys), Ok(()));
        let bad = "its signature does not match its keys";
        assert_eq!(verify(&id, 8, &keys), Err(bad), "another generation");
        // A copy of the node, keys and signature, at another gossip
        // address (issue 16, item 3).
        let elsewhere = ChitchatId::new(id.clone(), 7, SocketAddr::from(([127, 0, 0, 1], 7001)));
        assert_eq!(verify_keys(&elsewhere, &keys), Err(bad), "another address");
        let mut changed = keys.clone();
        changed.insert("roles".into(), "x".into());
        assert_eq!(verify(&id, 7, &changed), Err(bad), "a changed value");
        let mut added = keys.clone();
        added.insert("status".into(), "left".into());
        assert_eq!(verify(&id, 7, &added), Err(bad), "an added key");
        let other = Keypair::generate_ed25519()
            .public()
            .to_peer_id()
            .to_string();
        assert_eq!(verify(&other, 7, &keys), Err(bad), "another node's id");
        let mut unsigned = keys.clone();
        unsigned.remove(keys::SIG);
        assert_eq!(verify(&id, 7, &unsigned), Err("its keys are not signed"));
        let mut garbled = keys.clone();
        garbled.insert(keys::SIG.into(), "zz".into());
        assert_eq!(verify(&id, 7, &garbled), Err("its signature is not hex"));
        assert_eq!(verify("n1", 7, &keys), Err("its id is not a peer id"));
        // A PeerId that is a hash of its key (no key inside) cannot vouch,
        // nor can one whose inline bytes are not a key.
        let hashed = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N";
        assert!(hashed.parse::<PeerId>().is_ok());
        assert_eq!(
            verify(hashed, 7, &keys),
            Err("its peer id does not embed a public key")
        );
        assert_eq!(
            verify(&PeerId::random().to_string(), 7, &keys),
            Err("its peer id's public key cannot be decoded")
        );
    }

    #[test]
    fn length_prefixes_keep_keys_and_values_apart() {
        let a = signed_bytes(&incarnation("n", 1), [("ab", "c")].into_iter());
        let b = signed_bytes(&incarnation("n", 1), [("a", "bc")].into_iter());
        assert_ne!(a, b);
    }
}
