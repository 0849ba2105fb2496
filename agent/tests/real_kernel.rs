//! Real-kernel tier (TESTING.md tier 2), read-only: `verify` of this machine's own kernel
//! against the shipped `trading-latency` and `network-latency` profiles, through the library
//! and through the real `agentctl` binary, with every item's `actual` checked against an
//! independent read made here (the `sysctl` binary, std::fs, our own parsing of the raw
//! profile TOML) and every status checked for consistency with it.
//!
//! Opt-in: runs only with `NODE_AGENT_PRIVILEGED_TESTS=1`; otherwise each `real_kernel_*` test
//! returns at once after a skip notice on stderr. The tests never write: they snapshot every
//! kernel file the profiles can touch before and compare after.
//!
//! Kernel knobs are global, so the tests of this tier take one process-wide lock.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};

use node_agent::host::HostRoot;
use node_agent::profile::{self, SearchPath};
use node_agent::verify::{Class, Item, Report, Status};

const PRIVILEGED_ENV: &str = "NODE_AGENT_PRIVILEGED_TESTS";
const CPU_DIR: &str = "/sys/devices/system/cpu";
const THP_DIR: &str = "/sys/kernel/mm/transparent_hugepage";
const SYSCTL_DIRS: [&str; 5] = [
    "/etc/sysctl.d",
    "/run/sysctl.d",
    "/usr/local/lib/sysctl.d",
    "/usr/lib/sysctl.d",
    "/lib/sysctl.d",
];

// ---------------------------------------------------------------------------------------------
// Tier plumbing

/// The tier's lock: kernel knobs are global, so these tests never overlap.
fn tier_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// True when the tier is enabled; otherwise says on stderr that `test` was skipped.
fn enabled(test: &str) -> bool {
    if std::env::var(PRIVILEGED_ENV).as_deref() == Ok("1") {
        return true;
    }
    #[allow(clippy::print_stderr)]
    {
        eprintln!("{test}: skipped (set {PRIVILEGED_ENV}=1 to run the real-kernel tier)");
    }
    false
}

fn profiles_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tuning-profiles")
}

// ---------------------------------------------------------------------------------------------
// Independent reads

fn norm(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Exact comparison as a person would do it: numerically when both are integers, else the
/// whitespace-normalised text.
fn same_value(a: &str, b: &str) -> bool {
    let (a, b) = (norm(a), norm(b));
    match (a.parse::<i128>(), b.parse::<i128>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

fn read_file(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The bracketed word of a choice file such as `always [madvise] never`.
fn bracketed(text: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))
        .map(str::to_owned)
}

/// `/proc/sys/...` of a dotted key (`/` inside the key stands for a dot in a component).
fn sysctl_path(key: &str) -> String {
    let comps: Vec<String> = key.split('.').map(|c| c.replace('/', ".")).collect();
    format!("/proc/sys/{}", comps.join("/"))
}

/// Whether the procps `sysctl` binary can be run here (checked once).
fn have_sysctl_binary() -> bool {
    static HAVE: OnceLock<bool> = OnceLock::new();
    *HAVE.get_or_init(|| {
        let ok = Command::new("sysctl")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            #[allow(clippy::print_stderr)]
            {
                eprintln!(
                    "note: no procps `sysctl` binary: sysctl values are read from /proc/sys \
                     with std::fs instead"
                );
            }
        }
        ok
    })
}

/// The running value of a sysctl: `sysctl -n KEY` (independent of the agent's reader), or
/// /proc/sys with std::fs when procps is absent. `None` when the kernel lacks the key.
fn sysctl_value(key: &str) -> Option<String> {
    if have_sysctl_binary() {
        let out = Command::new("sysctl")
            .args(["-n", key])
            .output()
            .expect("run sysctl");
        if !out.status.success() {
            assert!(
                !Path::new(&sysctl_path(key)).exists(),
                "sysctl -n {key} failed although {} exists: {}",
                sysctl_path(key),
                String::from_utf8_lossy(&out.stderr)
            );
            return None;
        }
        return Some(norm(&String::from_utf8_lossy(&out.stdout)));
    }
    read_file(&sysctl_path(key)).map(|s| norm(&s))
}

/// Online CPUs from /sys/devices/system/cpu/online (`0-3,8,10-11`).
fn online_cpus() -> Vec<u32> {
    let text = read_file(&format!("{CPU_DIR}/online")).expect("read cpu/online");
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<u32>().unwrap()..=b.parse::<u32>().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

/// The idle-state directories of one CPU (`state0`, `state1`, ...), in number order.
fn idle_states(cpu: u32) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(format!("{CPU_DIR}/cpu{cpu}/cpuidle")) else {
        return Vec::new();
    };
    let mut states: Vec<(u32, String)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some((name.strip_prefix("state")?.parse().ok()?, name))
        })
        .collect();
    states.sort();
    states.into_iter().map(|(_, n)| n).collect()
}

/// Whether any boot-time sysctl file (sysctl.d directories or /etc/sysctl.conf) mentions the
/// key, in dotted or slashed form.
fn boot_files_mention(key: &str) -> bool {
    let slashed = sysctl_path(key)["/proc/sys/".len()..].to_owned();
    let mut files: Vec<PathBuf> = vec![PathBuf::from("/etc/sysctl.conf")];
    for dir in SYSCTL_DIRS {
        if let Ok(entries) = std::fs::read_dir(dir) {
            files.extend(entries.filter_map(Result::ok).map(|e| e.path()));
        }
    }
    files.iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|text| {
            text.lines().any(|l| {
                let l = l.trim();
                if l.starts_with('#') || l.starts_with(';') {
                    return false;
                }
                let Some((k, _)) = l.split_once('=') else {
                    return false;
                };
                let k = k.trim().trim_start_matches('-').trim();
                k == key || k == slashed
            })
        })
    })
}

/// pam_limits' effective line for (domain, type, item): limits.conf, then limits.d/*.conf in
/// name order, last one wins; `-` sets soft and hard.
fn effective_limit(domain: &str, kind: &str, item: &str) -> Option<(String, String)> {
    let mut files = vec!["/etc/security/limits.conf".to_owned()];
    if let Ok(entries) = std::fs::read_dir("/etc/security/limits.d") {
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".conf"))
            .collect();
        names.sort();
        files.extend(
            names
                .into_iter()
                .map(|n| format!("/etc/security/limits.d/{n}")),
        );
    }
    let mut found = None;
    for file in files {
        let Some(text) = read_file(&file) else {
            continue;
        };
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 4 && f[0] == domain && f[2] == item && (f[1] == kind || f[1] == "-") {
                found = Some((file.clone(), f[3].to_owned()));
            }
        }
    }
    found
}

/// The topmost mountinfo entry for a mount point: (per-mount options, super options).
fn mount_entry(path: &str) -> Option<(Vec<String>, Vec<String>)> {
    let text = read_file("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    let split = |s: &str| -> Vec<String> { s.split(',').map(str::to_owned).collect() };
    let mut found = None;
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        if left.len() < 6 || right.len() < 3 {
            continue;
        }
        if left[4].replace("\\040", " ") == path {
            found = Some((split(left[5]), split(right[2])));
        }
    }
    found
}

/// Active swap areas: the lines of /proc/swaps after its header.
fn swap_areas() -> usize {
    read_file("/proc/swaps")
        .expect("read /proc/swaps")
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// /etc/fstab lines that turn swap on at boot.
fn fstab_swap_lines() -> usize {
    read_file("/etc/fstab").map_or(0, |t| {
        t.lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() >= 3
                    && !f[0].starts_with('#')
                    && f[2] == "swap"
                    && !f
                        .get(3)
                        .is_some_and(|o| o.split(',').any(|o| o == "noauto"))
            })
            .count()
    })
}

// ---------------------------------------------------------------------------------------------
// The profile, parsed here from its TOML (not through the agent's profile types)

/// A value wanted by the profile, as written in the TOML.
#[derive(Debug, Clone, PartialEq)]
enum Want {
    Exact(String),
    Bound { min: Option<i64>, max: Option<i64> },
}

impl Want {
    fn from_toml(v: &toml::Value) -> Want {
        match v {
            toml::Value::Integer(n) => Want::Exact(n.to_string()),
            toml::Value::String(s) => Want::Exact(s.clone()),
            toml::Value::Table(t) => Want::Bound {
                min: t.get("min").and_then(toml::Value::as_integer),
                max: t.get("max").and_then(toml::Value::as_integer),
            },
            other => panic!("unexpected value {other:?} in a profile"),
        }
    }

    fn met_by(&self, actual: &str) -> bool {
        match self {
            Want::Exact(w) => same_value(w, actual),
            Want::Bound { min, max } => {
                let n: i128 = actual
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("bound on non-integer {actual:?}"));
                min.is_none_or(|m| n >= i128::from(m)) && max.is_none_or(|m| n <= i128::from(m))
            }
        }
    }
}

/// The profile file with its includes merged, table by table (later wins key by key; arrays of
/// tables append), as docs/PROFILE-FORMAT.md describes.
fn raw_profile(name: &str) -> toml::Table {
    let path = profiles_dir().join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).expect("read profile");
    let mut own: toml::Table = text.parse().expect("profile TOML");
    let includes: Vec<String> = own
        .get("profile")
        .and_then(|p| p.get("include"))
        .and_then(toml::Value::as_array)
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    own.remove("profile");
    let mut merged = toml::Table::new();
    for inc in includes {
        merge(&mut merged, raw_profile(&inc));
    }
    merge(&mut merged, own);
    merged
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) if k != "limits" => {
                b.extend(o);
            }
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => {
                // limits: domain -> item table, merge one level deeper.
                for (dom, items) in o {
                    match (b.get_mut(&dom), items) {
                        (Some(toml::Value::Table(bi)), toml::Value::Table(oi)) => bi.extend(oi),
                        (_, items) => {
                            b.insert(dom, items);
                        }
                    }
                }
            }
            (Some(toml::Value::Array(b)), toml::Value::Array(o)) => b.extend(o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn section<'a>(p: &'a toml::Table, name: &str) -> Option<&'a toml::Table> {
    p.get(name).and_then(toml::Value::as_table)
}

// ---------------------------------------------------------------------------------------------
// Read-only guard

/// Every kernel file the shipped profiles name or could touch on this machine, with its
/// contents: the sysctls of the profile, THP, every cpuidle `disable`, every block scheduler,
/// /proc/swaps.
fn snapshot(p: &toml::Table) -> BTreeMap<String, Option<String>> {
    let mut paths: Vec<String> = section(p, "sysctl")
        .map(|s| s.keys().map(|k| sysctl_path(k)).collect())
        .unwrap_or_default();
    paths.push(format!("{THP_DIR}/enabled"));
    paths.push(format!("{THP_DIR}/defrag"));
    paths.push("/proc/swaps".into());
    for cpu in online_cpus() {
        for state in idle_states(cpu) {
            paths.push(format!("{CPU_DIR}/cpu{cpu}/cpuidle/{state}/disable"));
        }
        paths.push(format!("{CPU_DIR}/cpu{cpu}/cpufreq/scaling_governor"));
    }
    if let Ok(entries) = std::fs::read_dir("/sys/block") {
        for e in entries.filter_map(Result::ok) {
            let dev = e.file_name().to_string_lossy().into_owned();
            paths.push(format!("/sys/block/{dev}/queue/scheduler"));
        }
    }
    paths
        .into_iter()
        .map(|p| (p.clone(), read_file(&p)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The checks

/// Checks every item of `report` against an independent read; fails on any item no rule
/// covers, so a new kind of item cannot slip through unchecked.
fn check_report(profile_name: &str, report: &Report) {
    let p = raw_profile(profile_name);
    assert_eq!(report.profile.name, profile_name);
    assert!(!report.items.is_empty(), "empty report");
    let cpus = online_cpus();
    let mut checked: BTreeSet<usize> = BTreeSet::new();
    let by_key = |key: &str| -> Vec<(usize, &Item)> {
        report
            .items
            .iter()
            .enumerate()
            .filter(|(_, i)| i.key == key)
            .collect()
    };
    let one = |key: &str| -> (usize, &Item) {
        let found = by_key(key);
        assert_eq!(found.len(), 1, "expected exactly one item {key}: {found:?}");
        found[0]
    };

    // sysctl: `sysctl -n KEY` vs actual; status from the TOML's expectation.
    for (key, want) in section(&p, "sysctl").into_iter().flatten() {
        let want = Want::from_toml(want);
        let (idx, item) = one(key);
        checked.insert(idx);
        assert_eq!(item.class, Class::Sysctl, "{item:?}");
        assert_eq!(item.path.as_deref(), Some(sysctl_path(key).as_str()));
        let Some(actual) = sysctl_value(key) else {
            assert_eq!(item.status, Status::Unsupported, "{item:?}");
            assert!(item.actual.is_none() && item.reason.is_some(), "{item:?}");
            continue;
        };
        assert_eq!(item.actual.as_deref(), Some(actual.as_str()), "{key}");
        if want.met_by(&actual) {
            assert!(
                matches!(item.status, Status::Pass | Status::NotPersistent),
                "{key}: {actual} meets {want:?} but status is {:?}",
                item.status
            );
            if item.status == Status::NotPersistent {
                let reason = item
                    .reason
                    .as_deref()
                    .expect("not-persistent needs a reason");
                if reason.starts_with("runtime only") {
                    assert!(!boot_files_mention(key), "{key}: {reason}");
                }
            } else if matches!(want, Want::Exact(_)) {
                assert!(
                    boot_files_mention(key),
                    "{key}: pass for an exact value, but no boot file sets it"
                );
            }
        } else {
            assert_eq!(
                item.status,
                Status::Drift,
                "{key}: {actual} does not meet {want:?}"
            );
        }
    }

    // cpu
    if let Some(cpu) = section(&p, "cpu") {
        if let Some(idle) = cpu.get("idle") {
            let max_latency = idle["max_latency_us"].as_integer().unwrap();
            for &c in &cpus {
                for state in idle_states(c) {
                    let dir = format!("{CPU_DIR}/cpu{c}/cpuidle/{state}");
                    let (idx, item) = one(&format!("cpu.{c}.idle.{state}.disable"));
                    checked.insert(idx);
                    let path = format!("{dir}/disable");
                    assert_eq!(item.path.as_deref(), Some(path.as_str()));
                    let actual = norm(&read_file(&path).expect("read disable"));
                    let latency: i64 = read_file(&format!("{dir}/latency"))
                        .unwrap()
                        .trim()
                        .parse()
                        .unwrap();
                    let want = if latency > max_latency { "1" } else { "0" };
                    assert_eq!(item.expected, want, "{item:?}");
                    assert_eq!(item.actual.as_deref(), Some(actual.as_str()), "{item:?}");
                    let status = if actual == want {
                        Status::Pass
                    } else {
                        Status::Drift
                    };
                    assert_eq!(item.status, status, "{item:?}");
                }
            }
        }
        for (knob, file) in [
            ("governor", "cpufreq/scaling_governor"),
            ("energy_perf_bias", "power/energy_perf_bias"),
            (
                "energy_performance_preference",
                "cpufreq/energy_performance_preference",
            ),
            ("min_freq", "cpufreq/scaling_min_freq"),
            ("max_freq", "cpufreq/scaling_max_freq"),
        ] {
            if !cpu.contains_key(knob) {
                continue;
            }
            let paths: Vec<String> = cpus
                .iter()
                .map(|c| format!("{CPU_DIR}/cpu{c}/{file}"))
                .collect();
            if paths.iter().all(|p| !Path::new(p).exists()) {
                // Absent on every CPU: one collapsed `unsupported` item saying so.
                let (idx, item) = one(&format!("cpu.{knob}"));
                checked.insert(idx);
                assert_eq!(item.status, Status::Unsupported, "{item:?}");
                assert_eq!(item.path.as_deref(), Some(paths[0].as_str()));
                assert!(item.actual.is_none(), "{item:?}");
                let reason = item.reason.as_deref().unwrap_or_default();
                assert!(
                    reason.contains(&format!("checked all {} CPUs", cpus.len())),
                    "{item:?}"
                );
                continue;
            }
            for (c, path) in cpus.iter().zip(&paths) {
                let (idx, item) = one(&format!("cpu.{c}.{knob}"));
                checked.insert(idx);
                assert_eq!(item.path.as_deref(), Some(path.as_str()));
                match read_file(path) {
                    None => assert_eq!(item.status, Status::Unsupported, "{item:?}"),
                    Some(text) => {
                        let actual = norm(&text);
                        assert_eq!(item.actual.as_deref(), Some(actual.as_str()));
                        if same_value(&item.expected, &actual) {
                            assert_eq!(item.status, Status::Pass, "{item:?}");
                        } else {
                            assert!(
                                item.status == Status::Drift
                                    || (item.status == Status::Unsupported
                                        && item.reason.is_some()),
                                "{item:?}"
                            );
                        }
                    }
                }
            }
        }
        if let Some(pct) = cpu.get("min_perf_pct") {
            let path = format!("{CPU_DIR}/intel_pstate/min_perf_pct");
            let (idx, item) = one("cpu.min_perf_pct");
            checked.insert(idx);
            assert_eq!(item.path.as_deref(), Some(path.as_str()));
            match read_file(&path) {
                None => {
                    assert!(!Path::new(&path).exists());
                    assert_eq!(item.status, Status::Unsupported, "{item:?}");
                    assert!(item.reason.is_some(), "{item:?}");
                }
                Some(text) => {
                    assert_eq!(item.actual.as_deref(), Some(norm(&text).as_str()));
                    let pass = same_value(&pct.to_string(), &text);
                    assert_eq!(item.status == Status::Pass, pass, "{item:?}");
                }
            }
        }
    }

    // memory
    if let Some(mem) = section(&p, "memory") {
        for (knob, file) in [
            ("transparent_hugepage", "enabled"),
            ("transparent_hugepage_defrag", "defrag"),
        ] {
            let Some(want) = mem.get(knob).and_then(toml::Value::as_str) else {
                continue;
            };
            let (idx, item) = one(&format!("memory.transparent_hugepage.{file}"));
            checked.insert(idx);
            let path = format!("{THP_DIR}/{file}");
            assert_eq!(item.path.as_deref(), Some(path.as_str()));
            assert_eq!(item.expected, want);
            let Some(text) = read_file(&path) else {
                assert!(!Path::new(&path).exists());
                assert_eq!(item.status, Status::Unsupported, "{item:?}");
                continue;
            };
            let current = bracketed(&text).expect("a bracketed choice");
            assert_eq!(item.actual.as_deref(), Some(current.as_str()), "{item:?}");
            let offered = text
                .split_whitespace()
                .any(|w| w.trim_matches(['[', ']']) == want);
            let status = if current == want {
                Status::Pass
            } else if offered {
                Status::Drift
            } else {
                Status::Unsupported
            };
            assert_eq!(item.status, status, "{item:?}");
        }
        if mem.get("swap").and_then(toml::Value::as_str) == Some("off") {
            let (idx, item) = one("memory.swap");
            checked.insert(idx);
            assert_eq!(item.path.as_deref(), Some("/proc/swaps"));
            let areas = swap_areas();
            if areas == 0 {
                assert_eq!(item.actual.as_deref(), Some("off"));
                let status = if fstab_swap_lines() > 0 {
                    Status::NotPersistent
                } else {
                    Status::Pass
                };
                assert_eq!(item.status, status, "{item:?}");
            } else {
                let actual = item.actual.as_deref().unwrap_or_default();
                assert!(actual.starts_with("on: "), "{item:?}");
                assert_eq!(actual.matches(", ").count() + 1, areas, "{item:?}");
                assert_eq!(item.status, Status::Drift, "{item:?}");
            }
        }
    }

    // block: which devices match each glob, and each matched device's files
    let rules: Vec<&toml::Table> = p
        .get("block")
        .and_then(toml::Value::as_array)
        .map(|a| a.iter().filter_map(toml::Value::as_table).collect())
        .unwrap_or_default();
    if !rules.is_empty() {
        let mut devices: Vec<String> = std::fs::read_dir("/sys/block")
            .expect("list /sys/block")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        devices.sort();
        for rule in &rules {
            let glob = rule["devices"].as_str().unwrap();
            let pattern = glob::Pattern::new(glob).unwrap();
            let matched: Vec<&String> = devices.iter().filter(|d| pattern.matches(d)).collect();
            if matched.is_empty() {
                let (idx, item) = one(&format!("block.{glob}"));
                checked.insert(idx);
                assert_eq!(item.status, Status::Unsupported, "{item:?}");
                assert!(item.reason.is_some(), "{item:?}");
                continue;
            }
            for dev in matched {
                for (knob, file) in [
                    ("scheduler", "scheduler"),
                    ("read_ahead_kb", "read_ahead_kb"),
                ] {
                    if !rule.contains_key(knob) {
                        continue;
                    }
                    let (idx, item) = one(&format!("block.{dev}.{knob}"));
                    checked.insert(idx);
                    let path = format!("/sys/block/{dev}/queue/{file}");
                    assert_eq!(item.path.as_deref(), Some(path.as_str()));
                    let Some(text) = read_file(&path) else {
                        assert!(!Path::new(&path).exists());
                        assert_eq!(item.status, Status::Unsupported, "{item:?}");
                        continue;
                    };
                    let actual = if knob == "scheduler" {
                        bracketed(&text).unwrap_or_else(|| norm(&text))
                    } else {
                        norm(&text)
                    };
                    assert_eq!(item.actual.as_deref(), Some(actual.as_str()), "{item:?}");
                    if knob == "scheduler" || !item.expected.contains(['<', '>', '=']) {
                        let pass = same_value(&item.expected, &actual);
                        assert_eq!(item.status == Status::Pass, pass, "{item:?}");
                    }
                }
            }
        }
    }

    // limits: pam_limits' effective line for each (domain, item, soft/hard)
    for (domain, items) in section(&p, "limits").into_iter().flatten() {
        for (limit, setting) in items.as_table().expect("limits domain table") {
            for kind in ["soft", "hard"] {
                let want = match setting {
                    toml::Value::Table(t) => match t.get(kind) {
                        Some(v) => v.clone(),
                        None => continue,
                    },
                    v => v.clone(),
                };
                let want = match want {
                    toml::Value::Integer(n) => n.to_string(),
                    toml::Value::String(s) => s,
                    other => panic!("limit {other:?}"),
                };
                let (idx, item) = one(&format!("limits.{domain}.{limit}.{kind}"));
                checked.insert(idx);
                assert_eq!(item.expected, want, "{item:?}");
                match effective_limit(domain, kind, limit) {
                    None => {
                        assert!(item.actual.is_none(), "{item:?}");
                        assert_eq!(item.status, Status::Drift, "{item:?}");
                    }
                    Some((file, value)) => {
                        assert_eq!(item.path.as_deref(), Some(file.as_str()), "{item:?}");
                        assert_eq!(item.actual.as_deref(), Some(value.as_str()), "{item:?}");
                        let pass = value == want
                            || (want == "unlimited" && matches!(value.as_str(), "infinity" | "-1"));
                        assert_eq!(item.status == Status::Pass, pass, "{item:?}");
                    }
                }
            }
        }
    }

    // mount
    for rule in p
        .get("mount")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
    {
        let path = rule["path"].as_str().unwrap();
        let want: Vec<&str> = rule["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect();
        let (idx, item) = one(&format!("mount.{path}.options"));
        checked.insert(idx);
        assert_eq!(item.path.as_deref(), Some("/proc/self/mountinfo"));
        match mount_entry(path) {
            None => {
                assert_eq!(item.status, Status::Unsupported, "{item:?}");
                assert!(item.reason.is_some(), "{item:?}");
            }
            Some((mut opts, sup)) => {
                let missing = want
                    .iter()
                    .any(|w| !opts.iter().chain(&sup).any(|o| o == w));
                // The report shows the per-mount option names (without `=value`), sorted.
                opts = opts
                    .iter()
                    .map(|o| o.split('=').next().unwrap_or_default().to_owned())
                    .collect();
                opts.sort();
                assert_eq!(item.actual.as_deref(), Some(opts.join(",").as_str()));
                if missing {
                    assert_eq!(item.status, Status::Drift, "{item:?}");
                } else {
                    assert_ne!(item.status, Status::Drift, "{item:?}");
                }
            }
        }
    }

    // clocksource
    if let Some(cs) = section(&p, "clocksource") {
        let want = cs["current"].as_str().unwrap();
        let (idx, item) = one("clocksource.current");
        checked.insert(idx);
        let path = "/sys/devices/system/clocksource/clocksource0/current_clocksource";
        let actual = norm(&read_file(path).expect("read current_clocksource"));
        assert_eq!(item.actual.as_deref(), Some(actual.as_str()));
        assert_eq!(item.status == Status::Pass, actual == want, "{item:?}");
    }

    // units: the binary asks the bus about the managed units (the library report has no such
    // item). Without a system bus socket (no systemd here) that is one `unsupported` item.
    if let Some(idx) = report
        .items
        .iter()
        .position(|i| i.class == node_agent::verify::Class::Units)
    {
        checked.insert(idx);
        let item = &report.items[idx];
        let bus = std::path::Path::new("/run/dbus/system_bus_socket");
        if !bus.exists() {
            assert_eq!(item.key, "units");
            assert_eq!(item.status, Status::Unsupported, "{item:?}");
            assert!(
                item.reason
                    .as_deref()
                    .unwrap_or("")
                    .contains("systemd is not running"),
                "{item:?}"
            );
        }
    }

    let unchecked: Vec<&Item> = report
        .items
        .iter()
        .enumerate()
        .filter(|(i, _)| !checked.contains(i))
        .map(|(_, i)| i)
        .collect();
    assert!(
        unchecked.is_empty(),
        "items with no independent check (extend this test): {unchecked:#?}"
    );

    // The summary counts what the items say.
    for status in Status::ALL {
        let n = report.items.iter().filter(|i| i.status == status).count();
        assert_eq!(report.summary.count(status), n, "{status:?}");
    }
}

fn library_report(name: &str) -> Report {
    let path = profiles_dir().join(format!("{name}.toml"));
    let search = SearchPath::new(vec![profiles_dir()]);
    let profile = profile::load(path.to_str().unwrap(), &search).expect("load profile");
    node_agent::tuning::verify(&HostRoot::default(), &profile)
}

fn binary_report(name: &str) -> Report {
    let out = Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .args(["tune", "verify", "--profile", name, "--output", "json"])
        .env("NODE_AGENT_PROFILE_PATH", profiles_dir())
        .env_remove("NODE_AGENT_HOST_ROOT")
        .output()
        .expect("run agentctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "agentctl printed no JSON report ({e}); status {:?}, stderr {stderr}",
            out.status
        )
    });
    let compliant = report
        .items
        .iter()
        .all(|i| matches!(i.status, Status::Pass | Status::Unsupported));
    assert_eq!(
        out.status.code(),
        Some(if compliant { 0 } else { 1 }),
        "stderr: {stderr}"
    );
    assert!(!stderr.contains("error"), "stderr: {stderr}");
    report
}

fn run_read_only(name: &str, verify: impl Fn(&str) -> Report) {
    let _lock = tier_lock();
    let raw = raw_profile(name);
    let before = snapshot(&raw);
    assert!(
        before.values().filter(|v| v.is_some()).count() > 0,
        "snapshot read nothing"
    );
    let report = verify(name);
    let after = snapshot(&raw);
    assert_eq!(before, after, "verify changed kernel state");
    check_report(name, &report);
}

#[test]
fn real_kernel_trading_latency_library() {
    if !enabled("real_kernel_trading_latency_library") {
        return;
    }
    run_read_only("trading-latency", library_report);
}

#[test]
fn real_kernel_network_latency_library() {
    if !enabled("real_kernel_network_latency_library") {
        return;
    }
    run_read_only("network-latency", library_report);
}

#[test]
fn real_kernel_trading_latency_binary() {
    if !enabled("real_kernel_trading_latency_binary") {
        return;
    }
    run_read_only("trading-latency", binary_report);
}

#[test]
fn real_kernel_network_latency_binary() {
    if !enabled("real_kernel_network_latency_binary") {
        return;
    }
    run_read_only("network-latency", binary_report);
}

/// The binary and the library agree item for item (keys, expectations, paths) on this host.
#[test]
fn real_kernel_binary_matches_library() {
    if !enabled("real_kernel_binary_matches_library") {
        return;
    }
    let _lock = tier_lock();
    for name in ["trading-latency", "network-latency"] {
        let lib = library_report(name);
        let bin = binary_report(name);
        let shape = |r: &Report| -> Vec<(String, String, Option<String>)> {
            // The managed units are the binary's addition (it asks the bus).
            let mut v: Vec<_> = r
                .items
                .iter()
                .filter(|i| i.class != node_agent::verify::Class::Units)
                .map(|i| (i.key.clone(), i.expected.clone(), i.path.clone()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(shape(&lib), shape(&bin), "{name}");
        assert_eq!(lib.host, bin.host);
    }
}

/// The checker itself can fail: each tampered copy of a real report must be rejected.
#[test]
fn real_kernel_checker_rejects_tampered_reports() {
    if !enabled("real_kernel_checker_rejects_tampered_reports") {
        return;
    }
    let _lock = tier_lock();
    let name = "trading-latency";
    let report = library_report(name);
    check_report(name, &report);
    let find = |pred: &dyn Fn(&Item) -> bool| -> usize {
        report
            .items
            .iter()
            .position(pred)
            .expect("an item to tamper with")
    };
    let sysctl = find(&|i| i.class == Class::Sysctl && i.actual.is_some());
    let drift = find(&|i| i.status == Status::Drift && i.class != Class::Limits);
    let present = find(&|i| i.class == Class::Memory && i.actual.is_some());
    let idle = find(&|i| i.key.contains(".idle.") && i.status == Status::Pass);
    type Tamper = Box<dyn Fn(&mut Report)>;
    let tampers: Vec<(&str, Tamper)> = vec![
        (
            "wrong sysctl actual",
            Box::new(move |r| r.items[sysctl].actual = Some("123456789".into())),
        ),
        (
            "drift reported as pass",
            Box::new(move |r| r.items[drift].status = Status::Pass),
        ),
        (
            "unsupported for a file that exists",
            Box::new(move |r| r.items[present].status = Status::Unsupported),
        ),
        (
            "wrong idle-state expectation",
            Box::new(move |r| r.items[idle].expected = "1".into()),
        ),
        (
            "an item dropped",
            Box::new(move |r| {
                r.items.remove(sysctl);
            }),
        ),
        (
            "an unknown item",
            Box::new(|r| {
                r.items
                    .push(Item::new(Class::Cpu, "cpu.boost", "1").status(Status::Unsupported))
            }),
        ),
    ];
    for (what, tamper) in tampers {
        let mut bad = report.clone();
        tamper(&mut bad);
        let caught =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check_report(name, &bad)));
        assert!(caught.is_err(), "the checker accepted a report with {what}");
    }
}
