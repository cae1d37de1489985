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

/// A trial for the cluster test: counts to 20 from where it resumes,
/// keeping its count in its checkpoint directory, and reports what it
/// found there at its start (`restored`, 0 for none).
const CLUSTER_TRIAL: &str = r#"#!/bin/sh
i=$MANTA_RESUME_ITERATION
restored=0
[ -f "$MANTA_CHECKPOINT_DIR/state" ] && restored=$(cat "$MANTA_CHECKPOINT_DIR/state")
while [ $i -lt 20 ]; do
  sleep 0.15
  i=$((i+1))
  echo $i > "$MANTA_CHECKPOINT_DIR/state"
  echo "iteration=$i score=$((i * MANTA_PARAM_K)) resumed_from=$MANTA_RESUME_ITERATION restored=$restored"
done
"#;

/// `attempt A started on NODE from iteration I` of `trial`, from the
/// driver's progress lines.
fn started_on(line: &str) -> (u64, String, u64) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = |w: &str| words.iter().position(|x| *x == w).unwrap();
    (
        words[at("attempt") + 1].parse().unwrap(),
        words[at("on") + 1].to_owned(),
        words[at("iteration") + 1].parse().unwrap(),
    )
}

#[test]
fn trials_run_on_two_nodes_and_a_sigkilled_nodes_trial_continues_on_the_other() {
    use crate::cluster::{secret, start_node, wait_alive};
    let tmp = Scratch::new("tune-cluster");
    let s = secret(&tmp, "c.secret");
    // One CPU each: one trial per node at a time.
    let opt_in = ["--cpus", "1", "--allow-command-trials"];
    let n1 = start_node(&tmp, "n1", Some(&s), &[], &opt_in);
    let n2 = start_node(&tmp, "n2", Some(&s), &[&n1.gossip], &opt_in);
    wait_alive(&n1.gossip, Some(&s), 2);
    std::fs::write(tmp.0.join("trial.sh"), CLUSTER_TRIAL).unwrap();
    let config = tmp.file(
        "tune.toml",
        r#"[experiment]
dir = "exp"
metric = "score"
mode = "max"
max_trials = 4
max_concurrent = 4
max_failures = 0
commit_interval_ms = 20

[searcher]
kind = "grid"

[trainable]
kind = "command"
command = ["sh", "./trial.sh"]

[space]
k = { type = "grid", values = [1, 2, 3, 4] }

[trial]
cpus = 1.0
"#,
    );
    let exp = tmp.0.join("exp");
    let mut cmd = manta();
    cmd.args(["tune", "--json", "--seeds", &n1.gossip, "--secret-file"])
        .arg(&s)
        .arg("--config")
        .arg(&config);
    // The driver logs each checkpoint it stores from another node.
    cmd.env("RUST_LOG", "warn,manta_ml::tune::actors=debug");
    let mut driver = Running::start(cmd);
    let first = driver.wait_for("trial 0: attempt 0 started on");
    let (_, victim_name, from) = started_on(&first);
    assert_eq!(from, 0);
    let other = driver.wait_for("trial 1: attempt 0 started on");
    let (_, other_name, _) = started_on(&other);
    assert_ne!(
        victim_name, other_name,
        "one trial per node: trials 0 and 1 run on different nodes"
    );
    // Trial 0 has sent a checkpoint (its third) back to the driver (the
    // line may have gone by already).
    let stored = "checkpoint from another node stored";
    let third = |l: &String| l.contains(stored) && l.contains("trial=0 iteration=3");
    if !driver.seen.iter().any(third) {
        while !third(&driver.wait_for(stored)) {}
    }
    assert!(exp.join("trials/00000/checkpoint-000003/state").is_file());
    let (mut victim, survivor, survivor_name) = if victim_name == "n1" {
        (n1, n2, "n2")
    } else {
        (n2, n1, "n1")
    };
    victim.p.child.kill().unwrap(); // SIGKILL
    victim.p.child.wait().unwrap();
    let again = driver.wait_for("trial 0: attempt 1 started on");
    let (_, where_now, resumed_at) = started_on(&again);
    assert_eq!(where_now, survivor_name, "{again}");
    assert!(
        resumed_at >= 3,
        "trial 0 continued from its checkpoint, not from scratch: {again}"
    );
    let status = driver.wait_exit();
    let out = driver.output();
    assert!(status.success(), "{out}");
    let json_line = driver
        .seen
        .iter()
        .rev()
        .find(|l| l.starts_with('{'))
        .cloned()
        .unwrap();
    let summary: serde_json::Value = serde_json::from_str(&json_line).unwrap();
    assert_eq!(summary["trials"]["completed"], 4, "{summary}");
    assert_eq!(summary["results"], 80, "{summary}");
    assert_eq!(summary["best"]["config"]["k"], 4, "{summary}");
    // Where each trial ran: both nodes had trials.
    let nodes: std::collections::BTreeSet<String> = driver
        .seen
        .iter()
        .filter(|l| l.contains(" started on "))
        .map(|l| started_on(l).1)
        .collect();
    assert_eq!(nodes.len(), 2, "{out}");

    let (store, _) = Store::open(&exp).unwrap();
    let results = store.results().unwrap();
    // Every iteration once: none lost, none twice (count the rows).
    assert_eq!(results.len(), 80);
    let after = rows(&store);
    assert_eq!(after.len(), 80);
    for t in 0..4 {
        for i in 1..=20 {
            assert!(after.contains_key(&(t, i)), "trial {t} iteration {i}");
        }
    }
    let trials = store.trials().unwrap();
    assert_eq!(
        trials[0].attempts, 2,
        "the node loss restarted it once, not counted as a failure"
    );
    // The store keeps where each trial last ran and the node loss.
    assert_eq!(trials[0].node.as_deref(), Some(survivor_name));
    assert_eq!(trials[0].node_losses, 1);
    assert!(trials.iter().all(|t| t.node.is_some()), "{trials:?}");
    // The survivor restored what the dead node had checkpointed: the
    // bytes went through the driver.
    let last = results
        .iter()
        .find(|r| r.trial == 0 && r.iteration == 20)
        .unwrap();
    assert_eq!(last.metrics["resumed_from"], resumed_at as f64);
    let restored = last.metrics["restored"];
    assert!(
        restored == resumed_at as f64 || restored == resumed_at as f64 + 1.0,
        "restored {restored}, resumed at {resumed_at}"
    );
    drop(survivor);
}

/// A node started without `--allow-command-trials` does not run a command
/// trial a tuner elsewhere sends it: the trial ends in error, saying why,
/// and nothing of the command runs there.
#[test]
fn a_node_without_the_opt_in_refuses_command_trials() {
    use crate::cluster::{secret, start_node, wait_status};
    let tmp = Scratch::new("tune-refuse");
    let s = secret(&tmp, "c.secret");
    let n1 = start_node(&tmp, "n1", Some(&s), &[], &["--cpus", "1"]);
    wait_status(&n1.gossip, Some(&s), "1 node", |st| {
        st["nodes"]
            .as_array()
            .is_some_and(|a| a.iter().any(|n| n["state"] == "alive"))
    });
    let marker = tmp.0.join("ran");
    std::fs::write(
        tmp.0.join("trial.sh"),
        format!("touch {}\necho score=1\n", marker.display()),
    )
    .unwrap();
    let config = tmp.file(
        "tune.toml",
        r#"[experiment]
dir = "exp"
metric = "score"
mode = "max"
max_trials = 1
max_failures = 0

[trainable]
kind = "command"
command = ["sh", "./trial.sh"]

[space]
k = { type = "grid", values = [1] }

[trial]
cpus = 1.0
"#,
    );
    let mut cmd = manta();
    cmd.args(["tune", "--json", "--seeds", &n1.gossip, "--secret-file"])
        .arg(&s)
        .arg("--config")
        .arg(&config);
    let mut driver = Running::start(cmd);
    let status = driver.wait_exit();
    let out = driver.output();
    assert!(status.success(), "{out}");
    let json_line = driver
        .seen
        .iter()
        .rev()
        .find(|l| l.starts_with('{'))
        .cloned()
        .unwrap_or_else(|| panic!("no summary: {out}"));
    let summary: serde_json::Value = serde_json::from_str(&json_line).unwrap();
    assert_eq!(summary["trials"]["error"], 1, "{summary}");
    let (store, _) = Store::open(&tmp.0.join("exp")).unwrap();
    let trials = store.trials().unwrap();
    let error = trials[0].error.clone().unwrap_or_default();
    assert!(error.contains("--allow-command-trials"), "{error}");
    assert!(
        !marker.exists(),
        "the command ran on a node that did not opt in"
    );
}

/// A trial interrupted by the driver's SIGKILL and relaunched by
/// `--resume` has not failed: with `max_failures = 1`, a failure of the
/// relaunched run is still retried (before, the resume counted as the one
/// failure allowed, and the trial ended in `error`).
#[test]
fn a_resumed_trial_keeps_its_retries() {
    let tmp = Scratch::new("tune-resume-retry");
    std::fs::write(
        tmp.0.join("trial.sh"),
        r#"#!/bin/sh
# The run after the first one (the relaunch by --resume) fails at once;
# the others run.
if [ -f "$MANTA_TRIAL_DIR/ran" ] && [ ! -f "$MANTA_TRIAL_DIR/failed" ]; then
  touch "$MANTA_TRIAL_DIR/failed"
  exit 3
fi
touch "$MANTA_TRIAL_DIR/ran"
i=$MANTA_RESUME_ITERATION
n=3
[ "$MANTA_PARAM_K" = 2 ] && n=40
while [ $i -lt $n ]; do
  i=$((i+1))
  sleep 0.05
  echo "iteration=$i score=$((i * MANTA_PARAM_K))"
done
"#,
    )
    .unwrap();
    let config = tmp.0.join("tune.toml");
    std::fs::write(
        &config,
        r#"[experiment]
dir = "exp"
metric = "score"
mode = "max"
max_trials = 2
max_concurrent = 2
max_failures = 1
commit_interval_ms = 20

[searcher]
kind = "grid"

[trainable]
kind = "command"
command = ["sh", "./trial.sh"]

[space]
k = { type = "grid", values = [1, 2] }
"#,
    )
    .unwrap();
    let exp = tmp.0.join("exp");
    let mut cmd = manta();
    cmd.args(["tune", "--config"]).arg(&config);
    let mut driver = Running::start(cmd);
    driver.wait_for("trial 0: completed");
    driver.child.kill().unwrap(); // SIGKILL
    driver.child.wait().unwrap();
    let (store, _) = Store::open(&exp).unwrap();
    let running: Vec<u64> = store
        .trials()
        .unwrap()
        .iter()
        .filter(|t| t.state == "running")
        .map(|t| t.id)
        .collect();
    drop(store);
    assert_eq!(running, [1], "trial 1 was running at the kill");

    let mut cmd = manta();
    cmd.args(["tune", "--json", "--resume"]).arg(&exp);
    let mut resumed = Running::start(cmd);
    let status = resumed.wait_exit();
    assert!(status.success(), "{}", resumed.output());
    let (store, _) = Store::open(&exp).unwrap();
    let t1 = store
        .trials()
        .unwrap()
        .into_iter()
        .find(|t| t.id == 1)
        .unwrap();
    assert_eq!(
        (t1.state.as_str(), t1.attempts, t1.iteration),
        ("completed", 3, 40),
        "relaunched (2, failed), retried (3): {t1:?}"
    );
}
