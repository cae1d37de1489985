//! The admin API, on its own listener (loopback by default; a bearer
//! token when configured): read and change a model's traffic split, roll
//! back, add and remove versions, and promote the best trial of a tuner
//! experiment as a canary that is promoted or rolled back on a metric.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `GET /admin/models/{m}/traffic` | | `{"model", "weights": [{"version", "weight"}], "stable"}` |
//! | `PUT /admin/models/{m}/traffic` | `{"weights": {"1": 90, "2": 10}}` | as GET |
//! | `POST /admin/models/{m}/rollback` | | as GET |
//! | `POST /admin/models/{m}/versions` | `{"version", "experiment" \| "checkpoint"}` | `{"model", "version", "trial"?}` |
//! | `DELETE /admin/models/{m}/versions/{v}` | | `{"removed": v}` |
//! | `GET /admin/models/{m}/versions/{v}/stats` | | `{"ok", "failed", "mean_latency_s", "replicas", "nodes", "replica_starts"}` |
//! | `POST /admin/models/{m}/promote` | [`PromoteRequest`] | [`PromoteAnswer`] |

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use http_body_util::{BodyExt, Limited};
use serde::{Deserialize, Serialize};

use crate::config::ModelSource;
use crate::deployment::{Deployment, DeploymentOptions};
use crate::error::{StartError, TrafficError};
use crate::http::{ApiError, AppInner, AppState, ModelVersions, json};
use crate::model::{MlpWeights, ModelFactory};
use crate::server::load_weights;
use crate::traffic::Split;

/// Admin bodies are small.
const MAX_ADMIN_BODY: usize = 64 << 10;

/// The admin routes.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/admin/models/{m}/traffic",
            get(get_traffic).put(put_traffic),
        )
        .route("/admin/models/{m}/rollback", post(rollback))
        .route("/admin/models/{m}/versions", post(add))
        .route("/admin/models/{m}/versions/{v}", delete(remove))
        .route("/admin/models/{m}/versions/{v}/stats", get(stats))
        .route("/admin/models/{m}/promote", post(promote))
        .fallback(|req: Request| async move {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no admin route for {} {}", req.method(), req.uri().path()),
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

async fn authorize(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.admin_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compared in full whatever the first difference (no early exit).
        let ok = given.is_some_and(|g| {
            g.len() == token.len()
                && g.bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if !ok {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "admin requests need `Authorization: Bearer <token>` (admin.token_file)",
            )
            .into_response();
        }
    }
    next.run(req).await
}

fn traffic_error(e: TrafficError) -> ApiError {
    let status = match &e {
        TrafficError::UnknownModel(_) | TrafficError::UnknownVersion { .. } => {
            StatusCode::NOT_FOUND
        }
        TrafficError::NoWeight(_) | TrafficError::TooHeavy(_) => StatusCode::BAD_REQUEST,
        TrafficError::InUse { .. } | TrafficError::Exists { .. } => StatusCode::CONFLICT,
        TrafficError::Poisoned => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, e.to_string())
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request) -> Result<T, ApiError> {
    let body = Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("reading the body (at most {MAX_ADMIN_BODY} bytes): {e}"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed body: {e}")))
}

/// A model's split as the admin API shows it.
#[derive(Debug, Serialize)]
struct TrafficView {
    model: String,
    weights: Vec<VersionWeight>,
    stable: String,
}

#[derive(Debug, Serialize)]
struct VersionWeight {
    version: String,
    weight: u32,
}

fn view(state: &AppInner, model: &str) -> Result<TrafficView, ApiError> {
    state
        .with_split(model, |s| {
            Ok(TrafficView {
                model: model.to_owned(),
                weights: s
                    .weights()
                    .into_iter()
                    .map(|(version, weight)| VersionWeight { version, weight })
                    .collect(),
                stable: s.stable().to_owned(),
            })
        })
        .map_err(traffic_error)
}

async fn get_traffic(
    State(state): State<AppState>,
    Path(m): Path<String>,
) -> Result<Response, ApiError> {
    Ok(json(StatusCode::OK, &view(&state, &m)?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrafficChange {
    weights: BTreeMap<String, u32>,
}

async fn put_traffic(
    State(state): State<AppState>,
    Path(m): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let change: TrafficChange = read_json(req).await?;
    let weights: Vec<(String, u32)> = change.weights.into_iter().collect();
    state
        .with_split(&m, |s| s.set(&m, &weights))
        .map_err(traffic_error)?;
    Ok(json(StatusCode::OK, &view(&state, &m)?))
}

async fn rollback(
    State(state): State<AppState>,
    Path(m): Path<String>,
) -> Result<Response, ApiError> {
    state
        .with_split(&m, |s| s.rollback(&m))
        .map_err(traffic_error)?;
    Ok(json(StatusCode::OK, &view(&state, &m)?))
}

/// A new version from a checkpoint or an experiment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewVersion {
    version: Option<String>,
    checkpoint: Option<PathBuf>,
    experiment: Option<PathBuf>,
}

/// The model's stable deployment (whose options new versions copy).
fn stable_deployment(state: &AppInner, model: &str) -> Option<Deployment> {
    let models = state.models.read().ok()?;
    let m = models.get(model)?;
    let stable = m.split.lock().ok()?.stable().to_owned();
    m.versions.get(&stable).cloned()
}

fn has_version(state: &AppInner, model: &str, version: &str) -> bool {
    state
        .models
        .read()
        .map(|m| {
            m.get(model)
                .is_some_and(|v| v.versions.contains_key(version))
        })
        .unwrap_or(false)
}

fn start_error(e: StartError) -> ApiError {
    let status = match &e {
        StartError::Model { .. } | StartError::Experiment { .. } | StartError::Config(_) => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, e.to_string())
}

/// Starts `version` of `model` and puts it in the table with no weight (a
/// new model's first version gets all of it).
pub(crate) async fn add_version(
    state: &AppInner,
    model: &str,
    version: &str,
    factory: ModelFactory,
    options: DeploymentOptions,
) -> Result<Deployment, StartError> {
    add_version_with(state, model, version, factory, None, options).await
}

/// Where a new version's replicas run when the server's replicas run on a
/// cluster: like the model's stable version (else like any deployment on
/// the cluster), with `weights` as the model. `None`: in this process.
fn remote_like(
    state: &AppInner,
    model: &str,
    weights: Option<MlpWeights>,
) -> Option<crate::remote::RemoteReplicas> {
    let w = weights?;
    let like = stable_deployment(state, model)
        .and_then(|d| d.remote_replicas())
        .or_else(|| {
            let models = state.models.read().ok()?;
            models
                .values()
                .flat_map(|m| m.versions.values())
                .find_map(|d| d.remote_replicas())
        })?;
    Some(crate::remote::RemoteReplicas {
        spec: w.spec,
        params: w.params,
        ..like
    })
}

/// [`add_version`]; given the model's `weights`, on the cluster when the
/// server's replicas run there.
pub(crate) async fn add_version_with(
    state: &AppInner,
    model: &str,
    version: &str,
    factory: ModelFactory,
    weights: Option<MlpWeights>,
    options: DeploymentOptions,
) -> Result<Deployment, StartError> {
    let exists = || {
        StartError::Config(
            TrafficError::Exists {
                model: model.to_owned(),
                version: version.to_owned(),
            }
            .to_string(),
        )
    };
    if version.is_empty() || model.is_empty() {
        return Err(StartError::Config(
            "model and version must not be empty".into(),
        ));
    }
    if has_version(state, model, version) {
        return Err(exists());
    }
    let d = match remote_like(state, model, weights) {
        Some(remote) => {
            Deployment::start_on(&state.system, model, version, factory, options, remote).await?
        }
        None => Deployment::start(&state.system, model, version, factory, options).await?,
    };
    d.publish_gauges();
    let inserted = {
        let mut models = state
            .models
            .write()
            .map_err(|_| StartError::Config("model table poisoned".into()))?;
        match models.get_mut(model) {
            Some(m) if m.versions.contains_key(version) => false,
            Some(m) => {
                m.versions.insert(version.to_owned(), d.clone());
                if let Ok(mut s) = m.split.lock() {
                    s.add(version);
                }
                true
            }
            None => {
                let names = [version.to_owned()];
                models.insert(
                    model.to_owned(),
                    ModelVersions {
                        versions: [(version.to_owned(), d.clone())].into_iter().collect(),
                        split: Arc::new(Mutex::new(Split::new(&names, version))),
                    },
                );
                true
            }
        }
    };
    if !inserted {
        // Another call added it meanwhile.
        d.stop(Duration::ZERO).await;
        return Err(exists());
    }
    tracing::info!(model, version, "version added");
    Ok(d)
}

async fn add(
    State(state): State<AppState>,
    Path(m): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let new: NewVersion = read_json(req).await?;
    let source = match (new.checkpoint, new.experiment) {
        (Some(c), None) => ModelSource::Checkpoint(c),
        (None, Some(e)) => ModelSource::Experiment(e),
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "give exactly one of `checkpoint` and `experiment`",
            ));
        }
    };
    let (factory, weights, best) = load_weights(&m, source).await.map_err(start_error)?;
    let version = match (new.version, &best) {
        (Some(v), _) => v,
        (None, Some(b)) => format!("trial-{}", b.trial),
        (None, None) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "`version` is needed for a checkpoint",
            ));
        }
    };
    if has_version(&state, &m, &version) {
        return Err(traffic_error(TrafficError::Exists { model: m, version }));
    }
    let options = stable_deployment(&state, &m)
        .map(|d| d.options().clone())
        .unwrap_or_default();
    add_version_with(&state, &m, &version, factory, Some(weights), options)
        .await
        .map_err(start_error)?;
    Ok(json(
        StatusCode::CREATED,
        &serde_json::json!({
            "model": m,
            "version": version,
            "trial": best.map(|b| b.trial),
        }),
    ))
}

async fn remove(
    State(state): State<AppState>,
    Path((m, v)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let d = state.remove_version(&m, &v).map_err(traffic_error)?;
    d.stop(Duration::from_secs(30)).await;
    Ok(json(StatusCode::OK, &serde_json::json!({ "removed": v })))
}

async fn stats(
    State(state): State<AppState>,
    Path((m, v)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let d = state
        .models
        .read()
        .ok()
        .and_then(|t| t.get(&m).and_then(|x| x.versions.get(&v).cloned()))
        .ok_or_else(|| {
            traffic_error(TrafficError::UnknownVersion {
                model: m.clone(),
                version: v.clone(),
            })
        })?;
    let s = d.stats();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "model": m, "version": v, "ok": s.ok, "failed": s.failed,
            "mean_latency_s": s.mean_latency_s, "replicas": d.replicas(),
            "nodes": d.replica_nodes(), "replica_starts": d.replica_starts(),
        }),
    ))
}

/// `POST /admin/models/{m}/promote`: the best trial of `experiment` as a
/// new version with `percent`% of the model's requests without a version
/// (the rest stays on the stable version), then:
/// - `then = "promote"`: all traffic to it (it becomes the stable one);
/// - `then = "rollback"`: all traffic back to the stable version, the new
///   version removed;
/// - `metric` with `min` or `max`: promoted when the metric is within the
///   bound, else rolled back. `error_rate` and `mean_latency_ms` are the
///   canary's own, measured on its first `min_requests` answers (waiting
///   up to `window_ms`; fewer answers by then rolls back); any other name
///   is one of the trial's reported metrics (e.g. `val_accuracy`), read
///   from the experiment store;
/// - neither: it stays a canary at `percent`%.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// The tuner experiment directory (on the server's machine).
    pub experiment: PathBuf,
    /// The new version's name (default `trial-<id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The canary's share, 1 to 100.
    pub percent: u32,
    /// `"promote"` or `"rollback"` at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub then: Option<Then>,
    /// The metric that decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Promote when the metric is at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Promote when the metric is at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Canary answers a serving metric is measured on (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// How long to wait for them, in milliseconds (default 60000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

/// An unconditional decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Then {
    /// All traffic to the new version.
    Promote,
    /// All traffic back to the stable version.
    Rollback,
}

/// What a promote did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromoteAnswer {
    /// The model.
    pub model: String,
    /// The new version.
    pub version: String,
    /// The trial it is.
    pub trial: u64,
    /// The trial's best value of the experiment's metric.
    pub trial_metric: f64,
    /// The version that had the rest of the traffic.
    pub baseline: String,
    /// `promoted`, `rolled_back` or `canary`.
    pub decision: String,
    /// Why.
    pub reason: String,
    /// The deciding metric's value, when one decided.
    pub value: Option<f64>,
    /// The weights now.
    pub weights: BTreeMap<String, u32>,
    /// The stable version now.
    pub stable: String,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

async fn promote(
    State(state): State<AppState>,
    Path(m): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let r: PromoteRequest = read_json(req).await?;
    if !(1..=100).contains(&r.percent) {
        return Err(bad(format!("percent must be 1 to 100, got {}", r.percent)));
    }
    match (&r.then, &r.metric, r.min, r.max) {
        (Some(_), Some(_), _, _) => return Err(bad("`then` and `metric` exclude each other")),
        (_, Some(_), Some(_), Some(_)) | (_, Some(_), None, None) => {
            return Err(bad("`metric` needs exactly one of `min` and `max`"));
        }
        (_, None, Some(_), _) | (_, None, _, Some(_)) => {
            return Err(bad("`min`/`max` need `metric`"));
        }
        _ => {}
    }
    let baseline = stable_deployment(&state, &m).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unknown model '{m}' (promote adds a version to a served model)"),
        )
    })?;
    let (factory, weights, best) = load_weights(&m, ModelSource::Experiment(r.experiment.clone()))
        .await
        .map_err(start_error)?;
    let Some(best) = best else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "an experiment loaded without its best trial",
        ));
    };
    // A tuner metric decides before any traffic moves.
    let trial_value = match &r.metric {
        Some(name) if name != "error_rate" && name != "mean_latency_ms" => {
            Some(if *name == best.metric_name {
                best.metric
            } else {
                best.metrics.get(name).copied().ok_or_else(|| {
                    bad(format!(
                        "trial {} reported no metric `{name}` (it reported: {})",
                        best.trial,
                        best.metrics.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))
                })?
            })
        }
        _ => None,
    };
    let version = r
        .version
        .clone()
        .unwrap_or_else(|| format!("trial-{}", best.trial));
    if has_version(&state, &m, &version) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "model '{m}' already serves version '{version}' (trial {} is still the best)",
                best.trial
            ),
        ));
    }
    let canary = add_version_with(
        &state,
        &m,
        &version,
        factory,
        Some(weights),
        baseline.options().clone(),
    )
    .await
    .map_err(start_error)?;
    let base = baseline.version().to_owned();
    let weights: Vec<(String, u32)> = if r.percent == 100 {
        vec![(version.clone(), 100)]
    } else {
        vec![
            (base.clone(), 100 - r.percent),
            (version.clone(), r.percent),
        ]
    };
    // The baseline stays the stable version until the decision, even
    // when the canary gets 100%.
    state
        .with_split(&m, |s| {
            s.set(&m, &weights)?;
            s.keep_stable(&base);
            Ok(())
        })
        .map_err(traffic_error)?;
    let within = |v: f64| r.min.is_none_or(|lo| v >= lo) && r.max.is_none_or(|hi| v <= hi);
    let bound = match (r.min, r.max) {
        (Some(lo), _) => format!(">= {lo}"),
        (_, Some(hi)) => format!("<= {hi}"),
        _ => String::new(),
    };
    let (decision, reason, value) = match (&r.then, &r.metric, trial_value) {
        (Some(Then::Promote), _, _) => (Some(Then::Promote), "asked to promote".to_owned(), None),
        (Some(Then::Rollback), _, _) => {
            (Some(Then::Rollback), "asked to roll back".to_owned(), None)
        }
        (None, Some(name), Some(v)) => {
            let ok = within(v);
            (
                Some(if ok { Then::Promote } else { Then::Rollback }),
                format!(
                    "trial {} {name} = {v} {} {bound}",
                    best.trial,
                    if ok { "is" } else { "is not" }
                ),
                Some(v),
            )
        }
        (None, Some(name), None) => {
            let need = r.min_requests.unwrap_or(100).max(1);
            let window = Duration::from_millis(r.window_ms.unwrap_or(60_000));
            let s = canary
                .wait_answered(need, tokio::time::Instant::now() + window)
                .await;
            let n = s.ok + s.failed;
            if n < need {
                (
                    Some(Then::Rollback),
                    format!(
                        "the canary answered {n} of the {need} requests needed within {window:?}"
                    ),
                    None,
                )
            } else {
                let v = if name == "error_rate" {
                    s.failed as f64 / n as f64
                } else {
                    s.mean_latency_s * 1e3
                };
                let ok = within(v);
                (
                    Some(if ok { Then::Promote } else { Then::Rollback }),
                    format!(
                        "canary {name} = {v} over {n} requests {} {bound}",
                        if ok { "is" } else { "is not" }
                    ),
                    Some(v),
                )
            }
        }
        (None, None, _) => (
            None,
            format!("canary at {}%: promote or roll back later", r.percent),
            None,
        ),
    };
    let decision = match decision {
        Some(Then::Promote) => {
            state
                .with_split(&m, |s| s.set(&m, &[(version.clone(), 100)]))
                .map_err(traffic_error)?;
            "promoted"
        }
        Some(Then::Rollback) => {
            state
                .with_split(&m, |s| s.rollback(&m))
                .map_err(traffic_error)?;
            // The canary goes: requests it holds finish first.
            if let Ok(d) = state.remove_version(&m, &version) {
                d.stop(Duration::from_secs(30)).await;
            }
            "rolled_back"
        }
        None => "canary",
    };
    let now = view(&state, &m)?;
    tracing::info!(model = %m, %version, decision, %reason, "promote");
    Ok(json(
        StatusCode::OK,
        &PromoteAnswer {
            model: m,
            version,
            trial: best.trial,
            trial_metric: best.metric,
            baseline: base,
            decision: decision.to_owned(),
            reason,
            value,
            weights: now
                .weights
                .into_iter()
                .map(|w| (w.version, w.weight))
                .collect(),
            stable: now.stable,
        },
    ))
}

impl IntoResponse for TrafficView {
    fn into_response(self) -> Response {
        json(StatusCode::OK, &self)
    }
}
