//! Node configs that must not start a node: an open cluster on a real
//! network, zero or overlong durations, control characters in names.

use std::time::Duration;

use manta_actors::ActorSystem;
use manta_cluster::{Node, NodeConfig};

fn parse(text: &str) -> NodeConfig {
    NodeConfig::parse(text, "n.toml").unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn refused(config: &NodeConfig) -> String {
    match config.validate() {
        Ok(()) => panic!("accepted {config:#?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn an_open_cluster_on_a_non_loopback_address_is_refused_naming_the_address_and_the_fix() {
    for (text, addr) in [
        ("gossip = \"0.0.0.0:7000\"", "0.0.0.0:7000"),
        ("gossip = \"[::]:0\"", "[::]:0"),
        ("gossip = \"192.0.2.10:0\"", "192.0.2.10:0"),
        (
            "listen = \"/ip4/0.0.0.0/tcp/4001\"",
            "/ip4/0.0.0.0/tcp/4001",
        ),
        ("listen = \"/ip6/::/tcp/0\"", "/ip6/::/tcp/0"),
        (
            "listen = \"/dns4/example.com/tcp/0\"",
            "/dns4/example.com/tcp/0",
        ),
    ] {
        let e = refused(&parse(text));
        assert!(
            e.contains(&format!("`{addr}`")) && e.contains("without a cluster secret"),
            "{text}: {e}"
        );
        assert!(
            e.contains("--insecure") && e.contains("--secret-file") && e.contains("manta secret"),
            "{text}: the error does not say how to fix it: {e}"
        );
    }
}

#[test]
fn loopback_a_secret_or_insecure_lets_a_node_listen() {
    // Loopback, v4 and v6 (and v4-mapped v6), without a secret.
    for text in [
        "",
        "gossip = \"127.0.0.1:0\"\nlisten = \"/ip4/127.0.0.1/tcp/0\"",
        "gossip = \"127.1.2.3:0\"\nlisten = \"/ip4/127.9.9.9/tcp/0\"",
        "gossip = \"[::1]:0\"\nlisten = \"/ip6/::1/tcp/0\"",
        "gossip = \"[::ffff:127.0.0.1]:0\"",
    ] {
        parse(text)
            .validate()
            .unwrap_or_else(|e| panic!("{text:?}: {e}"));
    }
    let open = "gossip = \"0.0.0.0:0\"\nlisten = \"/ip4/0.0.0.0/tcp/0\"\n";
    // With a secret (validate does not read the file; Node::start does).
    parse(&format!("{open}secret_file = \"cluster.secret\"\n"))
        .validate()
        .unwrap();
    // Deliberately open.
    let c = parse(&format!("{open}insecure = true\n"));
    assert!(c.insecure);
    c.validate().unwrap();
    let c = NodeConfig {
        gossip: "0.0.0.0:0".into(),
        insecure: true,
        ..NodeConfig::default()
    };
    c.validate().unwrap();
}

#[tokio::test]
async fn node_start_refuses_an_open_cluster_on_every_interface_before_touching_disk() {
    let dir = std::env::temp_dir().join(format!("manta-cfg-open-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("n.key");
    let config = NodeConfig {
        gossip: "0.0.0.0:0".into(),
        key_file: Some(key.clone()),
        ..NodeConfig::default()
    };
    let e = Node::start(config, ActorSystem::new())
        .await
        .expect_err("an open node on 0.0.0.0 started")
        .to_string();
    assert!(e.contains("`0.0.0.0:0`") && e.contains("--insecure"), "{e}");
    assert!(!key.exists(), "the refused node created its key file");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn zero_and_overlong_durations_are_refused_with_their_position() {
    for (value, needle) in [
        ("\"0ms\"", "must be longer than zero"),
        ("\"0s\"", "must be longer than zero"),
        ("\"0.0000000001ms\"", "must be longer than zero"),
        ("\"8761h\"", "longer than the limit of 8760h"),
        ("\"4000000000000000h\"", "longer than the limit of 8760h"),
    ] {
        for field in ["gossip_interval", "max_interval", "dead_node_grace_period"] {
            let text = format!("[failure_detection]\n{field} = {value}\n");
            let e = NodeConfig::parse(&text, "n.toml")
                .expect_err(&text)
                .to_string();
            let at = format!("2:{}:", field.len() + 4);
            assert!(e.contains(&at) && e.contains(needle), "{text}: {e}");
        }
    }
    for phi in ["0", "-1.0", "nan", "inf"] {
        let text = format!("[failure_detection]\nphi_threshold = {phi}\n");
        let e = NodeConfig::parse(&text, "n.toml")
            .expect_err(&text)
            .to_string();
        assert!(
            e.contains("2:17:") && e.contains("positive number"),
            "{text}: {e}"
        );
    }
    // A config built in code is held to the same rules.
    let mut c = NodeConfig::default();
    c.failure_detection.gossip_interval = Duration::ZERO;
    let e = refused(&c);
    assert!(
        e.contains("gossip_interval") && e.contains("longer than zero"),
        "{e}"
    );
    let mut c = NodeConfig::default();
    c.failure_detection.dead_node_grace_period = Duration::MAX;
    let e = refused(&c);
    assert!(e.contains("dead_node_grace_period"), "{e}");
}

#[tokio::test]
async fn node_start_refuses_a_zero_gossip_interval_instead_of_panicking_in_a_task() {
    let dir = std::env::temp_dir().join(format!("manta-cfg-zero-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = NodeConfig {
        key_file: Some(dir.join("n.key")),
        ..NodeConfig::default()
    };
    config.failure_detection.gossip_interval = Duration::ZERO;
    let e = Node::start(config, ActorSystem::new())
        .await
        .expect_err("a node with a zero gossip interval started")
        .to_string();
    assert!(e.contains("gossip_interval"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn names_roles_and_labels_with_control_characters_are_refused() {
    let esc = "evil\u{1b}[2J\u{1b}]0;owned\u{7}";
    let configs = [
        NodeConfig {
            name: esc.into(),
            ..NodeConfig::default()
        },
        NodeConfig {
            cluster: "a\rb".into(),
            ..NodeConfig::default()
        },
        NodeConfig {
            roles: vec!["gpu".into(), "x\ny".into()],
            ..NodeConfig::default()
        },
        NodeConfig {
            labels: [("zone".to_owned(), "eu\u{9b}1".to_owned())].into(),
            ..NodeConfig::default()
        },
        NodeConfig {
            labels: [("zo\u{7f}ne".to_owned(), "eu".to_owned())].into(),
            ..NodeConfig::default()
        },
    ];
    for c in &configs {
        let e = refused(c);
        assert!(e.contains("control character U+"), "{e}");
        assert!(
            !e.chars().any(|c| c.is_control()),
            "the error repeats the control character: {e:?}"
        );
    }
    let e = refused(&configs[0]);
    assert!(
        e.contains("node name") && e.contains("U+001B") && e.contains(r"evil\u{1b}[2J"),
        "{e}"
    );
    // Printable non-ASCII is fine.
    NodeConfig {
        name: "nœud-é-😀".into(),
        ..NodeConfig::default()
    }
    .validate()
    .unwrap();
}

#[test]
fn config_error_columns_count_characters_not_bytes() {
    // `é` and `😀` are 2 and 4 bytes: the bad value `1` is character 28
    // of line 2, byte 32.
    let text = "name = \"a\"\nlabels = { \"é😀\" = \"x\", b = 1 }\n";
    let e = NodeConfig::parse(text, "n.toml").unwrap_err().to_string();
    assert!(e.contains("n.toml") && e.contains("2:28:"), "{e}");
}
