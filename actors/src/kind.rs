//! Actor kinds: a name mapped to a factory that decodes the kind's arguments
//! and spawns the actor. Tree files use kinds today; remote spawn uses the
//! same registry.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};

use futures::future::BoxFuture;
use ractor::ActorCell;
use serde::de::DeserializeOwned;

use crate::actor::Actor;
use crate::error::SpawnError;
use crate::handle::AnyHandle;
use crate::message::{Message, message_type_name};
use crate::system::{ActorSystem, SpawnOptions};

/// Where and how a child is being started.
#[derive(Debug, Clone)]
pub struct StartContext {
    /// The system to spawn into.
    pub system: ActorSystem,
    /// The supervisor to link the child to (supervision plumbing).
    #[doc(hidden)]
    pub link: Option<ActorCell>,
    /// A name to register the child under.
    pub name: Option<String>,
}

/// Starts one child: the spawner interface supervisors use. The cluster
/// crate implements it to start a child on another node.
pub trait ChildFactory: Send + Sync + 'static {
    /// Starts a fresh instance.
    fn start(&self, ctx: StartContext) -> BoxFuture<'static, Result<AnyHandle, SpawnError>>;
    /// A short description for logs and introspection (e.g. the kind name).
    fn describe(&self) -> String;
    /// The same kind of child with other arguments (OTP's extra start
    /// arguments for a dynamic supervisor's template). Factories of a
    /// registered kind decode `args` as the kind's argument type; others
    /// take none.
    fn with_args(&self, args: ArgsValue) -> Result<Arc<dyn ChildFactory>, SpawnError> {
        let _ = args;
        Err(SpawnError::BadArgs {
            kind: self.describe(),
            message: "this child is not started from an actor kind, so it takes no arguments"
                .to_owned(),
        })
    }
}

/// A [`ChildFactory`] from a closure that builds the actor.
pub fn factory<A, F>(describe: impl Into<String>, make: F) -> Arc<dyn ChildFactory>
where
    A: Actor,
    F: Fn() -> A + Send + Sync + 'static,
{
    Arc::new(FnFactory {
        describe: describe.into(),
        make,
        _a: PhantomData,
    })
}

struct FnFactory<A, F> {
    describe: String,
    make: F,
    _a: PhantomData<fn() -> A>,
}

impl<A: Actor, F: Fn() -> A + Send + Sync + 'static> ChildFactory for FnFactory<A, F> {
    fn start(&self, ctx: StartContext) -> BoxFuture<'static, Result<AnyHandle, SpawnError>> {
        let actor = (self.make)();
        Box::pin(spawn_child(actor, ctx))
    }
    fn describe(&self) -> String {
        self.describe.clone()
    }
}

async fn spawn_child<A: Actor>(actor: A, ctx: StartContext) -> Result<AnyHandle, SpawnError> {
    let opts = SpawnOptions {
        name: ctx.name,
        link: ctx.link,
    };
    let h = ctx.system.spawn_with(actor, opts).await?;
    Ok(h.into_any())
}

/// A kind's arguments before they are decoded into the kind's argument
/// type: a self-describing value. Tree files give it from their TOML, remote
/// spawns from the serde value of the typed arguments (carried as JSON), code
/// from `serde_json::json!`.
pub type ArgsValue = serde_json::Value;

/// A kind's arguments did not fit its argument type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if path.is_empty() { String::new() } else { format!("at `{path}`: ") })]
pub struct ArgsError {
    /// Where in the arguments: `field`, `list[2]`, `outer.inner`; empty for
    /// the arguments as a whole.
    pub path: String,
    /// What was wrong, as serde says it.
    pub message: String,
}

/// Decodes `value` as `T`, naming the path of the value that did not fit.
pub fn decode_args<T: DeserializeOwned>(value: ArgsValue) -> Result<T, ArgsError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        ArgsError {
            path: if path == "." { String::new() } else { path },
            message: e.into_inner().to_string(),
        }
    })
}

trait ErasedKind: Send + Sync + 'static {
    fn message_type(&self) -> &'static str;
    fn remote(&self) -> bool;
    fn args_type(&self) -> &'static str;
    fn prepare_value(&self, args: ArgsValue) -> Result<Arc<dyn ChildFactory>, ArgsError>;
}

struct KindEntry<A, Args, F> {
    name: String,
    make: Arc<F>,
    _p: PhantomData<fn(Args) -> A>,
}

struct KindFactory<A, Args, F> {
    kind: String,
    args: Args,
    make: Arc<F>,
    _a: PhantomData<fn() -> A>,
}

impl<A, Args, F> ChildFactory for KindFactory<A, Args, F>
where
    A: Actor,
    Args: DeserializeOwned + Clone + Send + Sync + 'static,
    F: Fn(Args) -> A + Send + Sync + 'static,
{
    fn start(&self, ctx: StartContext) -> BoxFuture<'static, Result<AnyHandle, SpawnError>> {
        let actor = (self.make)(self.args.clone());
        Box::pin(spawn_child(actor, ctx))
    }
    fn describe(&self) -> String {
        self.kind.clone()
    }
    fn with_args(&self, args: ArgsValue) -> Result<Arc<dyn ChildFactory>, SpawnError> {
        let args: Args = decode_args(args).map_err(|e| SpawnError::BadArgs {
            kind: self.kind.clone(),
            message: e.to_string(),
        })?;
        Ok(Arc::new(KindFactory {
            kind: self.kind.clone(),
            args,
            make: Arc::clone(&self.make),
            _a: PhantomData,
        }))
    }
}

impl<A, Args, F> KindEntry<A, Args, F>
where
    A: Actor,
    Args: DeserializeOwned + Clone + Send + Sync + 'static,
    F: Fn(Args) -> A + Send + Sync + 'static,
{
    fn prepared(&self, args: Args) -> Arc<dyn ChildFactory> {
        Arc::new(KindFactory {
            kind: self.name.clone(),
            args,
            make: Arc::clone(&self.make),
            _a: PhantomData,
        })
    }
}

impl<A, Args, F> ErasedKind for KindEntry<A, Args, F>
where
    A: Actor,
    Args: DeserializeOwned + Clone + Send + Sync + 'static,
    F: Fn(Args) -> A + Send + Sync + 'static,
{
    fn message_type(&self) -> &'static str {
        message_type_name::<A::Msg>()
    }
    fn remote(&self) -> bool {
        <A::Msg as Message>::DECODE.is_some()
    }
    fn args_type(&self) -> &'static str {
        std::any::type_name::<Args>()
    }
    fn prepare_value(&self, args: ArgsValue) -> Result<Arc<dyn ChildFactory>, ArgsError> {
        Ok(self.prepared(decode_args(args)?))
    }
}

/// A registered actor kind, typed: its name, the type of its arguments and
/// the message type of its actors. [`KindRegistry::register`] returns it;
/// [`Kind::named`] names a kind registered elsewhere (on the nodes that
/// host it), and a spawn through it is refused before anything starts when
/// that kind's message type differs.
pub struct Kind<Args, M> {
    name: Arc<str>,
    _p: PhantomData<fn(Args) -> M>,
}

impl<Args, M: Message> Kind<Args, M> {
    /// The kind registered as `name` whose arguments are `Args` and whose
    /// actors take `M`.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: Arc::from(name.into()),
            _p: PhantomData,
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<Args, M> Clone for Kind<Args, M> {
    fn clone(&self) -> Self {
        Self {
            name: Arc::clone(&self.name),
            _p: PhantomData,
        }
    }
}

impl<Args, M: Message> fmt::Debug for Kind<Args, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kind")
            .field("name", &self.name)
            .field("args", &std::any::type_name::<Args>())
            .field("message", &M::NAME)
            .finish()
    }
}

/// The registry of actor kinds: kind name -> factory from arguments.
///
/// ```
/// # use manta_actors::{Actor, ActorError, Context, KindRegistry, Message};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Serialize, Deserialize, Message)] struct Ping;
/// # struct Greeter { greeting: String }
/// # impl Actor for Greeter { type Msg = Ping;
/// #   async fn handle(&mut self, _: Ping, _: &mut Context<Ping>) -> Result<(), ActorError> { Ok(()) } }
/// #[derive(Clone, Deserialize)]
/// struct GreeterArgs { greeting: String }
///
/// let kinds = KindRegistry::new();
/// kinds.register("greeter", |a: GreeterArgs| Greeter { greeting: a.greeting });
/// assert!(kinds.contains("greeter"));
/// ```
#[derive(Clone, Default)]
pub struct KindRegistry {
    kinds: Arc<RwLock<BTreeMap<String, Arc<dyn ErasedKind>>>>,
}

impl fmt::Debug for KindRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KindRegistry")
            .field("kinds", &self.names())
            .finish()
    }
}

impl KindRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn get(&self, kind: &str) -> Option<Arc<dyn ErasedKind>> {
        // Every critical section is one map operation: a poisoned lock is
        // still consistent.
        let kinds = self.kinds.read().unwrap_or_else(|e| e.into_inner());
        kinds.get(kind).cloned()
    }

    /// Registers (or replaces) a kind: `make` builds the actor from its
    /// decoded arguments. Returns the kind's typed token, which remote
    /// spawns take (so the arguments and the handle are typed).
    pub fn register<A, Args, F>(&self, kind: impl Into<String>, make: F) -> Kind<Args, A::Msg>
    where
        A: Actor,
        Args: DeserializeOwned + Clone + Send + Sync + 'static,
        F: Fn(Args) -> A + Send + Sync + 'static,
    {
        let name = kind.into();
        let entry = Arc::new(KindEntry {
            name: name.clone(),
            make: Arc::new(make),
            _p: PhantomData,
        });
        let mut kinds = self.kinds.write().unwrap_or_else(|e| e.into_inner());
        kinds.insert(name.clone(), entry);
        Kind::named(name)
    }

    /// Registers (or replaces) every kind of `other` here too.
    pub fn extend(&self, other: &KindRegistry) {
        if Arc::ptr_eq(&self.kinds, &other.kinds) {
            return;
        }
        let theirs: Vec<_> = {
            let o = other.kinds.read().unwrap_or_else(|e| e.into_inner());
            o.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let mut kinds = self.kinds.write().unwrap_or_else(|e| e.into_inner());
        kinds.extend(theirs);
    }

    /// Whether `kind` is registered.
    pub fn contains(&self, kind: &str) -> bool {
        self.get(kind).is_some()
    }

    /// The registered kind names, sorted.
    pub fn names(&self) -> Vec<String> {
        let kinds = self.kinds.read().unwrap_or_else(|e| e.into_inner());
        kinds.keys().cloned().collect()
    }

    /// The message type an actor of `kind` takes.
    pub fn message_type(&self, kind: &str) -> Option<&'static str> {
        self.get(kind).map(|k| k.message_type())
    }

    /// Whether actors of `kind` can be addressed from other nodes (their
    /// message type is not local-only); `None` for an unknown kind.
    pub fn is_remote(&self, kind: &str) -> Option<bool> {
        self.get(kind).map(|k| k.remote())
    }

    /// The argument type of `kind`.
    pub fn args_type(&self, kind: &str) -> Option<&'static str> {
        self.get(kind).map(|k| k.args_type())
    }

    /// Decodes `kind`'s arguments into a factory; the error says whether the
    /// kind is unknown or which value of the arguments did not fit (tree
    /// loaders map its path back to the place in their file).
    pub fn prepare_args(
        &self,
        kind: &str,
        args: ArgsValue,
    ) -> Result<Arc<dyn ChildFactory>, KindError> {
        let k = self
            .get(kind)
            .ok_or_else(|| KindError::Unknown(kind.to_owned()))?;
        k.prepare_value(args).map_err(KindError::Args)
    }

    /// Decodes `kind`'s arguments from a value built in code (or received
    /// from another node) into a factory.
    pub fn prepare(
        &self,
        kind: &str,
        args: ArgsValue,
    ) -> Result<Arc<dyn ChildFactory>, SpawnError> {
        self.prepare_args(kind, args).map_err(|e| match e {
            KindError::Unknown(k) => SpawnError::UnknownKind(k),
            KindError::Args(e) => SpawnError::BadArgs {
                kind: kind.to_owned(),
                message: e.to_string(),
            },
        })
    }

    /// Spawns an actor of `kind` with `args`.
    pub async fn spawn(
        &self,
        system: &ActorSystem,
        kind: &str,
        args: ArgsValue,
        name: Option<String>,
    ) -> Result<AnyHandle, SpawnError> {
        let f = self.prepare(kind, args)?;
        f.start(StartContext {
            system: system.clone(),
            link: None,
            name,
        })
        .await
    }
}

/// Preparing a kind from its arguments failed.
#[derive(Debug, thiserror::Error)]
pub enum KindError {
    /// No such kind.
    #[error("unknown actor kind `{0}`")]
    Unknown(String),
    /// The arguments do not fit the kind's argument type.
    #[error(transparent)]
    Args(ArgsError),
}
