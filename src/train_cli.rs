//! `manta train`: runs a training job from a config file, in-process or on
//! a cluster, with a progress bar and a final report.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use manta_actors::ActorSystem;
use manta_cluster::{Node, NodeConfig};
use manta_ml::job::{Env, Progress, TrainReport};
use manta_ml::{Directory, TrainConfig};

use crate::cli::CliError;

/// How `manta train` runs a job.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Join this cluster (gossip seeds) and place the job's actors on its
    /// nodes; empty runs everything in this process.
    pub seeds: Vec<String>,
    /// The cluster secret, with `seeds`.
    pub secret_file: Option<PathBuf>,
    /// End with one JSON object on `out` instead of a human summary.
    pub json: bool,
    /// Show progress on stderr (a bar on a terminal, lines otherwise).
    pub progress: bool,
}

/// Runs the job `config` describes; returns its report (also written to
/// `out`).
pub async fn train(
    config: &TrainConfig,
    opts: &TrainOptions,
    out: &mut dyn Write,
) -> Result<TrainReport, CliError> {
    let mut progress = ProgressView::new(opts.progress);
    if opts.seeds.is_empty() {
        let report = manta_ml::train(config, Env::InProcess, |p| progress.show(p)).await;
        progress.done();
        return finish(report?, opts.json, out);
    }
    let node = join_as_client(&opts.seeds, opts.secret_file.clone()).await?;
    let report = manta_ml::train(config, Env::Cluster(&node), |p| progress.show(p)).await;
    progress.done();
    node.leave().await;
    finish(report?, opts.json, out)
}

/// Joins the cluster at `seeds` as a client node (hosts nothing) with a
/// throw-away identity.
pub async fn join_as_client(
    seeds: &[String],
    secret_file: Option<PathBuf>,
) -> Result<Node, CliError> {
    let directory = Directory::cluster();
    let system = ActorSystem::with_kinds(crate::builtin::all_kinds(directory.clone()));
    let key_dir = std::env::temp_dir().join(format!("manta-client-{}", std::process::id()));
    std::fs::create_dir_all(&key_dir)?;
    let config = NodeConfig {
        name: format!("client-{}", std::process::id()),
        seeds: seeds.to_vec(),
        secret_file,
        key_file: Some(key_dir.join("client.key")),
        client: true,
        ..NodeConfig::default()
    };
    let node = Node::start(config, system).await;
    let _ = std::fs::remove_dir_all(&key_dir);
    let node = node?;
    directory.bind(node.names());
    Ok(node)
}

fn finish(report: TrainReport, json: bool, out: &mut dyn Write) -> Result<TrainReport, CliError> {
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string(&report).unwrap_or_default()
        )?;
    } else {
        writeln!(
            out,
            "test accuracy {:.4} on {} rows after {} epochs ({} steps, {} worker{}, {} mode, {}); {:.1} s, {:.0} samples/s; final loss {:.4}",
            report.test_accuracy,
            report.test_rows,
            report.epochs,
            report.steps,
            report.workers,
            if report.workers == 1 { "" } else { "s" },
            report.mode,
            report.device,
            report.train_seconds,
            report.samples_per_sec,
            report.final_loss
        )?;
        if let Some(c) = &report.checkpoint {
            writeln!(out, "checkpoint: {c}")?;
        }
    }
    out.flush()?;
    Ok(report)
}

/// Progress on stderr: an indicatif bar on a terminal, one line per epoch
/// otherwise.
struct ProgressView {
    enabled: bool,
    bar: Option<indicatif::ProgressBar>,
    epochs: u32,
    rows: usize,
}

impl ProgressView {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            bar: None,
            epochs: 0,
            rows: 0,
        }
    }

    fn show(&mut self, p: &Progress) {
        if !self.enabled {
            return;
        }
        match p {
            Progress::Started {
                epochs,
                train_rows,
                test_rows,
                features,
                classes,
                workers,
                params,
                ..
            } => {
                self.epochs = *epochs;
                self.rows = *train_rows;
                eprintln!(
                    "training: {train_rows} train / {test_rows} test rows of {features} features, {classes} classes, {params} parameters, {workers} worker(s), {epochs} epochs"
                );
                if std::io::stderr().is_terminal() {
                    let bar =
                        indicatif::ProgressBar::new(u64::from(*epochs) * (*train_rows as u64));
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{bar:30} epoch {msg} [{elapsed_precise}]",
                        )
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                    );
                    self.bar = Some(bar);
                }
            }
            Progress::Step {
                epoch,
                loss,
                samples,
                samples_per_sec,
                ..
            } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(*samples);
                    bar.set_message(format!(
                        "{:.1}/{}  loss {loss:.4}  {samples_per_sec:.0} samples/s",
                        epoch, self.epochs
                    ));
                }
            }
            Progress::Epoch {
                epoch,
                loss,
                test_accuracy,
                samples_per_sec,
            } => {
                let line = format!(
                    "epoch {epoch}/{}  loss {loss:.4}  test accuracy {test_accuracy:.4}  {samples_per_sec:.0} samples/s",
                    self.epochs
                );
                match &self.bar {
                    Some(bar) => bar.println(line),
                    None => eprintln!("{line}"),
                }
            }
        }
    }

    fn done(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
