//! Issue 16 hardening through the `manta` command: no open cluster on a
//! real network by accident, no raw control characters from other nodes on
//! the operator's terminal, no zero tick interval.

use crate::{Running, Scratch};

#[test]
fn a_sigterm_right_after_the_ready_line_stops_the_node_gracefully() {
    // The SIGTERM handler used to be installed only once the node awaited
    // it, a little after printing `ready`: a SIGTERM in between killed the
    // process instead of making it leave. The shell's built-in `kill` sends
    // it microseconds after the line (spawning /bin/kill from here is too
    // slow to hit the gap); before the fix about half of these runs died.
    let dir = Scratch::new("early-term");
    let script = r#"
        set -u
        for i in 1 2 3 4 5 6 7 8 9 10; do
            rm -f "$D/out"; mkfifo "$D/out"
            "$MANTA" node --name "t$i" --key-file "$D/t$i.key" >"$D/out" 2>"$D/err$i" &
            pid=$!
            exec 3<"$D/out"
            read -r line <&3
            kill -TERM "$pid"
            wait "$pid"
            echo "run $i: exit $? after: $line"
            exec 3<&-
        done
    "#;
    let mut sh = std::process::Command::new("sh");
    sh.arg("-c")
        .arg(script)
        .env("D", &dir.0)
        .env("MANTA", env!("CARGO_BIN_EXE_manta"));
    // Bounded: a node that ignores the signal fails the test at the deadline.
    let mut p = Running::start(sh);
    let status = p.wait_exit();
    let output = p.output();
    assert!(status.success(), "{output}");
    let runs: Vec<&str> = output.lines().filter(|l| l.starts_with("run ")).collect();
    assert_eq!(runs.len(), 10, "{output}");
    for (i, run) in runs.iter().enumerate() {
        let log = std::fs::read_to_string(dir.0.join(format!("err{}", i + 1))).unwrap_or_default();
        assert!(
            run.contains("exit 0 after: ready id=") && log.contains("leaving the cluster"),
            "{run}\n{log}"
        );
    }
}
