//! `manta serve --seeds`: a deployment's replicas on real `manta node`
//! processes, and a SIGKILL of one replica's node under continuous load.

use std::time::{Duration, Instant};

use crate::cluster::{secret, start_node, wait_alive, wait_status};
use crate::{DEADLINE, Running, Scratch, manta};

/// `max_ongoing_requests` of each replica.
const MAX_ONGOING: usize = 4;
/// Concurrent clients: more than one replica holds, fewer than two.
const CLIENTS: usize = 6;

struct Outcome {
    started: Instant,
    ended: Instant,
    status: u16,
    body: String,
}

/// One row of 64 features as a KServe v2 REST body.
fn body(i: usize) -> String {
    let data: Vec<String> = (0..64).map(|k| format!("{}", (i + k) % 17)).collect();
    format!(
        r#"{{"inputs":[{{"name":"input","shape":[1,64],"datatype":"FP32","data":[{}]}}]}}"#,
        data.join(",")
    )
}

/// The value after `prefix` on a line, up to the next space.
fn after(line: &str, prefix: &str) -> String {
    let at = line
        .find(prefix)
        .unwrap_or_else(|| panic!("no `{prefix}` in `{line}`"));
    line[at + prefix.len()..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

async fn stats(admin: &str) -> Option<serde_json::Value> {
    let (status, text) = manta_serve::client::request(
        admin,
        "GET",
        "/admin/models/digits/versions/1/stats",
        None,
        None,
        Duration::from_secs(5),
    )
    .await
    .ok()?;
    (status == 200).then(|| serde_json::from_str(&text).ok())?
}

/// The names of the alive nodes running a replica actor, per `manta
/// status` (one entry per replica).
fn replica_hosts(st: &serde_json::Value) -> Vec<String> {
    let mut hosts = Vec::new();
    for n in st["nodes"].as_array().into_iter().flatten() {
        if n["state"] != "alive" {
            continue;
        }
        let count = n["actors"].as_array().map_or(0, |a| {
            a.iter()
                .filter(|x| {
                    x.as_str()
                        .is_some_and(|x| x.starts_with(manta_serve::REPLICA_KIND))
                })
                .count()
        });
        for _ in 0..count {
            hosts.push(n["name"].as_str().unwrap_or_default().to_owned());
        }
    }
    hosts.sort();
    hosts
}

fn nodes_of(st: &serde_json::Value) -> Vec<String> {
    st["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn replicas_run_on_nodes_and_a_sigkilled_nodes_replica_is_replaced_under_load() {
    let tmp = Scratch::new("serve-cluster");
    let s = secret(&tmp, "c.secret");
    // One CPU each and one CPU per replica: the two replicas go to two
    // different nodes, and the replacement to the third.
    let one = ["--cpus", "1"];
    let n1 = start_node(&tmp, "n1", Some(&s), &[], &one);
    let n2 = start_node(&tmp, "n2", Some(&s), &[&n1.gossip], &one);
    let n3 = start_node(&tmp, "n3", Some(&s), &[&n1.gossip], &one);
    wait_alive(&n1.gossip, Some(&s), 3);
    let spec = manta_ml::ModelSpec {
        inputs: 64,
        hidden: vec![32],
        classes: 10,
    };
    let params = spec.init(7);
    manta_ml::ps::save_model(&tmp.0.join("ckpt"), &spec, &params, 1).unwrap();
    let config = tmp.file(
        "serve.toml",
        &format!(
            r#"[http]
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"

[[deployment]]
model = "digits"
checkpoint = "ckpt"
replicas = 2
max_batch_size = 4
batch_wait_timeout_ms = 1
max_ongoing_requests = {MAX_ONGOING}
max_queued_requests = 256
request_timeout_ms = 20000
cpus = 1.0

# Composition across nodes: a first stage here, in front of the replicas
# on the nodes.
[[deployment]]
model = "halved"
next = "digits"
preprocess = {{ scale = 0.5 }}
"#
        ),
    );
    let mut cmd = manta();
    cmd.args(["serve", "--seeds", &n1.gossip, "--secret-file"])
        .arg(&s)
        .arg("--config")
        .arg(&config);
    let mut serve = Running::start(cmd);
    let placed = serve.wait_for("deployment digits:1: 2 replicas on ");
    let admin = format!(
        "http://{}",
        after(&serve.wait_for("admin API on http://"), "http://")
    );
    let base = format!(
        "http://{}",
        after(&serve.wait_for("serving on http://"), "http://")
    );
    let on: Vec<String> = placed
        .split(" on ")
        .nth(1)
        .unwrap_or_default()
        .split(", ")
        .map(|x| x.trim().to_owned())
        .collect();
    assert_eq!(on.len(), 2, "{placed}");
    assert_ne!(on[0], on[1], "one replica per node (1 cpu each): {placed}");
    // The nodes themselves say they run them.
    let mut expected = on.clone();
    expected.sort();
    wait_status(
        &n1.gossip,
        Some(&s),
        "a replica actor on each of two nodes",
        |st| replica_hosts(st) == expected,
    );
    let victim_name = on[0].clone();
    let (mut victim, survivors) = match victim_name.as_str() {
        "n1" => (n1, [n2, n3]),
        "n2" => (n2, [n1, n3]),
        _ => (n3, [n1, n2]),
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The composed deployment answers through the replicas on the nodes
    // what they answer for its scaled input.
    rt.block_on(async {
        let ask = |path: &'static str, body: String| {
            let base = base.clone();
            async move {
                let (status, text) = manta_serve::client::request(
                    &base,
                    "POST",
                    path,
                    Some(&body),
                    None,
                    Duration::from_secs(25),
                )
                .await
                .unwrap();
                assert_eq!(status, 200, "{path}: {text}");
                serde_json::from_str::<serde_json::Value>(&text).unwrap()
            }
        };
        let raw: Vec<String> = (0..64).map(|k| format!("{}", (k * 3) % 17)).collect();
        let halved: Vec<String> = (0..64)
            .map(|k| format!("{}", ((k * 3) % 17) as f32 * 0.5))
            .collect();
        let tensor = |d: &[String]| {
            format!(
                r#"{{"inputs":[{{"name":"input","shape":[1,64],"datatype":"FP32","data":[{}]}}]}}"#,
                d.join(",")
            )
        };
        let composed = ask("/v2/models/halved/infer", tensor(&raw)).await;
        let direct = ask("/v2/models/digits/infer", tensor(&halved)).await;
        assert_eq!(composed["model_name"], "halved");
        assert_eq!(composed["outputs"], direct["outputs"]);
    });
    let (outcomes, replaced_at, final_stats) = rt.block_on(async {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
        let mut clients = Vec::new();
        for c in 0..CLIENTS {
            let (stop, tx, base) = (stop.clone(), tx.clone(), base.clone());
            clients.push(tokio::spawn(async move {
                let mut i = c;
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    let started = Instant::now();
                    let (status, body) = match manta_serve::client::request(
                        &base,
                        "POST",
                        "/v2/models/digits/infer",
                        Some(&body(i)),
                        None,
                        Duration::from_secs(25),
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(e) => (0, e.to_string()),
                    };
                    let _ = tx.send(Outcome {
                        started,
                        ended: Instant::now(),
                        status,
                        body,
                    });
                    i += CLIENTS;
                }
            }));
        }
        drop(tx);
        let mut outcomes = Vec::new();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        // Load reaches both replicas before the kill.
        while outcomes
            .iter()
            .filter(|o: &&Outcome| o.status == 200)
            .count()
            < 100
        {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(o)) => outcomes.push(o),
                _ => panic!("100 answers before the kill: not within {DEADLINE:?}"),
            }
        }
        assert!(
            outcomes.iter().all(|o| o.status == 200),
            "every request before the kill succeeds: {:?}",
            outcomes
                .iter()
                .find(|o| o.status != 200)
                .map(|o| (o.status, &o.body))
        );
        victim.p.child.kill().unwrap(); // SIGKILL
        victim.p.child.wait().unwrap();
        let killed = Instant::now();
        // The deployment has two replicas again, none on the dead node
        // (polled through the admin API, each poll an HTTP round trip).
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let restored = loop {
            while let Ok(o) = rx.try_recv() {
                outcomes.push(o);
            }
            if let Some(st) = stats(&admin).await {
                let nodes = nodes_of(&st);
                if st["replicas"] == 2 && nodes.len() == 2 && !nodes.contains(&victim_name) {
                    break st;
                }
            }
            // Looks again at the next answer (the load goes on on the
            // surviving replica).
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(o)) => outcomes.push(o),
                _ => panic!(
                    "the replica count did not come back within {DEADLINE:?}; last stats: {:?}",
                    stats(&admin).await
                ),
            }
        };
        let replaced_at = Instant::now();
        eprintln!(
            "replica count back after {:?}: {restored}",
            replaced_at - killed
        );
        // Load goes on: 100 more answers after the replacement.
        let after_count = |o: &[Outcome]| o.iter().filter(|x| x.started > replaced_at).count();
        while after_count(&outcomes) < 100 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(o)) => outcomes.push(o),
                _ => panic!("100 answers after the replacement: not within {DEADLINE:?}"),
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Release);
        for c in clients {
            c.await.unwrap();
        }
        while let Some(o) = rx.recv().await {
            outcomes.push(o);
        }
        let final_stats = stats(&admin).await.unwrap();
        (outcomes, replaced_at, final_stats)
    });

    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.status != 200).collect();
    let ok = outcomes.len() - failed.len();
    eprintln!(
        "{} requests, {} failed: {:?}",
        outcomes.len(),
        failed.len(),
        failed
            .iter()
            .map(|o| (o.status, o.body.as_str()))
            .collect::<Vec<_>>()
    );
    assert!(
        failed.len() <= MAX_ONGOING,
        "at most the requests in flight on the dead replica fail ({MAX_ONGOING}), {} did",
        failed.len()
    );
    for f in &failed {
        assert_eq!(
            f.status, 503,
            "a lost replica's request is a 503: {}",
            f.body
        );
        assert!(
            f.body
                .contains(&format!("the replica on node {victim_name} is gone")),
            "{}",
            f.body
        );
    }
    // Once the router has seen the replica gone (the first failure
    // answered), every request succeeds.
    if let Some(first) = failed.iter().map(|o| o.ended).min() {
        let later: Vec<&Outcome> = outcomes.iter().filter(|o| o.started > first).collect();
        assert!(
            later.iter().all(|o| o.status == 200),
            "a request sent after the first failure failed"
        );
    }
    assert!(
        outcomes
            .iter()
            .filter(|o| o.started > replaced_at)
            .all(|o| o.status == 200)
    );
    let nodes = nodes_of(&final_stats);
    assert_eq!(nodes.len(), 2, "{final_stats}");
    assert!(!nodes.contains(&victim_name), "{final_stats}");
    assert_eq!(final_stats["replica_starts"], 3, "{final_stats}");
    // Every answer counted, with the two of the composition check before
    // the load (one through `halved`, one direct).
    assert_eq!(
        final_stats["ok"].as_u64(),
        Some(ok as u64 + 2),
        "{final_stats}"
    );
    // SIGTERM: the server drains, stops its replicas on the nodes and
    // leaves.
    let pid = serve.child.id().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = serve.wait_exit();
    assert!(status.success(), "{}", serve.output());
    assert!(serve.output().contains("\nstopped"), "{}", serve.output());
    wait_status(
        &survivors[0].gossip,
        Some(&s),
        "no replica actor left",
        |st| replica_hosts(st).is_empty(),
    );
}

/// An autoscaled deployment at zero replicas on a cluster: the first
/// request cold-starts a replica on a node (the model travels in the
/// spawn), and the replica count follows.
#[test]
fn a_deployment_at_zero_cold_starts_its_replica_on_a_node() {
    let tmp = Scratch::new("serve-cluster-zero");
    let s = secret(&tmp, "c.secret");
    let n1 = start_node(&tmp, "n1", Some(&s), &[], &[]);
    let n2 = start_node(&tmp, "n2", Some(&s), &[&n1.gossip], &[]);
    wait_alive(&n1.gossip, Some(&s), 2);
    let spec = manta_ml::ModelSpec {
        inputs: 64,
        hidden: vec![32],
        classes: 10,
    };
    manta_ml::ps::save_model(&tmp.0.join("ckpt"), &spec, &spec.init(3), 1).unwrap();
    let config = tmp.file(
        "serve.toml",
        r#"[http]
address = "127.0.0.1:0"

[admin]
address = "127.0.0.1:0"

[[deployment]]
model = "digits"
checkpoint = "ckpt"
max_queued_requests = 8
autoscaling = { min_replicas = 0, max_replicas = 2, upscale_delay_s = 0, downscale_delay_s = 0 }
"#,
    );
    let mut cmd = manta();
    cmd.args(["serve", "--seeds", &n1.gossip, "--secret-file"])
        .arg(&s)
        .arg("--config")
        .arg(&config);
    let mut serve = Running::start(cmd);
    serve.wait_for("deployment digits:1: 0 replicas");
    let admin = format!(
        "http://{}",
        after(&serve.wait_for("admin API on http://"), "http://")
    );
    let base = format!(
        "http://{}",
        after(&serve.wait_for("serving on http://"), "http://")
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let infer = || async {
        let t = Instant::now();
        let (status, text) = manta_serve::client::request(
            &base,
            "POST",
            "/v2/models/digits/infer",
            Some(&body(0)),
            None,
            Duration::from_secs(25),
        )
        .await
        .unwrap();
        (status, text, t.elapsed())
    };
    // The first one may also wait for the server to hear of a node.
    let (status, text, first) = rt.block_on(infer());
    assert_eq!(status, 200, "{text}");
    eprintln!("first request (joining included): {first:?}");
    // Idle again (no downscale delay): the server retires the replica and
    // says so.
    serve.wait_for("replica drained and stopped");
    let idle = rt.block_on(stats(&admin)).unwrap();
    assert_eq!(idle["replicas"], 0, "back to zero: {idle}");
    let (status, text, cold, st) = rt.block_on(async {
        let (status, text, cold) = infer().await;
        (status, text, cold, stats(&admin).await.unwrap())
    });
    eprintln!("cold start on a node: {cold:?}; {st}");
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([1, 10]), "{v}");
    // Both starts went to a node (the server's log says where).
    let started = "replica started on another node";
    let mut starts: Vec<String> = serve
        .seen
        .iter()
        .filter(|l| l.contains(started))
        .cloned()
        .collect();
    while starts.len() < 2 {
        starts.push(serve.wait_for(started));
    }
    for line in &starts {
        assert!(
            line.contains("node=n1") || line.contains("node=n2"),
            "{line}"
        );
    }
    assert_eq!(st["replica_starts"], 2, "{st}");
    drop((n1, n2));
}
