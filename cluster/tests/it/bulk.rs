//! The bulk lane (issue 17): nodes in one process, each with its own actor
//! system, real gossip, a real mesh and real lane connections on 127.0.0.1.
//! Strangers and insiders speak to the lane port over plain TCP sockets.

use std::time::Duration;

use manta_actors::bytes::Bytes;
use manta_actors::{Actor, ActorError, ActorSystem, AskError, Context, Message, ReplyTo};
use manta_cluster::bulk::{LaneSecrets, RECORD_HEADER, RecordSealer, Side, lane_keys};
use manta_cluster::{ClusterSecret, LaneUse, MAX_FRAME, Node, NodeConfig};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{DEADLINE, wait_view};

#[derive(Debug, Serialize, Deserialize)]
enum Load {
    /// A numbered payload.
    Put(u64, ByteBuf),
    /// The same, answered with the bytes stored so far.
    PutGet(u64, ByteBuf, ReplyTo<u64>),
    /// Answers `n` bytes of [`pattern`] shifted by `shift`.
    Fetch(usize, u8, ReplyTo<ByteBuf>),
    /// Messages taken, out of order, bytes, checksum.
    Check(ReplyTo<(u64, u64, u64, u64)>),
    /// Two payloads that arrive as slices of the message's buffer: kept
    /// (not dropped), answered with their checksums and the distance from
    /// the end of the first to the start of the second in memory.
    Pair(
        #[serde(with = "manta_actors::shared_bytes")] Bytes,
        #[serde(with = "manta_actors::shared_bytes")] Bytes,
        ReplyTo<(u64, u64, i64)>,
    ),
    /// The checksums of every payload kept by `Pair`, now.
    Kept(ReplyTo<Vec<u64>>),
    /// Answers a pair of `n`-byte payloads (shifts 1 and 2).
    FetchPair(usize, ReplyTo<SharedPair>),
    /// `PutGet` with a payload encoded a byte at a time (no
    /// `serde_bytes`): too many serializer calls to be produced lazily, so
    /// it goes on the lane as records encoded when it was sent.
    PutBytewise(u64, Vec<u8>, ReplyTo<u64>),
    /// `PutGet` with a payload that stops encoding after a few passes.
    PutFlaky(u64, Flaky, ReplyTo<u64>),
}

/// A byte string that encodes `passes` times, then fails: a message whose
/// encoding changes after it was sent (interior mutability).
#[derive(Debug)]
struct Flaky {
    passes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    data: ByteBuf,
}

impl Serialize for Flaky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use std::sync::atomic::Ordering;
        let left = self.passes.load(Ordering::SeqCst);
        if left == 0 {
            return Err(serde::ser::Error::custom("flaky: no passes left"));
        }
        self.passes.store(left - 1, Ordering::SeqCst);
        self.data.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Flaky {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Flaky {
            passes: Default::default(),
            data: ByteBuf::deserialize(d)?,
        })
    }
}

/// Two byte payloads decoded as slices of the buffer they arrived in.
#[derive(Debug, Serialize, Deserialize)]
struct SharedPair {
    #[serde(with = "manta_actors::shared_bytes")]
    a: Bytes,
    #[serde(with = "manta_actors::shared_bytes")]
    b: Bytes,
}

/// How far `b` starts after the end of `a` in memory: a few bytes (the
/// length of `b`) when both are slices of one buffer.
fn gap(a: &[u8], b: &[u8]) -> i64 {
    b.as_ptr() as i64 - (a.as_ptr() as i64 + a.len() as i64)
}

impl Message for Load {
    const NAME: &'static str = "manta.test.Load";
    const DECODE: Option<manta_actors::wire::Decode<Self>> =
        Some(manta_actors::wire::decode::<Self>);
}

#[derive(Default)]
struct Sink {
    kept: Vec<Bytes>,
    next: u64,
    taken: u64,
    out_of_order: u64,
    bytes: u64,
    sum: u64,
}

impl Sink {
    fn take(&mut self, n: u64, b: &[u8]) {
        if n != self.next {
            self.out_of_order += 1;
        }
        self.next = n + 1;
        self.taken += 1;
        self.bytes += b.len() as u64;
        self.sum = self.sum.wrapping_add(checksum(b));
    }
}

impl Actor for Sink {
    type Msg = Load;
    async fn handle(&mut self, msg: Load, _: &mut Context<Load>) -> Result<(), ActorError> {
        match msg {
            Load::Put(n, b) => self.take(n, &b),
            Load::PutGet(n, b, r) => {
                self.take(n, &b);
                r.send(self.bytes);
            }
            Load::PutFlaky(n, b, r) => {
                self.take(n, &b.data);
                r.send(self.bytes);
            }
            Load::PutBytewise(n, b, r) => {
                self.take(n, &b);
                r.send(self.bytes);
            }
            Load::Fetch(n, shift, r) => {
                r.send(ByteBuf::from(shifted(n, shift)));
            }
            Load::Check(r) => {
                r.send((self.taken, self.out_of_order, self.bytes, self.sum));
            }
            Load::Pair(a, b, r) => {
                r.send((checksum(&a), checksum(&b), gap(&a, &b)));
                self.kept.push(a);
                self.kept.push(b);
            }
            Load::Kept(r) => {
                r.send(self.kept.iter().map(|b| checksum(b)).collect());
            }
            Load::FetchPair(n, r) => {
                r.send(SharedPair {
                    a: shifted(n, 1).into(),
                    b: shifted(n, 2).into(),
                });
            }
        }
        Ok(())
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn shifted(n: usize, shift: u8) -> Vec<u8> {
    (0..n)
        .map(|i| ((i % 251) as u8).wrapping_add(shift))
        .collect()
}

fn checksum(v: &[u8]) -> u64 {
    v.iter().enumerate().fold(0u64, |acc, (i, b)| {
        acc.wrapping_add((i as u64 + 1) * u64::from(*b))
    })
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Nodes {
    nodes: Vec<Node>,
    systems: Vec<ActorSystem>,
    secret: Option<ClusterSecret>,
    _dir: TempDir,
}

/// `n` nodes (`n0`, `n1`, ...), each config changed by `change(i, c)`;
/// with a cluster secret or an open cluster. Each hosts a `Sink` named
/// `sink-i`; returns once every node sees every sink.
async fn cluster(
    tag: &str,
    n: usize,
    secret: bool,
    change: impl Fn(usize, &mut NodeConfig),
) -> Nodes {
    let dir = std::env::temp_dir().join(format!("manta-bulk-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("secret");
    ClusterSecret::write_new(&secret_file).unwrap();
    let mut nodes: Vec<Node> = Vec::new();
    let mut systems = Vec::new();
    for i in 0..n {
        let mut c = NodeConfig {
            name: format!("n{i}"),
            key_file: Some(dir.join(format!("n{i}.key"))),
            secret_file: secret.then(|| secret_file.clone()),
            seeds: nodes
                .first()
                .map(|a| vec![a.membership().gossip_addr().to_string()])
                .unwrap_or_default(),
            ..NodeConfig::default()
        };
        c.failure_detection.gossip_interval = Duration::from_millis(100);
        change(i, &mut c);
        let sys = ActorSystem::new();
        sys.spawn_named(&format!("sink-{i}"), Sink::default())
            .await
            .unwrap();
        nodes.push(Node::start(c, sys.clone()).await.unwrap());
        systems.push(sys);
    }
    for node in &nodes {
        wait_view(node.membership(), "every sink published", |v| {
            (0..n).all(|i| {
                v.iter().any(|m| {
                    m.state == manta_cluster::MemberState::Alive
                        && m.actors.iter().any(|a| *a == format!("sink-{i}"))
                })
            })
        })
        .await;
    }
    Nodes {
        nodes,
        systems,
        secret: secret.then(|| ClusterSecret::read(&secret_file).unwrap()),
        _dir: TempDir(dir),
    }
}

impl Nodes {
    fn sink(&self, from: usize, to: usize) -> manta_actors::ActorHandle<Load> {
        self.nodes[from]
            .where_is::<Load>(&format!("sink-{to}"))
            .unwrap()
    }

    /// Polls node `at`'s `manta status` answer until the lane it shows for
    /// node `to` is `want` (bounded by the deadline).
    async fn status_lane(&self, at: usize, to: usize, want: &str) {
        let addr = self.nodes[at].membership().gossip_addr();
        let id = self.peer(to).to_string();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut last = None;
        while tokio::time::Instant::now() < deadline {
            tick.tick().await;
            let st = manta_cluster::query_status_in(
                &[addr],
                self.secret.as_ref(),
                "manta",
                Duration::from_secs(2),
            )
            .await;
            if let Ok(st) = st {
                last = st
                    .nodes
                    .iter()
                    .find(|n| n.id == id)
                    .and_then(|n| n.lane.clone());
                if last.as_deref() == Some(want) {
                    return;
                }
            }
        }
        panic!("status of node {at} shows lane {last:?} for node {to}, not {want:?}");
    }

    fn peer(&self, i: usize) -> libp2p_identity::PeerId {
        self.nodes[i].identity().peer_id()
    }

    /// Waits until node `from` knows node `to`'s lane address.
    async fn lane_known(&self, from: usize, to: usize) {
        let (r, peer) = (self.nodes[from].remoting(), self.peer(to));
        let known = r
            .wait_counters(DEADLINE, |r| r.lane_use(peer) != LaneUse::MeshNoLane)
            .await;
        assert!(known, "node {from} never learnt node {to}'s lane address");
    }
}

async fn check(sink: &manta_actors::ActorHandle<Load>) -> (u64, u64, u64, u64) {
    sink.ask(Load::Check, DEADLINE).await.unwrap()
}

/// 1 MiB and 16 MiB asks and tells, a large reply, and a message just
/// under the 64 MiB limit, between two nodes with a secret: on the lane,
/// whole, in order; one over the limit is refused at the sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_messages_take_the_lane_whole_and_in_order_with_a_secret() {
    let c = cluster("sizes", 2, true, |_, _| {}).await;
    c.lane_known(1, 0).await;
    c.lane_known(0, 1).await;
    let sink = c.sink(1, 0);
    let mut sum = 0u64;
    let mut bytes = 0u64;
    let sizes = [1 << 20, 16 << 20, 10, MAX_FRAME - 4096, 1 << 20];
    for (i, n) in sizes.into_iter().enumerate() {
        let p = pattern(n);
        sum = sum.wrapping_add(checksum(&p));
        bytes += n as u64;
        let got = sink
            .ask(|r| Load::PutGet(i as u64, ByteBuf::from(p), r), DEADLINE)
            .await
            .unwrap();
        assert_eq!(got, bytes, "message {i} ({n} bytes)");
    }
    assert_eq!(check(&sink).await, (5, 0, bytes, sum));
    // A 16 MiB reply comes back on the other node's lane.
    let got = sink
        .ask(|r| Load::Fetch(16 << 20, 7, r), DEADLINE)
        .await
        .unwrap();
    assert!(
        got.into_vec() == shifted(16 << 20, 7),
        "16 MiB reply differs"
    );
    let (a, b) = (c.nodes[0].remoting(), c.nodes[1].remoting());
    assert!(b.lanes_opened() >= 1 && a.lanes_opened() >= 1);
    // A lane message counts once its acknowledgement is in, which may
    // come after the answer the ask waited for.
    assert!(
        b.wait_counters(DEADLINE, |r| r.lane_messages() >= 4).await,
        "{} lane messages",
        b.lane_messages()
    );
    assert!(
        a.wait_counters(DEADLINE, |r| r.lane_messages() >= 1).await,
        "the large reply went on a's lane"
    );
    // Byte strings of 1 MiB and more are produced as the lane writes them:
    // the 1 and 16 MiB asks, the one near the limit, and the 16 MiB reply.
    assert!(
        b.wait_counters(DEADLINE, |r| r.lane_lazy_messages() >= 4)
            .await,
        "{} produced lazily",
        b.lane_lazy_messages()
    );
    assert!(a.lane_lazy_messages() >= 1, "the large reply, lazily");
    assert_eq!(b.lane_use(c.peer(0)), LaneUse::Bulk);
    c.status_lane(1, 0, "bulk").await;
    assert_eq!((a.lane_bad_records(), b.lane_bad_records()), (0, 0));
    assert_eq!((a.bad_frames(), b.bad_frames()), (0, 0));
    // Over the limit: refused at the sender, message handed back.
    let err = sink
        .tell(Load::Put(9, ByteBuf::from(vec![0u8; MAX_FRAME + 1])))
        .unwrap_err();
    assert!(
        matches!(
            err.failure,
            manta_actors::SendFailure::TooLarge {
                limit: MAX_FRAME,
                ..
            }
        ),
        "{:?}",
        err.failure
    );
}

/// `shared_bytes` payloads of large messages are slices of the buffer
/// the message arrived in, on the lane and on the mesh (reassembled from
/// chunks), in messages and in replies; a kept payload is never
/// overwritten by later messages (its buffer is not reused while a slice
/// of it is held); small messages copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_byte_payloads_arrive_without_a_copy_and_stay_intact() {
    // Node 0 has no lane: what node 1 sends it goes over the mesh, as
    // chunks; node 2 sends node 1 on the lane.
    let c = cluster("shared", 3, true, |i, cfg| cfg.bulk.enabled = i != 0).await;
    c.lane_known(2, 1).await;
    let mut expected = Vec::new();
    for (from, to, how) in [(2, 1, "lane"), (1, 0, "mesh chunks")] {
        let sink = c.sink(from, to);
        for (i, n) in [(1usize, 4 << 20), (2, 16 << 20), (3, 1 << 20)] {
            let (a, b) = (shifted(n, i as u8), shifted(n / 2, i as u8 + 100));
            let want = (checksum(&a), checksum(&b));
            let (ca, cb, g) = sink
                .ask(|r| Load::Pair(a.into(), b.into(), r), DEADLINE)
                .await
                .unwrap();
            assert_eq!((ca, cb), want, "{how}: pair {i} arrived changed");
            assert!(
                (1..=10).contains(&g),
                "{how}: pair {i} was copied (second payload {g} bytes after the first)"
            );
            expected.push(want);
        }
        // Every kept payload is intact after the later messages.
        let kept = sink.ask(Load::Kept, DEADLINE).await.unwrap();
        let want: Vec<u64> = expected.iter().flat_map(|(a, b)| [*a, *b]).collect();
        assert_eq!(kept, want, "{how}: a kept payload was overwritten");
        expected.clear();
        // A large reply: slices of the buffer it arrived in, at the asker.
        let pair = sink
            .ask(|r| Load::FetchPair(8 << 20, r), DEADLINE)
            .await
            .unwrap();
        assert!(pair.a == shifted(8 << 20, 1) && pair.b == shifted(8 << 20, 2));
        assert!(
            (1..=10).contains(&gap(&pair.a, &pair.b)),
            "{how}: the reply's payloads were copied"
        );
        // A small one: copies (nothing to share), the same contents.
        let pair = sink
            .ask(|r| Load::FetchPair(100, r), DEADLINE)
            .await
            .unwrap();
        assert!(pair.a == shifted(100, 1) && pair.b == shifted(100, 2));
    }
    assert!(
        c.nodes[2]
            .remoting()
            .wait_counters(DEADLINE, |r| r.lane_messages() >= 3)
            .await
    );
    assert_eq!(c.nodes[0].remoting().lane_messages(), 0);
}

/// The encoded size of the frame a `Load::Put(seq, n bytes)` tell to
/// `to` makes (what the threshold is compared with).
fn frame_size(to: &str, seq: u64, n: usize) -> usize {
    let body = postcard::experimental::serialized_size(&Load::Put(seq, ByteBuf::from(vec![0; n])))
        .unwrap();
    let varint = |v: usize| postcard::experimental::serialized_size(&(v as u64)).unwrap();
    1 + varint(to.len())
        + to.len()
        + varint(Load::NAME.len())
        + Load::NAME.len()
        + varint(body)
        + body
}

/// Without a secret (an open cluster on loopback) the lane still takes a
/// ticket; frames one byte under the threshold stay on the mesh, at and
/// over it take the lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_threshold_splits_by_encoded_size_in_an_open_cluster() {
    const T: usize = 100_000;
    let c = cluster("threshold", 2, false, |_, c| c.bulk.threshold = T).await;
    c.lane_known(1, 0).await;
    let sink = c.sink(1, 0);
    let n = (T - 200..T)
        .find(|n| frame_size("sink-0", 1, *n) == T)
        .expect("a payload size whose frame is exactly the threshold");
    let b = c.nodes[1].remoting();
    let mut sum = 0u64;
    let cases = [
        (0u64, 1 << 20, true),
        (1, n - 1, false),
        (2, n, true),
        (3, n + 1, true),
    ];
    for (seq, size, on_lane) in cases {
        let before = b.lane_messages();
        let p = pattern(size);
        sum = sum.wrapping_add(checksum(&p));
        sink.tell(Load::Put(seq, ByteBuf::from(p))).unwrap();
        // Handled once a later ask to the same actor is answered.
        assert_eq!(check(&sink).await.0, seq + 1);
        let frame = frame_size("sink-0", seq, size);
        if on_lane {
            assert!(
                b.wait_counters(DEADLINE, |r| r.lane_messages() > before)
                    .await,
                "{size} bytes (frame {frame}) did not take the lane"
            );
        } else {
            assert_eq!(frame, T - 1);
            assert_eq!(b.lane_messages(), before, "frame {frame} took the lane");
        }
    }
    let (taken, disorder, _, got) = check(&sink).await;
    assert_eq!((taken, disorder, got), (4, 0, sum));
}

/// Three nodes: two send large messages to the third at once while it
/// sends to the first; each pair opens its own lanes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_exchange_large_messages_on_their_lanes() {
    let c = cluster("trio", 3, true, |_, _| {}).await;
    for (from, to) in [(0, 2), (1, 2), (2, 0)] {
        c.lane_known(from, to).await;
    }
    let send = |from: usize, to: usize| {
        let sink = c.sink(from, to);
        async move {
            let mut sum = 0u64;
            for i in 0..4u64 {
                let p = shifted(3 << 20, (from * 10) as u8 + i as u8);
                sum = sum.wrapping_add(checksum(&p));
                sink.ask(|r| Load::PutGet(i, ByteBuf::from(p), r), DEADLINE)
                    .await
                    .unwrap();
            }
            sum
        }
    };
    let (s02, s12, s20) = tokio::join!(send(0, 2), send(1, 2), send(2, 0));
    let (taken, _, bytes, sum) = check(&c.sink(2, 2)).await;
    assert_eq!(
        (taken, bytes, sum),
        (8, 8 * (3 << 20), s02.wrapping_add(s12))
    );
    let (taken, disorder, _, sum) = check(&c.sink(0, 0)).await;
    assert_eq!((taken, disorder, sum), (4, 0, s20));
    for i in 0..3 {
        assert!(c.nodes[i].remoting().lanes_opened() >= 1, "node {i}");
        assert_eq!(c.nodes[i].remoting().lane_bad_records(), 0);
    }
}

/// Small and large tells to one actor, mixed at random around the
/// threshold, the sender yielding now and then: they arrive in the order
/// sent whatever lane each took (small after large follow it on the lane;
/// large after small wait for the mesh barrier).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_small_and_large_messages_to_one_actor_keep_their_order() {
    const T: usize = 64 * 1024;
    let c = cluster("order", 2, true, |_, _| {}).await;
    c.lane_known(1, 0).await;
    let sink = c.sink(1, 0);
    let sizes = [8, 100, T - 100, T + 100, 300_000, 1 << 20, 40];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut sum = 0u64;
    let mut bytes = 0u64;
    for seq in 0..300u64 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let n = sizes[(state % sizes.len() as u64) as usize];
        let p = shifted(n, seq as u8);
        sum = sum.wrapping_add(checksum(&p));
        bytes += n as u64;
        let mut msg = Load::Put(seq, ByteBuf::from(p));
        loop {
            match sink.tell(msg) {
                Ok(()) => break,
                Err(e) if matches!(e.failure, manta_actors::SendFailure::Backpressure) => {
                    msg = e.message;
                    tokio::task::yield_now().await;
                }
                Err(e) => panic!("tell failed: {}", e.failure),
            }
        }
        if state % 3 == 0 {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(check(&sink).await, (300, 0, bytes, sum));
    assert!(
        c.nodes[1]
            .remoting()
            .wait_counters(DEADLINE, |r| r.lane_messages() > 0)
            .await
    );
}

/// Connects to `node`'s lane port.
async fn lane_socket(node: &Node) -> TcpStream {
    TcpStream::connect(node.remoting().bulk_addr().unwrap())
        .await
        .unwrap()
}

/// Whether the node closed `s` (read end or error) within the deadline;
/// what it wrote before (a lane's confirmation) is read and dropped.
async fn closed_by_node(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    tokio::time::timeout(DEADLINE, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

fn sealed(sealer: &mut RecordSealer, payload: &[u8]) -> Vec<u8> {
    let mut r = vec![0u8; RECORD_HEADER];
    r.extend_from_slice(payload);
    sealer.seal(&mut r).unwrap();
    r
}

/// The first record of a lane message numbered `seq` (no barrier)
/// announcing `len` bytes, sealed as the dialer of the lane `secrets`
/// opens.
fn announce(secrets: &LaneSecrets, seq: u64, len: u32) -> Vec<u8> {
    let (mut sealer, _) = lane_keys(secrets, Side::Dialer).unwrap();
    let mut head = Vec::new();
    head.extend_from_slice(&seq.to_be_bytes());
    head.extend_from_slice(&0u64.to_be_bytes());
    head.extend_from_slice(&len.to_be_bytes());
    head.push(manta_cluster::FRAME_VERSION);
    head.extend_from_slice(&[0; 1000]);
    sealed(&mut sealer, &head)
}

/// Strangers on the lane port: garbage, a made-up ticket, nothing at all
/// (held open past the deadline), a replayed ticket. Each is closed within
/// the deadline and counted; nothing reaches an actor; the lane still
/// serves members afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strangers_on_the_lane_port_are_closed_and_change_nothing() {
    let c = cluster("strangers", 2, true, |_, c| {
        c.bulk.ticket_deadline = Duration::from_millis(300)
    })
    .await;
    let a = &c.nodes[0];
    let r = a.remoting();
    let mut garbage = lane_socket(a).await;
    garbage.write_all(&[0xff; 4096]).await.unwrap();
    assert!(closed_by_node(&mut garbage).await, "garbage");
    let mut made_up = lane_socket(a).await;
    made_up
        .write_all(&rand::random::<[u8; 16]>())
        .await
        .unwrap();
    assert!(closed_by_node(&mut made_up).await, "made-up ticket");
    let mut silent = lane_socket(a).await;
    let started = std::time::Instant::now();
    assert!(closed_by_node(&mut silent).await, "slow stranger");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // A real ticket (as a member gets one over the mesh), used once: a
    // second connection presenting it is refused.
    let secrets = r.issue_lane_ticket_for_test(c.peer(1), 42).unwrap();
    let mut first = lane_socket(a).await;
    first.write_all(&secrets.ticket).await.unwrap();
    // The node took it: its confirmation (a sealed acknowledgement 0).
    let mut confirmation = [0u8; RECORD_HEADER + 8 + 16];
    tokio::time::timeout(DEADLINE, first.read_exact(&mut confirmation))
        .await
        .expect("confirmed in time")
        .unwrap();
    let mut replayed = lane_socket(a).await;
    replayed.write_all(&secrets.ticket).await.unwrap();
    assert!(closed_by_node(&mut replayed).await, "replayed ticket");
    assert!(
        r.wait_counters(DEADLINE, |r| r.lane_refused() >= 4).await,
        "refused: {}",
        r.lane_refused()
    );
    // The first connection holds a lane: a record sealed with another key
    // closes it (counted), and nothing was delivered.
    let (mut wrong, _) = lane_keys(&LaneSecrets::fresh(), Side::Dialer).unwrap();
    first
        .write_all(&sealed(&mut wrong, &[0; 64]))
        .await
        .unwrap();
    assert!(
        closed_by_node(&mut first).await,
        "a record that does not open"
    );
    assert!(
        r.wait_counters(DEADLINE, |r| r.lane_bad_records() == 1)
            .await
    );
    assert_eq!(check(&c.sink(0, 0)).await.0, 0, "nothing reached the sink");
    // Members are unaffected.
    c.lane_known(1, 0).await;
    let sink = c.sink(1, 0);
    let p = pattern(2 << 20);
    assert_eq!(
        sink.ask(|r| Load::PutGet(0, ByteBuf::from(p), r), DEADLINE)
            .await
            .unwrap(),
        2 << 20
    );
    assert!(
        c.nodes[1]
            .remoting()
            .wait_counters(DEADLINE, |r| r.lane_messages() >= 1)
            .await,
        "the member's message went on the lane"
    );
}

/// An insider with a valid ticket announces a 64 MiB message and stalls:
/// it is held within the peer's budget of partly received messages, and a
/// second lane announcing more than the budget allows is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_insider_cannot_hold_more_than_its_partial_budget_on_lanes() {
    let c = cluster("insider", 2, true, |_, c| {
        c.limits.partial_per_peer_mib = 100;
    })
    .await;
    let a = &c.nodes[0];
    let r = a.remoting();
    let s1 = r.issue_lane_ticket_for_test(c.peer(1), 1).unwrap();
    let mut one = lane_socket(a).await;
    one.write_all(&s1.ticket).await.unwrap();
    one.write_all(&announce(&s1, 1, 64 << 20)).await.unwrap();
    assert!(
        r.wait_counters(DEADLINE, |r| r.partial_bytes() == 64 << 20)
            .await,
        "held {}",
        r.partial_bytes()
    );
    let s2 = r.issue_lane_ticket_for_test(c.peer(1), 2).unwrap();
    let mut two = lane_socket(a).await;
    two.write_all(&s2.ticket).await.unwrap();
    two.write_all(&announce(&s2, 1, 64 << 20)).await.unwrap();
    assert!(closed_by_node(&mut two).await, "over the peer's budget");
    assert_eq!(r.partial_bytes(), 64 << 20);
    drop(one);
    assert!(
        r.wait_counters(DEADLINE, |r| r.partial_bytes() == 0).await,
        "released when the lane closed"
    );
}

/// A stranger keeps ~100 idle connections open to the lane port, opening
/// a new one whenever the node closes one (more than the 64 the node lets
/// wait for a ticket). Members' large asks still all arrive: a member's
/// connection pushes out the oldest idle one, and a connection the node
/// did not take is never written to (the dialer waits for the node's
/// confirmation), so at worst the messages go over the mesh.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stranger_holding_the_lane_port_cannot_make_large_asks_fail() {
    let c = cluster("lane-flood", 2, true, |_, _| {}).await;
    let a = c.nodes[0].remoting();
    let addr = a.bulk_addr().unwrap();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let flood = tokio::spawn(async move {
        let mut socks: Vec<TcpStream> = Vec::new();
        while !*stopped.borrow() {
            // Up to 100 open, at most 20 new ones a round.
            let mut opened = 0;
            while socks.len() < 100 && opened < 20 {
                opened += 1;
                match TcpStream::connect(addr).await {
                    Ok(s) => socks.push(s),
                    Err(_) => break,
                }
            }
            // Those the node closed go; the loop opens new ones.
            socks.retain(|s| {
                let mut b = [0u8; 1];
                match s.try_read(&mut b) {
                    Ok(0) => false,
                    Ok(_) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                }
            });
            if socks.is_empty() {
                // Nothing could connect: wait for the end.
                let _ = stopped.changed().await;
                continue;
            }
            // Until the node closes one of them (pushed out by a newer
            // one, or at the ticket deadline), or the test is done.
            let closed = futures::future::select_all(socks.iter().map(|s| Box::pin(s.readable())));
            tokio::select! {
                _ = closed => {}
                _ = stopped.changed() => {}
            }
        }
    });
    assert!(
        a.wait_counters(DEADLINE, |r| r.lane_refused() >= 50).await,
        "the flood is on: {} refused",
        a.lane_refused()
    );
    c.lane_known(1, 0).await;
    let sink = c.sink(1, 0);
    let mut total = 0u64;
    for i in 0..20u64 {
        let p = pattern(2 << 20);
        total += 2 << 20;
        let got = sink
            .ask(|r| Load::PutGet(i, ByteBuf::from(p), r), DEADLINE)
            .await;
        assert_eq!(got.map_err(|e| e.to_string()), Ok(total), "ask {i}");
    }
    stop.send_replace(true);
    flood.await.unwrap();
}

/// An insider with a valid ticket announces a 64 MiB message and goes
/// silent (as a node that lost power mid-transfer would, sending no FIN):
/// after `partial_expiry` without a byte the lane is closed and the budget
/// it took is given back. A lane whose first record stops after its header
/// is closed the same way (its record buffer held otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lane_message_that_stalls_is_dropped_and_its_lane_closed() {
    let c = cluster("stall", 2, true, |_, c| {
        c.limits.partial_expiry = Duration::from_millis(500);
    })
    .await;
    let a = &c.nodes[0];
    let r = a.remoting();
    let s1 = r.issue_lane_ticket_for_test(c.peer(1), 1).unwrap();
    let mut one = lane_socket(a).await;
    one.write_all(&s1.ticket).await.unwrap();
    one.write_all(&announce(&s1, 1, 64 << 20)).await.unwrap();
    assert!(
        r.wait_counters(DEADLINE, |r| r.partial_bytes() == 64 << 20)
            .await,
        "held {}",
        r.partial_bytes()
    );
    assert!(closed_by_node(&mut one).await, "the stalled lane is closed");
    assert!(
        r.wait_counters(DEADLINE, |r| r.partial_bytes() == 0).await,
        "the budget is given back: {}",
        r.partial_bytes()
    );
    // A record header announcing a megabyte, then nothing.
    let s2 = r.issue_lane_ticket_for_test(c.peer(1), 2).unwrap();
    let mut two = lane_socket(a).await;
    two.write_all(&s2.ticket).await.unwrap();
    let record = announce(&s2, 1, 64 << 20);
    two.write_all(&record[..RECORD_HEADER]).await.unwrap();
    assert!(closed_by_node(&mut two).await, "a record begun must end");
    assert!(
        r.wait_counters(DEADLINE, |r| r.lane_bad_records() == 2)
            .await,
        "both counted: {}",
        r.lane_bad_records()
    );
    // Members are unaffected.
    c.lane_known(1, 0).await;
    let p = pattern(2 << 20);
    assert_eq!(
        c.sink(1, 0)
            .ask(|r| Load::PutGet(0, ByteBuf::from(p), r), DEADLINE)
            .await
            .unwrap(),
        2 << 20
    );
}

/// A lane's sender declared down (here SIGKILL-like: its node stops with
/// no goodbye) sends nothing more: the lane it opened is closed with its
/// mesh connection, so no frame from a node that is not a member reaches
/// an actor.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lanes_of_a_node_declared_down_are_closed() {
    let c = cluster("lane-down", 2, true, |_, _| {}).await;
    let r = c.nodes[0].remoting();
    let s1 = r.issue_lane_ticket_for_test(c.peer(1), 1).unwrap();
    let mut held = lane_socket(&c.nodes[0]).await;
    held.write_all(&s1.ticket).await.unwrap();
    assert!(
        r.wait_counters(DEADLINE, |r| r.lanes_in() == 1).await,
        "the lane is open"
    );
    c.nodes[1].kill_for_test().await;
    assert!(
        closed_by_node(&mut held).await,
        "the lane of a node declared down is closed"
    );
    assert!(r.wait_counters(DEADLINE, |r| r.lanes_in() == 0).await);
}

/// A record tampered with on the way closes the lane; the sender opens a
/// new one and the message arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tampered_record_closes_the_lane_and_the_message_arrives_once() {
    let c = cluster("tamper", 2, true, |_, _| {}).await;
    c.lane_known(1, 0).await;
    let sink = c.sink(1, 0);
    let b = c.nodes[1].remoting();
    let warm = pattern(1 << 20);
    sink.ask(
        |r| Load::PutGet(0, ByteBuf::from(warm.clone()), r),
        DEADLINE,
    )
    .await
    .unwrap();
    b.tamper_next_lane_record_for_test();
    let p = pattern(3 << 20);
    let got = sink
        .ask(|r| Load::PutGet(1, ByteBuf::from(p.clone()), r), DEADLINE)
        .await
        .unwrap();
    assert_eq!(got, (1 << 20) + (3 << 20));
    let a = c.nodes[0].remoting();
    assert_eq!(a.lane_bad_records(), 1);
    assert!(b.lanes_opened() >= 2, "reopened: {}", b.lanes_opened());
    assert_eq!(
        check(&sink).await,
        (
            2,
            0,
            (1 << 20) + (3 << 20),
            checksum(&warm).wrapping_add(checksum(&p))
        )
    );
}

/// The lane's connection closed in the middle of a 16 MiB message: the
/// message is sent again on a new lane and taken once. Both kinds of lane
/// message: one produced as written (a byte string: produced again from
/// its value) and one encoded when sent (a byte-by-byte `Vec<u8>`: its
/// records unsealed and sent again).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lane_cut_in_the_middle_of_a_message_resends_it_without_a_duplicate() {
    // Each from its own node: the cut is of a node's next new lane.
    let c = cluster("cut", 3, true, |_, _| {}).await;
    let (mut bytes, mut sum) = (0u64, 0u64);
    for (i, lazy) in [(0u64, true), (1, false)] {
        let from = i as usize + 1;
        c.lane_known(from, 0).await;
        let b = c.nodes[from].remoting();
        let sink = c.sink(from, 0);
        let (resent, opened, lazies) = (b.lane_resent(), b.lanes_opened(), b.lane_lazy_messages());
        b.cut_next_lane_for_test(8 << 20);
        let p = pattern(16 << 20);
        let got = if lazy {
            sink.ask(|r| Load::PutGet(i, ByteBuf::from(p.clone()), r), DEADLINE)
                .await
        } else {
            sink.ask(|r| Load::PutBytewise(i, p.clone(), r), DEADLINE)
                .await
        }
        .unwrap();
        bytes += 16 << 20;
        sum = sum.wrapping_add(checksum(&p));
        assert_eq!(got, bytes, "lazy {lazy}");
        assert!(b.lane_resent() > resent, "lazy {lazy}: not resent");
        assert!(b.lanes_opened() > opened, "lazy {lazy}: not reopened");
        assert_eq!(
            b.lane_lazy_messages(),
            lazies + u64::from(lazy),
            "lazy {lazy}: produced as written or not"
        );
        // A small ask after it: still exactly one copy taken.
        assert_eq!(check(&sink).await, (i + 1, 0, bytes, sum));
    }
    assert_eq!(c.nodes[0].remoting().partial_bytes(), 0);
}

/// A message produced as the lane writes it whose encoding fails after
/// part of it was written (its value changed since it was sent): its ask
/// ends at once with the encoding error, the peer discards the part it
/// got, and the next message arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lazy_message_that_stops_encoding_fails_its_ask_and_the_lane_goes_on() {
    let c = cluster("flaky", 2, true, |_, _| {}).await;
    c.lane_known(1, 0).await;
    let b = c.nodes[1].remoting();
    let sink = c.sink(1, 0);
    // Passes: the size, the count of serializer calls, the first window.
    let passes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(3));
    let flaky = Flaky {
        passes: std::sync::Arc::clone(&passes),
        data: ByteBuf::from(pattern(4 << 20)),
    };
    let started = tokio::time::Instant::now();
    let err = sink
        .ask(|r| Load::PutFlaky(0, flaky, r), DEADLINE)
        .await
        .unwrap_err();
    match &err {
        AskError::Encode(c) => assert_eq!(c.type_name, "manta.test.Load"),
        other => panic!("not the encoding error: {other}"),
    }
    assert!(
        started.elapsed() < DEADLINE,
        "failed at once, not at its timeout"
    );
    assert_eq!(b.lane_lazy_messages(), 0);
    let p = pattern(2 << 20);
    let got = sink
        .ask(|r| Load::PutGet(0, ByteBuf::from(p.clone()), r), DEADLINE)
        .await
        .unwrap();
    assert_eq!(got, 2 << 20);
    assert_eq!(check(&sink).await, (1, 0, 2 << 20, checksum(&p)));
    assert!(b.lanes_opened() >= 2, "the cut lane was replaced");
    assert_eq!(c.nodes[0].remoting().partial_bytes(), 0);
}

/// `bulk.enabled = false` on one node: large messages to and from it go
/// over the mesh; between two nodes with the lane off, too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_lane_off_large_messages_go_over_the_mesh() {
    let c = cluster("off", 3, true, |i, c| c.bulk.enabled = i != 0).await;
    c.lane_known(2, 1).await;
    assert!(c.nodes[0].remoting().bulk_addr().is_none());
    assert_eq!(c.nodes[0].remoting().lane_use(c.peer(1)), LaneUse::MeshOff);
    assert_eq!(
        c.nodes[1].remoting().lane_use(c.peer(0)),
        LaneUse::MeshNoLane
    );
    let p = pattern(4 << 20);
    for (from, to) in [(1, 0), (0, 1)] {
        let got = c
            .sink(from, to)
            .ask(|r| Load::PutGet(0, ByteBuf::from(p.clone()), r), DEADLINE)
            .await
            .unwrap();
        assert_eq!(got, 4 << 20);
    }
    let reply = c
        .sink(1, 0)
        .ask(|r| Load::Fetch(4 << 20, 3, r), DEADLINE)
        .await
        .unwrap();
    assert!(reply.into_vec() == shifted(4 << 20, 3));
    assert_eq!(c.nodes[0].remoting().lanes_opened(), 0);
    assert_eq!(c.nodes[1].remoting().lanes_opened(), 0);
    // Node 1 and 2 both have lanes: theirs is used.
    c.sink(2, 1)
        .ask(|r| Load::PutGet(1, ByteBuf::from(p.clone()), r), DEADLINE)
        .await
        .unwrap();
    assert_eq!(c.nodes[2].remoting().lane_use(c.peer(1)), LaneUse::Bulk);
}

/// A lane that cannot be opened (its port refuses connections): large
/// messages go over the mesh and arrive, in order with what follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lane_that_cannot_be_opened_falls_back_to_the_mesh() {
    let c = cluster("fallback", 2, true, |_, _| {}).await;
    c.lane_known(1, 0).await;
    let b = c.nodes[1].remoting();
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    b.set_lane_addr(c.peer(0), Some(closed));
    let sink = c.sink(1, 0);
    let big = pattern(3 << 20);
    sink.tell(Load::Put(0, ByteBuf::from(big.clone()))).unwrap();
    sink.tell(Load::Put(1, ByteBuf::from(vec![5; 10]))).unwrap();
    let got = sink
        .ask(|r| Load::PutGet(2, ByteBuf::from(big.clone()), r), DEADLINE)
        .await
        .unwrap();
    assert_eq!(got, 2 * (3 << 20) + 10);
    assert_eq!(check(&sink).await.1, 0, "in order");
    assert_eq!(b.lane_fallbacks(), 1);
    assert_eq!(b.lane_use(c.peer(0)), LaneUse::MeshFallback);
    c.status_lane(1, 0, "mesh (lane failed)").await;
    assert_eq!(b.lane_messages(), 0);
}

/// A node killed (gossip, mesh and lanes stop at once, as with `kill -9`)
/// in the middle of a 16 MiB transfer: the ask ends with `node down`. The
/// transfer is held in its middle for sure: an insider's announced message
/// holds the receiver's whole budget of partly received messages, so the
/// 16 MiB message waits after its first record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_during_a_transfer_ends_its_asks_with_node_down() {
    let c = cluster("kill", 2, true, |_, c| {
        c.limits.partial_per_node_mib = 64;
    })
    .await;
    c.lane_known(1, 0).await;
    let a = c.nodes[0].remoting();
    let s1 = a.issue_lane_ticket_for_test(c.peer(1), 1).unwrap();
    let mut holder = lane_socket(&c.nodes[0]).await;
    holder.write_all(&s1.ticket).await.unwrap();
    holder.write_all(&announce(&s1, 1, 64 << 20)).await.unwrap();
    assert!(
        a.wait_counters(DEADLINE, |r| r.partial_bytes() == 64 << 20)
            .await
    );
    let sink = c.sink(1, 0);
    let b = c.nodes[1].remoting();
    let p = pattern(16 << 20);
    let ask = sink.ask(
        |r| Load::PutGet(0, ByteBuf::from(p), r),
        Duration::from_secs(60),
    );
    let kill = async {
        assert!(b.wait_counters(DEADLINE, |r| r.lanes_opened() >= 1).await);
        c.nodes[0].kill_for_test().await;
    };
    let (answer, ()) = tokio::join!(ask, kill);
    assert!(
        matches!(
            answer,
            Err(AskError::NoReply(Some(manta_actors::ExitReason::NodeDown(
                _
            ))))
        ),
        "expected node down, got {:?}",
        answer.map_err(|e| e.to_string())
    );
    drop(holder);
    let _ = &c.systems;
}

/// A member cuts a lane message into 16-byte records and writes them in
/// odd-sized pieces: the node reads them back to back, opens each where it
/// lies (the records' overhead far beyond the buffer's slack, so the
/// unopened bytes are moved down on the way) and the actor gets the
/// message once, whole; the acknowledgement comes back on the lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_in_tiny_records_and_torn_writes_arrives_whole() {
    let c = cluster("tiny", 2, true, |_, _| {}).await;
    let a = &c.nodes[0];
    let s = a
        .remoting()
        .issue_lane_ticket_for_test(c.peer(1), 1)
        .unwrap();
    let body = pattern(60_000);
    let msg = postcard::to_allocvec(&Load::Put(0, ByteBuf::from(body.clone()))).unwrap();
    let frame = manta_cluster::fuzzing::tell_on_the_wire("sink-0", <Load as Message>::NAME, &msg);
    let mut plain = Vec::new();
    plain.extend_from_slice(&1u64.to_be_bytes()); // seq
    plain.extend_from_slice(&0u64.to_be_bytes()); // no barrier
    plain.extend_from_slice(&frame);
    let (mut sealer, mut opener) = lane_keys(&s, Side::Dialer).unwrap();
    let mut wire = Vec::new();
    // The first record holds the head and the length; the rest 16 bytes
    // each: 3,700 records, 74 KB of overhead.
    let (first, rest) = plain.split_at(64);
    wire.extend_from_slice(&sealed(&mut sealer, first));
    for piece in rest.chunks(16) {
        wire.extend_from_slice(&sealed(&mut sealer, piece));
    }
    let mut sock = lane_socket(a).await;
    sock.write_all(&s.ticket).await.unwrap();
    let mut at = 0;
    let mut step = 1;
    while at < wire.len() {
        let to = (at + step).min(wire.len());
        sock.write_all(&wire[at..to]).await.unwrap();
        at = to;
        step = step * 7 % 65_521 + 1;
    }
    // The lane's confirmation (acknowledgement 0: the ticket was taken),
    // then the acknowledgement: a record holding the message's number.
    for want in [0u64, 1] {
        let mut h = [0u8; RECORD_HEADER];
        tokio::time::timeout(DEADLINE, sock.read_exact(&mut h))
            .await
            .expect("ack in time")
            .unwrap();
        let mut ack = vec![0u8; opener.announced(h).unwrap() + 16];
        sock.read_exact(&mut ack).await.unwrap();
        assert_eq!(opener.open(h, &mut ack).unwrap(), want.to_be_bytes());
    }
    assert_eq!(
        check(&c.sink(1, 0)).await,
        (1, 0, body.len() as u64, checksum(&body))
    );
    assert_eq!(a.remoting().partial_bytes(), 0);
}
