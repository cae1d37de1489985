//! A server: deployments in an actor system behind the HTTP front door
//! (and the gRPC one, when configured), and the admin API on its own
//! listener.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use manta_actors::ActorSystem;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{
    AdminConfig, DeploymentConfig, GrpcConfig, HttpConfig, ModelSource, ServeConfig,
};
use crate::deployment::{Deployment, DeploymentOptions};
use crate::error::{StartError, TrafficError};
use crate::http::{AppInner, ModelVersions};
use crate::model::{
    MlpWeights, ModelFactory, mlp_weights_from_checkpoint, mlp_weights_from_experiment,
};
use crate::traffic::Split;

/// One listener's task and its stop signal.
struct Listener {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    state: Arc<AppInner>,
    http: Listener,
    admin: Option<Listener>,
    grpc: Option<crate::grpc::GrpcFront>,
    drain: Duration,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("admin_addr", &self.admin_addr)
            .field("deployments", &self.deployments())
            .finish()
    }
}

/// A deployment's model, loaded (blocking file reads off the runtime):
/// its factory, its weights (what replicas on other nodes are sent) and,
/// for an experiment, the best trial it is.
pub(crate) async fn load_weights(
    key: &str,
    source: ModelSource,
) -> Result<
    (
        ModelFactory,
        MlpWeights,
        Option<manta_ml::tune::store::BestCheckpoint>,
    ),
    StartError,
> {
    let joined = tokio::task::spawn_blocking(move || match source {
        ModelSource::Checkpoint(path) => mlp_weights_from_checkpoint(&path)
            .map(|(f, w, _)| (f, w, None))
            .map_err(Ok),
        ModelSource::Experiment(dir) => mlp_weights_from_experiment(&dir)
            .map(|(f, w, b)| (f, w, Some(b)))
            .map_err(Err),
        ModelSource::Chain { next, .. } => Err(Ok(manta_ml::MlError::Config(format!(
            "a composed deployment (next = {next}) has no model of its own to load"
        )))),
    })
    .await
    .map_err(|e| StartError::Config(format!("deployment {key}: loader: {e}")))?;
    joined.map_err(|e| match e {
        Ok(source) => StartError::Model {
            deployment: key.to_owned(),
            source,
        },
        Err(source) => StartError::Experiment {
            deployment: key.to_owned(),
            source,
        },
    })
}

impl Server {
    /// Loads every deployment's model (checkpoint or experiment), starts
    /// the replicas in a new actor system and serves them, with the admin
    /// API on `config.admin`.
    pub async fn start(config: &ServeConfig) -> Result<Self, StartError> {
        Self::start_with(config, ActorSystem::new(), None).await
    }

    /// [`Server::start`] as a member of `node`'s cluster (a client node:
    /// `manta serve --seeds`): every deployment's replicas run on the
    /// member nodes (`manta node`), placed by the deployment's `cpus`,
    /// `gpus` and `role`, spread over the nodes; a replica whose node
    /// dies is replaced on a live one. The fronts stay in this process.
    pub async fn start_on(
        config: &ServeConfig,
        node: &manta_cluster::Node,
    ) -> Result<Self, StartError> {
        let placement = crate::remote::ClusterPlacement::new(node, Default::default());
        Self::start_with(config, node.system().clone(), Some(placement)).await
    }

    async fn start_with(
        config: &ServeConfig,
        system: ActorSystem,
        placement: Option<crate::remote::ClusterPlacement>,
    ) -> Result<Self, StartError> {
        let mut deployments = Vec::new();
        let started: Result<(), StartError> = async {
            // Deployments with a model first; composed ones (`next`) then, in
            // front of them.
            for d in config.deployments.iter().filter(|d| d.next.is_none()) {
                let key = format!("{}:{}", d.model, d.version);
                let source = d.source().ok_or_else(|| {
                    StartError::Config(format!(
                        "deployment {key}: exactly one of `checkpoint` and `experiment`"
                    ))
                })?;
                let (factory, weights, best) = load_weights(&key, source).await?;
                if let Some(b) = best {
                    tracing::info!(deployment = %key, trial = b.trial, metric = b.metric, checkpoint = %b.checkpoint.display(), "serving the best trial");
                }
                let started = match &placement {
                    Some(p) => {
                        let remote = crate::remote::RemoteReplicas {
                            placement: p.clone(),
                            cpus: d.cpus,
                            gpus: d.gpus,
                            role: d.role.clone(),
                            spec: weights.spec,
                            params: weights.params,
                        };
                        Deployment::start_on(
                            &system,
                            &d.model,
                            &d.version,
                            factory,
                            d.options(),
                            remote,
                        )
                        .await
                    }
                    None => {
                        Deployment::start(&system, &d.model, &d.version, factory, d.options()).await
                    }
                };
                deployments.push(started?);
            }
            for d in config.deployments.iter().filter(|d| d.next.is_some()) {
                let key = format!("{}:{}", d.model, d.version);
                let started = match d.source() {
                    Some(ModelSource::Chain { next, preprocess }) => {
                        match deployments
                            .iter()
                            .find(|t| format!("{}:{}", t.model(), t.version()) == next)
                            .cloned()
                        {
                            Some(target) => {
                                let first = crate::compose::affine(
                                    target.features(),
                                    preprocess.scale,
                                    preprocess.offset,
                                );
                                let factory = crate::compose::chain(
                                    first,
                                    target,
                                    tokio::runtime::Handle::current(),
                                );
                                Deployment::start(&system, &d.model, &d.version, factory, d.options())
                                    .await
                            }
                            None => Err(StartError::Config(format!(
                                "deployment {key}: next = {next} is not a deployment with a model"
                            ))),
                        }
                    }
                    _ => Err(StartError::Config(format!(
                        "deployment {key}: `next` excludes `checkpoint` and `experiment`"
                    ))),
                };
                deployments.push(started?);
            }
            Ok(())
        }
        .await;
        if let Err(e) = started {
            // Those already started stop (with their replicas on other
            // nodes).
            for dep in &deployments {
                dep.stop(Duration::ZERO).await;
            }
            return Err(e);
        }
        // In the config's order (the first version listed of a model takes
        // its unversioned requests).
        deployments.sort_by_key(|dep| {
            config
                .deployments
                .iter()
                .position(|d| d.model == dep.model() && d.version == dep.version())
        });
        let server = Self::serve_fronts(
            system,
            deployments,
            &config.http,
            &config.admin,
            config.grpc.as_ref(),
        )
        .await?;
        match apply_weights(&server, &config.deployments) {
            Ok(()) => Ok(server),
            Err(e) => {
                server.shutdown().await;
                Err(StartError::Config(format!("traffic: {e}")))
            }
        }
    }

    /// Serves deployments already started in `system`, without the admin
    /// API. The first version listed for a model gets all requests
    /// without a version (and is the stable one) until
    /// [`Server::set_traffic`] says otherwise.
    pub async fn serve(
        system: ActorSystem,
        deployments: Vec<Deployment>,
        http: &HttpConfig,
    ) -> Result<Self, StartError> {
        Self::serve_fronts(system, deployments, http, &admin_off(), None).await
    }

    /// [`Server::serve`], with the protocol's gRPC service on
    /// `grpc.address` too (same deployments, split and metrics).
    pub async fn serve_with_grpc(
        system: ActorSystem,
        deployments: Vec<Deployment>,
        http: &HttpConfig,
        grpc: &GrpcConfig,
    ) -> Result<Self, StartError> {
        Self::serve_fronts(system, deployments, http, &admin_off(), Some(grpc)).await
    }

    /// [`Server::serve`] with the admin API on `admin.address` (none when
    /// it is empty). Refuses an admin address off loopback without a
    /// token file.
    pub async fn serve_with_admin(
        system: ActorSystem,
        deployments: Vec<Deployment>,
        http: &HttpConfig,
        admin: &AdminConfig,
    ) -> Result<Self, StartError> {
        Self::serve_fronts(system, deployments, http, admin, None).await
    }

    async fn serve_fronts(
        system: ActorSystem,
        deployments: Vec<Deployment>,
        http: &HttpConfig,
        admin: &AdminConfig,
        grpc: Option<&GrpcConfig>,
    ) -> Result<Self, StartError> {
        let prometheus = crate::exporter::prometheus()?;
        for d in &deployments {
            d.publish_gauges();
        }
        let token = match &admin.token_file {
            Some(path) => Some(read_token(path)?),
            None => None,
        };
        let mut listed: BTreeMap<String, (Vec<String>, BTreeMap<String, Deployment>)> =
            BTreeMap::new();
        for d in &deployments {
            let (order, versions) = listed.entry(d.model().to_owned()).or_default();
            if versions.insert(d.version().to_owned(), d.clone()).is_some() {
                return Err(StartError::Config(format!(
                    "deployment {}:{} given twice",
                    d.model(),
                    d.version()
                )));
            }
            order.push(d.version().to_owned());
        }
        let models: BTreeMap<String, ModelVersions> = listed
            .into_iter()
            .filter_map(|(model, (order, versions))| {
                let first = order.first()?.clone();
                let split = Arc::new(Mutex::new(Split::new(&order, &first)));
                Some((model, ModelVersions { versions, split }))
            })
            .collect();
        let (listener, addr) = bind(&http.address).await?;
        let admin_listener = if admin.address.is_empty() {
            None
        } else {
            let (l, a) = bind(&admin.address).await?;
            if token.is_none() && !a.ip().is_loopback() {
                return Err(StartError::Config(format!(
                    "admin.address {} is not a loopback address: set admin.token_file so that admin requests need a bearer token",
                    admin.address
                )));
            }
            Some((l, a))
        };
        let state = Arc::new(AppInner {
            models: RwLock::new(models),
            max_body_bytes: http.max_body_bytes,
            ready: AtomicBool::new(true),
            prometheus,
            system,
            admin_token: token,
        });
        let grpc = match grpc {
            Some(g) => Some(crate::grpc::start(state.clone(), g).await?),
            None => None,
        };
        let http_task = spawn_listener(listener, crate::http::router(state.clone()));
        let (admin_task, admin_addr) = match admin_listener {
            Some((l, a)) => (
                Some(spawn_listener(l, crate::admin::router(state.clone()))),
                Some(a),
            ),
            None => (None, None),
        };
        tracing::info!(%addr, admin = ?admin_addr, deployments = deployments.len(), "serving");
        Ok(Self {
            addr,
            admin_addr,
            state,
            http: http_task,
            admin: admin_task,
            grpc,
            drain: Duration::from_millis(http.drain_timeout_ms),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the gRPC service listens on, when configured.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().map(|g| g.addr)
    }

    /// The admin API's address, when it has one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Its deployments now (versions added at run time included), by
    /// model and version.
    pub fn deployments(&self) -> Vec<Deployment> {
        self.state.deployments()
    }

    /// The deployment of `model` at `version`.
    pub fn deployment(&self, model: &str, version: &str) -> Option<Deployment> {
        self.state
            .deployments()
            .into_iter()
            .find(|d| d.model() == model && d.version() == version)
    }

    /// Starts a new version of `model` (a new model when there is none)
    /// from `factory`; it gets no requests without a version until
    /// [`Server::set_traffic`] gives it weight (a new model's first
    /// version gets them all).
    pub async fn add_version(
        &self,
        model: &str,
        version: &str,
        factory: ModelFactory,
        options: DeploymentOptions,
    ) -> Result<Deployment, StartError> {
        crate::admin::add_version(&self.state, model, version, factory, options).await
    }

    /// Stops and removes `model`'s `version` (drained); refused while it
    /// has weight or is the stable version.
    pub async fn remove_version(&self, model: &str, version: &str) -> Result<(), TrafficError> {
        let d = self.state.remove_version(model, version)?;
        d.stop(self.drain).await;
        Ok(())
    }

    /// Splits `model`'s requests without a version between its versions
    /// by `weights` (relative: 90/10 and 9/1 are the same split; versions
    /// not named get 0), effective for the next request. Requests already
    /// routed finish on the version they were routed to: every version
    /// keeps its replicas whatever its weight. A version given all the
    /// weight becomes the stable one, the one [`Server::rollback`]
    /// returns to. Refused, leaving the split as it was, for an unknown
    /// model or version or all-zero weights.
    pub fn set_traffic(&self, model: &str, weights: &[(&str, u32)]) -> Result<(), TrafficError> {
        let weights: Vec<(String, u32)> =
            weights.iter().map(|(v, w)| ((*v).to_owned(), *w)).collect();
        self.state.with_split(model, |s| s.set(model, &weights))
    }

    /// `model`'s weights, in the order its versions were listed, and its
    /// stable version.
    pub fn traffic(&self, model: &str) -> Result<(Vec<(String, u32)>, String), TrafficError> {
        self.state
            .with_split(model, |s| Ok((s.weights(), s.stable().to_owned())))
    }

    /// Sends all of `model`'s requests without a version back to its
    /// stable version (the last one that had all the traffic); answers it.
    pub fn rollback(&self, model: &str) -> Result<String, TrafficError> {
        self.state.with_split(model, |s| s.rollback(model))
    }

    /// Drains and stops: reports not ready, stops accepting connections,
    /// lets the requests in flight finish (up to the drain timeout), then
    /// stops the replicas. Answers whether everything finished in time.
    pub async fn shutdown(mut self) -> bool {
        self.state.ready.store(false, Ordering::Release);
        let deployments = self.state.deployments();
        for d in &deployments {
            d.begin_stop();
        }
        let deadline = tokio::time::Instant::now() + self.drain;
        let mut drained = true;
        if let Some(admin) = self.admin.as_mut() {
            drained &= admin.stop(deadline).await;
        }
        if let Some(stop) = self.grpc.as_mut().and_then(|g| g.stop.take()) {
            let _ = stop.send(());
        }
        drained &= self.http.stop(deadline).await;
        if let Some(g) = self.grpc.as_mut() {
            drained &= match tokio::time::timeout_at(deadline, &mut g.task).await {
                Ok(Ok(Ok(()))) => true,
                Ok(Ok(Err(e))) => {
                    tracing::warn!(error = %e, "grpc server failed");
                    false
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "grpc server task failed");
                    false
                }
                Err(_) => {
                    g.task.abort();
                    false
                }
            };
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        for d in &deployments {
            drained &= d.stop(left).await;
        }
        drained
    }
}

impl Listener {
    async fn stop(&mut self, deadline: tokio::time::Instant) -> bool {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout_at(deadline, &mut self.task).await {
            Ok(Ok(Ok(()))) => true,
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "http server failed");
                false
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "http server task failed");
                false
            }
            Err(_) => {
                self.task.abort();
                false
            }
        }
    }
}

/// No admin API.
fn admin_off() -> AdminConfig {
    AdminConfig {
        address: String::new(),
        token_file: None,
    }
}

async fn bind(address: &str) -> Result<(tokio::net::TcpListener, SocketAddr), StartError> {
    let io = |source| StartError::Io {
        addr: address.to_owned(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(address).await.map_err(io)?;
    let addr = listener.local_addr().map_err(io)?;
    Ok((listener, addr))
}

fn spawn_listener(listener: tokio::net::TcpListener, app: axum::Router) -> Listener {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    Listener {
        stop: Some(stop),
        task,
    }
}

fn read_token(path: &Path) -> Result<String, StartError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| StartError::Config(format!("admin.token_file {}: {e}", path.display())))?;
    let token = text.trim().to_owned();
    if token.len() < 16 {
        return Err(StartError::Config(format!(
            "admin.token_file {}: the token must be at least 16 characters",
            path.display()
        )));
    }
    Ok(token)
}

/// Weighted models: the heaviest version first (the first listed on a
/// tie: the sort is stable) becomes the stable one, then the split.
fn apply_weights(server: &Server, deployments: &[DeploymentConfig]) -> Result<(), TrafficError> {
    let mut weighted: BTreeMap<&str, Vec<(&str, u32)>> = BTreeMap::new();
    for d in deployments {
        if let Some(w) = d.weight {
            weighted.entry(&d.model).or_default().push((&d.version, w));
        }
    }
    for (model, mut weights) in weighted {
        weights.sort_by_key(|w| std::cmp::Reverse(w.1));
        if let Some(heaviest) = weights.first() {
            server.set_traffic(model, &[*heaviest])?;
        }
        server.set_traffic(model, &weights)?;
    }
    Ok(())
}
