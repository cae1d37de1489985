//! # manta-actors: Manta's actor core
//!
//! Typed actors on [ractor] whose messages are plain serde types.
//!
//! - [`Actor`] — implement `handle` (and optionally `started` / `stopped`);
//!   the actor's state is `self`.
//! - [`ActorHandle`] — the one handle type for an actor, local or on another
//!   node: [`tell`](ActorHandle::tell), [`ask`](ActorHandle::ask) with a
//!   timeout, [`stop`](ActorHandle::stop), [`kill`](ActorHandle::kill),
//!   [`monitor`](ActorHandle::monitor). A failed send gives the message back
//!   ([`SendError`]). Remote actors plug in through [`RemoteActor`].
//! - [`ActorSystem`] — an explicit handle (no globals): spawning, named
//!   registration and type-checked lookup.
//! - [`KindRegistry`] — actor kinds: a kind name mapped to a factory that
//!   decodes the kind's arguments and spawns it. Tree files and remote spawn
//!   go through it; [`ChildFactory`] is the spawner interface supervisors use.
//! - [`ExitReason`] / [`Monitor`] — why an actor stopped, and a future that
//!   resolves to it.
//!
//! ## Modules
//! `message` (the [`Message`] trait), [`reply`] (typed reply handles),
//! `actor` (trait, context, ractor adapter), `handle` (handles), `system`
//! (system and names), `kind` (kinds), `exit` (exit reasons and monitors),
//! `error` (error types).
//!
//! ## Example
//!
//! ```
//! use std::time::Duration;
//! use manta_actors::{Actor, ActorError, ActorSystem, Context, Message, ReplyTo};
//! use serde::{Deserialize, Serialize};
//!
//! // Requests carry their reply handle, typed: `Get` answers an i64.
//! #[derive(Debug, Serialize, Deserialize, Message)]
//! enum CounterMsg { Add(i64), Get(ReplyTo<i64>) }
//!
//! struct Counter(i64);
//! impl Actor for Counter {
//!     type Msg = CounterMsg;
//!     async fn handle(&mut self, msg: CounterMsg, _: &mut Context<CounterMsg>) -> Result<(), ActorError> {
//!         match msg {
//!             CounterMsg::Add(n) => self.0 += n,
//!             CounterMsg::Get(reply) => { reply.send(self.0); }
//!         }
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let system = ActorSystem::new();
//! let counter = system.spawn_named("counter", Counter(0)).await?;
//! counter.tell(CounterMsg::Add(2))?;
//! let same = system.lookup::<CounterMsg>("counter")?;
//! assert_eq!(same.ask(CounterMsg::Get, Duration::from_secs(1)).await?, 2);
//! # Ok(()) }
//! ```

mod actor;
mod error;
mod exit;
mod handle;
mod kind;
mod message;
mod placement;
pub mod reply;
pub mod shared_bytes;
mod system;

pub use actor::{Actor, Context, panic_text};
pub use error::{
    ActorError, AskError, CodecError, LookupError, SendError, SendFailure, SpawnError, SpecError,
    WireError, error_chain,
};
pub use exit::{ExitReason, ExitSignal, Monitor};
pub use handle::{
    ActorHandle, ActorId, AnyHandle, ErasedHandle, REMOTE_MAILBOX_BYTES, RemoteActor,
};
pub use kind::{
    ArgsError, ArgsValue, ChildFactory, Kind, KindError, KindRegistry, StartContext, decode_args,
    factory,
};
/// `#[derive(Message)]`: see [`Message`](trait@Message).
pub use manta_macros::Message;
pub use message::{Message, RemoteMessage, message_type_name};
pub use placement::{Placement, Placer, Resources};
pub use reply::ReplyTo;
pub use system::{ActorSystem, SpawnOptions};

/// The contract between the actor core and a transport (manta-cluster):
/// how messages and their reply handles cross the wire. Not for
/// application code.
#[doc(hidden)]
pub mod wire {
    pub use crate::handle::{EncodeWire, encode_pieces};
    pub use crate::message::{Decode, decode, encode_wire};
    pub use crate::reply::{
        PendingReply, ReplyRegistry, ReplyRoute, WireBytes, decode_with, encode_with,
    };
    pub use crate::shared_bytes::decode_sharing;
}

/// The ractor version Manta runs on (supervision plumbing, not application
/// API).
#[doc(hidden)]
pub use ractor;

/// The `bytes` crate, for [`shared_bytes`] payloads.
pub use bytes;

/// Everything most actor code needs.
pub mod prelude {
    pub use crate::{
        Actor, ActorError, ActorHandle, ActorSystem, AskError, Context, ExitReason, Message,
        ReplyTo, SendError,
    };
}
