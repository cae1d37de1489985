//! Node identity: an ed25519 keypair in a key file; its libp2p `PeerId` is
//! the node id everywhere.

use std::io::Write;
use std::path::Path;

use libp2p_identity::{Keypair, PeerId};

use crate::error::ClusterError;

/// A node's keypair and id.
#[derive(Clone)]
pub struct NodeIdentity {
    keypair: Keypair,
    peer_id: PeerId,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("peer_id", &self.peer_id)
            .finish()
    }
}

impl NodeIdentity {
    /// A fresh, unsaved identity.
    pub fn generate() -> Self {
        Self::from_keypair(Keypair::generate_ed25519())
    }

    fn from_keypair(keypair: Keypair) -> Self {
        let peer_id = keypair.public().to_peer_id();
        Self { keypair, peer_id }
    }

    /// Loads the key file, or creates it (mode 0600, parent directories
    /// included) on first start.
    pub fn load_or_create(path: &Path) -> Result<Self, ClusterError> {
        let err = |message: String| ClusterError::File {
            path: path.display().to_string(),
            what: "key file",
            message,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                let keypair = Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
                    err(format!(
                        "not a valid key ({e}); move it away to create a new identity"
                    ))
                })?;
                if keypair.clone().try_into_ed25519().is_err() {
                    return Err(err("holds a key that is not ed25519".to_owned()));
                }
                Ok(Self::from_keypair(keypair))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = Self::generate();
                let bytes = id
                    .keypair
                    .to_protobuf_encoding()
                    .map_err(|e| err(format!("cannot encode key: {e}")))?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
                }
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                let mut f = opts.open(path).map_err(|e| err(e.to_string()))?;
                f.write_all(&bytes).map_err(|e| err(e.to_string()))?;
                f.sync_all().map_err(|e| err(e.to_string()))?;
                Ok(id)
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// The node id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The keypair (for the libp2p mesh).
    pub fn keypair(&self) -> &Keypair {
        &self.keypair
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_is_created_once_then_reused() {
        let dir = std::env::temp_dir().join(format!("manta-key-{}", std::process::id()));
        let path = dir.join("sub").join("node.key");
        let a = NodeIdentity::load_or_create(&path).unwrap();
        let b = NodeIdentity::load_or_create(&path).unwrap();
        assert_eq!(a.peer_id(), b.peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, b"garbage").unwrap();
        let e = NodeIdentity::load_or_create(&path).unwrap_err().to_string();
        assert!(
            e.contains("node.key") && e.contains("not a valid key"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
