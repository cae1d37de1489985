//! Placement: where in a cluster an actor should run. Supervisors and tree
//! files carry it; the cluster layer implements [`Placer`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::SpawnError;
use crate::kind::ChildFactory;

/// Resources: what a node offers, or what an actor needs from its node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU cores.
    #[serde(default)]
    pub cpus: f64,
    /// GPUs.
    #[serde(default)]
    pub gpus: u32,
    /// Memory in MiB.
    #[serde(default)]
    pub memory_mb: u64,
}

/// Where to run an actor. Every field narrows the candidates; among them the
/// least-loaded node is chosen.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// A node id or node name.
    #[serde(default)]
    pub node: Option<String>,
    /// A role the node must have.
    #[serde(default)]
    pub role: Option<String>,
    /// Labels the node must carry.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Resources the node must offer.
    #[serde(default)]
    pub resources: Option<Resources>,
}

/// Builds child factories that start an actor kind somewhere in a cluster.
pub trait Placer: Send + Sync + 'static {
    /// A factory starting `kind` with `args` on a node matching `placement`
    /// (chosen anew at each start, so a restart avoids a dead node).
    fn factory(
        &self,
        kind: &str,
        args: crate::kind::ArgsValue,
        placement: &Placement,
    ) -> Result<Arc<dyn ChildFactory>, SpawnError>;
}
