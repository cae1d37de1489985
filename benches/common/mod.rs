//! Set-up shared by the bench binaries that measure two processes: the
//! peer is this same binary re-executed with `MANTA_BENCH_PEER=1`; it starts
//! a node and a raw-TCP anchor server, prints one `ready` line, and runs
//! until the driver closes its stdin.

#![allow(dead_code)] // each bench binary uses its own subset

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use manta::ActorSystem;
use manta_cluster::{MemberState, Node, NodeConfig};

/// The transport-level anchor: raw bytes on a libp2p stream of the same
/// mesh (TCP, pnet with a secret, noise, yamux), without Manta's frames,
/// actors or serde. It shows how much of a gap to plain TCP belongs to
/// the transport stack and how much to Manta.
pub(crate) const RAW_STREAM: StreamProtocol = StreamProtocol::new("/manta-bench/raw/1");

/// One row of a bench's markdown table.
pub(crate) struct Row(
    pub(crate) String,
    pub(crate) String,
    pub(crate) String,
    pub(crate) String,
);

/// Prints the rows as a markdown table under `header`.
pub(crate) fn print_table(header: [&str; 4], rows: Vec<Row>) {
    println!("| {} |", header.join(" | "));
    println!("|---|---|---|---|");
    for Row(a, b, c, d) in rows {
        println!("| {a} | {b} | {c} | {d} |");
    }
}

/// A bench node in `dir` (key file per name; the cluster secret
/// `dir/secret` unless `open`).
pub(crate) fn node_config(dir: &Path, name: &str, open: bool, seeds: Vec<String>) -> NodeConfig {
    NodeConfig {
        name: name.to_owned(),
        key_file: Some(dir.join(format!("{name}.key"))),
        secret_file: (!open).then(|| dir.join("secret")),
        seeds,
        ..NodeConfig::default()
    }
}

/// The peer process: starts its node on `system` (its actors already
/// spawned) and the raw-TCP anchor `server` on a port of its own, announces
/// both, and serves until the driver closes stdin.
pub(crate) async fn run_peer<F, Fut>(system: ActorSystem, open: bool, server: F)
where
    F: FnOnce(tokio::net::TcpListener) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let dir = std::path::PathBuf::from(std::env::var("MANTA_BENCH_DIR").expect("dir"));
    let node = Node::start(node_config(&dir, "peer", open, vec![]), system)
        .await
        .expect("node");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("tcp");
    let tcp = listener.local_addr().expect("addr");
    tokio::spawn(server(listener));
    let mut raw = node
        .mesh()
        .stream_control()
        .accept(RAW_STREAM)
        .expect("raw stream protocol");
    tokio::spawn(async move {
        while let Some((_, s)) = raw.next().await {
            tokio::spawn(raw_stream_server(s));
        }
    });
    serve_until_stdin_closes(&node, tcp).await;
}

/// Serves one raw stream: a request is `u32` length + bytes + `u32` answer
/// length; the answer is `u32` length + that many bytes.
async fn raw_stream_server(mut s: libp2p::Stream) {
    let mut buf = Vec::new();
    let mut len = [0u8; 4];
    loop {
        if s.read_exact(&mut len).await.is_err() {
            return;
        }
        buf.resize(u32::from_be_bytes(len) as usize, 0);
        if s.read_exact(&mut buf).await.is_err() || s.read_exact(&mut len).await.is_err() {
            return;
        }
        buf.resize(u32::from_be_bytes(len) as usize, 0);
        let ok = s.write_all(&len).await.is_ok()
            && s.write_all(&buf).await.is_ok()
            && s.flush().await.is_ok();
        if !ok {
            return;
        }
    }
}

/// Opens a raw stream (see [`RAW_STREAM`]) to the peer.
pub(crate) async fn raw_stream(node: &Node, peer: &Peer) -> libp2p::Stream {
    let id: PeerId = peer.id.parse().expect("peer id");
    node.mesh()
        .stream_control()
        .open_stream(id, RAW_STREAM)
        .await
        .expect("raw stream")
}

/// One raw-stream exchange: sends `out`, receives an answer of
/// `back.len()` bytes into `back`.
pub(crate) async fn raw_exchange(s: &mut libp2p::Stream, out: &[u8], back: &mut [u8]) {
    s.write_all(&(out.len() as u32).to_be_bytes())
        .await
        .unwrap();
    s.write_all(out).await.unwrap();
    s.write_all(&(back.len() as u32).to_be_bytes())
        .await
        .unwrap();
    s.flush().await.unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    assert_eq!(
        u32::from_be_bytes(len) as usize,
        back.len(),
        "raw answer length"
    );
    s.read_exact(back).await.unwrap();
}

/// Announces the peer's gossip and anchor addresses on stdout, then serves
/// until the driver closes stdin.
async fn serve_until_stdin_closes(node: &Node, tcp: SocketAddr) {
    println!(
        "ready gossip={} tcp={tcp} id={}",
        node.membership().gossip_addr(),
        node.identity().peer_id()
    );
    let _ = tokio::task::spawn_blocking(|| {
        let mut s = String::new();
        let _ = std::io::stdin().read_line(&mut s);
    })
    .await;
}

/// The driver's view of a started peer process.
pub(crate) struct Peer {
    pub(crate) child: Child,
    pub(crate) gossip: String,
    pub(crate) tcp: SocketAddr,
    pub(crate) id: String,
}

/// Reads the `ready k=v ...` line a started process prints first; the
/// returned function gives a field's value (and panics naming a missing one).
pub(crate) fn ready_fields(child: &mut Child) -> impl Fn(&str) -> String + use<> {
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    move |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no `{k}=` in the ready line {line:?}"))
            .to_owned()
    }
}

/// Starts `command` (this binary) as the peer and reads its `ready` line.
pub(crate) fn spawn_peer(mut command: Command, dir: &Path) -> Peer {
    let mut child = command
        .env("MANTA_BENCH_PEER", "1")
        .env("MANTA_BENCH_DIR", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("peer process");
    let field = ready_fields(&mut child);
    Peer {
        gossip: field("gossip"),
        tcp: field("tcp").parse().expect("tcp addr"),
        id: field("id"),
        child,
    }
}

/// Starts the driver's node, joined to the peer, and waits until the peer
/// is alive and gossips the actor `name`.
pub(crate) async fn driver_node(dir: &Path, open: bool, peer: &Peer, name: &str) -> Node {
    let node = Node::start(
        node_config(dir, "driver", open, vec![peer.gossip.clone()]),
        ActorSystem::new(),
    )
    .await
    .expect("driver node");
    let mut view = node.membership().view();
    while !view
        .borrow_and_update()
        .iter()
        .any(|m| m.state == MemberState::Alive && m.actors.iter().any(|a| a == name))
    {
        view.changed().await.expect("view");
    }
    node
}
