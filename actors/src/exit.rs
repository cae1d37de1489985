//! Exit reasons and monitors.

use std::fmt;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Why an actor stopped. Supervisors decide on restarts from it exactly as
/// Erlang/OTP does: `Normal` and `Shutdown` are normal exits, everything else
/// is abnormal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ExitReason {
    /// The actor finished its work and stopped itself.
    #[error("normal")]
    Normal,
    /// The actor was asked to stop (by its supervisor or a handle), with an
    /// optional detail.
    #[error("shutdown{}", .0.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    Shutdown(Option<String>),
    /// A handler returned an error, or the actor gave up (a supervisor that
    /// exceeded its restart intensity exits with this).
    #[error("failed: {0}")]
    Failed(String),
    /// A handler panicked. The panic is contained to the actor.
    #[error("panicked: {0}")]
    Panicked(String),
    /// The actor was killed without a chance to clean up (`brutal_kill`, or a
    /// graceful stop that ran past its shutdown timeout).
    #[error("killed")]
    Killed,
    /// The node the actor lived on is gone, or the link that carried a
    /// request to it broke before the answer came. The text starts with
    /// the node's id; when a broken link (not the membership) saw it
    /// first, what broke follows in parentheses.
    #[error("node down: {0}")]
    NodeDown(String),
}

impl ExitReason {
    /// `Normal` and `Shutdown` are normal exits: a `transient` child that
    /// exits with them is not restarted.
    pub fn is_normal(&self) -> bool {
        matches!(self, ExitReason::Normal | ExitReason::Shutdown(_))
    }

    /// Encodes the reason into ractor's stop-reason string.
    pub fn to_stop_string(&self) -> String {
        match self {
            ExitReason::Normal => "normal".to_owned(),
            ExitReason::Shutdown(None) => "shutdown".to_owned(),
            ExitReason::Shutdown(Some(d)) => format!("shutdown:{d}"),
            ExitReason::Killed => "killed".to_owned(),
            ExitReason::Failed(m) => format!("failed:{m}"),
            ExitReason::Panicked(m) => format!("panicked:{m}"),
            ExitReason::NodeDown(n) => format!("node_down:{n}"),
        }
    }

    /// Decodes ractor's stop-reason string (see [`ExitReason::to_stop_string`]).
    /// A stop without a reason is a normal exit; an unknown string is a
    /// shutdown carrying that string.
    pub fn from_stop_string(reason: Option<&str>) -> ExitReason {
        let Some(r) = reason else {
            return ExitReason::Normal;
        };
        match r {
            "normal" => ExitReason::Normal,
            "shutdown" => ExitReason::Shutdown(None),
            // ractor's own names for a kill and a cancelled task.
            "killed" | "actor_task_cancelled" => ExitReason::Killed,
            _ => {
                if let Some(d) = r.strip_prefix("shutdown:") {
                    ExitReason::Shutdown(Some(d.to_owned()))
                } else if let Some(m) = r.strip_prefix("failed:") {
                    ExitReason::Failed(m.to_owned())
                } else if let Some(m) = r.strip_prefix("panicked:") {
                    ExitReason::Panicked(m.to_owned())
                } else if let Some(n) = r.strip_prefix("node_down:") {
                    ExitReason::NodeDown(n.to_owned())
                } else {
                    ExitReason::Shutdown(Some(r.to_owned()))
                }
            }
        }
    }

    /// Decodes the error ractor reports for a failed actor: Manta actors fail
    /// with an [`ExitReason`]; anything else is a failure with its text.
    pub fn from_failure(err: &(dyn std::error::Error + Send + Sync + 'static)) -> ExitReason {
        match err.downcast_ref::<ExitReason>() {
            Some(r) => r.clone(),
            None => ExitReason::Failed(err.to_string()),
        }
    }
}

/// The exit state every actor handle shares: set once, when the actor stops.
#[derive(Debug)]
pub struct ExitSignal {
    tx: watch::Sender<Option<ExitReason>>,
    /// A stop requested through a handle, recorded before ractor is told so
    /// that the exit carries the requested reason.
    pending: Mutex<Option<ExitReason>>,
}

impl Default for ExitSignal {
    fn default() -> Self {
        Self::new()
    }
}

impl ExitSignal {
    /// A signal for an actor that is still running.
    pub fn new() -> Self {
        let (tx, _rx) = watch::channel(None);
        Self {
            tx,
            pending: Mutex::new(None),
        }
    }

    /// Records the exit; the first reason wins. Returns whether this call set it.
    pub fn set(&self, reason: ExitReason) -> bool {
        self.tx.send_if_modified(|cur| {
            if cur.is_none() {
                *cur = Some(reason);
                true
            } else {
                false
            }
        })
    }

    /// The exit reason, once the actor has stopped.
    pub fn reason(&self) -> Option<ExitReason> {
        self.tx.borrow().clone()
    }

    /// Remembers the reason for a stop that is about to be requested.
    pub fn set_pending(&self, reason: ExitReason) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none() {
            *p = Some(reason);
        }
    }

    /// Takes the reason recorded by [`ExitSignal::set_pending`].
    pub fn take_pending(&self) -> Option<ExitReason> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// A future resolving to the exit reason.
    pub fn monitor(&self) -> Monitor {
        Monitor {
            rx: self.tx.subscribe(),
        }
    }
}

/// Watches one actor: resolves to its [`ExitReason`] when it stops (at once if
/// it already has). Obtained from a handle's `monitor()`.
#[derive(Debug, Clone)]
pub struct Monitor {
    rx: watch::Receiver<Option<ExitReason>>,
}

impl Monitor {
    /// A monitor that resolves as soon as `signal` is set.
    pub fn new(signal: &Arc<ExitSignal>) -> Self {
        signal.monitor()
    }

    /// Waits for the exit.
    pub async fn wait(mut self) -> ExitReason {
        loop {
            if let Some(r) = self.rx.borrow_and_update().clone() {
                return r;
            }
            if self.rx.changed().await.is_err() {
                // The sender lives in the actor's shared handle state; it is
                // only dropped once every handle is gone, which cannot happen
                // while this monitor's handle exists -- but be total anyway.
                return self.rx.borrow().clone().unwrap_or(ExitReason::Killed);
            }
        }
    }

    /// The exit reason if the actor has already stopped.
    pub fn try_get(&self) -> Option<ExitReason> {
        self.rx.borrow().clone()
    }
}

impl fmt::Display for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.try_get() {
            Some(r) => write!(f, "exited ({r})"),
            None => write!(f, "running"),
        }
    }
}
