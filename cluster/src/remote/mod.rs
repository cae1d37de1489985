//! Remote actors: long-lived libp2p streams per peer carrying
//! length-prefixed postcard frames (`u32` big-endian length, a version byte,
//! then the frame), a bounded send queue per peer (a full queue is
//! backpressure, never unbounded memory), small frames batched into one
//! flush under load, and [`RemoteRef`], the [`RemoteActor`] that lets an
//! [`ActorHandle`] address an actor on another node.
//!
//! Read in this order, from a send to the wire and back:
//!
//! 1. this file: the limits, [`Remoting`] (one per node) and its public
//!    API: handles, remote spawn, node up/down, watches, counters.
//! 2. `handles`: [`RemoteRef`] and the erased handle, where a tell, stop,
//!    kill or monitor of a remote actor starts.
//! 3. `frame`: the frame codec. What travels on a stream, and how a frame
//!    is encoded as one small frame or cut into chunks as it is written.
//! 4. `link`: the link to one peer. Its two lanes (small frames, chunks),
//!    the writer task that batches and writes them, and the reopen of a
//!    broken stream.
//! 5. `reader`: the reader task of each incoming stream. Frame checks,
//!    reassembly of chunked messages, the buffers kept for the next ones.
//! 6. `dispatch`: what a received frame does. Delivery to local actors,
//!    answers to pending asks (only from the node asked), remote spawn,
//!    watches, and the route replies take back to the asking node.
//!
//! [`RemoteActor`]: manta_actors::RemoteActor

mod dispatch;
mod frame;
// The frame codec's fuzz entry points (`crate::fuzzing` re-exports them).
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz;
mod handles;
mod lane;
mod link;
mod reader;

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use libp2p::{PeerId, StreamProtocol};
use manta_actors::wire::{PendingReply, WireBytes};
use manta_actors::{
    ActorHandle, ActorSystem, CodecError, ExitReason, ExitSignal, RemoteMessage, WireError,
};
use tokio::sync::oneshot;

use dispatch::PeerReplies;
use frame::Frame;
use handles::{RemoteAny, intern};
use link::Link;

pub use handles::RemoteRef;
pub use lane::{BulkSettings, LaneUse};

/// The stream protocol of actor traffic. Version 2: the accepting node
/// writes [`ACCEPTED`] before it reads, and nothing after.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/manta/actors/2");
/// The one byte a node writes on an actor stream it accepted: the opener
/// writes nothing before it (see `Remoting::open_stream`).
pub(crate) const ACCEPTED: u8 = 0xA5;
/// Frame format version.
pub const FRAME_VERSION: u8 = 2;
/// Largest frame accepted (bigger ones close the stream).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;
/// Frames queued per peer before senders see backpressure.
pub const PEER_QUEUE: usize = 4096;
/// Actor streams one peer may have open to this node at once (its writer
/// needs one, and one more while a broken one is replaced); more are
/// dropped before they are accepted, so a member cannot hold a receive
/// buffer open per yamux stream it likes.
pub const STREAMS_PER_PEER: usize = 16;
/// Messages whose encoding exceeds this are cut into chunks of this size and
/// sent on a separate lane, so they never stall small messages.
pub const CHUNK: usize = 64 * 1024;
/// Chunks queued per peer (64 MiB) before senders see backpressure.
pub const BULK_QUEUE: usize = MAX_FRAME / CHUNK;
/// Largest frame on the wire: a chunk with its header.
const MAX_WIRE_FRAME: usize = CHUNK + 256;
/// Large messages being reassembled per stream at once (a sender writes
/// one message's chunks in order, so it has one at a time per stream).
const MAX_PARTIAL: usize = 4;
/// Reassembly buffers a node keeps for the next large messages (each up to
/// a whole frame): at most this many, whatever the number of peers.
const KEPT_BUFFERS: usize = 2;
/// Spawns a peer can have running here at once; more are refused with
/// backpressure (each one is a task, and may start a supervision tree).
const MAX_SPAWNS_PER_PEER: usize = 32;
/// The pending-reply table is swept of abandoned entries each time it
/// doubles past the size left by the last sweep, from this size on.
const SWEEP_MIN: u64 = 1024;

type Pending = Box<dyn PendingReply>;

/// What one peer (a member holding the cluster secret, so trusted to
/// connect but not to behave) can make this node hold.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteLimits {
    /// Bytes of partly received large messages from one peer, counted at
    /// their declared size when their first chunk arrives (memory itself
    /// is taken as chunks arrive). A peer going over is misbehaving (a
    /// sender has at most one message in reassembly per stream): the stream
    /// is closed and counted. Default 136 MiB: two of the largest messages
    /// and a margin.
    pub partial_per_peer: usize,
    /// Bytes of partly received large messages from all peers together. A
    /// new message that does not fit waits, its stream unread (TCP
    /// backpressure to its sender), until others complete or expire; after
    /// `partial_expiry` of waiting the stream is closed and counted.
    /// Default 512 MiB.
    pub partial_per_node: usize,
    /// A partial message that receives no chunk for this long is dropped
    /// and its bytes released (counted). Default 30 s.
    pub partial_expiry: std::time::Duration,
}

impl Default for RemoteLimits {
    fn default() -> Self {
        Self {
            partial_per_peer: 2 * MAX_FRAME + 8 * 1024 * 1024,
            partial_per_node: 512 * 1024 * 1024,
            partial_expiry: Duration::from_secs(30),
        }
    }
}

struct Inner {
    system: ActorSystem,
    control: Mutex<libp2p_stream::Control>,
    links: Mutex<HashMap<PeerId, Link>>,
    pending: Mutex<HashMap<u64, (PeerId, Pending)>>,
    node_signals: Mutex<HashMap<PeerId, Arc<ExitSignal>>>,
    /// Exit signals of watched remote actors, by node and name.
    watched: Mutex<HashMap<(PeerId, String), Arc<ExitSignal>>>,
    next_id: AtomicU64,
    bad_frames: AtomicU64,
    /// Replies from a node other than the one the request went to (dropped).
    forged_replies: AtomicU64,
    /// Remote tells refused because their actor's inbox was full.
    refused_tells: AtomicU64,
    /// Actor streams that broke and were replaced by a fresh one.
    reopened: AtomicU64,
    /// Writes to fail on purpose (tests of the reopen path), and how many
    /// to let through first.
    failing_writes: AtomicU64,
    passing_writes: AtomicU64,
    /// Inbound streams to drop unaccepted, and streams to end after their
    /// next frame (tests of the writer's reopen path).
    dropping_streams: AtomicU64,
    ending_streams: AtomicU64,
    /// Actor streams open from each peer (at most [`STREAMS_PER_PEER`]).
    inbound: Mutex<HashMap<PeerId, usize>>,
    /// Actor streams dropped because their peer had too many open.
    refused_streams: AtomicU64,
    /// Reassembly buffers of large messages already handled, for the next
    /// ones: a fresh buffer costs a page fault per 4 KiB on the core that
    /// also decrypts the stream (on the bench machine, about 1 ms per MiB).
    kept: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Pending replies at which closed ones are next swept out.
    sweep_at: AtomicU64,
    /// Large messages being reassembled, of every peer, within budgets.
    partials: reader::Partials,
    /// What this node does for each peer: its spawns running, and one
    /// watch task per actor it watches (a watch of an actor already
    /// watched adds nothing), ended when the peer goes down.
    serving: Mutex<HashMap<PeerId, Serving>>,
    /// The bulk lane, once enabled.
    bulk: std::sync::OnceLock<lane::Bulk>,
}

#[derive(Default)]
struct Serving {
    spawns: usize,
    watches: HashMap<String, tokio::task::AbortHandle>,
}

/// Remote messaging for one node.
#[derive(Clone)]
pub struct Remoting {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Remoting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remoting").finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a map operation: a poisoned lock is consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Remoting {
    /// Starts accepting actor streams for `system`, with the default
    /// [`RemoteLimits`].
    pub fn start(system: ActorSystem, control: libp2p_stream::Control) -> Remoting {
        Self::start_with(system, control, RemoteLimits::default())
    }

    /// Starts accepting actor streams for `system` within `limits`.
    pub fn start_with(
        system: ActorSystem,
        mut control: libp2p_stream::Control,
        limits: RemoteLimits,
    ) -> Remoting {
        let incoming = control.accept(PROTOCOL);
        let r = Remoting {
            inner: Arc::new(Inner {
                system,
                control: Mutex::new(control),
                links: Mutex::new(HashMap::new()),
                pending: Mutex::new(HashMap::new()),
                node_signals: Mutex::new(HashMap::new()),
                watched: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                bad_frames: AtomicU64::new(0),
                forged_replies: AtomicU64::new(0),
                refused_tells: AtomicU64::new(0),
                reopened: AtomicU64::new(0),
                failing_writes: AtomicU64::new(0),
                passing_writes: AtomicU64::new(0),
                dropping_streams: AtomicU64::new(0),
                ending_streams: AtomicU64::new(0),
                inbound: Mutex::new(HashMap::new()),
                refused_streams: AtomicU64::new(0),
                kept: Arc::new(Mutex::new(Vec::new())),
                sweep_at: AtomicU64::new(SWEEP_MIN),
                partials: reader::Partials::new(limits),
                serving: Mutex::new(HashMap::new()),
                bulk: std::sync::OnceLock::new(),
            }),
        };
        tokio::spawn(reader::expire_partials(Arc::downgrade(&r.inner)));
        match incoming {
            Ok(mut incoming) => {
                let me = r.clone();
                tokio::spawn(async move {
                    while let Some((peer, stream)) = incoming.next().await {
                        tokio::spawn(me.clone().read_loop(peer, stream));
                    }
                });
            }
            Err(e) => {
                tracing::error!(target: "manta::remote", error = %e, "cannot accept actor streams")
            }
        }
        r
    }

    /// Turns the bulk lane on: lane connections are accepted on `listener`
    /// (whose address the node gossips), and frames of at least
    /// `settings.threshold` bytes to a peer that gossips a lane go on it.
    /// Once per node; a second call is an error.
    pub fn enable_bulk(
        &self,
        listener: tokio::net::TcpListener,
        settings: BulkSettings,
    ) -> std::io::Result<std::net::SocketAddr> {
        let local = listener.local_addr()?;
        self.inner
            .bulk
            .set(lane::Bulk::new(settings, local))
            .map_err(|_| std::io::Error::other("the bulk lane is already on"))?;
        tokio::spawn(self.clone().accept_lanes(listener));
        Ok(local)
    }

    /// The address this node's lane listens on, if the lane is on.
    pub fn bulk_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.bulk.get().map(lane::Bulk::local)
    }

    /// Sets (or clears) the lane address `peer` gossips.
    pub fn set_lane_addr(&self, peer: PeerId, addr: Option<std::net::SocketAddr>) {
        if let Some(b) = self.inner.bulk.get() {
            b.set_addr(peer, addr);
            self.inner.partials.moved.notify_waiters();
        }
    }

    /// Which lane carries large messages to `peer` now.
    pub fn lane_use(&self, peer: PeerId) -> LaneUse {
        match self.inner.bulk.get() {
            Some(b) => b.lane_use(peer),
            None => LaneUse::MeshOff,
        }
    }

    /// Lane connections closed before they were used: no ticket within the
    /// deadline, or an unknown, used or expired one, or too many at once.
    pub fn lane_refused(&self) -> u64 {
        self.inner
            .bulk
            .get()
            .map_or(0, |b| b.refused.load(Ordering::Relaxed))
    }

    /// Lanes closed here because a record did not open or a message on it
    /// was malformed.
    pub fn lane_bad_records(&self) -> u64 {
        self.inner
            .bulk
            .get()
            .map_or(0, |b| b.bad_records.load(Ordering::Relaxed))
    }

    /// Lane connections other nodes hold open to this node now (each
    /// past its ticket).
    pub fn lanes_in(&self) -> usize {
        self.inner
            .bulk
            .get()
            .map_or(0, |b| lock(&b.incoming).values().sum())
    }

    /// Lane connections this node opened.
    pub fn lanes_opened(&self) -> u64 {
        self.inner
            .bulk
            .get()
            .map_or(0, |b| b.opened.load(Ordering::Relaxed))
    }

    /// Lane messages sent again on a new lane after theirs died.
    pub fn lane_resent(&self) -> u64 {
        self.inner
            .bulk
            .get()
            .map_or(0, |b| b.resent.load(Ordering::Relaxed))
    }

    /// Lane messages peers acknowledged (sent from this node).
    pub fn lane_messages(&self) -> u64 {
        self.inner
            .bulk
            .get()
            .map_or(0, |b| b.acked.load(Ordering::Relaxed))
    }

    /// Of [`Remoting::lane_messages`], those the lane produced as it wrote
    /// them (held as their value, not as records: frames of at least 1 MiB
    /// written in at most 1,024 serializer calls).
    pub fn lane_lazy_messages(&self) -> u64 {
        self.inner
            .bulk
            .get()
            .map_or(0, |b| b.lazy_acked.load(Ordering::Relaxed))
    }

    /// Stops the bulk lane: its listener and every lane connection close
    /// (the node is leaving or stopping).
    pub fn close_lanes(&self) {
        if let Some(b) = self.inner.bulk.get() {
            b.close();
        }
    }

    /// Times a lane could not be opened and the mesh took its messages.
    pub fn lane_fallbacks(&self) -> u64 {
        self.inner
            .bulk
            .get()
            .map_or(0, |b| b.fallbacks.load(Ordering::Relaxed))
    }

    /// Frames received that were malformed (the stream was closed).
    pub fn bad_frames(&self) -> u64 {
        self.inner.bad_frames.load(Ordering::Relaxed)
    }

    /// Remote tells refused because their actor's inbox was full (see
    /// `ActorSystem::set_remote_inbox_limit`).
    pub fn refused_tells(&self) -> u64 {
        self.inner.refused_tells.load(Ordering::Relaxed)
    }

    /// Actor streams dropped unaccepted because their peer already had
    /// [`STREAMS_PER_PEER`] open here.
    pub fn refused_streams(&self) -> u64 {
        self.inner.refused_streams.load(Ordering::Relaxed)
    }

    /// Replies that came from a node other than the one asked (dropped).
    pub fn forged_replies(&self) -> u64 {
        self.inner.forged_replies.load(Ordering::Relaxed)
    }

    /// Waits until `done` holds of this node's counters (checked each time
    /// one of them moves), for at most `deadline`; whether it held.
    pub async fn wait_counters(
        &self,
        deadline: Duration,
        done: impl Fn(&Remoting) -> bool,
    ) -> bool {
        tokio::time::timeout(deadline, async {
            loop {
                let moved = self.inner.partials.moved.notified();
                tokio::pin!(moved);
                moved.as_mut().enable();
                if done(self) {
                    return;
                }
                moved.await;
            }
        })
        .await
        .is_ok()
    }

    /// Watches this node serves for other nodes (one per watched actor
    /// and peer).
    pub fn served_watches(&self) -> usize {
        lock(&self.inner.serving)
            .values()
            .map(|s| s.watches.len())
            .sum()
    }

    /// Large messages dropped in reassembly: expired (no chunk for
    /// [`RemoteLimits::partial_expiry`]) or refused over a budget.
    pub fn dropped_partials(&self) -> u64 {
        self.inner.partials.dropped()
    }

    /// Bytes of partly received large messages held now (declared sizes),
    /// all peers together.
    pub fn partial_bytes(&self) -> usize {
        self.inner.partials.bytes()
    }

    /// Outgoing actor streams that broke while their peer was still a
    /// member and were replaced by a fresh stream (the write that failed
    /// was sent again on it).
    pub fn reopened_streams(&self) -> u64 {
        self.inner.reopened.load(Ordering::Relaxed)
    }

    /// Opens a raw actor stream to `peer` for crafted frames: what a member
    /// that holds the secret but does not run Manta's writer can send.
    /// Feature `testing` only.
    /// It returns once the peer accepted the stream (its acceptance byte
    /// is read).
    #[cfg(feature = "testing")]
    pub async fn raw_stream_for_test(&self, peer: PeerId) -> std::io::Result<libp2p::Stream> {
        use futures::AsyncReadExt;
        let mut control = lock(&self.inner.control).clone();
        let mut stream = control
            .open_stream(peer, PROTOCOL)
            .await
            .map_err(std::io::Error::other)?;
        let mut ack = [0u8; 1];
        stream.read_exact(&mut ack).await?;
        if ack[0] != ACCEPTED {
            return Err(std::io::Error::other("not an acceptance byte"));
        }
        Ok(stream)
    }

    /// A chunk frame as it goes on the wire (length prefix included).
    /// Feature `testing` only.
    #[cfg(feature = "testing")]
    pub fn chunk_frame_for_test(msg: u64, index: u32, count: u32, data: &[u8]) -> Vec<u8> {
        frame::wire_chunk(&frame::ChunkRef {
            msg,
            index,
            count,
            data,
        })
        .unwrap_or_default()
    }

    /// A reply frame answering request `id` with `body` (the encoding of
    /// the reply value), as it goes on the wire. Feature `testing` only.
    #[cfg(feature = "testing")]
    pub fn reply_frame_for_test(id: u64, body: &[u8]) -> Vec<u8> {
        let f = Frame::Reply {
            id,
            result: Ok(frame::ReplyBody(std::borrow::Cow::Borrowed(body))),
        };
        match frame::encode(&f, None) {
            Ok(frame::Encoded::Small(bytes)) => bytes,
            _ => Vec::new(),
        }
    }

    /// A watch frame for the actor `to`, as it goes on the wire. Feature
    /// `testing` only.
    #[cfg(feature = "testing")]
    pub fn watch_frame_for_test(to: &str) -> Vec<u8> {
        match frame::encode(&Frame::Watch { to: to.to_owned() }, None) {
            Ok(frame::Encoded::Small(bytes)) => bytes,
            _ => Vec::new(),
        }
    }

    /// Lets the next `skip` writes to actor streams through, then makes `n`
    /// fail as if the connection had closed under them: fault injection for
    /// tests of the reopen path. Feature `testing` only.
    #[cfg(feature = "testing")]
    pub fn fail_writes(&self, skip: u64, n: u64) {
        self.inner.passing_writes.store(skip, Ordering::Relaxed);
        self.inner.failing_writes.store(n, Ordering::Relaxed);
    }

    /// Drops the next `n` inbound actor streams without accepting them, as
    /// libp2p-stream does with one that arrives while its accept queue is
    /// full. Feature `testing` only.
    #[cfg(feature = "testing")]
    pub fn drop_inbound_streams(&self, n: u64) {
        self.inner.dropping_streams.store(n, Ordering::Relaxed);
    }

    /// Inbound streams still to be dropped (see `drop_inbound_streams`).
    /// Feature `testing` only.
    #[cfg(feature = "testing")]
    pub fn inbound_streams_to_drop(&self) -> u64 {
        self.inner.dropping_streams.load(Ordering::Relaxed)
    }

    /// Ends the next `n` inbound actor streams after each one's next frame
    /// (handled as usual), as a connection closing under them would.
    /// Feature `testing` only.
    #[cfg(feature = "testing")]
    pub fn end_inbound_streams(&self, n: u64) {
        self.inner.ending_streams.store(n, Ordering::Relaxed);
    }

    /// The node-down signal of `peer`'s current incarnation.
    fn node_signal(&self, peer: PeerId) -> Arc<ExitSignal> {
        Arc::clone(
            lock(&self.inner.node_signals)
                .entry(peer)
                .or_insert_with(|| Arc::new(ExitSignal::new())),
        )
    }

    /// `peer` is up (again): fresh signal for its new incarnation.
    pub fn node_up(&self, peer: PeerId) {
        let mut sigs = lock(&self.inner.node_signals);
        if sigs.get(&peer).is_some_and(|s| s.reason().is_some()) {
            sigs.insert(peer, Arc::new(ExitSignal::new()));
        }
    }

    /// `peer` is down or gone: its handles die with `node down`, pending
    /// asks fail, its link is dropped.
    pub fn node_down(&self, peer: PeerId) {
        self.node_signal(peer)
            .set(ExitReason::NodeDown(peer.to_string()));
        lock(&self.inner.links).remove(&peer);
        self.inner.partials.forget(peer);
        if let Some(b) = self.inner.bulk.get() {
            b.forget(peer);
        }
        if let Some(s) = lock(&self.inner.serving).remove(&peer) {
            for w in s.watches.into_values() {
                w.abort();
            }
        }
        let failed: Vec<Pending> = {
            let mut p = lock(&self.inner.pending);
            let ids: Vec<u64> = p
                .iter()
                .filter(|(_, (pp, _))| *pp == peer)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| p.remove(&id).map(|(_, tx)| tx))
                .collect()
        };
        for p in failed {
            p.deliver(Err(WireError::NodeDown(peer.to_string())));
        }
        let gone: Vec<Arc<ExitSignal>> = {
            let mut w = lock(&self.inner.watched);
            let keys: Vec<(PeerId, String)> =
                w.keys().filter(|(p, _)| *p == peer).cloned().collect();
            keys.into_iter().filter_map(|k| w.remove(&k)).collect()
        };
        for s in gone {
            s.set(ExitReason::NodeDown(peer.to_string()));
        }
    }

    /// The exit signal of the actor `name` on `peer`: set when it exits or
    /// its node goes down. The first call asks the node to report the exit.
    fn watch(&self, peer: PeerId, name: &str) -> Arc<ExitSignal> {
        let node = self.node_signal(peer);
        let key = (peer, name.to_owned());
        let (signal, fresh) = {
            let mut w = lock(&self.inner.watched);
            match w.get(&key) {
                Some(s) => (Arc::clone(s), false),
                None => {
                    let s = Arc::new(ExitSignal::new());
                    w.insert(key, Arc::clone(&s));
                    (s, true)
                }
            }
        };
        if let Some(r) = node.reason() {
            signal.set(r);
        } else if fresh {
            if let Err(e) = self.send(
                peer,
                &Frame::Watch {
                    to: name.to_owned(),
                },
            ) {
                signal.set(match e {
                    WireError::NodeDown(n) => ExitReason::NodeDown(n),
                    other => ExitReason::Failed(format!("cannot watch: {other}")),
                });
            }
        }
        signal
    }

    /// Asks `peer` to spawn `kind` registered as `name`; returns the
    /// message type of the new actor. With `message` set, `peer` refuses a
    /// kind whose actors take another type before starting anything.
    pub async fn spawn_remote(
        &self,
        peer: PeerId,
        kind: &str,
        args: &manta_actors::ArgsValue,
        name: &str,
        message: Option<&str>,
        timeout: Duration,
    ) -> Result<String, WireError> {
        let args_json = serde_json::to_string(args)
            .map_err(|e| WireError::Encode(CodecError::new("spawn arguments (JSON)", e)))?;
        let (tx, rx) = oneshot::channel::<Result<Box<dyn WireBytes>, WireError>>();
        let id = self.register(peer, Box::new(tx));
        let frame = Frame::Spawn {
            id,
            kind: kind.to_owned(),
            args_json,
            name: name.to_owned(),
            message: message.unwrap_or_default().to_owned(),
        };
        if let Err(e) = self.send(peer, &frame) {
            lock(&self.inner.pending).remove(&id);
            return Err(e);
        }
        let outcome = tokio::time::timeout(timeout, rx).await;
        lock(&self.inner.pending).remove(&id);
        match outcome {
            Err(_) => Err(WireError::Timeout(timeout.as_millis() as u64)),
            Ok(Err(_)) => Err(WireError::NodeDown(peer.to_string())),
            Ok(Ok(Ok(ty))) => {
                let ty = std::str::from_utf8(ty.bytes())
                    .map_err(|e| WireError::Decode(CodecError::new("message type name", e)))?;
                // Learnt once, kept for good: bounded in size and number.
                intern(ty).map(str::to_owned).ok_or_else(|| {
                    WireError::Decode(CodecError::new(
                        "message type name",
                        format!(
                            "{} bytes, or one name too many (at most {} bytes, {} names)",
                            ty.len(),
                            handles::MAX_TYPE_NAME,
                            handles::MAX_TYPE_NAMES
                        ),
                    ))
                })
            }
            Ok(Ok(Err(e))) => Err(e),
        }
    }

    /// An erased handle to the actor `name` on `peer`, which takes messages
    /// of type `ty` (a type name learnt at run time, as
    /// [`spawn_remote`](Self::spawn_remote) returns it); an error for a
    /// name too long, or one past the names a node keeps.
    pub fn erased_handle(
        &self,
        peer: PeerId,
        name: &str,
        ty: &str,
    ) -> Result<manta_actors::AnyHandle, WireError> {
        let ty = intern(ty).ok_or_else(|| {
            WireError::Decode(CodecError::new(
                "message type name",
                "too long, or one name too many",
            ))
        })?;
        Ok(manta_actors::AnyHandle::new(Arc::new(RemoteAny {
            addr: self.addr(peer, name),
            ty,
        })))
    }

    /// A handle to the actor registered as `name` on `peer`.
    pub fn handle<M: RemoteMessage>(&self, peer: PeerId, name: &str) -> ActorHandle<M> {
        ActorHandle::remote(Arc::new(RemoteRef::<M> {
            addr: self.addr(peer, name),
            replies: Arc::new(PeerReplies {
                remoting: self.clone(),
                peer,
            }),
            _m: PhantomData,
        }))
    }
}
