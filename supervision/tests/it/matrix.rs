//! OTP supervisor_SUITE-style matrix: restart type x exit kind x strategy.

use manta_actors::{ActorId, ActorSystem};
use manta_supervision::{
    ChildSpec, ChildState, EventBus, ExitAction, Restart, Strategy, Supervisor, SupervisorEvent,
    SupervisorSpec,
};

use crate::{ExitKind, ProbeMsg, next, probe, shorts, until};

const RESTARTS: [Restart; 3] = [Restart::Permanent, Restart::Transient, Restart::Temporary];
const STRATEGIES: [Strategy; 4] = [
    Strategy::OneForOne,
    Strategy::OneForAll,
    Strategy::RestForOne,
    Strategy::SimpleOneForOne,
];

fn restarted(restart: Restart, kind: ExitKind) -> bool {
    match restart {
        Restart::Permanent => true,
        Restart::Transient => matches!(kind, ExitKind::Failure | ExitKind::Panic),
        Restart::Temporary => false,
    }
}

async fn case(strategy: Strategy, restart: Restart, kind: ExitKind) {
    let label = format!("{strategy} / {restart} / {kind:?}");
    let system = ActorSystem::new();
    let bus = EventBus::new();
    let mut rx = bus.subscribe();
    let spec = SupervisorSpec::new("sup")
        .strategy(strategy)
        .intensity(10, std::time::Duration::from_secs(5))
        .events(bus.clone());
    let (spec, ids) = if strategy == Strategy::SimpleOneForOne {
        let s = spec
            .child(ChildSpec::worker("p", probe()).restart(restart))
            .instances(3);
        (s, ["p-1", "p-2", "p-3"])
    } else {
        let s = ["a", "b", "c"].iter().fold(spec, |s, id| {
            s.child(ChildSpec::worker(*id, probe()).restart(restart))
        });
        (s, ["a", "b", "c"])
    };
    let sup = Supervisor::start(&system, spec).await.unwrap();
    let started = until(
        &mut rx,
        |e| matches!(e, SupervisorEvent::ChildStarted { child, .. } if child == ids[2]),
    )
    .await;
    assert_eq!(
        shorts(&started),
        ids.iter()
            .map(|i| format!("start {i} #0"))
            .collect::<Vec<_>>(),
        "{label}"
    );

    let before = sup.which_children().await.unwrap();
    let old: Vec<ActorId> = before.iter().map(|c| c.actor().unwrap()).collect();
    let b = before[1]
        .handle
        .clone()
        .unwrap()
        .downcast::<ProbeMsg>()
        .unwrap();
    b.tell(ProbeMsg::Exit(kind)).unwrap();

    let will_restart = restarted(restart, kind);
    let [a_id, b_id, c_id] = ids;
    let (expected, restarted_ids): (Vec<String>, Vec<&str>) = if !will_restart {
        let action = if restart == Restart::Temporary || strategy == Strategy::SimpleOneForOne {
            ExitAction::Remove
        } else {
            ExitAction::Keep
        };
        (vec![format!("exit {b_id} {action}")], vec![])
    } else {
        match strategy {
            Strategy::OneForOne | Strategy::SimpleOneForOne => (
                vec![format!("exit {b_id} restart"), format!("start {b_id} #1")],
                vec![b_id],
            ),
            Strategy::OneForAll => (
                vec![
                    format!("exit {b_id} restart"),
                    format!("term {c_id}"),
                    format!("term {a_id}"),
                    format!("start {a_id} #1"),
                    format!("start {b_id} #1"),
                    format!("start {c_id} #1"),
                ],
                vec![a_id, b_id, c_id],
            ),
            Strategy::RestForOne => (
                vec![
                    format!("exit {b_id} restart"),
                    format!("term {c_id}"),
                    format!("start {b_id} #1"),
                    format!("start {c_id} #1"),
                ],
                vec![b_id, c_id],
            ),
        }
    };
    let last = expected.last().cloned().unwrap();
    let got = until(&mut rx, |e| crate::short(e) == last).await;
    assert_eq!(shorts(&got), expected, "{label}");

    // The exit reason reached the supervisor unchanged.
    match &got[0] {
        SupervisorEvent::ChildExited { reason, .. } => {
            assert_eq!(*reason, kind.reason(), "{label}")
        }
        other => panic!("{label}: first event {other:?}"),
    }

    let after = sup.which_children().await.unwrap();
    for (i, id) in ids.iter().enumerate() {
        let info = after.iter().find(|c| c.id == *id);
        if *id == b_id && !will_restart {
            let removed = restart == Restart::Temporary || strategy == Strategy::SimpleOneForOne;
            if removed {
                assert!(info.is_none(), "{label}: {id} should be removed");
            } else {
                let info = info.unwrap();
                assert_eq!(info.state, ChildState::Terminated, "{label}");
                assert!(info.handle.is_none(), "{label}");
            }
            continue;
        }
        let info = info.unwrap_or_else(|| panic!("{label}: {id} missing"));
        assert_eq!(info.state, ChildState::Running, "{label}: {id}");
        let was_restarted = restarted_ids.contains(id);
        assert_eq!(
            info.restarts,
            u32::from(was_restarted),
            "{label}: restarts of {id}"
        );
        assert_eq!(
            info.actor().unwrap() != old[i],
            was_restarted,
            "{label}: actor of {id}"
        );
    }
    let counts = sup.count_children().await.unwrap();
    let expected_active = if will_restart { 3 } else { 2 };
    assert_eq!(counts.active, expected_active, "{label}");

    sup.shutdown().await;
    // Every remaining child was stopped in reverse order before the
    // supervisor reported itself stopped.
    let tail = until(&mut rx, |e| {
        matches!(e, SupervisorEvent::SupervisorStopped { .. })
    })
    .await;
    let terms: Vec<String> = shorts(&tail)
        .into_iter()
        .filter(|s| s.starts_with("term"))
        .collect();
    let mut alive: Vec<&str> = ids.to_vec();
    if !will_restart {
        alive.retain(|i| *i != b_id);
    }
    alive.reverse();
    assert_eq!(
        terms,
        alive
            .iter()
            .map(|i| format!("term {i}"))
            .collect::<Vec<_>>(),
        "{label}"
    );
}

#[tokio::test]
async fn restart_type_x_exit_kind_x_strategy() {
    let mut n = 0;
    for strategy in STRATEGIES {
        for restart in RESTARTS {
            for kind in ExitKind::ALL {
                case(strategy, restart, kind).await;
                n += 1;
            }
        }
    }
    assert_eq!(n, 48);
}

#[tokio::test]
async fn one_for_all_drops_temporary_siblings_and_restarts_terminated_transients() {
    let system = ActorSystem::new();
    let bus = EventBus::new();
    let mut rx = bus.subscribe();
    let spec = SupervisorSpec::new("sup")
        .strategy(Strategy::OneForAll)
        .intensity(10, std::time::Duration::from_secs(5))
        .events(bus.clone())
        .child(ChildSpec::worker("tmp", probe()).restart(Restart::Temporary))
        .child(ChildSpec::worker("tr", probe()).restart(Restart::Transient))
        .child(ChildSpec::worker("perm", probe()));
    let sup = Supervisor::start(&system, spec).await.unwrap();
    until(&mut rx, |e| crate::short(e) == "start perm #0").await;
    let kids = sup.which_children().await.unwrap();
    let tr = kids[1]
        .handle
        .clone()
        .unwrap()
        .downcast::<ProbeMsg>()
        .unwrap();
    let perm = kids[2]
        .handle
        .clone()
        .unwrap()
        .downcast::<ProbeMsg>()
        .unwrap();
    // A transient child's normal exit: kept, not restarted, nothing else happens.
    tr.tell(ProbeMsg::Exit(ExitKind::Normal)).unwrap();
    assert_eq!(crate::short(&next(&mut rx).await), "exit tr keep");
    // Now the permanent one fails: the temporary sibling is stopped and
    // dropped, the terminated transient one comes back with the group.
    perm.tell(ProbeMsg::Exit(ExitKind::Failure)).unwrap();
    let got = until(&mut rx, |e| crate::short(e) == "start perm #1").await;
    assert_eq!(
        shorts(&got),
        [
            "exit perm restart",
            "term tmp",
            "dropped tmp",
            "start tr #1",
            "start perm #1"
        ]
    );
    let ids: Vec<String> = sup
        .which_children()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(ids, ["tr", "perm"]);
    sup.shutdown().await;
}
