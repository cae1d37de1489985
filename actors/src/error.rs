//! Errors of the actor core.

use std::time::Duration;

use crate::exit::ExitReason;

/// The error type a user handler may return: any error, boxed. The actor then
/// stops with [`ExitReason::Failed`] carrying its text.
pub type ActorError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a message could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendFailure {
    /// The actor has stopped (with this reason, where known).
    #[error("actor has stopped{}", .0.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    ActorGone(Option<ExitReason>),
    /// The node hosting the actor is down or unreachable.
    #[error("node {0} is down")]
    NodeDown(String),
    /// The transport to the actor's node is full; try again later.
    #[error("send queue to the actor's node is full")]
    Backpressure,
    /// The message could not be encoded for the wire.
    #[error("message could not be encoded: {0}")]
    Encode(String),
    /// The remote node refused the message (e.g. the actor there takes
    /// another message type).
    #[error("refused by the remote node: {0}")]
    Rejected(String),
}

/// A failed `tell`: the message comes back to the caller, with the reason.
#[derive(Debug, thiserror::Error)]
#[error("could not deliver message: {failure}")]
pub struct SendError<M> {
    /// The undelivered message.
    pub message: M,
    /// Why it was not delivered.
    pub failure: SendFailure,
}

impl<M> SendError<M> {
    /// Gives the undelivered message back.
    pub fn into_message(self) -> M {
        self.message
    }
}

/// A failed `ask`.
#[derive(Debug, thiserror::Error)]
pub enum AskError<M> {
    /// The request was never delivered; the message comes back.
    #[error(transparent)]
    Send(#[from] SendError<M>),
    /// No reply within the timeout (the request may still be handled).
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The actor stopped before it replied.
    #[error("actor stopped before replying{}", .0.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    NoReply(Option<ExitReason>),
    /// The reply could not be decoded (remote actors only).
    #[error("reply could not be decoded: {0}")]
    Decode(String),
}

/// Spawning an actor failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpawnError {
    /// The actor's `started` hook returned an error or panicked.
    #[error("actor failed to start: {0}")]
    Startup(String),
    /// The requested name is taken.
    #[error("name `{0}` is already registered")]
    NameTaken(String),
    /// No actor kind with this name is registered.
    #[error("unknown actor kind `{0}`")]
    UnknownKind(String),
    /// The kind's arguments do not fit its argument type.
    #[error("bad arguments for kind `{kind}`: {message}")]
    BadArgs {
        /// The kind.
        kind: String,
        /// What was wrong.
        message: String,
    },
    /// The actor could not be placed (cluster placement).
    #[error("placement failed: {0}")]
    Placement(String),
}

/// Looking an actor up by name failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// No actor is registered under this name.
    #[error("no actor named `{0}`")]
    NotFound(String),
    /// An actor is registered under this name, but it takes other messages.
    #[error("actor `{name}` takes `{actual}`, not `{expected}`")]
    WrongType {
        /// The name looked up.
        name: String,
        /// The message type the caller asked for.
        expected: &'static str,
        /// The message type the actor takes.
        actual: String,
    },
}

/// Byte-level (wire) delivery failed: what a remote sender gets back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
pub enum WireError {
    /// No actor is registered under the name.
    #[error("no actor named `{0}`")]
    NotFound(String),
    /// The actor takes another message type.
    #[error("actor takes `{actual}`, not `{expected}`")]
    WrongType {
        /// What the sender asked for.
        expected: String,
        /// What the actor takes.
        actual: String,
    },
    /// The actor cannot be addressed with serialised messages.
    #[error("actor is not addressable over the wire")]
    NotAddressable,
    /// The bytes did not decode as the actor's message (or reply) type.
    #[error("could not decode: {0}")]
    Decode(String),
    /// A message or reply could not be encoded.
    #[error("could not encode: {0}")]
    Encode(String),
    /// The actor has stopped.
    #[error("actor has stopped{}", .0.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    ActorGone(Option<ExitReason>),
    /// The actor stopped before replying.
    #[error("actor stopped before replying{}", .0.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    NoReply(Option<ExitReason>),
    /// No reply in time.
    #[error("no reply within {0} ms")]
    Timeout(u64),
    /// The node is gone.
    #[error("node {0} is down")]
    NodeDown(String),
    /// The send queue to the node is full.
    #[error("send queue to the node is full")]
    Backpressure,
    /// A remote spawn failed.
    #[error("spawn failed: {0}")]
    Spawn(String),
}
