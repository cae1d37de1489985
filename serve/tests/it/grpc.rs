//! The Open Inference Protocol's gRPC service through a real tonic client
//! on 127.0.0.1: every method, typed and raw contents, each error case.

use burn::backend::NdArray;
use burn::backend::ndarray::NdArrayDevice;
use burn::tensor::{Tensor, TensorData};
use manta_actors::ActorSystem;
use manta_ml::Mlp;
use manta_serve::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use manta_serve::grpc::proto::infer_parameter::ParameterChoice;
use manta_serve::grpc::proto::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use manta_serve::grpc::proto::{
    InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse,
    ModelMetadataRequest, ModelReadyRequest, ServerLiveRequest, ServerMetadataRequest,
    ServerReadyRequest,
};
use manta_serve::{Deployment, DeploymentOptions, GrpcConfig, ServeConfig, Server};
use tonic::Code;
use tonic::transport::Channel;

use crate::common::{self, WAIT, get};

type Client = GrpcInferenceServiceClient<Channel>;

/// The digits MLP from a checkpoint, with gRPC on a free port.
async fn digits_server(dir: &std::path::Path, message_limit: usize) -> Server {
    let src = format!(
        "[http]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [grpc]\naddress = \"127.0.0.1:0\"\nmax_message_bytes = {message_limit}\n\
         [[deployment]]\nmodel = \"digits\"\ncheckpoint = \"ckpt\"\nreplicas = 2\n\
         max_batch_size = 8\nbatch_wait_timeout_ms = 1\n"
    );
    let config = ServeConfig::parse(&src, "test.toml", dir).unwrap_or_else(|e| panic!("{e}"));
    Server::start(&config)
        .await
        .unwrap_or_else(|e| panic!("start: {e}"))
}

async fn client(server: &Server) -> Client {
    let Some(addr) = server.grpc_addr() else {
        panic!("no gRPC address");
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    // The client's own limit is raised so that the server's is the one tested.
    GrpcInferenceServiceClient::new(channel).max_encoding_message_size(64 << 20)
}

/// A `ModelInfer` request of `rows` rows of 64 values with typed contents.
fn typed(model: &str, rows: &[Vec<f32>]) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![rows.len() as i64, rows.first().map_or(0, Vec::len) as i64],
            contents: Some(InferTensorContents {
                fp32_contents: rows.concat(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The same request with `raw_input_contents` (little-endian f32).
fn raw(model: &str, rows: &[Vec<f32>]) -> ModelInferRequest {
    let mut r = typed(model, rows);
    r.inputs[0].contents = None;
    r.raw_input_contents = vec![rows.concat().iter().flat_map(|v| v.to_le_bytes()).collect()];
    r
}

fn sample_rows(n: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|r| {
            (0..64)
                .map(|i| ((i * 5 + r * 11) % 17) as f32 / 16.0)
                .collect()
        })
        .collect()
}

fn argmax(row: &[f32]) -> i64 {
    row.iter()
        .enumerate()
        .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
        .0 as i64
}

async fn infer(
    c: &mut Client,
    req: ModelInferRequest,
) -> Result<ModelInferResponse, tonic::Status> {
    c.model_infer(req).await.map(tonic::Response::into_inner)
}

#[tokio::test]
async fn grpc_health_and_metadata_methods_answer_with_the_protocol_fields() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    common::write_checkpoint(&dir.path().join("ckpt"), 1);
    let server = digits_server(dir.path(), 1 << 20).await;
    let mut c = client(&server).await;

    let live = c.server_live(ServerLiveRequest {}).await;
    assert!(live.is_ok_and(|r| r.into_inner().live));
    let ready = c.server_ready(ServerReadyRequest {}).await;
    assert!(ready.is_ok_and(|r| r.into_inner().ready));
    let meta = c
        .server_metadata(ServerMetadataRequest {})
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_inner();
    assert_eq!(meta.name, "manta");
    assert_eq!(meta.version, env!("CARGO_PKG_VERSION"));
    assert!(meta.extensions.is_empty());

    for version in ["", "1"] {
        let m = c
            .model_metadata(ModelMetadataRequest {
                name: "digits".into(),
                version: version.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("version {version:?}: {e}"))
            .into_inner();
        assert_eq!(m.name, "digits");
        assert_eq!(m.versions, vec!["1".to_owned()]);
        assert_eq!(m.platform, "manta_burn");
        let tensors =
            |ts: &[manta_serve::grpc::proto::model_metadata_response::TensorMetadata]| {
                ts.iter()
                    .map(|t| (t.name.clone(), t.datatype.clone(), t.shape.clone()))
                    .collect::<Vec<_>>()
            };
        assert_eq!(
            tensors(&m.inputs),
            vec![("input".into(), "FP32".into(), vec![-1, 64])]
        );
        assert_eq!(
            tensors(&m.outputs),
            vec![
                ("logits".into(), "FP32".into(), vec![-1, 10]),
                ("label".into(), "INT64".into(), vec![-1]),
            ]
        );
        let r = c
            .model_ready(ModelReadyRequest {
                name: "digits".into(),
                version: version.into(),
            })
            .await;
        assert!(r.is_ok_and(|r| r.into_inner().ready), "version {version:?}");
    }

    // Unknown models and versions: NOT_FOUND naming them from ModelMetadata.
    for (name, version, needle) in [
        ("nope", "", "unknown model 'nope'"),
        ("digits", "9", "no version '9'"),
    ] {
        let e = c
            .model_metadata(ModelMetadataRequest {
                name: name.into(),
                version: version.into(),
            })
            .await;
        let e = e
            .err()
            .unwrap_or_else(|| panic!("{name}:{version} answered"));
        assert_eq!(e.code(), Code::NotFound, "{e}");
        assert!(e.message().contains(needle), "{e}");
        // Not ready (as Triton answers, and tritonclient's
        // `is_model_ready` expects), not an error.
        let r = c
            .model_ready(ModelReadyRequest {
                name: name.into(),
                version: version.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("{name}:{version}: {e}"));
        assert!(!r.into_inner().ready, "{name}:{version} is not ready");
    }
    assert!(server.shutdown().await);
}

#[tokio::test]
async fn grpc_infer_answers_typed_and_raw_contents_like_the_model() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let params = common::write_checkpoint(&dir.path().join("ckpt"), 3);
    let server = digits_server(dir.path(), 1 << 20).await;
    let mut c = client(&server).await;

    let rows = sample_rows(2);
    let spec = common::digits_spec();
    let mlp = Mlp::<NdArray>::from_params(&spec, &params, &NdArrayDevice::Cpu)
        .unwrap_or_else(|e| panic!("{e}"));
    let x = Tensor::<NdArray, 2>::from_data(
        TensorData::new(rows.concat(), [2, 64]),
        &NdArrayDevice::Cpu,
    );
    let want: Vec<f32> = mlp
        .forward(x)
        .into_data()
        .into_vec::<f32>()
        .unwrap_or_else(|e| panic!("{e:?}"));
    let want_labels = vec![argmax(&want[..10]), argmax(&want[10..])];
    let close = |got: &[f32]| {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "logit {g} vs {w}");
        }
    };

    // Typed contents in, typed contents out; the id is echoed.
    let mut req = typed("digits", &rows);
    req.id = "req-7".into();
    let r = infer(&mut c, req).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (
            r.model_name.as_str(),
            r.model_version.as_str(),
            r.id.as_str()
        ),
        ("digits", "1", "req-7")
    );
    assert!(r.raw_output_contents.is_empty());
    assert_eq!(r.outputs.len(), 2);
    let (logits, label) = (&r.outputs[0], &r.outputs[1]);
    assert_eq!(
        (
            logits.name.as_str(),
            logits.datatype.as_str(),
            &logits.shape
        ),
        ("logits", "FP32", &vec![2, 10])
    );
    assert_eq!(
        (label.name.as_str(), label.datatype.as_str(), &label.shape),
        ("label", "INT64", &vec![2])
    );
    close(
        &logits
            .contents
            .as_ref()
            .map(|c| c.fp32_contents.clone())
            .unwrap_or_default(),
    );
    assert_eq!(
        label.contents.as_ref().map(|c| c.int64_contents.clone()),
        Some(want_labels.clone())
    );

    // Raw in, raw out (what tritonclient sends and reads), through the version.
    let mut req = raw("digits", &rows);
    req.model_version = "1".into();
    let r = infer(&mut c, req).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.id, "");
    assert_eq!(r.outputs.len(), 2);
    assert!(r.outputs.iter().all(|o| o.contents.is_none()), "{r:?}");
    assert_eq!(r.raw_output_contents.len(), 2);
    assert_eq!(r.raw_output_contents[0].len(), 20 * 4);
    let got: Vec<f32> = r.raw_output_contents[0]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    close(&got);
    let got: Vec<i64> = r.raw_output_contents[1]
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .collect();
    assert_eq!(got, want_labels);

    // Only the requested output; typed input but raw asked for by parameter.
    let mut req = typed("digits", &rows[..1]);
    req.outputs = vec![InferRequestedOutputTensor {
        name: "label".into(),
        parameters: [(
            "binary_data".to_owned(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::BoolParam(true)),
            },
        )]
        .into(),
    }];
    let r = infer(&mut c, req).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.outputs.len(), 1);
    assert_eq!(r.outputs[0].name, "label");
    assert_eq!(r.outputs[0].shape, vec![1]);
    assert_eq!(
        r.raw_output_contents,
        vec![want_labels[0].to_le_bytes().to_vec()]
    );
    assert!(server.shutdown().await);
}

#[tokio::test]
async fn grpc_bad_requests_get_status_codes_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    common::write_checkpoint(&dir.path().join("ckpt"), 4);
    let server = digits_server(dir.path(), 1 << 20).await;
    let mut c = client(&server).await;
    let rows = sample_rows(1);
    let good = || typed("digits", &rows);
    let edit = |f: &dyn Fn(&mut ModelInferRequest)| {
        let mut r = good();
        f(&mut r);
        r
    };
    let cases: Vec<(&str, ModelInferRequest, Code, &str)> = vec![
        (
            "unknown model",
            typed("nope", &rows),
            Code::NotFound,
            "unknown model 'nope'",
        ),
        (
            "unknown version",
            edit(&|r| r.model_version = "3".into()),
            Code::NotFound,
            "no version '3'",
        ),
        (
            "no inputs",
            edit(&|r| r.inputs.clear()),
            Code::InvalidArgument,
            "no inputs",
        ),
        (
            "two inputs",
            edit(&|r| {
                let mut extra = r.inputs[0].clone();
                extra.name = "second".into();
                r.inputs.push(extra);
            }),
            Code::InvalidArgument,
            "unexpected input 'second'",
        ),
        (
            "wrong name",
            edit(&|r| r.inputs[0].name = "pixels".into()),
            Code::InvalidArgument,
            "unknown input 'pixels'",
        ),
        (
            "wrong datatype",
            edit(&|r| r.inputs[0].datatype = "INT64".into()),
            Code::InvalidArgument,
            "datatype INT64 does not match the model's FP32",
        ),
        (
            "wrong width",
            edit(&|r| r.inputs[0].shape = vec![1, 63]),
            Code::InvalidArgument,
            "shape [1, 63] does not match [-1, 64]",
        ),
        (
            "zero rows",
            edit(&|r| r.inputs[0].shape = vec![0, 64]),
            Code::InvalidArgument,
            "shape [0, 64] does not match",
        ),
        (
            "wrong count",
            edit(&|r| r.inputs[0].shape = vec![2, 64]),
            Code::InvalidArgument,
            "shape [2, 64] needs 128 elements, data has 64",
        ),
        (
            "wrong typed field",
            edit(&|r| {
                r.inputs[0].contents = Some(InferTensorContents {
                    int_contents: vec![1; 64],
                    ..Default::default()
                })
            }),
            Code::InvalidArgument,
            "not contents.int_contents",
        ),
        (
            "no data",
            edit(&|r| r.inputs[0].contents = None),
            Code::InvalidArgument,
            "no data",
        ),
        (
            "raw and typed",
            edit(&|r| r.raw_input_contents = vec![vec![0; 256]]),
            Code::InvalidArgument,
            "both contents and raw_input_contents",
        ),
        (
            "raw byte count",
            {
                let mut r = raw("digits", &rows);
                r.raw_input_contents[0].pop();
                r
            },
            Code::InvalidArgument,
            "needs 64 FP32 elements (256 bytes), raw_input_contents[0] has 255 bytes",
        ),
        (
            "raw tensor count",
            {
                let mut r = raw("digits", &rows);
                r.raw_input_contents.push(vec![0; 4]);
                r
            },
            Code::InvalidArgument,
            "raw_input_contents holds 2 tensors for 1 input",
        ),
        (
            "unknown output",
            edit(&|r| {
                r.outputs = vec![InferRequestedOutputTensor {
                    name: "probs".into(),
                    ..Default::default()
                }]
            }),
            Code::InvalidArgument,
            "unknown output 'probs'",
        ),
    ];
    for (what, req, code, needle) in cases {
        match infer(&mut c, req).await {
            Ok(r) => panic!("{what}: answered {r:?}"),
            Err(e) => {
                assert_eq!(e.code(), code, "{what}: {e}");
                assert!(e.message().contains(needle), "{what}: {e}");
            }
        }
    }
    // The server still answers on the same connection.
    let r = infer(&mut c, good()).await;
    assert!(r.is_ok_and(|r| r.outputs.len() == 2));
    assert!(server.shutdown().await);
}

#[tokio::test]
async fn grpc_oversized_messages_are_refused_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    common::write_checkpoint(&dir.path().join("ckpt"), 5);
    let limit = 16 << 10;
    let server = digits_server(dir.path(), limit).await;
    let mut c = client(&server).await;
    // 100 rows of 64 FP32 values: 25,600 raw bytes, over the 16 KiB limit.
    let big = raw("digits", &sample_rows(100));
    match infer(&mut c, big).await {
        Ok(r) => panic!("answered {r:?}"),
        Err(e) => {
            assert_eq!(e.code(), Code::OutOfRange, "{e}");
            assert!(
                e.message()
                    .contains(&format!("the limit is: {limit} bytes")),
                "{e}"
            );
        }
    }
    // Under the limit, on the same connection and on a new one.
    let small = raw("digits", &sample_rows(10));
    let r = infer(&mut c, small.clone()).await;
    assert!(r.is_ok_and(|r| r.raw_output_contents[1].len() == 10 * 8));
    let mut fresh = client(&server).await;
    assert!(infer(&mut fresh, small).await.is_ok());
    assert!(server.shutdown().await);
}

/// A server of gated models (2 features) with gRPC.
async fn gated_server(
    model: &str,
    options: DeploymentOptions,
) -> (
    Server,
    common::GateControl,
    tokio::sync::mpsc::UnboundedReceiver<usize>,
) {
    let (factory, gate, batches) = common::gate(2, 0);
    let system = ActorSystem::new();
    let d = Deployment::start(&system, model, "1", factory, options)
        .await
        .unwrap_or_else(|e| panic!("deployment: {e}"));
    let grpc = GrpcConfig {
        address: "127.0.0.1:0".into(),
        max_message_bytes: 1 << 20,
    };
    let server = Server::serve_with_grpc(system, vec![d], &common::local_http(), &grpc)
        .await
        .unwrap_or_else(|e| panic!("server: {e}"));
    (server, gate, batches)
}

fn two(model: &str, v: f32) -> ModelInferRequest {
    typed(model, &[vec![v, v]])
}

async fn next_batch(rx: &mut tokio::sync::mpsc::UnboundedReceiver<usize>) -> usize {
    match tokio::time::timeout(WAIT, rx.recv()).await {
        Ok(Some(n)) => n,
        other => panic!("no batch: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_overload_is_unavailable_with_a_retry_hint() {
    let (server, gate, mut batches) = gated_server(
        "grpcbusy",
        DeploymentOptions {
            replicas: 1,
            max_ongoing_requests: 1,
            max_queued_requests: 1,
            ..DeploymentOptions::default()
        },
    )
    .await;
    let d = server.deployments()[0].clone();
    let c = client(&server).await;
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            infer(&mut c, two("grpcbusy", 1.0)).await
        }));
    }
    common::until("replica full and one queued", || {
        d.in_flight() == vec![1] && d.queued() == 1
    })
    .await;
    assert_eq!(next_batch(&mut batches).await, 1);
    let e = infer(&mut c.clone(), two("grpcbusy", 1.0))
        .await
        .err()
        .unwrap_or_else(|| panic!("an overloaded deployment answered"));
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    assert!(e.message().contains("overloaded"), "{e}");
    let md = e.metadata();
    assert_eq!(
        md.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_eq!(
        md.get("grpc-retry-pushback-ms")
            .and_then(|v| v.to_str().ok()),
        Some("1000")
    );
    gate.open(2);
    for t in tasks {
        match tokio::time::timeout(WAIT, t).await {
            Ok(Ok(Ok(r))) => {
                let data = r.outputs[0]
                    .contents
                    .as_ref()
                    .map(|c| c.fp32_contents.clone());
                assert_eq!(data, Some(vec![2.0, -2.0]));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((d.in_flight(), d.queued()), (vec![0], 0));
    assert!(server.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_are_counted_in_metrics_and_drained_on_shutdown() {
    let (server, gate, mut batches) =
        gated_server("grpcmetered", DeploymentOptions::default()).await;
    let d = server.deployments()[0].clone();
    let mut c = client(&server).await;
    let metrics_url = format!("http://{}/metrics", server.local_addr());
    gate.open(2);
    for _ in 0..2 {
        assert!(infer(&mut c, two("grpcmetered", 1.0)).await.is_ok());
    }
    let mut bad = two("grpcmetered", 1.0);
    bad.inputs[0].datatype = "FP64".into();
    assert!(infer(&mut c, bad).await.is_err());
    assert!(infer(&mut c, two("grpc-unknown", 1.0)).await.is_err());
    let (s, _, text) = get(&metrics_url).await;
    assert_eq!(s, 200);
    let text = text.as_str().unwrap_or_default().to_owned();
    for line in [
        r#"manta_serve_grpc_requests_total{model="grpcmetered",version="1",code="OK"} 2"#,
        r#"manta_serve_grpc_requests_total{model="grpcmetered",version="1",code="InvalidArgument"} 1"#,
        r#"manta_serve_grpc_requests_total{model="-",version="-",code="NotFound"}"#,
        r#"manta_serve_grpc_request_duration_seconds_count{model="grpcmetered",version="1"} 3"#,
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    for b in 0..2 {
        assert_eq!(next_batch(&mut batches).await, 1, "batch {b}");
    }

    // A call in flight finishes while the server drains; then it is gone.
    let addr = server.grpc_addr();
    let mut held = c.clone();
    let task = tokio::spawn(async move { infer(&mut held, two("grpcmetered", 3.0)).await });
    assert_eq!(next_batch(&mut batches).await, 1);
    let stopping = tokio::spawn(server.shutdown());
    common::until("deployment stopping", || !d.is_ready()).await;
    let ready = c.server_ready(ServerReadyRequest {}).await;
    // Once draining, the server reports not ready (or no longer takes the
    // call on this connection).
    assert!(ready.is_err() || ready.is_ok_and(|r| !r.into_inner().ready));
    gate.open(1);
    match tokio::time::timeout(WAIT, task).await {
        Ok(Ok(Ok(r))) => {
            let data = r.outputs[0]
                .contents
                .as_ref()
                .map(|c| c.fp32_contents.clone());
            assert_eq!(data, Some(vec![6.0, -6.0]));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        tokio::time::timeout(WAIT, stopping).await,
        Ok(Ok(true))
    ));
    let after = match addr {
        Some(a) => tonic::transport::Endpoint::from_shared(format!("http://{a}"))
            .unwrap_or_else(|e| panic!("{e}"))
            .connect()
            .await
            .map(|_| ()),
        None => panic!("no gRPC address"),
    };
    assert!(after.is_err(), "still listening");
}

/// Sends what the runner writes, chunk by chunk.
struct Sink(tokio::sync::mpsc::UnboundedSender<String>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.send(String::from_utf8_lossy(buf).into_owned());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_prints_its_grpc_address_and_serves_on_it() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    common::write_checkpoint(&dir.path().join("ckpt"), 6);
    let path = dir.path().join("serve.toml");
    let written = std::fs::write(
        &path,
        "[http]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n[grpc]\naddress = \"127.0.0.1:0\"\n\
         [[deployment]]\nmodel = \"digits\"\ncheckpoint = \"ckpt\"\n",
    );
    assert!(written.is_ok());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(async move {
        let mut out = Sink(tx);
        manta_serve::cli::run(&path, &mut out, async {
            let _ = stop_rx.await;
        })
        .await
    });
    let addr = tokio::time::timeout(WAIT, async {
        let mut seen = String::new();
        while let Some(chunk) = rx.recv().await {
            seen.push_str(&chunk);
            // Complete lines only: a line may arrive in several writes.
            let addr = seen
                .split_inclusive('\n')
                .filter_map(|l| l.strip_suffix('\n'))
                .find_map(|l| l.strip_prefix("serving gRPC on "))
                .map(str::to_owned);
            if addr.is_some() {
                return addr;
            }
        }
        None
    })
    .await;
    let addr = match addr {
        Ok(Some(a)) => a,
        other => panic!("no gRPC address printed: {other:?}"),
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap_or_else(|e| panic!("{e}"))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut c = GrpcInferenceServiceClient::new(channel);
    let r = infer(&mut c, raw("digits", &sample_rows(3))).await;
    assert!(r.is_ok_and(|r| r.raw_output_contents[1].len() == 3 * 8));
    assert!(stop_tx.send(()).is_ok());
    let done = tokio::time::timeout(WAIT, runner).await;
    assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");
}

#[test]
fn grpc_config_errors_name_the_file_and_the_key() {
    let dir = std::path::Path::new("/nonexistent");
    let deployment = "[[deployment]]\nmodel = \"m\"\ncheckpoint = \"c\"\n";
    let e = ServeConfig::parse(
        &format!("[grpc]\nadress = \"127.0.0.1:0\"\n{deployment}"),
        "serve.toml",
        dir,
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(e.contains("serve.toml") && e.contains("adress"), "{e}");
    let e = ServeConfig::parse(
        &format!("[grpc]\nmax_message_bytes = \"big\"\n{deployment}"),
        "serve.toml",
        dir,
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        e.contains("serve.toml") && e.contains("max_message_bytes"),
        "{e}"
    );
    // Absent: no gRPC; present without keys: the defaults.
    let none = ServeConfig::parse(deployment, "serve.toml", dir).map(|c| c.grpc);
    assert!(matches!(none, Ok(None)), "{none:?}");
    let defaults = ServeConfig::parse(&format!("[grpc]\n{deployment}"), "serve.toml", dir);
    assert!(
        matches!(&defaults, Ok(c) if c.grpc == Some(GrpcConfig::default())),
        "{defaults:?}"
    );
    assert_eq!(GrpcConfig::default().address, "127.0.0.1:8081");
}

/// A model that always fails.
struct Broken;

impl manta_serve::Model for Broken {
    fn features(&self) -> usize {
        2
    }
    fn outputs(&self) -> usize {
        2
    }
    fn infer(&mut self, _input: &[f32], _rows: usize) -> Result<Vec<f32>, String> {
        Err("the model is broken".into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeouts_and_model_failures_get_their_status_codes() {
    // A request the replica does not answer within request_timeout_ms.
    let (server, gate, mut batches) = gated_server(
        "grpcslow",
        DeploymentOptions {
            request_timeout_ms: 100,
            ..DeploymentOptions::default()
        },
    )
    .await;
    let mut c = client(&server).await;
    let e = infer(&mut c, two("grpcslow", 1.0))
        .await
        .err()
        .unwrap_or_else(|| panic!("a held request answered"));
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e}");
    assert!(e.message().contains("no answer within"), "{e}");
    assert_eq!(next_batch(&mut batches).await, 1);
    gate.open(1);
    assert!(server.shutdown().await);

    // A model that fails: INTERNAL, naming the failure.
    let system = ActorSystem::new();
    let factory: manta_serve::ModelFactory =
        std::sync::Arc::new(|| Ok(Box::new(Broken) as Box<dyn manta_serve::Model>));
    let d = Deployment::start(
        &system,
        "grpcbroken",
        "1",
        factory,
        DeploymentOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let grpc = GrpcConfig {
        address: "127.0.0.1:0".into(),
        max_message_bytes: 1 << 20,
    };
    let server = Server::serve_with_grpc(system, vec![d], &common::local_http(), &grpc)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut c = client(&server).await;
    let e = infer(&mut c, two("grpcbroken", 1.0))
        .await
        .err()
        .unwrap_or_else(|| panic!("a broken model answered"));
    assert_eq!(e.code(), Code::Internal, "{e}");
    assert!(e.message().contains("the model is broken"), "{e}");
    assert!(server.shutdown().await);
}
