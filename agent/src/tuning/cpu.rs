//! cpu: governors, frequencies, energy/performance hints, boost, idle states, PM QoS.

use crate::host::HostRoot;
use crate::profile::types::CpuList;
use crate::profile::{Cpu, Expected};
use crate::verify::{Class, Item, Status};

const CPU_DIR: &str = "/sys/devices/system/cpu";
pub const PM_QOS_DEVICE: &str = "/dev/cpu_dma_latency";

/// The CPUs the kernel reports online.
pub fn online_cpus(host: &HostRoot) -> Result<CpuList, String> {
    let path = format!("{CPU_DIR}/online");
    let text = host.read_value(&path).map_err(|e| e.to_string())?;
    CpuList::parse_kernel(&text).map_err(|e| format!("{path}: {e}"))
}

pub fn verify(host: &HostRoot, cpu: &Cpu, out: &mut Vec<Item>) {
    let online = match online_cpus(host) {
        Ok(l) => l,
        Err(e) => {
            out.push(
                Item::new(Class::Cpu, "cpu.online", "readable")
                    .path(format!("{CPU_DIR}/online"))
                    .status(Status::Error)
                    .reason(e),
            );
            return;
        }
    };
    let cpus: Vec<u32> = match &cpu.cpus {
        None => online.iter().collect(),
        Some(wanted) => {
            for c in wanted.iter().filter(|c| !online.contains(*c)) {
                out.push(
                    Item::new(Class::Cpu, format!("cpu.{c}"), "online")
                        .path(format!("{CPU_DIR}/online"))
                        .actual("offline or absent")
                        .status(Status::Unsupported)
                        .reason(format!("CPU {c} is not online (online: {online})")),
                );
            }
            wanted.iter().filter(|c| online.contains(*c)).collect()
        }
    };

    let per_cpu = |knob: &str, file: &str, expected: Expected, absent: &str| -> Vec<Item> {
        cpus.iter()
            .map(|c| {
                let path = format!("{CPU_DIR}/cpu{c}/{file}");
                super::check_value(
                    host,
                    Class::Cpu,
                    format!("cpu.{c}.{knob}"),
                    &path,
                    &expected,
                    absent,
                )
            })
            .collect()
    };

    if let Some(g) = cpu.governor {
        let items = cpus
            .iter()
            .map(|c| {
                let path = format!("{CPU_DIR}/cpu{c}/cpufreq/scaling_governor");
                let item = super::check_value(
                    host,
                    Class::Cpu,
                    format!("cpu.{c}.governor"),
                    &path,
                    &Expected::Exact(g.to_string()),
                    NO_CPUFREQ,
                );
                governor_offered(host, *c, g.as_str(), item)
            })
            .collect();
        out.extend(collapse(items, "cpu.governor", NO_CPUFREQ));
    }
    for (knob, file, freq) in [
        ("min_freq", "scaling_min_freq", cpu.min_freq),
        ("max_freq", "scaling_max_freq", cpu.max_freq),
    ] {
        let Some(freq) = freq else { continue };
        let items = cpus
            .iter()
            .map(|c| frequency_item(host, *c, knob, file, freq))
            .collect();
        out.extend(collapse(items, &format!("cpu.{knob}"), NO_CPUFREQ));
    }
    if let Some(epp) = cpu.energy_performance_preference {
        let absent = "the cpufreq driver has no energy_performance_preference (intel_pstate or \
                      amd-pstate in active mode have it)";
        let items = per_cpu(
            "energy_performance_preference",
            "cpufreq/energy_performance_preference",
            Expected::Exact(epp.to_string()),
            absent,
        );
        out.extend(collapse(items, "cpu.energy_performance_preference", absent));
    }
    if let Some(epb) = cpu.energy_perf_bias {
        let absent = "no energy_perf_bias on this CPU (x86 with the EPB feature only)";
        let items = per_cpu(
            "energy_perf_bias",
            "power/energy_perf_bias",
            Expected::Exact(epb.to_string()),
            absent,
        );
        out.extend(collapse(items, "cpu.energy_perf_bias", absent));
    }
    if let Some(idle) = cpu.idle {
        let items = cpus
            .iter()
            .flat_map(|c| idle_items(host, *c, idle.max_latency_us))
            .collect();
        out.extend(collapse(items, "cpu.idle", NO_CPUIDLE));
    }
    if let Some(boost) = cpu.boost {
        out.push(boost_item(host, boost));
    }
    if let Some(pct) = cpu.min_perf_pct {
        let path = format!("{CPU_DIR}/intel_pstate/min_perf_pct");
        out.push(super::check_value(
            host,
            Class::Cpu,
            "cpu.min_perf_pct".into(),
            &path,
            &Expected::Exact(pct.0.to_string()),
            "no intel_pstate driver: min_perf_pct exists only with intel_pstate",
        ));
    }
    if let Some(us) = cpu.pm_qos_latency_us {
        out.push(pm_qos_item(host, us));
    }
}

const NO_CPUFREQ: &str = "no cpufreq driver for this CPU (virtual machines usually have none)";
const NO_CPUIDLE: &str = "no cpuidle driver for this CPU";

/// When every per-CPU item of a knob is `unsupported` because its file is absent, one item
/// says so instead of one per CPU.
fn collapse(items: Vec<Item>, key: &str, absent: &str) -> Vec<Item> {
    let all_absent = !items.is_empty()
        && items
            .iter()
            .all(|i| i.status == Status::Unsupported && i.reason.as_deref() == Some(absent));
    if !all_absent {
        return items;
    }
    let first = &items[0];
    let mut one = Item::new(Class::Cpu, key, first.expected.clone())
        .status(Status::Unsupported)
        .reason(format!("{absent}; checked all {} CPUs", items.len()));
    one.path = first.path.clone();
    vec![one]
}

/// A governor the driver does not offer cannot be applied: `unsupported`, not drift.
fn governor_offered(host: &HostRoot, cpu: u32, want: &str, item: Item) -> Item {
    if item.status != Status::Drift {
        return item;
    }
    let path = format!("{CPU_DIR}/cpu{cpu}/cpufreq/scaling_available_governors");
    match host.read_value(&path) {
        Ok(avail) if !avail.split_whitespace().any(|g| g == want) => {
            item.status(Status::Unsupported).reason(format!(
                "governor {want} is not offered (available: {avail})"
            ))
        }
        _ => item,
    }
}

fn frequency_item(
    host: &HostRoot,
    cpu: u32,
    knob: &str,
    file: &str,
    freq: crate::profile::types::Frequency,
) -> Item {
    use crate::profile::types::Frequency;
    let dir = format!("{CPU_DIR}/cpu{cpu}/cpufreq");
    let path = format!("{dir}/{file}");
    let key = format!("cpu.{cpu}.{knob}");
    let khz = match freq {
        Frequency::Khz(k) => k.to_string(),
        Frequency::HardwareMin | Frequency::HardwareMax => {
            let limit = if freq == Frequency::HardwareMin {
                "cpuinfo_min_freq"
            } else {
                "cpuinfo_max_freq"
            };
            match host.read_value(format!("{dir}/{limit}")) {
                Ok(v) => v,
                Err(e) => {
                    let item = Item::new(Class::Cpu, key, freq.to_string()).path(path);
                    return super::read_failure(item, &e, NO_CPUFREQ);
                }
            }
        }
    };
    super::check_value(
        host,
        Class::Cpu,
        key,
        &path,
        &Expected::Exact(khz),
        NO_CPUFREQ,
    )
}

/// One item per idle state of one CPU: disabled when its exit latency exceeds the limit,
/// enabled otherwise.
fn idle_items(host: &HostRoot, cpu: u32, max_latency_us: u32) -> Vec<Item> {
    let dir = format!("{CPU_DIR}/cpu{cpu}/cpuidle");
    let states = match host.list(&dir) {
        Ok(names) => names,
        Err(e) => {
            let item = Item::new(Class::Cpu, format!("cpu.{cpu}.idle"), "").path(dir);
            return vec![super::read_failure(item, &e, NO_CPUIDLE)];
        }
    };
    let mut states: Vec<(u32, String)> = states
        .into_iter()
        .filter_map(|n| Some((n.strip_prefix("state")?.parse().ok()?, n)))
        .collect();
    states.sort();
    states
        .into_iter()
        .map(|(_, state)| {
            let sdir = format!("{dir}/{state}");
            let key = format!("cpu.{cpu}.idle.{state}.disable");
            let latency = match host.read_value(format!("{sdir}/latency")) {
                Ok(l) => l,
                Err(e) => {
                    let item = Item::new(Class::Cpu, key, "").path(format!("{sdir}/latency"));
                    return super::read_failure(item, &e, NO_CPUIDLE);
                }
            };
            let Ok(latency_us) = latency.parse::<u64>() else {
                return Item::new(Class::Cpu, key, "")
                    .path(format!("{sdir}/latency"))
                    .actual(latency)
                    .status(Status::Error)
                    .reason("exit latency is not a number");
            };
            let disable = latency_us > u64::from(max_latency_us);
            let item = super::check_value(
                host,
                Class::Cpu,
                key,
                &format!("{sdir}/disable"),
                &Expected::Exact(if disable { "1" } else { "0" }.into()),
                NO_CPUIDLE,
            );
            if item.status == Status::Pass {
                return item;
            }
            let name = host
                .read_value(format!("{sdir}/name"))
                .unwrap_or_else(|_| "?".into());
            let why = if disable {
                format!("{name}: exit latency {latency_us} us exceeds {max_latency_us} us, must be disabled")
            } else {
                format!("{name}: exit latency {latency_us} us is within {max_latency_us} us, must stay enabled")
            };
            match item.reason {
                Some(_) => item,
                None => item.reason(why),
            }
        })
        .collect()
}

/// Turbo/boost: intel_pstate's `no_turbo` (inverted) where present, else cpufreq's `boost`.
fn boost_item(host: &HostRoot, boost: bool) -> Item {
    let no_turbo = format!("{CPU_DIR}/intel_pstate/no_turbo");
    if host.exists(&no_turbo) {
        let want = if boost { "0" } else { "1" };
        let item = super::check_value(
            host,
            Class::Cpu,
            "cpu.boost".into(),
            &no_turbo,
            &Expected::Exact(want.into()),
            "",
        );
        // Keep a read error's reason: it says more than the hint.
        return match item.reason {
            Some(_) => item,
            None => item.reason("intel_pstate no_turbo is the inverse of boost"),
        };
    }
    let path = format!("{CPU_DIR}/cpufreq/boost");
    super::check_value(
        host,
        Class::Cpu,
        "cpu.boost".into(),
        &path,
        &Expected::Exact(if boost { "1" } else { "0" }.into()),
        "no boost control (neither intel_pstate/no_turbo nor cpufreq/boost exists)",
    )
}

/// The system-wide CPU latency limit: /dev/cpu_dma_latency reads as a native-endian s32, the
/// smallest latency any holder requested (2000000000 when nobody holds it). Compliant when at
/// most the profile's value; the daemon holds it.
fn pm_qos_item(host: &HostRoot, us: u32) -> Item {
    let item =
        Item::new(Class::Cpu, "cpu.pm_qos_latency_us", format!("<= {us}")).path(PM_QOS_DEVICE);
    match host.read_bytes(PM_QOS_DEVICE) {
        Err(e) => super::read_failure(item, &e, "this kernel has no /dev/cpu_dma_latency"),
        Ok(bytes) => match <[u8; 4]>::try_from(bytes.as_slice()) {
            Err(_) => item
                .status(Status::Error)
                .reason(format!("expected 4 bytes, read {}", bytes.len())),
            Ok(raw) => {
                let value = i32::from_ne_bytes(raw);
                let item = item.actual(value.to_string());
                if i64::from(value) <= i64::from(us) {
                    item
                } else {
                    item.status(Status::Drift).reason(
                        "no process holds this latency limit; node-agentd holds it while running",
                    )
                }
            }
        },
    }
}
