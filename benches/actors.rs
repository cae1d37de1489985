//! Local actor messaging: Manta handles against raw ractor, same run.
//!
//! - `tell/*`: 1,000 tells, then one ask/call to wait for all of them.
//! - `ask/*`: one request/reply round trip.
//!
//! `cargo bench --bench actors`

#![allow(clippy::expect_used)] // a bench that cannot set up has nothing to measure

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use manta::{Actor, ActorError, ActorSystem, Context, Message, ReplyTo};
use ractor::{ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};

const BATCH: u64 = 1_000;

#[derive(Debug, Serialize, Deserialize)]
enum Msg {
    Add(i64),
    Get(ReplyTo<i64>),
}

impl Message for Msg {
    const NAME: &'static str = "manta.bench.Msg";
    const DECODE: Option<manta_actors::wire::Decode<Self>> =
        Some(manta_actors::wire::decode::<Self>);
}

struct MantaCounter(i64);

impl Actor for MantaCounter {
    type Msg = Msg;
    async fn handle(&mut self, msg: Msg, _: &mut Context<Msg>) -> Result<(), ActorError> {
        match msg {
            Msg::Add(n) => self.0 += n,
            Msg::Get(r) => {
                r.send(self.0);
            }
        }
        Ok(())
    }
}

enum RawMsg {
    Add(i64),
    Get(RpcReplyPort<i64>),
}

struct RawCounter;

impl ractor::Actor for RawCounter {
    type Msg = RawMsg;
    type State = i64;
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<RawMsg>, _: ()) -> Result<i64, ActorProcessingErr> {
        Ok(0)
    }

    async fn handle(
        &self,
        _: ActorRef<RawMsg>,
        msg: RawMsg,
        state: &mut i64,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RawMsg::Add(n) => *state += n,
            RawMsg::Get(reply) => {
                let _ = reply.send(*state);
            }
        }
        Ok(())
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

const T: Duration = Duration::from_secs(10);

fn benches(c: &mut Criterion) {
    let rt = runtime();
    let system = ActorSystem::new();
    let manta = rt
        .block_on(system.spawn(MantaCounter(0)))
        .expect("spawn manta actor");
    let (raw, _join) = rt
        .block_on(ractor::Actor::spawn(None, RawCounter, ()))
        .expect("spawn ractor actor");

    let mut g = c.benchmark_group("tell");
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("ractor", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    for _ in 0..BATCH {
                        raw.cast(RawMsg::Add(1)).expect("cast");
                    }
                    ractor::call_t!(raw, RawMsg::Get, 10_000).expect("call");
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("manta", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    for _ in 0..BATCH {
                        manta.tell(Msg::Add(1)).expect("tell");
                    }
                    manta.ask(Msg::Get, T).await.expect("ask");
                }
                start.elapsed()
            })
        })
    });
    g.finish();

    let mut g = c.benchmark_group("ask");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ractor", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    ractor::call_t!(raw, RawMsg::Get, 10_000).expect("call");
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("manta", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    manta.ask(Msg::Get, T).await.expect("ask");
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group!(actors, benches);
criterion_main!(actors);
