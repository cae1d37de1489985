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
    let args: toml::Value = toml::from_str("start = 41").unwrap();
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
        .prepare("nope", toml::Value::Table(Default::default()))
        .err()
        .unwrap();
    assert!(matches!(err, SpawnError::UnknownKind(ref k) if k == "nope"));
    let args: toml::Value = toml::from_str("start = \"ten\"").unwrap();
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
fn toml_args_errors_carry_the_span_of_the_bad_value() {
    let kinds = registry();
    let src = "args = { start = \"ten\" }";
    let table = toml::de::DeTable::parse(src).unwrap();
    let args = table
        .get_ref()
        .iter()
        .find(|(k, _)| k.get_ref() == "args")
        .unwrap()
        .1
        .clone();
    match kinds.prepare_toml("counter", args) {
        Err(KindError::Args(e)) => {
            let span = e.span().unwrap();
            assert_eq!(&src[span], "\"ten\"");
        }
        Err(other) => panic!("unexpected {other:?}"),
        Ok(_) => panic!("bad args accepted"),
    }
}
