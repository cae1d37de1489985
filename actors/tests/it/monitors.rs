use manta_actors::{ActorSystem, ExitReason};

use crate::{Cmd, Counter, T};

#[tokio::test]
async fn monitor_reports_each_exit_kind() {
    let sys = ActorSystem::new();
    let cases = [
        (Cmd::Stop(ExitReason::Normal), ExitReason::Normal),
        (
            Cmd::Stop(ExitReason::Shutdown(Some("bye".into()))),
            ExitReason::Shutdown(Some("bye".into())),
        ),
        (Cmd::Fail("bad".into()), ExitReason::Failed("bad".into())),
        (
            Cmd::Panic("worse".into()),
            ExitReason::Panicked("worse".into()),
        ),
    ];
    for (cmd, expected) in cases {
        let h = sys.spawn(Counter::default()).await.unwrap();
        let mon = h.monitor();
        assert!(mon.try_get().is_none());
        h.tell(cmd).unwrap();
        let got = tokio::time::timeout(T, mon.wait()).await.unwrap();
        assert_eq!(got, expected);
        assert!(!h.is_alive());
    }
}

#[tokio::test]
async fn monitor_after_exit_resolves_at_once() {
    let sys = ActorSystem::new();
    let h = sys.spawn(Counter::default()).await.unwrap();
    h.stop(ExitReason::Shutdown(None));
    h.monitor().wait().await;
    assert_eq!(h.monitor().wait().await, ExitReason::Shutdown(None));
}

#[tokio::test]
async fn kill_interrupts_a_hanging_handler() {
    let sys = ActorSystem::new();
    let counter = Counter::default();
    let hanging = counter.hanging.clone();
    let h = sys.spawn(counter).await.unwrap();
    h.tell(Cmd::Hang).unwrap();
    tokio::time::timeout(T, hanging.notified()).await.unwrap();
    // A graceful stop waits for the handler, which never returns.
    h.stop(ExitReason::Shutdown(None));
    let pending =
        tokio::time::timeout(std::time::Duration::from_millis(50), h.monitor().wait()).await;
    assert!(pending.is_err(), "a hanging actor must not have stopped");
    h.kill();
    assert_eq!(
        tokio::time::timeout(T, h.monitor().wait()).await.unwrap(),
        ExitReason::Killed
    );
}

#[tokio::test]
async fn a_monitor_can_feed_another_actor() {
    let sys = ActorSystem::new();
    let watched = sys.spawn(Counter::default()).await.unwrap();
    let watcher = sys.spawn(Counter::default()).await.unwrap();
    let mon = watched.monitor();
    let w = watcher.clone();
    tokio::spawn(async move {
        if let ExitReason::Failed(_) = mon.wait().await {
            let _ = w.tell(Cmd::Add(100));
        }
    });
    watched.tell(Cmd::Fail("x".into())).unwrap();
    // Wait on the effect with a deadline, not a sleep.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if watcher.ask(Cmd::Get, T).await.unwrap() == 100 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "watcher never heard of the exit"
        );
        tokio::task::yield_now().await;
    }
}
