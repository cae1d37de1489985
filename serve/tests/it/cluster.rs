//! Replicas on another node: two in-process nodes of one cluster (real
//! sockets on 127.0.0.1), the front a client node, the host a member.

use std::sync::Arc;

use manta_actors::{ActorSystem, Placement};
use manta_cluster::{ClusterSecret, Node, NodeConfig};
use manta_ml::ModelSpec;
use manta_serve::{ClusterPlacement, Deployment, DeploymentOptions, RemoteReplicas, ServeError};

use crate::common::WAIT;

fn config(dir: &std::path::Path, name: &str, seeds: Vec<String>, client: bool) -> NodeConfig {
    let mut c = NodeConfig {
        name: name.to_owned(),
        key_file: Some(dir.join(format!("{name}.key"))),
        secret_file: Some(dir.join("secret")),
        seeds,
        client,
        ..NodeConfig::default()
    };
    c.failure_detection.gossip_interval = std::time::Duration::from_millis(100);
    c
}

/// A request lost with its replica's link (the stream to the replica's
/// node ended under it, the node itself alive) fails with `ReplicaLost`;
/// the router then sends that replica nothing until its fate is known
/// (the replica exits) or a hold passes: a request meanwhile waits in the
/// queue, and is served once the hold is over (the replica is alive).
/// Without this, a slot freed by such a failure took one more request to
/// a replica whose node was dying, beyond `max_ongoing_requests`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_link_lost_a_request_takes_none_until_its_fate_is_known() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    ClusterSecret::write_new(&dir.path().join("secret")).unwrap();
    let host_system = ActorSystem::new();
    manta_serve::register_kinds(host_system.kinds());
    let host = Node::start(config(dir.path(), "host", vec![], false), host_system)
        .await
        .unwrap();
    let seed = host.membership().gossip_addr().to_string();
    let front = Node::start(
        config(dir.path(), "front", vec![seed], true),
        ActorSystem::new(),
    )
    .await
    .unwrap();

    let spec = ModelSpec {
        inputs: 4,
        hidden: vec![8],
        classes: 3,
    };
    let params = spec.init(1);
    let factory = manta_serve::model::mlp_factory(spec.clone(), params.clone()).unwrap();
    let options = DeploymentOptions {
        replicas: 1,
        // A lone request waits this long for a batch: its answer comes
        // well after its stream has ended.
        max_batch_size: 8,
        batch_wait_timeout_ms: 300,
        max_ongoing_requests: 4,
        request_timeout_ms: 30_000,
        ..DeploymentOptions::default()
    };
    let remote = RemoteReplicas {
        placement: ClusterPlacement::new(&front, Placement::default()),
        cpus: 0.0,
        gpus: 0,
        role: None,
        spec,
        params: Arc::new(params),
    };
    let d = Deployment::start_on(front.system(), "m", "1", factory, options, remote)
        .await
        .unwrap_or_else(|e| panic!("deployment: {e}"));
    assert_eq!(d.replica_nodes().len(), 1, "one replica, on the host");
    let input = vec![0.5f32; 4];
    let out = d.infer(input.clone(), 1).await.unwrap();
    assert_eq!(out.len(), 3);

    // The host handles the next frame (the request) and ends the stream
    // it came on, as a connection closing under it would.
    host.remoting().end_inbound_streams(1);
    match d.infer(input.clone(), 1).await {
        Err(ServeError::ReplicaLost { message, .. }) => {
            assert!(message.contains("broke"), "lost with its stream: {message}")
        }
        other => panic!("expected ReplicaLost, got {other:?}"),
    }
    // Its node is alive: the replica stays listed.
    assert_eq!(d.replicas(), 1);

    // The next request waits in the queue (the replica has free slots,
    // but the router keeps away from it) ...
    let next = {
        let (d, input) = (d.clone(), input.clone());
        tokio::spawn(async move { d.infer(input, 1).await })
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    assert!(
        d.wait_until(deadline, |d| d.queued() == 1).await,
        "the request waits in the queue"
    );
    assert_eq!(d.in_flight(), vec![0], "nothing was sent to the replica");
    // ... and is served once the hold is over.
    let out = tokio::time::timeout(WAIT, next)
        .await
        .expect("served after the hold")
        .unwrap()
        .unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(d.stats().ok, 2);
    d.stop(WAIT).await;
}
