//! End-to-end harness of node-agent (TESTING.md tiers 3 and up).
//!
//! Today: real systemd under `systemd-nspawn` ([`nspawn`]) and a stand-in trading service whose
//! units the agent will manage over D-Bus ([`standin`]).
//!
//! # Opt-in
//!
//! The tests of this crate that boot containers run only with `NODE_AGENT_SYSTEMD_TESTS=1`, as
//! root; otherwise each of them says on stderr that it was skipped and passes. Switched on and
//! not root, they fail (they do not skip).
//!
//! ```sh
//! NODE_AGENT_SYSTEMD_TESTS=1 cargo test -p node-agent-e2e
//! ```
//!
//! The package tests (tests/tests/package_*.rs, [`package`]) install the .deb and .rpm that
//! `cargo xtask package` built: they have their own switch, `NODE_AGENT_PACKAGE_TESTS=1`.
//!
//! # What the machine needs
//!
//! - Debian packages `systemd-container` (systemd-nspawn) and `debootstrap`, plus util-linux
//!   (`nsenter`, `setsid`) and coreutils (`cp`), which every Debian has. The harness does not
//!   install anything: it fails with the `apt-get install` line when a tool is missing, and
//!   `.ci/run` installs them.
//! - The network to `deb.debian.org` (or `NODE_AGENT_E2E_MIRROR`) once: the first boot builds a
//!   Debian bookworm rootfs with debootstrap (about a minute) and caches it under
//!   `target/e2e-cache/`, or `NODE_AGENT_E2E_CACHE` (see [`nspawn::Rootfs`]); later boots copy
//!   it.
//! - A host whose PID 1 need not be systemd: each container gets its own cgroups
//!   `nspawn-NAME` in the cgroup hierarchies mounted here, and the host talks to the container's
//!   systemd over the container's system bus socket, never with `systemctl` or `machinectl`.
//!
//! # Timings (this VM kind, 2 vCPUs, ext4)
//!
//! Rootfs build 40-75 s (once per cache directory); per container: copy 1.6-3 s, boot to
//! SystemState `running` about 0.3 s, power-off under 0.1 s. Measured by
//! `NODE_AGENT_SYSTEMD_TESTS=1 cargo bench -p node-agent-e2e --bench nspawn`.
//!
//! # Rules the harness keeps
//!
//! Every process it starts is ended by its PID (never by name); every container directory,
//! socket and cgroup it creates is removed on [`nspawn::Container::shutdown`] or drop. Waiting
//! for a container is readiness polling of an external process with a bounded deadline.

pub mod nspawn;
pub mod package;
pub mod standin;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// The switch of the systemd tier.
pub const SYSTEMD_TESTS_ENV: &str = "NODE_AGENT_SYSTEMD_TESTS";

/// True when the systemd tier is switched on (`NODE_AGENT_SYSTEMD_TESTS=1`); otherwise says on
/// stderr that `test` was skipped. Panics when the tier is on but the process is not root: a
/// switched-on tier must not pass by skipping.
pub fn systemd_tests_enabled(test: &str) -> bool {
    if std::env::var(SYSTEMD_TESTS_ENV).as_deref() != Ok("1") {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("{test}: skipped (set {SYSTEMD_TESTS_ENV}=1, as root, to boot containers)");
        }
        return false;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "{SYSTEMD_TESTS_ENV}=1 needs root (systemd-nspawn, cgroups, nsenter)"
    );
    true
}

/// Errors of the harness. Messages say what failed and carry what is needed to see why (the
/// command's stderr, the tail of the container's console).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "`{tool}` not found in PATH: install it (`apt-get install -y {package}`; .ci/run does)"
    )]
    MissingTool {
        tool: &'static str,
        package: &'static str,
    },
    #[error("failed to {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to run {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("failed to {action} over D-Bus: {source}")]
    Bus {
        action: String,
        #[source]
        source: zbus::Error,
    },
    #[error(
        "{what} did not happen within {waited:?}; last seen: {last}\n--- container console (tail) ---\n{console}"
    )]
    Timeout {
        what: String,
        waited: Duration,
        last: String,
        console: String,
    },
    #[error(
        "systemd-nspawn for container {name} exited ({status}) {when}\n--- container console (tail) ---\n{console}"
    )]
    Exited {
        name: String,
        status: String,
        when: &'static str,
        console: String,
    },
    #[error("container name {name} is taken by another test or process ({} is locked)", lock.display())]
    NameTaken { name: String, lock: PathBuf },
    #[error("container {name} is still running from an earlier run (processes in {}): end them by PID, then retry", cgroup.display())]
    InUse { name: String, cgroup: PathBuf },
    #[error("invalid {what} {value:?}: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }

    pub(crate) fn bus(action: impl Into<String>) -> impl FnOnce(zbus::Error) -> Self {
        let action = action.into();
        move |source| Error::Bus { action, source }
    }
}
