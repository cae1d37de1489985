//! Issue 16, item 6: a stranger (no secret) holding thousands of idle
//! handshakes open on a node's mesh port, against a real `manta node`
//! process with a soft and hard limit of 1,024 file descriptors (a common
//! service default). A member must still join while the flood goes on.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::io::AsyncReadExt;

use crate::cluster::{secret, test_node, wait_view};
use crate::{Running, Scratch};

/// Idle connections the stranger keeps open: well past the node's 1,024
/// descriptors.
const FLOOD: usize = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joins_while_a_stranger_holds_thousands_of_idle_handshakes() {
    let dir = Scratch::new("flood");
    let secret = secret(&dir, "secret");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 1024 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_manta"))
        .args(["node", "--name", "a", "--gossip", "127.0.0.1:0"])
        .arg("--key-file")
        .arg(dir.0.join("a.key"))
        .arg("--secret-file")
        .arg(&secret);
    let mut a = Running::start(cmd);
    let line = a.wait_for("ready id=");
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")).map(str::to_owned))
            .unwrap_or_else(|| panic!("no {k}= in `{line}`"))
    };
    let (a_id, gossip, p2p) = (field("id"), field("gossip"), field("p2p"));
    let port: u16 = p2p
        .split('/')
        .skip_while(|p| *p != "tcp")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no TCP port in {p2p}"));

    // The stranger: FLOOD connections that say nothing, each reopened as
    // soon as the node closes it.
    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let more = Arc::new(tokio::sync::Notify::new());
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        let (stop, opened, more) = (Arc::clone(&stop), Arc::clone(&opened), Arc::clone(&more));
        flood.push(tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut c) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    opened.fetch_add(1, Ordering::Relaxed);
                    more.notify_waiters();
                    // Held until the node closes it (or the test ends).
                    while let Ok(n) = c.read(&mut buf).await {
                        if n == 0 || stop.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                }
                // Reopened at once, as a stranger keeping the pressure on.
                tokio::task::yield_now().await;
            }
        }));
    }
    // The flood is on: more connections than the node has descriptors.
    tokio::time::timeout(crate::DEADLINE, async {
        loop {
            let next = more.notified();
            tokio::pin!(next);
            next.as_mut().enable();
            if opened.load(Ordering::Relaxed) >= FLOOD as u64 {
                break;
            }
            next.await;
        }
    })
    .await
    .expect("the stranger's connections opened");
    // What the flood costs the node: its descriptors stay far below its
    // limit (pending handshakes are capped; the rest are closed as they
    // arrive), where before they ran out.
    let fds = std::fs::read_dir(format!("/proc/{}/fd", a.child.id()))
        .map(|d| d.count())
        .unwrap_or_else(|e| panic!("cannot list the node's descriptors: {e}"));
    eprintln!("node descriptors under a flood of {FLOOD} idle connections: {fds}");
    assert!(
        fds < 512,
        "the node holds {fds} descriptors under the flood (limit 1,024)"
    );
    let joining = std::time::Instant::now();

    // A member joins through a's gossip and must see a alive: gossip and an
    // authenticated mesh connection both ways.
    let b = test_node(
        &dir,
        "b",
        &secret,
        &gossip,
        false,
        manta::ActorSystem::new(),
    )
    .await;
    wait_view(&b, "a seen alive by the joining member", |v| {
        v.iter()
            .any(|m| m.id == a_id && m.state == manta_cluster::MemberState::Alive)
    })
    .await;
    eprintln!("member joined in {:?} under the flood", joining.elapsed());
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        f.abort();
    }
    b.leave().await;
    let _ = a.child.kill();
    assert!(
        !a.drain().contains("panicked"),
        "the node panicked:\n{}",
        a.output()
    );
}

/// The loopback UDP ports of process `pid` other than `except`: found as a
/// local attacker finds them (socket inodes in /proc/PID/fd, matched in
/// /proc/net/udp).
fn loopback_udp_ports(pid: u32, except: u16) -> Vec<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the node's descriptors")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/udp").expect("/proc/net/udp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (local, inode) = (cols.get(1)?, cols.get(9)?);
            let (ip, port) = local.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            // 127.0.0.1 as /proc writes it (little-endian hex).
            (ip == "0100007F" && port != except && inodes.contains(*inode)).then_some(port)
        })
        .collect()
}

/// Issue 16, item 9: a process on the same host floods the node's loopback
/// codec sockets with junk. The node keeps gossiping and answering status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_flood_of_the_codec_sockets_does_not_stall_gossip() {
    let dir = Scratch::new("codec-flood");
    let secret = secret(&dir, "secret");
    let a = crate::cluster::start_node(&dir, "a", Some(&secret), &[], &[]);
    let gossip_port: u16 = a
        .gossip
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a gossip port");
    let targets = loopback_udp_ports(a.p.child.id(), gossip_port);
    assert!(!targets.is_empty(), "no loopback sockets found");
    let stop = Arc::new(AtomicBool::new(false));
    let mut flood = Vec::new();
    for port in targets.clone() {
        let stop = Arc::clone(&stop);
        flood.push(tokio::spawn(async move {
            let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let junk = [0x5au8; 512];
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..64 {
                    let _ = s.send_to(&junk, ("127.0.0.1", port)).await;
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    // Under the flood, a member joins through a, and a's status (answered
    // from its gossip receive loop) shows both alive.
    let b = test_node(
        &dir,
        "b",
        &secret,
        &a.gossip,
        false,
        manta::ActorSystem::new(),
    )
    .await;
    wait_view(&b, "a alive, seen by b", |v| {
        v.iter()
            .any(|m| m.id == a.id && m.state == manta_cluster::MemberState::Alive)
    })
    .await;
    let gossip = a.gossip.clone();
    let s2 = secret.clone();
    tokio::task::spawn_blocking(move || {
        crate::cluster::wait_status(&gossip, Some(&s2), "a and b alive, from a", |st| {
            st["nodes"]
                .as_array()
                .map(|n| n.iter().filter(|n| n["state"] == "alive").count() == 2)
                .unwrap_or(false)
        })
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        let _ = f.await;
    }
    eprintln!("flooded {} loopback sockets of the node", targets.len());
    b.leave().await;
}
