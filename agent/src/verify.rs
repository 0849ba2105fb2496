//! The verify report: one item per checked value, a summary, the exit code it implies, and its
//! two renderings (a table for people, versioned JSON for machines).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::change::{Target, Value};

/// Bumped on any incompatible change of the JSON report; additions keep the version.
pub const REPORT_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Sysctl,
    Cpu,
    Memory,
    Block,
    Limits,
    Mount,
    Clocksource,
    /// Resource limits of the managed systemd units.
    Units,
    /// The CPU layout: IRQs, workqueues, systemd and engine unit affinity, stray tasks.
    Isolation,
    /// The kernel command line (isolation's boot arguments): changed only by
    /// `agentctl isolation bootloader --write`, effective after a reboot.
    Cmdline,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Sysctl => "sysctl",
            Class::Cpu => "cpu",
            Class::Memory => "memory",
            Class::Block => "block",
            Class::Limits => "limits",
            Class::Mount => "mount",
            Class::Clocksource => "clocksource",
            Class::Units => "units",
            Class::Isolation => "isolation",
            Class::Cmdline => "cmdline",
        }
    }
}

/// Ordered by how urgently an operator should look: drift first, pass last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Could not be read.
    Error,
    /// The running value is wrong.
    Drift,
    /// Correct only after a reboot (kernel command line).
    PendingReboot,
    /// Running value right, but a reboot would undo it.
    NotPersistent,
    /// This kernel or machine lacks the knob.
    Unsupported,
    Pass,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Error,
        Status::Drift,
        Status::PendingReboot,
        Status::NotPersistent,
        Status::Unsupported,
        Status::Pass,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Drift => "drift",
            Status::PendingReboot => "pending-reboot",
            Status::NotPersistent => "not-persistent",
            Status::Unsupported => "unsupported",
            Status::Error => "error",
        }
    }

    /// Whether this status makes the host non-compliant (exit 1).
    pub fn is_finding(self, strict: bool) -> bool {
        match self {
            Status::Pass => false,
            Status::Unsupported => strict,
            _ => true,
        }
    }
}

/// One checked value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub class: Class,
    /// Stable dotted identifier, e.g. `net.core.somaxconn`, `cpu.3.governor`.
    pub key: String,
    pub expected: String,
    /// The value read; absent when it could not be read or does not exist.
    pub actual: Option<String>,
    /// The file the value was read from (on the host, without the host-root prefix).
    pub path: Option<String>,
    pub status: Status,
    /// Why the status is what it is, when that is not obvious from expected vs actual.
    pub reason: Option<String>,
    /// What apply would change to make this item pass; empty when apply cannot fix it.
    #[serde(skip)]
    pub fixes: Vec<Fix>,
}

/// One change that would fix a drifted item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fix {
    pub target: Target,
    /// The state observed now (what rollback would return to).
    pub from: Value,
    pub to: Value,
}

impl Item {
    pub fn new(class: Class, key: impl Into<String>, expected: impl Into<String>) -> Item {
        Item {
            class,
            key: key.into(),
            expected: expected.into(),
            actual: None,
            path: None,
            status: Status::Pass,
            reason: None,
            fixes: Vec::new(),
        }
    }

    /// Adds a change that would fix this item.
    pub fn fix(mut self, target: Target, from: Value, to: Value) -> Item {
        self.fixes.push(Fix { target, from, to });
        self
    }

    pub fn path(mut self, path: impl Into<String>) -> Item {
        self.path = Some(path.into());
        self
    }

    pub fn actual(mut self, actual: impl Into<String>) -> Item {
        self.actual = Some(actual.into());
        self
    }

    pub fn status(mut self, status: Status) -> Item {
        self.status = status;
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Item {
        self.reason = Some(reason.into());
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileRef {
    pub name: String,
    pub path: String,
}

/// Counts per status; every status is always present in JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Summary {
    pub pass: usize,
    pub drift: usize,
    pub pending_reboot: usize,
    pub not_persistent: usize,
    pub unsupported: usize,
    pub error: usize,
}

impl Summary {
    pub fn of(items: &[Item]) -> Summary {
        let mut s = Summary::default();
        for i in items {
            *s.slot(i.status) += 1;
        }
        s
    }

    fn slot(&mut self, status: Status) -> &mut usize {
        match status {
            Status::Pass => &mut self.pass,
            Status::Drift => &mut self.drift,
            Status::PendingReboot => &mut self.pending_reboot,
            Status::NotPersistent => &mut self.not_persistent,
            Status::Unsupported => &mut self.unsupported,
            Status::Error => &mut self.error,
        }
    }

    pub fn count(&self, status: Status) -> usize {
        self.clone().slot(status).to_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    pub profile: ProfileRef,
    pub host: String,
    pub items: Vec<Item>,
    pub summary: Summary,
    /// Set when the last apply on this host died midway: the host may be half-tuned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted_apply: Option<InterruptedApply>,
}

/// An apply that started and never finished (the process died); `agentctl tune rollback` or a
/// new apply resolves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterruptedApply {
    pub profile: String,
    /// Seconds since the epoch.
    pub started: u64,
    pub user: String,
    pub steps_done: usize,
    pub steps_total: usize,
}

/// `2026-11-25 22:37:08 UTC` from seconds since the epoch.
pub fn format_time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl Report {
    pub fn new(profile: ProfileRef, host: String, items: Vec<Item>) -> Report {
        let summary = Summary::of(&items);
        Report {
            schema_version: REPORT_SCHEMA_VERSION,
            profile,
            host,
            items,
            summary,
            interrupted_apply: None,
        }
    }

    /// True when nothing needs attention (`unsupported` counts only with `strict`).
    pub fn is_compliant(&self, strict: bool) -> bool {
        self.interrupted_apply.is_none() && !self.items.iter().any(|i| i.status.is_finding(strict))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// A table for a terminal of at least 100 columns: grouped by class, findings first, the
    /// reason on its own line under a finding.
    pub fn to_table(&self) -> String {
        const W_STATUS: usize = 14;
        const W_KEY: usize = 42;
        const W_VAL: usize = 19;
        let mut out = String::new();
        let header = format!("profile {}  host {}", self.profile.name, self.host);
        let _ = writeln!(out, "{}", fit(&header, 100));
        let _ = writeln!(out, "{}", fit(&format!("from {}", self.profile.path), 100));
        if let Some(i) = &self.interrupted_apply {
            let _ = writeln!(
                out,
                "\nWARNING: interrupted apply of {} by {}, started {}, {} of {} steps done.\n\
                 The host may be half-tuned: run `agentctl tune apply` again or `agentctl tune rollback`.",
                i.profile,
                i.user,
                format_time(i.started),
                i.steps_done,
                i.steps_total
            );
        }
        let mut by_class: BTreeMap<Class, Vec<&Item>> = BTreeMap::new();
        for item in &self.items {
            by_class.entry(item.class).or_default().push(item);
        }
        for (class, mut items) in by_class {
            items.sort_by_key(|i| i.status);
            let _ = writeln!(out, "\n{}", class.as_str().to_uppercase());
            let _ = writeln!(
                out,
                "  {:<W_STATUS$} {:<W_KEY$} {:<W_VAL$} ACTUAL",
                "STATUS", "KEY", "EXPECTED"
            );
            for i in items {
                let actual = i.actual.as_deref().unwrap_or("-");
                let _ = writeln!(
                    out,
                    "  {:<W_STATUS$} {:<W_KEY$} {:<W_VAL$} {}",
                    i.status.as_str(),
                    fit(&i.key, W_KEY),
                    fit(&i.expected, W_VAL),
                    fit(actual, W_VAL),
                );
                if i.status != Status::Pass
                    && let Some(reason) = &i.reason
                {
                    for line in wrap(reason, 100 - W_STATUS - 3) {
                        let _ = writeln!(out, "  {:<W_STATUS$} {line}", "");
                    }
                }
            }
        }
        let s = &self.summary;
        let _ = write!(out, "\n{} items:", self.items.len());
        let mut first = true;
        for status in Status::ALL.iter().rev() {
            let n = s.count(*status);
            if n > 0 {
                let _ = write!(
                    out,
                    "{} {n} {}",
                    if first { "" } else { "," },
                    status.as_str()
                );
                first = false;
            }
        }
        out.push('\n');
        out
    }
}

/// Splits `s` into lines of at most `width` characters at spaces (a longer word is cut).
fn wrap(s: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in s.split_whitespace() {
        let word = fit(word, width);
        let len = line.chars().count();
        if len > 0 && len + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Shortens `s` to `width` characters with an ellipsis.
fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(width - 1).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        Report::new(
            ProfileRef {
                name: "p".into(),
                path: "/p.toml".into(),
            },
            "host1".into(),
            vec![
                Item::new(Class::Sysctl, "vm.swappiness", "10")
                    .path("/proc/sys/vm/swappiness")
                    .actual("60")
                    .status(Status::Drift),
                Item::new(Class::Sysctl, "net.core.somaxconn", ">= 1024")
                    .path("/proc/sys/net/core/somaxconn")
                    .actual("4096"),
                Item::new(Class::Cpu, "cpu.governor", "performance")
                    .status(Status::Unsupported)
                    .reason("no cpufreq"),
            ],
        )
    }

    #[test]
    fn formats_utc_times() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(1_795_646_228), "2026-11-25 22:37:08 UTC");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00 UTC");
    }

    #[test]
    fn compliance_and_strict() {
        let mut r = sample();
        assert!(!r.is_compliant(false));
        r.items.remove(0);
        assert!(r.is_compliant(false));
        assert!(!r.is_compliant(true));
    }

    #[test]
    fn json_round_trip_and_shape() {
        let r = sample();
        let json = r.to_json();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["summary"]["drift"], 1);
        assert_eq!(v["summary"]["not-persistent"], 0);
        assert_eq!(v["items"][0]["status"], "drift");
        assert_eq!(v["items"][2]["status"], "unsupported");
        let keys: Vec<&str> = v["items"][0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "actual", "class", "expected", "key", "path", "reason", "status"
            ]
        );
    }

    #[test]
    fn table_fits_100_columns_and_puts_drift_first() {
        let mut items = sample().items;
        items.push(
            Item::new(Class::Sysctl, "net.ipv4.tcp_rmem", "4096 87380 134217728")
                .actual("4096 131072 6291456 and some very long text beyond any column")
                .status(Status::Drift)
                .reason(format!("{} {}", "word ".repeat(40), "x".repeat(300))),
        );
        let r = Report::new(sample().profile, "host1".into(), items);
        let t = r.to_table();
        assert!(t.contains("\n                 word word"), "{t}");
        assert!(t.lines().all(|l| l.chars().count() <= 100), "{t}");
        let drift = t.find("vm.swappiness").unwrap();
        let pass = t.find("net.core.somaxconn").unwrap();
        assert!(drift < pass);
        assert!(
            t.ends_with("4 items: 1 pass, 1 unsupported, 2 drift\n"),
            "{t}"
        );
    }
}
