//! The reader side: one task per incoming actor stream reads frames,
//! checks them, reassembles large messages from their chunks
//! ([`Reassembly`]) and hands each frame to `dispatch`. A large reply keeps
//! its reassembly buffer ([`ReplyBytes`]), which goes back to the node's
//! few kept buffers once the ask has decoded it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use futures::AsyncReadExt;
use libp2p::PeerId;
use manta_actors::wire::WireBytes;

use super::frame::{CHUNK_VARIANT, ChunkRef, Frame, ReplyBody};
use super::{
    CHUNK, FRAME_VERSION, KEPT_BUFFERS, MAX_FRAME, MAX_PARTIAL, MAX_WIRE_FRAME, RESERVE_LIMIT,
    Remoting, lock,
};

impl Remoting {
    pub(super) async fn read_loop(self, peer: PeerId, mut stream: libp2p::Stream) {
        let mut len_buf = [0u8; 4];
        // One receive buffer, reused (frames are at most MAX_WIRE_FRAME).
        let mut buf = Vec::new();
        let mut partial = Reassembly::default();
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
                let whole = match partial.add(peer, &c, &self.inner.kept) {
                    Ok(Some(whole)) => whole,
                    Ok(None) => continue,
                    Err(what) => {
                        self.bad(peer, what);
                        return;
                    }
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
                        let start = (body.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
                        Some((id, start..start + body.len()))
                    }
                    // Dispatch decodes the message out of the buffer.
                    Ok(frame) => {
                        self.dispatch(peer, &route, frame);
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
        }
    }

    /// Keeps a large message's buffer for the next one (at most
    /// [`KEPT_BUFFERS`]; small or oversized buffers are dropped).
    fn keep(&self, buf: Vec<u8>) {
        keep_in(&self.inner.kept, buf);
    }

    fn bad(&self, peer: PeerId, what: &str) {
        let n = self.inner.bad_frames.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(target: "manta::remote", %peer, total = n, "{what}; closing the stream");
    }
}

/// Large messages being reassembled on one stream, from their chunks.
#[derive(Default)]
struct Reassembly {
    /// Large messages being reassembled: msg -> (count, next index, bytes).
    partial: HashMap<u64, (u32, u32, Vec<u8>)>,
}

impl Reassembly {
    /// Adds chunk `c` from `peer` to its message: the whole message once
    /// its last chunk is in; `None` while chunks are still to come, or for
    /// a chunk of a message that cannot be completed (dropped); or what is
    /// wrong, for a chunk that closes the stream. A new message's buffer is
    /// one of the node's `kept` ones where there is one.
    fn add(
        &mut self,
        peer: PeerId,
        c: &ChunkRef<'_>,
        kept: &Mutex<Vec<Vec<u8>>>,
    ) -> Result<Option<Vec<u8>>, &'static str> {
        if c.index != 0 && !self.partial.contains_key(&c.msg) {
            // The rest of a message whose first chunks went out on
            // a stream that broke (the sender reopened and sent the
            // failed chunk again here): it cannot be completed.
            tracing::debug!(target: "manta::remote", %peer, msg = c.msg, index = c.index, "dropping the tail of a message cut by a broken stream");
            return Ok(None);
        }
        if !self.partial.contains_key(&c.msg) && self.partial.len() >= MAX_PARTIAL {
            return Err("too many large messages in flight");
        }
        if c.count as usize > MAX_FRAME.div_ceil(CHUNK) {
            return Err("message too large");
        }
        let mut entry = match self.partial.entry(c.msg) {
            Entry::Occupied(o) => o,
            Entry::Vacant(v) => {
                // Reserved up front, but never more than RESERVE_LIMIT
                // per message on a peer's word; beyond it the buffer
                // grows as data actually arrives.
                let want = (c.count as usize).saturating_mul(CHUNK);
                let mut whole = lock(kept).pop().unwrap_or_default();
                whole.reserve(want.min(RESERVE_LIMIT));
                v.insert_entry((c.count, 0, whole))
            }
        };
        let (count, next, whole) = entry.get_mut();
        if *count != c.count || *next != c.index || whole.len() + c.data.len() > MAX_FRAME {
            return Err("chunk out of sequence or message too large");
        }
        *next += 1;
        whole.extend_from_slice(c.data);
        if *next != c.count {
            return Ok(None);
        }
        Ok(Some(entry.remove().2))
    }
}

/// A reply's bytes as the waiting ask gets them: `buf[range]`. A large
/// reply arrives as its whole reassembly buffer (no copy of its bytes into
/// a fresh vector), which the ask hands back for the next large message
/// once it has decoded the reply.
pub(super) struct ReplyBytes {
    buf: Vec<u8>,
    range: std::ops::Range<usize>,
    /// Where the buffer goes back once the reply is decoded (large replies).
    pool: Option<Arc<Mutex<Vec<Vec<u8>>>>>,
}

impl ReplyBytes {
    pub(super) fn owned(buf: Vec<u8>) -> Self {
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

    #[test]
    fn chunks_in_order_make_the_whole_message_in_a_kept_buffer() {
        let (peer, mut r) = (PeerId::random(), Reassembly::default());
        let kept = Mutex::new(vec![Vec::with_capacity(2 * CHUNK)]);
        assert_eq!(r.add(peer, &chunk(7, 0, 3, b"ab"), &kept), Ok(None));
        assert!(lock(&kept).is_empty(), "the kept buffer is taken");
        // Another message in between does not disturb the first.
        assert_eq!(r.add(peer, &chunk(8, 0, 2, b"x"), &kept), Ok(None));
        assert_eq!(r.add(peer, &chunk(7, 1, 3, b"cd"), &kept), Ok(None));
        let whole = r.add(peer, &chunk(7, 2, 3, b"e"), &kept).unwrap().unwrap();
        assert_eq!(
            (&whole[..], whole.capacity() >= 2 * CHUNK),
            (&b"abcde"[..], true)
        );
        assert_eq!(
            r.add(peer, &chunk(8, 1, 2, b"y"), &kept),
            Ok(Some(b"xy".to_vec()))
        );
        assert!(r.partial.is_empty());
    }

    #[test]
    fn the_tail_of_a_message_never_started_here_is_dropped() {
        let (peer, mut r) = (PeerId::random(), Reassembly::default());
        let kept = Mutex::new(Vec::new());
        assert_eq!(r.add(peer, &chunk(7, 1, 3, b"cd"), &kept), Ok(None));
        assert_eq!(r.add(peer, &chunk(7, 2, 3, b"e"), &kept), Ok(None));
        assert!(r.partial.is_empty());
    }

    #[test]
    fn a_bad_sequence_or_size_is_an_error() {
        let peer = PeerId::random();
        let kept = Mutex::new(Vec::new());
        let mut r = Reassembly::default();
        r.add(peer, &chunk(7, 0, 3, b"ab"), &kept).unwrap();
        let skipped = r.add(peer, &chunk(7, 2, 3, b"e"), &kept);
        assert_eq!(skipped, Err("chunk out of sequence or message too large"));
        let recounted = r.add(peer, &chunk(7, 1, 4, b"cd"), &kept);
        assert_eq!(recounted, Err("chunk out of sequence or message too large"));
        let most = MAX_FRAME.div_ceil(CHUNK) as u32;
        let huge = r.add(peer, &chunk(8, 0, most + 1, b"x"), &kept);
        assert_eq!(huge, Err("message too large"));
        let mut r = Reassembly::default();
        for msg in 0..MAX_PARTIAL as u64 {
            r.add(peer, &chunk(msg, 0, 2, b"x"), &kept).unwrap();
        }
        let one_more = r.add(peer, &chunk(99, 0, 2, b"x"), &kept);
        assert_eq!(one_more, Err("too many large messages in flight"));
        // A message already in flight still takes its next chunk.
        assert_eq!(
            r.add(peer, &chunk(0, 1, 2, b"y"), &kept),
            Ok(Some(b"xy".to_vec()))
        );
    }
}
