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

async fn driver() {
    let exe = std::env::current_exe().expect("exe");
    let mut child = tokio::process::Command::new(exe)
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
    // 200,000 like Manta's bench unless KAMEO_TELLS says otherwise.
    let n: u64 = std::env::var("KAMEO_TELLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let payload = vec![7u8; 100];
    // A remote tell is one request-response substream in kameo: 200,000 at
    // once exceed its stream limits ("max sub-streams reached") and are
    // dropped. So tells go in windows of 64, each followed by an ask (which
    // paces them; substreams are not ordered, so it cannot count them),
    // and the clock stops once the count shows every tell arrived.
    let before = sink.ask(&Count).await.expect("count");
    let window = 64u64;
    let start = Instant::now();
    let mut sent = 0;
    let mut failed = None;
    while sent < n && failed.is_none() {
        for _ in 0..window {
            sink.tell(&Put(payload.clone())).send().expect("tell");
        }
        sent += window;
        if let Err(e) = sink.ask(&Count).await {
            failed = Some(format!("ask after {sent} tells: {e}"));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut arrived = 0;
    while failed.is_none() && arrived < sent && Instant::now() < deadline {
        arrived = sink.ask(&Count).await.map(|c| c - before).unwrap_or(0);
    }
    let rate = arrived as f64 / start.elapsed().as_secs_f64();
    match failed {
        None if arrived == sent => println!(
            "| 100-byte tell throughput (windows of {window}, each followed by an ask) | {rate:.0} msgs/s |"
        ),
        None => {
            println!("| 100-byte tell throughput | only {arrived} of {sent} arrived within 30 s |")
        }
        Some(e) => println!("| 100-byte tell throughput | failed: {e} |"),
    }
    // Unwindowed, as Manta's bench sends them: how many arrive.
    let burst = 2_000u64;
    let c0 = sink.ask(&Count).await.expect("count");
    for _ in 0..burst {
        let _ = sink.tell(&Put(payload.clone())).send();
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
        let data = vec![3u8; size];
        let start = Instant::now();
        let mut failed = None;
        for _ in 0..count {
            if let Err(e) = sink.ask(&Put(data.clone())).await {
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().nth(1).as_deref() == Some("peer") {
        peer().await;
    } else {
        driver().await;
    }
}
