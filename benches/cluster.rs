//! Remote actors and membership between real processes on 127.0.0.1, with
//! raw tokio TCP (same length-prefixed framing) measured in the same run as
//! the anchor. `cargo bench --bench cluster` prints a markdown table.
//!
//! The bench re-executes itself as the peer process (`MANTA_BENCH_PEER=1`);
//! membership timings start real `manta node` processes. Where `taskset`
//! exists, the peer runs on CPU 1 and the driver on CPU 0.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a bench that cannot set up has nothing to measure

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use manta::{Actor, ActorError, ActorSystem, Context, Message, ReplyTo, SendFailure};
use manta_cluster::{ClusterSecret, query_status};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{
    Row, driver_node, print_table, raw_exchange, raw_stream, ready_fields, run_peer, spawn_peer,
};

#[derive(Debug, Serialize, Deserialize)]
enum Sink {
    Put(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Puts, then answers the bytes received.
    PutAck(#[serde(with = "serde_bytes")] Vec<u8>, ReplyTo<u64>),
    Count(ReplyTo<u64>),
    /// `PutAck` with a payload decoded as a slice of the buffer it arrived
    /// in (`manta::actors::shared_bytes`), not copied into a fresh vector.
    PutShared(
        #[serde(with = "manta::actors::shared_bytes")] manta::actors::bytes::Bytes,
        ReplyTo<u64>,
    ),
}

impl Message for Sink {
    const NAME: &'static str = "manta.bench.Sink";
    const DECODE: Option<manta_actors::wire::Decode<Self>> =
        Some(manta_actors::wire::decode::<Self>);
}

struct Counter(u64, u64);

impl Actor for Counter {
    type Msg = Sink;
    async fn handle(&mut self, msg: Sink, _: &mut Context<Sink>) -> Result<(), ActorError> {
        match msg {
            Sink::Put(b) => {
                self.0 += 1;
                self.1 += b.len() as u64;
            }
            Sink::PutAck(b, r) => {
                self.0 += 1;
                self.1 += b.len() as u64;
                r.send(self.1);
            }
            Sink::Count(r) => {
                r.send(self.0);
            }
            Sink::PutShared(b, r) => {
                self.0 += 1;
                self.1 += b.len() as u64;
                r.send(self.1);
            }
        }
        Ok(())
    }
}

/// MANTA_BENCH_OPEN=1 runs the remote benches without a cluster secret (no
/// pnet layer), to see what the private network costs.
/// With `MANTA_BENCH_MARKS` set, prints `MARK <what> <CLOCK_MONOTONIC
/// seconds>` on stderr, so that a `perf record -k CLOCK_MONOTONIC` of the
/// run can be cut to one phase (`perf report --time a,b`): where the time
/// of one row goes. (`Instant`'s `Debug` shows the monotonic clock on
/// Linux.)
fn mark(what: &str) {
    if std::env::var_os("MANTA_BENCH_MARKS").is_none() {
        return;
    }
    let d = format!("{:?}", Instant::now());
    let num = |key: &str| -> Option<u64> {
        let at = d.find(key)? + key.len();
        d[at..]
            .trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    if let (Some(s), Some(ns)) = (num("tv_sec:"), num("tv_nsec:")) {
        eprintln!("MARK {what} {s}.{ns:09}");
    }
}

/// Alternated rounds of the payload part (`MANTA_BENCH_ROUNDS`, default 5).
fn rounds() -> usize {
    std::env::var("MANTA_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(5)
}

fn open() -> bool {
    std::env::var("MANTA_BENCH_OPEN").is_ok()
}

/// Raw TCP anchor server: frames are `u32` length + bytes. A frame of length
/// 1 holding `b'?'` asks for the count of frames so far (8-byte reply); any
/// other frame is counted. Ping-pong: a frame of length 1 holding `b'!'` is
/// echoed.
async fn tcp_server(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        s.set_nodelay(true).ok();
        tokio::spawn(async move {
            let mut first = [0u8; 4];
            if s.peek(&mut first).await.is_ok_and(|n| n == 4) && first == RECORDS_MAGIC {
                records_server(s).await;
                return;
            }
            let (r, mut w) = s.split();
            let mut r = tokio::io::BufReader::with_capacity(256 * 1024, r);
            let mut count = 0u64;
            let mut bytes = 0u64;
            let mut buf = vec![0u8; 64];
            loop {
                let Ok(len) = r.read_u32().await else { return };
                let len = len as usize;
                if buf.len() < len {
                    buf.resize(len, 0);
                }
                if r.read_exact(&mut buf[..len]).await.is_err() {
                    return;
                }
                if len == 1 && buf[0] == b'?' {
                    let _ = w.write_all(&bytes.to_be_bytes()).await;
                } else if len == 1 && buf[0] == b'!' {
                    let _ = w.write_all(&[0, 0, 0, 1, b'!']).await;
                } else {
                    count += 1;
                    bytes += len as u64;
                }
                let _ = count;
            }
        });
    }
}

/// A connection opening with this (an impossible frame length) is the
/// same-crypto anchor: 48 bytes of lane secrets (material, ticket), then
/// AES-256-GCM records exactly as on the bulk lane (64 KiB of payload
/// each, one key per direction), with no Manta framing: a message is a
/// record holding its length (`u64`) and then its bytes in records, read
/// straight into one buffer and opened there; each is acknowledged with a
/// record of 8 bytes.
const RECORDS_MAGIC: [u8; 4] = [0xff; 4];
const RECORD: usize = 64 * 1024;

async fn read_record_into(
    r: &mut tokio::net::TcpStream,
    opener: &mut manta_cluster::bulk::RecordOpener,
    buf: &mut Vec<u8>,
) -> Option<()> {
    let mut h = [0u8; 4];
    r.read_exact(&mut h).await.ok()?;
    let n = opener.announced(h).ok()?;
    let at = buf.len();
    buf.resize(at + n + 16, 0);
    r.read_exact(&mut buf[at..]).await.ok()?;
    opener.open(h, &mut buf[at..]).ok()?;
    buf.truncate(at + n);
    Some(())
}

async fn records_server(mut s: tokio::net::TcpStream) {
    use manta_cluster::bulk::{LaneSecrets, Side, lane_keys};
    let mut head = [0u8; 52];
    if s.read_exact(&mut head).await.is_err() {
        return;
    }
    let mut secrets = LaneSecrets::fresh();
    secrets.material.copy_from_slice(&head[4..36]);
    secrets.ticket.copy_from_slice(&head[36..52]);
    let (mut sealer, mut opener) = lane_keys(&secrets, Side::Listener).expect("keys");
    let mut msg = Vec::new();
    let mut len = Vec::new();
    loop {
        len.clear();
        if read_record_into(&mut s, &mut opener, &mut len)
            .await
            .is_none()
            || len.len() != 8
        {
            return;
        }
        let n = u64::from_be_bytes(len[..8].try_into().expect("8 bytes")) as usize;
        msg.clear();
        msg.reserve(n + 16);
        while msg.len() < n {
            if read_record_into(&mut s, &mut opener, &mut msg)
                .await
                .is_none()
            {
                return;
            }
        }
        let mut ack = vec![0u8; 4];
        ack.extend_from_slice(&(n as u64).to_be_bytes());
        sealer.seal(&mut ack).expect("seal");
        if s.write_all(&ack).await.is_err() {
            return;
        }
    }
}

/// The same-crypto anchor's client end (see [`RECORDS_MAGIC`]).
struct Records {
    s: tokio::net::TcpStream,
    sealer: manta_cluster::bulk::RecordSealer,
    opener: manta_cluster::bulk::RecordOpener,
}

impl Records {
    async fn connect(addr: SocketAddr) -> Records {
        use manta_cluster::bulk::{LaneSecrets, Side, lane_keys};
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).ok();
        let secrets = LaneSecrets::fresh();
        let mut head = RECORDS_MAGIC.to_vec();
        head.extend_from_slice(&secrets.material);
        head.extend_from_slice(&secrets.ticket);
        s.write_all(&head).await.expect("head");
        let (sealer, opener) = lane_keys(&secrets, Side::Dialer).expect("keys");
        Records { s, sealer, opener }
    }

    /// Sends `data` as one message and waits for its acknowledgement.
    async fn exchange(&mut self, data: &[u8]) {
        let mut len = vec![0u8; 4];
        len.extend_from_slice(&(data.len() as u64).to_be_bytes());
        self.sealer.seal(&mut len).expect("seal");
        self.s.write_all(&len).await.expect("write");
        for piece in data.chunks(RECORD) {
            let mut r = Vec::with_capacity(4 + piece.len() + 16);
            r.extend_from_slice(&[0; 4]);
            r.extend_from_slice(piece);
            self.sealer.seal(&mut r).expect("seal");
            self.s.write_all(&r).await.expect("write");
        }
        let mut ack = Vec::new();
        read_record_into(&mut self.s, &mut self.opener, &mut ack)
            .await
            .expect("ack");
    }
}

async fn peer_main() {
    let system = ActorSystem::new();
    system
        .spawn_named("sink", Counter(0, 0))
        .await
        .expect("sink");
    // A second actor for small asks while `sink` takes large messages.
    system
        .spawn_named("sink2", Counter(0, 0))
        .await
        .expect("sink2");
    run_peer(system, open(), tcp_server).await;
}

fn pinned(cpu: u32, program: &Path) -> Command {
    let has_taskset = Command::new("taskset")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if has_taskset {
        let mut c = Command::new("taskset");
        c.args(["-c", &cpu.to_string()]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// 5,000 sequential asks, then 5,000 TCP ping-pongs of one 5-byte frame;
/// both latency lists sorted.
async fn ask_round_trips<R, W>(
    sink: manta::ActorHandle<Sink>,
    rd: &mut R,
    wr: &mut W,
) -> (Vec<Duration>, Vec<Duration>)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let t = Duration::from_secs(60);
    let k = 5_000;
    let mut lat = Vec::with_capacity(k);
    for _ in 0..k {
        let s = Instant::now();
        sink.ask(Sink::Count, t).await.expect("ask");
        lat.push(s.elapsed());
    }
    lat.sort();
    let mut tlat = Vec::with_capacity(k);
    for _ in 0..k {
        let s = Instant::now();
        wr.write_all(&[0, 0, 0, 1, b'!']).await.unwrap();
        wr.flush().await.unwrap();
        let mut b = [0u8; 5];
        rd.read_exact(&mut b).await.unwrap();
        tlat.push(s.elapsed());
    }
    tlat.sort();
    (lat, tlat)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

async fn remote_benches(dir: &Path, rows: &mut Vec<Row>) {
    let exe = std::env::current_exe().expect("exe");
    let mut peer = spawn_peer(pinned(1, &exe), dir);
    let tcp = peer.tcp;
    let node = driver_node(dir, open(), &peer, "sink").await;
    let sink = node.where_is::<Sink>("sink").expect("sink");
    let t = Duration::from_secs(60);

    // 1. 100-byte tells.
    let n = 200_000u64;
    let payload = vec![7u8; 100];
    let before = sink.ask(Sink::Count, t).await.expect("count");
    let start = Instant::now();
    for _ in 0..n {
        let mut msg = Sink::Put(payload.clone());
        loop {
            match sink.tell(msg) {
                Ok(()) => break,
                Err(e) if e.failure == SendFailure::Backpressure => {
                    msg = e.message;
                    tokio::task::yield_now().await;
                }
                Err(e) => panic!("tell failed: {e}"),
            }
        }
    }
    let after = sink.ask(Sink::Count, t).await.expect("count");
    let manta_rate = n as f64 / start.elapsed().as_secs_f64();
    assert_eq!(after - before, n);
    let mut tcp_conn = tokio::net::TcpStream::connect(tcp)
        .await
        .expect("tcp connect");
    tcp_conn.set_nodelay(true).ok();
    let (mut rd, wr) = tcp_conn.split();
    let mut wr = tokio::io::BufWriter::with_capacity(256 * 1024, wr);
    let start = Instant::now();
    for _ in 0..n {
        wr.write_u32(100).await.unwrap();
        wr.write_all(&payload).await.unwrap();
    }
    wr.write_all(&[0, 0, 0, 1, b'?']).await.unwrap();
    wr.flush().await.unwrap();
    let _ = rd.read_u64().await.unwrap();
    let tcp_rate = n as f64 / start.elapsed().as_secs_f64();
    rows.push(Row(
        "100-byte tell throughput".into(),
        format!("{:.0} msgs/s", manta_rate),
        format!("{:.0} msgs/s", tcp_rate),
        format!(
            "{:.2}x of TCP (target ≥ 250,000 msgs/s)",
            manta_rate / tcp_rate
        ),
    ));

    // 2. Ask round trips: from the main thread (`block_on`, outside the
    // runtime's worker threads: every reply is a cross-thread wake-up, for
    // Manta and TCP alike) and from a task on the runtime, where actor code
    // runs.
    let (lat, tlat) = ask_round_trips(sink.clone(), &mut rd, &mut wr).await;
    let (task_lat, task_tlat) = {
        let sink = sink.clone();
        let conn = tokio::net::TcpStream::connect(tcp)
            .await
            .expect("tcp connect");
        conn.set_nodelay(true).ok();
        tokio::spawn(async move {
            let (mut rd, mut wr) = conn.into_split();
            ask_round_trips(sink, &mut rd, &mut wr).await
        })
        .await
        .expect("ask task")
    };
    for (what, lat, tlat) in [
        ("from the main thread", lat, tlat),
        ("from a runtime task", task_lat, task_tlat),
    ] {
        rows.push(Row(
            format!("ask round trip p50 / p99, {what}"),
            format!("{} / {}", us(pct(&lat, 0.5)), us(pct(&lat, 0.99))),
            format!("{} / {}", us(pct(&tlat, 0.5)), us(pct(&tlat, 0.99))),
            format!(
                "p50 {:.2}x of TCP (target p50 ≤ 100 µs)",
                pct(&lat, 0.5).as_secs_f64() / pct(&tlat, 0.5).as_secs_f64()
            ),
        ));
    }

    // 3. Large payloads: each message acknowledged before the next. The
    // four ways run in turn, `rounds()` times; each row gives the median
    // rate and the median (range) of the per-round ratios, so one noisy
    // phase of the VM moves one round, not the figure.
    let mut raw = raw_stream(&node, &peer).await;
    let mut records = Records::connect(tcp).await;
    let lane_before = node.remoting().lane_messages();
    for (size, count) in [(1usize << 20, 64usize), (16 << 20, 8)] {
        let data = vec![3u8; size];
        let (mut m_r, mut t_r, mut w_r, mut c_r) = (vec![], vec![], vec![], vec![]);
        let mut s_r = vec![];
        for _ in 0..rounds() {
            // The messages exist before the clock starts, as the anchors'
            // buffer does: building a message is the caller's work, not
            // the transport's (and a fresh buffer's page faults are slow
            // here).
            let msgs: Vec<Vec<u8>> = (0..count).map(|_| data.clone()).collect();
            let start = Instant::now();
            mark(&format!("manta {size} start"));
            for m in msgs {
                sink.ask(|r| Sink::PutAck(m, r), t).await.expect("put");
            }
            mark(&format!("manta {size} end"));
            m_r.push((size * count) as f64 / start.elapsed().as_secs_f64());
            // One buffer, shared by every message (a `Bytes` clone is a
            // reference count), as the anchors write from one buffer.
            let shared = manta::actors::bytes::Bytes::from(data.clone());
            let msgs: Vec<manta::actors::bytes::Bytes> =
                (0..count).map(|_| shared.clone()).collect();
            let start = Instant::now();
            mark(&format!("shared {size} start"));
            for m in msgs {
                sink.ask(|r| Sink::PutShared(m, r), t).await.expect("put");
            }
            mark(&format!("shared {size} end"));
            s_r.push((size * count) as f64 / start.elapsed().as_secs_f64());
            let start = Instant::now();
            for _ in 0..count {
                wr.write_u32(size as u32).await.unwrap();
                wr.write_all(&data).await.unwrap();
                wr.write_all(&[0, 0, 0, 1, b'?']).await.unwrap();
                wr.flush().await.unwrap();
                let _ = rd.read_u64().await.unwrap();
            }
            t_r.push((size * count) as f64 / start.elapsed().as_secs_f64());
            let start = Instant::now();
            for _ in 0..count {
                raw_exchange(&mut raw, &data, &mut []).await;
            }
            w_r.push((size * count) as f64 / start.elapsed().as_secs_f64());
            let start = Instant::now();
            for _ in 0..count {
                records.exchange(&data).await;
            }
            c_r.push((size * count) as f64 / start.elapsed().as_secs_f64());
        }
        let ratio = |a: &[f64], b: &[f64]| {
            let mut r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
            r.sort_by(f64::total_cmp);
            format!("{:.2}x ({:.2}–{:.2})", r[r.len() / 2], r[0], r[r.len() - 1])
        };
        let mid = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let mib = |bps: f64| format!("{:.0} MiB/s", bps / (1 << 20) as f64);
        rows.push(Row(
            format!(
                "{} MiB messages ({count}, acked; {} rounds, medians)",
                size >> 20,
                m_r.len()
            ),
            mib(mid(&m_r)),
            mib(mid(&t_r)),
            format!(
                "{} of TCP; {} of AES-256-GCM records on bare TCP; {} of the raw mesh stream",
                ratio(&m_r, &t_r),
                ratio(&m_r, &c_r),
                ratio(&m_r, &w_r)
            ),
        ));
        rows.push(Row(
            format!(
                "… the same messages with a `shared_bytes` payload (decoded without a copy; {} rounds, medians)",
                s_r.len()
            ),
            mib(mid(&s_r)),
            mib(mid(&t_r)),
            format!(
                "{} of TCP; {} of AES-256-GCM records on bare TCP; {} of the `Vec<u8>` payload",
                ratio(&s_r, &t_r),
                ratio(&s_r, &c_r),
                ratio(&s_r, &m_r)
            ),
        ));
        rows.push(Row(
            "… the same bytes as AES-256-GCM records (64 KiB) on bare TCP, no Manta framing"
                .to_string(),
            mib(mid(&c_r)),
            mib(mid(&t_r)),
            format!("{} of TCP: the same-crypto anchor", ratio(&c_r, &t_r)),
        ));
        rows.push(Row(
            format!(
                "… the same bytes on a raw mesh stream ({}), no Manta framing",
                if open() {
                    "noise + yamux"
                } else {
                    "pnet + noise + yamux"
                }
            ),
            mib(mid(&w_r)),
            mib(mid(&t_r)),
            format!("{} of TCP: the transport's own ceiling", ratio(&w_r, &t_r)),
        ));
    }
    rows.push(Row(
        "… messages that took the bulk lane".to_string(),
        format!("{}", node.remoting().lane_messages() - lane_before),
        "—".to_string(),
        format!(
            "lane in use: {}",
            node.remoting().lane_use(peer_id(&node)).as_str()
        ),
    ));

    // 4. Head-of-line blocking: small asks to another actor on the same
    // peer, alone and while 16 MiB messages stream to `sink`.
    let sink2 = node.where_is::<Sink>("sink2").expect("sink2");
    let small_p50 = |sink2: manta::ActorHandle<Sink>| async move {
        let mut lat = Vec::with_capacity(2_000);
        for _ in 0..2_000 {
            let s = Instant::now();
            sink2.ask(Sink::Count, t).await.expect("ask");
            lat.push(s.elapsed());
        }
        lat.sort();
        lat
    };
    let quiet = tokio::spawn(small_p50(sink2.clone())).await.expect("quiet");
    let big: Vec<Vec<u8>> = (0..32).map(|_| vec![5u8; 16 << 20]).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let streamer = {
        let (sink, stop) = (sink.clone(), std::sync::Arc::clone(&stop));
        tokio::spawn(async move {
            let mut sent = 0usize;
            for m in big {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                sink.ask(|r| Sink::PutAck(m, r), t).await.expect("put");
                sent += 1;
            }
            sent
        })
    };
    let busy = tokio::spawn(small_p50(sink2)).await.expect("busy");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let streamed = streamer.await.expect("streamer");
    rows.push(Row(
        format!(
            "small ask p50 / p99 to another actor while 16 MiB messages stream ({streamed} sent meanwhile)"
        ),
        format!("{} / {}", us(pct(&busy, 0.5)), us(pct(&busy, 0.99))),
        format!(
            "alone: {} / {}",
            us(pct(&quiet, 0.5)),
            us(pct(&quiet, 0.99))
        ),
        format!(
            "p50 {:.2}x of the p50 alone (target ≤ 100 µs)",
            pct(&busy, 0.5).as_secs_f64() / pct(&quiet, 0.5).as_secs_f64()
        ),
    ));

    // 5. The threshold: asks from 4 to 256 KiB on the lane and on the
    // mesh, from a second driver node whose lane takes frames from 4 KiB.
    let pid = peer_id(&node);
    let mut c = common::node_config(dir, "driver2", open(), vec![peer.gossip.clone()]);
    c.bulk.threshold = 4096;
    let d2 = manta_cluster::Node::start(c, ActorSystem::new())
        .await
        .expect("second driver");
    let lane_addr: SocketAddr = {
        let mut view = d2.membership().view();
        loop {
            let found = view.borrow_and_update().iter().find_map(|m| {
                (m.id == pid.to_string() && m.actors.iter().any(|a| a == "sink"))
                    .then(|| m.keys.get("bulk").and_then(|a| a.parse().ok()))
                    .flatten()
            });
            if let Some(a) = found {
                break a;
            }
            view.changed().await.expect("view");
        }
    };
    assert!(
        d2.remoting()
            .wait_counters(t, |r| r.lane_use(pid) != manta_cluster::LaneUse::MeshNoLane)
            .await
    );
    let sink_d2 = {
        let mut view = d2.membership().view();
        loop {
            if let Ok(h) = d2.where_is::<Sink>("sink") {
                break h;
            }
            view.changed().await.expect("view");
        }
    };
    for size in [4usize << 10, 16 << 10, 64 << 10, 256 << 10] {
        let count = 400;
        let mut rates = Vec::new();
        for lane in [true, false] {
            d2.remoting().set_lane_addr(pid, lane.then_some(lane_addr));
            let msgs: Vec<Vec<u8>> = (0..count).map(|_| vec![9u8; size]).collect();
            let start = Instant::now();
            for m in msgs {
                sink_d2.ask(|r| Sink::PutAck(m, r), t).await.expect("put");
            }
            rates.push((size * count) as f64 / start.elapsed().as_secs_f64());
        }
        d2.remoting().set_lane_addr(pid, Some(lane_addr));
        let mib = |bps: f64| format!("{:.0} MiB/s", bps / (1 << 20) as f64);
        rows.push(Row(
            format!("threshold: {} KiB asks ({count}), lane vs mesh", size >> 10),
            format!("lane {}", mib(rates[0])),
            format!("mesh {}", mib(rates[1])),
            format!("lane {:.2}x of the mesh", rates[0] / rates[1]),
        ));
    }
    d2.leave().await;
    drop(peer.child.stdin.take());
    let _ = peer.child.wait();
    node.leave().await;
}

/// The peer's id: the one other live member.
fn peer_id(node: &manta_cluster::Node) -> libp2p::PeerId {
    let me = node.identity().peer_id().to_string();
    node.membership()
        .members()
        .into_iter()
        .find(|m| m.id != me)
        .and_then(|m| m.id.parse().ok())
        .expect("a peer")
}

struct Proc {
    child: Child,
    gossip: SocketAddr,
    id: String,
}

fn start_manta(bin: &Path, dir: &Path, name: &str, seed: Option<SocketAddr>) -> Proc {
    let mut cmd = Command::new(bin);
    cmd.args(["node", "--name", name, "--gossip", "127.0.0.1:0"])
        .arg("--key-file")
        .arg(dir.join(format!("{name}.key")))
        .arg("--secret-file")
        .arg(dir.join("secret"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(s) = seed {
        cmd.arg("--seeds").arg(s.to_string());
    }
    let mut child = cmd.spawn().expect("manta node");
    let f = ready_fields(&mut child);
    Proc {
        gossip: f("gossip").parse().expect("gossip"),
        id: f("id"),
        child,
    }
}

async fn all_see(
    procs: &[&Proc],
    secret: &ClusterSecret,
    pred: impl Fn(&manta_cluster::ClusterStatus) -> bool,
) {
    for p in procs {
        loop {
            if let Ok(st) = query_status(&[p.gossip], Some(secret), Duration::from_secs(2)).await {
                if pred(&st) {
                    break;
                }
            }
        }
    }
}

async fn membership_benches(dir: &Path, rows: &mut Vec<Row>) {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_manta"));
    let secret = ClusterSecret::read(&dir.join("secret")).expect("secret");
    for n in [3usize, 10] {
        let mut procs = vec![start_manta(&bin, dir, &format!("m{n}-0"), None)];
        let seed = procs[0].gossip;
        for i in 1..n - 1 {
            procs.push(start_manta(&bin, dir, &format!("m{n}-{i}"), Some(seed)));
        }
        let refs: Vec<&Proc> = procs.iter().collect();
        all_see(&refs, &secret, |st| {
            st.nodes.iter().filter(|x| x.state == "alive").count() == n - 1
        })
        .await;
        let start = Instant::now();
        let joiner = start_manta(&bin, dir, &format!("m{n}-join"), Some(seed));
        procs.push(joiner);
        let refs: Vec<&Proc> = procs.iter().collect();
        all_see(&refs, &secret, |st| {
            st.nodes.iter().filter(|x| x.state == "alive").count() == n
        })
        .await;
        let join = start.elapsed();
        rows.push(Row(
            format!("join seen by all of {n} nodes"),
            format!("{:.0} ms", join.as_secs_f64() * 1e3),
            "—".into(),
            "target ≤ 2 s".into(),
        ));
        if n == 3 {
            let mut victim = procs.remove(1);
            let vid = victim.id.clone();
            let start = Instant::now();
            victim.child.kill().expect("kill -9");
            let _ = victim.child.wait();
            let refs: Vec<&Proc> = procs.iter().collect();
            all_see(&refs, &secret, |st| {
                st.nodes.iter().any(|x| x.id == vid && x.state == "dead")
            })
            .await;
            rows.push(Row(
                "kill -9 → dead on all survivors (defaults)".into(),
                format!("{:.0} ms", start.elapsed().as_secs_f64() * 1e3),
                "—".into(),
                "target ≤ 5 s".into(),
            ));
        }
        if n == 10 {
            // A silent failure: the process stops answering (SIGSTOP) but
            // its sockets stay open, so only the failure detector can tell.
            let mut victim = procs.remove(3);
            let vid = victim.id.clone();
            let pid = victim.child.id().to_string();
            let start = Instant::now();
            let stopped = Command::new("kill")
                .args(["-STOP", &pid])
                .status()
                .is_ok_and(|s| s.success());
            assert!(stopped, "SIGSTOP {pid}");
            let refs: Vec<&Proc> = procs.iter().collect();
            all_see(&refs, &secret, |st| {
                st.nodes.iter().any(|x| x.id == vid && x.state == "dead")
            })
            .await;
            rows.push(Row(
                "SIGSTOP (silent) → dead on all 9 survivors (defaults)".into(),
                format!("{:.0} ms", start.elapsed().as_secs_f64() * 1e3),
                "—".into(),
                "target ≤ 5 s".into(),
            ));
            let _ = victim.child.kill();
            let _ = victim.child.wait();
        }
        for mut p in procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

fn main() {
    let peer = std::env::var("MANTA_BENCH_PEER").is_ok();
    if !peer {
        // The driver runs on core 0 (the peer was started on core 1). Pinned
        // before the runtime starts, so that its threads inherit it (taskset
        // -p changes the one thread it names) and tokio sizes itself to one
        // core, as it does in the peer.
        let _ = Command::new("taskset")
            .args(["-p", "-c", "0", &std::process::id().to_string()])
            .output();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if peer {
        rt.block_on(peer_main());
        return;
    }
    // `cargo bench` passes `--bench`.
    let dir = std::env::temp_dir().join(format!("manta-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    ClusterSecret::write_new(&dir.join("secret")).expect("secret");
    let mut rows = Vec::new();
    // `-- remote` or `-- membership` runs one part.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wants = |part: &str| only.is_empty() || only.iter().any(|o| o == part);
    if wants("remote") {
        rt.block_on(remote_benches(&dir, &mut rows));
    }
    if wants("membership") {
        rt.block_on(membership_benches(&dir, &mut rows));
    }
    print_table(
        [
            "measure",
            "manta",
            "raw tokio TCP, same framing",
            "ratio / target",
        ],
        rows,
    );
    let _ = std::fs::remove_dir_all(&dir);
}
