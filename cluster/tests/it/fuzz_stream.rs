//! Issue 16, fuzzing: whole actor streams against a real node. A member of
//! a sealed cluster (it holds the secret and joined the mesh) writes fuzzed
//! frames on a raw actor stream: the node's real read loop, reassembler and
//! dispatch take them (they are private to the remoting module, so this is
//! the way in). After each input a probe tell on the same stream shows that
//! everything before it was handled (or the stream was closed as bad).
//!
//! Checks: no panic in the remoting code, the stream is never left stuck,
//! partly received messages never exceed the peer's and the node's budgets
//! (`RemoteLimits`, the reassembler's memory bound), every byte of them is
//! released when streams end, and the node still serves its actors after.
//! `MANTA_FUZZ_ITERS` inputs (default 300); FUZZING.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::AsyncWriteExt;
use manta_actors::{Actor, ActorError, ActorSystem, Context, Message};
use manta_cluster::fuzzing::{Rng, mutate, stops, stream_pieces, stream_seeds, tell_on_the_wire};
use manta_cluster::{ClusterSecret, MemberState, Node, NodeConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{DEADLINE, wait_view};

const MIB: usize = 1 << 20;
/// How long one input may take to be handled up to its probe (or to close
/// its stream as bad).
const STUCK: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, Deserialize, Message)]
#[message(name = "manta.test.FuzzProbe")]
enum FuzzProbe {
    Seen(u64),
    Blob(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// Publishes the last `Seen` it got.
struct Probe(watch::Sender<u64>);

impl Actor for Probe {
    type Msg = FuzzProbe;
    async fn handle(
        &mut self,
        msg: FuzzProbe,
        _: &mut Context<FuzzProbe>,
    ) -> Result<(), ActorError> {
        if let FuzzProbe::Seen(n) = msg {
            self.0.send_replace(n);
        }
        Ok(())
    }
}

fn probe_frame(n: u64) -> Vec<u8> {
    let body = manta_actors::wire::encode_wire(&FuzzProbe::Seen(n)).unwrap();
    tell_on_the_wire("probe", <FuzzProbe as Message>::NAME, &body)
}

/// Panics raised in the remoting code (whatever task they were in).
static REMOTE_PANICS: AtomicU64 = AtomicU64::new(0);

fn count_remote_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info
                .location()
                .is_some_and(|l| l.file().contains("cluster/src/remote"))
            {
                REMOTE_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            prev(info);
        }));
    });
}

struct Dir(std::path::PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_actor_streams_never_panic_stall_or_exceed_the_reassembly_budgets() {
    count_remote_panics();
    let dir = std::env::temp_dir().join(format!("manta-fuzz-stream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _dir = Dir(dir.clone());
    let secret = dir.join("secret");
    ClusterSecret::write_new(&secret).unwrap();
    let mut nodes: Vec<Node> = Vec::new();
    for name in ["a", "m"] {
        let mut c = NodeConfig {
            name: name.to_owned(),
            key_file: Some(dir.join(format!("{name}.key"))),
            secret_file: Some(secret.clone()),
            seeds: nodes
                .first()
                .map(|n| vec![n.membership().gossip_addr().to_string()])
                .unwrap_or_default(),
            ..NodeConfig::default()
        };
        c.failure_detection.gossip_interval = Duration::from_millis(100);
        // The smallest budgets that still take the largest message, and a
        // short expiry: fuzzed chunks reach them quickly.
        c.limits.partial_per_peer_mib = 64;
        c.limits.partial_per_node_mib = 128;
        c.limits.partial_expiry = Duration::from_millis(300);
        // Spawns from the fuzzer find a kind (the seeds' `counter`).
        let kinds = manta_actors::KindRegistry::new();
        kinds.register("counter", |_: serde_json::Value| {
            Probe(watch::Sender::new(0))
        });
        nodes.push(
            Node::start(c, ActorSystem::with_kinds(kinds))
                .await
                .unwrap(),
        );
    }
    for n in &nodes {
        wait_view(n.membership(), "both alive", |v| {
            v.iter().filter(|m| m.state == MemberState::Alive).count() == 2
        })
        .await;
    }
    let (a, m) = (&nodes[0], &nodes[1]);
    let (seen_tx, mut seen) = watch::channel(0u64);
    a.system()
        .spawn_named("probe", Probe(seen_tx))
        .await
        .unwrap();
    let blob = manta_actors::wire::encode_wire(&FuzzProbe::Blob(vec![3u8; 150_000])).unwrap();
    let corpus = stream_seeds("probe", <FuzzProbe as Message>::NAME, &blob);
    let iters: usize = std::env::var("MANTA_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut rng = Rng(std::env::var("MANTA_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16));
    let mut stream = raw_stream(m, a).await;
    let (mut closed, mut skipped) = (0u64, 0u64);
    let started = std::time::Instant::now();
    for i in 1..=(iters + corpus.len()) as u64 {
        let input = if (i as usize) <= corpus.len() {
            corpus[i as usize - 1].clone()
        } else {
            let mut x = corpus[rng.below(corpus.len())].clone();
            let other = &corpus[rng.below(corpus.len())];
            mutate(&mut rng, &mut x, other, 400_000);
            x
        };
        let frames = stream_pieces(&input);
        if frames.iter().any(|f| stops(f, "probe")) {
            skipped += 1;
            continue;
        }
        let bad_before = a.remoting().bad_frames();
        let mut wire = Vec::new();
        for f in &frames {
            // Now and then a length the reader refuses (0, or past a chunk).
            let len = match rng.below(64) {
                0 => 0,
                1 => 70_000,
                _ => f.len() as u32,
            };
            wire.extend_from_slice(&len.to_be_bytes());
            if len as usize == f.len() {
                wire.extend_from_slice(f);
            } else {
                break;
            }
        }
        wire.extend(probe_frame(i));
        // A closed stream may refuse the write: that is what a bad frame
        // earlier in this input does.
        let _ = stream.write_all(&wire).await;
        let _ = stream.flush().await;
        // Handled up to the probe, or closed as bad (a first chunk may wait
        // for the node's budget up to the expiry first).
        let handled = tokio::select! {
            biased;
            r = tokio::time::timeout(STUCK, seen.wait_for(|n| *n == i)) => {
                r.is_ok_and(|r| r.is_ok())
            }
            bad = a.remoting().wait_counters(STUCK, |r| r.bad_frames() > bad_before) => {
                if bad {
                    closed += 1;
                    let _ = stream.close().await;
                    stream = raw_stream(m, a).await;
                }
                bad
            }
        };
        assert!(
            handled,
            "input {i} left the stream stuck: {} frames, first bytes {:02x?}",
            frames.len(),
            &input[..input.len().min(64)]
        );
        let held = a.remoting().partial_bytes();
        assert!(
            held <= 128 * MIB,
            "input {i}: {held} bytes of partial messages held, over the node's budget"
        );
        assert_eq!(
            REMOTE_PANICS.load(Ordering::SeqCst),
            0,
            "input {i}: a panic in remoting"
        );
    }
    // Every partial message goes with the stream that carried it.
    let _ = stream.close().await;
    drop(stream);
    assert!(
        a.remoting()
            .wait_counters(DEADLINE, |r| r.partial_bytes() == 0)
            .await,
        "partial messages outlived their streams: {} bytes",
        a.remoting().partial_bytes()
    );
    // The node still serves: a last probe on a fresh stream.
    let mut s = raw_stream(m, a).await;
    let last = u64::MAX;
    s.write_all(&probe_frame(last)).await.unwrap();
    s.flush().await.unwrap();
    assert!(
        tokio::time::timeout(DEADLINE, seen.wait_for(|n| *n == last))
            .await
            .is_ok_and(|r| r.is_ok()),
        "the node stopped serving"
    );
    println!(
        "fuzz_stream: {} inputs in {:.2?}, {closed} closed a stream as bad, {skipped} skipped (would stop the probe), {} bad frames",
        iters + corpus.len(),
        started.elapsed(),
        a.remoting().bad_frames()
    );
    assert_eq!(REMOTE_PANICS.load(Ordering::SeqCst), 0);
}
