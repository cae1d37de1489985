//! Tune -> serve: a deployment of an experiment's best trial, the admin
//! API (traffic, versions, promote on a metric, rollback, auth), and
//! `manta serve promote`'s library side, over HTTP with real experiments
//! made by the tuner (digits, two trials of two epochs).

use std::path::{Path, PathBuf};

use manta_serve::admin::{PromoteRequest, Then};
use manta_serve::{ServeConfig, Server};

use crate::common::{self, get, infer_body, post};

fn ok<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

fn digits_data() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ml/data/digits.csv.gz")
        .display()
        .to_string()
}

/// Runs a small digits experiment in `dir` (two trials of two epochs,
/// checkpoints every `checkpoint_every` epochs).
async fn tune(dir: &Path, seed: u64, checkpoint_every: u64) {
    ok(std::fs::create_dir_all(dir), "experiment dir");
    let train = dir.join("train.toml");
    ok(
        std::fs::write(
            &train,
            format!(
                "job = \"t\"\n[data]\npath = {:?}\nscale = 0.0625\n[model]\nhidden = [16]\n[training]\nepochs = 2\nbatch_size = 64\n",
                digits_data()
            ),
        ),
        "train.toml",
    );
    let text = format!(
        "[experiment]\nname = \"serve\"\ndir = {:?}\nmetric = \"val_accuracy\"\nmode = \"max\"\nmax_trials = 2\nmax_concurrent = 2\nseed = {seed}\ncheckpoint_every = {checkpoint_every}\n\
         [trainable]\nkind = \"digits\"\nconfig = {:?}\nvalidation_fraction = 0.2\n\
         [space]\nlr = {{ type = \"choice\", values = [0.003, 0.01] }}\nseed = {{ type = \"choice\", values = [{seed}, {}] }}\n",
        dir.join("exp").display().to_string(),
        train.display().to_string(),
        seed + 1
    );
    let config = ok(
        manta_ml::tune::TuneConfig::parse(&text, "tune.toml", dir),
        "tune config",
    );
    let summary = ok(
        manta_ml::tune::run(
            config,
            &manta_ml::tune::Trainables::default(),
            false,
            |_| {},
        )
        .await,
        "tune",
    );
    assert!(summary.best.is_some(), "the experiment has a best trial");
}

fn admin_url(server: &Server) -> String {
    match server.admin_addr() {
        Some(a) => format!("http://{a}"),
        None => panic!("no admin address"),
    }
}

async fn admin(
    server: &Server,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let body = body.map(|b| b.to_string());
    let (status, text) = ok(
        manta_serve::client::request(
            &admin_url(server),
            method,
            path,
            body.as_deref(),
            None,
            common::WAIT,
        )
        .await,
        "admin request",
    );
    let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, v)
}

fn weights(v: &serde_json::Value) -> Vec<(String, u64)> {
    v["weights"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|w| {
                    (
                        w["version"].as_str().unwrap_or_default().to_owned(),
                        w["weight"].as_u64().unwrap_or(u64::MAX),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn best_trial_serves_and_promotes_through_the_admin_api() {
    let tmp = ok(tempfile::tempdir(), "tempdir");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    tune(&a, 0, 1).await;
    tune(&b, 10, 1).await;
    let best_a = ok(
        manta_ml::tune::store::best_checkpoint(&a.join("exp")),
        "best of a",
    );
    let best_b = ok(
        manta_ml::tune::store::best_checkpoint(&b.join("exp")),
        "best of b",
    );
    let src = "[http]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
         [[deployment]]\nmodel = \"promo\"\nversion = \"1\"\nexperiment = \"a/exp\"\nmax_batch_size = 8\n";
    let config = ok(ServeConfig::parse(src, "serve.toml", tmp.path()), "config");
    let server = ok(Server::start(&config).await, "start");
    let addr = server.local_addr();
    assert_ne!(
        server.admin_addr(),
        Some(addr),
        "admin has its own listener"
    );
    let infer = format!("http://{addr}/v2/models/promo/infer");

    // The best trial of `a` answers digits.
    let (status, _, body) = post(&infer, infer_body(1, 64, 0.5)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model_version"], "1");
    assert_eq!(body["outputs"][0]["shape"], serde_json::json!([1, 10]));
    // The admin API is not on the inference port.
    let (status, _, _) = get(&format!("http://{addr}/admin/models/promo/traffic")).await;
    assert_eq!(status, 404);

    // Canary at 30% without a decision: exact split over ten requests.
    let canary = format!("trial-{}", best_b.trial);
    let request = PromoteRequest {
        experiment: b.join("exp"),
        version: None,
        percent: 30,
        then: None,
        metric: None,
        min: None,
        max: None,
        min_requests: None,
        window_ms: None,
    };
    let mut out = Vec::new();
    let answer = ok(
        manta_serve::cli::promote(
            manta_serve::cli::PromoteArgs {
                server: admin_url(&server),
                model: "promo".into(),
                request: request.clone(),
                token: None,
            },
            &mut out,
        )
        .await,
        "promote (canary)",
    );
    assert_eq!(answer.decision, "canary");
    assert_eq!(answer.version, canary);
    assert_eq!(answer.trial, best_b.trial);
    assert_eq!(answer.baseline, "1");
    let printed = String::from_utf8_lossy(&out).into_owned();
    assert!(
        printed.contains("canary") && printed.contains(&canary),
        "{printed}"
    );
    let (status, t) = admin(&server, "GET", "/admin/models/promo/traffic", None).await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(weights(&t), vec![("1".into(), 70), (canary.clone(), 30)]);
    assert_eq!(t["stable"], "1");
    let mut to_canary = 0;
    for _ in 0..10 {
        let (status, _, body) = post(&infer, infer_body(1, 64, 0.5)).await;
        assert_eq!(status, 200, "{body}");
        to_canary += usize::from(body["model_version"] == canary.as_str());
    }
    assert_eq!(to_canary, 3, "30% of ten requests");
    // The same best trial again: refused, it is already served.
    let (status, e) = admin(
        &server,
        "POST",
        "/admin/models/promo/promote",
        Some(ok(serde_json::to_value(&request), "json")),
    )
    .await;
    assert_eq!(status, 409, "{e}");

    // The split at run time: PUT, then a bad one refused as it was.
    let (status, t) = admin(
        &server,
        "PUT",
        "/admin/models/promo/traffic",
        Some(serde_json::json!({"weights": {"1": 100}})),
    )
    .await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(weights(&t), vec![("1".into(), 100), (canary.clone(), 0)]);
    let (status, e) = admin(
        &server,
        "PUT",
        "/admin/models/promo/traffic",
        Some(serde_json::json!({"weights": {"9": 1}})),
    )
    .await;
    assert_eq!(status, 404, "{e}");
    assert!(
        e["error"].as_str().unwrap_or_default().contains("'9'"),
        "{e}"
    );
    let (status, e) = admin(&server, "DELETE", "/admin/models/promo/versions/1", None).await;
    assert_eq!(status, 409, "the stable version cannot go: {e}");
    let (status, e) = admin(
        &server,
        "DELETE",
        &format!("/admin/models/promo/versions/{canary}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{e}");

    // Promote on a serving metric: the canary's error rate over 6 answers,
    // under traffic that runs until the decision.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = tokio::spawn({
        let infer = infer.clone();
        let done = done.clone();
        async move {
            let mut answered = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Acquire) && answered.len() < 100_000 {
                answered.push(post(&infer, infer_body(1, 64, 0.25)).await.0);
            }
            answered
        }
    });
    let (status, p) = admin(
        &server,
        "POST",
        "/admin/models/promo/promote",
        Some(serde_json::json!({
            "experiment": b.join("exp"), "percent": 50,
            "metric": "error_rate", "max": 0.0, "min_requests": 6, "window_ms": 20000
        })),
    )
    .await;
    done.store(true, std::sync::atomic::Ordering::Release);
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["decision"], "promoted", "{p}");
    assert_eq!(p["value"], 0.0);
    assert_eq!(p["stable"], canary.as_str());
    let codes = ok(traffic.await, "traffic");
    assert!(
        codes.iter().all(|&c| c == 200),
        "nothing dropped: {codes:?}"
    );
    let (status, _, body) = post(&infer, infer_body(1, 64, 0.5)).await;
    assert_eq!(
        (status, body["model_version"].clone()),
        (200, canary.as_str().into())
    );

    // A tuner metric out of bounds rolls back, and the canary goes.
    let (status, p) = admin(
        &server,
        "POST",
        "/admin/models/promo/promote",
        Some(serde_json::json!({
            "experiment": a.join("exp"), "version": "again", "percent": 10,
            "metric": "val_accuracy", "min": 2.0
        })),
    )
    .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["decision"], "rolled_back", "{p}");
    assert_eq!(p["value"], best_a.metric);
    assert_eq!(p["stable"], canary.as_str());
    let (status, _, _) = get(&format!("http://{addr}/v2/models/promo/versions/again")).await;
    assert_eq!(status, 404, "the rolled back version is gone");
    // `then = rollback` at once.
    let rb = PromoteRequest {
        experiment: a.join("exp"),
        version: Some("third".into()),
        percent: 100,
        then: Some(Then::Rollback),
        ..request.clone()
    };
    let (status, p) = admin(
        &server,
        "POST",
        "/admin/models/promo/promote",
        Some(ok(serde_json::to_value(&rb), "json")),
    )
    .await;
    assert_eq!(
        (status, p["decision"].clone()),
        (200, "rolled_back".into()),
        "{p}"
    );
    let (status, t) = admin(&server, "POST", "/admin/models/promo/rollback", None).await;
    assert_eq!(status, 200, "{t}");
    assert_eq!(t["stable"], canary.as_str());

    // Bad requests name the problem.
    let (status, e) = admin(
        &server,
        "POST",
        "/admin/models/promo/promote",
        Some(serde_json::json!({"experiment": tmp.path(), "percent": 10})),
    )
    .await;
    assert_eq!(status, 422, "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap_or_default()
            .contains("no experiment store"),
        "{e}"
    );
    let (status, e) = admin(
        &server,
        "POST",
        "/admin/models/promo/promote",
        Some(serde_json::json!({"experiment": b.join("exp"), "percent": 0})),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    let (status, e) = admin(
        &server,
        "POST",
        "/admin/models/promo/promote",
        Some(serde_json::json!({"experiment": b.join("exp"), "percent": 5, "metric": "x"})),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    assert!(server.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiments_without_a_servable_trial_are_refused_clearly() {
    let tmp = ok(tempfile::tempdir(), "tempdir");
    let start = |dir: &str| {
        let src = format!(
            "[http]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"\"\n[[deployment]]\nmodel = \"m\"\nexperiment = {dir:?}\n"
        );
        ok(ServeConfig::parse(&src, "serve.toml", tmp.path()), "config")
    };
    // No store.
    let e = ok(
        Server::start(&start("nothing"))
            .await
            .err()
            .ok_or("started"),
        "err",
    )
    .to_string();
    assert!(
        e.contains("no experiment store") && e.contains("nothing"),
        "{e}"
    );
    // No finished trial: a store the tuner created, no trial run.
    let empty = tmp.path().join("empty");
    let train = tmp.path().join("train.toml");
    ok(
        std::fs::write(
            &train,
            format!("job = \"t\"\n[data]\npath = {:?}\n", digits_data()),
        ),
        "train.toml",
    );
    let text = format!(
        "[experiment]\ndir = {:?}\nmetric = \"val_accuracy\"\nmode = \"max\"\n[trainable]\nkind = \"digits\"\nconfig = {:?}\n[space]\nlr = {{ type = \"choice\", values = [0.01] }}\n",
        empty.display().to_string(),
        train.display().to_string()
    );
    let config = ok(
        manta_ml::tune::TuneConfig::parse(&text, "t.toml", tmp.path()),
        "tune config",
    );
    let mut store = ok(manta_ml::tune::Store::create(&empty, &config), "store");
    let params = manta_ml::tune::Params::new();
    ok(store.insert_trial(0, &params), "trial");
    ok(store.commit(), "commit");
    let e = ok(
        Server::start(&start("empty")).await.err().ok_or("started"),
        "err",
    )
    .to_string();
    assert!(
        e.contains("no completed trial") && e.contains("0 pending"),
        "{e}"
    );
    // A completed trial without a checkpoint.
    let row = manta_ml::tune::store::TrialRow {
        id: 0,
        params,
        state: "completed".into(),
        attempts: 1,
        iteration: 2,
        last_metric: Some(0.9),
        best_metric: Some(0.9),
        best_iteration: Some(2),
        test_accuracy: None,
        error: None,
        node: None,
        node_losses: 0,
        pauses: 0,
    };
    ok(store.update_trial(&row, true), "update");
    ok(store.commit(), "commit");
    let e = ok(
        Server::start(&start("empty")).await.err().ok_or("started"),
        "err",
    )
    .to_string();
    assert!(e.contains("has no checkpoint"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_off_loopback_needs_a_token_and_checks_it() {
    let tmp = ok(tempfile::tempdir(), "tempdir");
    common::write_checkpoint(&tmp.path().join("v1"), 1);
    let deployment = "[[deployment]]\nmodel = \"auth\"\ncheckpoint = \"v1\"\n";
    let src = format!(
        "[http]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"0.0.0.0:0\"\n{deployment}"
    );
    let config = ok(ServeConfig::parse(&src, "serve.toml", tmp.path()), "config");
    let e = ok(Server::start(&config).await.err().ok_or("started"), "err").to_string();
    assert!(e.contains("token_file"), "{e}");
    ok(
        std::fs::write(tmp.path().join("token"), "0123456789abcdef-secret\n"),
        "token",
    );
    let src = format!(
        "[http]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\ntoken_file = \"token\"\n{deployment}"
    );
    let config = ok(ServeConfig::parse(&src, "serve.toml", tmp.path()), "config");
    let server = ok(Server::start(&config).await, "start");
    let url = admin_url(&server);
    let path = "/admin/models/auth/traffic";
    let call = |token: Option<&'static str>| {
        let url = url.clone();
        async move {
            ok(
                manta_serve::client::request(&url, "GET", path, None, token, common::WAIT).await,
                "request",
            )
        }
    };
    assert_eq!(call(None).await.0, 401);
    assert_eq!(call(Some("0123456789abcdef-wrong!")).await.0, 401);
    let (status, body) = call(Some("0123456789abcdef-secret")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"stable\":\"1\""), "{body}");
    assert!(server.shutdown().await);
}
