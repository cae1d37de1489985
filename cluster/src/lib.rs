//! # manta-cluster
//!
//! The start of Manta's cluster layer (issue 3). What is here:
//!
//! - `identity` — a node's ed25519 key in a key file (created on first
//!   start, reused after); its libp2p `PeerId` is the node id.
//! - `secret` — cluster secrets (`manta secret FILE`).
//! - `seal` — sealed datagrams: ChaCha20-Poly1305 keyed by HKDF from the
//!   secret, replay window, bounded fragmentation.
//! - `transport` — a chitchat `Transport` that seals every gossip datagram,
//!   so no unauthenticated byte reaches chitchat's decoder, and answers
//!   authenticated `status` queries.
//! - `membership` — chitchat 0.13 membership: NodeUp / NodeDown / NodeLeft
//!   events, graceful leave, a supervised gossip task.
//! - `mesh` — the libp2p 0.56 mesh: TCP + pnet (with a secret) + noise +
//!   yamux, an allow-list of gossip members, ping; a node is a member only
//!   once the mesh has authenticated it.
//! - `config` / `node` — node configuration and a running node.
//!
//! Remote actors over the mesh and cross-node supervision come next.

mod config;
mod error;
mod identity;
mod membership;
mod mesh;
mod node;
mod place;
mod remote;
pub mod seal;
mod secret;
mod status;
mod transport;

pub use config::{FailureDetection, NodeConfig, Resources};
pub use error::ClusterError;
pub use identity::NodeIdentity;
pub use membership::{Member, MemberEvent, MemberState, Membership, MembershipConfig};
pub use mesh::{Mesh, MeshConfig, MeshStats};
pub use node::{Node, ReadyLine};
pub use place::{Cluster, PLACEMENT_WAIT, SPAWN_TIMEOUT};
pub use remote::{
    BULK_QUEUE, CHUNK, FRAME_VERSION, MAX_FRAME, PEER_QUEUE, PROTOCOL, RemoteRef, Remoting,
};
pub use secret::ClusterSecret;
pub use status::{ClusterStatus, NodeStatus, query_status};
pub use transport::{GossipStats, SealedTransport};
