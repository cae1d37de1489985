//! Errors of the cluster crate.

/// Cluster errors.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A file (key, secret, config) could not be read, written or parsed.
    #[error("{what} {path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What kind of file.
        what: &'static str,
        /// What went wrong.
        message: String,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The libp2p mesh failed.
    #[error("mesh: {0}")]
    Mesh(String),
    /// Gossip could not start.
    #[error("gossip: {0}")]
    Gossip(String),
    /// I/O on the network.
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
}
