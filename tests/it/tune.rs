//! `manta tune` end to end: a real driver process, SIGKILLed in the middle
//! of an experiment, then `--resume`.

use std::collections::BTreeMap;
use std::path::Path;

use manta_ml::tune::store::Store;

use crate::{Running, Scratch, manta};

const TRIAL: &str = r#"#!/bin/sh
i=$MANTA_RESUME_ITERATION
echo "attempt $MANTA_ATTEMPT" > "$MANTA_CHECKPOINT_DIR/marker"
n=10
[ "$MANTA_PARAM_K" = 1 ] && n=3
while [ $i -lt $n ]; do
  i=$((i+1))
  sleep 0.05
  echo "iteration=$i score=$((i * MANTA_PARAM_K)) resumed_from=$MANTA_RESUME_ITERATION"
done
"#;

fn write_experiment(dir: &Path) -> std::path::PathBuf {
    std::fs::write(dir.join("trial.sh"), TRIAL).unwrap();
    let config = dir.join("tune.toml");
    std::fs::write(
        &config,
        r#"[experiment]
dir = "exp"
metric = "score"
mode = "max"
max_trials = 6
max_concurrent = 2
max_failures = 0
commit_interval_ms = 20

[searcher]
kind = "grid"

[trainable]
kind = "command"
command = ["sh", "./trial.sh"]

[space]
k = { type = "grid", values = [1, 2, 3, 4, 5, 6] }
"#,
    )
    .unwrap();
    config
}

type Rows = BTreeMap<(u64, u64), Option<f64>>;

fn rows(store: &Store) -> Rows {
    store
        .results()
        .unwrap()
        .into_iter()
        .map(|r| ((r.trial, r.iteration), r.metric))
        .collect()
}

#[test]
fn sigkill_of_the_driver_then_resume_loses_and_repeats_nothing() {
    let tmp = Scratch::new("tune-sigkill");
    let config = write_experiment(&tmp.0);
    let exp = tmp.0.join("exp");
    let mut cmd = manta();
    cmd.args(["tune", "--config"]).arg(&config);
    let mut driver = Running::start(cmd);
    // stderr is not a terminal: one line per trial end.
    driver.wait_for("trial 0: completed");
    driver.child.kill().unwrap(); // SIGKILL
    driver.child.wait().unwrap();

    let (before_store, _) = Store::open(&exp).unwrap();
    let before_trials = before_store.trials().unwrap();
    let before = rows(&before_store);
    drop(before_store);
    let done_before: BTreeMap<u64, u64> = before_trials
        .iter()
        .filter(|t| t.state == "completed")
        .map(|t| (t.id, t.attempts))
        .collect();
    let interrupted: Vec<u64> = before_trials
        .iter()
        .filter(|t| t.state == "running")
        .map(|t| t.id)
        .collect();
    eprintln!(
        "at the kill: {} results committed, completed {:?}, running {:?}",
        before.len(),
        done_before,
        interrupted
    );
    assert!(done_before.contains_key(&0));
    assert!(!interrupted.is_empty(), "a trial was running at the kill");
    assert!(before_trials.len() < 6, "the kill came before the end");

    let mut cmd = manta();
    cmd.args(["tune", "--json", "--resume"]).arg(&exp);
    let mut resumed = Running::start(cmd);
    let status = resumed.wait_exit();
    assert!(status.success(), "{}", resumed.output());
    let json_line = resumed
        .seen
        .iter()
        .rev()
        .find(|l| l.starts_with('{'))
        .cloned()
        .unwrap();
    let summary: serde_json::Value = serde_json::from_str(&json_line).unwrap();
    assert_eq!(summary["trials"]["completed"], 6, "{summary}");
    assert_eq!(summary["results"], 53, "{summary}");
    assert_eq!(summary["best"]["metric"], 60.0);
    assert_eq!(summary["best"]["config"]["k"], 6);
    assert!(summary["experiment_dir"].as_str().unwrap().ends_with("exp"));
    assert!(summary["wall_seconds"].as_f64().unwrap() > 0.0);

    let (store, _) = Store::open(&exp).unwrap();
    let after = rows(&store);
    // Every trial has exactly iterations 1..=n: none lost, none twice
    // (trial 0, k = 1, runs 3; the others 10).
    assert_eq!(after.len(), 53);
    for t in 0..6 {
        for i in 1..=(if t == 0 { 3 } else { 10 }) {
            assert!(
                after.contains_key(&(t, i)),
                "trial {t} iteration {i} missing"
            );
        }
    }
    // Every committed result is still there, unchanged.
    for (k, v) in &before {
        assert_eq!(
            after.get(k),
            Some(v),
            "committed result {k:?} changed or lost"
        );
    }
    let trials = store.trials().unwrap();
    for t in &trials {
        if let Some(&attempts) = done_before.get(&t.id) {
            assert_eq!(t.attempts, attempts, "completed trial {} was rerun", t.id);
        }
    }
    // Interrupted trials continued from their checkpoints, not from
    // scratch. Trial 1 started with trial 0 and had results committed when
    // trial 0's end was (its end commits everything before it).
    let results = store.results().unwrap();
    assert!(
        interrupted.contains(&1) && before.contains_key(&(1, 1)),
        "{before:?}"
    );
    for id in &interrupted {
        let t = &trials[*id as usize];
        assert_eq!(t.attempts, 2, "{t:?}");
        let resumed_at = results
            .iter()
            .filter(|r| r.trial == *id && r.iteration == 10)
            .map(|r| r.metrics["resumed_from"])
            .next()
            .unwrap();
        if before.keys().any(|(tr, _)| tr == id) {
            assert!(resumed_at > 0.0, "trial {id} restarted from scratch");
            eprintln!("trial {id} continued from iteration {resumed_at}");
        }
    }
}

#[test]
fn resume_refuses_a_foreign_file_and_tune_refuses_bad_configs() {
    let tmp = Scratch::new("tune-foreign");
    std::fs::write(
        tmp.0.join("experiment.db"),
        "hello, not sqlite\n".repeat(300),
    )
    .unwrap();
    let out = manta()
        .args(["tune", "--resume"])
        .arg(&tmp.0)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not a manta tune experiment store"),
        "{err}"
    );

    let bad = tmp.0.join("bad.toml");
    std::fs::write(
        &bad,
        "[experiment]\ndir = \"x\"\nmetric = \"m\"\n[searcher]\nkind = \"annealing\"\n[trainable]\nkind = \"rust\"\nname = \"n\"\n",
    )
    .unwrap();
    let out = manta()
        .args(["tune", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:5:") && err.contains("annealing"),
        "{err}"
    );
}
