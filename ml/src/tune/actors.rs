//! The controller actor and the trial actors, and [`run`], the driver.
//!
//! The controller owns the searcher, the scheduler, the stoppers and the
//! store. Each trial is an actor (a `temporary` child of one `one_for_one`
//! supervisor) that runs its trainable and `ask`s the controller with each
//! result; the answer is the scheduling decision, so a trial never polls.
//! A trial that fails (an error, a panic, a command exiting non-zero) is
//! seen through its monitor; the controller restarts it from its last
//! checkpoint up to `max_failures` times.
//!
//! On a cluster ([`run_on`] with [`Env::Cluster`]) the controller stays on
//! this node and the trials are spawned on other nodes as the kind
//! [`TRIAL_KIND`], packed by the cpus and gpus each asks for (`[trial]`);
//! they report through a relay actor registered here, and send their
//! checkpoints back as bytes ([`super::transfer`]). A trial whose node
//! dies is restarted on another node from its last checkpoint.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use manta_actors::{
    Actor, ActorError, ActorHandle, ActorSystem, Context, ExitReason, KindRegistry, Message,
    Placement, Placer, ReplyTo,
};
use manta_supervision::{
    ChildSpec, Restart, Strategy, Supervisor, SupervisorHandle, SupervisorSpec,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::config::{TrainableSpec, TuneConfig};
use super::schedule::{Decision, Scheduler, SchedulerSpec};
use super::search::Searcher;
use super::space::Params;
use super::store::{Store, TrialRow};
use super::trainable::{Metrics, Trainable, TrainableFactory, Trainables, TrialInfo};
use super::transfer::{self, Packed};
use super::{TuneError, external, report};
use crate::Directory;
use crate::job::Env;

/// A trial's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialState {
    /// Waiting for a slot (new, to be retried, or interrupted).
    Pending,
    /// Running.
    Running,
    /// Ran to its end (its own, or the iteration cap).
    Completed,
    /// Stopped early by the scheduler or a stopper.
    Stopped,
    /// Failed more than `max_failures` times.
    Error,
    /// Stopped by the time budget or the metric threshold.
    Terminated,
    /// Waiting at a HyperBand rung (or for a PBT exploit) to be continued
    /// from its checkpoint.
    Paused,
}

impl TrialState {
    /// The name in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            TrialState::Pending => "pending",
            TrialState::Running => "running",
            TrialState::Completed => "completed",
            TrialState::Stopped => "stopped",
            TrialState::Error => "error",
            TrialState::Terminated => "terminated",
            TrialState::Paused => "paused",
        }
    }

    fn parse(s: &str) -> TrialState {
        match s {
            "running" => TrialState::Running,
            "completed" => TrialState::Completed,
            "stopped" => TrialState::Stopped,
            "error" => TrialState::Error,
            "terminated" => TrialState::Terminated,
            "paused" => TrialState::Paused,
            _ => TrialState::Pending,
        }
    }

    fn is_final(self) -> bool {
        !matches!(
            self,
            TrialState::Pending | TrialState::Running | TrialState::Paused
        )
    }
}

/// What the driver hears while an experiment runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A trial started (or restarted).
    Started {
        /// The trial.
        trial: u64,
        /// Its hyper-parameters.
        params: Params,
        /// The attempt (from 0).
        attempt: u64,
        /// The iteration it continues from (0: from scratch).
        from_iteration: u64,
        /// The node it runs on (its name), on a cluster.
        node: Option<String>,
    },
    /// A trial reported a result.
    Result {
        /// The trial.
        trial: u64,
        /// The iteration.
        iteration: u64,
        /// The experiment's metric, if reported.
        metric: Option<f64>,
        /// The best metric of any trial so far.
        best: Option<f64>,
    },
    /// A trial ended or failed.
    Ended {
        /// The trial.
        trial: u64,
        /// Its state now (`pending` when it will be retried).
        state: TrialState,
        /// The failure, if any.
        error: Option<String>,
    },
}

/// The best trial.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Best {
    /// The trial id.
    pub trial: u64,
    /// Its hyper-parameters.
    pub config: Params,
    /// Its metric at its newest checkpoint (what serving deploys), or
    /// its best result in an experiment without checkpoints.
    pub metric: f64,
    /// The iteration of that metric.
    pub iteration: Option<u64>,
    /// Test accuracy, when the trainable reported it.
    pub test_accuracy: Option<f64>,
    /// Its newest checkpoint.
    pub checkpoint: Option<String>,
}

/// The outcome of an experiment (what `manta tune --json` prints).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The best trial.
    pub best: Option<Best>,
    /// Trials by final state.
    pub trials: BTreeMap<String, u64>,
    /// Results stored.
    pub results: u64,
    /// Seconds this run took.
    pub wall_seconds: f64,
    /// The experiment directory.
    pub experiment_dir: String,
    /// The metric and mode.
    pub metric: String,
    /// `max` or `min`.
    pub mode: String,
    /// Files written (exports and plots).
    pub files: Vec<String>,
}

// ---------------------------------------------------------------- trials

/// How a trial runs.
#[derive(Clone)]
enum Launch {
    Rust(TrainableFactory),
    Command {
        argv: Vec<String>,
        env: BTreeMap<String, String>,
    },
    /// A trial on another node whose trainable that node cannot build (an
    /// unknown Rust trainable, an unreadable training config): it fails
    /// at its start with this message.
    Unavailable(String),
}

/// Where a trial reports.
#[derive(Clone)]
enum Reporter {
    /// The controller, in this process.
    Local(ActorHandle<CtlMsg>),
    /// The controller's relay, on another node.
    Remote(ActorHandle<ReportMsg>),
    /// Not reachable (a bad node id in the spawn arguments).
    Unavailable(String),
}

#[derive(Clone)]
struct TrialArgs {
    info: TrialInfo,
    restore: Option<(u64, PathBuf)>,
    launch: Launch,
    reporter: Reporter,
    checkpoint_every: u64,
    cap: Option<u64>,
    /// Checkpoints the scheduler needs (HyperBand rungs, PBT intervals).
    schedule: SchedulerSpec,
    /// `experiment.persist`: without it, no trial directory and only the
    /// checkpoints the scheduler needs.
    persist: bool,
    /// On another node than the controller: the iteration to fetch the
    /// checkpoint of before starting, and the checkpoint size limit.
    remote: Option<RemoteSide>,
}

#[derive(Clone)]
struct RemoteSide {
    restore_iteration: Option<u64>,
    limit: u64,
}

/// Messages of a trial actor (they cross nodes: the controller stops a
/// trial on another node with [`TrialMsg::Stop`]).
#[derive(Serialize, Deserialize, Message)]
#[message(name = "manta.tune.TrialMsg")]
enum TrialMsg {
    Step,
    Line(Metrics),
    Exited(Result<external::Ended, String>),
    Stop,
    /// A trial on another node: fetch the checkpoint, then start.
    Begin,
}

impl std::fmt::Debug for TrialMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TrialMsg::Step => "Step",
            TrialMsg::Line(_) => "Line",
            TrialMsg::Exited(_) => "Exited",
            TrialMsg::Stop => "Stop",
            TrialMsg::Begin => "Begin",
        })
    }
}

struct TrialActor {
    args: TrialArgs,
    trainable: Option<Box<dyn Trainable>>,
    iteration: u64,
    kill: Option<oneshot::Sender<()>>,
    stopping: bool,
    had_metric: bool,
    /// What was last sent of the command's checkpoint directory (remote).
    sent: transfer::Fingerprint,
    /// The node-local scratch directory, removed when the actor goes.
    scratch: Option<PathBuf>,
}

impl Drop for TrialActor {
    fn drop(&mut self) {
        if let Some(dir) = self.scratch.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

const ASK: Duration = Duration::from_secs(600);

fn fail(msg: impl Into<String>) -> ActorError {
    msg.into().into()
}

impl TrialActor {
    fn new(args: TrialArgs) -> Self {
        let iteration = args.restore.as_ref().map_or(0, |r| r.0);
        Self {
            args,
            trainable: None,
            iteration,
            kill: None,
            stopping: false,
            had_metric: false,
            sent: Vec::new(),
            scratch: None,
        }
    }

    /// A trial spawned here by a controller on another node (the
    /// [`TRIAL_KIND`] kind): it runs in a scratch directory of this node.
    fn remote(
        a: RemoteTrialArgs,
        directory: &Directory,
        trainables: &Trainables,
        command_trials: bool,
    ) -> Self {
        let scratch = std::env::temp_dir()
            .join("manta-tune")
            .join(&a.tag)
            .join(format!("trial-{:05}-{}", a.id, a.attempt));
        let launch = match launch_for(&a.trainable, trainables) {
            Ok(Launch::Command { .. }) if !command_trials => Launch::Unavailable(
                "this node does not run command trials for other nodes (start `manta node` \
                 with --allow-command-trials to let cluster members run commands here)"
                    .to_owned(),
            ),
            Ok(l) => l,
            Err(e) => Launch::Unavailable(e.to_string()),
        };
        let reporter = match directory.resolve_at::<ReportMsg>(&a.controller_node, &a.reports) {
            Ok(h) => Reporter::Remote(h),
            Err(e) => Reporter::Unavailable(format!("the controller's relay: {e}")),
        };
        let mut t = Self::new(TrialArgs {
            info: TrialInfo {
                id: a.id,
                params: a.params,
                dir: scratch.clone(),
                attempt: a.attempt,
                max_iterations: a.max_iterations,
            },
            restore: None,
            launch,
            reporter,
            checkpoint_every: a.checkpoint_every.max(1),
            cap: a.cap,
            schedule: a.schedule,
            // Checkpoints go back to the controller, which keeps them.
            persist: true,
            remote: Some(RemoteSide {
                restore_iteration: a.restore_iteration,
                limit: a.checkpoint_limit,
            }),
        });
        t.scratch = Some(scratch);
        t
    }

    /// The checkpoint to send with a result from another node: the
    /// directory's bytes, unless it is what was sent last. An `ephemeral`
    /// directory (a Rust trainable's, one per checkpoint) is removed once
    /// read: the controller keeps it.
    async fn pack(&mut self, dir: PathBuf, ephemeral: bool) -> Result<Option<Packed>, ActorError> {
        let limit = self.args.remote.as_ref().map_or(0, |r| r.limit);
        let sent = std::mem::take(&mut self.sent);
        let (sent, packed) = tokio::task::spawn_blocking(move || {
            let fp = transfer::fingerprint(&dir)?;
            if fp.is_empty() || fp == sent {
                return Ok((sent, None));
            }
            let p = transfer::pack(&dir, limit)?;
            if ephemeral {
                let _ = std::fs::remove_dir_all(&dir);
            }
            Ok::<_, TuneError>((fp, Some(p)))
        })
        .await
        .map_err(|e| fail(format!("reading the checkpoint panicked: {e}")))?
        .map_err(|e| fail(e.to_string()))?;
        self.sent = sent;
        Ok(packed)
    }

    /// Reports a result; the answer says whether to go on.
    async fn report(
        &mut self,
        metrics: Metrics,
        checkpoint: Option<PathBuf>,
        ephemeral: bool,
    ) -> Result<Decision, ActorError> {
        let (id, attempt, iteration) = (self.args.info.id, self.args.info.attempt, self.iteration);
        let answer = match self.args.reporter.clone() {
            Reporter::Local(c) => c
                .ask(
                    |reply| CtlMsg::Report {
                        trial: id,
                        attempt,
                        iteration,
                        metrics,
                        checkpoint: checkpoint.map(Checkpoint::Path),
                        reply,
                    },
                    ASK,
                )
                .await
                .map_err(|e| e.to_string()),
            Reporter::Remote(r) => {
                let packed = match checkpoint {
                    Some(dir) => self.pack(dir, ephemeral).await?,
                    None => None,
                };
                r.ask(
                    |reply| ReportMsg::Report {
                        trial: id,
                        attempt,
                        iteration,
                        metrics,
                        checkpoint: packed,
                        reply,
                    },
                    ASK,
                )
                .await
                .map_err(|e| e.to_string())
            }
            Reporter::Unavailable(e) => return Err(fail(e)),
        };
        answer.map_err(|e| fail(format!("report to the controller: {e}")))
    }

    fn finish(&mut self, ctx: &mut Context<TrialMsg>) {
        let (trial, attempt) = (self.args.info.id, self.args.info.attempt);
        match &self.args.reporter {
            Reporter::Local(c) => {
                let _ = c.tell(CtlMsg::Finished { trial, attempt });
            }
            Reporter::Remote(r) => {
                let _ = r.tell(ReportMsg::Finished { trial, attempt });
            }
            Reporter::Unavailable(_) => {}
        }
        ctx.stop(ExitReason::Normal);
    }

    /// A trial on another node: fetches its checkpoint from the controller
    /// and lays it out where the trainable restores from.
    async fn fetch_checkpoint(&mut self) -> Result<(), ActorError> {
        let Some(side) = self.args.remote.clone() else {
            return Ok(());
        };
        let Some(iteration) = side.restore_iteration else {
            return Ok(());
        };
        let Reporter::Remote(r) = self.args.reporter.clone() else {
            return Ok(());
        };
        let (trial, attempt) = (self.args.info.id, self.args.info.attempt);
        let packed = r
            .ask(
                |reply| ReportMsg::Fetch {
                    trial,
                    attempt,
                    reply,
                },
                ASK,
            )
            .await
            .map_err(|e| fail(format!("fetching the checkpoint: {e}")))?
            .map_err(|e| fail(format!("fetching the checkpoint: {e}")))?;
        let Some(packed) = packed else {
            return Err(fail(format!(
                "the controller has no checkpoint of iteration {iteration}"
            )));
        };
        let dir = match self.args.launch {
            Launch::Command { .. } => self.args.info.dir.join("checkpoint"),
            _ => self.args.info.dir.join(format!("restore-{iteration:06}")),
        };
        let (limit, target) = (side.limit, dir.clone());
        tokio::task::spawn_blocking(move || transfer::unpack(&packed, &target, limit))
            .await
            .map_err(|e| fail(format!("writing the checkpoint panicked: {e}")))?
            .map_err(|e| fail(e.to_string()))?;
        // What arrived is what the controller has: not sent back.
        if matches!(self.args.launch, Launch::Command { .. }) {
            self.sent = transfer::fingerprint(&dir).map_err(|e| fail(e.to_string()))?;
        }
        self.args.restore = Some((iteration, dir));
        self.iteration = iteration;
        Ok(())
    }

    /// Builds the trainable (restored from the checkpoint, if any), or
    /// starts the command.
    async fn begin(&mut self, ctx: &mut Context<TrialMsg>) -> Result<(), ActorError> {
        match self.args.launch.clone() {
            Launch::Rust(make) => {
                let info = self.args.info.clone();
                let restore = self.args.restore.clone();
                let t = tokio::task::spawn_blocking(move || {
                    let mut t = make(&info)?;
                    if let Some((_, dir)) = &restore {
                        t.restore(dir)?;
                    }
                    Ok::<_, TuneError>(t)
                })
                .await
                .map_err(|e| fail(format!("trainable setup panicked: {e}")))?
                .map_err(|e| fail(e.to_string()))?;
                if let Some(m) = t.max_iterations() {
                    self.args.cap = Some(self.args.cap.map_or(m, |c| c.min(m)));
                }
                self.trainable = Some(t);
                ctx.myself()
                    .tell(TrialMsg::Step)
                    .map_err(|e| fail(e.to_string()))?;
            }
            Launch::Command { argv, env } => {
                // Restored from another directory (a PBT exploit's copy of
                // a donor's checkpoint, in this process): that copy becomes
                // the trial's checkpoint directory, the one the command is
                // told to read (`MANTA_CHECKPOINT_DIR`). On another node
                // `fetch_checkpoint` unpacked it there already.
                let own = self.args.info.dir.join("checkpoint");
                if self.args.remote.is_none()
                    && let Some((_, from)) = self.args.restore.clone()
                    && from != own
                {
                    tokio::task::spawn_blocking(move || {
                        if own.exists() {
                            std::fs::remove_dir_all(&own).map_err(|e| TuneError::io(&own, e))?;
                        }
                        copy_dir(&from, &own)
                    })
                    .await
                    .map_err(|e| fail(format!("restoring the checkpoint panicked: {e}")))?
                    .map_err(|e| fail(format!("restoring the checkpoint: {e}")))?;
                }
                let cmd = external::command(&argv, &env, &self.args.info, self.iteration)
                    .map_err(|e| fail(e.to_string()))?;
                let (kill_tx, kill_rx) = oneshot::channel();
                self.kill = Some(kill_tx);
                let me = ctx.myself().clone();
                let program = PathBuf::from(argv.first().cloned().unwrap_or_default());
                tokio::spawn(async move {
                    let lines = me.clone();
                    let ended = external::run(
                        cmd,
                        &program,
                        move |m| {
                            let _ = lines.tell(TrialMsg::Line(m));
                        },
                        kill_rx,
                    )
                    .await
                    .map_err(|e| e.to_string());
                    let _ = me.tell(TrialMsg::Exited(ended));
                });
            }
            Launch::Unavailable(e) => return Err(fail(e)),
        }
        Ok(())
    }
}

impl Actor for TrialActor {
    type Msg = TrialMsg;

    async fn started(&mut self, ctx: &mut Context<TrialMsg>) -> Result<(), ActorError> {
        if let (Some(_), Launch::Unavailable(e)) = (&self.args.remote, &self.args.launch) {
            // Refused before anything is written or fetched: the spawn
            // fails with the reason, which the controller records.
            return Err(fail(e.clone()));
        }
        let dir = &self.args.info.dir;
        if self.args.persist
            || self.args.remote.is_some()
            || matches!(self.args.launch, Launch::Command { .. })
        {
            std::fs::create_dir_all(dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
        }
        if self.args.remote.is_some() {
            // The spawn is answered once this returns; the checkpoint is
            // asked for afterwards (the controller may be waiting for the
            // spawn's answer).
            return ctx
                .myself()
                .tell(TrialMsg::Begin)
                .map_err(|e| fail(e.to_string()));
        }
        self.begin(ctx).await
    }

    async fn handle(
        &mut self,
        msg: TrialMsg,
        ctx: &mut Context<TrialMsg>,
    ) -> Result<(), ActorError> {
        match msg {
            TrialMsg::Step => {
                if self.stopping || self.args.cap.is_some_and(|c| self.iteration >= c) {
                    self.finish(ctx);
                    return Ok(());
                }
                let Some(mut t) = self.trainable.take() else {
                    return Err(fail("trainable missing"));
                };
                let next = self.iteration + 1;
                let save = (self.args.persist
                    && (next % self.args.checkpoint_every == 0
                        || self.args.cap.is_some_and(|c| next >= c)))
                    || self.args.schedule.must_checkpoint(self.args.info.id, next);
                let dir = self.args.info.dir.join(format!("checkpoint-{next:06}"));
                let (t, out) = tokio::task::spawn_blocking(move || {
                    let out = t.step().and_then(|m| {
                        if save {
                            std::fs::create_dir_all(&dir).map_err(|e| TuneError::io(&dir, e))?;
                            t.save(&dir)?;
                            Ok((m, Some(dir)))
                        } else {
                            Ok((m, None))
                        }
                    });
                    (t, out)
                })
                .await
                .map_err(|e| fail(format!("iteration panicked: {e}")))?;
                self.trainable = Some(t);
                let (metrics, checkpoint) = out.map_err(|e| fail(e.to_string()))?;
                self.iteration = next;
                let decision = self.report(metrics, checkpoint, true).await?;
                let capped = self.args.cap.is_some_and(|c| self.iteration >= c);
                if decision == Decision::Continue && !capped && !self.stopping {
                    ctx.myself()
                        .tell(TrialMsg::Step)
                        .map_err(|e| fail(e.to_string()))?;
                } else {
                    self.finish(ctx);
                }
            }
            TrialMsg::Line(mut metrics) => {
                if self.stopping {
                    return Ok(());
                }
                let it = metrics
                    .remove("iteration")
                    .or_else(|| metrics.remove("training_iteration"));
                self.iteration = match it {
                    Some(i) if i >= 0.0 => i.round() as u64,
                    _ => self.iteration + 1,
                };
                self.had_metric = true;
                // The command's checkpoint directory counts as this
                // iteration's checkpoint once the command wrote anything.
                let cp = self.args.info.dir.join("checkpoint");
                let written = std::fs::read_dir(&cp).is_ok_and(|mut d| d.next().is_some());
                let decision = self.report(metrics, written.then_some(cp), false).await?;
                if decision != Decision::Continue {
                    self.stopping = true;
                    if let Some(k) = self.kill.take() {
                        let _ = k.send(());
                    }
                }
            }
            TrialMsg::Exited(ended) => {
                let ended = ended.map_err(fail)?;
                if self.stopping || ended.code == Some(0) {
                    if !self.had_metric && !self.stopping {
                        return Err(fail(format!(
                            "the command exited without printing a metric line ({} other lines)",
                            ended.ignored_lines
                        )));
                    }
                    self.finish(ctx);
                } else {
                    return Err(fail(match ended.code {
                        Some(c) => format!("the command exited with status {c}"),
                        None => "the command was killed by a signal".into(),
                    }));
                }
            }
            TrialMsg::Begin => {
                if self.stopping {
                    self.finish(ctx);
                    return Ok(());
                }
                self.fetch_checkpoint().await?;
                self.begin(ctx).await?;
            }
            TrialMsg::Stop => {
                self.stopping = true;
                match self.kill.take() {
                    Some(k) => {
                        let _ = k.send(());
                    }
                    // A Rust trial between iterations: its next Step ends it.
                    None if self.trainable.is_some() => {}
                    None => {}
                }
            }
        }
        Ok(())
    }
}

// ------------------------------------------------- trials on other nodes

/// The actor kind of a trial spawned on another node by a controller
/// (registered by [`crate::register_kinds`], or [`register_trial_kind`]
/// with your own Rust trainables).
pub const TRIAL_KIND: &str = "manta.tune.trial";

/// The spawn arguments of a [`TRIAL_KIND`] actor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteTrialArgs {
    /// The trial.
    pub id: u64,
    /// Its hyper-parameters.
    pub params: Params,
    /// The attempt.
    pub attempt: u64,
    /// The most iterations it will be asked for.
    pub max_iterations: Option<u64>,
    /// What it runs.
    pub trainable: TrainableSpec,
    /// Iterations between checkpoints.
    pub checkpoint_every: u64,
    /// The iteration cap.
    pub cap: Option<u64>,
    /// Continue from the controller's checkpoint of this iteration.
    pub restore_iteration: Option<u64>,
    /// The controller's node id.
    pub controller_node: String,
    /// The name of the controller's relay on that node.
    pub reports: String,
    /// This run of the experiment (scratch directories are named by it).
    pub tag: String,
    /// Largest checkpoint sent back, in bytes.
    pub checkpoint_limit: u64,
    /// The experiment's scheduler: the iterations it needs checkpoints of
    /// (HyperBand rungs, PBT intervals).
    #[serde(default)]
    pub schedule: SchedulerSpec,
}

/// Registers [`TRIAL_KIND`] on a node: trials of a controller elsewhere
/// run here, with the digits trainable and the Rust ones in `trainables`;
/// they find the controller through `directory`. Command trials (any
/// command line a cluster member names) run only with `command_trials`
/// (`manta node --allow-command-trials`); without it such a trial fails
/// at its start with an error saying so.
pub fn register_trial_kind(
    kinds: &KindRegistry,
    directory: Directory,
    trainables: Trainables,
    command_trials: bool,
) {
    kinds.register(TRIAL_KIND, move |a: RemoteTrialArgs| {
        TrialActor::remote(a, &directory, &trainables, command_trials)
    });
}

/// What a trial on another node sends the controller (through its relay).
#[derive(Serialize, Deserialize, Message)]
#[message(name = "manta.tune.ReportMsg")]
enum ReportMsg {
    /// A result, with the checkpoint written since the last one.
    Report {
        trial: u64,
        attempt: u64,
        iteration: u64,
        metrics: Metrics,
        checkpoint: Option<Packed>,
        reply: ReplyTo<Decision>,
    },
    /// The trial ended by itself.
    Finished { trial: u64, attempt: u64 },
    /// The checkpoint to continue from.
    Fetch {
        trial: u64,
        attempt: u64,
        reply: ReplyTo<Result<Option<Packed>, String>>,
    },
}

impl std::fmt::Debug for ReportMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReportMsg::Report {
                trial, iteration, ..
            } => write!(f, "Report(trial {trial}, iteration {iteration})"),
            ReportMsg::Finished { trial, .. } => write!(f, "Finished(trial {trial})"),
            ReportMsg::Fetch { trial, .. } => write!(f, "Fetch(trial {trial})"),
        }
    }
}

/// Registered on the controller's node: hands what remote trials send to
/// the controller (whose messages stay local).
struct Relay {
    ctl: ActorHandle<CtlMsg>,
}

impl Actor for Relay {
    type Msg = ReportMsg;

    async fn handle(
        &mut self,
        msg: ReportMsg,
        _: &mut Context<ReportMsg>,
    ) -> Result<(), ActorError> {
        let m = match msg {
            ReportMsg::Report {
                trial,
                attempt,
                iteration,
                metrics,
                checkpoint,
                reply,
            } => CtlMsg::Report {
                trial,
                attempt,
                iteration,
                metrics,
                checkpoint: checkpoint.map(Checkpoint::Packed),
                reply,
            },
            ReportMsg::Finished { trial, attempt } => CtlMsg::Finished { trial, attempt },
            ReportMsg::Fetch {
                trial,
                attempt,
                reply,
            } => CtlMsg::Fetch {
                trial,
                attempt,
                reply,
            },
        };
        self.ctl
            .tell(m)
            .map_err(|e| fail(format!("the controller is gone: {e}")))
    }
}

/// How long an experiment with trials to run, none running and no node
/// able to take one waits for a node to join before it fails.
pub const PLACEMENT_WAIT: Duration = Duration::from_secs(30);

/// The controller's view of the cluster: what it placed where.
struct Placing {
    cluster: manta_cluster::Cluster,
    names: manta_cluster::Names,
    me: String,
    reports: String,
    tag: String,
    filter: Placement,
    cpus: f64,
    gpus: u32,
    limit: u64,
    trainable: TrainableSpec,
    /// CPUs and GPUs taken by running trials, by node id.
    used: BTreeMap<String, (f64, u32)>,
    /// A trial waits for a node with room: the ticker looks again (a node
    /// may have joined).
    waiting: bool,
    /// Since when nothing runs and no node can take a trial.
    stalled: Option<Instant>,
}

impl Placing {
    /// The matching node with room for one more trial and the most free
    /// CPUs (trials spread out).
    fn pick(&self) -> Option<manta_cluster::Offer> {
        let free = |o: &manta_cluster::Offer| {
            let (c, g) = self.used.get(&o.id).copied().unwrap_or((0.0, 0));
            (o.resources.cpus - c, o.resources.gpus.saturating_sub(g))
        };
        self.cluster
            .offers(&self.filter)
            .into_iter()
            .filter(|o| {
                let (c, g) = free(o);
                c + 1e-9 >= self.cpus && g >= self.gpus
            })
            .max_by(|a, b| {
                free(a)
                    .0
                    .total_cmp(&free(b).0)
                    .then_with(|| b.id.cmp(&a.id))
            })
    }

    fn take(&mut self, node: &str) {
        let e = self.used.entry(node.to_owned()).or_insert((0.0, 0));
        e.0 += self.cpus;
        e.1 += self.gpus;
    }

    fn release(&mut self, node: &str) {
        if let Some(e) = self.used.get_mut(node) {
            e.0 = (e.0 - self.cpus).max(0.0);
            e.1 = e.1.saturating_sub(self.gpus);
            if e.0 <= 1e-9 && e.1 == 0 {
                self.used.remove(node);
            }
        }
    }

    /// Why nothing can be placed, for the error.
    fn why(&self) -> String {
        let nodes: Vec<String> = self
            .cluster
            .offers(&self.filter)
            .iter()
            .map(|o| {
                format!(
                    "{} ({} cpus, {} gpus)",
                    o.name, o.resources.cpus, o.resources.gpus
                )
            })
            .collect();
        format!(
            "no node can run a trial within {PLACEMENT_WAIT:?}: each needs {} cpus and {} gpus{}; matching nodes: {}",
            self.cpus,
            self.gpus,
            self.filter
                .role
                .as_ref()
                .map(|r| format!(" on role `{r}`"))
                .unwrap_or_default(),
            if nodes.is_empty() {
                "none".to_owned()
            } else {
                nodes.join(", ")
            }
        )
    }
}

// ------------------------------------------------------------ controller

/// A checkpoint as a trial reports it.
enum Checkpoint {
    /// A directory on this node.
    Path(PathBuf),
    /// Bytes from another node, to store in the experiment directory.
    Packed(Packed),
}

#[derive(Message)]
#[message(local)]
enum CtlMsg {
    Start,
    Report {
        trial: u64,
        attempt: u64,
        iteration: u64,
        metrics: Metrics,
        checkpoint: Option<Checkpoint>,
        reply: ReplyTo<Decision>,
    },
    Fetch {
        trial: u64,
        attempt: u64,
        reply: ReplyTo<Result<Option<Packed>, String>>,
    },
    Finished {
        trial: u64,
        attempt: u64,
    },
    Exited {
        trial: u64,
        attempt: u64,
        reason: ExitReason,
    },
    Tick,
    Deadline,
}

impl std::fmt::Debug for CtlMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CtlMsg::Start => "Start",
            CtlMsg::Report { .. } => "Report",
            CtlMsg::Fetch { .. } => "Fetch",
            CtlMsg::Finished { .. } => "Finished",
            CtlMsg::Exited { .. } => "Exited",
            CtlMsg::Tick => "Tick",
            CtlMsg::Deadline => "Deadline",
        })
    }
}

struct Rec {
    row: TrialRow,
    state: TrialState,
    scores: Vec<f64>,
    checkpoint: Option<(u64, PathBuf)>,
    handle: Option<ActorHandle<TrialMsg>>,
    ending: Option<TrialState>,
    /// The scheduler's decision on this trial, paused but still running
    /// (applied when it ends).
    release: Option<Decision>,
    /// Starts that continued a pause (not failures).
    pauses: u64,
    /// The node (id, name) of the running attempt, on a cluster.
    node: Option<(String, String)>,
    /// Restarts after the trial's node died (they do not count against
    /// `max_failures`).
    lost: u64,
    /// The metric names of its first result in this driver (to name them
    /// when the trial ends without ever reporting the experiment's).
    reported: Option<Vec<String>>,
}

/// Restarts after node deaths one trial gets at most.
const MAX_NODE_LOSSES: u64 = 10;

struct Controller {
    cfg: Arc<TuneConfig>,
    store: Option<Store>,
    searcher: Searcher,
    scheduler: Scheduler,
    trials: BTreeMap<u64, Rec>,
    queue: VecDeque<u64>,
    running: u64,
    exhausted: bool,
    halted: bool,
    supervisor: SupervisorHandle,
    launch: Launch,
    events: mpsc::UnboundedSender<Event>,
    done: Option<oneshot::Sender<Result<Store, TuneError>>>,
    last_commit: Instant,
    best: Option<f64>,
    scheduler_dirty: bool,
    placing: Option<Placing>,
}

impl Controller {
    fn store(&mut self) -> Result<&mut Store, ActorError> {
        self.store.as_mut().ok_or_else(|| fail("store closed"))
    }

    /// Commits, with the searcher's state (small: its observations are the
    /// trials table). The scheduler's state grows with the results, so it
    /// is saved with the periodic commits only (`full`); a resume rebuilds
    /// it by replaying the committed results, which is always consistent.
    fn commit_with(&mut self, full: bool) -> Result<(), ActorError> {
        let s = self.searcher.light_state();
        let k = if full && self.scheduler_dirty {
            Some(serde_json::to_string(&self.scheduler).map_err(|e| fail(e.to_string()))?)
        } else {
            None
        };
        let store = self.store()?;
        store
            .save_state("searcher", &s)
            .map_err(|e| fail(e.to_string()))?;
        if let Some(k) = k {
            store
                .save_state("scheduler", &k)
                .map_err(|e| fail(e.to_string()))?;
        }
        store.commit().map_err(|e| fail(e.to_string()))?;
        if full {
            self.scheduler_dirty = false;
        }
        self.last_commit = Instant::now();
        Ok(())
    }

    fn commit(&mut self) -> Result<(), ActorError> {
        self.commit_with(false)
    }

    fn write_trial(&mut self, id: u64, ended: bool) -> Result<(), ActorError> {
        let Some(rec) = self.trials.get_mut(&id) else {
            return Ok(());
        };
        rec.row.state = rec.state.as_str().to_string();
        rec.row.node_losses = rec.lost;
        rec.row.pauses = rec.pauses;
        if let Some((_, name)) = &rec.node {
            rec.row.node = Some(name.clone());
        }
        let row = rec.row.clone();
        self.store()?
            .update_trial(&row, ended)
            .map_err(|e| fail(e.to_string()))
    }

    /// Fails the experiment (a store error): the driver gets the error.
    fn abort(&mut self, e: ActorError, ctx: &mut Context<CtlMsg>) {
        if let Some(done) = self.done.take() {
            let _ = done.send(Err(TuneError::Actor(format!("controller: {e}"))));
        }
        ctx.stop(ExitReason::Normal);
    }

    async fn launch(
        &mut self,
        id: u64,
        target: Option<manta_cluster::Offer>,
        ctx: &mut Context<CtlMsg>,
    ) -> Result<(), ActorError> {
        let cfg = Arc::clone(&self.cfg);
        let Some(rec) = self.trials.get_mut(&id) else {
            return Ok(());
        };
        let attempt = rec.row.attempts;
        rec.row.attempts += 1;
        rec.state = TrialState::Running;
        rec.ending = None;
        let from = rec.checkpoint.as_ref().map_or(0, |c| c.0);
        // Results after the checkpoint are reported again; only new
        // iterations reach the scheduler (the store keeps the first row).
        let params = rec.row.params.clone();
        let restore = rec.checkpoint.clone();
        let (spec, remote) = match (&mut self.placing, target) {
            (Some(p), Some(target)) => {
                let name = format!("tune.{}.trial-{id}-{attempt}", p.tag);
                let args = RemoteTrialArgs {
                    id,
                    params: params.clone(),
                    attempt,
                    max_iterations: cfg.iteration_cap(),
                    trainable: p.trainable.clone(),
                    checkpoint_every: cfg.experiment.checkpoint_every,
                    cap: cfg.iteration_cap(),
                    restore_iteration: restore.as_ref().map(|c| c.0),
                    controller_node: p.me.clone(),
                    reports: p.reports.clone(),
                    tag: p.tag.clone(),
                    checkpoint_limit: p.limit,
                    schedule: cfg.scheduler.clone(),
                };
                let value = serde_json::to_value(&args)
                    .map_err(|e| fail(format!("trial {id}: spawn arguments: {e}")))?;
                let on = Placement {
                    node: Some(target.id.clone()),
                    ..Placement::default()
                };
                let factory = p
                    .cluster
                    .factory(TRIAL_KIND, value, &on)
                    .map_err(|e| fail(format!("trial {id}: {e}")))?;
                p.take(&target.id);
                rec.node = Some((target.id.clone(), target.name.clone()));
                rec.row.node = Some(target.name.clone());
                let spec = ChildSpec::worker(name.clone(), factory)
                    .register(name.clone())
                    .restart(Restart::Temporary);
                (spec, Some((target.id, name)))
            }
            _ => {
                let args = TrialArgs {
                    info: TrialInfo {
                        id,
                        params: params.clone(),
                        dir: cfg.experiment.dir.join("trials").join(format!("{id:05}")),
                        attempt,
                        max_iterations: cfg.iteration_cap(),
                    },
                    restore,
                    launch: self.launch.clone(),
                    reporter: Reporter::Local(ctx.myself().clone()),
                    checkpoint_every: cfg.experiment.checkpoint_every,
                    cap: cfg.iteration_cap(),
                    schedule: cfg.scheduler.clone(),
                    persist: cfg.experiment.persist,
                    remote: None,
                };
                rec.node = None;
                rec.row.node = None;
                let spec = ChildSpec::actor(format!("trial-{id}-{attempt}"), move || {
                    TrialActor::new(args.clone())
                })
                .restart(Restart::Temporary);
                (spec, None)
            }
        };
        let node_name = rec.node.as_ref().map(|n| n.1.clone());
        self.running += 1;
        self.write_trial(id, false)?;
        self.commit()?;
        let me = ctx.myself().clone();
        match self.supervisor.start_child(spec).await {
            Ok(h) => {
                let monitor = h.monitor();
                let handle = match (&remote, &self.placing) {
                    // The supervisor holds a local proxy; messages go to
                    // the trial itself, on its node.
                    (Some((node, name)), Some(p)) => p.names.at::<TrialMsg>(node, name).ok(),
                    _ => h.downcast::<TrialMsg>(),
                };
                if let Some(rec) = self.trials.get_mut(&id) {
                    rec.handle = handle;
                }
                tokio::spawn(async move {
                    let reason = monitor.wait().await;
                    let _ = me.tell(CtlMsg::Exited {
                        trial: id,
                        attempt,
                        reason,
                    });
                });
            }
            Err(e) => {
                // A trainable that cannot even start counts as a failure.
                let _ = me.tell(CtlMsg::Exited {
                    trial: id,
                    attempt,
                    reason: ExitReason::Failed(manta_actors::error_chain(&e)),
                });
            }
        }
        let _ = self.events.send(Event::Started {
            trial: id,
            params,
            attempt,
            from_iteration: from,
            node: node_name,
        });
        Ok(())
    }

    /// Whether a trial waits to run, or a new one may be suggested.
    fn has_work(&self) -> bool {
        !self.queue.is_empty()
            || (!self.exhausted && (self.trials.len() as u64) < self.cfg.experiment.max_trials)
    }

    async fn fill(&mut self, ctx: &mut Context<CtlMsg>) -> Result<(), ActorError> {
        if let Some(p) = &mut self.placing {
            p.waiting = false;
        }
        while !self.halted && self.running < self.cfg.experiment.max_concurrent {
            if self.queue.is_empty()
                && (self.exhausted || self.trials.len() as u64 >= self.cfg.experiment.max_trials)
            {
                // No more trials: HyperBand brackets cut short complete
                // their rungs with the trials they have (which may release
                // paused trials into the queue).
                self.scheduler.set_total_trials(self.trials.len() as u64);
                self.apply_released()?;
            }
            if !self.has_work() {
                break;
            }
            // On a cluster: a node with room first (else the trial waits
            // for a running one to end, or a node to join).
            let target = match &mut self.placing {
                None => None,
                Some(p) => match p.pick() {
                    Some(o) => {
                        p.stalled = None;
                        p.waiting = false;
                        Some(o)
                    }
                    None => {
                        p.waiting = true;
                        break;
                    }
                },
            };
            if let Some(id) = self.queue.pop_front() {
                self.launch(id, target, ctx).await?;
                continue;
            }
            let Some(params) = self.searcher.suggest() else {
                self.exhausted = true;
                continue;
            };
            let id = self.trials.len() as u64;
            self.store()?
                .insert_trial(id, &params)
                .map_err(|e| fail(e.to_string()))?;
            self.trials.insert(
                id,
                Rec {
                    row: TrialRow {
                        id,
                        params,
                        state: "pending".into(),
                        attempts: 0,
                        iteration: 0,
                        last_metric: None,
                        best_metric: None,
                        best_iteration: None,
                        test_accuracy: None,
                        error: None,
                        node: None,
                        node_losses: 0,
                        pauses: 0,
                    },
                    state: TrialState::Pending,
                    scores: Vec::new(),
                    checkpoint: None,
                    handle: None,
                    ending: None,
                    release: None,
                    pauses: 0,
                    node: None,
                    lost: 0,
                    reported: None,
                },
            );
            self.launch(id, target, ctx).await?;
        }
        if self.running == 0 && !self.halted && self.has_work() {
            // Nothing runs and no node can take a trial: wait for one to
            // join (the ticker calls again), up to PLACEMENT_WAIT.
            if let Some(p) = &mut self.placing {
                let since = *p.stalled.get_or_insert_with(Instant::now);
                if since.elapsed() >= PLACEMENT_WAIT {
                    return Err(fail(p.why()));
                }
                return Ok(());
            }
        }
        if self.running == 0 {
            self.scheduler_dirty = true;
            self.commit_with(true)?;
            if let Some(mut store) = self.store.take() {
                store.finish().map_err(|e| fail(e.to_string()))?;
                if let Some(done) = self.done.take() {
                    let _ = done.send(Ok(store));
                }
            }
            ctx.stop(ExitReason::Normal);
        }
        Ok(())
    }

    fn halt(&mut self, why: TrialState) -> Result<(), ActorError> {
        self.halted = true;
        let mut paused = Vec::new();
        for (&id, rec) in self.trials.iter_mut() {
            if rec.state == TrialState::Running {
                if matches!(rec.ending, None | Some(TrialState::Paused)) {
                    rec.ending = Some(why);
                }
                if let Some(h) = &rec.handle {
                    let _ = h.tell(TrialMsg::Stop);
                }
            } else if rec.state == TrialState::Paused {
                rec.state = why;
                paused.push(id);
            }
        }
        for id in paused {
            self.write_trial(id, true)?;
        }
        Ok(())
    }

    /// Applies the scheduler's decisions on paused trials: continue (queued
    /// first, from the checkpoint) or stop.
    fn apply_released(&mut self) -> Result<(), ActorError> {
        loop {
            let released = self.scheduler.take_released();
            if released.is_empty() {
                return Ok(());
            }
            for (id, d) in released {
                let Some(rec) = self.trials.get_mut(&id) else {
                    continue;
                };
                match rec.state {
                    TrialState::Running if rec.ending == Some(TrialState::Paused) => {
                        rec.release = Some(d);
                    }
                    TrialState::Paused if d == Decision::Continue => {
                        rec.state = TrialState::Pending;
                        rec.pauses += 1;
                        self.queue.push_front(id);
                        self.write_trial(id, false)?;
                    }
                    TrialState::Paused => {
                        rec.state = TrialState::Stopped;
                        if let Some(best) = rec.row.best_metric {
                            let score = self.cfg.experiment.mode.score(best);
                            self.searcher.observe(rec.row.params.clone(), score);
                        }
                        self.scheduler.on_trial_end(id);
                        self.write_trial(id, true)?;
                        let _ = self.events.send(Event::Ended {
                            trial: id,
                            state: TrialState::Stopped,
                            error: None,
                        });
                    }
                    _ => {}
                }
            }
        }
    }

    /// PBT's exploit: `trial` takes a copy of `donor`'s newest checkpoint
    /// (into its own directory) and `donor`'s hyper-parameters, explored,
    /// and continues from there at once. `false` when the donor has no
    /// checkpoint yet (the trial goes on as it is).
    fn exploit(&mut self, trial: u64, donor: u64, iteration: u64) -> Result<bool, ActorError> {
        let Some((src, donor_params)) = self
            .trials
            .get(&donor)
            .and_then(|d| Some((d.checkpoint.clone()?.1, d.row.params.clone())))
        else {
            return Ok(false);
        };
        let dst = self
            .cfg
            .experiment
            .dir
            .join("trials")
            .join(format!("{trial:05}"))
            .join(format!("checkpoint-{iteration:06}-from-{donor:05}"));
        copy_dir(&src, &dst).map_err(|e| fail(e.to_string()))?;
        let params = self.scheduler.explore(&self.cfg.space, &donor_params);
        let store = self.store()?;
        store
            .set_params(trial, &params)
            .map_err(|e| fail(e.to_string()))?;
        store
            .insert_checkpoint(trial, iteration, &dst)
            .map_err(|e| fail(e.to_string()))?;
        if let Some(rec) = self.trials.get_mut(&trial) {
            rec.row.params = params;
            rec.checkpoint = Some((iteration, dst));
            rec.release = Some(Decision::Continue);
        }
        Ok(true)
    }

    fn on_report(
        &mut self,
        trial: u64,
        attempt: u64,
        iteration: u64,
        metrics: Metrics,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Decision, ActorError> {
        let cfg = Arc::clone(&self.cfg);
        let mode = cfg.experiment.mode;
        let limit = self.placing.as_ref().map_or(0, |p| p.limit);
        let Some(rec) = self.trials.get_mut(&trial) else {
            return Ok(Decision::Stop);
        };
        if rec.state != TrialState::Running || rec.row.attempts != attempt + 1 {
            return Ok(Decision::Stop);
        }
        let checkpoint = match checkpoint {
            None => None,
            Some(Checkpoint::Path(p)) => Some(p),
            // From another node: kept in the experiment directory, where
            // the store, `--resume` and the next node to run it find it.
            Some(Checkpoint::Packed(packed)) => {
                let dir = cfg
                    .experiment
                    .dir
                    .join("trials")
                    .join(format!("{trial:05}"))
                    .join(format!("checkpoint-{iteration:06}"));
                transfer::unpack(&packed, &dir, limit)
                    .map_err(|e| fail(format!("trial {trial}: storing its checkpoint: {e}")))?;
                tracing::debug!(trial, iteration, dir = %dir.display(), "checkpoint from another node stored");
                Some(dir)
            }
        };
        let metric = metrics.get(&cfg.experiment.metric).copied();
        let fresh = iteration > rec.row.iteration;
        if rec.reported.is_none() {
            let mut keys: Vec<String> = metrics.keys().take(32).cloned().collect();
            keys.sort_unstable();
            rec.reported = Some(keys);
        }
        if let Some(cp) = &checkpoint {
            rec.checkpoint = Some((iteration, cp.clone()));
        }
        let mut decision = Decision::Continue;
        if fresh {
            rec.row.iteration = iteration;
            if let Some(ta) = metrics.get("test_accuracy") {
                rec.row.test_accuracy = Some(*ta);
            }
            if let Some(m) = metric {
                let score = mode.score(m);
                rec.row.last_metric = Some(m);
                if rec.row.best_metric.is_none_or(|b| score > mode.score(b)) {
                    rec.row.best_metric = Some(m);
                    rec.row.best_iteration = Some(iteration);
                }
                rec.scores.push(score);
                if self.best.is_none_or(|b| score > mode.score(b)) {
                    self.best = Some(m);
                }
                if cfg.stop.trial_stops(&rec.scores) {
                    decision = Decision::Stop;
                    let at_cap = cfg.stop.max_iterations.is_some_and(|c| iteration >= c);
                    rec.ending.get_or_insert(if at_cap {
                        TrialState::Completed
                    } else {
                        TrialState::Stopped
                    });
                }
                self.scheduler_dirty = true;
                match self.scheduler.on_result(trial, iteration, score) {
                    Decision::Stop => {
                        decision = Decision::Stop;
                        let at_max = self.scheduler.max_t().is_some_and(|t| iteration >= t);
                        rec.ending.get_or_insert(if at_max {
                            TrialState::Completed
                        } else {
                            TrialState::Stopped
                        });
                    }
                    Decision::Pause if decision == Decision::Continue => {
                        decision = Decision::Pause;
                        rec.ending = Some(TrialState::Paused);
                    }
                    _ => {}
                }
                if cfg
                    .stop
                    .metric_threshold
                    .is_some_and(|t| score >= mode.score(t))
                {
                    decision = Decision::Stop;
                    if matches!(rec.ending, None | Some(TrialState::Paused)) {
                        rec.ending = Some(TrialState::Completed);
                    }
                    self.halt(TrialState::Terminated)?;
                }
            }
            let row = self.trials.get(&trial).map(|r| r.row.clone());
            let store = self.store()?;
            store
                .insert_result(trial, iteration, metric, &metrics)
                .map_err(|e| fail(e.to_string()))?;
            if let Some(cp) = &checkpoint {
                store
                    .insert_checkpoint(trial, iteration, cp)
                    .map_err(|e| fail(e.to_string()))?;
            }
            if let Some(row) = row {
                store
                    .update_trial(&row, false)
                    .map_err(|e| fail(e.to_string()))?;
            }
            let _ = self.events.send(Event::Result {
                trial,
                iteration,
                metric,
                best: self.best,
            });
        } else if let Some(cp) = &checkpoint {
            self.store()?
                .insert_checkpoint(trial, iteration, cp)
                .map_err(|e| fail(e.to_string()))?;
        }
        if self.halted {
            decision = Decision::Stop;
        }
        // PBT: a paused trial exploits a better one now.
        let donor = self.scheduler.take_exploit(trial);
        if decision == Decision::Pause
            && let Some(donor) = donor
            && !self.exploit(trial, donor, iteration)?
        {
            decision = Decision::Continue;
            if let Some(rec) = self.trials.get_mut(&trial) {
                rec.ending = None;
            }
        }
        self.apply_released()?;
        if self.last_commit.elapsed() >= Duration::from_millis(cfg.experiment.commit_interval_ms) {
            self.commit_with(true)?;
        }
        Ok(decision)
    }

    /// A trial's attempt ended: `error` when it failed, `node_lost` when
    /// its node died (restarted elsewhere without counting as a failure).
    fn on_end(
        &mut self,
        trial: u64,
        error: Option<String>,
        node_lost: bool,
    ) -> Result<(), ActorError> {
        let max_failures = self.cfg.experiment.max_failures;
        let Some(rec) = self.trials.get_mut(&trial) else {
            return Ok(());
        };
        rec.handle = None;
        if let (Some(p), Some((node, _))) = (&mut self.placing, rec.node.take()) {
            p.release(&node);
        }
        self.running = self.running.saturating_sub(1);
        let lost_again = node_lost && rec.lost < MAX_NODE_LOSSES;
        let mut state = match (&error, rec.ending.take()) {
            (_, Some(s)) => s,
            (None, None) => TrialState::Completed,
            (Some(e), None) => {
                rec.row.error = Some(e.clone());
                if lost_again {
                    rec.lost += 1;
                }
                let failures = rec
                    .row
                    .attempts
                    .saturating_sub(rec.lost)
                    .saturating_sub(rec.pauses);
                if (lost_again || failures <= max_failures) && !self.halted {
                    TrialState::Pending
                } else {
                    TrialState::Error
                }
            }
        };
        if matches!(state, TrialState::Completed | TrialState::Stopped)
            && rec.row.best_metric.is_none()
            && let Some(keys) = &rec.reported
        {
            // It ran and reported, but never the experiment's metric (a
            // misspelt name, most likely): an error that says so, not a
            // silent unranked trial.
            rec.row.error = Some(format!(
                "it ended without reporting `{}` (the experiment's metric); its results have: {}",
                self.cfg.experiment.metric,
                if keys.is_empty() {
                    "no metrics".to_owned()
                } else {
                    keys.join(", ")
                }
            ));
            state = TrialState::Error;
        }
        if state == TrialState::Paused {
            match rec.release.take() {
                Some(Decision::Continue) => {
                    state = TrialState::Pending;
                    rec.pauses += 1;
                    self.queue.push_front(trial);
                }
                Some(Decision::Stop) => state = TrialState::Stopped,
                _ => {}
            }
        } else if state == TrialState::Pending && lost_again {
            // Its node died: it goes first, to the next node with room.
            self.queue.push_front(trial);
        } else if state == TrialState::Pending {
            self.queue.push_back(trial);
        }
        rec.state = state;
        if state.is_final() {
            if let Some(best) = rec.row.best_metric {
                let score = self.cfg.experiment.mode.score(best);
                self.searcher.observe(rec.row.params.clone(), score);
            }
            self.scheduler.on_trial_end(trial);
        }
        self.write_trial(trial, state.is_final())?;
        self.apply_released()?;
        self.commit()?;
        let _ = self.events.send(Event::Ended {
            trial,
            state,
            error,
        });
        Ok(())
    }
}

impl Actor for Controller {
    type Msg = CtlMsg;

    async fn handle(&mut self, msg: CtlMsg, ctx: &mut Context<CtlMsg>) -> Result<(), ActorError> {
        let r = match msg {
            CtlMsg::Start => match self.apply_released() {
                // Resumed: decisions on paused trials from the replay.
                Ok(()) => self.fill(ctx).await,
                Err(e) => Err(e),
            },
            CtlMsg::Report {
                trial,
                attempt,
                iteration,
                metrics,
                checkpoint,
                reply,
            } => match self.on_report(trial, attempt, iteration, metrics, checkpoint) {
                Ok(d) => {
                    reply.send(d);
                    Ok(())
                }
                Err(e) => {
                    reply.send(Decision::Stop);
                    Err(e)
                }
            },
            CtlMsg::Finished { trial, attempt } => {
                let current = self.trials.get(&trial).is_some_and(|r| {
                    r.state == TrialState::Running && r.row.attempts == attempt + 1
                });
                if current {
                    match self.on_end(trial, None, false) {
                        Ok(()) => self.fill(ctx).await,
                        Err(e) => Err(e),
                    }
                } else {
                    Ok(())
                }
            }
            CtlMsg::Exited {
                trial,
                attempt,
                reason,
            } => {
                let current = self.trials.get(&trial).is_some_and(|r| {
                    r.state == TrialState::Running && r.row.attempts == attempt + 1
                });
                if current && !reason.is_normal() {
                    let lost = matches!(reason, ExitReason::NodeDown(_));
                    match self.on_end(trial, Some(reason.to_string()), lost) {
                        Ok(()) => self.fill(ctx).await,
                        Err(e) => Err(e),
                    }
                } else if current {
                    // Stopped normally without saying it finished (shut down).
                    match self.on_end(trial, None, false) {
                        Ok(()) => self.fill(ctx).await,
                        Err(e) => Err(e),
                    }
                } else {
                    Ok(())
                }
            }
            CtlMsg::Fetch {
                trial,
                attempt,
                reply,
            } => {
                let limit = self.placing.as_ref().map_or(0, |p| p.limit);
                let answer = match self.trials.get(&trial) {
                    Some(r) if r.state == TrialState::Running && r.row.attempts == attempt + 1 => {
                        match &r.checkpoint {
                            Some((_, dir)) => transfer::pack(dir, limit)
                                .map(Some)
                                .map_err(|e| e.to_string()),
                            None => Ok(None),
                        }
                    }
                    _ => Err(format!("trial {trial} attempt {attempt} is not running")),
                };
                reply.send(answer);
                Ok(())
            }
            CtlMsg::Tick => {
                let stalled = self.placing.as_ref().is_some_and(|p| p.waiting);
                let r = if self.store.as_ref().is_some_and(Store::dirty) {
                    self.commit_with(true)
                } else {
                    Ok(())
                };
                match r {
                    // Waiting for a node with room: look again.
                    Ok(()) if stalled => self.fill(ctx).await,
                    other => other,
                }
            }
            CtlMsg::Deadline => match self.halt(TrialState::Terminated) {
                Ok(()) if self.running == 0 => self.fill(ctx).await,
                r => r,
            },
        };
        if let Err(e) = r {
            self.abort(e, ctx);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- driver

fn launch_for(spec: &TrainableSpec, trainables: &Trainables) -> Result<Launch, TuneError> {
    Ok(match spec {
        TrainableSpec::Rust { name } => Launch::Rust(trainables.get(name).ok_or_else(|| {
            TuneError::Config(format!(
                "trainable.name: no Rust trainable `{name}` is registered (known: {:?})",
                trainables.names()
            ))
        })?),
        TrainableSpec::Digits {
            config,
            validation_fraction,
        } => {
            let base = crate::TrainConfig::load(config)?;
            let vf = *validation_fraction;
            let f: TrainableFactory = Arc::new(move |info: &TrialInfo| {
                Ok(Box::new(super::DigitsTrainable::new(&base, info, vf)?) as Box<dyn Trainable>)
            });
            Launch::Rust(f)
        }
        TrainableSpec::Command { command, env } => Launch::Command {
            argv: command.clone(),
            env: env.clone(),
        },
    })
}

/// Runs an experiment to its end in this process: a new one from `config`,
/// or with `resume` the one stored in `config.experiment.dir` (its stored
/// config wins; use [`resume_config`] to read it). `on_event` hears every
/// trial start, result and end.
pub async fn run(
    config: TuneConfig,
    trainables: &Trainables,
    resume: bool,
    on_event: impl FnMut(&Event),
) -> Result<Summary, TuneError> {
    run_on(config, trainables, resume, Env::InProcess, on_event).await
}

/// [`run`], with the trials in this process ([`Env::InProcess`]) or on the
/// nodes of the cluster `node` belongs to ([`Env::Cluster`]): the
/// controller, the store and the experiment directory stay here; each
/// trial is spawned as [`TRIAL_KIND`] on a node with room for the
/// `[trial]` cpus and gpus (every node must have the kind registered, as
/// `manta node` does), and a trial whose node dies is restarted on
/// another from its last checkpoint. `trainables` is used here only to
/// check the config; Rust trainables must be registered on the nodes.
pub async fn run_on(
    config: TuneConfig,
    trainables: &Trainables,
    resume: bool,
    env: Env<'_>,
    mut on_event: impl FnMut(&Event),
) -> Result<Summary, TuneError> {
    let started = Instant::now();
    config.validate()?;
    let dir = config.experiment.dir.clone();
    let (mut store, cfg) = if resume {
        let (mut s, mut stored) = Store::open(&dir)?;
        s.count_run()?;
        // The directory may have moved since: it is where the store is.
        stored.experiment.dir = dir.clone();
        (s, stored)
    } else {
        (Store::create(&dir, &config)?, config)
    };
    let cluster_node = match env {
        Env::InProcess => None,
        Env::Cluster(node) => Some(node),
    };
    // On a cluster a Rust trainable is the nodes' business; the others are
    // checked here (a digits config that does not load fails at once).
    let launch = match (&cfg.trainable, cluster_node) {
        (TrainableSpec::Rust { name }, Some(_)) => {
            Launch::Unavailable(format!("Rust trainable `{name}` runs on the nodes"))
        }
        (spec, _) => launch_for(spec, trainables)?,
    };
    let mut searcher = Searcher::new(cfg.searcher.clone(), cfg.space.clone(), cfg.experiment.seed);
    let mut scheduler = Scheduler::new(cfg.scheduler.clone()).seeded(cfg.experiment.seed);
    let mut trials = BTreeMap::new();
    let mut queue = VecDeque::new();
    let mut best = None;
    if resume {
        let bad = |what: &str, e: serde_json::Error| TuneError::Store {
            path: store.path().display().to_string(),
            message: format!("{what} state unreadable: {e}"),
        };
        let results = store.results()?;
        let mode = cfg.experiment.mode;
        // The searcher: its small state plus the outcomes of the trials
        // that ended, as it observed them.
        let stored_trials = store.trials()?;
        let observations = stored_trials
            .iter()
            .filter(|t| TrialState::parse(&t.state).is_final())
            .filter_map(|t| {
                t.best_metric.map(|m| super::search::Observation {
                    params: t.params.clone(),
                    score: mode.score(m),
                })
            })
            .collect();
        if let Some(s) = store.load_state("searcher")? {
            searcher =
                Searcher::from_light_state(&s, observations).map_err(|e| bad("searcher", e))?;
        }
        // The scheduler: the committed results replayed in arrival order
        // (the rung values and histories it decided on).
        let mut ordered: Vec<&super::store::ResultRow> = results.iter().collect();
        ordered.sort_by(|a, b| a.time.total_cmp(&b.time));
        for r in ordered {
            if let Some(m) = r.metric {
                scheduler.on_result(r.trial, r.iteration, mode.score(m));
            }
        }
        for row in stored_trials {
            let mut state = TrialState::parse(&row.state);
            let checkpoint = store.latest_checkpoint(row.id)?;
            let scores: Vec<f64> = results
                .iter()
                .filter(|r| r.trial == row.id)
                .filter_map(|r| r.metric.map(|m| mode.score(m)))
                .collect();
            if let Some(b) = row.best_metric
                && best.is_none_or(|x| mode.score(b) > mode.score(x))
            {
                best = Some(b);
            }
            let hyperband = matches!(cfg.scheduler, SchedulerSpec::HyperBand { .. });
            // Restarts after node deaths and HyperBand pauses are not
            // failures: the counts survive the driver.
            let (lost, mut pauses) = (row.node_losses, row.pauses);
            if state.is_final() {
                scheduler.on_trial_end(row.id);
            } else if !(state == TrialState::Paused && hyperband) {
                // Interrupted: continue from the checkpoint. (A trial
                // paused at a HyperBand rung waits for the rung.) The
                // relaunch is not a failure either (as Ray counts only
                // errors against `max_failures`).
                if state == TrialState::Running {
                    pauses += 1;
                }
                state = TrialState::Pending;
                queue.push_back(row.id);
            }
            trials.insert(
                row.id,
                Rec {
                    row,
                    state,
                    scores,
                    checkpoint,
                    handle: None,
                    ending: None,
                    release: None,
                    pauses,
                    node: None,
                    lost,
                    reported: None,
                },
            );
        }
    }
    // This run's tag names its actors on the cluster and the nodes'
    // scratch directories.
    let tag = format!("{:016x}", rand::random::<u64>());
    let system = match cluster_node {
        Some(node) => node.system().clone(),
        None => ActorSystem::new(),
    };
    let supervisor = Supervisor::start(
        &system,
        SupervisorSpec::new(format!("tune.{tag}.trials"))
            .strategy(Strategy::OneForOne)
            .intensity(u32::MAX, Duration::from_secs(1)),
    )
    .await
    .map_err(|e| TuneError::Actor(format!("trial supervisor: {e}")))?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (done_tx, done) = oneshot::channel();
    store.commit()?;
    let commit_every = Duration::from_millis(cfg.experiment.commit_interval_ms.max(1));
    let budget = cfg.stop.time_budget_s;
    let cfg = Arc::new(cfg);
    let ctl = Controller {
        cfg: Arc::clone(&cfg),
        store: Some(store),
        searcher,
        scheduler,
        trials,
        queue,
        running: 0,
        exhausted: false,
        halted: false,
        supervisor: supervisor.clone(),
        launch,
        events: events_tx,
        done: Some(done_tx),
        last_commit: Instant::now(),
        best,
        scheduler_dirty: false,
        placing: None,
    };
    let placing = cluster_node.map(|node| {
        let t = &cfg.trial;
        Placing {
            cluster: node.cluster().clone(),
            names: node.names(),
            me: node.membership().node_id().to_owned(),
            reports: format!("tune.{tag}.reports"),
            tag: tag.clone(),
            filter: Placement {
                role: t.role.clone(),
                labels: t.labels.clone(),
                ..Placement::default()
            },
            cpus: t.cpus,
            gpus: t.gpus,
            limit: t.checkpoint_limit_mb << 20,
            trainable: cfg.trainable.clone(),
            used: BTreeMap::new(),
            waiting: false,
            stalled: None,
        }
    });
    let relay_name = placing.as_ref().map(|p| p.reports.clone());
    let ctl = Controller { placing, ..ctl };
    let ctl = system
        .spawn(ctl)
        .await
        .map_err(|e| TuneError::Actor(format!("controller: {e}")))?;
    let relay = match relay_name {
        Some(name) => Some(
            system
                .spawn_named(name, Relay { ctl: ctl.clone() })
                .await
                .map_err(|e| TuneError::Actor(format!("the controller's relay: {e}")))?,
        ),
        None => None,
    };
    let ticker = {
        let ctl = ctl.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(commit_every);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if ctl.tell(CtlMsg::Tick).is_err() {
                    break;
                }
            }
        })
    };
    let deadline = budget.map(|secs| {
        let ctl = ctl.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            let _ = ctl.tell(CtlMsg::Deadline);
        })
    });
    ctl.tell(CtlMsg::Start)
        .map_err(|e| TuneError::Actor(format!("controller: {e}")))?;
    let ctl_exit = ctl.monitor();
    let mut done = done;
    let outcome = loop {
        tokio::select! {
            Some(ev) = events.recv() => on_event(&ev),
            r = &mut done => break r.map_err(|_| TuneError::Actor("the controller stopped without an answer".into())),
            reason = ctl_exit.clone().wait() => {
                // The controller failed before answering (a panic).
                match (&mut done).await {
                    Ok(r) => break Ok(r),
                    Err(_) => break Err(TuneError::Actor(format!("the controller stopped: {reason}"))),
                }
            }
        }
    };
    while let Ok(ev) = events.try_recv() {
        on_event(&ev);
    }
    ticker.abort();
    if let Some(d) = deadline {
        d.abort();
    }
    supervisor.shutdown().await;
    if let Some(r) = relay {
        r.stop(ExitReason::Normal);
    }
    let store = outcome??;
    report::finish(&store, &cfg, started.elapsed().as_secs_f64())
}

/// Copies directory `src` into `dst` (created), recursively.
fn copy_dir(src: &std::path::Path, dst: &std::path::Path) -> Result<(), TuneError> {
    std::fs::create_dir_all(dst).map_err(|e| TuneError::io(dst, e))?;
    for entry in std::fs::read_dir(src).map_err(|e| TuneError::io(src, e))? {
        let entry = entry.map_err(|e| TuneError::io(src, e))?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        if entry
            .file_type()
            .map_err(|e| TuneError::io(&from, e))?
            .is_dir()
        {
            copy_dir(&from, &to)?;
        } else {
            std::fs::copy(&from, &to).map_err(|e| TuneError::io(&from, e))?;
        }
    }
    Ok(())
}

/// The config stored in the experiment directory `dir` (for `--resume`).
pub fn resume_config(dir: &std::path::Path) -> Result<TuneConfig, TuneError> {
    Store::open(dir).map(|(_, c)| c)
}
