//! The supervisor actor: OTP's supervisor behaviour on ractor.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use manta_actors::ractor::{self, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use manta_actors::{ActorSystem, AnyHandle, ExitReason, ExitSignal, SpawnError, StartContext};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::event::{EventBus, ExitAction, SupervisorEvent};
use crate::handle::{ChildCounts, ChildInfo, ChildState, SupervisorError, SupervisorHandle};
use crate::spec::{
    Backoff, ChildSpec, ChildStart, ChildType, Restart, Shutdown, Strategy, SupervisorSpec,
};

type Reply<T> = oneshot::Sender<Result<T, SupervisorError>>;

/// Messages a supervisor handles (its handle sends them).
pub(crate) enum SupMsg {
    WhichChildren(oneshot::Sender<Vec<ChildInfo>>),
    CountChildren(oneshot::Sender<ChildCounts>),
    StartChild(Box<ChildSpec>, Reply<AnyHandle>),
    /// From the template, with other arguments when given.
    StartDynamic(Option<manta_actors::ArgsValue>, Reply<(String, AnyHandle)>),
    TerminateChild(String, Reply<()>),
    RestartChild(String, Reply<AnyHandle>),
    DeleteChild(String, Reply<()>),
    /// Restart these children now (after a backoff delay or a failed
    /// start), if each still waits for *this* restart (the generation it
    /// was marked with: a later restart of a larger group supersedes it).
    Restart(Vec<String>, u64),
}

/// Starts supervisors.
#[derive(Debug, Clone, Copy)]
pub struct Supervisor;

impl Supervisor {
    /// Validates `spec`, starts the supervisor and its children in order.
    /// Fails (having stopped what it started) if a child fails to start.
    pub async fn start(
        system: &ActorSystem,
        spec: SupervisorSpec,
    ) -> Result<SupervisorHandle, SupervisorError> {
        spawn_supervisor(system.clone(), spec, None).await
    }

    /// Like [`Supervisor::start`], linked to a parent supervisor's cell
    /// (supervision plumbing).
    #[doc(hidden)]
    pub async fn start_linked(
        system: &ActorSystem,
        spec: SupervisorSpec,
        parent: ActorCell,
    ) -> Result<SupervisorHandle, SupervisorError> {
        spawn_supervisor(system.clone(), spec, Some(parent)).await
    }
}

/// Boxed so that supervisors starting supervisors do not make an infinitely
/// large future type.
fn spawn_supervisor(
    system: ActorSystem,
    spec: SupervisorSpec,
    link: Option<ActorCell>,
) -> BoxFuture<'static, Result<SupervisorHandle, SupervisorError>> {
    Box::pin(async move {
        spec.validate().map_err(SupervisorError::InvalidSpec)?;
        let exit = Arc::new(ExitSignal::new());
        let events = spec.events.clone().unwrap_or_default();
        let events_handle = events.clone();
        let name = spec.name.clone();
        let actor = SupActor {
            exit: Arc::clone(&exit),
            events: events.clone(),
            name: name.clone(),
        };
        let args = SupArgs {
            spec,
            system,
            events,
        };
        let spawned = match link {
            Some(parent) => ractor::Actor::spawn_linked(None, actor, args, parent).await,
            None => ractor::Actor::spawn(None, actor, args).await,
        };
        match spawned {
            Ok((actor, _join)) => Ok(SupervisorHandle {
                actor,
                exit,
                name,
                events: events_handle,
            }),
            Err(ractor::SpawnErr::StartupFailed(err)) => {
                Err(match err.downcast::<SupervisorError>() {
                    Ok(e) => *e,
                    Err(other) => SupervisorError::StartFailed {
                        child: name,
                        error: SpawnError::Startup(ExitReason::from_failure(other.as_ref())),
                    },
                })
            }
            Err(other) => Err(SupervisorError::StartFailed {
                child: name,
                error: SpawnError::Startup(ExitReason::Failed(other.to_string())),
            }),
        }
    })
}

/// The ractor handler. It owns the exit signal so that the supervisor's exit
/// is published even when it is killed (the handler is dropped with the task).
struct SupActor {
    exit: Arc<ExitSignal>,
    events: EventBus,
    name: String,
}

impl Drop for SupActor {
    fn drop(&mut self) {
        if self.exit.set(ExitReason::Killed) {
            tracing::warn!(target: "manta::supervisor", supervisor = %self.name, "supervisor killed");
            self.events.emit(SupervisorEvent::SupervisorStopped {
                supervisor: self.name.clone(),
                at: SystemTime::now(),
                reason: ExitReason::Killed,
            });
        }
    }
}

struct SupArgs {
    spec: SupervisorSpec,
    system: ActorSystem,
    events: EventBus,
}

struct Child {
    spec: ChildSpec,
    handle: Option<AnyHandle>,
    state: ChildState,
    restarts: u32,
    /// When the running instance started (not when its restart was
    /// scheduled: time spent waiting for a backoff is not run time).
    started: Option<Instant>,
    /// Restarts this child's own exits caused since it last ran for a whole
    /// period: the backoff exponent.
    backoff_n: u32,
    /// The restart this child waits for (while `Restarting`): requests of
    /// another generation are stale and leave it alone.
    generation: u64,
}

impl Child {
    fn new(spec: ChildSpec, state: ChildState) -> Self {
        Self {
            spec,
            handle: None,
            state,
            restarts: 0,
            started: None,
            backoff_n: 0,
            generation: 0,
        }
    }
}

pub(crate) struct SupState {
    name: String,
    strategy: Strategy,
    intensity: u32,
    period: Duration,
    backoff: Option<Backoff>,
    template: Option<ChildSpec>,
    children: Vec<Child>,
    restarts: VecDeque<Instant>,
    system: ActorSystem,
    events: EventBus,
    myself: ActorRef<SupMsg>,
    seq: u64,
    /// The last restart generation handed out.
    generation: u64,
}

/// Stops one child with its shutdown mode; returns the observed exit and
/// whether the graceful stop timed out and the child was killed.
async fn shutdown_child(handle: &AnyHandle, mode: Shutdown) -> (ExitReason, bool) {
    let mon = handle.monitor();
    match mode {
        Shutdown::BrutalKill => {
            handle.kill();
            (mon.wait().await, false)
        }
        Shutdown::Infinity => {
            handle.stop(ExitReason::Shutdown(None));
            (mon.wait().await, false)
        }
        Shutdown::Timeout(limit) => {
            handle.stop(ExitReason::Shutdown(None));
            match tokio::time::timeout(limit, mon.clone().wait()).await {
                Ok(reason) => (reason, false),
                Err(_) => {
                    handle.kill();
                    (mon.wait().await, true)
                }
            }
        }
    }
}

impl SupState {
    fn is_dynamic(&self) -> bool {
        self.strategy == Strategy::SimpleOneForOne
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        self.children.iter().position(|c| c.spec.id == id)
    }

    fn emit(&self, ev: SupervisorEvent) {
        match &ev {
            SupervisorEvent::ChildStarted {
                child,
                actor,
                restarts,
                ..
            } => {
                tracing::info!(target: "manta::supervisor", supervisor = %self.name, %child, %actor, restarts, "child started")
            }
            SupervisorEvent::ChildExited {
                child,
                reason,
                action,
                ..
            } => {
                if reason.is_normal() {
                    tracing::info!(target: "manta::supervisor", supervisor = %self.name, %child, %reason, %action, "child exited")
                } else {
                    tracing::warn!(target: "manta::supervisor", supervisor = %self.name, %child, %reason, %action, "child exited")
                }
            }
            SupervisorEvent::ChildTerminated {
                child,
                reason,
                forced,
                ..
            } => {
                tracing::info!(target: "manta::supervisor", supervisor = %self.name, %child, %reason, forced, "child terminated")
            }
            SupervisorEvent::ChildDropped { child, .. } => {
                tracing::info!(target: "manta::supervisor", supervisor = %self.name, %child, "temporary child dropped")
            }
            SupervisorEvent::StartFailed { child, error, .. } => {
                tracing::error!(target: "manta::supervisor", supervisor = %self.name, %child, %error, "child failed to start")
            }
            SupervisorEvent::RestartScheduled {
                children, delay, ..
            } => {
                tracing::info!(target: "manta::supervisor", supervisor = %self.name, children = %children.join(","), ?delay, "restart scheduled")
            }
            SupervisorEvent::Escalated { child, reason, .. } => {
                tracing::error!(target: "manta::supervisor", supervisor = %self.name, %child, %reason, intensity = self.intensity, period = ?self.period, "restart intensity exceeded, escalating")
            }
            SupervisorEvent::SupervisorStopped { reason, .. } => {
                tracing::info!(target: "manta::supervisor", supervisor = %self.name, %reason, "supervisor stopped")
            }
        }
        self.events.emit(ev);
    }

    /// Starts one instance of `spec`, linked to this supervisor.
    fn start_one(&self, spec: &ChildSpec) -> BoxFuture<'static, Result<AnyHandle, SpawnError>> {
        let system = self.system.clone();
        let link = self.myself.get_cell();
        let register = spec.register.clone();
        match &spec.start {
            ChildStart::Factory(f) => f.start(StartContext {
                system,
                link: Some(link),
                name: register,
            }),
            ChildStart::Supervisor(s) => {
                let mut s = (**s).clone();
                if s.events.is_none() {
                    s.events = Some(self.events.clone());
                }
                Box::pin(async move {
                    let h = spawn_supervisor(system.clone(), s, Some(link))
                        .await
                        .map_err(SpawnError::from)?;
                    let any = h.into_any();
                    if let Some(name) = register {
                        if let Err(e) = system.register_any(name, any.clone()) {
                            any.kill();
                            return Err(e);
                        }
                    }
                    Ok(any)
                })
            }
        }
    }

    fn info(&self) -> Vec<ChildInfo> {
        self.children
            .iter()
            .map(|c| ChildInfo {
                id: c.spec.id.clone(),
                handle: c.handle.clone(),
                state: c.state,
                child_type: c.spec.child_type(),
                restart: c.spec.restart,
                restarts: c.restarts,
            })
            .collect()
    }

    fn counts(&self) -> ChildCounts {
        let mut n = ChildCounts {
            specs: self.children.len(),
            ..ChildCounts::default()
        };
        for c in &self.children {
            if c.handle.is_some() {
                n.active += 1;
            }
            match c.spec.child_type() {
                ChildType::Worker => n.workers += 1,
                ChildType::Supervisor => n.supervisors += 1,
            }
        }
        n
    }

    /// Starts the child at `idx` (must not be running), counting a restart
    /// if `restart` is set.
    async fn start_at(&mut self, idx: usize, restart: bool) -> Result<AnyHandle, SpawnError> {
        let fut = self.start_one(&self.children[idx].spec);
        let handle = fut.await?;
        let child = &mut self.children[idx];
        if restart {
            child.restarts += 1;
        }
        child.handle = Some(handle.clone());
        child.state = ChildState::Running;
        child.started = Some(Instant::now());
        let ev = SupervisorEvent::ChildStarted {
            supervisor: self.name.clone(),
            at: SystemTime::now(),
            child: child.spec.id.clone(),
            actor: handle.id(),
            restarts: child.restarts,
        };
        self.emit(ev);
        Ok(handle)
    }

    /// Stops the running child at `idx` with its shutdown mode.
    async fn terminate_at(&mut self, idx: usize) {
        let child = &mut self.children[idx];
        child.state = ChildState::Terminated;
        let Some(handle) = child.handle.take() else {
            return;
        };
        let mode = child.spec.shutdown;
        let id = child.spec.id.clone();
        let (reason, forced) = shutdown_child(&handle, mode).await;
        self.terminated(id, &handle, reason, forced);
    }

    /// Reports a child stopped by this supervisor.
    fn terminated(&self, child: String, handle: &AnyHandle, reason: ExitReason, forced: bool) {
        self.emit(SupervisorEvent::ChildTerminated {
            supervisor: self.name.clone(),
            at: SystemTime::now(),
            child,
            actor: handle.id(),
            reason,
            forced,
        });
    }

    /// Stops every running child, last started first. The children of a
    /// `simple_one_for_one` supervisor are stopped all at once instead
    /// (OTP: in parallel, in no defined order), so stopping N of them
    /// takes one shutdown timeout, not N.
    async fn terminate_all(&mut self) {
        if !self.is_dynamic() {
            for idx in (0..self.children.len()).rev() {
                self.terminate_at(idx).await;
            }
            return;
        }
        // Listed (and reported) last started first, as static children.
        let stopping: Vec<(String, AnyHandle, Shutdown)> = self
            .children
            .iter_mut()
            .rev()
            .filter_map(|c| {
                c.state = ChildState::Terminated;
                let h = c.handle.take()?;
                Some((c.spec.id.clone(), h, c.spec.shutdown))
            })
            .collect();
        let stopped = futures::future::join_all(
            stopping
                .iter()
                .map(|(_, handle, mode)| shutdown_child(handle, *mode)),
        )
        .await;
        for ((id, handle, _), (reason, forced)) in stopping.into_iter().zip(stopped) {
            self.terminated(id, &handle, reason, forced);
        }
    }

    /// Records a restart in the sliding window; false when it exceeds the
    /// intensity.
    fn add_restart(&mut self) -> bool {
        let now = Instant::now();
        self.restarts.push_back(now);
        while let Some(&t) = self.restarts.front() {
            if now.duration_since(t) > self.period {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
        self.restarts.len() <= self.intensity as usize
    }

    /// Gives up: stops all children and returns the error the supervisor
    /// fails with.
    async fn escalate(&mut self, child: String, reason: ExitReason) -> ActorProcessingErr {
        self.emit(SupervisorEvent::Escalated {
            supervisor: self.name.clone(),
            at: SystemTime::now(),
            child: child.clone(),
            reason: reason.clone(),
        });
        self.terminate_all().await;
        Box::new(ExitReason::Failed(format!(
            "supervisor `{}` exceeded its restart intensity ({} in {:?}); last exit: `{child}` {reason}",
            self.name, self.intensity, self.period
        )))
    }

    /// Handles the exit of the child at `idx`, per its restart type and the
    /// strategy.
    async fn child_exited(
        &mut self,
        idx: usize,
        reason: ExitReason,
    ) -> Result<(), ActorProcessingErr> {
        let (id, restart_type, actor) = {
            let c = &mut self.children[idx];
            let actor = c.handle.take().map(|h| h.id());
            c.state = ChildState::Terminated;
            (c.spec.id.clone(), c.spec.restart, actor)
        };
        let restart = match restart_type {
            Restart::Permanent => true,
            Restart::Transient => !reason.is_normal(),
            Restart::Temporary => false,
        };
        if !restart {
            let remove = restart_type == Restart::Temporary || self.is_dynamic();
            self.emit(SupervisorEvent::ChildExited {
                supervisor: self.name.clone(),
                at: SystemTime::now(),
                child: id,
                actor,
                reason,
                action: if remove {
                    ExitAction::Remove
                } else {
                    ExitAction::Keep
                },
            });
            if remove {
                self.children.remove(idx);
            }
            return Ok(());
        }
        if !self.add_restart() {
            self.emit(SupervisorEvent::ChildExited {
                supervisor: self.name.clone(),
                at: SystemTime::now(),
                child: id.clone(),
                actor: actor.clone(),
                reason: reason.clone(),
                action: ExitAction::Escalate,
            });
            return Err(self.escalate(id, reason).await);
        }
        self.emit(SupervisorEvent::ChildExited {
            supervisor: self.name.clone(),
            at: SystemTime::now(),
            child: id.clone(),
            actor,
            reason,
            action: ExitAction::Restart,
        });
        // The group to restart, in start order.
        let first = match self.strategy {
            Strategy::OneForOne | Strategy::SimpleOneForOne => {
                return self.schedule_restart(vec![id.clone()], &id).await;
            }
            Strategy::OneForAll => 0,
            Strategy::RestForOne => idx,
        };
        for j in (first..self.children.len()).rev() {
            if j != idx {
                self.terminate_at(j).await;
            }
        }
        // Temporary children stopped by the strategy are dropped, none is
        // restarted (OTP). The failed child is not temporary (it would not
        // be restarted at all), so every temporary of the group goes.
        self.drop_temporaries(first);
        let group = self.children[first..]
            .iter()
            .map(|c| c.spec.id.clone())
            .collect();
        self.schedule_restart(group, &id).await?;
        Ok(())
    }

    /// Restarts `ids` now, or after the backoff delay, which grows with
    /// the number of restarts `failed` caused within the last period.
    /// Fails (the supervisor escalates) when restarting now fails once too
    /// often.
    async fn schedule_restart(
        &mut self,
        ids: Vec<String>,
        failed: &str,
    ) -> Result<(), ActorProcessingErr> {
        let generation = self.mark_restarting(&ids);
        // Akka's rule: the exponent grows with every restart and starts over
        // only once the child has *run* for a whole period.
        let now = Instant::now();
        let period = self.period;
        let n = match self.index_of(failed) {
            Some(i) => {
                let c = &mut self.children[i];
                if c.started.is_some_and(|t| now.duration_since(t) >= period) {
                    c.backoff_n = 0;
                }
                let n = c.backoff_n;
                c.backoff_n = c.backoff_n.saturating_add(1);
                n
            }
            None => 0,
        };
        let delay = self.backoff.map(|b| b.delay(n));
        match delay {
            Some(delay) if !delay.is_zero() => {
                self.emit(SupervisorEvent::RestartScheduled {
                    supervisor: self.name.clone(),
                    at: SystemTime::now(),
                    children: ids.clone(),
                    delay,
                });
                let me = self.myself.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    // The supervisor may be gone by then; nothing to restart.
                    let _ = me.cast(SupMsg::Restart(ids, generation));
                });
            }
            _ => {
                // Restart in this very handler; a failed start is retried
                // through the mailbox (and counted) by `restart_now`, and
                // exceeding the intensity there fails the supervisor.
                return self.restart_now(ids, generation).await;
            }
        }
        Ok(())
    }

    /// Marks `ids` as waiting for one new restart generation (superseding
    /// any restart they waited for before) and returns it.
    fn mark_restarting(&mut self, ids: &[String]) -> u64 {
        self.generation += 1;
        for id in ids {
            if let Some(i) = self.index_of(id) {
                let c = &mut self.children[i];
                c.state = ChildState::Restarting;
                c.generation = self.generation;
            }
        }
        self.generation
    }

    /// Starts the children in `ids` that still wait for this restart
    /// (`generation`), in order. A request superseded by a later restart
    /// of a larger group (a `rest_for_one` or `one_for_all` restart caused
    /// by an earlier sibling meanwhile) starts nothing: that restart starts
    /// them, in start order, after the sibling they depend on (OTP drops a
    /// stale `try_again_restart` the same way). A failed start counts as a
    /// restart and is retried through the mailbox: under `one_for_all`
    /// every child is stopped and started again (as OTP does), otherwise
    /// the failed child and those after it in `ids`. Exceeding the
    /// intensity escalates.
    async fn restart_now(
        &mut self,
        ids: Vec<String>,
        generation: u64,
    ) -> Result<(), ActorProcessingErr> {
        let mut pending: VecDeque<String> = ids.into();
        while let Some(id) = pending.pop_front() {
            let Some(idx) = self.index_of(&id) else {
                continue;
            };
            let c = &self.children[idx];
            if c.state != ChildState::Restarting || c.generation != generation {
                continue;
            }
            if let Err(e) = self.start_at(idx, true).await {
                self.emit(SupervisorEvent::StartFailed {
                    supervisor: self.name.clone(),
                    at: SystemTime::now(),
                    child: id.clone(),
                    error: manta_actors::error_chain(&e),
                });
                if !self.add_restart() {
                    return Err(self
                        .escalate(id, ExitReason::Failed(manta_actors::error_chain(&e)))
                        .await);
                }
                let retry: Vec<String> = if self.strategy == Strategy::OneForAll {
                    for j in (0..self.children.len()).rev() {
                        if self.children[j].handle.is_some() {
                            self.terminate_at(j).await;
                        }
                    }
                    self.drop_temporaries(0);
                    self.children.iter().map(|c| c.spec.id.clone()).collect()
                } else {
                    std::iter::once(id).chain(pending).collect()
                };
                let generation = self.mark_restarting(&retry);
                // Through the mailbox, so requests are served in between.
                let _ = self.myself.cast(SupMsg::Restart(retry, generation));
                return Ok(());
            }
        }
        Ok(())
    }

    /// Drops the temporary children from `first` on (stopped by a group
    /// restart: OTP restarts none of them).
    fn drop_temporaries(&mut self, first: usize) {
        let mut j = first;
        while j < self.children.len() {
            if self.children[j].spec.restart == Restart::Temporary {
                let dropped = self.children.remove(j);
                self.emit(SupervisorEvent::ChildDropped {
                    supervisor: self.name.clone(),
                    at: SystemTime::now(),
                    child: dropped.spec.id,
                });
            } else {
                j += 1;
            }
        }
    }

    async fn start_dynamic(
        &mut self,
        args: Option<manta_actors::ArgsValue>,
    ) -> Result<(String, AnyHandle), SupervisorError> {
        let Some(template) = &self.template else {
            return Err(SupervisorError::WrongKind(
                "start_dynamic needs a simple_one_for_one supervisor",
            ));
        };
        self.seq += 1;
        let mut spec = template.clone();
        spec.id = format!("{}-{}", template.id, self.seq);
        if let Some(args) = args {
            let ChildStart::Factory(f) = &spec.start else {
                return Err(SupervisorError::WrongKind(
                    "a supervisor template takes no start arguments",
                ));
            };
            let with = f
                .with_args(args)
                .map_err(|error| SupervisorError::StartFailed {
                    child: spec.id.clone(),
                    error,
                })?;
            spec.start = ChildStart::Factory(with);
        }
        let id = spec.id.clone();
        self.children.push(Child::new(spec, ChildState::Restarting));
        let idx = self.children.len() - 1;
        match self.start_at(idx, false).await {
            Ok(h) => Ok((id, h)),
            Err(error) => {
                self.children.remove(idx);
                Err(SupervisorError::StartFailed { child: id, error })
            }
        }
    }

    async fn request(&mut self, msg: SupMsg) -> Result<(), ActorProcessingErr> {
        match msg {
            SupMsg::WhichChildren(tx) => {
                let _ = tx.send(self.info());
            }
            SupMsg::CountChildren(tx) => {
                let _ = tx.send(self.counts());
            }
            SupMsg::StartChild(spec, tx) => {
                let r = self.add_child(*spec).await;
                let _ = tx.send(r);
            }
            SupMsg::StartDynamic(args, tx) => {
                let r = self.start_dynamic(args).await;
                let _ = tx.send(r);
            }
            SupMsg::TerminateChild(id, tx) => {
                let r = match self.index_of(&id) {
                    None => Err(SupervisorError::NotFound(id)),
                    Some(idx) => {
                        self.terminate_at(idx).await;
                        // A temporary child's spec goes with its process
                        // (OTP: restart_child and delete_child have no
                        // meaning for it); a dynamic child's too.
                        if self.is_dynamic()
                            || self.children[idx].spec.restart == Restart::Temporary
                        {
                            self.children.remove(idx);
                        }
                        Ok(())
                    }
                };
                let _ = tx.send(r);
            }
            SupMsg::RestartChild(id, tx) => {
                let r = self.restart_child(id).await;
                let _ = tx.send(r);
            }
            SupMsg::DeleteChild(id, tx) => {
                let r = if self.is_dynamic() {
                    Err(SupervisorError::WrongKind(
                        "delete_child is not for simple_one_for_one supervisors",
                    ))
                } else {
                    match self.index_of(&id) {
                        None => Err(SupervisorError::NotFound(id)),
                        Some(idx) if self.children[idx].state == ChildState::Restarting => {
                            Err(SupervisorError::Restarting(id))
                        }
                        Some(idx) if self.children[idx].state != ChildState::Terminated => {
                            Err(SupervisorError::Running(id))
                        }
                        Some(idx) => {
                            self.children.remove(idx);
                            Ok(())
                        }
                    }
                };
                let _ = tx.send(r);
            }
            SupMsg::Restart(ids, generation) => return self.restart_now(ids, generation).await,
        }
        Ok(())
    }

    async fn add_child(&mut self, spec: ChildSpec) -> Result<AnyHandle, SupervisorError> {
        if self.is_dynamic() {
            return Err(SupervisorError::WrongKind(
                "start_child(spec) is not for simple_one_for_one supervisors; use start_dynamic",
            ));
        }
        if self.index_of(&spec.id).is_some() {
            return Err(SupervisorError::AlreadyPresent(spec.id));
        }
        let id = spec.id.clone();
        self.children.push(Child::new(spec, ChildState::Terminated));
        let idx = self.children.len() - 1;
        self.start_at(idx, false).await.map_err(|error| {
            self.children.remove(idx);
            SupervisorError::StartFailed { child: id, error }
        })
    }

    async fn restart_child(&mut self, id: String) -> Result<AnyHandle, SupervisorError> {
        if self.is_dynamic() {
            return Err(SupervisorError::WrongKind(
                "restart_child is not for simple_one_for_one supervisors",
            ));
        }
        let idx = self
            .index_of(&id)
            .ok_or_else(|| SupervisorError::NotFound(id.clone()))?;
        match self.children[idx].state {
            ChildState::Terminated => {}
            ChildState::Restarting => return Err(SupervisorError::Restarting(id)),
            ChildState::Running => return Err(SupervisorError::Running(id)),
        }
        self.start_at(idx, false)
            .await
            .map_err(|error| SupervisorError::StartFailed { child: id, error })
    }
}

impl ractor::Actor for SupActor {
    type Msg = SupMsg;
    type State = SupState;
    type Arguments = SupArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupMsg>,
        args: SupArgs,
    ) -> Result<SupState, ActorProcessingErr> {
        let SupArgs {
            mut spec,
            system,
            events,
        } = args;
        let template = if spec.strategy == Strategy::SimpleOneForOne {
            spec.children.pop()
        } else {
            None
        };
        let mut st = SupState {
            name: spec.name.clone(),
            strategy: spec.strategy,
            intensity: spec.intensity,
            period: spec.period,
            backoff: spec.backoff,
            template,
            children: Vec::new(),
            restarts: VecDeque::new(),
            system,
            events,
            myself,
            seq: 0,
            generation: 0,
        };
        let mut failure = None;
        if st.is_dynamic() {
            for _ in 0..spec.instances {
                if let Err(e) = st.start_dynamic(None).await {
                    failure = Some(e);
                    break;
                }
            }
        } else {
            for child in spec.children {
                let id = child.id.clone();
                st.children.push(Child::new(child, ChildState::Terminated));
                let idx = st.children.len() - 1;
                if let Err(error) = st.start_at(idx, false).await {
                    st.emit(SupervisorEvent::StartFailed {
                        supervisor: st.name.clone(),
                        at: SystemTime::now(),
                        child: id.clone(),
                        error: error.to_string(),
                    });
                    failure = Some(SupervisorError::StartFailed { child: id, error });
                    break;
                }
            }
        }
        if let Some(e) = failure {
            st.terminate_all().await;
            self.exit.set(ExitReason::Failed(e.to_string()));
            return Err(Box::new(e));
        }
        Ok(st)
    }

    async fn handle(
        &self,
        _myself: ActorRef<SupMsg>,
        msg: SupMsg,
        st: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        let r = st.request(msg).await;
        if let Err(e) = &r {
            self.exit.set(ExitReason::from_failure(e.as_ref()));
        }
        r
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<SupMsg>,
        evt: SupervisionEvent,
        st: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match evt {
            SupervisionEvent::ActorTerminated(cell, _state, reason) => {
                (cell, ExitReason::from_stop_string(reason.as_deref()))
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                (cell, ExitReason::from_failure(err.as_ref()))
            }
            _ => return Ok(()),
        };
        let id = cell.get_id();
        let Some(idx) = st.children.iter().position(|c| {
            c.handle
                .as_ref()
                .and_then(|h| h.cell())
                .is_some_and(|cc| cc.get_id() == id)
        }) else {
            // Not a current child: one this supervisor already stopped.
            return Ok(());
        };
        let r = st.child_exited(idx, reason).await;
        if let Err(e) = &r {
            self.exit.set(ExitReason::from_failure(e.as_ref()));
        }
        r
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SupMsg>,
        st: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        st.terminate_all().await;
        let reason = self.exit.take_pending().unwrap_or(ExitReason::Normal);
        st.emit(SupervisorEvent::SupervisorStopped {
            supervisor: st.name.clone(),
            at: SystemTime::now(),
            reason: reason.clone(),
        });
        self.exit.set(reason);
        Ok(())
    }
}
