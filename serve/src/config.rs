//! The serving configuration (TOML): the HTTP and gRPC front doors, the
//! admin API and the deployments.
//!
//! ```toml
//! [http]
//! address = "127.0.0.1:8080"
//! max_body_bytes = 4194304
//!
//! [grpc]                                  # optional: no gRPC without it
//! address = "127.0.0.1:8081"
//! max_message_bytes = 4194304
//!
//! [[deployment]]
//! model = "digits"
//! version = "1"
//! checkpoint = "../target/train-digits"   # relative to this file
//! replicas = 2
//! max_batch_size = 16
//! batch_wait_timeout_ms = 2
//! max_ongoing_requests = 32
//! max_queued_requests = 256
//! weight = 90                             # canary split, see below
//!
//! [[deployment]]
//! model = "digits"
//! version = "2"
//! experiment = "../target/tune-digits"    # the best trial of a tuner run
//! weight = 10                             # 10% of unversioned requests
//! autoscaling = { target_ongoing_requests = 2, min_replicas = 0, max_replicas = 4, upscale_delay_s = 1, downscale_delay_s = 30 }
//!
//! # with `manta serve --seeds`: replicas run on the cluster's nodes
//! # cpus = 1.0                            # each takes this much of its node
//!
//! [[deployment]]                          # composition: a first stage in
//! model = "digits-pixels"                 # front of another deployment
//! next = "digits:1"                       # ("model" alone: its first version)
//! preprocess = { scale = 0.0625 }         # x * scale + offset, then digits
//!
//! [admin]                                 # traffic, versions, promote
//! address = "127.0.0.1:8082"              # loopback only unless token_file
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::deployment::{AutoscalingConfig, DeploymentOptions};
use crate::error::StartError;

/// A whole serving configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// The HTTP front door.
    #[serde(default)]
    pub http: HttpConfig,
    /// The gRPC front door (`[grpc]`; none when absent).
    #[serde(default)]
    pub grpc: Option<GrpcConfig>,
    /// The deployments (`[[deployment]]` tables).
    #[serde(rename = "deployment", default)]
    pub deployments: Vec<DeploymentConfig>,
    /// The admin API (traffic split, new versions, promote).
    #[serde(default)]
    pub admin: AdminConfig,
}

/// The admin API: `GET/PUT /admin/models/{m}/traffic`,
/// `POST /admin/models/{m}/rollback`, `POST /admin/models/{m}/versions`,
/// `POST /admin/models/{m}/promote`. Its own listener, never the inference
/// one: by default on loopback only; another address needs `token_file`
/// (requests then carry `Authorization: Bearer <token>`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port` (port 0: any free port); `""` turns the admin API off.
    #[serde(default = "default_admin_address")]
    pub address: String,
    /// A file holding the bearer token admin requests must carry
    /// (relative to the config file); required off loopback.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

fn default_admin_address() -> String {
    "127.0.0.1:8082".into()
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            address: default_admin_address(),
            token_file: None,
        }
    }
}

/// The HTTP front door.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port` to listen on (port 0: any free port).
    #[serde(default = "default_address")]
    pub address: String,
    /// Inference request bodies larger than this are refused (413) before
    /// they are read.
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    /// How long a stop waits for requests in flight, in milliseconds.
    #[serde(default = "default_drain")]
    pub drain_timeout_ms: u64,
}

fn default_address() -> String {
    "127.0.0.1:8080".into()
}
fn default_body() -> usize {
    4 << 20
}
fn default_drain() -> u64 {
    10_000
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            address: default_address(),
            max_body_bytes: default_body(),
            drain_timeout_ms: default_drain(),
        }
    }
}

/// The gRPC front door (the protocol's `GRPCInferenceService`). It drains
/// with the HTTP one, within `[http] drain_timeout_ms`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// `host:port` to listen on (port 0: any free port).
    #[serde(default = "default_grpc_address")]
    pub address: String,
    /// Messages larger than this are refused (`OUT_OF_RANGE`) from their
    /// length prefix, before they are buffered.
    #[serde(default = "default_body")]
    pub max_message_bytes: usize,
}

fn default_grpc_address() -> String {
    "127.0.0.1:8081".into()
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            address: default_grpc_address(),
            max_message_bytes: default_body(),
        }
    }
}

/// One deployment: a model version from a checkpoint and how it runs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// The model's name in the protocol's paths.
    pub model: String,
    /// The version's name.
    #[serde(default = "default_version")]
    pub version: String,
    /// A manta-ml checkpoint directory (a training run's, or the
    /// configured one: its newest run), relative to the config file.
    /// Exactly one of `checkpoint` and `experiment`.
    #[serde(default)]
    pub checkpoint: Option<PathBuf>,
    /// A tuner experiment directory: the model is its best finished
    /// trial's newest checkpoint (relative to the config file).
    #[serde(default)]
    pub experiment: Option<PathBuf>,
    /// See [`DeploymentOptions::replicas`].
    #[serde(default = "one")]
    pub replicas: usize,
    /// See [`DeploymentOptions::max_batch_size`].
    #[serde(default = "one")]
    pub max_batch_size: usize,
    /// See [`DeploymentOptions::batch_wait_timeout_ms`].
    #[serde(default)]
    pub batch_wait_timeout_ms: u64,
    /// See [`DeploymentOptions::max_ongoing_requests`].
    #[serde(default = "default_ongoing")]
    pub max_ongoing_requests: usize,
    /// See [`DeploymentOptions::max_queued_requests`].
    #[serde(default = "default_queued")]
    pub max_queued_requests: usize,
    /// See [`DeploymentOptions::request_timeout_ms`].
    #[serde(default = "default_timeout")]
    pub request_timeout_ms: u64,
    /// This version's share of the model's requests without a version
    /// (relative to its other versions' weights; see
    /// [`crate::Server::set_traffic`]). When no version of a model has
    /// one, the first listed gets them all. A version with all the weight
    /// is the stable one a rollback returns to; with several weighted,
    /// the heaviest (first listed on a tie).
    #[serde(default)]
    pub weight: Option<u32>,
    /// See [`DeploymentOptions::autoscaling`].
    #[serde(default)]
    pub autoscaling: Option<AutoscalingConfig>,
    /// On a cluster (`manta serve --seeds`): CPUs each replica takes on
    /// its node (of what the node advertises, `manta node --cpus`); 0
    /// counts none. Ignored in-process.
    #[serde(default)]
    pub cpus: f64,
    /// On a cluster: GPUs each replica takes on its node (the replica
    /// still computes on the CPU).
    #[serde(default)]
    pub gpus: u32,
    /// On a cluster: a role the replicas' nodes must have.
    #[serde(default)]
    pub role: Option<String>,
    /// Composition: this deployment's replicas run [`Self::preprocess`]
    /// on each batch and send the rows on to the deployment `next`
    /// (`"model:version"`, or `"model"` for its first listed version),
    /// answering that one's outputs (see [`crate::compose::chain`]). The
    /// call goes through `next`'s router, queue and batching, wherever
    /// its replicas run (on other nodes with `--seeds`); this one's
    /// replicas run in the serving process. Excludes `checkpoint` and
    /// `experiment`; `next` must name a deployment with a model.
    #[serde(default)]
    pub next: Option<String>,
    /// The first stage of a composed deployment (default: identity).
    #[serde(default)]
    pub preprocess: Option<PreprocessConfig>,
}

/// A composed deployment's first stage: every input value becomes
/// `x * scale + offset`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessConfig {
    /// Multiplies every value.
    #[serde(default = "one_f32")]
    pub scale: f32,
    /// Then is added to it.
    #[serde(default)]
    pub offset: f32,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            scale: 1.0,
            offset: 0.0,
        }
    }
}

fn one_f32() -> f32 {
    1.0
}

/// Where a deployment's model comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A manta-ml checkpoint directory.
    Checkpoint(PathBuf),
    /// The best trial of a tuner experiment.
    Experiment(PathBuf),
    /// A first stage in front of another deployment (`model:version`).
    Chain {
        /// The deployment called, as `model:version`.
        next: String,
        /// The first stage.
        preprocess: PreprocessConfig,
    },
}

fn default_version() -> String {
    "1".into()
}
fn one() -> usize {
    1
}
fn default_ongoing() -> usize {
    DeploymentOptions::default().max_ongoing_requests
}
fn default_queued() -> usize {
    DeploymentOptions::default().max_queued_requests
}
fn default_timeout() -> u64 {
    DeploymentOptions::default().request_timeout_ms
}

impl DeploymentConfig {
    /// Its run-time options.
    pub fn options(&self) -> DeploymentOptions {
        DeploymentOptions {
            replicas: self.replicas,
            max_batch_size: self.max_batch_size,
            batch_wait_timeout_ms: self.batch_wait_timeout_ms,
            max_ongoing_requests: self.max_ongoing_requests,
            max_queued_requests: self.max_queued_requests,
            request_timeout_ms: self.request_timeout_ms,
            autoscaling: self.autoscaling.clone(),
        }
    }

    /// Where its model comes from (checked by [`ServeConfig::parse`],
    /// which also resolves `next` to `model:version`).
    pub fn source(&self) -> Option<ModelSource> {
        match (&self.checkpoint, &self.experiment, &self.next) {
            (Some(c), None, None) => Some(ModelSource::Checkpoint(c.clone())),
            (None, Some(e), None) => Some(ModelSource::Experiment(e.clone())),
            (None, None, Some(n)) => Some(ModelSource::Chain {
                next: n.clone(),
                preprocess: self.preprocess.unwrap_or_default(),
            }),
            _ => None,
        }
    }
}

impl ServeConfig {
    /// Parses `src` (named `file` in errors); checkpoint paths are taken
    /// relative to `base`.
    pub fn parse(src: &str, file: &str, base: &Path) -> Result<Self, StartError> {
        let mut config: ServeConfig =
            toml::from_str(src).map_err(|e| StartError::Config(format!("{file}: {e}")))?;
        if config.deployments.is_empty() {
            return Err(StartError::Config(format!(
                "{file}: no [[deployment]] tables"
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for d in &mut config.deployments {
            let key = format!("{}:{}", d.model, d.version);
            if d.model.is_empty() || d.version.is_empty() {
                return Err(StartError::Config(format!(
                    "{file}: deployment {key}: model and version must not be empty"
                )));
            }
            if !seen.insert(key.clone()) {
                return Err(StartError::Config(format!(
                    "{file}: deployment {key} is configured twice"
                )));
            }
            d.options()
                .validate()
                .map_err(|e| StartError::Config(format!("{file}: deployment {key}: {e}")))?;
            if !(d.cpus.is_finite() && d.cpus >= 0.0) {
                return Err(StartError::Config(format!(
                    "{file}: deployment {key}: cpus must be a number at least 0, got {}",
                    d.cpus
                )));
            }
            if d.next.is_some() {
                if d.checkpoint.is_some() || d.experiment.is_some() {
                    return Err(StartError::Config(format!(
                        "{file}: deployment {key}: `next` (composition) excludes `checkpoint` and `experiment`"
                    )));
                }
                if let Some(p) = d.preprocess
                    && !(p.scale.is_finite() && p.offset.is_finite())
                {
                    return Err(StartError::Config(format!(
                        "{file}: deployment {key}: preprocess scale and offset must be finite numbers"
                    )));
                }
                continue;
            }
            if d.preprocess.is_some() {
                return Err(StartError::Config(format!(
                    "{file}: deployment {key}: `preprocess` needs `next` (the deployment it feeds)"
                )));
            }
            match (&mut d.checkpoint, &mut d.experiment) {
                (Some(p), None) | (None, Some(p)) => {
                    if p.is_relative() {
                        *p = base.join(&*p);
                    }
                }
                (None, None) => {
                    return Err(StartError::Config(format!(
                        "{file}: deployment {key}: give `checkpoint` (a training run), `experiment` (a tuner experiment's best trial) or `next` (a first stage in front of another deployment)"
                    )));
                }
                (Some(_), Some(_)) => {
                    return Err(StartError::Config(format!(
                        "{file}: deployment {key}: `checkpoint` and `experiment` exclude each other"
                    )));
                }
            }
        }
        // `next` names a deployment with a model: `model:version`, or a
        // model's first listed version.
        let models: Vec<(String, String, bool)> = config
            .deployments
            .iter()
            .map(|d| (d.model.clone(), d.version.clone(), d.next.is_none()))
            .collect();
        for d in &mut config.deployments {
            let Some(next) = &mut d.next else { continue };
            let key = format!("{}:{}", d.model, d.version);
            let target = match next.split_once(':') {
                Some((m, v)) => models.iter().find(|t| t.0 == m && t.1 == v),
                None => models.iter().find(|t| t.0 == *next),
            };
            match target {
                None => {
                    return Err(StartError::Config(format!(
                        "{file}: deployment {key}: next = {next:?} names no configured deployment"
                    )));
                }
                Some((m, v, false)) => {
                    return Err(StartError::Config(format!(
                        "{file}: deployment {key}: next = {m}:{v} is itself composed (chains of chains are not served)"
                    )));
                }
                Some((m, v, true)) => *next = format!("{m}:{v}"),
            }
        }
        if let Some(t) = &mut config.admin.token_file
            && t.is_relative()
        {
            *t = base.join(&*t);
        }
        let mut totals: std::collections::BTreeMap<&str, u64> = Default::default();
        for d in &config.deployments {
            if let Some(w) = d.weight {
                *totals.entry(d.model.as_str()).or_default() += u64::from(w);
            }
        }
        for (model, total) in totals {
            if total == 0 || total > u64::from(u32::MAX) {
                return Err(StartError::Config(format!(
                    "{file}: model {model}: the weights must add up to between 1 and {}",
                    u32::MAX
                )));
            }
        }
        Ok(config)
    }

    /// Reads and parses `path`.
    pub fn from_file(path: &Path) -> Result<Self, StartError> {
        let src = std::fs::read_to_string(path)
            .map_err(|e| StartError::Config(format!("{}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&src, &path.display().to_string(), base)
    }
}
