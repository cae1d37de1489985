//! Every REST endpoint of the Open Inference Protocol, and its errors.

use burn::backend::NdArray;
use burn::backend::ndarray::NdArrayDevice;
use burn::tensor::{Tensor, TensorData};
use manta_ml::Mlp;
use manta_serve::{DeploymentOptions, ServeConfig, Server};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{self, WAIT, get, post};

/// The digits MLP served from a checkpoint, as `manta serve` would.
async fn digits_server(dir: &std::path::Path, body_limit: usize) -> Server {
    let src = format!(
        "[http]\naddress = \"127.0.0.1:0\"\nmax_body_bytes = {body_limit}\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [[deployment]]\nmodel = \"digits\"\ncheckpoint = \"ckpt\"\nreplicas = 2\n\
         max_batch_size = 8\nbatch_wait_timeout_ms = 1\n"
    );
    let config = ServeConfig::parse(&src, "test.toml", dir);
    let config = match config {
        Ok(c) => c,
        Err(e) => panic!("config: {e}"),
    };
    match Server::start(&config).await {
        Ok(s) => s,
        Err(e) => panic!("start: {e}"),
    }
}

#[tokio::test]
async fn health_and_metadata_endpoints_answer_with_the_protocol_fields() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    common::write_checkpoint(&dir.path().join("ckpt"), 1);
    let server = digits_server(dir.path(), 1 << 20).await;
    let base = format!("http://{}", server.local_addr());

    // Server metadata, at `/v2` and at `/v2/` (the REST spec's OpenAPI
    // file declares the latter).
    for path in ["/v2", "/v2/"] {
        let (s, _, v) = get(&format!("{base}{path}")).await;
        assert_eq!(s, 200, "{path}");
        assert_eq!(v["name"], "manta");
        assert!(
            v["version"].is_string() && v["extensions"].is_array(),
            "{v}"
        );
    }

    let (s, _, v) = get(&format!("{base}/v2/health/live")).await;
    assert_eq!((s, &v["live"]), (200, &json!(true)));
    let (s, _, v) = get(&format!("{base}/v2/health/ready")).await;
    assert_eq!((s, &v["ready"]), (200, &json!(true)));

    for path in ["/v2/models/digits", "/v2/models/digits/versions/1"] {
        let (s, _, v) = get(&format!("{base}{path}")).await;
        assert_eq!(s, 200, "{path}: {v}");
        assert_eq!(v["name"], "digits");
        assert_eq!(v["versions"], json!(["1"]));
        assert!(v["platform"].is_string());
        assert_eq!(
            v["inputs"],
            json!([{"name": "input", "datatype": "FP32", "shape": [-1, 64]}])
        );
        assert_eq!(
            v["outputs"],
            json!([
                {"name": "logits", "datatype": "FP32", "shape": [-1, 10]},
                {"name": "label", "datatype": "INT64", "shape": [-1]}
            ])
        );
    }
    for path in [
        "/v2/models/digits/ready",
        "/v2/models/digits/versions/1/ready",
    ] {
        let (s, _, v) = get(&format!("{base}{path}")).await;
        assert_eq!((s, &v["ready"]), (200, &json!(true)), "{path}");
    }

    let (s, _, v) = get(&format!("{base}/v2/models/nope")).await;
    assert_eq!(s, 404);
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown model 'nope'")),
        "{v}"
    );
    let (s, _, v) = get(&format!("{base}/v2/models/digits/versions/9/ready")).await;
    assert_eq!(s, 404);
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("no version '9'")),
        "{v}"
    );
    let (s, _, v) = get(&format!("{base}/v2/nothing")).await;
    assert_eq!(s, 404);
    assert!(v["error"].is_string(), "{v}");
    // A known path with another method: 405, with the error body too.
    let (s, _, v) = get(&format!("{base}/v2/models/digits/infer")).await;
    assert_eq!(s, 405);
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("GET is not allowed on /v2/models/digits/infer")),
        "{v}"
    );
    assert!(server.shutdown().await);
}

#[tokio::test]
async fn infer_answers_the_checkpointed_mlp_with_id_and_requested_outputs() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let params = common::write_checkpoint(&dir.path().join("ckpt"), 3);
    let server = digits_server(dir.path(), 1 << 20).await;
    let base = format!("http://{}", server.local_addr());

    // Two rows, as nested arrays.
    let rows: Vec<Vec<f32>> = (0..2)
        .map(|r| {
            (0..64)
                .map(|i| ((i * 7 + r * 13) % 17) as f32 / 16.0)
                .collect()
        })
        .collect();
    let body = json!({
        "id": "req-42",
        "inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": rows}],
    });
    let (s, _, v) = post(&format!("{base}/v2/models/digits/infer"), body.to_string()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["id"], "req-42");
    assert_eq!(v["model_name"], "digits");
    assert_eq!(v["model_version"], "1");
    assert_eq!(v["outputs"][0]["name"], "logits");
    assert_eq!(v["outputs"][0]["shape"], json!([2, 10]));
    assert_eq!(v["outputs"][0]["datatype"], "FP32");
    assert_eq!(v["outputs"][1]["name"], "label");
    assert_eq!(v["outputs"][1]["datatype"], "INT64");
    assert_eq!(v["outputs"][1]["shape"], json!([2]));

    // The same logits as the model computed here.
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
    let got: Vec<f64> = v["outputs"][0]["data"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
        .unwrap_or_default();
    assert_eq!(got.len(), 20);
    for (g, w) in got.iter().zip(&want) {
        assert!((*g as f32 - w).abs() < 1e-5, "logit {g} vs {w}");
    }
    let argmax = |row: &[f32]| {
        row.iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
            .0 as i64
    };
    assert_eq!(
        v["outputs"][1]["data"],
        json!([argmax(&want[..10]), argmax(&want[10..])])
    );

    // Only the requested output, through the versioned path; no id, none echoed.
    let body = json!({
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": rows[0]}],
        "outputs": [{"name": "label"}],
    });
    let (s, _, v) = post(
        &format!("{base}/v2/models/digits/versions/1/infer"),
        body.to_string(),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(v.get("id").is_none(), "{v}");
    assert_eq!(v["outputs"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["outputs"][0]["name"], "label");
    assert_eq!(v["outputs"][0]["data"], json!([argmax(&want[..10])]));

    // What KServe's Python client sends: a `model_name` key beside the
    // protocol's (unknown top-level keys are ignored), and an empty
    // `outputs` list, which asks for every output.
    let body = json!({
        "id": "kserve-1",
        "model_name": "digits",
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": rows[1]}],
        "outputs": [],
    });
    let (s, _, v) = post(&format!("{base}/v2/models/digits/infer"), body.to_string()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["id"], "kserve-1");
    assert_eq!(v["outputs"][0]["name"], "logits");
    assert_eq!(v["outputs"][1]["name"], "label");
    assert_eq!(v["outputs"][1]["data"], json!([argmax(&want[10..])]));
    assert!(server.shutdown().await);
}

/// Triton's binary tensor data extension (what `tritonclient.http` sends
/// by default): the JSON header's length in `Inference-Header-Content-Length`,
/// the input's FP32 values as little-endian bytes after it, the outputs
/// asked as binary answered the same way; the same numbers as the JSON
/// form; every malformed variant refused with a 400 naming it.
#[tokio::test]
async fn binary_tensor_data_requests_and_answers_match_the_json_form() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    common::write_checkpoint(&dir.path().join("ckpt"), 2);
    let server = digits_server(dir.path(), 1 << 20).await;
    let base = format!("http://{}", server.local_addr());
    let url = format!("{base}/v2/models/digits/infer");
    let (_, _, meta) = get(&format!("{base}/v2")).await;
    assert!(
        meta["extensions"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("binary_tensor_data"))),
        "{meta}"
    );
    let values: Vec<f32> = (0..128).map(|i| ((i * 5) % 17) as f32 / 16.0).collect();
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let send = |head: serde_json::Value, tail: Vec<u8>, declared: Option<String>| {
        let url = url.clone();
        async move {
            let head = head.to_string();
            let declared = declared.unwrap_or_else(|| head.len().to_string());
            let mut body = head.into_bytes();
            body.extend_from_slice(&tail);
            let r = common::client()
                .post(&url)
                .header("Inference-Header-Content-Length", declared)
                .header("content-type", "application/octet-stream")
                .body(body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let status = r.status().as_u16();
            let json_len = r
                .headers()
                .get("inference-header-content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok());
            let body = r.bytes().await.unwrap_or_else(|e| panic!("{e}")).to_vec();
            (status, json_len, body)
        }
    };
    let input = json!({"name": "input", "shape": [2, 64], "datatype": "FP32",
                       "parameters": {"binary_data_size": 512}});
    // Binary in, both outputs binary out.
    let (s, json_len, body) = send(
        json!({"id": "b1", "inputs": [input.clone()], "parameters": {"binary_data_output": true}}),
        bytes.clone(),
        None,
    )
    .await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    let n = json_len.unwrap_or_else(|| panic!("no Inference-Header-Content-Length"));
    let head: serde_json::Value =
        serde_json::from_slice(&body[..n]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(head["id"], "b1");
    assert_eq!(head["outputs"][0]["name"], "logits");
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 80);
    assert!(head["outputs"][0].get("data").is_none(), "{head}");
    assert_eq!(head["outputs"][1]["parameters"]["binary_data_size"], 16);
    assert_eq!(body.len(), n + 80 + 16);
    let logits: Vec<f32> = body[n..n + 80]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let labels: Vec<i64> = body[n + 80..]
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .collect();
    // The JSON form of the same request answers the same numbers.
    let plain = json!({"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": values}]});
    let (s, _, v) = post(&url, plain.to_string()).await;
    assert_eq!(s, 200, "{v}");
    let want: Vec<f32> = v["outputs"][0]["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_f64())
                .map(|x| x as f32)
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(logits, want);
    assert_eq!(json!(labels), v["outputs"][1]["data"]);
    // Binary in, one output asked as JSON: a plain JSON answer.
    let (s, json_len, body) = send(
        json!({"inputs": [input.clone()], "outputs": [{"name": "label", "parameters": {"binary_data": false}}]}),
        bytes.clone(),
        None,
    )
    .await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json_len, None);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["outputs"][0]["data"], json!(labels));
    // Malformed variants.
    let cases: Vec<(serde_json::Value, Vec<u8>, Option<String>, &str)> = vec![
        (
            json!({"inputs": [input.clone()]}),
            bytes[..508].to_vec(),
            None,
            "binary_data_size 512, but the body holds 508",
        ),
        (
            json!({"inputs": [input.clone()]}),
            [&bytes[..], &[0u8; 4][..]].concat(),
            None,
            "holds 516 bytes",
        ),
        (
            json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 254}}]}),
            vec![0; 254],
            None,
            "not a whole number of FP32 values",
        ),
        (
            json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 252}}]}),
            vec![0; 252],
            None,
            "needs 64 elements, data has 63",
        ),
        (
            json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 256}, "data": vec![0.0; 64]}]}),
            vec![0; 256],
            None,
            "both data and binary_data_size",
        ),
        (
            json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32"}]}),
            vec![],
            None,
            "no data and no binary_data_size",
        ),
        (
            json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": vec![0.0; 64]}]}),
            vec![1, 2, 3],
            None,
            "no input declares binary_data_size",
        ),
        (
            json!({"inputs": [input.clone()], "outputs": [{"name": "label", "parameters": {"binary_data": "yes"}}]}),
            bytes.clone(),
            None,
            "'binary_data' must be true or false",
        ),
        (
            json!({"inputs": [input.clone()]}),
            bytes.clone(),
            Some("lots".into()),
            "not a byte count",
        ),
        (
            json!({"inputs": [input.clone()]}),
            bytes.clone(),
            Some("100000".into()),
            "bytes of JSON, but the body has",
        ),
    ];
    for (head, tail, declared, needle) in cases {
        let (s, _, body) = send(head.clone(), tail, declared).await;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s, 400, "{head}: {v}");
        let e = v["error"].as_str().unwrap_or_default();
        assert!(e.contains(needle), "{head}: error {e:?} lacks {needle:?}");
    }
    // Still serving.
    let (s, _, _) = post(&url, plain.to_string()).await;
    assert_eq!(s, 200);
    assert!(server.shutdown().await);
}

#[tokio::test]
async fn bad_requests_get_4xx_errors_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    common::write_checkpoint(&dir.path().join("ckpt"), 1);
    let server = digits_server(dir.path(), 1 << 20).await;
    let url = format!("http://{}/v2/models/digits/infer", server.local_addr());
    let tensor = |name: &str, shape: serde_json::Value, datatype: &str, data: serde_json::Value| {
        json!({"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]})
            .to_string()
    };
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "malformed inference request"),
        (json!({"inputs": "x"}).to_string(), 400, "malformed inference request"),
        (json!({"inputs": []}).to_string(), 400, "no inputs"),
        (tensor("pixels", json!([1, 64]), "FP32", json!(vec![0.0; 64])), 400, "unknown input 'pixels'"),
        (tensor("input", json!([1, 64]), "INT32", json!(vec![0; 64])), 400, "datatype INT32"),
        (tensor("input", json!([64]), "FP32", json!(vec![0.0; 64])), 400, "shape [64]"),
        (tensor("input", json!([1, 63]), "FP32", json!(vec![0.0; 63])), 400, "shape [1, 63]"),
        (tensor("input", json!([0, 64]), "FP32", json!([])), 400, "at least one row"),
        (tensor("input", json!([1, 64]), "FP32", json!(vec![0.0; 63])), 400, "needs 64 elements, data has 63"),
        (tensor("input", json!([1, 64]), "FP32", json!(vec![0.0; 65])), 400, "needs 64 elements"),
        (tensor("input", json!([1, 64]), "FP32", json!(["a"])), 400, "not an FP32 number"),
        // Nested data must follow the shape: ragged rows (the right count
        // in all) would cut the values into other rows than the client's.
        (
            tensor("input", json!([2, 64]), "FP32", json!([vec![0.0; 65], vec![0.0; 63]])),
            400,
            "data[0] holds 65 items, but shape [2, 64] wants 64 there",
        ),
        (
            tensor("input", json!([2, 64]), "FP32", json!([vec![0.0; 64]])),
            400,
            "data holds 1 items, but shape [2, 64] wants 2 there",
        ),
        (
            tensor("input", json!([1, 64]), "FP32", json!([vec![vec![0.0; 1]; 64]])),
            400,
            "data[0][0] is an array, but shape [1, 64] has only 2 dimensions",
        ),
        (
            tensor("input", json!([2, 64]), "FP32", json!([vec![0.0; 64], 1.0])),
            400,
            "data[1] is 1.0, but shape [2, 64] wants an array of 64 there",
        ),
        (
            json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": vec![0.0; 64]}],
                   "outputs": [{"name": "probs"}]}).to_string(),
            400,
            "unknown output 'probs'",
        ),
    ];
    for (body, status, needle) in cases {
        let (s, _, v) = post(&url, body.clone()).await;
        assert_eq!(s, status, "{body}: {v}");
        let e = v["error"].as_str().unwrap_or_default();
        assert!(e.contains(needle), "{body}: error {e:?} lacks {needle:?}");
    }
    let base = format!("http://{}", server.local_addr());
    let (s, _, v) = post(
        &format!("{base}/v2/models/other/infer"),
        common::infer_body(1, 64, 0.0),
    )
    .await;
    assert_eq!(s, 404, "{v}");
    let (s, _, v) = post(
        &format!("{base}/v2/models/digits/versions/2/infer"),
        common::infer_body(1, 64, 0.0),
    )
    .await;
    assert_eq!(s, 404, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("no version '2' (versions: 1)"))
    );
    assert!(server.shutdown().await);
}

/// Sends raw bytes and reads what comes back until the server closes or
/// a status line and blank line arrive.
async fn raw(addr: std::net::SocketAddr, bytes: &[u8], close_write: bool) -> String {
    let r = tokio::time::timeout(WAIT, async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(bytes).await?;
        if close_write {
            s.shutdown().await?;
        }
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if got.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&got).into_owned())
    })
    .await;
    match r {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => format!("io error: {e}"),
        Err(_) => panic!("no answer within {WAIT:?}"),
    }
}

#[tokio::test]
async fn oversized_and_truncated_bodies_are_refused_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    common::write_checkpoint(&dir.path().join("ckpt"), 1);
    let server = digits_server(dir.path(), 4096).await;
    let addr = server.local_addr();
    let url = format!("http://{addr}/v2/models/digits/infer");

    // Declared too large: refused from the header, before the body is sent.
    let head = format!(
        "POST /v2/models/digits/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        10 << 20
    );
    let answer = raw(addr, head.as_bytes(), false).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Chunked with no length, over the limit: refused while read.
    let mut chunked =
        "POST /v2/models/digits/infer HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_string();
    for _ in 0..8 {
        chunked.push_str(&format!("400\r\n{}\r\n", "9".repeat(0x400)));
    }
    let answer = raw(addr, chunked.as_bytes(), false).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Truncated: a length of 1000, 20 bytes, then the client stops sending.
    let truncated = "POST /v2/models/digits/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{\"inputs\": [{\"name\":";
    let answer = raw(addr, truncated.as_bytes(), true).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400") || answer.starts_with("io error"),
        "{answer}"
    );

    // Through reqwest too: a body over the limit gets the JSON error.
    let (s, _, v) = post(&url, common::infer_body(20, 64, 0.5)).await;
    assert_eq!(s, 413, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("4096-byte limit")),
        "{v}"
    );

    // And it still serves.
    let (s, _, v) = post(&url, common::infer_body(1, 64, 0.5)).await;
    assert_eq!(s, 200, "{v}");
    assert!(server.shutdown().await);
}

#[tokio::test]
async fn metrics_count_requests_by_status_with_latency_and_batch_histograms() {
    let (factory, gate, _) = common::gate(3, u64::MAX);
    let server = common::serve_one(
        "metered",
        factory,
        DeploymentOptions {
            replicas: 2,
            ..DeploymentOptions::default()
        },
    )
    .await;
    let base = format!("http://{}", server.local_addr());
    for _ in 0..3 {
        let (s, _, _) = post(
            &format!("{base}/v2/models/metered/infer"),
            common::infer_body(1, 3, 1.0),
        )
        .await;
        assert_eq!(s, 200);
    }
    let (s, _, _) = post(
        &format!("{base}/v2/models/metered/infer"),
        common::infer_body(1, 4, 1.0),
    )
    .await;
    assert_eq!(s, 400);
    gate.open(0);
    let text = tokio::time::timeout(WAIT, async {
        reqwest::get(format!("{base}/metrics")).await?.text().await
    })
    .await;
    let text = match text {
        Ok(Ok(t)) => t,
        other => panic!("GET /metrics: {other:?}"),
    };
    let has = |needle: &str| text.lines().any(|l| l.contains(needle));
    assert!(
        has(r#"manta_serve_requests_total{model="metered",version="1",status="200"} 3"#),
        "{text}"
    );
    assert!(
        has(r#"manta_serve_requests_total{model="metered",version="1",status="400"} 1"#),
        "{text}"
    );
    assert!(
        has(
            r#"manta_serve_request_duration_seconds_bucket{model="metered",version="1",le="0.001"}"#
        ),
        "{text}"
    );
    assert!(
        has(r#"manta_serve_batch_size_count{model="metered",version="1"} 3"#),
        "{text}"
    );
    assert!(
        has(r#"manta_serve_replicas{model="metered",version="1"} 2"#),
        "{text}"
    );
    assert!(
        has(r#"manta_serve_queue_depth{model="metered",version="1"} 0"#),
        "{text}"
    );
    assert!(has("manta_serve_compute_seconds_bucket"), "{text}");
    assert!(server.shutdown().await);
}
