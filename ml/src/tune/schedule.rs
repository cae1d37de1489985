//! Trial schedulers (continue or stop a trial after each result) and
//! stoppers.
//!
//! Scores are oriented: higher is better (the controller negates the metric
//! in `min` mode), so the rules below are written once.
//!
//! - `fifo`: every trial runs to its end.
//! - `asha` (Li et al., "A System for Massively Parallel Hyperparameter
//!   Tuning", 2020), in the stopping form of Ray's `AsyncHyperBandScheduler`:
//!   bracket `s` has rungs at `grace_period * reduction_factor^(k + s)` up to
//!   `max_t`; a trial reaching a rung is compared with the values recorded
//!   there before it, and stops when it is below their `(1 - 1/η)` quantile
//!   (linear interpolation, as numpy's `percentile`), i.e. continues only in
//!   the top `1/η`. The first trial at a rung always continues. A trial at
//!   `max_t` stops (it is complete).
//! - `median` (Golovin et al., Google Vizier, 2017): after `grace_period`
//!   iterations, a trial whose best score so far is below the median of the
//!   other trials' running means at the same iteration stops, once at least
//!   `min_samples` other trials have reached it.
//!
//! - `hyperband` (Li et al., "Hyperband", JMLR 2018, Algorithm 1), the
//!   synchronous form: with `R = max_t` and `s_max = ⌊log_η R⌋`, bracket
//!   `s = s_max, .., 0` (then again) takes the next
//!   `n = ⌈(s_max + 1) η^s / (s + 1)⌉` trials in id order
//!   ([`hyperband_brackets`]) and runs successive halving on them: rungs at
//!   `r_i = R η^(i - s)`, `i = 0..=s` ([`hyperband_milestones`]). A trial
//!   reaching its bracket's rung is paused ([`Decision::Pause`], its
//!   checkpoint saved there) until every trial of the rung has a score
//!   there or has ended; then the top `⌊k/η⌋` (at least one) of the `k`
//!   scored continue from their checkpoints and the others stop
//!   ([`Scheduler::take_released`]). A trial at `R` is complete.
//! - `pbt` (Jaderberg et al., "Population Based Training", 2017), with
//!   Ray's quantile rule: every `perturbation_interval` iterations a trial
//!   is ranked by its newest score among every trial's newest score; in
//!   the bottom `quantile_fraction` (⌈n q⌉ trials, at most half) it pauses,
//!   and the controller copies the checkpoint of a random trial of the top
//!   quantile into the trial's directory and gives it that trial's
//!   hyper-parameters explored ([`Scheduler::explore`], [`perturb`]).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::space::{Domain, Params, SearchSpace};
use crate::rng::SplitMix64;

/// What the controller answers a trial's result with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// Run the next iteration.
    Continue,
    /// Stop the trial.
    Stop,
    /// Stop for now; the controller continues the trial later from the
    /// checkpoint of this iteration (HyperBand: once its rung is complete,
    /// if promoted; PBT: at once, from a better trial's checkpoint with
    /// explored hyper-parameters).
    Pause,
}

/// Which scheduler, with its settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SchedulerSpec {
    /// Run every trial to its end.
    #[default]
    Fifo,
    /// Asynchronous successive halving.
    Asha {
        /// The first rung (iterations).
        #[serde(default = "one")]
        grace_period: u64,
        /// η: one trial in η continues past each rung.
        #[serde(default = "three")]
        reduction_factor: f64,
        /// The most iterations a trial runs.
        max_t: u64,
        /// Brackets (trials are spread over them in turn).
        #[serde(default = "one_u32")]
        brackets: u32,
    },
    /// Synchronous HyperBand (Li et al. 2018): brackets of
    /// [`hyperband_brackets`] sizes, each a synchronous successive halving.
    #[serde(rename = "hyperband")]
    HyperBand {
        /// R: the most iterations a trial runs.
        max_t: u64,
        /// η (an integer, at least 2).
        #[serde(default = "three_u64")]
        reduction_factor: u64,
    },
    /// Population based training (Jaderberg et al. 2017).
    Pbt {
        /// Iterations between two exploit/explore steps of a trial.
        perturbation_interval: u64,
        /// The bottom (and top) fraction of the population: a trial in
        /// the bottom one takes a random top trial's checkpoint.
        #[serde(default = "quarter")]
        quantile_fraction: f64,
        /// Chance that a parameter is drawn afresh from its domain rather
        /// than perturbed.
        #[serde(default = "quarter")]
        resample_probability: f64,
        /// A numeric parameter is multiplied by one of these (then clamped
        /// to its domain); a `choice` moves to a neighbouring option.
        #[serde(default = "factors")]
        perturbation_factors: Vec<f64>,
        /// The parameters explored (default: every parameter of the space).
        #[serde(default)]
        hyperparams: Vec<String>,
    },
    /// Median stopping.
    Median {
        /// Iterations before a trial can be stopped.
        #[serde(default = "one")]
        grace_period: u64,
        /// Other trials needed at the same iteration.
        #[serde(default = "three_usize")]
        min_samples: usize,
    },
}

fn one() -> u64 {
    1
}
fn one_u32() -> u32 {
    1
}
fn three() -> f64 {
    3.0
}
fn three_usize() -> usize {
    3
}
fn three_u64() -> u64 {
    3
}
fn quarter() -> f64 {
    0.25
}
fn factors() -> Vec<f64> {
    vec![0.8, 1.2]
}

impl SchedulerSpec {
    /// Checks the settings; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if let SchedulerSpec::Asha {
            grace_period,
            reduction_factor,
            max_t,
            brackets,
        } = *self
        {
            if grace_period == 0 {
                return Err("scheduler.grace_period: must be at least 1".into());
            }
            if !(reduction_factor > 1.0 && reduction_factor.is_finite()) {
                return Err(format!(
                    "scheduler.reduction_factor: must be greater than 1, got {reduction_factor}"
                ));
            }
            if max_t < grace_period {
                return Err(format!(
                    "scheduler.max_t: must be at least grace_period ({grace_period}), got {max_t}"
                ));
            }
            if brackets == 0 {
                return Err("scheduler.brackets: must be at least 1".into());
            }
        }
        if let SchedulerSpec::HyperBand {
            max_t,
            reduction_factor,
        } = *self
        {
            if reduction_factor < 2 {
                return Err(format!(
                    "scheduler.reduction_factor: must be an integer of at least 2, got {reduction_factor}"
                ));
            }
            if max_t == 0 {
                return Err("scheduler.max_t: must be at least 1".into());
            }
        }
        if let SchedulerSpec::Pbt {
            perturbation_interval,
            quantile_fraction,
            resample_probability,
            perturbation_factors,
            ..
        } = self
        {
            if *perturbation_interval == 0 {
                return Err("scheduler.perturbation_interval: must be at least 1".into());
            }
            if !(*quantile_fraction > 0.0 && *quantile_fraction <= 0.5) {
                return Err(format!(
                    "scheduler.quantile_fraction: must be in (0, 0.5], got {quantile_fraction}"
                ));
            }
            if !(0.0..=1.0).contains(resample_probability) {
                return Err(format!(
                    "scheduler.resample_probability: must be in [0, 1], got {resample_probability}"
                ));
            }
            if perturbation_factors.is_empty()
                || perturbation_factors
                    .iter()
                    .any(|f| !(f.is_finite() && *f > 0.0))
            {
                return Err(
                    "scheduler.perturbation_factors: must be positive numbers, at least one".into(),
                );
            }
        }
        Ok(())
    }

    /// Whether `trial` must save a checkpoint at `iteration` for this
    /// scheduler (HyperBand: its rungs, where it may pause; PBT: every
    /// `perturbation_interval`, what others exploit).
    pub fn must_checkpoint(&self, trial: u64, iteration: u64) -> bool {
        match *self {
            SchedulerSpec::HyperBand {
                max_t,
                reduction_factor,
            } => {
                let (b, _) = hyperband_bracket_of(max_t, reduction_factor, trial);
                let s = hyperband_s(max_t, reduction_factor, b);
                hyperband_milestones(max_t, reduction_factor, s).contains(&iteration)
            }
            SchedulerSpec::Pbt {
                perturbation_interval,
                ..
            } => iteration % perturbation_interval == 0,
            _ => false,
        }
    }
}

/// One rung of an ASHA bracket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rung {
    /// The iteration it sits at.
    pub milestone: u64,
    /// Scores recorded there, by trial.
    pub recorded: BTreeMap<u64, f64>,
}

/// A scheduler with its state (serde: saved with the experiment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scheduler {
    spec: SchedulerSpec,
    /// ASHA: the rungs of each bracket, highest milestone first.
    brackets: Vec<Vec<Rung>>,
    /// Median: every trial's scores by iteration.
    history: BTreeMap<u64, Vec<(u64, f64)>>,
    /// HyperBand: the brackets that have seen a trial, by index.
    #[serde(default)]
    hb: BTreeMap<u64, HbBracket>,
    /// Trials that ended (they no longer hold a rung up).
    #[serde(default)]
    ended: BTreeSet<u64>,
    /// The number of trials, once no more will be created.
    #[serde(default)]
    total: Option<u64>,
    /// Decisions on paused trials, for [`take_released`](Self::take_released).
    #[serde(default)]
    released: Vec<(u64, Decision)>,
    /// PBT's state.
    #[serde(default)]
    pbt: PbtState,
}

/// One synchronous successive-halving bracket of HyperBand.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HbBracket {
    /// The rung being filled (index into the bracket's milestones).
    pub level: usize,
    /// The trials promoted to `level` (`None` at level 0: every trial of
    /// the bracket).
    pub promoted: Option<BTreeSet<u64>>,
    /// Scores recorded at `level`, by trial.
    pub recorded: BTreeMap<u64, f64>,
}

/// PBT's state: every trial's newest score, where it last perturbed, the
/// exploits decided and not yet carried out, the random stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PbtState {
    latest: BTreeMap<u64, f64>,
    last_perturbation: BTreeMap<u64, u64>,
    exploits: BTreeMap<u64, u64>,
    rng: SplitMix64,
}

impl Default for PbtState {
    fn default() -> Self {
        Self {
            latest: BTreeMap::new(),
            last_perturbation: BTreeMap::new(),
            exploits: BTreeMap::new(),
            rng: SplitMix64::new(0),
        }
    }
}

impl Scheduler {
    /// A scheduler with no trials seen.
    pub fn new(spec: SchedulerSpec) -> Self {
        let brackets = match spec {
            SchedulerSpec::Asha {
                grace_period,
                reduction_factor,
                max_t,
                brackets,
            } => (0..brackets)
                .map(|s| asha_rungs(grace_period, reduction_factor, max_t, s))
                .collect(),
            _ => Vec::new(),
        };
        Self {
            spec,
            brackets,
            history: BTreeMap::new(),
            hb: BTreeMap::new(),
            ended: BTreeSet::new(),
            total: None,
            released: Vec::new(),
            pbt: PbtState::default(),
        }
    }

    /// The same scheduler with its random stream (PBT) seeded by `seed`.
    pub fn seeded(mut self, seed: u64) -> Self {
        self.pbt.rng = SplitMix64::derive(seed, &[0x0070_6274]);
        self
    }

    /// The settings.
    pub fn spec(&self) -> &SchedulerSpec {
        &self.spec
    }

    /// The ASHA rungs (per bracket, highest first).
    pub fn rungs(&self) -> &[Vec<Rung>] {
        &self.brackets
    }

    /// The most iterations this scheduler lets a trial run.
    pub fn max_t(&self) -> Option<u64> {
        match self.spec {
            SchedulerSpec::Asha { max_t, .. } | SchedulerSpec::HyperBand { max_t, .. } => {
                Some(max_t)
            }
            _ => None,
        }
    }

    /// HyperBand's brackets seen so far, by index.
    pub fn hyperband(&self) -> &BTreeMap<u64, HbBracket> {
        &self.hb
    }

    /// The decisions taken on paused trials since the last call (HyperBand:
    /// a rung completed; `Continue` resumes the trial from its checkpoint,
    /// `Stop` ends it).
    pub fn take_released(&mut self) -> Vec<(u64, Decision)> {
        std::mem::take(&mut self.released)
    }

    /// PBT: the trial `trial` should take the checkpoint of (the answer to
    /// its last result was [`Decision::Pause`]); taken once.
    pub fn take_exploit(&mut self, trial: u64) -> Option<u64> {
        self.pbt.exploits.remove(&trial)
    }

    /// PBT: a trial's new hyper-parameters from those of the trial it
    /// exploits (`params`): each explored parameter is, with
    /// `resample_probability`, drawn afresh from its domain, else perturbed
    /// ([`perturb`]).
    pub fn explore(&mut self, space: &SearchSpace, params: &Params) -> Params {
        let SchedulerSpec::Pbt {
            resample_probability,
            ref perturbation_factors,
            ref hyperparams,
            ..
        } = self.spec
        else {
            return params.clone();
        };
        let mut out = params.clone();
        for (name, domain) in &space.0 {
            if !hyperparams.is_empty() && !hyperparams.contains(name) {
                continue;
            }
            let rng = &mut self.pbt.rng;
            let v = match params.get(name) {
                Some(v) if rng.unit_f64() >= resample_probability => {
                    let f =
                        perturbation_factors[rng.below(perturbation_factors.len() as u64) as usize];
                    perturb(domain, v, f)
                }
                _ => domain.sample(rng),
            };
            out.insert(name.clone(), v);
        }
        out
    }

    /// A trial ended for good (completed, stopped, failed): it no longer
    /// holds up a HyperBand rung.
    pub fn on_trial_end(&mut self, trial: u64) {
        self.ended.insert(trial);
        if let SchedulerSpec::HyperBand {
            max_t,
            reduction_factor,
        } = self.spec
        {
            let (b, _) = hyperband_bracket_of(max_t, reduction_factor, trial);
            self.hb_settle(b, None);
        }
    }

    /// No trial beyond the first `n` will be created: a HyperBand bracket
    /// cut short completes its rungs with the trials it has.
    pub fn set_total_trials(&mut self, n: u64) {
        if self.total == Some(n) {
            return;
        }
        self.total = Some(n);
        let keys: Vec<u64> = self.hb.keys().copied().collect();
        for b in keys {
            self.hb_settle(b, None);
        }
    }

    /// The trials of HyperBand bracket `b` at its current level.
    fn hb_participants(&self, b: u64) -> Vec<u64> {
        let SchedulerSpec::HyperBand {
            max_t,
            reduction_factor,
        } = self.spec
        else {
            return Vec::new();
        };
        match self.hb.get(&b).and_then(|x| x.promoted.as_ref()) {
            Some(p) => p.iter().copied().collect(),
            None => {
                let (first, n) = hyperband_bracket_range(max_t, reduction_factor, b);
                let end = self.total.map_or(first + n, |t| t.min(first + n));
                (first..end).collect()
            }
        }
    }

    /// Completes bracket `b`'s rung when every trial of it has a score
    /// there or has ended: the top `max(1, ⌊k/η⌋)` of the `k` scored
    /// continue, the others stop. The decision for `me` is returned, the
    /// others queued for [`take_released`](Self::take_released).
    fn hb_settle(&mut self, b: u64, me: Option<u64>) -> Option<Decision> {
        let SchedulerSpec::HyperBand {
            reduction_factor, ..
        } = self.spec
        else {
            return None;
        };
        let participants = self.hb_participants(b);
        let br = self.hb.get(&b)?;
        let complete = participants
            .iter()
            .all(|t| br.recorded.contains_key(t) || self.ended.contains(t));
        if !complete || br.recorded.is_empty() {
            return None;
        }
        let mut ranked: Vec<(u64, f64)> = br
            .recorded
            .iter()
            .filter(|(t, _)| !self.ended.contains(t))
            .map(|(&t, &s)| (t, s))
            .collect();
        // Best first; ties to the older trial.
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let keep = (ranked.len() as u64 / reduction_factor).max(1) as usize;
        let promoted: BTreeSet<u64> = ranked.iter().take(keep).map(|x| x.0).collect();
        let mut mine = None;
        for (i, &(t, _)) in ranked.iter().enumerate() {
            let d = if i < keep {
                Decision::Continue
            } else {
                Decision::Stop
            };
            if Some(t) == me {
                mine = Some(d);
            } else {
                self.released.push((t, d));
            }
        }
        if let Some(br) = self.hb.get_mut(&b) {
            br.level += 1;
            br.promoted = Some(promoted);
            br.recorded.clear();
        }
        mine
    }

    /// Decides on `trial`'s result at `iteration` (from 1) with `score`.
    pub fn on_result(&mut self, trial: u64, iteration: u64, score: f64) -> Decision {
        match self.spec {
            SchedulerSpec::Fifo => Decision::Continue,
            SchedulerSpec::HyperBand {
                max_t,
                reduction_factor,
            } => {
                if iteration >= max_t {
                    return Decision::Stop;
                }
                let (b, _) = hyperband_bracket_of(max_t, reduction_factor, trial);
                let s = hyperband_s(max_t, reduction_factor, b);
                let milestones = hyperband_milestones(max_t, reduction_factor, s);
                let promoted_here = self
                    .hb
                    .get(&b)
                    .and_then(|x| x.promoted.as_ref())
                    .is_none_or(|p| p.contains(&trial));
                let br = self.hb.entry(b).or_default();
                let Some(&milestone) = milestones.get(br.level) else {
                    return Decision::Stop;
                };
                if !promoted_here {
                    // Not among the trials that reached this rung.
                    return Decision::Stop;
                }
                if iteration < milestone {
                    return Decision::Continue;
                }
                if br.recorded.contains_key(&trial) {
                    // Reported again at the rung (a command): keep waiting.
                    return Decision::Pause;
                }
                br.recorded.insert(trial, score);
                self.hb_settle(b, Some(trial)).unwrap_or(Decision::Pause)
            }
            SchedulerSpec::Pbt {
                perturbation_interval,
                quantile_fraction,
                ..
            } => {
                let ended = &self.ended;
                let st = &mut self.pbt;
                // A NaN score ranks nowhere (it is never a donor).
                if score.is_nan() {
                    st.latest.remove(&trial);
                    return Decision::Continue;
                }
                st.latest.insert(trial, score);
                let last = st.last_perturbation.get(&trial).copied().unwrap_or(0);
                if iteration < last + perturbation_interval {
                    return Decision::Continue;
                }
                st.last_perturbation.insert(trial, iteration);
                // The population is the trials still running (as Ray's
                // quantiles): a trial that ended, failed included, is no
                // donor and takes no share of a quantile.
                let mut pop: Vec<(u64, f64)> = st
                    .latest
                    .iter()
                    .filter(|(t, _)| !ended.contains(t))
                    .map(|(&t, &s)| (t, s))
                    .collect();
                pop.sort_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
                // As Ray: ceil(n * q) trials per quantile, at most half.
                let mut k = (pop.len() as f64 * quantile_fraction).ceil() as usize;
                if k > pop.len() / 2 {
                    k = pop.len() / 2;
                }
                if k == 0 || !pop[..k].iter().any(|x| x.0 == trial) {
                    return Decision::Continue;
                }
                let top = &pop[pop.len() - k..];
                let donor = top[st.rng.below(k as u64) as usize].0;
                st.exploits.insert(trial, donor);
                Decision::Pause
            }
            SchedulerSpec::Asha {
                reduction_factor,
                max_t,
                ..
            } => {
                if iteration >= max_t {
                    return Decision::Stop;
                }
                let n = self.brackets.len().max(1) as u64;
                let Some(rungs) = self.brackets.get_mut((trial % n) as usize) else {
                    return Decision::Continue;
                };
                let mut decision = Decision::Continue;
                for rung in rungs.iter_mut() {
                    if iteration < rung.milestone || rung.recorded.contains_key(&trial) {
                        continue;
                    }
                    let values: Vec<f64> = rung.recorded.values().copied().collect();
                    if let Some(cutoff) =
                        percentile(&values, (1.0 - 1.0 / reduction_factor) * 100.0)
                        && score < cutoff
                    {
                        decision = Decision::Stop;
                    }
                    rung.recorded.insert(trial, score);
                    break;
                }
                decision
            }
            SchedulerSpec::Median {
                grace_period,
                min_samples,
            } => {
                let mine = self.history.entry(trial).or_default();
                mine.push((iteration, score));
                let best = mine
                    .iter()
                    .map(|&(_, s)| s)
                    .fold(f64::NEG_INFINITY, f64::max);
                if iteration < grace_period {
                    return Decision::Continue;
                }
                let means: Vec<f64> = self
                    .history
                    .iter()
                    .filter(|&(&t, _)| t != trial)
                    .filter_map(|(_, h)| {
                        let upto: Vec<f64> = h
                            .iter()
                            .filter(|&&(i, _)| i <= iteration)
                            .map(|&(_, s)| s)
                            .collect();
                        let reached = h.iter().any(|&(i, _)| i >= iteration);
                        (reached && !upto.is_empty())
                            .then(|| upto.iter().sum::<f64>() / upto.len() as f64)
                    })
                    .collect();
                if means.len() < min_samples {
                    return Decision::Continue;
                }
                match percentile(&means, 50.0) {
                    Some(median) if best < median => Decision::Stop,
                    _ => Decision::Continue,
                }
            }
        }
    }
}

/// The rungs of ASHA bracket `s`, highest milestone first.
fn asha_rungs(grace: u64, eta: f64, max_t: u64, s: u32) -> Vec<Rung> {
    let max_rungs = ((max_t as f64 / grace as f64).ln() / eta.ln() + 1.0 + 1e-9).floor() as i64;
    (0..(max_rungs - i64::from(s)).max(0))
        .rev()
        .map(|k| Rung {
            milestone: (grace as f64 * eta.powi((k + i64::from(s)) as i32)).round() as u64,
            recorded: BTreeMap::new(),
        })
        .collect()
}

/// The `q`-th percentile (0..=100) with linear interpolation between
/// closest ranks, as numpy's default; `None` for no values.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let pos = (q / 100.0).clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos - pos.floor());
    let next = v[(i + 1).min(v.len() - 1)];
    Some(v[i] + (next - v[i]) * frac)
}

/// `s_max = ⌊log_η R⌋`.
fn hyperband_smax(max_t: u64, eta: u64) -> u32 {
    ((max_t.max(1) as f64).ln() / (eta.max(2) as f64).ln() + 1e-9).floor() as u32
}

/// `s` of HyperBand bracket `b` (brackets go `s_max, s_max - 1, .., 0`
/// and then again, as the paper's outer loop).
fn hyperband_s(max_t: u64, eta: u64, b: u64) -> u32 {
    let s_max = hyperband_smax(max_t, eta);
    s_max - (b % u64::from(s_max + 1)) as u32
}

/// The first trial id of bracket `b` and its size `n`: trials fill the
/// brackets in id order.
pub fn hyperband_bracket_range(max_t: u64, eta: u64, b: u64) -> (u64, u64) {
    let sizes: Vec<u64> = hyperband_brackets(max_t, eta).iter().map(|x| x.0).collect();
    let cycle: u64 = sizes.iter().sum();
    let per = sizes.len() as u64;
    let first = (b / per) * cycle + sizes[..(b % per) as usize].iter().sum::<u64>();
    (first, sizes[(b % per) as usize])
}

/// The bracket of trial `trial` and its first trial id.
pub fn hyperband_bracket_of(max_t: u64, eta: u64, trial: u64) -> (u64, u64) {
    let sizes: Vec<u64> = hyperband_brackets(max_t, eta).iter().map(|x| x.0).collect();
    let cycle: u64 = sizes.iter().sum::<u64>().max(1);
    let mut b = (trial / cycle) * sizes.len() as u64;
    let mut first = (trial / cycle) * cycle;
    let mut rest = trial % cycle;
    for n in sizes {
        if rest < n {
            break;
        }
        rest -= n;
        first += n;
        b += 1;
    }
    (b, first)
}

/// The rungs of a HyperBand bracket with `s`: `r_i = R η^(i - s)` for
/// `i = 0..=s` (rounded, at least 1), the last one `R`.
pub fn hyperband_milestones(max_t: u64, eta: u64, s: u32) -> Vec<u64> {
    let mut m: Vec<u64> = (0..=s)
        .map(|i| {
            ((max_t as f64) * (eta as f64).powi(i as i32 - s as i32))
                .round()
                .max(1.0) as u64
        })
        .collect();
    m.dedup();
    m
}

/// PBT's perturbation of one value: numbers are multiplied by `factor`
/// and clamped to the domain (integers move by at least one step, so a
/// small integer still changes); `choice` and `grid` move to the option
/// before or after (`factor < 1`: before), clamped to the ends.
pub fn perturb(domain: &Domain, v: &Value, factor: f64) -> Value {
    let num = |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
    match *domain {
        Domain::Uniform { low, high } | Domain::Loguniform { low, high } => {
            num((v.as_f64().unwrap_or(low) * factor).clamp(low, high))
        }
        Domain::Quantized { .. } => domain.from_internal(v.as_f64().unwrap_or(0.0) * factor),
        Domain::Int { low, high, .. } => {
            let x = v.as_i64().unwrap_or(low);
            let mut y = (x as f64 * factor).round() as i64;
            if y == x {
                y = if factor >= 1.0 { x + 1 } else { x - 1 };
            }
            Value::from(y.clamp(low, high))
        }
        Domain::Choice { ref values } | Domain::Grid { ref values } => {
            let i = values.iter().position(|o| o == v).unwrap_or(0);
            let j = if factor >= 1.0 {
                (i + 1).min(values.len().saturating_sub(1))
            } else {
                i.saturating_sub(1)
            };
            values.get(j).cloned().unwrap_or_else(|| v.clone())
        }
    }
}

/// HyperBand's brackets for a maximum of `max_t` iterations and factor
/// `eta`: `(n, r)` per bracket, most exploratory first: `n` trials start
/// with `r` iterations each (Li et al. 2018, Algorithm 1).
pub fn hyperband_brackets(max_t: u64, eta: u64) -> Vec<(u64, f64)> {
    let r_max = max_t as f64;
    let eta_f = eta as f64;
    let s_max = (r_max.ln() / eta_f.ln() + 1e-9).floor() as u32;
    (0..=s_max)
        .rev()
        .map(|s| {
            let n =
                ((f64::from(s_max + 1) / f64::from(s + 1)) * eta_f.powi(s as i32) - 1e-9).ceil();
            (n as u64, r_max * eta_f.powi(-(s as i32)))
        })
        .collect()
}

/// Stoppers: when a trial, or the whole experiment, ends early.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stoppers {
    /// Iterations per trial at most.
    #[serde(default)]
    pub max_iterations: Option<u64>,
    /// The experiment stops once a trial's metric reaches this (at least it
    /// in `max` mode, at most in `min` mode).
    #[serde(default)]
    pub metric_threshold: Option<f64>,
    /// A trial stops when its metric has not improved for a while.
    #[serde(default)]
    pub plateau: Option<Plateau>,
    /// Seconds for the whole experiment: then running trials are stopped
    /// (external commands killed) and no new one starts.
    #[serde(default)]
    pub time_budget_s: Option<f64>,
}

/// A plateau: `patience` iterations without an improvement over `min_delta`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plateau {
    /// Iterations without improvement before stopping.
    pub patience: u64,
    /// The smallest change counted as an improvement.
    #[serde(default)]
    pub min_delta: f64,
}

impl Stoppers {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_iterations == Some(0) {
            return Err("stop.max_iterations: must be at least 1".into());
        }
        if let Some(t) = self.time_budget_s
            && !(t > 0.0 && t.is_finite())
        {
            return Err(format!("stop.time_budget_s: must be positive, got {t}"));
        }
        if let Some(p) = &self.plateau
            && (p.patience == 0 || p.min_delta.is_nan() || p.min_delta < 0.0)
        {
            return Err("stop.plateau: patience must be at least 1 and min_delta >= 0".into());
        }
        Ok(())
    }

    /// Whether a trial with these oriented `scores` (one per iteration, in
    /// order) stops on its own account.
    pub fn trial_stops(&self, scores: &[f64]) -> bool {
        let it = scores.len() as u64;
        if self.max_iterations.is_some_and(|m| it >= m) {
            return true;
        }
        if let Some(p) = &self.plateau
            && it > p.patience
        {
            let cut = scores.len() - p.patience as usize;
            let before = scores[..cut]
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max);
            let after = scores[cut..]
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max);
            if after <= before + p.min_delta {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asha(grace: u64, eta: f64, max_t: u64, brackets: u32) -> Scheduler {
        Scheduler::new(SchedulerSpec::Asha {
            grace_period: grace,
            reduction_factor: eta,
            max_t,
            brackets,
        })
    }

    #[test]
    fn asha_rungs_sit_at_grace_times_powers_of_eta() {
        let s = asha(1, 3.0, 81, 3);
        let m: Vec<Vec<u64>> = s
            .rungs()
            .iter()
            .map(|b| b.iter().map(|r| r.milestone).collect())
            .collect();
        assert_eq!(
            m,
            [vec![81, 27, 9, 3, 1], vec![81, 27, 9, 3], vec![81, 27, 9]]
        );
        let s = asha(2, 2.0, 20, 1);
        let m: Vec<u64> = s.rungs()[0].iter().map(|r| r.milestone).collect();
        assert_eq!(m, [16, 8, 4, 2]);
    }

    /// Scripted curves: trial t's score at every iteration is `curve[t]`.
    /// With η = 3 only trials in the top third at a rung continue.
    #[test]
    fn asha_continues_only_the_top_third_at_each_rung() {
        let mut s = asha(1, 3.0, 9, 1);
        // Rung 1: scores arrive in this order.
        let at1 = [0.5, 0.2, 0.9, 0.1, 0.6, 0.95, 0.3];
        let mut got = Vec::new();
        for (t, &score) in at1.iter().enumerate() {
            got.push(s.on_result(t as u64, 1, score));
        }
        use Decision::{Continue as C, Stop as S};
        // cutoff = 66.7th percentile of the values before:
        // t0: none -> C; t1: [0.5] -> 0.2 < 0.5 S; t2: [0.2,0.5] cut 0.4 -> C;
        // t3: [0.2,0.5,0.9] cut 0.633 -> S; t4: [.1,.2,.5,.9] cut 0.5 -> C;
        // t5: [.1,.2,.5,.6,.9] cut .567 -> C; t6: [.1,.2,.5,.6,.9,.95] cut .7 -> S.
        assert_eq!(got, [C, S, C, S, C, C, S]);
        // Between rungs every trial continues.
        assert_eq!(s.on_result(0, 2, 0.0), C);
        // Rung 3: 0 first (continues), then 2 better, then 4 worse than both.
        assert_eq!(s.on_result(0, 3, 0.55), C);
        assert_eq!(s.on_result(2, 3, 0.91), C);
        assert_eq!(s.on_result(4, 3, 0.5), S);
        // max_t ends a trial.
        assert_eq!(s.on_result(2, 9, 0.99), S);
        // A trial recorded at a rung is not judged there twice.
        assert_eq!(s.on_result(2, 4, 0.0), C);
    }

    #[test]
    fn asha_keeps_about_one_in_eta_on_random_curves() {
        let mut s = asha(1, 4.0, 16, 1);
        let mut g = crate::rng::SplitMix64::new(5);
        let mut cont = 0;
        let n = 400;
        for t in 0..n {
            if s.on_result(t, 1, g.unit_f64()) == Decision::Continue {
                cont += 1;
            }
        }
        // Top quarter, plus the early arrivals judged on few values.
        assert!((90..=150).contains(&cont), "{cont} of {n} continued");
    }

    #[test]
    fn hyperband_brackets_match_the_paper() {
        // Li et al. 2018, Table 1: R = 81, eta = 3.
        let b = hyperband_brackets(81, 3);
        let n: Vec<u64> = b.iter().map(|x| x.0).collect();
        let r: Vec<f64> = b.iter().map(|x| x.1).collect();
        assert_eq!(n, [81, 34, 15, 8, 5]);
        assert_eq!(r, [1.0, 3.0, 9.0, 27.0, 81.0]);
    }

    #[test]
    fn hyperband_rungs_and_bracket_membership_match_the_paper() {
        // Table 1 of Li et al. 2018 (R = 81, η = 3): r_i per bracket.
        let m: Vec<Vec<u64>> = (0..5u64)
            .map(|b| hyperband_milestones(81, 3, hyperband_s(81, 3, b)))
            .collect();
        assert_eq!(
            m,
            [
                vec![1, 3, 9, 27, 81],
                vec![3, 9, 27, 81],
                vec![9, 27, 81],
                vec![27, 81],
                vec![81]
            ]
        );
        // Trials fill the brackets in id order: 81, 34, 15, 8, 5, then again.
        assert_eq!(hyperband_bracket_of(81, 3, 0), (0, 0));
        assert_eq!(hyperband_bracket_of(81, 3, 80), (0, 0));
        assert_eq!(hyperband_bracket_of(81, 3, 81), (1, 81));
        assert_eq!(hyperband_bracket_of(81, 3, 115), (2, 115));
        assert_eq!(hyperband_bracket_of(81, 3, 142), (4, 138));
        assert_eq!(hyperband_bracket_of(81, 3, 143), (5, 143));
        assert_eq!(hyperband_bracket_range(81, 3, 5), (143, 81));
        assert_eq!(hyperband_bracket_range(81, 3, 2), (115, 15));
        // R = 9: s_max = 2, brackets of 9, 5 and 3 trials.
        let n: Vec<u64> = hyperband_brackets(9, 3).iter().map(|x| x.0).collect();
        assert_eq!(n, [9, 5, 3]);
        let spec = SchedulerSpec::HyperBand {
            max_t: 9,
            reduction_factor: 3,
        };
        // Checkpoints where a trial may pause: its bracket's rungs.
        assert!(spec.must_checkpoint(0, 1) && spec.must_checkpoint(0, 3));
        assert!(!spec.must_checkpoint(0, 2));
        assert!(!spec.must_checkpoint(9, 1) && spec.must_checkpoint(9, 3));
    }

    fn hb(max_t: u64, eta: u64) -> Scheduler {
        Scheduler::new(SchedulerSpec::HyperBand {
            max_t,
            reduction_factor: eta,
        })
    }

    /// Synchronous successive halving in bracket 0 of R = 9, η = 3: nine
    /// trials at rung 1, three at rung 3, one runs to 9. Trials wait at a
    /// rung until it is complete; then the top ⌊k/η⌋ continue.
    #[test]
    fn hyperband_pauses_trials_until_the_rung_is_complete_then_promotes_the_top_third() {
        use Decision::{Continue as C, Pause as P, Stop as S};
        let mut s = hb(9, 3);
        // Trial t's score is curve[t] at every iteration.
        let curve = [0.5, 0.9, 0.1, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4];
        for (t, &score) in curve.iter().enumerate().take(8) {
            assert_eq!(s.on_result(t as u64, 1, score), P, "trial {t}");
            assert!(s.take_released().is_empty());
        }
        // The last one completes the rung: the top 3 (1, 5, 3) continue.
        assert_eq!(s.on_result(8, 1, curve[8]), S);
        let mut rel = s.take_released();
        rel.sort_by_key(|x| x.0);
        assert_eq!(
            rel,
            [
                (0, S),
                (1, C),
                (2, S),
                (3, C),
                (4, S),
                (5, C),
                (6, S),
                (7, S)
            ]
        );
        assert_eq!(s.hyperband()[&0].level, 1);
        // A stopped trial is not promoted: it stops if it reports again.
        assert_eq!(s.on_result(0, 2, 0.99), S);
        // Between rungs: continue. At rung 3: wait for the other two.
        assert_eq!(s.on_result(1, 2, 0.9), C);
        assert_eq!(s.on_result(3, 3, 0.75), P);
        assert_eq!(s.on_result(1, 3, 0.95), P);
        // 5 completes rung 3 below the others: ⌊3/3⌋ = 1 continues (1).
        assert_eq!(s.on_result(5, 3, 0.7), S);
        let mut rel = s.take_released();
        rel.sort_by_key(|x| x.0);
        assert_eq!(rel, [(1, C), (3, S)]);
        // Trial 1 is complete at R.
        assert_eq!(s.on_result(1, 9, 0.97), S);
        // Bracket 1 (trials 9..14) starts at rung 3.
        assert_eq!(s.on_result(9, 1, 0.5), C);
        assert_eq!(s.on_result(9, 3, 0.5), P);
    }

    #[test]
    fn hyperband_does_not_wait_for_trials_that_ended_or_were_never_created() {
        use Decision::{Continue as C, Pause as P, Stop as S};
        let mut s = hb(9, 3);
        for t in 0..7u64 {
            assert_eq!(s.on_result(t, 1, t as f64), P);
        }
        // Trial 7 fails before its first result: the rung still waits for 8.
        s.on_trial_end(7);
        assert!(s.take_released().is_empty());
        // No trial after 8 will exist (max_trials = 8): the rung completes
        // with seven scores, ⌊7/3⌋ = 2 continue.
        s.set_total_trials(8);
        let mut rel = s.take_released();
        rel.sort_by_key(|x| x.0);
        assert_eq!(
            rel,
            [(0, S), (1, S), (2, S), (3, S), (4, S), (5, C), (6, C)]
        );
        // Rung 3: trial 6 fails while 5 waits: 5 goes on alone.
        assert_eq!(s.on_result(5, 3, 1.0), P);
        s.on_trial_end(6);
        assert_eq!(s.take_released(), [(5, C)]);
    }

    fn pbt(q: f64, resample: f64) -> Scheduler {
        Scheduler::new(SchedulerSpec::Pbt {
            perturbation_interval: 2,
            quantile_fraction: q,
            resample_probability: resample,
            perturbation_factors: vec![0.8, 1.2],
            hyperparams: Vec::new(),
        })
        .seeded(3)
    }

    #[test]
    fn pbt_bottom_quantile_exploits_a_top_trial_at_each_interval() {
        use Decision::{Continue as C, Pause as P};
        let mut s = pbt(0.25, 0.25);
        // Eight trials; scores t / 10. Iteration 1: not an interval.
        for t in 0..8u64 {
            assert_eq!(s.on_result(t, 1, t as f64 / 10.0), C);
        }
        // Iteration 2: the bottom quarter (0, 1) exploit one of the top
        // quarter (6, 7); the others continue.
        let mut paused = Vec::new();
        for t in (0..8u64).rev() {
            if s.on_result(t, 2, t as f64 / 10.0) == P {
                paused.push(t);
                let donor = s.take_exploit(t).expect("a donor for a paused trial");
                assert!(donor == 6 || donor == 7, "donor {donor}");
                assert_eq!(s.take_exploit(t), None, "taken once");
            }
        }
        paused.sort();
        assert_eq!(paused, [0, 1]);
        // Iteration 3: between intervals.
        assert_eq!(s.on_result(0, 3, 0.0), C);
        // One trial alone never exploits.
        let mut s = pbt(0.25, 0.0);
        assert_eq!(s.on_result(0, 2, 0.0), C);
    }

    /// The population is the trials still running: a trial that ended
    /// (here the two best, 6 and 7) is never a donor and takes no share of
    /// a quantile, and a NaN score ranks nowhere (as Ray's PBT).
    #[test]
    fn pbt_ranks_only_running_trials_with_a_score() {
        use Decision::Pause as P;
        let mut s = pbt(0.25, 0.0);
        for t in 0..8u64 {
            s.on_result(t, 1, t as f64 / 10.0);
        }
        s.on_trial_end(6);
        s.on_trial_end(7);
        // Trial 5 reports NaN: out of the population.
        s.on_result(5, 2, f64::NAN);
        // Running with a score: 0..=4; the bottom quarter (ceil(5/4) = 2,
        // at most half: 2) is 0 and 1, the top 3 and 4.
        let mut paused = Vec::new();
        for t in (0..5u64).rev() {
            if s.on_result(t, 2, t as f64 / 10.0) == P {
                paused.push(t);
                let donor = s.take_exploit(t).expect("a donor");
                assert!(donor == 3 || donor == 4, "donor {donor}");
            }
        }
        paused.sort();
        assert_eq!(paused, [0, 1]);
    }

    #[test]
    fn pbt_explore_stays_within_bounds_and_changes_the_parameters() {
        let space = SearchSpace::new()
            .with(
                "lr",
                Domain::Loguniform {
                    low: 1e-4,
                    high: 1e-1,
                },
            )
            .with(
                "wd",
                Domain::Uniform {
                    low: 0.0,
                    high: 0.5,
                },
            )
            .with(
                "batch",
                Domain::Choice {
                    values: vec![16.into(), 32.into(), 64.into()],
                },
            )
            .with(
                "layers",
                Domain::Int {
                    low: 1,
                    high: 4,
                    log: false,
                },
            );
        let mut p = Params::new();
        p.insert("lr".into(), serde_json::json!(0.01));
        p.insert("wd".into(), serde_json::json!(0.45));
        p.insert("batch".into(), serde_json::json!(32));
        p.insert("layers".into(), serde_json::json!(2));
        for resample in [0.0, 0.25, 1.0] {
            let mut s = pbt(0.25, resample);
            for _ in 0..200 {
                let q = s.explore(&space, &p);
                assert_ne!(q, p, "explore changed nothing");
                let lr = q["lr"].as_f64().unwrap();
                let wd = q["wd"].as_f64().unwrap();
                assert!((1e-4..=1e-1).contains(&lr), "lr {lr}");
                assert!((0.0..=0.5).contains(&wd), "wd {wd}");
                assert!([16, 32, 64].contains(&q["batch"].as_i64().unwrap()));
                assert!((1..=4).contains(&q["layers"].as_i64().unwrap()));
                if resample == 0.0 {
                    // Perturbed: × 0.8 or × 1.2, clamped (0.45 × 1.2 > 0.5).
                    assert!(
                        (lr - 0.008).abs() < 1e-12 || (lr - 0.012).abs() < 1e-12,
                        "lr {lr}"
                    );
                    assert!((wd - 0.36).abs() < 1e-12 || wd == 0.5, "wd {wd}");
                    let b = q["batch"].as_i64().unwrap();
                    assert!(b == 16 || b == 64, "batch {b}");
                    let l = q["layers"].as_i64().unwrap();
                    assert!(l == 1 || l == 3, "layers {l}");
                }
            }
        }
        // At a bound the value stays in the domain.
        let d = Domain::Uniform {
            low: 0.0,
            high: 1.0,
        };
        assert_eq!(
            perturb(&d, &serde_json::json!(0.9), 1.2),
            serde_json::json!(1.0)
        );
    }

    #[test]
    fn median_stopping_stops_below_the_median_of_running_means() {
        let mut s = Scheduler::new(SchedulerSpec::Median {
            grace_period: 2,
            min_samples: 3,
        });
        for t in 0..3u64 {
            for i in 1..=4 {
                // Running means at 2: 0.5, 0.6, 0.7.
                assert_eq!(s.on_result(t, i, 0.5 + 0.1 * t as f64), Decision::Continue);
            }
        }
        // Within the grace period: continue whatever the score.
        assert_eq!(s.on_result(9, 1, 0.0), Decision::Continue);
        // Best so far 0.55 < median 0.6: stop.
        assert_eq!(s.on_result(9, 2, 0.55), Decision::Stop);
        // Another trial above the median continues.
        s.on_result(10, 1, 0.0);
        assert_eq!(s.on_result(10, 2, 0.65), Decision::Continue);
    }

    #[test]
    fn stoppers_end_trials_at_max_iterations_and_on_plateaus() {
        let st = Stoppers {
            max_iterations: Some(5),
            plateau: Some(Plateau {
                patience: 2,
                min_delta: 0.01,
            }),
            ..Default::default()
        };
        assert!(!st.trial_stops(&[0.1, 0.2]));
        assert!(!st.trial_stops(&[0.1, 0.2, 0.3]));
        assert!(st.trial_stops(&[0.1, 0.5, 0.505, 0.5]));
        assert!(st.trial_stops(&[0.1, 0.2, 0.3, 0.4, 0.5]));
        assert!(
            Stoppers {
                time_budget_s: Some(-1.0),
                ..Default::default()
            }
            .validate()
            .is_err()
        );
    }
}
