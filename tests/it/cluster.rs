//! Multi-node tests: real `manta node` processes on 127.0.0.1 with
//! OS-assigned ports; waits go through `manta status` with deadlines.

use std::path::Path;
use std::time::Instant;

use serde_json::Value;

use crate::{DEADLINE, Running, Scratch, manta};

pub(crate) struct NodeProc {
    pub(crate) p: Running,
    pub(crate) id: String,
    pub(crate) gossip: String,
    p2p: String,
}

pub(crate) fn start_node(
    dir: &Scratch,
    name: &str,
    secret: Option<&Path>,
    seeds: &[&str],
    extra: &[&str],
) -> NodeProc {
    let mut cmd = manta();
    cmd.args(["node", "--name", name, "--gossip", "127.0.0.1:0"]);
    cmd.arg("--key-file").arg(dir.0.join(format!("{name}.key")));
    if let Some(s) = secret {
        cmd.arg("--secret-file").arg(s);
    }
    if !seeds.is_empty() {
        cmd.arg("--seeds").arg(seeds.join(","));
    }
    cmd.args(extra);
    let mut p = Running::start(cmd);
    let line = p.wait_for("ready id=");
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")).map(str::to_owned))
            .unwrap_or_else(|| panic!("no {k}= in `{line}`"))
    };
    NodeProc {
        id: field("id"),
        gossip: field("gossip"),
        p2p: field("p2p"),
        p,
    }
}

fn status(seed: &str, secret: Option<&Path>) -> Option<Value> {
    let mut cmd = manta();
    cmd.args(["status", "--json", "--timeout", "2s", "--seeds", seed]);
    if let Some(s) = secret {
        cmd.arg("--secret-file").arg(s);
    }
    let out = cmd.output().expect("manta status runs");
    if !out.status.success() {
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("status prints JSON"))
}

fn state_of(st: &Value, id: &str) -> Option<String> {
    st["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["id"] == id)
        .map(|n| n["state"].as_str().unwrap_or("").to_owned())
}

/// Polls `manta status` (each call waits for its answer) until `pred`.
pub(crate) fn wait_status(
    seed: &str,
    secret: Option<&Path>,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let end = Instant::now() + DEADLINE;
    let mut last = None;
    while Instant::now() < end {
        if let Some(st) = status(seed, secret) {
            if pred(&st) {
                return st;
            }
            last = Some(st);
        }
    }
    panic!("{what}: not seen within {DEADLINE:?}; last status: {last:#?}");
}

/// Waits (bounded) until `seed`'s status shows `n` alive nodes.
pub(crate) fn wait_alive(seed: &str, secret: Option<&Path>, n: usize) -> Value {
    wait_status(seed, secret, &format!("{n} nodes alive"), |st| {
        st["nodes"]
            .as_array()
            .is_some_and(|a| a.iter().filter(|x| x["state"] == "alive").count() == n)
    })
}

/// A node in this test process, joined to the cluster through `seed`
/// (a *client* node, which hosts no placed actors, when `client`).
pub(crate) async fn test_node(
    dir: &Scratch,
    name: &str,
    secret: &Path,
    seed: &str,
    client: bool,
    system: manta::ActorSystem,
) -> manta_cluster::Node {
    let config = manta_cluster::NodeConfig {
        name: name.into(),
        key_file: Some(dir.0.join(format!("{name}.key"))),
        secret_file: Some(secret.to_owned()),
        seeds: vec![seed.to_owned()],
        client,
        ..manta_cluster::NodeConfig::default()
    };
    manta_cluster::Node::start(config, system).await.unwrap()
}

/// Waits, up to the deadline, until `node`'s membership view satisfies
/// `pred`.
pub(crate) async fn wait_view(
    node: &manta_cluster::Node,
    what: &str,
    pred: impl Fn(&[manta_cluster::Member]) -> bool,
) {
    let mut view = node.membership().view();
    tokio::time::timeout(DEADLINE, async {
        while !pred(&view.borrow_and_update()) {
            view.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within {DEADLINE:?}"));
}

pub(crate) fn secret(dir: &Scratch, name: &str) -> std::path::PathBuf {
    let p = dir.0.join(name);
    let out = manta().arg("secret").arg(&p).output().unwrap();
    assert!(out.status.success());
    p
}

fn alive_count(st: &Value) -> usize {
    st["nodes"]
        .as_array()
        .map(|a| a.iter().filter(|n| n["state"] == "alive").count())
        .unwrap_or(0)
}

#[test]
fn three_nodes_join_then_a_kill_is_seen_as_dead_and_a_sigterm_as_left() {
    let dir = Scratch::new("join");
    let s = secret(&dir, "cluster.secret");
    let a = start_node(&dir, "a", Some(&s), &[], &[]);
    let mut b = start_node(&dir, "b", Some(&s), &[&a.gossip], &["--role", "gpu"]);
    let mut c = start_node(&dir, "c", Some(&s), &[&a.gossip], &[]);
    for seed in [&a.gossip, &b.gossip, &c.gossip] {
        wait_status(seed, Some(&s), "3 alive", |st| alive_count(st) == 3);
    }
    for n in [&a, &b, &c] {
        assert!(
            n.p2p.starts_with("/ip4/127.0.0.1/tcp/") && !n.p2p.ends_with("/tcp/0"),
            "{}",
            n.p2p
        );
        assert!(
            n.gossip.starts_with("127.0.0.1:") && !n.gossip.ends_with(":0"),
            "{}",
            n.gossip
        );
    }
    let st = status(&a.gossip, Some(&s)).unwrap();
    let bj = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == b.id.as_str())
        .unwrap();
    assert_eq!(bj["name"], "b");
    assert_eq!(bj["roles"], serde_json::json!(["gpu"]));
    assert_eq!(bj["gossip"], b.gossip.as_str());
    assert!(bj["actors"].is_array());

    // SIGKILL: every survivor reports c dead, and a logs NodeDown.
    c.p.child.kill().unwrap();
    let _ = c.p.child.wait();
    for seed in [&a.gossip, &b.gossip] {
        wait_status(seed, Some(&s), "c dead", |st| {
            state_of(st, &c.id).as_deref() == Some("dead")
        });
    }
    let mut a = a;
    a.p.wait_for("NodeDown");

    // SIGTERM: b leaves gracefully; a reports it `left`, not dead.
    let pid = b.p.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let st = wait_status(&a.gossip, Some(&s), "b left", |st| {
        state_of(st, &b.id).as_deref() == Some("left")
    });
    assert_eq!(state_of(&st, &c.id).as_deref(), Some("dead"));
    assert!(b.p.wait_exit().success(), "{}", b.p.output());
    a.p.wait_for("NodeLeft");
    a.p.child.kill().unwrap();
}

#[test]
fn a_node_with_the_wrong_secret_or_none_is_not_let_in() {
    let dir = Scratch::new("secret");
    let s = secret(&dir, "right.secret");
    let wrong = secret(&dir, "wrong.secret");
    let mut a = start_node(&dir, "a", Some(&s), &[], &[]);
    let mut x = start_node(&dir, "x", Some(&wrong), &[&a.gossip], &[]);
    let mut o = start_node(&dir, "o", None, &[&a.gossip], &[]);
    // a drops their gossip as unauthenticated...
    let st = wait_status(&a.gossip, Some(&s), "intruders' datagrams dropped", |st| {
        st["dropped"]["unauthenticated"].as_u64().unwrap_or(0) >= 6
    });
    // ...and never lists them.
    assert_eq!(st["nodes"].as_array().unwrap().len(), 1, "{st:#}");
    assert!(state_of(&st, &x.id).is_none() && state_of(&st, &o.id).is_none());
    // The intruder's own view holds only itself; status with its secret
    // cannot read a's cluster either.
    let xs = status(&x.gossip, Some(&wrong)).unwrap();
    assert_eq!(alive_count(&xs), 1);
    assert!(status(&a.gossip, Some(&wrong)).is_none());
    assert!(status(&a.gossip, None).is_none());
    // The warning goes to stderr and `ready` to stdout: wait for it rather
    // than assume it arrived before `ready`.
    o.p.wait_for_seen("cluster is OPEN");
    for n in [&mut a, &mut x, &mut o] {
        n.p.child.kill().unwrap();
    }
}

#[test]
fn garbage_truncated_and_oversized_datagrams_leave_a_node_serving() {
    let dir = Scratch::new("garbage");
    let s = secret(&dir, "c.secret");
    let mut a = start_node(&dir, "a", Some(&s), &[], &[]);
    let mut b = start_node(&dir, "b", Some(&s), &[&a.gossip], &[]);
    wait_status(&a.gossip, Some(&s), "2 alive", |st| alive_count(st) == 2);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut sent = 0;
    for len in [0usize, 1, 2, 4, 33, 49, 50, 51, 512, 1500, 8192, 65_507] {
        let junk: Vec<u8> = (0..len).map(|i| (i * 131 + len * 7) as u8).collect();
        sock.send_to(&junk, &a.gossip).unwrap();
        sent += 1;
    }
    // Sealed-looking headers with forged bodies, and a plain chitchat header.
    for len in [60usize, 1000, 65_000] {
        let mut forged: Vec<u8> = (0..len).map(|i| (i * 17) as u8).collect();
        forged[0] = 1;
        forged[1] = 0;
        sock.send_to(&forged, &a.gossip).unwrap();
        sent += 1;
    }
    sock.send_to(&[0x53, 0xb0, 0x00, 0x00, 0, 0, 0, 0], &a.gossip)
        .unwrap();
    sent += 1;
    // And on the mesh port: random bytes over TCP, short and long.
    let port = a.p2p.rsplit('/').next().unwrap().to_owned();
    for len in [0usize, 1, 32, 33, 4096, 200_000] {
        use std::io::Write;
        let mut c = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
        let junk: Vec<u8> = (0..len).map(|i| (i * 13 + len) as u8).collect();
        let _ = c.write_all(&junk);
    }
    let st = wait_status(&a.gossip, Some(&s), "garbage counted", |st| {
        st["dropped"]
            .as_object()
            .map(|d| d.values().filter_map(Value::as_u64).sum::<u64>())
            .unwrap_or(0)
            >= sent
    });
    assert_eq!(alive_count(&st), 2, "{st:#}");
    // Still gossiping: b still sees a alive after the flood.
    let bs = wait_status(&b.gossip, Some(&s), "b sees a", |st| {
        state_of(st, &a.id).as_deref() == Some("alive")
    });
    assert_eq!(alive_count(&bs), 2);
    a.p.child.kill().unwrap();
    b.p.child.kill().unwrap();
}

#[test]
fn the_key_file_is_reused_across_restarts() {
    let dir = Scratch::new("key");
    let mut first = start_node(&dir, "k", None, &[], &[]);
    first.p.child.kill().unwrap();
    let _ = first.p.child.wait();
    let mut second = start_node(&dir, "k", None, &[], &[]);
    assert_eq!(first.id, second.id);
    assert!(
        first.id.starts_with("12D3KooW"),
        "an ed25519 PeerId: {}",
        first.id
    );
    second.p.child.kill().unwrap();
}

#[test]
fn secret_files_are_private_and_never_overwritten() {
    let dir = Scratch::new("secretfile");
    let p = secret(&dir, "s");
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(
        text.starts_with("manta-secret-v1:") && text.trim().len() == 16 + 64,
        "{text}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let again = manta().arg("secret").arg(&p).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
    // A node refuses a malformed secret file, naming it.
    let bad = dir.file("bad.secret", "hunter2\n");
    let out = manta()
        .args(["node", "--name", "z", "--gossip", "127.0.0.1:0"])
        .arg("--secret-file")
        .arg(&bad)
        .arg("--key-file")
        .arg(dir.0.join("z.key"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.secret") && err.contains("does not start with `manta-secret-v1:`"),
        "{err}"
    );
}

#[test]
fn a_bad_node_config_is_reported_with_its_position() {
    let dir = Scratch::new("nodeconf");
    let conf = dir.file("node.toml", "name = \"n\"\nrolez = [\"x\"]\n");
    let out = manta()
        .arg("node")
        .arg("--config")
        .arg(&conf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node.toml") && err.contains("2:1") && err.contains("unknown field `rolez`"),
        "{err}"
    );
}

pub(crate) fn actor_on(st: &Value, name: &str) -> Option<String> {
    st["nodes"].as_array()?.iter().find_map(|n| {
        let alive = n["state"] == "alive";
        let has = n["actors"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == name));
        (alive && has).then(|| n["id"].as_str().unwrap_or("").to_owned())
    })
}

#[test]
fn a_placed_child_is_restarted_on_a_survivor_when_its_node_is_killed() {
    let dir = Scratch::new("placed");
    let s = secret(&dir, "c.secret");
    let tree = dir.file(
        "tree.toml",
        "name = \"bank\"\nintensity = 5\nperiod = \"10s\"\n\n[[children]]\nid = \"acct\"\nkind = \"counter\"\n\
         register = \"acct\"\nplacement = { role = \"worker\" }\n",
    );
    let tree_arg = tree.display().to_string();
    let mut a = start_node(&dir, "a", Some(&s), &[], &["--tree", &tree_arg]);
    let mut b = start_node(&dir, "b", Some(&s), &[&a.gossip], &["--role", "worker"]);
    let mut c = start_node(&dir, "c", Some(&s), &[&a.gossip], &["--role", "worker"]);
    let st = wait_status(&a.gossip, Some(&s), "acct placed on a worker", |st| {
        actor_on(st, "acct").is_some()
    });
    let host = actor_on(&st, "acct").unwrap();
    assert!(
        host == b.id || host == c.id,
        "acct must run on a worker, not on {host}"
    );
    let (victim, survivor) = if host == b.id {
        (&mut b, &c)
    } else {
        (&mut c, &b)
    };
    victim.p.child.kill().unwrap();
    let _ = victim.p.child.wait();
    let survivor_id = survivor.id.clone();
    wait_status(
        &a.gossip,
        Some(&s),
        "acct restarted on the survivor",
        |st| actor_on(st, "acct").as_deref() == Some(survivor_id.as_str()),
    );
    let line = a.p.wait_for("child exited");
    assert!(
        line.contains("child=acct") && line.contains("node down"),
        "{line}"
    );
    a.p.wait_for("restarts=1");
    a.p.child.kill().unwrap();
    b.p.child.kill().ok();
    c.p.child.kill().ok();
}

/// The test process joins a cluster of real `manta node` processes as a
/// node of its own and talks to their actors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_ask_spawn_and_node_down_across_real_processes() {
    use manta::builtin::{CounterMsg, TimerMsg};
    use manta::{ActorSystem, ExitReason, LookupError};
    use manta_cluster::MemberState;
    use std::time::Duration;

    let dir = Scratch::new("xproc");
    let s = secret(&dir, "c.secret");
    let tree = dir.file(
        "ledger.toml",
        "[[children]]\nid = \"ledger\"\nkind = \"counter\"\nregister = \"ledger\"\n",
    );
    let tree_arg = tree.display().to_string();
    let mut p1 = start_node(
        &dir,
        "p1",
        Some(&s),
        &[],
        &["--tree", &tree_arg, "--role", "worker"],
    );
    let mut p2 = start_node(&dir, "p2", Some(&s), &[&p1.gossip], &["--role", "worker"]);

    let me = test_node(
        &dir,
        "tester",
        &s,
        &p1.gossip,
        false,
        ActorSystem::with_kinds(manta::builtin::kinds()),
    )
    .await;
    wait_view(&me, "cluster of 3 with `ledger`", |view| {
        view.iter()
            .any(|m| m.state == MemberState::Alive && m.actors.iter().any(|a| a == "ledger"))
            && view
                .iter()
                .filter(|m| m.state == MemberState::Alive)
                .count()
                == 3
    })
    .await;

    // Named lookup and ask across processes.
    let ledger = me.where_is::<CounterMsg>("ledger").unwrap();
    assert!(!ledger.is_local());
    assert_eq!(
        ledger
            .ask(|r| CounterMsg::AddAndGet(5, r), Duration::from_secs(5))
            .await
            .unwrap(),
        5
    );
    // A lookup with the wrong message type is refused.
    assert!(matches!(
        me.where_is::<TimerMsg>("ledger"),
        Err(LookupError::WrongType { .. })
    ));
    // Remote spawn by role lands on a worker process.
    let placement = manta::actors::Placement {
        role: Some("worker".into()),
        ..Default::default()
    };
    let spawned = me
        .cluster()
        .spawn_on(
            &manta::builtin::counter_kind(),
            &manta::builtin::CounterArgs { start: 1 },
            &manta::cluster::SpawnOn {
                placement,
                name: Some("spawned".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        spawned
            .ask(CounterMsg::Get, Duration::from_secs(5))
            .await
            .unwrap(),
        1
    );
    assert!(
        me.system().lookup::<CounterMsg>("spawned").is_err(),
        "must not run in the tester"
    );

    // SIGKILL p1: the monitor on its actor gets `node down`; p2 reports it dead.
    let monitor = ledger.monitor();
    p1.p.child.kill().unwrap();
    let _ = p1.p.child.wait();
    let reason = tokio::time::timeout(DEADLINE, monitor.wait())
        .await
        .expect("node down within the deadline");
    assert_eq!(reason, ExitReason::NodeDown(p1.id.clone()));
    let p1_id = p1.id.clone();
    let p2_gossip = p2.gossip.clone();
    let s2 = s.clone();
    tokio::task::spawn_blocking(move || {
        wait_status(&p2_gossip, Some(&s2), "p1 dead on p2", |st| {
            state_of(st, &p1_id).as_deref() == Some("dead")
        })
    })
    .await
    .unwrap();
    me.leave().await;
    p2.p.child.kill().ok();
}

/// Issue 15, bug 3: `manta node --tree` (and `manta check`, `manta kinds`)
/// knew only the built-in kinds although the node also hosts manta-ml's,
/// so a tree could not name a parameter server.
#[test]
fn a_tree_can_name_the_kinds_a_node_hosts() {
    let dir = Scratch::new("ml-tree");
    let tree = dir.file(
        "ps.toml",
        r#"name = "training"

[[children]]
id = "ps"
kind = "manta.ps"
register = "t.ps.0"
args = { shard = 0, shards = 1, init_seed = 7, lr = 0.01, mode = { kind = "sync" }, workers = 1, model = { inputs = 4, hidden = [3], classes = 2 }, optimizer = { kind = "sgd" } }
"#,
    );
    let out = manta().arg("check").arg(&tree).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("ok (root `training`, 1 supervisors, 1 workers)")
    );
    let kinds = manta().arg("kinds").output().unwrap();
    let listed = String::from_utf8_lossy(&kinds.stdout);
    for k in ["manta.ps", "manta.loader", "manta.worker", "counter"] {
        assert!(listed.lines().any(|l| l == k), "{k} in {listed}");
    }
    let tree_arg = tree.display().to_string();
    let mut node = start_node(&dir, "ml", None, &[], &["--tree", &tree_arg]);
    let st = wait_status(&node.gossip, None, "t.ps.0 registered", |st| {
        st["nodes"].as_array().is_some_and(|ns| {
            ns.iter().any(|n| {
                n["actors"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == "t.ps.0"))
            })
        })
    });
    assert_eq!(st["nodes"].as_array().unwrap().len(), 1);
    node.p.child.kill().unwrap();
    let _ = node.p.child.wait();
}

/// Issue 17: a `manta node` process SIGKILLed while a large reply (a
/// parameter server's 16 MiB of parameters) streams to this node on the
/// bulk lane: the ask ends with `node down`, and the partly received reply
/// is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_during_a_lane_transfer_ends_the_ask_with_node_down() {
    use manta::ml::ps::{Params, PsMsg};
    use manta::{ActorSystem, AskError, ExitReason};
    use std::time::Duration;

    let dir = Scratch::new("lane-kill");
    let s = secret(&dir, "c.secret");
    // 1000 x 4000 + 4000 + 4000 x 10 + 10 parameters: 16.2 MB of f32.
    let tree = dir.file(
        "ps.toml",
        r#"[[children]]
id = "ps"
kind = "manta.ps"
register = "big.ps"
args = { shard = 0, shards = 1, init_seed = 7, lr = 0.01, mode = { kind = "sync" }, workers = 1, model = { inputs = 1000, hidden = [4000], classes = 10 }, optimizer = { kind = "sgd" } }
"#,
    );
    let tree_arg = tree.display().to_string();
    let mut p1 = start_node(&dir, "p1", Some(&s), &[], &["--tree", &tree_arg]);
    let me = test_node(&dir, "tester", &s, &p1.gossip, true, ActorSystem::new()).await;
    wait_view(&me, "big.ps published", |view| {
        view.iter().any(|m| {
            m.state == manta_cluster::MemberState::Alive && m.actors.iter().any(|a| a == "big.ps")
        })
    })
    .await;
    let ps = me.where_is::<PsMsg>("big.ps").unwrap();
    let pull = |reply| PsMsg::Pull {
        worker: u32::MAX,
        min_version: 0,
        reply,
    };
    // A first pull arrives whole, on p1's lane to this node.
    let Params { params, .. } = ps.ask(pull, Duration::from_secs(60)).await.unwrap();
    let floats: usize = params.iter().map(|t| t.values.len()).sum();
    assert_eq!(floats, 1000 * 4000 + 4000 + 4000 * 10 + 10);
    let r = me.remoting();
    assert_eq!(r.partial_bytes(), 0);
    // The second is killed with its first records in.
    let ask = ps.ask(pull, Duration::from_secs(60));
    let kill = async {
        assert!(
            r.wait_counters(DEADLINE, |r| r.partial_bytes() > 0).await,
            "the reply never started arriving"
        );
        p1.p.child.kill().unwrap();
    };
    let (answer, ()) = tokio::join!(ask, kill);
    let _ = p1.p.child.wait();
    assert!(
        matches!(
            answer,
            // The node's id; the broken stream may name itself after it
            // (seen before the membership declares the node dead).
            Err(AskError::NoReply(Some(ExitReason::NodeDown(ref n)))) if n.starts_with(&p1.id)
        ),
        "expected node down, got {:?}",
        answer.map(|p| p.version).map_err(|e| e.to_string())
    );
    assert!(
        r.wait_counters(DEADLINE, |r| r.partial_bytes() == 0).await,
        "the partly received reply is released"
    );
    me.leave().await;
}
