//! Shutdown order and every shutdown mode.

use std::time::Duration;

use manta_actors::{ActorSystem, ExitReason};
use manta_supervision::{
    ChildSpec, EventBus, Shutdown, Supervisor, SupervisorEvent, SupervisorSpec,
};

use crate::{probe, short, shorts, stuck_probe, until};

#[tokio::test]
async fn children_start_in_order_and_stop_in_reverse() {
    let spec = ["one", "two", "three", "four"]
        .iter()
        .fold(SupervisorSpec::new("sup"), |s, id| {
            s.child(ChildSpec::worker(*id, probe()))
        });
    let (sup, mut rx) = crate::start(spec).await;
    let up = until(&mut rx, |e| short(e) == "start four #0").await;
    assert_eq!(
        shorts(&up),
        [
            "start one #0",
            "start two #0",
            "start three #0",
            "start four #0"
        ]
    );
    let handles: Vec<_> = sup
        .which_children()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.handle.unwrap())
        .collect();
    assert_eq!(sup.shutdown().await, ExitReason::Shutdown(None));
    let down = until(&mut rx, |e| {
        matches!(e, SupervisorEvent::SupervisorStopped { .. })
    })
    .await;
    assert_eq!(
        shorts(&down),
        [
            "term four",
            "term three",
            "term two",
            "term one",
            "stopped sup"
        ]
    );
    for h in handles {
        assert_eq!(h.monitor().try_get(), Some(ExitReason::Shutdown(None)));
    }
}

#[tokio::test(start_paused = true)]
async fn a_child_that_ignores_the_graceful_stop_is_killed_after_its_timeout() {
    let spec = SupervisorSpec::new("sup")
        .child(
            ChildSpec::worker("polite", probe())
                .shutdown(Shutdown::Timeout(Duration::from_secs(2))),
        )
        .child(
            ChildSpec::worker("stubborn", stuck_probe())
                .shutdown(Shutdown::Timeout(Duration::from_secs(3))),
        );
    let (sup, mut rx) = crate::start(spec).await;
    until(&mut rx, |e| short(e) == "start stubborn #0").await;
    let t0 = tokio::time::Instant::now();
    sup.shutdown().await;
    let waited = t0.elapsed();
    let down = until(&mut rx, |e| {
        matches!(e, SupervisorEvent::SupervisorStopped { .. })
    })
    .await;
    assert_eq!(
        shorts(&down),
        ["term stubborn forced", "term polite", "stopped sup"]
    );
    match &down[0] {
        SupervisorEvent::ChildTerminated { reason, forced, .. } => {
            assert_eq!(*reason, ExitReason::Killed);
            assert!(forced);
        }
        other => panic!("{other:?}"),
    }
    match &down[1] {
        SupervisorEvent::ChildTerminated { reason, .. } => {
            assert_eq!(*reason, ExitReason::Shutdown(None))
        }
        other => panic!("{other:?}"),
    }
    // The stubborn child got exactly its timeout; the polite one none.
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
}

#[tokio::test]
async fn brutal_kill_does_not_wait_for_a_graceful_stop() {
    let spec = SupervisorSpec::new("sup")
        .child(ChildSpec::worker("stubborn", stuck_probe()).shutdown(Shutdown::BrutalKill));
    let (sup, mut rx) = crate::start(spec).await;
    until(&mut rx, |e| short(e) == "start stubborn #0").await;
    sup.shutdown().await;
    let down = until(&mut rx, |e| {
        matches!(e, SupervisorEvent::SupervisorStopped { .. })
    })
    .await;
    match &down[0] {
        SupervisorEvent::ChildTerminated {
            child,
            reason,
            forced,
            ..
        } => {
            assert_eq!(child, "stubborn");
            assert_eq!(*reason, ExitReason::Killed);
            assert!(!forced, "brutal_kill is not a timed-out graceful stop");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn infinity_waits_for_a_whole_subtree_in_order() {
    let inner = SupervisorSpec::new("inner")
        .child(ChildSpec::worker("i1", probe()))
        .child(ChildSpec::worker("i2", probe()));
    let spec = SupervisorSpec::new("outer")
        .child(ChildSpec::worker("first", probe()))
        .child(ChildSpec::supervisor(inner).shutdown(Shutdown::Infinity))
        .child(ChildSpec::worker("last", probe()));
    let (sup, mut rx) = crate::start(spec).await;
    let up = until(&mut rx, |e| short(e) == "start last #0").await;
    assert_eq!(
        shorts(&up),
        [
            "start first #0",
            "start i1 #0",
            "start i2 #0",
            "start inner #0",
            "start last #0"
        ]
    );
    sup.shutdown().await;
    let down = until(&mut rx, |e| short(e) == "stopped outer").await;
    assert_eq!(
        shorts(&down),
        [
            "term last",
            "term i2",
            "term i1",
            "stopped inner",
            "term inner",
            "term first",
            "stopped outer"
        ]
    );
}

#[tokio::test]
async fn a_child_that_fails_to_start_fails_the_supervisor_start() {
    use manta_actors::{Actor, ActorError, Context, factory};
    struct Broken;
    impl Actor for Broken {
        type Msg = crate::ProbeMsg;
        async fn started(&mut self, _: &mut Context<crate::ProbeMsg>) -> Result<(), ActorError> {
            Err("no database".into())
        }
        async fn handle(
            &mut self,
            _: crate::ProbeMsg,
            _: &mut Context<crate::ProbeMsg>,
        ) -> Result<(), ActorError> {
            Ok(())
        }
    }
    let bus = EventBus::new();
    let mut rx = bus.subscribe();
    let spec = SupervisorSpec::new("sup")
        .events(bus)
        .child(ChildSpec::worker("ok", probe()))
        .child(ChildSpec::worker("broken", factory("broken", || Broken)));
    let err = Supervisor::start(&ActorSystem::new(), spec)
        .await
        .unwrap_err();
    match &err {
        manta_supervision::SupervisorError::StartFailed {
            child,
            error: manta_actors::SpawnError::Startup(ExitReason::Failed(m)),
        } => assert!(child == "broken" && m.contains("no database"), "{err:?}"),
        other => panic!("unexpected {other:?}"),
    }
    let text = manta_actors::error_chain(&err);
    assert!(
        text.contains("child `broken` failed to start: actor failed to start")
            && text.contains("no database"),
        "{text}"
    );
    // What had started was stopped again.
    let evs = until(&mut rx, |e| short(e) == "term ok").await;
    assert_eq!(shorts(&evs), ["start ok #0", "startfail broken", "term ok"]);
}

/// A `simple_one_for_one` supervisor stops its children all at once (OTP:
/// in parallel, order undefined): four children that ignore the graceful
/// stop cost one shutdown timeout, not four.
#[tokio::test(start_paused = true)]
async fn dynamic_children_are_stopped_in_parallel() {
    let spec = SupervisorSpec::new("pool")
        .strategy(manta_supervision::Strategy::SimpleOneForOne)
        .child(
            ChildSpec::worker("conn", stuck_probe())
                .shutdown(Shutdown::Timeout(Duration::from_secs(2))),
        );
    let (sup, mut rx) = crate::start(spec).await;
    for _ in 0..4 {
        sup.start_dynamic().await.unwrap();
    }
    let t0 = tokio::time::Instant::now();
    sup.shutdown().await;
    let waited = t0.elapsed();
    let down = until(&mut rx, |e| {
        matches!(e, SupervisorEvent::SupervisorStopped { .. })
    })
    .await;
    let forced = shorts(&down)
        .iter()
        .filter(|s| s.starts_with("term conn-") && s.ends_with(" forced"))
        .count();
    assert_eq!(forced, 4, "{:?}", shorts(&down));
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "one timeout for all four: {waited:?}"
    );
}
