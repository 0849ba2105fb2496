//! The shipped example files parse as they are, and the unit stays hardened.

use std::path::Path;

use node_collector::config::Config;
use node_collector::inventory::Inventory;

fn repo(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
}

#[test]
fn example_config_parses_with_loopback_listeners() {
    let path = repo("packaging/collector/collector.toml");
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.listen.metrics.ip().is_loopback());
    assert!(c.listen.grpc.ip().is_loopback());
    assert!(c.server_tls().is_ok());
    assert!(c.poll.watch);
    assert_eq!(
        c.poll,
        node_collector::config::Poll::default(),
        "the example shows the defaults"
    );
    assert_eq!(c.store.path, Path::new("/var/lib/node-collector/fleet.db"));
    assert_eq!(c.inventory, Path::new("/etc/node-collector/inventory.toml"));
}

#[test]
fn example_inventory_parses() {
    let path = repo("packaging/collector/inventory.example.toml");
    let inv = Inventory::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(inv.hosts.len(), 3);
    assert!(inv.hosts.iter().all(|h| h.labels["site"] == "ld4"));
    assert_eq!(inv.hosts[2].server_name, "md-ld4-r02-01.trading.example");
}

#[test]
fn installed_inventory_is_valid_and_empty() {
    let path = repo("packaging/collector/inventory.toml");
    let inv = Inventory::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        inv.hosts.is_empty(),
        "the installed inventory polls nothing until edited"
    );
}

#[test]
fn unit_is_hardened_and_unprivileged() {
    let text = std::fs::read_to_string(repo("systemd/node-collector.service")).unwrap();
    for line in [
        "Type=notify",
        "DynamicUser=yes",
        "User=node-collector",
        "StateDirectory=node-collector",
        "CapabilityBoundingSet=\n",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RestartPreventExitStatus=2",
    ] {
        assert!(text.contains(line), "node-collector.service lacks {line:?}");
    }
    // The state directory the unit creates is the default database's.
    assert!(node_collector::config::DEFAULT_DB.starts_with("/var/lib/node-collector/"));
}
