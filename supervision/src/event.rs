//! Supervisor lifecycle events: every start, exit, restart and escalation.

use std::fmt;
use std::time::{Duration, SystemTime};

use manta_actors::{ActorId, ExitReason};
use tokio::sync::broadcast;

/// What a supervisor did about a child's exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitAction {
    /// The child (and, by strategy, siblings) will be restarted.
    Restart,
    /// Not restarted; the spec is kept (a transient child's normal exit).
    Keep,
    /// Not restarted; the child is removed (temporary, or dynamic).
    Remove,
    /// Restart intensity exceeded: the supervisor gives up and fails.
    Escalate,
}

impl fmt::Display for ExitAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExitAction::Restart => "restart",
            ExitAction::Keep => "keep",
            ExitAction::Remove => "remove",
            ExitAction::Escalate => "escalate",
        })
    }
}

/// One supervisor decision. Each is also logged as a tracing event with the
/// same fields (target `manta::supervisor`).
#[derive(Debug, Clone, PartialEq)]
pub enum SupervisorEvent {
    /// A child started (`restarts` > 0 for a restart).
    ChildStarted {
        /// Supervisor name.
        supervisor: String,
        /// When it happened.
        at: SystemTime,
        /// Child id.
        child: String,
        /// The new actor.
        actor: ActorId,
        /// How often this child has been restarted.
        restarts: u32,
    },
    /// A child exited on its own (not stopped by its supervisor).
    ChildExited {
        /// Supervisor name.
        supervisor: String,
        /// When it happened.
        at: SystemTime,
        /// Child id.
        child: String,
        /// The instance that exited.
        actor: Option<ActorId>,
        /// Why it exited.
        reason: ExitReason,
        /// What the supervisor does about it.
        action: ExitAction,
    },
    /// The supervisor stopped a child (shutdown, strategy, terminate_child).
    ChildTerminated {
        /// Supervisor name.
        supervisor: String,
        /// When it happened.
        at: SystemTime,
        /// Child id.
        child: String,
        /// The instance that was stopped.
        actor: ActorId,
        /// The exit observed.
        reason: ExitReason,
        /// The graceful stop timed out and the child was killed.
        forced: bool,
    },
    /// A temporary child that its supervisor's strategy stopped (as a
    /// sibling of a failed child under `one_for_all` or `rest_for_one`) was
    /// dropped from the supervisor, not restarted (OTP).
    ChildDropped {
        /// Supervisor name.
        supervisor: String,
        /// When it happened.
        at: SystemTime,
        /// Child id.
        child: String,
    },
    /// Restarting a child failed (counts against the intensity; retried).
    StartFailed {
        /// Supervisor name.
        supervisor: String,
        /// When it happened.
        at: SystemTime,
        /// Child id.
        child: String,
        /// The error.
        error: String,
    },
    /// Restarts are delayed by backoff.
    RestartScheduled {
        /// Supervisor name.
        supervisor: String,
        /// When it happened.
        at: SystemTime,
        /// The children to restart, in order.
        children: Vec<String>,
        /// The delay.
        delay: Duration,
    },
    /// The restart intensity was exceeded: the supervisor terminated its
    /// children and fails, escalating to its parent.
    Escalated {
        /// Supervisor name.
        supervisor: String,
        /// When it happened.
        at: SystemTime,
        /// The child whose exit exceeded the intensity.
        child: String,
        /// That child's exit reason.
        reason: ExitReason,
    },
    /// The supervisor stopped (after shutting its children down).
    SupervisorStopped {
        /// Supervisor name.
        supervisor: String,
        /// When it happened.
        at: SystemTime,
        /// Why.
        reason: ExitReason,
    },
}

impl SupervisorEvent {
    /// When the supervisor decided (wall clock, for logs and reports).
    pub fn at(&self) -> SystemTime {
        match self {
            SupervisorEvent::ChildStarted { at, .. }
            | SupervisorEvent::ChildExited { at, .. }
            | SupervisorEvent::ChildTerminated { at, .. }
            | SupervisorEvent::ChildDropped { at, .. }
            | SupervisorEvent::StartFailed { at, .. }
            | SupervisorEvent::RestartScheduled { at, .. }
            | SupervisorEvent::Escalated { at, .. }
            | SupervisorEvent::SupervisorStopped { at, .. } => *at,
        }
    }

    /// The supervisor the event is about.
    pub fn supervisor(&self) -> &str {
        match self {
            SupervisorEvent::ChildStarted { supervisor, .. }
            | SupervisorEvent::ChildExited { supervisor, .. }
            | SupervisorEvent::ChildTerminated { supervisor, .. }
            | SupervisorEvent::ChildDropped { supervisor, .. }
            | SupervisorEvent::StartFailed { supervisor, .. }
            | SupervisorEvent::RestartScheduled { supervisor, .. }
            | SupervisorEvent::Escalated { supervisor, .. }
            | SupervisorEvent::SupervisorStopped { supervisor, .. } => supervisor,
        }
    }
}

impl fmt::Display for SupervisorEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SupervisorEvent::ChildStarted {
                supervisor,
                child,
                actor,
                restarts,
                ..
            } => {
                if *restarts == 0 {
                    write!(f, "[{supervisor}] started {child} as {actor}")
                } else {
                    write!(
                        f,
                        "[{supervisor}] restarted {child} as {actor} (restart #{restarts})"
                    )
                }
            }
            SupervisorEvent::ChildExited {
                supervisor,
                child,
                reason,
                action,
                ..
            } => write!(f, "[{supervisor}] {child} exited ({reason}) -> {action}"),
            SupervisorEvent::ChildTerminated {
                supervisor,
                child,
                reason,
                forced,
                ..
            } => {
                let how = if *forced {
                    ", killed after shutdown timeout"
                } else {
                    ""
                };
                write!(f, "[{supervisor}] terminated {child} ({reason}{how})")
            }
            SupervisorEvent::ChildDropped {
                supervisor, child, ..
            } => {
                write!(
                    f,
                    "[{supervisor}] dropped temporary {child} (not restarted)"
                )
            }
            SupervisorEvent::StartFailed {
                supervisor,
                child,
                error,
                ..
            } => write!(f, "[{supervisor}] failed to start {child}: {error}"),
            SupervisorEvent::RestartScheduled {
                supervisor,
                children,
                delay,
                ..
            } => write!(
                f,
                "[{supervisor}] restarting {} in {delay:?} (backoff)",
                children.join(", ")
            ),
            SupervisorEvent::Escalated {
                supervisor,
                child,
                reason,
                ..
            } => write!(
                f,
                "[{supervisor}] ESCALATING: restart intensity exceeded by {child} ({reason}); terminating children and failing"
            ),
            SupervisorEvent::SupervisorStopped {
                supervisor, reason, ..
            } => {
                write!(f, "[{supervisor}] stopped ({reason})")
            }
        }
    }
}

/// A broadcast bus of [`SupervisorEvent`]s shared by a supervision tree.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<SupervisorEvent>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    /// A bus keeping up to 4096 events for slow subscribers.
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
        Self { tx }
    }

    /// A new subscriber, seeing events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<SupervisorEvent> {
        self.tx.subscribe()
    }

    pub(crate) fn emit(&self, ev: SupervisorEvent) {
        // No subscriber is fine: events are also traced.
        let _ = self.tx.send(ev);
    }
}
