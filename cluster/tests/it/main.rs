//! Integration tests of manta-cluster in one process (chitchat keeps no
//! process globals): sealed gossip on real UDP sockets on 127.0.0.1.
#![allow(missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail the test by panicking

mod attacks;
mod bulk;
mod config;
mod forged_gossip;
mod fuzz_stream;
mod gossip;
mod mesh;
mod remote;

use std::net::SocketAddr;
use std::time::Duration;

use manta_cluster::{ClusterSecret, Member, MemberState, Membership, MembershipConfig};

pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn config(
    name: &str,
    secret: Option<&ClusterSecret>,
    seeds: &[SocketAddr],
) -> MembershipConfig {
    let mut c = MembershipConfig::new(
        format!("id-{name}-{}", rand_suffix()),
        name,
        SocketAddr::from(([127, 0, 0, 1], 0)),
    );
    c.secret = secret.cloned();
    c.seeds = seeds.iter().map(|s| s.to_string()).collect();
    c.gossip_interval = Duration::from_millis(100);
    c
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Waits until `m`'s view satisfies `pred`, with a deadline.
pub async fn wait_view(
    m: &Membership,
    what: &str,
    pred: impl Fn(&[Member]) -> bool,
) -> Vec<Member> {
    let mut rx = m.view();
    let r = tokio::time::timeout(DEADLINE, async {
        loop {
            let v = rx.borrow_and_update().clone();
            if pred(&v) {
                return v;
            }
            if rx.changed().await.is_err() {
                panic!("membership stopped while waiting for {what}");
            }
        }
    })
    .await;
    match r {
        Ok(v) => v,
        Err(_) => panic!(
            "{what}: not reached within {DEADLINE:?}; view: {:#?}",
            m.members()
        ),
    }
}

pub fn alive(v: &[Member]) -> usize {
    v.iter().filter(|m| m.state == MemberState::Alive).count()
}
