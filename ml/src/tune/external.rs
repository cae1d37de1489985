//! External-command trainables: any program, in any language.
//!
//! The trial's hyper-parameters reach the program twice: as arguments
//! (`--lr=0.01 --hidden=64`, after the configured command) and as
//! environment variables:
//!
//! | variable | value |
//! |---|---|
//! | `MANTA_TRIAL_ID` | the trial id |
//! | `MANTA_ATTEMPT` | 0, then 1, 2 … after failures or a resume |
//! | `MANTA_TRIAL_DIR` | the trial's directory |
//! | `MANTA_CHECKPOINT_DIR` | a directory kept across attempts: save there, and restore from it when it is not empty |
//! | `MANTA_RESUME_ITERATION` | the last iteration the store holds for this trial (0 at first) |
//! | `MANTA_PARAMS` | all hyper-parameters as one JSON object |
//! | `MANTA_PARAM_<NAME>` | each hyper-parameter (name upper-cased, other characters than letters and digits as `_`) |
//!
//! Metrics: every line on standard output holding `name=value` pairs
//! (separated by spaces or commas, values numbers) is one result, read as
//! it is printed; an `iteration=` (or `training_iteration=`) pair numbers
//! it, else results count up from `MANTA_RESUME_ITERATION`. Other lines are
//! ignored. Standard output is read to its end before the exit status is
//! taken, so a line printed just before the program exits is never lost.
//! Standard error goes to `stderr.log` in the trial directory. Exit status
//! 0 completes the trial; anything else fails it (retried up to
//! `max_failures`); a stopped trial's process is killed.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use super::TuneError;
use super::trainable::{Metrics, TrialInfo};

/// The metrics of one output line, if it holds any `name=value` pair with
/// a number.
pub fn parse_metrics(line: &str) -> Option<Metrics> {
    let mut m = Metrics::new();
    for token in line.split(|c: char| c.is_whitespace() || c == ',') {
        let Some((name, value)) = token.split_once('=') else {
            continue;
        };
        let name = name.trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c))
        {
            continue;
        }
        if let Ok(v) = value.trim().parse::<f64>()
            && v.is_finite()
        {
            m.insert(name.to_string(), v);
        }
    }
    (!m.is_empty()).then_some(m)
}

/// The environment variable name of hyper-parameter `name`.
pub fn env_name(name: &str) -> String {
    let mut s = String::from("MANTA_PARAM_");
    s.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    s
}

fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The command of a trial.
pub fn command(
    argv: &[String],
    env: &BTreeMap<String, String>,
    info: &TrialInfo,
    resume_iteration: u64,
) -> Result<Command, TuneError> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| TuneError::Config("trainable.command: empty".into()))?;
    let checkpoint_dir = info.dir.join("checkpoint");
    std::fs::create_dir_all(&checkpoint_dir).map_err(|e| TuneError::io(&checkpoint_dir, e))?;
    let stderr_path = info.dir.join("stderr.log");
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&stderr_path)
        .map_err(|e| TuneError::io(&stderr_path, e))?;
    let mut c = Command::new(program);
    c.args(args)
        .args(
            info.params
                .iter()
                .map(|(k, v)| format!("--{k}={}", plain(v))),
        )
        .envs(env)
        .env("MANTA_TRIAL_ID", info.id.to_string())
        .env("MANTA_ATTEMPT", info.attempt.to_string())
        .env("MANTA_TRIAL_DIR", &info.dir)
        .env("MANTA_CHECKPOINT_DIR", &checkpoint_dir)
        .env("MANTA_RESUME_ITERATION", resume_iteration.to_string())
        .env(
            "MANTA_PARAMS",
            serde_json::to_string(&info.params).unwrap_or_default(),
        )
        .envs(info.params.iter().map(|(k, v)| (env_name(k), plain(v))))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true);
    // Its own process group, so that stopping the trial kills what the
    // command started too (a shell's children hold its stdout open).
    #[cfg(unix)]
    c.process_group(0);
    Ok(c)
}

/// Kills the child and its process group (`kill -KILL -- -PGID`: the
/// workspace forbids `unsafe`, so no direct `killpg`).
fn kill_group(child: &mut tokio::process::Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = child.start_kill();
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Ended {
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Lines that held no metric.
    pub ignored_lines: u64,
    /// Lines that held metrics.
    pub metric_lines: u64,
}

/// Runs `cmd` to its end: `on_metrics` gets every result line as it is
/// read; `kill` (when it resolves) kills the process. Standard output is
/// read to EOF, then the status is taken.
pub async fn run(
    mut cmd: Command,
    program: &Path,
    mut on_metrics: impl FnMut(Metrics),
    kill: tokio::sync::oneshot::Receiver<()>,
) -> Result<Ended, TuneError> {
    let mut child = cmd.spawn().map_err(|e| TuneError::io(program, e))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| TuneError::Actor("child has no stdout pipe".into()))?;
    let mut lines = BufReader::new(stdout).split(b'\n');
    let mut kill = Some(kill);
    let (mut ignored, mut metric_lines) = (0, 0);
    loop {
        let line = match kill.as_mut() {
            Some(k) => tokio::select! {
                line = lines.next_segment() => line,
                _ = k => {
                    kill = None;
                    kill_group(&mut child);
                    continue;
                }
            },
            None => lines.next_segment().await,
        };
        match line {
            Ok(Some(l)) => match parse_metrics(&String::from_utf8_lossy(&l)) {
                Some(m) => {
                    metric_lines += 1;
                    on_metrics(m)
                }
                None => ignored += 1,
            },
            Ok(None) => break,
            Err(e) => return Err(TuneError::io(program, e)),
        }
    }
    let status = child.wait().await.map_err(|e| TuneError::io(program, e))?;
    Ok(Ended {
        code: status.code(),
        ignored_lines: ignored,
        metric_lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_lines_are_parsed_and_garbage_is_not() {
        let m = parse_metrics("loss=0.5 acc=0.9, iteration=3").unwrap();
        assert_eq!(m["loss"], 0.5);
        assert_eq!(m["acc"], 0.9);
        assert_eq!(m["iteration"], 3.0);
        assert_eq!(parse_metrics("epoch 3 done"), None);
        assert_eq!(parse_metrics("x=nan y=abc"), None);
        assert_eq!(parse_metrics("\u{1b}[31m=1"), None);
        assert_eq!(env_name("train.lr-x"), "MANTA_PARAM_TRAIN_LR_X");
    }
}
