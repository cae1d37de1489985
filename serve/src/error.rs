//! Errors of the serving layer.

use std::time::Duration;

/// Why a request or a deployment failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServeError {
    /// Every replica is at `max_ongoing_requests` and the deployment's
    /// queue holds `max_queued_requests`: try again later (HTTP 503 with
    /// `Retry-After`).
    #[error(
        "deployment {deployment} is overloaded: {queued} requests queued (max_queued_requests), every replica at max_ongoing_requests"
    )]
    Overloaded {
        /// `model:version`.
        deployment: String,
        /// Requests waiting when this one was refused.
        queued: usize,
    },
    /// The deployment is stopping or stopped (HTTP 503).
    #[error("deployment {0} is not serving (stopping or stopped)")]
    Stopped(String),
    /// The replica did not answer within the request timeout (HTTP 504).
    #[error("deployment {deployment}: no answer within {timeout:?}")]
    Timeout {
        /// `model:version`.
        deployment: String,
        /// The request timeout.
        timeout: Duration,
    },
    /// The replica failed (it stopped, or the model refused the batch).
    #[error("deployment {deployment}: replica failed: {message}")]
    Replica {
        /// `model:version`.
        deployment: String,
        /// What failed.
        message: String,
    },
    /// The replica holding the request is gone (its node died, or it
    /// stopped) before it answered, or the link to its node lost the
    /// request in flight: a gone replica leaves the router and is replaced,
    /// so a retry goes elsewhere (HTTP 503 with `Retry-After`, gRPC
    /// `UNAVAILABLE`).
    #[error("deployment {deployment}: the replica on node {node} is gone: {message}")]
    ReplicaLost {
        /// `model:version`.
        deployment: String,
        /// The replica's node.
        node: String,
        /// How the request ended.
        message: String,
    },
    /// The input does not fit the model (HTTP 400).
    #[error("{0}")]
    BadInput(String),
}

/// Why a server or deployment could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(String),
    /// The model could not be loaded.
    #[error("deployment {deployment}: {source}")]
    Model {
        /// `model:version`.
        deployment: String,
        /// The loader's error.
        #[source]
        source: manta_ml::MlError,
    },
    /// The experiment directory has no servable best trial.
    #[error("deployment {deployment}: experiment: {source}")]
    Experiment {
        /// `model:version`.
        deployment: String,
        /// The tuner's error (it names the directory).
        #[source]
        source: manta_ml::tune::TuneError,
    },
    /// A replica actor did not start.
    #[error("deployment {deployment}: replica {replica}: {message}")]
    Spawn {
        /// `model:version`.
        deployment: String,
        /// Its index.
        replica: usize,
        /// The spawn error.
        message: String,
    },
    /// The metrics recorder could not be installed.
    #[error("metrics: {0}")]
    Metrics(String),
    /// Binding or serving the HTTP address failed.
    #[error("http {addr}: {source}")]
    Io {
        /// The address.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Binding the gRPC address failed.
    #[error("grpc {addr}: {source}")]
    GrpcIo {
        /// The address.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a traffic change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrafficError {
    /// No deployment serves this model.
    #[error("unknown model '{0}'")]
    UnknownModel(String),
    /// The model has no such version.
    #[error("model '{model}' has no version '{version}'")]
    UnknownVersion {
        /// The model.
        model: String,
        /// The version asked for.
        version: String,
    },
    /// Every weight is zero: requests without a version would have
    /// nowhere to go.
    #[error("model '{0}': the weights must not all be zero")]
    NoWeight(String),
    /// The weights add up to more than `u32::MAX`.
    #[error("model '{0}': the weights add up to more than {max}", max = u32::MAX)]
    TooHeavy(String),
    /// The version still has weight or is the stable one.
    #[error(
        "model '{model}': version '{version}' still takes traffic (weight above 0, or the stable version a rollback returns to)"
    )]
    InUse {
        /// The model.
        model: String,
        /// The version.
        version: String,
    },
    /// The version exists already.
    #[error("model '{model}' already has a version '{version}'")]
    Exists {
        /// The model.
        model: String,
        /// The version.
        version: String,
    },
    /// The model table's lock was poisoned by a panic.
    #[error("model table poisoned")]
    Poisoned,
}
