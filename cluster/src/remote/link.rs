//! The link to one peer: a bounded queue of small frames and a bulk lane
//! of chunks, and the writer task that owns the peer's outgoing stream
//! (small frames first and batched, a chunk in between, a broken stream
//! reopened once). [`Remoting::send`] and [`Remoting::send_as`] are where
//! every frame enters it.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use futures::AsyncWriteExt;
use libp2p::PeerId;
use manta_actors::{ExitReason, WireError};
use tokio::sync::mpsc;

use super::frame::{Encoded, Frame, encode};
use super::{BULK_QUEUE, CHUNK, PEER_QUEUE, PROTOCOL, Remoting, lock};

pub(super) struct Link {
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

impl Remoting {
    /// Queues an encoded frame for `peer`, starting its writer if needed.
    pub(super) fn send(&self, peer: PeerId, frame: &Frame<'_>) -> Result<(), WireError> {
        self.send_as(peer, frame.target(), || encode(frame))
    }

    /// Queues a frame for `peer`, encoded by `encoded` once the peer is
    /// known to be up; `target` is the actor it is for, where ordering
    /// matters.
    pub(super) fn send_as(
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
            // Behind a large message to the same actor: it follows it on the
            // bulk lane and counts as in flight there until written, so a
            // small message sent after it cannot overtake it on the small
            // lane once the large one is out.
            Encoded::Small(bytes) if behind_large => {
                if let Some(t) = &target {
                    *lock(&link.inflight).entry(t.clone()).or_insert(0) += 1;
                }
                match link.bulk.try_send((bytes, target.clone())) {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        if let Some(t) = &target {
                            let mut f = lock(&link.inflight);
                            if let Some(n) = f.get_mut(t) {
                                *n -= 1;
                                if *n == 0 {
                                    f.remove(t);
                                }
                            }
                        }
                        match e {
                            mpsc::error::TrySendError::Full(_) => Err(WireError::Backpressure),
                            mpsc::error::TrySendError::Closed(_) => {
                                Err(WireError::NodeDown(peer.to_string()))
                            }
                        }
                    }
                }
            }
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
}
