//! Errors of the actor core.

use std::time::Duration;

use crate::exit::ExitReason;
use crate::placement::Placement;

/// The error type a user handler may return: any error, boxed. The actor then
/// stops with [`ExitReason::Failed`] carrying its text.
pub type ActorError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A value that could not be encoded or decoded for the wire: which type,
/// and what the codec said.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("`{type_name}`: {reason}")]
pub struct CodecError {
    /// The type (its [`Message::NAME`](crate::Message::NAME) for messages).
    pub type_name: String,
    /// What the codec reported.
    pub reason: String,
}

impl CodecError {
    /// A codec error for a value of type `type_name`.
    pub fn new(type_name: impl Into<String>, reason: impl ToString) -> Self {
        Self {
            type_name: type_name.into(),
            reason: reason.to_string(),
        }
    }
}

/// Why a message could not be delivered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
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
    #[error("message could not be encoded")]
    Encode(#[source] CodecError),
    /// The encoded message is larger than the transport carries.
    #[error("message of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// The encoded size.
        size: usize,
        /// The largest message the transport carries.
        limit: usize,
    },
    /// The remote node refused the message (e.g. the actor there takes
    /// another message type): its typed answer.
    #[error("refused by the remote node")]
    Rejected(#[source] WireError),
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
    #[error("reply could not be decoded")]
    Decode(#[source] CodecError),
    /// The request or its reply could not be encoded on the way (remote
    /// actors only): a reply value the replying node could not encode, or a
    /// large request the bulk lane produces as it writes it whose encoding
    /// changed after it was sent (then it was not handled).
    #[error("could not be encoded on the way: {0}")]
    Encode(CodecError),
    /// The request reached the actor's node but was refused there (no
    /// actor of that name, another message type, undecodable): the message
    /// is on the other node, so it cannot come back.
    #[error("refused by the remote node")]
    Rejected(#[source] WireError),
}

/// Spawning an actor failed.
///
/// Nested failures keep their cause: a supervisor that could not start
/// because its child failed is [`SpawnError::Child`], whose
/// [`source`](std::error::Error::source) is the child's own error, and so on
/// down to the actor whose `started` hook failed. It is serialisable, so a
/// remote spawn's failure reaches the caller as the same value.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, thiserror::Error)]
pub enum SpawnError {
    /// The actor's `started` hook returned an error (`Failed`) or panicked
    /// (`Panicked`).
    #[error("actor failed to start: {0}")]
    Startup(ExitReason),
    /// A child failed to start, so its supervisor (or the group it belongs
    /// to) could not start either.
    #[error("child `{child}` failed to start")]
    Child {
        /// The child's id.
        child: String,
        /// Why.
        #[source]
        source: Box<SpawnError>,
    },
    /// A supervisor spec is invalid.
    #[error("invalid supervisor spec: {0}")]
    InvalidSpec(SpecError),
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
    /// The kind's actors take another message type than the caller's.
    #[error("kind `{kind}` takes `{actual}`, not `{expected}`")]
    WrongMessageType {
        /// The kind.
        kind: String,
        /// The message type the caller asked for.
        expected: String,
        /// The message type the kind's actors take.
        actual: String,
    },
    /// The kind's actors take a local-only message type
    /// (`#[message(local)]`): they cannot be spawned for another node.
    #[error("kind `{kind}` takes a local-only message type: it cannot be spawned for another node")]
    LocalOnly {
        /// The kind.
        kind: String,
    },
    /// No alive node matches the placement.
    #[error("no alive node matches {0:?}")]
    NoNodeMatches(Box<Placement>),
    /// The child has a placement but was started without a cluster.
    #[error(
        "`{kind}` has a placement ({placement:?}) and needs a cluster node: run the tree with `manta node --tree FILE`"
    )]
    NeedsCluster {
        /// The kind.
        kind: String,
        /// Its placement.
        placement: Box<Placement>,
    },
    /// The spawn on another node failed there, or could not reach it.
    #[error("on node {node}: {source}")]
    Remote {
        /// The node.
        node: String,
        /// What happened.
        #[source]
        source: Box<WireError>,
    },
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
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, thiserror::Error)]
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
    #[error("could not decode")]
    Decode(#[source] CodecError),
    /// A message or reply could not be encoded.
    #[error("could not encode")]
    Encode(#[source] CodecError),
    /// An encoded message or reply is larger than the transport carries.
    #[error("{size} bytes exceed the {limit}-byte limit")]
    TooLarge {
        /// The encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
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
    /// A remote spawn failed on the remote node.
    #[error("spawn failed")]
    Spawn(#[source] Box<SpawnError>),
}

/// Every error in `err`'s [`source`](std::error::Error::source) chain, joined
/// with `: ` after it: the one-line form for logs and command output.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

/// What is wrong with a supervisor spec built in code (manta-supervision's
/// `SupervisorSpec::validate`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
pub enum SpecError {
    /// Two children of one supervisor share an id.
    #[error("supervisor `{supervisor}`: duplicate child id `{child}`")]
    DuplicateChild {
        /// The supervisor.
        supervisor: String,
        /// The id given twice.
        child: String,
    },
    /// A `simple_one_for_one` supervisor needs exactly one child template.
    #[error(
        "supervisor `{supervisor}`: simple_one_for_one needs exactly one child template, found {found}"
    )]
    TemplateCount {
        /// The supervisor.
        supervisor: String,
        /// How many children it was given.
        found: usize,
    },
    /// The intensity period is zero: no two restarts would ever fall in
    /// one window, so the intensity could never be exceeded (OTP requires
    /// a period above zero).
    #[error("supervisor `{supervisor}`: the restart intensity period must be longer than zero")]
    ZeroPeriod {
        /// The supervisor.
        supervisor: String,
    },
    /// A child's shutdown timeout is zero (OTP requires it above zero;
    /// `Shutdown::BrutalKill` stops a child at once).
    #[error(
        "supervisor `{supervisor}`: child `{child}` has a shutdown timeout of zero (use brutal_kill to stop it at once)"
    )]
    ZeroShutdown {
        /// The supervisor.
        supervisor: String,
        /// The child.
        child: String,
    },
}
