//! Supervisor and child specifications (OTP names and defaults).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use manta_actors::{Actor, ChildFactory};

use crate::event::EventBus;

/// How a supervisor reacts when a child must be restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Restart only the child that exited.
    OneForOne,
    /// Terminate all other children, then restart all of them.
    OneForAll,
    /// Terminate the children started after the one that exited, then restart
    /// it and them.
    RestForOne,
    /// A dynamic supervisor: one child template, children added at run time
    /// with `start_child`; restarts are one-for-one.
    SimpleOneForOne,
}

/// When a child is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Restart {
    /// Always restarted.
    Permanent,
    /// Restarted only after an abnormal exit (not `normal` / `shutdown`).
    Transient,
    /// Never restarted.
    Temporary,
}

/// How a supervisor stops a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shutdown {
    /// Kill at once.
    BrutalKill,
    /// Ask to stop; kill if still running after this long.
    Timeout(Duration),
    /// Ask to stop and wait as long as it takes (the default for supervisors).
    Infinity,
}

/// Whether a child is a worker or a supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChildType {
    /// A worker actor.
    Worker,
    /// A nested supervisor.
    Supervisor,
}

/// Akka-style restart backoff: a child's n-th consecutive restart waits
/// `min * 2^n`, capped at `max`, stretched by up to `random_factor`. The count
/// starts over at `min` only once the child has *run* for a whole period of
/// its supervisor (time spent waiting for a backoff does not count), so a
/// child that fails at once on every start waits 1, 2, 4, 8 ... × `min` up
/// to `max`, whatever the period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first restart.
    pub min: Duration,
    /// Longest delay.
    pub max: Duration,
    /// Random extra delay, as a fraction of the computed one (0.0 = none).
    pub random_factor: f64,
}

impl Backoff {
    /// The delay before restart number `n` (0-based) of a child.
    pub fn delay(&self, n: u32) -> Duration {
        let base = self
            .min
            .saturating_mul(2u32.saturating_pow(n.min(31)))
            .min(self.max);
        if self.random_factor > 0.0 {
            let jitter = rand::random::<f64>() * self.random_factor;
            // `mul_f64` panics past `Duration::MAX`; saturate instead.
            Duration::try_from_secs_f64(base.as_secs_f64() * (1.0 + jitter))
                .unwrap_or(Duration::MAX)
        } else {
            base
        }
    }
}

macro_rules! name_table {
    ($ty:ident { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $ty {
            /// The name used in tree files.
            pub fn as_str(&self) -> &'static str {
                match self { $($ty::$v => $s),+ }
            }
            /// Every accepted name.
            pub const NAMES: &'static [&'static str] = &[$($s),+];
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($ty::$v),)+
                    other => Err(format!(
                        "unknown {} `{}` (expected one of: {})",
                        stringify!($ty).to_lowercase(), other, Self::NAMES.join(", ")
                    )),
                }
            }
        }
    };
}

name_table!(Strategy {
    OneForOne => "one_for_one",
    OneForAll => "one_for_all",
    RestForOne => "rest_for_one",
    SimpleOneForOne => "simple_one_for_one",
});

name_table!(Restart {
    Permanent => "permanent",
    Transient => "transient",
    Temporary => "temporary",
});

name_table!(ChildType {
    Worker => "worker",
    Supervisor => "supervisor",
});

impl fmt::Display for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shutdown::BrutalKill => f.write_str("brutal_kill"),
            Shutdown::Infinity => f.write_str("infinity"),
            Shutdown::Timeout(d) => write!(f, "{d:?}"),
        }
    }
}

/// What starts a child.
#[derive(Clone)]
pub enum ChildStart {
    /// A worker (or anything else) started through a factory.
    Factory(Arc<dyn ChildFactory>),
    /// A nested supervisor.
    Supervisor(Box<SupervisorSpec>),
}

impl fmt::Debug for ChildStart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChildStart::Factory(fac) => write!(f, "Factory({})", fac.describe()),
            ChildStart::Supervisor(s) => write!(f, "Supervisor({})", s.name),
        }
    }
}

/// One child of a supervisor.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// Unique within its supervisor.
    pub id: String,
    /// How to start it.
    pub start: ChildStart,
    /// When to restart it (default `permanent`).
    pub restart: Restart,
    /// How to stop it (default 5 s for workers, `infinity` for supervisors).
    pub shutdown: Shutdown,
    /// Register the child under this name in the actor system.
    pub register: Option<String>,
}

/// OTP's default shutdown timeout for workers.
pub const DEFAULT_WORKER_SHUTDOWN: Duration = Duration::from_secs(5);

impl ChildSpec {
    /// A worker started by `factory`: permanent, 5 s shutdown.
    pub fn worker(id: impl Into<String>, factory: Arc<dyn ChildFactory>) -> Self {
        Self {
            id: id.into(),
            start: ChildStart::Factory(factory),
            restart: Restart::Permanent,
            shutdown: Shutdown::Timeout(DEFAULT_WORKER_SHUTDOWN),
            register: None,
        }
    }

    /// A worker built by `make` each time it starts, with the id naming it
    /// in logs too: `ChildSpec::actor("wallet", || Wallet::default())`
    /// (add [`registered`](Self::registered) to find it by that name).
    pub fn actor<A, F>(id: impl Into<String>, make: F) -> Self
    where
        A: Actor,
        F: Fn() -> A + Send + Sync + 'static,
    {
        let id = id.into();
        let f = manta_actors::factory(id.clone(), make);
        Self::worker(id, f)
    }

    /// A nested supervisor: permanent, `infinity` shutdown. Its id is the
    /// spec's name.
    pub fn supervisor(spec: SupervisorSpec) -> Self {
        Self {
            id: spec.name.clone(),
            start: ChildStart::Supervisor(Box::new(spec)),
            restart: Restart::Permanent,
            shutdown: Shutdown::Infinity,
            register: None,
        }
    }

    /// Sets the restart type.
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// Sets the shutdown mode.
    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Registers the child under `name` each time it starts.
    pub fn register(mut self, name: impl Into<String>) -> Self {
        self.register = Some(name.into());
        self
    }

    /// Registers the child under its id each time it starts.
    pub fn registered(mut self) -> Self {
        self.register = Some(self.id.clone());
        self
    }

    /// Worker or supervisor.
    pub fn child_type(&self) -> ChildType {
        match self.start {
            ChildStart::Factory(_) => ChildType::Worker,
            ChildStart::Supervisor(_) => ChildType::Supervisor,
        }
    }
}

/// A supervisor: its strategy, restart intensity and children.
#[derive(Debug, Clone)]
pub struct SupervisorSpec {
    /// The supervisor's name (its child id inside a parent).
    pub name: String,
    /// Restart strategy (default `one_for_one`).
    pub strategy: Strategy,
    /// At most this many restarts... (default 1)
    pub intensity: u32,
    /// ...within this sliding window (default 5 s); more escalate.
    pub period: Duration,
    /// Optional restart backoff.
    pub backoff: Option<Backoff>,
    /// Children, started in order and stopped in reverse order. For
    /// `simple_one_for_one`, exactly one: the template.
    pub children: Vec<ChildSpec>,
    /// For `simple_one_for_one`: how many children to start at once.
    pub instances: u32,
    /// Where lifecycle events go; nested supervisors without their own bus
    /// use their parent's.
    pub events: Option<EventBus>,
}

impl SupervisorSpec {
    /// OTP defaults: one_for_one, intensity 1 in 5 s, no children.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            strategy: Strategy::OneForOne,
            intensity: 1,
            period: Duration::from_secs(5),
            backoff: None,
            children: Vec::new(),
            instances: 0,
            events: None,
        }
    }

    /// Sets the strategy.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// Sets the restart intensity: at most `max` restarts within `period`.
    pub fn intensity(mut self, max: u32, period: Duration) -> Self {
        self.intensity = max;
        self.period = period;
        self
    }

    /// Sets restart backoff.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// Adds a child.
    pub fn child(mut self, child: ChildSpec) -> Self {
        self.children.push(child);
        self
    }

    /// For `simple_one_for_one`: start this many children at once.
    pub fn instances(mut self, n: u32) -> Self {
        self.instances = n;
        self
    }

    /// Sends this supervisor's (and its subtree's) events to `bus`.
    pub fn events(mut self, bus: EventBus) -> Self {
        self.events = Some(bus);
        self
    }

    /// Checks the spec: unique child ids, one template for a dynamic
    /// supervisor, a period and shutdown timeouts longer than zero. Nested
    /// specs are checked too.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.period.is_zero() {
            return Err(SpecError::ZeroPeriod {
                supervisor: self.name.clone(),
            });
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.children {
            if c.shutdown == Shutdown::Timeout(Duration::ZERO) {
                return Err(SpecError::ZeroShutdown {
                    supervisor: self.name.clone(),
                    child: c.id.clone(),
                });
            }
            if !seen.insert(c.id.as_str()) {
                return Err(SpecError::DuplicateChild {
                    supervisor: self.name.clone(),
                    child: c.id.clone(),
                });
            }
            if let ChildStart::Supervisor(s) = &c.start {
                s.validate()?;
            }
        }
        if self.strategy == Strategy::SimpleOneForOne && self.children.len() != 1 {
            return Err(SpecError::TemplateCount {
                supervisor: self.name.clone(),
                found: self.children.len(),
            });
        }
        Ok(())
    }
}

/// What is wrong with a [`SupervisorSpec`] built in code (tree files report
/// their problems with positions, see [`crate::tree`]). Defined in
/// manta-actors so that a start failure ([`manta_actors::SpawnError`]) can
/// carry it.
pub use manta_actors::SpecError;
