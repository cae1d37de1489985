//! Experiment configuration (TOML), as `manta tune --config F` reads it.
//!
//! ```toml
//! [experiment]
//! name = "digits-asha"
//! dir = "../target/tune-digits"    # relative to this file
//! metric = "val_accuracy"
//! mode = "max"                      # or "min"
//! max_trials = 24
//! max_concurrent = 2
//! seed = 0
//! max_failures = 1                  # retries of a failed trial (from its checkpoint)
//! checkpoint_every = 1              # iterations between checkpoints
//!
//! [searcher]
//! kind = "tpe"                      # grid | random | tpe (n_startup, gamma, n_candidates)
//!
//! [scheduler]
//! kind = "asha"                     # fifo | asha | median
//! grace_period = 2
//! reduction_factor = 3
//! max_t = 30
//!
//! [stop]
//! max_iterations = 30
//! time_budget_s = 600
//! # metric_threshold = 0.99
//! # plateau = { patience = 5, min_delta = 0.001 }
//!
//! [trainable]
//! kind = "digits"                   # or "command" (command = [...]) or "rust" (name = ...)
//! config = "train-digits.toml"
//!
//! [space]
//! lr = { type = "loguniform", low = 1e-4, high = 1e-2 }
//!
//! [trial]                           # with `manta tune --seeds`: what a trial needs
//! cpus = 1.0
//! gpus = 0
//! # role = "trainer"; labels = { zone = "a" }
//! checkpoint_limit_mb = 32          # largest checkpoint a node sends back
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::TuneError;
use super::schedule::{SchedulerSpec, Stoppers};
use super::search::SearcherSpec;
use super::space::{Domain, SearchSpace};
use crate::config::absolute;

/// Whether a larger or a smaller metric is better.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricMode {
    /// Larger is better.
    #[default]
    Max,
    /// Smaller is better.
    Min,
}

impl MetricMode {
    /// The metric as a score (higher is better).
    pub fn score(self, metric: f64) -> f64 {
        match self {
            MetricMode::Max => metric,
            MetricMode::Min => -metric,
        }
    }
}

/// The `[experiment]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    /// Its name.
    #[serde(default = "default_name")]
    pub name: String,
    /// The experiment directory (store, trial directories, exports, plots).
    pub dir: PathBuf,
    /// The metric trials are ranked by.
    pub metric: String,
    /// Larger or smaller is better.
    #[serde(default)]
    pub mode: MetricMode,
    /// Trials at most.
    #[serde(default = "ten")]
    pub max_trials: u64,
    /// Trials running at once.
    #[serde(default = "one")]
    pub max_concurrent: u64,
    /// Seed of the searcher (and of the trials' `seed` parameter when the
    /// space does not set it).
    #[serde(default)]
    pub seed: u64,
    /// Restarts of a failed trial, each from its last checkpoint.
    #[serde(default = "one")]
    pub max_failures: u64,
    /// Iterations between checkpoints (Rust and digits trainables).
    #[serde(default = "one")]
    pub checkpoint_every: u64,
    /// Results are committed to the store at least this often
    /// (milliseconds); trial starts and ends are committed at once.
    #[serde(default = "commit_ms")]
    pub commit_interval_ms: u64,
    /// `false`: nothing is written (the store is an in-memory SQLite, no
    /// exports, plots or trial directories; checkpoints only where the
    /// scheduler needs them, HyperBand and PBT) and the experiment cannot
    /// be resumed. For fast in-process searches and the overhead bench.
    #[serde(default = "yes")]
    pub persist: bool,
}

fn yes() -> bool {
    true
}

fn default_name() -> String {
    "tune".into()
}
fn ten() -> u64 {
    10
}
fn one() -> u64 {
    1
}
fn commit_ms() -> u64 {
    50
}

/// The `[trainable]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TrainableSpec {
    /// The digits MLP of manta-ml; hyper-parameters override the keys of
    /// `config` (a `manta train` file).
    Digits {
        /// The training config (relative to the tune config).
        config: PathBuf,
        /// Fraction of the training rows held out to rank trials (0: none,
        /// train on all of them; then no `val_accuracy`).
        #[serde(default = "val_fraction")]
        validation_fraction: f64,
    },
    /// An external command.
    Command {
        /// The program and its arguments (the program is looked up in
        /// `PATH`); parts starting with `./` or `../` are relative to the
        /// config file.
        command: Vec<String>,
        /// Extra environment variables.
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
    /// A trainable registered in code ([`super::Trainables`]) by name.
    Rust {
        /// Its name.
        name: String,
    },
}

fn val_fraction() -> f64 {
    0.2
}

/// The `[trial]` table: what each trial asks of the node it runs on when
/// the trials run on a cluster (`manta tune --seeds`); in-process runs
/// ignore it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrialPlacement {
    /// CPUs per trial (a node runs trials while the sum fits what it
    /// advertises).
    #[serde(default = "one_cpu")]
    pub cpus: f64,
    /// GPUs per trial.
    #[serde(default)]
    pub gpus: u32,
    /// A role the node must have.
    #[serde(default)]
    pub role: Option<String>,
    /// Labels the node must carry.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Largest checkpoint (MiB) a trial on another node may send back; a
    /// larger one fails the trial.
    #[serde(default = "checkpoint_mb")]
    pub checkpoint_limit_mb: u64,
}

fn one_cpu() -> f64 {
    1.0
}
fn checkpoint_mb() -> u64 {
    32
}

/// Checkpoints travel in one message, and one message is at most 64 MiB.
pub const MAX_CHECKPOINT_MB: u64 = 48;

impl Default for TrialPlacement {
    fn default() -> Self {
        Self {
            cpus: one_cpu(),
            gpus: 0,
            role: None,
            labels: BTreeMap::new(),
            checkpoint_limit_mb: checkpoint_mb(),
        }
    }
}

impl TrialPlacement {
    fn validate(&self) -> Result<(), String> {
        if !(self.cpus.is_finite() && self.cpus >= 0.0) {
            return Err(format!(
                "trial.cpus: must be a number at least 0, got {}",
                self.cpus
            ));
        }
        if self.checkpoint_limit_mb == 0 || self.checkpoint_limit_mb > MAX_CHECKPOINT_MB {
            return Err(format!(
                "trial.checkpoint_limit_mb: must be 1 to {MAX_CHECKPOINT_MB}, got {}",
                self.checkpoint_limit_mb
            ));
        }
        Ok(())
    }
}

/// A whole experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TuneConfig {
    /// The experiment.
    pub experiment: ExperimentSpec,
    /// The searcher.
    pub searcher: SearcherSpec,
    /// The scheduler.
    pub scheduler: SchedulerSpec,
    /// The stoppers.
    pub stop: Stoppers,
    /// What runs in each trial.
    pub trainable: TrainableSpec,
    /// The search space.
    pub space: SearchSpace,
    /// What each trial asks of its node (cluster runs).
    #[serde(default)]
    pub trial: TrialPlacement,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    experiment: Spanned<ExperimentSpec>,
    #[serde(default)]
    searcher: Option<Spanned<SearcherSpec>>,
    #[serde(default)]
    scheduler: Option<Spanned<SchedulerSpec>>,
    #[serde(default)]
    stop: Option<Spanned<Stoppers>>,
    trainable: Spanned<TrainableSpec>,
    #[serde(default)]
    space: BTreeMap<String, Spanned<Domain>>,
    #[serde(default)]
    trial: Option<Spanned<TrialPlacement>>,
}

/// `line:col` (from 1) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

impl TuneConfig {
    /// Reads a config file; relative paths in it are relative to the file.
    /// Errors name the file, the line and column, and the key.
    pub fn load(path: &Path) -> Result<TuneConfig, TuneError> {
        let text = std::fs::read_to_string(path).map_err(|e| TuneError::io(path, e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &path.display().to_string(), base)
    }

    /// Parses config text; `source` names it in errors, `base` anchors
    /// relative paths.
    pub fn parse(text: &str, source: &str, base: &Path) -> Result<TuneConfig, TuneError> {
        let at = |offset: usize, what: String| {
            let (l, c) = line_col(text, offset);
            TuneError::Config(format!("{source}:{l}:{c}: {what}"))
        };
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            at(offset, e.message().trim_end().to_string())
        })?;
        let check = |span: std::ops::Range<usize>,
                     r: Result<(), String>|
         -> Result<(), TuneError> { r.map_err(|e| at(span.start, e)) };
        let mut space = SearchSpace::new();
        for (name, d) in raw.space {
            check(
                d.span(),
                d.get_ref()
                    .validate()
                    .map_err(|e| format!("space.{name}: {e}")),
            )?;
            space.0.insert(name, d.into_inner());
        }
        let searcher = match raw.searcher {
            Some(s) => {
                check(s.span(), s.get_ref().validate())?;
                s.into_inner()
            }
            None => SearcherSpec::default(),
        };
        let scheduler = match raw.scheduler {
            Some(s) => {
                check(s.span(), s.get_ref().validate())?;
                if let SchedulerSpec::Pbt { hyperparams, .. } = s.get_ref()
                    && let Some(h) = hyperparams.iter().find(|h| !space.0.contains_key(*h))
                {
                    return Err(at(
                        s.span().start,
                        format!("scheduler.hyperparams: `{h}` is not a parameter of [space]"),
                    ));
                }
                s.into_inner()
            }
            None => SchedulerSpec::default(),
        };
        let stop = match raw.stop {
            Some(s) => {
                check(s.span(), s.get_ref().validate())?;
                s.into_inner()
            }
            None => Stoppers::default(),
        };
        let trial = match raw.trial {
            Some(t) => {
                check(t.span(), t.get_ref().validate())?;
                t.into_inner()
            }
            None => TrialPlacement::default(),
        };
        let exp_span = raw.experiment.span();
        let mut experiment = raw.experiment.into_inner();
        check(exp_span.clone(), validate_experiment(&experiment))?;
        experiment.dir = absolute(base, &experiment.dir);
        let tr_span = raw.trainable.span();
        let mut trainable = raw.trainable.into_inner();
        match &mut trainable {
            TrainableSpec::Digits {
                config,
                validation_fraction,
            } => {
                *config = absolute(base, config);
                if !(*validation_fraction >= 0.0 && *validation_fraction < 1.0) {
                    return Err(at(
                        tr_span.start,
                        format!(
                            "trainable.validation_fraction: must be at least 0 and below 1, got {validation_fraction}"
                        ),
                    ));
                }
            }
            TrainableSpec::Command { command, .. } => {
                if command.is_empty() {
                    return Err(at(
                        tr_span.start,
                        "trainable.command: needs at least the program".into(),
                    ));
                }
                // `./x` and `../x` (program or argument) are relative to
                // the config file.
                for part in command.iter_mut() {
                    if part.starts_with("./") || part.starts_with("../") {
                        *part = absolute(base, Path::new(part.as_str()))
                            .display()
                            .to_string();
                    }
                }
            }
            TrainableSpec::Rust { .. } => {}
        }
        if searcher == SearcherSpec::Grid && space.grid().0.is_empty() {
            return Err(TuneError::Config(format!(
                "{source}: searcher.kind: `grid` needs at least one `type = \"grid\"` parameter in [space]"
            )));
        }
        grid_fits(&searcher, &space, experiment.max_trials)
            .map_err(|e| TuneError::Config(format!("{source}: {e}")))?;
        pbt_keeps_the_trials_data_and_shape(&scheduler, &space, &trainable)
            .map_err(|e| TuneError::Config(format!("{source}: {e}")))?;
        Ok(TuneConfig {
            experiment,
            searcher,
            scheduler,
            stop,
            trainable,
            space,
            trial,
        })
    }

    /// Checks a config built in code (the same rules as the file).
    pub fn validate(&self) -> Result<(), TuneError> {
        let c = |r: Result<(), String>| r.map_err(TuneError::Config);
        c(validate_experiment(&self.experiment))?;
        c(self.space.validate())?;
        c(self.searcher.validate())?;
        c(self.scheduler.validate())?;
        if let SchedulerSpec::Pbt { hyperparams, .. } = &self.scheduler
            && let Some(h) = hyperparams.iter().find(|h| !self.space.0.contains_key(*h))
        {
            return Err(TuneError::Config(format!(
                "scheduler.hyperparams: `{h}` is not a parameter of [space]"
            )));
        }
        c(grid_fits(
            &self.searcher,
            &self.space,
            self.experiment.max_trials,
        ))?;
        c(pbt_keeps_the_trials_data_and_shape(
            &self.scheduler,
            &self.space,
            &self.trainable,
        ))?;
        c(self.stop.validate())?;
        c(self.trial.validate())
    }

    /// The most iterations a trial may run (scheduler's `max_t`, the
    /// `max_iterations` stopper), if bounded.
    pub fn iteration_cap(&self) -> Option<u64> {
        match (self.stop.max_iterations, self.scheduler_max_t()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn scheduler_max_t(&self) -> Option<u64> {
        match self.scheduler {
            SchedulerSpec::Asha { max_t, .. } | SchedulerSpec::HyperBand { max_t, .. } => {
                Some(max_t)
            }
            _ => None,
        }
    }
}

fn validate_experiment(e: &ExperimentSpec) -> Result<(), String> {
    if e.metric.is_empty() {
        return Err("experiment.metric: must name a metric".into());
    }
    if e.max_trials == 0 {
        return Err("experiment.max_trials: must be at least 1".into());
    }
    if e.max_concurrent == 0 {
        return Err("experiment.max_concurrent: must be at least 1".into());
    }
    if e.checkpoint_every == 0 {
        return Err("experiment.checkpoint_every: must be at least 1".into());
    }
    if e.name.is_empty() {
        return Err("experiment.name: must not be empty".into());
    }
    Ok(())
}

/// A grid search runs every point of the grid: a grid larger than
/// `max_trials` (default 10) would be cut silently, so it is an error.
fn grid_fits(searcher: &SearcherSpec, space: &SearchSpace, max_trials: u64) -> Result<(), String> {
    if *searcher != SearcherSpec::Grid {
        return Ok(());
    }
    let (_, points) = space.grid();
    if points > max_trials {
        return Err(format!(
            "experiment.max_trials: the grid has {points} points but max_trials is {max_trials}; set max_trials to at least {points} (every point runs once)"
        ));
    }
    Ok(())
}

/// Digits parameters PBT must not explore: a trial it changes restores
/// another trial's checkpoint, and these change what that checkpoint means
/// (its data split and input scaling, its layer shapes).
const PBT_FIXED: [&str; 4] = ["split_seed", "standardize", "hidden", "layers"];

/// PBT on the digits trainable explores none of [`PBT_FIXED`]: the
/// weights a trial continues from would have been trained on rows that
/// are now its validation rows, on inputs scaled otherwise, or would not
/// fit its layers.
fn pbt_keeps_the_trials_data_and_shape(
    scheduler: &SchedulerSpec,
    space: &SearchSpace,
    trainable: &TrainableSpec,
) -> Result<(), String> {
    let (SchedulerSpec::Pbt { hyperparams, .. }, TrainableSpec::Digits { .. }) =
        (scheduler, trainable)
    else {
        return Ok(());
    };
    let explored: Vec<&str> = if hyperparams.is_empty() {
        space.0.keys().map(String::as_str).collect()
    } else {
        hyperparams.iter().map(String::as_str).collect()
    };
    match explored.iter().find(|k| PBT_FIXED.contains(k)) {
        Some(k) => Err(format!(
            "scheduler: PBT would change `{k}` in the middle of a trial, which continues from another trial's checkpoint; list the parameters it may explore in scheduler.hyperparams, without {}",
            PBT_FIXED.join(", ")
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[experiment]
dir = "out"
metric = "loss"
mode = "min"

[searcher]
kind = "tpe"

[scheduler]
kind = "asha"
max_t = 9

[trainable]
kind = "command"
command = ["sh", "-c", "echo loss=1"]

[space]
lr = { type = "loguniform", low = 1e-4, high = 1e-2 }
"#;

    #[test]
    fn a_good_config_parses_with_paths_anchored() {
        let c = TuneConfig::parse(GOOD, "t.toml", Path::new("/base")).unwrap();
        assert_eq!(c.experiment.dir, PathBuf::from("/base/out"));
        assert_eq!(c.experiment.mode, MetricMode::Min);
        assert_eq!(c.iteration_cap(), Some(9));
        assert!(matches!(
            c.searcher,
            SearcherSpec::Tpe { n_startup: 10, .. }
        ));
    }

    #[test]
    fn errors_name_file_line_column_and_key() {
        let bad_range = GOOD.replace("low = 1e-4", "low = -1.0");
        let e = TuneConfig::parse(&bad_range, "t.toml", Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("t.toml:19:6: space.lr: loguniform needs 0 < low"),
            "{e}"
        );
        let unknown = GOOD.replace("kind = \"tpe\"", "kind = \"bayes\"");
        let e = TuneConfig::parse(&unknown, "t.toml", Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.toml:8:") && e.contains("bayes"), "{e}");
        let syntax = GOOD.replace("mode = \"min\"", "mode = ");
        let e = TuneConfig::parse(&syntax, "t.toml", Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.toml:5:"), "{e}");
        let eta = GOOD.replace("max_t = 9", "max_t = 9\nreduction_factor = 1");
        let e = TuneConfig::parse(&eta, "t.toml", Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("scheduler.reduction_factor"), "{e}");
        let field = GOOD.replace("metric = \"loss\"", "metric = \"loss\"\nmetrik = 1");
        let e = TuneConfig::parse(&field, "t.toml", Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.toml:5:1: ") && e.contains("metrik"), "{e}");
    }

    #[test]
    fn hyperband_and_pbt_parse_and_their_errors_are_located() {
        let hb = GOOD.replace(
            "kind = \"asha\"",
            "kind = \"hyperband\"\nreduction_factor = 3",
        );
        let c = TuneConfig::parse(&hb, "t.toml", Path::new("/")).unwrap();
        assert_eq!(c.iteration_cap(), Some(9));
        let bad = hb.replace("reduction_factor = 3", "reduction_factor = 1");
        let e = TuneConfig::parse(&bad, "t.toml", Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("t.toml:10:") && e.contains("scheduler.reduction_factor"),
            "{e}"
        );
        let pbt = GOOD.replace(
            "kind = \"asha\"\nmax_t = 9",
            "kind = \"pbt\"\nperturbation_interval = 2\nhyperparams = [\"lr\"]",
        );
        let c = TuneConfig::parse(&pbt, "t.toml", Path::new("/")).unwrap();
        assert_eq!(c.iteration_cap(), None);
        let bad = pbt.replace("[\"lr\"]", "[\"momentum\"]");
        let e = TuneConfig::parse(&bad, "t.toml", Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("t.toml:10:") && e.contains("`momentum` is not a parameter"),
            "{e}"
        );
        let bad = pbt.replace("perturbation_interval = 2", "perturbation_interval = 0");
        let e = TuneConfig::parse(&bad, "t.toml", Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("scheduler.perturbation_interval"), "{e}");
    }

    /// A grid larger than max_trials would be cut silently: an error.
    #[test]
    fn a_grid_larger_than_max_trials_is_refused() {
        let grid = GOOD
            .replace("kind = \"tpe\"", "kind = \"grid\"")
            .replace(
                "lr = { type = \"loguniform\", low = 1e-4, high = 1e-2 }",
                "lr = { type = \"grid\", values = [1, 2, 3, 4] }\nb = { type = \"grid\", values = [1, 2, 3] }",
            );
        let e = TuneConfig::parse(&grid, "t.toml", Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the grid has 12 points but max_trials is 10"),
            "{e}"
        );
        let fits = grid.replace("[experiment]\n", "[experiment]\nmax_trials = 12\n");
        let ok = TuneConfig::parse(&fits, "t.toml", Path::new("/"));
        assert!(ok.is_ok(), "{ok:?}");
    }

    /// PBT on the digits trainable may not explore what changes the data a
    /// checkpoint was trained on or its shape; a command trainable may.
    #[test]
    fn pbt_on_digits_refuses_to_explore_the_split_scaling_or_shape() {
        let digits = GOOD
            .replace(
                "kind = \"asha\"\nmax_t = 9",
                "kind = \"pbt\"\nperturbation_interval = 2",
            )
            .replace(
                "kind = \"command\"\ncommand = [\"sh\", \"-c\", \"echo loss=1\"]",
                "kind = \"digits\"\nconfig = \"train.toml\"",
            );
        let ok = TuneConfig::parse(&digits, "t.toml", Path::new("/"));
        assert!(ok.is_ok(), "{ok:?}");
        for key in ["split_seed", "standardize", "hidden", "layers"] {
            let space = match key {
                "standardize" => "{ type = \"choice\", values = [true, false] }",
                _ => "{ type = \"int\", low = 1, high = 3 }",
            };
            let bad = format!("{digits}{key} = {space}\n");
            let e = TuneConfig::parse(&bad, "t.toml", Path::new("/"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("PBT would change `{key}`")),
                "{key}: {e}"
            );
            // Named out of what PBT explores: fine.
            let listed = bad.replace(
                "perturbation_interval = 2",
                "perturbation_interval = 2\nhyperparams = [\"lr\"]",
            );
            let ok = TuneConfig::parse(&listed, "t.toml", Path::new("/"));
            assert!(ok.is_ok(), "{key}: {ok:?}");
        }
        // A command trainable explores what it likes.
        let command = GOOD.replace(
            "kind = \"asha\"\nmax_t = 9",
            "kind = \"pbt\"\nperturbation_interval = 2",
        ) + "split_seed = { type = \"int\", low = 1, high = 3 }\n";
        let ok = TuneConfig::parse(&command, "t.toml", Path::new("/"));
        assert!(ok.is_ok(), "{ok:?}");
    }
}
