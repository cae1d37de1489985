//! The `manta` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use manta::cli::{self, CliError, DemoOptions};
use tracing_subscriber::EnvFilter;

/// Manta: distributed actor programs with OTP supervision trees.
#[derive(Debug, Parser)]
#[command(name = "manta", version, about, long_about = None)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the demo (about 15 s): a supervision tree whose workers fail on
    /// schedule, printing restarts and an escalation as they happen; then a
    /// 3-node cluster on 127.0.0.1 whose placed children are restarted on a
    /// survivor when their node is killed with SIGKILL; then a short tuning
    /// run whose best trial is served (KServe v2 REST), checked with one
    /// request, and kept serving until Ctrl-C (unless --once).
    Demo {
        /// How long the tree runs before the demo stops it (e.g. "8s", "500ms").
        #[arg(long, default_value = "8s", value_parser = parse_duration)]
        duration: Duration,
        /// Stop after the serving step's own request instead of serving
        /// until Ctrl-C.
        #[arg(long)]
        once: bool,
    },
    /// Validate supervision-tree files; prints every problem with file, line
    /// and column. Exit status 0 when all are valid, 1 otherwise.
    Check {
        /// Tree files (TOML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Start a supervision tree from a file and run it until Ctrl-C / SIGTERM,
    /// logging what the supervisors do (RUST_LOG filters the log).
    Run {
        /// The tree file (TOML).
        file: PathBuf,
    },
    /// List the actor kinds tree files can use (built-in and manta-ml).
    Kinds,
    /// Start a cluster node: join through the seeds, print one line
    /// `ready id=.. name=.. gossip=.. p2p=..`, then log membership changes
    /// until Ctrl-C / SIGTERM, when it leaves gracefully. Flags override the
    /// config file.
    Node(NodeArgs),
    /// Print the members of a cluster without joining it.
    Status {
        /// Nodes to ask, `host:port` of their gossip address (comma-separated).
        #[arg(long, required = true, value_delimiter = ',')]
        seeds: Vec<String>,
        /// The cluster secret (the same file the nodes use).
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// Print one JSON object `{"nodes":[...]}`.
        #[arg(long)]
        json: bool,
        /// How long to wait for an answer.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Train a model with parameter servers, data loaders and workers (see
    /// examples/train-digits.toml): in this process, or with --seeds on the
    /// nodes of a cluster. Progress goes to stderr; the end prints the test
    /// accuracy (or, with --json, one JSON object).
    Train {
        /// The training config (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Join this cluster (gossip `host:port`, comma-separated) and place
        /// the job's actors on its nodes.
        #[arg(long, value_delimiter = ',')]
        seeds: Vec<String>,
        /// The cluster secret (with --seeds).
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// End with one JSON object (test_accuracy, train_seconds,
        /// samples_per_sec, checkpoint, ...).
        #[arg(long)]
        json: bool,
    },
    /// Search hyper-parameters (see examples/tune-digits.toml): trials are
    /// actors in this process, or with --seeds on the nodes of a cluster
    /// (packed by the cpus and gpus each trial asks for), reporting to one
    /// controller here; the experiment lives in an SQLite file in its
    /// directory. A live table goes to stderr; the end prints the best
    /// trial (or, with --json, one JSON object).
    Tune {
        /// The experiment config (TOML).
        #[arg(long, required_unless_present = "resume")]
        config: Option<PathBuf>,
        /// Continue the experiment in DIR (after a crash or a kill):
        /// completed trials are kept, interrupted ones continue from their
        /// checkpoints. Its stored config is used.
        #[arg(long, value_name = "DIR")]
        resume: Option<PathBuf>,
        /// Write nothing: the experiment lives in memory (no store file,
        /// exports or plots) and cannot be resumed.
        #[arg(long, conflicts_with = "resume")]
        no_persist: bool,
        /// Join this cluster (gossip `host:port`, comma-separated) and run
        /// the trials on its nodes (the controller stays here).
        #[arg(long, value_delimiter = ',')]
        seeds: Vec<String>,
        /// The cluster secret (with --seeds).
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// End with one JSON object (best, trials, results, wall_seconds,
        /// experiment_dir, ...).
        #[arg(long)]
        json: bool,
    },
    /// Serve models behind the Open Inference Protocol (KServe v2 REST) and
    /// Prometheus metrics, in this process (see examples/serve-digits.toml)
    /// or with --seeds with the replicas on the nodes of a cluster (placed
    /// by each deployment's cpus/gpus, replaced when their node dies).
    /// Prints the address once ready; Ctrl-C drains and stops.
    #[command(args_conflicts_with_subcommands = true)]
    Serve {
        /// The serving config (TOML).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Join this cluster (gossip `host:port`, comma-separated) and run
        /// the replicas on its nodes (the HTTP/gRPC fronts stay here).
        #[arg(long, value_delimiter = ',')]
        seeds: Vec<String>,
        /// The cluster secret (with --seeds).
        #[arg(long)]
        secret_file: Option<PathBuf>,
        #[command(subcommand)]
        action: Option<ServeAction>,
    },
    /// Write a new random cluster secret to FILE (mode 0600; never overwrites).
    Secret {
        /// Where to write it.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ServeAction {
    /// Roll out the best trial of a tuner experiment on a running server
    /// (through its admin API): a new version with PERCENT% of the model's
    /// requests, then promoted to 100% or rolled back, at once
    /// (--promote / --rollback) or on a metric (--metric with --min or
    /// --max: `error_rate` and `mean_latency_ms` are measured on the
    /// canary's first --min-requests answers; other names are the trial's
    /// reported metrics, e.g. val_accuracy). Without either it stays a
    /// canary.
    Promote {
        /// The server's admin API, e.g. http://127.0.0.1:8082.
        #[arg(long)]
        server: String,
        /// The model.
        #[arg(long)]
        model: String,
        /// The tuner experiment directory.
        #[arg(long)]
        experiment: PathBuf,
        /// The canary's share of requests without a version (1-100).
        #[arg(long)]
        percent: u32,
        /// The new version's name (default trial-<id>).
        #[arg(long)]
        version: Option<String>,
        /// The metric that decides.
        #[arg(long, conflicts_with_all = ["promote", "rollback"])]
        metric: Option<String>,
        /// Promote when the metric is at least this.
        #[arg(long, requires = "metric", conflicts_with = "max")]
        min: Option<f64>,
        /// Promote when the metric is at most this.
        #[arg(long, requires = "metric")]
        max: Option<f64>,
        /// Canary answers a serving metric is measured on.
        #[arg(long, default_value_t = 100)]
        min_requests: u64,
        /// How long to wait for them (e.g. "60s").
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        window: Duration,
        /// Promote at once.
        #[arg(long, conflicts_with = "rollback")]
        promote: bool,
        /// Roll back at once.
        #[arg(long)]
        rollback: bool,
        /// A file holding the admin bearer token.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct NodeArgs {
    /// Node config file (TOML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Node name.
    #[arg(long)]
    name: Option<String>,
    /// Cluster name.
    #[arg(long)]
    cluster: Option<String>,
    /// libp2p mesh listen multiaddr (default /ip4/127.0.0.1/tcp/0).
    #[arg(long)]
    listen: Option<String>,
    /// Gossip address, host:port (port 0 picks a free one).
    #[arg(long)]
    gossip: Option<String>,
    /// Seeds, host:port (comma-separated).
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<String>>,
    /// A role (repeat for several).
    #[arg(long = "role")]
    roles: Vec<String>,
    /// Cluster secret file (see `manta secret`).
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Without --secret-file, listen on a non-loopback address anyway (an
    /// open cluster anyone who reaches it can join; refused without this).
    #[arg(long)]
    insecure: bool,
    /// Key file holding the node identity (created if missing).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// A supervision tree to run on this node.
    #[arg(long)]
    tree: Option<PathBuf>,
    /// CPUs this node offers for placement (default: its cores).
    #[arg(long)]
    cpus: Option<f64>,
    /// GPUs this node offers for placement (default 0).
    #[arg(long)]
    gpus: Option<u32>,
    /// Let tuners elsewhere in the cluster run command-line trials here
    /// (any command a member holding the cluster secret names).
    #[arg(long)]
    allow_command_trials: bool,
}

impl NodeArgs {
    fn into_config(self) -> Result<manta_cluster::NodeConfig, manta_cluster::ClusterError> {
        let mut c = match &self.config {
            Some(p) => manta_cluster::NodeConfig::load(p)?,
            None => manta_cluster::NodeConfig::default(),
        };
        if let Some(v) = self.name {
            c.name = v;
        }
        if let Some(v) = self.cluster {
            c.cluster = v;
        }
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = self.gossip {
            c.gossip = v;
        }
        if let Some(v) = self.seeds {
            c.seeds = v;
        }
        if !self.roles.is_empty() {
            c.roles = self.roles;
        }
        if self.secret_file.is_some() {
            c.secret_file = self.secret_file;
        }
        if self.insecure {
            c.insecure = true;
        }
        if self.key_file.is_some() {
            c.key_file = self.key_file;
        }
        if self.tree.is_some() {
            c.tree = self.tree;
        }
        if let Some(n) = self.cpus {
            if !(n.is_finite() && n > 0.0) {
                return Err(manta_cluster::ClusterError::Config(format!(
                    "--cpus must be a positive number, got {n}"
                )));
            }
            c.resources.cpus = n;
        }
        if let Some(n) = self.gpus {
            c.resources.gpus = n;
        }
        Ok(c)
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    manta::supervision::parse_duration(s)
}

fn init_logging(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    // A panic inside an actor is that actor's failure, reported by its
    // supervisor; log it (target manta::panic) instead of printing to stderr.
    std::panic::set_hook(Box::new(|info| {
        tracing::warn!(target: "manta::panic", "{info}");
    }));
}

/// Resolves on Ctrl-C or SIGTERM. The SIGTERM handler is installed when
/// this is called, not when the future is first polled: a SIGTERM that
/// arrives just after the `ready` line, before the node awaits it, still
/// stops the node gracefully instead of killing the process. (Ctrl-C
/// before then still ends the process at once, as it always did.)
fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        async move {
            match term {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(e) => {
                    tracing::warn!("cannot listen for SIGTERM ({e}); only Ctrl-C stops the tree");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn report(e: &CliError) -> ExitCode {
    eprintln!("error: {}", manta::actors::error_chain(e));
    ExitCode::FAILURE
}

fn main() -> ExitCode {
    match Args::parse().command {
        Command::Train {
            config,
            seeds,
            secret_file,
            json,
        } => {
            init_logging("warn");
            // The config is loaded before the runtime starts: an in-process
            // job gets the runtime that suits it (one thread for one CPU
            // worker).
            let config = match manta_ml::TrainConfig::load(&config) {
                Ok(c) => c,
                Err(e) => return report(&CliError::from(e)),
            };
            let runtime = if seeds.is_empty() {
                manta_ml::job::in_process_runtime(&config)
            } else {
                default_runtime()
            };
            let opts = manta::train_cli::TrainOptions {
                seeds,
                secret_file,
                json,
                progress: true,
            };
            block_on(runtime, async move {
                let mut out = std::io::stdout();
                match manta::train_cli::train(&config, &opts, &mut out).await {
                    Ok(_) => ExitCode::SUCCESS,
                    Err(e) => report(&e),
                }
            })
        }
        Command::Tune {
            config,
            resume,
            no_persist,
            seeds,
            secret_file,
            json,
        } => {
            init_logging("warn");
            let opts = manta::tune_cli::TuneOptions {
                config,
                resume,
                seeds,
                secret_file,
                json,
                progress: true,
                no_persist,
            };
            block_on(default_runtime(), async move {
                let mut out = std::io::stdout();
                let kinds = manta_ml::tune::Trainables::new();
                match manta::tune_cli::tune(&opts, &kinds, &mut out).await {
                    Ok(_) => ExitCode::SUCCESS,
                    Err(e) => report(&e),
                }
            })
        }
        command => block_on(default_runtime(), run(command)),
    }
}

fn default_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn block_on(
    runtime: std::io::Result<tokio::runtime::Runtime>,
    job: impl std::future::Future<Output = ExitCode>,
) -> ExitCode {
    match runtime {
        Ok(rt) => rt.block_on(job),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> ExitCode {
    match command {
        Command::Check { files } => {
            let kinds = manta::builtin::all_kinds(manta_ml::Directory::cluster());
            let mut out = std::io::stdout();
            let mut err = std::io::stderr();
            match cli::check(&files, &kinds, &mut out, &mut err) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => report(&CliError::Io(e)),
            }
        }
        Command::Run { file } => {
            init_logging("info");
            match cli::run(&file, &manta::KindRegistry::new(), stop_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => report(&e),
            }
        }
        Command::Demo { duration, once } => {
            init_logging("warn,manta::panic=off,manta::supervisor=off");
            let mut out = std::io::stdout();
            let exe = std::env::current_exe().ok();
            let opts = DemoOptions {
                duration,
                exe,
                once,
                no_serve: false,
            };
            match cli::demo(opts, &mut out, stop_signal()).await {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => report(&e),
            }
        }
        Command::Node(args) => {
            init_logging("info");
            let command_trials = args.allow_command_trials;
            let config = match args.into_config() {
                Ok(c) => c,
                Err(e) => return report(&CliError::Cluster(e)),
            };
            let mut out = std::io::stdout();
            match cli::node_with(config, command_trials, stop_signal(), &mut out).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => report(&e),
            }
        }
        Command::Status {
            seeds,
            secret_file,
            json,
            timeout,
        } => {
            let mut out = std::io::stdout();
            match cli::status(&seeds, secret_file.as_deref(), json, timeout, &mut out).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => report(&e),
            }
        }
        Command::Serve {
            action:
                Some(ServeAction::Promote {
                    server,
                    model,
                    experiment,
                    percent,
                    version,
                    metric,
                    min,
                    max,
                    min_requests,
                    window,
                    promote,
                    rollback,
                    token_file,
                }),
            ..
        } => {
            let token = match token_file.map(std::fs::read_to_string).transpose() {
                Ok(t) => t.map(|t| t.trim().to_owned()),
                Err(e) => return report(&CliError::Io(e)),
            };
            let then = match (promote, rollback) {
                (true, _) => Some(manta_serve::admin::Then::Promote),
                (_, true) => Some(manta_serve::admin::Then::Rollback),
                _ => None,
            };
            let args = manta_serve::cli::PromoteArgs {
                server,
                model,
                request: manta_serve::admin::PromoteRequest {
                    experiment,
                    version,
                    percent,
                    then,
                    metric,
                    min,
                    max,
                    min_requests: Some(min_requests),
                    window_ms: Some(window.as_millis() as u64),
                },
                token,
            };
            let mut out = std::io::stdout();
            match manta_serve::cli::promote(args, &mut out).await {
                Ok(a) if a.decision == "rolled_back" => ExitCode::from(2),
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Serve { config: None, .. } => report(&CliError::Usage(
            "manta serve needs --config FILE (or a subcommand: promote)".into(),
        )),
        Command::Serve {
            config: Some(config),
            seeds,
            secret_file,
            ..
        } => {
            init_logging("info");
            let mut out = std::io::stdout();
            let node = if seeds.is_empty() {
                None
            } else {
                match manta::train_cli::join_as_client(&seeds, secret_file).await {
                    Ok(n) => Some(n),
                    Err(e) => return report(&e),
                }
            };
            let served =
                manta_serve::cli::run_on(&config, node.as_ref(), &mut out, stop_signal()).await;
            if let Some(n) = node {
                n.leave().await;
            }
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        // `main` runs it on a runtime sized for the job.
        Command::Train { .. } => unreachable!("main handles `train` before `run`"),
        Command::Tune { .. } => unreachable!("main handles `tune` before `run`"),
        Command::Secret { file } => match manta_cluster::ClusterSecret::write_new(&file) {
            Ok(_) => {
                println!(
                    "wrote a new cluster secret to {} (mode 0600)",
                    file.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => report(&CliError::Cluster(e)),
        },
        Command::Kinds => {
            let kinds = manta::builtin::all_kinds(manta_ml::Directory::cluster());
            for k in kinds.names() {
                println!(
                    "{k}\n  args:     {}\n  messages: {}",
                    kinds.args_type(&k).unwrap_or("?"),
                    kinds.message_type(&k).unwrap_or("?")
                );
            }
            ExitCode::SUCCESS
        }
    }
}
