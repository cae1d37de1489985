//! `manta serve --config F`, in-process, and `manta serve promote`.

use std::io::Write;
use std::path::Path;

use crate::config::ServeConfig;
use crate::error::StartError;
use crate::server::Server;

/// Serves the deployments of the config file at `path`; writes the
/// address to `out` once ready, then serves until Ctrl-C (or `until`
/// resolves), drains and stops.
pub async fn run(
    path: &Path,
    out: &mut (dyn Write + Send),
    until: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    run_on(path, None, out, until).await
}

/// [`run`]; with `node` (`manta serve --seeds`) the replicas run on the
/// nodes of its cluster ([`Server::start_on`]) and each deployment's line
/// names their nodes.
pub async fn run_on(
    path: &Path,
    node: Option<&manta_cluster::Node>,
    out: &mut (dyn Write + Send),
    until: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    let config = ServeConfig::from_file(path)?;
    let server = match node {
        Some(n) => Server::start_on(&config, n).await?,
        None => Server::start(&config).await?,
    };
    let addr = server.local_addr();
    let io = |source| StartError::Io {
        addr: addr.to_string(),
        source,
    };
    for d in server.deployments() {
        let scaling = match &d.options().autoscaling {
            Some(a) => format!(
                " (autoscaling {}..={}, target {} in flight per replica)",
                a.min_replicas, a.max_replicas, a.target_ongoing_requests
            ),
            None => String::new(),
        };
        let nodes = if node.is_some() && d.replicas_running() > 0 {
            format!(" on {}", d.replica_nodes().join(", "))
        } else {
            String::new()
        };
        writeln!(
            out,
            "deployment {}:{}: {} replicas{nodes}{scaling}",
            d.model(),
            d.version(),
            d.replicas()
        )
        .map_err(io)?;
    }
    if let Some(grpc) = server.grpc_addr() {
        writeln!(out, "serving gRPC on {grpc}").map_err(io)?;
    }
    if let Some(admin) = server.admin_addr() {
        writeln!(out, "admin API on http://{admin}").map_err(io)?;
    }
    writeln!(out, "serving on http://{addr} (Ctrl-C stops)").map_err(io)?;
    out.flush().map_err(io)?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = until => {}
    }
    writeln!(out, "draining").map_err(io)?;
    let drained = server.shutdown().await;
    writeln!(
        out,
        "{}",
        if drained {
            "stopped"
        } else {
            "stopped (drain timed out)"
        }
    )
    .map_err(io)?;
    Ok(())
}

/// What `manta serve promote` asks the admin API at `server`.
#[derive(Debug, Clone)]
pub struct PromoteArgs {
    /// The admin API, `http://HOST:PORT`.
    pub server: String,
    /// The model.
    pub model: String,
    /// The request (the experiment directory made absolute here: the
    /// server reads it).
    pub request: crate::admin::PromoteRequest,
    /// The bearer token, when the admin API needs one.
    pub token: Option<String>,
}

/// Why `manta serve promote` failed.
#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    /// The request did not get through.
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
    /// The server refused it.
    #[error("the server answered {status}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Its error message.
        message: String,
    },
    /// The answer was not a promote answer.
    #[error("unexpected answer: {0}")]
    Answer(String),
    /// The experiment directory cannot be resolved.
    #[error("{path}: {source}")]
    Path {
        /// The directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Runs a promote through the admin API and writes what happened to `out`;
/// answers the server's account.
pub async fn promote(
    mut args: PromoteArgs,
    out: &mut (dyn Write + Send),
) -> Result<crate::admin::PromoteAnswer, PromoteError> {
    let dir = &args.request.experiment;
    args.request.experiment = std::fs::canonicalize(dir).map_err(|source| PromoteError::Path {
        path: dir.display().to_string(),
        source,
    })?;
    let body =
        serde_json::to_string(&args.request).map_err(|e| PromoteError::Answer(e.to_string()))?;
    // The server may wait up to the window for canary answers.
    let wait = std::time::Duration::from_millis(args.request.window_ms.unwrap_or(60_000))
        + std::time::Duration::from_secs(60);
    let (status, text) = crate::client::request(
        &args.server,
        "POST",
        &format!("/admin/models/{}/promote", args.model),
        Some(&body),
        args.token.as_deref(),
        wait,
    )
    .await?;
    if status != 200 {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(text);
        return Err(PromoteError::Refused { status, message });
    }
    let answer: crate::admin::PromoteAnswer =
        serde_json::from_str(&text).map_err(|e| PromoteError::Answer(format!("{e}: {text}")))?;
    let weights: Vec<String> = answer
        .weights
        .iter()
        .map(|(v, w)| format!("{v}={w}"))
        .collect();
    let _ = writeln!(
        out,
        "{}: version {} (trial {}, {}) {}: {}\ntraffic now: {} (stable {})",
        answer.model,
        answer.version,
        answer.trial,
        answer.trial_metric,
        answer.decision.replace('_', " "),
        answer.reason,
        weights.join(", "),
        answer.stable
    );
    Ok(answer)
}
