//! The controller actor and the trial actors, and [`run`], the driver.
//!
//! The controller owns the searcher, the scheduler, the stoppers and the
//! store. Each trial is an actor (a `temporary` child of one `one_for_one`
//! supervisor) that runs its trainable and `ask`s the controller with each
//! result; the answer is the scheduling decision, so a trial never polls.
//! A trial that fails (an error, a panic, a command exiting non-zero) is
//! seen through its monitor; the controller restarts it from its last
//! checkpoint up to `max_failures` times.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use manta_actors::{
    Actor, ActorError, ActorHandle, ActorSystem, Context, ExitReason, Message, ReplyTo,
};
use manta_supervision::{
    ChildSpec, Restart, Strategy, Supervisor, SupervisorHandle, SupervisorSpec,
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::config::{TrainableSpec, TuneConfig};
use super::schedule::{Decision, Scheduler, SchedulerSpec};
use super::search::Searcher;
use super::space::Params;
use super::store::{Store, TrialRow};
use super::trainable::{Metrics, Trainable, TrainableFactory, Trainables, TrialInfo};
use super::{TuneError, external, report};

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
    /// Its best metric.
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
}

#[derive(Clone)]
struct TrialArgs {
    info: TrialInfo,
    restore: Option<(u64, PathBuf)>,
    launch: Launch,
    controller: ActorHandle<CtlMsg>,
    checkpoint_every: u64,
    cap: Option<u64>,
    /// Checkpoints the scheduler needs (HyperBand rungs, PBT intervals).
    schedule: SchedulerSpec,
    /// `experiment.persist`: without it, no trial directory and only the
    /// checkpoints the scheduler needs.
    persist: bool,
}

#[derive(Message)]
#[message(local)]
enum TrialMsg {
    Step,
    Line(Metrics),
    Exited(Result<external::Ended, String>),
    Stop,
}

impl std::fmt::Debug for TrialMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TrialMsg::Step => "Step",
            TrialMsg::Line(_) => "Line",
            TrialMsg::Exited(_) => "Exited",
            TrialMsg::Stop => "Stop",
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
        }
    }

    /// Reports a result; the answer says whether to go on.
    async fn report(
        &mut self,
        metrics: Metrics,
        checkpoint: Option<PathBuf>,
    ) -> Result<Decision, ActorError> {
        let (id, attempt, iteration) = (self.args.info.id, self.args.info.attempt, self.iteration);
        self.args
            .controller
            .ask(
                |reply| CtlMsg::Report {
                    trial: id,
                    attempt,
                    iteration,
                    metrics,
                    checkpoint,
                    reply,
                },
                ASK,
            )
            .await
            .map_err(|e| fail(format!("report to the controller: {e}")))
    }

    fn finish(&mut self, ctx: &mut Context<TrialMsg>) {
        let _ = self.args.controller.tell(CtlMsg::Finished {
            trial: self.args.info.id,
            attempt: self.args.info.attempt,
        });
        ctx.stop(ExitReason::Normal);
    }
}

impl Actor for TrialActor {
    type Msg = TrialMsg;

    async fn started(&mut self, ctx: &mut Context<TrialMsg>) -> Result<(), ActorError> {
        let dir = &self.args.info.dir;
        if self.args.persist || matches!(self.args.launch, Launch::Command { .. }) {
            std::fs::create_dir_all(dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
        }
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
        }
        Ok(())
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
                let decision = self.report(metrics, checkpoint).await?;
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
                let decision = self.report(metrics, written.then_some(cp)).await?;
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

// ------------------------------------------------------------ controller

#[derive(Message)]
#[message(local)]
enum CtlMsg {
    Start,
    Report {
        trial: u64,
        attempt: u64,
        iteration: u64,
        metrics: Metrics,
        checkpoint: Option<PathBuf>,
        reply: ReplyTo<Decision>,
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
}

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

    async fn launch(&mut self, id: u64, ctx: &mut Context<CtlMsg>) -> Result<(), ActorError> {
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
        let args = TrialArgs {
            info: TrialInfo {
                id,
                params: params.clone(),
                dir: cfg.experiment.dir.join("trials").join(format!("{id:05}")),
                attempt,
                max_iterations: cfg.iteration_cap(),
            },
            restore: rec.checkpoint.clone(),
            launch: self.launch.clone(),
            controller: ctx.myself().clone(),
            checkpoint_every: cfg.experiment.checkpoint_every,
            cap: cfg.iteration_cap(),
            schedule: cfg.scheduler.clone(),
            persist: cfg.experiment.persist,
        };
        self.running += 1;
        self.write_trial(id, false)?;
        self.commit()?;
        let spec = ChildSpec::actor(format!("trial-{id}-{attempt}"), move || {
            TrialActor::new(args.clone())
        })
        .restart(Restart::Temporary);
        let me = ctx.myself().clone();
        match self.supervisor.start_child(spec).await {
            Ok(h) => {
                let monitor = h.monitor();
                if let Some(rec) = self.trials.get_mut(&id) {
                    rec.handle = h.downcast::<TrialMsg>();
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
        });
        Ok(())
    }

    async fn fill(&mut self, ctx: &mut Context<CtlMsg>) -> Result<(), ActorError> {
        while !self.halted && self.running < self.cfg.experiment.max_concurrent {
            if let Some(id) = self.queue.pop_front() {
                self.launch(id, ctx).await?;
                continue;
            }
            if self.exhausted || self.trials.len() as u64 >= self.cfg.experiment.max_trials {
                // No more trials: HyperBand brackets cut short complete
                // their rungs with the trials they have.
                self.scheduler.set_total_trials(self.trials.len() as u64);
                self.apply_released()?;
                if self.queue.is_empty() {
                    break;
                }
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
                    },
                    state: TrialState::Pending,
                    scores: Vec::new(),
                    checkpoint: None,
                    handle: None,
                    ending: None,
                    release: None,
                    pauses: 0,
                },
            );
            self.launch(id, ctx).await?;
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
        checkpoint: Option<PathBuf>,
    ) -> Result<Decision, ActorError> {
        let cfg = Arc::clone(&self.cfg);
        let mode = cfg.experiment.mode;
        let Some(rec) = self.trials.get_mut(&trial) else {
            return Ok(Decision::Stop);
        };
        if rec.state != TrialState::Running || rec.row.attempts != attempt + 1 {
            return Ok(Decision::Stop);
        }
        let metric = metrics.get(&cfg.experiment.metric).copied();
        let fresh = iteration > rec.row.iteration;
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

    fn on_end(&mut self, trial: u64, error: Option<String>) -> Result<(), ActorError> {
        let max_failures = self.cfg.experiment.max_failures;
        let Some(rec) = self.trials.get_mut(&trial) else {
            return Ok(());
        };
        rec.handle = None;
        self.running = self.running.saturating_sub(1);
        let mut state = match (&error, rec.ending.take()) {
            (_, Some(s)) => s,
            (None, None) => TrialState::Completed,
            (Some(e), None) => {
                rec.row.error = Some(e.clone());
                let failures = rec.row.attempts.saturating_sub(rec.pauses);
                if failures <= max_failures && !self.halted {
                    TrialState::Pending
                } else {
                    TrialState::Error
                }
            }
        };
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
                    match self.on_end(trial, None) {
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
                    match self.on_end(trial, Some(reason.to_string())) {
                        Ok(()) => self.fill(ctx).await,
                        Err(e) => Err(e),
                    }
                } else if current {
                    // Stopped normally without saying it finished (shut down).
                    match self.on_end(trial, None) {
                        Ok(()) => self.fill(ctx).await,
                        Err(e) => Err(e),
                    }
                } else {
                    Ok(())
                }
            }
            CtlMsg::Tick => {
                if self.store.as_ref().is_some_and(Store::dirty) {
                    self.commit_with(true)
                } else {
                    Ok(())
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

fn make_launch(cfg: &TuneConfig, trainables: &Trainables) -> Result<Launch, TuneError> {
    Ok(match &cfg.trainable {
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
    let launch = make_launch(&cfg, trainables)?;
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
            if state.is_final() {
                scheduler.on_trial_end(row.id);
            } else if !(state == TrialState::Paused && hyperband) {
                // Interrupted: continue from the checkpoint. (A trial
                // paused at a HyperBand rung waits for the rung.)
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
                    pauses: 0,
                },
            );
        }
    }
    let system = ActorSystem::new();
    let supervisor = Supervisor::start(
        &system,
        SupervisorSpec::new("tune.trials")
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
    };
    let ctl = system
        .spawn(ctl)
        .await
        .map_err(|e| TuneError::Actor(format!("controller: {e}")))?;
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
