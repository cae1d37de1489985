//! Location transparency: two nodes in one process (each with its own
//! actor system), real UDP gossip and a real libp2p mesh on 127.0.0.1.

use std::time::Duration;

use manta_actors::{
    Actor, ActorError, ActorSystem, AskError, Context, ExitReason, Kind, LookupError, Message,
    ReplyTo, SendFailure,
};
use manta_cluster::{ClusterSecret, Node, NodeConfig, SpawnOn};
use serde::{Deserialize, Serialize};

use crate::{DEADLINE, wait_view};

#[derive(Debug, Serialize, Deserialize, Message)]
#[message(name = "manta.test.Cmd")]
enum Cmd {
    Add(i64),
    AddGet(i64, ReplyTo<i64>),
    Get(ReplyTo<i64>),
    Fail,
    FailAsked(ReplyTo<i64>),
    /// Kept unanswered (by [`Holder`]).
    Hold(ReplyTo<i64>),
    /// The same, with a payload that makes it a large message.
    HoldBytes(Vec<u8>, ReplyTo<i64>),
}

/// Keeps the asks it gets with `Hold` unanswered; `Get` answers how many;
/// `Add` is ignored.
struct Holder(Vec<ReplyTo<i64>>);

impl Actor for Holder {
    type Msg = Cmd;
    async fn handle(&mut self, msg: Cmd, _: &mut Context<Cmd>) -> Result<(), ActorError> {
        match msg {
            Cmd::Hold(r) | Cmd::HoldBytes(_, r) => self.0.push(r),
            Cmd::Add(_) => {}
            Cmd::Get(r) => {
                r.send(self.0.len() as i64);
            }
            _ => return Err("holder: not a hold or a get".into()),
        }
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize, Message)]
#[message(name = "manta.test.Other")]
struct Other(String, ReplyTo<()>);

struct Counter(i64);

impl Actor for Counter {
    type Msg = Cmd;
    async fn handle(&mut self, msg: Cmd, _: &mut Context<Cmd>) -> Result<(), ActorError> {
        match msg {
            Cmd::Add(n) => self.0 += n,
            Cmd::AddGet(n, r) => {
                self.0 += n;
                r.send(self.0);
            }
            Cmd::Get(r) => {
                r.send(self.0);
            }
            Cmd::Fail | Cmd::FailAsked(_) | Cmd::Hold(_) | Cmd::HoldBytes(..) => {
                return Err("told to fail".into());
            }
        }
        Ok(())
    }
}

struct Pair {
    a: Node,
    b: Node,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn node_config(
    dir: &std::path::Path,
    name: &str,
    secret: &std::path::Path,
    seeds: Vec<String>,
) -> NodeConfig {
    let mut c = NodeConfig {
        name: name.to_owned(),
        key_file: Some(dir.join(format!("{name}.key"))),
        secret_file: Some(secret.to_owned()),
        seeds,
        ..NodeConfig::default()
    };
    c.failure_detection.gossip_interval = Duration::from_millis(100);
    c
}

async fn pair(tag: &str) -> (Pair, ActorSystem) {
    pair_with(tag, |_| {}).await
}

/// [`pair`] with both configs changed by `change`.
async fn pair_with(tag: &str, change: impl Fn(&mut NodeConfig)) -> (Pair, ActorSystem) {
    let dir = std::env::temp_dir().join(format!("manta-remote-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    ClusterSecret::write_new(&secret).unwrap();
    let sys_a = ActorSystem::new();
    let mut ca = node_config(&dir, "a", &secret, vec![]);
    change(&mut ca);
    let a = Node::start(ca, sys_a.clone()).await.unwrap();
    let seed = a.membership().gossip_addr().to_string();
    let mut cb = node_config(&dir, "b", &secret, vec![seed]);
    change(&mut cb);
    let b = Node::start(cb, ActorSystem::new()).await.unwrap();
    (
        Pair {
            a,
            b,
            _dir: TempDir(dir),
        },
        sys_a,
    )
}

async fn published(node: &Node, name: &str) {
    wait_view(node.membership(), "name published by a live member", |v| {
        v.iter().any(|m| {
            m.state == manta_cluster::MemberState::Alive && m.actors.iter().any(|a| a == name)
        })
    })
    .await;
}

#[tokio::test]
async fn named_lookup_tell_and_ask_across_nodes() {
    let (p, sys_a) = pair("ask").await;
    let local = sys_a.spawn_named("ledger", Counter(0)).await.unwrap();
    published(&p.b, "ledger").await;
    let remote = p.b.where_is::<Cmd>("ledger").unwrap();
    assert!(!remote.is_local());
    for _ in 0..100 {
        remote.tell(Cmd::Add(2)).unwrap();
    }
    // One stream per peer: the ask comes after every tell.
    assert_eq!(remote.ask(Cmd::Get, DEADLINE).await.unwrap(), 200);
    assert_eq!(local.ask(Cmd::Get, DEADLINE).await.unwrap(), 200);
    // The owning node finds its own actor locally.
    assert!(p.a.where_is::<Cmd>("ledger").unwrap().is_local());
    // An actor failing while handling a remote ask: the asker hears of it.
    match remote.ask(Cmd::FailAsked, DEADLINE).await {
        Err(AskError::NoReply(Some(ExitReason::Failed(m)))) => assert_eq!(m, "told to fail"),
        other => panic!("unexpected {other:?}"),
    }
}

/// A write that fails under a live peer (its connection closed, another one
/// is there or is dialled) goes out again on a fresh stream: the ask whose
/// request, or whose reply, hit the broken stream is answered, not left to
/// its timeout.
#[tokio::test]
async fn a_broken_actor_stream_is_replaced_and_the_failed_write_sent_again() {
    let (p, sys_a) = pair("reopen").await;
    sys_a.spawn_named("tally", Counter(0)).await.unwrap();
    published(&p.b, "tally").await;
    let remote = p.b.where_is::<Cmd>("tally").unwrap();
    assert_eq!(
        remote.ask(|r| Cmd::AddGet(1, r), DEADLINE).await.unwrap(),
        1
    );
    // The request's write fails (b's stream to a).
    p.b.remoting().fail_writes(0, 1);
    assert_eq!(
        remote.ask(|r| Cmd::AddGet(1, r), DEADLINE).await.unwrap(),
        2
    );
    assert_eq!(p.b.remoting().reopened_streams(), 1);
    // The reply's write fails (a's stream to b).
    p.a.remoting().fail_writes(0, 1);
    assert_eq!(
        remote.ask(|r| Cmd::AddGet(1, r), DEADLINE).await.unwrap(),
        3
    );
    assert_eq!(p.a.remoting().reopened_streams(), 1);
    // Tells after the reopen keep their order behind the retried write.
    p.b.remoting().fail_writes(0, 1);
    for _ in 0..50 {
        remote.tell(Cmd::Add(2)).unwrap();
    }
    assert_eq!(remote.ask(Cmd::Get, DEADLINE).await.unwrap(), 103);
    assert_eq!(p.b.remoting().reopened_streams(), 2);
}

type HeldAsk = tokio::task::JoinHandle<Result<i64, manta_actors::AskError<Cmd>>>;

/// Two nodes, a [`Holder`] on a, and an ask from b that it holds (written
/// on b's stream to a and handled there, never answered).
async fn held_ask(tag: &str) -> (Pair, manta_actors::ActorHandle<Cmd>, HeldAsk) {
    held_ask_with(tag, |_| {}, 0).await
}

/// Two nodes (both configs changed by `change`), a [`Holder`] on a, and
/// b's handle to it, which has answered once.
async fn holder_pair(
    tag: &str,
    change: impl Fn(&mut NodeConfig),
) -> (Pair, manta_actors::ActorHandle<Cmd>) {
    let (p, sys_a) = pair_with(tag, change).await;
    sys_a
        .spawn_named("holder", Holder(Vec::new()))
        .await
        .unwrap();
    published(&p.b, "holder").await;
    let remote = p.b.where_is::<Cmd>("holder").unwrap();
    assert_eq!(remote.ask(Cmd::Get, DEADLINE).await.unwrap(), 0);
    (p, remote)
}

/// [`held_ask`] with both configs changed by `change`; the held ask
/// carries `payload` bytes (a large message when above the chunk size).
async fn held_ask_with(
    tag: &str,
    change: impl Fn(&mut NodeConfig),
    payload: usize,
) -> (Pair, manta_actors::ActorHandle<Cmd>, HeldAsk) {
    let (p, remote) = holder_pair(tag, change).await;
    let held = {
        let remote = remote.clone();
        let hold = move |r| match payload {
            0 => Cmd::Hold(r),
            n => Cmd::HoldBytes(vec![7; n], r),
        };
        tokio::spawn(async move { remote.ask(hold, Duration::from_secs(60)).await })
    };
    // Asks are handled in order: once one answers 1, the hold was written
    // and is held.
    let until = std::time::Instant::now() + DEADLINE;
    while remote.ask(Cmd::Get, DEADLINE).await.unwrap() < 1 {
        assert!(std::time::Instant::now() < until, "never held");
    }
    (p, remote, held)
}

/// The held ask ends within the deadline with `NodeDown` naming the
/// stream that broke under it.
async fn failed_with_its_stream(held: HeldAsk) {
    let err = tokio::time::timeout(DEADLINE, held)
        .await
        .expect("the held ask ended")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            &err,
            manta_actors::AskError::NoReply(Some(manta_actors::ExitReason::NodeDown(why)))
                if why.contains("broke before the answer came")
        ),
        "{err:?}"
    );
}

/// An ask whose request went out on a stream that broke afterwards (a
/// later write failed) ends at once with `NodeDown` naming the broken
/// stream, not at its timeout: a write that returned only handed its bytes
/// to the multiplexer, and a connection that closed under them would leave
/// the ask unanswered for good. The failed write goes out again and is
/// answered.
#[tokio::test]
async fn an_ask_written_on_a_stream_that_then_breaks_fails_at_once() {
    let (p, remote, held) = held_ask("broken-after").await;
    p.b.remoting().fail_writes(0, 1);
    let started = std::time::Instant::now();
    assert_eq!(remote.ask(Cmd::Get, DEADLINE).await.unwrap(), 1);
    assert_eq!(p.b.remoting().reopened_streams(), 1);
    failed_with_its_stream(held).await;
    assert!(started.elapsed() < DEADLINE, "at once, not at its timeout");
}

/// An actor stream that the peer ends after a frame (as a connection that
/// closes under it, or a reader that closes it, would), with no write
/// after it: the writer, which also reads its one-way stream, sees the end
/// at once, fails the ask it wrote there and that is still unanswered,
/// and opens a new stream, which carries the next ask.
#[tokio::test]
async fn an_actor_stream_the_peer_ends_is_seen_at_once_without_a_further_write() {
    let (p, remote, held) = held_ask("ended").await;
    // a handles b's next frame, a tell, then ends the stream it came on.
    p.a.remoting().end_inbound_streams(1);
    let started = std::time::Instant::now();
    remote.tell(Cmd::Add(0)).unwrap();
    failed_with_its_stream(held).await;
    assert!(started.elapsed() < DEADLINE, "at once, not at its timeout");
    assert!(
        p.b.remoting()
            .wait_counters(DEADLINE, |r| r.reopened_streams() == 1)
            .await,
        "the writer opened a new stream"
    );
    // The held ask is still held by the actor; the new stream carries this.
    assert_eq!(remote.ask(Cmd::Get, DEADLINE).await.unwrap(), 1);
}

/// The same for a large ask that went out in chunks on the mesh stream
/// (the lane off): the writer remembers its reply id from its first
/// chunk, so it fails at once too instead of waiting out its timeout.
#[tokio::test]
async fn a_large_ask_in_chunks_on_a_stream_that_ends_fails_at_once() {
    let (p, remote, held) =
        held_ask_with("ended-large", |c| c.bulk.enabled = false, 256 * 1024).await;
    p.a.remoting().end_inbound_streams(1);
    let started = std::time::Instant::now();
    remote.tell(Cmd::Add(0)).unwrap();
    failed_with_its_stream(held).await;
    assert!(started.elapsed() < DEADLINE, "at once, not at its timeout");
    assert_eq!(remote.ask(Cmd::Get, DEADLINE).await.unwrap(), 1);
}

/// Large asks (chunks on the mesh, the lane off) whose stream cannot be
/// replaced: the one being written and the one queued behind it both fail
/// at once with `NodeDown`, not at their timeout.
#[tokio::test]
async fn large_asks_queued_on_a_stream_that_cannot_be_replaced_fail_at_once() {
    let (p, remote) = holder_pair("lost-large", |c| c.bulk.enabled = false).await;
    p.b.remoting().fail_writes(0, 100);
    let started = std::time::Instant::now();
    let asks: Vec<_> = (0..2)
        .map(|_| {
            let remote = remote.clone();
            tokio::spawn(async move {
                remote
                    .ask(
                        |r| Cmd::HoldBytes(vec![7; 256 * 1024], r),
                        Duration::from_secs(60),
                    )
                    .await
            })
        })
        .collect();
    for ask in asks {
        let err = tokio::time::timeout(DEADLINE, ask)
            .await
            .expect("the large ask ended")
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(
                &err,
                AskError::NoReply(Some(ExitReason::NodeDown(why)))
                    if why.contains("actor stream to it was lost")
            ),
            "{err:?}"
        );
    }
    assert!(
        started.elapsed() < DEADLINE,
        "at once, not at their timeout"
    );
    p.b.remoting().fail_writes(0, 0);
    assert_eq!(remote.ask(Cmd::Get, DEADLINE).await.unwrap(), 0);
}

/// libp2p-stream drops an inbound stream that arrives while its accept
/// queue (one slot) is full, as when several nodes open actor streams to
/// one node at once. The opener writes nothing until the peer accepted
/// the stream: it opens another, and no ask or tell is lost or repeated.
/// Such tries do not use up the few the writer makes on other failures
/// (eight drops here, more than those five).
#[tokio::test]
async fn an_actor_stream_dropped_before_it_was_accepted_is_opened_again_and_nothing_is_lost() {
    let (p, sys_a) = pair("dropped").await;
    sys_a.spawn_named("tally", Counter(0)).await.unwrap();
    published(&p.b, "tally").await;
    p.a.remoting().drop_inbound_streams(8);
    let remote = p.b.where_is::<Cmd>("tally").unwrap();
    for _ in 0..10 {
        remote.tell(Cmd::Add(1)).unwrap();
    }
    assert_eq!(
        remote.ask(|r| Cmd::AddGet(1, r), DEADLINE).await.unwrap(),
        11
    );
    assert_eq!(p.a.remoting().inbound_streams_to_drop(), 0);
    assert_eq!(p.b.remoting().reopened_streams(), 0, "not a broken stream");
}

/// A stream that cannot be replaced (every try to write fails, more than
/// the writer's retries): the ask whose request was not written fails at
/// once with `NodeDown` naming the lost stream, instead of waiting for its
/// timeout; the next ask opens a new stream and is answered.
#[tokio::test]
async fn an_ask_whose_request_cannot_be_written_fails_at_once_not_at_its_timeout() {
    let (p, sys_a) = pair("lost").await;
    sys_a.spawn_named("tally", Counter(0)).await.unwrap();
    published(&p.b, "tally").await;
    let remote = p.b.where_is::<Cmd>("tally").unwrap();
    assert_eq!(
        remote.ask(|r| Cmd::AddGet(1, r), DEADLINE).await.unwrap(),
        1
    );
    // The write and every retry fail.
    p.b.remoting().fail_writes(0, 10);
    let started = std::time::Instant::now();
    let err = remote
        .ask(|r| Cmd::AddGet(1, r), Duration::from_secs(60))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            manta_actors::AskError::NoReply(Some(manta_actors::ExitReason::NodeDown(why)))
                if why.contains("actor stream to it was lost")
        ),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "failed only after {:?}",
        started.elapsed()
    );
    // The injected failures are used up; a new stream carries the next.
    p.b.remoting().fail_writes(0, 0);
    assert_eq!(
        remote.ask(|r| Cmd::AddGet(1, r), DEADLINE).await.unwrap(),
        2
    );
}

/// Checks that the numbers it is told arrive in sequence.
struct Sequence {
    next: u64,
    out_of_order: u64,
    bytes: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum Seq {
    Put(u64, #[serde(with = "serde_bytes")] Vec<u8>),
    /// (next expected, out of order, bytes received)
    Check(ReplyTo<(u64, u64, u64)>),
}

impl Message for Seq {
    const NAME: &'static str = "manta.test.Seq";
    const DECODE: Option<manta_actors::wire::Decode<Self>> =
        Some(manta_actors::wire::decode::<Self>);
}

impl Actor for Sequence {
    type Msg = Seq;
    async fn handle(&mut self, msg: Seq, _: &mut Context<Seq>) -> Result<(), ActorError> {
        match msg {
            Seq::Put(n, pad) => {
                if n != self.next {
                    self.out_of_order += 1;
                }
                self.next = n + 1;
                self.bytes += pad.len() as u64;
            }
            Seq::Check(r) => {
                r.send((self.next, self.out_of_order, self.bytes));
            }
        }
        Ok(())
    }
}

/// Small frames in bursts of every length, some larger than one yamux write
/// (16 KiB), with the link going idle between bursts (an ask waits for its
/// reply) or not (the sender only yields): the writer batches whatever is
/// queued into one write, and the frames arrive in the order they were sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_frames_in_bursts_arrive_in_the_order_sent() {
    let (p, sys_a) = pair("order").await;
    sys_a
        .spawn_named(
            "seq",
            Sequence {
                next: 0,
                out_of_order: 0,
                bytes: 0,
            },
        )
        .await
        .unwrap();
    published(&p.b, "seq").await;
    let seq = p.b.where_is::<Seq>("seq").unwrap();
    let mut n = 0u64;
    let mut padding = 0u64;
    for round in 0..300u64 {
        for i in 0..(round % 40 + 1) {
            // Every seventh frame is 40 KiB: three yamux frames.
            let pad = if (round + i) % 7 == 0 { 40 << 10 } else { 8 };
            seq.tell(Seq::Put(n, vec![round as u8; pad])).unwrap();
            n += 1;
            padding += pad as u64;
        }
        if round % 3 == 0 {
            // The link goes idle.
            let (next, bad, _) = seq.ask(Seq::Check, DEADLINE).await.unwrap();
            assert_eq!((next, bad), (n, 0), "after round {round}");
        } else {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(
        seq.ask(Seq::Check, DEADLINE).await.unwrap(),
        (n, 0, padding)
    );
}

/// Small tells sent while a large tell to the same actor is on its way,
/// with the sender yielding between them so the large one finishes while
/// some small ones still wait behind it: none overtakes another (a small
/// frame that followed a large one onto the bulk lane counts as in flight
/// there, so the next small one follows it too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_tells_behind_a_large_one_keep_their_order() {
    let (p, sys_a) = pair("mixed-order").await;
    sys_a
        .spawn_named(
            "seq",
            Sequence {
                next: 0,
                out_of_order: 0,
                bytes: 0,
            },
        )
        .await
        .unwrap();
    published(&p.b, "seq").await;
    let seq = p.b.where_is::<Seq>("seq").unwrap();
    let mut n = 0u64;
    let mut padding = 0u64;
    for round in 0..150u64 {
        // A large tell (cut into chunks), retried while the bulk queue is
        // full...
        let large = 150 << 10;
        loop {
            match seq.tell(Seq::Put(n, vec![round as u8; large])) {
                Ok(()) => break,
                Err(e) if matches!(e.failure, SendFailure::Backpressure) => {
                    tokio::task::yield_now().await
                }
                Err(e) => panic!("tell failed: {}", e.failure),
            }
        }
        n += 1;
        padding += large as u64;
        // ...then small ones, the writer running between them.
        for _ in 0..(round % 6 + 1) {
            seq.tell(Seq::Put(n, vec![1; 8])).unwrap();
            n += 1;
            padding += 8;
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(
        seq.ask(Seq::Check, DEADLINE).await.unwrap(),
        (n, 0, padding)
    );
}

/// A stream that breaks in the middle of a chunked message (the bulk lane
/// off, so large messages are chunks on the mesh): the chunks already sent
/// are gone with it, the tail arriving on the fresh stream is dropped
/// quietly (not taken for garbage, which would close that stream too), and
/// the next messages get through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_cut_by_a_broken_stream_is_dropped_and_the_next_ones_arrive() {
    let (p, sys_a) = pair_with("cut", |c| c.bulk.enabled = false).await;
    sys_a.spawn_named("store", Store(0, 0)).await.unwrap();
    published(&p.b, "store").await;
    let store = p.b.where_is::<Blob>("store").unwrap();
    assert_eq!(
        store
            .ask(|r| Blob::PutGet(vec![1; 10], r), DEADLINE)
            .await
            .unwrap(),
        10
    );
    // 640 KiB: 10 chunks; the 4th write fails.
    p.b.remoting().fail_writes(3, 1);
    store.tell(Blob::Put(pattern(640 << 10))).unwrap();
    let small = pattern(1000);
    assert_eq!(
        store
            .ask(|r| Blob::PutGet(small.clone(), r), DEADLINE)
            .await
            .unwrap(),
        1010,
        "the cut message is lost (at most once), the next one arrives"
    );
    assert_eq!(p.b.remoting().reopened_streams(), 1);
    assert_eq!(p.a.remoting().bad_frames(), 0, "the tail is not garbage");
    assert_eq!(
        store.ask(Blob::Total, DEADLINE).await.unwrap(),
        checksum(&[1; 10]).wrapping_add(checksum(&small))
    );
}

#[tokio::test]
async fn asking_for_the_wrong_message_type_is_an_error_not_a_misdelivery() {
    let (p, sys_a) = pair("type").await;
    let local = sys_a.spawn_named("ledger", Counter(7)).await.unwrap();
    published(&p.b, "ledger").await;
    match p.b.where_is::<Other>("ledger") {
        Err(LookupError::WrongType {
            expected, actual, ..
        }) => {
            assert!(
                expected.ends_with("Other") && actual.ends_with("Cmd"),
                "{expected} / {actual}"
            );
        }
        other => panic!("expected WrongType, got {other:?}"),
    }
    assert!(matches!(
        p.b.where_is::<Cmd>("nobody"),
        Err(LookupError::NotFound(_))
    ));
    // Bypassing the lookup, the receiving node still checks the type.
    let peer = p.a.identity().peer_id();
    let forged = p.b.remoting().handle::<Other>(peer, "ledger");
    // The request left this node, so it cannot come back: the refusal
    // answers its reply handle at once, typed.
    match forged.ask(|r| Other("hi".into(), r), DEADLINE).await {
        Err(AskError::Rejected(manta_actors::WireError::WrongType { actual, .. })) => {
            assert!(actual.ends_with("Cmd"), "{actual}")
        }
        other => panic!("unexpected {other:?}"),
    }
    // A request to a name nobody holds is refused the same way.
    let nobody = p.b.remoting().handle::<Cmd>(peer, "nobody");
    match nobody.ask(Cmd::Get, DEADLINE).await {
        Err(AskError::Rejected(manta_actors::WireError::NotFound(n))) => assert_eq!(n, "nobody"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(local.ask(Cmd::Get, DEADLINE).await.unwrap(), 7);
}

#[tokio::test]
async fn a_dead_node_reaches_remote_monitors_as_node_down() {
    let (p, sys_a) = pair("down").await;
    sys_a.spawn_named("ledger", Counter(0)).await.unwrap();
    published(&p.b, "ledger").await;
    let remote = p.b.where_is::<Cmd>("ledger").unwrap();
    assert_eq!(
        remote.ask(|r| Cmd::AddGet(1, r), DEADLINE).await.unwrap(),
        1
    );
    let monitor = remote.monitor();
    p.a.kill_for_test().await;
    let reason = tokio::time::timeout(DEADLINE, monitor.wait())
        .await
        .expect("node down within the deadline");
    assert!(
        matches!(reason, ExitReason::NodeDown(ref n) if *n == p.a.identity().peer_id().to_string()),
        "{reason:?}"
    );
    let err = remote.tell(Cmd::Add(5)).unwrap_err();
    assert!(
        matches!(err.failure, SendFailure::NodeDown(_)),
        "{:?}",
        err.failure
    );
    assert!(matches!(err.message, Cmd::Add(5)));
}

#[tokio::test]
async fn a_remote_handle_can_stop_the_actor() {
    let (p, sys_a) = pair("stop").await;
    let local = sys_a.spawn_named("ledger", Counter(0)).await.unwrap();
    published(&p.b, "ledger").await;
    let remote = p.b.where_is::<Cmd>("ledger").unwrap();
    remote.stop(ExitReason::Shutdown(Some("from b".into())));
    let r = tokio::time::timeout(DEADLINE, local.monitor().wait())
        .await
        .unwrap();
    assert_eq!(r, ExitReason::Shutdown(Some("from b".into())));
}

#[tokio::test]
async fn the_exit_of_a_remote_actor_reaches_its_monitors() {
    let (p, sys_a) = pair("exit").await;
    let local = sys_a.spawn_named("ledger", Counter(0)).await.unwrap();
    published(&p.b, "ledger").await;
    let remote = p.b.where_is::<Cmd>("ledger").unwrap();
    let monitor = remote.monitor();
    // The watch is registered before the failure (ask round trip after it).
    assert_eq!(remote.ask(Cmd::Get, DEADLINE).await.unwrap(), 0);
    local.tell(Cmd::Fail).unwrap();
    let r = tokio::time::timeout(DEADLINE, monitor.wait())
        .await
        .expect("exit within the deadline");
    assert_eq!(r, ExitReason::Failed("told to fail".into()));
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CounterArgs {
    start: i64,
}

fn kinds() -> manta_actors::KindRegistry {
    let k = manta_actors::KindRegistry::new();
    k.register("counter", |a: CounterArgs| Counter(a.start));
    k
}

struct Trio {
    a: Node,
    b: Node,
    c: Node,
    _dir: TempDir,
}

async fn trio(tag: &str) -> Trio {
    let dir = std::env::temp_dir().join(format!("manta-trio-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    ClusterSecret::write_new(&secret).unwrap();
    let a = Node::start(
        node_config(&dir, "a", &secret, vec![]),
        ActorSystem::with_kinds(kinds()),
    )
    .await
    .unwrap();
    let seed = vec![a.membership().gossip_addr().to_string()];
    let mut cb = node_config(&dir, "b", &secret, seed.clone());
    cb.roles = vec!["worker".into()];
    let mut cc = node_config(&dir, "c", &secret, seed);
    cc.roles = vec!["worker".into()];
    let b = Node::start(cb, ActorSystem::with_kinds(kinds()))
        .await
        .unwrap();
    let c = Node::start(cc, ActorSystem::with_kinds(kinds()))
        .await
        .unwrap();
    for n in [&a, &b, &c] {
        wait_view(n.membership(), "3 alive", |v| {
            v.iter()
                .filter(|m| m.state == manta_cluster::MemberState::Alive)
                .count()
                == 3
        })
        .await;
    }
    Trio {
        a,
        b,
        c,
        _dir: TempDir(dir),
    }
}

/// The typed token of a counter kind registered as `name`.
fn counter(name: &str) -> Kind<CounterArgs, Cmd> {
    Kind::named(name)
}

fn on(placement: &manta_actors::Placement, name: Option<String>) -> SpawnOn {
    SpawnOn {
        placement: placement.clone(),
        name,
    }
}

fn args(start: i64) -> manta_actors::ArgsValue {
    serde_json::json!({ "start": start })
}

#[tokio::test]
async fn remote_spawn_by_role_lands_on_a_matching_node() {
    let t = trio("spawn").await;
    let placement = manta_actors::Placement {
        role: Some("worker".into()),
        ..Default::default()
    };
    let h =
        t.a.cluster()
            .spawn_on(
                &counter("counter"),
                &CounterArgs { start: 5 },
                &on(&placement, Some("c1".into())),
            )
            .await
            .unwrap();
    assert!(!h.is_local());
    assert_eq!(h.ask(|r| Cmd::AddGet(1, r), DEADLINE).await.unwrap(), 6);
    let on_b = t.b.system().lookup::<Cmd>("c1").is_ok();
    let on_c = t.c.system().lookup::<Cmd>("c1").is_ok();
    assert!(
        on_b ^ on_c,
        "exactly one worker node runs it (b: {on_b}, c: {on_c})"
    );
    assert!(t.a.system().lookup::<Cmd>("c1").is_err());
    // By node name, and refused when nothing matches.
    let placement = manta_actors::Placement {
        node: Some("a".into()),
        ..Default::default()
    };
    let local =
        t.b.cluster()
            .spawn_on(
                &counter("counter"),
                &CounterArgs { start: 1 },
                &on(&placement, Some("on-a".into())),
            )
            .await
            .unwrap();
    assert_eq!(local.ask(Cmd::Get, DEADLINE).await.unwrap(), 1);
    assert!(t.a.system().lookup::<Cmd>("on-a").is_ok());
    let none = manta_actors::Placement {
        role: Some("gpu".into()),
        ..Default::default()
    };
    let err =
        t.a.cluster()
            .spawn_on(
                &counter("counter"),
                &CounterArgs { start: 0 },
                &on(&none, None),
            )
            .await
            .unwrap_err();
    assert!(
        matches!(err, manta_actors::SpawnError::NoNodeMatches(ref p) if **p == none),
        "{err:?}"
    );
    assert!(err.to_string().contains("no alive node matches"), "{err}");
    // Unknown kinds and bad args are reported by the target node: this
    // very node...
    let err =
        t.a.cluster()
            .spawn_on(
                &counter("nope"),
                &CounterArgs { start: 0 },
                &on(&placement, None),
            )
            .await
            .unwrap_err();
    assert_eq!(err, manta_actors::SpawnError::UnknownKind("nope".into()));
    // ...or another one, as a typed error whose source chain names the node and the cause.
    let err =
        t.b.cluster()
            .spawn_on(
                &counter("nope"),
                &CounterArgs { start: 0 },
                &on(&placement, None),
            )
            .await
            .unwrap_err();
    match &err {
        manta_actors::SpawnError::Remote { node, source } => {
            assert_eq!(*node, t.a.identity().peer_id().to_string());
            assert_eq!(
                **source,
                manta_actors::WireError::Spawn(Box::new(manta_actors::SpawnError::UnknownKind(
                    "nope".into()
                )))
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    let chain = manta_actors::error_chain(&err);
    assert!(
        chain.contains("spawn failed: unknown actor kind `nope`"),
        "{chain}"
    );
}

#[tokio::test]
async fn a_child_on_a_dead_node_is_restarted_on_a_live_one() {
    use manta_actors::Placer;
    use manta_supervision::{ChildSpec, EventBus, Supervisor, SupervisorEvent, SupervisorSpec};
    let t = trio("restart").await;
    let placement = manta_actors::Placement {
        role: Some("worker".into()),
        ..Default::default()
    };
    let factory =
        t.a.cluster()
            .factory("counter", args(0), &placement)
            .unwrap();
    let bus = EventBus::new();
    let mut rx = bus.subscribe();
    let spec = SupervisorSpec::new("root")
        .intensity(5, Duration::from_secs(10))
        .events(bus)
        .child(ChildSpec::worker("w", factory).register("w"));
    let sup = Supervisor::start(t.a.system(), spec).await.unwrap();
    let host = if t.b.system().lookup::<Cmd>("w").is_ok() {
        &t.b
    } else {
        &t.c
    };
    let survivor = if std::ptr::eq(host, &t.b) { &t.c } else { &t.b };
    assert!(host.system().lookup::<Cmd>("w").is_ok());
    host.kill_for_test().await;
    let evs = tokio::time::timeout(DEADLINE, async {
        let mut seen = Vec::new();
        loop {
            let ev = rx.recv().await.unwrap();
            let done = matches!(&ev, SupervisorEvent::ChildStarted { restarts: 1, .. });
            seen.push(ev);
            if done {
                return seen;
            }
        }
    })
    .await
    .expect("restarted within the deadline");
    let exit = evs.iter().find_map(|e| match e {
        SupervisorEvent::ChildExited { reason, .. } => Some(reason.clone()),
        _ => None,
    });
    assert!(matches!(exit, Some(ExitReason::NodeDown(_))), "{evs:#?}");
    // The replacement runs on the surviving worker and answers.
    let w = survivor.system().lookup::<Cmd>("w").unwrap();
    assert_eq!(w.ask(|r| Cmd::AddGet(3, r), DEADLINE).await.unwrap(), 3);
    let info = &sup.which_children().await.unwrap()[0];
    assert_eq!(info.restarts, 1);
    // Supervisor shutdown stops the remote child through its proxy.
    let mon = w.monitor();
    sup.shutdown().await;
    assert!(matches!(
        tokio::time::timeout(DEADLINE, mon.wait()).await.unwrap(),
        ExitReason::Shutdown(_)
    ));
}

#[tokio::test]
async fn a_process_group_spans_nodes() {
    let t = trio("group").await;
    let a1 = t.a.system().spawn_named("a1", Counter(0)).await.unwrap();
    let b1 = t.b.system().spawn_named("b1", Counter(0)).await.unwrap();
    t.b.system().spawn_named("other", Counter(0)).await.unwrap();
    t.a.system().join_group("workers", "a1").unwrap();
    t.b.system().join_group("workers", "b1").unwrap();
    assert!(t.a.system().join_group("workers", "ghost").is_err());
    wait_view(t.c.membership(), "both members published", |v| {
        v.iter()
            .filter(|m| m.keys.get("groups").is_some_and(|g| g.contains("workers")))
            .count()
            == 2
    })
    .await;
    let members = t.c.group::<Cmd>("workers");
    assert_eq!(members.len(), 2);
    for m in &members {
        m.tell(Cmd::Add(10)).unwrap();
    }
    for m in &members {
        assert_eq!(m.ask(Cmd::Get, DEADLINE).await.unwrap(), 10);
    }
    assert_eq!(a1.ask(Cmd::Get, DEADLINE).await.unwrap(), 10);
    assert_eq!(b1.ask(Cmd::Get, DEADLINE).await.unwrap(), 10);
    // Members of another message type are left out.
    assert!(t.c.group::<Other>("workers").is_empty());
    // The group seen from a member node: its local member plus the remote one.
    wait_view(t.a.membership(), "b's group published", |v| {
        v.iter()
            .any(|m| m.name == "b" && m.keys.get("groups").is_some_and(|g| g.contains("workers")))
    })
    .await;
    assert_eq!(t.a.group::<Cmd>("workers").len(), 2);
}

#[derive(Debug, Serialize, Deserialize)]
enum Blob {
    Put(Vec<u8>),
    /// Puts, then answers the bytes stored.
    PutGet(Vec<u8>, ReplyTo<u64>),
    Total(ReplyTo<u64>),
}

impl Message for Blob {
    const NAME: &'static str = "manta.test.Blob";
    const DECODE: Option<manta_actors::wire::Decode<Self>> =
        Some(manta_actors::wire::decode::<Self>);
}

struct Store(u64, u64);

impl Actor for Store {
    type Msg = Blob;
    async fn handle(&mut self, msg: Blob, _: &mut Context<Blob>) -> Result<(), ActorError> {
        let (bytes, reply) = match msg {
            Blob::Put(bytes) => (bytes, None),
            Blob::PutGet(bytes, r) => (bytes, Some(r)),
            Blob::Total(r) => {
                r.send(self.1);
                return Ok(());
            }
        };
        // Bytes and a position-weighted checksum: corruption or reordering
        // inside a payload changes it.
        self.0 += bytes.len() as u64;
        self.1 = self.1.wrapping_add(checksum(&bytes));
        if let Some(r) = reply {
            r.send(self.0);
        }
        Ok(())
    }
}

/// Answers with `n` bytes of [`pattern`] shifted by `shift`.
#[derive(Debug, Serialize, Deserialize)]
struct Fetch {
    n: usize,
    shift: u8,
    reply: ReplyTo<serde_bytes::ByteBuf>,
}

impl Message for Fetch {
    const NAME: &'static str = "manta.test.Fetch";
    const DECODE: Option<manta_actors::wire::Decode<Self>> =
        Some(manta_actors::wire::decode::<Self>);
}

struct Source;

impl Actor for Source {
    type Msg = Fetch;
    async fn handle(&mut self, msg: Fetch, _: &mut Context<Fetch>) -> Result<(), ActorError> {
        msg.reply.send(serde_bytes::ByteBuf::from(
            pattern(msg.n)
                .into_iter()
                .map(|b| b.wrapping_add(msg.shift))
                .collect::<Vec<u8>>(),
        ));
        Ok(())
    }
}

/// Large replies reach the asker whole: their bytes are decoded straight
/// out of the reassembly buffer, which then serves the next large message.
/// Sizes around one chunk and several chunks, small ones in between, and a
/// large tell after them (it reuses a buffer an ask handed back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_replies_arrive_whole_and_their_buffers_serve_the_next_messages() {
    let (p, sys_a) = pair("replies").await;
    sys_a.spawn_named("source", Source).await.unwrap();
    sys_a.spawn_named("store", Store(0, 0)).await.unwrap();
    published(&p.b, "source").await;
    published(&p.b, "store").await;
    let source = p.b.where_is::<Fetch>("source").unwrap();
    let store = p.b.where_is::<Blob>("store").unwrap();
    let sizes = [
        3 << 20,
        10,
        manta_cluster::CHUNK - 20,
        manta_cluster::CHUNK + 20,
        1 << 20,
        5 << 20,
        0,
    ];
    for (i, n) in sizes.into_iter().enumerate() {
        let shift = i as u8 * 37;
        let got = source
            .ask(|reply| Fetch { n, shift, reply }, DEADLINE)
            .await
            .unwrap();
        let want: Vec<u8> = pattern(n)
            .into_iter()
            .map(|b| b.wrapping_add(shift))
            .collect();
        assert_eq!(got.len(), n, "reply {i}");
        assert!(got.into_vec() == want, "reply {i} ({n} bytes) differs");
    }
    let big = pattern(2 << 20);
    assert_eq!(
        store
            .ask(|r| Blob::PutGet(big.clone(), r), DEADLINE)
            .await
            .unwrap(),
        2 << 20
    );
    assert_eq!(
        store.ask(Blob::Total, DEADLINE).await.unwrap(),
        checksum(&big)
    );
    assert_eq!(p.b.remoting().bad_frames(), 0);
    assert_eq!(p.a.remoting().bad_frames(), 0);
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

fn checksum(v: &[u8]) -> u64 {
    v.iter().enumerate().fold(0u64, |acc, (i, b)| {
        acc.wrapping_add((i as u64 + 1) * u64::from(*b))
    })
}

// Multi-threaded: encoding 16 MiB in a debug build takes long enough to
// starve both nodes' gossip on a single thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_payloads_are_chunked_and_arrive_whole_without_stalling_small_messages() {
    // The bulk lane off: large messages are chunks on the mesh stream.
    let (p, sys_a) = pair_with("blob", |c| c.bulk.enabled = false).await;
    sys_a.spawn_named("store", Store(0, 0)).await.unwrap();
    sys_a.spawn_named("ledger", Counter(0)).await.unwrap();
    published(&p.b, "store").await;
    published(&p.b, "ledger").await;
    let store = p.b.where_is::<Blob>("store").unwrap();
    let ledger = p.b.where_is::<Cmd>("ledger").unwrap();
    let one = pattern(1 << 20);
    assert_eq!(
        store
            .ask(|r| Blob::PutGet(one.clone(), r), DEADLINE)
            .await
            .unwrap(),
        1 << 20
    );
    // 6 MiB (96 chunks) keeps this debug-build test quick; the benchmark
    // sends 16 MiB.
    let big = pattern(6 << 20);
    store.tell(Blob::Put(big.clone())).unwrap();
    // A small ask to another actor, sent after the big tell, is answered
    // (its frames go on the small-message lane, between the chunks)...
    assert_eq!(
        ledger.ask(|r| Cmd::AddGet(1, r), DEADLINE).await.unwrap(),
        1
    );
    // ...while messages to the same actor keep their order.
    assert_eq!(
        store
            .ask(|r| Blob::PutGet(vec![], r), DEADLINE)
            .await
            .unwrap(),
        (1 << 20) + (6 << 20)
    );
    assert_eq!(
        store.ask(Blob::Total, DEADLINE).await.unwrap(),
        checksum(&one).wrapping_add(checksum(&big))
    );
    // Over the 64 MiB limit: refused at the sender, message handed back.
    let err = store
        .tell(Blob::Put(vec![0u8; manta_cluster::MAX_FRAME + 1]))
        .unwrap_err();
    assert!(
        matches!(
            err.failure,
            SendFailure::TooLarge {
                limit: manta_cluster::MAX_FRAME,
                ..
            }
        ),
        "{:?}",
        err.failure
    );
}

#[tokio::test]
async fn garbage_on_an_actor_stream_is_counted_and_the_node_keeps_serving() {
    use futures::AsyncWriteExt;
    let (p, sys_a) = pair("garbage").await;
    sys_a.spawn_named("ledger", Counter(0)).await.unwrap();
    published(&p.b, "ledger").await;
    let a_peer = p.a.identity().peer_id();
    let garbage: [&[u8]; 4] = [
        &[0, 0, 0, 0],                            // zero length
        &[0xff, 0xff, 0xff, 0xff, 1, 2, 3],       // oversized length
        &[0, 0, 0, 3, 9, 9, 9],                   // wrong version
        &[0, 0, 0, 5, 1, 0xff, 0xff, 0xff, 0xff], // undecodable frame
    ];
    for (i, bytes) in garbage.iter().enumerate() {
        let mut control = p.b.mesh().stream_control();
        let mut s = control
            .open_stream(a_peer, manta_cluster::PROTOCOL)
            .await
            .unwrap();
        s.write_all(bytes).await.unwrap();
        s.flush().await.unwrap();
        let want = i as u64 + 1;
        tokio::time::timeout(DEADLINE, async {
            while p.a.remoting().bad_frames() < want {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("bad frame counted");
    }
    let ledger = p.b.where_is::<Cmd>("ledger").unwrap();
    assert_eq!(
        ledger.ask(|r| Cmd::AddGet(2, r), DEADLINE).await.unwrap(),
        2
    );
}

/// Issue 15, bug 1: names generated for unnamed placed actors came from the
/// first 8 characters of the placing node's id, and every ed25519 PeerId
/// starts with `12D3KooW`: the second node placing an unnamed child on the
/// same target got `NameTaken`.
#[tokio::test]
async fn unnamed_actors_placed_by_different_nodes_get_distinct_names() {
    let t = trio("gen-names").await;
    let on_c = manta_actors::Placement {
        node: Some("c".into()),
        ..Default::default()
    };
    let from_a =
        t.a.cluster()
            .spawn_on(
                &counter("counter"),
                &CounterArgs { start: 1 },
                &on(&on_c, None),
            )
            .await
            .unwrap();
    let from_b =
        t.b.cluster()
            .spawn_on(
                &counter("counter"),
                &CounterArgs { start: 2 },
                &on(&on_c, None),
            )
            .await
            .unwrap();
    // Two actors on c, each answering for itself.
    assert_eq!(from_a.ask(Cmd::Get, DEADLINE).await.unwrap(), 1);
    assert_eq!(from_b.ask(Cmd::Get, DEADLINE).await.unwrap(), 2);
    let (
        manta_actors::ActorId::Remote { name: na, node: ca },
        manta_actors::ActorId::Remote { name: nb, node: cb },
    ) = (from_a.id(), from_b.id())
    else {
        panic!("placed on c, so both handles are remote");
    };
    assert_ne!(na, nb);
    assert_eq!(ca, cb);
    assert_eq!(ca, t.c.identity().peer_id().to_string());
    // Each name is registered on c, and carries the end of its placer's id.
    for (name, placer) in [(&na, &t.a), (&nb, &t.b)] {
        assert!(t.c.system().lookup::<Cmd>(name).is_ok(), "{name} on c");
        let id = placer.identity().peer_id().to_string();
        assert!(name.contains(&id[id.len() - 10..]), "{name} names {id}");
        assert!(!name.contains("12D3KooW"), "{name}");
    }
}

/// Issue 15, bug 2: every remote actor of a node had the same `ActorId`
/// (`pid: 0`), so handles to distinct remote actors compared equal.
#[tokio::test]
async fn distinct_remote_actors_have_distinct_ids() {
    use std::collections::HashSet;
    let (p, sys_a) = pair("ids").await;
    sys_a.spawn_named("x", Counter(0)).await.unwrap();
    sys_a.spawn_named("y", Counter(0)).await.unwrap();
    published(&p.b, "x").await;
    published(&p.b, "y").await;
    let x = p.b.where_is::<Cmd>("x").unwrap();
    let y = p.b.where_is::<Cmd>("y").unwrap();
    let x2 = p.b.where_is::<Cmd>("x").unwrap();
    assert!(!x.is_local() && !y.is_local());
    assert_ne!(x.id(), y.id());
    assert_eq!(x.id(), x2.id());
    let set: HashSet<_> = [x.id(), y.id(), x2.id()].into_iter().collect();
    assert_eq!(set.len(), 2);
    let a = p.a.identity().peer_id().to_string();
    assert_eq!(x.id().to_string(), format!("<{a}/x>"));
}

/// Two builds of one message type: the same wire name, but (as two
/// compilers or two crate layouts would give) different Rust paths.
mod build_one {
    #[derive(Debug, serde::Serialize, serde::Deserialize, manta_actors::Message)]
    #[message(name = "manta.test.Square")]
    pub(super) struct Square(pub(super) u32, pub(super) manta_actors::ReplyTo<u32>);
}
mod build_two {
    #[derive(Debug, serde::Serialize, serde::Deserialize, manta_actors::Message)]
    #[message(name = "manta.test.Square")]
    pub(super) struct Square(pub(super) u32, pub(super) manta_actors::ReplyTo<u32>);
}

struct Squarer;

impl Actor for Squarer {
    type Msg = build_one::Square;
    async fn handle(
        &mut self,
        msg: build_one::Square,
        _: &mut Context<build_one::Square>,
    ) -> Result<(), ActorError> {
        msg.1.send(msg.0 * msg.0);
        Ok(())
    }
}

/// Issue 15, API 3: the wire check compares the message type's declared
/// name (`Message::NAME`), not `std::any::type_name` (which std does not
/// promise to keep across compiler versions): a node whose type has another
/// Rust path but the same name is understood, and the derive's default name
/// is the source path, not a compiler-made string.
#[tokio::test]
async fn nodes_agree_on_a_message_type_by_its_declared_name() {
    use manta_actors::Message as _;
    assert_ne!(
        std::any::type_name::<build_one::Square>(),
        std::any::type_name::<build_two::Square>()
    );
    assert_eq!(build_one::Square::NAME, build_two::Square::NAME);
    assert_eq!(
        manta_actors::message_type_name::<build_two::Square>(),
        "manta.test.Square"
    );
    #[derive(Debug, Serialize, Deserialize, manta_actors::Message)]
    struct Defaulted;
    assert_eq!(Defaulted::NAME, concat!(module_path!(), "::Defaulted"));

    let (p, sys_a) = pair("names").await;
    sys_a.spawn_named("sq", Squarer).await.unwrap();
    published(&p.b, "sq").await;
    let sq = p.b.where_is::<build_two::Square>("sq").unwrap();
    assert_eq!(
        sq.ask(|r| build_two::Square(12, r), DEADLINE)
            .await
            .unwrap(),
        144
    );
    // A type with another name is still refused.
    match p.b.where_is::<Cmd>("sq") {
        Err(LookupError::WrongType { .. }) => {}
        other => panic!("unexpected {other:?}"),
    }
}

/// Issue 15, API 2: a typed kind token. A spawn whose token's message type
/// differs from the target node's kind of that name is refused there before
/// anything starts (this node does not know the kind, so it cannot check).
#[tokio::test]
async fn a_typed_spawn_of_a_kind_with_another_message_type_starts_nothing() {
    let t = trio("typed-kinds").await;
    // Only b and c host "remote-counter" (taking `Cmd`); a knows nothing of it.
    for n in [&t.b, &t.c] {
        n.system()
            .kinds()
            .register("remote-counter", |a: CounterArgs| Counter(a.start));
    }
    assert!(!t.a.system().kinds().contains("remote-counter"));
    let on_b = SpawnOn {
        placement: manta_actors::Placement {
            node: Some("b".into()),
            ..Default::default()
        },
        name: Some("typed".into()),
    };
    let wrong = Kind::<CounterArgs, Other>::named("remote-counter");
    let err =
        t.a.cluster()
            .spawn_on(&wrong, &CounterArgs { start: 1 }, &on_b)
            .await
            .unwrap_err();
    match &err {
        manta_actors::SpawnError::Remote { source, .. } => match &**source {
            manta_actors::WireError::Spawn(e) => assert!(
                matches!(&**e, manta_actors::SpawnError::WrongMessageType { kind, expected, actual }
                    if kind == "remote-counter" && expected == "manta.test.Other" && actual == "manta.test.Cmd"),
                "{e:?}"
            ),
            other => panic!("unexpected {other:?}"),
        },
        other => panic!("unexpected {other:?}"),
    }
    assert!(
        t.b.system().lookup_any("typed").is_none(),
        "nothing was started"
    );
    // The right token spawns it, typed end to end.
    let right = Kind::<CounterArgs, Cmd>::named("remote-counter");
    let h =
        t.a.cluster()
            .spawn_on(&right, &CounterArgs { start: 40 }, &on_b)
            .await
            .unwrap();
    assert_eq!(h.ask(|r| Cmd::AddGet(2, r), DEADLINE).await.unwrap(), 42);
    assert!(t.b.system().lookup::<Cmd>("typed").is_ok());
    // A token of a kind this node knows with another type: refused here.
    let local_wrong = Kind::<CounterArgs, Other>::named("counter");
    let err =
        t.a.cluster()
            .spawn_on(&local_wrong, &CounterArgs { start: 1 }, &on_b)
            .await
            .unwrap_err();
    assert!(
        matches!(err, manta_actors::SpawnError::WrongMessageType { .. }),
        "{err:?}"
    );
}

/// A request to a name whose handle takes no bytes from the wire (here: a
/// handle to an actor on yet another node, registered locally) is refused
/// at once, typed; before the fix nobody answered and the asker waited for
/// its whole timeout.
#[tokio::test]
async fn a_request_to_a_handle_that_takes_no_bytes_is_refused_at_once() {
    let (p, sys_a) = pair("not-addressable").await;
    let b_id = p.b.identity().peer_id();
    let relay =
        p.a.remoting()
            .erased_handle(b_id, "elsewhere", Cmd::NAME)
            .unwrap();
    sys_a.register_any("relay", relay).unwrap();
    published(&p.b, "relay").await;
    let a_id = p.a.identity().peer_id();
    let h = p.b.remoting().handle::<Cmd>(a_id, "relay");
    // A timeout here (what the asker got before) fails the match.
    match h.ask(Cmd::Get, DEADLINE).await {
        Err(AskError::Rejected(manta_actors::WireError::NotAddressable)) => {}
        other => panic!("unexpected {other:?}"),
    }
}

mod local_only {
    /// Node a's type: never leaves its node (holds a channel).
    #[derive(Debug, manta_actors::Message)]
    #[message(local, name = "manta.test.Local")]
    pub(super) enum Local {
        Ping(
            manta_actors::ReplyTo<u32>,
            #[allow(dead_code)] Option<tokio::sync::mpsc::UnboundedSender<()>>,
        ),
    }

    /// What a peer that believes the type crosses nodes would send.
    #[derive(Debug, serde::Serialize, serde::Deserialize, manta_actors::Message)]
    #[message(name = "manta.test.Local")]
    pub(super) enum Twin {
        Ping(manta_actors::ReplyTo<u32>),
    }

    pub(super) struct Pinger;

    impl manta_actors::Actor for Pinger {
        type Msg = Local;
        async fn handle(
            &mut self,
            msg: Local,
            _: &mut manta_actors::Context<Local>,
        ) -> Result<(), manta_actors::ActorError> {
            let Local::Ping(r, _) = msg;
            r.send(1);
            Ok(())
        }
    }
}

/// Issue 15, API 1: an actor whose message type is local-only cannot be
/// reached or spawned from another node: a request for it is refused at
/// once (typed), and a remote spawn of its kind is refused before anything
/// starts.
#[tokio::test]
async fn a_local_only_actor_is_refused_to_other_nodes() {
    let (p, sys_a) = pair("local-only").await;
    let here = sys_a
        .spawn_named("pinger", local_only::Pinger)
        .await
        .unwrap();
    assert_eq!(
        here.ask(|r| local_only::Local::Ping(r, None), DEADLINE)
            .await
            .unwrap(),
        1
    );
    published(&p.b, "pinger").await;
    let a_id = p.a.identity().peer_id();
    let twin = p.b.remoting().handle::<local_only::Twin>(a_id, "pinger");
    match twin.ask(local_only::Twin::Ping, DEADLINE).await {
        Err(AskError::Rejected(manta_actors::WireError::NotAddressable)) => {}
        other => panic!("unexpected {other:?}"),
    }
    // Its kind is not spawned for another node.
    sys_a
        .kinds()
        .register("pinger", |_: CounterArgs| local_only::Pinger);
    let on_a = SpawnOn {
        placement: manta_actors::Placement {
            node: Some("a".into()),
            ..Default::default()
        },
        name: Some("remote-pinger".into()),
    };
    let err =
        p.b.cluster()
            .spawn_on(
                &Kind::<CounterArgs, local_only::Twin>::named("pinger"),
                &CounterArgs { start: 0 },
                &on_a,
            )
            .await
            .unwrap_err();
    match &err {
        manta_actors::SpawnError::Remote { source, .. } => assert!(
            matches!(&**source, manta_actors::WireError::Spawn(e)
                if matches!(&**e, manta_actors::SpawnError::LocalOnly { kind } if kind == "pinger")),
            "{source:?}"
        ),
        other => panic!("unexpected {other:?}"),
    }
    assert!(sys_a.lookup_any("remote-pinger").is_none());
}

/// A member that publishes a name another node's actor already holds does
/// not get the messages meant for it: the node that looked the name up
/// keeps the holder it found while that one lives (whatever the node ids'
/// order, which decided before). When the holder's actor is gone, the
/// other claimant is found.
#[tokio::test]
async fn a_later_claimant_of_a_name_does_not_take_it_from_its_holder() {
    let dir = std::env::temp_dir().join(format!("manta-remote-claims-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = TempDir(dir.clone());
    let secret = dir.join("secret");
    ClusterSecret::write_new(&secret).unwrap();
    let observer = Node::start(node_config(&dir, "o", &secret, vec![]), ActorSystem::new())
        .await
        .unwrap();
    let seed = observer.membership().gossip_addr().to_string();
    let mut others = Vec::new();
    for name in ["x", "y"] {
        let sys = ActorSystem::new();
        let node = Node::start(
            node_config(&dir, name, &secret, vec![seed.clone()]),
            sys.clone(),
        )
        .await
        .unwrap();
        others.push((node, sys));
    }
    // The holder sorts after the claimant: by node id alone, the claimant
    // would win.
    others.sort_by_key(|(n, _)| n.membership().node_id().to_owned());
    let (claimant, holder) = (&others[0], &others[1]);
    let real = holder.1.spawn_named("ledger", Counter(0)).await.unwrap();
    published(&observer, "ledger").await;
    let found = observer.where_is::<Cmd>("ledger").unwrap();
    assert_eq!(found.ask(|r| Cmd::AddGet(1, r), DEADLINE).await.unwrap(), 1);
    // The claimant publishes the same name.
    let fake = claimant
        .1
        .spawn_named("ledger", Counter(100))
        .await
        .unwrap();
    let claimant_id = claimant.0.membership().node_id().to_owned();
    wait_view(
        observer.membership(),
        "the claimant publishes the name",
        |v| {
            v.iter()
                .any(|m| m.id == claimant_id && m.actors.iter().any(|a| a == "ledger"))
        },
    )
    .await;
    let again = observer.where_is::<Cmd>("ledger").unwrap();
    assert_eq!(
        again.ask(|r| Cmd::AddGet(1, r), DEADLINE).await.unwrap(),
        2,
        "the holder got it"
    );
    assert_eq!(fake.ask(Cmd::Get, DEADLINE).await.unwrap(), 100);
    // The holder's actor stops: the name moves to the other claimant.
    real.stop(ExitReason::Normal);
    let holder_id = holder.0.membership().node_id().to_owned();
    wait_view(
        observer.membership(),
        "the holder unpublishes the name",
        |v| {
            v.iter()
                .any(|m| m.id == holder_id && !m.actors.iter().any(|a| a == "ledger"))
        },
    )
    .await;
    let moved = observer.where_is::<Cmd>("ledger").unwrap();
    assert_eq!(
        moved.ask(|r| Cmd::AddGet(1, r), DEADLINE).await.unwrap(),
        101
    );
}
