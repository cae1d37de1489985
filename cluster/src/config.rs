//! Node configuration: a TOML file, overridden by command-line flags.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::error::ClusterError;

/// The longest duration a node config accepts (a year): longer ones are
/// surely mistakes, and a deadline that far ahead overflows `Instant`
/// arithmetic (chitchat adds `dead_node_grace_period` to an `Instant`).
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration of the config: longer than zero (every one of them paces a
/// timer, and `tokio::time::interval` panics on zero) and at most
/// [`MAX_DURATION`].
fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    let v = parse_duration(&s).map_err(serde::de::Error::custom)?;
    if v.is_zero() {
        return Err(serde::de::Error::custom(format!(
            "duration `{s}` must be longer than zero"
        )));
    }
    Ok(v)
}

fn de_phi<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    check_phi(v).map_err(serde::de::Error::custom)?;
    Ok(v)
}

fn check_phi(v: f64) -> Result<(), String> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(format!("phi_threshold must be a positive number, not {v}"))
    }
}

/// `"250ms"`, `"5s"`, `"2m"`, at most [`MAX_DURATION`].
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("duration `{s}` needs a unit (ms, s, m, h)"))?;
    let (n, unit) = t.split_at(split);
    if n.is_empty() {
        return Err(format!(
            "duration `{s}` does not start with a number (e.g. \"200ms\")"
        ));
    }
    let n: f64 = n
        .parse()
        .map_err(|_| format!("duration `{s}` has a malformed number"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "duration `{s}` has an unknown unit `{unit}` (use ms, s, m or h)"
            ));
        }
    };
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!(
            "duration `{s}` is longer than the limit of 8760h (a year)"
        )),
    }
}

/// Resources a node offers (for placement).
pub use manta_actors::Resources;

/// Failure-detector settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureDetection {
    /// Gossip round interval (default `"200ms"`). Every duration here is
    /// longer than zero and at most 8760h (a year).
    #[serde(default = "d_gossip", deserialize_with = "de_duration")]
    pub gossip_interval: Duration,
    /// Phi-accrual threshold (default 8; a positive number).
    #[serde(default = "d_phi", deserialize_with = "de_phi")]
    pub phi_threshold: f64,
    /// Longest heartbeat interval counted (default `"2s"`).
    #[serde(default = "d_max", deserialize_with = "de_duration")]
    pub max_interval: Duration,
    /// How long dead nodes are remembered (default `"5m"`).
    #[serde(default = "d_grace", deserialize_with = "de_duration")]
    pub dead_node_grace_period: Duration,
}

fn d_gossip() -> Duration {
    Duration::from_millis(200)
}
fn d_phi() -> f64 {
    8.0
}
fn d_max() -> Duration {
    Duration::from_secs(2)
}
fn d_grace() -> Duration {
    Duration::from_secs(300)
}

impl Default for FailureDetection {
    fn default() -> Self {
        Self {
            gossip_interval: d_gossip(),
            phi_threshold: d_phi(),
            max_interval: d_max(),
            dead_node_grace_period: d_grace(),
        }
    }
}

/// What one member can make this node hold (`[limits]`): bounds for
/// peers that hold the secret but may misbehave.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// MiB of partly received large messages from one peer (default 136:
    /// two of the largest, 64 MiB, messages and a margin; at least 64).
    #[serde(default = "d_partial_peer")]
    pub partial_per_peer_mib: usize,
    /// MiB of partly received large messages from all peers together
    /// (default 512; at least 64). A new large message that does not fit
    /// waits, its stream unread, up to `partial_expiry`.
    #[serde(default = "d_partial_node")]
    pub partial_per_node_mib: usize,
    /// A partly received message that gets no chunk for this long is
    /// dropped (default `"30s"`).
    #[serde(default = "d_partial_expiry", deserialize_with = "de_duration")]
    pub partial_expiry: Duration,
    /// MiB of messages from other nodes one actor may have waiting
    /// (default 160); past it they are refused with backpressure. An actor
    /// with nothing waiting takes any one message.
    #[serde(default = "d_remote_inbox")]
    pub remote_inbox_mib: usize,
}

fn d_remote_inbox() -> usize {
    manta_actors::REMOTE_MAILBOX_BYTES >> 20
}

fn d_partial_peer() -> usize {
    crate::remote::RemoteLimits::default().partial_per_peer >> 20
}
fn d_partial_node() -> usize {
    crate::remote::RemoteLimits::default().partial_per_node >> 20
}
fn d_partial_expiry() -> Duration {
    crate::remote::RemoteLimits::default().partial_expiry
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            partial_per_peer_mib: d_partial_peer(),
            partial_per_node_mib: d_partial_node(),
            partial_expiry: d_partial_expiry(),
            remote_inbox_mib: d_remote_inbox(),
        }
    }
}

impl Limits {
    /// The limits the remoting layer enforces; an error names a value too
    /// small to receive the largest message.
    pub fn remote(&self) -> Result<crate::remote::RemoteLimits, ClusterError> {
        let least = crate::remote::MAX_FRAME >> 20;
        for (key, v) in [
            ("partial_per_peer_mib", self.partial_per_peer_mib),
            ("partial_per_node_mib", self.partial_per_node_mib),
        ] {
            if v < least {
                return Err(ClusterError::Config(format!(
                    "limits.{key} = {v} is below {least} MiB, the largest message"
                )));
            }
        }
        if self.partial_expiry.is_zero() {
            return Err(ClusterError::Config(
                "limits.partial_expiry must be longer than zero".to_owned(),
            ));
        }
        Ok(crate::remote::RemoteLimits {
            partial_per_peer: self.partial_per_peer_mib.saturating_mul(1 << 20),
            partial_per_node: self.partial_per_node_mib.saturating_mul(1 << 20),
            partial_expiry: self.partial_expiry,
        })
    }
}

/// The bulk lane (`[bulk]`): large messages on a TCP connection of their
/// own per peer, keyed over the mesh (README, "Bulk lane").
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkConfig {
    /// Whether this node has a lane (default `true`). Off, its large
    /// messages go over the mesh and it gossips no lane, so peers send it
    /// theirs over the mesh too.
    #[serde(default = "d_true")]
    pub enabled: bool,
    /// Where the lane listens, `IP:PORT` (port 0: any free one). Default:
    /// the IP of the gossip address, any free port. Peers only dial a lane
    /// on the host of a node's signed gossip address.
    #[serde(default)]
    pub listen: Option<String>,
    /// Frames of at least this many encoded bytes take the lane (default
    /// 16384: from 16 KiB up the lane carried asks 1.33x (16 KiB) to 2.59x
    /// (256 KiB) faster than the mesh, at 4 KiB 1.08x; BENCHMARKS.md,
    /// "Remote payloads"; 1 byte to 64 MiB).
    #[serde(default = "d_threshold")]
    pub threshold: usize,
    /// MiB queued or unacknowledged on one peer's lane before senders see
    /// backpressure (default 128; at least 64, the largest message).
    #[serde(default = "d_inflight")]
    pub max_inflight_mib: usize,
    /// How long a lane connection has to present its ticket (default
    /// `"3s"`, at most a minute).
    #[serde(default = "d_ticket", deserialize_with = "de_duration")]
    pub ticket_deadline: Duration,
}

fn d_true() -> bool {
    true
}
fn d_threshold() -> usize {
    crate::remote::BulkSettings::default().threshold
}
fn d_inflight() -> usize {
    crate::remote::BulkSettings::default().max_inflight >> 20
}
fn d_ticket() -> Duration {
    crate::remote::BulkSettings::default().ticket_deadline
}

impl Default for BulkConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            threshold: d_threshold(),
            max_inflight_mib: d_inflight(),
            ticket_deadline: d_ticket(),
        }
    }
}

impl BulkConfig {
    /// The settings the remoting layer takes; an error names the value.
    pub fn settings(&self) -> Result<crate::remote::BulkSettings, ClusterError> {
        let max = crate::remote::MAX_FRAME;
        if self.threshold == 0 || self.threshold > max {
            return Err(ClusterError::Config(format!(
                "bulk.threshold = {} must be 1 to {max} bytes",
                self.threshold
            )));
        }
        if self.max_inflight_mib < max >> 20 {
            return Err(ClusterError::Config(format!(
                "bulk.max_inflight_mib = {} is below {} MiB, the largest message",
                self.max_inflight_mib,
                max >> 20
            )));
        }
        if self.ticket_deadline.is_zero() || self.ticket_deadline > Duration::from_secs(60) {
            return Err(ClusterError::Config(format!(
                "bulk.ticket_deadline is {:?}; it must be longer than zero and at most 1m",
                self.ticket_deadline
            )));
        }
        Ok(crate::remote::BulkSettings {
            threshold: self.threshold,
            max_inflight: self.max_inflight_mib.saturating_mul(1 << 20),
            ticket_deadline: self.ticket_deadline,
        })
    }

    /// Where the lane listens, the gossip address's IP by default.
    pub fn listen_addr(
        &self,
        gossip: std::net::SocketAddr,
    ) -> Result<std::net::SocketAddr, ClusterError> {
        match &self.listen {
            None => Ok(std::net::SocketAddr::new(gossip.ip(), 0)),
            Some(a) => crate::node::resolve(a, "bulk.listen"),
        }
    }
}

fn d_name() -> String {
    "node".to_owned()
}
fn d_cluster() -> String {
    "manta".to_owned()
}
fn d_gossip_addr() -> String {
    "127.0.0.1:0".to_owned()
}
fn d_listen() -> String {
    "/ip4/127.0.0.1/tcp/0".to_owned()
}

/// A node's configuration (`manta node --config F`). Every field has a
/// default; command-line flags override the file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Node name (default `"node"`).
    #[serde(default = "d_name")]
    pub name: String,
    /// Cluster name (default `"manta"`).
    #[serde(default = "d_cluster")]
    pub cluster: String,
    /// libp2p listen multiaddr (default `/ip4/127.0.0.1/tcp/0`).
    #[serde(default = "d_listen")]
    pub listen: String,
    /// Gossip `host:port` (default `127.0.0.1:0`).
    #[serde(default = "d_gossip_addr")]
    pub gossip: String,
    /// Seeds, `host:port`.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// Roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Resources.
    #[serde(default)]
    pub resources: Resources,
    /// Cluster secret file; without one the cluster is open.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Run an open cluster (no `secret_file`) on a non-loopback address
    /// anyway (`manta node --insecure`). Without it such a node refuses to
    /// start: anyone who can reach an open cluster can join it and spawn
    /// and stop actors.
    #[serde(default)]
    pub insecure: bool,
    /// Key file (default `manta-<name>.key` in the working directory).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Failure detection.
    #[serde(default)]
    pub failure_detection: FailureDetection,
    /// A supervision tree to run on this node.
    #[serde(default)]
    pub tree: Option<PathBuf>,
    /// A client node (e.g. the driver of `manta train --seeds`) joins, looks
    /// actors up and places them, but is never chosen to host one unless a
    /// placement names it (it gossips the label `manta.client = "true"`).
    #[serde(default)]
    pub client: bool,
    /// Bounds on what one member can make this node hold.
    #[serde(default)]
    pub limits: Limits,
    /// The bulk lane.
    #[serde(default)]
    pub bulk: BulkConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: d_name(),
            cluster: d_cluster(),
            listen: d_listen(),
            gossip: d_gossip_addr(),
            seeds: Vec::new(),
            roles: Vec::new(),
            labels: BTreeMap::new(),
            resources: Resources::default(),
            secret_file: None,
            insecure: false,
            key_file: None,
            failure_detection: FailureDetection::default(),
            tree: None,
            client: false,
            limits: Limits::default(),
            bulk: BulkConfig::default(),
        }
    }
}

impl NodeConfig {
    /// Reads a config file; errors name the file, line and column.
    pub fn load(path: &Path) -> Result<Self, ClusterError> {
        let text = std::fs::read_to_string(path).map_err(|e| ClusterError::File {
            path: path.display().to_string(),
            what: "node config",
            message: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses config text. Errors name the line and column (in characters).
    pub fn parse(text: &str, file: &str) -> Result<Self, ClusterError> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let (line, col) = e.span().map(|s| position(text, s.start)).unwrap_or((0, 0));
            ClusterError::File {
                path: file.to_owned(),
                what: "node config",
                message: format!("{line}:{col}: {}", e.message().trim()),
            }
        })
    }

    /// Checks what the file format alone cannot: [`Node::start`](crate::Node::start)
    /// runs this first, so a config built in code or changed by flags is
    /// held to the same rules.
    ///
    /// - Without a `secret_file`, both listen addresses (the mesh's
    ///   `listen` and `gossip`) must be loopback (127.0.0.0/8, `::1`)
    ///   unless `insecure` is set. An unspecified address (`0.0.0.0`,
    ///   `::`) listens on every interface, so it is not loopback.
    /// - Durations are longer than zero and at most 8760h (a year);
    ///   `phi_threshold` is a positive number.
    /// - `name`, `cluster`, roles and labels contain no control characters
    ///   (they are printed by `manta status` and in logs).
    pub fn validate(&self) -> Result<(), ClusterError> {
        let fd = &self.failure_detection;
        for (field, d) in [
            ("gossip_interval", fd.gossip_interval),
            ("max_interval", fd.max_interval),
            ("dead_node_grace_period", fd.dead_node_grace_period),
        ] {
            if d.is_zero() || d > MAX_DURATION {
                return Err(ClusterError::Config(format!(
                    "failure_detection.{field} is {d:?}; it must be longer than zero and at most 8760h (a year)"
                )));
            }
        }
        check_phi(fd.phi_threshold)
            .map_err(|e| ClusterError::Config(format!("failure_detection.{e}")))?;
        check_printable("node name", &self.name)?;
        check_printable("cluster name", &self.cluster)?;
        for r in &self.roles {
            check_printable("role", r)?;
        }
        for (k, v) in &self.labels {
            check_printable("label name", k)?;
            check_printable("label value", v)?;
        }
        if self.secret_file.is_none() && !self.insecure {
            let mesh: libp2p::Multiaddr = self.listen.parse().map_err(|e| {
                ClusterError::Config(format!("listen address `{}`: {e}", self.listen))
            })?;
            let mesh_ip = match mesh.iter().next() {
                Some(libp2p::multiaddr::Protocol::Ip4(ip)) => Some(IpAddr::V4(ip)),
                Some(libp2p::multiaddr::Protocol::Ip6(ip)) => Some(IpAddr::V6(ip)),
                _ => None,
            };
            if !mesh_ip.is_some_and(is_loopback) {
                return Err(open_on_network("mesh listen address", &self.listen));
            }
            let gossip = crate::node::resolve(&self.gossip, "gossip address")?;
            if !is_loopback(gossip.ip()) {
                return Err(open_on_network("gossip address", &self.gossip));
            }
            if self.bulk.enabled && !is_loopback(self.bulk.listen_addr(gossip)?.ip()) {
                let listen = self.bulk.listen.clone().unwrap_or_default();
                return Err(open_on_network("bulk.listen", &listen));
            }
        }
        if self.bulk.enabled {
            self.bulk.settings()?;
            self.bulk
                .listen_addr(crate::node::resolve(&self.gossip, "gossip address")?)?;
        }
        Ok(())
    }

    /// The key file path.
    pub fn key_path(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("manta-{}.key", self.name)))
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`. An
/// offset inside a character counts as that character.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

fn open_on_network(what: &str, addr: &str) -> ClusterError {
    ClusterError::Config(format!(
        "refusing to listen on {what} `{addr}` without a cluster secret: it is not a loopback \
         address, and anyone who can reach an open cluster can join it and spawn and stop \
         actors. Create a secret with `manta secret FILE` and pass --secret-file FILE \
         (`secret_file` in the config), or pass --insecure (`insecure = true`) to run an \
         open cluster on this address anyway"
    ))
}

/// Refuses text with control characters (ESC, CR, LF, ...): it would reach
/// terminals through `manta status` and logs.
fn check_printable(what: &str, text: &str) -> Result<(), ClusterError> {
    match text.chars().find(|c| c.is_control()) {
        None => Ok(()),
        Some(c) => Err(ClusterError::Config(format!(
            "{what} \"{}\" contains the control character U+{:04X}; names, roles and labels must be printable",
            text.escape_debug(),
            u32::from(c)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c = NodeConfig::parse("", "n.toml").unwrap();
        assert_eq!(c, NodeConfig::default());
        let c = NodeConfig::parse(
            "name = \"a\"\nroles = [\"gpu\"]\n[failure_detection]\ngossip_interval = \"100ms\"\n",
            "n.toml",
        )
        .unwrap();
        assert_eq!(
            c.failure_detection.gossip_interval,
            Duration::from_millis(100)
        );
        let e = NodeConfig::parse("name = \"a\"\nrolez = []\n", "n.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("n.toml") && e.contains("2:1") && e.contains("unknown field `rolez`"),
            "{e}"
        );
        let e = NodeConfig::parse(
            "[failure_detection]\ngossip_interval = \"soon\"\n",
            "n.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("2:19") && e.contains("does not start with a number"),
            "{e}"
        );
    }
}
