//! The cluster part of `manta demo`: three `manta node` processes on
//! 127.0.0.1, a tree on the first whose children are placed on the other
//! two, a training job and a short hyper-parameter search across them, one
//! node killed with SIGKILL, the restart on the survivor.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use manta_cluster::{ClusterSecret, ClusterStatus, query_status};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::cli::{CLUSTER_DEMO_TREE, CliError};

/// The digits dataset, built in so that the demo runs from any directory.
const DIGITS: &[u8] = include_bytes!("../ml/data/digits.csv.gz");

/// The training step of the demo: the example's model and optimizer, the
/// parameter server and loaders on n1, one worker on each worker node.
const DEMO_TRAIN: &str = r#"
job = "demo"
[data]
path = "digits.csv.gz"
scale = 0.0625
[model]
hidden = [128]
[optimizer]
kind = "adam"
[training]
lr = 0.001
batch_size = 32
epochs = 30
workers = 2
loaders = 2
[placement.ps]
node = "n1"
[placement.loaders]
node = "n1"
[placement.workers]
role = "worker"
"#;

/// The tuning step: digits trials (a few epochs each) on the demo's
/// nodes, one CPU per trial; ASHA stops the weaker ones at epoch 2.
const DEMO_TUNE: &str = r#"
[experiment]
name = "demo-tune"
dir = "tune"
metric = "val_accuracy"
mode = "max"
max_trials = 6
max_concurrent = 3
seed = 7
checkpoint_every = 2

[searcher]
kind = "random"

[scheduler]
kind = "asha"
grace_period = 2
reduction_factor = 2
max_t = 6

[trainable]
kind = "digits"
config = "demo-train.toml"
validation_fraction = 0.2

[space]
lr = { type = "loguniform", low = 1e-3, high = 1e-2 }
hidden = { type = "choice", values = [32, 64] }
batch_size = { type = "choice", values = [32, 64] }

[trial]
cpus = 1.0
"#;

const WAIT: Duration = Duration::from_secs(20);

struct DemoNode {
    name: &'static str,
    id: String,
    gossip: SocketAddr,
    child: Child,
}

fn cluster_err(msg: String) -> CliError {
    CliError::Cluster(manta_cluster::ClusterError::Config(msg))
}

async fn start_node(
    exe: &Path,
    dir: &Path,
    name: &'static str,
    seeds: Option<SocketAddr>,
    extra: &[&str],
) -> Result<DemoNode, CliError> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let mut cmd = Command::new(exe);
    cmd.args(["node", "--name", name, "--gossip", "127.0.0.1:0"])
        .arg("--key-file")
        .arg(dir.join(format!("{name}.key")))
        .arg("--secret-file")
        .arg(dir.join("cluster.secret"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    if let Some(s) = seeds {
        cmd.arg("--seeds").arg(s.to_string());
    }
    let mut child = cmd.spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| cluster_err("node stdout not captured".into()))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .map_err(|_| cluster_err(format!("{name} did not get ready within {WAIT:?}")))??
        .ok_or_else(|| cluster_err(format!("{name} exited before it was ready (see its log)")))?;
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")).map(str::to_owned))
            .ok_or_else(|| cluster_err(format!("no {k}= in `{line}`")))
    };
    let gossip: SocketAddr = field("gossip")?
        .parse()
        .map_err(|e| cluster_err(format!("bad gossip address: {e}")))?;
    Ok(DemoNode {
        name,
        id: field("id")?,
        gossip,
        child,
    })
}

fn host_of(st: &ClusterStatus, actor: &str) -> Option<String> {
    st.nodes
        .iter()
        .find(|n| n.state == "alive" && n.actors.iter().any(|a| a == actor))
        .map(|n| n.name.clone())
}

/// Polls the first node's status until `pred` holds (each query waits for
/// its answer), or fails after [`WAIT`].
async fn wait_status(
    seed: SocketAddr,
    secret: &ClusterSecret,
    what: &str,
    pred: impl Fn(&ClusterStatus) -> bool,
) -> Result<ClusterStatus, CliError> {
    let end = Instant::now() + WAIT;
    loop {
        if let Ok(st) = query_status(&[seed], Some(secret), Duration::from_secs(2)).await {
            if pred(&st) {
                return Ok(st);
            }
        }
        if Instant::now() > end {
            return Err(cluster_err(format!("{what}: not seen within {WAIT:?}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the cluster demo, writing what happens to `out`.
/// Runs the cluster part in `dir` (the caller removes it) and answers the
/// tuning step's experiment directory (inside `dir`): the serving step
/// serves its best trial.
pub(crate) async fn run(exe: &Path, dir: &Path, out: &mut dyn Write) -> Result<PathBuf, CliError> {
    std::fs::create_dir_all(dir)?;
    run_in(exe, dir, out).await
}

async fn run_in(exe: &Path, dir: &Path, out: &mut dyn Write) -> Result<PathBuf, CliError> {
    writeln!(
        out,
        "\nCluster: three `manta node` processes on 127.0.0.1 sharing a new secret."
    )?;
    let secret = ClusterSecret::write_new(&dir.join("cluster.secret"))?;
    let tree = dir.join("bank.toml");
    std::fs::write(&tree, CLUSTER_DEMO_TREE)?;
    let tree_arg = tree.display().to_string();
    let t0 = Instant::now();
    let n1 = start_node(exe, dir, "n1", None, &["--tree", &tree_arg]).await?;
    let n2 = start_node(exe, dir, "n2", Some(n1.gossip), &["--role", "worker"]).await?;
    let n3 = start_node(exe, dir, "n3", Some(n1.gossip), &["--role", "worker"]).await?;
    for n in [&n1, &n2, &n3] {
        writeln!(out, "  {} ready: id={} gossip={}", n.name, n.id, n.gossip)?;
    }
    writeln!(
        out,
        "  n1 runs the tree `bank`: acct-1 and acct-2 are placed on role `worker` (n2, n3)."
    )?;
    let st = wait_status(
        n1.gossip,
        &secret,
        "3 members and 2 placed accounts",
        |st| {
            st.nodes.iter().filter(|n| n.state == "alive").count() == 3
                && host_of(st, "acct-1").is_some()
                && host_of(st, "acct-2").is_some()
        },
    )
    .await?;
    let h1 = host_of(&st, "acct-1").unwrap_or_default();
    let h2 = host_of(&st, "acct-2").unwrap_or_default();
    writeln!(
        out,
        "  {:>5.2}s  cluster formed; acct-1 runs on {h1}, acct-2 on {h2}",
        t0.elapsed().as_secs_f64()
    )?;
    train_step(dir, &n1, out).await?;
    // The experiment directory: the store and the best trial's checkpoint.
    let tuned = tune_step(dir, &n1, out).await?;
    writeln!(out, "  experiment stored in {}", tuned.display())?;
    let (mut victim, survivor) = if h1 == "n2" { (n2, n3) } else { (n3, n2) };
    writeln!(
        out,
        "  killing {} (the node running acct-1) with SIGKILL",
        victim.name
    )?;
    let killed = Instant::now();
    victim.child.start_kill()?;
    let _ = victim.child.wait().await;
    let victim_id = victim.id.clone();
    wait_status(n1.gossip, &secret, "the killed node reported dead", |st| {
        st.nodes
            .iter()
            .any(|n| n.id == victim_id && n.state == "dead")
    })
    .await?;
    writeln!(
        out,
        "  {:>5.2}s  n1 reports {} dead ({} ms after the kill)",
        t0.elapsed().as_secs_f64(),
        victim.name,
        killed.elapsed().as_millis()
    )?;
    let sname = survivor.name.to_owned();
    let st = wait_status(
        n1.gossip,
        &secret,
        "acct-1 restarted on the survivor",
        |st| host_of(st, "acct-1").as_deref() == Some(sname.as_str()),
    )
    .await?;
    writeln!(
        out,
        "  {:>5.2}s  supervisor `bank` restarted what ran on {} (reason: node down): acct-1 now runs on {}, acct-2 on {}",
        t0.elapsed().as_secs_f64(),
        victim.name,
        survivor.name,
        host_of(&st, "acct-2").unwrap_or_default()
    )?;
    writeln!(
        out,
        "  stopping n1 and {}: they leave the cluster gracefully",
        survivor.name
    )?;
    for mut n in [n1, survivor] {
        if let Some(pid) = n.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        match tokio::time::timeout(WAIT, n.child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            _ => {
                let _ = n.child.start_kill();
                writeln!(out, "  {} did not stop cleanly; killed", n.name)?;
            }
        }
    }
    writeln!(
        out,
        "Cluster demo done in {:.1}s.",
        t0.elapsed().as_secs_f64()
    )?;
    Ok(tuned)
}

/// Trains an MLP on digits across the three nodes: this process joins as a
/// client node and places the job (parameter server and loaders on n1, a
/// worker on each of n2 and n3).
async fn train_step(dir: &Path, n1: &DemoNode, out: &mut dyn Write) -> Result<(), CliError> {
    std::fs::write(dir.join("digits.csv.gz"), DIGITS)?;
    let config = manta_ml::TrainConfig::parse(DEMO_TRAIN, "demo training config", dir)?;
    writeln!(
        out,
        "  training an MLP on digits across the cluster: parameter server and 2 loaders on n1, a worker on each of n2 and n3 ({} epochs, synchronous)",
        config.training.epochs
    )?;
    let node = crate::train_cli::join_as_client(
        &[n1.gossip.to_string()],
        Some(dir.join("cluster.secret")),
    )
    .await?;
    let mut epochs = Vec::new();
    let report = manta_ml::train(&config, manta_ml::Env::Cluster(&node), |p| {
        if let manta_ml::Progress::Epoch {
            epoch,
            test_accuracy,
            loss,
            ..
        } = p
        {
            epochs.push((*epoch, *loss, *test_accuracy));
        }
    })
    .await;
    node.leave().await;
    let report = report?;
    for (e, loss, acc) in epochs.iter().filter(|(e, _, _)| e % 10 == 0 || *e == 1) {
        writeln!(
            out,
            "    epoch {e:>2}: loss {loss:.4}, test accuracy {acc:.4}"
        )?;
    }
    writeln!(
        out,
        "  trained: test accuracy {:.4} on {} held-out digits, {} steps in {:.2}s ({:.0} samples/s across the nodes)",
        report.test_accuracy,
        report.test_rows,
        report.steps,
        report.train_seconds,
        report.samples_per_sec
    )?;
    Ok(())
}

/// A short hyper-parameter search across the cluster: this process joins
/// as a client node and keeps the controller and the experiment directory;
/// the trials run on the nodes (one CPU each). Prints where each trial ran
/// and the best one; returns the experiment directory (its store and the
/// best trial's checkpoint).
async fn tune_step(dir: &Path, n1: &DemoNode, out: &mut dyn Write) -> Result<PathBuf, CliError> {
    use manta_ml::tune::{Event, TrialState, TuneConfig};
    if !dir.join("digits.csv.gz").exists() {
        std::fs::write(dir.join("digits.csv.gz"), DIGITS)?;
    }
    // The training step's model and data, one epoch per iteration.
    std::fs::write(dir.join("demo-train.toml"), DEMO_TRAIN)?;
    let config = TuneConfig::parse(DEMO_TUNE, "demo tuning config", dir)?;
    let exp = config.experiment.dir.clone();
    writeln!(
        out,
        "  tuning it across the cluster: {} digits trials (random search over lr, width, batch size; ASHA), one CPU each, on whichever node has room",
        config.experiment.max_trials
    )?;
    let node = crate::train_cli::join_as_client(
        &[n1.gossip.to_string()],
        Some(dir.join("cluster.secret")),
    )
    .await?;
    // Trials go to the nodes this process knows of: wait (bounded) until
    // gossip has shown it all three.
    let mut view = node.membership().view();
    let _ = tokio::time::timeout(WAIT, async {
        loop {
            let alive = view
                .borrow_and_update()
                .iter()
                .filter(|m| m.state == manta_cluster::MemberState::Alive && m.name.starts_with('n'))
                .count();
            if alive >= 3 || view.changed().await.is_err() {
                break;
            }
        }
    })
    .await;
    let mut ran: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
    let mut ends: std::collections::BTreeMap<u64, TrialState> = Default::default();
    let summary = manta_ml::tune::run_on(
        config,
        &manta_ml::tune::Trainables::new(),
        false,
        manta_ml::Env::Cluster(&node),
        |e| match e {
            Event::Started {
                trial,
                node: Some(n),
                ..
            } => ran.entry(*trial).or_default().push(n.clone()),
            Event::Ended { trial, state, .. } => {
                ends.insert(*trial, *state);
            }
            _ => {}
        },
    )
    .await;
    node.leave().await;
    let summary = summary?;
    for (trial, nodes) in &ran {
        let state = ends.get(trial).map_or("?", |s| s.as_str());
        writeln!(
            out,
            "    trial {trial}: ran on {} ({state})",
            nodes.join(", ")
        )?;
    }
    match &summary.best {
        Some(b) => writeln!(
            out,
            "  tuned in {:.2}s: best trial {} (validation accuracy {:.4}{}) with {}",
            summary.wall_seconds,
            b.trial,
            b.metric,
            b.test_accuracy
                .map(|t| format!(", test accuracy {t:.4}"))
                .unwrap_or_default(),
            serde_json::to_string(&b.config).unwrap_or_default()
        )?,
        None => writeln!(
            out,
            "  tuned in {:.2}s: no trial reported a metric",
            summary.wall_seconds
        )?,
    }
    Ok(exp)
}
