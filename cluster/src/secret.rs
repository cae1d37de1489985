//! Cluster secrets: 32 random bytes, stored as 64 hex characters.

use std::fmt;
use std::io::Write;
use std::path::Path;

use crate::error::ClusterError;

/// The shared secret of a cluster. Gossip is sealed with a key derived from
/// it; a node without it cannot join.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret([u8; 32]);

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

const PREFIX: &str = "manta-secret-v1:";

impl ClusterSecret {
    /// A new random secret.
    pub fn generate() -> Self {
        Self(rand::random())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses the file format: `manta-secret-v1:` and 64 hex characters.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let hex = t.strip_prefix(PREFIX).ok_or_else(|| {
            format!("does not start with `{PREFIX}` (write one with `manta secret FILE`)")
        })?;
        if hex.len() != 64 {
            return Err(format!(
                "expected 64 hex characters after `{PREFIX}`, found {}",
                hex.len()
            ));
        }
        let bytes = crate::hex::decode(hex).map_err(|at| {
            let pair = hex.get(at..at + 2).unwrap_or("a non-ASCII character");
            format!("`{pair}` at position {at} is not hex")
        })?;
        // 64 hex characters make 32 bytes.
        let out: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "expected 32 bytes".to_owned())?;
        Ok(Self(out))
    }

    /// The file format.
    pub fn to_file_text(&self) -> String {
        format!("{PREFIX}{}\n", crate::hex::encode(&self.0))
    }

    /// Reads a secret file.
    pub fn read(path: &Path) -> Result<Self, ClusterError> {
        let text = std::fs::read_to_string(path).map_err(|e| ClusterError::File {
            path: path.display().to_string(),
            what: "secret file",
            message: e.to_string(),
        })?;
        Self::parse(&text).map_err(|message| ClusterError::File {
            path: path.display().to_string(),
            what: "secret file",
            message,
        })
    }

    /// Writes a new random secret to `path` with mode 0600. Refuses to
    /// overwrite an existing file.
    pub fn write_new(path: &Path) -> Result<Self, ClusterError> {
        let secret = Self::generate();
        let err = |e: std::io::Error| ClusterError::File {
            path: path.display().to_string(),
            what: "secret file",
            message: e.to_string(),
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(path).map_err(err)?;
        f.write_all(secret.to_file_text().as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let s = ClusterSecret::generate();
        assert_eq!(ClusterSecret::parse(&s.to_file_text()), Ok(s));
        assert!(
            ClusterSecret::parse("hello")
                .unwrap_err()
                .contains("does not start with")
        );
        assert!(
            ClusterSecret::parse("manta-secret-v1:abcd")
                .unwrap_err()
                .contains("expected 64 hex")
        );
        let bad = format!("manta-secret-v1:{}", "zz".repeat(32));
        assert!(
            ClusterSecret::parse(&bad)
                .unwrap_err()
                .contains("is not hex")
        );
    }
}
