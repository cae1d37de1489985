//! The library side of the `manta` command: `check`, `run` and `demo` take
//! plain arguments and writers; only `src/main.rs` parses command lines.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use manta_actors::{ActorSystem, ExitReason, KindRegistry};
use manta_supervision::tree::{self, TreeErrors};
use manta_supervision::{
    ChildStart, EventBus, Supervisor, SupervisorError, SupervisorEvent, SupervisorSpec,
};
use tokio::sync::broadcast;
use tokio::time::Instant;

/// The tree `manta demo` runs (`examples/demo.toml`), built in.
pub const DEMO_TREE: &str = include_str!("../examples/demo.toml");

/// Errors of the `manta` command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A cluster operation failed.
    // Transparent: the `error: ...` line prints the message once, not
    // once for this variant and again for its source.
    #[error(transparent)]
    Cluster(#[from] manta_cluster::ClusterError),
    /// A tree file is invalid.
    #[error(transparent)]
    Tree(#[from] TreeErrors),
    /// The tree failed to start (the source chain says which child and why).
    #[error("the supervision tree failed to start")]
    Start(#[from] SupervisorError),
    /// The root supervisor stopped on its own (escalation).
    #[error("the root supervisor exited: {0}")]
    RootExited(ExitReason),
    /// Writing output failed.
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
    /// Training failed.
    #[error(transparent)]
    Ml(#[from] manta_ml::MlError),
    /// Tuning failed.
    #[error(transparent)]
    Tune(#[from] manta_ml::tune::TuneError),
    /// The command line is incomplete.
    #[error("{0}")]
    Usage(String),
}

fn count(spec: &SupervisorSpec) -> (usize, usize) {
    let mut sups = 1;
    let mut workers = 0;
    for c in &spec.children {
        match &c.start {
            ChildStart::Supervisor(s) => {
                let (a, b) = count(s);
                sups += a;
                workers += b;
            }
            ChildStart::Factory(_) => workers += 1,
        }
    }
    (sups, workers)
}

/// Checks tree files; writes one line per valid file to `out` and every
/// problem to `err`. Returns whether all files are valid.
pub fn check(
    files: &[PathBuf],
    kinds: &KindRegistry,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<bool> {
    let mut ok = true;
    for f in files {
        match tree::load_file(f, kinds) {
            Ok(spec) => {
                let (s, w) = count(&spec);
                writeln!(
                    out,
                    "{}: ok (root `{}`, {s} supervisors, {w} workers)",
                    f.display(),
                    spec.name
                )?;
            }
            Err(e) => {
                ok = false;
                writeln!(err, "{e}")?;
                writeln!(err, "{}: {} problem(s)", f.display(), e.0.len())?;
            }
        }
    }
    Ok(ok)
}

/// Starts the tree in `path` and runs it until `stop` resolves (then shuts
/// it down in order) or the root supervisor exits on its own (an error).
///
/// The tree may name every kind of [`crate::builtin::all_kinds`] and any
/// in `extra` (a program embedding the command registers its own there).
pub async fn run(
    path: &Path,
    extra: &KindRegistry,
    stop: impl Future<Output = ()>,
) -> Result<(), CliError> {
    let kinds = KindRegistry::new();
    let system = ActorSystem::with_kinds(kinds.clone());
    crate::builtin::register(&kinds);
    manta_ml::register_kinds(&kinds, manta_ml::Directory::Local(system.clone()));
    kinds.extend(extra);
    let spec = tree::load_file(path, &kinds)?;
    let sup = Supervisor::start(&system, spec).await?;
    tracing::info!(tree = %path.display(), supervisor = sup.name(), "tree running; Ctrl-C stops it");
    tokio::select! {
        _ = stop => {
            tracing::info!("stopping the tree");
            let reason = sup.shutdown().await;
            tracing::info!(%reason, "tree stopped");
            Ok(())
        }
        reason = sup.monitor().wait() => Err(CliError::RootExited(reason)),
    }
}

/// Options of `manta demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How long the tree runs before the demo stops it.
    pub duration: Duration,
    /// The `manta` binary, to start the cluster part's node processes
    /// (`None` skips the cluster part).
    pub exe: Option<PathBuf>,
    /// Stop serving right after the serving step's own request (else it
    /// serves until Ctrl-C).
    pub once: bool,
    /// Skip the tuning and serving steps.
    pub no_serve: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(8),
            exe: None,
            once: true,
            no_serve: false,
        }
    }
}

/// The tree the cluster demo runs on its first node.
pub const CLUSTER_DEMO_TREE: &str = include_str!("../examples/cluster-demo.toml");

/// What the demo saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DemoSummary {
    /// Restarts performed.
    pub restarts: usize,
    /// Escalations.
    pub escalations: usize,
    /// Panics contained.
    pub panics: usize,
}

/// Runs the built-in demo tree for `opts.duration`, printing every
/// supervisor decision as it happens, then stops the tree.
pub async fn demo(
    opts: DemoOptions,
    out: &mut dyn Write,
    until: impl std::future::Future<Output = ()>,
) -> Result<DemoSummary, CliError> {
    let kinds = crate::builtin::kinds();
    let bus = EventBus::new();
    let mut rx = bus.subscribe();
    let spec = tree::load_str(DEMO_TREE, "examples/demo.toml", &kinds)?.events(bus);
    writeln!(
        out,
        "Manta demo: supervision tree `{}` from examples/demo.toml, running for {:?}.",
        spec.name, opts.duration
    )?;
    writeln!(
        out,
        "`flaky` panics 1.5 s after each start; `payments/gateway` fails every 600 ms until\n\
         `payments` exceeds its intensity (2 restarts in 5 s) and escalates to the root.\n"
    )?;
    let system = ActorSystem::with_kinds(kinds);
    let t0 = Instant::now();
    let sup = Supervisor::start(&system, spec).await?;
    let mut summary = DemoSummary::default();
    let deadline = tokio::time::sleep(opts.duration);
    tokio::pin!(deadline);
    let root_exit = sup.monitor();
    let root_exited = tokio::select! {
        _ = &mut deadline => None,
        r = root_exit.wait() => Some(r),
        _ = print_events(&mut rx, t0, &mut summary, out) => None,
    };
    if let Some(reason) = root_exited {
        drain(&mut rx, t0, &mut summary, out)?;
        return Err(CliError::RootExited(reason));
    }
    drain(&mut rx, t0, &mut summary, out)?;
    writeln!(
        out,
        "\nTime is up: stopping the tree (children stop in reverse start order)."
    )?;
    let reason = sup.shutdown().await;
    drain(&mut rx, t0, &mut summary, out)?;
    writeln!(
        out,
        "\nSummary: {} restarts, {} escalations, {} panics contained; the root stopped with `{reason}`.",
        summary.restarts, summary.escalations, summary.panics
    )?;
    // The cluster part's tuning experiment is what the serving step
    // serves; without the cluster part a tiny in-process one is made.
    let work = std::env::temp_dir().join(format!("manta-demo-{}", std::process::id()));
    let result = async {
        let tuned = match &opts.exe {
            Some(exe) => Some(crate::demo_cluster::run(exe, &work, out).await?),
            None => None,
        };
        if !opts.no_serve {
            let experiment = match tuned {
                Some(dir) => dir,
                None => crate::demo_serve::tiny_tune(&work, out).await?,
            };
            crate::demo_serve::serve_step(&experiment, opts.once, until, out).await?;
        }
        Ok::<(), CliError>(())
    }
    .await;
    let _ = std::fs::remove_dir_all(&work);
    result?;
    Ok(summary)
}

fn note(
    ev: &SupervisorEvent,
    t0: Instant,
    summary: &mut DemoSummary,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    match ev {
        SupervisorEvent::ChildStarted { restarts, .. } if *restarts > 0 => summary.restarts += 1,
        SupervisorEvent::Escalated { .. } => summary.escalations += 1,
        SupervisorEvent::ChildExited {
            reason: ExitReason::Panicked(_),
            ..
        } => summary.panics += 1,
        _ => {}
    }
    writeln!(out, "{:>8.3}s  {ev}", t0.elapsed().as_secs_f64())
}

async fn print_events(
    rx: &mut broadcast::Receiver<SupervisorEvent>,
    t0: Instant,
    summary: &mut DemoSummary,
    out: &mut dyn Write,
) {
    loop {
        match rx.recv().await {
            Ok(ev) => {
                if note(&ev, t0, summary, out).is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let _ = writeln!(out, "({n} events skipped)");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn drain(
    rx: &mut broadcast::Receiver<SupervisorEvent>,
    t0: Instant,
    summary: &mut DemoSummary,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    while let Ok(ev) = rx.try_recv() {
        note(&ev, t0, summary, out)?;
    }
    Ok(())
}

/// Runs a cluster node until `stop` resolves: prints the ready line to
/// `out`, logs membership changes, runs `config.tree` if set, and leaves
/// the cluster gracefully at the end.
pub async fn node(
    config: manta_cluster::NodeConfig,
    stop: impl Future<Output = ()>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    node_with(config, false, stop, out).await
}

/// [`node`]; with `command_trials` other nodes' tuners may run
/// command-line trials here (`--allow-command-trials`).
pub async fn node_with(
    config: manta_cluster::NodeConfig,
    command_trials: bool,
    stop: impl Future<Output = ()>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    use manta_cluster::{MemberEvent, Node};
    // Checked before joining, so a bad file never starts a node...
    // One registry for everything this node does with kinds.
    let directory = manta_ml::Directory::cluster();
    let kinds = crate::builtin::all_kinds_with(directory.clone(), command_trials);
    let tree_path = config.tree.clone();
    if let Some(path) = &tree_path {
        tree::load_file(path, &kinds)?;
    }
    let system = ActorSystem::with_kinds(kinds.clone());
    let node = Node::start(config, system.clone()).await?;
    directory.bind(node.names());
    // ...and loaded again with the node as placer for placed children.
    let tree_spec = match &tree_path {
        Some(path) => Some(
            tree::Loader::new(&kinds)
                .placer(node.cluster())
                .file(path)?,
        ),
        None => None,
    };
    writeln!(out, "{}", node.ready_line())?;
    out.flush()?;
    let mut events = node.membership().subscribe();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(MemberEvent::NodeUp(m)) => {
                    tracing::info!(node = %m.id, name = %m.name, gossip = %m.gossip, "NodeUp")
                }
                Ok(MemberEvent::NodeDown(m)) => {
                    tracing::warn!(node = %m.id, name = %m.name, "NodeDown")
                }
                Ok(MemberEvent::NodeLeft(m)) => {
                    tracing::info!(node = %m.id, name = %m.name, "NodeLeft")
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!("{n} membership events skipped")
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    let sup = match tree_spec {
        Some(spec) => Some(Supervisor::start(&system, spec).await?),
        None => None,
    };
    let result = match &sup {
        Some(sup) => tokio::select! {
            _ = stop => Ok(()),
            reason = sup.monitor().wait() => Err(CliError::RootExited(reason)),
        },
        None => {
            stop.await;
            Ok(())
        }
    };
    if let Some(sup) = sup {
        sup.shutdown().await;
    }
    tracing::info!("leaving the cluster");
    node.leave().await;
    result
}

/// Prints the members the nodes at `seeds` know, without joining.
pub async fn status(
    seeds: &[String],
    secret_file: Option<&Path>,
    json: bool,
    timeout: Duration,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    use manta_cluster::{ClusterError, ClusterSecret, query_status};
    let secret = match secret_file {
        Some(p) => Some(ClusterSecret::read(p)?),
        None => None,
    };
    let mut addrs = Vec::new();
    for s in seeds {
        use std::net::ToSocketAddrs;
        let a = s
            .to_socket_addrs()
            .map_err(|e| ClusterError::Config(format!("seed `{s}`: {e}")))?
            .next()
            .ok_or_else(|| ClusterError::Config(format!("seed `{s}` resolves to nothing")))?;
        addrs.push(a);
    }
    let st = query_status(&addrs, secret.as_ref(), timeout).await?;
    print_status(&st, json, out)?;
    Ok(())
}

/// Prints a status answer as `manta status` does: one JSON object, or a
/// table. Names, roles, actors and the rest come from other nodes, so the
/// table shows control characters (ESC, CR, LF, ...) and bidirectional
/// overrides escaped (`\u{1b}`, `\n`), never raw: a node cannot move the
/// cursor, recolour or rewrite the operator's terminal. JSON escapes them
/// itself.
pub fn print_status(
    st: &manta_cluster::ClusterStatus,
    json: bool,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    if json {
        let nodes = serde_json::json!({ "nodes": st.nodes, "dropped": st.dropped });
        return writeln!(out, "{nodes}");
    }
    writeln!(
        out,
        "{:<54} {:<12} {:<6} {:<21} {:<16} {:<24} actors",
        "id", "name", "state", "gossip", "roles", "lane"
    )?;
    for n in &st.nodes {
        writeln!(
            out,
            "{:<54} {:<12} {:<6} {:<21} {:<16} {:<24} {}",
            terminal_safe(&n.id),
            terminal_safe(&n.name),
            terminal_safe(&n.state),
            terminal_safe(&n.gossip),
            terminal_safe(&n.roles.join(",")),
            terminal_safe(n.lane.as_deref().unwrap_or("-")),
            terminal_safe(&n.actors.join(","))
        )?;
    }
    if !st.dropped.is_empty() {
        let d: Vec<String> = st
            .dropped
            .iter()
            .map(|(k, v)| format!("{}={v}", terminal_safe(k)))
            .collect();
        writeln!(
            out,
            "datagrams dropped by the answering node: {}",
            d.join(" ")
        )?;
    }
    Ok(())
}

/// `text` with control characters and bidirectional-text overrides
/// escaped as Rust writes them (`\u{1b}`, `\n`, `\u{202e}`).
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    fn unsafe_char(c: char) -> bool {
        c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}
