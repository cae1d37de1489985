use manta_actors::{ActorSystem, KindError, KindRegistry, SpawnError};
use serde::Deserialize;

use crate::{Cmd, Counter, T};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CounterArgs {
    start: i64,
}

fn registry() -> KindRegistry {
    let k = KindRegistry::new();
    k.register("counter", |a: CounterArgs| Counter {
        value: a.start,
        ..Counter::default()
    });
    k
}

#[tokio::test]
async fn a_kind_spawns_from_its_args() {
    let kinds = registry();
    let sys = ActorSystem::with_kinds(kinds.clone());
    let args = serde_json::json!({ "start": 41 });
    let any = sys
        .kinds()
        .spawn(&sys, "counter", args, Some("c".into()))
        .await
        .unwrap();
    let h = any.downcast::<Cmd>().expect("a counter takes Cmd");
    assert_eq!(h.ask(|r| Cmd::AddGet(1, r), T).await.unwrap(), 42);
    assert_eq!(sys.lookup::<Cmd>("c").unwrap().id(), h.id());
    assert!(kinds.message_type("counter").unwrap().ends_with("Cmd"));
}

#[tokio::test]
async fn unknown_kinds_and_bad_args_are_errors() {
    let sys = ActorSystem::with_kinds(registry());
    let err = sys
        .kinds()
        .prepare("nope", serde_json::json!({}))
        .err()
        .unwrap();
    assert!(matches!(err, SpawnError::UnknownKind(ref k) if k == "nope"));
    let args = serde_json::json!({ "start": "ten" });
    match sys.kinds().prepare("counter", args) {
        Err(SpawnError::BadArgs { kind, message }) => {
            assert_eq!(kind, "counter");
            assert!(message.contains("invalid type"), "{message}");
        }
        Err(other) => panic!("unexpected {other:?}"),
        Ok(_) => panic!("bad args accepted"),
    }
}

#[test]
fn args_errors_name_the_path_of_the_bad_value() {
    let kinds = registry();
    match kinds.prepare_args("counter", serde_json::json!({ "start": "ten" })) {
        Err(KindError::Args(e)) => {
            assert_eq!(e.path, "start");
            assert!(e.message.contains("invalid type"), "{}", e.message);
            assert!(e.to_string().starts_with("at `start`: "), "{e}");
        }
        Err(other) => panic!("unexpected {other:?}"),
        Ok(_) => panic!("bad args accepted"),
    }
    match kinds.prepare_args("counter", serde_json::json!({ "start": 1, "stray": 2 })) {
        Err(KindError::Args(e)) => assert!(e.message.contains("stray"), "{}", e.message),
        Err(other) => panic!("unexpected {other:?}"),
        Ok(_) => panic!("an unknown field was accepted"),
    }
}
