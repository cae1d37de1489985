//! Builds the tree of `examples/tree.toml` in code, runs it for a few
//! seconds while printing what the supervisors do, and uses the registered
//! `ledger` counter and the dynamic `sessions` supervisor.
//!
//! Run: `cargo run --example tree_in_code`

use std::time::Duration;

use manta::builtin::{self, CounterArgs, CounterMsg, FlakyArgs, FlakyMode, TickerArgs};
use manta::{
    Backoff, ChildSpec, EventBus, Restart, Shutdown, Strategy, Supervisor, SupervisorHandle,
    SupervisorSpec,
};
use manta_actors::{ActorSystem, factory};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let kinds = builtin::kinds();
    let system = ActorSystem::with_kinds(kinds.clone());
    let bus = EventBus::new();
    let mut events = bus.subscribe();

    let orders = SupervisorSpec::new("orders")
        .strategy(Strategy::RestForOne)
        .intensity(5, Duration::from_secs(10))
        .backoff(Backoff {
            min: Duration::from_millis(50),
            max: Duration::from_secs(2),
            random_factor: 0.2,
        })
        .child(
            ChildSpec::worker(
                "ledger",
                kinds.prepare("counter", serde_json::json!({ "start": 0 }))?,
            )
            .register("ledger"),
        )
        .child(
            ChildSpec::worker(
                "checkout",
                factory("flaky", || {
                    builtin::Flaky::new(FlakyArgs {
                        fail_after: Duration::from_secs(3),
                        mode: FlakyMode::Error,
                    })
                }),
            )
            .restart(Restart::Transient)
            .shutdown(Shutdown::Timeout(Duration::from_millis(500))),
        );

    let sessions = SupervisorSpec::new("sessions")
        .strategy(Strategy::SimpleOneForOne)
        .instances(2)
        .child(
            ChildSpec::worker("session", factory("counter", || counter(0)))
                .restart(Restart::Temporary)
                .shutdown(Shutdown::BrutalKill),
        );

    let spec = SupervisorSpec::new("shop")
        .intensity(3, Duration::from_secs(5))
        .events(bus)
        .child(ChildSpec::worker(
            "heartbeat",
            factory("ticker", || {
                builtin::Ticker::new(TickerArgs {
                    interval: Duration::from_secs(1),
                    message: "shop is alive".into(),
                })
            }),
        ))
        .child(ChildSpec::supervisor(orders))
        .child(ChildSpec::supervisor(sessions));

    let shop = Supervisor::start(&system, spec).await?;
    tokio::spawn(async move {
        while let Ok(ev) = events.recv().await {
            println!("{ev}");
        }
    });

    // The ledger is registered by name: look it up, type-checked.
    let ledger = system.lookup::<CounterMsg>("ledger")?;
    ledger.tell(CounterMsg::Add(40))?;
    let total = ledger
        .ask(|r| CounterMsg::AddAndGet(2, r), Duration::from_secs(1))
        .await?;
    println!("ledger total: {total}");

    // Grow the dynamic supervisor at run time.
    let sessions = shop
        .which_children()
        .await?
        .into_iter()
        .find(|c| c.id == "sessions")
        .and_then(|c| c.handle)
        .and_then(|h| h.downcast_ref::<SupervisorHandle>().cloned())
        .ok_or("sessions supervisor not running")?;
    let (id, _session) = sessions.start_dynamic().await?;
    println!(
        "started {id}; sessions now: {:?}",
        sessions.count_children().await?
    );

    // checkout fails after 3 s and orders restarts it (rest_for_one).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for child in shop.which_children().await? {
        println!(
            "{:<10} {:?} restarts={}",
            child.id, child.state, child.restarts
        );
    }
    shop.shutdown().await;
    Ok(())
}

fn counter(start: i64) -> builtin::Counter {
    builtin::Counter::new(CounterArgs { start })
}
