//! kameo 0.22 remote actors between two processes on 127.0.0.1, measured the
//! way `cargo bench --bench cluster -- remote` measures Manta: 100-byte
//! tells (then one ask), sequential ask round trips, and 1 MiB / 16 MiB
//! asks. TCP + noise + yamux, no private network (kameo has none): compare
//! with Manta's `MANTA_BENCH_OPEN=1` run as well as the sealed one.
//!
//! `cargo run --release` starts the peer (this binary with `peer`), dials it,
//! looks the actor up through kameo's Kademlia registry and prints a table.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kameo::prelude::*;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, SwarmBuilder, noise, tcp, yamux};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

#[derive(Actor, RemoteActor, Default)]
struct Sink {
    n: u64,
    bytes: u64,
}

#[derive(Serialize, Deserialize)]
struct Put(#[serde(with = "serde_bytes")] Vec<u8>);

#[derive(Serialize, Deserialize)]
struct Count;

#[remote_message]
impl Message<Put> for Sink {
    type Reply = u64;
    async fn handle(&mut self, msg: Put, _: &mut Context<Self, Self::Reply>) -> u64 {
        self.n += 1;
        self.bytes += msg.0.len() as u64;
        self.bytes
    }
}

#[remote_message]
impl Message<Count> for Sink {
    type Reply = u64;
    async fn handle(&mut self, _: Count, _: &mut Context<Self, Self::Reply>) -> u64 {
        self.n
    }
}

#[derive(NetworkBehaviour)]
struct Net {
    kameo: remote::Behaviour,
}

type Swarm = libp2p::Swarm<Net>;

fn swarm() -> Swarm {
    let messaging = remote::messaging::Config::default()
        .with_request_timeout(Duration::from_secs(120))
        .with_request_size_maximum(64 << 20)
        .with_response_size_maximum(64 << 20);
    let mut swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp transport")
        .with_behaviour(|key| Net {
            kameo: remote::Behaviour::new(key.public().to_peer_id(), messaging),
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    swarm.behaviour().kameo.init_global();
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr"))
        .expect("listen");
    swarm
}

/// Polls the swarm until it listens; returns the address.
async fn listening(swarm: &mut Swarm) -> Multiaddr {
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            return address;
        }
    }
}

fn drive(mut swarm: Swarm) {
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
}

async fn peer() {
    let mut swarm = swarm();
    let addr = listening(&mut swarm).await;
    println!("ready {} {addr}", swarm.local_peer_id());
    drive(swarm);
    let sink = Sink::spawn(Sink::default());
    // Registration needs a Kademlia peer; retry until the driver is there.
    loop {
        match sink.register("sink").await {
            Ok(()) => break,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    println!("registered");
    // Until the driver closes our stdin.
    let mut buf = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut buf).await;
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn has_taskset() -> bool {
    std::process::Command::new("taskset")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
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
    let mut parts = ready.split_whitespace().skip(1);
    let peer_id: PeerId = parts.next().expect("id").parse().expect("peer id");
    let addr: Multiaddr = parts.next().expect("addr").parse().expect("multiaddr");

    let mut swarm = swarm();
    listening(&mut swarm).await;
    swarm.add_peer_address(peer_id, addr.clone());
    swarm.dial(addr).expect("dial");
    drive(swarm);
    let registered = lines.next_line().await.expect("read");
    assert_eq!(registered.as_deref(), Some("registered"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let sink = loop {
        if let Ok(Some(s)) = RemoteActorRef::<Sink>::lookup("sink").await {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "lookup of `sink` failed for 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    println!("| measure | kameo 0.22 (TCP + noise + yamux, no PSK) |");
    println!("|---|---|");
    // One message, built before any clock; kameo sends by reference.
    let put = Put(vec![7u8; 100]);
    // No tell-throughput figure: a remote tell is one request-response
    // substream in kameo, and 200,000 at once exceed its stream limits
    // ("max sub-streams reached") and are dropped, so a throughput needs
    // windows paced by asks — which measures ask round trips, not tells
    // (BENCHMARKS.md, "Known gaps in method"). What a burst delivers is
    // reported instead.
    // Unwindowed, as Manta's bench sends them: how many arrive.
    let burst = 2_000u64;
    let c0 = sink.ask(&Count).await.expect("count");
    for _ in 0..burst {
        let _ = sink.tell(&put).send();
    }
    let arrived = match sink.ask(&Count).await {
        Ok(c) => format!("{} of {burst} arrived", c - c0),
        Err(e) => format!("the ask after them failed: {e}"),
    };
    println!("| {burst} tells sent at once | {arrived} |");

    let k = 5_000;
    let mut lat = Vec::with_capacity(k);
    for _ in 0..k {
        let s = Instant::now();
        sink.ask(&Count).await.expect("ask");
        lat.push(s.elapsed());
    }
    lat.sort();
    println!(
        "| ask round trip p50 / p99 | {:.1} µs / {:.1} µs |",
        pct(&lat, 0.5).as_secs_f64() * 1e6,
        pct(&lat, 0.99).as_secs_f64() * 1e6
    );

    for (size, count) in [(1usize << 20, 64usize), (16 << 20, 8)] {
        // The messages exist before the clock starts, as Manta's do.
        let msgs: Vec<Put> = (0..count).map(|_| Put(vec![3u8; size])).collect();
        let start = Instant::now();
        let mut failed = None;
        for m in &msgs {
            if let Err(e) = sink.ask(m).await {
                failed = Some(e.to_string());
                break;
            }
        }
        match failed {
            None => println!(
                "| {} MiB messages ({count}, acked) | {:.0} MiB/s |",
                size >> 20,
                (size * count) as f64 / start.elapsed().as_secs_f64() / (1 << 20) as f64
            ),
            Some(e) => println!("| {} MiB messages | failed: {e} |", size >> 20),
        }
    }
    drop(child.stdin.take());
    let _ = child.wait().await;
}

fn main() {
    let is_peer = std::env::args().nth(1).as_deref() == Some("peer");
    if !is_peer && has_taskset() {
        // Pinned before the runtime starts, so that tokio sizes itself to
        // one core, as Manta's and ractor_cluster's bench drivers do.
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
