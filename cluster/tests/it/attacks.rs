//! Issue 16: what a member holding the cluster secret can still try. Each
//! attack is carried out by a real node of the cluster (a crafted peer: it
//! joined with the secret, then writes frames of its own making on a raw
//! actor stream over the authenticated mesh).

use std::sync::Arc;
use std::time::Duration;

use futures::AsyncWriteExt;
use manta_actors::{Actor, ActorError, ActorSystem, Context, Message, ReplyTo};
use manta_cluster::{ClusterSecret, MemberState, Node, NodeConfig, Remoting};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::{DEADLINE, wait_view};

const MIB: usize = 1 << 20;

struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Nodes `names` of one sealed cluster (the first is the seed), each with
/// `tune` applied to its config.
async fn cluster(tag: &str, names: &[&str], tune: impl Fn(&mut NodeConfig)) -> (Vec<Node>, Dir) {
    let dir = std::env::temp_dir().join(format!("manta-attack-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    ClusterSecret::write_new(&secret).unwrap();
    let mut nodes: Vec<Node> = Vec::new();
    for name in names {
        let mut c = NodeConfig {
            name: (*name).to_owned(),
            key_file: Some(dir.join(format!("{name}.key"))),
            secret_file: Some(secret.clone()),
            seeds: nodes
                .first()
                .map(|n| vec![n.membership().gossip_addr().to_string()])
                .unwrap_or_default(),
            ..NodeConfig::default()
        };
        c.failure_detection.gossip_interval = Duration::from_millis(100);
        tune(&mut c);
        nodes.push(Node::start(c, ActorSystem::new()).await.unwrap());
    }
    for n in &nodes {
        wait_view(n.membership(), "every node alive", |v| {
            v.iter().filter(|m| m.state == MemberState::Alive).count() == names.len()
        })
        .await;
    }
    (nodes, Dir(dir))
}

/// A raw actor stream from `from` to `to`, once the mesh connects them.
async fn raw_stream(from: &Node, to: &Node) -> libp2p::Stream {
    let peer = to.identity().peer_id();
    tokio::time::timeout(DEADLINE, async {
        loop {
            match from.remoting().raw_stream_for_test(peer).await {
                Ok(s) => return s,
                Err(_) => {
                    let mut c = from.mesh().connected();
                    if !c.borrow_and_update().contains(&peer) {
                        let _ = c.changed().await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
    })
    .await
    .expect("a raw stream to a member")
}

async fn wait(node: &Node, what: &str, done: impl Fn(&Remoting) -> bool) {
    assert!(
        node.remoting().wait_counters(DEADLINE, done).await,
        "timed out waiting for {what}"
    );
}

#[derive(Debug, Serialize, Deserialize, Message)]
#[message(name = "manta.test.Held")]
enum Held {
    Hold(ReplyTo<i64>),
    Release(i64),
    Get(ReplyTo<i64>),
}

/// Keeps the reply of `Hold` until `Release`.
struct Holder {
    held: Option<ReplyTo<i64>>,
    holding: Arc<Notify>,
}

fn holder(holding: &Arc<Notify>) -> Holder {
    Holder {
        held: None,
        holding: Arc::clone(holding),
    }
}

impl Actor for Holder {
    type Msg = Held;
    async fn handle(&mut self, msg: Held, _: &mut Context<Held>) -> Result<(), ActorError> {
        match msg {
            Held::Hold(r) => {
                self.held = Some(r);
                self.holding.notify_one();
            }
            Held::Release(v) => {
                if let Some(r) = self.held.take() {
                    r.send(v);
                }
            }
            Held::Get(r) => {
                r.send(1);
            }
        }
        Ok(())
    }
}

/// Item 1: partly received messages are capped per peer whatever the number
/// of streams, and a stalled one expires; the member's ordinary traffic
/// still goes through.
#[tokio::test]
async fn a_member_cannot_make_a_node_hold_partial_messages_beyond_its_budget() {
    let (nodes, _dir) = cluster("partial", &["a", "m"], |c| {
        c.limits.partial_per_peer_mib = 64;
        c.limits.partial_expiry = Duration::from_millis(500);
    })
    .await;
    let (a, m) = (&nodes[0], &nodes[1]);
    let holding = Arc::new(Notify::new());
    a.system()
        .spawn_named("holder", holder(&holding))
        .await
        .unwrap();
    // The first chunk of a 64 MiB message on one stream: all of the
    // member's budget, declared, with 64 KiB actually sent.
    let mut first = raw_stream(m, a).await;
    let piece = vec![7u8; 64 * 1024];
    first
        .write_all(&Remoting::chunk_frame_for_test(1, 0, 1024, &piece))
        .await
        .unwrap();
    first.flush().await.unwrap();
    wait(a, "the first message in reassembly", |r| {
        r.partial_bytes() == 64 * MIB
    })
    .await;
    // A second one, on a second stream: over the peer's budget, refused.
    let mut second = raw_stream(m, a).await;
    second
        .write_all(&Remoting::chunk_frame_for_test(2, 0, 2, &piece))
        .await
        .unwrap();
    second.flush().await.unwrap();
    wait(a, "the second message refused", |r| {
        r.dropped_partials() >= 1
    })
    .await;
    assert!(a.remoting().bad_frames() >= 1, "the stream was closed");
    assert_eq!(a.remoting().partial_bytes(), 64 * MIB);
    // The member's ordinary traffic still reaches the node.
    let holder = m
        .remoting()
        .handle::<Held>(a.identity().peer_id(), "holder");
    assert_eq!(holder.ask(Held::Get, DEADLINE).await.unwrap(), 1);
    // The stalled first message expires although its stream stays open.
    wait(a, "the stalled message expired", |r| {
        r.dropped_partials() >= 2 && r.partial_bytes() == 0
    })
    .await;
    drop(first);
}

/// Item 2: a reply is taken only from the node the request went to. A third
/// member answers every plausible request id of the asking node; the ask
/// still gets the real reply and every forged one is counted.
#[tokio::test]
async fn a_reply_from_a_node_not_asked_is_dropped_and_counted() {
    let (nodes, _dir) = cluster("forge", &["a", "b", "m"], |_| {}).await;
    let (a, b, m) = (&nodes[0], &nodes[1], &nodes[2]);
    let holding = Arc::new(Notify::new());
    b.system()
        .spawn_named("holder", holder(&holding))
        .await
        .unwrap();
    let holder = a
        .remoting()
        .handle::<Held>(b.identity().peer_id(), "holder");
    let asked = {
        let holder = holder.clone();
        tokio::spawn(async move { holder.ask(Held::Hold, DEADLINE).await })
    };
    tokio::time::timeout(DEADLINE, holding.notified())
        .await
        .expect("the request reached b");
    // The forger's replies: 666 for every id a could have used.
    let forged = postcard::to_allocvec(&666i64).unwrap();
    let mut raw = raw_stream(m, a).await;
    for id in 0..4096u64 {
        raw.write_all(&Remoting::reply_frame_for_test(id, &forged))
            .await
            .unwrap();
    }
    raw.flush().await.unwrap();
    wait(a, "the forged reply counted", |r| r.forged_replies() >= 1).await;
    assert!(!asked.is_finished(), "a forged reply completed the ask");
    holder.tell(Held::Release(7)).unwrap();
    assert_eq!(asked.await.unwrap().unwrap(), 7);
    assert_eq!(
        a.remoting().bad_frames(),
        0,
        "well-formed frames, not bad ones"
    );
}

/// Item 4: watches of one actor asked for again and again cost one task.
#[tokio::test]
async fn repeated_watches_of_one_actor_cost_one_task() {
    let (nodes, _dir) = cluster("watch", &["a", "m"], |_| {}).await;
    let (a, m) = (&nodes[0], &nodes[1]);
    let holding = Arc::new(Notify::new());
    let h = a
        .system()
        .spawn_named("holder", holder(&holding))
        .await
        .unwrap();
    let mut raw = raw_stream(m, a).await;
    for _ in 0..2000 {
        raw.write_all(&Remoting::watch_frame_for_test("holder"))
            .await
            .unwrap();
        raw.write_all(&Remoting::watch_frame_for_test("nobody"))
            .await
            .unwrap();
    }
    // Last on the same stream, a watch of a second actor: once it is
    // served, every frame before it was read.
    let other = a
        .system()
        .spawn_named("other", holder(&holding))
        .await
        .unwrap();
    raw.write_all(&Remoting::watch_frame_for_test("other"))
        .await
        .unwrap();
    raw.flush().await.unwrap();
    wait(a, "both watches served", |r| r.served_watches() == 2).await;
    other.stop(manta_actors::ExitReason::Shutdown(None));
    wait(a, "the second watch ended", |r| r.served_watches() == 1).await;
    h.stop(manta_actors::ExitReason::Shutdown(None));
    wait(a, "the watch ended with the actor", |r| {
        r.served_watches() == 0
    })
    .await;
}

/// Item 7: `manta status` is no amplifier. A request without the node's
/// cookie gets a cookie no larger than itself; the view goes only to an
/// address that proved it receives (the cookie came back from it), within
/// a rate.
#[tokio::test]
async fn a_status_request_draws_no_more_than_its_size_until_the_sender_proves_its_address() {
    use manta_cluster::seal::{Kind, Opener, Sealer, now_ms};
    let (nodes, dir) = cluster("status", &["a"], |_| {}).await;
    let a = &nodes[0];
    let secret = ClusterSecret::read(&dir.0.join("secret")).unwrap();
    let sealer = Sealer::new(Some(&secret));
    let mut opener = Opener::new(sealer.clone(), 30_000);
    let target = a.membership().gossip_addr();
    let me = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let spoofed = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let id = [7u8; 16];
    let request = |cookie: [u8; 16]| {
        let mut plain = id.to_vec();
        plain.extend_from_slice(&cookie);
        let mut d = sealer.seal(Kind::StatusRequest, &plain, now_ms()).unwrap();
        assert_eq!(d.len(), 1);
        d.remove(0)
    };
    let mut buf = vec![0u8; 70_000];
    // Without a cookie: a cookie, in a datagram no larger than the request.
    let first = request([0; 16]);
    me.send_to(&first, target).await.unwrap();
    let (n, from) = tokio::time::timeout(DEADLINE, me.recv_from(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    assert!(
        n <= first.len(),
        "answer {n} bytes to a request of {}",
        first.len()
    );
    let (kind, body) = opener.accept(&buf[..n], from, now_ms()).unwrap().unwrap();
    assert_eq!(kind, Kind::StatusCookie);
    assert_eq!(&body[..16], &id);
    let mut cookie = [0u8; 16];
    cookie.copy_from_slice(&body[16..32]);
    // The cookie from another address (a spoofer that did not receive it):
    // still only a cookie.
    spoofed.send_to(&request(cookie), target).await.unwrap();
    let (n, from) = tokio::time::timeout(DEADLINE, spoofed.recv_from(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let (kind, _) = opener.accept(&buf[..n], from, now_ms()).unwrap().unwrap();
    assert_eq!(
        kind,
        Kind::StatusCookie,
        "a cookie from another address was taken"
    );
    // From the address it was given to: the view, bound to the request.
    me.send_to(&request(cookie), target).await.unwrap();
    let (n, from) = tokio::time::timeout(DEADLINE, me.recv_from(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let (kind, body) = opener.accept(&buf[..n], from, now_ms()).unwrap().unwrap();
    assert_eq!(kind, Kind::StatusReply);
    assert_eq!(&body[..16], &id);
    let view: serde_json::Value = serde_json::from_slice(&body[16..]).unwrap();
    assert!(view["nodes"].is_array());
    // Full answers are rate-limited per source: 40 requests at once get at
    // most two seconds' worth.
    for _ in 0..40 {
        me.send_to(&request(cookie), target).await.unwrap();
    }
    let stats = a.membership().stats();
    let mut activity = stats.activity();
    tokio::time::timeout(DEADLINE, async {
        while stats.dropped().get("rate_limited").copied().unwrap_or(0) < 24 {
            activity.changed().await.unwrap();
        }
    })
    .await
    .expect("requests over the rate dropped and counted");
}

#[derive(Debug, Serialize, Deserialize, Message)]
#[message(name = "manta.test.Bulk")]
enum Bulk {
    /// Blocks the actor until `Open`.
    Wait,
    Load(#[serde(with = "serde_bytes")] Vec<u8>, ReplyTo<usize>),
}

struct Slow {
    open: Arc<Notify>,
}

impl Actor for Slow {
    type Msg = Bulk;
    async fn handle(&mut self, msg: Bulk, _: &mut Context<Bulk>) -> Result<(), ActorError> {
        match msg {
            Bulk::Wait => self.open.notified().await,
            Bulk::Load(b, r) => {
                r.send(b.len());
            }
        }
        Ok(())
    }
}

/// Item 4: a member cannot grow a slow actor's mailbox without bound.
/// Requests past the actor's inbox budget are refused with backpressure at
/// once; those within it are answered once the actor gets to them.
#[tokio::test]
async fn a_member_cannot_grow_a_slow_actors_mailbox_without_bound() {
    let (nodes, _dir) = cluster("inbox", &["a", "m"], |c| c.limits.remote_inbox_mib = 8).await;
    let (a, m) = (&nodes[0], &nodes[1]);
    let open = Arc::new(Notify::new());
    let slow = a
        .system()
        .spawn_named(
            "slow",
            Slow {
                open: Arc::clone(&open),
            },
        )
        .await
        .unwrap();
    slow.tell(Bulk::Wait).unwrap();
    let remote = m.remoting().handle::<Bulk>(a.identity().peer_id(), "slow");
    const LOAD: usize = 256 << 10;
    // The first takes the empty inbox whatever its size, then 8 MiB.
    let fit = (8 << 20) / (LOAD + 1024);
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..fit + 4 {
        let (remote, done_tx) = (remote.clone(), done_tx.clone());
        tokio::spawn(async move {
            // 35 x 256 KiB fit the sender's own 64 MiB queue: every
            // answer comes from the serving node.
            let r = match remote
                .ask(|r| Bulk::Load(vec![1u8; LOAD], r), DEADLINE)
                .await
            {
                Ok(n) => Ok(n),
                Err(manta_actors::AskError::Rejected(w)) => Err(w.to_string()),
                Err(other) => Err(format!(
                    "other: {}",
                    other.to_string().chars().take(200).collect::<String>()
                )),
            };
            let _ = done_tx.send(r);
        });
    }
    // While the actor is stuck nothing is answered: the first four results
    // are the requests over its inbox budget, refused at once.
    for _ in 0..4 {
        let r = tokio::time::timeout(DEADLINE, done.recv())
            .await
            .expect("a refusal while the actor is blocked")
            .unwrap();
        assert_eq!(r, Err(manta_actors::WireError::Backpressure.to_string()));
    }
    // Once it moves, every request within the budget is answered.
    open.notify_one();
    for _ in 0..fit {
        let r = tokio::time::timeout(DEADLINE, done.recv())
            .await
            .expect("an answer once the actor moves")
            .unwrap();
        assert_eq!(r.unwrap(), LOAD);
    }
}

/// A member opening actor streams without end, each with a frame begun and
/// never finished (a length announcing a whole chunk, one byte short): the
/// node accepts at most `STREAMS_PER_PEER` of its streams at once (the rest
/// are dropped unaccepted and counted), closes a frame that gets no byte
/// for `partial_expiry`, and keeps serving the member's ordinary traffic.
#[tokio::test]
async fn a_member_cannot_hold_receive_buffers_on_streams_without_end() {
    let (nodes, _dir) = cluster("streams", &["a", "m"], |c| {
        // Long enough that no stalled frame is closed while the streams
        // are being opened.
        c.limits.partial_expiry = Duration::from_secs(3);
    })
    .await;
    let (a, m) = (&nodes[0], &nodes[1]);
    let holding = Arc::new(Notify::new());
    a.system()
        .spawn_named("holder", holder(&holding))
        .await
        .unwrap();
    let peer = a.identity().peer_id();
    let frame = (manta_cluster::CHUNK as u32 + 200).to_be_bytes();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..manta_cluster::STREAMS_PER_PEER + 8 {
        // Each try is one stream: accepted (acceptance byte read) or dropped.
        match m.remoting().raw_stream_for_test(peer).await {
            Ok(mut s) => {
                s.write_all(&frame).await.unwrap();
                s.write_all(&vec![1u8; manta_cluster::CHUNK]).await.unwrap();
                s.flush().await.unwrap();
                held.push(s);
            }
            Err(_) => refused += 1,
        }
    }
    assert!(
        held.len() <= manta_cluster::STREAMS_PER_PEER,
        "{} streams accepted",
        held.len()
    );
    assert!(refused >= 8, "{refused} refused");
    wait(a, "the streams over the bound counted", |r| {
        r.refused_streams() >= 8
    })
    .await;
    // Every stalled frame is closed after partial_expiry, freeing the
    // member's streams.
    wait(a, "the stalled frames closed", |r| {
        r.bad_frames() >= held.len() as u64
    })
    .await;
    // The member's ordinary traffic still reaches the node.
    let h = m.remoting().handle::<Held>(peer, "holder");
    assert_eq!(h.ask(Held::Get, DEADLINE).await.unwrap(), 1);
}
