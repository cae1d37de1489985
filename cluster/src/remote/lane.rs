//! The bulk lane: large messages (and the small ones that follow them to
//! the same actor) on a TCP connection of their own per peer, beside the
//! mesh stream, so that they travel at the speed of the wire and never hold
//! up small traffic.
//!
//! - **Keys come from the mesh.** The sender asks the peer for a lane with a
//!   [`Frame::LaneOpen`] on its mesh stream (pnet proved the secret, noise
//!   the PeerId); the answer is a [`LaneGrant`]: fresh key material and a
//!   one-time ticket. The connection starts with the ticket; everything
//!   after it is AES-256-GCM records ([`crate::bulk`]). A connection without
//!   a valid unused ticket within the deadline is closed and counted; a
//!   record that does not open closes the lane. Nothing that has not opened
//!   reaches a decoder.
//! - **One message at a time per lane**, each numbered in the sender's
//!   session: the receiver acknowledges each once handled (a record back
//!   on the same connection). A lane that dies is reopened through the
//!   mesh and what was not acknowledged is sent again in order; the
//!   receiver drops a number it has already handled, so nothing is
//!   delivered twice or lost.
//! - **Order per actor.** While a message to an actor is unacknowledged on
//!   the lane, later messages to it follow it there. A message that starts
//!   a lane run for an actor is flagged to wait for a [`Frame::Barrier`]
//!   the sender writes on the mesh stream just before: the receiver handles
//!   it only once every frame written before it on the mesh was handled.
//! - **Fallback.** If the lane cannot be opened, what was never written
//!   goes over the mesh as chunks, and the mesh carries the peer's large
//!   messages for [`FALLBACK`]; `manta status` shows which lane a peer is on.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;
use manta_actors::WireError;
use manta_actors::wire::WireBytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

use super::frame::{
    Encoded, Frame, LANE_HEAD, LANE_RECORD, LaneGrant, LazyFrame, Recorder, encode, encode_lazy,
    lazy_records, lazy_total, records_to_mesh, recycle_records,
};
use super::{FRAME_VERSION, MAX_FRAME, Remoting, lock};
use crate::bulk::{
    LaneSecrets, RECORD_HEADER, RECORD_TAG, RecordOpener, RecordSealer, Side, lane_keys,
};

/// How long the mesh carries a peer's large messages after its lane could
/// not be opened, before the lane is tried again.
pub(super) const FALLBACK: Duration = Duration::from_secs(30);
/// A ticket not used within this long is void.
const TICKET_TTL: Duration = Duration::from_secs(10);
/// Tickets one peer may hold unused, and lanes it may have open here.
const TICKETS_PER_PEER: usize = 4;
const LANES_PER_PEER: usize = 4;
/// Connections still to present their ticket, all sources together; one
/// more closes the oldest of them (counted), so a stranger holding idle
/// connections open cannot keep a member's lane out: a member presents its
/// ticket at once, and the stranger would have to open this many
/// connections within that round trip.
const PENDING_HANDSHAKES: usize = 64;
/// How long a lane message flagged for a barrier waits for it before it is
/// handled anyway (the mesh stream broke, so the barrier was lost).
const BARRIER_WAIT: Duration = Duration::from_secs(10);
/// How long the ticket exchange and the connection may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Records in one vectored write once a message is under way, and records
/// a receiver opens between two yields to the runtime (256 KiB).
const YIELD_EVERY: usize = 4;
/// Records a sender seals and writes between two yields of its own (1
/// MiB; it also waits whenever its socket is full). Fewer yields gave
/// small asks a lower p50 while large messages stream, none at all a far
/// higher p99: chosen by measurement (architecture 2.6a).
const SEAL_YIELD: usize = 16;
/// Room a lane message's buffer has beyond its length: reads of records
/// land there before they are opened down into place.
const READ_SLACK: usize = 64 * 1024;
/// Sender sessions remembered per peer (dedupe and barriers).
const SESSIONS_PER_PEER: usize = 8;

/// The bulk lane's settings (node config `[bulk]`).
#[derive(Debug, Clone, PartialEq)]
pub struct BulkSettings {
    /// Frames of at least this many encoded bytes go on the lane.
    pub threshold: usize,
    /// Bytes queued or unacknowledged on one peer's lane before senders see
    /// backpressure (one message of any size is always taken).
    pub max_inflight: usize,
    /// How long a connection has to present its ticket.
    pub ticket_deadline: Duration,
}

impl Default for BulkSettings {
    fn default() -> Self {
        Self {
            threshold: 16 * 1024,
            max_inflight: 2 * MAX_FRAME,
            ticket_deadline: Duration::from_secs(3),
        }
    }
}

/// Which lane carries a peer's large messages (for `manta status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneUse {
    /// A lane connection is open.
    Bulk,
    /// The peer gossips a lane; none is open yet (opened on the first large
    /// message).
    BulkIdle,
    /// The lane could not be opened: the mesh carries them for a while.
    MeshFallback,
    /// The peer gossips no lane (an older version, or its lane is off).
    MeshNoLane,
    /// This node's lane is off.
    MeshOff,
}

impl LaneUse {
    /// As `manta status` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            LaneUse::Bulk => "bulk",
            LaneUse::BulkIdle => "bulk (idle)",
            LaneUse::MeshFallback => "mesh (lane failed)",
            LaneUse::MeshNoLane => "mesh (peer has no lane)",
            LaneUse::MeshOff => "mesh (lane off)",
        }
    }
}

struct Ticket {
    peer: PeerId,
    session: u64,
    secrets: LaneSecrets,
    issued: Instant,
}

/// A node's bulk lane: its listener's state, the lanes it has open, the
/// counters.
pub(super) struct Bulk {
    pub(super) settings: BulkSettings,
    local: SocketAddr,
    addrs: Mutex<HashMap<PeerId, SocketAddr>>,
    fallback: Mutex<HashMap<PeerId, Instant>>,
    tickets: Mutex<HashMap<[u8; 16], Ticket>>,
    pub(super) incoming: Mutex<HashMap<PeerId, usize>>,
    /// Lanes open from here, by peer (for status).
    outgoing: Mutex<HashMap<PeerId, usize>>,
    /// Per peer and sender session: the last lane message handled, and the
    /// last barrier seen on the mesh.
    delivered: Mutex<HashMap<PeerId, Vec<(u64, u64)>>>,
    barriers: Mutex<HashMap<PeerId, Vec<(u64, u64)>>>,
    barrier_moved: Notify,
    warned: Mutex<HashSet<PeerId>>,
    /// Connections still to present their ticket, oldest first: each
    /// closes when its sender is dropped (evicted by a newer one).
    pending: Mutex<VecDeque<(u64, oneshot::Sender<()>)>>,
    pending_seq: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) bad_records: AtomicU64,
    pub(super) opened: AtomicU64,
    pub(super) resent: AtomicU64,
    pub(super) fallbacks: AtomicU64,
    /// Lane messages acknowledged that were produced as written.
    pub(super) lazy_acked: AtomicU64,
    /// Test hooks: tamper with the next record written; cut the next lane
    /// connection after this many bytes.
    tamper: std::sync::atomic::AtomicBool,
    cut_after: AtomicU64,
    /// Lane messages acknowledged by peers.
    pub(super) acked: AtomicU64,
    /// Set when the node stops: every lane task ends.
    closed: tokio::sync::watch::Sender<bool>,
}

/// Sets `(session, value)` in a short per-peer list, keeping the highest
/// value per session and the newest sessions.
fn raise(list: &mut Vec<(u64, u64)>, session: u64, value: u64) -> bool {
    if let Some(e) = list.iter_mut().find(|(s, _)| *s == session) {
        if value <= e.1 {
            return false;
        }
        e.1 = value;
        return true;
    }
    if list.len() >= SESSIONS_PER_PEER {
        list.remove(0);
    }
    list.push((session, value));
    true
}

fn get(list: Option<&Vec<(u64, u64)>>, session: u64) -> u64 {
    list.and_then(|l| l.iter().find(|(s, _)| *s == session))
        .map_or(0, |(_, v)| *v)
}

impl Bulk {
    pub(super) fn new(settings: BulkSettings, local: SocketAddr) -> Self {
        Self {
            settings,
            local,
            addrs: Mutex::new(HashMap::new()),
            fallback: Mutex::new(HashMap::new()),
            tickets: Mutex::new(HashMap::new()),
            incoming: Mutex::new(HashMap::new()),
            outgoing: Mutex::new(HashMap::new()),
            delivered: Mutex::new(HashMap::new()),
            barriers: Mutex::new(HashMap::new()),
            barrier_moved: Notify::new(),
            warned: Mutex::new(HashSet::new()),
            pending: Mutex::new(VecDeque::new()),
            pending_seq: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            bad_records: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            lazy_acked: AtomicU64::new(0),
            tamper: std::sync::atomic::AtomicBool::new(false),
            cut_after: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            closed: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Ends every lane task of this node (it stops).
    pub(super) fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Resolves once the node stops.
    fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closed.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    pub(super) fn local(&self) -> SocketAddr {
        self.local
    }

    /// The threshold for `peer`'s frames, if its lane can be used now.
    pub(super) fn threshold_for(&self, peer: PeerId) -> Option<usize> {
        if !lock(&self.addrs).contains_key(&peer) {
            return None;
        }
        let mut f = lock(&self.fallback);
        if let Some(until) = f.get(&peer) {
            if Instant::now() < *until {
                return None;
            }
            f.remove(&peer);
        }
        Some(self.settings.threshold)
    }

    pub(super) fn set_addr(&self, peer: PeerId, addr: Option<SocketAddr>) {
        let mut a = lock(&self.addrs);
        match addr {
            Some(addr) => a.insert(peer, addr),
            None => a.remove(&peer),
        };
    }

    pub(super) fn lane_use(&self, peer: PeerId) -> LaneUse {
        if lock(&self.outgoing).get(&peer).is_some_and(|n| *n > 0) {
            LaneUse::Bulk
        } else if !lock(&self.addrs).contains_key(&peer) {
            LaneUse::MeshNoLane
        } else if lock(&self.fallback)
            .get(&peer)
            .is_some_and(|u| Instant::now() < *u)
        {
            LaneUse::MeshFallback
        } else {
            LaneUse::BulkIdle
        }
    }

    /// `peer` is gone: what this node remembers of it goes.
    pub(super) fn forget(&self, peer: PeerId) {
        lock(&self.fallback).remove(&peer);
        lock(&self.delivered).remove(&peer);
        lock(&self.barriers).remove(&peer);
        lock(&self.warned).remove(&peer);
        lock(&self.tickets).retain(|_, t| t.peer != peer);
    }

    /// A barrier of `peer`'s session arrived on the mesh.
    pub(super) fn barrier(&self, peer: PeerId, session: u64, seq: u64) {
        if raise(lock(&self.barriers).entry(peer).or_default(), session, seq) {
            self.barrier_moved.notify_waiters();
        }
    }

    async fn wait_barrier(&self, peer: PeerId, session: u64, seq: u64) {
        let deadline = Instant::now() + BARRIER_WAIT;
        loop {
            let moved = self.barrier_moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            if get(lock(&self.barriers).get(&peer), session) >= seq {
                return;
            }
            if tokio::time::timeout_at(deadline, moved).await.is_err() {
                tracing::warn!(target: "manta::lane", %peer, seq, "no mesh barrier for a lane message within {BARRIER_WAIT:?} (the mesh stream broke?); handling it anyway");
                return;
            }
        }
    }

    /// Claims lane message `seq` of `peer`'s `session` for handling: false
    /// if it (or a later one) was handled already (a resend).
    fn claim(&self, peer: PeerId, session: u64, seq: u64) -> bool {
        raise(lock(&self.delivered).entry(peer).or_default(), session, seq)
    }

    /// A fresh ticket for `peer`, or why not.
    fn grant(&self, peer: PeerId, session: u64) -> Result<LaneGrant, WireError> {
        if lock(&self.incoming).get(&peer).copied().unwrap_or(0) >= LANES_PER_PEER {
            return Err(WireError::Backpressure);
        }
        let mut t = lock(&self.tickets);
        let now = Instant::now();
        t.retain(|_, t| now.duration_since(t.issued) < TICKET_TTL);
        if t.values().filter(|t| t.peer == peer).count() >= TICKETS_PER_PEER {
            return Err(WireError::Backpressure);
        }
        let secrets = LaneSecrets::fresh();
        let grant = LaneGrant {
            material: secrets.material,
            ticket: secrets.ticket,
        };
        t.insert(
            secrets.ticket,
            Ticket {
                peer,
                session,
                secrets,
                issued: now,
            },
        );
        Ok(grant)
    }

    /// Takes a valid unused ticket (it is void from then on).
    fn take(&self, ticket: &[u8; 16]) -> Option<Ticket> {
        let t = lock(&self.tickets).remove(ticket)?;
        (t.issued.elapsed() < TICKET_TTL).then_some(t)
    }

    fn warn_once(&self, peer: PeerId, what: &str) {
        if lock(&self.warned).insert(peer) {
            tracing::warn!(target: "manta::lane", %peer, "{what}; closing the lane (logged once per peer)");
        }
    }
}

/// What a lane message carries: its records, encoded when it was sent, or
/// the value itself, produced into records a window at a time as the lane
/// writes it ([`LazyFrame`]).
pub(super) enum LaneBody {
    Records(Vec<Vec<u8>>),
    Lazy(Box<dyn LazyFrame>),
}

impl LaneBody {
    /// Records it takes.
    fn record_count(&self) -> usize {
        match self {
            LaneBody::Records(r) => r.len(),
            LaneBody::Lazy(src) => lazy_total(&**src).div_ceil(LANE_RECORD),
        }
    }

    /// Bytes of its records (plaintext and record headers), what the
    /// lane's in-flight bound counts.
    pub(super) fn bytes(&self) -> usize {
        match self {
            LaneBody::Records(r) => r.iter().map(Vec::len).sum(),
            LaneBody::Lazy(src) => lazy_total(&**src) + self.record_count() * RECORD_HEADER,
        }
    }

    /// The message as a mesh frame (the lane could not take it).
    pub(super) fn to_mesh(&self) -> Result<Encoded, WireError> {
        match self {
            LaneBody::Records(r) => records_to_mesh(r),
            LaneBody::Lazy(src) => encode_lazy(&**src, None),
        }
    }
}

/// One message queued on (or written to) a peer's lane.
pub(super) struct LaneMsg {
    pub(super) seq: u64,
    pub(super) body: LaneBody,
    pub(super) target: Option<String>,
    pub(super) bytes: usize,
    /// The mesh barrier it waits for (0: none).
    barrier: u64,
    /// Records sealed on the current connection, from nonce `first`
    /// (records kept in `body`; a lazy body keeps none).
    sealed: usize,
    first: u64,
    /// Whether any of it was written (on any connection).
    written: bool,
}

impl LaneMsg {
    pub(super) fn new(seq: u64, mut body: LaneBody, target: Option<String>, barrier: u64) -> Self {
        if let LaneBody::Records(records) = &mut body {
            if let Some(r) = records.first_mut() {
                if r.len() >= RECORD_HEADER + LANE_HEAD {
                    r[RECORD_HEADER..RECORD_HEADER + 8].copy_from_slice(&seq.to_be_bytes());
                    r[RECORD_HEADER + 8..RECORD_HEADER + 16]
                        .copy_from_slice(&barrier.to_be_bytes());
                }
            }
        }
        let bytes = body.bytes();
        LaneMsg {
            seq,
            body,
            target,
            bytes,
            barrier,
            sealed: 0,
            first: 0,
            written: false,
        }
    }
}

impl Drop for LaneMsg {
    fn drop(&mut self) {
        if let LaneBody::Records(records) = &mut self.body {
            recycle_records(records);
        }
    }
}

/// Why a lane message could not be written.
enum WriteError {
    /// The connection failed (the message is sent again on the next one).
    Io(std::io::Error),
    /// A lazy message's value did not encode; `partial` when part of it
    /// was already written on this connection.
    Produce { error: WireError, partial: bool },
}

/// The sending end of a peer's lane, held by its link.
pub(super) struct LaneLink {
    pub(super) tx: mpsc::UnboundedSender<LaneMsg>,
    /// Bytes queued or unacknowledged.
    pub(super) bytes: Arc<AtomicUsize>,
    /// This lane link's session (random): its messages are numbered in it.
    pub(super) session: u64,
    pub(super) next_seq: u64,
    /// The last barrier written on the mesh for this session (0: none).
    pub(super) last_barrier: u64,
}

/// Per-target counts of messages not yet acknowledged on the lane.
pub(super) type Inflight = Arc<Mutex<HashMap<String, usize>>>;

pub(super) fn dec(map: &Mutex<HashMap<String, usize>>, target: &Option<String>) {
    if let Some(t) = target {
        let mut m = lock(map);
        if let Some(n) = m.get_mut(t) {
            *n -= 1;
            if *n == 0 {
                m.remove(t);
            }
        }
    }
}

/// An open lane connection, dialer side.
struct Conn {
    wr: OwnedWriteHalf,
    sealer: RecordSealer,
    /// The highest sequence number the peer acknowledged.
    acks: watch::Receiver<u64>,
    reader: tokio::task::JoinHandle<()>,
    /// A write that makes no progress for this long ends the connection.
    stall: Duration,
    written: u64,
    cut_after: u64,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Conn {
    /// Seals and writes `m`'s records in groups, each in one vectored
    /// write: 1, 1, 2, 2, then [`YIELD_EVERY`] records, yielding every
    /// [`SEAL_YIELD`] records. The first records
    /// go out at once, so the receiver opens them while the rest are
    /// sealed; then fewer, larger writes (chosen by measurement: BENCHMARKS.md
    /// "Remote payloads").
    async fn write(&mut self, m: &mut LaneMsg, bulk: &Bulk) -> Result<(), WriteError> {
        m.first = self.sealer.next_record();
        m.sealed = 0;
        let count = m.body.record_count();
        let mut at = 0;
        let mut groups = 0u32;
        let mut since_yield = 0;
        while at < count {
            if since_yield >= SEAL_YIELD {
                // Sealing a large message is CPU work: let small messages'
                // tasks on this core run in between.
                since_yield = 0;
                tokio::task::yield_now().await;
            }
            let size = (1usize << (groups / 2).min(8)).min(YIELD_EVERY);
            groups = groups.saturating_add(1);
            let to = (at + size).min(count);
            since_yield += to - at;
            match &mut m.body {
                LaneBody::Records(records) => {
                    let group = &mut records[at..to];
                    for r in group.iter_mut() {
                        self.sealer.seal(r).map_err(sealing)?;
                        m.sealed += 1;
                        m.written = true;
                    }
                    self.write_group(group, bulk)
                        .await
                        .map_err(WriteError::Io)?;
                }
                LaneBody::Lazy(src) => {
                    let mut group =
                        lazy_records(&**src, m.seq, m.barrier, at, to - at).map_err(|error| {
                            WriteError::Produce {
                                error,
                                partial: at > 0,
                            }
                        })?;
                    for r in group.iter_mut() {
                        self.sealer.seal(r).map_err(sealing)?;
                    }
                    m.written = true;
                    let wrote = self.write_group(&group, bulk).await;
                    // Written (or lost with the connection): the buffers
                    // serve the next window.
                    recycle_records(&mut group);
                    wrote.map_err(WriteError::Io)?;
                }
            }
            at = to;
        }
        Ok(())
    }

    /// Writes sealed records in one vectored write (record by record
    /// through the test hooks when one is set).
    async fn write_group(&mut self, group: &[Vec<u8>], bulk: &Bulk) -> std::io::Result<()> {
        let bytes: u64 = group.iter().map(|r| r.len() as u64).sum();
        if self.cut_after > 0 || bulk.tamper.load(Ordering::Relaxed) {
            // The test hooks work record by record.
            for r in group {
                self.write_hooked(r, bulk).await?;
            }
            return Ok(());
        }
        let mut slices: Vec<std::io::IoSlice<'_>> =
            group.iter().map(|r| std::io::IoSlice::new(r)).collect();
        let mut left = &mut slices[..];
        while !left.is_empty() {
            let n = tokio::time::timeout(self.stall, self.wr.write_vectored(left))
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the peer read nothing of the lane for {:?}", self.stall),
                    )
                })??;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            std::io::IoSlice::advance_slices(&mut left, n);
        }
        self.written += bytes;
        Ok(())
    }

    /// Writes one sealed record through the test hooks (cut, tamper).
    async fn write_hooked(&mut self, r: &[u8], bulk: &Bulk) -> std::io::Result<()> {
        if self.cut_after > 0 && self.written + r.len() as u64 > self.cut_after {
            let n = (self.cut_after - self.written) as usize;
            self.wr.write_all(&r[..n]).await?;
            let _ = self.wr.shutdown().await;
            return Err(std::io::Error::other("lane cut by a test"));
        }
        if bulk.tamper.swap(false, Ordering::Relaxed) {
            let mut bad = r.to_vec();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            self.wr.write_all(&bad).await?;
        } else {
            self.wr.write_all(r).await?;
        }
        self.written += r.len() as u64;
        Ok(())
    }

    /// Back to plaintext: the records of `msgs` sealed on this connection.
    fn unseal(&self, msgs: &mut VecDeque<LaneMsg>) {
        for m in msgs.iter_mut() {
            let LaneBody::Records(records) = &mut m.body else {
                continue;
            };
            for (i, r) in records.iter_mut().take(m.sealed).enumerate() {
                if let Err(e) = self.sealer.unseal(m.first + i as u64, r) {
                    // Sealed here a moment ago with this key: cannot fail.
                    tracing::error!(target: "manta::lane", error = %e, "cannot unseal a record to resend it");
                }
            }
            m.sealed = 0;
        }
    }
}

/// A record that could not be sealed (the counter ran out): the connection
/// ends, the next one has fresh keys.
fn sealing(e: impl std::fmt::Display) -> WriteError {
    WriteError::Io(std::io::Error::other(e.to_string()))
}

async fn read_record(
    rd: &mut OwnedReadHalf,
    opener: &mut RecordOpener,
    buf: &mut Vec<u8>,
    stall: Duration,
) -> Result<Option<usize>, String> {
    let mut h = [0u8; RECORD_HEADER];
    match rd.read_exact(&mut h).await {
        Ok(_) => {}
        Err(_) => return Ok(None),
    }
    let len = opener.announced(h).map_err(|e| e.to_string())?;
    buf.resize(len + RECORD_TAG, 0);
    // A record begun must end: a peer that announces one and stalls would
    // hold its buffer (up to a megabyte) for as long as it likes.
    match tokio::time::timeout(stall, rd.read_exact(buf)).await {
        Err(_) => return Err(stalled(stall)),
        Ok(Err(_)) => return Ok(None),
        Ok(Ok(_)) => {}
    }
    let n = opener.open(h, buf).map_err(|e| e.to_string())?.len();
    buf.truncate(n);
    Ok(Some(n))
}

/// A lane message's admitted share of the budgets, given back when
/// dropped.
struct AdmittedGuard {
    inner: Arc<super::Inner>,
    admitted: Option<super::reader::Admitted>,
}

impl Drop for AdmittedGuard {
    fn drop(&mut self) {
        if let Some(a) = self.admitted.take() {
            self.inner.partials.release(a);
        }
    }
}

/// A connection still to present its ticket: leaves the pending list when
/// it ends either way.
struct PendingHandshake<'a> {
    bulk: &'a Bulk,
    id: u64,
}

impl Drop for PendingHandshake<'_> {
    fn drop(&mut self) {
        lock(&self.bulk.pending).retain(|(id, _)| *id != self.id);
    }
}

/// The error of a lane on which a record or message begun got no byte for
/// `stall`.
fn stalled(stall: Duration) -> String {
    format!("a lane message got no byte for {stall:?} (partial_expiry); closing the lane")
}

/// Counts a connection or stream of a peer in a per-peer map while it
/// lives.
pub(super) struct Counted<'a> {
    map: &'a Mutex<HashMap<PeerId, usize>>,
    peer: PeerId,
}

impl<'a> Counted<'a> {
    fn new(map: &'a Mutex<HashMap<PeerId, usize>>, peer: PeerId) -> Self {
        *lock(map).entry(peer).or_insert(0) += 1;
        Counted { map, peer }
    }

    /// [`Counted::new`], unless `peer` has `max` counted already.
    pub(super) fn within(
        map: &'a Mutex<HashMap<PeerId, usize>>,
        peer: PeerId,
        max: usize,
    ) -> Option<Self> {
        let mut m = lock(map);
        let n = m.entry(peer).or_insert(0);
        if *n >= max {
            if *n == 0 {
                m.remove(&peer);
            }
            return None;
        }
        *n += 1;
        Some(Counted { map, peer })
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        let mut m = lock(self.map);
        if let Some(n) = m.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.peer);
            }
        }
    }
}

impl Remoting {
    fn bulk(&self) -> Option<&Bulk> {
        self.inner.bulk.get()
    }

    /// Answers a peer's [`Frame::LaneOpen`].
    pub(super) fn grant_lane(&self, peer: PeerId, id: u64, session: u64) {
        let answer = match self.bulk() {
            None => Err(WireError::NotFound(
                "bulk lane (off on this node)".to_owned(),
            )),
            Some(b) => b.grant(peer, session).and_then(|g| {
                postcard::to_allocvec(&g)
                    .map_err(|e| WireError::Encode(manta_actors::CodecError::new("lane grant", e)))
            }),
        };
        if let Err(e) = self.send(peer, &Frame::reply(id, answer)) {
            tracing::debug!(target: "manta::lane", %peer, error = %e, "lane grant not sent");
        }
    }

    /// Accepts lane connections while the node lives.
    pub(super) async fn accept_lanes(self, listener: TcpListener) {
        let Some(stopped) = self.bulk().map(Bulk::stopped) else {
            return;
        };
        tokio::select! {
            _ = stopped => {}
            _ = self.accept_loop(listener) => {}
        }
    }

    async fn accept_loop(&self, listener: TcpListener) {
        loop {
            let (sock, from) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(target: "manta::lane", error = %e, "lane accept failed");
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            let Some(bulk) = self.bulk() else { return };
            let (evict, evicted) = oneshot::channel();
            let id = bulk.pending_seq.fetch_add(1, Ordering::Relaxed);
            {
                let mut pending = lock(&bulk.pending);
                if pending.len() >= PENDING_HANDSHAKES {
                    // The oldest goes (its task sees its sender dropped).
                    pending.pop_front();
                }
                pending.push_back((id, evict));
            }
            let stopped = bulk.stopped();
            let me = self.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = stopped => {}
                    _ = me.serve_lane(sock, from, id, evicted) => {}
                }
            });
        }
    }

    fn refuse_lane(&self, from: SocketAddr, why: &str) {
        if let Some(b) = self.bulk() {
            let n = b.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if n <= 5 || n % 1000 == 0 {
                tracing::warn!(target: "manta::lane", %from, total = n, "lane connection refused: {why}");
            }
        }
        self.inner.partials.moved.notify_waiters();
    }

    async fn serve_lane(
        self,
        mut sock: TcpStream,
        from: SocketAddr,
        id: u64,
        evicted: oneshot::Receiver<()>,
    ) {
        let Some(bulk) = self.bulk() else { return };
        let handshake = PendingHandshake { bulk, id };
        let mut ticket = [0u8; 16];
        let presented = tokio::select! {
            r = tokio::time::timeout(bulk.settings.ticket_deadline, sock.read_exact(&mut ticket)) => r,
            _ = evicted => {
                self.refuse_lane(from, "the oldest of too many connections presenting tickets");
                return;
            }
        };
        if !matches!(presented, Ok(Ok(_))) {
            self.refuse_lane(from, "no ticket within the deadline");
            return;
        }
        let Some(t) = bulk.take(&ticket) else {
            self.refuse_lane(from, "unknown, used or expired ticket");
            return;
        };
        drop(handshake);
        let peer = t.peer;
        let open = Counted::new(&bulk.incoming, peer);
        self.inner.partials.moved.notify_waiters();
        let _ = sock.set_nodelay(true);
        let (sealer, opener) = match lane_keys(&t.secrets, Side::Listener) {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(target: "manta::lane", %peer, error = %e, "lane keys");
                return;
            }
        };
        let (rd, wr) = sock.into_split();
        // A member declared down (or gone) sends nothing more: its lanes
        // close with it, as its mesh connection does.
        let down = manta_actors::Monitor::new(&self.node_signal(peer));
        let received = tokio::select! {
            r = self.receive(peer, t.session, rd, wr, opener, sealer) => r,
            _ = down.wait() => {
                tracing::debug!(target: "manta::lane", %peer, "the peer is down: its lane closes");
                Ok(())
            }
        };
        drop(open);
        if let Err(what) = received {
            bulk.bad_records.fetch_add(1, Ordering::Relaxed);
            bulk.warn_once(peer, &what);
        }
        self.inner.partials.moved.notify_waiters();
    }

    /// Reads, handles and acknowledges `peer`'s lane messages until the
    /// connection ends (`Ok`) or something on it is wrong.
    async fn receive(
        &self,
        peer: PeerId,
        session: u64,
        mut rd: OwnedReadHalf,
        mut wr: OwnedWriteHalf,
        mut opener: RecordOpener,
        mut sealer: RecordSealer,
    ) -> Result<(), String> {
        let Some(bulk) = self.bulk() else {
            return Ok(());
        };
        let route = self.route(peer);
        // The ticket is good: say so (acknowledgement 0, sealed with this
        // lane's keys), so the dialer writes nothing on a connection this
        // node did not take.
        let mut accepted = Vec::with_capacity(RECORD_HEADER + 8 + RECORD_TAG);
        accepted.extend_from_slice(&[0; RECORD_HEADER]);
        accepted.extend_from_slice(&0u64.to_be_bytes());
        sealer.seal(&mut accepted).map_err(|e| e.to_string())?;
        if wr.write_all(&accepted).await.is_err() {
            return Ok(());
        }
        let mut first = Vec::new();
        let stall = self.inner.partials.limits.partial_expiry;
        loop {
            let Some(n) = read_record(&mut rd, &mut opener, &mut first, stall).await? else {
                return Ok(());
            };
            let (seq, barrier, len) = lane_head(&first[..n])?;
            let admitted = self
                .inner
                .partials
                .admit(peer, len)
                .await
                .map_err(str::to_owned)?;
            // Given back however this ends: returned, failed, or dropped
            // with the lane when its peer is declared down.
            let admitted = AdmittedGuard {
                inner: Arc::clone(&self.inner),
                admitted: Some(admitted),
            };
            let got = self
                .read_rest(&mut rd, &mut opener, &first[LANE_HEAD + 4..], len)
                .await;
            let whole = match got {
                Ok(Some(w)) => w,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            };
            if whole.first() != Some(&FRAME_VERSION) {
                return Err("lane message of another frame version".to_owned());
            }
            if barrier > 0 {
                bulk.wait_barrier(peer, session, barrier).await;
            }
            let handled = if bulk.claim(peer, session, seq) {
                self.take_whole(peer, &route, whole, 1)
            } else {
                Ok(())
            };
            drop(admitted);
            handled.map_err(str::to_owned)?;
            let mut ack = Vec::with_capacity(RECORD_HEADER + 8 + RECORD_TAG);
            ack.extend_from_slice(&[0; RECORD_HEADER]);
            ack.extend_from_slice(&seq.to_be_bytes());
            sealer.seal(&mut ack).map_err(|e| e.to_string())?;
            if wr.write_all(&ack).await.is_err() {
                return Ok(());
            }
        }
    }

    /// The rest of a lane message after its first record: `head` is what
    /// the first record held of it; `len` its whole length. The records
    /// are read back to back straight into the message's buffer, as many
    /// as the socket has at each read (never past the end of this
    /// message's records: at most what its remaining payload plus one
    /// record's overhead can be), and each is opened where it lies with its
    /// payload moved down behind the previous one in the same pass
    /// ([`RecordOpener::open_within`]). The buffer holds at most `len`
    /// plus [`READ_SLACK`] bytes whatever the peer's record sizes.
    async fn read_rest(
        &self,
        rd: &mut OwnedReadHalf,
        opener: &mut RecordOpener,
        head: &[u8],
        len: usize,
    ) -> Result<Option<Vec<u8>>, String> {
        const OVERHEAD: usize = RECORD_HEADER + RECORD_TAG;
        if head.len() > len {
            return Err("lane record longer than its message".to_owned());
        }
        let mut whole = lock(&self.inner.kept).pop().unwrap_or_default();
        whole.clear();
        whole.reserve_exact(len + READ_SLACK);
        whole.extend_from_slice(head);
        // Payload so far: `whole[..plain]`; read, not yet opened:
        // `whole[raw..]`; between them the opened records' overhead.
        let (mut plain, mut raw) = (whole.len(), whole.len());
        let mut opened = 0usize;
        while plain < len {
            // Open every whole record read so far.
            while whole.len() - raw >= RECORD_HEADER {
                let mut h = [0u8; RECORD_HEADER];
                h.copy_from_slice(&whole[raw..raw + RECORD_HEADER]);
                let n = opener.announced(h).map_err(|e| e.to_string())?;
                if plain + n > len {
                    return Err("lane record longer than its message".to_owned());
                }
                let end = raw + OVERHEAD + n;
                if whole.len() < end {
                    break;
                }
                let got = opener
                    .open_within(h, &mut whole[plain..end], raw + RECORD_HEADER - plain)
                    .map_err(|e| e.to_string())?;
                plain += got;
                raw = end;
                opened += 1;
                if opened % YIELD_EVERY == 0 {
                    // Opening is CPU work (see `Conn::write`).
                    tokio::task::yield_now().await;
                }
                if plain == len {
                    break;
                }
            }
            if plain == len {
                break;
            }
            // What surely belongs to this message: its remaining payload and
            // at least one record's overhead, less what is already here.
            let want = (len - plain + OVERHEAD).saturating_sub(whole.len() - raw);
            if whole.len() + want > whole.capacity() {
                // Small records piled up overhead: move the unopened bytes
                // down (at most one record's worth of a read).
                whole.copy_within(raw.., plain);
                whole.truncate(plain + (whole.len() - raw));
                raw = plain;
            }
            let room = (whole.capacity() - whole.len()).min(want);
            // Into the buffer's spare room (no zeroing pass first). A
            // message begun must keep coming: one that stalls would hold
            // its admitted budget for as long as the connection lives.
            let stall = self.inner.partials.limits.partial_expiry;
            let mut limited = (&mut *rd).take(room as u64);
            match tokio::time::timeout(stall, limited.read_buf(&mut whole)).await {
                Err(_) => return Err(stalled(stall)),
                Ok(Ok(0) | Err(_)) => return Ok(None),
                Ok(Ok(_)) => {}
            }
        }
        whole.truncate(len);
        Ok(Some(whole))
    }

    /// Opens a lane to `peer`: a ticket over the mesh, then the connection.
    async fn open_lane(&self, peer: PeerId, session: u64, bulk: &Bulk) -> Result<Conn, String> {
        let addr = lock(&bulk.addrs)
            .get(&peer)
            .copied()
            .ok_or("the peer gossips no lane address")?;
        let (tx, rx) = oneshot::channel::<Result<Box<dyn WireBytes>, WireError>>();
        let id = self.register(peer, Box::new(tx));
        let asked = Frame::LaneOpen { id, session };
        if let Err(e) = self.send(peer, &asked) {
            lock(&self.inner.pending).remove(&id);
            return Err(format!("cannot ask for a lane: {e}"));
        }
        let answer = tokio::time::timeout(OPEN_TIMEOUT, rx).await;
        lock(&self.inner.pending).remove(&id);
        let bytes = match answer {
            Ok(Ok(Ok(b))) => b,
            Ok(Ok(Err(e))) => return Err(format!("lane refused: {e}")),
            Ok(Err(_)) => return Err("peer down while asking for a lane".to_owned()),
            Err(_) => return Err(format!("no lane grant within {OPEN_TIMEOUT:?}")),
        };
        let grant: LaneGrant =
            postcard::from_bytes(bytes.bytes()).map_err(|e| format!("lane grant: {e}"))?;
        let secrets = LaneSecrets {
            material: grant.material,
            ticket: grant.ticket,
        };
        let mut sock = tokio::time::timeout(OPEN_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))?
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let _ = sock.set_nodelay(true);
        sock.write_all(&secrets.ticket)
            .await
            .map_err(|e| format!("presenting the ticket to {addr}: {e}"))?;
        let (sealer, mut opener) = lane_keys(&secrets, Side::Dialer).map_err(|e| e.to_string())?;
        let (mut rd, wr) = sock.into_split();
        // Nothing is written before the peer confirmed the ticket: a
        // connection it refused (too many at once, the ticket gone) fails
        // here, and the messages go on another lane or over the mesh, not
        // into a socket nobody reads.
        let mut buf = Vec::with_capacity(64);
        let confirmed = tokio::time::timeout(
            OPEN_TIMEOUT,
            read_record(&mut rd, &mut opener, &mut buf, OPEN_TIMEOUT),
        )
        .await;
        match confirmed {
            Ok(Ok(Some(8))) if buf[..8] == [0; 8] => {}
            Ok(Err(e)) => return Err(format!("the lane's confirmation from {addr}: {e}")),
            Err(_) => {
                return Err(format!(
                    "{addr} did not confirm the lane within {OPEN_TIMEOUT:?}"
                ));
            }
            Ok(_) => return Err(format!("{addr} did not take the lane's ticket")),
        }
        // Acknowledgements are cumulative (the peer handles a lane's
        // messages in order): only the highest one is kept, so a peer that
        // sends them faster than this end writes cannot grow a queue.
        let (ack_tx, acks) = watch::channel(0u64);
        let stall = self.inner.partials.limits.partial_expiry;
        let reader = tokio::spawn(async move {
            loop {
                match read_record(&mut rd, &mut opener, &mut buf, stall).await {
                    Ok(Some(8)) => {
                        let seq = u64::from_be_bytes(buf[..8].try_into().unwrap_or_default());
                        ack_tx.send_modify(|highest| *highest = (*highest).max(seq));
                        if ack_tx.is_closed() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Ok(Some(n)) => {
                        tracing::warn!(target: "manta::lane", %peer, "lane acknowledgement of {n} bytes; closing the lane");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(target: "manta::lane", %peer, "lane acknowledgement: {e}; closing the lane");
                        return;
                    }
                }
            }
        });
        bulk.opened.fetch_add(1, Ordering::Relaxed);
        self.inner.partials.moved.notify_waiters();
        Ok(Conn {
            wr,
            sealer,
            acks,
            reader,
            // The peer may stop reading while it waits up to
            // `partial_expiry` for room in its budget: twice that without
            // progress means it stopped for good.
            stall: 2 * stall,
            written: 0,
            cut_after: bulk.cut_after.swap(0, Ordering::Relaxed),
        })
    }

    /// The sending end of `peer`'s lane: opens it (again after a failure),
    /// writes what is queued in order, and lets go of each message once the
    /// peer acknowledged it. Ends when its link is gone and everything
    /// written was acknowledged, or after it fell back to the mesh.
    pub(super) async fn lane_loop(
        self,
        peer: PeerId,
        session: u64,
        rx: mpsc::UnboundedReceiver<LaneMsg>,
        bytes: Arc<AtomicUsize>,
        inflight: Inflight,
        writer_id: u64,
    ) {
        let Some(bulk) = self.inner.bulk.get() else {
            return;
        };
        let stopped = bulk.stopped();
        tokio::select! {
            _ = stopped => {}
            _ = self.clone().lane_run(peer, session, rx, bytes, inflight, writer_id, bulk) => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn lane_run(
        self,
        peer: PeerId,
        session: u64,
        mut rx: mpsc::UnboundedReceiver<LaneMsg>,
        bytes: Arc<AtomicUsize>,
        inflight: Inflight,
        writer_id: u64,
        bulk: &Bulk,
    ) {
        let mut unacked: VecDeque<LaneMsg> = VecDeque::new();
        let mut todo: VecDeque<LaneMsg> = VecDeque::new();
        let mut failures = 0u32;
        let mut open = true;
        loop {
            let mut conn = match self.open_lane(peer, session, bulk).await {
                Ok(c) => c,
                Err(why) => {
                    failures += 1;
                    if failures < 2 && self.node_signal(peer).reason().is_none() {
                        tracing::debug!(target: "manta::lane", %peer, "cannot open a lane: {why}; trying again");
                        continue;
                    }
                    tracing::warn!(target: "manta::lane", %peer, "cannot open a lane: {why}; large messages go over the mesh for {FALLBACK:?}");
                    todo.extend(rx_drain(&mut rx));
                    self.fall_back(peer, writer_id, unacked, todo, rx, &bytes, &inflight);
                    return;
                }
            };
            failures = 0;
            let _counted = Counted::new(&bulk.outgoing, peer);
            // What was written but not acknowledged goes first, in order.
            let resend = unacked.len() as u64;
            if resend > 0 {
                bulk.resent.fetch_add(resend, Ordering::Relaxed);
                self.inner.partials.moved.notify_waiters();
            }
            while let Some(m) = unacked.pop_back() {
                todo.push_front(m);
            }
            loop {
                if conn.acks.has_changed().unwrap_or(false) {
                    let n = *conn.acks.borrow_and_update();
                    self.acked(n, &mut unacked, &bytes, &inflight);
                }
                let next = match todo.pop_front() {
                    Some(m) => Some(m),
                    None if !open && unacked.is_empty() => return,
                    None => tokio::select! {
                        biased;
                        a = conn.acks.changed() => {
                            let n = *conn.acks.borrow_and_update();
                            self.acked(n, &mut unacked, &bytes, &inflight);
                            if a.is_err() {
                                // The reader ended: the connection is gone.
                                break;
                            }
                            continue;
                        }
                        m = rx.recv(), if open => match m {
                            Some(m) => Some(m),
                            None => {
                                open = false;
                                continue;
                            }
                        },
                    },
                };
                let Some(mut m) = next else { continue };
                match conn.write(&mut m, bulk).await {
                    Ok(()) => unacked.push_back(m),
                    Err(WriteError::Io(e)) => {
                        unacked.push_back(m);
                        tracing::debug!(target: "manta::lane", %peer, error = %e, "lane write failed; reopening");
                        break;
                    }
                    Err(WriteError::Produce { error, partial }) => {
                        self.drop_unencodable(peer, m, &error, &bytes, &inflight);
                        if partial {
                            // The peer holds part of it: a new connection
                            // discards that.
                            break;
                        }
                    }
                }
            }
            // The connection died: unseal what it sealed, to send it again.
            conn.unseal(&mut unacked);
            let nothing_left = unacked.is_empty() && todo.is_empty();
            if !open && (nothing_left || self.node_signal(peer).reason().is_some()) {
                return;
            }
        }
    }

    fn acked(
        &self,
        n: u64,
        unacked: &mut VecDeque<LaneMsg>,
        bytes: &AtomicUsize,
        inflight: &Inflight,
    ) {
        while unacked.front().is_some_and(|m| m.seq <= n) {
            if let Some(m) = unacked.pop_front() {
                bytes.fetch_sub(m.bytes, Ordering::Relaxed);
                dec(inflight, &m.target);
                if let Some(b) = self.bulk() {
                    b.acked.fetch_add(1, Ordering::Relaxed);
                    if matches!(m.body, LaneBody::Lazy(_)) {
                        b.lazy_acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        self.inner.partials.moved.notify_waiters();
    }

    /// The lane could not be opened: the link forgets it, and its messages
    /// go over the mesh. What was never written goes as mesh frames; what
    /// was written may have been handled already, so it is not sent again:
    /// the asks it carries fail.
    #[allow(clippy::too_many_arguments)]
    fn fall_back(
        &self,
        peer: PeerId,
        writer_id: u64,
        unacked: VecDeque<LaneMsg>,
        todo: VecDeque<LaneMsg>,
        mut rx: mpsc::UnboundedReceiver<LaneMsg>,
        bytes: &AtomicUsize,
        inflight: &Inflight,
    ) {
        if let Some(b) = self.bulk() {
            b.fallbacks.fetch_add(1, Ordering::Relaxed);
            lock(&b.fallback).insert(peer, Instant::now() + FALLBACK);
        }
        let mut links = lock(&self.inner.links);
        let link = links.get_mut(&peer).filter(|l| l.writer_id == writer_id);
        // Under the links lock: nothing more is queued on the lane.
        let mut all: Vec<LaneMsg> = unacked.into_iter().chain(todo).collect();
        all.extend(rx_drain(&mut rx));
        let mut failed = Vec::new();
        match link {
            Some(link) => {
                link.lane = None;
                for m in all {
                    bytes.fetch_sub(m.bytes, Ordering::Relaxed);
                    dec(inflight, &m.target);
                    if m.written {
                        failed.push(m);
                        continue;
                    }
                    let target = m.target.clone();
                    if let Err(e) = link.queue_mesh_bulk(m.body.to_mesh(), target) {
                        tracing::warn!(target: "manta::lane", %peer, error = %e, "a message for the lane could not go over the mesh either; dropped");
                    }
                }
            }
            None => failed = all,
        }
        drop(links);
        for m in failed {
            self.fail_asks_of(peer, &m);
        }
        self.inner.partials.moved.notify_waiters();
    }

    /// Fails the asks a lane message carries (it may or may not have been
    /// handled: its lane died after it was written, and no new lane opened).
    fn fail_asks_of(&self, peer: PeerId, m: &LaneMsg) {
        let ids = asks_of(m);
        tracing::warn!(target: "manta::lane", %peer, asks = ids.len(), "a message written to a lane that died could not be sent again");
        self.fail_pending(
            ids,
            &format!("{peer} (its bulk lane died during the message and could not be reopened)"),
        );
    }

    /// Lets go of a lazy lane message whose value did not encode (it
    /// encoded when it was sent, so its encoding changed since): its asks
    /// fail with the encoding error.
    fn drop_unencodable(
        &self,
        peer: PeerId,
        m: LaneMsg,
        error: &WireError,
        bytes: &AtomicUsize,
        inflight: &Inflight,
    ) {
        bytes.fetch_sub(m.bytes, Ordering::Relaxed);
        dec(inflight, &m.target);
        let ids = asks_of(&m);
        tracing::warn!(target: "manta::lane", %peer, %error, asks = ids.len(), "a message for the lane no longer encodes; dropped");
        for id in ids {
            let waiting = lock(&self.inner.pending).remove(&id);
            if let Some((_, w)) = waiting {
                w.deliver(Err(error.clone()));
            }
        }
        self.inner.partials.moved.notify_waiters();
    }

    /// Issues a lane ticket for `peer` as a [`Frame::LaneOpen`] from it
    /// would (session `session`): what a member holding the secret gets,
    /// for tests that speak the lane protocol by hand. Feature `testing`
    /// only.
    #[cfg(feature = "testing")]
    pub fn issue_lane_ticket_for_test(&self, peer: PeerId, session: u64) -> Option<LaneSecrets> {
        let g = self.bulk()?.grant(peer, session).ok()?;
        Some(LaneSecrets {
            material: g.material,
            ticket: g.ticket,
        })
    }

    /// Fault injection: the next record written to any lane has a flipped
    /// bit. Feature `testing` only.
    #[cfg(feature = "testing")]
    pub fn tamper_next_lane_record_for_test(&self) {
        if let Some(b) = self.bulk() {
            b.tamper.store(true, Ordering::Relaxed);
        }
    }

    /// Fault injection: the next lane connection opened is closed by this
    /// node after `bytes` bytes written (in the middle of a message).
    /// Feature `testing` only.
    #[cfg(feature = "testing")]
    pub fn cut_next_lane_for_test(&self, bytes: u64) {
        if let Some(b) = self.bulk() {
            b.cut_after.store(bytes, Ordering::Relaxed);
        }
    }

    /// Encodes the mesh barrier for lane message `seq`.
    pub(super) fn barrier_frame(&self, session: u64, seq: u64) -> Result<Vec<u8>, WireError> {
        match encode(&Frame::Barrier { session, seq }, None)? {
            Encoded::Small(b) => Ok(b),
            _ => Err(WireError::Encode(manta_actors::CodecError::new(
                "barrier",
                "not a small frame",
            ))),
        }
    }

    /// The records of whatever `e` is, for the lane (a message that must
    /// follow another on it).
    pub(super) fn to_records(e: Encoded) -> LaneBody {
        LaneBody::Records(match e {
            Encoded::Lazy(src) => return LaneBody::Lazy(src),
            Encoded::Records(r) => r,
            Encoded::Small(b) => Recorder::of_small(&b),
            Encoded::Chunks(chunks) => {
                // Rare: a frame encoded for the mesh just as a large message
                // to its actor went on the lane. Its pieces, in order.
                let mut frame = Vec::new();
                for c in &chunks {
                    if let Ok(r) = postcard::from_bytes::<super::frame::ChunkRef<'_>>(
                        c.get(6..).unwrap_or_default(),
                    ) {
                        frame.extend_from_slice(r.data);
                    }
                }
                let mut stream = Vec::with_capacity(frame.len() + 5);
                stream.extend_from_slice(&(frame.len() as u32 + 1).to_be_bytes());
                stream.push(FRAME_VERSION);
                stream.extend_from_slice(&frame);
                Recorder::of_small(&stream)
            }
        })
    }
}

/// The head of a lane message, from its first record's plaintext: its
/// number, the barrier it waits for, and the length of its frame (version
/// byte included), checked against the largest frame.
pub(super) fn lane_head(plain: &[u8]) -> Result<(u64, u64, usize), String> {
    let n = plain.len();
    let (Some(seq), Some(barrier), Some(len)) = (
        plain.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()),
        plain.get(8..16).and_then(|b| <[u8; 8]>::try_from(b).ok()),
        plain.get(16..20).and_then(|b| <[u8; 4]>::try_from(b).ok()),
    ) else {
        return Err(format!("lane message header of {n} bytes"));
    };
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME + 1 {
        return Err(format!("lane message of {len} bytes"));
    }
    Ok((u64::from_be_bytes(seq), u64::from_be_bytes(barrier), len))
}

/// The replies a lane message's request waits for.
fn asks_of(m: &LaneMsg) -> Vec<u64> {
    match &m.body {
        LaneBody::Lazy(src) => src.replies(),
        LaneBody::Records(records) => {
            let mut plain = Vec::new();
            for r in records {
                plain.extend_from_slice(r.get(RECORD_HEADER..).unwrap_or_default());
            }
            let frame = plain.get(LANE_HEAD + 5..).unwrap_or_default();
            match postcard::from_bytes::<Frame>(frame) {
                Ok(Frame::Request { replies, .. }) => replies,
                _ => Vec::new(),
            }
        }
    }
}

fn rx_drain(rx: &mut mpsc::UnboundedReceiver<LaneMsg>) -> Vec<LaneMsg> {
    let mut out = Vec::new();
    while let Ok(m) = rx.try_recv() {
        out.push(m);
    }
    out
}
