//! isolation, the part that is built: engine units pinned to the isolated CPUs by drop-ins,
//! and the layout checked against the host (every CPU it names must exist and be online).
//!
//! Not yet: systemd's own CPUAffinity= (system.conf.d). Found under nspawn: systemd applies it on
//! reload but does not undo it when the setting goes away, so its rollback must also restore
//! PID 1's affinity (a journaled sched_setaffinity), which comes with the rest of isolation.

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

/// `Cpus_allowed_list` of /proc/PID/status.
fn allowed_cpus(host: &HostRoot, pid: u32) -> Option<CpuList> {
    let status = host.read(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|v| CpuList::parse_kernel(v.trim()).ok())
}

pub fn verify(
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
            && let Some(running) = allowed_cpus(host, u.main_pid)
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
