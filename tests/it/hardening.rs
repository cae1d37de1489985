//! Issue 16 hardening through the `manta` command: no open cluster on a
//! real network by accident, no raw control characters from other nodes on
//! the operator's terminal, no zero tick interval.

use std::net::SocketAddr;
use std::time::Duration;

use crate::{Running, Scratch, manta};

#[test]
fn node_without_a_secret_refuses_a_non_loopback_address_and_says_how_to_fix_it() {
    let dir = Scratch::new("open-refused");
    let key = dir.0.join("n.key");
    for (flag, addr) in [
        ("--gossip", "0.0.0.0:0"),
        ("--listen", "/ip4/0.0.0.0/tcp/0"),
    ] {
        let mut cmd = manta();
        cmd.args(["node", "--name", "n", flag, addr])
            .arg("--key-file")
            .arg(&key);
        // A node that starts anyway is killed when the deadline passes.
        let mut p = Running::start(cmd);
        let status = p.wait_exit();
        let err = p.output();
        assert_eq!(status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("`{addr}`"))
                && err.contains("without a cluster secret")
                && err.contains("--secret-file")
                && err.contains("--insecure"),
            "{err}"
        );
        assert_eq!(
            err.matches("without a cluster secret").count(),
            1,
            "the message is printed once: {err}"
        );
        assert!(!key.exists(), "a refused node created its key file");
    }
}

#[test]
fn node_with_insecure_listens_on_every_interface_and_stops_cleanly() {
    let dir = Scratch::new("open-insecure");
    let mut cmd = manta();
    cmd.args([
        "node",
        "--name",
        "open",
        "--gossip",
        "0.0.0.0:0",
        "--listen",
        "/ip4/0.0.0.0/tcp/0",
        "--insecure",
    ])
    .arg("--key-file")
    .arg(dir.0.join("open.key"));
    let mut p = Running::start(cmd);
    let ready = p.wait_for("ready id=");
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = p.wait_exit();
    assert!(status.success(), "{status:?}\n{}", p.output());
    // (The mesh reports one interface's address of its 0.0.0.0 listener.)
    assert!(
        ready.contains("gossip=0.0.0.0:") && ready.contains("p2p=/ip4/"),
        "{ready}"
    );
}

#[test]
fn status_prints_control_characters_in_names_escaped() {
    // A member that does not go through `NodeConfig::validate` (a program
    // using Membership directly, or another implementation) names itself
    // with terminal escapes: clear the screen, set the window title, and a
    // CR LF that would forge a table row.
    let evil = "evil\u{1b}[2J\u{1b}]0;owned\u{7}\r\nfake-row\u{202e}";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let membership = rt.block_on(async {
        let mut c = manta_cluster::MembershipConfig::new(
            "id-evil",
            evil,
            SocketAddr::from(([127, 0, 0, 1], 0)),
        );
        c.gossip_interval = Duration::from_millis(100);
        c.keys.insert("roles".into(), "r\u{1b}[31m".into());
        let m = manta_cluster::Membership::start(c).await.unwrap();
        // Status answers carry the view: wait until it holds the node.
        let mut view = m.view();
        tokio::time::timeout(crate::DEADLINE, view.wait_for(|v| !v.is_empty()))
            .await
            .expect("the node sees itself within the deadline")
            .unwrap();
        m
    });
    let seed = membership.gossip_addr().to_string();
    let out = manta()
        .args(["status", "--timeout", "10s", "--seeds", &seed])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one row:\n{stdout}");
    assert!(
        !stdout
            .chars()
            .any(|c| c.is_control() && c != '\n' || c == '\u{202e}'),
        "raw control characters reached the terminal: {stdout:?}"
    );
    assert!(
        lines[1].contains(r"evil\u{1b}[2J\u{1b}]0;owned\u{7}\r\nfake-row\u{202e}")
            && lines[1].contains(r"r\u{1b}[31m"),
        "{stdout}"
    );
    // JSON escapes them its own way, and keeps the exact name.
    let out = manta()
        .args(["status", "--json", "--timeout", "10s", "--seeds", &seed])
        .output()
        .unwrap();
    assert!(!out.stdout.iter().any(|b| *b == 0x1b || *b == b'\r'));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["nodes"][0]["name"], evil);
    rt.block_on(membership.leave());
}

#[test]
fn check_refuses_a_zero_tick_interval_with_its_position() {
    let dir = Scratch::new("zero-tick");
    let tree = dir.file(
        "t.toml",
        "[[children]]\nid = \"t\"\nkind = \"ticker\"\nargs = { interval = \"0ms\" }\n",
    );
    let out = manta().arg("check").arg(&tree).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{}:4:21:", tree.display()))
            && err.contains("interval must be longer than zero"),
        "{err}"
    );
}

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
