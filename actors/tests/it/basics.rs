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
    assert!(matches!(err.into_message(), Cmd::Add(7)));
}

#[tokio::test]
async fn failed_ask_gives_the_message_back() {
    let sys = ActorSystem::new();
    let h = sys.spawn(Counter::default()).await.unwrap();
    h.kill();
    h.monitor().wait().await;
    match h.ask(|r| Cmd::AddGet(3, r), T).await {
        Err(AskError::Send(e)) => assert!(matches!(e.message, Cmd::AddGet(3, _))),
        other => panic!("expected a send error, got {other:?}"),
    }
}

#[tokio::test]
async fn ask_to_an_actor_that_fails_while_handling_it_reports_no_reply() {
    let sys = ActorSystem::new();
    let h = sys.spawn(Counter::default()).await.unwrap();
    let err = h
        .ask(|r| Cmd::FailAsked("boom".into(), r), T)
        .await
        .unwrap_err();
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
    assert_eq!(good.ask(|r| Cmd::AddGet(1, r), T).await.unwrap(), 1);
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

/// A transport in one process: what manta-cluster does between two nodes,
/// minus the network. The asker side registers reply handles while
/// encoding; the actor side routes answers back to them.
mod loopback {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use manta_actors::WireError;
    use manta_actors::wire::{EncodeWire, PendingReply, ReplyRegistry, ReplyRoute};

    #[derive(Default)]
    pub(crate) struct Loop {
        pending: Mutex<HashMap<u64, Box<dyn PendingReply>>>,
        next: Mutex<u64>,
        /// Sizes of the encoded answers routed back.
        pub(crate) answers: Mutex<Vec<usize>>,
    }

    impl ReplyRegistry for Loop {
        fn register(&self, pending: Box<dyn PendingReply>) -> u64 {
            let mut n = self.next.lock().unwrap();
            *n += 1;
            self.pending.lock().unwrap().insert(*n, pending);
            *n
        }
    }

    impl ReplyRoute for Loop {
        fn reply(&self, id: u64, answer: Result<Box<dyn EncodeWire>, WireError>) {
            let Some(p) = self.pending.lock().unwrap().remove(&id) else {
                return;
            };
            let answer = answer.map(|v| {
                let mut out = Vec::new();
                v.encode_to(&mut |piece| {
                    out.extend_from_slice(piece);
                    Ok(())
                })
                .unwrap();
                self.answers.lock().unwrap().push(out.len());
                Box::new(out) as Box<dyn manta_actors::wire::WireBytes>
            });
            p.deliver(answer);
        }
    }

    impl Loop {
        pub(crate) fn waiting(&self) -> usize {
            self.pending.lock().unwrap().len()
        }
    }

    pub(crate) fn new() -> Arc<Loop> {
        Arc::new(Loop::default())
    }

    pub(crate) fn registry(l: &Arc<Loop>) -> Arc<dyn ReplyRegistry> {
        l.clone()
    }

    pub(crate) fn route(l: &Arc<Loop>) -> Arc<dyn ReplyRoute> {
        l.clone()
    }
}

/// The remote side of an `ActorHandle` over the loopback transport.
struct Wired {
    to: manta_actors::AnyHandle,
    lp: std::sync::Arc<loopback::Loop>,
}

impl manta_actors::RemoteActor<Cmd> for Wired {
    fn id(&self) -> manta_actors::ActorId {
        manta_actors::ActorId::Remote {
            node: "loop".into(),
            name: "c".into(),
        }
    }
    fn tell(&self, msg: Cmd) -> Result<(), manta_actors::SendError<Cmd>> {
        let (bytes, ids) = manta_actors::wire::encode_with(loopback::registry(&self.lp), || {
            postcard::to_allocvec(&msg)
        });
        let bytes = bytes.unwrap();
        if let Err(e) = self.to.tell_wire(&bytes, &loopback::route(&self.lp)) {
            // What the cluster does for a refused request: fail its replies.
            for id in ids {
                manta_actors::wire::ReplyRoute::reply(&*self.lp, id, Err(e.clone()));
            }
        }
        Ok(())
    }
    fn stop(&self, reason: ExitReason) {
        self.to.stop(reason)
    }
    fn kill(&self) {
        self.to.kill()
    }
    fn monitor(&self) -> manta_actors::Monitor {
        self.to.monitor()
    }
}

/// Issue 15, API 1: a request's reply handle crosses the wire as an id and
/// the answer comes back typed; a handler that fails drops it and the asker
/// hears why; bytes that are not the actor's message type are refused.
#[tokio::test]
async fn requests_and_their_typed_replies_cross_the_wire() {
    use manta_actors::WireError;
    let sys = ActorSystem::new();
    let h = sys.spawn_named("c", Counter::default()).await.unwrap();
    let lp = loopback::new();
    let remote = ActorHandle::remote(std::sync::Arc::new(Wired {
        to: sys.lookup_any("c").unwrap(),
        lp: lp.clone(),
    }));
    remote.tell(Cmd::Add(5)).unwrap();
    assert_eq!(remote.ask(|r| Cmd::AddGet(1, r), T).await.unwrap(), 6);
    assert_eq!(remote.ask(Cmd::Get, T).await.unwrap(), 6);
    assert_eq!(*lp.answers.lock().unwrap(), [1, 1], "an i64 6 is one byte");
    // Bytes that are not a Cmd are refused, not misdelivered.
    let any = sys.lookup_any("c").unwrap();
    assert!(matches!(
        any.tell_wire(&[0xff, 0xff, 0xff], &loopback::route(&lp)),
        Err(WireError::Decode(_))
    ));
    // The handler fails while holding the request's reply handle.
    match remote.ask(|r| Cmd::FailAsked("boom".into(), r), T).await {
        Err(AskError::NoReply(Some(ExitReason::Failed(m)))) => assert_eq!(m, "boom"),
        other => panic!("expected NoReply(Failed), got {other:?}"),
    }
    assert_eq!(h.monitor().wait().await, ExitReason::Failed("boom".into()));
    // A request to an actor that is gone: its reply handle is failed too.
    match remote.ask(Cmd::Get, T).await {
        Err(AskError::NoReply(Some(ExitReason::Failed(m)))) => assert_eq!(m, "boom"),
        other => panic!("expected NoReply(Failed), got {other:?}"),
    }
    assert_eq!(lp.waiting(), 0, "every request was answered");
    assert_eq!(sys.registered_types(), vec![]);
}

/// A reply handle serialises only inside the transport.
#[tokio::test]
async fn a_reply_handle_is_not_serialisable_outside_the_transport() {
    let (tx, rx) = std::sync::mpsc::channel();
    let probe = ActorHandle::remote(std::sync::Arc::new(Capture(Mutex::new(Some(tx)))));
    let ask = tokio::spawn(async move { probe.ask(Cmd::Get, T).await });
    let msg = tokio::task::spawn_blocking(move || rx.recv().unwrap())
        .await
        .unwrap();
    ask.abort();
    let err = postcard::to_allocvec(&msg).unwrap_err();
    assert!(matches!(err, postcard::Error::SerdeSerCustom), "{err:?}");
}

use std::sync::Mutex;

/// A "remote" actor that keeps the message it is told.
struct Capture(Mutex<Option<std::sync::mpsc::Sender<Cmd>>>);

impl manta_actors::RemoteActor<Cmd> for Capture {
    fn id(&self) -> manta_actors::ActorId {
        manta_actors::ActorId::Local(0)
    }
    fn tell(&self, msg: Cmd) -> Result<(), manta_actors::SendError<Cmd>> {
        if let Some(tx) = self.0.lock().unwrap().take() {
            let _ = tx.send(msg);
        }
        Ok(())
    }
    fn stop(&self, _: ExitReason) {}
    fn kill(&self) {}
    fn monitor(&self) -> manta_actors::Monitor {
        manta_actors::ExitSignal::new().monitor()
    }
}

/// A barrier: `Wait` is answered only once `Open` arrives (kept replies).
mod barrier {
    use std::time::Duration;

    use manta_actors::{Actor, ActorError, ActorSystem, AskError, Context, Message, ReplyTo};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize, Message)]
    enum Gate {
        Wait(ReplyTo<u32>),
        Waiting(ReplyTo<usize>),
        Open(u32, ReplyTo<usize>),
        DropAll,
    }

    #[derive(Default)]
    struct Barrier {
        waiting: Vec<ReplyTo<u32>>,
    }

    impl Actor for Barrier {
        type Msg = Gate;
        async fn handle(&mut self, msg: Gate, _: &mut Context<Gate>) -> Result<(), ActorError> {
            match msg {
                Gate::Wait(r) => self.waiting.push(r),
                Gate::Waiting(r) => {
                    r.send(self.waiting.len());
                }
                Gate::Open(v, r) => {
                    let n = self.waiting.len();
                    for w in self.waiting.drain(..) {
                        assert!(w.send(v));
                    }
                    r.send(n);
                }
                Gate::DropAll => self.waiting.clear(),
            }
            Ok(())
        }
    }

    async fn parked(b: &manta_actors::ActorHandle<Gate>, n: usize) {
        let t = Duration::from_secs(5);
        let deadline = tokio::time::Instant::now() + t;
        while b.ask(Gate::Waiting, t).await.unwrap() < n {
            assert!(tokio::time::Instant::now() < deadline, "asks never parked");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn kept_replies_arrive_later_and_the_actor_keeps_serving() {
        let t = Duration::from_secs(5);
        let b = ActorSystem::new().spawn(Barrier::default()).await.unwrap();
        let w1 = tokio::spawn({
            let b = b.clone();
            async move { b.ask(Gate::Wait, t).await.unwrap() }
        });
        let w2 = tokio::spawn({
            let b = b.clone();
            async move { b.ask(Gate::Wait, t).await.unwrap() }
        });
        parked(&b, 2).await;
        assert_eq!(b.ask(|r| Gate::Open(7, r), t).await.unwrap(), 2);
        assert_eq!((w1.await.unwrap(), w2.await.unwrap()), (7, 7));
    }

    /// Dropped outside a handler's failure, the asker gets `NoReply(None)`.
    #[tokio::test]
    async fn a_dropped_kept_reply_fails_the_ask_with_no_reply() {
        let t = Duration::from_secs(5);
        let b = ActorSystem::new().spawn(Barrier::default()).await.unwrap();
        let w = tokio::spawn({
            let b = b.clone();
            async move { b.ask(Gate::Wait, t).await }
        });
        parked(&b, 1).await;
        b.tell(Gate::DropAll).unwrap();
        match w.await.unwrap() {
            Err(AskError::NoReply(None)) => {}
            other => panic!("expected NoReply(None), got {other:?}"),
        }
    }
}

/// Issue 15, API 6: a handler that returns a normal or shutdown exit as its
/// error stops the actor with that reason (a normal exit, its `stopped`
/// hook runs), not with a failure.
#[tokio::test]
async fn a_handler_can_exit_normally_by_returning_the_reason() {
    use manta_actors::{Actor, ActorError, Context, Message};
    #[derive(Debug, serde::Serialize, serde::Deserialize, Message)]
    enum Quit {
        With(ExitReason),
    }
    struct Quitter(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Actor for Quitter {
        type Msg = Quit;
        async fn handle(&mut self, msg: Quit, _: &mut Context<Quit>) -> Result<(), ActorError> {
            let Quit::With(r) = msg;
            Err(r.into())
        }
        async fn stopped(&mut self, _: &ExitReason, _: &mut Context<Quit>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let sys = ActorSystem::new();
    for reason in [
        ExitReason::Normal,
        ExitReason::Shutdown(Some("done".into())),
        ExitReason::Failed("real failure".into()),
    ] {
        let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let h = sys.spawn(Quitter(stopped.clone())).await.unwrap();
        h.tell(Quit::With(reason.clone())).unwrap();
        assert_eq!(h.monitor().wait().await, reason);
        // Only a normal exit is a graceful stop that runs `stopped`.
        assert_eq!(
            stopped.load(std::sync::atomic::Ordering::SeqCst),
            reason.is_normal(),
            "{reason}"
        );
    }
}

#[test]
fn a_reply_writes_its_encoding_in_pieces_and_stops_at_the_first_refusal() {
    use manta_actors::WireError;
    use manta_actors::wire::EncodeWire;
    let v = (7u64, "x".to_string(), vec![1u32; 1000]);
    let mut got = Vec::new();
    v.encode_to(&mut |p| {
        got.extend_from_slice(p);
        Ok(())
    })
    .unwrap();
    assert_eq!(got, postcard::to_allocvec(&v).unwrap());
    assert_eq!(v.encoded_len().unwrap(), got.len());
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

/// Issue 15, API 1: a message type that never leaves its node needs no
/// serde: it may carry a channel and an `Arc`, and answer a reply type that
/// is not serde either. Other nodes cannot address its actors: bytes for it
/// are refused (`NotAddressable`), and `where_is`/`spawn_on`/remote handles
/// take only `RemoteMessage` types, so using it there does not compile.
#[tokio::test]
async fn a_local_only_message_needs_no_serde_and_is_not_addressable_from_the_wire() {
    use manta_actors::{Actor, ActorError, Context, Message, ReplyTo, WireError};
    use std::sync::Arc;

    struct NotSerde(Arc<std::sync::Mutex<Vec<u32>>>);

    #[derive(Debug, Message)]
    #[message(local)]
    enum Local {
        Push(u32, tokio::sync::mpsc::UnboundedSender<usize>),
        Shared(ReplyTo<NotSerde>),
    }

    impl std::fmt::Debug for NotSerde {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("NotSerde")
        }
    }

    #[derive(Default)]
    struct Keeper(Arc<std::sync::Mutex<Vec<u32>>>);

    impl Actor for Keeper {
        type Msg = Local;
        async fn handle(&mut self, msg: Local, _: &mut Context<Local>) -> Result<(), ActorError> {
            match msg {
                Local::Push(v, done) => {
                    let mut g = self.0.lock().unwrap();
                    g.push(v);
                    let _ = done.send(g.len());
                }
                Local::Shared(r) => {
                    r.send(NotSerde(Arc::clone(&self.0)));
                }
            }
            Ok(())
        }
    }

    assert!(Local::DECODE.is_none());
    let sys = ActorSystem::new();
    let h = sys.spawn_named("keeper", Keeper::default()).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    h.tell(Local::Push(7, tx)).unwrap();
    assert_eq!(rx.recv().await, Some(1));
    let shared = h.ask(Local::Shared, T).await.unwrap();
    assert_eq!(*shared.0.lock().unwrap(), [7]);
    // Bytes from another node for it are refused before any decoding.
    let lp = loopback::new();
    let any = sys.lookup_any("keeper").unwrap();
    assert!(matches!(
        any.tell_wire(&[0, 7], &loopback::route(&lp)),
        Err(WireError::NotAddressable)
    ));
}
