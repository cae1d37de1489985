//! Replicas, routing, batching, bounded queues and draining.

use std::time::{Duration, Instant};

use manta_actors::ActorSystem;
use manta_serve::{Deployment, DeploymentOptions, ServeError};

use crate::common::{self, WAIT, post, until};

async fn deployment(
    options: DeploymentOptions,
) -> (
    Deployment,
    common::GateControl,
    tokio::sync::mpsc::UnboundedReceiver<usize>,
    ActorSystem,
) {
    let (factory, gate, batches) = common::gate(2, 0);
    let system = ActorSystem::new();
    match Deployment::start(&system, "gated", "1", factory, options).await {
        Ok(d) => (d, gate, batches, system),
        Err(e) => panic!("{e}"),
    }
}

async fn next_batch(rx: &mut tokio::sync::mpsc::UnboundedReceiver<usize>) -> usize {
    match tokio::time::timeout(WAIT, rx.recv()).await {
        Ok(Some(n)) => n,
        other => panic!("no batch: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_fill_to_max_batch_size_under_concurrent_load() {
    let (d, gate, mut batches, _system) = deployment(DeploymentOptions {
        max_batch_size: 4,
        // Long: these batches must flush on size, not on time.
        batch_wait_timeout_ms: 60_000,
        max_ongoing_requests: 16,
        ..DeploymentOptions::default()
    })
    .await;
    // Four requests fill the first batch at once.
    let mut tasks = Vec::new();
    for i in 0..4 {
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            d.infer(vec![i as f32, 1.0], 1).await
        }));
    }
    assert_eq!(next_batch(&mut batches).await, 4);
    // While it computes, eight more queue at the replica: two full batches.
    for i in 4..12 {
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            d.infer(vec![i as f32, 1.0], 1).await
        }));
    }
    until("12 requests at the replica", || d.in_flight() == vec![12]).await;
    gate.open(3);
    assert_eq!(next_batch(&mut batches).await, 4);
    assert_eq!(next_batch(&mut batches).await, 4);
    for (i, t) in tasks.into_iter().enumerate() {
        let out = tokio::time::timeout(WAIT, t).await;
        match out {
            Ok(Ok(Ok(v))) => assert_eq!(v, vec![i as f32 + 1.0, -(i as f32 + 1.0)]),
            other => panic!("request {i}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_request_waits_for_the_batch_timeout_and_not_much_longer() {
    let (d, gate, mut batches, _system) = deployment(DeploymentOptions {
        max_batch_size: 32,
        batch_wait_timeout_ms: 150,
        ..DeploymentOptions::default()
    })
    .await;
    gate.open(1);
    let started = Instant::now();
    let out = tokio::time::timeout(WAIT, d.infer(vec![1.0, 2.0], 1)).await;
    let took = started.elapsed();
    assert!(
        matches!(out, Ok(Ok(ref v)) if v == &vec![3.0, -3.0]),
        "{out:?}"
    );
    assert_eq!(next_batch(&mut batches).await, 1);
    assert!(
        took >= Duration::from_millis(150),
        "answered after {took:?}"
    );
    assert!(
        took < Duration::from_millis(150 + 2_000),
        "answered after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_sends_to_the_less_loaded_replica() {
    let (d, gate, _batches, _system) = deployment(DeploymentOptions {
        replicas: 2,
        max_ongoing_requests: 8,
        ..DeploymentOptions::default()
    })
    .await;
    let mut tasks = Vec::new();
    for n in 1..=4usize {
        let d2 = d.clone();
        tasks.push(tokio::spawn(
            async move { d2.infer(vec![1.0, 1.0], 1).await },
        ));
        until("the request in flight", || {
            d.in_flight().iter().sum::<usize>() == n
        })
        .await;
        // With two replicas both choices are seen: never more than one apart.
        let load = d.in_flight();
        assert!(load[0].abs_diff(load[1]) <= 1, "after {n}: {load:?}");
    }
    assert_eq!(d.in_flight(), vec![2, 2]);
    gate.open(u64::MAX / 2);
    for t in tasks {
        assert!(matches!(tokio::time::timeout(WAIT, t).await, Ok(Ok(Ok(_)))));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_with_503_and_retry_after_and_queued_requests_complete() {
    let (factory, gate, mut batches) = common::gate(2, 0);
    let server = common::serve_one(
        "busy",
        factory,
        DeploymentOptions {
            replicas: 1,
            max_ongoing_requests: 2,
            max_queued_requests: 1,
            ..DeploymentOptions::default()
        },
    )
    .await;
    let d = server.deployments()[0].clone();
    let url = format!("http://{}/v2/models/busy/infer", server.local_addr());
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            post(&url, common::infer_body(1, 2, 1.0)).await
        }));
    }
    // Two at the replica (one computing, one waiting), one in the queue.
    until("replica full and one queued", || {
        d.in_flight() == vec![2] && d.queued() == 1
    })
    .await;
    assert_eq!(next_batch(&mut batches).await, 1);
    let (s, headers, v) = post(&url, common::infer_body(1, 2, 1.0)).await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(
        headers.get("retry-after").and_then(|h| h.to_str().ok()),
        Some("1")
    );
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("overloaded")),
        "{v}"
    );
    // The refused request did not stay queued.
    assert_eq!(d.queued(), 1);
    gate.open(3);
    for t in tasks {
        match tokio::time::timeout(WAIT, t).await {
            Ok(Ok((s, _, v))) => assert_eq!(s, 200, "{v}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((d.in_flight(), d.queued()), (vec![0], 0));
    assert!(server.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_requests_in_flight_then_refuses() {
    let (factory, gate, mut batches) = common::gate(2, 0);
    let server = common::serve_one("drained", factory, DeploymentOptions::default()).await;
    let d = server.deployments()[0].clone();
    let addr = server.local_addr();
    let url = format!("http://{addr}/v2/models/drained/infer");
    let task = tokio::spawn(async move { post(&url, common::infer_body(1, 2, 2.0)).await });
    assert_eq!(next_batch(&mut batches).await, 1);
    let stopping = tokio::spawn(server.shutdown());
    // The deployment stops taking new requests while the old one runs.
    until("deployment stopping", || !d.is_ready()).await;
    let refused = d.infer(vec![0.0, 0.0], 1).await;
    assert!(
        matches!(refused, Err(ServeError::Stopped(_))),
        "{refused:?}"
    );
    gate.open(1);
    match tokio::time::timeout(WAIT, task).await {
        Ok(Ok((s, _, v))) => {
            assert_eq!(s, 200, "{v}");
            assert_eq!(v["outputs"][0]["data"], serde_json::json!([4.0, -4.0]));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        tokio::time::timeout(WAIT, stopping).await,
        Ok(Ok(true))
    ));
    let after = reqwest::get(format!("http://{addr}/v2/health/live")).await;
    assert!(after.is_err(), "still listening: {after:?}");
}

/// Records the thread of every call; computes for `delay_us`; panics on
/// `panic`.
struct Probe {
    threads: std::sync::Arc<std::sync::Mutex<Vec<std::thread::ThreadId>>>,
    delay_us: std::sync::Arc<std::sync::atomic::AtomicU64>,
    panic: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl manta_serve::Model for Probe {
    fn features(&self) -> usize {
        2
    }
    fn outputs(&self) -> usize {
        1
    }
    fn infer(&mut self, input: &[f32], rows: usize) -> Result<Vec<f32>, String> {
        self.threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(std::thread::current().id());
        if self.panic.load(std::sync::atomic::Ordering::Acquire) {
            panic!("boom in the model");
        }
        // A model that computes for `delay_us` (busy, as a model does).
        let busy = Duration::from_micros(self.delay_us.load(std::sync::atomic::Ordering::Acquire));
        let t = Instant::now();
        while t.elapsed() < busy {
            std::hint::spin_loop();
        }
        Ok((0..rows).map(|r| input[r * 2] + input[r * 2 + 1]).collect())
    }
}

/// Short model calls move from tokio's blocking pool onto the replica's
/// own thread (8 in a row of at most 100 µs), a long one sends them back;
/// a panic in an inline call is caught and answered as an error.
/// (A current-thread runtime: inline calls run on the test's thread.)
#[tokio::test]
async fn short_model_calls_run_inline_and_a_long_one_goes_back_to_the_pool() {
    use std::sync::atomic::Ordering;
    let threads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let delay_us = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let panic = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (t, d, p) = (threads.clone(), delay_us.clone(), panic.clone());
    let factory: manta_serve::ModelFactory = std::sync::Arc::new(move || {
        Ok(Box::new(Probe {
            threads: t.clone(),
            delay_us: d.clone(),
            panic: p.clone(),
        }) as Box<dyn manta_serve::Model>)
    });
    let system = ActorSystem::new();
    let d = match Deployment::start(
        &system,
        "probe",
        "1",
        factory,
        DeploymentOptions {
            replicas: 1,
            ..DeploymentOptions::default()
        },
    )
    .await
    {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    };
    let me = std::thread::current().id();
    let call = |d: &Deployment| {
        let d = d.clone();
        async move { d.infer(vec![1.0, 2.0], 1).await }
    };
    let calls = |n: usize| threads.lock().unwrap_or_else(|p| p.into_inner())[n..].to_vec();
    let last_inline = || calls(0).last().is_some_and(|t| *t == me);
    // Short calls: the first 8 on the pool, then inline (a call the OS
    // happened to preempt past 100 µs would restart the count: bounded).
    let mut n = 0;
    while !last_inline() && n < 40 {
        assert_eq!(call(&d).await.ok(), Some(vec![3.0]));
        n += 1;
    }
    let seen = calls(0);
    let first_inline = seen.iter().position(|t| *t == me);
    assert!(
        first_inline.is_some_and(|i| i >= 8),
        "inline only after 8 short calls on the pool: first inline call {first_inline:?} of {}",
        seen.len()
    );
    // A long call (inline, since the last one was) sends the next one
    // back to the pool.
    let before = seen.len();
    delay_us.store(2_000, Ordering::Release);
    assert_eq!(call(&d).await.ok(), Some(vec![3.0]));
    delay_us.store(0, Ordering::Release);
    assert_eq!(call(&d).await.ok(), Some(vec![3.0]));
    let after = calls(before);
    assert_eq!(after[0], me, "the long call ran inline");
    assert_ne!(after[1], me, "the next one went back to the pool");
    // Short again: inline again; then a panic there is an error.
    let mut n = 0;
    while !last_inline() && n < 40 {
        assert_eq!(call(&d).await.ok(), Some(vec![3.0]));
        n += 1;
    }
    assert!(last_inline(), "inline again after short calls");
    panic.store(true, Ordering::Release);
    match call(&d).await {
        Err(ServeError::Replica { message, .. }) => {
            assert!(message.contains("boom in the model"), "{message}")
        }
        other => panic!("expected the panic as an error: {other:?}"),
    }
    assert_eq!(*calls(0).last().unwrap_or_else(|| panic!("no call")), me);
    // The replica stopped; the deployment replaces it and keeps serving.
    panic.store(false, Ordering::Release);
    let again = tokio::time::timeout(WAIT, call(&d)).await;
    assert!(
        matches!(&again, Ok(Ok(v)) if *v == vec![3.0]),
        "after the panic: {again:?}"
    );
}
