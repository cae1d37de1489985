//! # manta-serve: model serving on Manta actors
//!
//! A [`Deployment`] is N replica actors of one model version. A router
//! picks a replica by power of two choices on requests in flight; each
//! replica batches the requests in its mailbox (`max_batch_size`,
//! `batch_wait_timeout_ms`); queues are bounded (`max_ongoing_requests`
//! per replica, `max_queued_requests` per deployment) and a request
//! beyond them is refused ([`ServeError::Overloaded`], HTTP 503 with
//! `Retry-After`).
//!
//! Several versions of a model serve at once: a request naming a
//! version goes to it, one without is routed by the model's weighted
//! split ([`Server::set_traffic`], [`Server::rollback`]).
//!
//! A [`Server`] puts deployments behind the Open Inference Protocol
//! (KServe v2) REST API (axum) and, when configured, its gRPC service
//! ([`grpc`], tonic), and serves Prometheus metrics at
//! `GET /metrics`. Models come from manta-ml checkpoints
//! ([`model::mlp_from_checkpoint`]) or any [`Model`].

pub mod admin;
pub mod cli;
pub mod client;
pub mod compose;
pub mod config;
pub mod deployment;
mod error;
pub mod exporter;
pub mod grpc;
mod http;
pub mod model;
pub mod protocol;
pub mod remote;
mod replica;
pub mod server;
mod timer;
mod traffic;

pub use config::{AdminConfig, DeploymentConfig, GrpcConfig, HttpConfig, ModelSource, ServeConfig};
pub use deployment::{AutoscalingConfig, Deployment, DeploymentOptions, DeploymentStats};
pub use error::{ServeError, StartError, TrafficError};
pub use model::{MlpModel, Model, ModelFactory};
pub use remote::{ClusterPlacement, REPLICA_KIND, RemoteReplicas, register_kinds};
pub use server::Server;
