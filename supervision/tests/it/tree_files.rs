//! Valid tree files load into the specs they describe and run.

use std::time::Duration;

use manta_actors::{ActorSystem, KindRegistry};
use manta_supervision::tree::load_str;
use manta_supervision::{
    Backoff, ChildStart, ChildType, EventBus, Restart, Shutdown, Strategy, Supervisor,
};

use crate::{Probe, until};

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SizedArgs {
    #[allow(dead_code)]
    size: u32,
    #[allow(dead_code)]
    label: String,
}

pub(crate) fn kinds() -> KindRegistry {
    let k = KindRegistry::new();
    k.register("probe", |p: Probe| p);
    k.register("sized", |_a: SizedArgs| Probe::default());
    k
}

const TREE: &str = r#"
name = "app"
strategy = "rest_for_one"
intensity = 4
period = "10s"
backoff = { min = "10ms", max = "2s", random_factor = 0.5 }

[[children]]
id = "db"
kind = "sized"
restart = "permanent"
shutdown = "brutal_kill"
register = "db"
args = { size = 3, label = "main" }

[[children]]
id = "workers"
strategy = "simple_one_for_one"
instances = 2
shutdown = "infinity"

  [[children.children]]
  id = "worker"
  kind = "probe"
  restart = "transient"
  shutdown = "250ms"

[[children]]
id = "cache"
kind = "probe"
restart = "temporary"
"#;

#[test]
fn a_tree_file_becomes_the_spec_it_describes() {
    let spec = load_str(TREE, "app.toml", &kinds()).unwrap();
    assert_eq!(spec.name, "app");
    assert_eq!(spec.strategy, Strategy::RestForOne);
    assert_eq!((spec.intensity, spec.period), (4, Duration::from_secs(10)));
    assert_eq!(
        spec.backoff,
        Some(Backoff {
            min: Duration::from_millis(10),
            max: Duration::from_secs(2),
            random_factor: 0.5
        })
    );
    let ids: Vec<&str> = spec.children.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["db", "workers", "cache"]);
    let db = &spec.children[0];
    assert_eq!(
        (db.restart, db.shutdown, db.register.as_deref()),
        (Restart::Permanent, Shutdown::BrutalKill, Some("db"))
    );
    let workers = &spec.children[1];
    assert_eq!(workers.child_type(), ChildType::Supervisor);
    assert_eq!(workers.shutdown, Shutdown::Infinity);
    let ChildStart::Supervisor(w) = &workers.start else {
        panic!("workers is a supervisor")
    };
    assert_eq!(
        (w.strategy, w.instances, w.intensity),
        (Strategy::SimpleOneForOne, 2, 1)
    );
    assert_eq!(w.children[0].restart, Restart::Transient);
    assert_eq!(
        w.children[0].shutdown,
        Shutdown::Timeout(Duration::from_millis(250))
    );
    let cache = &spec.children[2];
    assert_eq!(
        (cache.restart, cache.shutdown),
        (
            Restart::Temporary,
            Shutdown::Timeout(Duration::from_secs(5))
        )
    );
}

#[tokio::test]
async fn a_loaded_tree_runs() {
    let kinds = kinds();
    let system = ActorSystem::with_kinds(kinds.clone());
    let bus = EventBus::new();
    let mut rx = bus.subscribe();
    let spec = load_str(TREE, "app.toml", &kinds).unwrap().events(bus);
    let sup = Supervisor::start(&system, spec).await.unwrap();
    until(&mut rx, |e| crate::short(e) == "start cache #0").await;
    let counts = sup.count_children().await.unwrap();
    assert_eq!(
        (counts.active, counts.supervisors, counts.workers),
        (3, 1, 2)
    );
    // `register = "db"` made the worker findable by name.
    assert!(system.lookup::<crate::ProbeMsg>("db").is_ok());
    let workers = sup.which_children().await.unwrap()[1]
        .handle
        .clone()
        .unwrap();
    let workers = workers
        .downcast_ref::<manta_supervision::SupervisorHandle>()
        .unwrap();
    assert_eq!(workers.count_children().await.unwrap().active, 2);
    sup.shutdown().await;
    assert!(system.lookup::<crate::ProbeMsg>("db").is_err());
}

#[test]
fn the_root_name_defaults_to_the_file_stem() {
    let dir = std::env::temp_dir().join(format!("manta-tree-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("payments.toml");
    std::fs::write(&path, "[[children]]\nid = \"p\"\nkind = \"probe\"\n").unwrap();
    let spec = manta_supervision::tree::load_file(&path, &kinds()).unwrap();
    assert_eq!(spec.name, "payments");
    let missing = manta_supervision::tree::load_file(&dir.join("nope.toml"), &kinds()).unwrap_err();
    assert!(
        missing.to_string().contains("cannot read file"),
        "{missing}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_placed_worker_without_a_cluster_fails_to_start_with_a_clear_error() {
    let src = "[[children]]\nid = \"w\"\nkind = \"probe\"\nplacement = { role = \"gpu\" }\n";
    let spec = load_str(src, "placed.toml", &kinds()).unwrap();
    let err = Supervisor::start(&ActorSystem::new(), spec)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            manta_supervision::SupervisorError::StartFailed {
                error: manta_actors::SpawnError::NeedsCluster { .. },
                ..
            }
        ),
        "{err:?}"
    );
    let err = manta_actors::error_chain(&err);
    assert!(
        err.contains("needs a cluster node") && err.contains("manta node --tree"),
        "{err}"
    );
    let bad = "[[children]]\nid = \"w\"\nkind = \"probe\"\nplacement = { rolle = \"gpu\" }\n";
    let e = load_str(bad, "placed.toml", &kinds()).unwrap_err();
    assert_eq!((e.0[0].line, e.0[0].column), (4, 15), "{e}");
    assert!(e.0[0].message.contains("unknown field `rolle`"), "{e}");
}
