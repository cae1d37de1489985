use crate::{Running, Scratch, manta};

#[test]
fn check_accepts_the_example_trees() {
    let out = manta()
        .args(["check", "examples/demo.toml", "examples/tree.toml"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("examples/demo.toml: ok (root `demo`, 2 supervisors, 4 workers)"),
        "{stdout}"
    );
    assert!(stdout.contains("examples/tree.toml: ok"), "{stdout}");
}

#[test]
fn check_reports_every_problem_with_its_position_and_fails() {
    let dir = Scratch::new("check");
    let bad = dir.file(
        "bad.toml",
        "strategy = \"one_for_some\"\n\n[[children]]\nid = \"a\"\nkind = \"tickr\"\n",
    );
    let good = dir.file("good.toml", "[[children]]\nid = \"t\"\nkind = \"ticker\"\n");
    let out = manta().arg("check").arg(&good).arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let b = bad.display();
    assert!(
        stderr.contains(&format!("{b}:1:12: unknown strategy `one_for_some`")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{b}:5:8: unknown actor kind `tickr`")),
        "{stderr}"
    );
    assert!(stderr.contains("(found `\"tickr\"`)"), "{stderr}");
    assert!(stderr.contains(&format!("{b}: 2 problem(s)")), "{stderr}");
    assert!(
        stdout.contains(&format!("{}: ok", good.display())),
        "{stdout}"
    );
}

#[test]
fn run_logs_supervisor_decisions_and_stops_cleanly_on_sigint() {
    let dir = Scratch::new("run");
    let tree = dir.file(
        "svc.toml",
        "intensity = 100\n\n[[children]]\nid = \"beat\"\nkind = \"ticker\"\nargs = { interval = \"50ms\", message = \"beat\" }\n\n\
         [[children]]\nid = \"crashy\"\nkind = \"flaky\"\nargs = { fail_after = \"30ms\", mode = \"panic\" }\n",
    );
    let mut cmd = manta();
    cmd.arg("run").arg(&tree).env("RUST_LOG", "info");
    let mut p = Running::start(cmd);
    p.wait_for("tree running");
    p.wait_for("beat");
    let exit = p.wait_for("child exited");
    assert!(
        exit.contains("child=crashy") && exit.contains("panicked: scheduled panic after 30ms"),
        "{exit}"
    );
    p.wait_for("restarts=1");
    let pid = p.child.id().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = p.wait_exit();
    let out = p.output();
    assert!(status.success(), "{status:?}\n{out}");
    assert!(
        out.contains("child terminated") && out.contains("child=beat"),
        "{out}"
    );
    assert!(out.contains("tree stopped"), "{out}");
}

#[test]
fn run_exits_non_zero_when_the_root_escalates() {
    let dir = Scratch::new("escalate");
    let tree = dir.file(
        "fragile.toml",
        "intensity = 0\n\n[[children]]\nid = \"crashy\"\nkind = \"flaky\"\nargs = { fail_after = \"10ms\", mode = \"error\" }\n",
    );
    let mut cmd = manta();
    cmd.arg("run").arg(&tree);
    let mut p = Running::start(cmd);
    let status = p.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", p.output());
    assert!(p.output().contains("error: the root supervisor exited: failed: supervisor `fragile` exceeded its restart intensity"), "{}", p.output());
}

#[test]
fn run_refuses_an_invalid_tree() {
    let dir = Scratch::new("runbad");
    let tree = dir.file("x.toml", "[[children]]\nid = \"a\"\nkind = \"nope\"\n");
    let out = manta().arg("run").arg(&tree).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("x.toml:3:8: unknown actor kind `nope`"));
}

#[test]
fn demo_shows_restarts_and_an_escalation_and_exits_by_itself() {
    let mut cmd = manta();
    cmd.args(["demo", "--duration", "3s", "--once"]);
    let mut p = Running::start(cmd);
    p.wait_for("restarted gateway");
    p.wait_for("[payments] ESCALATING");
    p.wait_for("restarted payments");
    p.wait_for("cluster formed");
    // The serving step: the best trial of a tiny tuning run answers the
    // demo's own request, then `--once` stops it.
    p.wait_for("best trial");
    p.wait_for("-> label 0 in");
    p.wait_for("curl -s 127.0.0.1:");
    p.wait_for("Stopped serving.");
    let status = p.wait_exit();
    let out = p.output();
    assert!(status.success(), "{out}");
    assert!(
        out.contains("panicked: scheduled panic after 1500ms"),
        "{out}"
    );
    assert!(
        out.contains("Summary:") && out.contains("the root stopped with `shutdown`"),
        "{out}"
    );
}

#[test]
fn serve_promote_names_what_is_wrong() {
    let out = manta().args(["serve"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
    let out = manta()
        .args([
            "serve",
            "promote",
            "--server",
            "http://127.0.0.1:9",
            "--model",
            "m",
            "--experiment",
            "/nonexistent/experiment",
            "--percent",
            "10",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/experiment"), "{err}");
    let out = manta()
        .args([
            "serve",
            "promote",
            "--server",
            "http://127.0.0.1:9",
            "--model",
            "m",
            "--experiment",
            ".",
            "--percent",
            "10",
            "--promote",
            "--rollback",
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "--promote and --rollback exclude each other"
    );
}

#[test]
fn help_says_what_each_command_does() {
    let out = manta().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["demo", "check", "run", "kinds"] {
        assert!(text.contains(cmd), "{text}");
    }
    let out = manta().args(["check", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Exit status 0 when all are valid"));
    let out = manta().arg("kinds").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ticker") && text.contains("flaky") && text.contains("counter"),
        "{text}"
    );
}

/// Issue 15 (layout): a program that depends on `manta` for local actors and
/// supervision (`default-features = false`) builds neither libp2p nor burn
/// nor the command's dependencies.
#[test]
fn manta_without_default_features_depends_on_no_network_or_ml_stack() {
    let tree = |features: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO"));
        cmd.args([
            "tree",
            "--offline",
            "-p",
            "manta",
            "-e",
            "normal",
            "--prefix",
            "none",
        ]);
        cmd.args(features);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let has = |text: &str, krate: &str| text.lines().any(|l| l.starts_with(&format!("{krate} ")));
    let local = tree(&["--no-default-features"]);
    assert!(
        has(&local, "manta-actors") && has(&local, "manta-supervision"),
        "{local}"
    );
    for heavy in [
        "libp2p",
        "chitchat",
        "burn",
        "manta-cluster",
        "manta-ml",
        "clap",
        "indicatif",
    ] {
        assert!(
            !has(&local, heavy),
            "{heavy} in the local-only tree:\n{local}"
        );
    }
    let cluster = tree(&["--no-default-features", "--features", "cluster"]);
    assert!(
        has(&cluster, "libp2p") && !has(&cluster, "burn"),
        "{cluster}"
    );
    let full = tree(&[]);
    assert!(has(&full, "burn") && has(&full, "clap"), "{full}");
}
