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
