//! Supervision: from a child's failure to its replacement running.
//!
//! Each iteration tells the running child to fail and stops the clock when
//! the supervisor reports the replacement started (the new actor has run
//! its `started` hook and takes messages).
//!
//! `cargo bench --bench supervision`

#![allow(clippy::expect_used)] // a bench that cannot set up has nothing to measure

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use manta::{
    Actor, ActorError, ActorHandle, ActorSystem, ChildSpec, Context, EventBus, Message, Supervisor,
    SupervisorEvent, SupervisorSpec, factory,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Fail;

impl Message for Fail {
    const NAME: &'static str = "manta.bench.Fail";
    const DECODE: Option<manta_actors::wire::Decode<Self>> =
        Some(manta_actors::wire::decode::<Self>);
}

struct Worker;

impl Actor for Worker {
    type Msg = Fail;
    async fn handle(&mut self, _: Fail, _: &mut Context<Fail>) -> Result<(), ActorError> {
        Err("told to fail".into())
    }
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let system = ActorSystem::new();
    let bus = EventBus::new();
    let mut rx = bus.subscribe();
    let spec = SupervisorSpec::new("bench")
        .intensity(u32::MAX, Duration::from_secs(1))
        .events(bus)
        .child(ChildSpec::worker("w", factory("worker", || Worker)));
    let sup = rt
        .block_on(Supervisor::start(&system, spec))
        .expect("start supervisor");
    // The first start's event is already queued: take it, or the first
    // measured failure would see it and the next round find the child it
    // just failed still listed (its exit not yet handled).
    rt.block_on(async {
        while !matches!(
            rx.recv().await.expect("event bus"),
            SupervisorEvent::ChildStarted { .. }
        ) {}
    });
    let current = |sup: &manta::SupervisorHandle| -> ActorHandle<Fail> {
        rt.block_on(sup.which_children()).expect("which_children")[0]
            .handle
            .as_ref()
            .and_then(|h| h.downcast::<Fail>())
            .expect("running worker")
    };
    c.bench_function("supervision/failure_to_replacement_running", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let child = current(&sup);
                total += rt.block_on(async {
                    let start = Instant::now();
                    child.tell(Fail).expect("tell");
                    loop {
                        match rx.recv().await.expect("event bus") {
                            SupervisorEvent::ChildStarted { .. } => break,
                            _ => continue,
                        }
                    }
                    start.elapsed()
                });
            }
            total
        })
    });
}

criterion_group!(supervision, benches);
criterion_main!(supervision);
