use std::time::Duration;

use libp2p_identity::Keypair;
use manta_cluster::pnet::PreSharedKey;
use manta_cluster::{ClusterSecret, Mesh, MeshConfig};

async fn mesh(psk: Option<&ClusterSecret>) -> Mesh {
    Mesh::start(MeshConfig {
        keypair: Keypair::generate_ed25519(),
        listen: "/ip4/127.0.0.1/tcp/0".parse().unwrap(),
        psk: psk.map(|s| PreSharedKey::new(manta_cluster::seal::mesh_psk(s, "manta"))),
        idle_timeout: Duration::from_secs(60),
        max_pending_incoming: manta_cluster::MAX_PENDING_INCOMING,
        secret_deadline: manta_cluster::SECRET_DEADLINE,
    })
    .await
    .unwrap()
}

async fn wait_connected(m: &Mesh, peer: libp2p::PeerId) {
    let mut rx = m.connected();
    tokio::time::timeout(crate::DEADLINE, async {
        while !rx.borrow_and_update().contains(&peer) {
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("connected within the deadline");
}

/// Waits, on the mesh's activity signal, for `at_least` refusals.
async fn wait_refused(m: &Mesh, at_least: u64) {
    let stats = m.stats();
    let mut activity = stats.activity();
    tokio::time::timeout(crate::DEADLINE, async {
        while stats.refused() < at_least {
            activity.changed().await.unwrap();
        }
    })
    .await
    .expect("refusals counted within the deadline");
}

#[tokio::test]
async fn members_with_the_secret_connect() {
    let s = ClusterSecret::generate();
    let (a, b) = (mesh(Some(&s)).await, mesh(Some(&s)).await);
    a.allow(b.peer_id());
    b.allow(a.peer_id());
    a.dial(b.peer_id(), b.listen_addr().clone());
    wait_connected(&a, b.peer_id()).await;
    wait_connected(&b, a.peer_id()).await;
    // Disallowing a peer closes its connection.
    let mut rx = a.connected();
    a.disallow(b.peer_id());
    tokio::time::timeout(crate::DEADLINE, async {
        while rx.borrow_and_update().contains(&b.peer_id()) {
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("disconnected after disallow");
}

#[tokio::test]
async fn a_peer_without_the_secret_cannot_finish_a_handshake() {
    let s = ClusterSecret::generate();
    let a = mesh(Some(&s)).await;
    let wrong = mesh(Some(&ClusterSecret::generate())).await;
    let open = mesh(None).await;
    for m in [&wrong, &open] {
        a.allow(m.peer_id());
        m.allow(a.peer_id());
        m.dial(a.peer_id(), a.listen_addr().clone());
    }
    wait_refused(&a, 2).await;
    assert!(a.connected().borrow().is_empty());
    assert!(wrong.connected().borrow().is_empty());
    assert!(open.connected().borrow().is_empty());
}

#[tokio::test]
async fn a_peer_that_is_not_a_member_is_refused_even_with_the_secret() {
    let s = ClusterSecret::generate();
    let (a, stranger) = (mesh(Some(&s)).await, mesh(Some(&s)).await);
    stranger.allow(a.peer_id());
    // a never allowed the stranger.
    stranger.dial(a.peer_id(), a.listen_addr().clone());
    // The handshake completes (same secret) but the allow-list denies it.
    wait_refused(&a, 1).await;
    assert!(!a.connected().borrow().contains(&stranger.peer_id()));
}

#[tokio::test]
async fn garbage_on_the_p2p_port_is_refused_and_the_mesh_keeps_serving() {
    use tokio::io::AsyncWriteExt;
    let s = ClusterSecret::generate();
    let (a, b) = (mesh(Some(&s)).await, mesh(Some(&s)).await);
    let port = a
        .listen_addr()
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap();
    for len in [0usize, 1, 31, 32, 33, 100, 70_000] {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let junk: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        let _ = c.write_all(&junk).await;
        let _ = c.shutdown().await;
    }
    wait_refused(&a, 5).await;
    a.allow(b.peer_id());
    b.allow(a.peer_id());
    b.dial(a.peer_id(), a.listen_addr().clone());
    wait_connected(&a, b.peer_id()).await;
}

/// A stranger that sends a private-network nonce (24 bytes anyone can
/// send: pnet has no MAC) and then nothing is closed at the deadline to
/// prove the secret, not at the general 10 s upgrade timeout: the whole
/// handshake, noise included, must finish within it.
#[tokio::test]
async fn a_stranger_that_sends_a_nonce_and_stalls_is_closed_at_the_secret_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = ClusterSecret::generate();
    let a = mesh(Some(&s)).await;
    let port = a
        .listen_addr()
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap();
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    sock.write_all(&rand::random::<[u8; 24]>()).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 256];
    tokio::time::timeout(crate::DEADLINE, async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("closed within the deadline");
    let took = started.elapsed();
    assert!(
        took < manta_cluster::SECRET_DEADLINE + Duration::from_secs(2),
        "closed after {took:?}, the deadline is {:?}",
        manta_cluster::SECRET_DEADLINE
    );
}
