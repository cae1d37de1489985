//! `manta status`: an authenticated membership query that does not join.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;

use crate::error::ClusterError;
use crate::seal::{Kind, Opener, Sealer, now_ms};
use crate::secret::ClusterSecret;
use crate::transport::StatusRequest;

/// One member as `manta status --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node id (libp2p PeerId).
    pub id: String,
    /// Node name.
    pub name: String,
    /// `alive`, `dead` or `left`.
    pub state: String,
    /// Roles.
    pub roles: Vec<String>,
    /// Gossip address.
    pub gossip: String,
    /// Registered actor names.
    pub actors: Vec<String>,
    /// Which lane the answering node sends this member's large messages
    /// on (`bulk`, `bulk (idle)`, `mesh (...)`); none for itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lane: Option<String>,
}

/// The answer to a status query.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Every member the answering node knows, itself included.
    pub nodes: Vec<NodeStatus>,
    /// Datagrams the answering node dropped, by reason.
    #[serde(default)]
    pub dropped: BTreeMap<String, u64>,
}

/// Asks the nodes at `seeds` for their view of the cluster; the first
/// answer wins. Retries every 250 ms until `timeout`. For a cluster of the
/// default name; [`query_status_in`] names another.
pub async fn query_status(
    seeds: &[SocketAddr],
    secret: Option<&ClusterSecret>,
    timeout: Duration,
) -> Result<ClusterStatus, ClusterError> {
    query_status_in(seeds, secret, crate::seal::DEFAULT_CLUSTER, timeout).await
}

/// [`query_status`] of the cluster named `cluster` (its gossip is keyed by
/// the secret and the name).
pub async fn query_status_in(
    seeds: &[SocketAddr],
    secret: Option<&ClusterSecret>,
    cluster: &str,
    timeout: Duration,
) -> Result<ClusterStatus, ClusterError> {
    if seeds.is_empty() {
        return Err(ClusterError::Config(
            "status needs at least one seed".to_owned(),
        ));
    }
    let bind: SocketAddr = if seeds.iter().all(|s| s.is_ipv4()) {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = UdpSocket::bind(bind).await?;
    let sealer = Sealer::for_cluster(secret, cluster);
    let mut opener = Opener::new(sealer.clone(), 30_000);
    let mut buf = vec![0u8; 65_536];
    let deadline = tokio::time::Instant::now() + timeout;
    // One id for this query: answers to anything else are not ours.
    let id: [u8; 16] = rand::random();
    let request = |cookie: [u8; 16]| {
        sealer
            .seal(
                Kind::StatusRequest,
                &StatusRequest { id, cookie }.encode(),
                now_ms(),
            )
            .map_err(ClusterError::Gossip)
    };
    let mut cookies: std::collections::HashMap<SocketAddr, [u8; 16]> = Default::default();
    loop {
        for seed in seeds {
            let cookie = cookies.get(seed).copied().unwrap_or_default();
            for d in request(cookie)? {
                // A seed that is down just does not answer.
                let _ = socket.send_to(&d, seed).await;
            }
        }
        let retry = tokio::time::Instant::now() + Duration::from_millis(250);
        loop {
            let until = retry.min(deadline);
            match tokio::time::timeout_at(until, socket.recv_from(&mut buf)).await {
                Ok(Ok((n, from))) => match opener.accept(&buf[..n], from, now_ms()) {
                    // The node wants proof that this address is ours: the
                    // cookie it sent here, back at once.
                    Ok(Some((Kind::StatusCookie, answer))) => {
                        let Some(got) = StatusRequest::parse(&answer) else {
                            continue;
                        };
                        if got.id != id {
                            continue;
                        }
                        cookies.insert(from, got.cookie);
                        for d in request(got.cookie)? {
                            let _ = socket.send_to(&d, from).await;
                        }
                    }
                    Ok(Some((Kind::StatusReply, body))) if body.get(..16) == Some(&id[..]) => {
                        return serde_json::from_slice(&body[16..]).map_err(|e| {
                            ClusterError::Gossip(format!("malformed status reply from {from}: {e}"))
                        });
                    }
                    _ => {}
                },
                Ok(Err(e)) => return Err(ClusterError::Io(e)),
                Err(_) => break,
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ClusterError::Gossip(format!(
                "no answer from {} within {timeout:?} (wrong secret, or no node there)",
                seeds
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
}
