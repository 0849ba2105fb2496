//! node-agent: applies and verifies kernel tuning on low-latency trading hosts.
//!
//! Layering (imports point down only): `host` and `profile::types` at the ground;
//! `profile` and `verify`; the knob classes in `tuning`; `cli` on top. The binaries are thin.

pub mod audit;
pub mod certs;
pub mod change;
pub mod cli;
pub mod client;
pub mod daemon;
pub mod failpoint;
pub mod health;
pub mod host;
pub mod metrics;
pub mod profile;
pub mod rollback;
pub mod settings;
pub mod system;
pub mod tomlfile;
pub mod tuning;
pub mod units;
pub mod verify;
