//! The libp2p mesh: TCP + (with a secret) a pnet private network + noise +
//! yamux, one swarm per node driven through a command channel. Only peers
//! that gossip reports as members are allowed to connect; the set of
//! connected peers is the mesh's half of "alive".

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, upgrade};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, Transport, allow_block_list, connection_limits, noise, ping, tcp,
    yamux,
};
use libp2p_identity::Keypair;
use tokio::sync::{mpsc, watch};

use crate::error::ClusterError;
use crate::pnet::{self, PreSharedKey};

/// Mesh settings.
#[derive(Clone)]
pub struct MeshConfig {
    /// The node's keypair (its PeerId is the node id).
    pub keypair: Keypair,
    /// Where to listen (port 0 allowed).
    pub listen: Multiaddr,
    /// With a cluster secret: the private-network key.
    pub psk: Option<PreSharedKey>,
    /// How long an idle connection is kept (long: actor traffic is bursty).
    pub idle_timeout: Duration,
    /// Inbound connections still in their handshakes at once; more are
    /// closed as they arrive, so strangers holding idle handshakes cannot
    /// take the node's file descriptors. Members still join: both ends of
    /// a pair dial each other, and outbound dials are not counted here.
    pub max_pending_incoming: u32,
    /// How long a peer has to prove the cluster secret (the private-network
    /// handshake) before its connection is closed.
    pub secret_deadline: Duration,
}

/// Default [`MeshConfig::max_pending_incoming`].
pub const MAX_PENDING_INCOMING: u32 = 128;
/// Default [`MeshConfig::secret_deadline`].
pub const SECRET_DEADLINE: Duration = Duration::from_secs(3);
/// Established connections one peer may hold with this node.
const MAX_PER_PEER: u32 = 8;

impl std::fmt::Debug for MeshConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshConfig")
            .field("listen", &self.listen)
            .field("private", &self.psk.is_some())
            .finish()
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    allow: allow_block_list::Behaviour<allow_block_list::AllowedPeers>,
    ping: ping::Behaviour,
    streams: libp2p_stream::Behaviour,
}

enum Cmd {
    Allow(PeerId),
    Disallow(PeerId),
    Dial(PeerId, Multiaddr),
    Shutdown,
}

/// Mesh counters.
#[derive(Debug)]
pub struct MeshStats {
    refused: AtomicU64,
    failed_dials: AtomicU64,
    activity: watch::Sender<u64>,
}

impl Default for MeshStats {
    fn default() -> Self {
        Self {
            refused: AtomicU64::new(0),
            failed_dials: AtomicU64::new(0),
            activity: watch::channel(0).0,
        }
    }
}

impl MeshStats {
    /// Changes whenever a counter does: wait on it instead of polling.
    pub fn activity(&self) -> watch::Receiver<u64> {
        self.activity.subscribe()
    }

    /// Inbound connections that failed (wrong secret, garbage, not a member).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
    /// Outbound dials that failed.
    pub fn failed_dials(&self) -> u64 {
        self.failed_dials.load(Ordering::Relaxed)
    }
}

/// A running mesh.
#[derive(Clone)]
pub struct Mesh {
    cmd: mpsc::UnboundedSender<Cmd>,
    control: libp2p_stream::Control,
    listen: Multiaddr,
    peer_id: PeerId,
    connected: watch::Receiver<BTreeSet<PeerId>>,
    stats: Arc<MeshStats>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("listen", &self.listen)
            .finish()
    }
}

fn transport(cfg: &MeshConfig) -> Result<Boxed<(PeerId, StreamMuxerBox)>, ClusterError> {
    let noise =
        noise::Config::new(&cfg.keypair).map_err(|e| ClusterError::Mesh(format!("noise: {e}")))?;
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let timeout = Duration::from_secs(10);
    let deadline = cfg.secret_deadline;
    Ok(match cfg.psk {
        // pnet first: a peer without the secret cannot even start noise,
        // and one that does not prove it quickly is closed.
        Some(psk) => tcp
            .and_then(move |socket, _| async move {
                match tokio::time::timeout(deadline, pnet::handshake(socket, psk)).await {
                    Ok(r) => r,
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no private-network handshake within the deadline",
                    )),
                }
            })
            .upgrade(upgrade::Version::V1)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            // pnet has no MAC: its nonces are 24 bytes anyone can send.
            // What proves the secret is noise completing under the pnet
            // key, so the whole handshake gets the deadline (a stranger
            // that sent a nonce and went silent held its pending slot for
            // 10 s before).
            .timeout(deadline)
            .boxed(),
        None => tcp
            .upgrade(upgrade::Version::V1)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .timeout(timeout)
            .boxed(),
    })
}

impl Mesh {
    /// Listens and starts the swarm task.
    pub async fn start(cfg: MeshConfig) -> Result<Mesh, ClusterError> {
        let peer_id = cfg.keypair.public().to_peer_id();
        let limits = connection_limits::ConnectionLimits::default()
            .with_max_pending_incoming(Some(cfg.max_pending_incoming))
            .with_max_established_per_peer(Some(MAX_PER_PEER));
        let behaviour = Behaviour {
            limits: connection_limits::Behaviour::new(limits),
            allow: allow_block_list::Behaviour::default(),
            ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(1))),
            streams: libp2p_stream::Behaviour::new(),
        };
        let control = behaviour.streams.new_control();
        let mut swarm = Swarm::new(
            transport(&cfg)?,
            behaviour,
            peer_id,
            libp2p::swarm::Config::with_tokio_executor()
                .with_idle_connection_timeout(cfg.idle_timeout),
        );
        swarm
            .listen_on(cfg.listen.clone())
            .map_err(|e| ClusterError::Mesh(format!("cannot listen on {}: {e}", cfg.listen)))?;
        // The real address (port 0 resolved) comes as the first event.
        let listen = loop {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { address, .. } => break address,
                SwarmEvent::ListenerError { error, .. }
                | SwarmEvent::ListenerClosed {
                    reason: Err(error), ..
                } => {
                    return Err(ClusterError::Mesh(format!(
                        "listener on {}: {error}",
                        cfg.listen
                    )));
                }
                _ => {}
            }
        };
        let (cmd, mut rx) = mpsc::unbounded_channel();
        let (connected_tx, connected) = watch::channel(BTreeSet::new());
        let stats = Arc::new(MeshStats::default());
        let st = Arc::clone(&stats);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = swarm.select_next_some() => match ev {
                        SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                            tracing::debug!(target: "manta::mesh", peer = %peer_id, "connection established");
                        }
                        // A peer counts as connected once a ping has gone
                        // both ways: the other side's allow-list admitted us
                        // too (an outbound connection is "established" before
                        // the remote has decided to keep it).
                        SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, result: Ok(_), .. })) => {
                            connected_tx.send_if_modified(|s| {
                                let new = s.insert(peer);
                                if new {
                                    tracing::debug!(target: "manta::mesh", %peer, "connected");
                                }
                                new
                            });
                        }
                        SwarmEvent::ConnectionClosed { peer_id, num_established: 0, cause, .. } => {
                            tracing::debug!(target: "manta::mesh", peer = %peer_id, cause = ?cause, "disconnected");
                            connected_tx.send_if_modified(|s| s.remove(&peer_id));
                        }
                        SwarmEvent::IncomingConnectionError { send_back_addr, error, peer_id, .. } => {
                            let n = st.refused.fetch_add(1, Ordering::Relaxed) + 1;
                            st.activity.send_modify(|a| *a += 1);
                            match (&error, peer_id) {
                                // It finished the pnet and noise handshakes, so
                                // it holds the cluster secret: a node whose
                                // membership has not reached this one yet (it
                                // dials again once gossip has it), not a
                                // stranger. Counted, not alarmed about.
                                (libp2p::swarm::ListenError::Denied { .. }, Some(peer)) => {
                                    tracing::debug!(target: "manta::mesh", from = %send_back_addr, %peer, total = n, "refused inbound connection from a peer that is not a member (yet)");
                                }
                                _ if n <= 5 || n % 1000 == 0 => {
                                    tracing::warn!(target: "manta::mesh", from = %send_back_addr, %error, total = n, "refused inbound connection");
                                }
                                _ => {}
                            }
                        }
                        SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                            st.failed_dials.fetch_add(1, Ordering::Relaxed);
                            st.activity.send_modify(|a| *a += 1);
                            tracing::debug!(target: "manta::mesh", peer = ?peer_id, %error, "dial failed");
                        }
                        _ => {}
                    },
                    cmd = rx.recv() => match cmd {
                        Some(Cmd::Allow(p)) => { swarm.behaviour_mut().allow.allow_peer(p); }
                        Some(Cmd::Disallow(p)) => { swarm.behaviour_mut().allow.disallow_peer(p); }
                        Some(Cmd::Dial(p, addr)) => {
                            if !swarm.is_connected(&p) {
                                // A new local port per dial, not libp2p's default of
                                // reusing the listen port: two nodes dialling each other
                                // from their listen ports use one 4-tuple both ways,
                                // which on loopback can meet the remains of a refused
                                // connection (TIME_WAIT reuse). No hole punching here
                                // needs the reused port.
                                let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(p)
                                    .addresses(vec![addr])
                                    .allocate_new_port()
                                    .build();
                                if let Err(e) = swarm.dial(opts) {
                                    tracing::debug!(target: "manta::mesh", peer = %p, error = %e, "dial refused");
                                }
                            }
                        }
                        Some(Cmd::Shutdown) | None => break,
                    },
                }
            }
        });
        Ok(Mesh {
            cmd,
            control,
            listen,
            peer_id,
            connected,
            stats,
        })
    }

    /// The real listen address.
    pub fn listen_addr(&self) -> &Multiaddr {
        &self.listen
    }

    /// This node's PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Lets `peer` connect (a member).
    pub fn allow(&self, peer: PeerId) {
        let _ = self.cmd.send(Cmd::Allow(peer));
    }

    /// Stops allowing `peer`; its connections are closed.
    pub fn disallow(&self, peer: PeerId) {
        let _ = self.cmd.send(Cmd::Disallow(peer));
    }

    /// Dials `peer` at `addr` unless already connected.
    pub fn dial(&self, peer: PeerId, addr: Multiaddr) {
        let _ = self.cmd.send(Cmd::Dial(peer, addr));
    }

    /// The connected peers.
    pub fn connected(&self) -> watch::Receiver<BTreeSet<PeerId>> {
        self.connected.clone()
    }

    /// A handle to open and accept streams over the mesh's connections.
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.control.clone()
    }

    /// Stops the swarm: every connection closes (as if the process died).
    pub fn shutdown(&self) {
        let _ = self.cmd.send(Cmd::Shutdown);
    }

    /// Counters.
    pub fn stats(&self) -> Arc<MeshStats> {
        Arc::clone(&self.stats)
    }
}
