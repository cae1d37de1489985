//! Handles: the one way to address an actor, wherever it runs.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorCell, ActorRef, MessagingErr};

use crate::error::{AskError, CodecError, SendError, SendFailure, WireError};
use crate::exit::{ExitReason, ExitSignal, Monitor};
use crate::message::{Message, message_type_name};
use crate::reply::{Answer, ReplyRoute, ReplyTo};

/// Identifies an actor: a process-local id, or a node and the name the
/// actor is registered under there.
///
/// A remote handle addresses its actor by name (as Erlang's `{Name, Node}`
/// does), so that name, with the node, is its identity: two handles to
/// distinct remote actors never compare equal, and two handles to the same
/// name on the same node always do.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActorId {
    /// An actor in this process.
    Local(u64),
    /// An actor on another node.
    Remote {
        /// The node's id.
        node: String,
        /// The name the actor is registered under on that node.
        name: String,
    },
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActorId::Local(pid) => write!(f, "<{pid}>"),
            ActorId::Remote { node, name } => write!(f, "<{node}/{name}>"),
        }
    }
}

/// The envelope Manta puts around a user message on ractor's mailbox; a
/// message that came from another node carries its share of the actor's
/// budget for such messages, given back when the actor takes it.
pub(crate) struct Envelope<M: Message>(pub(crate) M, pub(crate) Option<Credit>);

/// Bytes of messages from other nodes that one actor may have waiting in
/// its mailbox by default (their encoded size plus a fixed overhead each;
/// see [`ActorSystem::set_remote_inbox_limit`]). Past it a remote tell is
/// refused with backpressure: a peer cannot grow a slow actor's mailbox
/// without bound. Four 40 MB parameter pushes fit.
///
/// [`ActorSystem::set_remote_inbox_limit`]: crate::ActorSystem::set_remote_inbox_limit
pub const REMOTE_MAILBOX_BYTES: usize = 160 * 1024 * 1024;
/// What one queued message counts besides its encoded bytes.
const REMOTE_MESSAGE_OVERHEAD: usize = 128;

/// An actor's budget for messages from other nodes, shared by its handles.
#[derive(Debug)]
pub(crate) struct Inbox {
    bytes: std::sync::atomic::AtomicUsize,
    limit: usize,
}

impl Inbox {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            bytes: std::sync::atomic::AtomicUsize::new(0),
            limit,
        }
    }
}

/// One queued remote message's share of its actor's [`Inbox`].
pub(crate) struct Credit {
    inbox: Arc<Inbox>,
    bytes: usize,
}

impl Credit {
    /// Takes `bytes` of `inbox`, or `None` when that would pass its limit.
    fn take(inbox: &Arc<Inbox>, bytes: usize) -> Option<Credit> {
        use std::sync::atomic::Ordering;
        inbox
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                let after = held.checked_add(bytes)?;
                // An empty inbox takes any one message: a limit below the
                // largest message still lets it through, one at a time.
                (held == 0 || after <= inbox.limit).then_some(after)
            })
            .ok()?;
        Some(Credit {
            inbox: Arc::clone(inbox),
            bytes,
        })
    }
}

impl Drop for Credit {
    fn drop(&mut self) {
        self.inbox
            .bytes
            .fetch_sub(self.bytes, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A value that can write its postcard encoding in pieces.
pub trait EncodeWire: Send {
    /// Bytes its encoding takes.
    fn encoded_len(&self) -> Result<usize, WireError>;
    /// Hands its encoding to `out`, in order, in pieces; stops at the first
    /// error `out` returns.
    fn encode_to(
        &self,
        out: &mut dyn FnMut(&[u8]) -> Result<(), WireError>,
    ) -> Result<(), WireError>;
}

impl<T: serde::Serialize + Send> EncodeWire for T {
    fn encoded_len(&self) -> Result<usize, WireError> {
        postcard::experimental::serialized_size(self)
            .map_err(|e| WireError::Encode(CodecError::new(std::any::type_name::<T>(), e)))
    }

    fn encode_to(
        &self,
        out: &mut dyn FnMut(&[u8]) -> Result<(), WireError>,
    ) -> Result<(), WireError> {
        encode_pieces(self, std::any::type_name::<T>(), out)
    }
}

/// Encodes `v` (postcard) through `out` in pieces, one per serializer
/// call, in order; stops at the first error `out` returns and returns it
/// as it is (a postcard error is a [`CodecError`] for `type_name`).
pub fn encode_pieces<T: serde::Serialize + ?Sized>(
    v: &T,
    type_name: &str,
    out: &mut dyn FnMut(&[u8]) -> Result<(), WireError>,
) -> Result<(), WireError> {
    let mut failed = None;
    let flavor = PiecesFlavor {
        out,
        failed: &mut failed,
    };
    match postcard::serialize_with_flavor(v, flavor) {
        Ok(()) => Ok(()),
        Err(e) => Err(failed.unwrap_or_else(|| WireError::Encode(CodecError::new(type_name, e)))),
    }
}

/// A postcard output handing each piece to a callback.
struct PiecesFlavor<'a> {
    out: &'a mut dyn FnMut(&[u8]) -> Result<(), WireError>,
    /// The callback's own error, kept (postcard's error type cannot carry it).
    failed: &'a mut Option<WireError>,
}

impl postcard::ser_flavors::Flavor for PiecesFlavor<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.try_extend(&[data])
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        (self.out)(data).map_err(|e| {
            *self.failed = Some(e);
            postcard::Error::SerializeBufferFull
        })
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// What a transport must provide so that an [`ActorHandle`] can address an
/// actor on another node. The cluster crate implements it; local code never
/// sees the difference.
pub trait RemoteActor<M: Message>: Send + Sync + 'static {
    /// The remote actor's id.
    fn id(&self) -> ActorId;
    /// Delivery; the message comes back on failure. The reply handles a
    /// message carries are encoded through [`crate::wire::encode_with`].
    fn tell(&self, msg: M) -> Result<(), SendError<M>>;
    /// Asks the remote actor to stop.
    fn stop(&self, reason: ExitReason);
    /// Kills the remote actor.
    fn kill(&self);
    /// Resolves when the remote actor (or its node) is gone.
    fn monitor(&self) -> Monitor;
}

pub(crate) struct LocalRef<M: Message> {
    pub(crate) actor: ActorRef<Envelope<M>>,
    pub(crate) exit: Arc<ExitSignal>,
    pub(crate) inbox: Arc<Inbox>,
}

enum Inner<M: Message> {
    Local(LocalRef<M>),
    Remote(Arc<dyn RemoteActor<M>>),
}

/// A typed handle to an actor that takes messages of type `M`.
///
/// The same type addresses an actor in this process or on another node:
/// `tell`, `ask`, `stop` and `monitor` behave the same and fail with the same
/// errors. Handles are cheap to clone.
pub struct ActorHandle<M: Message> {
    inner: Arc<Inner<M>>,
}

impl<M: Message> Clone for ActorHandle<M> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<M: Message> fmt::Debug for ActorHandle<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActorHandle")
            .field("id", &self.id())
            .field("message", &message_type_name::<M>())
            .finish()
    }
}

impl<M: Message> ActorHandle<M> {
    pub(crate) fn local(
        actor: ActorRef<Envelope<M>>,
        exit: Arc<ExitSignal>,
        inbox: Arc<Inbox>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner::Local(LocalRef { actor, exit, inbox })),
        }
    }

    /// A handle for an actor on another node, backed by a transport.
    pub fn remote(remote: Arc<dyn RemoteActor<M>>) -> Self {
        Self {
            inner: Arc::new(Inner::Remote(remote)),
        }
    }

    /// The actor's id.
    pub fn id(&self) -> ActorId {
        match &*self.inner {
            Inner::Local(l) => ActorId::Local(l.actor.get_id().pid()),
            Inner::Remote(r) => r.id(),
        }
    }

    /// Whether the actor lives in this process.
    pub fn is_local(&self) -> bool {
        matches!(&*self.inner, Inner::Local(_))
    }

    /// The ractor cell of a local actor (for linking); `None` for remote ones.
    /// Supervision plumbing, not application API.
    #[doc(hidden)]
    pub fn cell(&self) -> Option<ActorCell> {
        match &*self.inner {
            Inner::Local(l) => Some(l.actor.get_cell()),
            Inner::Remote(_) => None,
        }
    }

    /// Sends a message without waiting for it to be handled. On failure the
    /// message comes back inside the error.
    pub fn tell(&self, msg: M) -> Result<(), SendError<M>> {
        match &*self.inner {
            Inner::Local(l) => l
                .actor
                .cast(Envelope(msg, None))
                .map_err(|e| l.send_error(e)),
            Inner::Remote(r) => r.tell(msg),
        }
    }

    /// Sends the request `make` builds around a fresh [`ReplyTo<R>`] and
    /// waits up to `timeout` for its answer. The reply type comes from the
    /// variant: `counter.ask(CounterMsg::Get, t)` for `Get(ReplyTo<i64>)`,
    /// `wallet.ask(|r| Account::Withdraw(5, r), t)` for a variant with more
    /// fields.
    pub async fn ask<R: Send + 'static>(
        &self,
        make: impl FnOnce(ReplyTo<R>) -> M,
        timeout: Duration,
    ) -> Result<R, AskError<M>> {
        let (reply, rx) = ReplyTo::channel();
        self.tell(make(reply)).map_err(AskError::Send)?;
        let answer = match tokio::time::timeout(timeout, rx).await {
            Err(_) => return Err(AskError::Timeout(timeout)),
            // Every path that drops a reply handle answers first; a closed
            // channel is one dropped with its runtime.
            Ok(Err(_)) => return Err(AskError::NoReply(self.local_exit())),
            Ok(Ok(a)) => a,
        };
        match answer {
            Answer::Value(r) => Ok(r),
            Answer::Bytes(bytes, decode) => match bytes.frame() {
                Some(frame) => crate::shared_bytes::decode_sharing(frame, || decode(bytes.bytes())),
                None => decode(bytes.bytes()),
            }
            .map_err(|e| AskError::Decode(CodecError::new(std::any::type_name::<R>(), e))),
            Answer::Failed(e) => Err(match e {
                WireError::NoReply(r) => AskError::NoReply(r.or_else(|| self.local_exit())),
                WireError::ActorGone(r) => AskError::NoReply(r.or_else(|| self.local_exit())),
                WireError::NodeDown(n) => AskError::NoReply(Some(ExitReason::NodeDown(n))),
                WireError::Timeout(_) => AskError::Timeout(timeout),
                WireError::Encode(c) => AskError::Encode(c),
                other => AskError::Rejected(other),
            }),
        }
    }

    fn local_exit(&self) -> Option<ExitReason> {
        match &*self.inner {
            Inner::Local(l) => l.exit.reason(),
            Inner::Remote(_) => None,
        }
    }

    /// Asks the actor to stop after the message it is handling, with `reason`.
    pub fn stop(&self, reason: ExitReason) {
        match &*self.inner {
            Inner::Local(l) => {
                l.exit.set_pending(reason.clone());
                l.actor.stop(Some(reason.to_stop_string()));
            }
            Inner::Remote(r) => r.stop(reason),
        }
    }

    /// Kills the actor at once: its current handler is dropped and its
    /// `stopped` hook does not run.
    pub fn kill(&self) {
        match &*self.inner {
            Inner::Local(l) => l.actor.kill(),
            Inner::Remote(r) => r.kill(),
        }
    }

    /// Watches the actor: the returned future resolves to its exit reason.
    pub fn monitor(&self) -> Monitor {
        match &*self.inner {
            Inner::Local(l) => l.exit.monitor(),
            Inner::Remote(r) => r.monitor(),
        }
    }

    /// The exit reason, once the actor has stopped.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.monitor().try_get()
    }

    /// Whether the actor is still running (as far as this node knows).
    pub fn is_alive(&self) -> bool {
        self.exit_reason().is_none()
    }

    /// Erases the message type, e.g. to keep handles of different actors in
    /// one collection; [`AnyHandle::downcast`] gets it back.
    pub fn into_any(self) -> AnyHandle {
        AnyHandle(Arc::new(self))
    }
}

impl<M: Message> LocalRef<M> {
    fn send_error(&self, e: MessagingErr<Envelope<M>>) -> SendError<M> {
        let failure = SendFailure::ActorGone(self.exit.reason());
        match e {
            MessagingErr::SendErr(Envelope(message, _)) => SendError { message, failure },
            // `cast` only ever hands back SendErr with the message; the other
            // variants cannot carry it, and ractor does not produce them for
            // a typed local cast.
            other => unreachable_send_error(other),
        }
    }
}

#[allow(clippy::panic)]
fn unreachable_send_error<T>(e: MessagingErr<T>) -> ! {
    // ractor's `cast` on a typed ActorRef only fails with `SendErr(msg)`:
    // `ChannelClosed` and `InvalidActorType` come from untyped cells and
    // `call`. Reaching this is a ractor contract change we want to see.
    panic!("ractor cast failed without returning the message: {e}")
}

/// Operations every handle supports without knowing its message type; what a
/// supervisor needs to manage a child.
pub trait ErasedHandle: Send + Sync + 'static {
    /// The actor's id.
    fn id(&self) -> ActorId;
    /// The ractor cell of a local actor (supervision plumbing).
    #[doc(hidden)]
    fn cell(&self) -> Option<ActorCell>;
    /// The message type the actor takes.
    fn message_type(&self) -> &'static str;
    /// Asks the actor to stop.
    fn stop(&self, reason: ExitReason);
    /// Kills the actor.
    fn kill(&self);
    /// Watches the actor.
    fn monitor(&self) -> Monitor;
    /// The typed handle, for downcasting.
    fn as_any(&self) -> &dyn Any;
    /// Delivers a postcard-encoded message from another node; the reply
    /// handles it carries answer through `route` (the transport's hook).
    #[doc(hidden)]
    fn tell_wire(&self, body: &[u8], route: &Arc<dyn ReplyRoute>) -> Result<(), WireError> {
        let _ = (body, route);
        Err(WireError::NotAddressable)
    }
}

impl<M: Message> ErasedHandle for ActorHandle<M> {
    fn id(&self) -> ActorId {
        ActorHandle::id(self)
    }
    fn cell(&self) -> Option<ActorCell> {
        ActorHandle::cell(self)
    }
    fn message_type(&self) -> &'static str {
        message_type_name::<M>()
    }
    fn stop(&self, reason: ExitReason) {
        ActorHandle::stop(self, reason)
    }
    fn kill(&self) {
        ActorHandle::kill(self)
    }
    fn monitor(&self) -> Monitor {
        ActorHandle::monitor(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn tell_wire(&self, body: &[u8], route: &Arc<dyn ReplyRoute>) -> Result<(), WireError> {
        // A local-only message type: other nodes cannot address this actor.
        let decode = M::DECODE.ok_or(WireError::NotAddressable)?;
        // Local actors take messages from other nodes within their inbox
        // budget; counted before decoding, so a refused message costs
        // nothing more.
        let credit = match &*self.inner {
            Inner::Local(l) => Some(
                Credit::take(&l.inbox, body.len() + REMOTE_MESSAGE_OVERHEAD)
                    .ok_or(WireError::Backpressure)?,
            ),
            Inner::Remote(_) => None,
        };
        let msg: M = crate::reply::decode_with(Arc::clone(route), || decode(body))
            .map_err(|e| WireError::Decode(CodecError::new(M::NAME, e)))?;
        let sent = match &*self.inner {
            Inner::Local(l) => l
                .actor
                .cast(Envelope(msg, credit))
                .map_err(|e| l.send_error(e)),
            Inner::Remote(_) => self.tell(msg),
        };
        sent.map_err(|e| {
            let err = match e.failure {
                SendFailure::ActorGone(r) => WireError::ActorGone(r),
                SendFailure::NodeDown(n) => WireError::NodeDown(n),
                SendFailure::Backpressure => WireError::Backpressure,
                SendFailure::Encode(c) => WireError::Encode(c),
                SendFailure::TooLarge { size, limit } => WireError::TooLarge { size, limit },
                SendFailure::Rejected(w) => w,
            };
            // The asker hears why: the message never reached the actor.
            crate::reply::drop_failing(e.message, err.clone());
            err
        })
    }
}

/// A handle whose message type has been erased.
#[derive(Clone)]
pub struct AnyHandle(Arc<dyn ErasedHandle>);

impl fmt::Debug for AnyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyHandle")
            .field("id", &self.0.id())
            .field("message", &self.0.message_type())
            .finish()
    }
}

impl AnyHandle {
    /// Wraps any erased handle (a supervisor's, a remote stub's...).
    pub fn new(h: Arc<dyn ErasedHandle>) -> Self {
        Self(h)
    }

    /// The typed handle, if the actor takes messages of type `M`.
    pub fn downcast<M: Message>(&self) -> Option<ActorHandle<M>> {
        self.0.as_any().downcast_ref::<ActorHandle<M>>().cloned()
    }

    /// The inner handle, to reach a non-actor handle type (e.g. a supervisor's).
    pub fn downcast_ref<T: 'static>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref::<T>()
    }

    /// The actor's id.
    pub fn id(&self) -> ActorId {
        self.0.id()
    }
    /// The ractor cell of a local actor.
    #[doc(hidden)]
    pub fn cell(&self) -> Option<ActorCell> {
        self.0.cell()
    }
    /// The message type the actor takes.
    pub fn message_type(&self) -> &'static str {
        self.0.message_type()
    }
    /// Asks the actor to stop.
    pub fn stop(&self, reason: ExitReason) {
        self.0.stop(reason)
    }
    /// Kills the actor.
    pub fn kill(&self) {
        self.0.kill()
    }
    /// Watches the actor.
    pub fn monitor(&self) -> Monitor {
        self.0.monitor()
    }
    /// Delivers a postcard-encoded message from another node (the
    /// transport's entry point); its reply handles answer through `route`.
    #[doc(hidden)]
    pub fn tell_wire(&self, body: &[u8], route: &Arc<dyn ReplyRoute>) -> Result<(), WireError> {
        self.0.tell_wire(body, route)
    }
}
