//! # manta-cluster
//!
//! Manta's cluster layer: nodes that form a cluster from gossip seeds, and
//! actors addressed the same way wherever they run.
//!
//! - `identity`: a node's ed25519 key in a key file (created on first start,
//!   reused after); its libp2p `PeerId` is the node id.
//! - `secret`: cluster secrets (`manta secret FILE`).
//! - [`seal`]: sealed datagrams. ChaCha20-Poly1305 keyed by HKDF from the
//!   secret, a replay window, bounded fragmentation.
//! - `transport`: a chitchat `Transport` that seals every gossip datagram
//!   (no unauthenticated byte reaches chitchat's decoder) and answers
//!   authenticated `status` queries.
//! - `membership`: chitchat 0.13 membership. NodeUp / NodeDown / NodeLeft
//!   events, graceful leave, a supervised gossip task, and ed25519
//!   signatures on what each node gossips about itself.
//! - `pnet`: libp2p's private-network protocol (PSK v1, XSalsa20), wire
//!   compatible with `libp2p::pnet`, with an AVX2 keystream.
//! - `mesh`: the libp2p 0.56 mesh. TCP + pnet (with a secret) + noise +
//!   yamux, with an allow-list of gossip members and ping; a node is a member
//!   only once the mesh has authenticated it.
//! - `remote`: actor traffic on one long-lived stream per peer, and
//!   [`RemoteRef`], the remote side of an `ActorHandle`.
//! - `place`: placement, remote spawn, and the [`Cluster`] handle. It is
//!   also the `Placer` that lets supervisors run children on other nodes.
//! - `config` / `node`: node configuration and a running [`Node`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use manta_actors::ActorSystem;
//! use manta_cluster::{Node, NodeConfig};
//!
//! let config = NodeConfig { name: "a".into(), seeds: vec!["127.0.0.1:7000".into()], ..NodeConfig::default() };
//! let node = Node::start(config, ActorSystem::new()).await?;
//! println!("{}", node.ready_line());
//! # Ok(()) }
//! ```

pub mod bulk;
mod config;
mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod hex;
mod identity;
mod membership;
mod mesh;
mod node;
mod place;
pub mod pnet;
mod remote;
pub mod seal;
mod secret;
mod status;
mod transport;

pub use config::{BulkConfig, FailureDetection, Limits, NodeConfig, Resources};
pub use error::ClusterError;
pub use identity::NodeIdentity;
pub use membership::{Member, MemberEvent, MemberState, Membership, MembershipConfig};
pub use mesh::{MAX_PENDING_INCOMING, Mesh, MeshConfig, MeshStats, SECRET_DEADLINE};
pub use node::{CLIENT_LABEL, Names, Node, ReadyLine};
pub use place::{Cluster, Offer, PLACEMENT_WAIT, SPAWN_TIMEOUT, SpawnOn};
pub use remote::{
    BULK_QUEUE, BulkSettings, CHUNK, FRAME_VERSION, LaneUse, MAX_FRAME, PEER_QUEUE, PROTOCOL,
    RemoteLimits, RemoteRef, Remoting, STREAMS_PER_PEER,
};
pub use secret::ClusterSecret;
pub use status::{ClusterStatus, NodeStatus, query_status, query_status_in};
pub use transport::{GossipStats, SealedTransport};
