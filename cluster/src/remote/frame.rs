//! The frame codec: what travels on an actor stream and how it is encoded.
//! A frame goes out as one small frame, or, if its encoding exceeds
//! [`CHUNK`], cut into chunks as it is written (a large message is never
//! held whole on the way out). Pure: no I/O, no state.

use std::borrow::Cow;

use manta_actors::wire::EncodeWire;
use manta_actors::{CodecError, ExitReason, WireError};
use serde::{Deserialize, Serialize};

use super::{CHUNK, FRAME_VERSION, MAX_FRAME};
use crate::bulk::{RECORD_HEADER, RECORD_TAG};

/// What travels on an actor stream. Tells and asks borrow their target,
/// type and body: from the sender's handle when encoding, from the receive
/// buffer when decoding (no copy of a large body on either side).
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Frame<'a> {
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
    /// Asks for a bulk lane: answered by a `Reply` carrying a
    /// [`LaneGrant`] (or an error where the node has no lane). `session` is
    /// the asker's (its lane messages are numbered per session).
    LaneOpen {
        id: u64,
        session: u64,
    },
    /// Every frame written before this one on the stream has been handled:
    /// the lane message `seq` of `session` that waits for it may go.
    Barrier {
        session: u64,
        seq: u64,
    },
}

/// What a node hands a peer that asked for a lane (in a mesh reply):
/// fresh key material and a one-time ticket.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct LaneGrant {
    pub(super) material: [u8; 32],
    pub(super) ticket: [u8; 16],
}

impl Frame<'_> {
    pub(super) fn reply(id: u64, result: Result<Vec<u8>, WireError>) -> Self {
        Frame::Reply {
            id,
            result: result.map(|v| ReplyBody(Cow::Owned(v))),
        }
    }

    /// The actor a frame is for, where ordering matters.
    pub(super) fn target(&self) -> Option<&str> {
        match self {
            Frame::Tell { to, .. } | Frame::Request { to, .. } => Some(to),
            Frame::Stop { to, .. } | Frame::Kill { to } | Frame::Watch { to } => Some(to),
            Frame::Reply { .. }
            | Frame::Exited { .. }
            | Frame::Spawn { .. }
            | Frame::Chunk { .. }
            | Frame::LaneOpen { .. }
            | Frame::Barrier { .. } => None,
        }
    }
}

/// The bytes of a successful reply (encoded as one byte string).
#[derive(Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub(super) struct ReplyBody<'a>(#[serde(with = "serde_bytes", borrow)] pub(super) Cow<'a, [u8]>);

/// Postcard's index of [`Frame::Chunk`] (its first byte on the wire, after
/// the version). Chunks are written and read through [`ChunkRef`], without
/// copying the piece into a `Frame` first; a unit test checks that both
/// encodings agree.
pub(super) const CHUNK_VARIANT: u8 = 8;

/// The fields of [`Frame::Chunk`], borrowing the piece.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ChunkRef<'a> {
    pub(super) msg: u64,
    pub(super) index: u32,
    pub(super) count: u32,
    #[serde(with = "serde_bytes", borrow)]
    pub(super) data: &'a [u8],
}

pub(super) enum Encoded {
    Small(Vec<u8>),
    Chunks(Vec<Vec<u8>>),
    /// The records of one bulk-lane message, not yet sealed (see
    /// [`Recorder`]).
    Records(Vec<Vec<u8>>),
    /// A bulk-lane message whose records are produced as the lane writes
    /// them ([`LazyFrame`]).
    Lazy(Box<dyn LazyFrame>),
}

/// Frames of at least this many bytes whose encoding takes at most
/// [`LAZY_MAX_PIECES`] serializer calls go on the lane as a [`LazyFrame`]
/// (the size chosen by measurement: BENCHMARKS.md, "Remote payloads").
pub(super) const LAZY_MIN: usize = 1 << 20;
/// Serializer calls above which a frame is encoded whole instead: each
/// window of a lazy frame is a pass over the message up to that window, so
/// the cost of the passes grows with the number of calls (a byte string
/// or a vector of `f32` written as bytes is one call; a `Vec<u8>` without
/// `serde_bytes` is one call per byte).
pub(super) const LAZY_MAX_PIECES: usize = 1024;

/// A frame held as the value it encodes until its bulk lane writes it:
/// the lane produces its records a window at a time (a pass over the value
/// up to the window's end, [`lazy_records`]), seals and writes them, and
/// reuses their buffers for the next window. So a 40 MB message costs
/// itself plus a window, not itself plus its 40 MB of records. The value
/// is kept until the peer acknowledges it: a lane that dies produces it
/// again from the start on the next one.
pub(super) trait LazyFrame: Send {
    /// Bytes of the frame's encoding.
    fn frame_len(&self) -> usize;
    /// The frame's encoding from its start, in order, in pieces; stops at
    /// the first error `out` returns.
    fn write_frame(
        &self,
        out: &mut dyn FnMut(&[u8]) -> Result<(), WireError>,
    ) -> Result<(), WireError>;
    /// The replies its request waits for (failed if it cannot be sent).
    fn replies(&self) -> Vec<u64>;
}

/// Encodes `v` through `out` piece by piece (each serializer call is one
/// piece); `out`'s own error is returned as it is.
pub(super) fn pieces<T: Serialize + ?Sized>(
    v: &T,
    out: &mut dyn FnMut(&[u8]) -> Result<(), WireError>,
) -> Result<(), WireError> {
    manta_actors::wire::encode_pieces(v, "frame", out)
}

/// Whether `write` hands over at most [`LAZY_MAX_PIECES`] pieces (it is
/// stopped at the first piece past that, so this costs little either way).
pub(super) fn few_pieces(
    write: impl FnOnce(&mut dyn FnMut(&[u8]) -> Result<(), WireError>) -> Result<(), WireError>,
) -> bool {
    let mut n = 0usize;
    let r = write(&mut |_| {
        n += 1;
        if n > LAZY_MAX_PIECES {
            return Err(WireError::Backpressure);
        }
        Ok(())
    });
    r.is_ok() && n <= LAZY_MAX_PIECES
}

/// Bytes of a lazy frame's lane message (head, length, version, frame).
pub(super) fn lazy_total(src: &dyn LazyFrame) -> usize {
    LANE_HEAD + 5 + src.frame_len()
}

/// The unsealed records `at..at + n` of the lane message of `src` (its
/// message number `seq` and `barrier` in the head): a pass over the value
/// that copies only the bytes of those records and stops after them. The
/// last record's pass runs to the end and checks the frame's size.
pub(super) fn lazy_records(
    src: &dyn LazyFrame,
    seq: u64,
    barrier: u64,
    at: usize,
    n: usize,
) -> Result<Vec<Vec<u8>>, WireError> {
    let frame_len = src.frame_len();
    let total = lazy_total(src);
    let from = at * LANE_RECORD;
    let to = ((at + n) * LANE_RECORD).min(total);
    if from >= to {
        return Ok(Vec::new());
    }
    let last = to == total;
    let mut rec = Recorder::new(to - from);
    let mut pos = 0usize;
    let mut stopped = false;
    let mut feed = |data: &[u8]| -> Result<(), WireError> {
        let start = pos;
        pos += data.len();
        if pos > from && start < to {
            let a = from.saturating_sub(start);
            let b = (to - start).min(data.len());
            rec.extend(&data[a..b]);
        }
        if !last && pos >= to {
            // Past the window: stop the pass (not an error).
            stopped = true;
            return Err(WireError::Backpressure);
        }
        Ok(())
    };
    let mut head = [0u8; LANE_HEAD + 5];
    head[..8].copy_from_slice(&seq.to_be_bytes());
    head[8..16].copy_from_slice(&barrier.to_be_bytes());
    head[16..20].copy_from_slice(&(frame_len as u32 + 1).to_be_bytes());
    head[20] = FRAME_VERSION;
    let mut r = feed(&head);
    if r.is_ok() {
        r = src.write_frame(&mut feed);
    }
    match r {
        Err(_) if stopped => {}
        Err(e) => return Err(e),
        Ok(()) if pos != total => {
            return Err(encode_error(postcard::Error::SerializeBufferFull));
        }
        Ok(()) => {}
    }
    rec.finish().map_err(encode_error)
}

/// A lazy frame encoded whole, for the mesh (or for the lane at once,
/// `lane` as in [`encode`]).
pub(super) fn encode_lazy(src: &dyn LazyFrame, lane: Option<usize>) -> Result<Encoded, WireError> {
    use postcard::ser_flavors::Flavor;
    let mut sink = FrameSink::new(src.frame_len(), lane)?;
    src.write_frame(&mut |p| sink.try_extend(p).map_err(encode_error))?;
    sink.finalize().map_err(encode_error)
}

/// Bytes of a lane message before its frame, in its first record: its
/// number in the sender's session (`u64`) and the number of the mesh
/// [`Frame::Barrier`] it waits for (`u64`, 0: none). The frame follows as
/// on a mesh stream: length (`u32`), version, frame.
pub(super) const LANE_HEAD: usize = 16;
/// Payload bytes per lane record (chosen by measurement: BENCHMARKS.md,
/// "bulk lane records").
pub(super) const LANE_RECORD: usize = 64 * 1024;

/// Encodes a frame for the wire: one small frame, the chunks of a large
/// one, or, for a frame of at least `lane` bytes (when the peer has a
/// bulk lane), the records of a lane message; written straight into their
/// buffers.
pub(super) fn encode<F: Serialize + ?Sized>(
    frame: &F,
    lane: Option<usize>,
) -> Result<Encoded, WireError> {
    let size = postcard::experimental::serialized_size(frame).map_err(encode_error)?;
    encode_sized(frame, size, lane)
}

/// [`encode`] of a frame whose encoding takes `size` bytes (if it takes
/// more or fewer, that is an error, not a bad frame).
fn encode_sized<F: Serialize + ?Sized>(
    frame: &F,
    size: usize,
    lane: Option<usize>,
) -> Result<Encoded, WireError> {
    postcard::serialize_with_flavor(frame, FrameSink::new(size, lane)?).map_err(encode_error)
}

/// Encodes the successful reply `id` from the reply itself, as
/// `Frame::reply(id, Ok(its encoding))` would be (a unit test checks), but
/// without a buffer of the whole encoding first.
pub(super) fn encode_reply_value(
    id: u64,
    v: &dyn EncodeWire,
    lane: Option<usize>,
) -> Result<Encoded, WireError> {
    use postcard::ser_flavors::Flavor;
    let len = v.encoded_len()?;
    let (buf, n) = reply_head(id, len)?;
    let head = &buf[..n];
    let mut sink = FrameSink::new(head.len() + len, lane)?;
    sink.try_extend(head).map_err(encode_error)?;
    v.encode_to(&mut |piece| sink.try_extend(piece).map_err(encode_error))?;
    sink.finalize().map_err(encode_error)
}

/// The frame of the successful reply `id` of `len` bytes up to the reply's
/// bytes: that of an empty reply, less its one-byte length (0), plus the
/// real length (at most 13 + 10 bytes); and how many bytes of it are used.
fn reply_head(id: u64, len: usize) -> Result<([u8; 40], usize), WireError> {
    let mut buf = [0u8; 40];
    let n = postcard::to_slice(&Frame::reply(id, Ok(Vec::new())), &mut buf)
        .map_err(encode_error)?
        .len()
        - 1;
    let m = postcard::to_slice(&(len as u64), &mut buf[n..])
        .map_err(encode_error)?
        .len();
    Ok((buf, n + m))
}

/// A successful reply that owns its value, for the lane to produce lazily
/// ([`LazyFrame`]); encodes as [`encode_reply_value`] does.
pub(super) struct LazyReply {
    head: [u8; 40],
    head_len: usize,
    value: Box<dyn EncodeWire>,
    len: usize,
}

impl LazyReply {
    /// The reply `id` carrying `value`, whose encoding takes `len` bytes.
    pub(super) fn new(id: u64, value: Box<dyn EncodeWire>, len: usize) -> Result<Self, WireError> {
        let (head, head_len) = reply_head(id, len)?;
        if head_len + len > MAX_FRAME {
            return Err(WireError::TooLarge {
                size: head_len + len,
                limit: MAX_FRAME,
            });
        }
        Ok(LazyReply {
            head,
            head_len,
            value,
            len,
        })
    }
}

impl LazyFrame for LazyReply {
    fn frame_len(&self) -> usize {
        self.head_len + self.len
    }

    fn write_frame(
        &self,
        out: &mut dyn FnMut(&[u8]) -> Result<(), WireError>,
    ) -> Result<(), WireError> {
        out(&self.head[..self.head_len])?;
        self.value.encode_to(out)
    }

    fn replies(&self) -> Vec<u64> {
        Vec::new()
    }
}

/// A tell or ask as its sender writes it. It encodes exactly as the
/// matching [`Frame`] variant (same variant index, same fields in the same
/// order; a unit test checks), but the body can be an [`Inline`] message
/// instead of a buffer holding its encoding.
#[derive(Serialize)]
pub(super) enum Outgoing<'a, B> {
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
    /// Bytes of the frame's encoding, from the message's size already
    /// measured, not from another pass over the message.
    pub(super) fn frame_len(&self) -> Result<usize, WireError> {
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
        Ok(head + prefix + len)
    }

    /// Encodes the frame.
    pub(super) fn encode(&self, lane: Option<usize>) -> Result<Encoded, WireError> {
        encode_sized(self, self.frame_len()?, lane)
    }
}

/// A tell or ask that owns its message, for the lane to produce lazily
/// ([`LazyFrame`]). The message sits in a shared cell so that the sender
/// can take it back if the send fails (the cell is only read here).
pub(super) struct LazyOutgoing<M> {
    pub(super) to: String,
    pub(super) ty: &'static str,
    pub(super) replies: Vec<u64>,
    pub(super) msg: std::sync::Arc<std::sync::Mutex<Option<M>>>,
    /// Bytes of the message's encoding and of the whole frame.
    pub(super) len: usize,
    pub(super) frame_len: usize,
}

impl<M: Serialize + Send> LazyFrame for LazyOutgoing<M> {
    fn frame_len(&self) -> usize {
        self.frame_len
    }

    fn write_frame(
        &self,
        out: &mut dyn FnMut(&[u8]) -> Result<(), WireError>,
    ) -> Result<(), WireError> {
        // Read-only use of the message: valid whatever a panicking holder did.
        let cell = self
            .msg
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(msg) = cell.as_ref() else {
            return Err(WireError::Encode(CodecError::new(
                self.ty,
                "the message was taken back",
            )));
        };
        let body = Inline { msg, len: self.len };
        let (to, ty) = (self.to.as_str(), self.ty);
        let written = if self.replies.is_empty() {
            pieces(&Outgoing::Tell { to, ty, body }, out)
        } else {
            let replies = self.replies.as_slice();
            pieces(
                &Outgoing::Request {
                    replies,
                    to,
                    ty,
                    body,
                },
                out,
            )
        };
        // Named by the message's type, not "frame".
        written.map_err(|e| match e {
            WireError::Encode(c) => WireError::Encode(CodecError::new(ty, c.reason)),
            other => other,
        })
    }

    fn replies(&self) -> Vec<u64> {
        self.replies.clone()
    }
}

/// A message written where a byte string holding its postcard encoding
/// would be: the length as a varint (a `u64` and a byte string's length
/// are both LEB128 varints in postcard), then the encoding itself. The
/// receiver decodes the byte string as usual; the sender never builds it.
pub(super) struct Inline<'a, M> {
    msg: &'a M,
    pub(super) len: usize,
}

impl<'a, M: Serialize> Inline<'a, M> {
    pub(super) fn new(msg: &'a M) -> Result<Self, postcard::Error> {
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

/// Where a frame's bytes go as they are encoded, once its size is known:
/// one small frame, or the chunks of a large one.
enum FrameSink {
    Small { out: Vec<u8>, size: usize },
    Chunks(Chunker),
    Records(Recorder),
}

impl FrameSink {
    fn new(size: usize, lane: Option<usize>) -> Result<Self, WireError> {
        if size > MAX_FRAME {
            return Err(WireError::TooLarge {
                size,
                limit: MAX_FRAME,
            });
        }
        if lane.is_some_and(|threshold| size >= threshold) {
            // The lane message's header, then the frame as on a stream.
            let mut r = Recorder::new(LANE_HEAD + 5 + size);
            let len = (size as u32 + 1).to_be_bytes();
            r.extend(&[0; LANE_HEAD]);
            r.extend(&len);
            r.extend(&[FRAME_VERSION]);
            return Ok(FrameSink::Records(r));
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
            FrameSink::Records(r) => {
                if r.left < data.len() {
                    return Err(postcard::Error::SerializeBufferFull);
                }
                r.extend(data);
                Ok(())
            }
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
            FrameSink::Records(r) => r.finish().map(Encoded::Records),
        }
    }
}

/// Full record buffers of acknowledged lane messages, for the next
/// messages' records: memory that is mapped and likely still in cache,
/// instead of a fresh allocation per record. At most [`POOLED_RECORDS`].
static RECORD_POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());
/// Record buffers kept for reuse (4 MiB of 64 KiB records).
pub(super) const POOLED_RECORDS: usize = 64;

fn record_pool() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
    // A list of empty buffers: valid whatever a panicking holder did.
    RECORD_POOL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An empty buffer for a record of `size` plaintext bytes (with room for
/// its header and tag): a pooled one for a full record.
fn record_buffer(size: usize) -> Vec<u8> {
    let cap = RECORD_HEADER + size + RECORD_TAG;
    if size == LANE_RECORD {
        if let Some(mut r) = record_pool().pop() {
            r.clear();
            return r;
        }
    }
    Vec::with_capacity(cap)
}

/// Hands a lane message's record buffers back for later messages (full
/// records only, while the pool has room; the most recently used are
/// taken first).
pub(super) fn recycle_records(records: &mut Vec<Vec<u8>>) {
    let full = RECORD_HEADER + LANE_RECORD + RECORD_TAG;
    let mut pool = record_pool();
    for r in records.drain(..).rev() {
        if pool.len() >= POOLED_RECORDS {
            break;
        }
        if r.capacity() == full {
            pool.push(r);
        }
    }
}

/// Cuts a lane message's plaintext into record buffers as it is written:
/// each starts with [`RECORD_HEADER`] bytes for the record's length and
/// has room for the tag, so it is sealed in place and written as it is.
pub(super) struct Recorder {
    /// Plaintext bytes still to come.
    left: usize,
    records: Vec<Vec<u8>>,
}

impl Recorder {
    /// A recorder for `total` bytes of plaintext.
    pub(super) fn new(total: usize) -> Self {
        Recorder {
            left: total,
            records: Vec::with_capacity(total.div_ceil(LANE_RECORD)),
        }
    }

    /// Appends plaintext (at most what is left; the caller checks).
    pub(super) fn extend(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.left > 0 {
            let room = match self.records.last() {
                Some(r) => LANE_RECORD + RECORD_HEADER - r.len(),
                None => 0,
            };
            if room == 0 {
                let mut r = record_buffer(self.left.min(LANE_RECORD));
                r.extend_from_slice(&[0; RECORD_HEADER]);
                self.records.push(r);
                continue;
            }
            let n = room.min(data.len()).min(self.left);
            if let Some(r) = self.records.last_mut() {
                r.extend_from_slice(&data[..n]);
            }
            self.left -= n;
            data = &data[n..];
        }
    }

    fn finish(self) -> postcard::Result<Vec<Vec<u8>>> {
        if self.left != 0 {
            return Err(postcard::Error::SerializeBufferFull);
        }
        Ok(self.records)
    }

    /// The records of a small frame (`[len, version, frame]` as on a
    /// stream) sent on the lane behind a large message.
    pub(super) fn of_small(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut r = Recorder::new(LANE_HEAD + bytes.len());
        r.extend(&[0; LANE_HEAD]);
        r.extend(bytes);
        r.records
    }
}

/// A lane message's unsealed records back as a mesh frame (the lane could
/// not be opened): one small frame, or the chunks of a large one.
pub(super) fn records_to_mesh(records: &[Vec<u8>]) -> Result<Encoded, WireError> {
    let mut plain = Vec::with_capacity(records.len() * LANE_RECORD);
    for r in records {
        plain.extend_from_slice(r.get(RECORD_HEADER..).unwrap_or_default());
    }
    let stream_frame = plain.get(LANE_HEAD..).unwrap_or_default();
    let frame = stream_frame.get(5..).unwrap_or_default();
    if frame.len() <= CHUNK {
        return Ok(Encoded::Small(stream_frame.to_vec()));
    }
    let msg = rand::random();
    let count = frame.len().div_ceil(CHUNK) as u32;
    frame
        .chunks(CHUNK)
        .enumerate()
        .map(|(i, data)| {
            wire_chunk(&ChunkRef {
                msg,
                index: i as u32,
                count,
                data,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Encoded::Chunks)
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

/// One chunk on the wire: length, version, variant, fields (what
/// [`Chunker`] writes, built from a whole piece).
pub(super) fn wire_chunk(c: &ChunkRef<'_>) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(4 + 2 + 24 + c.data.len());
    out.extend_from_slice(&[0, 0, 0, 0, FRAME_VERSION, CHUNK_VARIANT]);
    let mut out = postcard::to_extend(c, out).map_err(encode_error)?;
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use manta_actors::wire::encode_wire;

    /// The mesh encoding (no lane).
    fn encode<F: Serialize + ?Sized>(f: &F) -> Result<Encoded, WireError> {
        super::encode(f, None)
    }

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
            // Produced in windows of 3 records (a seam inside a window and
            // between windows).
            Encoded::Lazy(src) => {
                let count = lazy_total(&*src).div_ceil(LANE_RECORD);
                let mut records = Vec::new();
                for at in (0..count).step_by(3) {
                    records.extend(lazy_records(&*src, 0, 0, at, 3).unwrap());
                }
                written(Encoded::Records(records))
            }
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
            Encoded::Records(records) => {
                let mut plain = Vec::new();
                for r in &records {
                    assert!(r.len() - RECORD_HEADER <= LANE_RECORD);
                    assert!(r.capacity() >= r.len() + RECORD_TAG, "room for the tag");
                    plain.extend_from_slice(&r[RECORD_HEADER..]);
                }
                let len = u32::from_be_bytes(plain[LANE_HEAD..LANE_HEAD + 4].try_into().unwrap());
                assert_eq!(len as usize, plain.len() - LANE_HEAD - 4);
                assert_eq!(plain[LANE_HEAD + 4], FRAME_VERSION);
                plain[LANE_HEAD + 5..].to_vec()
            }
        }
    }

    #[test]
    fn a_lane_message_holds_the_frame_and_converts_back_to_mesh_frames() {
        for blob in [10, LANE_RECORD - 40, LANE_RECORD, 3 * LANE_RECORD + 5] {
            let msg = sample(blob);
            let frame = Outgoing::Tell {
                to: "sink",
                ty: "t::Sample",
                body: Inline::new(&msg).unwrap(),
            };
            let mesh = written(frame.encode(None).unwrap());
            let lane = frame.encode(Some(0)).unwrap();
            let Encoded::Records(records) = lane else {
                panic!("a threshold of 0 puts every frame on the lane")
            };
            let back = written(records_to_mesh(&records).unwrap());
            assert_eq!(written(Encoded::Records(records)), mesh);
            assert_eq!(back, mesh, "{blob}: the fallback sends the same frame");
            // Below the threshold: as on the mesh.
            let under = frame.encode(Some(usize::MAX)).unwrap();
            assert!(!matches!(under, Encoded::Records(_)));
        }
        // A small frame behind a large one: its stream bytes after the head.
        let Encoded::Small(small) = encode(&Frame::Kill { to: "a".into() }).unwrap() else {
            panic!("small")
        };
        let records = Recorder::of_small(&small);
        assert_eq!(records.len(), 1);
        assert_eq!(&records[0][RECORD_HEADER + LANE_HEAD..], &small[..]);
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
            .encode(None)
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
            .encode(None)
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
    fn record_buffers_are_recycled_within_the_pool_bound_and_come_back_empty() {
        let full = RECORD_HEADER + LANE_RECORD + RECORD_TAG;
        let mut records: Vec<Vec<u8>> = (0..POOLED_RECORDS + 40)
            .map(|_| {
                let mut r = record_buffer(LANE_RECORD);
                r.extend_from_slice(&[9; 100]);
                r
            })
            .collect();
        // A partial record is not kept.
        records.push(Vec::with_capacity(RECORD_HEADER + 10 + RECORD_TAG));
        recycle_records(&mut records);
        assert!(records.is_empty());
        assert!(record_pool().len() <= POOLED_RECORDS);
        assert!(record_pool().iter().all(|r| r.capacity() == full));
        let r = record_buffer(LANE_RECORD);
        assert!(r.is_empty() && r.capacity() >= full);
        assert_eq!(
            record_buffer(10).capacity(),
            RECORD_HEADER + 10 + RECORD_TAG
        );
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
            Encoded::Records(_) | Encoded::Lazy(_) => panic!("no lane"),
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
            let got = written(encode_reply_value(u64::MAX - 1, &msg, None).unwrap());
            assert!(got == want, "reply with a {blob}-byte blob");
        }
    }

    /// All records of a lazy frame, produced in windows of 1, 2, 3, 1, …
    /// records, numbered `seq` (barrier `seq + 1`).
    fn produce(src: &dyn LazyFrame, seq: u64) -> Result<Vec<Vec<u8>>, WireError> {
        let count = lazy_total(src).div_ceil(LANE_RECORD);
        let (mut records, mut at, mut n) = (Vec::new(), 0, 1);
        while at < count {
            records.extend(lazy_records(src, seq, seq + 1, at, n)?);
            at += n;
            n = n % 3 + 1;
        }
        Ok(records)
    }

    fn lazy_tell(msg: Sample, replies: &[u64]) -> LazyOutgoing<Sample> {
        let body = Inline::new(&msg).unwrap();
        let len = body.len;
        let frame_len = Outgoing::Request {
            replies,
            to: "sink",
            ty: "t::Sample",
            body,
        }
        .frame_len()
        .unwrap();
        LazyOutgoing {
            to: "sink".into(),
            ty: "t::Sample",
            replies: replies.to_vec(),
            msg: std::sync::Arc::new(std::sync::Mutex::new(Some(msg))),
            len,
            frame_len,
        }
    }

    #[test]
    fn a_lazy_message_or_reply_produces_the_records_of_its_whole_encoding() {
        for blob in [
            LANE_RECORD - 700,
            LANE_RECORD,
            3 * LANE_RECORD + 5,
            LAZY_MIN,
        ] {
            let msg = sample(blob);
            let eager = Outgoing::Request {
                replies: &[7, 9],
                to: "sink",
                ty: "t::Sample",
                body: Inline::new(&msg).unwrap(),
            }
            .encode(Some(0))
            .unwrap();
            let Encoded::Records(mut want) = eager else {
                panic!("not lane records");
            };
            // The lane numbers a message in its head (`LaneMsg::new`).
            want[0][RECORD_HEADER..RECORD_HEADER + 8].copy_from_slice(&5u64.to_be_bytes());
            want[0][RECORD_HEADER + 8..RECORD_HEADER + 16].copy_from_slice(&6u64.to_be_bytes());
            let src = lazy_tell(msg, &[7, 9]);
            assert_eq!(src.replies(), vec![7, 9]);
            let got = produce(&src, 5).unwrap();
            assert_eq!(got.len(), want.len(), "{blob}-byte blob: records");
            assert!(got == want, "{blob}-byte blob: lazy records differ");
            assert!(
                got.iter().all(|r| r.capacity() >= r.len() + RECORD_TAG),
                "room for the tags"
            );
            // Encoded whole for the mesh, it is the frame of the message.
            let mesh = written(encode_lazy(&src, None).unwrap());
            assert!(
                mesh == written(Encoded::Records(want)),
                "{blob}: mesh frame"
            );

            let msg = sample(blob);
            let n = encode_wire(&msg).unwrap().len();
            let Encoded::Records(mut want) =
                encode_reply_value(u64::MAX - 1, &msg, Some(0)).unwrap()
            else {
                panic!("not lane records");
            };
            want[0][RECORD_HEADER..RECORD_HEADER + 8].copy_from_slice(&2u64.to_be_bytes());
            want[0][RECORD_HEADER + 8..RECORD_HEADER + 16].copy_from_slice(&3u64.to_be_bytes());
            let src = LazyReply::new(u64::MAX - 1, Box::new(msg), n).unwrap();
            assert!(src.replies().is_empty());
            assert!(
                produce(&src, 2).unwrap() == want,
                "{blob}-byte reply: lazy records differ"
            );
        }
    }

    #[test]
    fn only_values_written_in_few_pieces_are_produced_lazily() {
        // A byte string is one piece; 300 numbers are 300.
        assert!(few_pieces(|out| pieces(&sample(LAZY_MIN), out)));
        // A `Vec<u8>` without `serde_bytes` is a piece per byte.
        assert!(!few_pieces(|out| pieces(&vec![1u8; 5_000], out)));
        assert!(few_pieces(|out| pieces(
            &vec![1u8; LAZY_MAX_PIECES - 1],
            out
        )));
        // A value that does not encode is not lazy either.
        assert!(!few_pieces(|_| Err(WireError::Backpressure)));
    }

    #[test]
    fn a_lazy_message_taken_back_or_whose_encoding_changed_is_an_error() {
        let src = lazy_tell(sample(3 * LANE_RECORD), &[]);
        let taken = src.msg.lock().unwrap().take();
        assert!(taken.is_some());
        assert!(matches!(
            lazy_records(&src, 1, 0, 0, 1),
            Err(WireError::Encode(_))
        ));

        for grows in [true, false] {
            let msg = Fickle(std::cell::Cell::new(3 * LANE_RECORD), grows);
            let body = Inline::new(&msg).unwrap();
            let (len, frame_len) = (
                body.len,
                Outgoing::Tell {
                    to: "x",
                    ty: "y",
                    body,
                }
                .frame_len()
                .unwrap(),
            );
            let src = LazyOutgoing {
                to: "x".into(),
                ty: "y",
                replies: Vec::new(),
                msg: std::sync::Arc::new(std::sync::Mutex::new(Some(msg))),
                len,
                frame_len,
            };
            assert!(
                matches!(produce(&src, 1), Err(WireError::Encode(_))),
                "grows {grows}"
            );
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
            .encode(None);
            assert!(
                matches!(got, Err(WireError::Encode(_))),
                "typed, {start} bytes, grows {grows}: {:?}",
                got.err()
            );
            let msg = Fickle(std::cell::Cell::new(start), grows);
            let got = encode_reply_value(1, &msg, None);
            assert!(
                matches!(got, Err(WireError::Encode(_))),
                "reply, {start} bytes, grows {grows}: {:?}",
                got.err()
            );
        }
    }
}
