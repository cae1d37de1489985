use std::net::SocketAddr;
use std::time::Duration;

use manta_cluster::{ClusterSecret, MemberEvent, MemberState, Membership, query_status};

use crate::{alive, config, wait_view};

#[tokio::test]
async fn three_nodes_join_through_a_seed_and_see_each_other() {
    let secret = ClusterSecret::generate();
    let a = Membership::start(config("a", Some(&secret), &[]))
        .await
        .unwrap();
    let seed = [a.gossip_addr()];
    let b = Membership::start(config("b", Some(&secret), &seed))
        .await
        .unwrap();
    let c = Membership::start(config("c", Some(&secret), &seed))
        .await
        .unwrap();
    for m in [&a, &b, &c] {
        let v = wait_view(m, "3 alive", |v| alive(v) == 3).await;
        let names: Vec<&str> = v.iter().map(|m| m.name.as_str()).collect();
        assert!(
            names.contains(&"a") && names.contains(&"b") && names.contains(&"c"),
            "{names:?}"
        );
    }
    // status without joining: authenticated with the secret.
    let st = query_status(&seed, Some(&secret), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(st.nodes.len(), 3);
    assert!(st.nodes.iter().all(|n| n.state == "alive"));
    // ...and refused (no answer) without it.
    let err = query_status(&seed, None, Duration::from_millis(600))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no answer"), "{err}");
    assert!(
        a.stats()
            .dropped()
            .get("unauthenticated")
            .copied()
            .unwrap_or(0)
            >= 1
    );
}

#[tokio::test]
async fn a_graceful_leave_is_seen_at_once_and_a_silent_node_goes_down() {
    let a = Membership::start(config("a", None, &[])).await.unwrap();
    let seed = [a.gossip_addr()];
    let b = Membership::start(config("b", None, &seed)).await.unwrap();
    let c = Membership::start(config("c", None, &seed)).await.unwrap();
    wait_view(&a, "3 alive", |v| alive(v) == 3).await;
    let mut events = a.subscribe();
    let b_id = b.node_id().to_owned();
    b.leave().await;
    let ev = next_event(&mut events, Duration::from_secs(5), |e| match e {
        MemberEvent::NodeLeft(m) if m.id == b_id => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(ev.state, MemberState::Left);
    // c stops gossiping without a word (as a killed node would).
    let c_id = c.node_id().to_owned();
    c.kill_for_test().await;
    let down = next_event(&mut events, Duration::from_secs(15), |e| match e {
        MemberEvent::NodeDown(m) if m.id == c_id => Some(m),
        _ => None,
    })
    .await;
    assert_eq!(down.state, MemberState::Dead);
    let v = a.members();
    assert_eq!(
        v.iter().find(|m| m.id == c_id).map(|m| m.state),
        Some(MemberState::Dead)
    );
    assert_eq!(
        v.iter().find(|m| m.id == b_id).map(|m| m.state),
        Some(MemberState::Left)
    );
}

#[tokio::test]
async fn a_node_with_the_wrong_secret_cannot_join() {
    let secret = ClusterSecret::generate();
    let a = Membership::start(config("a", Some(&secret), &[]))
        .await
        .unwrap();
    let seed = [a.gossip_addr()];
    let b = Membership::start(config("b", Some(&secret), &seed))
        .await
        .unwrap();
    let intruder = Membership::start(config("x", Some(&ClusterSecret::generate()), &seed))
        .await
        .unwrap();
    let open = Membership::start(config("o", None, &seed)).await.unwrap();
    wait_view(&a, "a sees b", |v| alive(v) == 2).await;
    // Let the intruders gossip at the seed for a while; count their drops.
    let before = a.stats().dropped_total();
    wait_stats(&a, |s| s.dropped_total() >= before + 5).await;
    assert_eq!(alive(&a.members()), 2, "{:#?}", a.members());
    assert!(a.members().iter().all(|m| m.name != "x" && m.name != "o"));
    assert_eq!(alive(&intruder.members()), 1);
    assert_eq!(alive(&open.members()), 1);
    let _ = b;
}

/// The first event `pick` accepts, within `within`.
async fn next_event<T>(
    events: &mut tokio::sync::broadcast::Receiver<MemberEvent>,
    within: Duration,
    pick: impl Fn(MemberEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(within, async {
        loop {
            if let Some(t) = pick(events.recv().await.unwrap()) {
                return t;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("expected event not seen within {within:?}"))
}

/// Waits, on the transport's activity signal, until `cond` holds.
async fn wait_stats(m: &Membership, cond: impl Fn(&manta_cluster::GossipStats) -> bool) {
    let stats = m.stats();
    let mut activity = stats.activity();
    tokio::time::timeout(crate::DEADLINE, async {
        while !cond(&stats) {
            activity.changed().await.expect("transport alive");
        }
    })
    .await
    .expect("condition within the deadline");
}

#[tokio::test]
async fn garbage_to_the_gossip_port_is_counted_and_dropped() {
    let a = Membership::start(config("a", None, &[])).await.unwrap();
    let b = Membership::start(config("b", None, &[a.gossip_addr()]))
        .await
        .unwrap();
    wait_view(&a, "2 alive", |v| alive(v) == 2).await;
    let s = tokio::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let target = a.gossip_addr();
    for len in [0usize, 1, 3, 33, 50, 500, 1400, 9000, 65_507] {
        let junk: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        s.send_to(&junk, target).await.unwrap();
    }
    // A plain (unsealed) chitchat magic number and header.
    s.send_to(&[0x53, 0xb0, 0x00, 0x00, 1, 2, 3], target)
        .await
        .unwrap();
    // Right version and kind, forged rest: fails authentication.
    for len in [100usize, 300, 60_000] {
        let mut forged: Vec<u8> = (0..len).map(|i| (i * 13) as u8).collect();
        forged[0] = manta_cluster::seal::VERSION;
        forged[1] = 0;
        s.send_to(&forged, target).await.unwrap();
    }
    wait_stats(&a, |s| s.dropped_total() >= 13).await;
    let d = a.stats().dropped();
    // Shorter than a header (50 bytes) and a tag: 0, 1, 3, 33, 50 and the
    // chitchat header; the rest have a wrong version byte.
    assert_eq!(d.get("truncated").copied(), Some(6), "{d:?}");
    assert_eq!(d.get("malformed").copied(), Some(4), "{d:?}");
    assert_eq!(d.get("unauthenticated").copied(), Some(3), "{d:?}");
    // Still serving: membership unchanged and gossip flowing.
    let received = a.stats().received();
    wait_stats(&a, |s| s.received() > received + 3).await;
    assert_eq!(alive(&a.members()), 2);
    let _ = b;
}

#[tokio::test]
async fn a_crashed_gossip_task_is_restarted_as_a_new_generation() {
    let a = Membership::start(config("a", None, &[])).await.unwrap();
    let b = Membership::start(config("b", None, &[a.gossip_addr()]))
        .await
        .unwrap();
    wait_view(&b, "2 alive", |v| alive(v) == 2).await;
    let gen_before = b
        .members()
        .iter()
        .find(|m| m.id == a.node_id())
        .unwrap()
        .generation;
    a.crash_gossip_for_test().await;
    let a_id = a.node_id().to_owned();
    wait_view(&b, "a's new generation alive", |v| {
        v.iter()
            .any(|m| m.id == a_id && m.generation > gen_before && m.state == MemberState::Alive)
    })
    .await;
    assert_eq!(a.gossip_restarts(), 1);
}

#[tokio::test]
async fn a_plain_chitchat_instance_changes_nothing_in_any_view() {
    use chitchat::transport::UdpTransport;
    use chitchat::{
        ChitchatConfig, ChitchatId, FailureDetectorConfig, ProtocolVersion, spawn_chitchat,
    };
    let a = Membership::start(config("a", None, &[])).await.unwrap();
    let b = Membership::start(config("b", None, &[a.gossip_addr()]))
        .await
        .unwrap();
    wait_view(&a, "2 alive", |v| alive(v) == 2).await;
    let before: Vec<(String, u64)> = a
        .members()
        .iter()
        .map(|m| (m.id.clone(), m.generation))
        .collect();
    // An unsealed chitchat that knows the open cluster's id, announces
    // itself, and impersonates `a` with a newer generation and keys.
    let mut impostors = Vec::new();
    for (id, generation) in [
        ("ghost".to_owned(), 1u64),
        (a.node_id().to_owned(), u64::MAX / 2),
    ] {
        let listen = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let cc = ChitchatConfig {
            chitchat_id: ChitchatId::new(id, generation, listen),
            cluster_id: manta_cluster::seal::cluster_id(None, "manta"),
            gossip_interval: Duration::from_millis(50),
            listen_addr: listen,
            seed_nodes: vec![a.gossip_addr().to_string(), b.gossip_addr().to_string()],
            failure_detector_config: FailureDetectorConfig::default(),
            marked_for_deletion_grace_period: Duration::from_secs(60),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V0,
        };
        let keys = vec![
            ("name".to_owned(), "ghost".to_owned()),
            ("status".to_owned(), "left".to_owned()),
        ];
        impostors.push(spawn_chitchat(cc, keys, &UdpTransport).await.unwrap());
    }
    // Wait until both nodes have dropped a good number of their datagrams.
    wait_stats(&a, |s| {
        s.dropped().get("malformed").copied().unwrap_or(0) >= 10
    })
    .await;
    wait_stats(&b, |s| {
        s.dropped().get("malformed").copied().unwrap_or(0) >= 10
    })
    .await;
    for m in [&a, &b] {
        let now: Vec<(String, u64)> = m
            .members()
            .iter()
            .map(|m| (m.id.clone(), m.generation))
            .collect();
        assert_eq!(now, before, "a view changed");
        assert_eq!(alive(&m.members()), 2);
        assert!(m.members().iter().all(|x| x.name != "ghost"));
    }
    for h in impostors {
        h.abort();
    }
}

#[tokio::test]
async fn membership_events_reach_a_subscribed_actor() {
    use manta_actors::{Actor, ActorError, ActorSystem, Context, Message};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    enum Watch {
        Event(MemberEvent),
        Seen(manta_actors::ReplyTo<Vec<String>>),
    }
    impl Message for Watch {
        const NAME: &'static str = "manta.test.Watch";
        const DECODE: Option<manta_actors::wire::Decode<Self>> =
            Some(manta_actors::wire::decode::<Self>);
    }
    struct Watcher(Vec<String>, std::sync::Arc<tokio::sync::Notify>);
    impl Actor for Watcher {
        type Msg = Watch;
        async fn handle(&mut self, msg: Watch, _: &mut Context<Watch>) -> Result<(), ActorError> {
            match msg {
                Watch::Event(ev) => {
                    self.0.push(match ev {
                        MemberEvent::NodeUp(m) => format!("up {}", m.name),
                        MemberEvent::NodeDown(m) => format!("down {}", m.name),
                        MemberEvent::NodeLeft(m) => format!("left {}", m.name),
                    });
                    self.1.notify_one();
                }
                Watch::Seen(r) => {
                    r.send(self.0.clone());
                }
            }
            Ok(())
        }
    }

    let a = Membership::start(config("a", None, &[])).await.unwrap();
    let notify = std::sync::Arc::new(tokio::sync::Notify::new());
    let watcher = ActorSystem::new()
        .spawn(Watcher(Vec::new(), notify.clone()))
        .await
        .unwrap();
    a.subscribe_actor(watcher.clone(), Watch::Event);
    let b = Membership::start(config("b", None, &[a.gossip_addr()]))
        .await
        .unwrap();
    let seen = |want: &'static str| {
        let watcher = watcher.clone();
        let notify = notify.clone();
        async move {
            tokio::time::timeout(crate::DEADLINE, async {
                loop {
                    let seen = watcher.ask(Watch::Seen, crate::DEADLINE).await.unwrap();
                    if seen.iter().any(|s| s == want) {
                        return seen;
                    }
                    notify.notified().await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("`{want}` not delivered"))
        }
    };
    seen("up b").await;
    b.leave().await;
    let all = seen("left b").await;
    assert_eq!(all, ["up b", "left b"]);
}

/// A node config with a real identity: its id is the key's PeerId and it
/// signs its keys with it.
fn signed_config(
    name: &str,
    secret: &ClusterSecret,
    seeds: &[SocketAddr],
    key: &libp2p_identity::Keypair,
) -> manta_cluster::MembershipConfig {
    let mut c = config(name, Some(secret), seeds);
    c.node_id = key.public().to_peer_id().to_string();
    c.signer = Some(key.clone());
    c
}

#[tokio::test]
async fn a_member_cannot_rewrite_or_impersonate_another_node() {
    use libp2p_identity::Keypair;
    let secret = ClusterSecret::generate();
    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let mut ca = signed_config("a", &secret, &[], &ka);
    ca.keys.insert("roles".into(), "trainer".into());
    let a = Membership::start(ca).await.unwrap();
    let b = Membership::start(signed_config("b", &secret, &[a.gossip_addr()], &kb))
        .await
        .unwrap();
    let a_id = a.node_id().to_owned();
    wait_view(&b, "b sees a", |v| alive(v) == 2).await;
    // A signed update spreads: the new value arrives with its signature.
    a.set_key("roles", "trainer,server").await;
    wait_view(&b, "a's new roles", |v| {
        v.iter()
            .any(|m| m.id == a_id && m.roles == ["trainer", "server"])
    })
    .await;
    let a_gen = b
        .members()
        .iter()
        .find(|m| m.id == a_id)
        .unwrap()
        .generation;
    let mut events = b.subscribe();
    let (ra, rb) = (a.rejected_nodes(), b.rejected_nodes());

    // Two insiders with the cluster secret: one poses as a newer generation
    // of `a` (signing with its own key) and says it left; one joins under
    // its own id without signing at all.
    let mut posing = config("impostor", Some(&secret), &[b.gossip_addr()]);
    posing.node_id = a_id.clone();
    posing.signer = Some(Keypair::generate_ed25519());
    posing.keys.insert("roles".into(), "evil".into());
    posing.keys.insert("status".into(), "left".into());
    let posing = Membership::start(posing).await.unwrap();
    let mut unsigned = config("unsigned", Some(&secret), &[b.gossip_addr()]);
    unsigned.node_id = Keypair::generate_ed25519()
        .public()
        .to_peer_id()
        .to_string();
    let unsigned = Membership::start(unsigned).await.unwrap();
    let b2 = b.clone();
    wait_stats(&b, move |_| b2.rejected_nodes() >= rb + 2).await;
    let a2 = a.clone();
    wait_stats(&a, move |_| a2.rejected_nodes() > ra).await;

    for (who, m) in [("a", &a), ("b", &b)] {
        let v = m.members();
        assert_eq!(alive(&v), 2, "{who}'s view: {v:#?}");
        let seen_a = v.iter().find(|m| m.id == a_id).unwrap();
        assert_eq!(seen_a.name, "a", "{who}'s view: {v:#?}");
        assert_eq!(seen_a.generation, a_gen, "{who}'s view: {v:#?}");
        assert_eq!(seen_a.state, MemberState::Alive, "{who}'s view: {v:#?}");
        assert_eq!(seen_a.roles, ["trainer", "server"], "{who}'s view: {v:#?}");
        assert!(v.iter().all(|m| m.name == "a" || m.name == "b"), "{v:#?}");
        assert!(v.iter().all(|m| !m.keys.contains_key("sig")), "{v:#?}");
    }
    // Nothing about `a` reached b's subscribers.
    while let Ok(ev) = events.try_recv() {
        let (MemberEvent::NodeUp(m) | MemberEvent::NodeDown(m) | MemberEvent::NodeLeft(m)) = ev;
        assert_ne!(m.id, a_id, "an event about a: {m:#?}");
    }

    // A real restart of a's gossip is a new generation, signed anew.
    a.crash_gossip_for_test().await;
    wait_view(&b, "a's new generation alive", |v| {
        v.iter().any(|m| {
            m.id == a_id && m.generation > a_gen && m.name == "a" && m.state == MemberState::Alive
        })
    })
    .await;
    drop((posing, unsigned));
}
