//! Fail points for crash-safety tests: `NODE_AGENT_FAILPOINT=NAME:N` aborts the process (as a
//! kill -9 would, without unwinding or flushing) the N-th time the named point is reached.
//! Unset in production; reading the variable is the only cost.

use std::sync::atomic::{AtomicU32, Ordering};

pub const FAILPOINT_ENV: &str = "NODE_AGENT_FAILPOINT";

static HITS: AtomicU32 = AtomicU32::new(0);

/// True the N-th time `name` is reached while `NODE_AGENT_FAILPOINT=name:N`.
fn triggered(name: &str) -> bool {
    let Some(spec) = std::env::var_os(FAILPOINT_ENV) else {
        return false;
    };
    let spec = spec.to_string_lossy();
    let Some((point, n)) = spec.split_once(':') else {
        return false;
    };
    point == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == n.parse().unwrap_or(1)
}

/// Aborts here if `NODE_AGENT_FAILPOINT` names this point and this is the N-th hit of it.
pub fn hit(name: &str) {
    if triggered(name) {
        std::process::abort();
    }
}

/// An injected I/O error (EIO) instead of aborting: for testing failure handling.
pub fn injected_error(name: &str) -> Option<std::io::Error> {
    triggered(name).then(|| std::io::Error::from_raw_os_error(5))
}
