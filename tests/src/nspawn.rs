//! Real systemd under `systemd-nspawn`, driven from the host over the container's system bus.
//!
//! - [`Rootfs::cached`] builds a Debian bookworm minbase rootfs with debootstrap once per machine
//!   (a completion marker guards against half-built caches; concurrent callers serialise on a
//!   file lock) under `target/e2e-cache/`.
//! - [`Container::boot`] copies it, gives the container its own cgroups (`nspawn-NAME` in every
//!   cgroup hierarchy systemd uses: the named v1 `systemd` one and/or the unified one), starts
//!   `systemd-nspawn -b` in its own session and waits until the container's systemd reports
//!   `SystemState` `running` or `degraded` over `unix:path=STATE/bus/system_bus_socket`.
//! - [`Container::shutdown`] (or drop) powers it off over the bus, falls back to killing by PID,
//!   and removes the copy, the socket and the cgroups.
//!
//! The host's PID 1 need not be systemd: nothing here uses `systemctl` or `machinectl` on the host
//! (`--register=no --keep-unit`), and commands inside run through `nsenter` into the container's
//! init.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use zbus_systemd::systemd1::ManagerProxy;

use crate::{Error, Result};

/// The Debian release of the cached rootfs.
pub const SUITE: &str = "bookworm";
/// Packages debootstrap adds to minbase.
pub const INCLUDE: &str = "systemd,systemd-sysv,dbus,libpam-systemd,iproute2,procps";
/// Mirror used unless `NODE_AGENT_E2E_MIRROR` names another.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Overrides the cache directory (default `<target>/e2e-cache`).
pub const CACHE_ENV: &str = "NODE_AGENT_E2E_CACHE";
/// Overrides the Debian mirror of the rootfs build.
pub const MIRROR_ENV: &str = "NODE_AGENT_E2E_MIRROR";

/// Units masked in the cached rootfs: timers that would run apt, fstrim or e2scrub in the middle
/// of a test, and the getty on the (passive) console.
const MASKED_UNITS: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "console-getty.service",
];

/// Bumped when what [`Rootfs::cached`] builds changes; a cache built by another recipe is rebuilt.
const RECIPE_VERSION: u32 = 1;

/// PATH of commands run inside the container.
const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Time a single D-Bus call of the harness may take (the container answers in milliseconds).
const BUS_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// After a forced kill, how long to wait for `systemd-nspawn` to exit.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// When PowerOff returned an error, how long to wait for the container to exit anyway.
const POWER_OFF_ERROR_WAIT: Duration = Duration::from_secs(5);

fn recipe() -> String {
    format!(
        "node-agent-e2e rootfs v{RECIPE_VERSION}: debootstrap --variant=minbase --include={INCLUDE} {SUITE}; \
         masked {}; empty machine-id; no hostname\n",
        MASKED_UNITS.join(",")
    )
}

// ---------------------------------------------------------------------------------------------
// Locations

/// The workspace's target directory, as the tests see it: the parent of `CARGO_TARGET_TMPDIR`
/// when set at run time, then `CARGO_TARGET_DIR`, then `target/` of this workspace.
pub fn target_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new(env!("CARGO_MANIFEST_DIR")))
        .to_path_buf();
    if let Some(tmp) = std::env::var_os("CARGO_TARGET_TMPDIR")
        && let Some(target) = Path::new(&tmp).parent()
    {
        return workspace.join(target);
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return workspace.join(dir);
    }
    workspace.join("target")
}

/// Where the rootfs (and debootstrap's .deb cache) is kept: `NODE_AGENT_E2E_CACHE`, else
/// `<target>/e2e-cache`.
/// This build's binary `name` (agentctl, node-agentd) to install into containers: from
/// `NODE_AGENT_E2E_BIN_DIR` when set (e.g. a release build for a measurement), else
/// target/debug. Panics saying how to build it when it is missing.
pub fn agent_binary(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("NODE_AGENT_E2E_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug"));
    let path = dir.join(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: build it first (cargo build -p node-agent; cargo test --workspace does)",
            path.display()
        )
    })
}

pub fn cache_dir() -> PathBuf {
    match std::env::var_os(CACHE_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => target_dir().join("e2e-cache"),
    }
}

/// Where containers' state lives while they run: `<target>/e2e-containers/NAME/{rootfs,bus,
/// console.log}` and the per-name lock `NAME.lock`.
pub fn containers_dir() -> PathBuf {
    target_dir().join("e2e-containers")
}

/// Fails with the `apt-get install` line when `tool` is not in PATH.
pub fn require_tool(tool: &'static str, package: &'static str) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| {
        fs::metadata(dir.join(tool))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    });
    if found {
        Ok(())
    } else {
        Err(Error::MissingTool { tool, package })
    }
}

// ---------------------------------------------------------------------------------------------
// Rootfs cache

/// The cached Debian rootfs every container is copied from. Never boot it directly.
#[derive(Debug, Clone)]
pub struct Rootfs {
    path: PathBuf,
}

impl Rootfs {
    /// The cached rootfs in [`cache_dir`], built first if absent or built by another recipe.
    /// Takes about a minute the first time on this VM kind (network to the Debian mirror),
    /// milliseconds afterwards.
    pub fn cached() -> Result<Rootfs> {
        Self::cached_in(&cache_dir())
    }

    /// The cached rootfs in `cache`: `rootfs-bookworm/` is used only when the marker
    /// `rootfs-bookworm.complete` holds this recipe, so an interrupted build is never used.
    /// Callers in this and other processes serialise on `rootfs-bookworm.lock`.
    pub fn cached_in(cache: &Path) -> Result<Rootfs> {
        fs::create_dir_all(cache).map_err(Error::io("create", cache))?;
        // debootstrap needs an absolute --cache-dir.
        let cache = fs::canonicalize(cache).map_err(Error::io("resolve", cache))?;
        let lock_path = cache.join(format!("rootfs-{SUITE}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(Error::io("open", &lock_path))?;
        lock.lock().map_err(Error::io("lock", &lock_path))?;

        let path = cache.join(format!("rootfs-{SUITE}"));
        let marker = cache.join(format!("rootfs-{SUITE}.complete"));
        let complete = fs::read_to_string(&marker).is_ok_and(|m| m == recipe());
        if !(complete && path.join("usr/lib/systemd/systemd").is_file()) {
            build_rootfs(&cache, &path, &marker)?;
        }
        drop(lock);
        Ok(Rootfs { path })
    }

    /// The rootfs directory (read-only by convention).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn build_rootfs(cache: &Path, path: &Path, marker: &Path) -> Result<()> {
    require_tool("debootstrap", "debootstrap")?;
    remove_file_if_exists(marker)?;
    remove_dir_all_if_exists(path)?;
    let partial = cache.join(format!("rootfs-{SUITE}.partial"));
    remove_dir_all_if_exists(&partial)?;
    let debs = cache.join("debs");
    fs::create_dir_all(&debs).map_err(Error::io("create", &debs))?;

    let mirror = std::env::var(MIRROR_ENV).unwrap_or_else(|_| DEFAULT_MIRROR.to_owned());
    let log_path = cache.join("debootstrap.log");
    let log = File::create(&log_path).map_err(Error::io("create", &log_path))?;
    let log_err = log.try_clone().map_err(Error::io("duplicate", &log_path))?;
    let mut cmd = Command::new("debootstrap");
    cmd.arg("--variant=minbase")
        .arg(format!("--include={INCLUDE}"))
        .arg(format!("--cache-dir={}", debs.display()))
        .arg(SUITE)
        .arg(&partial)
        .arg(&mirror)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    let command = format!("debootstrap {SUITE} {} {mirror}", partial.display());
    let status = cmd.status().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    if !status.success() {
        let mut stderr = tail(&log_path, 3000);
        let inner = partial.join("debootstrap/debootstrap.log");
        if inner.exists() {
            stderr.push_str("\n--- debootstrap/debootstrap.log (tail) ---\n");
            stderr.push_str(&tail(&inner, 3000));
        }
        return Err(Error::Command {
            command,
            status,
            stderr,
        });
    }

    configure_rootfs(&partial)?;
    fs::rename(&partial, path).map_err(Error::io("rename into place", path))?;
    let mut m = File::create(marker).map_err(Error::io("create", marker))?;
    m.write_all(recipe().as_bytes())
        .and_then(|()| m.sync_all())
        .map_err(Error::io("write", marker))?;
    Ok(())
}

/// What the cached rootfs gets on top of debootstrap.
fn configure_rootfs(root: &Path) -> Result<()> {
    // Empty machine-id: each boot gets its own (from the container UUID nspawn passes), without
    // counting as a first boot.
    let machine_id = root.join("etc/machine-id");
    fs::write(&machine_id, "").map_err(Error::io("truncate", &machine_id))?;
    // debootstrap copies the host's /etc/hostname; without one, the container keeps the
    // hostname nspawn gives it: the machine name.
    remove_file_if_exists(&root.join("etc/hostname"))?;
    for unit in MASKED_UNITS {
        let link = root.join("etc/systemd/system").join(unit);
        remove_file_if_exists(&link)?;
        symlink("/dev/null", &link).map_err(Error::io("mask", &link))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Container

/// How to boot a container. `BootOptions::default()` is a plain container with only loopback
/// networking (`--private-network`).
#[derive(Debug, Clone)]
pub struct BootOptions {
    binds: Vec<(PathBuf, String, bool)>,
    capabilities: Vec<String>,
    network_namespace: Option<PathBuf>,
    extra_args: Vec<String>,
    boot_timeout: Duration,
    shutdown_timeout: Duration,
}

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            binds: Vec::new(),
            capabilities: Vec::new(),
            network_namespace: None,
            extra_args: Vec::new(),
            boot_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

impl BootOptions {
    /// Same as `BootOptions::default()`.
    pub fn new() -> Self {
        Self::default()
    }

    /// `--bind=HOST:CONTAINER`: the host directory or file is visible at `container` inside.
    pub fn bind(mut self, host: impl Into<PathBuf>, container: &str) -> Self {
        self.binds.push((host.into(), container.to_owned(), false));
        self
    }

    /// `--bind-ro=HOST:CONTAINER`.
    pub fn bind_ro(mut self, host: impl Into<PathBuf>, container: &str) -> Self {
        self.binds.push((host.into(), container.to_owned(), true));
        self
    }

    /// `--capability=CAP`: keep a capability nspawn drops by default (e.g. `CAP_NET_ADMIN`,
    /// `CAP_SYS_RAWIO`) for what a daemon under test needs. Capabilities missing from the host's
    /// own bounding set cannot be granted (on this VM kind: `CAP_SYS_RESOURCE`).
    pub fn capability(mut self, capability: &str) -> Self {
        self.capabilities.push(capability.to_owned());
        self
    }

    /// `--network-namespace-path=PATH` instead of `--private-network` (multi-host tests).
    pub fn network_namespace(mut self, path: impl Into<PathBuf>) -> Self {
        self.network_namespace = Some(path.into());
        self
    }

    /// Any other `systemd-nspawn` argument, passed as is.
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_owned());
        self
    }

    /// Deadline for SystemState `running`/`degraded` (default 60 s; boots take about a second).
    pub fn boot_timeout(mut self, timeout: Duration) -> Self {
        self.boot_timeout = timeout;
        self
    }

    /// Deadline for the container to exit after PowerOff before it is killed (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }
}

/// What [`Container::boot`] measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootTimings {
    /// Copying the cached rootfs (`cp -a --reflink=auto`).
    pub copy: Duration,
    /// From starting systemd-nspawn to SystemState `running`/`degraded` over the bus.
    pub boot: Duration,
}

/// `systemd-nspawn` as a child of the test process, reaped by a waiter thread.
#[derive(Debug)]
struct Nspawn {
    pid: u32,
    exit: Receiver<std::io::Result<ExitStatus>>,
    /// Set once it exited: how (exit status, or why it could not be waited for).
    status: Option<String>,
}

/// A booted container: Debian bookworm with systemd as PID 1, its system bus reachable from the
/// host at [`Container::bus_address`]. Dropping it powers it off and removes everything it
/// created; call [`Container::shutdown`] to see errors.
#[derive(Debug)]
pub struct Container {
    name: String,
    dir: PathBuf,
    root: PathBuf,
    bus_dir: PathBuf,
    console: PathBuf,
    cgroups: Vec<PathBuf>,
    nspawn: Mutex<Option<Nspawn>>,
    leader: u32,
    shutdown_timeout: Duration,
    timings: BootTimings,
    down: bool,
    /// Held while the container exists: one container per name across threads and processes.
    _name_lock: File,
}

impl Container {
    /// Boots container `name` (lowercase letters, digits and `-`; unique among concurrently
    /// running tests) from [`Rootfs::cached`] and waits until its systemd reports SystemState
    /// `running` or `degraded`.
    ///
    /// Leftovers of an earlier run of the same name (directory, idle cgroups) are removed first;
    /// if processes of it still run, this fails with [`Error::InUse`] rather than killing them.
    pub fn boot(name: &str, options: BootOptions) -> Result<Container> {
        validate_name(name)?;
        for (tool, package) in [
            ("systemd-nspawn", "systemd-container"),
            ("nsenter", "util-linux"),
            ("setsid", "util-linux"),
            ("cp", "coreutils"),
        ] {
            require_tool(tool, package)?;
        }
        for (host, dest, _) in &options.binds {
            if host.to_string_lossy().contains(':') || dest.contains(':') || !dest.starts_with('/')
            {
                return Err(Error::Invalid {
                    what: "bind",
                    value: format!("{}:{dest}", host.display()),
                    why: "paths must not contain ':' and the container path must be absolute",
                });
            }
        }
        let rootfs = Rootfs::cached()?;

        let base = containers_dir();
        fs::create_dir_all(&base).map_err(Error::io("create", &base))?;
        let lock_path = base.join(format!("{name}.lock"));
        let name_lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(Error::io("open", &lock_path))?;
        match name_lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(Error::NameTaken {
                    name: name.to_owned(),
                    lock: lock_path,
                });
            }
            Err(TryLockError::Error(e)) => return Err(Error::io("lock", &lock_path)(e)),
        }

        let dir = base.join(name);
        let cgroups = cgroup_dirs(name)?;
        clear_stale(name, &dir, &cgroups)?;

        let mut container = Container {
            name: name.to_owned(),
            root: dir.join("rootfs"),
            bus_dir: dir.join("bus"),
            console: dir.join("console.log"),
            dir,
            cgroups,
            nspawn: Mutex::new(None),
            leader: 0,
            shutdown_timeout: options.shutdown_timeout,
            timings: BootTimings {
                copy: Duration::ZERO,
                boot: Duration::ZERO,
            },
            down: false,
            _name_lock: name_lock,
        };
        // From here on, an error drops `container`, which removes what was created.
        container.start(&rootfs, &options)?;
        Ok(container)
    }

    fn start(&mut self, rootfs: &Rootfs, options: &BootOptions) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(Error::io("create", &self.dir))?;
        let copy_started = Instant::now();
        run(Command::new("cp")
            .arg("-a")
            .arg("--reflink=auto")
            .arg(rootfs.path())
            .arg(&self.root))?;
        self.timings.copy = copy_started.elapsed();
        fs::create_dir(&self.bus_dir).map_err(Error::io("create", &self.bus_dir))?;
        for cgroup in &self.cgroups {
            fs::create_dir(cgroup).map_err(Error::io("create cgroup", cgroup))?;
        }

        let console = File::create(&self.console).map_err(Error::io("create", &self.console))?;
        let console_err = console
            .try_clone()
            .map_err(Error::io("duplicate", &self.console))?;

        // The child moves itself into the container's cgroups and then becomes systemd-nspawn
        // (exec keeps the PID), so the test process stays where it is. A shell does this instead
        // of a pre_exec hook because the workspace forbids unsafe code. setsid(1) starts a new
        // session in the same process: the child is not a process group leader, so it does not
        // fork (checked below: the PID we hold is systemd-nspawn's).
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"while [ "$1" != -- ]; do echo $$ >"$1" || exit 125; shift; done; shift; exec "$@""#)
            .arg("sh");
        for cgroup in &self.cgroups {
            cmd.arg(cgroup.join("cgroup.procs"));
        }
        cmd.arg("--").arg("setsid").arg("systemd-nspawn").args([
            "--boot",
            "--register=no",
            "--keep-unit",
            "--console=passive",
        ]);
        cmd.arg("--directory").arg(&self.root);
        cmd.arg(format!("--machine={}", self.name));
        cmd.arg(format!("--bind={}:/run/dbus", self.bus_dir.display()));
        match &options.network_namespace {
            Some(path) => cmd.arg(format!("--network-namespace-path={}", path.display())),
            None => cmd.arg("--private-network"),
        };
        for (host, dest, ro) in &options.binds {
            let flag = if *ro { "--bind-ro" } else { "--bind" };
            cmd.arg(format!("{flag}={}:{dest}", host.display()));
        }
        for cap in &options.capabilities {
            cmd.arg(format!("--capability={cap}"));
        }
        cmd.args(&options.extra_args);
        cmd.stdin(Stdio::null())
            .stdout(console)
            .stderr(console_err)
            .env("SYSTEMD_LOG_COLOR", "0");

        let boot_started = Instant::now();
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            command: "systemd-nspawn".to_owned(),
            source,
        })?;
        self.adopt(child)?;
        self.wait_ready(options.boot_timeout)?;
        self.timings.boot = boot_started.elapsed();
        self.leader = self.find_leader()?;
        Ok(())
    }

    /// Hands `child` to a waiter thread, which reaps it and reports its exit on a channel.
    fn adopt(&mut self, mut child: Child) -> Result<()> {
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::Builder::new()
            .name(format!("nspawn-{}", self.name))
            .spawn(move || {
                let _ = tx.send(child.wait());
            });
        if let Err(e) = waiter {
            // The child would run unsupervised: end it now (by its PID) before failing.
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            return Err(Error::Other(format!(
                "failed to start the nspawn waiter thread: {e}"
            )));
        }
        *self.lock_nspawn() = Some(Nspawn {
            pid,
            exit: rx,
            status: None,
        });
        Ok(())
    }

    fn lock_nspawn(&self) -> std::sync::MutexGuard<'_, Option<Nspawn>> {
        self.nspawn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits up to `timeout` for systemd-nspawn to exit; `Some(how)` once it has (also if it had
    /// before), `None` while it runs (or was never started: see [`Self::nspawn_pid`]).
    fn wait_exit(&self, timeout: Duration) -> Option<String> {
        let mut guard = self.lock_nspawn();
        let nspawn = guard.as_mut()?;
        if nspawn.status.is_none() {
            nspawn.status = match nspawn.exit.recv_timeout(timeout) {
                Ok(Ok(status)) => Some(status.to_string()),
                Ok(Err(e)) => Some(format!("could not be waited for: {e}")),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some("waiter thread gone".to_owned()),
            };
        }
        nspawn.status.clone()
    }

    fn nspawn_pid(&self) -> Option<u32> {
        self.lock_nspawn().as_ref().map(|n| n.pid)
    }

    /// Polls SystemState over the container's bus until `running` or `degraded`.
    ///
    /// This is readiness polling of an external process (the container's systemd has no way to
    /// tell the host it is up), bounded by `timeout`. Between attempts it waits on the nspawn
    /// exit channel, so a container that dies ends the wait at once.
    fn wait_ready(&self, timeout: Duration) -> Result<String> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut backoff = Duration::from_millis(10);
        let mut last = "no bus socket yet".to_owned();
        let address = self.bus_address();
        loop {
            if self.bus_socket().exists() {
                match block_on(manager_call(&address, "get SystemState", |m| async move {
                    m.system_state().await
                })) {
                    Ok(state) if state == "running" || state == "degraded" => return Ok(state),
                    Ok(state) if state == "initializing" || state == "starting" => {
                        last = format!("SystemState {state}");
                    }
                    Ok(state) => {
                        return Err(Error::Other(format!(
                            "container {} reached SystemState {state} while booting\n--- console ---\n{}",
                            self.name,
                            self.console_log()
                        )));
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    what: format!("SystemState running/degraded in container {}", self.name),
                    waited: now - started,
                    last,
                    console: self.console_log(),
                });
            }
            if let Some(status) = self.wait_exit(backoff.min(deadline - now)) {
                return Err(Error::Exited {
                    name: self.name.clone(),
                    status,
                    when: "while booting",
                    console: self.console_log(),
                });
            }
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }

    /// The container's init as seen from the host: the one child of systemd-nspawn, PID 1 in its
    /// own PID namespace.
    fn find_leader(&self) -> Result<u32> {
        let nspawn = self
            .nspawn_pid()
            .ok_or_else(|| Error::Other("systemd-nspawn not started".to_owned()))?;
        let comm = fs::read_to_string(format!("/proc/{nspawn}/comm")).unwrap_or_default();
        if comm.trim_end() != "systemd-nspawn" {
            return Err(Error::Other(format!(
                "PID {nspawn} is {:?}, not systemd-nspawn: setsid forked?",
                comm.trim_end()
            )));
        }
        let mut leaders = Vec::new();
        let tasks = format!("/proc/{nspawn}/task");
        for task in fs::read_dir(&tasks).map_err(Error::io("list", &tasks))? {
            let task = task.map_err(Error::io("list", &tasks))?;
            let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for pid in children
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
            {
                let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let ns_pid_is_1 = status
                    .lines()
                    .find_map(|l| l.strip_prefix("NSpid:"))
                    .and_then(|l| l.split_whitespace().last())
                    == Some("1");
                if ns_pid_is_1 {
                    leaders.push(pid);
                }
            }
        }
        match leaders.as_slice() {
            [pid] => Ok(*pid),
            other => Err(Error::Other(format!(
                "expected one container init under systemd-nspawn {nspawn}, found {other:?}"
            ))),
        }
    }

    /// The machine name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `unix:path=<state>/bus/system_bus_socket`: the container's system bus, where its systemd
    /// is `org.freedesktop.systemd1`. EXTERNAL authentication as uid 0 works.
    pub fn bus_address(&self) -> String {
        format!("unix:path={}", self.bus_socket().display())
    }

    fn bus_socket(&self) -> PathBuf {
        self.bus_dir.join("system_bus_socket")
    }

    /// A new connection to the container's system bus, on the caller's tokio runtime, with a
    /// 30 s method-call timeout.
    pub async fn connect(&self) -> Result<zbus::Connection> {
        connect(&self.bus_address(), Duration::from_secs(30)).await
    }

    /// The container's PID 1 (its systemd) as seen from the host.
    pub fn leader_pid(&self) -> u32 {
        self.leader
    }

    /// The container's root directory on the host (a private copy of the cached rootfs).
    /// /tmp and /run are tmpfs inside: files under them here are hidden from the container.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What boot measured.
    pub fn timings(&self) -> BootTimings {
        self.timings
    }

    /// Runs `args` inside the container (all its namespaces, through `nsenter -t LEADER -a`),
    /// with a clean environment (`PATH`, `LC_ALL=C`), and returns its output whatever its exit
    /// status.
    pub fn exec<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("nsenter");
        cmd.arg("--target")
            .arg(self.leader.to_string())
            .arg("--all")
            .arg("--")
            .args(args)
            .env_clear()
            .env("PATH", CONTAINER_PATH)
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        cmd.output().map_err(|source| Error::Spawn {
            command: describe(&cmd),
            source,
        })
    }

    /// Runs `args` inside: exit code (-1 when killed), stdout, stderr; panics only when the
    /// command cannot be started at all.
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self
            .exec(args)
            .unwrap_or_else(|e| panic!("{args:?} in {}: {e}", self.name));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// What an operator would look at when node-agentd misbehaves: its status and the last
    /// `lines` of its journal.
    pub fn node_agentd_diagnosis(&self, lines: u32) -> String {
        let (_, status, _) =
            self.run(&["systemctl", "status", "--no-pager", "--full", "node-agentd"]);
        let n = lines.to_string();
        let (_, journal, _) =
            self.run(&["journalctl", "--no-pager", "-u", "node-agentd", "-n", &n]);
        format!("--- systemctl status ---\n{status}--- journalctl -u node-agentd ---\n{journal}")
    }

    /// Like [`Self::exec`], but a non-zero exit status is an error; returns stdout.
    pub fn exec_ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let output = self.exec(&args)?;
        if !output.status.success() {
            return Err(Error::Command {
                command: format!(
                    "{:?} in container {}",
                    args.iter()
                        .map(|a| a.to_string_lossy())
                        .collect::<Vec<_>>()
                        .join(" "),
                    self.name
                ),
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The host path of `path` inside the container (absolute, without `.` or `..`), refusing
    /// paths that cross a symlink (an absolute link would resolve on the host, e.g. /var/run)
    /// and paths under mounts the container puts over its root (/tmp, /run, /dev, /proc, /sys).
    pub fn host_path(&self, path: &str) -> Result<PathBuf> {
        host_path(&self.root, path)
    }

    /// Writes `content` to `path` inside the container (through [`Self::root`]), creating parent
    /// directories, with permission bits `mode`.
    pub fn write_file(&self, path: &str, content: impl AsRef<[u8]>, mode: u32) -> Result<()> {
        let host = self.host_path(path)?;
        if let Some(parent) = host.parent() {
            fs::create_dir_all(parent).map_err(Error::io("create", parent))?;
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&host)
            .map_err(Error::io("open", &host))?;
        file.write_all(content.as_ref())
            .map_err(Error::io("write", &host))?;
        // `mode` at creation is filtered by the umask and ignored for an existing file.
        fs::set_permissions(&host, fs::Permissions::from_mode(mode))
            .map_err(Error::io("chmod", &host))
    }

    /// Reads `path` inside the container (through [`Self::root`]); `None` when it does not exist.
    pub fn read_file(&self, path: &str) -> Result<Option<String>> {
        let host = self.host_path(path)?;
        match fs::read_to_string(&host) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", &host)(e)),
        }
    }

    /// `systemctl daemon-reload` over the bus (Manager.Reload, which answers once the reload is
    /// done).
    pub fn daemon_reload(&self) -> Result<()> {
        block_on(manager_call(
            &self.bus_address(),
            "reload systemd",
            |m| async move { m.reload().await },
        ))
    }

    /// The last 4 KiB of what systemd-nspawn and the container's console printed.
    pub fn console_log(&self) -> String {
        tail(&self.console, 4096)
    }

    /// Powers the container off over the bus (Manager.PowerOff) and waits for systemd-nspawn to
    /// exit, then removes the socket, the cgroups and the state directory (rootfs copy included).
    /// Returns how long the power-off took. When PowerOff fails or times out, the container is
    /// killed by PID (its init, then systemd-nspawn), cleaned up all the same, and this returns
    /// the error. Idempotent; drop calls it.
    pub fn shutdown(&mut self) -> Result<Duration> {
        if self.down {
            return Ok(Duration::ZERO);
        }
        self.down = true;
        let mut problems = Vec::new();
        let started = Instant::now();
        let running = self.nspawn_pid().is_some() && self.wait_exit(Duration::ZERO).is_none();
        if running {
            self.stop(&mut problems);
        }
        let took = started.elapsed();
        // The console goes with the state directory: keep its tail for the error.
        let console = if problems.is_empty() {
            String::new()
        } else {
            self.console_log()
        };
        self.cleanup(&mut problems);
        if problems.is_empty() {
            Ok(took)
        } else {
            Err(Error::Other(format!(
                "shutdown of container {}: {}\n--- console (tail) ---\n{console}",
                self.name,
                problems.join("; "),
            )))
        }
    }

    /// Ends the running container: PowerOff over the bus, else by PID.
    fn stop(&self, problems: &mut Vec<String>) {
        let powered_off = block_on(manager_call(
            &self.bus_address(),
            "power off",
            |m| async move { m.power_off().await },
        ));
        // An error may only mean that systemd closed the connection before its reply left: give
        // the container a short while to exit all the same.
        let wait = match &powered_off {
            Ok(()) => self.shutdown_timeout,
            Err(_) => POWER_OFF_ERROR_WAIT.min(self.shutdown_timeout),
        };
        if self.wait_exit(wait).is_some() {
            return;
        }
        problems.push(match powered_off {
            Ok(()) => {
                format!("systemd-nspawn did not exit within {wait:?} of PowerOff: killed by PID")
            }
            Err(e) => format!("{e}: killed by PID"),
        });
        // Forced: SIGKILL the container's init (the kernel then kills everything in its PID
        // namespace and systemd-nspawn exits), then systemd-nspawn itself. Both by PID; the
        // init's PID is checked to still be systemd-nspawn's child first.
        let Some(nspawn) = self.nspawn_pid() else {
            return;
        };
        if self.leader != 0 && parent_of(self.leader) == Some(nspawn) {
            let _ = kill(Pid::from_raw(self.leader as i32), Signal::SIGKILL);
            if self.wait_exit(KILL_WAIT).is_some() {
                return;
            }
        }
        let _ = kill(Pid::from_raw(nspawn as i32), Signal::SIGKILL);
        if self.wait_exit(KILL_WAIT).is_none() {
            problems.push(format!(
                "systemd-nspawn (PID {nspawn}) survived SIGKILL for {KILL_WAIT:?}"
            ));
        }
    }

    /// Removes the socket, the cgroups and the state directory, unless the container still runs.
    fn cleanup(&self, problems: &mut Vec<String>) {
        if self.nspawn_pid().is_some() && self.wait_exit(Duration::ZERO).is_none() {
            problems.push("left its files in place: systemd-nspawn still runs".to_owned());
            return;
        }
        if let Err(e) = remove_file_if_exists(&self.bus_socket()) {
            problems.push(e.to_string());
        }
        for cgroup in &self.cgroups {
            if let Err(e) = remove_cgroup_tree(cgroup) {
                problems.push(e.to_string());
            }
        }
        if let Err(e) = remove_dir_all_if_exists(&self.dir) {
            problems.push(e.to_string());
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            // Drop cannot return the error; a test that wants to assert on it calls shutdown().
            #[allow(clippy::print_stderr)]
            {
                eprintln!("node-agent-e2e: {e}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// D-Bus

/// Connects to `address` on the current tokio runtime.
pub async fn connect(address: &str, method_timeout: Duration) -> Result<zbus::Connection> {
    let connecting = zbus::connection::Builder::address(address)
        .method_timeout(method_timeout)
        .build();
    match tokio::time::timeout(BUS_CALL_TIMEOUT, connecting).await {
        Ok(result) => result.map_err(Error::bus(format!("connect to {address}"))),
        Err(_) => Err(Error::Other(format!(
            "failed to connect to {address}: no answer within {BUS_CALL_TIMEOUT:?}"
        ))),
    }
}

/// One call on the container's systemd Manager over a short-lived connection.
async fn manager_call<T, F, Fut>(address: &str, action: &str, call: F) -> Result<T>
where
    F: FnOnce(ManagerProxy<'static>) -> Fut,
    Fut: Future<Output = zbus::Result<T>>,
{
    let conn = connect(address, BUS_CALL_TIMEOUT).await?;
    let manager = ManagerProxy::new(&conn).await.map_err(Error::bus(action))?;
    call(manager).await.map_err(Error::bus(action))
}

/// Runs `fut` to completion on a fresh current-thread tokio runtime in a scoped thread, so that
/// the blocking API works both inside and outside the caller's own runtime.
pub(crate) fn block_on<T, Fut>(fut: Fut) -> Result<T>
where
    T: Send,
    Fut: Future<Output = Result<T>> + Send,
{
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::Other(format!("failed to build a tokio runtime: {e}")))?;
            runtime.block_on(fut)
        });
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

// ---------------------------------------------------------------------------------------------
// cgroups, leftovers, helpers

/// `nspawn-NAME` in each cgroup hierarchy systemd uses here: every cgroup2 mount and the
/// cgroup v1 hierarchy `name=systemd` (read from /proc/self/mountinfo).
pub fn cgroup_dirs(name: &str) -> Result<Vec<PathBuf>> {
    let mountinfo = "/proc/self/mountinfo";
    let text = fs::read_to_string(mountinfo).map_err(Error::io("read", mountinfo))?;
    let mut dirs = Vec::new();
    for line in text.lines() {
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = before.split(' ').nth(4) else {
            continue;
        };
        let mut after = after.split(' ');
        let (fstype, super_options) = (after.next(), after.nth(1).unwrap_or(""));
        let systemd_v1 =
            fstype == Some("cgroup") && super_options.split(',').any(|o| o == "name=systemd");
        if fstype == Some("cgroup2") || systemd_v1 {
            dirs.push(Path::new(mount_point).join(format!("nspawn-{name}")));
        }
    }
    if dirs.is_empty() {
        return Err(Error::Other(
            "no cgroup2 and no name=systemd cgroup hierarchy mounted: systemd-nspawn needs one"
                .to_owned(),
        ));
    }
    Ok(dirs)
}

/// What is left of container `name` on the host: its cgroup directories, its state directory
/// (rootfs copy, bus socket, console) and processes in its cgroups. Empty after a clean
/// shutdown.
pub fn leftovers(name: &str) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for cgroup in cgroup_dirs(name)? {
        if cgroup.exists() {
            found.push(format!("cgroup {}", cgroup.display()));
            for pid in cgroup_pids(&cgroup) {
                found.push(format!("process {pid} in {}", cgroup.display()));
            }
        }
    }
    let dir = containers_dir().join(name);
    if dir.exists() {
        found.push(format!("state directory {}", dir.display()));
    }
    Ok(found)
}

/// PIDs in `cgroup` and below.
fn cgroup_pids(cgroup: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    for entry in fs::read_dir(cgroup).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            pids.extend(cgroup_pids(&entry.path()));
        }
    }
    pids
}

/// Removes the leftovers of an earlier run of `name`: idle cgroups, the state directory. Fails
/// when processes still run in its cgroups.
fn clear_stale(name: &str, dir: &Path, cgroups: &[PathBuf]) -> Result<()> {
    for cgroup in cgroups.iter().filter(|c| c.exists()) {
        if !cgroup_pids(cgroup).is_empty() {
            return Err(Error::InUse {
                name: name.to_owned(),
                cgroup: cgroup.clone(),
            });
        }
    }
    for cgroup in cgroups {
        remove_cgroup_tree(cgroup)?;
    }
    remove_dir_all_if_exists(dir)
}

/// rmdir of a cgroup and its children, deepest first (cgroup directories hold only virtual
/// files, so rmdir is the way to remove them).
fn remove_cgroup_tree(cgroup: &Path) -> Result<()> {
    let entries = match fs::read_dir(cgroup) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("list", cgroup)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(Error::io("list", cgroup))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(cgroup) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove cgroup", cgroup)(e)),
    }
}

fn validate_name(name: &str) -> Result<()> {
    let why = if name.is_empty() || name.len() > 48 {
        "1 to 48 characters"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        "only lowercase letters, digits and '-'"
    } else if name.starts_with('-') || name.ends_with('-') {
        "must not start or end with '-'"
    } else {
        return Ok(());
    };
    Err(Error::Invalid {
        what: "container name",
        value: name.to_owned(),
        why,
    })
}

/// See [`Container::host_path`].
fn host_path(root: &Path, path: &str) -> Result<PathBuf> {
    let invalid = |why| Error::Invalid {
        what: "path in the container",
        value: path.to_owned(),
        why,
    };
    let relative = path
        .strip_prefix('/')
        .ok_or_else(|| invalid("must be absolute"))?;
    let components: Vec<&str> = relative.split('/').collect();
    if components
        .iter()
        .any(|c| c.is_empty() || *c == "." || *c == "..")
    {
        return Err(invalid(
            "must name a file, without '.', '..' or empty components",
        ));
    }
    if ["tmp", "run", "dev", "proc", "sys"].contains(&components[0]) {
        return Err(invalid(
            "is under a mount the container puts over its root (/tmp, /run, /dev, /proc, /sys):              use /var/tmp, or a bind mount",
        ));
    }
    let mut host = root.to_path_buf();
    for component in components {
        host.push(component);
        if fs::symlink_metadata(&host).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(invalid(
                "crosses a symlink (it would resolve on the host): use the path it points to",
            ));
        }
    }
    Ok(host)
}

/// PPid of `pid` from /proc, if it exists.
fn parent_of(pid: u32) -> Option<u32> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// Runs `cmd` to completion; a non-zero exit is an error carrying its stderr.
fn run(cmd: &mut Command) -> Result<()> {
    let command = describe(cmd);
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `max` bytes of a file (lossy UTF-8), or a note saying why there are none.
fn tail(path: &Path, max: u64) -> String {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) => return format!("({}: {e})", path.display()),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

fn remove_file_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", path)(e)),
        _ => Ok(()),
    }
}

fn remove_dir_all_if_exists(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io("remove", path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("e2e-smoke-1").is_ok());
        for bad in ["", "-a", "a-", "Upper", "a_b", "a.b", &"x".repeat(49)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn host_paths_stay_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::create_dir_all(dir.join("etc/systemd")).unwrap();
        fs::create_dir_all(dir.join("var")).unwrap();
        symlink("/run", dir.join("var/run")).unwrap();

        assert_eq!(
            host_path(dir, "/etc/systemd/system/x.service").unwrap(),
            dir.join("etc/systemd/system/x.service")
        );
        for bad in [
            "etc/passwd",
            "/etc/../../host",
            "/etc/./x",
            "/etc//x",
            "/etc/",
            "/",
            "/tmp/x",
            "/run/x",
            "/proc/1/limits",
            "/var/run/x",
        ] {
            assert!(host_path(dir, bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cgroup_dirs_name_the_container() {
        // Every machine that runs these tests has some cgroup hierarchy mounted.
        let dirs = cgroup_dirs("abc").unwrap();
        assert!(!dirs.is_empty());
        assert!(dirs.iter().all(|d| d.ends_with("nspawn-abc")));
    }

    #[test]
    fn recipe_names_what_is_built() {
        let recipe = recipe();
        assert!(recipe.contains(INCLUDE) && recipe.contains(SUITE));
        assert!(recipe.ends_with('\n'));
    }
}
