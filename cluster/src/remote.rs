//! Remote actors: long-lived libp2p streams per peer carrying
//! length-prefixed postcard frames (`u32` big-endian length, a version byte,
//! then the frame), a bounded send queue per peer (a full queue is
//! backpressure, never unbounded memory), small frames batched into one
//! flush under load, and [`RemoteRef`], the [`RemoteActor`] that lets an
//! [`ActorHandle`] address an actor on another node.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use manta_actors::wire::{EncodeWire, PendingReply, ReplyRegistry, ReplyRoute, WireBytes};
use manta_actors::{
    ActorHandle, ActorId, ActorSystem, CodecError, ExitReason, ExitSignal, Message, Monitor,
    RemoteActor, SendError, SendFailure, SpawnError, WireError, message_type_name,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// The stream protocol of actor traffic.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/manta/actors/1");
/// Frame format version.
pub const FRAME_VERSION: u8 = 2;
/// Largest frame accepted (bigger ones close the stream).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;
/// Frames queued per peer before senders see backpressure.
pub const PEER_QUEUE: usize = 4096;
/// Messages whose encoding exceeds this are cut into chunks of this size and
/// sent on a separate lane, so they never stall small messages.
pub const CHUNK: usize = 64 * 1024;
/// Chunks queued per peer (64 MiB) before senders see backpressure.
pub const BULK_QUEUE: usize = MAX_FRAME / CHUNK;
/// Largest frame on the wire: a chunk with its header.
const MAX_WIRE_FRAME: usize = CHUNK + 256;
/// Large messages being reassembled per stream at once.
const MAX_PARTIAL: usize = 16;
/// The most reserved ahead for one large message being reassembled.
const RESERVE_LIMIT: usize = 16 * 1024 * 1024;
/// Reassembly buffers a node keeps for the next large messages (each up to
/// a whole frame): at most this many, whatever the number of peers.
const KEPT_BUFFERS: usize = 2;
/// The pending-reply table is swept of abandoned entries each time it
/// doubles past the size left by the last sweep, from this size on.
const SWEEP_MIN: u64 = 1024;

/// The bytes of a successful reply (encoded as one byte string).
#[derive(Debug, Serialize, Deserialize)]
#[serde(transparent)]
struct ReplyBody<'a>(#[serde(with = "serde_bytes", borrow)] Cow<'a, [u8]>);

/// A reply's bytes as the waiting ask gets them: `buf[range]`. A large
/// reply arrives as its whole reassembly buffer (no copy of its bytes into
/// a fresh vector), which the ask hands back for the next large message
/// once it has decoded the reply.
struct ReplyBytes {
    buf: Vec<u8>,
    range: std::ops::Range<usize>,
    /// Where the buffer goes back once the reply is decoded (large replies).
    pool: Option<Arc<Mutex<Vec<Vec<u8>>>>>,
}

impl ReplyBytes {
    fn owned(buf: Vec<u8>) -> Self {
        let range = 0..buf.len();
        ReplyBytes {
            buf,
            range,
            pool: None,
        }
    }
}

impl WireBytes for ReplyBytes {
    fn bytes(&self) -> &[u8] {
        // `range` lies within `buf` by construction (see `read_loop`).
        self.buf.get(self.range.clone()).unwrap_or_default()
    }
}

impl Drop for ReplyBytes {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            keep_in(pool, std::mem::take(&mut self.buf));
        }
    }
}

/// Keeps a large message's buffer for the next one (at most
/// [`KEPT_BUFFERS`]; small or oversized buffers are dropped).
fn keep_in(pool: &Mutex<Vec<Vec<u8>>>, mut buf: Vec<u8>) {
    if buf.capacity() <= CHUNK || buf.capacity() > MAX_FRAME + CHUNK {
        return;
    }
    let mut kept = lock(pool);
    if kept.len() < KEPT_BUFFERS {
        buf.clear();
        kept.push(buf);
    }
}

/// What travels on an actor stream. Tells and asks borrow their target,
/// type and body: from the sender's handle when encoding, from the receive
/// buffer when decoding (no copy of a large body on either side).
#[derive(Debug, Serialize, Deserialize)]
enum Frame<'a> {
    Tell {
        #[serde(borrow)]
        to: Cow<'a, str>,
        #[serde(borrow)]
        ty: Cow<'a, str>,
        #[serde(with = "serde_bytes", borrow)]
        body: Cow<'a, [u8]>,
    },
    /// A tell whose message carries reply handles: `replies` are their
    /// ids, so that a request the receiver refuses (no such actor, another
    /// type, undecodable) is answered at once.
    Request {
        replies: Vec<u64>,
        #[serde(borrow)]
        to: Cow<'a, str>,
        #[serde(borrow)]
        ty: Cow<'a, str>,
        #[serde(with = "serde_bytes", borrow)]
        body: Cow<'a, [u8]>,
    },
    Reply {
        id: u64,
        /// Bytes, not a sequence: a large reply is not encoded and decoded
        /// one element at a time (the wire format is the same). Decoding
        /// borrows them from the receive buffer.
        #[serde(borrow)]
        result: Result<ReplyBody<'a>, WireError>,
    },
    Stop {
        to: String,
        reason: ExitReason,
    },
    Kill {
        to: String,
    },
    /// Tell me when `to` exits.
    Watch {
        to: String,
    },
    /// `to` exited (answer to `Watch`; at once if it is not there).
    Exited {
        to: String,
        reason: ExitReason,
    },
    /// Spawn `kind` with `args` (JSON of a TOML value) registered as `name`;
    /// answered by a `Reply` carrying the actor's message type.
    Spawn {
        id: u64,
        kind: String,
        args_json: String,
        name: String,
        /// The message type the spawner expects the kind's actors to take
        /// (empty: any); a kind of another type is refused before it starts.
        message: String,
    },
    /// A piece of a large frame (the postcard encoding of a whole `Frame`,
    /// cut into [`CHUNK`]-byte pieces sent in order on the bulk lane).
    Chunk {
        msg: u64,
        index: u32,
        count: u32,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
}

enum Encoded {
    Small(Vec<u8>),
    Chunks(Vec<Vec<u8>>),
}

/// Postcard's index of [`Frame::Chunk`] (its first byte on the wire, after
/// the version). Chunks are written and read through [`ChunkRef`], without
/// copying the piece into a `Frame` first; a unit test checks that both
/// encodings agree.
const CHUNK_VARIANT: u8 = 8;

/// The fields of [`Frame::Chunk`], borrowing the piece.
#[derive(Debug, Serialize, Deserialize)]
struct ChunkRef<'a> {
    msg: u64,
    index: u32,
    count: u32,
    #[serde(with = "serde_bytes", borrow)]
    data: &'a [u8],
}

/// One chunk on the wire: length, version, variant, fields (what
/// [`Chunker`] writes, built from a whole piece; for tests).
#[cfg(test)]
fn wire_chunk(c: &ChunkRef<'_>) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(4 + 2 + 24 + c.data.len());
    out.extend_from_slice(&[0, 0, 0, 0, FRAME_VERSION, CHUNK_VARIANT]);
    let mut out = postcard::to_extend(c, out).map_err(encode_error)?;
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// A tell or ask as its sender writes it. It encodes exactly as the
/// matching [`Frame`] variant (same variant index, same fields in the same
/// order; a unit test checks), but the body can be an [`Inline`] message
/// instead of a buffer holding its encoding.
#[derive(Serialize)]
enum Outgoing<'a, B> {
    Tell {
        to: &'a str,
        ty: &'a str,
        body: B,
    },
    Request {
        replies: &'a [u64],
        to: &'a str,
        ty: &'a str,
        body: B,
    },
}

impl<M: Serialize> Outgoing<'_, Inline<'_, M>> {
    fn target(&self) -> &str {
        match self {
            Outgoing::Tell { to, .. } | Outgoing::Request { to, .. } => to,
        }
    }

    /// Encodes the frame. Its size comes from the message's size already
    /// measured, not from another pass over the message.
    fn encode(&self) -> Result<Encoded, WireError> {
        let (head, len) = match self {
            Outgoing::Tell { to, ty, body } => (Outgoing::Tell { to, ty, body: () }, body.len),
            Outgoing::Request {
                replies,
                to,
                ty,
                body,
            } => (
                Outgoing::Request {
                    replies,
                    to,
                    ty,
                    body: (),
                },
                body.len,
            ),
        };
        // A unit body takes no bytes; the real one is its length's varint
        // and its encoding.
        let head = postcard::experimental::serialized_size(&head).map_err(encode_error)?;
        let prefix =
            postcard::experimental::serialized_size(&(len as u64)).map_err(encode_error)?;
        encode_sized(self, head + prefix + len)
    }
}

/// A message written where a byte string holding its postcard encoding
/// would be: the length as a varint (a `u64` and a byte string's length
/// are both LEB128 varints in postcard), then the encoding itself. The
/// receiver decodes the byte string as usual; the sender never builds it.
struct Inline<'a, M> {
    msg: &'a M,
    len: usize,
}

impl<'a, M: Serialize> Inline<'a, M> {
    fn new(msg: &'a M) -> Result<Self, postcard::Error> {
        Ok(Inline {
            len: postcard::experimental::serialized_size(msg)?,
            msg,
        })
    }
}

impl<M: Serialize> Serialize for Inline<'_, M> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&(self.len as u64))?;
        t.serialize_element(self.msg)?;
        t.end()
    }
}

/// A postcard output that cuts the encoding of one large frame into wire
/// chunks as it is written, so a large message is never held whole on
/// the way out: each byte is written once, into a chunk-sized buffer the
/// allocator can reuse (a fresh buffer of the whole message costs a page
/// fault per 4 KiB, which on the bench machine was slower than sending).
struct Chunker {
    msg: u64,
    count: u32,
    /// Frame bytes not yet given a chunk.
    left: usize,
    /// Bytes the current chunk still takes.
    room: usize,
    cur: Vec<u8>,
    done: Vec<Vec<u8>>,
}

impl Chunker {
    fn new(msg: u64, size: usize) -> postcard::Result<Self> {
        let mut c = Chunker {
            msg,
            count: size.div_ceil(CHUNK) as u32,
            left: size,
            room: 0,
            cur: Vec::new(),
            done: Vec::with_capacity(size.div_ceil(CHUNK)),
        };
        c.start()?;
        Ok(c)
    }

    /// Opens the next chunk: length (filled in when full), version,
    /// variant, then [`ChunkRef`]'s fields up to its piece's length.
    fn start(&mut self) -> postcard::Result<()> {
        let data = self.left.min(CHUNK);
        let mut head = Vec::with_capacity(6 + 24 + data);
        head.extend_from_slice(&[0, 0, 0, 0, FRAME_VERSION, CHUNK_VARIANT]);
        let index = self.done.len() as u32;
        self.cur = postcard::to_extend(&(self.msg, index, self.count, data as u64), head)?;
        self.room = data;
        self.left -= data;
        Ok(())
    }
}

impl postcard::ser_flavors::Flavor for Chunker {
    type Output = Vec<Vec<u8>>;

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.try_extend(&[data])
    }

    fn try_extend(&mut self, mut data: &[u8]) -> postcard::Result<()> {
        while !data.is_empty() {
            if self.room == 0 {
                // More bytes than the size pass counted.
                return Err(postcard::Error::SerializeBufferFull);
            }
            let n = self.room.min(data.len());
            self.cur.extend_from_slice(&data[..n]);
            self.room -= n;
            data = &data[n..];
            if self.room == 0 {
                let mut full = std::mem::take(&mut self.cur);
                let len = (full.len() - 4) as u32;
                full[..4].copy_from_slice(&len.to_be_bytes());
                self.done.push(full);
                if self.left > 0 {
                    self.start()?;
                }
            }
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Vec<Vec<u8>>> {
        if self.room != 0 || self.left != 0 {
            // Fewer bytes than the size pass counted.
            return Err(postcard::Error::SerializeBufferFull);
        }
        Ok(self.done)
    }
}

/// Where a frame's bytes go as they are encoded, once its size is known:
/// one small frame, or the chunks of a large one.
enum FrameSink {
    Small { out: Vec<u8>, size: usize },
    Chunks(Chunker),
}

impl FrameSink {
    fn new(size: usize) -> Result<Self, WireError> {
        if size > MAX_FRAME {
            return Err(WireError::TooLarge {
                size,
                limit: MAX_FRAME,
            });
        }
        if size > CHUNK {
            return Chunker::new(rand::random(), size)
                .map(FrameSink::Chunks)
                .map_err(encode_error);
        }
        // Length (filled in at the end) and version, then the frame, in a
        // buffer of exactly its size.
        let mut out = Vec::with_capacity(5 + size);
        out.extend_from_slice(&[0, 0, 0, 0, FRAME_VERSION]);
        Ok(FrameSink::Small { out, size })
    }
}

impl postcard::ser_flavors::Flavor for FrameSink {
    type Output = Encoded;

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.try_extend(&[data])
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        match self {
            FrameSink::Small { out, size } => {
                if out.len() + data.len() > 5 + *size {
                    return Err(postcard::Error::SerializeBufferFull);
                }
                out.extend_from_slice(data);
                Ok(())
            }
            FrameSink::Chunks(c) => c.try_extend(data),
        }
    }

    fn finalize(self) -> postcard::Result<Encoded> {
        match self {
            FrameSink::Small { mut out, size } => {
                if out.len() != 5 + size {
                    return Err(postcard::Error::SerializeBufferFull);
                }
                let len = (out.len() - 4) as u32;
                out[..4].copy_from_slice(&len.to_be_bytes());
                Ok(Encoded::Small(out))
            }
            FrameSink::Chunks(c) => c.finalize().map(Encoded::Chunks),
        }
    }
}

/// The error of a frame whose encoding was not the size measured for it
/// (or that postcard could not encode).
fn encode_error(e: postcard::Error) -> WireError {
    match e {
        postcard::Error::SerializeBufferFull => WireError::Encode(CodecError::new(
            "frame",
            "the message encoded to another size than measured",
        )),
        other => WireError::Encode(CodecError::new("frame", other)),
    }
}

/// Encodes the successful reply `id` from the reply itself, as
/// `Frame::reply(id, Ok(its encoding))` would be (a unit test checks), but
/// without a buffer of the whole encoding first.
fn encode_reply_value(id: u64, v: &dyn EncodeWire) -> Result<Encoded, WireError> {
    use postcard::ser_flavors::Flavor;
    let len = v.encoded_len()?;
    // The frame up to the reply's bytes: that of an empty reply, less its
    // one-byte length (0), plus the real length (at most 13 + 10 bytes).
    let mut buf = [0u8; 40];
    let n = postcard::to_slice(&Frame::reply(id, Ok(Vec::new())), &mut buf)
        .map_err(encode_error)?
        .len()
        - 1;
    let m = postcard::to_slice(&(len as u64), &mut buf[n..])
        .map_err(encode_error)?
        .len();
    let head = &buf[..n + m];
    let mut sink = FrameSink::new(head.len() + len)?;
    sink.try_extend(head).map_err(encode_error)?;
    v.encode_to(&mut |piece| sink.try_extend(piece).map_err(encode_error))?;
    sink.finalize().map_err(encode_error)
}

/// Encodes a frame for the wire: one small frame, or the chunks of a large
/// one, written straight into their buffers.
fn encode<F: Serialize + ?Sized>(frame: &F) -> Result<Encoded, WireError> {
    let size = postcard::experimental::serialized_size(frame).map_err(encode_error)?;
    encode_sized(frame, size)
}

/// [`encode`] of a frame whose encoding takes `size` bytes (if it takes
/// more or fewer, that is an error, not a bad frame).
fn encode_sized<F: Serialize + ?Sized>(frame: &F, size: usize) -> Result<Encoded, WireError> {
    postcard::serialize_with_flavor(frame, FrameSink::new(size)?).map_err(encode_error)
}

type Pending = Box<dyn PendingReply>;

struct Link {
    tx: mpsc::Sender<Vec<u8>>,
    bulk: mpsc::Sender<(Vec<u8>, Option<String>)>,
    /// Large messages per target actor still in the bulk lane: while one is,
    /// small messages to the same actor follow it there, so messages from
    /// this node to one actor keep their order.
    inflight: Arc<Mutex<HashMap<String, usize>>>,
    /// Which writer serves this link (a writer that ends removes only its
    /// own link, never one that replaced it).
    writer_id: u64,
}

impl Frame<'_> {
    fn reply(id: u64, result: Result<Vec<u8>, WireError>) -> Self {
        Frame::Reply {
            id,
            result: result.map(|v| ReplyBody(Cow::Owned(v))),
        }
    }

    /// The actor a frame is for, where ordering matters.
    fn target(&self) -> Option<&str> {
        match self {
            Frame::Tell { to, .. } | Frame::Request { to, .. } => Some(to),
            Frame::Stop { to, .. } | Frame::Kill { to } | Frame::Watch { to } => Some(to),
            _ => None,
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
    /// Actor streams that broke and were replaced by a fresh one.
    reopened: AtomicU64,
    /// Writes to fail on purpose (tests of the reopen path), and how many
    /// to let through first.
    failing_writes: AtomicU64,
    passing_writes: AtomicU64,
    /// Reassembly buffers of large messages already handled, for the next
    /// ones: a fresh buffer costs a page fault per 4 KiB on the core that
    /// also decrypts the stream (on the bench machine, about 1 ms per MiB).
    kept: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Pending replies at which closed ones are next swept out.
    sweep_at: AtomicU64,
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
    /// Starts accepting actor streams for `system`.
    pub fn start(system: ActorSystem, mut control: libp2p_stream::Control) -> Remoting {
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
                reopened: AtomicU64::new(0),
                failing_writes: AtomicU64::new(0),
                passing_writes: AtomicU64::new(0),
                kept: Arc::new(Mutex::new(Vec::new())),
                sweep_at: AtomicU64::new(SWEEP_MIN),
            }),
        };
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

    /// Frames received that were malformed (the stream was closed).
    pub fn bad_frames(&self) -> u64 {
        self.inner.bad_frames.load(Ordering::Relaxed)
    }

    /// Outgoing actor streams that broke while their peer was still a
    /// member and were replaced by a fresh stream (the write that failed
    /// was sent again on it).
    pub fn reopened_streams(&self) -> u64 {
        self.inner.reopened.load(Ordering::Relaxed)
    }

    /// Lets the next `skip` writes to actor streams through, then makes `n`
    /// fail as if the connection had closed under them: fault injection for
    /// tests of the reopen path. Feature `testing` only.
    #[cfg(feature = "testing")]
    pub fn fail_writes(&self, skip: u64, n: u64) {
        self.inner.passing_writes.store(skip, Ordering::Relaxed);
        self.inner.failing_writes.store(n, Ordering::Relaxed);
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

    /// Queues an encoded frame for `peer`, starting its writer if needed.
    fn send(&self, peer: PeerId, frame: &Frame<'_>) -> Result<(), WireError> {
        self.send_as(peer, frame.target(), || encode(frame))
    }

    /// Queues a frame for `peer`, encoded by `encoded` once the peer is
    /// known to be up; `target` is the actor it is for, where ordering
    /// matters.
    fn send_as(
        &self,
        peer: PeerId,
        target: Option<&str>,
        encoded: impl FnOnce() -> Result<Encoded, WireError>,
    ) -> Result<(), WireError> {
        if let Some(r) = self.node_signal(peer).reason() {
            return Err(match r {
                ExitReason::NodeDown(n) => WireError::NodeDown(n),
                other => WireError::ActorGone(Some(other)),
            });
        }
        let encoded = encoded()?;
        // The links lock is held while queueing: the chunks of one message
        // are queued together, never interleaved with another's.
        let mut links = lock(&self.inner.links);
        let link = match links.entry(peer) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                // Starting a writer needs the runtime; a send from a plain
                // thread (or a reply port dropped there) before any writer
                // exists gets an error instead of a panic.
                let rt = tokio::runtime::Handle::try_current().map_err(|_| {
                    WireError::NodeDown(format!("{peer} (no runtime to dial from)"))
                })?;
                let (tx, rx) = mpsc::channel(PEER_QUEUE);
                let (bulk, bulk_rx) = mpsc::channel(BULK_QUEUE);
                let inflight = Arc::new(Mutex::new(HashMap::new()));
                let control = lock(&self.inner.control).clone();
                let writer_id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
                let writer = self.clone();
                rt.spawn(writer.write_loop(
                    peer,
                    control,
                    rx,
                    bulk_rx,
                    Arc::clone(&inflight),
                    writer_id,
                ));
                v.insert(Link {
                    tx,
                    bulk,
                    inflight,
                    writer_id,
                })
            }
        };
        let target = target.map(str::to_owned);
        let behind_large = target
            .as_ref()
            .is_some_and(|t| lock(&link.inflight).get(t).copied().unwrap_or(0) > 0);
        let result = match encoded {
            Encoded::Small(bytes) if behind_large => match link.bulk.try_send((bytes, None)) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => Err(WireError::Backpressure),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    Err(WireError::NodeDown(peer.to_string()))
                }
            },
            Encoded::Small(bytes) => match link.tx.try_send(bytes) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => Err(WireError::Backpressure),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    Err(WireError::NodeDown(peer.to_string()))
                }
            },
            Encoded::Chunks(chunks) => {
                if link.bulk.is_closed() {
                    Err(WireError::NodeDown(peer.to_string()))
                } else if link.bulk.capacity() < chunks.len() {
                    Err(WireError::Backpressure)
                } else {
                    if let Some(t) = &target {
                        *lock(&link.inflight).entry(t.clone()).or_insert(0) += 1;
                    }
                    let last = chunks.len() - 1;
                    // Capacity was checked under the lock: these succeed.
                    chunks
                        .into_iter()
                        .enumerate()
                        .try_for_each(|(i, c)| {
                            let done = if i == last { target.clone() } else { None };
                            link.bulk.try_send((c, done))
                        })
                        .map_err(|_| WireError::Backpressure)
                }
            }
        };
        if matches!(result, Err(WireError::NodeDown(_))) {
            links.remove(&peer);
        }
        result
    }

    async fn write_loop(
        self,
        peer: PeerId,
        mut control: libp2p_stream::Control,
        mut rx: mpsc::Receiver<Vec<u8>>,
        mut bulk: mpsc::Receiver<(Vec<u8>, Option<String>)>,
        inflight: Arc<Mutex<HashMap<String, usize>>>,
        writer_id: u64,
    ) {
        let mut stream = match control.open_stream(peer, PROTOCOL).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(target: "manta::remote", %peer, error = %e, "cannot open actor stream");
                self.remove_link(peer, writer_id);
                return;
            }
        };
        let mut batch = Vec::with_capacity(64 * 1024);
        loop {
            // Small frames first; one chunk of a large message in between.
            let (first, done) = tokio::select! {
                biased;
                f = rx.recv() => match f {
                    Some(f) => (f, None),
                    None => break,
                },
                c = bulk.recv() => match c {
                    Some(c) => c,
                    None => break,
                },
            };
            // A chunk goes out as it is; small frames queued under load are
            // batched into one write, up to 256 KiB.
            let out: &[u8] = if first.len() >= CHUNK / 2 {
                &first
            } else {
                batch.clear();
                batch.extend_from_slice(&first);
                while batch.len() < 256 * 1024 {
                    match rx.try_recv() {
                        Ok(more) => batch.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
                &batch
            };
            if let Err(e) = self.write_out(&mut stream, out).await {
                // A connection can close under a stream while the peer stays
                // a member (it has another one, or a new one is dialled):
                // what failed goes out again once, on a fresh stream, rather
                // than leaving an ask to hang until its timeout.
                tracing::warn!(target: "manta::remote", %peer, error = %e, "actor stream broken; opening a new one");
                let retried = match control.open_stream(peer, PROTOCOL).await {
                    Ok(fresh) => {
                        stream = fresh;
                        self.write_out(&mut stream, out).await
                    }
                    Err(e) => Err(std::io::Error::other(e)),
                };
                if let Err(e) = retried {
                    tracing::warn!(target: "manta::remote", %peer, error = %e, "actor stream lost");
                    break;
                }
                self.inner.reopened.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(t) = done {
                let mut f = lock(&inflight);
                if let Some(n) = f.get_mut(&t) {
                    *n -= 1;
                    if *n == 0 {
                        f.remove(&t);
                    }
                }
            }
        }
        self.remove_link(peer, writer_id);
    }

    /// Removes `peer`'s link if writer `writer_id` still serves it.
    fn remove_link(&self, peer: PeerId, writer_id: u64) {
        let mut links = lock(&self.inner.links);
        if links.get(&peer).is_some_and(|l| l.writer_id == writer_id) {
            links.remove(&peer);
        }
    }

    async fn write_out(&self, stream: &mut libp2p::Stream, out: &[u8]) -> std::io::Result<()> {
        let dec = |n: u64| n.checked_sub(1);
        let inner = &self.inner;
        if inner.failing_writes.load(Ordering::Relaxed) > 0
            && inner
                .passing_writes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, dec)
                .is_err()
            && inner
                .failing_writes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, dec)
                .is_ok()
        {
            return Err(std::io::Error::other("injected write failure"));
        }
        stream.write_all(out).await?;
        stream.flush().await
    }

    async fn read_loop(self, peer: PeerId, mut stream: libp2p::Stream) {
        let mut len_buf = [0u8; 4];
        // One receive buffer, reused (frames are at most MAX_WIRE_FRAME).
        let mut buf = Vec::new();
        // Large messages being reassembled: msg -> (count, next index, bytes).
        let mut partial: HashMap<u64, (u32, u32, Vec<u8>)> = HashMap::new();
        loop {
            if stream.read_exact(&mut len_buf).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes(len_buf) as usize;
            if len == 0 || len > MAX_WIRE_FRAME {
                self.bad(peer, &format!("frame length {len}"));
                return;
            }
            buf.resize(len, 0);
            if stream.read_exact(&mut buf).await.is_err() {
                return;
            }
            if buf[0] != FRAME_VERSION {
                self.bad(peer, &format!("frame version {}", buf[0]));
                return;
            }
            if buf.get(1) == Some(&CHUNK_VARIANT) {
                let Ok(c) = postcard::from_bytes::<ChunkRef<'_>>(&buf[2..]) else {
                    self.bad(peer, "undecodable chunk");
                    return;
                };
                if c.index != 0 && !partial.contains_key(&c.msg) {
                    // The rest of a message whose first chunks went out on
                    // a stream that broke (the sender reopened and sent the
                    // failed chunk again here): it cannot be completed.
                    tracing::debug!(target: "manta::remote", %peer, msg = c.msg, index = c.index, "dropping the tail of a message cut by a broken stream");
                    continue;
                }
                if !partial.contains_key(&c.msg) && partial.len() >= MAX_PARTIAL {
                    self.bad(peer, "too many large messages in flight");
                    return;
                }
                if c.count as usize > MAX_FRAME.div_ceil(CHUNK) {
                    self.bad(peer, "message too large");
                    return;
                }
                let entry = partial.entry(c.msg).or_insert_with(|| {
                    // Reserved up front, but never more than RESERVE_LIMIT
                    // per message on a peer's word; beyond it the buffer
                    // grows as data actually arrives.
                    let want = (c.count as usize).saturating_mul(CHUNK);
                    let mut whole = lock(&self.inner.kept).pop().unwrap_or_default();
                    whole.reserve(want.min(RESERVE_LIMIT));
                    (c.count, 0, whole)
                });
                if entry.0 != c.count
                    || entry.1 != c.index
                    || entry.2.len() + c.data.len() > MAX_FRAME
                {
                    self.bad(peer, "chunk out of sequence or message too large");
                    return;
                }
                entry.1 += 1;
                entry.2.extend_from_slice(c.data);
                if entry.1 == c.count {
                    let Some((_, _, whole)) = partial.remove(&c.msg) else {
                        return;
                    };
                    let reply = match postcard::from_bytes::<Frame>(&whole) {
                        Ok(Frame::Chunk { .. }) | Err(_) => {
                            self.bad(peer, "undecodable large message");
                            return;
                        }
                        // A large reply's bytes stay where they are: the
                        // buffer goes to the waiting ask.
                        Ok(Frame::Reply {
                            id,
                            result: Ok(ReplyBody(Cow::Borrowed(body))),
                        }) => {
                            let start =
                                (body.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
                            Some((id, start..start + body.len()))
                        }
                        // Dispatch decodes the message out of the buffer.
                        Ok(frame) => {
                            self.dispatch(peer, frame);
                            None
                        }
                    };
                    if let Some((id, range)) = reply {
                        // The asker hands the buffer back once it has decoded
                        // the reply (or at once, if it gave up).
                        let bytes = ReplyBytes {
                            buf: whole,
                            range,
                            pool: Some(Arc::clone(&self.inner.kept)),
                        };
                        self.answer(peer, id, Ok(Box::new(bytes)));
                    } else {
                        self.keep(whole);
                    }
                }
                continue;
            }
            // (Chunks were handled above: every one starts with CHUNK_VARIANT.)
            match postcard::from_bytes::<Frame>(&buf[1..]) {
                Ok(frame) => self.dispatch(peer, frame),
                Err(e) => {
                    self.bad(peer, &format!("undecodable frame: {e}"));
                    return;
                }
            }
        }
    }

    /// Keeps a large message's buffer for the next one (at most
    /// [`KEPT_BUFFERS`]; small or oversized buffers are dropped).
    /// The route back to `peer` for the reply handles of its requests.
    fn route(&self, peer: PeerId) -> Arc<dyn ReplyRoute> {
        Arc::new(PeerRoute {
            remoting: self.clone(),
            peer,
        })
    }

    fn keep(&self, buf: Vec<u8>) {
        keep_in(&self.inner.kept, buf);
    }

    /// Keeps `pending` for an answer from `peer`; returns its id. Entries
    /// whose asker gave up are swept out as the table grows, so a peer that
    /// never answers cannot grow it without bound.
    fn register(&self, peer: PeerId, pending: Pending) -> u64 {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut p = lock(&self.inner.pending);
        p.insert(id, (peer, pending));
        if p.len() as u64 >= self.inner.sweep_at.load(Ordering::Relaxed) {
            p.retain(|_, (_, w)| !w.is_closed());
            let next = (2 * p.len() as u64).max(SWEEP_MIN);
            self.inner.sweep_at.store(next, Ordering::Relaxed);
        }
        id
    }

    /// Delivers the answer to request `id` — only if `peer` is the node the
    /// request went to: another member cannot answer or fail it.
    fn answer(&self, peer: PeerId, id: u64, answer: Result<Box<dyn WireBytes>, WireError>) {
        let waiting = {
            let mut p = lock(&self.inner.pending);
            match p.get(&id) {
                Some((to, _)) if *to == peer => p.remove(&id),
                Some(_) => {
                    drop(p);
                    self.inner.forged_replies.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(target: "manta::remote", %peer, id, "reply from a node the request did not go to; dropped");
                    None
                }
                None => None,
            }
        };
        if let Some((_, w)) = waiting {
            w.deliver(answer);
        }
    }

    fn bad(&self, peer: PeerId, what: &str) {
        let n = self.inner.bad_frames.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(target: "manta::remote", %peer, total = n, "{what}; closing the stream");
    }

    fn target(&self, to: &str, ty: &str) -> Result<manta_actors::AnyHandle, WireError> {
        let h = self
            .inner
            .system
            .lookup_any(to)
            .ok_or_else(|| WireError::NotFound(to.to_owned()))?;
        if h.message_type() != ty {
            return Err(WireError::WrongType {
                expected: ty.to_owned(),
                actual: h.message_type().to_owned(),
            });
        }
        Ok(h)
    }

    fn dispatch(&self, peer: PeerId, frame: Frame<'_>) {
        match frame {
            Frame::Tell { to, ty, body } => {
                let route = self.route(peer);
                if let Err(e) = self
                    .target(&to, &ty)
                    .and_then(|h| h.tell_wire(&body, &route))
                {
                    tracing::debug!(target: "manta::remote", %peer, %to, error = %e, "remote tell dropped");
                }
            }
            Frame::Request {
                replies,
                to,
                ty,
                body,
            } => {
                let route = self.route(peer);
                let refused = match self.target(&to, &ty) {
                    Err(e) => Some(e),
                    // Once the message decoded, its reply handles answer
                    // for themselves (also when the actor is gone).
                    Ok(h) => match h.tell_wire(&body, &route) {
                        Err(e @ WireError::Decode(_)) => Some(e),
                        _ => None,
                    },
                };
                if let Some(e) = refused {
                    tracing::debug!(target: "manta::remote", %peer, %to, error = %e, "remote request refused");
                    for id in replies {
                        route.reply(id, Err(e.clone()));
                    }
                }
            }
            Frame::Chunk { .. } => {}
            Frame::Reply { id, result } => {
                self.answer(
                    peer,
                    id,
                    result.map(|b| {
                        Box::new(ReplyBytes::owned(b.0.into_owned())) as Box<dyn WireBytes>
                    }),
                );
            }
            Frame::Stop { to, reason } => {
                if let Some(h) = self.inner.system.lookup_any(&to) {
                    h.stop(reason);
                }
            }
            Frame::Kill { to } => {
                if let Some(h) = self.inner.system.lookup_any(&to) {
                    h.kill();
                }
            }
            Frame::Spawn {
                id,
                kind,
                args_json,
                name,
                message,
            } => {
                let me = self.clone();
                tokio::spawn(async move {
                    let result = me.spawn_here(&kind, &args_json, &name, &message).await;
                    if let Err(e) = me.send(peer, &Frame::reply(id, result)) {
                        tracing::debug!(target: "manta::remote", %peer, error = %e, "spawn reply not sent");
                    }
                });
            }
            Frame::Watch { to } => {
                let me = self.clone();
                let target = self.inner.system.lookup_any(&to);
                tokio::spawn(async move {
                    let reason = match target {
                        Some(h) => h.monitor().wait().await,
                        None => ExitReason::Failed(format!("no actor named `{to}`")),
                    };
                    let _ = me.send(peer, &Frame::Exited { to, reason });
                });
            }
            Frame::Exited { to, reason } => {
                if let Some(s) = lock(&self.inner.watched).remove(&(peer, to)) {
                    s.set(reason);
                }
            }
        }
    }

    async fn spawn_here(
        &self,
        kind: &str,
        args_json: &str,
        name: &str,
        message: &str,
    ) -> Result<Vec<u8>, WireError> {
        let system = &self.inner.system;
        if let Some(actual) = system.kinds().message_type(kind) {
            if !message.is_empty() && actual != message {
                return Err(WireError::Spawn(Box::new(SpawnError::WrongMessageType {
                    kind: kind.to_owned(),
                    expected: message.to_owned(),
                    actual: actual.to_owned(),
                })));
            }
        }
        let args: toml::Value = serde_json::from_str(args_json)
            .map_err(|e| WireError::Decode(CodecError::new("spawn arguments (JSON)", e)))?;
        let h = system
            .kinds()
            .spawn(system, kind, args, Some(name.to_owned()))
            .await
            .map_err(|e| WireError::Spawn(Box::new(e)))?;
        tracing::info!(target: "manta::remote", %kind, %name, actor = %h.id(), "spawned for a remote node");
        Ok(h.message_type().as_bytes().to_vec())
    }

    /// Asks `peer` to spawn `kind` registered as `name`; returns the
    /// message type of the new actor. With `message` set, `peer` refuses a
    /// kind whose actors take another type before starting anything.
    pub async fn spawn_remote(
        &self,
        peer: PeerId,
        kind: &str,
        args: &toml::Value,
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
            Ok(Ok(Ok(ty))) => String::from_utf8(ty.bytes().to_vec())
                .map_err(|e| WireError::Decode(CodecError::new("message type name", e))),
            Ok(Ok(Err(e))) => Err(e),
        }
    }

    /// An erased handle to the actor `name` on `peer`, which takes messages
    /// of type `ty` (a type name learnt at run time).
    pub fn erased_handle(&self, peer: PeerId, name: &str, ty: &str) -> manta_actors::AnyHandle {
        manta_actors::AnyHandle::new(Arc::new(RemoteAny {
            addr: self.addr(peer, name),
            ty: intern(ty),
        }))
    }

    /// A handle to the actor registered as `name` on `peer`.
    pub fn handle<M: Message>(&self, peer: PeerId, name: &str) -> ActorHandle<M> {
        ActorHandle::remote(Arc::new(RemoteRef::<M> {
            addr: self.addr(peer, name),
            replies: Arc::new(PeerReplies {
                remoting: self.clone(),
                peer,
            }),
            _m: PhantomData,
        }))
    }

    fn addr(&self, peer: PeerId, name: &str) -> Addr {
        Addr {
            remoting: self.clone(),
            peer,
            name: name.to_owned(),
        }
    }
}

/// A named actor on another node.
pub struct RemoteRef<M> {
    addr: Addr,
    replies: Arc<dyn ReplyRegistry>,
    _m: PhantomData<fn(M)>,
}

/// Registers the reply handles of requests to one peer: only that peer may
/// answer them.
struct PeerReplies {
    remoting: Remoting,
    peer: PeerId,
}

impl ReplyRegistry for PeerReplies {
    fn register(&self, pending: Box<dyn PendingReply>) -> u64 {
        self.remoting.register(self.peer, pending)
    }
}

/// Answers requests from one peer: a reply handle decoded from its
/// messages sends through this.
struct PeerRoute {
    remoting: Remoting,
    peer: PeerId,
}

/// Replies whose encoding is larger than this are encoded straight into
/// their frames, never held whole in a buffer of their own.
const VALUE_REPLY_MIN: usize = 64 * 1024;

impl ReplyRoute for PeerRoute {
    fn reply(&self, id: u64, answer: Result<Box<dyn EncodeWire>, WireError>) {
        let (r, peer) = (&self.remoting, self.peer);
        let sent = match answer {
            Ok(v) => match v.encoded_len() {
                Ok(n) if n > VALUE_REPLY_MIN => {
                    r.send_as(peer, None, || encode_reply_value(id, &*v))
                }
                Ok(n) => {
                    let mut out = Vec::with_capacity(n);
                    let encoded = v.encode_to(&mut |piece| {
                        out.extend_from_slice(piece);
                        Ok(())
                    });
                    r.send(peer, &Frame::reply(id, encoded.map(|()| out)))
                }
                Err(e) => r.send(peer, &Frame::reply(id, Err(e))),
            },
            Err(e) => r.send(peer, &Frame::reply(id, Err(e))),
        };
        if let Err(e) = sent {
            tracing::debug!(target: "manta::remote", %peer, error = %e, "reply not sent");
        }
    }
}

fn send_failure(e: WireError) -> SendFailure {
    match e {
        WireError::NodeDown(n) => SendFailure::NodeDown(n),
        WireError::Backpressure => SendFailure::Backpressure,
        WireError::ActorGone(r) => SendFailure::ActorGone(r),
        WireError::NotFound(_) => SendFailure::ActorGone(None),
        WireError::Encode(e) => SendFailure::Encode(e),
        WireError::TooLarge { size, limit } => SendFailure::TooLarge { size, limit },
        other => SendFailure::Rejected(other),
    }
}

impl<M: Message> RemoteActor<M> for RemoteRef<M> {
    fn id(&self) -> ActorId {
        self.addr.id()
    }

    fn tell(&self, msg: M) -> Result<(), SendError<M>> {
        let addr = &self.addr;
        // The size pass registers the reply handles the message carries
        // (under this peer); the write pass writes the same ids.
        let (measured, replies) =
            manta_actors::wire::encode_with(Arc::clone(&self.replies), || Inline::new(&msg));
        let sent = measured
            .map_err(|e| WireError::Encode(CodecError::new(M::NAME, e)))
            .and_then(|body| {
                let ty = message_type_name::<M>();
                if replies.is_empty() {
                    let frame = Outgoing::Tell {
                        to: &addr.name,
                        ty,
                        body,
                    };
                    addr.remoting
                        .send_as(addr.peer, Some(frame.target()), || frame.encode())
                } else {
                    let frame = Outgoing::Request {
                        replies: &replies,
                        to: &addr.name,
                        ty,
                        body,
                    };
                    addr.remoting
                        .send_as(addr.peer, Some(frame.target()), || frame.encode())
                }
            });
        sent.map_err(|e| {
            // Nothing went out: forget the replies it would have had.
            let mut p = lock(&addr.remoting.inner.pending);
            for id in &replies {
                p.remove(id);
            }
            SendError {
                message: msg,
                failure: send_failure(e),
            }
        })
    }

    fn stop(&self, reason: ExitReason) {
        self.addr.stop(reason)
    }

    fn kill(&self) {
        self.addr.kill()
    }

    fn monitor(&self) -> Monitor {
        self.addr.monitor()
    }
}

/// Interns message type names learnt from the wire (a small, finite set) so
/// that erased handles can report them as `&'static str`.
fn intern(ty: &str) -> &'static str {
    static NAMES: std::sync::LazyLock<Mutex<std::collections::HashSet<&'static str>>> =
        std::sync::LazyLock::new(|| Mutex::new(std::collections::HashSet::new()));
    let mut names = lock(&NAMES);
    if let Some(n) = names.get(ty) {
        return n;
    }
    let leaked: &'static str = Box::leak(ty.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// A remote actor whose message type is known only by name.
struct RemoteAny {
    addr: Addr,
    ty: &'static str,
}

impl manta_actors::ErasedHandle for RemoteAny {
    fn id(&self) -> ActorId {
        self.addr.id()
    }
    fn cell(&self) -> Option<manta_actors::ractor::ActorCell> {
        None
    }
    fn message_type(&self) -> &'static str {
        self.ty
    }
    fn stop(&self, reason: ExitReason) {
        self.addr.stop(reason)
    }
    fn kill(&self) {
        self.addr.kill()
    }
    fn monitor(&self) -> Monitor {
        self.addr.monitor()
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    // No `tell_wire`: this node does not relay bytes to another one (the
    // reply ids inside belong to the node that sent them).
}

/// Where a named remote actor lives: what every remote handle shares.
struct Addr {
    remoting: Remoting,
    peer: PeerId,
    name: String,
}

impl Addr {
    fn id(&self) -> ActorId {
        ActorId::Remote {
            node: self.peer.to_string(),
            name: self.name.clone(),
        }
    }

    fn stop(&self, reason: ExitReason) {
        let to = self.name.clone();
        let _ = self.remoting.send(self.peer, &Frame::Stop { to, reason });
    }

    fn kill(&self) {
        let to = self.name.clone();
        let _ = self.remoting.send(self.peer, &Frame::Kill { to });
    }

    fn monitor(&self) -> Monitor {
        self.remoting.watch(self.peer, &self.name).monitor()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use manta_actors::wire::encode_wire;

    #[test]
    fn a_reply_carries_its_bytes_as_one_string_in_the_old_layout() {
        let bytes = postcard::to_allocvec(&Frame::reply(5, Ok(vec![9, 8, 7]))).unwrap();
        // Reply (variant 2), id 5, Ok (0), length 3, the bytes: what a
        // derived `Result<Vec<u8>, _>` wrote.
        assert_eq!(bytes, [2, 5, 0, 3, 9, 8, 7]);
        match postcard::from_bytes::<Frame>(&bytes).unwrap() {
            Frame::Reply { id: 5, result } => assert_eq!(*result.unwrap().0, [9, 8, 7]),
            other => panic!("decoded as {other:?}"),
        }
        let err = Frame::reply(6, Err(WireError::NotFound("x".into())));
        let bytes = postcard::to_allocvec(&err).unwrap();
        let back = postcard::from_bytes::<Frame>(&bytes).unwrap();
        assert!(matches!(
            back,
            Frame::Reply { id: 6, result: Err(WireError::NotFound(n)) } if n == "x"
        ));
    }

    #[test]
    fn a_decoded_request_borrows_its_target_type_and_body_from_the_buffer() {
        let body: Vec<u8> = (0..200u8).collect();
        let Encoded::Small(bytes) = encode(&Frame::Request {
            replies: vec![1, u64::MAX],
            to: Cow::Borrowed("sink"),
            ty: Cow::Borrowed("bench::Sink"),
            body: Cow::Borrowed(&body),
        })
        .unwrap() else {
            panic!("a small frame")
        };
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!((len, bytes[4]), (bytes.len() - 4, FRAME_VERSION));
        match postcard::from_bytes::<Frame>(&bytes[5..]).unwrap() {
            Frame::Request {
                replies,
                to: Cow::Borrowed("sink"),
                ty: Cow::Borrowed("bench::Sink"),
                body: Cow::Borrowed(b),
            } => {
                assert_eq!(b, &body[..]);
                assert_eq!(replies, [1, u64::MAX]);
            }
            other => panic!("decoded as {other:?} (or copied)"),
        }
    }

    #[test]
    fn a_chunk_written_through_chunk_ref_decodes_as_frame_chunk() {
        let data: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let bytes = wire_chunk(&ChunkRef {
            msg: u64::MAX - 7,
            index: 3,
            count: 200,
            data: &data,
        })
        .unwrap();
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 4, "the length prefix counts the rest");
        assert_eq!(bytes[4], FRAME_VERSION);
        match postcard::from_bytes::<Frame>(&bytes[5..]).unwrap() {
            Frame::Chunk {
                msg,
                index,
                count,
                data: d,
            } => assert_eq!((msg, index, count, d), (u64::MAX - 7, 3, 200, data.clone())),
            other => panic!("decoded as {other:?}"),
        }
        // And the other way: a Frame::Chunk reads back through ChunkRef.
        let frame = postcard::to_allocvec(&Frame::Chunk {
            msg: 9,
            index: 1,
            count: 2,
            data: data.clone(),
        })
        .unwrap();
        assert_eq!(frame[0], CHUNK_VARIANT);
        let c = postcard::from_bytes::<ChunkRef<'_>>(&frame[1..]).unwrap();
        assert_eq!((c.msg, c.index, c.count, c.data), (9, 1, 2, &data[..]));
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        #[serde(with = "serde_bytes")]
        blob: Vec<u8>,
        nums: Vec<u32>,
    }

    fn sample(blob: usize) -> Sample {
        Sample {
            name: "ünïcode".into(),
            blob: (0..blob).map(|i| (i * 7) as u8).collect(),
            nums: (0..300).map(|i| i * 1_000_003).collect(),
        }
    }

    /// The frame a typed send writes, reassembled from its chunks if large.
    fn written(e: Encoded) -> Vec<u8> {
        match e {
            Encoded::Small(b) => b[5..].to_vec(),
            Encoded::Chunks(chunks) => {
                let mut whole = Vec::new();
                for (i, c) in chunks.iter().enumerate() {
                    let len = u32::from_be_bytes(c[..4].try_into().unwrap()) as usize;
                    assert_eq!(
                        len,
                        c.len() - 4,
                        "chunk {i}: the length prefix counts the rest"
                    );
                    assert_eq!((c[4], c[5]), (FRAME_VERSION, CHUNK_VARIANT));
                    let r = postcard::from_bytes::<ChunkRef<'_>>(&c[6..]).unwrap();
                    assert_eq!((r.index, r.count), (i as u32, chunks.len() as u32));
                    assert!(r.data.len() <= CHUNK);
                    whole.extend_from_slice(r.data);
                }
                whole
            }
        }
    }

    #[test]
    fn a_typed_tell_or_request_encodes_as_the_frame_of_its_encoded_body() {
        // Small, exactly around one chunk, and several chunks.
        for blob in [10, CHUNK - 700, CHUNK, 3 * CHUNK + 5] {
            let msg = sample(blob);
            let body = encode_wire(&msg).unwrap();
            let tell = Outgoing::Tell {
                to: "sink",
                ty: "t::Sample",
                body: Inline::new(&msg).unwrap(),
            }
            .encode()
            .unwrap();
            let want = postcard::to_allocvec(&Frame::Tell {
                to: Cow::Borrowed("sink"),
                ty: Cow::Borrowed("t::Sample"),
                body: Cow::Borrowed(&body),
            })
            .unwrap();
            assert!(written(tell) == want, "tell of a {blob}-byte blob");
            let ask = Outgoing::Request {
                replies: &[u64::MAX, 3],
                to: "sink",
                ty: "t::Sample",
                body: Inline::new(&msg).unwrap(),
            }
            .encode()
            .unwrap();
            let got = written(ask);
            match postcard::from_bytes::<Frame>(&got).unwrap() {
                Frame::Request {
                    replies, to, body, ..
                } => {
                    assert_eq!((&replies[..], &*to), (&[u64::MAX, 3][..], "sink"));
                    assert_eq!(postcard::from_bytes::<Sample>(&body).unwrap(), msg);
                }
                other => panic!("decoded as {other:?}"),
            }
        }
    }

    #[test]
    fn large_frames_are_cut_into_full_chunks_and_a_last_partial_one() {
        let chunks = |n: usize| match encode(&Frame::Reply {
            id: 1,
            result: Ok(ReplyBody(Cow::Owned(vec![1u8; n]))),
        })
        .unwrap()
        {
            Encoded::Small(_) => 1,
            Encoded::Chunks(c) => {
                let pieces: Vec<usize> = c.iter().map(|c| c.len()).collect();
                assert!(pieces[..pieces.len() - 1].iter().all(|l| *l == pieces[0]));
                c.len()
            }
        };
        // Reply frame: variant, id, Ok tag, length varint (3 bytes), bytes.
        assert_eq!(chunks(CHUNK - 6), 1);
        assert_eq!(chunks(CHUNK - 5), 2);
        assert_eq!(chunks(4 * CHUNK - 6), 4);
        assert_eq!(chunks(4 * CHUNK), 5);
        let too_big = encode(&Frame::Reply {
            id: 1,
            result: Ok(ReplyBody(Cow::Owned(vec![0u8; MAX_FRAME]))),
        });
        assert!(matches!(
            too_big,
            Err(WireError::TooLarge {
                limit: MAX_FRAME,
                ..
            })
        ));
    }

    #[test]
    fn a_reply_encoded_from_its_value_is_the_frame_of_its_encoded_bytes() {
        for blob in [0, 100, CHUNK - 700, CHUNK, 5 * CHUNK + 3] {
            let msg = sample(blob);
            let want =
                postcard::to_allocvec(&Frame::reply(u64::MAX - 1, Ok(encode_wire(&msg).unwrap())))
                    .unwrap();
            let got = written(encode_reply_value(u64::MAX - 1, &msg).unwrap());
            assert!(got == want, "reply with a {blob}-byte blob");
        }
    }

    /// Encodes 100 bytes longer (or shorter) each time it is encoded.
    struct Fickle(std::cell::Cell<usize>, bool);

    impl Serialize for Fickle {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let n = self.0.get();
            self.0.set(if self.1 { n + 100 } else { n - 100 });
            s.serialize_bytes(&vec![7u8; n])
        }
    }

    #[test]
    fn a_message_whose_size_changes_between_passes_is_an_error_not_a_bad_frame() {
        // Small and large frames, growing and shrinking, through the
        // generic encoder, a typed send's and a reply value's.
        for (start, grows) in [
            (1500, true),
            (1500, false),
            (3 * CHUNK, true),
            (3 * CHUNK, false),
        ] {
            let msg = Fickle(std::cell::Cell::new(start), grows);
            let got = encode(&Outgoing::Tell {
                to: "x",
                ty: "y",
                body: &msg,
            });
            assert!(
                matches!(got, Err(WireError::Encode(_))),
                "{start} bytes, grows {grows}: {:?}",
                got.err()
            );
            let msg = Fickle(std::cell::Cell::new(start), grows);
            let got = Outgoing::Request {
                replies: &[1],
                to: "x",
                ty: "y",
                body: Inline::new(&msg).unwrap(),
            }
            .encode();
            assert!(
                matches!(got, Err(WireError::Encode(_))),
                "typed, {start} bytes, grows {grows}: {:?}",
                got.err()
            );
            let msg = Fickle(std::cell::Cell::new(start), grows);
            let got = encode_reply_value(1, &msg);
            assert!(
                matches!(got, Err(WireError::Encode(_))),
                "reply, {start} bytes, grows {grows}: {:?}",
                got.err()
            );
        }
    }
}
