//! node-collector: polls every node-agent of an inventory over mutual TLS, keeps the latest
//! state of each host and a history of drift transitions and reachability in SQLite, and shows
//! the fleet: `poll --once` for cron and scripts, `serve` for the Prometheus endpoint and the
//! `nodeagent.fleet.v1.Fleet` gRPC service that `agentctl fleet status` reads.
//!
//! Layering: `config` and `inventory` (validated at the boundary, errors with file:line:column
//! and key) → `store` (SQLite) and `poll` (the agents' client side) → `fleet` (state and
//! transitions) → `metrics`, `server` (the gRPC shell) → `cli`. The binary is thin.

pub mod cli;
pub mod config;
pub mod fake;
pub mod fleet;
pub mod inventory;
pub mod metrics;
pub mod poll;
pub mod server;
pub mod store;

/// The collector's version (its package version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
