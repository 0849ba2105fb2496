//! What the agent can change on a host, how to read its current state, and the one place that
//! changes it. Kernel files are written in place and never created; configuration files the
//! agent owns are replaced atomically; swap and remounts go through [`SystemActions`].

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

use crate::host::{HostError, HostRoot, unescape_octal};
use crate::profile::types::CpuList;
use crate::profile::value::{normalize_whitespace, values_equal};
use crate::system::{ActionError, SystemActions};

/// Something the agent changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Target {
    /// A one-value kernel file under /proc/sys or /sys, written in place.
    KernelFile { path: String },
    /// A configuration file the agent owns (sysctl.d, limits.d drop-ins), replaced whole.
    ConfigFile { path: String },
    /// A swap area.
    Swap { device: String },
    /// The per-mount options of a mount point.
    Mount { path: String },
    /// The CPU affinity of a process (PID 1: systemd applies `CPUAffinity=` of system.conf on
    /// reload but never undoes it, so rollback restores it explicitly). Value: a CPU list.
    ProcessAffinity { pid: u32 },
}

impl Target {
    pub fn describe(&self) -> String {
        match self {
            Target::KernelFile { path } | Target::ConfigFile { path } => path.clone(),
            Target::Swap { device } => format!("swap {device}"),
            Target::Mount { path } => format!("mount {path}"),
            Target::ProcessAffinity { pid } => format!("CPU affinity of pid {pid}"),
        }
    }
}

/// A state of a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Value {
    /// A kernel value (a bracketed choice reduced to the chosen word) or a file's content.
    Text {
        value: String,
    },
    /// The file does not exist.
    Absent,
    SwapOn {
        priority: i32,
    },
    SwapOff,
    /// Per-mount options. As a goal: options that must be present.
    MountOptions {
        options: Vec<String>,
    },
}

impl Value {
    pub fn text(v: impl Into<String>) -> Value {
        Value::Text { value: v.into() }
    }

    /// Short form for people: the value, `absent`, `on`/`off`, the option list.
    pub fn describe(&self) -> String {
        match self {
            Value::Text { value } if value.contains('\n') => {
                format!("{} lines", value.lines().count())
            }
            Value::Text { value } => value.clone(),
            Value::Absent => "absent".into(),
            Value::SwapOn { priority } => format!("on (priority {priority})"),
            Value::SwapOff => "off".into(),
            Value::MountOptions { options } => options.join(","),
        }
    }

    /// Whether the current state `self` is the state `other` describes: kernel text after
    /// normalising, mount options as sets.
    pub fn same_as(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Text { value: a }, Value::Text { value: b }) => values_equal(a, b),
            (Value::MountOptions { options: a }, Value::MountOptions { options: b }) => {
                a.iter().collect::<BTreeSet<_>>() == b.iter().collect::<BTreeSet<_>>()
            }
            (a, b) => a == b,
        }
    }

    /// Whether the current state `self` still carries the change `goal` made: equal, or for
    /// mount options, every goal option present.
    pub fn carries(&self, goal: &Value) -> bool {
        match (self, goal) {
            (Value::MountOptions { options: have }, Value::MountOptions { options: want }) => {
                want.iter().all(|o| have.contains(o))
            }
            _ => self.same_as(goal),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("failed to replace {path}: {detail}")]
    Replace { path: String, detail: String },
    #[error(transparent)]
    Action(#[from] ActionError),
    #[error("{what} is not a mount point")]
    NotMounted { what: String },
    #[error("cannot set {target} to {value}")]
    Unsupported { target: String, value: String },
    #[error("cannot read {what}: {detail}")]
    Unreadable { what: String, detail: String },
}

impl ChangeError {
    /// The kernel's errno when it refused a write (EINVAL, EPERM, EBUSY, EIO): for callers
    /// that treat some refusals as expected (managed IRQs).
    pub fn os_error(&self) -> Option<i32> {
        match self {
            ChangeError::Host(HostError::Write { source, .. }) => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Reads the current state of a target.
pub fn observe(host: &HostRoot, target: &Target) -> Result<Value, ChangeError> {
    match target {
        Target::KernelFile { path } => Ok(Value::text(kernel_value(&host.read(path)?))),
        Target::ConfigFile { path } => match host.read(path) {
            Ok(text) => Ok(Value::text(text)),
            Err(e) if e.is_not_found() => Ok(Value::Absent),
            Err(e) => Err(e.into()),
        },
        Target::Swap { device } => {
            let swaps = host.read("/proc/swaps")?;
            Ok(swaps
                .lines()
                .skip(1)
                .find_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    (f.len() >= 5 && unescape_octal(f[0]) == *device)
                        .then(|| f[4].parse().unwrap_or(-1))
                })
                .map_or(Value::SwapOff, |priority| Value::SwapOn { priority }))
        }
        Target::Mount { path } => mount_options(host, path)?
            .map(|options| Value::MountOptions { options })
            .ok_or_else(|| ChangeError::NotMounted { what: path.clone() }),
        Target::ProcessAffinity { pid } => {
            Ok(Value::text(process_affinity(host, *pid)?.to_string()))
        }
    }
}

/// `Cpus_allowed_list` of /proc/PID/status: the CPUs a process may run on.
pub fn process_affinity(host: &HostRoot, pid: u32) -> Result<CpuList, ChangeError> {
    let path = format!("/proc/{pid}/status");
    let status = host.read(&path)?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|v| CpuList::parse_kernel(v.trim()).ok())
        .ok_or(ChangeError::Unreadable {
            what: path,
            detail: "no valid Cpus_allowed_list line".into(),
        })
}

/// The options of the top-most mount at `path`: per-mount and superblock options together,
/// sorted. `None` when `path` is not a mount point.
pub fn mount_options(host: &HostRoot, path: &str) -> Result<Option<Vec<String>>, HostError> {
    Ok(options_in(&host.read(MOUNTINFO)?, path))
}

pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// [`mount_options`] from the text of /proc/self/mountinfo (the one parser of that file).
pub fn options_in(mountinfo: &str, path: &str) -> Option<Vec<String>> {
    // The last entry for a path is the mount on top, the one processes see.
    mountinfo.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        if f.len() <= 5 || unescape_octal(f[4]) != path {
            return None;
        }
        // Fields after the `-` separator: fstype, source, superblock options.
        let sep = f.iter().position(|x| *x == "-")?;
        let mut set: BTreeSet<String> = f[5]
            .split(',')
            .chain(f.get(sep + 3).map_or("", |s| s).split(','))
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect();
        add_implicit_options(&mut set);
        Some(set.into_iter().collect())
    })
}

/// A kernel file's value: the bracketed word of a choice file (`always [madvise] never`),
/// otherwise the text with whitespace folded.
pub fn kernel_value(raw: &str) -> String {
    raw.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .map(str::to_owned)
        .unwrap_or_else(|| normalize_whitespace(raw))
}

/// Sets a target to a value. The only function that changes host state.
pub fn execute(
    host: &HostRoot,
    system: &mut dyn SystemActions,
    target: &Target,
    value: &Value,
) -> Result<(), ChangeError> {
    let unsupported = || ChangeError::Unsupported {
        target: target.describe(),
        value: value.describe(),
    };
    match (target, value) {
        (Target::KernelFile { path }, Value::Text { value }) => {
            Ok(host.write_kernel_file(path, value)?)
        }
        (Target::ConfigFile { path }, Value::Text { value }) => {
            let real = host.path(path)?;
            crate::rollback::journal::write_atomic(&real, value.as_bytes(), 0o644).map_err(|e| {
                ChangeError::Replace {
                    path: path.clone(),
                    detail: e.to_string(),
                }
            })
        }
        (Target::ConfigFile { path }, Value::Absent) => {
            let real = host.path(path)?;
            match std::fs::remove_file(&real) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(ChangeError::Replace {
                    path: path.clone(),
                    detail: e.to_string(),
                }),
            }
        }
        (Target::Swap { device }, Value::SwapOff) => Ok(system.swapoff(device)?),
        (Target::Swap { device }, Value::SwapOn { priority }) => {
            Ok(system.swapon(device, *priority)?)
        }
        (Target::ProcessAffinity { pid }, Value::Text { value }) => {
            let cpus = CpuList::parse_kernel(value).map_err(|_| unsupported())?;
            Ok(system.set_affinity(*pid, &cpus)?)
        }
        (Target::Mount { path }, Value::MountOptions { options }) => {
            let current = mount_options(host, path)?
                .ok_or_else(|| ChangeError::NotMounted { what: path.clone() })?;
            Ok(system.remount(path, &remount_options(&current, options))?)
        }
        _ => Err(unsupported()),
    }
}

/// mountinfo never shows `strictatime`: a mount with neither `noatime` nor `relatime` has it.
pub fn add_implicit_options(options: &mut BTreeSet<String>) {
    if !options.contains("noatime") && !options.contains("relatime") {
        options.insert("strictatime".to_owned());
    }
}

/// The option family a mount option belongs to: options of one family replace each other
/// (`noatime` replaces `relatime`, `ro` replaces `rw`, `commit=5` replaces `commit=60`).
pub fn family(option: &str) -> &str {
    match option {
        "noatime" | "relatime" | "strictatime" => "atime",
        "ro" | "rw" => "rw",
        "sync" | "async" => "sync",
        o => {
            let o = o.split('=').next().unwrap_or(o);
            o.strip_prefix("no").unwrap_or(o)
        }
    }
}

/// The options a mount has after adding `required` to `current`: required ones replace the
/// current options of their family.
pub fn merge_options(current: &[String], required: &[String]) -> Vec<String> {
    let replaced: BTreeSet<&str> = required.iter().map(|o| family(o)).collect();
    let mut out: Vec<String> = current
        .iter()
        .filter(|o| !replaced.contains(family(o)))
        .chain(required)
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The `-o remount,…` options that take a mount from `current` to `goal`: only what differs
/// (options to add, and the inverse of flags to drop), so filesystem options that stay the same
/// are never passed back to the filesystem.
pub fn remount_options(current: &[String], goal: &[String]) -> String {
    let mut out: Vec<String> = goal
        .iter()
        .filter(|o| !current.contains(o))
        .cloned()
        .collect();
    for o in current.iter().filter(|o| !goal.contains(o)) {
        if goal.iter().any(|g| family(g) == family(o)) {
            // A goal option of the same family replaces it. But mount(8) (libmount 2.38)
            // merges the mount's current options into a remount, and a kept `noatime` wins
            // over `relatime` in the kernel: `atime` drops it.
            if o == "noatime" && !out.iter().any(|x| x == "atime") {
                out.push("atime".to_owned());
            }
            continue;
        }
        let inverse = match o.as_str() {
            "noatime" | "relatime" => Some("strictatime".to_owned()),
            "strictatime" => Some("relatime".to_owned()),
            "ro" => Some("rw".to_owned()),
            "rw" => Some("ro".to_owned()),
            "lazytime" => Some("nolazytime".to_owned()),
            flag if !flag.contains('=') => Some(match flag.strip_prefix("no") {
                Some(base) => base.to_owned(),
                None => format!("no{flag}"),
            }),
            _ => None,
        };
        if let Some(i) = inverse
            && !out.contains(&i)
        {
            out.push(i);
        }
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn kernel_values() {
        assert_eq!(kernel_value("always [madvise] never\n"), "madvise");
        assert_eq!(
            kernel_value("4096\t131072\t6291456\n"),
            "4096 131072 6291456"
        );
    }

    #[test]
    fn merge_and_remount_options() {
        let current = v(&["errors=remount-ro", "relatime", "rw"]);
        let goal = merge_options(&current, &v(&["noatime", "nodiratime"]));
        assert_eq!(
            goal,
            v(&["errors=remount-ro", "noatime", "nodiratime", "rw"])
        );
        // Applying passes only what changes; relatime gives way to noatime.
        assert_eq!(remount_options(&current, &goal), "noatime,nodiratime");
        // Rolling back: relatime again (atime drops the noatime libmount would keep), and
        // diratime undoes nodiratime.
        assert_eq!(remount_options(&goal, &current), "relatime,atime,diratime");
        assert_eq!(
            remount_options(&v(&["noatime", "rw"]), &v(&["rw"])),
            "strictatime"
        );
        assert_eq!(
            merge_options(&v(&["commit=5", "rw"]), &v(&["commit=60", "ro"])),
            v(&["commit=60", "ro"])
        );
    }

    #[test]
    fn carries_and_same() {
        let now = Value::MountOptions {
            options: v(&["noatime", "nodiratime", "rw"]),
        };
        assert!(now.carries(&Value::MountOptions {
            options: v(&["noatime"])
        }));
        assert!(!now.same_as(&Value::MountOptions {
            options: v(&["noatime"])
        }));
        assert!(Value::text("4096 87380").same_as(&Value::text("4096\t87380")));
    }
}
