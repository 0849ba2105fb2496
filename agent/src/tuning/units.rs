//! units: the resource limits of the managed trading units. limits.d covers login sessions
//! only; services take their limits from their units. The profile's `[limits]` entries for the
//! domain `*` apply to every managed unit: verify compares the unit's Limit*= properties (what
//! systemd will give the next process) and, for a running unit, /proc/<MainPID>/limits (what
//! the running process has); apply writes a drop-in per unit.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::change::{Target, Value};
use crate::host::HostRoot;
use crate::profile::LimitSetting;
use crate::profile::types::{LimitDomain, LimitItem, LimitValue};
use crate::verify::{Class, Item, Status};

/// What the bus said about one managed unit (gathered by the caller: verify stays free of
/// D-Bus).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedUnit {
    pub unit: String,
    pub load_state: String,
    /// 0 when not running.
    pub main_pid: u32,
    /// systemd property name (`LimitNOFILE`, `LimitNOFILESoft`, …) → value (u64::MAX: infinity).
    pub limits: BTreeMap<String, u64>,
    /// The unit's CPUAffinity=; `None` when not restricted.
    pub cpu_affinity: Option<crate::profile::types::CpuList>,
}

/// The units part of the observed state: the units, or why they could not be observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitsObserved {
    Units(Vec<ObservedUnit>),
    /// No system bus on this host (no systemd): the class is `unsupported`.
    NoBus(String),
    /// The bus is there but could not be asked.
    Failed(String),
}

/// The units verify must ask the bus about for `profile`: the managed units (`order`, asked for
/// only when needed, since it comes from the settings) when the profile sets unit limits (the
/// `*` domain), then the engine units of `[isolation]`.
pub fn units_to_observe<E>(
    profile: &crate::profile::Profile,
    order: impl FnOnce() -> Result<Vec<crate::profile::types::UnitName>, E>,
) -> Result<Vec<crate::profile::types::UnitName>, E> {
    let limits =
        profile.settings.limits.iter().any(|(d, items)| {
            d.as_str() == "*" && items.keys().any(|i| systemd_limit(*i).is_some())
        });
    let mut names = if limits { order()? } else { Vec::new() };
    let engines = profile
        .settings
        .isolation
        .iter()
        .flat_map(|i| &i.engine_units);
    for e in engines {
        if !names.contains(e) {
            names.push(e.clone());
        }
    }
    Ok(names)
}

/// A limits.conf item as systemd and /proc/PID/limits know it: directive, /proc row, and the
/// factor from limits.conf's unit (KiB, minutes) to the kernel's (bytes, seconds).
pub fn systemd_limit(item: LimitItem) -> Option<(&'static str, &'static str, u64)> {
    Some(match item {
        LimitItem::Nofile => ("LimitNOFILE", "Max open files", 1),
        LimitItem::Nproc => ("LimitNPROC", "Max processes", 1),
        LimitItem::Memlock => ("LimitMEMLOCK", "Max locked memory", 1024),
        LimitItem::Core => ("LimitCORE", "Max core file size", 1024),
        LimitItem::Data => ("LimitDATA", "Max data size", 1024),
        LimitItem::Fsize => ("LimitFSIZE", "Max file size", 1024),
        LimitItem::Stack => ("LimitSTACK", "Max stack size", 1024),
        LimitItem::As => ("LimitAS", "Max address space", 1024),
        LimitItem::Rss => ("LimitRSS", "Max resident set", 1024),
        LimitItem::Cpu => ("LimitCPU", "Max cpu time", 60),
        LimitItem::Locks => ("LimitLOCKS", "Max file locks", 1),
        LimitItem::Sigpending => ("LimitSIGPENDING", "Max pending signals", 1),
        LimitItem::Msgqueue => ("LimitMSGQUEUE", "Max msgqueue size", 1),
        LimitItem::Rtprio => ("LimitRTPRIO", "Max realtime priority", 1),
        // Session-only (maxlogins, nonewprivs) or encoded differently (nice, priority).
        _ => return None,
    })
}

/// The kernel value of a limits.conf value: u64::MAX for unlimited.
fn kernel_value(v: LimitValue, factor: u64) -> u64 {
    match v {
        LimitValue::Unlimited => u64::MAX,
        LimitValue::Number(n) => (n.max(0) as u64).saturating_mul(factor),
    }
}

fn show(v: u64) -> String {
    if v == u64::MAX {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

/// The drop-in of one unit: /etc/systemd/system/<unit>.d/zz-node-agent.conf.
pub fn drop_in_path(unit: &str) -> String {
    format!("/etc/systemd/system/{unit}.d/zz-node-agent-limits.conf")
}

/// The limits of the profile that apply to units: domain `*`, items systemd knows.
fn unit_limits(
    wanted: &BTreeMap<LimitDomain, BTreeMap<LimitItem, LimitSetting>>,
) -> Vec<(LimitItem, LimitSetting)> {
    wanted
        .iter()
        .find(|(d, _)| d.as_str() == "*")
        .map(|(_, items)| {
            items
                .iter()
                .filter(|(i, _)| systemd_limit(**i).is_some())
                .map(|(i, s)| (*i, *s))
                .collect()
        })
        .unwrap_or_default()
}

/// The drop-in text for the profile's unit limits.
pub fn drop_in(
    profile: &str,
    limits: &[(LimitItem, LimitSetting)],
    current: &ObservedUnit,
) -> String {
    let mut out = format!(
        "# Written by node-agent (agentctl tune apply, profile {profile}); do not edit.\n\
         # Removed by `agentctl tune rollback`.\n[Service]\n"
    );
    for (item, setting) in limits {
        let (directive, _, factor) = systemd_limit(*item).unwrap_or(("", "", 1));
        // A side the profile leaves open keeps the unit's current value.
        let side = |v: Option<LimitValue>, prop: String| match v {
            Some(v) => kernel_value(v, factor),
            None => current.limits.get(&prop).copied().unwrap_or(u64::MAX),
        };
        let soft = side(setting.soft, format!("{directive}Soft"));
        let hard = side(setting.hard, directive.to_owned());
        let word = |v: u64| {
            if v == u64::MAX {
                "infinity".to_owned()
            } else {
                v.to_string()
            }
        };
        let _ = writeln!(out, "{directive}={}:{}", word(soft), word(hard));
    }
    out
}

/// /proc/PID/limits: row name → (soft, hard).
pub fn parse_proc_limits(text: &str) -> BTreeMap<String, (u64, u64)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            // Columns are fixed-width: name 26, soft 21, hard 21.
            let name = l.get(..26)?.trim().to_owned();
            let mut rest = l.get(26..)?.split_whitespace();
            let parse = |s: &str| {
                if s == "unlimited" {
                    Some(u64::MAX)
                } else {
                    s.parse().ok()
                }
            };
            Some((name, (parse(rest.next()?)?, parse(rest.next()?)?)))
        })
        .collect()
}

pub fn verify(
    host: &HostRoot,
    profile: &str,
    wanted: &BTreeMap<LimitDomain, BTreeMap<LimitItem, LimitSetting>>,
    observed: &UnitsObserved,
    out: &mut Vec<Item>,
) {
    let limits = unit_limits(wanted);
    if limits.is_empty() {
        return;
    }
    let units = match observed {
        UnitsObserved::Units(u) => u,
        UnitsObserved::NoBus(why) | UnitsObserved::Failed(why) => {
            let status = match observed {
                UnitsObserved::NoBus(_) => Status::Unsupported,
                _ => Status::Error,
            };
            out.push(
                Item::new(Class::Units, "units", "managed units' limits")
                    .status(status)
                    .reason(why.clone()),
            );
            return;
        }
    };
    for u in units {
        if u.load_state != "loaded" {
            out.push(
                Item::new(Class::Units, format!("units.{}", u.unit), "loaded")
                    .actual(&u.load_state)
                    .status(Status::Unsupported)
                    .reason("the unit is not installed on this host"),
            );
            continue;
        }
        let path = drop_in_path(&u.unit);
        let proc_limits = (u.main_pid != 0)
            .then(|| host.read(format!("/proc/{}/limits", u.main_pid)).ok())
            .flatten()
            .map(|t| parse_proc_limits(&t));
        let content = drop_in(profile, &limits, u);
        let current_drop_in =
            crate::change::observe(host, &Target::ConfigFile { path: path.clone() })
                .unwrap_or(Value::Absent);
        for (item, setting) in &limits {
            let Some((directive, row, factor)) = systemd_limit(*item) else {
                continue;
            };
            for (kind, want) in [("soft", setting.soft), ("hard", setting.hard)] {
                let Some(want) = want else { continue };
                let want = kernel_value(want, factor);
                let prop = if kind == "soft" {
                    format!("{directive}Soft")
                } else {
                    directive.to_owned()
                };
                let key = format!("units.{}.{item}.{kind}", u.unit);
                let item_out = Item::new(Class::Units, key.clone(), show(want)).path(&path);
                let item_out = match u.limits.get(&prop) {
                    None => item_out
                        .status(Status::Error)
                        .reason(format!("systemd did not report {prop}")),
                    Some(have) if *have == want => item_out.actual(show(*have)),
                    Some(have) => item_out
                        .actual(show(*have))
                        .status(Status::Drift)
                        .reason(format!("{prop} of the unit"))
                        .fix(
                            Target::ConfigFile { path: path.clone() },
                            current_drop_in.clone(),
                            Value::text(content.clone()),
                        ),
                };
                out.push(item_out);
                if let Some(running) = proc_limits.as_ref().and_then(|p| p.get(row)) {
                    let have = if kind == "soft" { running.0 } else { running.1 };
                    let eff = Item::new(Class::Units, format!("{key}.effective"), show(want))
                        .path(format!("/proc/{}/limits", u.main_pid))
                        .actual(show(have));
                    out.push(if have == want {
                        eff
                    } else {
                        eff.status(Status::Drift).reason(format!(
                            "the running process (pid {}) has another limit: restart the unit \
                             (agentctl units restart {}) once its unit is right",
                            u.main_pid, u.unit
                        ))
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max open files            1024                 524288               files     \n\
                    Max locked memory         8388608              unlimited            bytes     \n";
        let p = parse_proc_limits(text);
        assert_eq!(p["Max open files"], (1024, 524288));
        assert_eq!(p["Max locked memory"], (8388608, u64::MAX));
    }

    #[test]
    fn drop_in_renders_soft_hard_and_infinity() {
        let limits = vec![
            (
                LimitItem::Nofile,
                LimitSetting {
                    soft: Some(LimitValue::Number(1_000_000)),
                    hard: Some(LimitValue::Number(1_000_000)),
                },
            ),
            (
                LimitItem::Memlock,
                LimitSetting {
                    soft: Some(LimitValue::Unlimited),
                    hard: Some(LimitValue::Unlimited),
                },
            ),
            (
                LimitItem::Nproc,
                LimitSetting {
                    soft: Some(LimitValue::Number(4096)),
                    hard: None,
                },
            ),
        ];
        let unit = ObservedUnit {
            unit: "trading-engine.service".into(),
            load_state: "loaded".into(),
            main_pid: 0,
            limits: [("LimitNPROC".to_owned(), 65536)].into(),
            cpu_affinity: None,
        };
        assert_eq!(
            drop_in("trading-latency", &limits, &unit),
            "# Written by node-agent (agentctl tune apply, profile trading-latency); do not edit.\n\
             # Removed by `agentctl tune rollback`.\n[Service]\n\
             LimitNOFILE=1000000:1000000\nLimitMEMLOCK=infinity:infinity\nLimitNPROC=4096:65536\n"
        );
    }
}
