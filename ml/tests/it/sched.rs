//! Synchronous HyperBand, PBT and the mode without persistence, end to end
//! through `run` with Rust trainables and the digits trainable.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use manta_ml::tune::store::Store;
use manta_ml::tune::{
    Event, Metrics, Trainable, Trainables, TrialInfo, TuneConfig, TuneError, run,
};

fn io(dir: &Path, e: std::io::Error) -> TuneError {
    TuneError::Io {
        path: dir.display().to_string(),
        source: e,
    }
}

/// `x` grows by `rate` every iteration; the score is `x`. A checkpoint is
/// the file `state` with `x` and the iteration; the first result after a
/// restore reports the restored `x` as `restored_x`.
struct Walker {
    rate: f64,
    x: f64,
    it: u64,
    restored: Option<f64>,
}

impl Trainable for Walker {
    fn step(&mut self) -> Result<Metrics, TuneError> {
        self.it += 1;
        self.x += self.rate;
        let mut m = Metrics::new();
        m.insert("score".into(), self.x);
        if let Some(r) = self.restored.take() {
            m.insert("restored_x".into(), r);
        }
        Ok(m)
    }
    fn save(&mut self, dir: &Path) -> Result<(), TuneError> {
        let p = dir.join("state");
        std::fs::write(&p, format!("{} {}", self.x, self.it)).map_err(|e| io(&p, e))
    }
    fn restore(&mut self, dir: &Path) -> Result<(), TuneError> {
        let p = dir.join("state");
        let s = std::fs::read_to_string(&p).map_err(|e| io(&p, e))?;
        let (x, it) = s
            .split_once(' ')
            .ok_or_else(|| TuneError::Actor(format!("bad state {s:?}")))?;
        self.x = x.parse().map_err(|_| TuneError::Actor("bad x".into()))?;
        self.it = it.parse().map_err(|_| TuneError::Actor("bad it".into()))?;
        self.restored = Some(self.x);
        Ok(())
    }
}

fn walkers() -> Trainables {
    Trainables::new().with("walker", |info: &TrialInfo| {
        Ok(Box::new(Walker {
            rate: info.params["rate"].as_f64().unwrap_or(0.1),
            x: 0.0,
            it: 0,
            restored: None,
        }) as Box<dyn Trainable>)
    })
}

fn config(dir: &Path, body: &str) -> TuneConfig {
    let text = format!(
        "[experiment]\ndir = {:?}\nmetric = \"score\"\nmode = \"max\"\n{body}",
        dir.display().to_string()
    );
    TuneConfig::parse(&text, "test.toml", dir).unwrap()
}

fn events() -> (Arc<Mutex<Vec<Event>>>, impl FnMut(&Event)) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = Arc::clone(&log);
    (log, move |e: &Event| l.lock().unwrap().push(e.clone()))
}

/// HyperBand (R = 9, η = 3) over walkers of random rates, `max_trials`
/// of them, 3 at once.
fn hyperband_walkers(dir: &Path, max_trials: u64) -> TuneConfig {
    config(
        dir,
        &format!(
            r#"max_trials = {max_trials}
max_concurrent = 3
seed = 4
checkpoint_every = 100
[searcher]
kind = "random"
[scheduler]
kind = "hyperband"
max_t = 9
reduction_factor = 3
[trainable]
kind = "rust"
name = "walker"
[space]
rate = {{ type = "uniform", low = 0.0, high = 1.0 }}
"#
        ),
    )
}

/// R = 9, η = 3: brackets of 9 (rungs 1, 3, 9), 5 (3, 9) and 3 (9)
/// trials. The score grows with the rate, so the promotions are known:
/// the fastest third of each rung.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyperband_runs_each_rung_to_completion_then_continues_the_top_third_from_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = hyperband_walkers(tmp.path(), 17);
    let (log, on) = events();
    let s = run(cfg, &walkers(), false, on).await.unwrap();
    let st = Store::open(tmp.path()).unwrap().0;
    let trials = st.trials().unwrap();
    let results = st.results().unwrap();
    assert_eq!(trials.len(), 17);
    let completed = s.trials.get("completed").copied().unwrap_or(0);
    let stopped = s.trials.get("stopped").copied().unwrap_or(0);
    assert_eq!(completed + stopped, 17, "{:?}", s.trials);
    let rate = |t: u64| trials[t as usize].params["rate"].as_f64().unwrap();
    let reached = |t: u64| trials[t as usize].iteration;
    // The fastest `k` of `ids`.
    let top = |ids: &[u64], k: usize| {
        let mut v = ids.to_vec();
        v.sort_by(|a, b| rate(*b).total_cmp(&rate(*a)));
        let mut t = v[..k].to_vec();
        t.sort();
        t
    };
    let at_least = |ids: &[u64], it: u64| {
        let mut v: Vec<u64> = ids.iter().copied().filter(|&t| reached(t) >= it).collect();
        v.sort();
        v
    };
    // Bracket 0: nine trials to 1, three to 3, one to 9.
    let b0: Vec<u64> = (0..9).collect();
    assert!(b0.iter().all(|&t| reached(t) >= 1));
    assert_eq!(at_least(&b0, 2), top(&b0, 3));
    assert_eq!(at_least(&b0, 4), top(&b0, 1));
    assert_eq!(reached(top(&b0, 1)[0]), 9);
    // Bracket 1: five trials to 3, one to 9. Bracket 2: three to 9.
    let b1: Vec<u64> = (9..14).collect();
    assert!(b1.iter().all(|&t| reached(t) == 3 || reached(t) == 9));
    assert_eq!(at_least(&b1, 4), top(&b1, 1));
    assert!((14..17).all(|t| reached(t) == 9));
    // Synchronous: no trial of bracket 0 ran iteration 2 before every
    // trial of it had reported iteration 1.
    let time = |t: u64, it: u64| {
        results
            .iter()
            .find(|r| r.trial == t && r.iteration == it)
            .map(|r| r.time)
    };
    let last_rung1 = b0
        .iter()
        .filter_map(|&t| time(t, 1))
        .fold(f64::MIN, f64::max);
    let first_it2 = b0
        .iter()
        .filter_map(|&t| time(t, 2))
        .fold(f64::MAX, f64::min);
    assert!(first_it2 >= last_rung1, "{first_it2} < {last_rung1}");
    // Promoted trials continued from their rung's checkpoint (all but the
    // one that completed the rung: its answer came at once, no pause).
    let restored = top(&b0, 3)
        .into_iter()
        .filter(|&t| {
            results
                .iter()
                .any(|r| r.trial == t && r.iteration == 2 && r.metrics.contains_key("restored_x"))
        })
        .count();
    assert!(restored >= 2, "{restored} of 3 promoted trials restored");
    // Every iteration stored once, none paused at the end.
    let reported: u64 = trials.iter().map(|t| t.iteration).sum();
    assert_eq!(results.len() as u64, reported);
    assert!(trials.iter().all(|t| t.state != "paused"));
    assert_eq!((completed, stopped), (5, 12));
    let ended = log
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::Ended { .. }))
        .count();
    assert!(ended >= 17);
}

/// Every file under `dir` with the name `name`, with its contents.
fn files_named(dir: &Path, name: &str, out: &mut Vec<(std::path::PathBuf, Vec<u8>)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_named(&p, name, out);
        } else if p.file_name().is_some_and(|n| n == name) {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbt_copies_a_better_trials_checkpoint_and_explores_its_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        tmp.path(),
        r#"max_trials = 4
max_concurrent = 4
seed = 2
checkpoint_every = 100
[searcher]
kind = "grid"
[scheduler]
kind = "pbt"
perturbation_interval = 2
quantile_fraction = 0.25
resample_probability = 0.0
[stop]
max_iterations = 20
[trainable]
kind = "rust"
name = "walker"
[space]
rate = { type = "grid", values = [0.01, 0.5, 0.8, 1.0] }
"#,
    );
    let (log, on) = events();
    let s = run(cfg, &walkers(), false, on).await.unwrap();
    assert_eq!(s.trials.get("completed"), Some(&4), "{:?}", s.trials);
    let st = Store::open(tmp.path()).unwrap().0;
    let results = st.results().unwrap();
    // The exploits: directories `checkpoint-<it>-from-<donor>`.
    let mut copies = Vec::new();
    files_named(&tmp.path().join("trials"), "state", &mut copies);
    let exploits: Vec<_> = copies
        .iter()
        .filter(|(p, _)| p.parent().unwrap().to_string_lossy().contains("-from-"))
        .collect();
    assert!(!exploits.is_empty(), "no trial exploited another");
    let log = log.lock().unwrap();
    for (path, bytes) in &exploits {
        let cp = path.parent().unwrap();
        let name = cp.file_name().unwrap().to_string_lossy().to_string();
        let (it, donor) = name
            .strip_prefix("checkpoint-")
            .unwrap()
            .split_once("-from-")
            .unwrap();
        let (it, donor): (u64, u64) = (it.parse().unwrap(), donor.parse().unwrap());
        let trial: u64 = cp
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .parse()
            .unwrap();
        assert_ne!(trial, donor);
        // The copy holds exactly the bytes of one of the donor's checkpoints.
        let mut donors = Vec::new();
        files_named(
            &tmp.path().join("trials").join(format!("{donor:05}")),
            "state",
            &mut donors,
        );
        assert!(
            donors.iter().any(|(p, b)| b == bytes && p != path),
            "{} is no copy of a checkpoint of trial {donor}",
            path.display()
        );
        // The trial continued from the copy: its next result saw its `x`.
        let x: f64 = std::str::from_utf8(bytes)
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let next = results
            .iter()
            .find(|r| r.trial == trial && r.iteration == it + 1)
            .unwrap();
        assert_eq!(
            next.metrics.get("restored_x"),
            Some(&x),
            "trial {trial}, copy {}; its results (iteration, score, restored_x): {:?}; every checkpoint: {:?}; events: {:?}",
            path.display(),
            results
                .iter()
                .filter(|r| r.trial == trial)
                .map(|r| (
                    r.iteration,
                    r.metrics.get("score"),
                    r.metrics.get("restored_x")
                ))
                .collect::<Vec<_>>(),
            copies
                .iter()
                .map(|(p, b)| (
                    p.display().to_string(),
                    String::from_utf8_lossy(b).to_string()
                ))
                .collect::<Vec<_>>(),
            log.iter().map(|e| format!("{e:?}")).collect::<Vec<_>>()
        );
        // It restarted with the donor's rate × 0.8 or × 1.2 (in [0, 1]
        // for the grid's neighbours: a grid moves to a neighbouring value).
        let starts: Vec<&serde_json::Value> = log
            .iter()
            .filter_map(|e| match e {
                Event::Started {
                    trial: t, params, ..
                } if *t == trial => Some(&params["rate"]),
                _ => None,
            })
            .collect();
        assert!(starts.len() >= 2, "trial {trial} restarted");
        let options = [0.01, 0.5, 0.8, 1.0];
        for r in starts {
            assert!(options.contains(&r.as_f64().unwrap()), "rate {r}");
        }
    }
    // Exploits changed parameters: some trial ends with a rate other than
    // the one it started with.
    let trials = st.trials().unwrap();
    let first: BTreeMap<u64, serde_json::Value> = log
        .iter()
        .filter_map(|e| match e {
            Event::Started {
                trial,
                params,
                attempt: 0,
                ..
            } => Some((*trial, params["rate"].clone())),
            _ => None,
        })
        .collect();
    assert!(
        trials.iter().any(|t| t.params["rate"] != first[&t.id]),
        "no parameters changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbt_over_continuous_parameters_stays_in_bounds() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        tmp.path(),
        r#"max_trials = 6
max_concurrent = 6
seed = 9
[searcher]
kind = "random"
[scheduler]
kind = "pbt"
perturbation_interval = 1
quantile_fraction = 0.5
resample_probability = 0.3
[stop]
max_iterations = 12
[trainable]
kind = "rust"
name = "walker"
[space]
rate = { type = "uniform", low = 0.2, high = 0.6 }
"#,
    );
    let (log, on) = events();
    let s = run(cfg, &walkers(), false, on).await.unwrap();
    assert_eq!(s.trials.get("completed"), Some(&6), "{:?}", s.trials);
    let log = log.lock().unwrap();
    let rates: Vec<f64> = log
        .iter()
        .filter_map(|e| match e {
            Event::Started { params, .. } => params["rate"].as_f64(),
            _ => None,
        })
        .collect();
    assert!(rates.len() > 6, "no trial was restarted by an exploit");
    assert!(
        rates.iter().all(|r| (0.2..=0.6).contains(r)),
        "{rates:?} outside [0.2, 0.6]"
    );
}

/// PBT over the digits trainable: trials take a better trial's model and
/// optimizer state (the checkpoint) with an explored learning rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pbt_over_the_digits_trainable_runs_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("train.toml");
    std::fs::write(
        &base,
        format!(
            "job = \"t\"\n[data]\npath = {:?}\nscale = 0.0625\n[model]\nhidden = [32]\n[training]\nepochs = 6\nbatch_size = 64\n",
            crate::digits().path.display().to_string()
        ),
    )
    .unwrap();
    let text = format!(
        r#"[experiment]
dir = {:?}
metric = "val_accuracy"
mode = "max"
max_trials = 4
max_concurrent = 4
seed = 1
[searcher]
kind = "grid"
[scheduler]
kind = "pbt"
perturbation_interval = 2
quantile_fraction = 0.25
resample_probability = 0.0
hyperparams = ["lr"]
[trainable]
kind = "digits"
config = "train.toml"
[space]
lr = {{ type = "grid", values = [0.0001, 0.0003, 0.003, 0.01] }}
"#,
        tmp.path().join("exp").display().to_string()
    );
    let cfg = TuneConfig::parse(&text, "t.toml", tmp.path()).unwrap();
    let s = run(cfg, &Trainables::new(), false, |_| {}).await.unwrap();
    assert_eq!(s.trials.get("completed"), Some(&4), "{:?}", s.trials);
    let best = s.best.unwrap();
    assert!(best.metric > 0.8, "{best:?}");
    let mut copies = Vec::new();
    files_named(&tmp.path().join("exp/trials"), "digits.json", &mut copies);
    assert!(
        copies
            .iter()
            .any(|(p, _)| p.to_string_lossy().contains("-from-")),
        "no digits trial exploited another"
    );
}

/// `persist = false`: the experiment runs in memory and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_persistence_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("exp");
    let mut cfg = config(
        &dir,
        r#"max_trials = 20
max_concurrent = 2
persist = false
[searcher]
kind = "random"
[scheduler]
kind = "asha"
max_t = 9
[trainable]
kind = "rust"
name = "walker"
[space]
rate = { type = "uniform", low = 0.0, high = 1.0 }
"#,
    );
    assert!(!cfg.experiment.persist);
    let s = run(cfg.clone(), &walkers(), false, |_| {}).await.unwrap();
    assert!(!dir.exists(), "{} was created", dir.display());
    assert_eq!(s.trials.values().sum::<u64>(), 20);
    assert!(s.results >= 20, "{}", s.results);
    assert!(s.files.is_empty());
    let best = s.best.unwrap();
    assert!(best.metric > 1.0, "{best:?}");
    // The same experiment persisted writes its store.
    cfg.experiment.persist = true;
    run(cfg, &walkers(), false, |_| {}).await.unwrap();
    assert!(dir.join("experiment.db").is_file());
}

/// The PNG plots beside the SVGs: PNG files of the stated size whose
/// pixels hold the curves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn png_plots_are_written_beside_the_svgs() {
    use std::io::Read as _;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        tmp.path(),
        r#"max_trials = 6
max_concurrent = 2
[searcher]
kind = "random"
[stop]
max_iterations = 8
[trainable]
kind = "rust"
name = "walker"
[space]
rate = { type = "uniform", low = 0.0, high = 1.0 }
"#,
    );
    let s = run(cfg, &walkers(), false, |_| {}).await.unwrap();
    for name in ["metric_vs_iteration", "best_over_time"] {
        let p = tmp.path().join("plots").join(format!("{name}.png"));
        assert!(s.files.contains(&p.display().to_string()), "{:?}", s.files);
        let png = std::fs::read(&p).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name}: signature");
        assert_eq!(&png[12..16], b"IHDR");
        let w = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let h = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert_eq!((w, h), (900, 560));
        // Inflate the image data: non-white, non-grey pixels are curves.
        let mut idat = Vec::new();
        let mut i = 8;
        while i + 8 <= png.len() {
            let len = u32::from_be_bytes(png[i..i + 4].try_into().unwrap()) as usize;
            if &png[i + 4..i + 8] == b"IDAT" {
                idat.extend_from_slice(&png[i + 8..i + 8 + len]);
            }
            i += 12 + len;
        }
        let mut raw = Vec::new();
        flate2::read::ZlibDecoder::new(&idat[..])
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(raw.len(), (h * (1 + 3 * w)) as usize);
        let coloured = raw
            .chunks(1 + 3 * w as usize)
            .flat_map(|row| row[1..].chunks(3))
            .filter(|p| !(p[0] == p[1] && p[1] == p[2]))
            .count();
        assert!(coloured > 500, "{name}: {coloured} coloured pixels");
    }
}

/// HyperBand with `max_trials` that cuts the last bracket short (8 trials:
/// the first bracket of R = 9, η = 3 wants 9): the short bracket completes
/// its rungs with the trials it has, so no trial is left paused and the
/// best of them reaches R. (A regression left every trial of such a
/// bracket paused at its first rung.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hyperband_completes_a_bracket_that_max_trials_cuts_short() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = hyperband_walkers(tmp.path(), 8);
    let (_log, on) = events();
    let s = run(cfg, &walkers(), false, on).await.unwrap();
    let st = Store::open(tmp.path()).unwrap().0;
    let trials = st.trials().unwrap();
    assert_eq!(trials.len(), 8);
    assert_eq!(s.trials.get("paused"), None, "{:?}", s.trials);
    assert!(
        trials.iter().any(|t| t.iteration == 9),
        "one trial reached R: {:?}",
        trials.iter().map(|t| t.iteration).collect::<Vec<_>>()
    );
}

/// `rate` times a curve that peaks at iteration 3 and falls after
/// (`peak`), or a flat `rate` (`flat`).
struct Curve {
    peak: bool,
    rate: f64,
    it: u64,
}

impl Trainable for Curve {
    fn step(&mut self) -> Result<Metrics, TuneError> {
        self.it += 1;
        let shape = if !self.peak {
            1.0
        } else if self.it <= 3 {
            self.it as f64
        } else {
            6.0 - self.it as f64
        };
        let mut m = Metrics::new();
        m.insert("score".into(), self.rate * shape);
        Ok(m)
    }
    fn save(&mut self, dir: &Path) -> Result<(), TuneError> {
        let p = dir.join("state");
        std::fs::write(&p, self.it.to_string()).map_err(|e| io(&p, e))
    }
    fn restore(&mut self, dir: &Path) -> Result<(), TuneError> {
        let p = dir.join("state");
        let s = std::fs::read_to_string(&p).map_err(|e| io(&p, e))?;
        self.it = s.parse().map_err(|_| TuneError::Actor("bad it".into()))?;
        Ok(())
    }
}

/// The best trial is the one whose *deployed* weights score best: a trial
/// whose score peaked (3) and fell back (1 at its last checkpoint) loses
/// to a flat one (2), where ranking on best-ever results picked the
/// peaked trial and deployed weights that scored 1. `manta tune`'s
/// summary and serving's `best_checkpoint` name the same trial, with the
/// score and iteration of the checkpoint served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_best_trial_is_scored_at_the_checkpoint_serving_deploys() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        tmp.path(),
        r#"max_trials = 2
max_concurrent = 2
seed = 1
checkpoint_every = 1
[searcher]
kind = "grid"
[stop]
max_iterations = 5
[trainable]
kind = "rust"
name = "curve"
[space]
shape = { type = "grid", values = ["peak", "flat"] }
"#,
    );
    let trainables = Trainables::new().with("curve", |info: &TrialInfo| {
        let peak = info.params["shape"].as_str() == Some("peak");
        Ok(Box::new(Curve {
            peak,
            rate: if peak { 1.0 } else { 2.0 },
            it: 0,
        }) as Box<dyn Trainable>)
    });
    let (_log, on) = events();
    let s = run(cfg, &trainables, false, on).await.unwrap();
    let best = s.best.expect("a best trial");
    let served = manta_ml::tune::store::best_checkpoint(tmp.path()).unwrap();
    let st = Store::open(tmp.path()).unwrap().0;
    let flat = st
        .trials()
        .unwrap()
        .into_iter()
        .find(|t| t.params["shape"].as_str() == Some("flat"))
        .unwrap()
        .id;
    assert_eq!((best.trial, served.trial), (flat, flat));
    assert_eq!((served.metric, served.iteration), (2.0, 5));
    assert_eq!((best.metric, best.iteration), (2.0, Some(5)));
}

/// A trial that ran and reported, but never the experiment's metric (here
/// a misspelt `scor`), ends in error naming the metric and what it did
/// report, not as a silent, unranked completed trial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_that_never_reports_the_metric_ends_in_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        "[experiment]\ndir = {:?}\nmetric = \"scor\"\nmode = \"max\"\n{}",
        tmp.path().display().to_string(),
        r#"max_trials = 2
max_concurrent = 2
seed = 1
[searcher]
kind = "random"
[stop]
max_iterations = 3
[trainable]
kind = "rust"
name = "walker"
[space]
rate = { type = "uniform", low = 0.0, high = 1.0 }
"#
    );
    let cfg = TuneConfig::parse(&text, "test.toml", tmp.path()).unwrap();
    let (_log, on) = events();
    let s = run(cfg, &walkers(), false, on).await.unwrap();
    assert_eq!(s.trials.get("error"), Some(&2), "{:?}", s.trials);
    assert!(s.best.is_none());
    let st = Store::open(tmp.path()).unwrap().0;
    for t in st.trials().unwrap() {
        let e = t.error.unwrap_or_default();
        assert!(
            e.contains("without reporting `scor`") && e.contains("score"),
            "{e}"
        );
    }
}

/// PBT over a command trainable in this process: a trial that exploits
/// another continues from the donor's checkpoint, which the command finds
/// in its own `MANTA_CHECKPOINT_DIR` (before, the command was pointed at
/// its own old checkpoint and got the donor's parameters on its own
/// weights). The script's state is `x`, growing by `rate` per iteration;
/// the first line after a restore reports the `x` it found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pbt_exploit_gives_a_command_the_donors_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("walk.sh");
    std::fs::write(
        &script,
        r#"#!/bin/sh
# Both trials run together (PBT ranks the running ones): each waits, at
# most 10 s, until the other has started.
touch "$BARRIER/started-$MANTA_TRIAL_ID"
n=0
while [ ! -f "$BARRIER/started-0" ] || [ ! -f "$BARRIER/started-1" ]; do
  n=$((n+1)); [ $n -gt 1000 ] && break
  sleep 0.01
done
i=$MANTA_RESUME_ITERATION
x=0
restored=""
if [ -f "$MANTA_CHECKPOINT_DIR/x" ]; then
  x=$(cat "$MANTA_CHECKPOINT_DIR/x")
  restored=" restored_x=$x"
fi
other=$((1 - MANTA_TRIAL_ID))
while [ $i -lt 24 ]; do
  i=$((i+1))
  x=$(awk "BEGIN { print $x + $MANTA_PARAM_RATE }")
  echo "$x" > "$MANTA_CHECKPOINT_DIR/x"
  echo "iteration=$i score=$x$restored"
  restored=""
  # Roughly in step with the other trial (waiting at most 2 s: a trial
  # being exploited is stopped and started again meanwhile), so that PBT
  # sees both running at its intervals.
  touch "$BARRIER/it-$MANTA_TRIAL_ID-$i"
  n=0
  while [ ! -f "$BARRIER/it-$other-$i" ] && [ ! -f "$BARRIER/done-$other" ]; do
    n=$((n+1)); [ $n -gt 200 ] && break
    sleep 0.01
  done
done
touch "$BARRIER/done-$MANTA_TRIAL_ID"
"#,
    )
    .unwrap();
    let cfg = config(
        tmp.path(),
        &format!(
            r#"max_trials = 2
max_concurrent = 2
seed = 3
[searcher]
kind = "grid"
[scheduler]
kind = "pbt"
perturbation_interval = 2
quantile_fraction = 0.5
resample_probability = 0.0
[trainable]
kind = "command"
command = ["sh", {:?}]
env = {{ BARRIER = {:?} }}
[space]
rate = {{ type = "grid", values = [1.0, 100.0] }}
"#,
            script.display().to_string(),
            tmp.path().display().to_string()
        ),
    );
    let (_log, on) = events();
    let s = run(cfg, &Trainables::new(), false, on).await.unwrap();
    assert_eq!(s.trials.get("completed"), Some(&2), "{:?}", s.trials);
    let st = Store::open(tmp.path()).unwrap().0;
    let restored: Vec<f64> = st
        .results()
        .unwrap()
        .into_iter()
        .filter_map(|r| r.metrics.get("restored_x").copied())
        .collect();
    assert!(!restored.is_empty(), "no trial was restored");
    // The slow trial's own x is at most 24; the donor's at least 100.
    assert!(
        restored.iter().all(|&x| x >= 100.0),
        "restored from its own checkpoint: {restored:?}"
    );
}
