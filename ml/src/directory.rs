//! How training actors find each other: by name, in this process or across
//! the cluster.

use std::sync::{Arc, OnceLock};

use manta_actors::{ActorHandle, ActorSystem, LookupError, RemoteMessage};
use manta_cluster::Names;

/// Name resolution for the actors of a training job.
#[derive(Clone, Debug)]
pub enum Directory {
    /// Names registered in one actor system (the in-process default).
    Local(ActorSystem),
    /// Names anywhere in a cluster. Set once the node has started (kinds are
    /// registered before the node exists).
    Cluster(Arc<OnceLock<Names>>),
}

impl Directory {
    /// A cluster directory to be bound to a node later with [`Directory::bind`].
    pub fn cluster() -> Self {
        Directory::Cluster(Arc::new(OnceLock::new()))
    }

    /// Binds a cluster directory to its node's names (no-op for a local one,
    /// or when already bound).
    pub fn bind(&self, names: Names) {
        if let Directory::Cluster(cell) = self {
            let _ = cell.set(names);
        }
    }

    /// The actor registered as `name` on the node with id `node` (a
    /// caller told where it lives; no wait for gossip). A local directory
    /// looks `name` up in its system.
    pub fn resolve_at<M: RemoteMessage>(
        &self,
        node: &str,
        name: &str,
    ) -> Result<ActorHandle<M>, LookupError> {
        match self {
            Directory::Local(system) => system.lookup(name),
            Directory::Cluster(cell) => match cell.get() {
                Some(names) => names.at(node, name),
                None => Err(LookupError::NotFound(format!(
                    "{name} (this node has not joined its cluster yet)"
                ))),
            },
        }
    }

    /// Finds the actor registered as `name`, checking its message type.
    pub fn resolve<M: RemoteMessage>(&self, name: &str) -> Result<ActorHandle<M>, LookupError> {
        match self {
            Directory::Local(system) => system.lookup(name),
            Directory::Cluster(cell) => match cell.get() {
                Some(names) => names.where_is(name),
                None => Err(LookupError::NotFound(format!(
                    "{name} (this node has not joined its cluster yet)"
                ))),
            },
        }
    }
}
