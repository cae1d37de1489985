//! Serving benchmarks (issue 19): a Rust load generator on 127.0.0.1.
//!
//! `cargo bench -p manta-serve --bench serving [-- --secs S --rounds R --only SET]`
//!
//! * `noop`: a no-op model (64 FP32 in, 10 out) through manta-serve's REST
//!   front door against a bare axum handler doing the same JSON parse,
//!   checks and answer ([`protocol::check`] / [`protocol::answer`]), and
//!   through its gRPC service against a bare tonic handler doing the same
//!   decode, checks and answer ([`grpc::check_infer`] /
//!   [`grpc::infer_response`]); at concurrency 1 and 64.
//! * `digits`: the digits MLP (64 -> 128 -> 10, burn NdArray) over REST
//!   with and without dynamic batching at concurrency 1, 16 and 256.
//!
//! Every client is one task with its own connection (HTTP/1.1 keep-alive,
//! or one HTTP/2 channel), looping request -> answer; payloads are built
//! before the clock (a request is a clone of the prepared one: a
//! reference count for REST, a 256-byte copy for gRPC). The server and
//! the load generator run on separate tokio runtimes (one worker thread
//! each by default; `--server-threads N`, `--client-threads N`). Rounds
//! alternate Manta and its anchor; the median round is reported.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use manta_actors::ActorSystem;
use manta_ml::ModelSpec;
use manta_serve::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use manta_serve::grpc::proto::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use manta_serve::grpc::proto::model_infer_request::InferInputTensor;
use manta_serve::grpc::proto::{
    ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse,
    ModelReadyRequest, ModelReadyResponse, ServerLiveRequest, ServerLiveResponse,
    ServerMetadataRequest, ServerMetadataResponse, ServerReadyRequest, ServerReadyResponse,
};
use manta_serve::protocol::{self, InferRequest, InferResponse};
use manta_serve::{
    Deployment, DeploymentOptions, GrpcConfig, HttpConfig, MlpModel, Model, ModelFactory, Server,
    grpc,
};
use tokio::runtime::Runtime;

const FEATURES: usize = 64;
const CLASSES: usize = 10;

struct Args {
    secs: f64,
    rounds: usize,
    only: Option<String>,
    server_threads: usize,
    client_threads: usize,
}

fn args() -> Args {
    let mut a = Args {
        secs: 3.0,
        rounds: 3,
        only: None,
        server_threads: 1,
        client_threads: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_default();
        match k.as_str() {
            "--secs" => a.secs = v().parse().unwrap_or(a.secs),
            "--rounds" => a.rounds = v().parse().unwrap_or(a.rounds),
            "--only" => a.only = Some(v()),
            "--server-threads" => a.server_threads = v().parse().unwrap_or(1),
            "--client-threads" => a.client_threads = v().parse().unwrap_or(1),
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

fn runtime(threads: usize, name: &str) -> Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name(name)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => panic!("runtime: {e}"),
    }
}

// ---------------------------------------------------------------- models

/// Answers zeros: the serving path alone.
struct Noop;

impl Model for Noop {
    fn features(&self) -> usize {
        FEATURES
    }
    fn outputs(&self) -> usize {
        CLASSES
    }
    fn infer(&mut self, _input: &[f32], rows: usize) -> Result<Vec<f32>, String> {
        Ok(vec![0.0; rows * CLASSES])
    }
}

fn noop_factory() -> ModelFactory {
    Arc::new(|| Ok(Box::new(Noop) as Box<dyn Model>))
}

fn digits_factory() -> ModelFactory {
    let spec = ModelSpec {
        inputs: FEATURES,
        hidden: vec![128],
        classes: CLASSES,
    };
    let params = spec.init(7);
    Arc::new(move || {
        MlpModel::new(&spec, params.clone())
            .map(|m| Box::new(m) as Box<dyn Model>)
            .map_err(|e| e.to_string())
    })
}

// --------------------------------------------------------------- servers

fn local_http() -> HttpConfig {
    HttpConfig {
        address: "127.0.0.1:0".into(),
        max_body_bytes: 1 << 20,
        drain_timeout_ms: 5_000,
    }
}

/// manta-serve with one deployment `model:1`, REST and gRPC.
async fn manta(model: &str, factory: ModelFactory, options: DeploymentOptions) -> Server {
    let system = ActorSystem::new();
    let d = match Deployment::start(&system, model, "1", factory, options).await {
        Ok(d) => d,
        Err(e) => panic!("deployment: {e}"),
    };
    let grpc = GrpcConfig {
        address: "127.0.0.1:0".into(),
        max_message_bytes: 1 << 20,
    };
    match Server::serve_with_grpc(system, vec![d], &local_http(), &grpc).await {
        Ok(s) => s,
        Err(e) => panic!("server: {e}"),
    }
}

/// The REST anchor: axum, the same JSON parse, checks and answer, no
/// router, queue, actor or metrics.
async fn bare_axum() -> SocketAddr {
    async fn infer(body: Bytes) -> axum::response::Response {
        use axum::response::IntoResponse;
        let parsed: InferRequest = match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => return (axum::http::StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        };
        let id = parsed.id.clone();
        let checked = match protocol::check(parsed, FEATURES, &[]) {
            Ok(c) => c,
            Err(e) => return (axum::http::StatusCode::BAD_REQUEST, e).into_response(),
        };
        let values = vec![0.0; checked.rows * CLASSES];
        let answer = InferResponse {
            model_name: "noop".into(),
            model_version: "1".into(),
            id,
            outputs: protocol::answer(
                values,
                checked.rows,
                CLASSES,
                &checked.outputs,
                &checked.binary,
            )
            .0,
        };
        match serde_json::to_vec(&answer) {
            Ok(b) => ([(axum::http::header::CONTENT_TYPE, "application/json")], b).into_response(),
            Err(e) => {
                (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
            }
        }
    }
    let app = axum::Router::new().route("/v2/models/noop/infer", axum::routing::post(infer));
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => panic!("bind: {e}"),
    };
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// The gRPC anchor: tonic, the same decode, checks and answer.
struct BareTonic;

#[tonic::async_trait]
impl GrpcInferenceService for BareTonic {
    async fn server_live(
        &self,
        _: tonic::Request<ServerLiveRequest>,
    ) -> Result<tonic::Response<ServerLiveResponse>, tonic::Status> {
        Ok(tonic::Response::new(ServerLiveResponse { live: true }))
    }
    async fn server_ready(
        &self,
        _: tonic::Request<ServerReadyRequest>,
    ) -> Result<tonic::Response<ServerReadyResponse>, tonic::Status> {
        Ok(tonic::Response::new(ServerReadyResponse { ready: true }))
    }
    async fn model_ready(
        &self,
        _: tonic::Request<ModelReadyRequest>,
    ) -> Result<tonic::Response<ModelReadyResponse>, tonic::Status> {
        Ok(tonic::Response::new(ModelReadyResponse { ready: true }))
    }
    async fn server_metadata(
        &self,
        _: tonic::Request<ServerMetadataRequest>,
    ) -> Result<tonic::Response<ServerMetadataResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("bare"))
    }
    async fn model_metadata(
        &self,
        _: tonic::Request<ModelMetadataRequest>,
    ) -> Result<tonic::Response<ModelMetadataResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("bare"))
    }
    async fn model_infer(
        &self,
        request: tonic::Request<ModelInferRequest>,
    ) -> Result<tonic::Response<ModelInferResponse>, tonic::Status> {
        let checked = grpc::check_infer(request.into_inner(), FEATURES)?;
        let values = vec![0.0; checked.rows * CLASSES];
        Ok(tonic::Response::new(grpc::infer_response(
            "noop", "1", &checked, values, CLASSES,
        )))
    }
}

async fn bare_tonic() -> SocketAddr {
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => panic!("bind: {e}"),
    };
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(GrpcInferenceServiceServer::new(BareTonic))
            .serve_with_incoming(incoming)
            .await
    });
    addr
}

// -------------------------------------------------------- load generator

#[derive(Debug, Clone, Copy)]
struct Figures {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
}

fn rest_body() -> Bytes {
    let row: Vec<f32> = (0..FEATURES).map(|i| (i % 17) as f32 / 16.0).collect();
    Bytes::from(
        serde_json::json!({
            "inputs": [{"name": "input", "shape": [1, FEATURES], "datatype": "FP32", "data": row}]
        })
        .to_string(),
    )
}

fn grpc_request(model: &str) -> ModelInferRequest {
    let row: Vec<f32> = (0..FEATURES).map(|i| (i % 17) as f32 / 16.0).collect();
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, FEATURES as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![row.iter().flat_map(|v| v.to_le_bytes()).collect()],
        ..Default::default()
    }
}

#[derive(Clone, Copy)]
enum Proto {
    Rest,
    Grpc,
}

/// Runs `concurrency` clients against `addr` for `warmup + secs`,
/// recording latencies after the warm-up.
async fn load(
    addr: SocketAddr,
    model: &str,
    proto: Proto,
    concurrency: usize,
    secs: f64,
) -> Figures {
    let warm = Duration::from_millis(300);
    let start = Instant::now() + warm;
    let end = start + Duration::from_secs_f64(secs);
    let path: Arc<str> = format!("/v2/models/{model}/infer").into();
    let body = rest_body();
    let greq = grpc_request(model);
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let path = path.clone();
        let body = body.clone();
        let greq = greq.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            match proto {
                Proto::Rest => {
                    let stream = match tokio::net::TcpStream::connect(addr).await {
                        Ok(s) => s,
                        Err(e) => panic!("connect: {e}"),
                    };
                    let _ = stream.set_nodelay(true);
                    let (mut send, conn) =
                        match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                            Ok(x) => x,
                            Err(e) => panic!("handshake: {e}"),
                        };
                    tokio::spawn(conn);
                    loop {
                        let t0 = Instant::now();
                        if t0 >= end {
                            break;
                        }
                        let req = hyper::Request::post(&*path)
                            .header("host", "bench")
                            .header("content-type", "application/json")
                            .body(Full::new(body.clone()));
                        let Ok(req) = req else {
                            errors += 1;
                            continue;
                        };
                        let ok = match send.send_request(req).await {
                            Ok(r) => {
                                let status = r.status();
                                r.into_body().collect().await.is_ok() && status.is_success()
                            }
                            Err(_) => false,
                        };
                        if t0 >= start {
                            if ok {
                                lat.push(t0.elapsed().as_nanos().min(u32::MAX as u128) as u32);
                            } else {
                                errors += 1;
                            }
                        }
                        if !ok && send.ready().await.is_err() {
                            break;
                        }
                    }
                }
                Proto::Grpc => {
                    let channel =
                        match tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
                            Ok(e) => match e.tcp_nodelay(true).connect().await {
                                Ok(c) => c,
                                Err(e) => panic!("connect: {e}"),
                            },
                            Err(e) => panic!("{e}"),
                        };
                    let mut client = GrpcInferenceServiceClient::new(channel);
                    loop {
                        let t0 = Instant::now();
                        if t0 >= end {
                            break;
                        }
                        let ok = client.model_infer(greq.clone()).await.is_ok();
                        if t0 >= start {
                            if ok {
                                lat.push(t0.elapsed().as_nanos().min(u32::MAX as u128) as u32);
                            } else {
                                errors += 1;
                            }
                        }
                    }
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((lat, e)) = t.await {
            all.extend(lat);
            errors += e;
        }
    }
    all.sort_unstable();
    let q = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(f64::NAN, |&n| f64::from(n) / 1_000.0)
    };
    Figures {
        rps: all.len() as f64 / secs,
        p50_us: q(0.50),
        p99_us: q(0.99),
        errors,
    }
}

fn median(mut runs: Vec<Figures>) -> (Figures, f64, f64) {
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    let lo = runs.first().map_or(f64::NAN, |f| f.rps);
    let hi = runs.last().map_or(f64::NAN, |f| f.rps);
    let mid = runs[runs.len() / 2];
    (mid, lo, hi)
}

fn print_row(label: &str, c: usize, f: (Figures, f64, f64)) {
    let (m, lo, hi) = f;
    println!(
        "| {label} | {c} | {:.0} ({:.0}–{:.0}) | {:.0} | {:.0} | {} |",
        m.rps, lo, hi, m.p50_us, m.p99_us, m.errors
    );
}

fn main() {
    let a = args();
    let server_rt = runtime(a.server_threads, "server");
    let client_rt = runtime(a.client_threads, "client");
    println!(
        "serving bench: {} s per run, {} rounds, server threads {}, client threads {}",
        a.secs, a.rounds, a.server_threads, a.client_threads
    );
    let want = |set: &str| a.only.as_deref().is_none_or(|o| o == set);

    if want("noop") {
        let noop_opts = DeploymentOptions {
            replicas: 2,
            max_ongoing_requests: 256,
            max_queued_requests: 1024,
            ..DeploymentOptions::default()
        };
        let server = server_rt.block_on(manta("noop", noop_factory(), noop_opts));
        let rest = server.local_addr();
        let Some(grpc_addr) = server.grpc_addr() else {
            panic!("no gRPC address");
        };
        let axum_addr = server_rt.block_on(bare_axum());
        let tonic_addr = server_rt.block_on(bare_tonic());
        println!("\n| no-op | concurrency | requests/s (rounds) | p50 µs | p99 µs | errors |");
        println!("|---|---|---|---|---|---|");
        for (proto, ours, anchor, anchor_name) in [
            (Proto::Rest, rest, axum_addr, "bare axum"),
            (Proto::Grpc, grpc_addr, tonic_addr, "bare tonic"),
        ] {
            let pname = match proto {
                Proto::Rest => "REST",
                Proto::Grpc => "gRPC",
            };
            for c in [1usize, 64] {
                let (mut m, mut b) = (Vec::new(), Vec::new());
                for _ in 0..a.rounds {
                    m.push(client_rt.block_on(load(ours, "noop", proto, c, a.secs)));
                    b.push(client_rt.block_on(load(anchor, "noop", proto, c, a.secs)));
                }
                let (m, b) = (median(m), median(b));
                print_row(&format!("manta-serve {pname}"), c, m);
                print_row(anchor_name, c, b);
                println!(
                    "| ratio {pname} c={c} | | **{:.2}x** throughput | **{:+.0} µs** p50 | {:+.0} µs p99 | |",
                    m.0.rps / b.0.rps,
                    m.0.p50_us - b.0.p50_us,
                    m.0.p99_us - b.0.p99_us
                );
            }
        }
        server_rt.block_on(server.shutdown());
    }

    if want("digits") {
        println!(
            "\n| digits MLP (REST) | concurrency | requests/s (rounds) | p50 µs | p99 µs | errors |"
        );
        println!("|---|---|---|---|---|---|");
        for (label, batch, wait) in [("no batching", 1usize, 0u64), ("batching 32 / 1 ms", 32, 1)] {
            let opts = DeploymentOptions {
                replicas: 2,
                max_batch_size: batch,
                batch_wait_timeout_ms: wait,
                max_ongoing_requests: 256,
                max_queued_requests: 1024,
                ..DeploymentOptions::default()
            };
            let server = server_rt.block_on(manta("digits", digits_factory(), opts));
            let addr = server.local_addr();
            for c in [1usize, 16, 256] {
                let runs = (0..a.rounds)
                    .map(|_| client_rt.block_on(load(addr, "digits", Proto::Rest, c, a.secs)))
                    .collect();
                print_row(label, c, median(runs));
            }
            server_rt.block_on(server.shutdown());
        }
    }
}
