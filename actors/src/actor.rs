//! The actor trait and the adapter that runs it on ractor.

use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use ractor::{ActorProcessingErr, ActorRef};

use crate::error::{ActorError, WireError};
use crate::exit::{ExitReason, ExitSignal};
use crate::handle::{ActorHandle, Envelope};
use crate::message::Message;
use crate::system::ActorSystem;

/// A Manta actor: its state is `self`, its messages are `Self::Msg`.
///
/// ```
/// use manta_actors::{Actor, ActorError, Context, Message, ReplyTo};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize, Message)]
/// enum CounterMsg { Add(i64), Get(ReplyTo<i64>) }
///
/// struct Counter(i64);
///
/// impl Actor for Counter {
///     type Msg = CounterMsg;
///     async fn handle(&mut self, msg: CounterMsg, _ctx: &mut Context<CounterMsg>) -> Result<(), ActorError> {
///         match msg {
///             CounterMsg::Add(n) => self.0 += n,
///             CounterMsg::Get(r) => { r.send(self.0); }
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait Actor: Send + Sized + 'static {
    /// The messages this actor takes.
    type Msg: Message;

    /// Runs once before the first message. An error here fails the spawn.
    fn started(
        &mut self,
        ctx: &mut Context<Self::Msg>,
    ) -> impl Future<Output = Result<(), ActorError>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// Handles one message; requests carry their [`ReplyTo`](crate::ReplyTo)
    /// to answer with. An error or a panic stops the actor with
    /// [`ExitReason::Failed`] or [`ExitReason::Panicked`] (and the reply
    /// handles the handler dropped unsent tell their askers so); its
    /// supervisor decides what happens next. Returning an [`ExitReason`] as
    /// the error (`Err(ExitReason::Normal.into())`, or `Shutdown`) stops the
    /// actor with that reason instead: a normal exit, not a failure.
    fn handle(
        &mut self,
        msg: Self::Msg,
        ctx: &mut Context<Self::Msg>,
    ) -> impl Future<Output = Result<(), ActorError>> + Send;

    /// Runs after a graceful stop (not after a failure or a kill).
    fn stopped(
        &mut self,
        reason: &ExitReason,
        ctx: &mut Context<Self::Msg>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (reason, ctx);
        async {}
    }
}

/// What a running actor can reach: its own handle, its system, and a way to
/// stop itself.
pub struct Context<M: Message> {
    myself: ActorHandle<M>,
    system: ActorSystem,
    stop: Option<ExitReason>,
}

impl<M: Message> Context<M> {
    /// This actor's own handle.
    pub fn myself(&self) -> &ActorHandle<M> {
        &self.myself
    }

    /// The actor system the actor runs in.
    pub fn system(&self) -> &ActorSystem {
        &self.system
    }

    /// Stops this actor with `reason` once the current message is handled
    /// (its reply, if any, is still sent).
    pub fn stop(&mut self, reason: ExitReason) {
        self.stop = Some(reason);
    }
}

/// Runs a Manta [`Actor`] as a ractor actor.
///
/// The exit guard lives in the handler, not in the state: ractor moves the
/// state of a stopped actor into the supervision event it sends the parent,
/// but drops the handler with the actor's task, so a kill is published even
/// while the parent is busy (e.g. waiting for this very exit).
pub(crate) struct Adapter<A> {
    guard: ExitGuard,
    _a: PhantomData<fn() -> A>,
}

impl<A> Adapter<A> {
    pub(crate) fn new(guard: ExitGuard) -> Self {
        Self {
            guard,
            _a: PhantomData,
        }
    }
}

pub(crate) struct Running<A: Actor> {
    actor: A,
    ctx: Context<A::Msg>,
}

/// Publishes the exit once, whatever the path: after `stopped`, after a
/// failure, or when a kill drops the actor's task.
pub(crate) struct ExitGuard {
    exit: Arc<ExitSignal>,
    pub(crate) inbox: Arc<crate::handle::Inbox>,
    system: ActorSystem,
    name: Mutex<Option<String>>,
}

impl ExitGuard {
    pub(crate) fn new(
        exit: Arc<ExitSignal>,
        inbox: Arc<crate::handle::Inbox>,
        system: ActorSystem,
        name: Option<String>,
    ) -> Self {
        Self {
            exit,
            inbox,
            system,
            name: Mutex::new(name),
        }
    }

    fn finish(&self, reason: ExitReason) {
        self.exit.set(reason);
        let name = self.name.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(name) = name {
            self.system.unregister_exited(&name);
        }
    }
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        // Without an earlier `finish` we get here only when the task was
        // killed or cancelled; after one, `set` keeps the first reason.
        self.finish(ExitReason::Killed);
    }
}

pub(crate) struct StartArgs<A: Actor> {
    pub(crate) actor: A,
    pub(crate) system: ActorSystem,
}

/// The message of a caught panic (`&str` or `String` payloads), for
/// reporting a panic as an error.
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

impl<A: Actor> ractor::Actor for Adapter<A> {
    type Msg = Envelope<A::Msg>;
    type State = Running<A>;
    type Arguments = StartArgs<A>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: StartArgs<A>,
    ) -> Result<Running<A>, ActorProcessingErr> {
        let StartArgs { mut actor, system } = args;
        let mut ctx = Context {
            myself: ActorHandle::local(
                myself,
                Arc::clone(&self.guard.exit),
                Arc::clone(&self.guard.inbox),
            ),
            system,
            stop: None,
        };
        let failure = match AssertUnwindSafe(actor.started(&mut ctx))
            .catch_unwind()
            .await
        {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(ExitReason::Failed(e.to_string())),
            Err(p) => Some(ExitReason::Panicked(panic_text(p.as_ref()))),
        };
        if let Some(reason) = failure {
            self.guard.finish(reason.clone());
            return Err(Box::new(reason));
        }
        if let Some(reason) = ctx.stop.take() {
            ctx.myself.stop(reason);
        }
        Ok(Running { actor, ctx })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        env: Self::Msg,
        st: &mut Running<A>,
    ) -> Result<(), ActorProcessingErr> {
        // A remote message's share of the inbox is given back as the actor
        // takes it.
        let Envelope(msg, _credit) = env;
        let outcome = crate::reply::scoped(
            AssertUnwindSafe(st.actor.handle(msg, &mut st.ctx)).catch_unwind(),
            |outcome| {
                WireError::NoReply(match outcome {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(ExitReason::from_failure(e.as_ref())),
                    Err(p) => Some(ExitReason::Panicked(panic_text(p.as_ref()))),
                })
            },
        )
        .await;
        let reason = match outcome {
            Ok(Ok(())) => {
                if let Some(reason) = st.ctx.stop.take() {
                    st.ctx.myself.stop(reason);
                }
                return Ok(());
            }
            Ok(Err(e)) => ExitReason::from_failure(e.as_ref()),
            Err(p) => ExitReason::Panicked(panic_text(p.as_ref())),
        };
        if reason.is_normal() {
            // The handler asked to exit normally (`Err(ExitReason::Normal.into())`):
            // a stop, not a failure.
            st.ctx.myself.stop(reason);
            return Ok(());
        }
        tracing::debug!(actor = %st.ctx.myself.id(), %reason, "actor failed");
        self.guard.finish(reason.clone());
        Err(Box::new(reason))
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        st: &mut Running<A>,
    ) -> Result<(), ActorProcessingErr> {
        let reason = self.guard.exit.take_pending().unwrap_or(ExitReason::Normal);
        let _ = AssertUnwindSafe(st.actor.stopped(&reason, &mut st.ctx))
            .catch_unwind()
            .await;
        self.guard.finish(reason);
        Ok(())
    }
}
