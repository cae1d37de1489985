//! A remote ask between two nodes: node `a` serves a named counter, node `b`
//! finds it through the cluster (type-checked) and asks it, exactly as it
//! would ask a local actor. Both nodes run in this one process here (each
//! with its own actor system); across processes it is the same code.
//!
//! Run: `cargo run --example remote_ask`

use std::time::Duration;

use manta::builtin::{self, CounterMsg};
use manta_actors::ActorSystem;
use manta_cluster::{ClusterSecret, MemberState, Node, NodeConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("manta-remote-ask-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let secret = dir.join("cluster.secret");
    ClusterSecret::write_new(&secret)?;
    let config = |name: &str, seeds: Vec<String>| NodeConfig {
        name: name.to_owned(),
        key_file: Some(dir.join(format!("{name}.key"))),
        secret_file: Some(secret.clone()),
        seeds,
        ..NodeConfig::default()
    };

    // Node a: a counter registered as "ledger".
    let system_a = ActorSystem::with_kinds(builtin::kinds());
    let a = Node::start(config("a", vec![]), system_a.clone()).await?;
    system_a
        .spawn_named(
            "ledger",
            builtin::Counter::new(builtin::CounterArgs { start: 40 }),
        )
        .await?;
    println!("{}", a.ready_line());

    // Node b joins through a's gossip address.
    let b = Node::start(
        config("b", vec![a.membership().gossip_addr().to_string()]),
        ActorSystem::new(),
    )
    .await?;
    println!("{}", b.ready_line());

    // Wait until b has authenticated a and heard of "ledger".
    let mut view = b.membership().view();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !view
            .borrow_and_update()
            .iter()
            .any(|m| m.state == MemberState::Alive && m.actors.iter().any(|n| n == "ledger"))
        {
            if view.changed().await.is_err() {
                break;
            }
        }
    })
    .await?;

    let ledger = b.where_is::<CounterMsg>("ledger")?;
    println!("b found `ledger` on another node: {}", !ledger.is_local());
    let total = ledger
        .ask(|r| CounterMsg::AddAndGet(2, r), Duration::from_secs(2))
        .await?;
    println!("remote ask answered: {total}");
    assert_eq!(total, 42);

    b.leave().await;
    a.leave().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
