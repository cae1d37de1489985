use std::time::Duration;

use manta_actors::{ActorHandle, ActorSystem, AskError, ExitReason, SendFailure};

use crate::{Cmd, Counter, T};

#[tokio::test]
async fn tell_then_ask_sees_messages_in_order() {
    let sys = ActorSystem::new();
    let h = sys.spawn(Counter::default()).await.unwrap();
    for i in 1..=100 {
        h.tell(Cmd::Add(i)).unwrap();
    }
    assert_eq!(h.ask(Cmd::Get, T).await.unwrap(), 5050);
}

#[tokio::test]
async fn ask_times_out_when_actor_is_busy() {
    let sys = ActorSystem::new();
    let h = sys.spawn(Counter::default()).await.unwrap();
    h.tell(Cmd::Hang).unwrap();
    let err = h
        .ask(Cmd::Get, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AskError::Timeout(d) if d == Duration::from_millis(50)),
        "{err:?}"
    );
    h.kill();
    assert_eq!(h.monitor().wait().await, ExitReason::Killed);
}

#[tokio::test]
async fn failed_tell_gives_the_message_back() {
    let sys = ActorSystem::new();
    let h = sys.spawn(Counter::default()).await.unwrap();
    h.stop(ExitReason::Normal);
    assert_eq!(h.monitor().wait().await, ExitReason::Normal);
    let err = h.tell(Cmd::Add(7)).unwrap_err();
    assert_eq!(
        err.failure,
        SendFailure::ActorGone(Some(ExitReason::Normal))
    );
    assert_eq!(err.into_message(), Cmd::Add(7));
}

#[tokio::test]
async fn failed_ask_gives_the_message_back() {
    let sys = ActorSystem::new();
    let h = sys.spawn(Counter::default()).await.unwrap();
    h.kill();
    h.monitor().wait().await;
    match h.ask(Cmd::Add(3), T).await {
        Err(AskError::Send(e)) => assert_eq!(e.message, Cmd::Add(3)),
        other => panic!("expected a send error, got {other:?}"),
    }
}

#[tokio::test]
async fn ask_to_an_actor_that_fails_while_handling_it_reports_no_reply() {
    let sys = ActorSystem::new();
    let h = sys.spawn(Counter::default()).await.unwrap();
    let err = h.ask(Cmd::Fail("boom".into()), T).await.unwrap_err();
    match err {
        AskError::NoReply(Some(ExitReason::Failed(m))) => assert_eq!(m, "boom"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_panic_in_a_handler_stops_only_that_actor() {
    let sys = ActorSystem::new();
    let bad = sys.spawn(Counter::default()).await.unwrap();
    let good = sys.spawn(Counter::default()).await.unwrap();
    bad.tell(Cmd::Panic("kaboom".into())).unwrap();
    assert_eq!(
        bad.monitor().wait().await,
        ExitReason::Panicked("kaboom".into())
    );
    assert_eq!(good.ask(Cmd::Add(1), T).await.unwrap(), 1);
}

#[tokio::test]
async fn handles_are_cheap_clones_of_the_same_actor() {
    let sys = ActorSystem::new();
    let h = sys.spawn(Counter::default()).await.unwrap();
    let h2 = h.clone();
    h2.tell(Cmd::Add(2)).unwrap();
    assert_eq!(h.ask(Cmd::Get, T).await.unwrap(), 2);
    assert_eq!(h.id(), h2.id());
    assert!(h.is_local());
}

#[test]
fn public_handles_are_send_and_sync() {
    fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<ActorHandle<Cmd>>();
    is_send_sync::<ActorSystem>();
    is_send_sync::<manta_actors::AnyHandle>();
    is_send_sync::<manta_actors::KindRegistry>();
}

#[tokio::test]
async fn serialised_messages_reach_an_erased_handle() {
    use manta_actors::WireError;
    let sys = ActorSystem::new();
    let h = sys.spawn_named("c", Counter::default()).await.unwrap();
    let any = sys.lookup_any("c").unwrap();
    any.tell_wire(&postcard::to_allocvec(&Cmd::Add(5)).unwrap())
        .unwrap();
    let reply = any
        .ask_wire(&postcard::to_allocvec(&Cmd::Add(1)).unwrap(), T)
        .await
        .unwrap();
    assert_eq!(postcard::from_bytes::<i64>(&reply).unwrap(), 6);
    // Bytes that are not a Cmd are refused, not misdelivered.
    assert!(matches!(
        any.tell_wire(&[0xff, 0xff, 0xff]),
        Err(WireError::Decode(_))
    ));
    h.stop(manta_actors::ExitReason::Normal);
    h.monitor().wait().await;
    assert!(matches!(
        any.tell_wire(&postcard::to_allocvec(&Cmd::Get).unwrap()),
        Err(WireError::ActorGone(Some(manta_actors::ExitReason::Normal)))
    ));
    assert_eq!(sys.registered_types(), vec![]);
}

/// Calls `ask_wire_with` and returns what its reply function got.
async fn ask_with(
    any: &manta_actors::AnyHandle,
    body: &[u8],
) -> Result<Vec<u8>, manta_actors::WireError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    any.ask_wire_with(
        body,
        T,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    tokio::time::timeout(T, rx)
        .await
        .expect("the reply function is called")
        .expect("called once")
        .and_then(manta_actors::WireBody::into_bytes)
}

/// Asks from another node hand the actor a reply function instead of a
/// channel: it gets the encoded reply, or the error, exactly once.
#[tokio::test]
async fn wire_asks_reach_the_reply_function_with_the_reply_or_the_error() {
    use manta_actors::WireError;
    let sys = ActorSystem::new();
    let h = sys.spawn_named("c", Counter::default()).await.unwrap();
    let any = sys.lookup_any("c").unwrap();
    let add = |n: i64| postcard::to_allocvec(&Cmd::Add(n)).unwrap();
    let reply = ask_with(&any, &add(4)).await.unwrap();
    assert_eq!(postcard::from_bytes::<i64>(&reply).unwrap(), 4);
    // Bytes that are not a Cmd: a decode error, and the actor is untouched.
    assert!(matches!(
        ask_with(&any, &[0xff, 0xff, 0xff]).await,
        Err(WireError::Decode(_))
    ));
    // The actor fails while handling it: no reply, with the reason.
    let fail = postcard::to_allocvec(&Cmd::Fail("boom".into())).unwrap();
    match ask_with(&any, &fail).await {
        Err(WireError::NoReply(Some(ExitReason::Failed(m)))) => assert_eq!(m, "boom"),
        other => panic!("expected NoReply(Failed), got {other:?}"),
    }
    h.monitor().wait().await;
    // Gone: the function is called with the send error, not left hanging.
    assert!(matches!(
        ask_with(&any, &add(1)).await,
        Err(WireError::ActorGone(Some(ExitReason::Failed(_))))
    ));
}

/// A barrier: `Wait` is answered only once `Open` arrives (deferred replies).
mod barrier {
    use std::time::Duration;

    use manta_actors::{Actor, ActorError, ActorSystem, AskError, Context, Message, ReplyTo};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    enum Gate {
        Wait,
        Open(u32),
        Waiting,
    }
    impl Message for Gate {
        type Reply = u32;
        const NAME: &'static str = "manta.test.Gate";
    }

    #[derive(Default)]
    struct Barrier {
        waiting: Vec<ReplyTo<u32>>,
    }

    impl Actor for Barrier {
        type Msg = Gate;
        async fn handle(&mut self, msg: Gate, ctx: &mut Context<Gate>) -> Result<u32, ActorError> {
            match msg {
                Gate::Wait => {
                    let r = ctx.defer_reply().expect("an ask has a reply to defer");
                    assert!(ctx.defer_reply().is_none(), "a reply is deferred once");
                    self.waiting.push(r);
                    Ok(0) // dropped: the reply was deferred
                }
                Gate::Open(v) => {
                    let n = self.waiting.len() as u32;
                    for r in self.waiting.drain(..) {
                        assert!(r.send(v));
                    }
                    Ok(n)
                }
                Gate::Waiting => Ok(self.waiting.len() as u32),
            }
        }
    }

    #[tokio::test]
    async fn deferred_replies_arrive_later_and_the_actor_keeps_serving() {
        let system = ActorSystem::new();
        let b = system.spawn(Barrier::default()).await.unwrap();
        let t = Duration::from_secs(5);
        let w1 = tokio::spawn({
            let b = b.clone();
            async move { b.ask(Gate::Wait, t).await.unwrap() }
        });
        let w2 = tokio::spawn({
            let b = b.clone();
            async move { b.ask(Gate::Wait, t).await.unwrap() }
        });
        // The actor answers other asks while two are parked.
        let deadline = tokio::time::Instant::now() + t;
        while b.ask(Gate::Waiting, t).await.unwrap() < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "waiters never parked"
            );
            tokio::task::yield_now().await;
        }
        assert!(!w1.is_finished() && !w2.is_finished());
        assert_eq!(b.ask(Gate::Open(7), t).await.unwrap(), 2);
        assert_eq!(w1.await.unwrap(), 7);
        assert_eq!(w2.await.unwrap(), 7);
        // A tell has no reply to defer.
        b.tell(Gate::Waiting).unwrap();
    }

    #[tokio::test]
    async fn a_dropped_deferred_reply_fails_the_ask_with_no_reply() {
        let system = ActorSystem::new();
        let b = system.spawn(Barrier::default()).await.unwrap();
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.ask(Gate::Wait, Duration::from_secs(5)).await }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while b.ask(Gate::Waiting, Duration::from_secs(5)).await.unwrap() < 1 {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        b.kill();
        match waiter.await.unwrap() {
            Err(AskError::NoReply(_)) => {}
            other => panic!("expected NoReply, got {other:?}"),
        }
    }

    /// A deferred reply to an ask from another node is sent through its
    /// reply function when the barrier opens, and one dropped unsent (the
    /// actor killed) still calls the function, with `NoReply`.
    #[tokio::test]
    async fn deferred_wire_replies_are_sent_later_or_fail_with_no_reply() {
        use manta_actors::WireError;
        let system = ActorSystem::new();
        let b = system
            .spawn_named("gate", Barrier::default())
            .await
            .unwrap();
        let any = system.lookup_any("gate").unwrap();
        let t = Duration::from_secs(5);
        let wait = postcard::to_allocvec(&Gate::Wait).unwrap();
        let parked = |n: u32| {
            let b = b.clone();
            async move {
                let deadline = tokio::time::Instant::now() + t;
                while b.ask(Gate::Waiting, t).await.unwrap() < n {
                    assert!(tokio::time::Instant::now() < deadline, "never parked");
                    tokio::task::yield_now().await;
                }
            }
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let send = |tx: tokio::sync::mpsc::UnboundedSender<_>| -> manta_actors::WireReply {
            Box::new(move |r| {
                let _ = tx.send(r);
            })
        };
        any.ask_wire_with(&wait, t, send(tx.clone()));
        parked(1).await;
        assert!(rx.try_recv().is_err(), "answered before the gate opened");
        assert_eq!(b.ask(Gate::Open(9), t).await.unwrap(), 1);
        let got = tokio::time::timeout(t, rx.recv()).await.unwrap().unwrap();
        assert_eq!(
            postcard::from_bytes::<u32>(&got.unwrap().into_bytes().unwrap()).unwrap(),
            9
        );
        any.ask_wire_with(&wait, t, send(tx));
        parked(1).await;
        b.kill();
        match tokio::time::timeout(t, rx.recv()).await.unwrap() {
            Some(Err(WireError::NoReply(_))) => {}
            other => panic!("expected NoReply, got {other:?}"),
        }
    }
}

#[test]
fn a_reply_writes_its_encoding_in_pieces_and_stops_at_the_first_refusal() {
    use manta_actors::{EncodeWire, WireBody, WireError};
    let v = (7u64, "x".to_string(), vec![1u32; 1000]);
    let mut got = Vec::new();
    v.encode_to(&mut |p| {
        got.extend_from_slice(p);
        Ok(())
    })
    .unwrap();
    assert_eq!(got, postcard::to_allocvec(&v).unwrap());
    assert_eq!(v.encoded_len().unwrap(), got.len());
    assert_eq!(
        WireBody::Value(Box::new(v.clone())).into_bytes().unwrap(),
        got
    );
    let mut calls = 0;
    let err = v
        .encode_to(&mut |_| {
            calls += 1;
            Err(WireError::Backpressure)
        })
        .unwrap_err();
    assert!(matches!(err, WireError::Backpressure), "{err:?}");
    assert_eq!(calls, 1, "no piece after the first refusal");
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Fill(usize);

impl manta_actors::Message for Fill {
    type Reply = Vec<u8>;
    const NAME: &'static str = "manta.test.Fill";
}

struct Filler;

impl manta_actors::Actor for Filler {
    type Msg = Fill;
    async fn handle(
        &mut self,
        msg: Fill,
        _: &mut manta_actors::Context<Fill>,
    ) -> Result<Vec<u8>, manta_actors::ActorError> {
        Ok((0..msg.0).map(|i| (i % 13) as u8).collect())
    }
}

#[tokio::test]
async fn large_replies_reach_the_transport_unencoded_and_small_ones_encoded() {
    use manta_actors::WireBody;
    let sys = ActorSystem::new();
    let _h = sys.spawn_named("filler", Filler).await.unwrap();
    let any = sys.lookup_any("filler").unwrap();
    for (n, value) in [(10usize, false), (200_000, true)] {
        let (tx, rx) = tokio::sync::oneshot::channel();
        any.ask_wire_with(
            &postcard::to_allocvec(&Fill(n)).unwrap(),
            T,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        let body = tokio::time::timeout(T, rx).await.unwrap().unwrap().unwrap();
        assert_eq!(matches!(body, WireBody::Value(_)), value, "{n}: {body:?}");
        let bytes = body.into_bytes().unwrap();
        let got: Vec<u8> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(got, (0..n).map(|i| (i % 13) as u8).collect::<Vec<u8>>());
    }
}
