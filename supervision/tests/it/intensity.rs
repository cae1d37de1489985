//! Restart intensity as a sliding window, escalation, backoff. These run on
//! tokio's paused clock: time only moves when the test says so (or when
//! everything is idle).

use std::time::Duration;

use manta_actors::ExitReason;
use manta_supervision::{
    Backoff, ChildSpec, Strategy, SupervisorEvent, SupervisorHandle, SupervisorSpec,
};
use tokio::sync::broadcast;

use crate::{ExitKind, ProbeMsg, probe, short, shorts, until};

async fn fail_child(sup: &SupervisorHandle, id: &str) {
    let kids = sup.which_children().await.unwrap();
    let child = kids.iter().find(|c| c.id == id).unwrap();
    let h = child
        .handle
        .clone()
        .unwrap()
        .downcast::<ProbeMsg>()
        .unwrap();
    h.tell(ProbeMsg::Exit(ExitKind::Failure)).unwrap();
}

async fn started(rx: &mut broadcast::Receiver<SupervisorEvent>, id: &str, n: u32) {
    let want = format!("start {id} #{n}");
    until(rx, |e| short(e) == want).await;
}

#[tokio::test(start_paused = true)]
async fn escalates_exactly_when_the_window_is_exceeded() {
    let spec = SupervisorSpec::new("sup")
        .intensity(2, Duration::from_secs(5))
        .child(ChildSpec::worker("w", probe()));
    let (sup, mut rx) = crate::start(spec).await;
    started(&mut rx, "w", 0).await;
    for n in 1..=2 {
        fail_child(&sup, "w").await;
        started(&mut rx, "w", n).await;
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    // Third restart within 5 s: 3 > 2.
    fail_child(&sup, "w").await;
    let got = until(&mut rx, |e| matches!(e, SupervisorEvent::Escalated { .. })).await;
    assert_eq!(shorts(&got), ["exit w escalate", "escalate sup by w"]);
    match sup.monitor().wait().await {
        ExitReason::Failed(msg) => assert!(
            msg.contains("exceeded its restart intensity (2 in 5s)"),
            "{msg}"
        ),
        other => panic!("supervisor exited with {other:?}"),
    }
    assert!(sup.which_children().await.is_err());
}

#[tokio::test(start_paused = true)]
async fn restarts_spread_out_over_the_period_do_not_escalate() {
    let spec = SupervisorSpec::new("sup")
        .intensity(1, Duration::from_secs(5))
        .child(ChildSpec::worker("w", probe()));
    let (sup, mut rx) = crate::start(spec).await;
    started(&mut rx, "w", 0).await;
    for n in 1..=5 {
        fail_child(&sup, "w").await;
        started(&mut rx, "w", n).await;
        // Just over the period: the previous restart has left the window.
        tokio::time::advance(Duration::from_millis(5_001)).await;
    }
    assert!(sup.monitor().try_get().is_none());
    assert_eq!(sup.which_children().await.unwrap()[0].restarts, 5);
    // Two inside one period is one too many.
    fail_child(&sup, "w").await;
    started(&mut rx, "w", 6).await;
    fail_child(&sup, "w").await;
    until(&mut rx, |e| matches!(e, SupervisorEvent::Escalated { .. })).await;
    assert!(matches!(sup.monitor().wait().await, ExitReason::Failed(_)));
}

#[tokio::test(start_paused = true)]
async fn nested_escalation_reaches_the_root() {
    let leaf_sup = SupervisorSpec::new("mid")
        .intensity(1, Duration::from_secs(5))
        .child(ChildSpec::worker("leaf", probe()));
    let root = SupervisorSpec::new("root")
        .intensity(1, Duration::from_secs(5))
        .child(ChildSpec::worker("sibling", probe()))
        .child(ChildSpec::supervisor(leaf_sup));
    let (sup, mut rx) = crate::start(root).await;
    started(&mut rx, "mid", 0).await;
    let mid = sup.which_children().await.unwrap()[1]
        .handle
        .clone()
        .unwrap()
        .downcast_ref::<SupervisorHandle>()
        .cloned()
        .unwrap();
    // leaf: 1 restart allowed by mid, the 2nd escalates to root, which
    // restarts mid (root's 1 allowed restart)...
    fail_child(&mid, "leaf").await;
    started(&mut rx, "leaf", 1).await;
    fail_child(&mid, "leaf").await;
    let got = until(&mut rx, |e| short(e) == "start mid #1").await;
    assert_eq!(
        shorts(&got),
        [
            "exit leaf escalate",
            "escalate mid by leaf",
            "exit mid restart",
            "start leaf #0",
            "start mid #1"
        ]
    );
    // ...and the same again exceeds root's intensity: root fails too.
    let mid = sup.which_children().await.unwrap()[1]
        .handle
        .clone()
        .unwrap()
        .downcast_ref::<SupervisorHandle>()
        .cloned()
        .unwrap();
    started_leaf_and_fail_twice(&mid, &mut rx).await;
    let got = until(&mut rx, |e| short(e) == "term sibling").await;
    assert_eq!(
        shorts(&got),
        [
            "exit leaf escalate",
            "escalate mid by leaf",
            "exit mid escalate",
            "escalate root by mid",
            "term sibling"
        ]
    );
    match sup.monitor().wait().await {
        ExitReason::Failed(msg) => {
            assert!(msg.contains("`root`") && msg.contains("`mid`"), "{msg}")
        }
        other => panic!("root exited with {other:?}"),
    }
}

async fn started_leaf_and_fail_twice(
    mid: &SupervisorHandle,
    rx: &mut broadcast::Receiver<SupervisorEvent>,
) {
    fail_child(mid, "leaf").await;
    started(rx, "leaf", 1).await;
    fail_child(mid, "leaf").await;
}

#[tokio::test(start_paused = true)]
async fn backoff_delays_grow_and_cap() {
    let spec = SupervisorSpec::new("sup")
        .strategy(Strategy::OneForOne)
        .intensity(100, Duration::from_secs(60))
        .backoff(Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_millis(300),
            random_factor: 0.0,
        })
        .child(ChildSpec::worker("w", probe()));
    let (sup, mut rx) = crate::start(spec).await;
    started(&mut rx, "w", 0).await;
    let mut delays = Vec::new();
    for n in 1..=4 {
        fail_child(&sup, "w").await;
        let evs = until(&mut rx, |e| {
            matches!(e, SupervisorEvent::RestartScheduled { .. })
        })
        .await;
        let Some(SupervisorEvent::RestartScheduled { delay, .. }) = evs.last() else {
            unreachable!()
        };
        let t0 = tokio::time::Instant::now();
        started(&mut rx, "w", n).await;
        assert!(
            t0.elapsed() >= *delay,
            "restarted after {:?}, before its {:?} backoff",
            t0.elapsed(),
            delay
        );
        delays.push(*delay);
    }
    assert_eq!(
        delays,
        [100, 200, 300, 300].map(Duration::from_millis),
        "doubling from min, capped at max"
    );
    // After running for a whole period the child starts over at `min`.
    tokio::time::advance(Duration::from_secs(61)).await;
    fail_child(&sup, "w").await;
    let evs = until(&mut rx, |e| {
        matches!(e, SupervisorEvent::RestartScheduled { .. })
    })
    .await;
    let Some(SupervisorEvent::RestartScheduled { delay, .. }) = evs.last() else {
        unreachable!()
    };
    assert_eq!(*delay, Duration::from_millis(100));
    sup.shutdown().await;
}

/// `rest_for_one` with a backoff: b fails (b and c wait for their
/// restart), then a, the child they depend on, fails before that restart
/// is due. The later restart of the larger group supersedes the earlier
/// one: a starts first, then b, then c (OTP drops a stale retry the same
/// way). Before, b's own timer started b and c while a was still waiting.
#[tokio::test(start_paused = true)]
async fn a_later_group_restart_supersedes_an_earlier_pending_one() {
    let spec = SupervisorSpec::new("sup")
        .strategy(Strategy::RestForOne)
        .intensity(10, Duration::from_secs(60))
        .backoff(Backoff {
            min: Duration::from_millis(200),
            max: Duration::from_secs(1),
            random_factor: 0.0,
        })
        .child(ChildSpec::worker("a", probe()))
        .child(ChildSpec::worker("b", probe()))
        .child(ChildSpec::worker("c", probe()));
    let (sup, mut rx) = crate::start(spec).await;
    started(&mut rx, "c", 0).await;
    fail_child(&sup, "b").await;
    until(&mut rx, |e| short(e) == "scheduled b,c").await;
    tokio::time::advance(Duration::from_millis(50)).await;
    fail_child(&sup, "a").await;
    until(&mut rx, |e| short(e) == "scheduled a,b,c").await;
    let mut starts = Vec::new();
    while starts.len() < 3 {
        let ev = crate::next(&mut rx).await;
        if let SupervisorEvent::ChildStarted { child, .. } = &ev {
            starts.push(child.clone());
        }
    }
    assert_eq!(starts, ["a", "b", "c"], "in start order, a first");
    let kids = sup.which_children().await.unwrap();
    assert!(
        kids.iter().all(|c| c.handle.is_some() && c.restarts == 1),
        "each restarted once: {kids:?}"
    );
    sup.shutdown().await;
}
