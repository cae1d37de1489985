//! The Open Inference Protocol over HTTP (axum), and `GET /metrics`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::deployment::Deployment;
use crate::error::{ServeError, TrafficError};
use crate::protocol::{self, InferRequest, InferResponse, ModelMetadata};
use crate::traffic::Split;

/// The versions of one model.
#[derive(Debug, Clone)]
pub(crate) struct ModelVersions {
    pub(crate) versions: BTreeMap<String, Deployment>,
    /// Where requests without a version go. Its own lock (held only for
    /// arithmetic), so a change needs just the table's read lock.
    pub(crate) split: Arc<Mutex<Split>>,
}

pub(crate) struct AppInner {
    pub(crate) models: RwLock<BTreeMap<String, ModelVersions>>,
    pub(crate) max_body_bytes: usize,
    pub(crate) ready: AtomicBool,
    pub(crate) prometheus: PrometheusHandle,
    /// Where new versions' replicas run.
    pub(crate) system: manta_actors::ActorSystem,
    /// The bearer token admin requests carry, when one is configured.
    pub(crate) admin_token: Option<String>,
}

impl AppInner {
    /// Runs `f` on `model`'s split.
    pub(crate) fn with_split<T>(
        &self,
        model: &str,
        f: impl FnOnce(&mut Split) -> Result<T, TrafficError>,
    ) -> Result<T, TrafficError> {
        let models = self.models.read().map_err(|_| TrafficError::Poisoned)?;
        let m = models
            .get(model)
            .ok_or_else(|| TrafficError::UnknownModel(model.to_owned()))?;
        let mut split = m.split.lock().map_err(|_| TrafficError::Poisoned)?;
        f(&mut split)
    }

    /// Every deployment, by model and version.
    pub(crate) fn deployments(&self) -> Vec<Deployment> {
        self.models
            .read()
            .map(|m| {
                m.values()
                    .flat_map(|v| v.versions.values().cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Takes `model`'s `version` out of the table (no weight, not stable);
    /// the caller stops it.
    pub(crate) fn remove_version(
        &self,
        model: &str,
        version: &str,
    ) -> Result<Deployment, TrafficError> {
        let mut models = self.models.write().map_err(|_| TrafficError::Poisoned)?;
        let m = models
            .get_mut(model)
            .ok_or_else(|| TrafficError::UnknownModel(model.to_owned()))?;
        m.split
            .lock()
            .map_err(|_| TrafficError::Poisoned)?
            .remove(model, version)?;
        m.versions
            .remove(version)
            .ok_or_else(|| TrafficError::UnknownVersion {
                model: model.to_owned(),
                version: version.to_owned(),
            })
    }
}

pub(crate) type AppState = Arc<AppInner>;

/// An error answer: `{"error": "..."}` with its status.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: bool,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: false,
        }
    }
}

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> Self {
        let status = match &e {
            ServeError::Overloaded { .. }
            | ServeError::Stopped(_)
            | ServeError::ReplicaLost { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ServeError::Replica { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ServeError::BadInput(_) => StatusCode::BAD_REQUEST,
        };
        Self {
            status,
            retry_after: status == StatusCode::SERVICE_UNAVAILABLE,
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
        }
        let mut r = json(
            self.status,
            &Body {
                error: &self.message,
            },
        );
        if self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

pub(crate) fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the answer: {e}"),
        )
            .into_response(),
    }
}

/// The REST routes of the protocol, and `/metrics`.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(version_metadata),
        )
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(version_ready),
        )
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(version_infer),
        )
        .route("/metrics", get(render_metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// A known path with another method: 405 with the protocol's error body
/// (axum's own answer has an empty body).
async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
}

async fn server_metadata() -> Response {
    json(
        StatusCode::OK,
        &serde_json::json!({
            "name": "manta",
            "version": env!("CARGO_PKG_VERSION"),
            "extensions": ["binary_tensor_data"],
        }),
    )
}

async fn live() -> Response {
    json(StatusCode::OK, &serde_json::json!({ "live": true }))
}

async fn ready(State(state): State<AppState>) -> Response {
    let ready = state.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &serde_json::json!({ "ready": ready }))
}

/// Why a model or version could not be looked up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LookupError {
    /// No deployment serves the model.
    #[error("unknown model '{0}'")]
    Model(String),
    /// The model has no such version.
    #[error("model '{model}' has no version '{version}' (versions: {versions})")]
    Version {
        model: String,
        version: String,
        versions: String,
    },
    /// A lock was poisoned by a panic.
    #[error("{0} poisoned")]
    Poisoned(&'static str),
}

impl From<LookupError> for ApiError {
    fn from(e: LookupError) -> Self {
        let status = match e {
            LookupError::Model(_) | LookupError::Version { .. } => StatusCode::NOT_FOUND,
            LookupError::Poisoned(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl AppInner {
    /// Whether the server takes requests: not draining, every deployment
    /// ready.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && self
                .models
                .read()
                .map(|m| {
                    m.values()
                        .all(|v| v.versions.values().all(Deployment::is_ready))
                })
                .unwrap_or(false)
    }

    /// The deployment serving `name` at `version` and every version of
    /// the model (REST and gRPC alike). Without a version: the split's
    /// next pick when `route` (an inference request), else the stable
    /// version (metadata and readiness do not move the rotation).
    pub(crate) fn resolve(
        &self,
        name: &str,
        version: Option<&str>,
        route: bool,
    ) -> Result<(Deployment, Vec<String>), LookupError> {
        let models = self
            .models
            .read()
            .map_err(|_| LookupError::Poisoned("model table"))?;
        let Some(m) = models.get(name) else {
            return Err(LookupError::Model(name.to_owned()));
        };
        let versions: Vec<String> = m.versions.keys().cloned().collect();
        let picked;
        let v = match version {
            Some(v) => v,
            None => {
                let mut split = m
                    .split
                    .lock()
                    .map_err(|_| LookupError::Poisoned("traffic split"))?;
                // A split always has a positive total (refused otherwise), so
                // `pick` answers; the stable version is the fallback anyway.
                picked = match route {
                    true => split.pick(),
                    false => None,
                }
                .unwrap_or_else(|| split.stable().to_owned());
                &picked
            }
        };
        match m.versions.get(v) {
            Some(d) => Ok((d.clone(), versions)),
            None => Err(LookupError::Version {
                model: name.to_owned(),
                version: v.to_owned(),
                versions: versions.join(", "),
            }),
        }
    }
}

fn lookup(
    state: &AppInner,
    name: &str,
    version: Option<&str>,
    route: bool,
) -> Result<(Deployment, Vec<String>), ApiError> {
    Ok(state.resolve(name, version, route)?)
}

fn metadata(state: &AppInner, name: &str, version: Option<&str>) -> Result<Response, ApiError> {
    let (d, versions) = lookup(state, name, version, false)?;
    let (inputs, outputs) = protocol::signature(d.features(), d.outputs());
    Ok(json(
        StatusCode::OK,
        &ModelMetadata {
            name: name.to_owned(),
            versions,
            platform: "manta_burn",
            inputs,
            outputs,
        },
    ))
}

async fn model_metadata(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    metadata(&state, &name, None)
}

async fn version_metadata(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    metadata(&state, &name, Some(&version))
}

fn model_ready_answer(
    state: &AppInner,
    name: &str,
    version: Option<&str>,
) -> Result<Response, ApiError> {
    let (d, _) = lookup(state, name, version, false)?;
    let ready = d.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(json(
        status,
        &serde_json::json!({ "name": name, "version": d.version(), "ready": ready }),
    ))
}

async fn model_ready(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    model_ready_answer(&state, &name, None)
}

async fn version_ready(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    model_ready_answer(&state, &name, Some(&version))
}

async fn infer(State(state): State<AppState>, Path(name): Path<String>, req: Request) -> Response {
    infer_counted(&state, &name, None, req).await
}

async fn version_infer(
    State(state): State<AppState>,
    Path((name, version)): Path<(String, String)>,
    req: Request,
) -> Response {
    infer_counted(&state, &name, Some(&version), req).await
}

/// Runs one inference request and counts it by model, version and status.
async fn infer_counted(
    state: &AppInner,
    name: &str,
    version: Option<&str>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let (labels, response) = match lookup(state, name, version, true) {
        // Unknown models and versions are counted under "-", so that
        // clients cannot grow the label set.
        Err(e) => (("-".to_owned(), "-".to_owned()), e.into_response()),
        Ok((d, _)) => {
            let labels = (d.model().to_owned(), d.version().to_owned());
            let r = run_infer(state, &d, req)
                .await
                .unwrap_or_else(IntoResponse::into_response);
            (labels, r)
        }
    };
    let (model, version) = labels;
    metrics::counter!(
        "manta_serve_requests_total",
        "model" => model.clone(),
        "version" => version.clone(),
        "status" => response.status().as_u16().to_string()
    )
    .increment(1);
    metrics::histogram!(
        "manta_serve_request_duration_seconds",
        "model" => model,
        "version" => version
    )
    .record(started.elapsed().as_secs_f64());
    response
}

async fn run_infer(state: &AppInner, d: &Deployment, req: Request) -> Result<Response, ApiError> {
    let limit = state.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body over the {limit}-byte limit"),
        )
    };
    // Refused from its declared length before any of it is read.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    // Binary tensor data: the JSON part's length (checked against the body
    // once it is read).
    let header_len = match req.headers().get(protocol::HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("header {}: not a byte count", protocol::HEADER_LENGTH),
                    )
                })?,
        ),
    };
    // And counted while read, for bodies without a length.
    let body = Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                too_large()
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("reading the request body: {e}"),
                )
            }
        })?
        .to_bytes();
    let (head, binary) = match header_len {
        None => (&body[..], &body[..0]),
        Some(n) if n <= body.len() => body.split_at(n),
        Some(n) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "header {}: {n} bytes of JSON, but the body has {}",
                    protocol::HEADER_LENGTH,
                    body.len()
                ),
            ));
        }
    };
    let parsed: InferRequest = serde_json::from_slice(head).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("malformed inference request: {e}"),
        )
    })?;
    let id = parsed.id.clone();
    let checked = protocol::check(parsed, d.features(), binary)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let rows = checked.rows;
    let values = d.infer(checked.values, rows).await?;
    let (outputs, tail) =
        protocol::answer(values, rows, d.outputs(), &checked.outputs, &checked.binary);
    let answer = InferResponse {
        model_name: d.model().to_owned(),
        model_version: d.version().to_owned(),
        id,
        outputs,
    };
    if !checked.binary.contains(&true) {
        return Ok(json(StatusCode::OK, &answer));
    }
    // The JSON part, then the binary outputs' bytes.
    let mut bytes = serde_json::to_vec(&answer).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the answer: {e}"),
        )
    })?;
    let json_len = bytes.len();
    bytes.extend_from_slice(&tail);
    Ok((
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                header::HeaderName::from_static(protocol::HEADER_LENGTH),
                HeaderValue::from(json_len),
            ),
        ],
        bytes,
    )
        .into_response())
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    state.prometheus.run_upkeep();
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        Body::from(state.prometheus.render()),
    )
        .into_response()
}
