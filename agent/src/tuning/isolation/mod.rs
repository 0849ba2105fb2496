//! `[isolation]`: the CPU layout of a trading host, verified and applied piece by piece.
//!
//! - [`cmdline`]: the kernel command line (isolcpus, nohz_full, rcu_nocbs, irqaffinity) and the
//!   boot loader change that sets it (`pending-reboot` until the host boots with it);
//! - [`irq`]: every IRQ's affinity, the default affinity for new IRQs, irqbalance's banned CPUs;
//! - [`workqueue`]: the unbound workqueue cpumasks;
//! - here: systemd's own `CPUAffinity=` (system.conf.d) and PID 1's running affinity, the engine
//!   units' `CPUAffinity=` drop-ins and the layout checked against the host;
//! - [`tasks`]: the stray-task audit (tasks that may run, or last ran, on an isolated CPU).
//!
//! Found under nspawn: systemd applies system.conf's `CPUAffinity=` on reload but does not undo
//! it when the setting goes away, so PID 1's affinity is a journaled target of its own
//! ([`Target::ProcessAffinity`]) that rollback restores.

pub mod cmdline;
pub mod irq;
pub mod tasks;
pub mod workqueue;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::change::{Target, Value};
use crate::host::HostRoot;
use crate::profile::Isolation;
use crate::profile::types::CpuList;
use crate::verify::{Class, Item, Status};

use super::units::{ObservedUnit, UnitsObserved};

/// The engine unit's CPU drop-in (limits have their own file: one writer per file).
pub fn cpu_drop_in_path(unit: &str) -> String {
    format!("/etc/systemd/system/{unit}.d/zz-node-agent-cpu.conf")
}

const HEADER: &str = "# Written by node-agent (agentctl tune apply); do not edit.\n\
                      # Removed by `agentctl tune rollback`.\n";

/// Every CPU of the layout must exist and be online: a layout for another machine is invalid
/// input, not drift.
pub fn check_layout(host: &HostRoot, iso: &Isolation) -> Result<(), String> {
    let online = super::cpu::online_cpus(host)?;
    for (what, list) in [
        ("housekeeping_cpus", &iso.housekeeping_cpus),
        ("isolated_cpus", &iso.isolated_cpus),
    ] {
        let missing: CpuList = list.iter().filter(|c| !online.contains(*c)).collect();
        if !missing.is_empty() {
            return Err(format!(
                "isolation.{what} {list}: CPU {missing} is not online on this host (online: {online})"
            ));
        }
    }
    Ok(())
}

/// Whether the cgroup v2 cpuset controller is there (then AllowedCPUs= works too).
fn cpuset_v2(host: &HostRoot) -> bool {
    host.read("/sys/fs/cgroup/cgroup.controllers")
        .is_ok_and(|c| c.split_whitespace().any(|w| w == "cpuset"))
}

/// Exists when systemd is PID 1 (sd_booted(3)).
pub const SD_BOOTED: &str = "/run/systemd/system";

/// systemd's own affinity (inherited by every unit without one of its own).
pub const SYSTEM_CONF_DROP_IN: &str = "/etc/systemd/system.conf.d/zz-node-agent.conf";

/// Every isolation item: boot arguments, IRQs, workqueues, systemd, engine units, stray tasks.
pub fn verify(
    host: &HostRoot,
    iso: &Isolation,
    units: Option<&UnitsObserved>,
    out: &mut Vec<Item>,
) {
    cmdline::verify(host, iso, out);
    irq::verify(host, iso, out);
    workqueue::verify(host, iso, out);
    verify_systemd(host, iso, out);
    verify_engine_units(host, iso, units, out);
    tasks::verify(host, iso, out);
}

/// The system.conf.d drop-in with `CPUAffinity=<housekeeping>`, and PID 1's running affinity
/// (what the drop-in gives after a reload; apply sets it directly too, so the journal holds the
/// original for rollback).
fn verify_systemd(host: &HostRoot, iso: &Isolation, out: &mut Vec<Item>) {
    let hk = iso.housekeeping_cpus.to_string();
    // sd_booted(3): systemd is the init system exactly when this directory exists. Without
    // it, PID 1 is something else and a system.conf.d drop-in would mean nothing.
    if !host.exists(SD_BOOTED) {
        out.push(
            Item::new(Class::Isolation, "isolation.systemd.cpu_affinity", &hk)
                .path(SD_BOOTED)
                .status(Status::Unsupported)
                .reason("systemd is not the init system here (sd_booted)"),
        );
        return;
    }
    let content = format!("{HEADER}[Manager]\nCPUAffinity={hk}\n");
    let target = Target::ConfigFile {
        path: SYSTEM_CONF_DROP_IN.to_owned(),
    };
    let item = Item::new(Class::Isolation, "isolation.systemd.cpu_affinity", &hk)
        .path(SYSTEM_CONF_DROP_IN);
    match crate::change::observe(host, &target) {
        Ok(current) if current == Value::text(content.clone()) => out.push(item.actual(&hk)),
        Ok(current) => out.push(
            item.actual(match &current {
                Value::Absent => "absent".to_owned(),
                _ => "other content".to_owned(),
            })
            .status(Status::Drift)
            .reason("systemd's default CPUAffinity= (inherited by every unit)")
            .fix(target, current, Value::text(content)),
        ),
        Err(e) => out.push(item.status(Status::Error).reason(e.to_string())),
    }
    let pid1 = Target::ProcessAffinity { pid: 1 };
    let item =
        Item::new(Class::Isolation, "isolation.systemd.pid1_affinity", &hk).path("/proc/1/status");
    match crate::change::process_affinity(host, 1) {
        Ok(have) if have == iso.housekeeping_cpus => out.push(item.actual(&hk)),
        Ok(have) => out.push(
            item.actual(have.to_string())
                .status(Status::Drift)
                .reason("PID 1 (systemd) may run on isolated CPUs; new units inherit it")
                .fix(pid1, Value::text(have.to_string()), Value::text(&hk)),
        ),
        Err(e) => out.push(item.status(Status::Error).reason(e.to_string())),
    }
}

/// Writes the kernel refused that apply expected (see [`expected_refusal`]), kept for this boot
/// only: IRQ numbers and which IRQs are managed can change with the next boot.
pub const REFUSED_FILE: &str = "/run/node-agent/refused-writes.json";

/// A write the kernel refused, as apply recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub value: String,
    pub errno: i32,
    pub error: String,
    /// Seconds since the epoch.
    pub at: u64,
}

/// Whether a refused write is expected rather than a failure: the kernel will not move a
/// managed IRQ (EPERM; EIO where the interrupt chip cannot set affinity at all). Apply goes on
/// after it (the one exception to stopping on a failed write); the item is `unsupported`.
pub fn expected_refusal(target: &Target, errno: i32) -> Option<&'static str> {
    let Target::KernelFile { path } = target else {
        return None;
    };
    let irq = path.starts_with("/proc/irq/") && path.ends_with("/smp_affinity_list");
    match errno {
        libc_errno::EPERM if irq => Some("the kernel refuses to move this IRQ (a managed IRQ)"),
        libc_errno::EIO if irq => Some("the interrupt chip cannot change this IRQ's affinity"),
        _ => None,
    }
}

/// errno values, without a libc dependency for two constants.
mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const EIO: i32 = 5;
}

/// The refusals recorded during this boot, by kernel file path (empty when none or unreadable:
/// the items then show as drift again, which is the safe side).
pub fn refusals(host: &HostRoot) -> BTreeMap<String, Refusal> {
    host.read(REFUSED_FILE)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Adds a refusal to [`REFUSED_FILE`] (agent state under /run, not a host setting).
pub fn record_refusal(host: &HostRoot, path: &str, refusal: Refusal) -> Result<(), String> {
    let mut all = refusals(host);
    all.insert(path.to_owned(), refusal);
    let real = host.path(REFUSED_FILE).map_err(|e| e.to_string())?;
    let text = serde_json::to_string_pretty(&all).map_err(|e| e.to_string())?;
    crate::rollback::journal::write_atomic(&real, text.as_bytes(), 0o644).map_err(|e| e.to_string())
}

/// The engine units' `CPUAffinity=` drop-ins and their running processes' affinity.
fn verify_engine_units(
    host: &HostRoot,
    iso: &Isolation,
    units: Option<&UnitsObserved>,
    out: &mut Vec<Item>,
) {
    if iso.engine_units.is_empty() {
        return;
    }
    let observed: &[ObservedUnit] = match units {
        Some(UnitsObserved::Units(u)) => u,
        Some(UnitsObserved::NoBus(why) | UnitsObserved::Failed(why)) => {
            let status = match units {
                Some(UnitsObserved::NoBus(_)) => Status::Unsupported,
                _ => Status::Error,
            };
            out.push(
                Item::new(
                    Class::Isolation,
                    "isolation.engine_units",
                    iso.isolated_cpus.to_string(),
                )
                .status(status)
                .reason(why.clone()),
            );
            return;
        }
        None => return,
    };
    let iso_cpus = iso.isolated_cpus.to_string();
    let allowed_line = if cpuset_v2(host) {
        format!("AllowedCPUs={iso_cpus}\n")
    } else {
        String::new()
    };
    for unit in &iso.engine_units {
        let key = format!("isolation.{unit}.cpu_affinity");
        let path = cpu_drop_in_path(unit.as_str());
        let Some(u) = observed.iter().find(|o| o.unit == unit.as_str()) else {
            continue;
        };
        if u.load_state != "loaded" {
            out.push(
                Item::new(Class::Isolation, key, &iso_cpus)
                    .actual(&u.load_state)
                    .status(Status::Unsupported)
                    .reason("the engine unit is not installed on this host"),
            );
            continue;
        }
        let content = format!("{HEADER}[Service]\nCPUAffinity={iso_cpus}\n{allowed_line}");
        let target = Target::ConfigFile { path: path.clone() };
        let current = crate::change::observe(host, &target).unwrap_or(Value::Absent);
        let have = u.cpu_affinity.clone();
        let item = Item::new(Class::Isolation, key.clone(), &iso_cpus)
            .path(&path)
            .actual(have.as_ref().map_or("all".into(), |c| c.to_string()));
        out.push(
            if have.as_ref() == Some(&iso.isolated_cpus) && current == Value::text(content.clone())
            {
                item
            } else {
                item.status(Status::Drift)
                    .reason("the unit's CPUAffinity=")
                    .fix(target, current, Value::text(content))
            },
        );
        if u.main_pid != 0
            && let Ok(running) = crate::change::process_affinity(host, u.main_pid)
        {
            let eff = Item::new(Class::Isolation, format!("{key}.effective"), &iso_cpus)
                .path(format!("/proc/{}/status", u.main_pid))
                .actual(running.to_string());
            out.push(if running == iso.isolated_cpus {
                eff
            } else {
                eff.status(Status::Drift).reason(format!(
                    "the running process (pid {}) may run on {running}: restart the unit \
                     (agentctl units restart {unit}) once its unit is right",
                    u.main_pid
                ))
            });
        }
    }
}
