//! The handle to a running supervisor, and introspection types.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use manta_actors::ractor::{ActorCell, ActorRef};
use manta_actors::{
    ActorHandle, ActorId, AnyHandle, ErasedHandle, ExitReason, ExitSignal, Message, Monitor,
    SpawnError,
};
use tokio::sync::{broadcast, oneshot};

use crate::event::{EventBus, SupervisorEvent};
use crate::spec::{ChildSpec, ChildType, Restart, SpecError};
use crate::supervisor::SupMsg;

/// A child's state as reported by `which_children`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildState {
    /// Running.
    Running,
    /// Waiting for a (backoff-delayed or retried) restart.
    Restarting,
    /// Not running and not going to be restarted (kept spec).
    Terminated,
}

/// One child, as `which_children` reports it.
#[derive(Debug, Clone)]
pub struct ChildInfo {
    /// Child id.
    pub id: String,
    /// The running instance, if any.
    pub handle: Option<AnyHandle>,
    /// Its state.
    pub state: ChildState,
    /// Worker or supervisor.
    pub child_type: ChildType,
    /// Restart type.
    pub restart: Restart,
    /// How often it has been restarted.
    pub restarts: u32,
}

impl ChildInfo {
    /// The running instance's actor id.
    pub fn actor(&self) -> Option<ActorId> {
        self.handle.as_ref().map(|h| h.id())
    }
}

/// Counts as `count_children` reports them (OTP's specs/active/supervisors/workers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChildCounts {
    /// Child specs (dynamic children included).
    pub specs: usize,
    /// Running children.
    pub active: usize,
    /// Children that are supervisors.
    pub supervisors: usize,
    /// Children that are workers.
    pub workers: usize,
}

/// Errors of supervisor operations.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SupervisorError {
    /// The supervisor has stopped.
    #[error("supervisor is not running{}", .0.as_ref().map(|r| format!(" ({r})")).unwrap_or_default())]
    NotRunning(Option<ExitReason>),
    /// A child with this id exists.
    #[error("child `{0}` already present")]
    AlreadyPresent(String),
    /// No child with this id.
    #[error("no child `{0}`")]
    NotFound(String),
    /// The operation needs the child to be stopped.
    #[error("child `{0}` is running")]
    Running(String),
    /// The child is waiting for a restart (a backoff delay, or a retry of
    /// a failed start): it is neither running nor stopped (OTP's
    /// `{error, restarting}`).
    #[error("child `{0}` is waiting to restart")]
    Restarting(String),
    /// Starting a child failed ([`source`](std::error::Error::source):
    /// the child's error, and its cause in turn).
    #[error("child `{child}` failed to start")]
    StartFailed {
        /// Child id.
        child: String,
        /// The error.
        #[source]
        error: SpawnError,
    },
    /// The spec is invalid.
    #[error("invalid supervisor spec: {0}")]
    InvalidSpec(SpecError),
    /// The child exists but is not running now (terminated, or waiting for
    /// a restart).
    #[error("child `{0}` is not running")]
    ChildNotRunning(String),
    /// The child takes another message type than the one asked for.
    #[error("child `{child}` takes `{actual}`, not `{expected}`")]
    WrongType {
        /// The child's id.
        child: String,
        /// The message type asked for.
        expected: &'static str,
        /// The message type it takes.
        actual: String,
    },
    /// The operation is for the other kind of supervisor (dynamic vs static).
    #[error("{0}")]
    WrongKind(&'static str),
}

/// A supervisor that could not start, as its parent sees it: a child
/// failure keeps the child's id and its cause as the error's source.
impl From<SupervisorError> for SpawnError {
    fn from(e: SupervisorError) -> Self {
        match e {
            SupervisorError::StartFailed { child, error } => SpawnError::Child {
                child,
                source: Box::new(error),
            },
            SupervisorError::InvalidSpec(e) => SpawnError::InvalidSpec(e),
            other => SpawnError::Startup(ExitReason::Failed(other.to_string())),
        }
    }
}

/// A running supervisor.
#[derive(Clone)]
pub struct SupervisorHandle {
    pub(crate) actor: ActorRef<SupMsg>,
    pub(crate) exit: Arc<ExitSignal>,
    pub(crate) name: String,
    pub(crate) events: EventBus,
}

impl fmt::Debug for SupervisorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisorHandle")
            .field("name", &self.name)
            .field("id", &self.id())
            .finish()
    }
}

impl SupervisorHandle {
    /// The supervisor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The supervisor's actor id.
    pub fn id(&self) -> ActorId {
        ActorId::Local(self.actor.get_id().pid())
    }

    /// The supervisor's ractor cell (supervision plumbing).
    #[doc(hidden)]
    pub fn cell(&self) -> ActorCell {
        self.actor.get_cell()
    }

    /// Subscribes to the events of this supervisor's tree from now on (the
    /// bus its spec was given, or the one it made: no need to create it
    /// before starting the tree).
    pub fn subscribe(&self) -> broadcast::Receiver<SupervisorEvent> {
        self.events.subscribe()
    }

    /// The running child `id`, typed: its current instance (a restarted
    /// child has a new one).
    pub async fn child<M: Message>(&self, id: &str) -> Result<ActorHandle<M>, SupervisorError> {
        let kids = self.which_children().await?;
        let c = kids
            .into_iter()
            .find(|c| c.id == id)
            .ok_or_else(|| SupervisorError::NotFound(id.to_owned()))?;
        let h = c
            .handle
            .ok_or_else(|| SupervisorError::ChildNotRunning(id.to_owned()))?;
        h.downcast::<M>().ok_or_else(|| SupervisorError::WrongType {
            child: id.to_owned(),
            expected: M::NAME,
            actual: h.message_type().to_owned(),
        })
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> SupMsg,
    ) -> Result<T, SupervisorError> {
        let (tx, rx) = oneshot::channel();
        self.actor
            .cast(make(tx))
            .map_err(|_| SupervisorError::NotRunning(self.exit.reason()))?;
        rx.await
            .map_err(|_| SupervisorError::NotRunning(self.exit.reason()))
    }

    /// Every child with its state and restart count, in start order.
    pub async fn which_children(&self) -> Result<Vec<ChildInfo>, SupervisorError> {
        self.call(SupMsg::WhichChildren).await
    }

    /// Child counts.
    pub async fn count_children(&self) -> Result<ChildCounts, SupervisorError> {
        self.call(SupMsg::CountChildren).await
    }

    /// Adds and starts a child (static supervisors).
    pub async fn start_child(&self, spec: ChildSpec) -> Result<AnyHandle, SupervisorError> {
        self.call(|tx| SupMsg::StartChild(Box::new(spec), tx))
            .await?
    }

    /// Starts a child from the template (dynamic supervisors). Returns its
    /// generated id and handle.
    pub async fn start_dynamic(&self) -> Result<(String, AnyHandle), SupervisorError> {
        self.call(|tx| SupMsg::StartDynamic(None, tx)).await?
    }

    /// Starts a child from the template with other arguments (OTP's extra
    /// start arguments): the same kind, the template's restart and shutdown
    /// settings, `args` decoded as the kind's argument type. A template not
    /// made from a kind takes no arguments (an error).
    pub async fn start_dynamic_with<Args: serde::Serialize>(
        &self,
        args: &Args,
    ) -> Result<(String, AnyHandle), SupervisorError> {
        let args = serde_json::to_value(args).map_err(|e| SupervisorError::StartFailed {
            child: "(template)".to_owned(),
            error: SpawnError::BadArgs {
                kind: "(template)".to_owned(),
                message: e.to_string(),
            },
        })?;
        self.call(|tx| SupMsg::StartDynamic(Some(args), tx)).await?
    }

    /// Stops a child with its shutdown mode. A static child's spec is kept
    /// (restart it with `restart_child`); a dynamic child is removed.
    pub async fn terminate_child(&self, id: &str) -> Result<(), SupervisorError> {
        self.call(|tx| SupMsg::TerminateChild(id.to_owned(), tx))
            .await?
    }

    /// Starts a terminated child again.
    pub async fn restart_child(&self, id: &str) -> Result<AnyHandle, SupervisorError> {
        self.call(|tx| SupMsg::RestartChild(id.to_owned(), tx))
            .await?
    }

    /// Removes a terminated child's spec.
    pub async fn delete_child(&self, id: &str) -> Result<(), SupervisorError> {
        self.call(|tx| SupMsg::DeleteChild(id.to_owned(), tx))
            .await?
    }

    /// Asks the supervisor to stop: it stops its children in reverse order,
    /// each with its shutdown mode, then itself.
    pub fn stop(&self, reason: ExitReason) {
        self.exit.set_pending(reason.clone());
        self.actor.stop(Some(reason.to_stop_string()));
    }

    /// Stops the supervisor and waits until it and its children are gone.
    pub async fn shutdown(&self) -> ExitReason {
        self.stop(ExitReason::Shutdown(None));
        self.monitor().wait().await
    }

    /// Kills the supervisor; ractor kills its children with it.
    pub fn kill(&self) {
        self.actor.kill();
    }

    /// Resolves to the supervisor's exit reason.
    pub fn monitor(&self) -> Monitor {
        self.exit.monitor()
    }

    /// Erases the handle, to manage the supervisor as a child.
    pub fn into_any(self) -> AnyHandle {
        AnyHandle::new(Arc::new(self))
    }
}

impl ErasedHandle for SupervisorHandle {
    fn id(&self) -> ActorId {
        SupervisorHandle::id(self)
    }
    fn cell(&self) -> Option<ActorCell> {
        Some(SupervisorHandle::cell(self))
    }
    fn message_type(&self) -> &'static str {
        "manta_supervision::Supervisor"
    }
    fn stop(&self, reason: ExitReason) {
        SupervisorHandle::stop(self, reason)
    }
    fn kill(&self) {
        SupervisorHandle::kill(self)
    }
    fn monitor(&self) -> Monitor {
        SupervisorHandle::monitor(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}
