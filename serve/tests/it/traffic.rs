//! Versions and traffic: explicit version routing, the weighted split
//! (smooth weighted round-robin, so counts are exact), changes under
//! load, rollback.

use manta_actors::ActorSystem;
use manta_serve::{Deployment, DeploymentOptions, ServeConfig, Server, TrafficError};

use crate::common::{self, infer_body, post, until};

fn ok<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// `(model_version, logits)` of an answer, which must be a 200.
fn answered(r: (u16, reqwest::header::HeaderMap, serde_json::Value)) -> (String, Vec<f64>) {
    let (status, _, body) = r;
    assert_eq!(status, 200, "{body}");
    let version = body["model_version"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let logits = body["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|t| t["name"] == "logits"))
        .and_then(|t| t["data"].as_array())
        .map(|d| d.iter().filter_map(serde_json::Value::as_f64).collect())
        .unwrap_or_default();
    (version, logits)
}

/// Sends `n` unversioned requests at once; answers each's version.
async fn burst(url: &str, n: usize, features: usize) -> Vec<(String, Vec<f64>)> {
    let tasks: Vec<_> = (0..n)
        .map(|_| tokio::spawn(post_owned(url.to_owned(), infer_body(1, features, 0.5))))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(answered(ok(t.await, "request task")));
    }
    out
}

async fn post_owned(
    url: String,
    body: String,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    post(&url, body).await
}

fn count(answers: &[(String, Vec<f64>)], version: &str) -> usize {
    answers.iter().filter(|a| a.0 == version).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_from_checkpoints_route_split_and_roll_back() {
    let dir = ok(tempfile::tempdir(), "tempdir");
    common::write_checkpoint(&dir.path().join("v1"), 1);
    common::write_checkpoint(&dir.path().join("v2"), 2);
    let src = "[http]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
        [[deployment]]\nmodel = \"traffic-ckpt\"\nversion = \"1\"\ncheckpoint = \"v1\"\nweight = 100\n\
        [[deployment]]\nmodel = \"traffic-ckpt\"\nversion = \"2\"\ncheckpoint = \"v2\"\nweight = 0\n";
    let config = ok(ServeConfig::parse(src, "serve.toml", dir.path()), "config");
    let server = ok(Server::start(&config).await, "start");
    let base = format!("http://{}/v2/models/traffic-ckpt", server.local_addr());
    let url = format!("{base}/infer");
    let m = "traffic-ckpt";

    // Explicit versions: each its own checkpoint, so different outputs.
    let (v, one) =
        answered(post(&format!("{base}/versions/1/infer"), infer_body(1, 64, 0.5)).await);
    assert_eq!(v, "1");
    let (v, two) =
        answered(post(&format!("{base}/versions/2/infer"), infer_body(1, 64, 0.5)).await);
    assert_eq!(v, "2");
    assert_eq!(one.len(), 10);
    assert_ne!(one, two, "the two checkpoints must answer differently");
    let (status, _, body) = post(&format!("{base}/versions/3/infer"), infer_body(1, 64, 0.5)).await;
    assert_eq!(status, 404, "{body}");

    // 100/0 from the config: everything to version 1, its outputs.
    assert_eq!(
        ok(server.traffic(m), "traffic"),
        (
            vec![("1".to_owned(), 100), ("2".to_owned(), 0)],
            "1".to_owned()
        )
    );
    let a = burst(&url, 6, 64).await;
    assert!(a.iter().all(|a| a.0 == "1" && a.1 == one), "{a:?}");

    // 50/50: exactly half each (smooth weighted round-robin, no draws).
    ok(server.set_traffic(m, &[("1", 50), ("2", 50)]), "50/50");
    let a = burst(&url, 20, 64).await;
    assert_eq!((count(&a, "1"), count(&a, "2")), (10, 10));
    assert!(
        a.iter()
            .all(|a| (a.0 == "1" && a.1 == one) || (a.0 == "2" && a.1 == two))
    );

    // Rollback: all back to the stable version (1, which had it all).
    assert_eq!(ok(server.rollback(m), "rollback"), "1");
    let a = burst(&url, 6, 64).await;
    assert_eq!(count(&a, "1"), 6);

    // 0/100 promotes 2: it becomes the stable version.
    ok(server.set_traffic(m, &[("2", 100)]), "0/100");
    let a = burst(&url, 6, 64).await;
    assert!(a.iter().all(|a| a.0 == "2" && a.1 == two), "{a:?}");
    assert_eq!(ok(server.traffic(m), "traffic").1, "2");
    ok(server.set_traffic(m, &[("1", 1), ("2", 3)]), "25/75");
    let a = burst(&url, 8, 64).await;
    assert_eq!((count(&a, "1"), count(&a, "2")), (2, 6));
    assert_eq!(ok(server.rollback(m), "rollback"), "2");
    let a = burst(&url, 4, 64).await;
    assert_eq!(count(&a, "2"), 4);

    // Refused changes name the problem and leave the split alone.
    assert_eq!(
        server.set_traffic(m, &[("3", 1)]),
        Err(TrafficError::UnknownVersion {
            model: m.into(),
            version: "3".into()
        })
    );
    assert_eq!(
        server.set_traffic(m, &[("1", 0)]),
        Err(TrafficError::NoWeight(m.into()))
    );
    assert_eq!(
        server.rollback("nope"),
        Err(TrafficError::UnknownModel("nope".into()))
    );
    assert_eq!(
        ok(server.traffic(m), "traffic").0,
        vec![("1".to_owned(), 0), ("2".to_owned(), 100)]
    );
    assert!(server.shutdown().await);
}

#[test]
fn weights_that_add_up_to_nothing_are_refused() {
    let src = "[[deployment]]\nmodel = \"m\"\ncheckpoint = \"c\"\nweight = 0\n";
    let e = ServeConfig::parse(src, "serve.toml", std::path::Path::new("/b"));
    assert!(
        matches!(&e, Err(manta_serve::StartError::Config(m)) if m.contains("model m: the weights")),
        "{e:?}"
    );
}

/// Requests routed to `d` and not answered yet.
fn held(d: &Deployment) -> usize {
    d.in_flight().iter().sum::<usize>() + d.queued()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_changes_under_load_drop_nothing() {
    // Both versions' models wait on one gate: every request stays in
    // flight until the end, across three split changes.
    let (factory, gate, _batches) = common::gate(2, 0);
    let system = ActorSystem::new();
    let options = DeploymentOptions {
        max_ongoing_requests: 32,
        ..DeploymentOptions::default()
    };
    let m = "traffic-load";
    let v1 = ok(
        Deployment::start(&system, m, "1", factory.clone(), options.clone()).await,
        "v1",
    );
    let v2 = ok(
        Deployment::start(&system, m, "2", factory, options).await,
        "v2",
    );
    let server = ok(
        Server::serve(system, vec![v1.clone(), v2.clone()], &common::local_http()).await,
        "serve",
    );
    let url = format!("http://{}/v2/models/{m}/infer", server.local_addr());
    let send = |n: usize| -> Vec<_> {
        (0..n)
            .map(|_| tokio::spawn(post_owned(url.clone(), infer_body(1, 2, 1.0))))
            .collect()
    };
    // 100/0 (the first listed), then 0/100, then 50/50, each change made
    // once the previous requests are routed and while they are held.
    let first = send(8);
    until("8 requests on version 1", || held(&v1) == 8).await;
    ok(server.set_traffic(m, &[("1", 0), ("2", 100)]), "0/100");
    let second = send(8);
    until("8 requests on version 2", || held(&v2) == 8).await;
    ok(server.set_traffic(m, &[("1", 50), ("2", 50)]), "50/50");
    let third = send(8);
    until("4 more on each", || held(&v1) == 12 && held(&v2) == 12).await;
    gate.open(24);
    let mut phases = Vec::new();
    for tasks in [first, second, third] {
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(answered(ok(t.await, "request task")));
        }
        phases.push(answers);
    }
    assert_eq!(count(&phases[0], "1"), 8);
    assert_eq!(count(&phases[1], "2"), 8);
    assert_eq!((count(&phases[2], "1"), count(&phases[2], "2")), (4, 4));
    assert!(server.shutdown().await);
}

/// Scales pixels 0..16 to 0..1: the preprocessing stage.
struct Scale;

impl manta_serve::Model for Scale {
    fn features(&self) -> usize {
        64
    }
    fn outputs(&self) -> usize {
        64
    }
    fn infer(&mut self, input: &[f32], _rows: usize) -> Result<Vec<f32>, String> {
        Ok(input.iter().map(|v| v / 16.0).collect())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_calls_another_through_its_handle() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    common::write_checkpoint(&dir.path().join("ckpt"), 8);
    let (digits, _) = manta_serve::model::mlp_from_checkpoint(&dir.path().join("ckpt"))
        .unwrap_or_else(|e| panic!("{e}"));
    let system = manta_actors::ActorSystem::new();
    let model = Deployment::start(
        &system,
        "composed",
        "1",
        digits,
        DeploymentOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let scale: manta_serve::ModelFactory =
        std::sync::Arc::new(|| Ok(Box::new(Scale) as Box<dyn manta_serve::Model>));
    let chained =
        manta_serve::compose::chain(scale, model.clone(), tokio::runtime::Handle::current());
    let pre = Deployment::start(
        &system,
        "composed-raw",
        "1",
        chained,
        DeploymentOptions {
            replicas: 2,
            ..DeploymentOptions::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let server = Server::serve(system, vec![model, pre], &common::local_http())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let base = format!("http://{}", server.local_addr());
    // Raw pixels through the chain answer what scaled pixels answer directly.
    let pixels: Vec<f32> = (0..64).map(|i| ((i * 7) % 17) as f32).collect();
    let scaled: Vec<f32> = pixels.iter().map(|v| v / 16.0).collect();
    let body = |data: &[f32]| {
        serde_json::json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": data}]})
            .to_string()
    };
    let (s, _, direct) = post(&format!("{base}/v2/models/composed/infer"), body(&scaled)).await;
    assert_eq!(s, 200, "{direct}");
    let (s, _, chained) = post(
        &format!("{base}/v2/models/composed-raw/infer"),
        body(&pixels),
    )
    .await;
    assert_eq!(s, 200, "{chained}");
    assert_eq!(chained["model_name"], "composed-raw");
    assert_eq!(chained["outputs"][0]["shape"], serde_json::json!([1, 10]));
    assert_eq!(chained["outputs"][0]["data"], direct["outputs"][0]["data"]);
    assert_eq!(chained["outputs"][1]["data"], direct["outputs"][1]["data"]);
    // A first stage whose width does not fit the next is refused at start.
    let bad: manta_serve::ModelFactory = std::sync::Arc::new(|| {
        let (f, _, _) = common::gate(64, 0);
        f()
    });
    let again = manta_actors::ActorSystem::new();
    let refused = Deployment::start(
        &again,
        "bad",
        "1",
        manta_serve::compose::chain(
            bad,
            server.deployments()[0].clone(),
            tokio::runtime::Handle::current(),
        ),
        DeploymentOptions::default(),
    )
    .await;
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("answers 2 values per row, the next takes 64"),
        "{message}"
    );
    assert!(server.shutdown().await);
}
