//! A running node: identity, secret and membership from a [`NodeConfig`].

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

use crate::config::NodeConfig;
use crate::error::ClusterError;
use crate::identity::NodeIdentity;
use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::watch;

use manta_actors::{ActorHandle, ActorSystem, LookupError, RemoteMessage, message_type_name};

use crate::membership::{
    MemberEvent, MemberState, Membership, MembershipConfig, actor_types, keys,
};
use crate::mesh::{Mesh, MeshConfig};
use crate::place::Cluster;
use crate::remote::Remoting;
use crate::seal::mesh_psk;
use crate::secret::ClusterSecret;

/// The line `manta node` prints once it is up, with the real addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyLine {
    /// Node id.
    pub id: String,
    /// Node name.
    pub name: String,
    /// Bound gossip address.
    pub gossip: SocketAddr,
    /// libp2p address (`-` until the mesh is in place).
    pub p2p: String,
}

impl fmt::Display for ReadyLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ready id={} name={} gossip={} p2p={}",
            self.id, self.name, self.gossip, self.p2p
        )
    }
}

/// The label a client node gossips (see [`NodeConfig::client`]).
pub const CLIENT_LABEL: &str = "manta.client";

/// A node that has joined (or started) a cluster.
#[derive(Debug)]
pub struct Node {
    identity: NodeIdentity,
    membership: Membership,
    mesh: Mesh,
    remoting: Remoting,
    system: ActorSystem,
    cluster: Cluster,
    config: NodeConfig,
    claims: Claims,
}

/// Per name, the member [`Names::where_is`] found it on: while that member
/// lives and still publishes the name, a later claimant does not take it.
type Claims = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>;

/// Names [`Names::where_is`] remembers a holder for; past it the entries of
/// holders no longer listed are dropped (then all, if none was).
const MAX_CLAIMS: usize = 65_536;

/// Resolves `host:port`.
pub(crate) fn resolve(addr: &str, what: &str) -> Result<SocketAddr, ClusterError> {
    addr.to_socket_addrs()
        .map_err(|e| ClusterError::Config(format!("{what} `{addr}`: {e}")))?
        .next()
        .ok_or_else(|| ClusterError::Config(format!("{what} `{addr}` resolves to nothing")))
}

impl Node {
    /// Loads (or creates) the identity, reads the secret and joins; the
    /// actors registered by name in `system` become reachable from the
    /// whole cluster.
    pub async fn start(config: NodeConfig, system: ActorSystem) -> Result<Node, ClusterError> {
        config.validate()?;
        let identity = NodeIdentity::load_or_create(&config.key_path())?;
        let secret = match &config.secret_file {
            Some(p) => Some(ClusterSecret::read(p)?),
            None => {
                tracing::warn!(
                    target: "manta::node",
                    "no --secret-file: the cluster is OPEN (gossip is sealed with a public development key); \
                     create a secret with `manta secret FILE`"
                );
                None
            }
        };
        let p2p_listen: libp2p::Multiaddr = config.listen.parse().map_err(|e| {
            ClusterError::Config(format!("listen address `{}`: {e}", config.listen))
        })?;
        let mesh = Mesh::start(MeshConfig {
            keypair: identity.keypair().clone(),
            listen: p2p_listen,
            psk: secret
                .as_ref()
                .map(|s| crate::pnet::PreSharedKey::new(mesh_psk(s, &config.cluster))),
            idle_timeout: Duration::from_secs(3600),
            max_pending_incoming: crate::mesh::MAX_PENDING_INCOMING,
            secret_deadline: crate::mesh::SECRET_DEADLINE,
        })
        .await?;
        let (gate_tx, gate) = watch::channel(BTreeSet::new());
        let mut connected = mesh.connected();
        tokio::spawn(async move {
            loop {
                let ids: BTreeSet<String> = connected
                    .borrow_and_update()
                    .iter()
                    .map(|p| p.to_string())
                    .collect();
                gate_tx.send_replace(ids);
                if connected.changed().await.is_err() {
                    break;
                }
            }
        });
        let listen = resolve(&config.gossip, "gossip address")?;
        for s in &config.seeds {
            resolve(s, "seed")?;
        }
        let mut mc =
            MembershipConfig::new(identity.peer_id().to_string(), config.name.clone(), listen);
        mc.cluster = config.cluster.clone();
        mc.secret = secret;
        mc.seeds = config.seeds.clone();
        mc.signer = Some(identity.keypair().clone());
        mc.gossip_interval = config.failure_detection.gossip_interval;
        mc.phi_threshold = config.failure_detection.phi_threshold;
        mc.max_interval = config.failure_detection.max_interval;
        mc.dead_node_grace_period = config.failure_detection.dead_node_grace_period;
        mc.keys
            .insert(keys::ROLES.to_owned(), config.roles.join(","));
        let mut labels = config.labels.clone();
        if config.client {
            labels.insert(CLIENT_LABEL.to_owned(), "true".to_owned());
        }
        mc.keys.insert(
            keys::LABELS.to_owned(),
            serde_json::to_string(&labels).unwrap_or_default(),
        );
        // A node that does not say how many CPUs it offers offers the
        // cores it has (placement by `cpus` then works without a config).
        let mut resources = config.resources.clone();
        if resources.cpus <= 0.0 {
            resources.cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        }
        mc.keys.insert(
            keys::RESOURCES.to_owned(),
            serde_json::to_string(&resources).unwrap_or_default(),
        );
        mc.keys
            .insert(keys::P2P.to_owned(), mesh.listen_addr().to_string());
        mc.mesh_gate = Some(gate);
        system.set_remote_inbox_limit(config.limits.remote_inbox_mib.saturating_mul(1 << 20));
        let remoting = Remoting::start_with(
            system.clone(),
            mesh.stream_control(),
            config.limits.remote()?,
        );
        if config.bulk.enabled {
            let at = config.bulk.listen_addr(listen)?;
            let listener = tokio::net::TcpListener::bind(at)
                .await
                .map_err(|e| ClusterError::Config(format!("bulk.listen `{at}`: {e}")))?;
            let mut bound = remoting
                .enable_bulk(listener, config.bulk.settings()?)
                .map_err(|e| ClusterError::Config(format!("bulk lane: {e}")))?;
            if bound.ip().is_unspecified() {
                bound.set_ip(listen.ip());
            }
            mc.keys.insert(keys::BULK.to_owned(), bound.to_string());
        }
        let gossip_interval = mc.gossip_interval;
        let membership = Membership::start(mc).await?;
        tokio::spawn(reconcile(membership.clone(), mesh.clone()));
        tokio::spawn(follow_membership(membership.clone(), remoting.clone()));
        tokio::spawn(follow_lanes(membership.clone(), remoting.clone()));
        tokio::spawn(report_lanes(
            membership.clone(),
            remoting.clone(),
            gossip_interval,
        ));
        tokio::spawn(publish_names(
            membership.clone(),
            system.clone(),
            gossip_interval,
        ));
        let cluster = Cluster::new(
            identity.peer_id(),
            membership.clone(),
            remoting.clone(),
            system.clone(),
        );
        Ok(Node {
            identity,
            membership,
            mesh,
            remoting,
            system,
            cluster,
            config,
            claims: Claims::default(),
        })
    }

    /// The ready line.
    pub fn ready_line(&self) -> ReadyLine {
        ReadyLine {
            id: self.identity.peer_id().to_string(),
            name: self.config.name.clone(),
            gossip: self.membership.gossip_addr(),
            p2p: self.mesh.listen_addr().to_string(),
        }
    }

    /// Membership.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The mesh.
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// The node's identity.
    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// The actor system whose named actors this node serves.
    pub fn system(&self) -> &ActorSystem {
        &self.system
    }

    /// Remote messaging.
    pub fn remoting(&self) -> &Remoting {
        &self.remoting
    }

    /// Cluster services (placement, remote spawn); also the [`manta_actors::Placer`]
    /// for supervision trees whose children carry a placement.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Every member of process group `group` across the cluster that takes
    /// messages of type `M` (members of another type are left out).
    pub fn group<M: RemoteMessage>(&self, group: &str) -> Vec<ActorHandle<M>> {
        self.names().group(group)
    }

    /// Finds the actor registered as `name` anywhere in the cluster (this
    /// node first), checking that it takes messages of type `M`.
    pub fn where_is<M: RemoteMessage>(&self, name: &str) -> Result<ActorHandle<M>, LookupError> {
        self.names().where_is(name)
    }

    /// A cheap, cloneable handle on the cluster-wide name registry, for
    /// actors that look their peers up by name.
    pub fn names(&self) -> Names {
        Names {
            system: self.system.clone(),
            membership: self.membership.clone(),
            remoting: self.remoting.clone(),
            claims: std::sync::Arc::clone(&self.claims),
        }
    }

    /// Leaves the cluster gracefully.
    pub async fn leave(self) {
        self.membership.leave().await;
        self.remoting.close_lanes();
        self.mesh.shutdown();
    }

    /// Stops gossip and the mesh without a word, as `kill -9` would.
    /// Feature `testing` only.
    #[cfg(feature = "testing")]
    pub async fn kill_for_test(&self) {
        self.membership.kill_for_test().await;
        self.remoting.close_lanes();
        self.mesh.shutdown();
    }
}

/// Keeps the mesh in step with gossip: members are allowed and dialled,
/// dead and departed nodes are disallowed (their connections close).
async fn reconcile(membership: Membership, mesh: Mesh) {
    let me = membership.node_id().to_owned();
    let mut view = membership.gossip_view();
    let mut connected = mesh.connected();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // One dial per peer per half second at most: a peer that has not yet
    // admitted us closes our connections until its gossip catches up.
    let mut last_dial: std::collections::HashMap<libp2p::PeerId, tokio::time::Instant> =
        Default::default();
    let mut refused: std::collections::HashSet<libp2p::PeerId> = Default::default();
    loop {
        let members = view.borrow_and_update().clone();
        let up = connected.borrow_and_update().clone();
        // Dial times and refusals of nodes gossip no longer knows go.
        last_dial.retain(|p, _| members.iter().any(|m| m.id == p.to_string()));
        refused.retain(|p| members.iter().any(|m| m.id == p.to_string()));
        for m in members.iter().filter(|m| m.id != me) {
            let Ok(peer) = m.id.parse::<libp2p::PeerId>() else {
                continue;
            };
            match m.state {
                MemberState::Alive => {
                    mesh.allow(peer);
                    let now = tokio::time::Instant::now();
                    let recent = last_dial
                        .get(&peer)
                        .is_some_and(|t| now.duration_since(*t) < Duration::from_millis(500));
                    if !up.contains(&peer) && !recent {
                        match m.keys.get(keys::P2P).map(|a| dialable(a, peer, m.gossip)) {
                            Some(Ok(addr)) => {
                                last_dial.insert(peer, now);
                                mesh.dial(peer, addr);
                            }
                            Some(Err(why)) if refused.insert(peer) => {
                                tracing::warn!(target: "manta::node", node = %peer, name = %m.name, "not dialling the mesh address it gossips: {why}");
                            }
                            _ => {}
                        }
                    }
                }
                MemberState::Dead | MemberState::Left => mesh.disallow(peer),
            }
        }
        tokio::select! {
            r = view.changed() => if r.is_err() { break },
            r = connected.changed() => if r.is_err() { break },
            _ = tick.tick() => {}
        }
    }
}

/// The mesh address a member gossips, if this node will dial it: a plain
/// `/ip4|ip6/IP/tcp/PORT` (optionally `/p2p/` its own id) on the host of
/// its signed gossip address (an unspecified IP means that host). A member
/// cannot make the others dial a third party's service, a DNS name or a
/// relay; and the dial is bound to its PeerId, so noise refuses anybody else.
fn dialable(
    addr: &str,
    peer: libp2p::PeerId,
    gossip: std::net::SocketAddr,
) -> Result<libp2p::Multiaddr, String> {
    use libp2p::multiaddr::Protocol;
    let parsed: libp2p::Multiaddr = addr
        .parse()
        .map_err(|e| format!("`{addr}` is not a multiaddr ({e})"))?;
    let mut parts = parsed.iter();
    let ip: std::net::IpAddr = match parts.next() {
        Some(Protocol::Ip4(ip)) => ip.into(),
        Some(Protocol::Ip6(ip)) => ip.into(),
        _ => return Err(format!("`{addr}` does not start with an IP address")),
    };
    let port = match parts.next() {
        Some(Protocol::Tcp(port)) => port,
        _ => return Err(format!("`{addr}` is not a TCP address")),
    };
    match parts.next() {
        None => {}
        Some(Protocol::P2p(id)) if id == peer && parts.next().is_none() => {}
        Some(_) => {
            return Err(format!(
                "`{addr}` has more than IP, TCP port and its own id"
            ));
        }
    }
    let ip = if ip.is_unspecified() { gossip.ip() } else { ip };
    if ip != gossip.ip() {
        return Err(format!(
            "`{addr}` is on another host than its gossip address {gossip}"
        ));
    }
    let mut out = libp2p::Multiaddr::from(ip);
    out.push(Protocol::Tcp(port));
    Ok(out)
}

/// Node-down and node-up reach remote handles: their monitors fire with
/// `node down` and their pending asks fail.
async fn follow_membership(membership: Membership, remoting: Remoting) {
    let mut events = membership.subscribe();
    loop {
        match events.recv().await {
            Ok(MemberEvent::NodeUp(m)) => {
                if let Ok(p) = m.id.parse() {
                    remoting.node_up(p);
                }
            }
            Ok(MemberEvent::NodeDown(m)) | Ok(MemberEvent::NodeLeft(m)) => {
                if let Ok(p) = m.id.parse() {
                    remoting.node_down(p);
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        }
    }
}

/// Keeps the lane addresses members gossip in step with the remoting
/// layer: only an `IP:PORT` on the host of the member's signed gossip
/// address (an unspecified IP means that host) is used, so a member cannot
/// make the others connect to a third party.
async fn follow_lanes(membership: Membership, remoting: Remoting) {
    let me = membership.node_id().to_owned();
    let mut view = membership.gossip_view();
    let mut known: std::collections::HashMap<libp2p::PeerId, Option<SocketAddr>> =
        Default::default();
    loop {
        let members = view.borrow_and_update().clone();
        let mut now = std::collections::HashMap::new();
        for m in members.iter().filter(|m| m.id != me) {
            let Ok(peer) = m.id.parse::<libp2p::PeerId>() else {
                continue;
            };
            let addr = m.keys.get(keys::BULK).and_then(|a| {
                match lane_addr(a, m.gossip) {
                    Ok(addr) => Some(addr),
                    Err(why) => {
                        if !known.contains_key(&peer) {
                            tracing::warn!(target: "manta::node", node = %peer, name = %m.name, "not using the lane address it gossips: {why}");
                        }
                        None
                    }
                }
            });
            let addr = addr.filter(|_| m.state == MemberState::Alive);
            if known.get(&peer) != Some(&addr) {
                remoting.set_lane_addr(peer, addr);
            }
            now.insert(peer, addr);
        }
        for gone in known.keys().filter(|p| !now.contains_key(p)) {
            remoting.set_lane_addr(*gone, None);
        }
        known = now;
        if view.changed().await.is_err() {
            break;
        }
    }
}

/// Keeps `manta status`'s lane column in step: which lane this node uses
/// to each live member, checked every `every`.
async fn report_lanes(membership: Membership, remoting: Remoting, every: Duration) {
    let me = membership.node_id().to_owned();
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let lanes = membership
            .members()
            .into_iter()
            .filter(|m| m.id != me && m.state == MemberState::Alive)
            .filter_map(|m| {
                let peer = m.id.parse::<libp2p::PeerId>().ok()?;
                Some((m.id, remoting.lane_use(peer).as_str().to_owned()))
            })
            .collect();
        membership.set_lanes(lanes);
    }
}

/// The lane address a member gossips, if this node will connect to it.
fn lane_addr(addr: &str, gossip: SocketAddr) -> Result<SocketAddr, String> {
    let mut parsed: SocketAddr = addr
        .parse()
        .map_err(|e| format!("`{addr}` is not IP:PORT ({e})"))?;
    if parsed.ip().is_unspecified() {
        parsed.set_ip(gossip.ip());
    }
    if parsed.ip() != gossip.ip() {
        return Err(format!(
            "`{addr}` is on another host than its gossip address {gossip}"
        ));
    }
    if parsed.port() == 0 {
        return Err(format!("`{addr}` has no port"));
    }
    Ok(parsed)
}

/// Gossips the names registered in `system` (with their message types)
/// whenever they change.
async fn publish_names(membership: Membership, system: ActorSystem, every: Duration) {
    let mut last = None;
    let mut last_groups = None;
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let now: std::collections::BTreeMap<String, String> = system
            .registered_types()
            .into_iter()
            .map(|(n, t)| (n, t.to_owned()))
            .collect();
        if last.as_ref() != Some(&now) {
            membership.set_actors(&now).await;
            last = Some(now);
        }
        let groups = system.groups();
        if last_groups.as_ref() != Some(&groups) {
            let json = serde_json::to_string(&groups).unwrap_or_else(|_| "{}".to_owned());
            membership.set_key(keys::GROUPS, &json).await;
            last_groups = Some(groups);
        }
    }
}

/// The cluster-wide name registry of one node (see [`Node::names`]): named
/// actors and process groups on every live member, this node first.
#[derive(Clone)]
pub struct Names {
    system: ActorSystem,
    membership: Membership,
    remoting: Remoting,
    claims: Claims,
}

impl std::fmt::Debug for Names {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Names")
            .field("node", &self.membership.node_id())
            .finish()
    }
}

impl Names {
    /// Every member of process group `group` across the cluster that takes
    /// messages of type `M` (members of another type are left out).
    pub fn group<M: RemoteMessage>(&self, group: &str) -> Vec<ActorHandle<M>> {
        let mut out = self.system.group::<M>(group);
        let me = self.membership.node_id().to_owned();
        for m in self.membership.members() {
            if m.id == me || m.state != MemberState::Alive {
                continue;
            }
            let groups: std::collections::BTreeMap<String, Vec<String>> = m
                .keys
                .get(keys::GROUPS)
                .and_then(|g| serde_json::from_str(g).ok())
                .unwrap_or_default();
            let types = actor_types(&m.keys);
            let Ok(peer) = m.id.parse::<libp2p::PeerId>() else {
                continue;
            };
            for name in groups.get(group).into_iter().flatten() {
                if types.get(name).map(String::as_str) == Some(message_type_name::<M>()) {
                    out.push(self.remoting.handle::<M>(peer, name));
                }
            }
        }
        out
    }

    /// A handle to the actor registered as `name` on the node with id
    /// `node`, without waiting for gossip to announce the name (a caller
    /// that was told where an actor lives, e.g. in its spawn arguments).
    /// The serving node checks the name and message type when the first
    /// message arrives.
    pub fn at<M: RemoteMessage>(
        &self,
        node: &str,
        name: &str,
    ) -> Result<ActorHandle<M>, LookupError> {
        if node == self.membership.node_id() {
            return self.system.lookup::<M>(name);
        }
        let peer = node
            .parse::<libp2p::PeerId>()
            .map_err(|e| LookupError::NotFound(format!("{name} on {node} (not a node id: {e})")))?;
        Ok(self.remoting.handle::<M>(peer, name))
    }

    /// Finds the actor registered as `name` anywhere in the cluster (this
    /// node first), checking that it takes messages of type `M`. When
    /// several live members publish the name, the one a lookup on this
    /// node found first keeps it while it lives and publishes it (a member
    /// that publishes a name another node's actor holds does not get its
    /// messages); otherwise the first by node id.
    pub fn where_is<M: RemoteMessage>(&self, name: &str) -> Result<ActorHandle<M>, LookupError> {
        match self.system.lookup::<M>(name) {
            Err(LookupError::NotFound(_)) => {}
            other => return other,
        }
        let me = self.membership.node_id().to_owned();
        let members = self.membership.members();
        let claimants: Vec<(&str, String)> = members
            .iter()
            .filter(|m| m.id != me && m.state == MemberState::Alive)
            .filter_map(|m| {
                let ty = actor_types(&m.keys).get(name)?.clone();
                m.id.parse::<libp2p::PeerId>().ok()?;
                Some((m.id.as_str(), ty))
            })
            .collect();
        let Some(first) = claimants.first() else {
            return Err(LookupError::NotFound(name.to_owned()));
        };
        let (holder, ty) = {
            // Every critical section is a lookup or an insertion: a
            // poisoned map is still consistent.
            let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
            let kept = claims
                .get(name)
                .and_then(|id| claimants.iter().find(|(c, _)| c == id));
            match kept {
                Some(c) => c.clone(),
                None => {
                    if claims.len() >= MAX_CLAIMS {
                        let listed: BTreeSet<&str> =
                            members.iter().map(|m| m.id.as_str()).collect();
                        claims.retain(|_, id| listed.contains(id.as_str()));
                        if claims.len() >= MAX_CLAIMS {
                            claims.clear();
                        }
                    }
                    claims.insert(name.to_owned(), first.0.to_owned());
                    first.clone()
                }
            }
        };
        if claimants.len() > 1 {
            tracing::debug!(target: "manta::node", name, %holder, claimants = claimants.len(), "several members publish this name; keeping the one found first");
        }
        if ty != message_type_name::<M>() {
            return Err(LookupError::WrongType {
                name: name.to_owned(),
                expected: message_type_name::<M>(),
                actual: ty,
            });
        }
        let peer = holder
            .parse::<libp2p::PeerId>()
            .map_err(|e| LookupError::NotFound(format!("{name} on {holder} ({e})")))?;
        Ok(self.remoting.handle::<M>(peer, name))
    }
}

#[cfg(test)]
mod tests {
    use super::dialable;

    #[test]
    fn only_plain_tcp_addresses_on_the_members_gossip_host_are_dialled() {
        let peer = libp2p::PeerId::random();
        let gossip: std::net::SocketAddr = "10.0.0.5:7000".parse().unwrap();
        let ok = |a: &str| dialable(a, peer, gossip).map(|m| m.to_string());
        assert_eq!(
            ok("/ip4/10.0.0.5/tcp/9000"),
            Ok("/ip4/10.0.0.5/tcp/9000".into())
        );
        assert_eq!(
            ok(&format!("/ip4/10.0.0.5/tcp/9000/p2p/{peer}")),
            Ok("/ip4/10.0.0.5/tcp/9000".into())
        );
        // Listening on every interface: its gossip host.
        assert_eq!(
            ok("/ip4/0.0.0.0/tcp/9000"),
            Ok("/ip4/10.0.0.5/tcp/9000".into())
        );
        for bad in [
            "/ip4/10.0.0.6/tcp/22",
            "/dns4/example.com/tcp/80",
            "/ip4/10.0.0.5/udp/9000/quic-v1",
            "/ip4/10.0.0.5/tcp/9000/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA",
            "/ip4/10.0.0.5/tcp/9000/ws",
            "not an address",
        ] {
            assert!(dialable(bad, peer, gossip).is_err(), "{bad} was dialable");
        }
    }
}
