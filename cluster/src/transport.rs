//! A chitchat `Transport` whose every datagram is sealed (see [`crate::seal`]).
//! Bytes that do not open are counted, logged and dropped: they never reach
//! chitchat's decoder.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket as ChitchatUdp};
use futures::FutureExt;
use tokio::net::UdpSocket;

use crate::seal::{DropReason, Kind, MAX_DATAGRAM, Opener, ReplayGuard, Sealer, now_ms};

/// Counters of the sealed gossip transport.
#[derive(Debug)]
pub struct GossipStats {
    sent: AtomicU64,
    received: AtomicU64,
    status_answered: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    activity: tokio::sync::watch::Sender<u64>,
}

impl Default for GossipStats {
    fn default() -> Self {
        Self {
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            status_answered: AtomicU64::new(0),
            dropped: Default::default(),
            activity: tokio::sync::watch::channel(0).0,
        }
    }
}

impl GossipStats {
    fn bump(&self) {
        self.activity.send_modify(|n| *n += 1);
    }

    fn drop_count(&self, reason: DropReason) -> u64 {
        let i = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        let n = self.dropped[i].fetch_add(1, Ordering::Relaxed) + 1;
        self.bump();
        n
    }

    /// Changes whenever a datagram is received or dropped: wait on it
    /// instead of polling the counters.
    pub fn activity(&self) -> tokio::sync::watch::Receiver<u64> {
        self.activity.subscribe()
    }

    /// Datagrams dropped, by reason (only reasons seen).
    pub fn dropped(&self) -> BTreeMap<String, u64> {
        DropReason::ALL
            .iter()
            .zip(&self.dropped)
            .map(|(r, c)| (r.name().to_owned(), c.load(Ordering::Relaxed)))
            .filter(|(_, c)| *c > 0)
            .collect()
    }

    /// Total dropped.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Gossip messages sent.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Gossip messages received and handed to chitchat.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Status queries answered.
    pub fn status_answered(&self) -> u64 {
        self.status_answered.load(Ordering::Relaxed)
    }
}

/// The JSON a node answers status queries with; kept current by membership.
pub(crate) type StatusBoard = Arc<RwLock<Vec<u8>>>;

/// The sealed transport. Clone it to share counters and the pre-bound socket.
#[derive(Clone)]
pub struct SealedTransport {
    sealer: Sealer,
    window_ms: u64,
    stats: Arc<GossipStats>,
    board: StatusBoard,
    prebound: Arc<Mutex<Option<UdpSocket>>>,
    /// Nonces seen, kept across the sockets gossip opens (a restart of
    /// gossip must not make recent datagrams replayable).
    replay: Arc<Mutex<ReplayGuard>>,
    cookies: Arc<Cookies>,
    status_rate: Arc<Mutex<StatusRate>>,
}

impl std::fmt::Debug for SealedTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedTransport")
            .field("window_ms", &self.window_ms)
            .field("stats", &self.stats)
            .finish()
    }
}

impl SealedTransport {
    /// A transport sealing with `sealer`, accepting timestamps within
    /// `window_ms`.
    pub fn new(sealer: Sealer, window_ms: u64) -> Self {
        Self {
            sealer,
            window_ms,
            stats: Arc::new(GossipStats::default()),
            board: Arc::new(RwLock::new(b"{\"nodes\":[]}".to_vec())),
            prebound: Arc::new(Mutex::new(None)),
            replay: ReplayGuard::shared(),
            cookies: Arc::new(Cookies::new()),
            status_rate: Arc::new(Mutex::new(StatusRate::default())),
        }
    }

    /// Uses this already bound socket for the next `open` (so a node can
    /// learn its real port before chitchat starts).
    pub fn with_socket(self, socket: UdpSocket) -> Self {
        *self.prebound.lock().unwrap_or_else(|e| e.into_inner()) = Some(socket);
        self
    }

    /// The counters.
    pub fn stats(&self) -> Arc<GossipStats> {
        Arc::clone(&self.stats)
    }

    pub(crate) fn board(&self) -> StatusBoard {
        Arc::clone(&self.board)
    }
}

/// chitchat's `BadCluster` message on the wire (magic 45139 little-endian,
/// protocol version 0, message type 3): the sentinel replayed after every
/// opened datagram, so that a datagram chitchat refuses to decode never
/// leaves `recv` waiting for one that will not come.
const SENTINEL: [u8; 4] = [0x53, 0xb0, 0x00, 0x03];

async fn loopback() -> std::io::Result<UdpSocket> {
    UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let pre = self
            .prebound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let socket = match pre {
            Some(s) => s,
            None => UdpSocket::bind(listen_addr).await?,
        };
        let lo = SocketAddr::from(([127, 0, 0, 1], 0));
        let enc_codec = ChitchatUdp::open(lo).await?;
        let enc_sink = loopback().await?;
        let dec_codec = ChitchatUdp::open(lo).await?;
        let mut replays = Vec::with_capacity(REPLAY_SLOTS);
        for _ in 0..REPLAY_SLOTS {
            let (source, sentinel) = (loopback().await?, loopback().await?);
            replays.push(ReplaySlot {
                source_addr: source.local_addr()?,
                sentinel_addr: sentinel.local_addr()?,
                source,
                sentinel,
            });
        }
        Ok(Box::new(SealedSocket {
            enc_codec_addr: enc_codec.local_addr()?,
            enc_sink_addr: enc_sink.local_addr()?,
            dec_codec_addr: dec_codec.local_addr()?,
            socket,
            enc_codec,
            enc_sink,
            dec_codec,
            replays,
            next_slot: 0,
            pending: None,
            sealer: self.sealer.clone(),
            opener: Opener::with_replay(
                self.sealer.clone(),
                self.window_ms,
                Arc::clone(&self.replay),
            ),
            buf: vec![0u8; MAX_DATAGRAM + 1].into_boxed_slice(),
            stats: Arc::clone(&self.stats),
            board: Arc::clone(&self.board),
            cookies: Arc::clone(&self.cookies),
            status_rate: Arc::clone(&self.status_rate),
        }))
    }
}

/// A datagram opened and replayed into the decoding codec, not yet decoded.
struct Pending {
    from: SocketAddr,
    len: usize,
    envelope: Option<ChitchatEnvelope>,
    /// The replay slot it went through: what comes from another slot's
    /// sockets belongs to an earlier, abandoned datagram.
    slot: usize,
    /// Given up (dropped, counted) past this instant: a flood of the codec
    /// socket from this host, or a replay the kernel dropped, cannot wedge
    /// receiving.
    deadline: tokio::time::Instant,
}

/// Replays of opened datagrams into the decoding codec rotate over this
/// many source/sentinel socket pairs.
const REPLAY_SLOTS: usize = 4;
/// How long a replayed datagram may take to come out of the decoding codec.
const DECODE_DEADLINE: Duration = Duration::from_millis(250);
/// How long the encoding codec may take to hand an envelope back.
const ENCODE_DEADLINE: Duration = Duration::from_millis(250);

/// One pair of loopback sockets that replay an opened datagram, then the
/// sentinel, into the decoding codec.
struct ReplaySlot {
    source: UdpSocket,
    source_addr: SocketAddr,
    sentinel: UdpSocket,
    sentinel_addr: SocketAddr,
}

/// chitchat encodes and decodes through public API only: two
/// `chitchat::transport::UdpSocket`s on loopback act as codecs. `send`
/// hands the envelope to `enc_codec` addressed to `enc_sink`, seals the
/// bytes captured there and sends them to the peer. `recv` opens a sealed
/// datagram, replays the plaintext (then a sentinel) into `dec_codec` and
/// returns the decoded envelope with the real sender's address. Loopback
/// datagrams from anyone but our own sockets are dropped.
struct SealedSocket {
    socket: UdpSocket,
    enc_codec: ChitchatUdp,
    enc_codec_addr: SocketAddr,
    enc_sink: UdpSocket,
    enc_sink_addr: SocketAddr,
    dec_codec: ChitchatUdp,
    dec_codec_addr: SocketAddr,
    replays: Vec<ReplaySlot>,
    next_slot: usize,
    pending: Option<Pending>,
    sealer: Sealer,
    opener: Opener,
    buf: Box<[u8]>,
    stats: Arc<GossipStats>,
    board: StatusBoard,
    cookies: Arc<Cookies>,
    status_rate: Arc<Mutex<StatusRate>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is one counter update: a poisoned lock is
    // still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The plaintext of a status request: a random id (echoed in the answer,
/// which binds the answer to its request) and the cookie the node gave
/// this address (zeros before there is one).
pub(crate) const STATUS_REQUEST_LEN: usize = 32;

pub(crate) struct StatusRequest {
    pub(crate) id: [u8; 16],
    pub(crate) cookie: [u8; 16],
}

impl StatusRequest {
    pub(crate) fn parse(b: &[u8]) -> Option<StatusRequest> {
        if b.len() != STATUS_REQUEST_LEN {
            return None;
        }
        let mut id = [0u8; 16];
        let mut cookie = [0u8; 16];
        id.copy_from_slice(&b[..16]);
        cookie.copy_from_slice(&b[16..]);
        Some(StatusRequest { id, cookie })
    }

    pub(crate) fn encode(&self) -> [u8; STATUS_REQUEST_LEN] {
        let mut out = [0u8; STATUS_REQUEST_LEN];
        out[..16].copy_from_slice(&self.id);
        out[16..].copy_from_slice(&self.cookie);
        out
    }
}

/// Status cookies: HKDF-SHA256 of a node-local random key over the
/// requester's address and a 30 s time bucket (the current and the last
/// bucket are accepted).
struct Cookies {
    key: [u8; 32],
}

const COOKIE_BUCKET_MS: u64 = 30_000;

impl Cookies {
    fn new() -> Self {
        Self {
            key: rand::random(),
        }
    }

    fn at(&self, addr: SocketAddr, bucket: u64) -> [u8; 16] {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&bucket.to_be_bytes()), &self.key);
        let mut out = [0u8; 16];
        // 16 bytes is far below HKDF-SHA256's output limit.
        let _ = hk.expand(addr.to_string().as_bytes(), &mut out);
        out
    }

    fn cookie(&self, addr: SocketAddr, now: u64) -> [u8; 16] {
        self.at(addr, now / COOKIE_BUCKET_MS)
    }

    fn valid(&self, cookie: &[u8; 16], addr: SocketAddr, now: u64) -> bool {
        let b = now / COOKIE_BUCKET_MS;
        *cookie != [0; 16]
            && (*cookie == self.at(addr, b) || *cookie == self.at(addr, b.saturating_sub(1)))
    }
}

/// Full status answers per second: per source IP and in all.
#[derive(Default)]
struct StatusRate {
    second: u64,
    total: u32,
    per_ip: HashMap<std::net::IpAddr, u32>,
}

/// Full status answers one source IP gets per second.
const STATUS_PER_IP: u32 = 8;
/// Full status answers a node gives per second in all.
const STATUS_TOTAL: u32 = 64;

impl StatusRate {
    fn allow(&mut self, ip: std::net::IpAddr, now_ms: u64) -> bool {
        let second = now_ms / 1000;
        if second != self.second {
            self.second = second;
            self.total = 0;
            self.per_ip.clear();
        }
        if self.total >= STATUS_TOTAL || self.per_ip.len() >= STATUS_TOTAL as usize {
            return false;
        }
        let n = self.per_ip.entry(ip).or_insert(0);
        if *n >= STATUS_PER_IP {
            return false;
        }
        *n += 1;
        self.total += 1;
        true
    }
}

fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::OutOfMemory
            | std::io::ErrorKind::WouldBlock
    )
}

impl SealedSocket {
    fn dropped(&self, reason: DropReason, from: SocketAddr, len: usize) {
        let n = self.stats.drop_count(reason);
        // Log the first few of each reason, then one in a thousand: a flood
        // of garbage must not become a flood of logs.
        if n <= 5 || n % 1000 == 0 {
            tracing::warn!(target: "manta::gossip", %from, len, reason = reason.name(), total = n, "dropped gossip datagram");
        }
    }

    /// Answers a status request: a cookie for the requester's address
    /// first (a datagram no larger than the request), the node's view only
    /// to a request that carries that cookie (so its source address is
    /// real: it received the cookie), within a rate per source and in all.
    fn answer_status(&self, to: SocketAddr, request: &[u8]) {
        let Some(req) = StatusRequest::parse(request) else {
            self.dropped(DropReason::Malformed, to, request.len());
            return;
        };
        let now = now_ms();
        if !self.cookies.valid(&req.cookie, to, now) {
            let mut reply = Vec::with_capacity(STATUS_REQUEST_LEN);
            reply.extend_from_slice(&req.id);
            reply.extend_from_slice(&self.cookies.cookie(to, now));
            if let Ok(dgrams) = self.sealer.seal(Kind::StatusCookie, &reply, now) {
                for d in dgrams {
                    let _ = self.socket.try_send_to(&d, to);
                }
            }
            return;
        }
        if !lock(&self.status_rate).allow(to.ip(), now) {
            self.dropped(DropReason::RateLimited, to, request.len());
            return;
        }
        let mut body = req.id.to_vec();
        body.extend_from_slice(&self.board.read().unwrap_or_else(|e| e.into_inner()));
        match self.sealer.seal(Kind::StatusReply, &body, now) {
            Ok(dgrams) => {
                for d in dgrams {
                    // Non-blocking: recv must stay cancel-safe; a reply lost
                    // to a full buffer is retried by the asker.
                    let _ = self.socket.try_send_to(&d, to);
                }
                self.stats.status_answered.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(target: "manta::gossip", error = %e, "status reply too large"),
        }
    }

    /// Drains the decoding codec up to the sentinel of the pending datagram,
    /// within its deadline. Cancel-safe: all progress lives in
    /// `self.pending`.
    async fn finish_pending(&mut self) -> anyhow::Result<Option<RecvOutcome>> {
        loop {
            let Some(p) = self.pending.as_mut() else {
                return Ok(None);
            };
            let (slot, deadline) = (p.slot, p.deadline);
            let got = tokio::time::timeout_at(
                deadline,
                AssertUnwindSafe(self.dec_codec.recv()).catch_unwind(),
            )
            .await;
            let Ok(got) = got else {
                // Flooded from this host, or the replay was lost: give this
                // datagram up rather than wait for it forever.
                if let Some(p) = self.pending.take() {
                    self.dropped(DropReason::Overloaded, p.from, p.len);
                }
                return Ok(None);
            };
            let ours = &self.replays[slot];
            match got {
                Ok(Ok(out)) if out.from_addr == ours.source_addr => {
                    if let Some(p) = self.pending.as_mut() {
                        if p.envelope.is_none() {
                            p.envelope = Some(out.envelope);
                        }
                    }
                }
                Ok(Ok(out)) if out.from_addr == ours.sentinel_addr => {
                    let Some(p) = self.pending.take() else {
                        return Ok(None);
                    };
                    return match p.envelope {
                        Some(envelope) => {
                            self.stats.received.fetch_add(1, Ordering::Relaxed);
                            self.stats.bump();
                            Ok(Some(RecvOutcome {
                                from_addr: p.from,
                                envelope,
                                num_bytes_received: p.len,
                            }))
                        }
                        None => {
                            self.dropped(DropReason::Undecodable, p.from, p.len);
                            Ok(None)
                        }
                    };
                }
                // The late replay of a datagram given up on: skipped.
                Ok(Ok(out))
                    if self.replays.iter().any(|r| {
                        out.from_addr == r.source_addr || out.from_addr == r.sentinel_addr
                    }) => {}
                Ok(Ok(out)) => {
                    // Someone else on this host wrote to our codec socket.
                    self.dropped(
                        DropReason::Unauthenticated,
                        out.from_addr,
                        out.num_bytes_received,
                    );
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    // chitchat's decoder panicked on authenticated bytes.
                    if let Some(p) = self.pending.as_ref() {
                        let (from, len) = (p.from, p.len);
                        self.dropped(DropReason::Undecodable, from, len);
                    }
                }
            }
        }
    }
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        // Anything left in the sink (a cancelled send, a stranger) is stale.
        while self.enc_sink.try_recv_from(&mut self.buf).is_ok() {}
        self.enc_codec.send(self.enc_sink_addr, envelope).await?;
        let deadline = tokio::time::Instant::now() + ENCODE_DEADLINE;
        let n = loop {
            let got =
                tokio::time::timeout_at(deadline, self.enc_sink.recv_from(&mut self.buf)).await;
            let Ok(got) = got else {
                // Flooded from this host, or the kernel dropped the codec's
                // datagram: this round's message is lost, gossip goes on.
                self.stats.drop_count(DropReason::Overloaded);
                return Ok(SendOutcome { num_bytes_sent: 0 });
            };
            let (n, from) = got?;
            if from == self.enc_codec_addr {
                break n;
            }
        };
        let dgrams = self
            .sealer
            .seal(Kind::Gossip, &self.buf[..n], now_ms())
            .map_err(anyhow::Error::msg)?;
        let mut num_bytes_sent = 0;
        for d in dgrams {
            match self.socket.send_to(&d, to).await {
                Ok(sent) => num_bytes_sent += sent,
                Err(e) if transient(&e) => {
                    tracing::debug!(target: "manta::gossip", %to, error = %e, "transient send error")
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        Ok(SendOutcome { num_bytes_sent })
    }

    /// Cancel-safe: every await either reads a datagram that is then handled
    /// without awaiting, or resumes the pending decode.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            if let Some(out) = self.finish_pending().await? {
                return Ok(out);
            }
            let (n, from) = match self.socket.recv_from(&mut self.buf).await {
                Ok(r) => r,
                Err(e) if transient(&e) => continue,
                Err(e) => return Err(e.into()),
            };
            if n > MAX_DATAGRAM {
                self.dropped(DropReason::Oversized, from, n);
                continue;
            }
            match self.opener.accept(&self.buf[..n], from, now_ms()) {
                Ok(Some((Kind::Gossip, bytes))) => {
                    // Replay into the decoding codec, then the sentinel; the
                    // pending state is set before any await.
                    let slot = self.next_slot;
                    self.next_slot = (slot + 1) % REPLAY_SLOTS;
                    let r = &self.replays[slot];
                    let sent = r.source.try_send_to(&bytes, self.dec_codec_addr).is_ok()
                        && r.sentinel
                            .try_send_to(&SENTINEL, self.dec_codec_addr)
                            .is_ok();
                    if sent {
                        self.pending = Some(Pending {
                            from,
                            len: n,
                            envelope: None,
                            slot,
                            deadline: tokio::time::Instant::now() + DECODE_DEADLINE,
                        });
                    } else {
                        self.dropped(DropReason::Overloaded, from, n);
                    }
                }
                Ok(Some((Kind::StatusRequest, request))) => self.answer_status(from, &request),
                Ok(Some((Kind::StatusReply | Kind::StatusCookie, _))) | Ok(None) => {}
                Err(reason) => self.dropped(reason, from, n),
            }
        }
    }
}
