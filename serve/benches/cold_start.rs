//! Cold start: one inference request to a deployment scaled to zero
//! replicas (the request waits in the queue while the autoscaler builds a
//! replica from the parameters kept in memory and spawns its actor), from
//! sending the request to the answer, over HTTP on 127.0.0.1. The anchor,
//! in the same run: the same request to a deployment with one warm
//! replica (same server, same client, same keep-alive connection pool,
//! bodies built before the clock).
//!
//! `cargo bench -p manta-serve --bench cold_start` (`COLD_START_N` sets
//! the number of samples, default 300).

#![allow(clippy::expect_used)] // a bench that cannot set up has nothing to measure

use std::time::{Duration, Instant};

use manta_actors::ActorSystem;
use manta_ml::ModelSpec;
use manta_serve::{AutoscalingConfig, Deployment, DeploymentOptions, HttpConfig, Server};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(name: &str, mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let p50 = percentile(&v, 0.5);
    let p99 = percentile(&v, 0.99);
    let mean = v.iter().sum::<Duration>() / v.len() as u32;
    println!(
        "{name:<28} n={:<5} p50 {:>9.3} ms  p99 {:>9.3} ms  mean {:>9.3} ms",
        v.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        mean.as_secs_f64() * 1e3
    );
    (p50, p99)
}

fn main() {
    let n: usize = std::env::var("COLD_START_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime (the bench cannot run without one)");
    rt.block_on(run(n));
}

async fn run(n: usize) {
    // A digits MLP (64 -> 128 -> 10), built in memory.
    let spec = ModelSpec {
        inputs: 64,
        hidden: vec![128],
        classes: 10,
    };
    let params = spec.init(0);
    let factory = manta_serve::model::mlp_factory(spec, params).expect("the MLP builds");
    let system = ActorSystem::new();
    let cold = Deployment::start(
        &system,
        "cold",
        "1",
        factory.clone(),
        DeploymentOptions {
            autoscaling: Some(AutoscalingConfig {
                target_ongoing_requests: 1.0,
                min_replicas: 0,
                max_replicas: 1,
                initial_replicas: Some(0),
                upscale_delay_s: 0.0,
                downscale_delay_s: 0.0,
            }),
            ..DeploymentOptions::default()
        },
    )
    .await
    .expect("cold deployment");
    let warm = Deployment::start(&system, "warm", "1", factory, DeploymentOptions::default())
        .await
        .expect("warm deployment");
    let http = HttpConfig {
        address: "127.0.0.1:0".into(),
        max_body_bytes: 1 << 20,
        drain_timeout_ms: 5_000,
    };
    let server = Server::serve(system, vec![cold.clone(), warm], &http)
        .await
        .expect("server");
    let addr = server.local_addr();
    let client = reqwest::Client::new();
    let body = serde_json::json!({
        "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": vec![0.5f32; 64]}],
        "outputs": [{"name": "label"}]
    })
    .to_string();
    let cold_url = format!("http://{addr}/v2/models/cold/infer");
    let warm_url = format!("http://{addr}/v2/models/warm/infer");
    let send = |url: &str| {
        let r = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send();
        async move {
            let r = r.await.expect("request");
            assert_eq!(r.status(), 200);
            r.bytes().await.expect("body");
        }
    };
    // Warm-up: connections and the first model builds.
    for _ in 0..20 {
        send(&warm_url).await;
    }
    let (mut cold_t, mut warm_t) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let starts = cold.replica_starts();
    for _ in 0..n {
        // At zero again (downscale_delay_s = 0: right after the answer).
        let deadline = Instant::now() + Duration::from_secs(10);
        while cold.replicas_running() != 0 {
            assert!(Instant::now() < deadline, "never scaled to zero");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let req = send(&cold_url);
        let t = Instant::now();
        req.await;
        cold_t.push(t.elapsed());
        let req = send(&warm_url);
        let t = Instant::now();
        req.await;
        warm_t.push(t.elapsed());
    }
    // Every cold request started a replica (none reused a draining one).
    assert_eq!(cold.replica_starts() - starts, n as u64);
    println!(
        "cold start from zero replicas, digits MLP 64-128-10, HTTP on 127.0.0.1, concurrency 1"
    );
    let (c50, c99) = summary("from zero replicas", cold_t);
    let (w50, w99) = summary("warm replica (anchor)", warm_t);
    println!(
        "cold/warm: p50 {:.2}x, p99 {:.2}x; added by the cold start: p50 {:.3} ms",
        c50.as_secs_f64() / w50.as_secs_f64(),
        c99.as_secs_f64() / w99.as_secs_f64(),
        (c50.as_secs_f64() - w50.as_secs_f64()) * 1e3
    );
    server.shutdown().await;
}
