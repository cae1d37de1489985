//! `manta serve --config F`, in-process.

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
    let config = ServeConfig::from_file(path)?;
    let server = Server::start(&config).await?;
    let addr = server.local_addr();
    let io = |source| StartError::Io {
        addr: addr.to_string(),
        source,
    };
    for d in server.deployments() {
        writeln!(
            out,
            "deployment {}:{}: {} replicas",
            d.model(),
            d.version(),
            d.options().replicas
        )
        .map_err(io)?;
    }
    if let Some(grpc) = server.grpc_addr() {
        writeln!(out, "serving gRPC on {grpc}").map_err(io)?;
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
