//! Shared helpers: a gated test model, a digits-shaped checkpoint, HTTP.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use manta_actors::ActorSystem;
use manta_ml::ModelSpec;
use manta_serve::{Deployment, DeploymentOptions, HttpConfig, Model, ModelFactory, Server};
use tokio::sync::mpsc;

/// The bound on every wait in these tests.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// The digits model's shape, with a small hidden layer.
pub(crate) fn digits_spec() -> ModelSpec {
    ModelSpec {
        inputs: 64,
        hidden: vec![16],
        classes: 10,
    }
}

/// Writes a checkpoint of seeded initial parameters under `dir`.
pub(crate) fn write_checkpoint(dir: &Path, seed: u64) -> Vec<manta_ml::ParamTensor> {
    let spec = digits_spec();
    let params = spec.init(seed);
    let saved = manta_ml::ps::save_model(dir, &spec, &params, 7);
    assert!(saved.is_ok(), "save_model: {saved:?}");
    params
}

/// A model whose batches wait for permits; it reports each batch's row
/// count when the batch starts. Output per row: [sum, -sum].
pub(crate) struct Gate {
    permits: Arc<(Mutex<u64>, Condvar)>,
    batches: mpsc::UnboundedSender<usize>,
    features: usize,
}

/// The test's side of [`Gate`].
#[derive(Clone)]
pub(crate) struct GateControl {
    permits: Arc<(Mutex<u64>, Condvar)>,
}

impl GateControl {
    /// Lets `n` more batches run.
    pub(crate) fn open(&self, n: u64) {
        let (m, c) = &*self.permits;
        if let Ok(mut p) = m.lock() {
            *p = p.saturating_add(n);
        }
        c.notify_all();
    }
}

/// A factory of gated models of `features` inputs, the gate's control
/// and the stream of batch sizes.
pub(crate) fn gate(
    features: usize,
    initially_open: u64,
) -> (ModelFactory, GateControl, mpsc::UnboundedReceiver<usize>) {
    let permits = Arc::new((Mutex::new(initially_open), Condvar::new()));
    let (tx, rx) = mpsc::unbounded_channel();
    let p = permits.clone();
    let factory: ModelFactory = Arc::new(move || {
        Ok(Box::new(Gate {
            permits: p.clone(),
            batches: tx.clone(),
            features,
        }) as Box<dyn Model>)
    });
    (factory, GateControl { permits }, rx)
}

impl Model for Gate {
    fn features(&self) -> usize {
        self.features
    }
    fn outputs(&self) -> usize {
        2
    }
    // It waits on the test's gate.
    fn may_run_inline(&self) -> bool {
        false
    }
    fn infer(&mut self, input: &[f32], rows: usize) -> Result<Vec<f32>, String> {
        let _ = self.batches.send(rows);
        let (m, c) = &*self.permits;
        let guard = m.lock().map_err(|_| "poisoned".to_string())?;
        let (mut guard, timeout) = c
            .wait_timeout_while(guard, WAIT, |p| *p == 0)
            .map_err(|_| "poisoned".to_string())?;
        if timeout.timed_out() {
            return Err("gate never opened".into());
        }
        *guard -= 1;
        Ok(input
            .chunks(self.features)
            .flat_map(|row| {
                let s: f32 = row.iter().sum();
                [s, -s]
            })
            .collect())
    }
}

/// HTTP settings on a free port of 127.0.0.1.
pub(crate) fn local_http() -> HttpConfig {
    HttpConfig {
        address: "127.0.0.1:0".into(),
        max_body_bytes: 64 << 10,
        drain_timeout_ms: 10_000,
    }
}

/// A server with one deployment `model:1` of `factory`.
pub(crate) async fn serve_one(
    model: &str,
    factory: ModelFactory,
    options: DeploymentOptions,
) -> Server {
    let system = ActorSystem::new();
    let d = Deployment::start(&system, model, "1", factory, options).await;
    let d = match d {
        Ok(d) => d,
        Err(e) => panic!("deployment: {e}"),
    };
    match Server::serve(system, vec![d], &local_http()).await {
        Ok(s) => s,
        Err(e) => panic!("server: {e}"),
    }
}

/// A plain HTTP client.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// Status, headers and JSON body of a response.
pub(crate) async fn json_of(
    r: reqwest::Response,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, headers, v)
}

/// POSTs `body` to `url`.
pub(crate) async fn post(
    url: &str,
    body: String,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let r = client()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    match r {
        Ok(r) => json_of(r).await,
        Err(e) => panic!("POST {url}: {e}"),
    }
}

/// GETs `url`.
pub(crate) async fn get(url: &str) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    match client().get(url).send().await {
        Ok(r) => json_of(r).await,
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// An infer body of `rows` rows of `features` values `v`.
pub(crate) fn infer_body(rows: usize, features: usize, v: f32) -> String {
    serde_json::json!({
        "inputs": [{"name": "input", "shape": [rows, features], "datatype": "FP32",
                    "data": vec![v; rows * features]}]
    })
    .to_string()
}

/// Waits (yielding, bounded by [`WAIT`]) until `cond` holds.
pub(crate) async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let r = tokio::time::timeout(WAIT, async {
        while !cond() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(r.is_ok(), "timed out waiting for {what}");
}
