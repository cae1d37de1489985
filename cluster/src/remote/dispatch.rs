//! What a received frame does: a tell or request delivered to a local
//! actor, an answer delivered to the ask waiting for it (only from the node
//! the request went to), a spawn, stop, kill or watch carried out here.
//! Also both ends of reply routing: [`PeerReplies`] registers the reply
//! handles a request to a peer carries, [`PeerRoute`] sends their answers
//! back to the peer that asked.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use libp2p::PeerId;
use manta_actors::wire::{EncodeWire, PendingReply, ReplyRegistry, ReplyRoute, WireBytes};
use manta_actors::{CodecError, ExitReason, SpawnError, WireError};

use super::frame::{
    Encoded, Frame, LAZY_MIN, LazyFrame, LazyReply, encode_lazy, encode_reply_value, few_pieces,
};
use super::reader::ReplyBytes;
use super::{MAX_SPAWNS_PER_PEER, Pending, Remoting, SWEEP_MIN, lock};

impl Remoting {
    /// Handles one frame from `peer`; `route` is the way back to it for the
    /// reply handles its messages carry (one per stream, not per message).
    pub(super) fn dispatch(&self, peer: PeerId, route: &Arc<dyn ReplyRoute>, frame: Frame<'_>) {
        match frame {
            Frame::Tell { to, ty, body } => {
                if let Err(e) = self
                    .target(&to, &ty)
                    .and_then(|h| h.tell_wire(&body, route))
                {
                    if matches!(e, WireError::Backpressure) {
                        let n = self.inner.refused_tells.fetch_add(1, Ordering::Relaxed) + 1;
                        if n <= 5 || n % 1000 == 0 {
                            tracing::warn!(target: "manta::remote", %peer, %to, total = n, "remote tell refused: the actor's inbox is full");
                        }
                    } else {
                        tracing::debug!(target: "manta::remote", %peer, %to, error = %e, "remote tell dropped");
                    }
                }
            }
            Frame::Request {
                replies,
                to,
                ty,
                body,
            } => {
                let refused = match self.target(&to, &ty) {
                    Err(e) => Some(e),
                    // Refused before decoding (undecodable, or a name whose
                    // handle takes no bytes, e.g. a supervisor's): nobody
                    // else will answer. Once the message decoded, its reply
                    // handles answer for themselves (also when the actor is
                    // gone).
                    // So is a message over the actor's inbox budget (checked
                    // before decoding).
                    Ok(h) => match h.tell_wire(&body, route) {
                        Err(
                            e @ (WireError::Decode(_)
                            | WireError::NotAddressable
                            | WireError::Backpressure),
                        ) => Some(e),
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
                {
                    let mut serving = lock(&self.inner.serving);
                    let s = serving.entry(peer).or_default();
                    if s.spawns >= MAX_SPAWNS_PER_PEER {
                        drop(serving);
                        tracing::warn!(target: "manta::remote", %peer, %kind, "spawn refused: {MAX_SPAWNS_PER_PEER} of this node's spawns already running");
                        let refused: Result<Vec<u8>, WireError> = Err(WireError::Backpressure);
                        let _ = self.send(peer, &Frame::reply(id, refused));
                        return;
                    }
                    s.spawns += 1;
                }
                let me = self.clone();
                tokio::spawn(async move {
                    let result = me.spawn_here(&kind, &args_json, &name, &message).await;
                    if let Some(s) = lock(&me.inner.serving).get_mut(&peer) {
                        s.spawns = s.spawns.saturating_sub(1);
                    }
                    if let Err(e) = me.send(peer, &Frame::reply(id, result)) {
                        tracing::debug!(target: "manta::remote", %peer, error = %e, "spawn reply not sent");
                    }
                });
            }
            Frame::Watch { to } => self.serve_watch(peer, to),
            Frame::LaneOpen { id, session } => self.grant_lane(peer, id, session),
            Frame::Barrier { session, seq } => {
                if let Some(b) = self.inner.bulk.get() {
                    b.barrier(peer, session, seq);
                }
            }
            Frame::Exited { to, reason } => {
                if let Some(s) = lock(&self.inner.watched).remove(&(peer, to)) {
                    s.set(reason);
                }
            }
        }
    }

    /// Tells `peer` when the actor `to` exits. One task per (peer, actor),
    /// however many times it asks; none for an actor that is not there
    /// (answered at once). So what a peer can make this node run is
    /// bounded by the actors it has.
    fn serve_watch(&self, peer: PeerId, to: String) {
        let Some(target) = self.inner.system.lookup_any(&to) else {
            let reason = ExitReason::Failed(format!("no actor named `{to}`"));
            let _ = self.send(peer, &Frame::Exited { to, reason });
            return;
        };
        let mut serving = lock(&self.inner.serving);
        let s = serving.entry(peer).or_default();
        if s.watches.contains_key(&to) {
            return;
        }
        let me = self.clone();
        let name = to.clone();
        let task = tokio::spawn(async move {
            let reason = target.monitor().wait().await;
            if let Some(s) = lock(&me.inner.serving).get_mut(&peer) {
                s.watches.remove(&name);
            }
            me.inner.partials.moved.notify_waiters();
            let _ = me.send(peer, &Frame::Exited { to: name, reason });
        });
        s.watches.insert(to, task.abort_handle());
        self.inner.partials.moved.notify_waiters();
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
        // A kind whose actors take a local-only message type is not spawned
        // for another node: it could never address the actor.
        if system.kinds().is_remote(kind) == Some(false) {
            return Err(WireError::Spawn(Box::new(SpawnError::LocalOnly {
                kind: kind.to_owned(),
            })));
        }
        let args: manta_actors::ArgsValue = serde_json::from_str(args_json)
            .map_err(|e| WireError::Decode(CodecError::new("spawn arguments (JSON)", e)))?;
        let h = system
            .kinds()
            .spawn(system, kind, args, Some(name.to_owned()))
            .await
            .map_err(|e| WireError::Spawn(Box::new(e)))?;
        tracing::info!(target: "manta::remote", %kind, %name, actor = %h.id(), "spawned for a remote node");
        Ok(h.message_type().as_bytes().to_vec())
    }

    /// Delivers the answer to request `id` — only if `peer` is the node the
    /// request went to: another member cannot answer or fail it.
    pub(super) fn answer(
        &self,
        peer: PeerId,
        id: u64,
        answer: Result<Box<dyn WireBytes>, WireError>,
    ) {
        let waiting = {
            let mut p = lock(&self.inner.pending);
            match p.get(&id) {
                Some((to, _)) if *to == peer => p.remove(&id),
                Some(_) => {
                    drop(p);
                    self.inner.forged_replies.fetch_add(1, Ordering::Relaxed);
                    self.inner.partials.moved.notify_waiters();
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

    /// Keeps `pending` for an answer from `peer`; returns its id. Entries
    /// whose asker gave up are swept out as the table grows, so a peer that
    /// never answers cannot grow it without bound.
    pub(super) fn register(&self, peer: PeerId, pending: Pending) -> u64 {
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

    /// The route back to `peer` for the reply handles of its requests.
    pub(super) fn route(&self, peer: PeerId) -> Arc<dyn ReplyRoute> {
        Arc::new(PeerRoute {
            remoting: self.clone(),
            peer,
        })
    }
}

/// Registers the reply handles of requests to one peer: only that peer may
/// answer them.
pub(super) struct PeerReplies {
    pub(super) remoting: Remoting,
    pub(super) peer: PeerId,
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
                    r.send_as(peer, None, |lane| match lane {
                        // Large and written in few pieces: the lane may
                        // produce it as it writes it.
                        Some(threshold) if n >= LAZY_MIN && few_pieces(|out| v.encode_to(out)) => {
                            let src = LazyReply::new(id, v, n)?;
                            if src.frame_len() >= threshold {
                                Ok(Encoded::Lazy(Box::new(src)))
                            } else {
                                encode_lazy(&src, lane)
                            }
                        }
                        _ => encode_reply_value(id, &*v, lane),
                    })
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
