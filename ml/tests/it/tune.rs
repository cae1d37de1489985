//! The tuner through its public API: Rust trainables, retries from
//! checkpoints, external commands (real processes), the store, the digits
//! trainable.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use manta_ml::tune::store::Store;
use manta_ml::tune::{
    Event, Metrics, Trainable, Trainables, TrialInfo, TrialState, TuneConfig, TuneError, run,
};

/// A learning curve `1 - exp(-rate * t)`; fails once at `fail_at` (first
/// attempt only); reports the iteration it was restored from.
struct Curve {
    rate: f64,
    it: u64,
    fail_at: Option<u64>,
    attempt: u64,
    restored: f64,
}

impl Trainable for Curve {
    fn step(&mut self) -> Result<Metrics, TuneError> {
        self.it += 1;
        if self.attempt == 0 && self.fail_at == Some(self.it) {
            return Err(TuneError::Actor(format!("scripted failure at {}", self.it)));
        }
        let mut m = Metrics::new();
        m.insert("score".into(), 1.0 - (-self.rate * self.it as f64).exp());
        m.insert("restored_from".into(), self.restored);
        Ok(m)
    }
    fn save(&mut self, dir: &Path) -> Result<(), TuneError> {
        std::fs::write(dir.join("it"), self.it.to_string()).map_err(|e| TuneError::Io {
            path: dir.display().to_string(),
            source: e,
        })
    }
    fn restore(&mut self, dir: &Path) -> Result<(), TuneError> {
        let s = std::fs::read_to_string(dir.join("it")).map_err(|e| TuneError::Io {
            path: dir.display().to_string(),
            source: e,
        })?;
        self.it = s
            .trim()
            .parse()
            .map_err(|_| TuneError::Actor("bad".into()))?;
        self.restored = self.it as f64;
        Ok(())
    }
}

fn curves(fail_at: Option<u64>) -> Trainables {
    Trainables::new().with("curve", move |info: &TrialInfo| {
        Ok(Box::new(Curve {
            rate: info.params["rate"].as_f64().unwrap_or(0.1),
            it: 0,
            fail_at,
            attempt: info.attempt,
            restored: -1.0,
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

fn store(dir: &Path) -> Store {
    Store::open(dir).unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asha_over_rust_trials_stores_every_result_once() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        tmp.path(),
        r#"max_trials = 24
max_concurrent = 3
seed = 1
[searcher]
kind = "random"
[scheduler]
kind = "asha"
grace_period = 1
reduction_factor = 3
max_t = 9
[trainable]
kind = "rust"
name = "curve"
[space]
rate = { type = "loguniform", low = 0.01, high = 2.0 }
"#,
    );
    let (log, on) = events();
    let s = run(cfg, &curves(None), false, on).await.unwrap();
    let st = store(tmp.path());
    let trials = st.trials().unwrap();
    let results = st.results().unwrap();
    eprintln!("trials {:?}, results {}", s.trials, s.results);
    assert_eq!(trials.len(), 24);
    // Every trial ended; ASHA stopped some early, the rest completed at max_t.
    let completed = s.trials.get("completed").copied().unwrap_or(0);
    let stopped = s.trials.get("stopped").copied().unwrap_or(0);
    assert_eq!(completed + stopped, 24, "{:?}", s.trials);
    assert!(stopped >= 8 && completed >= 1, "{:?}", s.trials);
    // One row per (trial, iteration), as many as iterations reported.
    let reported: u64 = trials.iter().map(|t| t.iteration).sum();
    assert_eq!(results.len() as u64, reported);
    assert_eq!(s.results, reported);
    for t in &trials {
        assert!(t.iteration <= 9);
        if t.state == "completed" {
            assert_eq!(t.iteration, 9);
        }
    }
    // The best trial is the fastest curve among those that ran longest.
    let best = s.best.unwrap();
    let best_rate = best.config["rate"].as_f64().unwrap();
    let top = trials
        .iter()
        .filter(|t| t.state == "completed")
        .map(|t| t.params["rate"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(best_rate, top);
    assert!(best.checkpoint.unwrap().contains("checkpoint-000009"));
    // Exports and plots.
    for f in [
        "results.csv",
        "trials.csv",
        "summary.json",
        "plots/metric_vs_iteration.svg",
        "plots/best_over_time.svg",
    ] {
        let p = tmp.path().join(f);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.len() > 100, "{f} is short");
    }
    let csv = std::fs::read_to_string(tmp.path().join("results.csv")).unwrap();
    assert_eq!(csv.lines().count() as u64, reported + 1);
    let svg = std::fs::read_to_string(tmp.path().join("plots/metric_vs_iteration.svg")).unwrap();
    assert!(
        svg.contains("<polyline") || svg.contains("<path"),
        "no lines drawn"
    );
    let n_results = log
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::Result { .. }))
        .count() as u64;
    assert_eq!(n_results, reported);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_trial_is_retried_from_its_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        tmp.path(),
        r#"max_trials = 2
max_concurrent = 2
max_failures = 1
checkpoint_every = 2
[stop]
max_iterations = 6
[trainable]
kind = "rust"
name = "curve"
[space]
rate = { type = "uniform", low = 0.1, high = 0.5 }
"#,
    );
    let (log, on) = events();
    let s = run(cfg, &curves(Some(5)), false, on).await.unwrap();
    assert_eq!(s.trials.get("completed"), Some(&2), "{:?}", s.trials);
    let st = store(tmp.path());
    for t in st.trials().unwrap() {
        assert_eq!(t.attempts, 2, "trial {} failed once, ran twice", t.id);
        assert_eq!(t.iteration, 6);
        assert!(
            t.error
                .as_deref()
                .unwrap()
                .contains("scripted failure at 5")
        );
    }
    let results = st.results().unwrap();
    assert_eq!(results.len(), 12, "six results per trial, none twice");
    // Iteration 5 and 6 come from the second attempt, restored at 4.
    for r in results.iter().filter(|r| r.iteration >= 5) {
        assert_eq!(r.metrics["restored_from"], 4.0, "{r:?}");
    }
    let restarts: Vec<u64> = log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Started {
                attempt: 1,
                from_iteration,
                ..
            } => Some(*from_iteration),
            _ => None,
        })
        .collect();
    assert_eq!(restarts, [4, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_failing_past_max_failures_ends_in_error() {
    let tmp = tempfile::tempdir().unwrap();
    let always = Trainables::new().with("bad", |_: &TrialInfo| {
        Err::<Box<dyn Trainable>, _>(TuneError::Actor("cannot start".into()))
    });
    let cfg = config(
        tmp.path(),
        "max_trials = 1\nmax_failures = 2\n[trainable]\nkind = \"rust\"\nname = \"bad\"\n",
    );
    let s = run(cfg, &always, false, |_| {}).await.unwrap();
    assert_eq!(s.trials.get("error"), Some(&1));
    let t = &store(tmp.path()).trials().unwrap()[0];
    assert_eq!(t.attempts, 3);
    assert!(
        t.error.as_deref().unwrap().contains("cannot start"),
        "{t:?}"
    );
    assert!(s.best.is_none());
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    p
}

fn command_config(dir: &Path, script: &Path, extra: &str) -> TuneConfig {
    config(
        dir,
        &format!(
            r#"max_trials = 2
max_concurrent = 2
max_failures = 0
{extra}
[trainable]
kind = "command"
command = ["sh", {:?}]
[space]
k = {{ type = "grid", values = [1, 2] }}
"#,
            script.display().to_string()
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_command_reports_every_line_even_the_last_before_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = tmp.path().join("exp");
    // Five results as fast as the shell prints them; the last one is
    // printed right before the exit. Parameters come as args and env.
    let sc = script(
        tmp.path(),
        "trial.sh",
        r#"i=$MANTA_RESUME_ITERATION
[ "$1" = "--k=$MANTA_PARAM_K" ] || { echo "args $* do not match env" >&2; exit 3; }
[ -d "$MANTA_CHECKPOINT_DIR" ] || exit 4
echo "starting trial $MANTA_TRIAL_ID"
while [ $i -lt 5 ]; do
  i=$((i+1))
  echo "score=$((i * MANTA_PARAM_K)) iteration=$i"
done
exit 0"#,
    );
    let cfg = command_config(&exp, &sc, "[searcher]\nkind = \"grid\"");
    let s = run(cfg, &Trainables::new(), false, |_| {}).await.unwrap();
    assert_eq!(s.trials.get("completed"), Some(&2), "{:?}", s.trials);
    let results = store(&exp).results().unwrap();
    assert_eq!(results.len(), 10);
    let last: Vec<f64> = results
        .iter()
        .filter(|r| r.iteration == 5)
        .map(|r| r.metric.unwrap())
        .collect();
    assert_eq!(last, [5.0, 10.0]);
    assert_eq!(s.best.unwrap().metric, 10.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_commands_that_fail_print_garbage_or_nothing_end_in_error() {
    for (name, body, why) in [
        ("nonzero.sh", "echo score=1\nexit 7", "status 7"),
        (
            "garbage.sh",
            "echo 'score: high'\necho '=='\nprintf '\\377\\376\\n'\necho 'score=abc'",
            "without printing a metric line (4 other lines)",
        ),
        (
            "nothing.sh",
            "exit 0",
            "without printing a metric line (0 other lines)",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let sc = script(tmp.path(), name, body);
        let cfg = command_config(&tmp.path().join("exp"), &sc, "");
        let s = run(cfg, &Trainables::new(), false, |_| {}).await.unwrap();
        assert_eq!(s.trials.get("error"), Some(&2), "{name}: {:?}", s.trials);
        for t in store(&tmp.path().join("exp")).trials().unwrap() {
            let e = t.error.unwrap();
            assert!(e.contains(why), "{name}: {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_never_exits_is_killed_at_the_time_budget() {
    let tmp = tempfile::tempdir().unwrap();
    // The shell starts a child that holds stdout open: the whole process
    // group must go.
    let sc = script(
        tmp.path(),
        "hang.sh",
        "echo score=1\nsleep 1000\necho score=2",
    );
    let cfg = command_config(&tmp.path().join("exp"), &sc, "[stop]\ntime_budget_s = 1.0");
    let started = std::time::Instant::now();
    let s = run(cfg, &Trainables::new(), false, |_| {}).await.unwrap();
    assert!(started.elapsed().as_secs() < 30);
    assert_eq!(s.trials.get("terminated"), Some(&2), "{:?}", s.trials);
    assert_eq!(s.results, 2);
}

#[tokio::test]
async fn foreign_and_corrupt_stores_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("experiment.db"),
        b"not a database at all, just text\n".repeat(200),
    )
    .unwrap();
    let e = Store::open(tmp.path()).unwrap_err().to_string();
    assert!(e.contains("is not a manta tune experiment store"), "{e}");
    // A real SQLite file of another application.
    let other = tempfile::tempdir().unwrap();
    let c = rusqlite::Connection::open(other.path().join("experiment.db")).unwrap();
    c.execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('hi');")
        .unwrap();
    drop(c);
    let e = Store::open(other.path()).unwrap_err().to_string();
    assert!(e.contains("application_id 0x0"), "{e}");
    // A store whose pages were overwritten in the middle.
    let bad = tempfile::tempdir().unwrap();
    let cfg = config(bad.path(), "[trainable]\nkind = \"rust\"\nname = \"x\"\n");
    drop(Store::create(bad.path(), &cfg).unwrap());
    let db = bad.path().join("experiment.db");
    let mut bytes = std::fs::read(&db).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n / 2..] {
        *b = 0x5a;
    }
    std::fs::write(&db, bytes).unwrap();
    let _ = std::fs::remove_file(bad.path().join("experiment.db-wal"));
    let e = Store::open(bad.path()).unwrap_err().to_string();
    assert!(
        e.contains("corrupt") || e.contains("not a manta tune"),
        "{e}"
    );
    // No store at all.
    let empty = tempfile::tempdir().unwrap();
    let e = Store::open(empty.path()).unwrap_err().to_string();
    assert!(e.contains("no experiment store"), "{e}");
    // A version 1 store (before `node`, `node_losses`, `pauses`) is
    // upgraded in place and keeps its rows; a newer version is refused.
    let v1 = tempfile::tempdir().unwrap();
    let cfg1 = config(v1.path(), "[trainable]\nkind = \"rust\"\nname = \"x\"\n");
    let mut st = Store::create(v1.path(), &cfg1).unwrap();
    st.insert_trial(0, &Default::default()).unwrap();
    st.commit().unwrap();
    drop(st);
    let c = rusqlite::Connection::open(v1.path().join("experiment.db")).unwrap();
    c.execute_batch(
        "ALTER TABLE trials DROP COLUMN node; ALTER TABLE trials DROP COLUMN node_losses;
         ALTER TABLE trials DROP COLUMN pauses; PRAGMA user_version = 1;",
    )
    .unwrap();
    drop(c);
    let (st, _) = Store::open(v1.path()).unwrap();
    let trials = st.trials().unwrap();
    assert_eq!(trials.len(), 1);
    assert_eq!(
        (
            trials[0].node.as_deref(),
            trials[0].node_losses,
            trials[0].pauses
        ),
        (None, 0, 0)
    );
    drop(st);
    let c = rusqlite::Connection::open(v1.path().join("experiment.db")).unwrap();
    let version: i64 = c
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2);
    c.execute_batch("PRAGMA user_version = 3;").unwrap();
    drop(c);
    let e = Store::open(v1.path()).unwrap_err().to_string();
    assert!(e.contains("schema version 3"), "{e}");
    // A new experiment never overwrites one.
    let cfg = config(
        tmp.path(),
        "[trainable]\nkind = \"rust\"\nname = \"curve\"\n",
    );
    let e = run(cfg, &curves(None), false, |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("already holds an experiment"), "{e}");
}

/// `train.toml` in `dir`: the digits, scaled, one hidden layer of 32, 3
/// epochs.
fn small_digits_config(dir: &std::path::Path) -> std::path::PathBuf {
    let base = dir.join("train.toml");
    std::fs::write(
        &base,
        format!(
            "job = \"t\"\n[data]\npath = {:?}\nscale = 0.0625\n[model]\nhidden = [32]\n[training]\nepochs = 3\n",
            crate::digits().path.display().to_string()
        ),
    )
    .unwrap();
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digits_trials_train_report_and_restore_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let base = small_digits_config(tmp.path());
    let info = |attempt| TrialInfo {
        id: 0,
        params: [
            ("lr".to_string(), serde_json::json!(0.003)),
            ("hidden".to_string(), serde_json::json!(48)),
            ("batch_size".to_string(), serde_json::json!(64)),
        ]
        .into_iter()
        .collect(),
        dir: tmp.path().to_path_buf(),
        attempt,
        max_iterations: None,
    };
    let train = manta_ml::TrainConfig::load(&base).unwrap();
    let mut a = manta_ml::tune::DigitsTrainable::new(&train, &info(0), 0.2).unwrap();
    let m1 = a.step().unwrap();
    assert!(m1["val_accuracy"] > 0.5, "{m1:?}");
    assert!(!m1.contains_key("test_accuracy"));
    let cp = tmp.path().join("cp");
    std::fs::create_dir_all(&cp).unwrap();
    a.save(&cp).unwrap();
    let m2 = a.step().unwrap();
    let m3 = a.step().unwrap();
    assert!(
        m3.contains_key("test_accuracy"),
        "last epoch reports test accuracy"
    );
    let mut b = manta_ml::tune::DigitsTrainable::new(&train, &info(1), 0.2).unwrap();
    b.restore(&cp).unwrap();
    assert_eq!(b.step().unwrap(), m2, "restored training continues exactly");
    assert_eq!(b.step().unwrap(), m3);
    // An unknown hyper-parameter is named.
    let mut bad = info(0);
    bad.params.insert("dropout".into(), serde_json::json!(0.1));
    let e = manta_ml::tune::DigitsTrainable::new(&train, &bad, 0.2)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("`dropout`"), "{e}");
    // A foreign checkpoint is refused.
    std::fs::write(cp.join("digits.json"), "{}").unwrap();
    assert!(b.restore(&cp).is_err());
    // And `apply_params` is what trials see.
    assert_eq!(TrialState::Completed.as_str(), "completed");
}

/// A trial on standardized features with a cosine rate: its checkpoint
/// holds the statistics, and `checkpoint_model` (what serving loads) folds
/// them into the first layer, so the served model classifies raw features
/// as the trial did its standardized ones.
#[test]
fn a_standardized_trial_checkpoint_serves_raw_features_with_its_test_accuracy() {
    let tmp = tempfile::tempdir().unwrap();
    let base = small_digits_config(tmp.path());
    let train = manta_ml::TrainConfig::load(&base).unwrap();
    let trial = |standardize: bool| TrialInfo {
        id: 0,
        params: [
            ("lr".to_string(), serde_json::json!(0.003)),
            ("batch_size".to_string(), serde_json::json!(32)),
            ("standardize".to_string(), serde_json::json!(standardize)),
            ("lr_decay".to_string(), serde_json::json!("cosine")),
        ]
        .into_iter()
        .collect(),
        dir: tmp.path().to_path_buf(),
        attempt: 0,
        max_iterations: None,
    };
    let mut t = manta_ml::tune::DigitsTrainable::new(&train, &trial(true), 0.2).unwrap();
    let mut last = t.step().unwrap();
    while !last.contains_key("test_accuracy") {
        last = t.step().unwrap();
    }
    let cp = tmp.path().join("cp");
    std::fs::create_dir_all(&cp).unwrap();
    t.save(&cp).unwrap();
    let saved = std::fs::read_to_string(cp.join("digits.json")).unwrap();
    assert!(saved.contains("\"input\""), "the statistics are saved");
    let (spec, params) = manta_ml::tune::digits::checkpoint_model(&cp).unwrap();
    let (_, raw_test) = train.data.load_split().unwrap();
    let device = Default::default();
    let m = manta_ml::Mlp::<manta_ml::device::CpuBackend>::from_params(&spec, &params, &device)
        .unwrap();
    let served = manta_ml::model::accuracy(&m, &raw_test, &device).unwrap();
    let trained = last["test_accuracy"] as f32;
    assert!(trained > 0.85, "{last:?}");
    assert!(
        (served - trained).abs() <= 1.5 / raw_test.len() as f32,
        "served on raw features {served}, trained on standardized {trained}"
    );
    // The statistics matter: the same trial without them (raw features
    // throughout) is a different model.
    let mut plain = manta_ml::tune::DigitsTrainable::new(&train, &trial(false), 0.2).unwrap();
    let other = plain.step().unwrap();
    let first = manta_ml::tune::DigitsTrainable::new(&train, &trial(true), 0.2)
        .unwrap()
        .step()
        .unwrap();
    assert_ne!(other["loss"], first["loss"]);
    // A bad value is named.
    let mut bad = trial(true);
    bad.params
        .insert("lr_decay".into(), serde_json::json!("linear"));
    let e = manta_ml::tune::DigitsTrainable::new(&train, &bad, 0.2)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("`lr_decay`"), "{e}");
}

/// A crash in the middle of a trial, made by hand in the store (the trial
/// back to `running`, its rows after iteration 4 gone, as if the driver had
/// died there): `resume` rebuilds TPE and ASHA from the store and continues
/// that trial from its checkpoint at 4, and nothing else runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_continues_an_interrupted_trial_from_its_checkpoint_with_tpe_and_asha() {
    let tmp = tempfile::tempdir().unwrap();
    let body = r#"max_trials = 8
max_concurrent = 2
[searcher]
kind = "tpe"
n_startup = 3
[scheduler]
kind = "asha"
grace_period = 1
reduction_factor = 3
max_t = 9
[trainable]
kind = "rust"
name = "curve"
[space]
rate = { type = "loguniform", low = 0.01, high = 2.0 }
"#;
    let first = run(config(tmp.path(), body), &curves(None), false, |_| {})
        .await
        .unwrap();
    let before = store(tmp.path()).trials().unwrap();
    let x = before.iter().find(|t| t.state == "completed").unwrap().id;
    {
        let db = rusqlite::Connection::open(tmp.path().join("experiment.db")).unwrap();
        db.execute_batch(&format!(
            "UPDATE trials SET state = 'running', iteration = 4 WHERE id = {x};
             DELETE FROM results WHERE trial_id = {x} AND iteration > 4;
             DELETE FROM checkpoints WHERE trial_id = {x} AND iteration > 4;
             UPDATE experiment SET finished_at = NULL;"
        ))
        .unwrap();
    }
    let (log, on) = events();
    let second = run(config(tmp.path(), body), &curves(None), true, on)
        .await
        .unwrap();
    assert_eq!(second.results, first.results, "the same rows, none twice");
    assert_eq!(second.trials, first.trials);
    let after = store(tmp.path()).trials().unwrap();
    for (b, a) in before.iter().zip(&after) {
        if a.id == x {
            assert_eq!(a.attempts, 2);
            assert_eq!(a.state, "completed");
        } else {
            assert_eq!(a.attempts, b.attempts, "trial {} ran again", a.id);
        }
    }
    let results = store(tmp.path()).results().unwrap();
    let mine: Vec<_> = results.iter().filter(|r| r.trial == x).collect();
    assert_eq!(mine.len(), 9);
    for r in mine.iter().filter(|r| r.iteration > 4) {
        assert_eq!(r.metrics["restored_from"], 4.0, "{r:?}");
    }
    let started: Vec<(u64, u64)> = log
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Started {
                trial,
                from_iteration,
                ..
            } => Some((*trial, *from_iteration)),
            _ => None,
        })
        .collect();
    assert_eq!(started, [(x, 4)], "only the interrupted trial ran");
}

/// Metrics and hyper-parameters come back from the store bit for bit:
/// a trial continued from another's checkpoint, a resumed experiment and
/// the config served from the best trial all read them from there. Values
/// one ulp away from a short decimal are where a fast float parser is off.
#[test]
fn the_store_keeps_metrics_and_parameters_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        tmp.path(),
        "max_trials = 1\n[trainable]\nkind = \"rust\"\nname = \"curve\"\n[space]\nrate = { type = \"uniform\", low = 0.0, high = 1.0 }\n",
    );
    let mut st = Store::create(tmp.path(), &cfg).unwrap();
    let values = [
        9.200000000000001,
        10.200000000000001,
        14.000000000000005,
        0.1 + 0.2,
        1.0 / 3.0,
        f64::MIN_POSITIVE,
        1e-300 * 3.0,
        123456789.12345679,
    ];
    let mut params = manta_ml::tune::Params::new();
    for (i, v) in values.iter().enumerate() {
        params.insert(format!("p{i}"), serde_json::json!(v));
    }
    st.insert_trial(0, &params).unwrap();
    for (i, v) in values.iter().enumerate() {
        let metrics: Metrics = [("score".to_string(), *v), ("restored_x".to_string(), -*v)]
            .into_iter()
            .collect();
        assert!(
            st.insert_result(0, i as u64 + 1, Some(*v), &metrics)
                .unwrap()
        );
    }
    st.commit().unwrap();
    drop(st);
    let st = store(tmp.path());
    let results = st.results().unwrap();
    assert_eq!(results.len(), values.len());
    for (r, v) in results.iter().zip(values) {
        assert_eq!(r.metric.map(f64::to_bits), Some(v.to_bits()), "metric {v}");
        assert_eq!(r.metrics["score"].to_bits(), v.to_bits(), "score {v}");
        assert_eq!(
            r.metrics["restored_x"].to_bits(),
            (-v).to_bits(),
            "restored_x {v}"
        );
    }
    let trials = st.trials().unwrap();
    for (i, v) in values.iter().enumerate() {
        let got = trials[0].params[&format!("p{i}")].as_f64().unwrap();
        assert_eq!(got.to_bits(), v.to_bits(), "parameter {v}");
    }
}
