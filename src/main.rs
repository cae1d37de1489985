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
    /// Run the demo: a supervision tree whose workers fail on schedule; prints
    /// restarts and an escalation as they happen, then stops (about 8 s).
    Demo {
        /// How long the tree runs before the demo stops it (e.g. "8s", "500ms").
        #[arg(long, default_value = "8s", value_parser = parse_duration)]
        duration: Duration,
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
    /// List the built-in actor kinds tree files can use.
    Kinds,
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

async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
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
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn report(e: &CliError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Command::Check { files } => {
            let kinds = manta::builtin::kinds();
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
            match cli::run(&file, manta::builtin::kinds(), stop_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => report(&e),
            }
        }
        Command::Demo { duration } => {
            init_logging("warn,manta::panic=off,manta::supervisor=off");
            let mut out = std::io::stdout();
            match cli::demo(DemoOptions { duration }, &mut out).await {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => report(&e),
            }
        }
        Command::Kinds => {
            let kinds = manta::builtin::kinds();
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
