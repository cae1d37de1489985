//! # manta-supervision: OTP supervisors for Manta actors
//!
//! Erlang/OTP's `supervisor` behaviour — the module doc of `supervisor.erl`
//! is the reference for names, defaults and semantics:
//!
//! - strategies `one_for_one`, `one_for_all`, `rest_for_one` and the dynamic
//!   `simple_one_for_one` ([`Strategy`]);
//! - restart types `permanent`, `transient`, `temporary` ([`Restart`]);
//! - shutdown by timeout (graceful stop, then kill), `brutal_kill` or
//!   `infinity` ([`Shutdown`]); children start in order and stop in reverse;
//! - restart intensity / period as a sliding window (default 1 restart in
//!   5 s); beyond it the supervisor stops its children and fails, escalating
//!   to its parent;
//! - optional Akka-style restart [`Backoff`];
//! - introspection ([`SupervisorHandle::which_children`],
//!   [`SupervisorHandle::count_children`]) and a [`SupervisorEvent`] (also a
//!   tracing event) for every start, exit, restart and escalation;
//! - a panic in a child's handler is that child's failure, nothing more.
//!
//! Trees can be written in code ([`SupervisorSpec`], [`ChildSpec`]) or in
//! TOML files ([`tree`]), validated in full before anything starts.
//!
//! One deliberate difference from OTP: a supervisor that exceeds its
//! intensity fails with [`ExitReason::Failed`](manta_actors::ExitReason)
//! rather than `shutdown`, so a `transient` parent restarts it too.
//!
//! ## Modules
//! `spec` (specifications), `supervisor` (the actor), `handle` (handle and
//! introspection), `event` (events), [`tree`] (TOML tree files), `duration`
//! (the duration syntax of tree files).
//!
//! ## Example
//!
//! ```
//! use std::time::Duration;
//! use manta_actors::{factory, Actor, ActorError, ActorSystem, Context, Message};
//! use manta_supervision::{ChildSpec, Strategy, Supervisor, SupervisorSpec};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Debug, Serialize, Deserialize, Message)] struct Ping;
//! # struct Worker;
//! # impl Actor for Worker { type Msg = Ping;
//! #   async fn handle(&mut self, _: Ping, _: &mut Context<Ping>) -> Result<(), ActorError> { Ok(()) } }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let system = ActorSystem::new();
//! let spec = SupervisorSpec::new("root")
//!     .strategy(Strategy::OneForAll)
//!     .intensity(3, Duration::from_secs(10))
//!     .child(ChildSpec::actor("a", || Worker))
//!     .child(ChildSpec::actor("b", || Worker));
//! let sup = Supervisor::start(&system, spec).await?;
//! assert_eq!(sup.count_children().await?.active, 2);
//! sup.shutdown().await;
//! # Ok(()) }
//! ```

mod duration;
mod event;
mod handle;
mod spec;
mod supervisor;
pub mod tree;

pub use duration::{MAX_DURATION, format_duration, parse_duration};
pub use event::{EventBus, ExitAction, SupervisorEvent};
pub use handle::{ChildCounts, ChildInfo, ChildState, SupervisorError, SupervisorHandle};
pub use spec::{
    Backoff, ChildSpec, ChildStart, ChildType, DEFAULT_WORKER_SHUTDOWN, Restart, Shutdown,
    SpecError, Strategy, SupervisorSpec,
};
pub use supervisor::Supervisor;
