//! Plumbing of the writing real-kernel tier (TESTING.md tier 2): the opt-in switch, the tier
//! lock, and [`Guard`], which snapshots every host value the tests may touch before they start
//! and restores it on drop (also when the test panics), then checks that it did.
//!
//! What the snapshot covers, read here without the agent's code:
//! - every `/proc/sys` key of the shipped `network-latency` and `trading-latency` profiles (their
//!   TOML and includes parsed here), plus `net.ipv4.tcp_congestion_control` and
//!   `net.ipv4.tcp_allowed_congestion_control` (setting the first changes the second), and
//!   `vm.min_free_kbytes` (the kernel recomputes it when THP `enabled` changes);
//! - THP `enabled` and `defrag`, every CPU's cpuidle `state*/disable`, every CPU's cpufreq
//!   governor (absent on a VM), the I/O scheduler of every non-loop block device;
//! - the agent's files `/etc/sysctl.d/zz-node-agent.conf` and
//!   `/etc/security/limits.d/zz-node-agent.conf` (content or absence) and the entry lists of
//!   their directories (so a temp file left behind shows);
//! - the active swap areas of `/proc/swaps` (name, type, size, priority);
//! - for `[isolation]`: every IRQ's `smp_affinity_list`, `/proc/irq/default_smp_affinity`, the
//!   unbound workqueue cpumask and every per-workqueue `cpumask`; the files apply may write or
//!   leave there (the system.conf.d drop-in, irqbalance's configuration files, the record of
//!   refused IRQ writes under /run/node-agent), whether their directories exist (a directory
//!   the test run created is removed again when empty), and PID 1's CPU affinity (restored with
//!   sched_setaffinity).
//!
//! Resources a test creates (a swap file, a loop-mounted image) are registered with
//! [`Guard::on_drop`] and torn down by the guard too, after the restore.

// Included with #[path] by the tests of the tier; each uses a different part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use tempfile::TempDir;

pub const PRIVILEGED_ENV: &str = "NODE_AGENT_PRIVILEGED_TESTS";
pub const CPU_DIR: &str = "/sys/devices/system/cpu";
pub const THP_DIR: &str = "/sys/kernel/mm/transparent_hugepage";
pub const SYSCTL_FILE: &str = "/etc/sysctl.d/zz-node-agent.conf";
pub const LIMITS_FILE: &str = "/etc/security/limits.d/zz-node-agent.conf";
pub const SYSTEM_CONF_DROP_IN: &str = "/etc/systemd/system.conf.d/zz-node-agent.conf";
pub const REFUSED_FILE: &str = "/run/node-agent/refused-writes.json";
pub const IRQBALANCE_CONFIGS: [&str; 2] = ["/etc/default/irqbalance", "/etc/sysconfig/irqbalance"];
pub const IRQ_DIR: &str = "/proc/irq";
pub const DEFAULT_AFFINITY: &str = "/proc/irq/default_smp_affinity";
pub const WORKQUEUE_DIR: &str = "/sys/devices/virtual/workqueue";
/// Every file the agent may create, replace or remove, as the snapshot covers them.
pub const FILES: [&str; 6] = [
    SYSCTL_FILE,
    LIMITS_FILE,
    SYSTEM_CONF_DROP_IN,
    REFUSED_FILE,
    IRQBALANCE_CONFIGS[0],
    IRQBALANCE_CONFIGS[1],
];
pub const CC: &str = "/proc/sys/net/ipv4/tcp_congestion_control";
pub const CC_ALLOWED: &str = "/proc/sys/net/ipv4/tcp_allowed_congestion_control";
pub const CC_AVAILABLE: &str = "/proc/sys/net/ipv4/tcp_available_congestion_control";
/// The shipped profiles whose keys the snapshot covers.
pub const SHIPPED: [&str; 2] = ["network-latency", "trading-latency"];
/// Kernel files whose value changes when another one is written: restored after all others,
/// and then only if they still differ.
const RESTORE_LAST: [&str; 2] = [CC_ALLOWED, "/proc/sys/vm/min_free_kbytes"];

// ---------------------------------------------------------------------------------------------
// Opt-in and lock

/// True when the tier is enabled; otherwise says on stderr that `test` was skipped. Called
/// first by every test of the tier, before it reads or creates anything.
pub fn enabled(test: &str) -> bool {
    if std::env::var(PRIVILEGED_ENV).as_deref() == Ok("1") {
        return true;
    }
    #[allow(clippy::print_stderr)]
    {
        eprintln!("{test}: skipped (set {PRIVILEGED_ENV}=1 to run the real-kernel tier)");
    }
    false
}

/// The tier's lock: a process-wide mutex (the tests of one binary run on several threads), and
/// an flock on a file in the target directory so that test runners starting one process per
/// test (nextest) serialise too. Take it before the [`Guard`] so it outlives the restore.
pub struct TierLock {
    _mutex: MutexGuard<'static, ()>,
    _file: File,
}

pub fn tier_lock() -> TierLock {
    static LOCK: Mutex<()> = Mutex::new(());
    let mutex = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("real-kernel-tier.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    TierLock {
        _mutex: mutex,
        _file: file,
    }
}

// ---------------------------------------------------------------------------------------------
// Small readers and runners

pub fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

pub fn norm(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The bracketed word of a choice file such as `always [madvise] never`.
pub fn bracketed(text: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
        .map(str::to_owned)
}

/// A kernel file's value as a person reads it: the bracketed choice, else the folded text.
pub fn kernel_value(text: &str) -> String {
    bracketed(text).unwrap_or_else(|| norm(text))
}

/// `/proc/sys/...` of a dotted key (`/` inside the key stands for a dot in a component).
pub fn sysctl_path(key: &str) -> String {
    let comps: Vec<String> = key.split('.').map(|c| c.replace('/', ".")).collect();
    format!("/proc/sys/{}", comps.join("/"))
}

/// Runs a system tool; its stdout, or an error naming the command, status and stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs a system tool the test cannot do without; panics when it fails.
pub fn must(program: &str, args: &[&str]) -> String {
    run(program, args).unwrap_or_else(|e| panic!("{e}"))
}

pub fn profiles_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tuning-profiles")
}

/// The `[sysctl]` keys of a shipped profile and of every profile it includes, from the TOML.
pub fn profile_sysctl_keys(name: &str) -> BTreeSet<String> {
    let path = profiles_dir().join(format!("{name}.toml"));
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let table: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut keys: BTreeSet<String> = table
        .get("sysctl")
        .and_then(toml::Value::as_table)
        .map(|t| t.keys().cloned().collect())
        .unwrap_or_default();
    let includes = table
        .get("profile")
        .and_then(|p| p.get("include"))
        .and_then(toml::Value::as_array)
        .cloned()
        .unwrap_or_default();
    for inc in includes {
        keys.extend(profile_sysctl_keys(inc.as_str().expect("include names")));
    }
    keys
}

/// Numbered directories under `dir` with the prefix (`cpu0`, `state1`), in number order.
fn numbered(dir: &str, prefix: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(u32, String)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some((name.strip_prefix(prefix)?.parse().ok()?, name))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, n)| n).collect()
}

/// Every CPU directory (`cpu0`, `cpu1`, ...).
pub fn cpus() -> Vec<String> {
    numbered(CPU_DIR, "cpu")
}

/// Every IRQ's `smp_affinity_list`, in IRQ number order.
pub fn irq_affinity_files() -> Vec<String> {
    numbered(IRQ_DIR, "")
        .into_iter()
        .map(|n| format!("{IRQ_DIR}/{n}/smp_affinity_list"))
        .collect()
}

/// The unbound workqueue cpumask and every per-workqueue `cpumask` (not the read-only
/// `cpumask_requested` and `cpumask_isolated` views).
pub fn workqueue_mask_files() -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(WORKQUEUE_DIR)
        .map(|es| {
            es.filter_map(Result::ok)
                .map(|e| {
                    format!(
                        "{WORKQUEUE_DIR}/{}/cpumask",
                        e.file_name().to_string_lossy()
                    )
                })
                .filter(|p| Path::new(p).is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    let global = format!("{WORKQUEUE_DIR}/cpumask");
    if Path::new(&global).is_file() {
        out.insert(0, global);
    }
    out
}

/// A CPU list in the kernel's syntax (`0-3,8`), parsed here without the agent's code.
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.trim().parse::<usize>().ok()?..=b.trim().parse().ok()?),
            None => out.push(part.trim().parse().ok()?),
        }
    }
    Some(out)
}

/// `Cpus_allowed_list` of a process (its main thread).
pub fn affinity_of(pid: u32) -> Option<String> {
    read(&format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_owned())
}

/// Sets the CPU affinity of a process's main thread (sched_setaffinity(2)).
pub fn set_affinity(pid: u32, list: &str) -> Result<(), String> {
    let cpus = parse_cpu_list(list).ok_or_else(|| format!("invalid CPU list {list:?}"))?;
    let mut set = nix::sched::CpuSet::new();
    for c in cpus {
        set.set(c).map_err(|e| format!("CPU {c}: {e}"))?;
    }
    let pid = i32::try_from(pid).map_err(|e| e.to_string())?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(pid), &set)
        .map_err(|e| format!("sched_setaffinity({pid}, {list}): {e}"))
}

/// The cpuidle `disable` files of every CPU, with each state's exit latency in microseconds.
pub fn idle_disable_files() -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for cpu in cpus() {
        let dir = format!("{CPU_DIR}/{cpu}/cpuidle");
        for state in numbered(&dir, "state") {
            let latency = read(&format!("{dir}/{state}/latency"))
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or_else(|| panic!("{dir}/{state}/latency unreadable"));
            out.push((format!("{dir}/{state}/disable"), latency));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Swap areas and mounts, parsed here

/// One active swap area of /proc/swaps (the `Used` column left out: it moves).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SwapArea {
    pub kind: String,
    pub size_kb: u64,
    pub priority: i32,
}

/// /proc/swaps' `\040`-style escapes undone.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let n = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |n, c| n * 8 + u32::from(c - b'0'));
            out.push(n as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The active swap areas by name.
pub fn swap_areas() -> BTreeMap<String, SwapArea> {
    read("/proc/swaps")
        .expect("read /proc/swaps")
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 5).then(|| {
                (
                    unescape(f[0]),
                    SwapArea {
                        kind: f[1].to_owned(),
                        size_kb: f[2].parse().expect("swap size"),
                        priority: f[4].parse().expect("swap priority"),
                    },
                )
            })
        })
        .collect()
}

/// The per-mount options of the top-most mount at `path` (field 6 of mountinfo), or `None`
/// when `path` is not a mount point.
pub fn mount_options(path: &str) -> Option<Vec<String>> {
    let text = read("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    text.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 5 && unescape(f[4]) == path)
            .then(|| f[5].split(',').map(str::to_owned).collect())
    })
}

// ---------------------------------------------------------------------------------------------
// Snapshot

/// What the tier may touch, as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Kernel files by path: raw content, `None` when absent.
    pub kernel: BTreeMap<String, Option<String>>,
    /// The agent's configuration files: content, `None` when absent.
    pub files: BTreeMap<String, Option<String>>,
    /// The entries of the directories holding them, `None` when a directory does not exist.
    pub dirs: BTreeMap<String, Option<BTreeSet<String>>>,
    pub swaps: BTreeMap<String, SwapArea>,
    /// PID 1's `Cpus_allowed_list`.
    pub pid1_affinity: Option<String>,
}

/// Every kernel file the snapshot covers.
pub fn kernel_paths() -> Vec<String> {
    let mut keys: BTreeSet<String> = SHIPPED
        .iter()
        .flat_map(|p| profile_sysctl_keys(p))
        .collect();
    keys.insert("net.ipv4.tcp_congestion_control".into());
    keys.insert("net.ipv4.tcp_allowed_congestion_control".into());
    // The kernel recomputes it when THP is switched off, and again when THP is back on.
    keys.insert("vm.min_free_kbytes".into());
    let mut paths: Vec<String> = keys.iter().map(|k| sysctl_path(k)).collect();
    paths.extend(irq_affinity_files());
    paths.push(DEFAULT_AFFINITY.to_owned());
    paths.extend(workqueue_mask_files());
    paths.push(format!("{THP_DIR}/enabled"));
    paths.push(format!("{THP_DIR}/defrag"));
    paths.extend(idle_disable_files().into_iter().map(|(p, _)| p));
    for cpu in cpus() {
        paths.push(format!("{CPU_DIR}/{cpu}/cpufreq/scaling_governor"));
    }
    if let Ok(entries) = std::fs::read_dir("/sys/block") {
        for e in entries.filter_map(Result::ok) {
            let dev = e.file_name().to_string_lossy().into_owned();
            if !dev.starts_with("loop") {
                paths.push(format!("/sys/block/{dev}/queue/scheduler"));
            }
        }
    }
    paths.sort();
    paths.dedup();
    paths
}

fn dir_of(path: &str) -> String {
    Path::new(path)
        .parent()
        .expect("absolute path")
        .display()
        .to_string()
}

fn list_dir(dir: &str) -> Option<BTreeSet<String>> {
    std::fs::read_dir(dir).ok().map(|es| {
        es.filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    })
}

/// A temporary file the agent's atomic replace of one of [`FILES`] may leave behind
/// (`.NAME.tmp.PID`).
fn agent_temp_file(name: &str) -> bool {
    FILES.iter().any(|f| {
        let base = f.rsplit('/').next().unwrap_or(f);
        name.starts_with(&format!(".{base}.tmp."))
    })
}

impl Snapshot {
    pub fn take() -> Snapshot {
        Snapshot::of(&kernel_paths())
    }

    fn of(paths: &[String]) -> Snapshot {
        Snapshot {
            kernel: paths.iter().map(|p| (p.clone(), read(p))).collect(),
            files: FILES.iter().map(|p| (p.to_string(), read(p))).collect(),
            dirs: FILES
                .iter()
                .map(|p| (dir_of(p), list_dir(&dir_of(p))))
                .collect(),
            swaps: swap_areas(),
            pid1_affinity: affinity_of(1),
        }
    }

    /// The same files read again now.
    pub fn now(&self) -> Snapshot {
        Snapshot::of(&self.kernel.keys().cloned().collect::<Vec<_>>())
    }

    /// One line per difference between `self` (wanted) and `other` (found).
    pub fn diff(&self, other: &Snapshot) -> Vec<String> {
        fn maps<V: PartialEq + std::fmt::Debug>(
            what: &str,
            a: &BTreeMap<String, V>,
            b: &BTreeMap<String, V>,
            out: &mut Vec<String>,
        ) {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                if a.get(k) != b.get(k) {
                    out.push(format!(
                        "{what} {k}: expected {:?}, found {:?}",
                        a.get(k),
                        b.get(k)
                    ));
                }
            }
        }
        let mut out = Vec::new();
        maps("kernel file", &self.kernel, &other.kernel, &mut out);
        maps("file", &self.files, &other.files, &mut out);
        maps("directory", &self.dirs, &other.dirs, &mut out);
        maps("swap area", &self.swaps, &other.swaps, &mut out);
        if self.pid1_affinity != other.pid1_affinity {
            out.push(format!(
                "PID 1 affinity: expected {:?}, found {:?}",
                self.pid1_affinity, other.pid1_affinity
            ));
        }
        out
    }

    /// Panics with every difference unless the host is as in `self` now.
    pub fn assert_unchanged(&self, when: &str) {
        let diff = self.diff(&self.now());
        assert!(
            diff.is_empty(),
            "{when}: the host differs from the snapshot:\n  {}",
            diff.join("\n  ")
        );
    }

    /// Puts everything back as it was in `self`; every failure is collected, none stops the
    /// rest.
    pub fn restore(&self) -> Vec<String> {
        let mut errors = Vec::new();
        // Kernel files: side-effect files last, only what differs.
        let mut order: Vec<(&String, &Option<String>)> = self.kernel.iter().collect();
        order.sort_by_key(|(p, _)| RESTORE_LAST.contains(&p.as_str()));
        for (path, want) in order {
            let Some(want) = want else { continue };
            let now = read(path);
            if now.as_deref() == Some(want.as_str()) {
                continue;
            }
            let value = if want.contains('[') {
                bracketed(want).unwrap_or_else(|| want.trim().to_owned())
            } else {
                want.trim_end_matches('\n').to_owned()
            };
            if let Err(e) = std::fs::write(path, &value) {
                errors.push(format!("restore {path} to {value:?}: {e}"));
            }
        }
        // The agent's files.
        for (path, want) in &self.files {
            let now = read(path);
            if now == *want {
                continue;
            }
            let result = match want {
                Some(text) => std::fs::write(path, text),
                None => std::fs::remove_file(path),
            };
            if let Err(e) = result {
                errors.push(format!("restore {path}: {e}"));
            }
        }
        // Temp files the agent may have left beside them (its own naming only), and the
        // directories it created for them, once empty.
        for (dir, want) in &self.dirs {
            let Some(now) = list_dir(dir) else { continue };
            let empty = BTreeSet::new();
            for extra in now.difference(want.as_ref().unwrap_or(&empty)) {
                if agent_temp_file(extra) {
                    let p = format!("{dir}/{extra}");
                    if let Err(e) = std::fs::remove_file(&p) {
                        errors.push(format!("remove {p}: {e}"));
                    }
                }
            }
            if want.is_none()
                && let Err(e) = std::fs::remove_dir(dir)
            {
                errors.push(format!("remove {dir}, which did not exist: {e}"));
            }
        }
        // PID 1's affinity (the agent sets it where systemd is PID 1).
        if let Some(want) = &self.pid1_affinity
            && affinity_of(1).as_ref() != Some(want)
            && let Err(e) = set_affinity(1, want)
        {
            errors.push(format!("restore the affinity of PID 1: {e}"));
        }
        // Swap: off what was not on, on what was (with its priority).
        let now = swap_areas();
        for (name, area) in &now {
            if self.swaps.get(name) != Some(area)
                && let Err(e) = run("swapoff", &[name])
            {
                errors.push(e);
            }
        }
        let now = swap_areas();
        for (name, area) in &self.swaps {
            if now.contains_key(name) {
                continue;
            }
            let prio = area.priority.to_string();
            let mut args = Vec::new();
            if area.priority >= 0 {
                args.extend(["--priority", prio.as_str()]);
            }
            args.push(name);
            if let Err(e) = run("swapon", &args) {
                errors.push(e);
            }
        }
        errors
    }
}

// ---------------------------------------------------------------------------------------------
// Guard

type Cleanup = Box<dyn FnMut() -> Result<(), String>>;

/// Snapshot on creation; on drop: restore, tear down what the test registered, check.
pub struct Guard {
    snapshot: Snapshot,
    cleanups: Vec<(String, Cleanup)>,
    /// Scratch space on a real filesystem (the target directory), removed last.
    work: Option<TempDir>,
}

impl Guard {
    /// Takes the snapshot. Hold the [`tier_lock`] first.
    pub fn take() -> Guard {
        let snapshot = Snapshot::take();
        assert!(
            snapshot.kernel.values().filter(|v| v.is_some()).count() >= 10,
            "the snapshot read almost nothing: {snapshot:#?}"
        );
        let work = tempfile::Builder::new()
            .prefix("real-kernel-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("create the scratch directory");
        Guard {
            snapshot,
            cleanups: Vec::new(),
            work: Some(work),
        }
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Scratch directory on a real filesystem.
    pub fn work(&self) -> &Path {
        self.work.as_ref().expect("scratch dir").path()
    }

    /// Registers a teardown step; steps run newest first, after the restore. Each must be
    /// idempotent and succeed when there is nothing left to do.
    pub fn on_drop(&mut self, what: &str, f: impl FnMut() -> Result<(), String> + 'static) {
        self.cleanups.push((what.to_owned(), Box::new(f)));
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut errors = self.snapshot.restore();
        while let Some((what, mut f)) = self.cleanups.pop() {
            if let Err(e) = f() {
                errors.push(format!("{what}: {e}"));
            }
        }
        if let Some(work) = self.work.take()
            && let Err(e) = work.close()
        {
            errors.push(format!("remove the scratch directory: {e}"));
        }
        errors.extend(self.snapshot.diff(&self.snapshot.now()));
        if errors.is_empty() {
            return;
        }
        let msg = format!(
            "the guard could not put the host back as it was:\n  {}",
            errors.join("\n  ")
        );
        if std::thread::panicking() {
            // A second panic would abort and hide the first one.
            #[allow(clippy::print_stderr)]
            {
                eprintln!("{msg}");
            }
        } else {
            panic!("{msg}");
        }
    }
}
