//! Integration tests of manta-supervision through its public API.
#![allow(missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail the test by panicking

mod dynamic;
mod intensity;
mod issue_15;
mod limits;
mod matrix;
mod shutdown;
mod tracing_events;
mod tree_errors;
mod tree_files;

use std::sync::Arc;
use std::time::Duration;

use manta_actors::{Actor, ActorError, ChildFactory, Context, ExitReason, Message, factory};
use manta_supervision::SupervisorEvent;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// How a probe child exits when told to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitKind {
    Normal,
    Shutdown,
    Failure,
    Panic,
}

impl ExitKind {
    pub const ALL: [ExitKind; 4] = [
        ExitKind::Normal,
        ExitKind::Shutdown,
        ExitKind::Failure,
        ExitKind::Panic,
    ];

    pub fn reason(self) -> ExitReason {
        match self {
            ExitKind::Normal => ExitReason::Normal,
            ExitKind::Shutdown => ExitReason::Shutdown(None),
            ExitKind::Failure => ExitReason::Failed("failure".into()),
            ExitKind::Panic => ExitReason::Panicked("panic".into()),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ProbeMsg {
    Exit(ExitKind),
    Ping,
}

impl Message for ProbeMsg {
    const NAME: &'static str = "manta.test.ProbeMsg";
    const DECODE: Option<manta_actors::wire::Decode<Self>> =
        Some(manta_actors::wire::decode::<Self>);
}

/// A test child. With `stuck_on_stop` its `stopped` hook never returns, so a
/// graceful stop never completes.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Probe {
    #[serde(default)]
    pub stuck_on_stop: bool,
}

impl Actor for Probe {
    type Msg = ProbeMsg;

    async fn handle(
        &mut self,
        msg: ProbeMsg,
        ctx: &mut Context<ProbeMsg>,
    ) -> Result<(), ActorError> {
        match msg {
            ProbeMsg::Ping => Ok(()),
            ProbeMsg::Exit(ExitKind::Normal) => {
                ctx.stop(ExitReason::Normal);
                Ok(())
            }
            ProbeMsg::Exit(ExitKind::Shutdown) => {
                ctx.stop(ExitReason::Shutdown(None));
                Ok(())
            }
            ProbeMsg::Exit(ExitKind::Failure) => Err("failure".into()),
            ProbeMsg::Exit(ExitKind::Panic) => panic!("panic"),
        }
    }

    async fn stopped(&mut self, _reason: &ExitReason, _ctx: &mut Context<ProbeMsg>) {
        if self.stuck_on_stop {
            futures::future::pending::<()>().await;
        }
    }
}

pub fn probe() -> Arc<dyn ChildFactory> {
    factory("probe", Probe::default)
}

pub fn stuck_probe() -> Arc<dyn ChildFactory> {
    factory("stuck-probe", || Probe {
        stuck_on_stop: true,
    })
}

pub const DEADLINE: Duration = Duration::from_secs(10);

/// Starts `spec` in a fresh system with a fresh event bus; returns the
/// supervisor and a subscription that saw every event from the start.
pub async fn start(
    spec: manta_supervision::SupervisorSpec,
) -> (
    manta_supervision::SupervisorHandle,
    broadcast::Receiver<SupervisorEvent>,
) {
    let bus = manta_supervision::EventBus::new();
    let rx = bus.subscribe();
    let system = manta_actors::ActorSystem::new();
    let sup = manta_supervision::Supervisor::start(&system, spec.events(bus))
        .await
        .unwrap();
    (sup, rx)
}

/// Receives the next event, failing the test after the deadline.
pub async fn next(rx: &mut broadcast::Receiver<SupervisorEvent>) -> SupervisorEvent {
    match tokio::time::timeout(DEADLINE, rx.recv()).await {
        Ok(Ok(ev)) => ev,
        Ok(Err(e)) => panic!("event bus error: {e}"),
        Err(_) => panic!("no supervisor event within {DEADLINE:?}"),
    }
}

/// Receives events up to and including the first one matching `last`.
pub async fn until(
    rx: &mut broadcast::Receiver<SupervisorEvent>,
    last: impl Fn(&SupervisorEvent) -> bool,
) -> Vec<SupervisorEvent> {
    let mut out = Vec::new();
    loop {
        let ev = next(rx).await;
        let done = last(&ev);
        out.push(ev);
        if done {
            return out;
        }
    }
}

/// A compact form of an event for sequence assertions.
pub fn short(ev: &SupervisorEvent) -> String {
    match ev {
        SupervisorEvent::ChildStarted {
            child, restarts, ..
        } => format!("start {child} #{restarts}"),
        SupervisorEvent::ChildExited { child, action, .. } => format!("exit {child} {action}"),
        SupervisorEvent::ChildTerminated { child, forced, .. } => {
            format!("term {child}{}", if *forced { " forced" } else { "" })
        }
        SupervisorEvent::ChildDropped { child, .. } => format!("dropped {child}"),
        SupervisorEvent::StartFailed { child, .. } => format!("startfail {child}"),
        SupervisorEvent::RestartScheduled { children, .. } => {
            format!("scheduled {}", children.join(","))
        }
        SupervisorEvent::Escalated {
            supervisor, child, ..
        } => format!("escalate {supervisor} by {child}"),
        SupervisorEvent::SupervisorStopped { supervisor, .. } => format!("stopped {supervisor}"),
    }
}

pub fn shorts(evs: &[SupervisorEvent]) -> Vec<String> {
    evs.iter().map(short).collect()
}
