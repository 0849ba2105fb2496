//! node-agentd: the daemon. It verifies the active profile on an interval, reports drift
//! transitions, re-applies in enforce mode, and serves the gRPC API. The pieces below are plain
//! library code; the RPC layer is a thin shell over them.

pub mod auth;
pub mod convert;
pub mod drift;
pub mod enforce;
pub mod listen;
pub mod privileges;
pub mod run;
pub mod server;
pub mod service;
