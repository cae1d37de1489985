//! Issue 16, item 3: a member holding the cluster secret cannot declare
//! another node down by gossiping a copy of it. The attacker is a crafted
//! peer in this test: raw chitchat over manta's sealed transport (same
//! secret, same cluster id), no manta membership code on its side.
//!
//! It first gossips as itself to learn node X's state (every key, X's
//! signature included), then runs a second chitchat whose identity is X's
//! (node id, generation) at another gossip address, with exactly X's keys,
//! lets it gossip, and stops it so that it goes dead in A's failure
//! detector. Before the fix the signature did not cover the gossip address,
//! so the copy verified, and A's dedup kept the first copy of a generation
//! in chitchat's order: A reported X down and dropped its mesh connection.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion,
    spawn_chitchat,
};
use manta_actors::{Actor, ActorError, ActorSystem, Context, Message, ReplyTo};
use manta_cluster::seal::{Sealer, cluster_id};
use manta_cluster::{
    ClusterSecret, Member, MemberEvent, MemberState, Node, NodeConfig, SealedTransport,
};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;

use crate::{DEADLINE, wait_view};

const GOSSIP: Duration = Duration::from_millis(100);

/// Membership's replay window (`MembershipConfig::new`'s default, which
/// `Node` keeps).
const REPLAY_WINDOW_MS: u64 = 30_000;

struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[derive(Debug, Serialize, Deserialize, Message)]
#[message(name = "manta.test.ForgedGossipPing")]
enum Ping {
    Get(ReplyTo<u64>),
}

struct Pong;

impl Actor for Pong {
    type Msg = Ping;
    async fn handle(&mut self, msg: Ping, _: &mut Context<Ping>) -> Result<(), ActorError> {
        let Ping::Get(r) = msg;
        r.send(42);
        Ok(())
    }
}

/// Raw chitchat over manta's sealed transport, as a crafted peer runs it:
/// identity `id`, listening on `socket`, seeded with `seed`.
async fn raw_chitchat(
    secret: &ClusterSecret,
    id: ChitchatId,
    socket: UdpSocket,
    seed: SocketAddr,
    keys: Vec<(String, String)>,
) -> (ChitchatHandle, SealedTransport) {
    let listen = socket.local_addr().unwrap();
    let transport =
        SealedTransport::new(Sealer::new(Some(secret)), REPLAY_WINDOW_MS).with_socket(socket);
    let config = ChitchatConfig {
        chitchat_id: id,
        cluster_id: cluster_id(Some(secret), "manta"),
        gossip_interval: GOSSIP,
        listen_addr: listen,
        seed_nodes: vec![seed.to_string()],
        failure_detector_config: FailureDetectorConfig {
            phi_threshold: 8.0,
            sampling_window_size: 1_000,
            max_interval: Duration::from_secs(2),
            initial_interval: GOSSIP,
            dead_node_grace_period: Duration::from_secs(300),
        },
        marked_for_deletion_grace_period: Duration::from_secs(300),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: ProtocolVersion::V0,
    };
    let handle = spawn_chitchat(config, keys, &transport).await.unwrap();
    (handle, transport)
}

/// Runs `step` on every datagram `transport` receives (or drops) until it
/// returns a value, within the deadline.
async fn on_gossip<T>(
    transport: &SealedTransport,
    what: &str,
    mut step: impl AsyncFnMut() -> Option<T>,
) -> T {
    let mut activity = transport.stats().activity();
    tokio::time::timeout(DEADLINE, async {
        loop {
            activity.borrow_and_update();
            if let Some(v) = step().await {
                return v;
            }
            activity.changed().await.expect("the transport is alive");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not reached within {DEADLINE:?}"))
}

fn find<'a>(view: &'a [Member], id: &str) -> &'a Member {
    view.iter()
        .find(|m| m.id == id)
        .unwrap_or_else(|| panic!("{id} is not in the view {view:#?}"))
}

/// A UDP socket on X's host whose address sorts before X's gossip address
/// in chitchat's map of node states (the order in which the old dedup kept
/// the first copy of a generation).
async fn socket_before(x: SocketAddr) -> UdpSocket {
    for port in 1024..x.port() {
        if let Ok(s) = UdpSocket::bind(SocketAddr::new(x.ip(), port)).await {
            return s;
        }
    }
    panic!("no free UDP port below {x} on its host");
}

#[tokio::test]
async fn a_member_cannot_declare_another_node_down_with_a_forged_copy_of_it() {
    // A sealed cluster of two real nodes, A (the seed) and X.
    let dir = std::env::temp_dir().join(format!("manta-forged-gossip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = Dir(dir.clone());
    let secret_file = dir.join("secret");
    let secret = ClusterSecret::write_new(&secret_file).unwrap();
    let mut nodes: Vec<Node> = Vec::new();
    for name in ["a", "x"] {
        let mut c = NodeConfig {
            name: name.to_owned(),
            key_file: Some(dir.join(format!("{name}.key"))),
            secret_file: Some(secret_file.clone()),
            seeds: nodes
                .first()
                .map(|n| vec![n.membership().gossip_addr().to_string()])
                .unwrap_or_default(),
            ..NodeConfig::default()
        };
        c.failure_detection.gossip_interval = GOSSIP;
        nodes.push(Node::start(c, ActorSystem::new()).await.unwrap());
    }
    let (a, x) = (&nodes[0], &nodes[1]);
    x.system().spawn_named("pong", Pong).await.unwrap();
    let x_id = x.identity().peer_id().to_string();
    let x_peer = x.identity().peer_id();
    let x_gossip = x.membership().gossip_addr();
    let a_gossip = a.membership().gossip_addr();
    // Both alive, X's actor published, and A's mesh connected to X.
    let view = wait_view(a.membership(), "x alive with its actor in a's view", |v| {
        v.len() == 2
            && v.iter().all(|m| m.state == MemberState::Alive)
            && v.iter()
                .any(|m| m.id == x_id && m.actors.iter().any(|n| n == "pong"))
    })
    .await;
    let x_seen = find(&view, &x_id).clone();
    assert_eq!(x_seen.gossip, x_gossip);
    assert!(a.mesh().connected().borrow().contains(&x_peer));
    assert_eq!(a.membership().rejected_nodes(), 0);

    // 1. The attacker gossips as itself and learns X's state, signature
    // included: keys exactly those A believes for X, plus the signature.
    let learner_socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let learner_id = ChitchatId::new("attacker", 1, learner_socket.local_addr().unwrap());
    let (learner, learner_transport) =
        raw_chitchat(&secret, learner_id, learner_socket, a_gossip, Vec::new()).await;
    let x_cid = ChitchatId::new(x_id.clone(), x_seen.generation, x_gossip);
    let x_keys: BTreeMap<String, String> = on_gossip(
        &learner_transport,
        "the attacker learns x's keys",
        async || {
            let keys: BTreeMap<String, String> = learner
                .with_chitchat(|c| {
                    c.node_state(&x_cid).map(|s| {
                        s.key_values()
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .collect()
                    })
                })
                .await?;
            let mut unsigned = keys.clone();
            unsigned.remove("sig")?;
            (unsigned == x_seen.keys).then_some(keys)
        },
    )
    .await;
    // A counts the attacker's own (unsigned) incarnation as rejected.
    on_gossip(
        &learner_transport,
        "a rejects the attacker's node",
        async || (a.membership().rejected_nodes() >= 1).then_some(()),
    )
    .await;
    let rejected_before = a.membership().rejected_nodes();
    let mut events = a.membership().subscribe();

    // 2. The forged copy: X's id, generation, keys and signature, at
    // another gossip address (one that sorts first), seeded to A.
    let forged_socket = socket_before(x_gossip).await;
    let forged_addr = forged_socket.local_addr().unwrap();
    let forged_cid = ChitchatId::new(x_id.clone(), x_seen.generation, forged_addr);
    let (forged, forged_transport) = raw_chitchat(
        &secret,
        forged_cid.clone(),
        forged_socket,
        a_gossip,
        x_keys.into_iter().collect(),
    )
    .await;
    // Throughout, A must see the real X: alive, at its own address.
    let check = |v: &[Member], when: &str| {
        let m = find(v, &x_id);
        assert_eq!(
            (m.state, m.gossip),
            (MemberState::Alive, x_gossip),
            "{when}: a reports x {:?} at {} (forged copy at {forged_addr})",
            m.state,
            m.gossip
        );
    };
    // Until A has taken it in (counted it rejected, or, without the fix,
    // shows X at the forged address), then a few more gossip rounds with A.
    on_gossip(
        &forged_transport,
        "a takes in the forged copy",
        async || {
            let counted = a.membership().rejected_nodes() > rejected_before;
            let shown = a
                .membership()
                .members()
                .iter()
                .any(|m| m.id == x_id && m.gossip == forged_addr);
            (counted || shown).then_some(())
        },
    )
    .await;
    let from = forged_transport.stats().received();
    on_gossip(
        &forged_transport,
        "ten more rounds of the forged copy, alive to the attacker",
        async || {
            let live = learner
                .with_chitchat(|c| c.live_nodes().any(|id| *id == forged_cid))
                .await;
            check(&a.membership().members(), "while the forged copy gossips");
            (live && forged_transport.stats().received() >= from + 10).then_some(())
        },
    )
    .await;

    // 3. The forged copy stops: it goes dead in every failure detector.
    forged.shutdown().await.unwrap();
    // A clock that is not a sleep: the attacker's own chitchat (the same
    // failure-detector settings, hearing the copy directly as A did)
    // declares the copy dead; then twenty more refreshes of A's view
    // (one per gossip round).
    let mut view = a.membership().view();
    tokio::time::timeout(DEADLINE, async {
        loop {
            check(&view.borrow_and_update(), "while the forged copy dies");
            let dead = learner
                .with_chitchat(|c| c.dead_nodes().any(|id| *id == forged_cid))
                .await;
            if dead {
                break;
            }
            view.changed().await.unwrap();
        }
        for _ in 0..20 {
            view.changed().await.unwrap();
            check(&view.borrow_and_update(), "after the forged copy died");
        }
    })
    .await
    .expect("the forged copy declared dead, then twenty rounds, within the deadline");

    // A still sees the real X, alive, at its own address; never reported
    // it down; counted the forged copy as a rejected incarnation; its mesh
    // is still connected to X, and an actor message to X goes through.
    let view = a.membership().members();
    let x_now = find(&view, &x_id);
    assert_eq!(x_now.state, MemberState::Alive);
    assert_eq!(x_now.gossip, x_gossip);
    assert_eq!(x_now.generation, x_seen.generation);
    while let Ok(ev) = events.try_recv() {
        if let MemberEvent::NodeDown(m) | MemberEvent::NodeLeft(m) = &ev {
            assert_ne!(m.id, x_id, "a reported x down: {ev:?}");
        }
    }
    assert_eq!(
        a.membership().rejected_nodes(),
        rejected_before + 1,
        "the forged copy counted as a rejected incarnation"
    );
    assert!(
        a.mesh().connected().borrow().contains(&x_peer),
        "a's mesh dropped x"
    );
    let pong = a.remoting().handle::<Ping>(x_peer, "pong");
    assert_eq!(pong.ask(Ping::Get, DEADLINE).await.unwrap(), 42);
    learner.shutdown().await.unwrap();
}
