//! simple_one_for_one: children added and removed at run time; and
//! start/terminate/restart/delete on static supervisors.

use std::time::Duration;

use manta_actors::ActorSystem;
use manta_supervision::{
    ChildSpec, ChildState, Restart, Strategy, Supervisor, SupervisorError, SupervisorSpec,
};

use crate::{ExitKind, ProbeMsg, next, probe, short, until};

#[tokio::test]
async fn dynamic_children_start_restart_and_terminate() {
    let spec = SupervisorSpec::new("pool")
        .strategy(Strategy::SimpleOneForOne)
        .intensity(5, Duration::from_secs(5))
        .child(ChildSpec::worker("conn", probe()).restart(Restart::Transient));
    let (sup, mut rx) = crate::start(spec).await;
    assert_eq!(sup.count_children().await.unwrap().specs, 0);

    let mut handles = Vec::new();
    for n in 1..=3 {
        let (id, h) = sup.start_dynamic().await.unwrap();
        assert_eq!(id, format!("conn-{n}"));
        handles.push(h.downcast::<ProbeMsg>().unwrap());
    }
    let counts = sup.count_children().await.unwrap();
    assert_eq!((counts.specs, counts.active, counts.workers), (3, 3, 3));

    // terminate_child removes a dynamic child.
    sup.terminate_child("conn-2").await.unwrap();
    assert!(handles[1].monitor().try_get().is_some());
    let ids: Vec<String> = sup
        .which_children()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, ["conn-1", "conn-3"]);

    // A crash is restarted under the same id...
    until(&mut rx, |e| short(e) == "term conn-2").await;
    handles[0].tell(ProbeMsg::Exit(ExitKind::Panic)).unwrap();
    until(&mut rx, |e| short(e) == "start conn-1 #1").await;
    // ...a normal exit of a transient child removes it.
    handles[2].tell(ProbeMsg::Exit(ExitKind::Normal)).unwrap();
    assert_eq!(short(&next(&mut rx).await), "exit conn-3 remove");
    let kids = sup.which_children().await.unwrap();
    assert_eq!(kids.len(), 1);
    assert_eq!(
        (kids[0].id.as_str(), kids[0].restarts, kids[0].state),
        ("conn-1", 1, ChildState::Running)
    );

    // Ids keep counting up; static-only calls are refused.
    let (id, _) = sup.start_dynamic().await.unwrap();
    assert_eq!(id, "conn-4");
    let err = sup
        .start_child(ChildSpec::worker("x", probe()))
        .await
        .unwrap_err();
    assert!(matches!(err, SupervisorError::WrongKind(_)), "{err:?}");
    assert!(matches!(
        sup.terminate_child("nope").await,
        Err(SupervisorError::NotFound(_))
    ));
    sup.shutdown().await;
}

#[tokio::test]
async fn static_children_can_be_added_terminated_restarted_and_deleted() {
    let system = ActorSystem::new();
    let sup = Supervisor::start(&system, SupervisorSpec::new("sup"))
        .await
        .unwrap();
    let h = sup
        .start_child(ChildSpec::worker("w", probe()))
        .await
        .unwrap();
    assert!(matches!(
        sup.start_child(ChildSpec::worker("w", probe())).await,
        Err(SupervisorError::AlreadyPresent(id)) if id == "w"
    ));
    assert!(matches!(
        sup.delete_child("w").await,
        Err(SupervisorError::Running(_))
    ));
    sup.terminate_child("w").await.unwrap();
    assert!(h.monitor().try_get().is_some());
    let info = &sup.which_children().await.unwrap()[0];
    assert_eq!(info.state, ChildState::Terminated);
    let h2 = sup.restart_child("w").await.unwrap();
    assert_ne!(h.id(), h2.id());
    assert_eq!(sup.count_children().await.unwrap().active, 1);
    sup.terminate_child("w").await.unwrap();
    sup.delete_child("w").await.unwrap();
    assert_eq!(sup.count_children().await.unwrap().specs, 0);
    assert!(matches!(
        sup.start_dynamic().await,
        Err(SupervisorError::WrongKind(_))
    ));
    sup.shutdown().await;
}

#[tokio::test]
async fn invalid_specs_are_refused_before_starting() {
    let system = ActorSystem::new();
    let dup = SupervisorSpec::new("s")
        .child(ChildSpec::worker("a", probe()))
        .child(ChildSpec::worker("a", probe()));
    let err = Supervisor::start(&system, dup).await.unwrap_err();
    assert!(err.to_string().contains("duplicate child id `a`"), "{err}");
    // Typed, so a caller can match what was wrong (issue 15, API 7).
    match &err {
        manta_supervision::SupervisorError::InvalidSpec(
            manta_supervision::SpecError::DuplicateChild { supervisor, child },
        ) => assert_eq!((supervisor.as_str(), child.as_str()), ("s", "a")),
        other => panic!("unexpected {other:?}"),
    }
    let no_template = SupervisorSpec::new("s").strategy(Strategy::SimpleOneForOne);
    let err = Supervisor::start(&system, no_template).await.unwrap_err();
    assert!(
        err.to_string().contains("exactly one child template"),
        "{err}"
    );
    assert!(matches!(
        err,
        manta_supervision::SupervisorError::InvalidSpec(
            manta_supervision::SpecError::TemplateCount { found: 0, .. }
        )
    ));
}

/// A temporary child's spec goes with its process when it is terminated
/// (OTP: "the child specification is deleted as soon as the process
/// terminates"); restart_child and delete_child then find nothing.
#[tokio::test]
async fn terminating_a_temporary_child_deletes_its_spec() {
    let spec = SupervisorSpec::new("sup")
        .child(ChildSpec::worker("t", probe()).restart(Restart::Temporary))
        .child(ChildSpec::worker("p", probe()));
    let (sup, _rx) = crate::start(spec).await;
    sup.terminate_child("t").await.unwrap();
    let ids: Vec<String> = sup
        .which_children()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, ["p"]);
    assert_eq!(sup.count_children().await.unwrap().specs, 1);
    assert!(matches!(
        sup.restart_child("t").await,
        Err(SupervisorError::NotFound(id)) if id == "t"
    ));
    // A permanent one keeps its spec, stopped.
    sup.terminate_child("p").await.unwrap();
    let kids = sup.which_children().await.unwrap();
    assert_eq!(
        (kids[0].id.as_str(), kids[0].state),
        ("p", ChildState::Terminated)
    );
    sup.shutdown().await;
}

/// restart_child and delete_child on a child waiting out its backoff:
/// "waiting to restart" (OTP's `{error, restarting}`), not "running".
#[tokio::test(start_paused = true)]
async fn a_child_waiting_to_restart_is_neither_restarted_nor_deleted() {
    let spec = SupervisorSpec::new("sup")
        .intensity(5, Duration::from_secs(60))
        .backoff(manta_supervision::Backoff {
            min: Duration::from_secs(5),
            max: Duration::from_secs(5),
            random_factor: 0.0,
        })
        .child(ChildSpec::worker("w", probe()));
    let (sup, mut rx) = crate::start(spec).await;
    until(&mut rx, |e| short(e) == "start w #0").await;
    let w = sup.which_children().await.unwrap()[0]
        .handle
        .clone()
        .unwrap()
        .downcast::<ProbeMsg>()
        .unwrap();
    w.tell(ProbeMsg::Exit(ExitKind::Failure)).unwrap();
    until(&mut rx, |e| short(e) == "scheduled w").await;
    for r in [
        sup.restart_child("w").await.map(|_| ()),
        sup.delete_child("w").await,
    ] {
        match r {
            Err(e @ SupervisorError::Restarting(_)) => {
                assert_eq!(e.to_string(), "child `w` is waiting to restart")
            }
            other => panic!("expected Restarting, got {other:?}"),
        }
    }
    until(&mut rx, |e| short(e) == "start w #1").await;
    sup.shutdown().await;
}

/// A period of zero would keep at most one restart in the window, so the
/// intensity could never be exceeded; a shutdown timeout of zero is not
/// a timeout (OTP requires both above zero).
#[tokio::test]
async fn a_zero_period_or_shutdown_timeout_is_refused() {
    let system = ActorSystem::new();
    let zero = SupervisorSpec::new("s")
        .intensity(1, Duration::ZERO)
        .child(ChildSpec::worker("a", probe()));
    match Supervisor::start(&system, zero).await {
        Err(SupervisorError::InvalidSpec(manta_supervision::SpecError::ZeroPeriod {
            supervisor,
        })) => assert_eq!(supervisor, "s"),
        other => panic!("expected ZeroPeriod, got {other:?}"),
    }
    let zero = SupervisorSpec::new("s").child(
        ChildSpec::worker("a", probe())
            .shutdown(manta_supervision::Shutdown::Timeout(Duration::ZERO)),
    );
    let err = Supervisor::start(&system, zero).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("child `a` has a shutdown timeout of zero"),
        "{err}"
    );
}
