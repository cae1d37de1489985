//! Fuzz targets: not API (hidden from the docs, may change at any time;
//! feature `fuzzing` only).
//!
//! [`targets`] lists every decoder of untrusted bytes in Manta with the
//! function that feeds it one input, valid encodings to start from, and the
//! most memory one input may hold at once. cargo-fuzz (`fuzz/`, nightly,
//! libFuzzer) and the stable runner (`tests/fuzz.rs`, `cargo test`) both run
//! this table; FUZZING.md says how, and what they found. Each target panics
//! only when an invariant breaks: a panic, from the code under test or from
//! a check here, is a finding.
//!
//! The cluster's decoders (frames, sealed datagrams, gossip) are in
//! `manta_cluster::fuzzing`, next to the private items they need; the rest
//! (supervision trees, ML messages and checkpoints, training configs,
//! durations) go through public API and are here.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed check is the finding

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use manta_actors::wire::{EncodeWire, ReplyRoute, decode, encode_wire};
use manta_actors::{ActorHandle, ActorSystem, ArgsValue, ExitReason, KindRegistry, WireError};
use manta_cluster::fuzzing as cluster;
use manta_ml::data::{DatasetSpec, ShardPlan};
use manta_ml::loader::{Cursor, Delivery, Loader, LoaderArgs, LoaderMsg, LoaderStats};
use manta_ml::ps::{
    CheckpointSpec, Gradients, Mode, ParamServer, Params, PsArgs, PsMsg, PsStatus, Pushed,
};
use manta_ml::worker::{WorkerMsg, WorkerStats};
use manta_ml::{ModelSpec, OptimizerConfig, TrainConfig};

const MIB: usize = 1 << 20;

/// One fuzz target.
#[derive(Clone, Copy)]
pub struct Target {
    /// Its name (cargo-fuzz target `NAME`, `MANTA_FUZZ_TARGET=NAME`).
    pub name: &'static str,
    /// What it feeds and checks.
    pub what: &'static str,
    /// Runs one input.
    pub run: fn(&[u8]),
    /// Valid encodings to start from.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// The most bytes one input of this length may hold allocated at once
    /// (the peak over the run, net of what it frees), harness included.
    pub max_alloc: fn(usize) -> usize,
}

/// Every target.
pub fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "frame",
            what: "one actor-stream frame as the read loop decodes it (chunk or whole frame), round trip through the writer",
            run: cluster::fuzz_frame,
            seeds: cluster::frame_seeds,
            // Linear in the frame: postcard preallocates a sequence only as
            // long as the bytes left can hold, and strings and bodies are
            // borrowed. The costliest bytes are maps of empty strings (a
            // spawn error's placement labels): 2 input bytes make an entry
            // of 48 in a B-tree node. The harness adds the frame's Debug
            // text (twice) and its re-encoding.
            max_alloc: |n| 64 * n + 64 * 1024,
        },
        Target {
            name: "large_message",
            what: "a reassembled large message (up to MAX_FRAME) as the read loop decodes it; the reply range lies in the buffer",
            run: cluster::fuzz_large_message,
            seeds: cluster::large_message_seeds,
            max_alloc: |n| 64 * n + 64 * 1024,
        },
        Target {
            name: "lane_records",
            what: "the bulk lane's records as a receiving end reads them, key known: sealed in order, raw, replayed, tampered and reordered records, and the lane-head check",
            run: cluster::fuzz_lane_records,
            seeds: cluster::lane_records_seeds,
            // The input, a copy of each record (at most 64 KiB + 64 of
            // plaintext) and the log of sealed records the harness keeps for
            // replays (at most 64 records).
            max_alloc: |n| 4 * n + 64 * (64 * 1024 + 128) + 256 * 1024,
        },
        Target {
            name: "opener",
            what: "the gossip opener (seal v2), key known: up to 96 sealed/other-cluster/forged/replayed/tampered datagrams as the clock moves and gossip restarts",
            run: cluster::fuzz_opener,
            seeds: cluster::opener_seeds,
            // The opener's reassembly budget; a whole message (8 fragments)
            // while its parts are still held; the datagrams in flight and
            // the four the harness keeps for replays; the nonces seen.
            max_alloc: |_| cluster::OPENER_MAX_ALLOC,
        },
        Target {
            name: "gossip",
            what: "chitchat's decoder on plaintext after opening (sealed and opened for real), round trip through chitchat's encoder",
            run: cluster::fuzz_gossip,
            seeds: cluster::gossip_seeds,
            // chitchat decodes one datagram (at most 64 KiB) into owned
            // strings and maps, and decompresses its delta blocks; the
            // harness seals, opens and copies the input and keeps a
            // receive buffer (64 KiB) for the round trip.
            max_alloc: |n| 16 * n + 512 * 1024,
        },
        Target {
            name: "status_reply",
            what: "what a `manta status` client opens: a reply (the query's id, the JSON of a cluster view) or a cookie answer",
            run: cluster::fuzz_status_reply,
            seeds: cluster::status_reply_seeds,
            max_alloc: |n| 16 * n + 256 * 1024,
        },
        Target {
            name: "hex",
            what: "hex as secret files and gossiped signatures hold it",
            run: cluster::fuzz_hex,
            seeds: || {
                vec![
                    b"00ff10".to_vec(),
                    b"00FF1".to_vec(),
                    "aé".as_bytes().to_vec(),
                ]
            },
            max_alloc: |n| 4 * n + 4096,
        },
        Target {
            name: "secret",
            what: "a cluster secret file",
            run: cluster::fuzz_secret_file,
            seeds: || vec![cluster::fuzz_secret().to_file_text().into_bytes()],
            max_alloc: |n| 4 * n + 4096,
        },
        Target {
            name: "duration",
            what: "durations of node configs and of tree files, and the tree format's round trip",
            run: fuzz_durations,
            seeds: || {
                [
                    "250ms",
                    "1.5s",
                    "2m",
                    "1h",
                    "100us",
                    "5 µs",
                    "1e3s",
                    "18446744073709551615s",
                ]
                .iter()
                .map(|s| s.as_bytes().to_vec())
                .collect()
            },
            max_alloc: |n| 8 * n + 4096,
        },
        Target {
            name: "node_config",
            what: "a node config file (TOML), validated, its remoting limits",
            run: cluster::fuzz_node_config,
            seeds: cluster::node_config_seeds,
            max_alloc: toml_bound,
        },
        Target {
            name: "actor_types",
            what: "the `actors` key another node gossips (JSON)",
            run: cluster::fuzz_actor_types,
            seeds: || vec![b"{\"ledger\":\"manta.builtin.CounterMsg\"}".to_vec()],
            max_alloc: |n| 16 * n + 4096,
        },
        Target {
            name: "key_file",
            what: "a node key file (libp2p protobuf keypair)",
            run: cluster::fuzz_key_file,
            seeds: cluster::key_file_seeds,
            max_alloc: |n| 8 * n + 64 * 1024,
        },
        Target {
            name: "tree",
            what: "a supervision tree file, every kind the `manta` command knows",
            run: fuzz_tree,
            seeds: tree_seeds,
            max_alloc: toml_bound,
        },
        Target {
            name: "train_config",
            what: "a training config file (TOML), validated",
            run: fuzz_train_config,
            seeds: || vec![include_bytes!("../examples/train-digits.toml").to_vec()],
            max_alloc: toml_bound,
        },
        Target {
            name: "spawn_args",
            what: "a remote spawn's arguments (JSON) decoded for each kind a node hosts",
            run: fuzz_spawn_args,
            seeds: spawn_args_seeds,
            max_alloc: |n| 64 * n + 64 * 1024,
        },
        Target {
            name: "ps_messages",
            what: "parameter-server messages from the wire, delivered to a live shard, which must stay alive",
            run: fuzz_ps_messages,
            seeds: ps_message_seeds,
            max_alloc: |n| 16 * n + 4 * MIB,
        },
        Target {
            name: "loader_messages",
            what: "data-loader messages from the wire, delivered to a live loader, which must stay alive",
            run: fuzz_loader_messages,
            seeds: loader_message_seeds,
            max_alloc: |n| 16 * n + 4 * MIB,
        },
        Target {
            name: "ml_replies",
            what: "replies of parameter servers, loaders and workers as an asker decodes them, round trip",
            run: fuzz_ml_replies,
            seeds: ml_reply_seeds,
            max_alloc: |n| 16 * n + 2 * MIB,
        },
        Target {
            name: "checkpoint",
            what: "a checkpoint file restored by a starting parameter-server shard, which then trains on it",
            run: fuzz_checkpoint,
            seeds: checkpoint_seeds,
            // The shard reads at most its checkpoint bound (under 100 KiB
            // for the fuzzed model) and decodes it.
            max_alloc: |n| 8 * n + 4 * MIB,
        },
    ]
}

/// Findings reported but not fixed yet (in code this work did not
/// change): a failure of `target` whose message contains the text is
/// counted, not failed, unless `MANTA_FUZZ_STRICT=1`. Each has a reproducer
/// in `fuzz/regressions/<target>/` and an entry in FUZZING.md; remove it
/// here once fixed (the regression test then holds it fixed). None is open:
/// the two the first campaign found (a loader panic on a seek past the
/// epoch, a replay of a future-dated gossip datagram) are fixed, and their
/// reproducers pass.
pub const KNOWN: &[(&str, &str)] = &[];

/// Whether a failure of `target` with message `what` is a [`KNOWN`]
/// finding (and `MANTA_FUZZ_STRICT` is not set).
pub fn is_known(target: &str, what: &str) -> bool {
    std::env::var_os("MANTA_FUZZ_STRICT").is_none()
        && KNOWN.iter().any(|(t, m)| *t == target && what.contains(m))
}

/// The message a panic was raised with (empty for other payloads).
pub fn panic_message<'a>(info: &'a std::panic::PanicHookInfo<'_>) -> &'a str {
    info.payload()
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| info.payload().downcast_ref::<&str>().copied())
        .unwrap_or("")
}

/// For cargo-fuzz targets: a panic hook that stays silent for [`KNOWN`]
/// findings of `target` and otherwise does what the installed one (that of
/// libfuzzer-sys: report, abort) does. Call once, before the first input.
pub fn hook_known(target: &'static str) {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_known(target, panic_message(info)) {
            prev(info);
        }
    }));
}

/// For cargo-fuzz targets: runs one input, ignoring a [`KNOWN`] panic
/// (with [`hook_known`] installed); any other panic goes on.
pub fn run_tolerating_known(t: &Target, data: &[u8]) {
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (t.run)(data))) {
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if !is_known(t.name, msg) {
            std::panic::resume_unwind(p);
        }
    }
}

/// What parsing a TOML file (node config, tree, training config) may hold:
/// the toml crate's error recovery keeps every problem it finds with its
/// context, measured at up to about 140 bytes per input byte on top of
/// about 100 KiB (10,000 dots: 1.4 MB). These are local files, not network
/// input.
fn toml_bound(n: usize) -> usize {
    256 * n + 256 * 1024
}

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    targets().into_iter().find(|t| t.name == name)
}

// ---- harness ---------------------------------------------------------------

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
}

fn block_on<F: Future>(f: F) -> F::Output {
    RT.with(|rt| rt.block_on(f))
}

const T: Duration = Duration::from_secs(10);

/// Where replies to fuzzed requests go: encoded, as the route back to a
/// peer would, and dropped.
struct Nowhere;

impl ReplyRoute for Nowhere {
    fn reply(&self, _id: u64, answer: Result<Box<dyn EncodeWire>, WireError>) {
        if let Ok(v) = answer {
            if let Ok(len) = v.encoded_len() {
                let mut out = Vec::with_capacity(len);
                let _ = v.encode_to(&mut |b| {
                    out.extend_from_slice(b);
                    Ok(())
                });
            }
        }
    }
}

/// The messages of one input: `u16` length-prefixed pieces (at most 32).
fn pieces(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 && out.len() < 32 {
        let n = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
        let (a, b) = rest.split_at(n.min(rest.len()));
        out.push(a);
        rest = b;
    }
    out
}

fn with_pieces(msgs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        out.extend_from_slice(&(m.len() as u16).to_le_bytes());
        out.extend_from_slice(m);
    }
    out
}

async fn stop<M: manta_actors::Message>(h: &ActorHandle<M>) {
    h.kill();
    let _ = tokio::time::timeout(T, h.monitor().wait()).await;
}

/// A remote actor that keeps the encoding of every message told to it:
/// what a sender's node writes on the wire, reply handles included.
struct Capture<M> {
    sent: std::sync::Mutex<Vec<Vec<u8>>>,
    exit: Arc<manta_actors::ExitSignal>,
    _m: std::marker::PhantomData<fn(M)>,
}

impl<M: manta_actors::Message + serde::Serialize> manta_actors::RemoteActor<M> for Capture<M> {
    fn id(&self) -> manta_actors::ActorId {
        manta_actors::ActorId::Remote {
            node: "fuzz".into(),
            name: "capture".into(),
        }
    }
    fn tell(&self, msg: M) -> Result<(), manta_actors::SendError<M>> {
        struct Ids;
        impl manta_actors::wire::ReplyRegistry for Ids {
            fn register(&self, _: Box<dyn manta_actors::wire::PendingReply>) -> u64 {
                7
            }
        }
        let (bytes, _) = manta_actors::wire::encode_with(Arc::new(Ids), || encode_wire(&msg));
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(bytes.expect("a message encodes"));
        Ok(())
    }
    fn stop(&self, _: ExitReason) {}
    fn kill(&self) {}
    fn monitor(&self) -> manta_actors::Monitor {
        self.exit.monitor()
    }
}

/// The wire encodings of the messages `send` sends (asks time out at once).
fn encoded<M, F>(send: impl FnOnce(ActorHandle<M>) -> F) -> Vec<Vec<u8>>
where
    M: manta_actors::Message + serde::Serialize,
    F: Future<Output = ()>,
{
    let cap = Arc::new(Capture::<M> {
        sent: std::sync::Mutex::new(Vec::new()),
        exit: Arc::new(manta_actors::ExitSignal::new()),
        _m: std::marker::PhantomData,
    });
    block_on(send(ActorHandle::remote(
        Arc::clone(&cap) as Arc<dyn manta_actors::RemoteActor<M>>
    )));
    std::mem::take(&mut *cap.sent.lock().unwrap_or_else(|e| e.into_inner()))
}

/// How long a seed's ask waits (its reply never comes).
const NOW: Duration = Duration::from_millis(1);

// ---- durations, trees, configs, spawn arguments -----------------------------

/// Both duration syntaxes: node configs' and tree files'. What the tree
/// syntax parses, its formatter writes back to (about) the same duration.
pub fn fuzz_durations(data: &[u8]) {
    cluster::fuzz_config_duration(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = manta_supervision::parse_duration(text) {
        assert!(
            d <= manta_supervision::MAX_DURATION,
            "{text:?} parses to {d:?}, past the limit"
        );
        let shown = manta_supervision::format_duration(d);
        let back = manta_supervision::parse_duration(&shown)
            .unwrap_or_else(|e| panic!("{text:?} parses to {d:?}, shown as {shown:?}: {e}"));
        // The format truncates to whole microseconds; an f64 keeps 53 bits.
        let slack = Duration::from_micros(2) + d.mul_f64(1.0 / (1u64 << 50) as f64);
        assert!(
            back.abs_diff(d) <= slack,
            "{text:?} parses to {d:?}, shown as {shown:?}, which parses to {back:?}"
        );
    }
}

thread_local! {
    static KINDS: KindRegistry = {
        let system = ActorSystem::new();
        crate::builtin::all_kinds(manta_ml::Directory::Local(system))
    };
}

/// A supervision tree file checked against every kind the `manta` command
/// knows (built-ins and manta-ml's).
pub fn fuzz_tree(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    KINDS.with(
        |kinds| match manta_supervision::tree::load_str(text, "fuzz.toml", kinds) {
            Ok(spec) => {
                let _ = format!("{spec:?}");
            }
            Err(e) => {
                assert!(!e.0.is_empty(), "an error without a problem");
                let _ = e.to_string();
            }
        },
    );
}

fn tree_seeds() -> Vec<Vec<u8>> {
    vec![
        include_bytes!("../examples/tree.toml").to_vec(),
        include_bytes!("../examples/demo.toml").to_vec(),
        include_bytes!("../examples/cluster-demo.toml").to_vec(),
        b"name = \"ml\"\n[[children]]\nid = \"ps\"\nkind = \"manta.ps\"\nargs = { shard = 0, shards = 1, model = { inputs = 4, hidden = [3], classes = 2 }, init_seed = 0, optimizer = { kind = \"sgd\" }, lr = 0.1, mode = { kind = \"sync\" }, workers = 1 }\n".to_vec(),
    ]
}

/// A training config (TOML), parsed and validated.
pub fn fuzz_train_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = TrainConfig::parse(text, "fuzz.toml", Path::new("/nonexistent")) {
        c.validate().expect("a parsed config is valid");
        let _ = c.mode();
    }
}

const SPAWN_KINDS: [&str; 6] = [
    "ticker",
    "flaky",
    "counter",
    "manta.ps",
    "manta.loader",
    "manta.worker",
];

/// A remote spawn's arguments (the JSON a `Spawn` frame carries), decoded
/// for the kind the first byte picks, as `spawn_here` does before starting
/// anything.
pub fn fuzz_spawn_args(data: &[u8]) {
    let Some((&k, json)) = data.split_first() else {
        return;
    };
    let Ok(json) = std::str::from_utf8(json) else {
        return;
    };
    let Ok(args) = serde_json::from_str::<ArgsValue>(json) else {
        return;
    };
    let kind = SPAWN_KINDS[usize::from(k) % SPAWN_KINDS.len()];
    KINDS.with(|kinds| {
        let _ = kinds.prepare(kind, args).map(|f| f.describe());
    });
}

fn spawn_args_seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut add = |k: usize, v: serde_json::Value| {
        let mut s = vec![k as u8];
        s.extend(serde_json::to_vec(&v).unwrap());
        out.push(s);
    };
    add(0, serde_json::json!({"interval": "1s", "message": "x"}));
    add(1, serde_json::json!({"fail_after": "1s", "mode": "panic"}));
    add(2, serde_json::json!({"start": 3}));
    add(3, serde_json::to_value(ps_args(0, None)).unwrap());
    add(4, serde_json::to_value(loader_args()).unwrap());
    add(
        5,
        serde_json::json!({"index": 0, "model": model(), "loader": "loader-0", "ps": ["ps-0"],
            "mode": {"kind": "sync"}, "epochs": 1, "batches_per_epoch": 4, "device": "cpu"}),
    );
    out
}

// ---- ML: messages, replies, checkpoints ------------------------------------

/// The 4-3-2 MLP every fuzzed shard serves: `layers.0.weight` (12 values),
/// `layers.0.bias` (3), `layers.1.weight` (6), `layers.1.bias` (2).
fn model() -> ModelSpec {
    ModelSpec {
        inputs: 4,
        hidden: vec![3],
        classes: 2,
    }
}

/// Shard 0 of 1 over [`model`], one worker; `pick` chooses the optimizer
/// (SGD, SGD with momentum, Adam) and mode (sync, async).
fn ps_args(pick: u8, checkpoint: Option<&Path>) -> PsArgs {
    let optimizer = match pick % 3 {
        0 => OptimizerConfig::sgd(0.0),
        1 => OptimizerConfig::sgd(0.9),
        _ => serde_json::from_value(serde_json::json!({"kind": "adam"}))
            .expect("Adam with its defaults"),
    };
    PsArgs {
        shard: 0,
        shards: 1,
        model: model(),
        init_seed: 1,
        optimizer,
        lr: 0.1,
        mode: if pick & 4 == 0 {
            Mode::Sync
        } else {
            Mode::Async { staleness: 2 }
        },
        workers: 1 + u32::from(pick >> 3 & 1),
        checkpoint: checkpoint.map(|dir| CheckpointSpec {
            dir: dir.to_path_buf(),
            every: 0,
            keep: 3,
            resume: true,
        }),
        lr_decay: Default::default(),
        steps_per_epoch: 0,
        epochs: 0,
        input: None,
    }
}

fn gradients(worker: u32, version: u64, v: f32) -> Gradients {
    Gradients {
        worker,
        version,
        grads: vec![vec![v; 12], vec![v; 3], vec![v; 6], vec![v; 2]],
        loss: 1.0,
        samples: 4,
    }
}

/// Parameter-server messages from the wire: the first byte picks the
/// shard's optimizer and mode, the rest is up to 32 length-prefixed
/// messages, each handed to a live shard exactly as dispatch hands a
/// remote tell (`tell_wire`, replies encoded for the way back). The shard
/// must still answer its status afterwards: a message from another node
/// never stops it.
pub fn fuzz_ps_messages(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    block_on(async {
        let system = ActorSystem::new();
        let ps = system
            .spawn(ParamServer::new(ps_args(pick, None)))
            .await
            .expect("a shard starts");
        deliver(&ps, rest);
        let alive = ps.ask(PsMsg::Status, T).await;
        assert!(
            alive.is_ok(),
            "the parameter server stopped: {:?} ({:?})",
            alive.err(),
            ps.exit_reason()
        );
        stop(&ps).await;
    });
}

fn deliver<M: manta_actors::Message>(h: &ActorHandle<M>, data: &[u8]) {
    let any = h.clone().into_any();
    let route: Arc<dyn ReplyRoute> = Arc::new(Nowhere);
    for m in pieces(data) {
        let _ = any.tell_wire(m, &route);
    }
}

fn ps_message_seeds() -> Vec<Vec<u8>> {
    let msgs = encoded(|ps: ActorHandle<PsMsg>| async move {
        let _ = ps.ask(|r| PsMsg::Push(gradients(0, 0, 0.5), r), NOW).await;
        let _ = ps
            .ask(
                |reply| PsMsg::Pull {
                    worker: 0,
                    min_version: 1,
                    reply,
                },
                NOW,
            )
            .await;
        let _ = ps
            .ask(|r| PsMsg::PushPull(gradients(1, 0, -1.0), r), NOW)
            .await;
        let _ = ps.tell(PsMsg::WorkerDone { worker: 0 });
        let _ = ps.ask(|r| PsMsg::WaitVersion(2, r), NOW).await;
        let _ = ps.ask(PsMsg::Checkpoint, NOW).await;
        let _ = ps.ask(PsMsg::Status, NOW).await;
    });
    let mut out: Vec<Vec<u8>> = (0..4u8)
        .map(|pick| {
            let mut s = vec![pick * 3];
            s.extend(with_pieces(&msgs));
            s
        })
        .collect();
    let mut one = vec![2];
    one.extend(with_pieces(&msgs[..1]));
    out.push(one);
    out
}

thread_local! {
    static SCRATCH: PathBuf = {
        let dir = std::env::temp_dir().join(format!(
            "manta-fuzz-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        dir
    };
}

/// A per-process scratch directory (a dataset, checkpoints).
fn scratch() -> PathBuf {
    SCRATCH.with(Clone::clone)
}

/// Removes this thread's scratch directory.
pub fn cleanup() {
    let _ = std::fs::remove_dir_all(scratch());
}

/// A 24-row, 4-feature, 2-class CSV dataset in the scratch directory.
fn dataset() -> PathBuf {
    let path = scratch().join("data.csv");
    if !path.exists() {
        let rows: String = (0..24)
            .map(|i| format!("{},{},{},{},{}\n", i % 5, i % 3, i % 7, i % 2, i % 2))
            .collect();
        std::fs::write(&path, rows).expect("the dataset is written");
    }
    path
}

fn loader_args() -> LoaderArgs {
    LoaderArgs {
        dataset: DatasetSpec {
            test_fraction: Some(0.25),
            ..DatasetSpec::new(dataset())
        },
        shard: 0,
        plan: ShardPlan {
            shards: 1,
            batch_size: 4,
        },
        seed: 1,
        epochs: 2,
        prefetch: 2,
        state_dir: None,
    }
}

/// Data-loader messages from the wire, delivered to a live loader as
/// dispatch delivers them; it must still answer its stats afterwards.
pub fn fuzz_loader_messages(data: &[u8]) {
    block_on(async {
        let system = ActorSystem::new();
        let loader = system
            .spawn(Loader::new(loader_args()))
            .await
            .expect("a loader starts");
        deliver(&loader, data);
        let alive = loader.ask(LoaderMsg::Stats, T).await;
        assert!(
            alive.is_ok(),
            "the loader stopped: {:?} ({:?})",
            alive.err(),
            loader.exit_reason()
        );
        stop(&loader).await;
    });
}

fn loader_message_seeds() -> Vec<Vec<u8>> {
    let at = Some(Cursor { epoch: 1, batch: 2 });
    let msgs = encoded(|l: ActorHandle<LoaderMsg>| async move {
        let _ = l.tell(LoaderMsg::Grant(3));
        let _ = l
            .ask(
                |reply| LoaderMsg::Take {
                    at: None,
                    grant: 1,
                    reply,
                },
                NOW,
            )
            .await;
        let _ = l
            .ask(
                |reply| LoaderMsg::TakeMany {
                    at,
                    grant: 4,
                    max: 3,
                    reply,
                },
                NOW,
            )
            .await;
        let _ = l
            .ask(
                |reply| LoaderMsg::Take {
                    at,
                    grant: 0,
                    reply,
                },
                NOW,
            )
            .await;
        let _ = l.tell(LoaderMsg::Fill);
        let _ = l.ask(LoaderMsg::Stats, NOW).await;
    });
    vec![with_pieces(&msgs), with_pieces(&msgs[2..3])]
}

fn round_trip<T>(data: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if let Ok(v) = decode::<T>(data) {
        let bytes = encode_wire(&v).expect("a decoded reply encodes");
        let back = decode::<T>(&bytes).expect("a re-encoded reply decodes");
        assert_eq!(
            format!("{back:?}"),
            format!("{v:?}"),
            "a reply changed in a round trip"
        );
    }
}

/// A reply of a parameter server, loader or worker as the asker decodes it
/// (the first byte picks which); what decodes survives a round trip.
pub fn fuzz_ml_replies(data: &[u8]) {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    match k % 9 {
        0 => round_trip::<Params>(rest),
        1 => round_trip::<Result<Pushed, String>>(rest),
        2 => round_trip::<PsStatus>(rest),
        3 => round_trip::<u64>(rest),
        4 => round_trip::<Result<String, String>>(rest),
        5 => round_trip::<Delivery>(rest),
        6 => round_trip::<Vec<Delivery>>(rest),
        7 => round_trip::<LoaderStats>(rest),
        _ => round_trip::<WorkerStats>(rest),
    }
}

fn ml_reply_seeds() -> Vec<Vec<u8>> {
    // Real replies of a real shard and loader.
    block_on(async {
        let system = ActorSystem::new();
        let ps = system
            .spawn(ParamServer::new(ps_args(2, None)))
            .await
            .expect("a shard starts");
        let loader = system
            .spawn(Loader::new(loader_args()))
            .await
            .expect("a loader starts");
        let mut out = Vec::new();
        let mut add = |k: u8, bytes: Vec<u8>| {
            let mut s = vec![k];
            s.extend(bytes);
            out.push(s);
        };
        let pushed = ps.ask(|r| PsMsg::Push(gradients(0, 0, 0.5), r), T).await;
        let params = ps
            .ask(
                |reply| PsMsg::Pull {
                    worker: 0,
                    min_version: 0,
                    reply,
                },
                T,
            )
            .await;
        let status = ps.ask(PsMsg::Status, T).await;
        if let (Ok(pushed), Ok(params), Ok(status)) = (pushed, params, status) {
            add(0, encode_wire(&params).unwrap());
            add(1, encode_wire(&pushed).unwrap());
            add(2, encode_wire(&status).unwrap());
        }
        add(3, encode_wire(&7u64).unwrap());
        add(4, encode_wire(&Err::<String, String>("no".into())).unwrap());
        let many = loader
            .ask(
                |reply| LoaderMsg::TakeMany {
                    at: None,
                    grant: 8,
                    max: 3,
                    reply,
                },
                T,
            )
            .await;
        if let Ok(many) = many {
            if let Some(first) = many.first() {
                add(5, encode_wire(first).unwrap());
            }
            add(6, encode_wire(&many).unwrap());
        }
        if let Ok(stats) = loader.ask(LoaderMsg::Stats, T).await {
            add(7, encode_wire(&stats).unwrap());
        }
        add(
            8,
            encode_wire(&WorkerStats {
                steps: 3,
                retries: 1,
                finished: false,
            })
            .unwrap(),
        );
        let _ = WorkerMsg::Step;
        stop(&ps).await;
        stop(&loader).await;
        out
    })
}

/// A checkpoint file restored by a starting shard: the first byte picks
/// the shard's optimizer and mode, the rest is the newest checkpoint file
/// in its directory. A checkpoint the shard takes must hold parameters of
/// the model's shapes, and the shard must then train on it (a push and a
/// pull) without stopping; one it refuses is listed in its status.
pub fn fuzz_checkpoint(data: &[u8]) {
    let Some((&pick, file)) = data.split_first() else {
        return;
    };
    let dir = scratch().join("ckpt");
    let shard_dir = dir.join("ps-0-of-1");
    let _ = std::fs::remove_dir_all(&shard_dir);
    std::fs::create_dir_all(&shard_dir).expect("a checkpoint directory");
    std::fs::write(shard_dir.join("ckpt-000000000005.bin"), file).expect("the file is written");
    block_on(async {
        let system = ActorSystem::new();
        let ps = system
            .spawn(ParamServer::new(ps_args(pick, Some(&dir))))
            .await
            .expect("a shard starts whatever its checkpoints");
        let s = ps.ask(PsMsg::Status, T).await.expect("the shard answers");
        match s.restored_from {
            Some(v) => {
                assert_eq!(s.version, v);
                let p = ps
                    .ask(
                        |reply| PsMsg::Pull {
                            worker: u32::MAX,
                            min_version: 0,
                            reply,
                        },
                        T,
                    )
                    .await
                    .expect("a restored shard answers a pull");
                let shapes: Vec<_> = p.params.iter().map(|t| t.shape.clone()).collect();
                assert_eq!(shapes, [vec![4, 3], vec![3], vec![3, 2], vec![2]]);
                for t in p.params.iter() {
                    assert_eq!(t.values.len(), t.shape.iter().product::<usize>());
                }
                let pushed = ps.ask(|r| PsMsg::Push(gradients(0, v, 0.25), r), T).await;
                assert!(
                    pushed.is_ok(),
                    "a restored shard stopped on a push: {:?} ({:?})",
                    pushed.err(),
                    ps.exit_reason()
                );
                let after = ps.ask(PsMsg::Status, T).await;
                assert!(
                    after.is_ok(),
                    "a restored shard stopped: {:?}",
                    ps.exit_reason()
                );
            }
            None => assert_eq!(s.refused_checkpoints.len(), 1, "{s:?}"),
        }
        stop(&ps).await;
    });
}

/// Real checkpoints of each optimizer, after a step (so that momentum and
/// Adam state are in them).
fn checkpoint_seeds() -> Vec<Vec<u8>> {
    let dir = scratch().join("seed-ckpt");
    let _ = std::fs::remove_dir_all(&dir);
    let mut out = Vec::new();
    for pick in [0u8, 1, 2, 6] {
        let got = block_on(async {
            let system = ActorSystem::new();
            let ps = system
                .spawn(ParamServer::new(ps_args(pick, Some(&dir))))
                .await
                .ok()?;
            let _ = ps.ask(|r| PsMsg::Push(gradients(0, 0, 0.5), r), T).await;
            let path = ps.ask(PsMsg::Checkpoint, T).await.ok()?.ok()?;
            stop(&ps).await;
            std::fs::read(path).ok()
        });
        if let Some(bytes) = got {
            let mut s = vec![pick];
            s.extend(bytes);
            out.push(s);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = ExitReason::Normal;
    out
}
