//! Every supervisor decision is a structured tracing event.

use std::sync::{Arc, Mutex};

use manta_actors::ActorSystem;
use manta_supervision::{ChildSpec, EventBus, Supervisor, SupervisorSpec};
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};

use crate::{ExitKind, ProbeMsg, probe, short, until};

/// One event's fields as (name, value) pairs.
type FieldList = Vec<(String, String)>;

#[derive(Default, Clone)]
struct Captured(Arc<Mutex<Vec<FieldList>>>);

struct Fields(Vec<(String, String)>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Captured {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        if event.metadata().target() != "manta::supervisor" {
            return;
        }
        let mut f = Fields(Vec::new());
        event.record(&mut f);
        self.0.lock().unwrap().push(f.0);
    }
}

#[test]
fn start_exit_restart_and_escalation_are_traced_with_fields() {
    // A global subscriber: a thread-local one (`with_default`) races with
    // the callsite-interest cache while other tests run in parallel. Only
    // this test installs one; it filters for its own supervisor's events.
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry().with(captured.clone());
    tracing::subscriber::set_global_default(subscriber)
        .expect("the only global subscriber in this binary");
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let system = ActorSystem::new();
            let bus = EventBus::new();
            let mut rx = bus.subscribe();
            let spec = SupervisorSpec::new("traced")
                .intensity(1, std::time::Duration::from_secs(60))
                .events(bus.clone())
                .child(ChildSpec::worker("w", probe()));
            let sup = Supervisor::start(&system, spec).await.unwrap();
            for n in 0..2 {
                until(&mut rx, |e| short(e) == format!("start w #{n}")).await;
                let h = sup.which_children().await.unwrap()[0]
                    .handle
                    .clone()
                    .unwrap();
                h.downcast::<ProbeMsg>()
                    .unwrap()
                    .tell(ProbeMsg::Exit(ExitKind::Failure))
                    .unwrap();
            }
            sup.monitor().wait().await;
        });
    }
    let events = captured.0.lock().unwrap().clone();
    let has = |msg: &str, field: &str, value: &str| {
        events.iter().any(|ev| {
            ev.iter().any(|(k, v)| k == "message" && v == msg)
                && ev
                    .iter()
                    .any(|(k, v)| k == field && v.trim_matches('"') == value)
                && ev.iter().any(|(k, v)| k == "supervisor" && v == "traced")
        })
    };
    assert!(has("child started", "child", "w"), "{events:#?}");
    assert!(has("child started", "restarts", "1"), "{events:#?}");
    assert!(has("child exited", "action", "restart"), "{events:#?}");
    assert!(
        has("child exited", "reason", "failed: failure"),
        "{events:#?}"
    );
    assert!(
        has("restart intensity exceeded, escalating", "child", "w"),
        "{events:#?}"
    );
}
