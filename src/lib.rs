//! # Manta
//!
//! Distributed actor programs in the Erlang/Akka tradition, for Rust.
//!
//! This crate is the facade: it re-exports the actor core
//! ([`manta_actors`]) and OTP supervision ([`manta_supervision`]), adds the
//! built-in actor kinds the `manta` command knows ([`builtin`]), and, behind
//! features, the cluster layer, the ML layers and the command's library side.
//!
//! ## Features
//!
//! | feature | what it adds | heavy dependencies |
//! |---|---|---|
//! | (none) | actors, supervision, tree files, built-in kinds | ractor, tokio, toml |
//! | `cluster` | [`cluster`]: nodes, gossip membership, remote actors, placement | libp2p, chitchat |
//! | `ml` | [`ml`]: loaders, parameter servers, training (implies `cluster`) | burn (CPU) |
//! | `cuda` | training on NVIDIA GPUs (implies `ml`) | burn-cuda |
//! | `cli` (default) | the `manta` command and its library side (`cli`, `train_cli`, `tune_cli`) | clap, indicatif |
//!
//! A program with local actors and supervision only depends on
//! `manta = { version = "0.1", default-features = false }` and builds neither
//! libp2p nor burn; add `features = ["cluster"]` for clusters.
//!
//! ```
//! use std::time::Duration;
//! use manta::prelude::*;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, Message)]
//! enum Greet { Hello(String, ReplyTo<String>) }
//!
//! struct Greeter;
//! impl Actor for Greeter {
//!     type Msg = Greet;
//!     async fn handle(&mut self, msg: Greet, _: &mut Context<Greet>) -> Result<(), ActorError> {
//!         let Greet::Hello(name, reply) = msg;
//!         reply.send(format!("hello, {name}"));
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let system = ActorSystem::new();
//! let sup = Supervisor::start(
//!     &system,
//!     SupervisorSpec::new("root").child(ChildSpec::actor("greeter", || Greeter).registered()),
//! )
//! .await?;
//! let greeter = system.lookup::<Greet>("greeter")?;
//! let reply = greeter.ask(|r| Greet::Hello("Ada".into(), r), Duration::from_secs(1)).await?;
//! assert_eq!(reply, "hello, Ada");
//! sup.shutdown().await;
//! # Ok(()) }
//! ```

pub mod builtin;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "cli")]
mod demo_cluster;
#[cfg(feature = "cli")]
pub mod demo_serve;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "cli")]
pub mod train_cli;
#[cfg(feature = "cli")]
pub mod tune_cli;

/// The README's Rust examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub use manta_actors::{
    Actor, ActorError, ActorHandle, ActorId, ActorSystem, AnyHandle, AskError, ChildFactory,
    CodecError, Context, ErasedHandle, ExitReason, KindRegistry, LookupError, Message, Monitor,
    RemoteActor, ReplyTo, SendError, SendFailure, SpawnError, SpawnOptions, StartContext,
    WireError, error_chain, factory,
};
pub use manta_supervision::{
    Backoff, ChildCounts, ChildInfo, ChildSpec, ChildStart, ChildState, ChildType, EventBus,
    ExitAction, Restart, Shutdown, Strategy, Supervisor, SupervisorError, SupervisorEvent,
    SupervisorHandle, SupervisorSpec, tree,
};

/// The actor core crate.
pub use manta_actors as actors;
/// The supervision crate.
pub use manta_supervision as supervision;

/// The cluster layer (feature `cluster`): nodes, membership, remote actors,
/// placement.
#[cfg(feature = "cluster")]
pub use manta_cluster as cluster;
#[cfg(feature = "cluster")]
pub use manta_cluster::{Cluster, ClusterSecret, Names, Node, NodeConfig};

/// The ML layers (feature `ml`): loaders, parameter servers, training.
#[cfg(feature = "ml")]
pub use manta_ml as ml;

/// Everything most Manta programs need.
pub mod prelude {
    pub use manta_actors::prelude::*;
    pub use manta_supervision::{
        ChildSpec, Restart, Shutdown, Strategy, Supervisor, SupervisorHandle, SupervisorSpec,
    };
}
