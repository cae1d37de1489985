//! How fast can the transport under Manta's mesh carry large payloads,
//! before any actor, frame or serde code runs? Between two processes on
//! 127.0.0.1 (the peer pinned to core 1, the driver to core 0, as in
//! `cargo bench --bench cluster`), each mode sends 64 messages of 1 MiB and
//! 8 of 16 MiB, each answered by an 8-byte ack, and then the same bytes on
//! plain tokio TCP with the same framing (4-byte length, payload, ack): the
//! anchor of the same run.
//!
//! Modes:
//! - `plain`, `noise`, `tls`: one libp2p 0.56 stream (libp2p-stream) over
//!   TCP + {no encryption | noise | TLS 1.3} + yamux 0.13, default configs.
//! - `aes`, `chacha`: plain TCP carrying 64 KiB records sealed with
//!   AES-256-GCM or ChaCha20-Poly1305 (ring), a counter nonce per record,
//!   fixed keys, written four records (256 KiB) at a time as they are
//!   sealed: the cost of the cipher alone on a socket, not a protocol.
//!
//! `cargo run --release -- all` runs every mode three times, alternating;
//! `cargo run --release -- MODE` runs one; `cargo run --release -- ciphers`
//! measures how fast one core seals 64 KiB records with each AEAD.

use std::time::{Duration, Instant};

use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, SwarmBuilder, noise, tcp, tls, yamux};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const PROTOCOL: StreamProtocol = StreamProtocol::new("/manta-peer-transports/1");
const MODES: [&str; 5] = ["plain", "noise", "tls", "aes", "chacha"];
const SIZES: [(usize, usize); 2] = [(1 << 20, 64), (16 << 20, 8)];
/// Plaintext bytes per sealed record (noise's frames hold at most 65,519).
const RECORD: usize = 64 * 1024;
const TAG: usize = 16;
/// Records sealed per socket write (the sealed modes).
const BATCH: usize = 4;

type Swarm = libp2p::Swarm<libp2p_stream::Behaviour>;

fn swarm(mode: &str) -> Swarm {
    let b = SwarmBuilder::with_new_identity().with_tokio();
    let tcp = tcp::Config::default().nodelay(true);
    let idle = |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(600));
    let stream = |_: &libp2p::identity::Keypair| libp2p_stream::Behaviour::new();
    match mode {
        "plain" => b
            .with_tcp(
                tcp,
                |k: &libp2p::identity::Keypair| {
                    Ok::<_, std::convert::Infallible>(libp2p::plaintext::Config::new(k))
                },
                yamux::Config::default,
            )
            .expect("tcp")
            .with_behaviour(stream)
            .expect("behaviour")
            .with_swarm_config(idle)
            .build(),
        "noise" => b
            .with_tcp(tcp, noise::Config::new, yamux::Config::default)
            .expect("tcp")
            .with_behaviour(stream)
            .expect("behaviour")
            .with_swarm_config(idle)
            .build(),
        "tls" => b
            .with_tcp(tcp, tls::Config::new, yamux::Config::default)
            .expect("tcp")
            .with_behaviour(stream)
            .expect("behaviour")
            .with_swarm_config(idle)
            .build(),
        other => panic!("not a libp2p mode: {other}"),
    }
}

async fn listening(s: &mut Swarm) -> Multiaddr {
    s.listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("addr"))
        .expect("listen");
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = s.select_next_some().await {
            return address;
        }
    }
}

fn sealed(mode: &str) -> bool {
    mode == "aes" || mode == "chacha"
}

fn key(mode: &str) -> LessSafeKey {
    let alg = if mode == "aes" {
        &ring::aead::AES_256_GCM
    } else {
        &ring::aead::CHACHA20_POLY1305
    };
    LessSafeKey::new(UnboundKey::new(alg, &[9u8; 32]).expect("32-byte key"))
}

/// Record `n`'s nonce; the two directions use disjoint counters.
fn nonce(n: u64) -> Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_le_bytes());
    Nonce::assume_unique_for_key(b)
}

const ACK_NONCES: u64 = 1 << 63;

/// One end of a sealed-record TCP connection.
struct Sealed {
    tcp: TcpStream,
    key: LessSafeKey,
    sent: u64,
    received: u64,
    buf: Vec<u8>,
}

impl Sealed {
    fn new(tcp: TcpStream, mode: &str, driver: bool) -> Self {
        let (sent, received) = if driver {
            (0, ACK_NONCES)
        } else {
            (ACK_NONCES, 0)
        };
        Sealed {
            tcp,
            key: key(mode),
            sent,
            received,
            buf: Vec::new(),
        }
    }

    /// Seals the message record by record, writing every `BATCH` records
    /// as they are sealed, so the receiver opens one batch while the next
    /// is sealed.
    async fn send(&mut self, msg: &[u8]) {
        self.buf.clear();
        self.buf
            .extend_from_slice(&(msg.len() as u32).to_be_bytes());
        for (i, piece) in msg.chunks(RECORD).enumerate() {
            let at = self.buf.len();
            self.buf.extend_from_slice(piece);
            let tag = self
                .key
                .seal_in_place_separate_tag(nonce(self.sent), Aad::empty(), &mut self.buf[at..])
                .expect("seal");
            self.buf.extend_from_slice(tag.as_ref());
            self.sent += 1;
            if (i + 1) % BATCH == 0 {
                self.tcp.write_all(&self.buf).await.expect("write");
                self.buf.clear();
            }
        }
        self.tcp.write_all(&self.buf).await.expect("write");
    }

    /// Reads and opens one message; its length, or None at the end.
    async fn recv(&mut self) -> Option<usize> {
        let mut len = [0u8; 4];
        self.tcp.read_exact(&mut len).await.ok()?;
        let total = u32::from_be_bytes(len) as usize;
        self.buf.resize(RECORD + TAG, 0);
        let mut left = total;
        while left > 0 {
            let n = left.min(RECORD);
            let rec = &mut self.buf[..n + TAG];
            self.tcp.read_exact(rec).await.ok()?;
            self.key
                .open_in_place(nonce(self.received), Aad::empty(), rec)
                .expect("a record that opens");
            self.received += 1;
            left -= n;
        }
        Some(total)
    }
}

/// Plain TCP, and a libp2p stream, serving length + payload → 8-byte ack.
async fn serve_tcp(mut s: TcpStream) {
    let mut buf = Vec::new();
    let mut len = [0u8; 4];
    while s.read_exact(&mut len).await.is_ok() {
        buf.resize(u32::from_be_bytes(len) as usize, 0);
        if s.read_exact(&mut buf).await.is_err() || s.write_all(&[0; 8]).await.is_err() {
            return;
        }
    }
}

async fn serve_stream(mut s: libp2p::Stream) {
    let mut buf = Vec::new();
    let mut len = [0u8; 4];
    while s.read_exact(&mut len).await.is_ok() {
        buf.resize(u32::from_be_bytes(len) as usize, 0);
        let ok = s.read_exact(&mut buf).await.is_ok()
            && s.write_all(&[0; 8]).await.is_ok()
            && s.flush().await.is_ok();
        if !ok {
            return;
        }
    }
}

async fn peer(mode: String) {
    let anchor = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let anchor_port = anchor.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((s, _)) = anchor.accept().await {
            s.set_nodelay(true).expect("nodelay");
            tokio::spawn(serve_tcp(s));
        }
    });
    if sealed(&mode) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!(
            "ready {anchor_port} {}",
            l.local_addr().expect("addr").port()
        );
        tokio::spawn(async move {
            let (s, _) = l.accept().await.expect("accept");
            s.set_nodelay(true).expect("nodelay");
            let mut ch = Sealed::new(s, &mode, false);
            while ch.recv().await.is_some() {
                ch.send(&[0; 8]).await;
            }
        });
    } else {
        let mut s = swarm(&mode);
        let addr = listening(&mut s).await;
        let mut incoming = s
            .behaviour()
            .new_control()
            .accept(PROTOCOL)
            .expect("protocol");
        println!("ready {anchor_port} {} {addr}", s.local_peer_id());
        tokio::spawn(async move {
            loop {
                s.select_next_some().await;
            }
        });
        tokio::spawn(async move {
            while let Some((_, st)) = incoming.next().await {
                tokio::spawn(serve_stream(st));
            }
        });
    }
    // Until the driver closes our stdin.
    let mut b = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut b).await;
}

enum Channel {
    Stream(libp2p::Stream),
    Sealed(Box<Sealed>),
}

impl Channel {
    async fn exchange(&mut self, msg: &[u8]) {
        match self {
            Channel::Stream(s) => {
                s.write_all(&(msg.len() as u32).to_be_bytes())
                    .await
                    .expect("write");
                s.write_all(msg).await.expect("write");
                s.flush().await.expect("flush");
                s.read_exact(&mut [0; 8]).await.expect("ack");
            }
            Channel::Sealed(s) => {
                s.send(msg).await;
                assert_eq!(s.recv().await, Some(8), "ack");
            }
        }
    }
}

async fn tcp_exchange(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(&(msg.len() as u32).to_be_bytes())
        .await
        .expect("write");
    s.write_all(msg).await.expect("write");
    s.read_exact(&mut [0; 8]).await.expect("ack");
}

fn mib_per_s(bytes: usize, t: Instant) -> f64 {
    bytes as f64 / t.elapsed().as_secs_f64() / (1 << 20) as f64
}

/// Seals 2 GiB in 64 KiB records with each AEAD on one core (the
/// driver's), three times.
fn ciphers() {
    let algs: [(&str, &'static ring::aead::Algorithm); 3] = [
        ("ChaCha20-Poly1305", &ring::aead::CHACHA20_POLY1305),
        ("AES-128-GCM", &ring::aead::AES_128_GCM),
        ("AES-256-GCM", &ring::aead::AES_256_GCM),
    ];
    println!("| AEAD (ring, 64 KiB records, one core) | seal MiB/s |");
    println!("|---|---|");
    for _ in 0..3 {
        for (name, alg) in algs {
            let key =
                LessSafeKey::new(UnboundKey::new(alg, &[9u8; 32][..alg.key_len()]).expect("key"));
            let mut buf = vec![3u8; RECORD];
            let n = (2usize << 30) / RECORD;
            let t = Instant::now();
            for i in 0..n {
                let _tag = key
                    .seal_in_place_separate_tag(nonce(i as u64), Aad::empty(), &mut buf)
                    .expect("seal");
            }
            println!("| {name} | {:.0} |", mib_per_s(n * RECORD, t));
        }
    }
}

fn has_taskset() -> bool {
    std::process::Command::new("taskset")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

async fn driver(mode: &str) {
    let exe = std::env::current_exe().expect("exe");
    let mut cmd = if has_taskset() {
        let mut c = tokio::process::Command::new("taskset");
        c.args(["-c", "1"]).arg(exe);
        c
    } else {
        tokio::process::Command::new(exe)
    };
    let mut child = cmd
        .args(["peer", mode])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("peer");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = lines.next_line().await.expect("read").expect("ready line");
    let fields: Vec<&str> = ready.split_whitespace().skip(1).collect();
    let anchor_port: u16 = fields[0].parse().expect("port");
    let mut ch = if sealed(mode) {
        let port: u16 = fields[1].parse().expect("port");
        let s = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.set_nodelay(true).expect("nodelay");
        Channel::Sealed(Box::new(Sealed::new(s, mode, true)))
    } else {
        let id: PeerId = fields[1].parse().expect("peer id");
        let addr: Multiaddr = fields[2].parse().expect("addr");
        let mut s = swarm(mode);
        listening(&mut s).await;
        let mut control = s.behaviour().new_control();
        s.dial(addr).expect("dial");
        tokio::spawn(async move {
            loop {
                s.select_next_some().await;
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match control.open_stream(id, PROTOCOL).await {
                Ok(st) => break Channel::Stream(st),
                Err(e) => {
                    assert!(Instant::now() < deadline, "no stream after 30 s: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    };
    let mut tcp = TcpStream::connect(("127.0.0.1", anchor_port))
        .await
        .expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    for (size, count) in SIZES {
        let data = vec![3u8; size];
        // One untimed message each, so that no buffer grows in the clock.
        ch.exchange(&data).await;
        tcp_exchange(&mut tcp, &data).await;
        let t = Instant::now();
        for _ in 0..count {
            ch.exchange(&data).await;
        }
        let m = mib_per_s(size * count, t);
        let t = Instant::now();
        for _ in 0..count {
            tcp_exchange(&mut tcp, &data).await;
        }
        let a = mib_per_s(size * count, t);
        println!(
            "| {mode} | {} MiB × {count} | {m:.0} MiB/s | {a:.0} MiB/s | {:.2}x |",
            size >> 20,
            m / a
        );
    }
    drop(child.stdin.take());
    let _ = child.wait().await;
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = |pin: bool| {
        if pin && has_taskset() {
            // Before the runtime starts, so that tokio sizes itself to one
            // core, as the peer's does.
            let _ = std::process::Command::new("taskset")
                .args(["-p", "-c", "0", &std::process::id().to_string()])
                .output();
        }
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime")
    };
    match args.first().map(String::as_str) {
        Some("peer") => rt(false).block_on(peer(args[1].clone())),
        Some("all") | None => {
            let rt = rt(true);
            println!("| mode | messages | this mode | plain TCP, same run | ratio |");
            println!("|---|---|---|---|---|");
            for _ in 0..3 {
                for m in MODES {
                    rt.block_on(driver(m));
                }
            }
        }
        Some("ciphers") => {
            drop(rt(true));
            ciphers();
        }
        Some(m) if MODES.contains(&m) => {
            let rt = rt(true);
            rt.block_on(driver(m));
        }
        Some(other) => {
            eprintln!("unknown mode {other}: one of {MODES:?}, all or ciphers");
            std::process::exit(2);
        }
    }
}
