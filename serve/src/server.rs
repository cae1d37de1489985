//! A server: deployments in an actor system behind the HTTP front door.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use manta_actors::ActorSystem;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{GrpcConfig, HttpConfig, ServeConfig};
use crate::deployment::Deployment;
use crate::error::{StartError, TrafficError};
use crate::grpc::GrpcFront;
use crate::http::{AppInner, ModelVersions};
use crate::model::mlp_from_checkpoint;
use crate::traffic::Split;

/// A running server.
pub struct Server {
    addr: SocketAddr,
    state: Arc<AppInner>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    grpc: Option<GrpcFront>,
    deployments: Vec<Deployment>,
    drain: Duration,
    _system: ActorSystem,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("deployments", &self.deployments)
            .finish()
    }
}

impl Server {
    /// Loads every deployment's model from its checkpoint, starts the
    /// replicas in a new actor system and serves them.
    pub async fn start(config: &ServeConfig) -> Result<Self, StartError> {
        let system = ActorSystem::new();
        let mut deployments = Vec::new();
        for d in &config.deployments {
            let key = format!("{}:{}", d.model, d.version);
            let path = d.checkpoint.clone();
            let (factory, _) = tokio::task::spawn_blocking(move || mlp_from_checkpoint(&path))
                .await
                .map_err(|e| StartError::Config(format!("deployment {key}: loader: {e}")))?
                .map_err(|source| StartError::Model {
                    deployment: key.clone(),
                    source,
                })?;
            deployments.push(
                Deployment::start(&system, &d.model, &d.version, factory, d.options()).await?,
            );
        }
        let server =
            Self::serve_fronts(system, deployments, &config.http, config.grpc.as_ref()).await?;
        // Weighted models: the heaviest version first (the first listed on
        // a tie: the sort is stable) becomes the stable one, then the split.
        let mut weighted: BTreeMap<&str, Vec<(&str, u32)>> = BTreeMap::new();
        for d in &config.deployments {
            if let Some(w) = d.weight {
                weighted.entry(&d.model).or_default().push((&d.version, w));
            }
        }
        let mut applied = Ok(());
        for (model, mut weights) in weighted {
            weights.sort_by_key(|w| std::cmp::Reverse(w.1));
            applied = weights
                .first()
                .map_or(Ok(()), |heaviest| server.set_traffic(model, &[*heaviest]))
                .and_then(|()| server.set_traffic(model, &weights));
            if applied.is_err() {
                break;
            }
        }
        match applied {
            Ok(()) => Ok(server),
            Err(e) => {
                server.shutdown().await;
                Err(StartError::Config(format!("traffic: {e}")))
            }
        }
    }

    /// Serves deployments already started in `system`. The first version
    /// listed for a model gets all requests without a version (and is the
    /// stable one) until [`Server::set_traffic`] says otherwise.
    pub async fn serve(
        system: ActorSystem,
        deployments: Vec<Deployment>,
        http: &HttpConfig,
    ) -> Result<Self, StartError> {
        Self::serve_fronts(system, deployments, http, None).await
    }

    /// [`Server::serve`], with the protocol's gRPC service on
    /// `grpc.address` too (same deployments, split and metrics).
    pub async fn serve_with_grpc(
        system: ActorSystem,
        deployments: Vec<Deployment>,
        http: &HttpConfig,
        grpc: &GrpcConfig,
    ) -> Result<Self, StartError> {
        Self::serve_fronts(system, deployments, http, Some(grpc)).await
    }

    async fn serve_fronts(
        system: ActorSystem,
        deployments: Vec<Deployment>,
        http: &HttpConfig,
        grpc: Option<&GrpcConfig>,
    ) -> Result<Self, StartError> {
        let prometheus = crate::exporter::prometheus()?;
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
        let io = |source| StartError::Io {
            addr: http.address.clone(),
            source,
        };
        let listener = tokio::net::TcpListener::bind(&http.address)
            .await
            .map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        let state = Arc::new(AppInner {
            models: RwLock::new(models),
            max_body_bytes: http.max_body_bytes,
            ready: AtomicBool::new(true),
            prometheus,
        });
        let grpc = match grpc {
            Some(g) => Some(crate::grpc::start(state.clone(), g).await?),
            None => None,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let app = crate::http::router(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        tracing::info!(%addr, deployments = deployments.len(), "serving");
        Ok(Self {
            addr,
            state,
            stop: Some(stop),
            task,
            grpc,
            deployments,
            drain: Duration::from_millis(http.drain_timeout_ms),
            _system: system,
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

    /// Its deployments.
    pub fn deployments(&self) -> &[Deployment] {
        &self.deployments
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
        for d in &self.deployments {
            d.begin_stop();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(stop) = self.grpc.as_mut().and_then(|g| g.stop.take()) {
            let _ = stop.send(());
        }
        let deadline = tokio::time::Instant::now() + self.drain;
        let http_done = match tokio::time::timeout_at(deadline, &mut self.task).await {
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
        };
        let grpc_done = match self.grpc.as_mut() {
            None => true,
            Some(g) => match tokio::time::timeout_at(deadline, &mut g.task).await {
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
            },
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut drained = http_done && grpc_done;
        for d in &self.deployments {
            drained &= d.stop(left).await;
        }
        drained
    }
}
