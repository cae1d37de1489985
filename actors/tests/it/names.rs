use manta_actors::{ActorSystem, ExitReason, LookupError, SpawnError};

use crate::{Cmd, Counter, Other, T};

#[tokio::test]
async fn lookup_by_name_finds_the_actor() {
    let sys = ActorSystem::new();
    let h = sys
        .spawn_named("counter", Counter::default())
        .await
        .unwrap();
    let found = sys.lookup::<Cmd>("counter").unwrap();
    assert_eq!(found.id(), h.id());
    found.tell(Cmd::Add(5)).unwrap();
    assert_eq!(h.ask(Cmd::Get, T).await.unwrap(), 5);
    assert_eq!(sys.registered(), vec!["counter".to_owned()]);
}

#[tokio::test]
async fn lookup_with_the_wrong_message_type_is_refused() {
    let sys = ActorSystem::new();
    sys.spawn_named("counter", Counter::default())
        .await
        .unwrap();
    match sys.lookup::<Other>("counter") {
        Err(LookupError::WrongType {
            name,
            expected,
            actual,
        }) => {
            assert_eq!(name, "counter");
            assert!(expected.ends_with("Other"), "{expected}");
            assert!(actual.ends_with("Cmd"), "{actual}");
        }
        other => panic!("expected WrongType, got {other:?}"),
    }
    assert_eq!(
        sys.lookup::<Cmd>("nobody").unwrap_err(),
        LookupError::NotFound("nobody".into())
    );
}

#[tokio::test]
async fn names_are_unique_and_freed_on_exit() {
    let sys = ActorSystem::new();
    let first = sys.spawn_named("solo", Counter::default()).await.unwrap();
    let err = sys
        .spawn_named("solo", Counter::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, SpawnError::NameTaken(ref n) if n == "solo"),
        "{err:?}"
    );
    first.tell(Cmd::Fail("bye".into())).unwrap();
    first.monitor().wait().await;
    assert!(sys.lookup::<Cmd>("solo").is_err());
    // The name can be taken again, and the old actor's exit does not free it.
    let second = sys.spawn_named("solo", Counter::default()).await.unwrap();
    assert_eq!(sys.lookup::<Cmd>("solo").unwrap().id(), second.id());
    second.stop(ExitReason::Normal);
    second.monitor().wait().await;
    assert!(sys.registered().is_empty());
}

#[tokio::test]
async fn systems_do_not_share_names() {
    let a = ActorSystem::new();
    let b = ActorSystem::new();
    a.spawn_named("x", Counter::default()).await.unwrap();
    b.spawn_named("x", Counter::default()).await.unwrap();
    assert_ne!(
        a.lookup::<Cmd>("x").unwrap().id(),
        b.lookup::<Cmd>("x").unwrap().id()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_2_a_name_is_free_as_soon_as_its_actor_has_exited() {
    // Regression: a supervisor restarting a registered child right after its
    // exit found the name still taken (the exit is published a moment
    // before the name is dropped).
    let sys = ActorSystem::new();
    for _ in 0..2000 {
        let h = sys.spawn_named("ledger", Counter::default()).await.unwrap();
        h.stop(ExitReason::Shutdown(None));
        h.monitor().wait().await;
        let again = sys.spawn_named("ledger", Counter::default()).await.unwrap();
        again.kill();
        again.monitor().wait().await;
    }
}
