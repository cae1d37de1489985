//! The actor system: an explicit handle holding names and actor kinds.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use ractor::ActorCell;

use crate::actor::{Actor, Adapter, ExitGuard, StartArgs};
use crate::error::{LookupError, SpawnError};
use crate::exit::{ExitReason, ExitSignal};
use crate::handle::{ActorHandle, AnyHandle};
use crate::kind::KindRegistry;
use crate::message::{Message, message_type_name};

/// Options for [`ActorSystem::spawn_with`].
#[derive(Debug, Default, Clone)]
pub struct SpawnOptions {
    /// Register the actor under this name (unique in the system).
    pub name: Option<String>,
    /// Link the actor to this supervisor: it receives the actor's exit and
    /// the actor is stopped with it (supervision plumbing).
    #[doc(hidden)]
    pub link: Option<ActorCell>,
}

struct SystemInner {
    names: Mutex<BTreeMap<String, AnyHandle>>,
    groups: Mutex<BTreeMap<String, std::collections::BTreeSet<String>>>,
    kinds: KindRegistry,
    /// Inbox budget of actors spawned from now on, for messages from other
    /// nodes.
    remote_inbox: std::sync::atomic::AtomicUsize,
}

/// An actor system: the name registry and the actor kinds of one node.
///
/// There is no hidden global: every system is independent, so tests (and
/// several systems in one process) never see each other's names.
#[derive(Clone)]
pub struct ActorSystem {
    inner: Arc<SystemInner>,
}

impl Default for ActorSystem {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ActorSystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActorSystem")
            .field("names", &self.registered())
            .field("kinds", &self.inner.kinds.names())
            .finish()
    }
}

impl ActorSystem {
    /// A system with no names and no kinds.
    pub fn new() -> Self {
        Self::with_kinds(KindRegistry::new())
    }

    /// Bytes of messages from other nodes each actor spawned from now on may
    /// have waiting (default [`REMOTE_MAILBOX_BYTES`]); past it remote tells
    /// and requests to that actor are refused with backpressure. An actor
    /// with nothing waiting takes any one message, however large.
    ///
    /// [`REMOTE_MAILBOX_BYTES`]: crate::REMOTE_MAILBOX_BYTES
    pub fn set_remote_inbox_limit(&self, bytes: usize) {
        self.inner
            .remote_inbox
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// See [`set_remote_inbox_limit`](Self::set_remote_inbox_limit).
    pub fn remote_inbox_limit(&self) -> usize {
        self.inner
            .remote_inbox
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A system using (sharing) this kind registry.
    pub fn with_kinds(kinds: KindRegistry) -> Self {
        Self {
            inner: Arc::new(SystemInner {
                names: Mutex::new(BTreeMap::new()),
                groups: Mutex::new(BTreeMap::new()),
                kinds,
                remote_inbox: std::sync::atomic::AtomicUsize::new(
                    crate::handle::REMOTE_MAILBOX_BYTES,
                ),
            }),
        }
    }

    /// The actor kinds known to this system.
    pub fn kinds(&self) -> &KindRegistry {
        &self.inner.kinds
    }

    fn names(&self) -> MutexGuard<'_, BTreeMap<String, AnyHandle>> {
        // A panic while holding this lock cannot leave the map half-updated
        // (every critical section is a single map operation), so a poisoned
        // lock is still consistent.
        self.inner.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Spawns an actor.
    pub async fn spawn<A: Actor>(&self, actor: A) -> Result<ActorHandle<A::Msg>, SpawnError> {
        self.spawn_with(actor, SpawnOptions::default()).await
    }

    /// Spawns an actor and registers it under `name`.
    pub async fn spawn_named<A: Actor>(
        &self,
        name: impl Into<String>,
        actor: A,
    ) -> Result<ActorHandle<A::Msg>, SpawnError> {
        let opts = SpawnOptions {
            name: Some(name.into()),
            link: None,
        };
        self.spawn_with(actor, opts).await
    }

    /// Spawns an actor with options.
    pub async fn spawn_with<A: Actor>(
        &self,
        actor: A,
        opts: SpawnOptions,
    ) -> Result<ActorHandle<A::Msg>, SpawnError> {
        if let Some(name) = &opts.name {
            // A dead actor's entry may linger for a moment after its exit is
            // published; it does not hold the name.
            if self.lookup_any(name).is_some() {
                return Err(SpawnError::NameTaken(name.clone()));
            }
        }
        let exit = Arc::new(ExitSignal::new());
        let inbox = Arc::new(crate::handle::Inbox::new(self.remote_inbox_limit()));
        let args = StartArgs {
            actor,
            system: self.clone(),
        };
        let adapter = Adapter::<A>::new(ExitGuard::new(
            Arc::clone(&exit),
            Arc::clone(&inbox),
            self.clone(),
            opts.name.clone(),
        ));
        let spawned = match opts.link {
            Some(sup) => ractor::Actor::spawn_linked(None, adapter, args, sup).await,
            None => ractor::Actor::spawn(None, adapter, args).await,
        };
        let (actor_ref, _join) = spawned.map_err(|e| SpawnError::Startup(startup_reason(e)))?;
        let handle = ActorHandle::local(actor_ref, exit, inbox);
        if let Some(name) = opts.name {
            if let Err(e) = self.register(name, &handle) {
                handle.kill();
                return Err(e);
            }
        }
        Ok(handle)
    }

    /// Registers `handle` under `name`. Names are unique; the entry goes away
    /// when the actor exits.
    pub fn register<M: Message>(
        &self,
        name: impl Into<String>,
        handle: &ActorHandle<M>,
    ) -> Result<(), SpawnError> {
        self.register_any(name, handle.clone().into_any())
    }

    /// Registers an erased handle under `name`.
    pub fn register_any(
        &self,
        name: impl Into<String>,
        handle: AnyHandle,
    ) -> Result<(), SpawnError> {
        let name = name.into();
        let mut names = self.names();
        if let Some(old) = names.get(&name) {
            if old.monitor().try_get().is_none() {
                return Err(SpawnError::NameTaken(name));
            }
        }
        names.insert(name, handle);
        Ok(())
    }

    /// Removes a name. Returns whether it was registered.
    pub fn unregister(&self, name: &str) -> bool {
        self.names().remove(name).is_some()
    }

    /// Called when a named actor exits: drops its name unless another, live
    /// actor has taken it since.
    pub(crate) fn unregister_exited(&self, name: &str) {
        let mut names = self.names();
        if names
            .get(name)
            .is_some_and(|h| h.monitor().try_get().is_some())
        {
            names.remove(name);
        }
    }

    /// Looks an actor up by name, checking that it takes messages of type `M`.
    pub fn lookup<M: Message>(&self, name: &str) -> Result<ActorHandle<M>, LookupError> {
        let any = self
            .lookup_any(name)
            .ok_or_else(|| LookupError::NotFound(name.to_owned()))?;
        any.downcast::<M>().ok_or_else(|| LookupError::WrongType {
            name: name.to_owned(),
            expected: message_type_name::<M>(),
            actual: any.message_type().to_owned(),
        })
    }

    /// Looks an actor up by name without knowing its message type.
    pub fn lookup_any(&self, name: &str) -> Option<AnyHandle> {
        let names = self.names();
        names
            .get(name)
            .filter(|h| h.monitor().try_get().is_none())
            .cloned()
    }

    /// The registered names of live actors, sorted.
    pub fn registered(&self) -> Vec<String> {
        self.names()
            .iter()
            .filter(|(_, h)| h.monitor().try_get().is_none())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The registered names of live actors with the message type each takes.
    pub fn registered_types(&self) -> Vec<(String, &'static str)> {
        self.names()
            .iter()
            .filter(|(_, h)| h.monitor().try_get().is_none())
            .map(|(n, h)| (n.clone(), h.message_type()))
            .collect()
    }

    /// Adds the actor registered as `name` to process group `group`. Groups
    /// hold names: a member leaves when its actor exits (or by
    /// [`ActorSystem::leave_group`]); in a cluster, groups span nodes.
    pub fn join_group(&self, group: &str, name: &str) -> Result<(), LookupError> {
        if self.lookup_any(name).is_none() {
            return Err(LookupError::NotFound(name.to_owned()));
        }
        let mut g = self.inner.groups.lock().unwrap_or_else(|e| e.into_inner());
        g.entry(group.to_owned())
            .or_default()
            .insert(name.to_owned());
        Ok(())
    }

    /// Removes `name` from `group`. Returns whether it was a member.
    pub fn leave_group(&self, group: &str, name: &str) -> bool {
        let mut g = self.inner.groups.lock().unwrap_or_else(|e| e.into_inner());
        g.get_mut(group).is_some_and(|m| m.remove(name))
    }

    /// The live members of every group on this system.
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let g = self
            .inner
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        g.into_iter()
            .map(|(k, names)| {
                let live: Vec<String> = names
                    .into_iter()
                    .filter(|n| self.lookup_any(n).is_some())
                    .collect();
                (k, live)
            })
            .filter(|(_, v)| !v.is_empty())
            .collect()
    }

    /// The live local members of `group` that take messages of type `M`.
    pub fn group<M: Message>(&self, group: &str) -> Vec<ActorHandle<M>> {
        self.groups()
            .remove(group)
            .unwrap_or_default()
            .iter()
            .filter_map(|n| self.lookup::<M>(n).ok())
            .collect()
    }

    /// Stops every registered actor with `reason`.
    pub fn stop_all(&self, reason: ExitReason) {
        let handles: Vec<AnyHandle> = self.names().values().cloned().collect();
        for h in handles {
            h.stop(reason.clone());
        }
    }
}

fn startup_reason(e: ractor::SpawnErr) -> ExitReason {
    match e {
        ractor::SpawnErr::StartupFailed(err) => ExitReason::from_failure(err.as_ref()),
        other => ExitReason::Failed(other.to_string()),
    }
}
