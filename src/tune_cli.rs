//! `manta tune`: runs a hyper-parameter search from a config file (or
//! continues one with `--resume DIR`), in this process or with `--seeds`
//! on the nodes of a cluster (this process joins as a client node and
//! keeps the controller and the experiment directory), with a live table
//! on stderr and a final summary (or one JSON object with `--json`).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use manta_ml::tune::report::LiveTable;
use manta_ml::tune::{Event, Summary, Trainables, TrialState, TuneConfig};

use crate::cli::CliError;

/// How `manta tune` runs.
#[derive(Debug, Clone, Default)]
pub struct TuneOptions {
    /// The experiment config (TOML); optional with `resume`.
    pub config: Option<PathBuf>,
    /// Continue the experiment in this directory.
    pub resume: Option<PathBuf>,
    /// Join this cluster (gossip seeds) and run the trials on its nodes;
    /// empty runs them in this process.
    pub seeds: Vec<String>,
    /// The cluster secret, with `seeds`.
    pub secret_file: Option<PathBuf>,
    /// End with one JSON object on `out` instead of a human summary.
    pub json: bool,
    /// Show the live table (a terminal) or one line per trial end (else)
    /// on stderr.
    pub progress: bool,
    /// Write nothing (`experiment.persist = false`): no store file, no
    /// exports or plots; cannot be resumed.
    pub no_persist: bool,
}

/// Runs (or resumes) the experiment; returns its summary (also written to
/// `out`).
pub async fn tune(
    opts: &TuneOptions,
    trainables: &Trainables,
    out: &mut dyn Write,
) -> Result<Summary, CliError> {
    let (config, resume) = match (&opts.resume, &opts.config) {
        (Some(dir), _) => {
            let mut c = manta_ml::tune::resume_config(dir)?;
            c.experiment.dir = std::path::absolute(dir)?;
            (c, true)
        }
        (None, Some(file)) => {
            let mut c = TuneConfig::load(file)?;
            if opts.no_persist {
                c.experiment.persist = false;
            }
            (c, false)
        }
        (None, None) => {
            return Err(CliError::Usage(
                "manta tune needs --config FILE or --resume DIR".into(),
            ));
        }
    };
    let mut view = View::new(opts.progress);
    let summary = if opts.seeds.is_empty() {
        manta_ml::tune::run(config, trainables, resume, |e| view.show(e)).await
    } else {
        let node = crate::train_cli::join_as_client(&opts.seeds, opts.secret_file.clone()).await?;
        let s = manta_ml::tune::run_on(
            config,
            trainables,
            resume,
            manta_ml::Env::Cluster(&node),
            |e| view.show(e),
        )
        .await;
        node.leave().await;
        s
    };
    view.done();
    let summary = summary?;
    if opts.json {
        serde_json::to_writer(&mut *out, &summary).map_err(std::io::Error::other)?;
        writeln!(out)?;
    } else {
        write_human(&summary, out)?;
    }
    Ok(summary)
}

fn write_human(s: &Summary, out: &mut dyn Write) -> std::io::Result<()> {
    let counts: Vec<String> = s.trials.iter().map(|(k, v)| format!("{v} {k}")).collect();
    writeln!(
        out,
        "{} trials ({}), {} results in {:.1} s",
        s.trials.values().sum::<u64>(),
        counts.join(", "),
        s.results,
        s.wall_seconds
    )?;
    match &s.best {
        Some(b) => {
            writeln!(
                out,
                "best: trial {} {} = {:.4}{}",
                b.trial,
                s.metric,
                b.metric,
                b.test_accuracy
                    .map(|t| format!(" (test_accuracy {t:.4})"))
                    .unwrap_or_default()
            )?;
            writeln!(
                out,
                "  config: {}",
                serde_json::to_string(&b.config).unwrap_or_default()
            )?;
            if let Some(c) = &b.checkpoint {
                writeln!(out, "  checkpoint: {c}")?;
            }
        }
        None => writeln!(out, "no trial reported {}", s.metric)?,
    }
    writeln!(out, "experiment: {}", s.experiment_dir)?;
    for f in &s.files {
        writeln!(out, "  {}", Path::new(f).display())?;
    }
    Ok(())
}

/// The live view on stderr.
struct View {
    on: bool,
    tty: bool,
    table: LiveTable,
    drawn_lines: usize,
    last: Option<Instant>,
}

impl View {
    fn new(on: bool) -> Self {
        Self {
            on,
            tty: std::io::stderr().is_terminal(),
            table: LiveTable::new(),
            drawn_lines: 0,
            last: None,
        }
    }

    fn show(&mut self, e: &Event) {
        self.table.apply(e);
        if !self.on {
            return;
        }
        if self.tty {
            if self.last.is_none_or(|t| t.elapsed().as_millis() >= 200) {
                self.draw();
            }
        } else if let Event::Started {
            trial,
            attempt,
            from_iteration,
            node: Some(node),
            ..
        } = e
        {
            // On a cluster: where each attempt runs.
            eprintln!(
                "trial {trial}: attempt {attempt} started on {node} from iteration {from_iteration}"
            );
        } else if let Event::Ended {
            trial,
            state,
            error,
        } = e
        {
            let why = error
                .as_ref()
                .filter(|_| *state == TrialState::Error || *state == TrialState::Pending)
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            eprintln!("trial {trial}: {}{why}", state.as_str());
        }
    }

    fn draw(&mut self) {
        let text = self.table.render(8);
        let mut err = std::io::stderr().lock();
        if self.drawn_lines > 0 {
            let _ = write!(err, "\x1b[{}A\x1b[J", self.drawn_lines);
        }
        let _ = err.write_all(text.as_bytes());
        self.drawn_lines = text.lines().count();
        self.last = Some(Instant::now());
    }

    fn done(&mut self) {
        if self.on && self.tty {
            self.draw();
        }
    }
}
