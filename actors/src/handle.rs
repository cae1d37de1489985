//! Handles: the one way to address an actor, wherever it runs.

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::{ActorCell, ActorRef, MessagingErr};
use tokio::sync::oneshot;

use crate::error::{AskError, CodecError, SendError, SendFailure, WireError};
use crate::exit::{ExitReason, ExitSignal, Monitor};
use crate::message::{Message, encode_wire, message_type_name};

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

/// The envelope Manta puts around a user message on ractor's mailbox.
pub(crate) enum Envelope<M: Message> {
    Tell(M),
    Ask(M, ReplyPort<M::Reply>),
}

/// Called with the reply of an ask delivered from another node, or with the
/// error that stopped it.
pub type WireReply = Box<dyn FnOnce(Result<WireBody, WireError>) + Send>;

/// Replies whose encoding is larger than this reach the transport as
/// [`WireBody::Value`].
const VALUE_REPLY_MIN: usize = 64 * 1024;

/// The reply of an ask from another node, on its way to the wire.
pub enum WireBody {
    /// Already encoded (postcard).
    Bytes(Vec<u8>),
    /// The reply itself: the transport encodes it straight into its frames,
    /// so a large reply is never held whole in a buffer of its own.
    Value(Box<dyn EncodeWire>),
}

impl WireBody {
    /// The encoded bytes, in one buffer.
    pub fn into_bytes(self) -> Result<Vec<u8>, WireError> {
        match self {
            WireBody::Bytes(b) => Ok(b),
            WireBody::Value(v) => {
                let mut out = Vec::with_capacity(v.encoded_len()?);
                v.encode_to(&mut |piece| {
                    out.extend_from_slice(piece);
                    Ok(())
                })?;
                Ok(out)
            }
        }
    }
}

impl std::fmt::Debug for WireBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireBody::Bytes(b) => write!(f, "WireBody::Bytes({} bytes)", b.len()),
            WireBody::Value(_) => f.write_str("WireBody::Value(..)"),
        }
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
        let mut failed = None;
        let flavor = PiecesFlavor {
            out,
            failed: &mut failed,
        };
        match postcard::serialize_with_flavor(self, flavor) {
            Ok(()) => Ok(()),
            Err(e) => Err(failed.unwrap_or_else(|| {
                WireError::Encode(CodecError::new(std::any::type_name::<T>(), e))
            })),
        }
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

type ReplyFn<R> = Box<dyn FnOnce(Result<R, WireError>) + Send>;

/// Where the reply of an ask goes: a channel the asker awaits (local asks),
/// or a function that forwards it at once (asks from another node, whose
/// reply the actor's own task encodes and queues for the wire, with no task
/// in between). A function port dropped unsent is called with
/// [`WireError::NoReply`], as a closed channel tells a local asker.
pub(crate) struct ReplyPort<R>(Option<Port<R>>);

enum Port<R> {
    Channel(oneshot::Sender<R>),
    Call(ReplyFn<R>),
}

impl<R> ReplyPort<R> {
    pub(crate) fn channel(tx: oneshot::Sender<R>) -> Self {
        Self(Some(Port::Channel(tx)))
    }

    fn call(f: ReplyFn<R>) -> Self {
        Self(Some(Port::Call(f)))
    }

    /// Sends the reply; `false` when the asker has gone.
    pub(crate) fn send(mut self, reply: R) -> bool {
        match self.0.take() {
            Some(Port::Channel(tx)) => tx.send(reply).is_ok(),
            Some(Port::Call(f)) => {
                f(Ok(reply));
                true
            }
            None => false,
        }
    }

    /// Whether the asker may still be waiting (a remote asker's timeout is
    /// not known here, so a function port always says yes).
    pub(crate) fn is_waiting(&self) -> bool {
        match &self.0 {
            Some(Port::Channel(tx)) => !tx.is_closed(),
            Some(Port::Call(_)) => true,
            None => false,
        }
    }

    /// Takes the function back without calling it (the message never
    /// reached the mailbox).
    fn disarm(mut self) -> Option<ReplyFn<R>> {
        match self.0.take() {
            Some(Port::Call(f)) => Some(f),
            _ => None,
        }
    }
}

impl<R> Drop for ReplyPort<R> {
    fn drop(&mut self) {
        if let Some(Port::Call(f)) = self.0.take() {
            f(Err(WireError::NoReply(None)));
        }
    }
}

impl<M: Message> Envelope<M> {
    fn into_message(self) -> M {
        match self {
            Envelope::Tell(m) | Envelope::Ask(m, _) => m,
        }
    }
}

/// What a transport must provide so that an [`ActorHandle`] can address an
/// actor on another node. The cluster crate implements it; local code never
/// sees the difference.
pub trait RemoteActor<M: Message>: Send + Sync + 'static {
    /// The remote actor's id.
    fn id(&self) -> ActorId;
    /// Fire-and-forget delivery; the message comes back on failure.
    fn tell(&self, msg: M) -> Result<(), SendError<M>>;
    /// Request/reply with a timeout.
    fn ask(&self, msg: M, timeout: Duration) -> BoxFuture<'static, Result<M::Reply, AskError<M>>>;
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
    pub(crate) fn local(actor: ActorRef<Envelope<M>>, exit: Arc<ExitSignal>) -> Self {
        Self {
            inner: Arc::new(Inner::Local(LocalRef { actor, exit })),
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
                .cast(Envelope::Tell(msg))
                .map_err(|e| l.send_error(e)),
            Inner::Remote(r) => r.tell(msg),
        }
    }

    /// Sends a message and waits up to `timeout` for the reply.
    pub async fn ask(&self, msg: M, timeout: Duration) -> Result<M::Reply, AskError<M>> {
        match &*self.inner {
            Inner::Local(l) => {
                let (tx, rx) = oneshot::channel();
                l.actor
                    .cast(Envelope::Ask(msg, ReplyPort::channel(tx)))
                    .map_err(|e| AskError::Send(l.send_error(e)))?;
                match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(reply)) => Ok(reply),
                    Ok(Err(_)) => Err(AskError::NoReply(l.exit.reason())),
                    Err(_) => Err(AskError::Timeout(timeout)),
                }
            }
            Inner::Remote(r) => r.ask(msg, timeout).await,
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
            MessagingErr::SendErr(env) => SendError {
                message: env.into_message(),
                failure,
            },
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
    /// The ractor cell of a local actor.
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
    /// Delivers a postcard-encoded message (from another node).
    fn tell_wire(&self, body: &[u8]) -> Result<(), WireError> {
        let _ = body;
        Err(WireError::NotAddressable)
    }
    /// Delivers a postcard-encoded request and returns the encoded reply.
    fn ask_wire(
        &self,
        body: &[u8],
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, WireError>> {
        let _ = (body, timeout);
        Box::pin(async { Err(WireError::NotAddressable) })
    }
    /// Delivers a postcard-encoded request; `done` gets the encoded reply.
    /// The default awaits [`ask_wire`](Self::ask_wire) on a task; local
    /// actors call `done` from their own task when they reply.
    fn ask_wire_with(&self, body: &[u8], timeout: Duration, done: WireReply) {
        reply_when_done(self.ask_wire(body, timeout), done);
    }
}

/// Awaits a wire ask on a task of its own and hands its outcome to `done`.
fn reply_when_done(reply: BoxFuture<'static, Result<Vec<u8>, WireError>>, done: WireReply) {
    tokio::spawn(async move { done(reply.await.map(WireBody::Bytes)) });
}

/// A reply encoded for the wire.
fn encode_reply<R: serde::Serialize>(reply: &R) -> Result<Vec<u8>, WireError> {
    encode_wire(reply)
        .map_err(|e| WireError::Encode(CodecError::new(std::any::type_name::<R>(), e)))
}

fn decode_error<M: Message>(e: postcard::Error) -> CodecError {
    CodecError::new(M::NAME, e)
}

fn wire_send_error(f: SendFailure) -> WireError {
    match f {
        SendFailure::ActorGone(r) => WireError::ActorGone(r),
        SendFailure::NodeDown(n) => WireError::NodeDown(n),
        SendFailure::Backpressure => WireError::Backpressure,
        SendFailure::Encode(e) => WireError::Encode(e),
        SendFailure::TooLarge { size, limit } => WireError::TooLarge { size, limit },
        SendFailure::Rejected(e) => e,
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
    fn tell_wire(&self, body: &[u8]) -> Result<(), WireError> {
        let msg: M =
            postcard::from_bytes(body).map_err(|e| WireError::Decode(decode_error::<M>(e)))?;
        self.tell(msg).map_err(|e| wire_send_error(e.failure))
    }
    fn ask_wire(
        &self,
        body: &[u8],
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, WireError>> {
        let decoded: Result<M, _> = postcard::from_bytes(body);
        let me = self.clone();
        Box::pin(async move {
            let msg = decoded.map_err(|e| WireError::Decode(decode_error::<M>(e)))?;
            match me.ask(msg, timeout).await {
                Ok(reply) => encode_reply(&reply),
                Err(AskError::Send(e)) => Err(wire_send_error(e.failure)),
                Err(AskError::Timeout(d)) => Err(WireError::Timeout(d.as_millis() as u64)),
                Err(AskError::NoReply(r)) => Err(WireError::NoReply(r)),
                Err(AskError::Decode(e)) => Err(WireError::Decode(e)),
            }
        })
    }
    fn ask_wire_with(&self, body: &[u8], timeout: Duration, done: WireReply) {
        let Inner::Local(l) = &*self.inner else {
            return reply_when_done(self.ask_wire(body, timeout), done);
        };
        let msg: M = match postcard::from_bytes(body) {
            Ok(m) => m,
            Err(e) => return done(Err(WireError::Decode(decode_error::<M>(e)))),
        };
        // No timer here: the asker on the other node times out by itself.
        let exit = Arc::clone(&l.exit);
        let port = ReplyPort::call(Box::new(move |r: Result<M::Reply, WireError>| {
            done(match r {
                // Large replies go to the transport as they are (it
                // encodes them into its frames); small ones are encoded here.
                Ok(reply) => match reply.encoded_len() {
                    Ok(n) if n > VALUE_REPLY_MIN => Ok(WireBody::Value(Box::new(reply))),
                    _ => encode_reply(&reply).map(WireBody::Bytes),
                },
                Err(WireError::NoReply(None)) => Err(WireError::NoReply(exit.reason())),
                Err(e) => Err(e),
            })
        }));
        if let Err(MessagingErr::SendErr(Envelope::Ask(_, port))) =
            l.actor.cast(Envelope::Ask(msg, port))
        {
            if let Some(f) = port.disarm() {
                f(Err(WireError::ActorGone(l.exit.reason())));
            }
        }
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
    /// Delivers a postcard-encoded message.
    pub fn tell_wire(&self, body: &[u8]) -> Result<(), WireError> {
        self.0.tell_wire(body)
    }
    /// Delivers a postcard-encoded request; returns the encoded reply.
    pub fn ask_wire(
        &self,
        body: &[u8],
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, WireError>> {
        self.0.ask_wire(body, timeout)
    }
    /// Delivers a postcard-encoded request; `done` is called with the
    /// encoded reply (by a local actor's own task, as it replies).
    pub fn ask_wire_with(&self, body: &[u8], timeout: Duration, done: WireReply) {
        self.0.ask_wire_with(body, timeout, done)
    }
}
