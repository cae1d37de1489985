//! Location transparency: two nodes in one process (each with its own
//! actor system), real UDP gossip and a real libp2p mesh on 127.0.0.1.

use std::time::Duration;

use manta_actors::{
    Actor, ActorError, ActorSystem, AskError, Context, ExitReason, LookupError, Message,
    SendFailure,
};
use manta_cluster::{ClusterSecret, Node, NodeConfig};
use serde::{Deserialize, Serialize};

use crate::{DEADLINE, wait_view};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Cmd {
    Add(i64),
    Get,
    Fail,
}

impl Message for Cmd {
    type Reply = i64;
}

#[derive(Debug, Serialize, Deserialize)]
struct Other(String);

impl Message for Other {
    type Reply = ();
}

struct Counter(i64);

impl Actor for Counter {
    type Msg = Cmd;
    async fn handle(&mut self, msg: Cmd, _: &mut Context<Cmd>) -> Result<i64, ActorError> {
        match msg {
            Cmd::Add(n) => self.0 += n,
            Cmd::Get => {}
            Cmd::Fail => return Err("told to fail".into()),
        }
        Ok(self.0)
    }
}

struct Pair {
    a: Node,
    b: Node,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn node_config(
    dir: &std::path::Path,
    name: &str,
    secret: &std::path::Path,
    seeds: Vec<String>,
) -> NodeConfig {
    let mut c = NodeConfig {
        name: name.to_owned(),
        key_file: Some(dir.join(format!("{name}.key"))),
        secret_file: Some(secret.to_owned()),
        seeds,
        ..NodeConfig::default()
    };
    c.failure_detection.gossip_interval = Duration::from_millis(100);
    c
}

async fn pair(tag: &str) -> (Pair, ActorSystem) {
    let dir = std::env::temp_dir().join(format!("manta-remote-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    ClusterSecret::write_new(&secret).unwrap();
    let sys_a = ActorSystem::new();
    let a = Node::start(node_config(&dir, "a", &secret, vec![]), sys_a.clone())
        .await
        .unwrap();
    let seed = a.membership().gossip_addr().to_string();
    let b = Node::start(
        node_config(&dir, "b", &secret, vec![seed]),
        ActorSystem::new(),
    )
    .await
    .unwrap();
    (
        Pair {
            a,
            b,
            _dir: TempDir(dir),
        },
        sys_a,
    )
}

async fn published(node: &Node, name: &str) {
    wait_view(node.membership(), "name published by a live member", |v| {
        v.iter().any(|m| {
            m.state == manta_cluster::MemberState::Alive && m.actors.iter().any(|a| a == name)
        })
    })
    .await;
}

#[tokio::test]
async fn named_lookup_tell_and_ask_across_nodes() {
    let (p, sys_a) = pair("ask").await;
    let local = sys_a.spawn_named("ledger", Counter(0)).await.unwrap();
    published(&p.b, "ledger").await;
    let remote = p.b.where_is::<Cmd>("ledger").unwrap();
    assert!(!remote.is_local());
    for _ in 0..100 {
        remote.tell(Cmd::Add(2)).unwrap();
    }
    // One stream per peer: the ask comes after every tell.
    assert_eq!(remote.ask(Cmd::Get, DEADLINE).await.unwrap(), 200);
    assert_eq!(local.ask(Cmd::Get, DEADLINE).await.unwrap(), 200);
    // The owning node finds its own actor locally.
    assert!(p.a.where_is::<Cmd>("ledger").unwrap().is_local());
    // An actor failing while handling a remote ask: the asker hears of it.
    match remote.ask(Cmd::Fail, DEADLINE).await {
        Err(AskError::NoReply(Some(ExitReason::Failed(m)))) => assert_eq!(m, "told to fail"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn asking_for_the_wrong_message_type_is_an_error_not_a_misdelivery() {
    let (p, sys_a) = pair("type").await;
    let local = sys_a.spawn_named("ledger", Counter(7)).await.unwrap();
    published(&p.b, "ledger").await;
    match p.b.where_is::<Other>("ledger") {
        Err(LookupError::WrongType {
            expected, actual, ..
        }) => {
            assert!(
                expected.ends_with("Other") && actual.ends_with("Cmd"),
                "{expected} / {actual}"
            );
        }
        other => panic!("expected WrongType, got {other:?}"),
    }
    assert!(matches!(
        p.b.where_is::<Cmd>("nobody"),
        Err(LookupError::NotFound(_))
    ));
    // Bypassing the lookup, the receiving node still checks the type.
    let peer = p.a.identity().peer_id();
    let forged = p.b.remoting().handle::<Other>(peer, "ledger");
    match forged.ask(Other("hi".into()), DEADLINE).await {
        Err(AskError::Send(e)) => {
            assert!(
                matches!(e.failure, SendFailure::Rejected(ref r) if r.contains("Cmd")),
                "{:?}",
                e.failure
            );
            assert_eq!(e.message.0, "hi");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(local.ask(Cmd::Get, DEADLINE).await.unwrap(), 7);
}

#[tokio::test]
async fn a_dead_node_reaches_remote_monitors_as_node_down() {
    let (p, sys_a) = pair("down").await;
    sys_a.spawn_named("ledger", Counter(0)).await.unwrap();
    published(&p.b, "ledger").await;
    let remote = p.b.where_is::<Cmd>("ledger").unwrap();
    assert_eq!(remote.ask(Cmd::Add(1), DEADLINE).await.unwrap(), 1);
    let monitor = remote.monitor();
    p.a.kill_for_test().await;
    let reason = tokio::time::timeout(DEADLINE, monitor.wait())
        .await
        .expect("node down within the deadline");
    assert!(
        matches!(reason, ExitReason::NodeDown(ref n) if *n == p.a.identity().peer_id().to_string()),
        "{reason:?}"
    );
    let err = remote.tell(Cmd::Add(5)).unwrap_err();
    assert!(
        matches!(err.failure, SendFailure::NodeDown(_)),
        "{:?}",
        err.failure
    );
    assert_eq!(err.message, Cmd::Add(5));
}

#[tokio::test]
async fn a_remote_handle_can_stop_the_actor() {
    let (p, sys_a) = pair("stop").await;
    let local = sys_a.spawn_named("ledger", Counter(0)).await.unwrap();
    published(&p.b, "ledger").await;
    let remote = p.b.where_is::<Cmd>("ledger").unwrap();
    remote.stop(ExitReason::Shutdown(Some("from b".into())));
    let r = tokio::time::timeout(DEADLINE, local.monitor().wait())
        .await
        .unwrap();
    assert_eq!(r, ExitReason::Shutdown(Some("from b".into())));
}
