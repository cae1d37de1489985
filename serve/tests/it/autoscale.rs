//! Autoscaling: up under load, down after, from zero (a request waits in
//! the queue while a replica cold-starts), draining without dropping a
//! request, the delays on the paused clock, the replicas gauge.

use manta_actors::ActorSystem;
use manta_serve::{AutoscalingConfig, Deployment, DeploymentOptions};

use crate::common::{self, get, infer_body, post, until};

fn ok<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// The value of `manta_serve_replicas` for `model` version 1 in /metrics.
async fn replicas_gauge(addr: std::net::SocketAddr, model: &str) -> Option<f64> {
    let r = ok(
        common::client()
            .get(format!("http://{addr}/metrics"))
            .send()
            .await,
        "metrics",
    );
    let text = ok(r.text().await, "metrics body");
    text.lines()
        .filter(|l| l.starts_with("manta_serve_replicas{"))
        .filter(|l| l.contains(&format!("model=\"{model}\"")) && l.contains("version=\"1\""))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn gauge_reaches(addr: std::net::SocketAddr, model: &str, want: f64) {
    let r = tokio::time::timeout(common::WAIT, async {
        while replicas_gauge(addr, model).await != Some(want) {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "gauge of {model} never reached {want} (last {:?})",
        replicas_gauge(addr, model).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scales_from_zero_up_under_load_and_back_to_zero_without_dropping() {
    let (factory, gate, _batches) = common::gate(4, 0);
    let options = from_zero(3);
    let model = "autoscale-zero";
    let server = common::serve_one(model, factory, options).await;
    let addr = server.local_addr();
    let d = server.deployments()[0].clone();
    assert_eq!(d.replicas(), 0, "starts at zero");
    gauge_reaches(addr, model, 0.0).await;
    // Ready at zero: a request would start a replica.
    let (status, _, body) = get(&format!("http://{addr}/v2/models/{model}/ready")).await;
    assert_eq!(status, 200, "{body}");

    // From zero: the request waits while a replica cold-starts.
    let url = format!("http://{addr}/v2/models/{model}/infer");
    let first = tokio::spawn(post_owned(url.clone(), infer_body(1, 4, 1.0)));
    settled(&d, "a cold-started replica", |d| d.replicas() == 1).await;
    gauge_reaches(addr, model, 1.0).await;
    gate.open(1);
    let (status, _, body) = ok(first.await, "first request");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["outputs"][0]["data"][0], 4.0);
    settled(&d, "back to zero when idle", |d| d.replicas_running() == 0).await;
    gauge_reaches(addr, model, 0.0).await;
    assert_eq!(d.replica_starts(), 1, "one cold start");

    // Up under load: 6 requests sent at once, held at target 2 per
    // replica, want 3.
    let tasks: Vec<_> = (0..6)
        .map(|i| tokio::spawn(post_owned(url.clone(), infer_body(1, 4, i as f32))))
        .collect();
    let held = d
        .wait_until(tokio::time::Instant::now() + common::WAIT, |d| {
            d.replicas() == 3 && d.in_flight().iter().sum::<usize>() == 6
        })
        .await;
    assert!(
        held,
        "three replicas under load: replicas {} running {} in flight {:?} queued {} starts {}",
        d.replicas(),
        d.replicas_running(),
        d.in_flight(),
        d.queued(),
        d.replica_starts()
    );
    gauge_reaches(addr, model, 3.0).await;
    assert!(d.in_flight().iter().all(|&n| n <= 2), "{:?}", d.in_flight());
    // Down after: every request answered, none dropped by the drain.
    gate.open(6);
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, _, body) = ok(t.await, "request");
        assert_eq!(status, 200, "request {i}: {body}");
        assert_eq!(body["outputs"][0]["data"][0], 4.0 * i as f64);
    }
    settled(&d, "back to zero after the load", |d| {
        d.replicas_running() == 0
    })
    .await;
    assert_eq!(d.replica_starts(), 4, "1 + 3 cold starts");
    gauge_reaches(addr, model, 0.0).await;
    assert_eq!(d.stats().failed, 0);
    assert_eq!(d.stats().ok, 7);
    assert!(server.shutdown().await, "drained");
}

/// How long a burst may take in these tests, from the first request sent
/// to the last answer (far under [`common::WAIT`]: a stalled ramp shows).
const BURST_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Bursts at zero replicas, round after round: `n` requests sent at once
/// (target 2 per replica, room for 2 per replica) must all be taken by
/// replicas (the ramp reaching `n / 2`), then, the gate opened, answered,
/// all within [`BURST_WAIT`] of being sent; then back to zero. The burst
/// once stalled the ramp in some runs (two requests queued, no third
/// replica started): 20 rounds of 6 and of 20 make such a race show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_from_zero_are_all_answered_in_every_round() {
    let (factory, gate, mut batches) = common::gate(4, 0);
    let mut started = move || std::iter::from_fn(|| batches.try_recv().ok()).count();
    let options = from_zero(10);
    let model = "autoscale-burst";
    let server = common::serve_one(model, factory, options).await;
    let addr = server.local_addr();
    let d = server.deployments()[0].clone();
    let url = format!("http://{addr}/v2/models/{model}/infer");
    let mut answered = 0;
    for round in 0..20 {
        for n in [6, 20] {
            let deadline = tokio::time::Instant::now() + BURST_WAIT;
            let tasks: Vec<_> = (0..n)
                .map(|i| tokio::spawn(post_owned(url.clone(), infer_body(1, 4, i as f32))))
                .collect();
            let held = d
                .wait_until(deadline, |d| {
                    d.in_flight().iter().sum::<usize>() == n && d.replicas() == n / 2
                })
                .await;
            assert!(
                held,
                "round {round}, burst of {n}: not all held by {} replicas within {BURST_WAIT:?}: \
                 replicas {} running {} in flight {:?} queued {} starts {}",
                n / 2,
                d.replicas(),
                d.replicas_running(),
                d.in_flight(),
                d.queued(),
                d.replica_starts()
            );
            gate.open(n as u64);
            for (i, t) in tasks.into_iter().enumerate() {
                let r = tokio::time::timeout_at(deadline, t).await;
                let (status, _, body) = match r {
                    Ok(r) => ok(r, "request"),
                    Err(_) => panic!(
                        "round {round}, burst of {n}: request {i} unanswered within {BURST_WAIT:?}: \
                         replicas {} running {} in flight {:?} queued {} stats {:?}, \
                         {} batches started",
                        d.replicas(),
                        d.replicas_running(),
                        d.in_flight(),
                        d.queued(),
                        d.stats(),
                        started()
                    ),
                };
                assert_eq!(status, 200, "round {round}, request {i}: {body}");
                assert_eq!(body["outputs"][0]["data"][0], 4.0 * i as f64);
            }
            answered += n as u64;
            assert_eq!(started(), n, "round {round}: one batch per request");
            let zero = d
                .wait_until(tokio::time::Instant::now() + BURST_WAIT, |d| {
                    d.replicas_running() == 0
                })
                .await;
            assert!(zero, "round {round}: not back to zero: {:?}", d.in_flight());
        }
    }
    assert_eq!(d.stats().ok, answered);
    assert_eq!(d.stats().failed, 0);
    assert!(server.shutdown().await, "drained");
}

/// Two requests per replica, target 2, at most `max_replicas`, starting
/// at zero, no delays.
fn from_zero(max_replicas: usize) -> DeploymentOptions {
    DeploymentOptions {
        max_ongoing_requests: 2,
        max_queued_requests: 64,
        autoscaling: Some(AutoscalingConfig {
            target_ongoing_requests: 2.0,
            min_replicas: 0,
            max_replicas,
            initial_replicas: Some(0),
            upscale_delay_s: 0.0,
            downscale_delay_s: 0.0,
        }),
        ..DeploymentOptions::default()
    }
}

/// Waits (on the deployment's change events, bounded) until `cond`.
async fn settled(d: &Deployment, what: &str, cond: impl FnMut(&Deployment) -> bool) {
    let ok = d
        .wait_until(tokio::time::Instant::now() + common::WAIT, cond)
        .await;
    assert!(
        ok,
        "timed out waiting for {what}: replicas {} running {} in flight {:?} queued {}",
        d.replicas(),
        d.replicas_running(),
        d.in_flight(),
        d.queued()
    );
}

async fn post_owned(
    url: String,
    body: String,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    post(&url, body).await
}

/// Lets every ready task run (the clock is paused: time moves only by
/// `advance`).
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn upscale_and_downscale_wait_their_delays_on_the_paused_clock() {
    let (factory, gate, _batches) = common::gate(2, 0);
    let system = ActorSystem::new();
    let options = DeploymentOptions {
        max_ongoing_requests: 1,
        max_queued_requests: 16,
        request_timeout_ms: 3_600_000,
        autoscaling: Some(AutoscalingConfig {
            target_ongoing_requests: 1.0,
            min_replicas: 1,
            max_replicas: 3,
            initial_replicas: None,
            upscale_delay_s: 10.0,
            downscale_delay_s: 20.0,
        }),
        ..DeploymentOptions::default()
    };
    let d = ok(
        Deployment::start(&system, "autoscale-delays", "1", factory, options).await,
        "deployment",
    );
    assert_eq!(d.replicas(), 1);
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let d = d.clone();
            tokio::spawn(async move { d.infer(vec![1.0, 2.0], 1).await })
        })
        .collect();
    until("three requests held", || {
        d.queued() + d.in_flight().iter().sum::<usize>() == 3
    })
    .await;
    settle().await;
    tokio::time::advance(std::time::Duration::from_secs(9)).await;
    settle().await;
    assert_eq!(d.replicas(), 1, "upscale_delay_s not over yet");
    tokio::time::advance(std::time::Duration::from_secs(2)).await;
    until("three replicas after the upscale delay", || {
        d.replicas() == 3
    })
    .await;
    gate.open(3);
    for t in tasks {
        let r = ok(t.await, "request task");
        assert_eq!(r, Ok(vec![3.0, -3.0]));
    }
    settle().await;
    tokio::time::advance(std::time::Duration::from_secs(19)).await;
    settle().await;
    assert_eq!(d.replicas(), 3, "downscale_delay_s not over yet");
    tokio::time::advance(std::time::Duration::from_secs(2)).await;
    until("back to min_replicas", || d.replicas() == 1).await;
    assert_eq!(d.in_flight(), vec![0]);
    assert!(d.stop(std::time::Duration::from_secs(1)).await);
}

#[test]
fn autoscaling_config_errors_are_named() {
    let base = std::path::Path::new("/tmp");
    let parse = |extra: &str| {
        let src = format!("[[deployment]]\nmodel = \"m\"\ncheckpoint = \"c\"\n{extra}");
        manta_serve::ServeConfig::parse(&src, "serve.toml", base)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let e = parse("autoscaling = { min_replicas = 3, max_replicas = 2 }");
    assert!(
        e.contains("serve.toml") && e.contains("min_replicas (3)"),
        "{e}"
    );
    let e = parse("autoscaling = { target_ongoing_requests = 0 }");
    assert!(e.contains("target_ongoing_requests"), "{e}");
    let e = parse("autoscaling = { min_replicas = 0, max_replicas = 2 }\nmax_queued_requests = 0");
    assert!(e.contains("max_queued_requests"), "{e}");
    let e = parse("replicas = 2\nautoscaling = { max_replicas = 2 }");
    assert!(e.contains("initial_replicas"), "{e}");
    let e = parse("autoscaling = { max_replica = 2 }");
    assert!(e.contains("max_replica") && e.contains("line"), "{e}");
    let e = parse("experiment = \"x\"");
    assert!(e.contains("exclude each other"), "{e}");
    assert_eq!(
        parse("autoscaling = { min_replicas = 0, max_replicas = 4, upscale_delay_s = 0.5 }"),
        ""
    );
}
