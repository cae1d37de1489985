//! A running node: identity, secret and membership from a [`NodeConfig`].

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

use crate::config::NodeConfig;
use crate::error::ClusterError;
use crate::identity::NodeIdentity;
use crate::membership::{Membership, MembershipConfig, keys};
use crate::secret::ClusterSecret;

/// The line `manta node` prints once it is up, with the real addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyLine {
    /// Node id.
    pub id: String,
    /// Node name.
    pub name: String,
    /// Bound gossip address.
    pub gossip: SocketAddr,
    /// libp2p address (`-` until the mesh is in place).
    pub p2p: String,
}

impl fmt::Display for ReadyLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ready id={} name={} gossip={} p2p={}",
            self.id, self.name, self.gossip, self.p2p
        )
    }
}

/// A node that has joined (or started) a cluster.
#[derive(Debug)]
pub struct Node {
    identity: NodeIdentity,
    membership: Membership,
    config: NodeConfig,
}

/// Resolves `host:port`.
pub(crate) fn resolve(addr: &str, what: &str) -> Result<SocketAddr, ClusterError> {
    addr.to_socket_addrs()
        .map_err(|e| ClusterError::Config(format!("{what} `{addr}`: {e}")))?
        .next()
        .ok_or_else(|| ClusterError::Config(format!("{what} `{addr}` resolves to nothing")))
}

impl Node {
    /// Loads (or creates) the identity, reads the secret and joins.
    pub async fn start(config: NodeConfig) -> Result<Node, ClusterError> {
        let identity = NodeIdentity::load_or_create(&config.key_path())?;
        let secret = match &config.secret_file {
            Some(p) => Some(ClusterSecret::read(p)?),
            None => {
                tracing::warn!(
                    target: "manta::node",
                    "no --secret-file: the cluster is OPEN (gossip is sealed with a public development key); \
                     create a secret with `manta secret FILE`"
                );
                None
            }
        };
        let listen = resolve(&config.gossip, "gossip address")?;
        for s in &config.seeds {
            resolve(s, "seed")?;
        }
        let mut mc =
            MembershipConfig::new(identity.peer_id().to_string(), config.name.clone(), listen);
        mc.cluster = config.cluster.clone();
        mc.secret = secret;
        mc.seeds = config.seeds.clone();
        mc.gossip_interval = config.failure_detection.gossip_interval;
        mc.phi_threshold = config.failure_detection.phi_threshold;
        mc.max_interval = config.failure_detection.max_interval;
        mc.dead_node_grace_period = config.failure_detection.dead_node_grace_period;
        mc.keys
            .insert(keys::ROLES.to_owned(), config.roles.join(","));
        mc.keys.insert(
            keys::LABELS.to_owned(),
            serde_json::to_string(&config.labels).unwrap_or_default(),
        );
        mc.keys.insert(
            keys::RESOURCES.to_owned(),
            serde_json::to_string(&config.resources).unwrap_or_default(),
        );
        let membership = Membership::start(mc).await?;
        Ok(Node {
            identity,
            membership,
            config,
        })
    }

    /// The ready line.
    pub fn ready_line(&self) -> ReadyLine {
        ReadyLine {
            id: self.identity.peer_id().to_string(),
            name: self.config.name.clone(),
            gossip: self.membership.gossip_addr(),
            p2p: "-".to_owned(),
        }
    }

    /// Membership.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The node's identity.
    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// Leaves the cluster gracefully.
    pub async fn leave(self) {
        self.membership.leave().await;
    }
}
