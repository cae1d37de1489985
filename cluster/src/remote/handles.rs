//! Handles to remote actors, where a send starts: [`RemoteRef`] (typed;
//! a tell is measured, its reply handles registered, then encoded straight
//! into its frame) and `RemoteAny` (erased, message type known by name),
//! both over an [`Addr`]: a peer and an actor name.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use libp2p::PeerId;
use manta_actors::wire::ReplyRegistry;
use manta_actors::{
    ActorId, CodecError, ExitReason, Monitor, RemoteActor, RemoteMessage, SendError, SendFailure,
    WireError, message_type_name,
};

use super::frame::{
    Encoded, Frame, Inline, LAZY_MIN, LazyOutgoing, Outgoing, encode_lazy, few_pieces, pieces,
};
use super::{MAX_FRAME, Remoting, lock};

/// A named actor on another node.
pub struct RemoteRef<M> {
    pub(super) addr: Addr,
    pub(super) replies: Arc<dyn ReplyRegistry>,
    pub(super) _m: PhantomData<fn(M)>,
}

impl<M: RemoteMessage> RemoteActor<M> for RemoteRef<M> {
    fn id(&self) -> ActorId {
        self.addr.id()
    }

    fn tell(&self, msg: M) -> Result<(), SendError<M>> {
        let addr = &self.addr;
        // The size pass registers the reply handles the message carries
        // (under this peer); the write pass writes the same ids.
        let (measured, replies) =
            manta_actors::wire::encode_with(Arc::clone(&self.replies), || Inline::new(&msg));
        let sent = match measured.map_err(|e| WireError::Encode(CodecError::new(M::NAME, e))) {
            Err(e) => Err((e, msg)),
            Ok(body) => {
                let (len, to, ty) = (body.len, addr.name.as_str(), message_type_name::<M>());
                let frame = if replies.is_empty() {
                    Outgoing::Tell { to, ty, body }
                } else {
                    Outgoing::Request {
                        replies: &replies,
                        to,
                        ty,
                        body,
                    }
                };
                match frame.frame_len() {
                    Err(e) => Err((e, msg)),
                    // Large (within the limit: the whole encoding says
                    // what is over it) and written in few pieces: the lane
                    // may produce it as it writes it.
                    Ok(size)
                        if (LAZY_MIN..=MAX_FRAME).contains(&size)
                            && few_pieces(|out| pieces(&frame, out)) =>
                    {
                        addr.send_lazy(msg, len, size, &replies)
                    }
                    Ok(_) => addr
                        .remoting
                        .send_as(addr.peer, Some(to), |lane| frame.encode(lane))
                        .map_err(|e| (e, msg)),
                }
            }
        };
        sent.map_err(|(e, msg)| {
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

/// A remote actor whose message type is known only by name.
pub(super) struct RemoteAny {
    pub(super) addr: Addr,
    pub(super) ty: &'static str,
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

/// The longest message type name taken from the wire.
pub(super) const MAX_TYPE_NAME: usize = 256;
/// The most message type names learnt from the wire that a node keeps.
pub(super) const MAX_TYPE_NAMES: usize = 4096;

/// Interns message type names learnt from the wire (a small, finite set) so
/// that erased handles can report them as `&'static str`. `None` for a name
/// longer than [`MAX_TYPE_NAME`] or one past [`MAX_TYPE_NAMES`]: what peers
/// can make a node keep forever is bounded.
pub(super) fn intern(ty: &str) -> Option<&'static str> {
    static NAMES: std::sync::LazyLock<Mutex<std::collections::HashSet<&'static str>>> =
        std::sync::LazyLock::new(|| Mutex::new(std::collections::HashSet::new()));
    let mut names = lock(&NAMES);
    if let Some(n) = names.get(ty) {
        return Some(n);
    }
    if ty.len() > MAX_TYPE_NAME || names.len() >= MAX_TYPE_NAMES {
        return None;
    }
    let leaked: &'static str = Box::leak(ty.to_owned().into_boxed_str());
    names.insert(leaked);
    Some(leaked)
}

/// Where a named remote actor lives: what every remote handle shares.
pub(super) struct Addr {
    remoting: Remoting,
    peer: PeerId,
    name: String,
}

impl Addr {
    /// Sends `msg` (its encoding `len` bytes, its frame `size`) as a
    /// [`LazyOutgoing`] if it goes on the peer's lane, encoded whole
    /// otherwise; hands the message back if the send fails.
    fn send_lazy<M: RemoteMessage>(
        &self,
        msg: M,
        len: usize,
        size: usize,
        replies: &[u64],
    ) -> Result<(), (WireError, M)> {
        let cell = Arc::new(Mutex::new(Some(msg)));
        let src = LazyOutgoing {
            to: self.name.clone(),
            ty: message_type_name::<M>(),
            replies: replies.to_vec(),
            msg: Arc::clone(&cell),
            len,
            frame_len: size,
        };
        let sent = self
            .remoting
            .send_as(self.peer, Some(&self.name), |lane| match lane {
                Some(threshold) if size >= threshold => Ok(Encoded::Lazy(Box::new(src))),
                _ => encode_lazy(&src, lane),
            });
        sent.map_err(|e| {
            // Not queued: the lane never saw the message (or dropped it
            // unread), so it is still in the cell.
            let msg = lock(&cell).take();
            match msg {
                Some(msg) => (e, msg),
                // The cell is filled above and only emptied here.
                None => unreachable!("a lazily sent message was taken from its cell twice"),
            }
        })
    }

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

impl Remoting {
    pub(super) fn addr(&self, peer: PeerId, name: &str) -> Addr {
        Addr {
            remoting: self.clone(),
            peer,
            name: name.to_owned(),
        }
    }
}
