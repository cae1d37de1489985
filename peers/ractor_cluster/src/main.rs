//! ractor_cluster 0.16 remote actors between two processes on 127.0.0.1,
//! measured the way `cargo bench --bench cluster -- remote` measures Manta:
//! 100-byte tells (then one ask that counts them), sequential ask round
//! trips (from the main thread and from a runtime task), and 1 MiB / 16 MiB
//! asks. Plain TCP with ractor_cluster's cookie handshake and no encryption
//! (its TLS mode needs certificates): compare with Manta's
//! `MANTA_BENCH_OPEN=1` run and with the plaintext TCP anchor.
//!
//! `cargo run --release` starts the peer (this binary with `peer`),
//! connects the two node servers, finds the sink through ractor's process
//! groups (synchronised across nodes) and prints a table.

use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::{NodeServer, RactorClusterMessage};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const COOKIE: &str = "manta-bench";
const GROUP: &str = "sink";
/// 16 MiB payloads plus their envelope exceed ractor_cluster's default
/// 16 MiB inbound frame limit.
const MAX_FRAME: u64 = 64 << 20;

struct Sink;

#[derive(RactorClusterMessage)]
enum SinkMsg {
    Put(Vec<u8>),
    #[rpc]
    PutAck(Vec<u8>, RpcReplyPort<u64>),
    #[rpc]
    Count(RpcReplyPort<u64>),
}

#[derive(Default)]
struct Counts {
    n: u64,
    bytes: u64,
}

impl Actor for Sink {
    type Msg = SinkMsg;
    type State = Counts;
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<SinkMsg>,
        _: (),
    ) -> Result<Counts, ActorProcessingErr> {
        ractor::pg::join(GROUP.to_string(), vec![myself.get_cell()]);
        Ok(Counts::default())
    }

    async fn handle(
        &self,
        _: ActorRef<SinkMsg>,
        msg: SinkMsg,
        st: &mut Counts,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SinkMsg::Put(b) => {
                st.n += 1;
                st.bytes += b.len() as u64;
            }
            SinkMsg::PutAck(b, reply) => {
                st.n += 1;
                st.bytes += b.len() as u64;
                let _ = reply.send(st.bytes);
            }
            SinkMsg::Count(reply) => {
                let _ = reply.send(st.n);
            }
        }
        Ok(())
    }
}

/// A free port on 127.0.0.1 (NodeServer takes a port number, not a
/// listener; the race with another process taking it is harmless here).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

async fn node_server(name: &str) -> (u16, ActorRef<ractor_cluster::NodeServerMessage>) {
    let port = free_port();
    let server = NodeServer::new(
        port,
        COOKIE.to_string(),
        name.to_string(),
        "127.0.0.1".to_string(),
        None,
        None,
    )
    .with_listen_addr("127.0.0.1".parse().expect("ip"))
    .with_max_inbound_frame_size(MAX_FRAME);
    let (server, _) = Actor::spawn(None, server, ()).await.expect("node server");
    (port, server)
}

async fn peer() {
    let (port, _server) = node_server("peer").await;
    let _sink = Actor::spawn(None, Sink, ()).await.expect("sink");
    println!("ready {port}");
    // Until the driver closes our stdin.
    let mut buf = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut buf).await;
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn count(sink: &ActorRef<SinkMsg>) -> u64 {
    ractor::call_t!(sink, SinkMsg::Count, 30_000).expect("count")
}

async fn round_trips(sink: ActorRef<SinkMsg>, k: usize) -> (Duration, Duration) {
    let mut lat = Vec::with_capacity(k);
    for _ in 0..k {
        let s = Instant::now();
        count(&sink).await;
        lat.push(s.elapsed());
    }
    lat.sort();
    (pct(&lat, 0.5), pct(&lat, 0.99))
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn driver() {
    let exe = std::env::current_exe().expect("exe");
    // Like Manta's bench: the peer on core 1, the driver on core 0.
    let mut child = if has_taskset() {
        let mut c = tokio::process::Command::new("taskset");
        c.args(["-c", "1"]).arg(exe);
        c
    } else {
        tokio::process::Command::new(exe)
    };
    let mut child = child
        .arg("peer")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("peer process");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = lines.next_line().await.expect("read").expect("ready line");
    let port: u16 = ready
        .strip_prefix("ready ")
        .and_then(|p| p.parse().ok())
        .expect("ready <port>");

    let (_, server) = node_server("driver").await;
    ractor_cluster::client_connect(&server, ("127.0.0.1", port))
        .await
        .expect("connect");
    // The peer's sink appears in the process group once the two node
    // sessions have authenticated and synchronised their groups.
    let deadline = Instant::now() + Duration::from_secs(30);
    let sink = loop {
        let remote = ractor::pg::get_members(&GROUP.to_string())
            .into_iter()
            .find(|a| !a.get_id().is_local());
        if let Some(cell) = remote {
            break ActorRef::<SinkMsg>::from(cell);
        }
        assert!(Instant::now() < deadline, "no remote sink after 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    println!("| measure | ractor_cluster 0.16.5 (TCP, cookie, no encryption) |");
    println!("|---|---|");
    let n: u64 = std::env::var("RACTOR_TELLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let payload = vec![7u8; 100];
    let before = count(&sink).await;
    let start = Instant::now();
    for _ in 0..n {
        sink.cast(SinkMsg::Put(payload.clone())).expect("tell");
    }
    let arrived = count(&sink).await - before;
    let rate = arrived as f64 / start.elapsed().as_secs_f64();
    if arrived == n {
        println!("| 100-byte tell throughput ({n}, then one ask) | {rate:.0} msgs/s |");
    } else {
        println!(
            "| 100-byte tell throughput | only {arrived} of {n} counted by the ask after them |"
        );
    }

    let k = 5_000;
    let (p50, p99) = round_trips(sink.clone(), k).await;
    println!(
        "| ask round trip p50 / p99, main thread | {:.1} µs / {:.1} µs |",
        us(p50),
        us(p99)
    );
    let (p50, p99) = tokio::spawn(round_trips(sink.clone(), k))
        .await
        .expect("task");
    println!(
        "| ask round trip p50 / p99, runtime task | {:.1} µs / {:.1} µs |",
        us(p50),
        us(p99)
    );

    // Payload rounds as Manta's bench runs them (`MANTA_BENCH_ROUNDS`,
    // default 5): the median rate and the range.
    let rounds: usize = std::env::var("MANTA_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(5);
    for (size, count) in [(1usize << 20, 64usize), (16 << 20, 8)] {
        let mut rates = Vec::new();
        let mut failed = None;
        for _ in 0..rounds {
            // The messages exist before the clock starts, as Manta's do.
            let msgs: Vec<Vec<u8>> = (0..count).map(|_| vec![3u8; size]).collect();
            let start = Instant::now();
            for data in msgs {
                let r = ractor::call_t!(sink, SinkMsg::PutAck, 120_000, data);
                if let Err(e) = r {
                    failed = Some(e.to_string());
                    break;
                }
            }
            rates.push((size * count) as f64 / start.elapsed().as_secs_f64() / (1 << 20) as f64);
        }
        rates.sort_by(f64::total_cmp);
        match failed {
            None => println!(
                "| {} MiB messages ({count}, acked; {} rounds) | {:.0} MiB/s (median; {:.0}–{:.0}) |",
                size >> 20,
                rates.len(),
                rates[rates.len() / 2],
                rates[0],
                rates[rates.len() - 1]
            ),
            Some(e) => println!("| {} MiB messages | failed: {e} |", size >> 20),
        }
    }
    drop(child.stdin.take());
    let _ = child.wait().await;
}

fn has_taskset() -> bool {
    std::process::Command::new("taskset")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn main() {
    let is_peer = std::env::args().nth(1).as_deref() == Some("peer");
    if !is_peer && has_taskset() {
        // Pinned before the runtime starts, so that tokio sizes itself to
        // one core, as Manta's bench driver does.
        let _ = std::process::Command::new("taskset")
            .args(["-p", "-c", "0", &std::process::id().to_string()])
            .output();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if is_peer {
        rt.block_on(peer());
    } else {
        rt.block_on(driver());
    }
}
