//! The link to one peer: a bounded queue of small frames and a bulk lane
//! of chunks, and the writer task that owns the peer's outgoing stream
//! (small frames first and batched, a chunk in between, a broken stream
//! reopened once). [`Remoting::send`] and [`Remoting::send_as`] are where
//! every frame enters it.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::PeerId;
use manta_actors::{ExitReason, ExitSignal, WireError};
use tokio::sync::mpsc;

use super::frame::{CHUNK_VARIANT, ChunkRef, Encoded, Frame, encode, encode_lazy, records_to_mesh};
use super::lane::{Inflight, LaneBody, LaneLink, LaneMsg, dec};
use super::{ACCEPTED, BULK_QUEUE, CHUNK, PEER_QUEUE, PROTOCOL, Remoting, lock};

/// Waits (ms) before each try to open an actor stream: the first open,
/// and reopening one that broke while its peer stays a member.
const STREAM_RETRIES_MS: [u64; 5] = [0, 0, 20, 100, 400];

/// How long a writer waits for the peer to accept a stream it opened.
const ACCEPT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Tries to open an actor stream that the peer dropped unaccepted, beside
/// the tries of `STREAM_RETRIES_MS` (see `Remoting::open_stream`).
const UNACCEPTED_TRIES: u64 = 32;

pub(super) struct Link {
    tx: mpsc::Sender<Vec<u8>>,
    bulk: mpsc::Sender<(Vec<u8>, Option<String>)>,
    /// Large messages per target actor still in the mesh's chunk queue:
    /// while one is, small messages to the same actor follow it there, so
    /// messages from this node to one actor keep their order.
    inflight: Inflight,
    /// The same for the bulk lane: messages per target actor not yet
    /// acknowledged there.
    lane_inflight: Inflight,
    /// The peer's bulk lane, once a message went on it.
    pub(super) lane: Option<LaneLink>,
    /// Whether a frame went on the mesh stream since the last barrier: a
    /// lane run that starts when none did waits for that barrier only.
    mesh_dirty: bool,
    /// Which writer serves this link (a writer that ends removes only its
    /// own link, never one that replaced it).
    pub(super) writer_id: u64,
}

fn count(map: &Inflight, target: &Option<String>) -> usize {
    target
        .as_ref()
        .map_or(0, |t| lock(map).get(t).copied().unwrap_or(0))
}

fn inc(map: &Inflight, target: &Option<String>) {
    if let Some(t) = target {
        *lock(map).entry(t.clone()).or_insert(0) += 1;
    }
}

/// Appends the reply ids of the requests among `bytes` (frames as on the
/// stream: length, version, frame), small ones and the first chunk of a
/// large one (whose piece starts with the frame). Reads only a request's
/// variant and ids, not the rest of it.
fn request_ids(mut bytes: &[u8], ids: &mut impl Extend<u64>) {
    while let Some(len) = bytes.get(..4) {
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let Some(mut frame) = bytes.get(5..4 + len) else {
            break;
        };
        if frame.first() == Some(&CHUNK_VARIANT) {
            frame = match postcard::from_bytes::<ChunkRef<'_>>(&frame[1..]) {
                Ok(c) if c.index == 0 => c.data,
                _ => &[],
            };
        }
        // `Frame::Request` is variant 1: its reply ids come first.
        if frame.first() == Some(&1) {
            if let Ok(((_, replies), _)) = postcard::take_from_bytes::<(u32, Vec<u64>)>(frame) {
                ids.extend(replies);
            }
        }
        bytes = &bytes[4 + len..];
    }
}

/// Reply ids of asks written on one actor stream that may still be
/// waiting, at most this many (the oldest are forgotten).
const WRITTEN_ASKS: usize = 4096;

/// Remembers the asks in `out`, just written on the current stream.
fn note_written(written: &mut std::collections::VecDeque<u64>, out: &[u8]) {
    request_ids(out, written);
    if written.len() > WRITTEN_ASKS {
        written.drain(..written.len() - WRITTEN_ASKS);
    }
}

impl Link {
    /// Queues a mesh frame in the chunk queue, behind the large messages
    /// there, counted in flight for `target` until written.
    pub(super) fn queue_mesh_bulk(
        &mut self,
        encoded: Result<Encoded, WireError>,
        target: Option<String>,
    ) -> Result<(), WireError> {
        let pieces = match encoded? {
            Encoded::Small(b) => vec![b],
            Encoded::Chunks(c) => c,
            Encoded::Records(_) | Encoded::Lazy(_) => {
                return Err(WireError::Encode(manta_actors::CodecError::new(
                    "frame",
                    "lane records on the mesh",
                )));
            }
        };
        if self.bulk.is_closed() {
            return Err(WireError::NodeDown("the peer's link is closed".to_owned()));
        }
        if self.bulk.capacity() < pieces.len() {
            return Err(WireError::Backpressure);
        }
        inc(&self.inflight, &target);
        self.mesh_dirty = true;
        let last = pieces.len() - 1;
        // Capacity was checked under the links lock: these succeed.
        pieces
            .into_iter()
            .enumerate()
            .try_for_each(|(i, c)| {
                let done = if i == last { target.clone() } else { None };
                self.bulk.try_send((c, done))
            })
            .map_err(|_| WireError::Backpressure)
    }
}

impl Remoting {
    /// Queues an encoded frame for `peer`, starting its writer if needed.
    pub(super) fn send(&self, peer: PeerId, frame: &Frame<'_>) -> Result<(), WireError> {
        self.send_as(peer, frame.target(), |lane| encode(frame, lane))
    }

    /// Queues a frame for `peer`, encoded by `encoded` once the peer is
    /// known to be up (given the size from which a frame goes on the
    /// peer's bulk lane, if it has one now); `target` is the actor it is
    /// for, where ordering matters.
    pub(super) fn send_as(
        &self,
        peer: PeerId,
        target: Option<&str>,
        encoded: impl FnOnce(Option<usize>) -> Result<Encoded, WireError>,
    ) -> Result<(), WireError> {
        if let Some(r) = self.node_signal(peer).reason() {
            return Err(match r {
                ExitReason::NodeDown(n) => WireError::NodeDown(n),
                other => WireError::ActorGone(Some(other)),
            });
        }
        let threshold = self.inner.bulk.get().and_then(|b| b.threshold_for(peer));
        let encoded = encoded(threshold)?;
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
                let inflight: Inflight = Arc::new(Mutex::new(HashMap::new()));
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
                    lane_inflight: Arc::new(Mutex::new(HashMap::new())),
                    lane: None,
                    mesh_dirty: true,
                    writer_id,
                })
            }
        };
        let target = target.map(str::to_owned);
        let on_lane = count(&link.lane_inflight, &target);
        let on_mesh_bulk = count(&link.inflight, &target);
        let result = match encoded {
            // Behind messages to the same actor on the lane: it follows
            // them there (whatever its size).
            e if on_lane > 0 && link.lane.is_some() => {
                self.queue_lane(peer, link, Self::to_records(e), target, false)
            }
            // A large message for the lane, unless the actor has messages
            // in the mesh's chunk queue (it goes behind them instead).
            Encoded::Records(records) if threshold.is_some() && on_mesh_bulk == 0 => {
                self.queue_lane(peer, link, LaneBody::Records(records), target, true)
            }
            Encoded::Lazy(src) if threshold.is_some() && on_mesh_bulk == 0 => {
                self.queue_lane(peer, link, LaneBody::Lazy(src), target, true)
            }
            Encoded::Records(records) => link.queue_mesh_bulk(records_to_mesh(&records), target),
            Encoded::Lazy(src) => link.queue_mesh_bulk(encode_lazy(&*src, None), target),
            // Behind a large message to the same actor: it follows it on the
            // chunk queue and counts as in flight there until written, so a
            // small message sent after it cannot overtake it on the small
            // lane once the large one is out.
            Encoded::Small(bytes) if on_mesh_bulk > 0 => {
                link.queue_mesh_bulk(Ok(Encoded::Small(bytes)), target)
            }
            Encoded::Small(bytes) => match link.tx.try_send(bytes) {
                Ok(()) => {
                    link.mesh_dirty = true;
                    Ok(())
                }
                Err(mpsc::error::TrySendError::Full(_)) => Err(WireError::Backpressure),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    Err(WireError::NodeDown(peer.to_string()))
                }
            },
            Encoded::Chunks(chunks) => link.queue_mesh_bulk(Ok(Encoded::Chunks(chunks)), target),
        };
        let result = result.map_err(|e| match e {
            WireError::NodeDown(_) => WireError::NodeDown(peer.to_string()),
            other => other,
        });
        if matches!(result, Err(WireError::NodeDown(_))) {
            links.remove(&peer);
        }
        result
    }

    /// Queues a lane message for `peer` (starting its lane if needed);
    /// `first` when it may start a lane run for its actor: it then waits,
    /// on the receiver, for a barrier written on the mesh stream now.
    fn queue_lane(
        &self,
        peer: PeerId,
        link: &mut Link,
        body: LaneBody,
        target: Option<String>,
        first: bool,
    ) -> Result<(), WireError> {
        let max = self
            .inner
            .bulk
            .get()
            .map_or(usize::MAX, |b| b.settings.max_inflight);
        if link.lane.is_none() {
            // Starting the lane needs the runtime; from a plain thread the
            // message goes over the mesh instead.
            let Ok(rt) = tokio::runtime::Handle::try_current() else {
                return link.queue_mesh_bulk(body.to_mesh(), target);
            };
            let (tx, rx) = mpsc::unbounded_channel();
            let bytes = Arc::new(AtomicUsize::new(0));
            // A session per lane link: its messages are numbered from 1.
            let session = rand::random();
            rt.spawn(self.clone().lane_loop(
                peer,
                session,
                rx,
                Arc::clone(&bytes),
                Arc::clone(&link.lane_inflight),
                link.writer_id,
            ));
            link.lane = Some(LaneLink {
                tx,
                bytes,
                session,
                next_seq: 1,
                last_barrier: 0,
            });
            // The new session's receiver knows no earlier barrier.
            link.mesh_dirty = true;
        }
        let Some(lane) = link.lane.as_mut() else {
            return Err(WireError::NodeDown(peer.to_string()));
        };
        let size = body.bytes();
        let used = lane.bytes.load(Ordering::Relaxed);
        if used > 0 && used + size > max {
            return Err(WireError::Backpressure);
        }
        let seq = lane.next_seq;
        let mut barrier = 0;
        if first && target.is_some() && count(&link.lane_inflight, &target) == 0 {
            if link.mesh_dirty {
                // Every frame queued before it on the mesh stream is
                // handled before it.
                let frame = self.barrier_frame(lane.session, seq)?;
                link.tx.try_send(frame).map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => WireError::Backpressure,
                    mpsc::error::TrySendError::Closed(_) => WireError::NodeDown(peer.to_string()),
                })?;
                lane.last_barrier = seq;
                link.mesh_dirty = false;
            }
            // Nothing went on the mesh since the last barrier: waiting for
            // it covers every earlier frame.
            barrier = lane.last_barrier;
        }
        lane.next_seq += 1;
        let msg = LaneMsg::new(seq, body, target.clone(), barrier);
        lane.bytes.fetch_add(msg.bytes, Ordering::Relaxed);
        inc(&link.lane_inflight, &target);
        if lane.tx.send(msg).is_err() {
            // The lane task ended (it fell back to the mesh).
            lane.bytes.fetch_sub(size, Ordering::Relaxed);
            dec(&link.lane_inflight, &target);
            link.lane = None;
            return Err(WireError::Backpressure);
        }
        Ok(())
    }

    async fn write_loop(
        self,
        peer: PeerId,
        mut control: libp2p_stream::Control,
        mut rx: mpsc::Receiver<Vec<u8>>,
        mut bulk: mpsc::Receiver<(Vec<u8>, Option<String>)>,
        inflight: Inflight,
        writer_id: u64,
    ) {
        // The incarnation of the peer this writer serves: once it is down,
        // nothing of this writer goes to a later one.
        let signal = self.node_signal(peer);
        let mut stream = match self.open_stream(peer, &mut control, &signal, &[], 0).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(target: "manta::remote", %peer, error = %e, "cannot open actor stream");
                self.remove_link(peer, writer_id);
                self.fail_queued(peer, None, &mut rx, &mut bulk);
                return;
            }
        };
        let mut batch = Vec::with_capacity(64 * 1024);
        // Asks written on the current stream (see `lost_with_stream`).
        let mut written = std::collections::VecDeque::new();
        // The peer writes nothing after its acceptance byte: a read that
        // ends is the stream ending under this writer (reset by the peer,
        // or its connection closed), seen at once rather than at the next
        // write.
        let mut probe = [0u8; 1];
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
                r = stream.read(&mut probe) => {
                    let e = match r {
                        Ok(0) => std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                        Ok(_) => std::io::Error::other("the peer wrote on a one-way actor stream"),
                        Err(e) => e,
                    };
                    // A node that leaves ends its streams too: not a
                    // warning by itself (asks lost with it warn below).
                    tracing::info!(target: "manta::remote", %peer, error = %e, "actor stream ended by the peer; opening a new one");
                    self.lost_with_stream(peer, &mut written, &[]);
                    match self.open_stream(peer, &mut control, &signal, &[], 1).await {
                        Ok(fresh) => {
                            stream = fresh;
                            self.note_reopened();
                            continue;
                        }
                        Err(e) => {
                            tracing::info!(target: "manta::remote", %peer, error = %e, "actor stream not reopened; the link closes (the next message opens a new one)");
                            self.remove_link(peer, writer_id);
                            self.fail_queued(peer, None, &mut rx, &mut bulk);
                            return;
                        }
                    }
                }
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
                self.lost_with_stream(peer, &mut written, out);
                match self.open_stream(peer, &mut control, &signal, out, 1).await {
                    Ok(fresh) => stream = fresh,
                    Err(e) => {
                        tracing::warn!(target: "manta::remote", %peer, error = %e, "actor stream lost");
                        self.remove_link(peer, writer_id);
                        // Nothing of it or of what is queued behind it goes
                        // out: its asks fail now instead of at their timeout.
                        let unsent = out.to_vec();
                        self.fail_queued(peer, Some(&unsent), &mut rx, &mut bulk);
                        return;
                    }
                }
                self.note_reopened();
            }
            note_written(&mut written, out);
            dec(&inflight, &done);
        }
        self.remove_link(peer, writer_id);
    }

    /// Counts a stream replaced under a live peer (and wakes
    /// `wait_counters`).
    fn note_reopened(&self) {
        self.inner.reopened.fetch_add(1, Ordering::Relaxed);
        self.inner.partials.moved.notify_waiters();
    }

    /// Opens an actor stream to `peer` that the peer accepted, and writes
    /// `out` on it, in a few tries a little apart while the peer's node,
    /// the incarnation `signal` belongs to, is up (the first try waits
    /// `STREAM_RETRIES_MS[first]`: a stream opened at once can land on a
    /// connection that is closing).
    ///
    /// Nothing is written before the peer's acceptance byte: libp2p-stream
    /// drops an inbound stream that arrives while its accept queue (one
    /// slot) is full, as when several nodes open streams to one node at
    /// once. Such a stream is reset before any byte of it was read, so
    /// trying again loses and repeats nothing; those tries (up to
    /// `UNACCEPTED_TRIES`, a millisecond more apart each time) do not
    /// count against the others.
    async fn open_stream(
        &self,
        peer: PeerId,
        control: &mut libp2p_stream::Control,
        signal: &ExitSignal,
        out: &[u8],
        first: usize,
    ) -> std::io::Result<libp2p::Stream> {
        let mut last = std::io::Error::other("no try");
        let mut step = first;
        let mut unaccepted = 0u64;
        let mut was_unaccepted = false;
        let mut tries = 0u64;
        loop {
            let wait_ms = if was_unaccepted {
                unaccepted
            } else {
                let Some(w) = STREAM_RETRIES_MS.get(step) else {
                    break;
                };
                step += 1;
                *w
            };
            if tries > 0 {
                tracing::info!(target: "manta::remote", %peer, error = %last, "actor stream not opened; trying again");
            }
            if wait_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
            }
            if (tries > 0 || first > 0) && signal.reason().is_some() {
                last = std::io::Error::other("its node went down");
                break;
            }
            tries += 1;
            was_unaccepted = false;
            let mut stream = match control.open_stream(peer, PROTOCOL).await {
                Ok(s) => s,
                Err(e) => {
                    last = std::io::Error::other(e);
                    continue;
                }
            };
            let mut ack = [0u8; 1];
            match tokio::time::timeout(ACCEPT_WAIT, stream.read(&mut ack)).await {
                Ok(Ok(1)) if ack[0] == ACCEPTED => {}
                Ok(Ok(1)) => {
                    last = std::io::Error::other(format!(
                        "the peer answered {:#04x} where an actor stream's acceptance byte goes",
                        ack[0]
                    ));
                    continue;
                }
                Ok(Ok(_)) => {
                    last = std::io::Error::other("the peer dropped the stream before accepting it");
                    unaccepted += 1;
                    was_unaccepted = unaccepted <= UNACCEPTED_TRIES;
                    continue;
                }
                Ok(Err(e)) => {
                    last = e;
                    continue;
                }
                Err(_) => {
                    last = std::io::Error::other(format!(
                        "the peer did not accept the stream within {ACCEPT_WAIT:?}"
                    ));
                    continue;
                }
            }
            if tries > 1 {
                tracing::info!(target: "manta::remote", %peer, tries, "actor stream accepted");
            }
            if out.is_empty() {
                return Ok(stream);
            }
            match self.write_out(&mut stream, out).await {
                Ok(()) => return Ok(stream),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The stream to `peer` broke while writing `out` (which is written
    /// again): the asks written on it before and still unanswered fail
    /// with `NodeDown`. A write that returned `Ok` only handed its bytes to
    /// the multiplexer; if the connection closed before they left, nothing
    /// else would ever answer them (they may also have been handled: the
    /// same uncertainty as a node going down).
    fn lost_with_stream(
        &self,
        peer: PeerId,
        written: &mut std::collections::VecDeque<u64>,
        out: &[u8],
    ) {
        let mut again = Vec::new();
        request_ids(out, &mut again);
        let waiting: Vec<u64> = {
            let pending = lock(&self.inner.pending);
            written
                .drain(..)
                .filter(|id| !again.contains(id) && pending.contains_key(id))
                .collect()
        };
        if waiting.is_empty() {
            return;
        }
        tracing::warn!(target: "manta::remote", %peer, asks = waiting.len(), "asks failed: written on an actor stream that broke before they were answered");
        self.fail_pending(
            waiting,
            &format!("{peer} (the actor stream that carried the request broke before the answer came; it may or may not have been handled)"),
        );
    }

    /// Fails the asks carried by frames that will not be written to
    /// `peer`: `out` (frames as on the stream: length, version, frame) and
    /// every frame still queued in `rx` and `bulk`, which are closed.
    fn fail_queued(
        &self,
        peer: PeerId,
        out: Option<&[u8]>,
        rx: &mut mpsc::Receiver<Vec<u8>>,
        bulk: &mut mpsc::Receiver<(Vec<u8>, Option<String>)>,
    ) {
        rx.close();
        bulk.close();
        let mut ids = Vec::new();
        if let Some(out) = out {
            request_ids(out, &mut ids);
        }
        while let Ok(f) = rx.try_recv() {
            request_ids(&f, &mut ids);
        }
        // Large asks not started yet: their first chunk is queued.
        while let Ok((c, _)) = bulk.try_recv() {
            request_ids(&c, &mut ids);
        }
        if ids.is_empty() {
            return;
        }
        tracing::warn!(target: "manta::remote", %peer, asks = ids.len(), "asks failed: their frames could not be written");
        self.fail_pending(
            ids,
            &format!("{peer} (the actor stream to it was lost before the request was written)"),
        );
    }

    /// Answers the pending asks `ids` (those still waiting) with
    /// `NodeDown(why)`.
    pub(super) fn fail_pending(&self, ids: impl IntoIterator<Item = u64>, why: &str) {
        for id in ids {
            let waiting = lock(&self.inner.pending).remove(&id);
            if let Some((_, w)) = waiting {
                w.deliver(Err(WireError::NodeDown(why.to_owned())));
            }
        }
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
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    fn small(f: &Frame<'_>) -> Vec<u8> {
        match encode(f, None) {
            Ok(Encoded::Small(b)) => b,
            _ => panic!("not a small frame"),
        }
    }

    #[test]
    fn request_ids_are_read_from_requests_only_as_a_full_decode_reads_them() {
        let mut out = small(&Frame::Tell {
            to: Cow::Borrowed("a"),
            ty: Cow::Borrowed("t"),
            body: Cow::Borrowed(&[1, 1, 1]),
        });
        out.extend(small(&Frame::Request {
            replies: vec![7, u64::MAX, 300],
            to: Cow::Borrowed("b"),
            ty: Cow::Borrowed("t"),
            body: Cow::Borrowed(&[2; 200]),
        }));
        out.extend(small(&Frame::reply(9, Ok(vec![1]))));
        out.extend(small(&Frame::Request {
            replies: vec![1],
            to: Cow::Borrowed("c"),
            ty: Cow::Borrowed("t"),
            body: Cow::Borrowed(&[]),
        }));
        let mut ids = Vec::new();
        request_ids(&out, &mut ids);
        assert_eq!(ids, vec![7, u64::MAX, 300, 1]);
        // A torn last frame is not read.
        let mut ids = Vec::new();
        request_ids(&out[..out.len() - 3], &mut ids);
        assert_eq!(ids, vec![7, u64::MAX, 300]);
    }

    fn chunked(f: &Frame<'_>) -> Vec<Vec<u8>> {
        match encode(f, None) {
            Ok(Encoded::Chunks(c)) => c,
            _ => panic!("not chunks"),
        }
    }

    #[test]
    fn a_large_requests_ids_are_read_from_its_first_chunk_only() {
        let body = vec![3u8; 3 * CHUNK];
        let chunks = chunked(&Frame::Request {
            replies: vec![42, 43],
            to: Cow::Borrowed("big"),
            ty: Cow::Borrowed("t"),
            body: Cow::Borrowed(&body),
        });
        assert!(chunks.len() > 2);
        let mut ids = Vec::new();
        request_ids(&chunks[0], &mut ids);
        assert_eq!(ids, vec![42, 43]);
        // Later chunks name no request (their piece is the frame's middle).
        for c in &chunks[1..] {
            request_ids(c, &mut ids);
        }
        assert_eq!(ids, vec![42, 43]);
        // A large tell's first chunk names none either.
        let tell = chunked(&Frame::Tell {
            to: Cow::Borrowed("big"),
            ty: Cow::Borrowed("t"),
            body: Cow::Borrowed(&body),
        });
        request_ids(&tell[0], &mut ids);
        assert_eq!(ids, vec![42, 43]);
    }

    #[test]
    fn the_asks_remembered_per_stream_are_bounded() {
        let mut written = std::collections::VecDeque::new();
        let frame = small(&Frame::Request {
            replies: (0..WRITTEN_ASKS as u64 + 10).collect(),
            to: Cow::Borrowed("b"),
            ty: Cow::Borrowed("t"),
            body: Cow::Borrowed(&[]),
        });
        note_written(&mut written, &frame);
        assert_eq!(written.len(), WRITTEN_ASKS);
        assert_eq!(written.front(), Some(&10), "the oldest are forgotten");
    }
}
