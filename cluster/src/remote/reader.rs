//! The reader side: one task per incoming actor stream reads frames,
//! checks them, reassembles large messages from their chunks
//! ([`Reassembly`]) and hands each frame to `dispatch`. A large reply keeps
//! its reassembly buffer ([`ReplyBytes`]), which goes back to the node's
//! few kept buffers once the ask has decoded it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::PeerId;
use manta_actors::wire::WireBytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::frame::{CHUNK_VARIANT, ChunkRef, Frame, ReplyBody};
use super::{
    ACCEPTED, CHUNK, FRAME_VERSION, Inner, KEPT_BUFFERS, MAX_FRAME, MAX_PARTIAL, MAX_WIRE_FRAME,
    RemoteLimits, Remoting, STREAMS_PER_PEER, lock,
};

impl Remoting {
    pub(super) async fn read_loop(self, peer: PeerId, mut stream: libp2p::Stream) {
        if take_one(&self.inner.dropping_streams) {
            return;
        }
        let Some(_open) = super::lane::Counted::within(&self.inner.inbound, peer, STREAMS_PER_PEER)
        else {
            let n = self.inner.refused_streams.fetch_add(1, Ordering::Relaxed) + 1;
            self.inner.partials.moved.notify_waiters();
            if n <= 5 || n % 1000 == 0 {
                tracing::warn!(target: "manta::remote", %peer, total = n, "actor stream dropped: the peer has {STREAMS_PER_PEER} open already");
            }
            return;
        };
        // The opener writes nothing until it reads this.
        if stream.write_all(&[ACCEPTED]).await.is_err() || stream.flush().await.is_err() {
            return;
        }
        let stream_no = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.read_frames(peer, stream_no, stream).await;
        self.inner.partials.stream_ended(peer, stream_no);
    }

    async fn read_frames(&self, peer: PeerId, stream_no: u64, mut stream: libp2p::Stream) {
        let mut len_buf = [0u8; 4];
        // One receive buffer, reused (frames are at most MAX_WIRE_FRAME).
        let mut buf = Vec::new();
        let route = self.route(peer);
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
            // A frame begun must be finished: one that stalls holds its
            // buffer (up to a chunk) for as long as the stream lives.
            // The timer only when the frame is not all there yet: most
            // frames are, and a timer per frame costs small messages.
            let stall = self.inner.partials.limits.partial_expiry;
            let mut read = std::pin::pin!(stream.read_exact(&mut buf));
            let read = match futures::poll!(read.as_mut()) {
                std::task::Poll::Ready(r) => Ok(r),
                std::task::Poll::Pending => tokio::time::timeout(stall, read).await,
            };
            match read {
                Err(_) => {
                    self.bad(peer, &format!("a frame got no byte for {stall:?}"));
                    return;
                }
                Ok(Err(_)) => return,
                Ok(Ok(())) => {}
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
                let added = self
                    .inner
                    .partials
                    .add(peer, stream_no, &c, &self.inner.kept)
                    .await;
                let whole = match added {
                    Ok(Some(whole)) => whole,
                    Ok(None) => continue,
                    Err(what) => {
                        self.bad(peer, what);
                        return;
                    }
                };
                if let Err(what) = self.take_whole(peer, &route, whole, 0) {
                    self.bad(peer, what);
                    return;
                }
                continue;
            }
            // (Chunks were handled above: every one starts with CHUNK_VARIANT.)
            match postcard::from_bytes::<Frame>(&buf[1..]) {
                Ok(frame) => self.dispatch(peer, &route, frame),
                Err(e) => {
                    self.bad(peer, &format!("undecodable frame: {e}"));
                    return;
                }
            }
            if take_one(&self.inner.ending_streams) {
                return;
            }
        }
    }

    /// Handles a whole large message, the frame at `whole[start..]`
    /// (reassembled from chunks, or received on a bulk lane): a large
    /// reply keeps its buffer, which goes to the waiting ask; any other
    /// frame is dispatched and the buffer kept for the next message.
    pub(super) fn take_whole(
        &self,
        peer: PeerId,
        route: &Arc<dyn manta_actors::wire::ReplyRoute>,
        whole: Vec<u8>,
        start: usize,
    ) -> Result<(), &'static str> {
        // Shared, so that `shared_bytes` payloads are slices of it.
        let whole = bytes::Bytes::from(whole);
        let frame = whole.get(start..).unwrap_or_default();
        let reply = match postcard::from_bytes::<Frame>(frame) {
            Ok(Frame::Chunk { .. }) | Err(_) => return Err("undecodable large message"),
            // A large reply's bytes stay where they are: the buffer goes
            // to the waiting ask.
            Ok(Frame::Reply {
                id,
                result: Ok(ReplyBody(Cow::Borrowed(body))),
            }) => {
                let start = (body.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
                Some((id, start..start + body.len()))
            }
            // Dispatch decodes the message out of the buffer.
            Ok(frame) => {
                manta_actors::wire::decode_sharing(&whole, || self.dispatch(peer, route, frame));
                None
            }
        };
        if let Some((id, range)) = reply {
            // The asker hands the buffer back once it has decoded the
            // reply (or at once, if it gave up).
            let bytes = ReplyBytes {
                buf: whole,
                range,
                pool: Some(Arc::clone(&self.inner.kept)),
            };
            self.answer(peer, id, Ok(Box::new(bytes)));
        } else {
            keep_shared(&self.inner.kept, whole);
        }
        Ok(())
    }

    fn bad(&self, peer: PeerId, what: &str) {
        let n = self.inner.bad_frames.fetch_add(1, Ordering::Relaxed) + 1;
        self.inner.partials.moved.notify_waiters();
        tracing::warn!(target: "manta::remote", %peer, total = n, "{what}; closing the stream");
    }
}

/// Large messages being reassembled, from their chunks, for every peer:
/// the budgets of [`RemoteLimits`] (per peer, per node) and the expiry of
/// partial messages that stopped receiving chunks.
pub(super) struct Partials {
    pub(super) limits: RemoteLimits,
    /// The node's budget in units of one chunk's declared size.
    budget: Arc<Semaphore>,
    units: u32,
    state: Mutex<HashMap<PeerId, PeerPartials>>,
    /// Declared bytes of every partial message, all peers together.
    bytes: AtomicUsize,
    dropped: AtomicU64,
    /// Woken whenever a counter of the node's remoting moves.
    pub(super) moved: tokio::sync::Notify,
}

/// A whole message's share of the budgets (see [`Partials::admit`]).
pub(super) struct Admitted {
    peer: PeerId,
    declared: usize,
    _permit: OwnedSemaphorePermit,
}

#[derive(Default)]
struct PeerPartials {
    declared: usize,
    /// By (stream, message): a message's chunks all come on one stream.
    msgs: HashMap<(u64, u64), Partial>,
}

struct Partial {
    count: u32,
    next: u32,
    declared: usize,
    buf: Vec<u8>,
    last: Instant,
    /// Its share of the node's budget, given back when it is dropped.
    _permit: OwnedSemaphorePermit,
}

impl Partials {
    pub(super) fn new(limits: RemoteLimits) -> Self {
        let units = u32::try_from(limits.partial_per_node / CHUNK).unwrap_or(u32::MAX);
        Self {
            budget: Arc::new(Semaphore::new(units as usize)),
            units,
            limits,
            state: Mutex::new(HashMap::new()),
            bytes: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            moved: tokio::sync::Notify::new(),
        }
    }

    pub(super) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Adds chunk `c` of `peer`'s stream `stream` to its message: the whole
    /// message once its last chunk is in; `None` while chunks are still to
    /// come, or for a chunk of a message that cannot be completed here
    /// (dropped); or what is wrong, for a chunk that closes the stream. A
    /// message's first chunk waits (the stream unread) while the node's
    /// budget is taken, at most `partial_expiry`. A new message's buffer is
    /// one of the node's `kept` ones where there is one; it grows as chunks
    /// arrive, never past the declared size.
    pub(super) async fn add(
        &self,
        peer: PeerId,
        stream: u64,
        c: &ChunkRef<'_>,
        kept: &Mutex<Vec<Vec<u8>>>,
    ) -> Result<Option<Vec<u8>>, &'static str> {
        if c.count == 0 || c.count as usize > MAX_FRAME.div_ceil(CHUNK) {
            return Err("message too large");
        }
        let declared = c.count as usize * CHUNK;
        let key = (stream, c.msg);
        {
            let mut state = lock(&self.state);
            let pp = state.entry(peer).or_default();
            if let Some(p) = pp.msgs.get_mut(&key) {
                if p.count != c.count || p.next != c.index || p.buf.len() + c.data.len() > declared
                {
                    return Err("chunk out of sequence or message too large");
                }
                append(&mut p.buf, c.data, declared);
                p.next += 1;
                p.last = Instant::now();
                if p.next != p.count {
                    return Ok(None);
                }
                return Ok(self.complete(pp, key));
            }
            if c.data.len() > declared {
                return Err("chunk out of sequence or message too large");
            }
            if c.index != 0 {
                // The rest of a message whose first chunks went out on a
                // stream that broke (the sender reopened and sent the failed
                // chunk again here), or that expired: it cannot be completed.
                tracing::debug!(target: "manta::remote", %peer, msg = c.msg, index = c.index, "dropping the tail of a message not started here");
                return Ok(None);
            }
            if pp.msgs.keys().filter(|(s, _)| *s == stream).count() >= MAX_PARTIAL {
                return Err("too many large messages in flight");
            }
            if pp.declared + declared > self.limits.partial_per_peer {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return Err("over the peer's budget of partly received messages");
            }
        }
        if c.count > self.units {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Err("larger than the node's budget of partly received messages");
        }
        let budget = Arc::clone(&self.budget);
        let permit = match budget.clone().try_acquire_many_owned(c.count) {
            Ok(p) => p,
            Err(_) => {
                tracing::debug!(target: "manta::remote", %peer, declared, "waiting for the node's budget of partly received messages");
                match tokio::time::timeout(
                    self.limits.partial_expiry,
                    budget.acquire_many_owned(c.count),
                )
                .await
                {
                    Ok(Ok(p)) => p,
                    // The semaphore is never closed; a timeout is the only way.
                    _ => {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        return Err("the node's budget of partly received messages stayed taken");
                    }
                }
            }
        };
        let mut state = lock(&self.state);
        let pp = state.entry(peer).or_default();
        if pp.declared + declared > self.limits.partial_per_peer {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Err("over the peer's budget of partly received messages");
        }
        let mut buf = lock(kept).pop().unwrap_or_default();
        append(&mut buf, c.data, declared);
        pp.declared += declared;
        self.bytes.fetch_add(declared, Ordering::Relaxed);
        pp.msgs.insert(
            key,
            Partial {
                count: c.count,
                next: 1,
                declared,
                buf,
                last: Instant::now(),
                _permit: permit,
            },
        );
        self.moved.notify_waiters();
        if c.count == 1 {
            return Ok(self.complete(pp, key));
        }
        Ok(None)
    }

    /// Admits one whole message of `declared` bytes from `peer` that will
    /// arrive in one piece after another (a bulk-lane message): within the
    /// same budgets as chunked ones, waiting for the node's budget at most
    /// `partial_expiry`. Released by [`release`](Self::release).
    pub(super) async fn admit(
        &self,
        peer: PeerId,
        declared: usize,
    ) -> Result<Admitted, &'static str> {
        let units = declared.div_ceil(CHUNK).max(1);
        if units > self.units as usize || declared > self.limits.partial_per_peer {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Err("larger than the budget of partly received messages");
        }
        let units = units as u32;
        let over = |pp: &PeerPartials| pp.declared + declared > self.limits.partial_per_peer;
        if lock(&self.state).get(&peer).is_some_and(over) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Err("over the peer's budget of partly received messages");
        }
        let budget = Arc::clone(&self.budget);
        let permit = match budget.clone().try_acquire_many_owned(units) {
            Ok(p) => p,
            Err(_) => match tokio::time::timeout(
                self.limits.partial_expiry,
                budget.acquire_many_owned(units),
            )
            .await
            {
                Ok(Ok(p)) => p,
                _ => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    return Err("the node's budget of partly received messages stayed taken");
                }
            },
        };
        let mut state = lock(&self.state);
        let pp = state.entry(peer).or_default();
        if over(pp) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Err("over the peer's budget of partly received messages");
        }
        pp.declared += declared;
        self.bytes.fetch_add(declared, Ordering::Relaxed);
        self.moved.notify_waiters();
        Ok(Admitted {
            peer,
            declared,
            _permit: permit,
        })
    }

    /// Gives back what [`admit`](Self::admit) took.
    pub(super) fn release(&self, a: Admitted) {
        let mut state = lock(&self.state);
        if let Some(pp) = state.get_mut(&a.peer) {
            pp.declared = pp.declared.saturating_sub(a.declared);
            if pp.declared == 0 && pp.msgs.is_empty() {
                state.remove(&a.peer);
            }
        }
        self.bytes.fetch_sub(a.declared, Ordering::Relaxed);
        self.moved.notify_waiters();
    }

    fn complete(&self, pp: &mut PeerPartials, key: (u64, u64)) -> Option<Vec<u8>> {
        let p = pp.msgs.remove(&key)?;
        pp.declared -= p.declared;
        self.bytes.fetch_sub(p.declared, Ordering::Relaxed);
        Some(p.buf)
    }

    /// Drops what `keep` refuses, releasing its budget; how many.
    fn drop_where(&self, mut drop: impl FnMut(&PeerId, &(u64, u64), &Partial) -> bool) -> u64 {
        let mut state = lock(&self.state);
        let mut n = 0;
        for (peer, pp) in state.iter_mut() {
            let gone: Vec<(u64, u64)> = pp
                .msgs
                .iter()
                .filter(|(k, p)| drop(peer, k, p))
                .map(|(k, _)| *k)
                .collect();
            for k in gone {
                if self.complete(pp, k).is_some() {
                    n += 1;
                }
            }
        }
        state.retain(|_, pp| !pp.msgs.is_empty() || pp.declared > 0);
        n
    }

    /// `peer`'s stream `stream` ended: its partial messages can never
    /// complete.
    pub(super) fn stream_ended(&self, peer: PeerId, stream: u64) {
        self.drop_where(|p, (s, _), _| *p == peer && *s == stream);
    }

    /// `peer` is gone: every partial message of it is dropped.
    pub(super) fn forget(&self, peer: PeerId) {
        self.drop_where(|p, _, _| *p == peer);
    }

    /// Drops partial messages that received no chunk for `partial_expiry`;
    /// how many.
    fn expire(&self, now: Instant) -> u64 {
        let expiry = self.limits.partial_expiry;
        let n = self.drop_where(|peer, (_, msg), p| {
            let stale = now.duration_since(p.last) >= expiry;
            if stale {
                tracing::warn!(target: "manta::remote", %peer, msg, received = p.buf.len(), declared = p.declared, "a partly received message got no chunk for {expiry:?}; dropped");
            }
            stale
        });
        self.dropped.fetch_add(n, Ordering::Relaxed);
        n
    }
}

/// Expires stale partial messages while the node's remoting lives.
pub(super) async fn expire_partials(inner: Weak<Inner>) {
    let every = match inner.upgrade() {
        Some(i) => (i.partials.limits.partial_expiry / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(5)),
        None => return,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match inner.upgrade() {
            Some(i) => {
                if i.partials.expire(Instant::now()) > 0 {
                    i.partials.moved.notify_waiters();
                }
            }
            None => return,
        }
    }
}

/// Appends `data`, growing `buf` by doubling but never past `declared`
/// (memory is taken as chunks arrive, not on the sender's word).
fn append(buf: &mut Vec<u8>, data: &[u8], declared: usize) {
    if buf.capacity() < buf.len() + data.len() {
        let more = buf
            .len()
            .max(CHUNK)
            .min(declared.saturating_sub(buf.len()))
            .max(data.len());
        buf.reserve_exact(more);
    }
    buf.extend_from_slice(data);
}

/// A reply's bytes as the waiting ask gets them: `buf[range]`. A large
/// reply arrives as its whole reassembly buffer (no copy of its bytes into
/// a fresh vector), which the ask hands back for the next large message
/// once it has decoded the reply.
pub(super) struct ReplyBytes {
    buf: bytes::Bytes,
    range: std::ops::Range<usize>,
    /// Where the buffer goes back once the reply is decoded (large replies).
    pool: Option<Arc<Mutex<Vec<Vec<u8>>>>>,
}

impl ReplyBytes {
    pub(super) fn owned(buf: Vec<u8>) -> Self {
        let range = 0..buf.len();
        ReplyBytes {
            buf: buf.into(),
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

    fn frame(&self) -> Option<&bytes::Bytes> {
        Some(&self.buf)
    }
}

impl Drop for ReplyBytes {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            keep_shared(pool, std::mem::take(&mut self.buf));
        }
    }
}

/// Keeps a large message's buffer for the next one unless the message's
/// [`manta_actors::shared_bytes`] payloads still hold slices of it.
fn keep_shared(pool: &Mutex<Vec<Vec<u8>>>, mut buf: bytes::Bytes) {
    // Emptied first, so that taking the buffer back moves no bytes.
    buf.truncate(0);
    if let Ok(b) = buf.try_into_mut() {
        keep_in(pool, Vec::from(b));
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

/// Takes one from `n` if it is above zero (fault injection for tests;
/// one relaxed load when none is asked for).
fn take_one(n: &AtomicU64) -> bool {
    n.load(Ordering::Relaxed) > 0
        && n.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(msg: u64, index: u32, count: u32, data: &[u8]) -> ChunkRef<'_> {
        ChunkRef {
            msg,
            index,
            count,
            data,
        }
    }

    fn partials() -> Partials {
        Partials::new(RemoteLimits::default())
    }

    #[tokio::test]
    async fn chunks_in_order_make_the_whole_message_in_a_kept_buffer() {
        let (peer, r) = (PeerId::random(), partials());
        let kept = Mutex::new(vec![Vec::with_capacity(2 * CHUNK)]);
        assert_eq!(
            r.add(peer, 1, &chunk(7, 0, 3, b"ab"), &kept).await,
            Ok(None)
        );
        assert!(lock(&kept).is_empty(), "the kept buffer is taken");
        assert_eq!(r.bytes(), 3 * CHUNK, "counted at its declared size");
        // Another message in between (another stream) does not disturb it.
        assert_eq!(r.add(peer, 2, &chunk(7, 0, 2, b"x"), &kept).await, Ok(None));
        assert_eq!(
            r.add(peer, 1, &chunk(7, 1, 3, b"cd"), &kept).await,
            Ok(None)
        );
        let whole = r.add(peer, 1, &chunk(7, 2, 3, b"e"), &kept).await;
        let whole = whole.unwrap().unwrap();
        assert_eq!(
            (&whole[..], whole.capacity() >= 2 * CHUNK),
            (&b"abcde"[..], true)
        );
        assert_eq!(
            r.add(peer, 2, &chunk(7, 1, 2, b"y"), &kept).await,
            Ok(Some(b"xy".to_vec()))
        );
        assert_eq!(r.bytes(), 0);
        assert_eq!(
            r.budget.available_permits(),
            r.units as usize,
            "all budget back"
        );
    }

    #[tokio::test]
    async fn the_tail_of_a_message_never_started_here_is_dropped() {
        let (peer, r) = (PeerId::random(), partials());
        let kept = Mutex::new(Vec::new());
        assert_eq!(
            r.add(peer, 1, &chunk(7, 1, 3, b"cd"), &kept).await,
            Ok(None)
        );
        assert_eq!(r.add(peer, 1, &chunk(7, 2, 3, b"e"), &kept).await, Ok(None));
        // Started on stream 1, continued on stream 2: not the same message.
        assert_eq!(r.add(peer, 1, &chunk(8, 0, 3, b"a"), &kept).await, Ok(None));
        assert_eq!(r.add(peer, 2, &chunk(8, 1, 3, b"b"), &kept).await, Ok(None));
        assert_eq!(r.bytes(), 3 * CHUNK);
    }

    #[tokio::test]
    async fn a_bad_sequence_or_size_is_an_error() {
        let peer = PeerId::random();
        let kept = Mutex::new(Vec::new());
        let r = partials();
        r.add(peer, 1, &chunk(7, 0, 3, b"ab"), &kept).await.unwrap();
        let skipped = r.add(peer, 1, &chunk(7, 2, 3, b"e"), &kept).await;
        assert_eq!(skipped, Err("chunk out of sequence or message too large"));
        let recounted = r.add(peer, 1, &chunk(7, 1, 4, b"cd"), &kept).await;
        assert_eq!(recounted, Err("chunk out of sequence or message too large"));
        let most = MAX_FRAME.div_ceil(CHUNK) as u32;
        let huge = r.add(peer, 1, &chunk(8, 0, most + 1, b"x"), &kept).await;
        assert_eq!(huge, Err("message too large"));
        let none = r.add(peer, 1, &chunk(9, 0, 0, b""), &kept).await;
        assert_eq!(none, Err("message too large"));
        let over = r
            .add(peer, 1, &chunk(10, 0, 1, &vec![0; CHUNK + 1]), &kept)
            .await;
        assert!(
            over == Err("chunk out of sequence or message too large"),
            "a first chunk larger than its message was accepted"
        );
        let r = partials();
        for msg in 0..MAX_PARTIAL as u64 {
            r.add(peer, 1, &chunk(msg, 0, 2, b"x"), &kept)
                .await
                .unwrap();
        }
        let one_more = r.add(peer, 1, &chunk(99, 0, 2, b"x"), &kept).await;
        assert_eq!(one_more, Err("too many large messages in flight"));
        // A message already in flight still takes its next chunk.
        assert_eq!(
            r.add(peer, 1, &chunk(0, 1, 2, b"y"), &kept).await,
            Ok(Some(b"xy".to_vec()))
        );
    }

    #[tokio::test]
    async fn a_peer_cannot_hold_more_than_its_budget_whatever_its_streams() {
        let (peer, other) = (PeerId::random(), PeerId::random());
        let kept = Mutex::new(Vec::new());
        let r = partials();
        let most = MAX_FRAME.div_ceil(CHUNK) as u32;
        // Two of the largest messages fit (one per stream)...
        r.add(peer, 1, &chunk(1, 0, most, b"x"), &kept)
            .await
            .unwrap();
        r.add(peer, 2, &chunk(1, 0, most, b"x"), &kept)
            .await
            .unwrap();
        // ...a third, on a third stream, is over the peer's budget.
        let third = r.add(peer, 3, &chunk(1, 0, most, b"x"), &kept).await;
        assert_eq!(
            third,
            Err("over the peer's budget of partly received messages")
        );
        assert_eq!(r.dropped(), 1);
        // Another peer is not affected.
        r.add(other, 1, &chunk(1, 0, most, b"x"), &kept)
            .await
            .unwrap();
        assert_eq!(r.bytes(), 3 * MAX_FRAME);
        // Memory was taken for what arrived, not for what was declared.
        let held: usize = lock(&r.state)
            .values()
            .flat_map(|pp| pp.msgs.values())
            .map(|p| p.buf.capacity())
            .sum();
        assert!(held <= 3 * CHUNK, "{held} bytes held for 3 bytes received");
        r.stream_ended(peer, 1);
        r.forget(other);
        assert_eq!(r.bytes(), MAX_FRAME);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_node_budget_waits_then_expiry_frees_it() {
        let limits = RemoteLimits {
            partial_per_node: 3 * CHUNK,
            partial_expiry: Duration::from_secs(30),
            ..RemoteLimits::default()
        };
        let r = Arc::new(Partials::new(limits));
        let kept = Mutex::new(Vec::new());
        let (a, b) = (PeerId::random(), PeerId::random());
        r.add(a, 1, &chunk(1, 0, 2, b"x"), &kept).await.unwrap();
        // b's message does not fit yet: it waits...
        let waiting = {
            let r = Arc::clone(&r);
            tokio::spawn(async move {
                let kept = Mutex::new(Vec::new());
                r.add(b, 1, &chunk(1, 0, 2, b"y"), &kept).await
            })
        };
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!waiting.is_finished(), "admitted over the node's budget");
        // ...until a's stalled message expires.
        r.expire(Instant::now() + Duration::from_secs(30));
        assert_eq!(waiting.await.unwrap(), Ok(None));
        assert_eq!((r.dropped(), r.bytes()), (1, 2 * CHUNK));
        // A first chunk that waits longer than the expiry gives up.
        let late = r.add(a, 2, &chunk(1, 0, 2, b"z"), &kept).await;
        assert_eq!(
            late,
            Err("the node's budget of partly received messages stayed taken")
        );
    }
}
