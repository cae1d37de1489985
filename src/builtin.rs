//! Actor kinds built into the `manta` command, usable from tree files:
//!
//! | kind | args | what it does |
//! |---|---|---|
//! | `ticker` | `interval` (duration > 0, default `"1s"`), `message` (default `"tick"`) | logs `message` every `interval` |
//! | `flaky` | `fail_after` (duration), `mode` (`"error"`, `"panic"`, `"normal"`, `"shutdown"`) | exits that way `fail_after` after each start |
//! | `counter` | `start` (integer, default 0) | answers [`CounterMsg`] |

use std::time::Duration;

use manta_actors::{Actor, ActorError, Context, ExitReason, Kind, KindRegistry, Message, ReplyTo};
use manta_supervision::parse_duration;
use serde::{Deserialize, Deserializer, Serialize};

/// Registers the built-in kinds into `kinds`.
pub fn register(kinds: &KindRegistry) {
    kinds.register("ticker", Ticker::new);
    kinds.register("flaky", Flaky::new);
    kinds.register("counter", Counter::new);
}

/// A registry holding just the built-in kinds.
pub fn kinds() -> KindRegistry {
    let k = KindRegistry::new();
    register(&k);
    k
}

/// Every kind the `manta` command knows: the built-ins, manta-ml's
/// (`manta.ps`, `manta.loader`, `manta.worker`) and manta-serve's replica
/// (`manta.serve.replica`, with the `cli` feature), whose training actors find
/// each other through `directory`. The command builds this registry once
/// per run and uses it everywhere it needs kinds (checking tree files,
/// starting them, hosting remote spawns, `manta kinds`), so a tree file can
/// name any kind a node can host.
#[cfg(feature = "ml")]
pub fn all_kinds(directory: manta_ml::Directory) -> KindRegistry {
    all_kinds_with(directory, false)
}

/// [`all_kinds`]; with `command_trials` other nodes' tuners may run
/// command-line trials here (`manta node --allow-command-trials`).
#[cfg(feature = "ml")]
pub fn all_kinds_with(directory: manta_ml::Directory, command_trials: bool) -> KindRegistry {
    let k = kinds();
    manta_ml::register_kinds_with(&k, directory, command_trials);
    // Replicas of `manta serve --seeds` deployments.
    #[cfg(feature = "cli")]
    manta_serve::register_kinds(&k);
    k
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// A period: longer than zero (a zero interval would spin, sending
/// ticks as fast as the runtime allows).
fn de_period<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = de_duration(d)?;
    if v.is_zero() {
        return Err(serde::de::Error::custom(
            "interval must be longer than zero",
        ));
    }
    Ok(v)
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

fn tick() -> String {
    "tick".to_owned()
}

/// Arguments of the `ticker` kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TickerArgs {
    /// How often to tick (longer than zero).
    #[serde(default = "one_second", deserialize_with = "de_period")]
    pub interval: Duration,
    /// What to log.
    #[serde(default = "tick")]
    pub message: String,
}

/// Messages of timer-driven built-in kinds.
#[derive(Debug, Serialize, Deserialize)]
pub enum TimerMsg {
    /// The timer fired.
    Tick,
    /// How often it has fired.
    Ticks(ReplyTo<u64>),
}

impl Message for TimerMsg {
    const NAME: &'static str = "manta.builtin.TimerMsg";
    const DECODE: Option<manta_actors::wire::Decode<Self>> =
        Some(manta_actors::wire::decode::<Self>);
}

/// Sends `msg` to the actor after `every`, repeatedly while it lives.
fn start_timer(ctx: &Context<TimerMsg>, every: Duration, repeat: bool) {
    let me = ctx.myself().clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if me.tell(TimerMsg::Tick).is_err() || !repeat {
                break;
            }
        }
    });
}

/// Logs a message every interval; answers [`TimerMsg::Ticks`] with its tick
/// count.
#[derive(Debug)]
pub struct Ticker {
    args: TickerArgs,
    ticks: u64,
}

impl Ticker {
    /// A ticker from its args.
    pub fn new(args: TickerArgs) -> Self {
        Self { args, ticks: 0 }
    }
}

impl Actor for Ticker {
    type Msg = TimerMsg;

    async fn started(&mut self, ctx: &mut Context<TimerMsg>) -> Result<(), ActorError> {
        start_timer(ctx, self.args.interval, true);
        Ok(())
    }

    async fn handle(
        &mut self,
        msg: TimerMsg,
        ctx: &mut Context<TimerMsg>,
    ) -> Result<(), ActorError> {
        match msg {
            TimerMsg::Tick => {
                self.ticks += 1;
                tracing::info!(actor = %ctx.myself().id(), ticks = self.ticks, "{}", self.args.message);
            }
            TimerMsg::Ticks(r) => {
                r.send(self.ticks);
            }
        }
        Ok(())
    }
}

/// How a `flaky` worker exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlakyMode {
    /// Its handler returns an error.
    Error,
    /// Its handler panics.
    Panic,
    /// It stops normally.
    Normal,
    /// It stops with `shutdown`.
    Shutdown,
}

/// Arguments of the `flaky` kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlakyArgs {
    /// How long after each start it exits.
    #[serde(deserialize_with = "de_duration")]
    pub fail_after: Duration,
    /// How it exits.
    pub mode: FlakyMode,
}

/// Exits on schedule: `fail_after` after each start.
#[derive(Debug)]
pub struct Flaky {
    args: FlakyArgs,
}

impl Flaky {
    /// A flaky worker from its args.
    pub fn new(args: FlakyArgs) -> Self {
        Self { args }
    }
}

impl Actor for Flaky {
    type Msg = TimerMsg;

    async fn started(&mut self, ctx: &mut Context<TimerMsg>) -> Result<(), ActorError> {
        start_timer(ctx, self.args.fail_after, false);
        Ok(())
    }

    async fn handle(
        &mut self,
        msg: TimerMsg,
        ctx: &mut Context<TimerMsg>,
    ) -> Result<(), ActorError> {
        if let TimerMsg::Ticks(r) = msg {
            r.send(0);
            return Ok(());
        }
        let after = manta_supervision::format_duration(self.args.fail_after);
        match self.args.mode {
            FlakyMode::Error => return Err(format!("scheduled failure after {after}").into()),
            FlakyMode::Panic => panic!("scheduled panic after {after}"),
            FlakyMode::Normal => ctx.stop(ExitReason::Normal),
            FlakyMode::Shutdown => ctx.stop(ExitReason::Shutdown(Some(format!(
                "scheduled after {after}"
            )))),
        }
        Ok(())
    }
}

/// The typed token of the `counter` kind, for `Cluster::spawn_on`.
pub fn counter_kind() -> Kind<CounterArgs, CounterMsg> {
    Kind::named("counter")
}

/// Arguments of the `counter` kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CounterArgs {
    /// Initial value.
    #[serde(default)]
    pub start: i64,
}

/// Messages of the `counter` kind.
#[derive(Debug, Serialize, Deserialize)]
pub enum CounterMsg {
    /// Add to the value.
    Add(i64),
    /// Add to the value, then answer it.
    AddAndGet(i64, ReplyTo<i64>),
    /// Answer the value.
    Get(ReplyTo<i64>),
}

impl Message for CounterMsg {
    const NAME: &'static str = "manta.builtin.CounterMsg";
    const DECODE: Option<manta_actors::wire::Decode<Self>> =
        Some(manta_actors::wire::decode::<Self>);
}

/// A counter.
#[derive(Debug)]
pub struct Counter {
    value: i64,
}

impl Counter {
    /// A counter from its args.
    pub fn new(args: CounterArgs) -> Self {
        Self { value: args.start }
    }
}

impl Actor for Counter {
    type Msg = CounterMsg;

    async fn handle(
        &mut self,
        msg: CounterMsg,
        _: &mut Context<CounterMsg>,
    ) -> Result<(), ActorError> {
        match msg {
            CounterMsg::Add(n) => self.value += n,
            CounterMsg::AddAndGet(n, r) => {
                self.value += n;
                r.send(self.value);
            }
            CounterMsg::Get(r) => {
                r.send(self.value);
            }
        }
        Ok(())
    }
}
