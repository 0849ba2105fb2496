//! Host health checks (issue 7, point 1): what the operations manual's daily script and its
//! Prometheus thresholds check, as typed results. Each check has a stable dotted name, a status
//! (`ok` | `warn` | `crit` | `unknown` = the check could not run), a value, the threshold it was
//! held to (text) and a message. The overall status is the worst check, in the order
//! crit > warn > unknown > ok, and maps to the monitoring-plugin exit codes (0 ok, 1 warn,
//! 2 crit, 3 unknown; the one exception to agentctl's exit-code table).
//!
//! Check names: `disk.<mount>.usage`, `disk.<mount>.inodes`, `memory.usage`, `cpu.usage`,
//! `cpu.isolated.usage`, `tcp.<endpoint>`, `clock.sync`, `units.<unit>`, `drift`.
//!
//! Decisions:
//! - A threshold is met at or above its number (`usage >= warn` is `warn`): the manual's
//!   "disk usage under 85 %" means 85 % is already a finding.
//! - Disk usage is df's `Use%`: used / (used + available to unprivileged users), so the root
//!   reserve counts as full, as the operator sees it in df. Inode usage is used / total; a
//!   filesystem that reports no inode count (btrfs) is `ok` with no value. The manual gives only
//!   a warn bound (85 %); crit is 95 %.
//! - Memory is read from /proc/meminfo (MemTotal, MemAvailable) and CPU from two /proc/stat
//!   samples through [`HostRoot`], not sysinfo: the same numbers, fixture-testable, and per CPU,
//!   which the isolation split needs. Busy = user + nice + system + irq + softirq + steal (guest
//!   time is already inside user and nice); idle and iowait are idle.
//! - With an isolation layout, `cpu.usage` counts the housekeeping CPUs only; the isolated
//!   cores are `cpu.isolated.usage`, always `ok` (informational): busy-polling engines run at
//!   100 % by design.
//! - TCP latency is the connect(2) time alone (name resolution is not timed but is bounded by
//!   the same per-endpoint timeout); all endpoints run concurrently. Refused and no answer are
//!   `crit`; a name that does not resolve is `unknown` (the check could not run).
//! - Clock: not synchronised (STA_UNSYNC) is `crit`; an estimated error at or above
//!   `clock_max_error` (default 1 ms, MiFID II RTS 25's bound for algorithmic trading that is
//!   not high-frequency) is `warn`. The kernel's view comes from adjtimex(2) in read-only mode
//!   ([`read_clock`], the workspace's one audited `unsafe`: nothing safe binds it). Like the
//!   managed units (asked over D-Bus), it is checked on the live host only, never under a
//!   fixture root.
//! - Managed units: `crit` unless ActiveState is `active`. Drift: `warn` when the verify
//!   summary has any item that makes `tune verify` exit 1 (drift, pending-reboot,
//!   not-persistent, error), naming the counts.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::host::HostRoot;
use crate::profile::types::CpuList;
use crate::verify::Summary;

/// A check's result. Declared so that `Ord` is severity: the worst of a set is its `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Unknown,
    Warn,
    Crit,
}

impl Status {
    /// The monitoring-plugin exit code: 0 ok, 1 warn, 2 crit, 3 unknown.
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Warn => 1,
            Status::Crit => 2,
            Status::Unknown => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Crit => "crit",
            Status::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// Stable dotted name, e.g. `disk./var.usage`, `tcp.exchange-front`.
    pub name: String,
    pub status: Status,
    /// The reading (percent, milliseconds, count), absent when the check could not run.
    pub value: Option<f64>,
    /// What the value was held to, as text, e.g. `warn >= 85 %, crit >= 95 %`.
    pub threshold: String,
    pub message: String,
}

impl Check {
    fn new(
        name: impl Into<String>,
        status: Status,
        value: Option<f64>,
        threshold: impl Into<String>,
        message: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            status,
            value,
            threshold: threshold.into(),
            message: message.into(),
        }
    }

    fn unknown(
        name: impl Into<String>,
        threshold: impl Into<String>,
        reason: impl Into<String>,
    ) -> Check {
        Check::new(name, Status::Unknown, None, threshold, reason)
    }

    /// The unit of the value, from the check's name: `%` for disk, inodes, memory and CPU,
    /// `ms` for TCP and the clock, none for counts (drift) and flags (units: 1 active).
    pub fn unit(&self) -> &'static str {
        let n = self.name.as_str();
        if n.starts_with("disk.") || n.starts_with("memory.") || n.starts_with("cpu.") {
            "%"
        } else if n.starts_with("tcp.") || n == "clock.sync" {
            "ms"
        } else {
            ""
        }
    }

    /// The value with its unit (`91.2 %`, `4.05 ms`, `3`); empty without a value.
    pub fn value_text(&self) -> String {
        match self.value {
            None => String::new(),
            Some(v) => {
                let v = (v * 1000.0).round() / 1000.0;
                match self.unit() {
                    "" => format!("{v}"),
                    u => format!("{v} {u}"),
                }
            }
        }
    }
}

/// All checks of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReport {
    /// The worst check (ok when there are none).
    pub status: Status,
    pub checks: Vec<Check>,
}

impl HealthReport {
    pub fn new(checks: Vec<Check>) -> HealthReport {
        let status = checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
        HealthReport { status, checks }
    }

    /// The monitoring-plugin exit code of the overall status.
    pub fn exit_code(&self) -> u8 {
        self.status.exit_code()
    }

    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }
}

/// A warn and a crit bound on one scale; met at or above.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub warn: f64,
    pub crit: f64,
}

impl Thresholds {
    pub fn status(&self, value: f64) -> Status {
        if value >= self.crit {
            Status::Crit
        } else if value >= self.warn {
            Status::Warn
        } else {
            Status::Ok
        }
    }

    fn text(&self, unit: &str) -> String {
        format!("warn >= {}{unit}, crit >= {}{unit}", self.warn, self.crit)
    }
}

/// A TCP endpoint to time: `tcp.<name>` connecting to `address` (`host:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub name: String,
    pub address: String,
}

/// What the checks are held to. Defaults are the operations manual's thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSettings {
    /// Mount points (host paths) whose disk and inode usage is checked.
    pub mounts: Vec<String>,
    /// Disk usage, percent: warn 85 (the manual), crit 95.
    pub disk: Thresholds,
    /// Inode usage, percent: warn 85, crit 95.
    pub inodes: Thresholds,
    /// Memory usage, percent: warn 70, crit 85.
    pub memory: Thresholds,
    /// CPU usage (housekeeping CPUs with an isolation layout), percent: warn 70, crit 85.
    pub cpu: Thresholds,
    /// Time between the two /proc/stat samples.
    pub cpu_sample_interval: Duration,
    /// Endpoints to time (none by default; agent.toml names the exchange front, database, cache).
    pub endpoints: Vec<Endpoint>,
    /// Connect latency, milliseconds: warn 10, crit 30.
    pub tcp_latency_ms: Thresholds,
    /// Per-endpoint bound on resolution plus connect.
    pub tcp_timeout: Duration,
    /// The kernel's estimated clock error at or above which `clock.sync` warns.
    pub clock_max_error: Duration,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            mounts: vec!["/".to_owned(), "/var".to_owned()],
            disk: Thresholds {
                warn: 85.0,
                crit: 95.0,
            },
            inodes: Thresholds {
                warn: 85.0,
                crit: 95.0,
            },
            memory: Thresholds {
                warn: 70.0,
                crit: 85.0,
            },
            cpu: Thresholds {
                warn: 70.0,
                crit: 85.0,
            },
            cpu_sample_interval: Duration::from_millis(250),
            endpoints: Vec::new(),
            tcp_latency_ms: Thresholds {
                warn: 10.0,
                crit: 30.0,
            },
            tcp_timeout: Duration::from_secs(1),
            clock_max_error: Duration::from_millis(1),
        }
    }
}

/// A managed unit's state as the caller read it over D-Bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitState {
    pub unit: String,
    pub active_state: String,
}

/// What the checks take from the caller rather than reading themselves.
#[derive(Debug, Clone, Default)]
pub struct HealthInputs {
    /// The isolation layout: splits `cpu.usage` (housekeeping) from `cpu.isolated.usage`.
    pub layout: Option<CpuLayout>,
    /// The managed units' states; `Err` (the bus could not be asked) is one `unknown` check.
    /// `None`: no managed units, no checks.
    pub units: Option<Result<Vec<UnitState>, String>>,
    /// The active profile's verify summary; `Err` is `unknown`, `None` no check.
    pub drift: Option<Result<Summary, String>>,
}

/// Housekeeping and isolated CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuLayout {
    pub housekeeping: CpuList,
    pub isolated: CpuList,
}

/// The inputs the checks take from elsewhere: the profile's isolation layout, the managed
/// units' states from systemd over `bus` (only on the live host: a fixture tree has no
/// systemd), and the drift summary the caller has.
pub async fn gather_inputs(
    host: &HostRoot,
    bus: &str,
    isolation: Option<&crate::profile::Isolation>,
    managed: &[crate::profile::types::UnitName],
    drift: Option<Result<Summary, String>>,
) -> HealthInputs {
    let units = if managed.is_empty() || !host.is_live() {
        None
    } else {
        Some(crate::units::active_states(bus, managed).await)
    };
    HealthInputs {
        layout: isolation.map(|i| CpuLayout {
            housekeeping: i.housekeeping_cpus.clone(),
            isolated: i.isolated_cpus.clone(),
        }),
        units,
        drift,
    }
}

/// Runs every check: CPU sampling and the TCP endpoints concurrently, the rest in between.
/// One run takes about max(cpu_sample_interval, tcp_timeout) at worst.
pub async fn run(
    host: &HostRoot,
    settings: &HealthSettings,
    inputs: &HealthInputs,
) -> HealthReport {
    let (cpu, tcp) = tokio::join!(
        cpu_checks(host, settings, inputs.layout.as_ref()),
        tcp_checks(&settings.endpoints, settings),
    );
    let mut checks = disk_checks(host, settings);
    checks.push(memory_check(host, settings));
    checks.extend(cpu);
    checks.extend(tcp);
    // The clock is the kernel's, not a file: a fixture tree has none to read.
    if host.is_live() {
        checks.push(clock_check(read_clock(), settings));
    }
    if let Some(units) = &inputs.units {
        checks.extend(unit_checks(units));
    }
    if let Some(drift) = &inputs.drift {
        checks.push(drift_check(drift));
    }
    HealthReport::new(checks)
}

// ---- disk and inodes ----

/// Usage figures of one filesystem, as statvfs gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
}

impl FsUsage {
    /// df's Use% (unrounded): used / (used + available); None for an empty filesystem.
    pub fn disk_percent(&self) -> Option<f64> {
        let used = self.blocks.saturating_sub(self.blocks_free);
        let denom = used + self.blocks_available;
        (denom > 0).then(|| used as f64 * 100.0 / denom as f64)
    }

    /// Inodes used / total; None when the filesystem reports no inode count.
    pub fn inode_percent(&self) -> Option<f64> {
        let used = self.files.saturating_sub(self.files_free);
        (self.files > 0).then(|| used as f64 * 100.0 / self.files as f64)
    }
}

/// statvfs of a host path (under the host root).
pub fn fs_usage(host: &HostRoot, mount: &str) -> Result<FsUsage, String> {
    let path = host.path(mount).map_err(|e| e.to_string())?;
    let st = nix::sys::statvfs::statvfs(&path)
        .map_err(|e| format!("failed to statvfs {}: {e}", path.display()))?;
    Ok(FsUsage {
        blocks: st.blocks(),
        blocks_free: st.blocks_free(),
        blocks_available: st.blocks_available(),
        files: st.files(),
        files_free: st.files_free(),
    })
}

/// `disk.<mount>.usage` and `disk.<mount>.inodes` for every configured mount.
pub fn disk_checks(host: &HostRoot, settings: &HealthSettings) -> Vec<Check> {
    let mut out = Vec::new();
    for mount in &settings.mounts {
        let disk_name = format!("disk.{mount}.usage");
        let inode_name = format!("disk.{mount}.inodes");
        let disk_t = settings.disk.text(" %");
        let inode_t = settings.inodes.text(" %");
        match fs_usage(host, mount) {
            Err(reason) => {
                out.push(Check::unknown(disk_name, disk_t, reason.clone()));
                out.push(Check::unknown(inode_name, inode_t, reason));
            }
            Ok(u) => {
                out.push(match u.disk_percent() {
                    Some(p) => Check::new(
                        disk_name,
                        settings.disk.status(p),
                        Some(p),
                        disk_t,
                        format!("{mount} is {p:.1} % full"),
                    ),
                    None => Check::unknown(disk_name, disk_t, format!("{mount} reports no blocks")),
                });
                out.push(match u.inode_percent() {
                    Some(p) => Check::new(
                        inode_name,
                        settings.inodes.status(p),
                        Some(p),
                        inode_t,
                        format!("{mount} uses {p:.1} % of its inodes"),
                    ),
                    None => Check::new(
                        inode_name,
                        Status::Ok,
                        None,
                        inode_t,
                        format!("{mount} reports no inode count (no fixed inode table)"),
                    ),
                });
            }
        }
    }
    out
}

// ---- memory ----

/// Memory used percent from /proc/meminfo text: (MemTotal - MemAvailable) / MemTotal.
pub fn memory_percent(meminfo: &str) -> Result<f64, String> {
    let field = |key: &str| -> Result<u64, String> {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .ok_or_else(|| format!("/proc/meminfo has no {key}"))?
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("/proc/meminfo: {key} is not a number"))
    };
    let total = field("MemTotal")?;
    let available = field("MemAvailable")?;
    if total == 0 {
        return Err("/proc/meminfo: MemTotal is 0".to_owned());
    }
    Ok(total.saturating_sub(available) as f64 * 100.0 / total as f64)
}

/// `memory.usage`.
pub fn memory_check(host: &HostRoot, settings: &HealthSettings) -> Check {
    let t = settings.memory.text(" %");
    match host
        .read("/proc/meminfo")
        .map_err(|e| e.to_string())
        .and_then(|s| memory_percent(&s))
    {
        Ok(p) => Check::new(
            "memory.usage",
            settings.memory.status(p),
            Some(p),
            t,
            format!("{p:.1} % of memory in use (MemTotal - MemAvailable)"),
        ),
        Err(reason) => Check::unknown("memory.usage", t, reason),
    }
}

// ---- CPU ----

/// Busy and total jiffies of one CPU line of /proc/stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTimes {
    pub busy: u64,
    pub total: u64,
}

/// One /proc/stat sample: the aggregate line and each `cpuN` line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CpuSample {
    pub all: CpuTimes,
    pub per_cpu: Vec<(u32, CpuTimes)>,
}

impl CpuSample {
    /// Parses /proc/stat text.
    pub fn parse(stat: &str) -> Result<CpuSample, String> {
        let mut sample = CpuSample::default();
        let mut seen_all = false;
        for line in stat.lines() {
            let mut fields = line.split_whitespace();
            let Some(label) = fields.next() else { continue };
            let Some(rest) = label.strip_prefix("cpu") else {
                continue;
            };
            let nums: Vec<u64> = fields
                .map(|f| f.parse::<u64>())
                .collect::<Result<_, _>>()
                .map_err(|_| format!("/proc/stat: malformed line {line:?}"))?;
            if nums.len() < 4 {
                return Err(format!("/proc/stat: too few fields in {line:?}"));
            }
            let at = |i: usize| nums.get(i).copied().unwrap_or(0);
            // user nice system idle iowait irq softirq steal [guest guest_nice]
            let idle = at(3) + at(4);
            let busy = at(0) + at(1) + at(2) + at(5) + at(6) + at(7);
            let times = CpuTimes {
                busy,
                total: busy + idle,
            };
            if rest.is_empty() {
                sample.all = times;
                seen_all = true;
            } else {
                let n = rest
                    .parse()
                    .map_err(|_| format!("/proc/stat: bad CPU label {label:?}"))?;
                sample.per_cpu.push((n, times));
            }
        }
        if !seen_all {
            return Err("/proc/stat has no aggregate cpu line".to_owned());
        }
        Ok(sample)
    }

    fn cpu(&self, n: u32) -> Option<CpuTimes> {
        self.per_cpu.iter().find(|(c, _)| *c == n).map(|(_, t)| *t)
    }
}

/// Busy percent between two samples of the same set of CPUs; None when no time elapsed.
fn usage(before: &[CpuTimes], after: &[CpuTimes]) -> Option<f64> {
    let (mut busy, mut total) = (0u64, 0u64);
    for (b, a) in before.iter().zip(after) {
        busy += a.busy.saturating_sub(b.busy);
        total += a.total.saturating_sub(b.total);
    }
    (total > 0).then(|| busy as f64 * 100.0 / total as f64)
}

/// `cpu.usage` (and with a layout `cpu.isolated.usage`) from two /proc/stat samples.
pub fn cpu_checks_from(
    before: &CpuSample,
    after: &CpuSample,
    layout: Option<&CpuLayout>,
    settings: &HealthSettings,
) -> Vec<Check> {
    let t = settings.cpu.text(" %");
    let pick = |set: &CpuList| -> (Vec<CpuTimes>, Vec<CpuTimes>, Vec<u32>) {
        let mut b = Vec::new();
        let mut a = Vec::new();
        let mut cpus = Vec::new();
        for n in set.iter() {
            if let (Some(x), Some(y)) = (before.cpu(n), after.cpu(n)) {
                b.push(x);
                a.push(y);
                cpus.push(n);
            }
        }
        (b, a, cpus)
    };
    let no_time = "no CPU time elapsed between the two /proc/stat samples";
    let Some(layout) = layout else {
        return vec![match usage(&[before.all], &[after.all]) {
            Some(p) => Check::new(
                "cpu.usage",
                settings.cpu.status(p),
                Some(p),
                t,
                format!("{p:.1} % busy over all CPUs"),
            ),
            None => Check::unknown("cpu.usage", t, no_time),
        }];
    };
    let mut out = Vec::new();
    let (b, a, cpus) = pick(&layout.housekeeping);
    out.push(if cpus.is_empty() {
        Check::unknown(
            "cpu.usage",
            t,
            format!(
                "none of the housekeeping CPUs {} is in /proc/stat",
                layout.housekeeping
            ),
        )
    } else {
        match usage(&b, &a) {
            Some(p) => Check::new(
                "cpu.usage",
                settings.cpu.status(p),
                Some(p),
                t,
                format!("{p:.1} % busy on housekeeping CPUs {}", list_text(&cpus)),
            ),
            None => Check::unknown("cpu.usage", t, no_time),
        }
    });
    let (b, a, cpus) = pick(&layout.isolated);
    if !cpus.is_empty() {
        let per: Vec<String> = b
            .iter()
            .zip(&a)
            .zip(&cpus)
            .filter_map(|((x, y), n)| usage(&[*x], &[*y]).map(|p| format!("cpu{n} {p:.0} %")))
            .collect();
        out.push(match usage(&b, &a) {
            Some(p) => Check::new(
                "cpu.isolated.usage",
                Status::Ok,
                Some(p),
                "informational: busy-polling engines run isolated cores at 100 % by design",
                format!("{p:.1} % busy on isolated CPUs ({})", per.join(", ")),
            ),
            None => Check::unknown("cpu.isolated.usage", "informational", no_time),
        });
    }
    out
}

fn list_text(cpus: &[u32]) -> String {
    let s: Vec<String> = cpus.iter().map(u32::to_string).collect();
    s.join(",")
}

/// Reads /proc/stat twice, `cpu_sample_interval` apart.
pub async fn cpu_checks(
    host: &HostRoot,
    settings: &HealthSettings,
    layout: Option<&CpuLayout>,
) -> Vec<Check> {
    let read = || {
        host.read("/proc/stat")
            .map_err(|e| e.to_string())
            .and_then(|s| CpuSample::parse(&s))
    };
    let before = match read() {
        Ok(s) => s,
        Err(reason) => return vec![Check::unknown("cpu.usage", settings.cpu.text(" %"), reason)],
    };
    tokio::time::sleep(settings.cpu_sample_interval).await;
    match read() {
        Ok(after) => cpu_checks_from(&before, &after, layout, settings),
        Err(reason) => vec![Check::unknown("cpu.usage", settings.cpu.text(" %"), reason)],
    }
}

// ---- TCP ----

/// `tcp.<name>` for every endpoint, concurrently.
pub async fn tcp_checks(endpoints: &[Endpoint], settings: &HealthSettings) -> Vec<Check> {
    futures_util::future::join_all(endpoints.iter().map(|e| tcp_check(e, settings))).await
}

/// Times connect(2) to one endpoint.
pub async fn tcp_check(endpoint: &Endpoint, settings: &HealthSettings) -> Check {
    let name = format!("tcp.{}", endpoint.name);
    let t = format!(
        "{}, timeout {} ms",
        settings.tcp_latency_ms.text(" ms"),
        settings.tcp_timeout.as_millis()
    );
    let deadline = tokio::time::Instant::now() + settings.tcp_timeout;
    let no_answer = || {
        Check::new(
            name.clone(),
            Status::Crit,
            None,
            t.clone(),
            format!(
                "{}: no answer within {} ms",
                endpoint.address,
                settings.tcp_timeout.as_millis()
            ),
        )
    };
    let resolved =
        tokio::time::timeout_at(deadline, tokio::net::lookup_host(endpoint.address.as_str())).await;
    let addr = match resolved {
        Err(_) => {
            return Check::unknown(
                name,
                t,
                format!(
                    "{}: name resolution did not finish within the timeout",
                    endpoint.address
                ),
            );
        }
        Ok(Err(e)) => {
            return Check::unknown(name, t, format!("cannot resolve {}: {e}", endpoint.address));
        }
        Ok(Ok(mut addrs)) => match addrs.next() {
            Some(a) => a,
            None => {
                return Check::unknown(
                    name,
                    t,
                    format!("{} resolves to no address", endpoint.address),
                );
            }
        },
    };
    let start = Instant::now();
    match tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(addr)).await {
        Err(_) => no_answer(),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Check::new(
            name,
            Status::Crit,
            None,
            t,
            format!("{} ({addr}): connection refused", endpoint.address),
        ),
        Ok(Err(e)) => Check::new(
            name,
            Status::Crit,
            None,
            t,
            format!("{} ({addr}): failed to connect: {e}", endpoint.address),
        ),
        Ok(Ok(_stream)) => {
            let ms = start.elapsed().as_secs_f64() * 1000.0;
            Check::new(
                name,
                settings.tcp_latency_ms.status(ms),
                Some(ms),
                t,
                format!("{} ({addr}): connected in {ms:.3} ms", endpoint.address),
            )
        }
    }
}

// ---- clock ----

/// The kernel's view of clock discipline (adjtimex(2)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockReading {
    /// STA_UNSYNC clear.
    pub synchronised: bool,
    /// `esterror`, microseconds.
    pub estimated_error_us: u64,
    /// `maxerror`, microseconds.
    pub max_error_us: u64,
}

/// Reads the kernel's clock state with adjtimex(2) in read-only mode (`modes = 0`, allowed
/// without privileges). Synchronised means STA_UNSYNC clear and a clock state other than
/// TIME_ERROR, as chrony, ntpd and systemd-timesyncd leave it.
///
/// This is the workspace's one `unsafe` (the lint is `deny`, allowed here only): neither nix
/// 0.32 nor rustix 1.1 binds adjtimex, and a D-Bus detour through timedated gives the flag but
/// not the estimated error the check needs.
#[allow(unsafe_code)]
pub fn read_clock() -> Result<ClockReading, String> {
    // SAFETY: `timex` is plain old data for which all-zero bytes are a valid value.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer is to a live, exclusively borrowed `timex` for the whole call; with
    // `modes == 0` the kernel changes nothing and only writes the struct back.
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EPERM) {
            format!(
                "adjtimex(2) refused ({e}): a seccomp filter denies it here, such as systemd's \
                 ProtectClock= or a container without CAP_SYS_TIME"
            )
        } else {
            format!("adjtimex(2) failed: {e}")
        });
    }
    Ok(clock_reading(state, tx.status, tx.esterror, tx.maxerror))
}

/// The reading from adjtimex's return value and fields (negative errors count as 0).
pub fn clock_reading(state: i32, status: i32, esterror: i64, maxerror: i64) -> ClockReading {
    ClockReading {
        synchronised: status & libc::STA_UNSYNC == 0 && state != libc::TIME_ERROR,
        estimated_error_us: u64::try_from(esterror).unwrap_or(0),
        max_error_us: u64::try_from(maxerror).unwrap_or(0),
    }
}

/// `clock.sync` from a reading: unsynchronised is crit, estimated error at or above the
/// bound is warn, value in milliseconds.
pub fn clock_check(reading: Result<ClockReading, String>, settings: &HealthSettings) -> Check {
    let bound_ms = settings.clock_max_error.as_secs_f64() * 1000.0;
    let t = format!("crit when not synchronised, warn when estimated error >= {bound_ms} ms");
    match reading {
        Err(reason) => Check::unknown("clock.sync", t, reason),
        Ok(r) => {
            let ms = r.estimated_error_us as f64 / 1000.0;
            let max_ms = r.max_error_us as f64 / 1000.0;
            let (status, msg) = if !r.synchronised {
                (
                    Status::Crit,
                    format!("clock not synchronised (STA_UNSYNC); maximum error {max_ms} ms"),
                )
            } else if ms >= bound_ms {
                (
                    Status::Warn,
                    format!("synchronised, but estimated error {ms} ms >= {bound_ms} ms"),
                )
            } else {
                (
                    Status::Ok,
                    format!("synchronised, estimated error {ms} ms, maximum error {max_ms} ms"),
                )
            };
            Check::new("clock.sync", status, Some(ms), t, msg)
        }
    }
}

// ---- units and drift ----

/// `units.<unit>`: crit unless active. `Err` (the bus could not be asked) is one unknown check.
pub fn unit_checks(units: &Result<Vec<UnitState>, String>) -> Vec<Check> {
    let t = "active";
    match units {
        Err(reason) => vec![Check::unknown("units", t, reason.clone())],
        Ok(units) => units
            .iter()
            .map(|u| {
                let ok = u.active_state == "active";
                Check::new(
                    format!("units.{}", u.unit),
                    if ok { Status::Ok } else { Status::Crit },
                    Some(if ok { 1.0 } else { 0.0 }),
                    t,
                    format!("{} is {}", u.unit, u.active_state),
                )
            })
            .collect(),
    }
}

/// `drift`: warn when the verify summary has non-compliant items; the value is their count.
pub fn drift_check(summary: &Result<Summary, String>) -> Check {
    let t = "warn when any item is drift, pending-reboot, not-persistent or error";
    match summary {
        Err(reason) => Check::unknown("drift", t, reason.clone()),
        Ok(s) => {
            let parts: Vec<String> = [
                ("drift", s.drift),
                ("pending-reboot", s.pending_reboot),
                ("not-persistent", s.not_persistent),
                ("error", s.error),
            ]
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
            let bad = s.drift + s.pending_reboot + s.not_persistent + s.error;
            if bad == 0 {
                Check::new(
                    "drift",
                    Status::Ok,
                    Some(0.0),
                    t,
                    format!("compliant: {} pass, {} unsupported", s.pass, s.unsupported),
                )
            } else {
                Check::new(
                    "drift",
                    Status::Warn,
                    Some(bad as f64),
                    t,
                    format!("not compliant: {} ({} pass)", parts.join(", "), s.pass),
                )
            }
        }
    }
}
