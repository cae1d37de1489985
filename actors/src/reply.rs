//! Typed replies: a [`ReplyTo<R>`] travels inside the message variant that
//! wants an answer (Akka Typed's `replyTo`, ractor's `RpcReplyPort`), so each
//! request names its own reply type and the compiler checks both ends.
//!
//! ```
//! use std::time::Duration;
//! use manta_actors::{Actor, ActorError, ActorSystem, Context, Message, ReplyTo};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, Message)]
//! enum Account {
//!     Deposit(u64),
//!     Balance(ReplyTo<u64>),
//!     Owner(ReplyTo<String>),
//! }
//!
//! struct Wallet(u64);
//! impl Actor for Wallet {
//!     type Msg = Account;
//!     async fn handle(&mut self, msg: Account, _: &mut Context<Account>) -> Result<(), ActorError> {
//!         match msg {
//!             Account::Deposit(n) => self.0 += n,
//!             Account::Balance(r) => { r.send(self.0); }
//!             Account::Owner(r) => { r.send("ada".to_owned()); }
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let wallet = ActorSystem::new().spawn(Wallet(0)).await?;
//! wallet.tell(Account::Deposit(42))?;
//! let balance: u64 = wallet.ask(Account::Balance, Duration::from_secs(1)).await?;
//! let owner: String = wallet.ask(Account::Owner, Duration::from_secs(1)).await?;
//! assert_eq!((balance, owner.as_str()), (42, "ada"));
//! # Ok(()) }
//! ```
//!
//! A reply handle may be kept to answer later (a barrier, a long poll) or
//! moved into another task. Dropped unsent, it answers the asker with
//! [`AskError::NoReply`](crate::AskError::NoReply): with the actor's exit
//! reason when the handler that dropped it failed or panicked.
//!
//! On the wire a reply handle is a number the asker's node chose; the
//! transport (manta-cluster) encodes and decodes messages through
//! [`wire`](crate::wire) so that an answer sent on one node reaches the
//! asker on another, with the same guarantees as a local one.

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::oneshot;

use crate::error::WireError;
use crate::handle::EncodeWire;

/// A reply's bytes as they arrived from another node (decoded by the asker).
pub trait WireBytes: Send {
    /// The postcard encoding of the reply.
    fn bytes(&self) -> &[u8];

    /// The buffer [`WireBytes::bytes`] lies in, when the reply may keep
    /// slices of it ([`crate::shared_bytes`] fields) instead of copies.
    fn frame(&self) -> Option<&bytes::Bytes> {
        None
    }
}

impl WireBytes for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// What a waiting asker gets.
pub(crate) enum Answer<R> {
    /// The reply itself (same node).
    Value(R),
    /// The reply's encoding from another node, with its decoder (the asker
    /// decodes it on its own task, and needs no serde bound to do so).
    Bytes(Box<dyn WireBytes>, fn(&[u8]) -> Result<R, postcard::Error>),
    /// Why there is no reply.
    Failed(WireError),
}

type Forward<R> = Box<dyn FnOnce(Result<R, WireError>) + Send>;

enum State<R> {
    /// An asker on this node waits on the channel.
    Local(oneshot::Sender<Answer<R>>),
    /// Answers an asker on another node (decoded from the wire).
    Forward(Forward<R>),
    /// Handed to the wire as this id (the asker's node waits for it).
    Sent(u64),
    /// Answered, or failed.
    Done,
}

/// The reply handle of one request: send the answer with
/// [`send`](ReplyTo::send). See the [module docs](crate::reply).
#[must_use = "an unsent reply leaves the asker without an answer until it is dropped"]
pub struct ReplyTo<R: Send + 'static> {
    // A Mutex, not a Cell: serialising takes `&self` and must move the
    // channel out, and messages stay `Sync` (so `SendError<M>` converts into
    // `ActorError`).
    state: Mutex<State<R>>,
    _r: PhantomData<fn(R)>,
}

impl<R: Send + 'static> ReplyTo<R> {
    fn new(state: State<R>) -> Self {
        Self {
            state: Mutex::new(state),
            _r: PhantomData,
        }
    }

    /// A reply handle and the channel its answer arrives on.
    pub(crate) fn channel() -> (Self, oneshot::Receiver<Answer<R>>) {
        let (tx, rx) = oneshot::channel();
        (Self::new(State::Local(tx)), rx)
    }

    fn take(&self) -> State<R> {
        // Every critical section is a single swap: a poisoned lock is still
        // consistent.
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *st, State::Done)
    }

    /// Sends the reply. Returns `false` when nobody waits for it any more
    /// (the asker timed out or was cancelled, or the handle was already
    /// used). For an asker on another node, `true` means it was queued.
    pub fn send(self, reply: R) -> bool {
        match self.take() {
            State::Local(tx) => tx.send(Answer::Value(reply)).is_ok(),
            State::Forward(f) => {
                f(Ok(reply));
                true
            }
            State::Sent(_) | State::Done => false,
        }
    }

    /// Whether the asker may still be waiting (for an asker on another
    /// node: until the reply is sent, as its timeout is not known here).
    pub fn is_waiting(&self) -> bool {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &*st {
            State::Local(tx) => !tx.is_closed(),
            State::Forward(_) => true,
            State::Sent(_) | State::Done => false,
        }
    }
}

impl<R: Send + 'static> Drop for ReplyTo<R> {
    fn drop(&mut self) {
        let state = self.take();
        if matches!(state, State::Sent(_) | State::Done) {
            return;
        }
        // Inside a handler, the handler's outcome says why there is no
        // reply; elsewhere nobody knows.
        let failer: Failer = Box::new(move |err| fail_state(state, err));
        if let Err(failer) = defer_to_scope(failer) {
            failer(WireError::NoReply(None));
        }
    }
}

fn fail_state<R>(state: State<R>, err: WireError) {
    match state {
        State::Local(tx) => {
            let _ = tx.send(Answer::Failed(err));
        }
        State::Forward(f) => f(Err(err)),
        State::Sent(_) | State::Done => {}
    }
}

impl<R: Send + 'static> fmt::Debug for ReplyTo<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let state = match &*st {
            State::Local(_) => "local",
            State::Forward(_) => "remote",
            State::Sent(_) => "sent",
            State::Done => "done",
        };
        f.debug_tuple("ReplyTo").field(&state).finish()
    }
}

// ---- dropped handles inside a handler -------------------------------------

type Failer = Box<dyn FnOnce(WireError) + Send>;

tokio::task_local! {
    static SCOPE: RefCell<Vec<Failer>>;
}

fn defer_to_scope(failer: Failer) -> Result<(), Failer> {
    let mut slot = Some(failer);
    let _ = SCOPE.try_with(|s| {
        if let Some(f) = slot.take() {
            s.borrow_mut().push(f);
        }
    });
    match slot {
        None => Ok(()),
        Some(f) => Err(f),
    }
}

/// Runs a handler: reply handles it drops unsent are failed afterwards with
/// `why(outcome)`, so an asker learns that the handler failed, not only that
/// no reply came.
pub(crate) async fn scoped<T>(
    fut: impl Future<Output = T>,
    why: impl FnOnce(&T) -> WireError,
) -> T {
    let (out, dropped) = SCOPE
        .scope(RefCell::new(Vec::new()), async move {
            let out = fut.await;
            let dropped = SCOPE.with(|s| std::mem::take(&mut *s.borrow_mut()));
            (out, dropped)
        })
        .await;
    if !dropped.is_empty() {
        let err = why(&out);
        for f in dropped {
            f(err.clone());
        }
    }
    out
}

/// Drops `value`, failing the reply handles it holds with `err`.
pub(crate) fn drop_failing<T>(value: T, err: WireError) {
    let dropped = SCOPE.sync_scope(RefCell::new(Vec::new()), || {
        drop(value);
        SCOPE.with(|s| std::mem::take(&mut *s.borrow_mut()))
    });
    for f in dropped {
        f(err.clone());
    }
}

// ---- the wire ---------------------------------------------------------------

/// A reply the asker's node waits for: the transport keeps it under the id
/// it gave the request and delivers what the other node answers.
pub trait PendingReply: Send {
    /// Delivers the answer (or why there is none).
    fn deliver(self: Box<Self>, answer: Result<Box<dyn WireBytes>, WireError>);
    /// Whether the asker stopped waiting (timed out): the transport may
    /// forget the entry.
    fn is_closed(&self) -> bool;
}

struct LocalPending<R>(oneshot::Sender<Answer<R>>);

impl<R: DeserializeOwned + Send> PendingReply for LocalPending<R> {
    fn deliver(self: Box<Self>, answer: Result<Box<dyn WireBytes>, WireError>) {
        let _ = self.0.send(match answer {
            Ok(bytes) => Answer::Bytes(bytes, crate::message::decode::<R>),
            Err(e) => Answer::Failed(e),
        });
    }
    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
}

impl PendingReply for oneshot::Sender<Result<Box<dyn WireBytes>, WireError>> {
    fn deliver(self: Box<Self>, answer: Result<Box<dyn WireBytes>, WireError>) {
        let _ = (*self).send(answer);
    }
    fn is_closed(&self) -> bool {
        oneshot::Sender::is_closed(self)
    }
}

/// Where the reply handles of a message being encoded for one peer are
/// registered (the transport's pending table for that peer).
pub trait ReplyRegistry: Send + Sync {
    /// Keeps `pending` and returns the id the request carries for it.
    fn register(&self, pending: Box<dyn PendingReply>) -> u64;
}

/// Where replies to requests from one peer go (the transport's link back).
pub trait ReplyRoute: Send + Sync {
    /// Sends the answer to request `id`.
    fn reply(&self, id: u64, answer: Result<Box<dyn EncodeWire>, WireError>);
}

struct EncodeCx {
    registry: Arc<dyn ReplyRegistry>,
    ids: Vec<u64>,
}

thread_local! {
    static ENCODING: RefCell<Option<EncodeCx>> = const { RefCell::new(None) };
    static DECODING: RefCell<Option<Arc<dyn ReplyRoute>>> = const { RefCell::new(None) };
}

/// Runs `encode` (which serialises a message, as often as it needs) with
/// the reply handles it meets registered in `registry`; returns its result
/// and the ids registered. Serialising a reply handle anywhere else fails.
pub fn encode_with<T>(
    registry: Arc<dyn ReplyRegistry>,
    encode: impl FnOnce() -> T,
) -> (T, Vec<u64>) {
    let prev = ENCODING.with(|c| {
        c.borrow_mut().replace(EncodeCx {
            registry,
            ids: Vec::new(),
        })
    });
    let out = encode();
    let cx = ENCODING.with(|c| std::mem::replace(&mut *c.borrow_mut(), prev));
    (out, cx.map(|c| c.ids).unwrap_or_default())
}

/// Runs `decode` (which deserialises a message from `route`'s peer) so that
/// the reply handles it meets answer through `route`.
pub fn decode_with<T>(route: Arc<dyn ReplyRoute>, decode: impl FnOnce() -> T) -> T {
    let prev = DECODING.with(|c| c.borrow_mut().replace(route));
    let out = decode();
    DECODING.with(|c| *c.borrow_mut() = prev);
    out
}

impl<R: DeserializeOwned + Send + 'static> Serialize for ReplyTo<R> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let id = match &*st {
            // A second pass (size, then bytes) writes the same id.
            State::Sent(id) => *id,
            State::Local(_) => {
                let registered = ENCODING.with(|c| {
                    let mut c = c.borrow_mut();
                    let cx = c.as_mut()?;
                    let State::Local(tx) = std::mem::replace(&mut *st, State::Done) else {
                        return None;
                    };
                    let id = cx.registry.register(Box::new(LocalPending(tx)));
                    cx.ids.push(id);
                    Some(id)
                });
                match registered {
                    Some(id) => {
                        *st = State::Sent(id);
                        id
                    }
                    None => {
                        return Err(S::Error::custom(
                            "a ReplyTo is encoded only by Manta's transport, inside a message",
                        ));
                    }
                }
            }
            State::Forward(_) => {
                return Err(S::Error::custom(
                    "a ReplyTo received from another node cannot be sent on to a third",
                ));
            }
            State::Done => {
                return Err(S::Error::custom("this ReplyTo was already used"));
            }
        };
        s.serialize_u64(id)
    }
}

impl<'de, R: Serialize + Send + 'static> Deserialize<'de> for ReplyTo<R> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let id = u64::deserialize(d)?;
        let route = DECODING
            .with(|c| c.borrow().clone())
            .ok_or_else(|| D::Error::custom("a ReplyTo is decoded only by Manta's transport"))?;
        Ok(Self::new(State::Forward(Box::new(
            move |r: Result<R, WireError>| {
                route.reply(id, r.map(|v| Box::new(v) as Box<dyn EncodeWire>));
            },
        ))))
    }
}
