//! Fixture tier for `agentctl tune verify`: every knob class and every status, against fake host
//! trees in the kernel's exact formats (see tests/support). Safe on any machine.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

use node_agent::profile::{self, SearchPath};
use node_agent::tuning;
use node_agent::verify::{Class, Item, Report, Status};
use support::{
    AGENT_LIMITS_CONF, AGENT_SYSCTL_CONF, CPU_DIR, Driver, FixtureHost, HOSTNAME,
    SYSTEMD_50_DEFAULT, Spec, swaps_line,
};

const AGENT_SYSCTL: &str = "/etc/sysctl.d/zz-node-agent.conf";
const AGENT_LIMITS: &str = "/etc/security/limits.d/zz-node-agent.conf";
const MOUNTINFO: &str = "/proc/self/mountinfo";

// ---- helpers ------------------------------------------------------------------------------

fn load(path: &std::path::Path) -> profile::Profile {
    profile::load(
        path.to_str().expect("UTF-8 temp path"),
        &SearchPath::new(Vec::new()),
    )
    .unwrap_or_else(|e| panic!("profile {} does not load: {e}", path.display()))
}

/// Writes `toml` as a profile and verifies the fixture against it, in-process.
fn verify(fx: &FixtureHost, toml: &str) -> Report {
    let path = fx.profile("under-test", toml);
    tuning::verify(&fx.host(), &load(&path))
}

fn keys(report: &Report) -> Vec<&str> {
    report.items.iter().map(|i| i.key.as_str()).collect()
}

/// The one item with this key.
#[track_caller]
fn item<'a>(report: &'a Report, key: &str) -> &'a Item {
    let found: Vec<&Item> = report.items.iter().filter(|i| i.key == key).collect();
    match found.as_slice() {
        [one] => one,
        _ => panic!(
            "expected one item {key:?}, found {}; keys: {:?}",
            found.len(),
            keys(report)
        ),
    }
}

/// Status, actual and path of an item, exactly.
#[track_caller]
fn expect(item: &Item, status: Status, actual: Option<&str>, path: Option<&str>) {
    assert_eq!(
        (item.status, item.actual.as_deref(), item.path.as_deref()),
        (status, actual, path),
        "{item:#?}"
    );
}

#[track_caller]
fn reason_has(item: &Item, needle: &str) {
    let reason = item
        .reason
        .as_deref()
        .unwrap_or_else(|| panic!("no reason on {item:#?}"));
    assert!(
        reason.contains(needle),
        "reason {reason:?} lacks {needle:?}"
    );
}

/// 1-based number of the first line of `text` that starts with `prefix`.
#[track_caller]
fn line_no(text: &str, prefix: &str) -> usize {
    text.lines()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}"))
        + 1
}

fn proc_sys(key: &str) -> String {
    support::sysctl_path(key)
}

fn cpu_path(cpu: u32, rel: &str) -> String {
    format!("{CPU_DIR}/cpu{cpu}/{rel}")
}

fn statuses(report: &Report) -> Vec<Status> {
    report.items.iter().map(|i| i.status).collect()
}

/// Runs the real binary against the fixture.
fn agentctl(fx: &FixtureHost, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agentctl"))
        .args(args)
        .env("NODE_AGENT_HOST_ROOT", fx.root())
        .env("NODE_AGENT_PROFILE_PATH", fx.profiles_dir())
        .output()
        .expect("run agentctl")
}

fn shipped_profile(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tuning-profiles")
        .join(format!("{name}.toml"))
}

/// A profile touching every knob class; the tuned fixture complies with all of it.
const FULL_PROFILE: &str = r#"
[profile]
name = "fixture-full"
description = "Every knob class the fixture host models"

[sysctl]
"net.core.rmem_max" = { min = 134217728 }
"net.ipv4.tcp_rmem" = "4096 87380 134217728"
"net.ipv4.tcp_congestion_control" = "bbr"
"vm.swappiness" = 10

[cpu]
governor = "performance"
idle = { max_latency_us = 0 }
min_freq = "max"
max_freq = "max"
energy_performance_preference = "performance"
energy_perf_bias = "performance"
boost = true
min_perf_pct = 100
pm_qos_latency_us = 0

[memory]
transparent_hugepage = "never"
transparent_hugepage_defrag = "never"
swap = "off"
ksm = "off"
hugepages = { "2M" = 1024 }

[[block]]
devices = "nvme*"
scheduler = "none"
read_ahead_kb = 128

[[block]]
devices = "sda"
scheduler = "mq-deadline"

[limits]
"*" = { nofile = 1000000, nproc = 65536, memlock = "unlimited" }

[[mount]]
path = "/data"
options = ["noatime", "nodiratime"]

[[mount]]
path = "/mnt/market data"
options = ["noatime"]

[clocksource]
current = "tsc"
"#;

// ---- sysctl -------------------------------------------------------------------------------

#[test]
fn sysctl_exact_value_set_and_persisted_passes() {
    let fx = FixtureHost::tuned();
    let r = verify(
        &fx,
        r#"[sysctl]
"net.ipv4.tcp_slow_start_after_idle" = 0
"net.ipv4.tcp_congestion_control" = "bbr"
"#,
    );
    assert_eq!(r.items.len(), 2, "{:?}", keys(&r));
    let i = item(&r, "net.ipv4.tcp_slow_start_after_idle");
    expect(
        i,
        Status::Pass,
        Some("0"),
        Some("/proc/sys/net/ipv4/tcp_slow_start_after_idle"),
    );
    assert_eq!(
        (i.class, i.expected.as_str(), i.reason.as_deref()),
        (Class::Sysctl, "0", None)
    );
    let i = item(&r, "net.ipv4.tcp_congestion_control");
    expect(
        i,
        Status::Pass,
        Some("bbr"),
        Some("/proc/sys/net/ipv4/tcp_congestion_control"),
    );
    assert_eq!(i.expected, "bbr");
}

#[test]
fn sysctl_wrong_running_value_is_drift() {
    let fx = FixtureHost::stock();
    let r = verify(
        &fx,
        r#"[sysctl]
"net.ipv4.tcp_slow_start_after_idle" = 0
"net.ipv4.tcp_congestion_control" = "bbr"
"#,
    );
    let i = item(&r, "net.ipv4.tcp_slow_start_after_idle");
    expect(
        i,
        Status::Drift,
        Some("1"),
        Some("/proc/sys/net/ipv4/tcp_slow_start_after_idle"),
    );
    assert_eq!(i.expected, "0");
    let i = item(&r, "net.ipv4.tcp_congestion_control");
    expect(
        i,
        Status::Drift,
        Some("cubic"),
        Some("/proc/sys/net/ipv4/tcp_congestion_control"),
    );
}

#[test]
fn sysctl_bounds_min_max_and_range() {
    let fx = FixtureHost::tuned();
    fx.sysctl("net.core.rmem_max", "268435456")
        .sysctl("net.core.wmem_max", "212992");
    let r = verify(
        &fx,
        r#"[sysctl]
"net.core.rmem_max" = { min = 134217728 }
"net.core.wmem_max" = { min = 134217728 }
"vm.swappiness" = { max = 10 }
"vm.dirty_ratio" = { max = 5 }
"net.core.somaxconn" = { min = 1024, max = 65535 }
"net.ipv4.tcp_congestion_control" = { min = 1 }
"#,
    );
    // Above the floor: compliant, never lowered.
    let i = item(&r, "net.core.rmem_max");
    expect(
        i,
        Status::Pass,
        Some("268435456"),
        Some("/proc/sys/net/core/rmem_max"),
    );
    assert_eq!(i.expected, ">= 134217728");
    let i = item(&r, "net.core.wmem_max");
    expect(
        i,
        Status::Drift,
        Some("212992"),
        Some("/proc/sys/net/core/wmem_max"),
    );
    assert_eq!(i.expected, ">= 134217728");
    // On the ceiling is inside it.
    let i = item(&r, "vm.swappiness");
    expect(i, Status::Pass, Some("10"), Some("/proc/sys/vm/swappiness"));
    assert_eq!(i.expected, "<= 10");
    let i = item(&r, "vm.dirty_ratio");
    expect(
        i,
        Status::Drift,
        Some("10"),
        Some("/proc/sys/vm/dirty_ratio"),
    );
    assert_eq!(i.expected, "<= 5");
    let i = item(&r, "net.core.somaxconn");
    expect(
        i,
        Status::Pass,
        Some("65535"),
        Some("/proc/sys/net/core/somaxconn"),
    );
    assert_eq!(i.expected, "1024..=65535");
    // A bound on a word cannot be judged.
    let i = item(&r, "net.ipv4.tcp_congestion_control");
    expect(
        i,
        Status::Error,
        Some("bbr"),
        Some("/proc/sys/net/ipv4/tcp_congestion_control"),
    );
    reason_has(i, "a bound needs an integer");
}

#[test]
fn sysctl_triples_compare_after_whitespace_normalisation() {
    let fx = FixtureHost::tuned();
    // The kernel separates the triple with tabs; the profile with (any) spaces.
    let raw = std::fs::read_to_string(fx.real(&proc_sys("net.ipv4.tcp_rmem"))).unwrap();
    assert_eq!(raw, "4096\t87380\t134217728\n");
    let profile = r#"[sysctl]
"net.ipv4.tcp_rmem" = "4096 87380 134217728"
"net.ipv4.tcp_wmem" = "4096   65536  134217728"
"#;
    let r = verify(&fx, profile);
    let i = item(&r, "net.ipv4.tcp_rmem");
    expect(
        i,
        Status::Pass,
        Some("4096 87380 134217728"),
        Some("/proc/sys/net/ipv4/tcp_rmem"),
    );
    let i = item(&r, "net.ipv4.tcp_wmem");
    expect(
        i,
        Status::Pass,
        Some("4096 65536 134217728"),
        Some("/proc/sys/net/ipv4/tcp_wmem"),
    );
    assert_eq!(i.expected, "4096 65536 134217728");

    // The sysctl.d value is normalised too: tabs in the file still persist the triple.
    fx.write(
        AGENT_SYSCTL,
        "net.ipv4.tcp_rmem = 4096\t87380\t134217728\nnet.ipv4.tcp_wmem =4096 65536 134217728\n",
    );
    let r = verify(&fx, profile);
    assert_eq!(statuses(&r), [Status::Pass, Status::Pass], "{r:#?}");

    let stock = FixtureHost::stock();
    let r = verify(&stock, profile);
    let i = item(&r, "net.ipv4.tcp_rmem");
    expect(
        i,
        Status::Drift,
        Some("4096 131072 6291456"),
        Some("/proc/sys/net/ipv4/tcp_rmem"),
    );
}

#[test]
fn sysctl_absent_on_this_kernel_is_unsupported() {
    let fx = FixtureHost::tuned();
    let r = verify(
        &fx,
        r#"[sysctl]
"net.ipv4.tcp_bogus_knob" = 1
"net.mptcp.enabled" = 1
"net.core.somaxconn.deeper" = 1
"#,
    );
    let i = item(&r, "net.ipv4.tcp_bogus_knob");
    expect(
        i,
        Status::Unsupported,
        None,
        Some("/proc/sys/net/ipv4/tcp_bogus_knob"),
    );
    assert_eq!(
        i.reason.as_deref(),
        Some(
            "this kernel has no sysctl net.ipv4.tcp_bogus_knob \
             (/proc/sys/net/ipv4/tcp_bogus_knob does not exist)"
        )
    );
    // A missing directory, and a path through a regular file (ENOTDIR), mean the same.
    let i = item(&r, "net.mptcp.enabled");
    expect(
        i,
        Status::Unsupported,
        None,
        Some("/proc/sys/net/mptcp/enabled"),
    );
    let i = item(&r, "net.core.somaxconn.deeper");
    expect(
        i,
        Status::Unsupported,
        None,
        Some("/proc/sys/net/core/somaxconn/deeper"),
    );
}

#[test]
fn sysctl_unreadable_is_error() {
    let fx = FixtureHost::tuned();
    fx.make_unreadable(&proc_sys("net.core.somaxconn"));
    let r = verify(&fx, "[sysctl]\n\"net.core.somaxconn\" = 65535\n");
    let i = item(&r, "net.core.somaxconn");
    expect(i, Status::Error, None, Some("/proc/sys/net/core/somaxconn"));
    reason_has(i, "failed to read");
    reason_has(i, "Is a directory");
}

#[test]
fn sysctl_later_sysctl_d_file_makes_it_not_persistent() {
    let fx = FixtureHost::tuned();
    // Sorts after zz-node-agent.conf ('z' > '-'): read later, wins at boot.
    fx.write(
        "/etc/sysctl.d/zzz-local.conf",
        "# local override\nnet.ipv4.tcp_slow_start_after_idle = 1\n",
    );
    fx.write(
        "/run/sysctl.d/zzzz-runtime.conf",
        "net.ipv4.tcp_fin_timeout=60\n",
    );
    // Sorts before the agent's file: overridden by it, harmless.
    fx.write("/etc/sysctl.d/10-old.conf", "net.ipv4.tcp_tw_reuse = 0\n");
    let r = verify(
        &fx,
        r#"[sysctl]
"net.ipv4.tcp_slow_start_after_idle" = 0
"net.ipv4.tcp_fin_timeout" = 30
"net.ipv4.tcp_tw_reuse" = 1
"#,
    );
    let i = item(&r, "net.ipv4.tcp_slow_start_after_idle");
    expect(
        i,
        Status::NotPersistent,
        Some("0"),
        Some("/proc/sys/net/ipv4/tcp_slow_start_after_idle"),
    );
    assert_eq!(
        i.reason.as_deref(),
        Some("at boot /etc/sysctl.d/zzz-local.conf:2 sets 1")
    );
    let i = item(&r, "net.ipv4.tcp_fin_timeout");
    assert_eq!(i.status, Status::NotPersistent);
    assert_eq!(
        i.reason.as_deref(),
        Some("at boot /run/sysctl.d/zzzz-runtime.conf:1 sets 60")
    );
    let i = item(&r, "net.ipv4.tcp_tw_reuse");
    expect(
        i,
        Status::Pass,
        Some("1"),
        Some("/proc/sys/net/ipv4/tcp_tw_reuse"),
    );
}

#[test]
fn sysctl_d_file_in_etc_hides_same_name_in_usr_lib() {
    let fx = FixtureHost::tuned();
    fx.remove(AGENT_SYSCTL);
    let profile = "[sysctl]\n\"vm.swappiness\" = 10\n";
    fx.write("/usr/lib/sysctl.d/60-vendor.conf", "vm.swappiness = 60\n");
    fx.write("/etc/sysctl.d/60-vendor.conf", "vm.swappiness = 10\n");
    let r = verify(&fx, profile);
    expect(
        item(&r, "vm.swappiness"),
        Status::Pass,
        Some("10"),
        Some("/proc/sys/vm/swappiness"),
    );

    // Without the /etc copy the vendor file is read.
    fx.remove("/etc/sysctl.d/60-vendor.conf");
    let r = verify(&fx, profile);
    let i = item(&r, "vm.swappiness");
    assert_eq!(i.status, Status::NotPersistent);
    assert_eq!(
        i.reason.as_deref(),
        Some("at boot /usr/lib/sysctl.d/60-vendor.conf:1 sets 60")
    );

    // /run ranks above /usr/lib too.
    fx.write("/run/sysctl.d/60-vendor.conf", "vm.swappiness = 10\n");
    let r = verify(&fx, profile);
    assert_eq!(item(&r, "vm.swappiness").status, Status::Pass);

    // Order is by file name across all directories: a later name in /usr/lib still wins.
    fx.write("/usr/lib/sysctl.d/90-late.conf", "vm.swappiness = 30\n");
    let r = verify(&fx, profile);
    let i = item(&r, "vm.swappiness");
    assert_eq!(i.status, Status::NotPersistent);
    assert_eq!(
        i.reason.as_deref(),
        Some("at boot /usr/lib/sysctl.d/90-late.conf:1 sets 30")
    );
}

#[test]
fn sysctl_exact_value_without_any_file_is_not_persistent() {
    let fx = FixtureHost::tuned();
    fx.remove(AGENT_SYSCTL);
    let r = verify(
        &fx,
        "[sysctl]\n\"net.ipv4.tcp_slow_start_after_idle\" = 0\n",
    );
    let i = item(&r, "net.ipv4.tcp_slow_start_after_idle");
    expect(
        i,
        Status::NotPersistent,
        Some("0"),
        Some("/proc/sys/net/ipv4/tcp_slow_start_after_idle"),
    );
    assert_eq!(
        i.reason.as_deref(),
        Some("runtime only: no sysctl.d file sets it, a reboot restores the default")
    );
}

#[test]
fn sysctl_bound_without_file_passes_but_a_lower_file_value_does_not() {
    let fx = FixtureHost::tuned();
    fx.remove(AGENT_SYSCTL);
    let profile = r#"[sysctl]
"fs.file-max" = { min = 2097152 }
"net.core.rmem_max" = { min = 134217728 }
"#;
    let r = verify(&fx, profile);
    let i = item(&r, "fs.file-max");
    expect(
        i,
        Status::Pass,
        Some("9223372036854775807"),
        Some("/proc/sys/fs/file-max"),
    );
    assert_eq!(i.reason, None);
    assert_eq!(item(&r, "net.core.rmem_max").status, Status::Pass);

    fx.write("/etc/sysctl.d/90-net.conf", "net.core.rmem_max = 212992\n");
    let r = verify(&fx, profile);
    let i = item(&r, "net.core.rmem_max");
    assert_eq!(i.status, Status::NotPersistent);
    assert_eq!(
        i.reason.as_deref(),
        Some("at boot /etc/sysctl.d/90-net.conf:1 sets 212992")
    );
}

#[test]
fn sysctl_d_glob_lines_and_explicit_precedence() {
    let default_line = line_no(SYSTEMD_50_DEFAULT, "net.ipv4.conf.default.rp_filter");
    let glob_line = line_no(SYSTEMD_50_DEFAULT, "net.ipv4.conf.*.rp_filter");
    assert_eq!((default_line, glob_line), (12, 13));

    let fx = FixtureHost::tuned();
    fx.sysctl("net.ipv4.conf.lo.rp_filter", "1")
        .sysctl("net.ipv4.conf.all.rp_filter", "2")
        .sysctl("net.ipv4.conf.default.rp_filter", "1");
    // An explicit line for lo in an earlier file beats the later glob in 50-default.conf.
    fx.write(
        "/etc/sysctl.d/10-lo.conf",
        "net.ipv4.conf.lo.rp_filter = 1\n",
    );
    // Slash form, with the VLAN's dot inside a component.
    fx.write(
        "/etc/sysctl.d/20-vlan.conf",
        "net/ipv4/conf/eth0.100/rp_filter = 2\n",
    );
    let r = verify(
        &fx,
        r#"[sysctl]
"net.ipv4.conf.eth0.rp_filter" = 2
"net.ipv4.conf.lo.rp_filter" = 1
"net.ipv4.conf.all.rp_filter" = 2
"net.ipv4.conf.default.rp_filter" = 1
"net.ipv4.conf.eth0/100.rp_filter" = 2
"#,
    );
    // Set at boot by the glob `net.ipv4.conf.*.rp_filter = 2`.
    let i = item(&r, "net.ipv4.conf.eth0.rp_filter");
    expect(
        i,
        Status::Pass,
        Some("2"),
        Some("/proc/sys/net/ipv4/conf/eth0/rp_filter"),
    );
    assert_eq!(i.reason, None);
    let i = item(&r, "net.ipv4.conf.lo.rp_filter");
    expect(
        i,
        Status::Pass,
        Some("1"),
        Some("/proc/sys/net/ipv4/conf/lo/rp_filter"),
    );
    // `-net.ipv4.conf.all.rp_filter` keeps the glob off `all`: nothing sets it at boot.
    let i = item(&r, "net.ipv4.conf.all.rp_filter");
    assert_eq!(i.status, Status::NotPersistent, "{i:#?}");
    reason_has(i, "runtime only");
    let i = item(&r, "net.ipv4.conf.default.rp_filter");
    assert_eq!(i.status, Status::NotPersistent);
    assert_eq!(
        i.reason,
        Some(format!(
            "at boot /usr/lib/sysctl.d/50-default.conf:{default_line} sets 2"
        ))
    );
    let i = item(&r, "net.ipv4.conf.eth0/100.rp_filter");
    expect(
        i,
        Status::Pass,
        Some("2"),
        Some("/proc/sys/net/ipv4/conf/eth0.100/rp_filter"),
    );

    // A later glob overrides an earlier glob.
    fx.write(
        "/etc/sysctl.d/60-lab.conf",
        "net.ipv4.conf.eth?.rp_filter = 0\n",
    );
    let r = verify(&fx, "[sysctl]\n\"net.ipv4.conf.eth0.rp_filter\" = 2\n");
    let i = item(&r, "net.ipv4.conf.eth0.rp_filter");
    assert_eq!(i.status, Status::NotPersistent);
    assert_eq!(
        i.reason.as_deref(),
        Some("at boot /etc/sysctl.d/60-lab.conf:1 sets 0")
    );
}

// ---- cpu ----------------------------------------------------------------------------------

#[test]
fn cpu_governor_is_checked_on_every_online_cpu() {
    let fx = FixtureHost::tuned();
    assert_eq!(fx.online_cpus(), 0..16);
    let profile = "[cpu]\ngovernor = \"performance\"\n";
    let r = verify(&fx, profile);
    let want: Vec<String> = (0..16).map(|c| format!("cpu.{c}.governor")).collect();
    assert_eq!(keys(&r), want, "offline CPUs 16-17 must not appear");
    for c in 0..16 {
        let i = item(&r, &format!("cpu.{c}.governor"));
        expect(
            i,
            Status::Pass,
            Some("performance"),
            Some(&cpu_path(c, "cpufreq/scaling_governor")),
        );
        assert_eq!((i.class, i.expected.as_str()), (Class::Cpu, "performance"));
    }

    fx.cpu(5, "cpufreq/scaling_governor", "powersave");
    let r = verify(&fx, profile);
    expect(
        item(&r, "cpu.5.governor"),
        Status::Drift,
        Some("powersave"),
        Some(&cpu_path(5, "cpufreq/scaling_governor")),
    );
    assert_eq!(r.summary.drift, 1);
    assert_eq!(r.summary.pass, 15);
}

#[test]
fn cpu_governor_not_offered_by_the_driver_is_unsupported() {
    // intel_pstate (active) offers performance and powersave only.
    let fx = FixtureHost::tuned();
    let r = verify(&fx, "[cpu]\ngovernor = \"schedutil\"\n");
    assert_eq!(r.items.len(), 16);
    for c in 0..16 {
        let i = item(&r, &format!("cpu.{c}.governor"));
        expect(
            i,
            Status::Unsupported,
            Some("performance"),
            Some(&cpu_path(c, "cpufreq/scaling_governor")),
        );
        assert_eq!(
            i.reason.as_deref(),
            Some("governor schedutil is not offered (available: performance powersave)")
        );
    }
    // acpi-cpufreq offers it: plain drift there.
    let acpi = FixtureHost::tuned_with(Driver::AcpiCpufreq);
    let r = verify(&acpi, "[cpu]\ngovernor = \"schedutil\"\n");
    assert!(statuses(&r).iter().all(|s| *s == Status::Drift), "{r:#?}");
    assert_eq!(r.items.len(), 16);
}

#[test]
fn cpu_without_cpufreq_collapses_to_one_unsupported_item() {
    let vm = FixtureHost::tuned_with(Driver::None);
    let r = verify(
        &vm,
        r#"[cpu]
governor = "performance"
min_freq = "max"
energy_performance_preference = "performance"
"#,
    );
    assert_eq!(
        keys(&r),
        [
            "cpu.governor",
            "cpu.min_freq",
            "cpu.energy_performance_preference"
        ]
    );
    let i = item(&r, "cpu.governor");
    expect(
        i,
        Status::Unsupported,
        None,
        Some(&cpu_path(0, "cpufreq/scaling_governor")),
    );
    assert_eq!(i.expected, "performance");
    assert_eq!(
        i.reason.as_deref(),
        Some(
            "no cpufreq driver for this CPU (virtual machines usually have none); \
             checked all 16 CPUs"
        )
    );
    reason_has(item(&r, "cpu.min_freq"), "checked all 16 CPUs");
    reason_has(
        item(&r, "cpu.energy_performance_preference"),
        "has no energy_performance_preference",
    );

    // Missing on one CPU only: per-CPU items, no collapse.
    let fx = FixtureHost::tuned();
    fx.remove(&cpu_path(3, "cpufreq"));
    let r = verify(&fx, "[cpu]\ngovernor = \"performance\"\n");
    assert_eq!(r.items.len(), 16);
    let i = item(&r, "cpu.3.governor");
    expect(
        i,
        Status::Unsupported,
        None,
        Some(&cpu_path(3, "cpufreq/scaling_governor")),
    );
    assert_eq!(
        i.reason.as_deref(),
        Some("no cpufreq driver for this CPU (virtual machines usually have none)")
    );
    assert_eq!(r.summary.pass, 15);
}

#[test]
fn cpu_subset_with_an_offline_cpu() {
    let fx = FixtureHost::tuned();
    let r = verify(
        &fx,
        "[cpu]\ncpus = \"2-3,16\"\ngovernor = \"performance\"\n",
    );
    assert_eq!(
        keys(&r),
        ["cpu.16", "cpu.2.governor", "cpu.3.governor"],
        "only the listed online CPUs are checked"
    );
    let i = item(&r, "cpu.16");
    expect(
        i,
        Status::Unsupported,
        Some("offline or absent"),
        Some("/sys/devices/system/cpu/online"),
    );
    assert_eq!(
        i.reason.as_deref(),
        Some("CPU 16 is not online (online: 0-15)")
    );
    assert_eq!(item(&r, "cpu.2.governor").status, Status::Pass);
    assert_eq!(item(&r, "cpu.3.governor").status, Status::Pass);

    // An unreadable online list stops the class with one error.
    fx.make_unreadable("/sys/devices/system/cpu/online");
    let r = verify(&fx, "[cpu]\ngovernor = \"performance\"\n");
    assert_eq!(keys(&r), ["cpu.online"]);
    let i = item(&r, "cpu.online");
    expect(
        i,
        Status::Error,
        None,
        Some("/sys/devices/system/cpu/online"),
    );
    reason_has(i, "Is a directory");
}

#[test]
fn cpu_idle_max_latency_zero_leaves_only_poll() {
    let fx = FixtureHost::tuned();
    let profile = "[cpu]\nidle = { max_latency_us = 0 }\n";
    let r = verify(&fx, profile);
    assert_eq!(r.items.len(), 16 * 4);
    for c in 0..16 {
        for s in 0..4 {
            let i = item(&r, &format!("cpu.{c}.idle.state{s}.disable"));
            let want = if s == 0 { "0" } else { "1" };
            expect(
                i,
                Status::Pass,
                Some(want),
                Some(&cpu_path(c, &format!("cpuidle/state{s}/disable"))),
            );
            assert_eq!(i.expected, want);
        }
    }

    fx.cpu(7, "cpuidle/state3/disable", "0");
    fx.cpu(0, "cpuidle/state0/disable", "1");
    let r = verify(&fx, profile);
    let i = item(&r, "cpu.7.idle.state3.disable");
    expect(
        i,
        Status::Drift,
        Some("0"),
        Some(&cpu_path(7, "cpuidle/state3/disable")),
    );
    assert_eq!(
        i.reason.as_deref(),
        Some("C6: exit latency 133 us exceeds 0 us, must be disabled")
    );
    let i = item(&r, "cpu.0.idle.state0.disable");
    assert_eq!((i.status, i.expected.as_str()), (Status::Drift, "0"));
    assert_eq!(
        i.reason.as_deref(),
        Some("POLL: exit latency 0 us is within 0 us, must stay enabled")
    );
    assert_eq!(r.summary.drift, 2);
}

#[test]
fn cpu_idle_max_latency_twenty_keeps_c1_and_c1e() {
    let profile = "[cpu]\nidle = { max_latency_us = 20 }\n";
    // The tuned host disabled everything but POLL: C1 (2 us) and C1E (10 us) must come back.
    let fx = FixtureHost::tuned();
    let r = verify(&fx, profile);
    let i = item(&r, "cpu.4.idle.state1.disable");
    expect(
        i,
        Status::Drift,
        Some("1"),
        Some(&cpu_path(4, "cpuidle/state1/disable")),
    );
    assert_eq!(
        i.reason.as_deref(),
        Some("C1: exit latency 2 us is within 20 us, must stay enabled")
    );
    let i = item(&r, "cpu.4.idle.state2.disable");
    assert_eq!((i.status, i.expected.as_str()), (Status::Drift, "0"));
    reason_has(i, "C1E: exit latency 10 us is within 20 us");
    let i = item(&r, "cpu.4.idle.state3.disable");
    assert_eq!((i.status, i.expected.as_str()), (Status::Pass, "1"));
    assert_eq!(r.summary.drift, 32);

    // The stock host has C6 enabled.
    let stock = FixtureHost::stock();
    let r = verify(&stock, profile);
    let i = item(&r, "cpu.4.idle.state3.disable");
    expect(
        i,
        Status::Drift,
        Some("0"),
        Some(&cpu_path(4, "cpuidle/state3/disable")),
    );
    assert_eq!(
        i.reason.as_deref(),
        Some("C6: exit latency 133 us exceeds 20 us, must be disabled")
    );
    assert_eq!((r.summary.drift, r.summary.pass), (16, 48));
}

#[test]
fn cpu_idle_absent_or_unreadable() {
    let fx = FixtureHost::tuned();
    fx.make_unreadable(&cpu_path(2, "cpuidle/state1/latency"));
    let profile = "[cpu]\nidle = { max_latency_us = 0 }\n";
    let r = verify(&fx, profile);
    let i = item(&r, "cpu.2.idle.state1.disable");
    expect(
        i,
        Status::Error,
        None,
        Some(&cpu_path(2, "cpuidle/state1/latency")),
    );
    reason_has(i, "Is a directory");

    fx.remove_each_cpu("cpuidle");
    let r = verify(&fx, profile);
    assert_eq!(keys(&r), ["cpu.idle"]);
    let i = item(&r, "cpu.idle");
    expect(i, Status::Unsupported, None, Some(&cpu_path(0, "cpuidle")));
    assert_eq!(
        i.reason.as_deref(),
        Some("no cpuidle driver for this CPU; checked all 16 CPUs")
    );
}

#[test]
fn cpu_min_and_max_frequency() {
    // Stock intel_pstate: scaling 800000..3900000 kHz, hardware 800000..3900000 kHz.
    let fx = FixtureHost::stock();
    let r = verify(&fx, "[cpu]\nmin_freq = \"min\"\nmax_freq = \"max\"\n");
    assert_eq!(r.items.len(), 32);
    let i = item(&r, "cpu.9.min_freq");
    expect(
        i,
        Status::Pass,
        Some("800000"),
        Some(&cpu_path(9, "cpufreq/scaling_min_freq")),
    );
    assert_eq!(i.expected, "800000");
    let i = item(&r, "cpu.9.max_freq");
    expect(
        i,
        Status::Pass,
        Some("3900000"),
        Some(&cpu_path(9, "cpufreq/scaling_max_freq")),
    );
    assert_eq!(i.expected, "3900000");

    fx.cpu(0, "cpufreq/scaling_max_freq", "3200000");
    let r = verify(&fx, "[cpu]\nmin_freq = 800000\nmax_freq = \"3.2GHz\"\n");
    let i = item(&r, "cpu.0.max_freq");
    assert_eq!((i.status, i.expected.as_str()), (Status::Pass, "3200000"));
    let i = item(&r, "cpu.1.max_freq");
    expect(
        i,
        Status::Drift,
        Some("3900000"),
        Some(&cpu_path(1, "cpufreq/scaling_max_freq")),
    );
    assert_eq!(i.expected, "3200000");
    assert_eq!(item(&r, "cpu.1.min_freq").status, Status::Pass);

    let r = verify(&fx, "[cpu]\nmin_freq = \"2400MHz\"\n");
    let i = item(&r, "cpu.1.min_freq");
    assert_eq!(
        (i.status, i.expected.as_str(), i.actual.as_deref()),
        (Status::Drift, "2400000", Some("800000"))
    );

    // "max" needs the hardware limit; without it the knob is unsupported on that CPU.
    fx.remove(&cpu_path(1, "cpufreq/cpuinfo_max_freq"));
    let r = verify(&fx, "[cpu]\nmax_freq = \"max\"\n");
    let i = item(&r, "cpu.1.max_freq");
    expect(
        i,
        Status::Unsupported,
        None,
        Some(&cpu_path(1, "cpufreq/scaling_max_freq")),
    );
    assert_eq!(i.expected, "max");
    assert_eq!(item(&r, "cpu.2.max_freq").status, Status::Pass);
}

#[test]
fn cpu_energy_performance_preference() {
    let fx = FixtureHost::tuned();
    let r = verify(
        &fx,
        "[cpu]\nenergy_performance_preference = \"performance\"\n",
    );
    assert_eq!(r.items.len(), 16);
    expect(
        item(&r, "cpu.11.energy_performance_preference"),
        Status::Pass,
        Some("performance"),
        Some(&cpu_path(11, "cpufreq/energy_performance_preference")),
    );
    let r = verify(
        &fx,
        "[cpu]\nenergy_performance_preference = \"balance_power\"\n",
    );
    let i = item(&r, "cpu.11.energy_performance_preference");
    assert_eq!(
        (i.status, i.expected.as_str(), i.actual.as_deref()),
        (Status::Drift, "balance_power", Some("performance"))
    );

    // acpi-cpufreq has no EPP: one collapsed item.
    let acpi = FixtureHost::tuned_with(Driver::AcpiCpufreq);
    let r = verify(
        &acpi,
        "[cpu]\nenergy_performance_preference = \"performance\"\n",
    );
    assert_eq!(keys(&r), ["cpu.energy_performance_preference"]);
    let i = item(&r, "cpu.energy_performance_preference");
    expect(
        i,
        Status::Unsupported,
        None,
        Some(&cpu_path(0, "cpufreq/energy_performance_preference")),
    );
    reason_has(i, "the cpufreq driver has no energy_performance_preference");
    reason_has(i, "checked all 16 CPUs");
}

#[test]
fn cpu_energy_perf_bias() {
    let profile = "[cpu]\nenergy_perf_bias = \"performance\"\n";
    let fx = FixtureHost::tuned();
    let r = verify(&fx, profile);
    assert_eq!(r.items.len(), 16);
    let i = item(&r, "cpu.6.energy_perf_bias");
    expect(
        i,
        Status::Pass,
        Some("0"),
        Some(&cpu_path(6, "power/energy_perf_bias")),
    );
    assert_eq!(i.expected, "0");

    let stock = FixtureHost::stock();
    let r = verify(&stock, profile);
    expect(
        item(&r, "cpu.6.energy_perf_bias"),
        Status::Drift,
        Some("6"),
        Some(&cpu_path(6, "power/energy_perf_bias")),
    );
    let r = verify(&stock, "[cpu]\nenergy_perf_bias = \"normal\"\n");
    assert!(statuses(&r).iter().all(|s| *s == Status::Pass), "{r:#?}");
    let r = verify(&stock, "[cpu]\nenergy_perf_bias = \"balance-power\"\n");
    assert_eq!(item(&r, "cpu.0.energy_perf_bias").expected, "8");

    stock.remove_each_cpu("power/energy_perf_bias");
    let r = verify(&stock, profile);
    assert_eq!(keys(&r), ["cpu.energy_perf_bias"]);
    assert_eq!(item(&r, "cpu.energy_perf_bias").status, Status::Unsupported);
    reason_has(item(&r, "cpu.energy_perf_bias"), "no energy_perf_bias");
}

#[test]
fn cpu_boost_through_intel_pstate_no_turbo() {
    let fx = FixtureHost::tuned();
    let no_turbo = "/sys/devices/system/cpu/intel_pstate/no_turbo";
    let r = verify(&fx, "[cpu]\nboost = true\n");
    let i = item(&r, "cpu.boost");
    expect(i, Status::Pass, Some("0"), Some(no_turbo));
    assert_eq!(i.expected, "0");

    let r = verify(&fx, "[cpu]\nboost = false\n");
    let i = item(&r, "cpu.boost");
    expect(i, Status::Drift, Some("0"), Some(no_turbo));
    assert_eq!(i.expected, "1");
    assert_eq!(
        i.reason.as_deref(),
        Some("intel_pstate no_turbo is the inverse of boost")
    );

    // The read error, not the hint, explains an error.
    fx.make_unreadable(no_turbo);
    let r = verify(&fx, "[cpu]\nboost = true\n");
    let i = item(&r, "cpu.boost");
    expect(i, Status::Error, None, Some(no_turbo));
    reason_has(i, "Is a directory");
}

#[test]
fn cpu_boost_through_cpufreq_boost() {
    let acpi = FixtureHost::tuned_with(Driver::AcpiCpufreq);
    let boost = "/sys/devices/system/cpu/cpufreq/boost";
    let r = verify(&acpi, "[cpu]\nboost = true\n");
    let i = item(&r, "cpu.boost");
    expect(i, Status::Pass, Some("1"), Some(boost));
    assert_eq!((i.expected.as_str(), i.reason.as_deref()), ("1", None));
    let r = verify(&acpi, "[cpu]\nboost = false\n");
    let i = item(&r, "cpu.boost");
    expect(i, Status::Drift, Some("1"), Some(boost));
    assert_eq!(i.expected, "0");

    let vm = FixtureHost::tuned_with(Driver::None);
    let r = verify(&vm, "[cpu]\nboost = true\n");
    let i = item(&r, "cpu.boost");
    expect(i, Status::Unsupported, None, Some(boost));
    assert_eq!(
        i.reason.as_deref(),
        Some("no boost control (neither intel_pstate/no_turbo nor cpufreq/boost exists)")
    );
}

#[test]
fn cpu_min_perf_pct() {
    let path = "/sys/devices/system/cpu/intel_pstate/min_perf_pct";
    let profile = "[cpu]\nmin_perf_pct = 100\n";
    let r = verify(&FixtureHost::tuned(), profile);
    expect(
        item(&r, "cpu.min_perf_pct"),
        Status::Pass,
        Some("100"),
        Some(path),
    );
    let r = verify(&FixtureHost::stock(), profile);
    expect(
        item(&r, "cpu.min_perf_pct"),
        Status::Drift,
        Some("22"),
        Some(path),
    );
    let r = verify(&FixtureHost::tuned_with(Driver::AcpiCpufreq), profile);
    let i = item(&r, "cpu.min_perf_pct");
    expect(i, Status::Unsupported, None, Some(path));
    reason_has(i, "no intel_pstate driver");
}

#[test]
fn cpu_pm_qos_from_dev_cpu_dma_latency() {
    let dev = "/dev/cpu_dma_latency";
    let fx = FixtureHost::tuned();
    assert_eq!(std::fs::read(fx.real(dev)).unwrap(), 0i32.to_ne_bytes());
    let r = verify(&fx, "[cpu]\npm_qos_latency_us = 0\n");
    let i = item(&r, "cpu.pm_qos_latency_us");
    expect(i, Status::Pass, Some("0"), Some(dev));
    assert_eq!(i.expected, "<= 0");

    // Nobody holds it: the kernel reports its 2 s default.
    let stock = FixtureHost::stock();
    let r = verify(&stock, "[cpu]\npm_qos_latency_us = 0\n");
    let i = item(&r, "cpu.pm_qos_latency_us");
    expect(i, Status::Drift, Some("2000000000"), Some(dev));
    reason_has(i, "no process holds this latency limit");

    // A limit at or below the profile's value complies.
    fx.pm_qos(5);
    let r = verify(&fx, "[cpu]\npm_qos_latency_us = 10\n");
    expect(
        item(&r, "cpu.pm_qos_latency_us"),
        Status::Pass,
        Some("5"),
        Some(dev),
    );
    let r = verify(&fx, "[cpu]\npm_qos_latency_us = 4\n");
    assert_eq!(item(&r, "cpu.pm_qos_latency_us").status, Status::Drift);

    fx.write(dev, [0u8; 8]);
    let r = verify(&fx, "[cpu]\npm_qos_latency_us = 0\n");
    let i = item(&r, "cpu.pm_qos_latency_us");
    expect(i, Status::Error, None, Some(dev));
    assert_eq!(i.reason.as_deref(), Some("expected 4 bytes, read 8"));

    fx.remove(dev);
    let r = verify(&fx, "[cpu]\npm_qos_latency_us = 0\n");
    let i = item(&r, "cpu.pm_qos_latency_us");
    expect(i, Status::Unsupported, None, Some(dev));
    assert_eq!(
        i.reason.as_deref(),
        Some("this kernel has no /dev/cpu_dma_latency")
    );
}

// ---- memory -------------------------------------------------------------------------------

#[test]
fn memory_transparent_hugepage_enabled_and_defrag() {
    let enabled = "/sys/kernel/mm/transparent_hugepage/enabled";
    let defrag = "/sys/kernel/mm/transparent_hugepage/defrag";
    let profile =
        "[memory]\ntransparent_hugepage = \"never\"\ntransparent_hugepage_defrag = \"never\"\n";
    let r = verify(&FixtureHost::tuned(), profile);
    let i = item(&r, "memory.transparent_hugepage.enabled");
    expect(i, Status::Pass, Some("never"), Some(enabled));
    assert_eq!(i.class, Class::Memory);
    expect(
        item(&r, "memory.transparent_hugepage.defrag"),
        Status::Pass,
        Some("never"),
        Some(defrag),
    );

    let stock = FixtureHost::stock();
    assert_eq!(
        std::fs::read_to_string(stock.real(defrag)).unwrap(),
        "always defer defer+madvise [madvise] never\n"
    );
    let r = verify(&stock, profile);
    expect(
        item(&r, "memory.transparent_hugepage.enabled"),
        Status::Drift,
        Some("madvise"),
        Some(enabled),
    );
    expect(
        item(&r, "memory.transparent_hugepage.defrag"),
        Status::Drift,
        Some("madvise"),
        Some(defrag),
    );
    let r = verify(
        &stock,
        "[memory]\ntransparent_hugepage_defrag = \"madvise\"\n",
    );
    assert_eq!(statuses(&r), [Status::Pass]);
}

#[test]
fn memory_transparent_hugepage_value_not_offered() {
    let fx = FixtureHost::tuned();
    let defrag = "/sys/kernel/mm/transparent_hugepage/defrag";
    // Before Linux 4.6 defrag had no `defer` modes.
    fx.write(defrag, "[always] madvise never\n");
    let r = verify(
        &fx,
        "[memory]\ntransparent_hugepage_defrag = \"defer+madvise\"\n",
    );
    let i = item(&r, "memory.transparent_hugepage.defrag");
    expect(i, Status::Unsupported, Some("always"), Some(defrag));
    assert_eq!(
        i.reason.as_deref(),
        Some("\"defer+madvise\" is not offered here (offered: always madvise never)")
    );

    fx.remove("/sys/kernel/mm/transparent_hugepage");
    let r = verify(&fx, "[memory]\ntransparent_hugepage = \"never\"\n");
    let i = item(&r, "memory.transparent_hugepage.enabled");
    expect(
        i,
        Status::Unsupported,
        None,
        Some("/sys/kernel/mm/transparent_hugepage/enabled"),
    );
    assert_eq!(
        i.reason.as_deref(),
        Some("this kernel has no transparent huge pages")
    );
}

#[test]
fn memory_swap_active_is_drift() {
    let profile = "[memory]\nswap = \"off\"\n";
    let stock = FixtureHost::stock();
    let r = verify(&stock, profile);
    let i = item(&r, "memory.swap");
    expect(
        i,
        Status::Drift,
        Some("on: /dev/nvme0n1p3 (partition)"),
        Some("/proc/swaps"),
    );

    // A swap file whose name has a space, escaped by the kernel.
    stock.swaps(&[
        swaps_line("/dev/nvme0n1p3", true, 8_388_604, 0, -2),
        swaps_line("/swap\\040file", false, 2_097_148, 1024, -3),
    ]);
    let raw = std::fs::read_to_string(stock.real("/proc/swaps")).unwrap();
    assert!(
        raw.ends_with("/swap\\040file                           file\t\t2097148\t\t1024\t\t-3\n"),
        "{raw:?}"
    );
    let r = verify(&stock, profile);
    assert_eq!(
        item(&r, "memory.swap").actual.as_deref(),
        Some("on: /dev/nvme0n1p3 (partition), /swap file (file)")
    );
}

#[test]
fn memory_swap_off_but_in_fstab_is_not_persistent() {
    let fx = FixtureHost::tuned();
    let profile = "[memory]\nswap = \"off\"\n";
    // The tuned fstab has its swap line commented out.
    let r = verify(&fx, profile);
    let i = item(&r, "memory.swap");
    expect(i, Status::Pass, Some("off"), Some("/proc/swaps"));
    assert_eq!(i.reason, None);

    let fstab = "# <file system> <mount point> <type> <options> <dump> <pass>\n\
                 UUID=5d2a6a1e / ext4 errors=remount-ro 0 1\n\
                 /swapfile\tnone\tswap\tsw\t0\t0\n";
    fx.write("/etc/fstab", fstab);
    let r = verify(&fx, profile);
    let i = item(&r, "memory.swap");
    expect(i, Status::NotPersistent, Some("off"), Some("/proc/swaps"));
    assert_eq!(
        i.reason.as_deref(),
        Some("/etc/fstab:3 activates swap /swapfile at boot")
    );

    // noauto: not activated at boot.
    fx.write("/etc/fstab", fstab.replace("\tsw\t", "\tsw,noauto\t"));
    let r = verify(&fx, profile);
    assert_eq!(item(&r, "memory.swap").status, Status::Pass);
}

#[test]
fn memory_ksm_states() {
    let fx = FixtureHost::tuned();
    let run = "/sys/kernel/mm/ksm/run";
    let off = "[memory]\nksm = \"off\"\n";
    let r = verify(&fx, off);
    expect(item(&r, "memory.ksm"), Status::Pass, Some("off"), Some(run));
    // 2: stopped after unmerging every page.
    fx.write(run, "2\n");
    let r = verify(&fx, off);
    expect(item(&r, "memory.ksm"), Status::Pass, Some("off"), Some(run));
    fx.write(run, "1\n");
    let r = verify(&fx, off);
    expect(item(&r, "memory.ksm"), Status::Drift, Some("on"), Some(run));
    let r = verify(&fx, "[memory]\nksm = \"on\"\n");
    expect(item(&r, "memory.ksm"), Status::Pass, Some("on"), Some(run));
    fx.write(run, "3\n");
    let r = verify(&fx, off);
    let i = item(&r, "memory.ksm");
    expect(i, Status::Error, Some("3"), Some(run));
    assert_eq!(i.reason.as_deref(), Some("unexpected value in ksm/run"));
    fx.remove("/sys/kernel/mm/ksm");
    let r = verify(&fx, off);
    expect(item(&r, "memory.ksm"), Status::Unsupported, None, Some(run));
}

#[test]
fn memory_hugepages_per_size() {
    let fx = FixtureHost::tuned();
    let two_m = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
    let one_g = "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages";
    let r = verify(
        &fx,
        "[memory]\nhugepages = { \"2M\" = 1024, \"1G\" = { min = 4 } }\n",
    );
    expect(
        item(&r, "memory.hugepages.2M"),
        Status::Pass,
        Some("1024"),
        Some(two_m),
    );
    let i = item(&r, "memory.hugepages.1G");
    expect(i, Status::Drift, Some("0"), Some(one_g));
    assert_eq!(i.expected, ">= 4");

    fx.write(one_g, "8\n");
    let r = verify(
        &fx,
        "[memory]\nhugepages = { \"2M\" = 2048, \"1G\" = { min = 4 } }\n",
    );
    expect(
        item(&r, "memory.hugepages.2M"),
        Status::Drift,
        Some("1024"),
        Some(two_m),
    );
    expect(
        item(&r, "memory.hugepages.1G"),
        Status::Pass,
        Some("8"),
        Some(one_g),
    );

    // No 1G pages on this CPU (no pdpe1gb): the size directory is absent.
    fx.remove("/sys/kernel/mm/hugepages/hugepages-1048576kB");
    let r = verify(&fx, "[memory]\nhugepages = { \"1G\" = { min = 4 } }\n");
    let i = item(&r, "memory.hugepages.1G");
    expect(i, Status::Unsupported, None, Some(one_g));
    assert_eq!(
        i.reason.as_deref(),
        Some("this machine has no 1G huge pages")
    );
}

// ---- block --------------------------------------------------------------------------------

#[test]
fn block_glob_matches_every_nvme_device() {
    let fx = FixtureHost::tuned();
    let profile = "[[block]]\ndevices = \"nvme*\"\nscheduler = \"none\"\n";
    let r = verify(&fx, profile);
    assert_eq!(
        keys(&r),
        ["block.nvme0n1.scheduler", "block.nvme1n1.scheduler"]
    );
    for dev in ["nvme0n1", "nvme1n1"] {
        let i = item(&r, &format!("block.{dev}.scheduler"));
        expect(
            i,
            Status::Pass,
            Some("none"),
            Some(&format!("/sys/block/{dev}/queue/scheduler")),
        );
        assert_eq!(i.class, Class::Block);
    }
    fx.write(
        "/sys/block/nvme1n1/queue/scheduler",
        "none [mq-deadline] kyber bfq \n",
    );
    let r = verify(&fx, profile);
    expect(
        item(&r, "block.nvme1n1.scheduler"),
        Status::Drift,
        Some("mq-deadline"),
        Some("/sys/block/nvme1n1/queue/scheduler"),
    );
    assert_eq!(item(&r, "block.nvme0n1.scheduler").status, Status::Pass);
}

#[test]
fn block_glob_matching_nothing_is_one_unsupported_item() {
    let fx = FixtureHost::tuned();
    let r = verify(&fx, "[[block]]\ndevices = \"vd*\"\nscheduler = \"none\"\n");
    assert_eq!(keys(&r), ["block.vd*"]);
    let i = item(&r, "block.vd*");
    expect(i, Status::Unsupported, None, Some("/sys/block"));
    assert_eq!(i.expected, "a matching device");
    assert_eq!(
        i.reason.as_deref(),
        Some("no block device matches vd* (devices: nvme0n1 nvme1n1 sda zram0)")
    );
}

#[test]
fn block_device_without_scheduler_or_without_the_wanted_one() {
    let fx = FixtureHost::tuned();
    let r = verify(
        &fx,
        "[[block]]\ndevices = \"zram*\"\nscheduler = \"none\"\nread_ahead_kb = 128\n",
    );
    let i = item(&r, "block.zram0.scheduler");
    expect(
        i,
        Status::Unsupported,
        None,
        Some("/sys/block/zram0/queue/scheduler"),
    );
    assert_eq!(
        i.reason.as_deref(),
        Some("this device has no I/O scheduler")
    );
    expect(
        item(&r, "block.zram0.read_ahead_kb"),
        Status::Pass,
        Some("128"),
        Some("/sys/block/zram0/queue/read_ahead_kb"),
    );

    // bfq not built or loaded.
    fx.write(
        "/sys/block/sda/queue/scheduler",
        "none [mq-deadline] kyber \n",
    );
    let r = verify(&fx, "[[block]]\ndevices = \"sda\"\nscheduler = \"bfq\"\n");
    let i = item(&r, "block.sda.scheduler");
    expect(
        i,
        Status::Unsupported,
        Some("mq-deadline"),
        Some("/sys/block/sda/queue/scheduler"),
    );
    assert_eq!(
        i.reason.as_deref(),
        Some("\"bfq\" is not offered here (offered: none mq-deadline kyber)")
    );
}

#[test]
fn block_later_rule_wins_for_overlapping_globs() {
    let fx = FixtureHost::tuned();
    let r = verify(
        &fx,
        r#"
[[block]]
devices = "*"
scheduler = "mq-deadline"
read_ahead_kb = 128

[[block]]
devices = "nvme*"
scheduler = "none"

[[block]]
devices = "nvme1n1"
read_ahead_kb = 4096
"#,
    );
    assert_eq!(
        keys(&r),
        [
            "block.nvme0n1.scheduler",
            "block.nvme0n1.read_ahead_kb",
            "block.nvme1n1.scheduler",
            "block.nvme1n1.read_ahead_kb",
            "block.sda.scheduler",
            "block.sda.read_ahead_kb",
            "block.zram0.scheduler",
            "block.zram0.read_ahead_kb",
        ]
    );
    let i = item(&r, "block.nvme0n1.scheduler");
    assert_eq!((i.status, i.expected.as_str()), (Status::Pass, "none"));
    let i = item(&r, "block.nvme0n1.read_ahead_kb");
    assert_eq!((i.status, i.expected.as_str()), (Status::Pass, "128"));
    let i = item(&r, "block.nvme1n1.read_ahead_kb");
    expect(
        i,
        Status::Drift,
        Some("128"),
        Some("/sys/block/nvme1n1/queue/read_ahead_kb"),
    );
    assert_eq!(i.expected, "4096");
    let i = item(&r, "block.sda.scheduler");
    assert_eq!(
        (i.status, i.expected.as_str()),
        (Status::Pass, "mq-deadline")
    );
    assert_eq!(
        item(&r, "block.zram0.scheduler").status,
        Status::Unsupported
    );
}

#[test]
fn block_read_ahead_bound_and_unreadable() {
    let fx = FixtureHost::tuned();
    fx.make_unreadable("/sys/block/nvme1n1/queue/read_ahead_kb");
    let r = verify(
        &fx,
        "[[block]]\ndevices = \"nvme*\"\nread_ahead_kb = { max = 256 }\n",
    );
    let i = item(&r, "block.nvme0n1.read_ahead_kb");
    expect(
        i,
        Status::Pass,
        Some("128"),
        Some("/sys/block/nvme0n1/queue/read_ahead_kb"),
    );
    assert_eq!(i.expected, "<= 256");
    let i = item(&r, "block.nvme1n1.read_ahead_kb");
    expect(
        i,
        Status::Error,
        None,
        Some("/sys/block/nvme1n1/queue/read_ahead_kb"),
    );
    reason_has(i, "Is a directory");
}

// ---- limits -------------------------------------------------------------------------------

const LIMITS_PROFILE: &str =
    "[limits]\n\"*\" = { nofile = 1000000, nproc = 65536, memlock = \"unlimited\" }\n";

#[test]
fn limits_pass_from_the_agent_file() {
    let fx = FixtureHost::tuned();
    let r = verify(&fx, LIMITS_PROFILE);
    assert_eq!(r.items.len(), 6, "{:?}", keys(&r));
    for (item_name, value) in [
        ("nofile", "1000000"),
        ("nproc", "65536"),
        ("memlock", "unlimited"),
    ] {
        for kind in ["soft", "hard"] {
            let i = item(&r, &format!("limits.*.{item_name}.{kind}"));
            expect(i, Status::Pass, Some(value), Some(AGENT_LIMITS));
            assert_eq!((i.class, i.expected.as_str()), (Class::Limits, value));
        }
    }
    // limits.conf is read first: the agent's `-` lines override it.
    fx.append("/etc/security/limits.conf", "*\thard\tnofile\t4096\n");
    let r = verify(&fx, LIMITS_PROFILE);
    assert_eq!(item(&r, "limits.*.nofile.hard").status, Status::Pass);
}

#[test]
fn limits_later_file_overriding_the_agent_file_is_drift() {
    let fx = FixtureHost::tuned();
    let agent_line = line_no(AGENT_LIMITS_CONF, "*\t-\tnofile");
    fx.write(
        "/etc/security/limits.d/zzz-local.conf",
        "# local\n*               soft    nofile          4096\n",
    );
    let r = verify(&fx, LIMITS_PROFILE);
    let i = item(&r, "limits.*.nofile.soft");
    expect(
        i,
        Status::Drift,
        Some("4096"),
        Some("/etc/security/limits.d/zzz-local.conf"),
    );
    assert_eq!(
        i.reason,
        Some(format!(
            "/etc/security/limits.d/zzz-local.conf:2 overrides the agent's 1000000 from \
             {AGENT_LIMITS}:{agent_line}"
        ))
    );
    expect(
        item(&r, "limits.*.nofile.hard"),
        Status::Pass,
        Some("1000000"),
        Some(AGENT_LIMITS),
    );
}

#[test]
fn limits_missing_dash_type_and_other_spellings() {
    let stock = FixtureHost::stock();
    let r = verify(&stock, LIMITS_PROFILE);
    assert_eq!(r.items.len(), 6);
    for i in &r.items {
        expect(i, Status::Drift, None, Some(AGENT_LIMITS));
        assert_eq!(i.reason.as_deref(), Some("no limits file sets it"));
    }

    // `-` sets soft and hard; `infinity` is `unlimited`.
    stock.write(
        "/etc/security/limits.d/90-trading.conf",
        "@trading\t-\tmemlock\tinfinity\n@trading hard rtprio 99\n",
    );
    let r = verify(
        &stock,
        "[limits]\n\"@trading\" = { memlock = \"unlimited\", rtprio = { soft = 50, hard = 99 } }\n",
    );
    let file = "/etc/security/limits.d/90-trading.conf";
    expect(
        item(&r, "limits.@trading.memlock.soft"),
        Status::Pass,
        Some("infinity"),
        Some(file),
    );
    expect(
        item(&r, "limits.@trading.memlock.hard"),
        Status::Pass,
        Some("infinity"),
        Some(file),
    );
    expect(
        item(&r, "limits.@trading.rtprio.hard"),
        Status::Pass,
        Some("99"),
        Some(file),
    );
    let i = item(&r, "limits.@trading.rtprio.soft");
    expect(i, Status::Drift, None, Some(AGENT_LIMITS));
    assert_eq!(i.expected, "50");

    // A wrong value and an invalid one, both in the effective line.
    stock.write(
        "/etc/security/limits.d/90-trading.conf",
        "@trading - memlock 65536\n@trading - rtprio lots\n",
    );
    let r = verify(
        &stock,
        "[limits]\n\"@trading\" = { memlock = \"unlimited\", rtprio = 99 }\n",
    );
    let i = item(&r, "limits.@trading.memlock.soft");
    expect(i, Status::Drift, Some("65536"), Some(file));
    assert_eq!(i.reason, Some(format!("set at {file}:1")));
    let i = item(&r, "limits.@trading.rtprio.hard");
    expect(i, Status::Drift, Some("lots"), Some(file));
    assert_eq!(
        i.reason,
        Some(format!("{file}:2: \"lots\" is not a valid limit"))
    );
}

// ---- mount --------------------------------------------------------------------------------

const DATA_MOUNT: &str = "[[mount]]\npath = \"/data\"\noptions = [\"noatime\", \"nodiratime\"]\n";

#[test]
fn mount_with_required_options_passes() {
    let fx = FixtureHost::tuned();
    let r = verify(&fx, DATA_MOUNT);
    let i = item(&r, "mount./data.options");
    expect(
        i,
        Status::Pass,
        // Per-mount and superblock options, as one sorted set.
        Some("errors=remount-ro,noatime,nodiratime,rw"),
        Some(MOUNTINFO),
    );
    assert_eq!(
        (i.class, i.expected.as_str(), i.reason.as_deref()),
        (Class::Mount, "noatime,nodiratime", None)
    );
    // Superblock options count as well.
    let r = verify(
        &fx,
        "[[mount]]\npath = \"/\"\noptions = [\"errors=remount-ro\"]\n",
    );
    expect(
        item(&r, "mount./.options"),
        Status::Pass,
        Some("errors=remount-ro,relatime,rw"),
        Some(MOUNTINFO),
    );
}

#[test]
fn mount_missing_option_is_drift() {
    let stock = FixtureHost::stock();
    let r = verify(&stock, DATA_MOUNT);
    let i = item(&r, "mount./data.options");
    expect(
        i,
        Status::Drift,
        Some("errors=remount-ro,relatime,rw"),
        Some(MOUNTINFO),
    );
    assert_eq!(i.reason.as_deref(), Some("missing noatime,nodiratime"));

    // The mount on top is the one that counts.
    let fx = FixtureHost::tuned();
    fx.append(
        MOUNTINFO,
        "40 36 0:40 / /data rw,relatime shared:40 - tmpfs tmpfs rw,size=1048576k,inode64\n",
    );
    let r = verify(&fx, DATA_MOUNT);
    let i = item(&r, "mount./data.options");
    expect(
        i,
        Status::Drift,
        Some("inode64,relatime,rw,size=1048576k"),
        Some(MOUNTINFO),
    );
}

#[test]
fn mount_path_that_is_not_a_mount_point_is_unsupported() {
    let fx = FixtureHost::tuned();
    let r = verify(
        &fx,
        "[[mount]]\npath = \"/scratch\"\noptions = [\"noatime\"]\n\n\
         [[mount]]\npath = \"/mnt/market\"\noptions = [\"noatime\"]\n",
    );
    let i = item(&r, "mount./scratch.options");
    expect(i, Status::Unsupported, None, Some(MOUNTINFO));
    assert_eq!(i.reason.as_deref(), Some("/scratch is not a mount point"));
    // A prefix of the escaped `/mnt/market\040data` is not it.
    assert_eq!(
        item(&r, "mount./mnt/market.options").status,
        Status::Unsupported
    );

    fx.make_unreadable(MOUNTINFO);
    let r = verify(&fx, DATA_MOUNT);
    let i = item(&r, "mount./data.options");
    expect(i, Status::Error, None, Some(MOUNTINFO));
    reason_has(i, "Is a directory");
}

#[test]
fn mount_fstab_lacking_an_option_is_not_persistent() {
    let fx = FixtureHost::tuned();
    fx.write(
        "/etc/fstab",
        "# <file system> <mount point> <type> <options> <dump> <pass>\n\
         UUID=5d2a6a1e / ext4 errors=remount-ro 0 1\n\
         UUID=7a8b9c0d /data ext4 defaults,noatime 0 2\n",
    );
    let r = verify(&fx, DATA_MOUNT);
    let i = item(&r, "mount./data.options");
    expect(
        i,
        Status::NotPersistent,
        // Per-mount and superblock options, as one sorted set.
        Some("errors=remount-ro,noatime,nodiratime,rw"),
        Some(MOUNTINFO),
    );
    assert_eq!(
        i.reason.as_deref(),
        Some("/etc/fstab:3 lacks nodiratime: the next mount drops them")
    );

    // No fstab entry at all (mounted by hand or by a unit): pass, with a note.
    fx.write("/etc/fstab", "UUID=5d2a6a1e / ext4 errors=remount-ro 0 1\n");
    let r = verify(&fx, DATA_MOUNT);
    let i = item(&r, "mount./data.options");
    assert_eq!(i.status, Status::Pass);
    assert_eq!(
        i.reason.as_deref(),
        Some("no /etc/fstab entry: persistence not checked")
    );
}

#[test]
fn mount_point_with_an_escaped_space() {
    let fx = FixtureHost::tuned();
    let profile =
        "[[mount]]\npath = \"/mnt/market data\"\noptions = [\"noatime\", \"nodiratime\"]\n";
    let r = verify(&fx, profile);
    let i = item(&r, "mount./mnt/market data.options");
    expect(
        i,
        Status::Pass,
        // Per-mount and superblock options, as one sorted set.
        Some("noatime,nodiratime,rw"),
        Some(MOUNTINFO),
    );
    assert_eq!(i.reason, None, "the escaped fstab entry must be found");

    // The fstab entry is matched after unescaping too.
    let fstab = "/dev/sda1 /mnt/market\\040data ext4 noatime 0 2\n";
    fx.write("/etc/fstab", fstab);
    let r = verify(&fx, profile);
    let i = item(&r, "mount./mnt/market data.options");
    assert_eq!(i.status, Status::NotPersistent);
    assert_eq!(
        i.reason.as_deref(),
        Some("/etc/fstab:1 lacks nodiratime: the next mount drops them")
    );
}

#[test]
fn mount_hand_written_fstab_escape_out_of_range_is_harmless() {
    let fx = FixtureHost::tuned();
    // `\777` is no byte; unescaping must leave it alone rather than overflow.
    fx.append("/etc/fstab", "/dev/sdc1 /mnt/odd\\777 ext4 defaults 0 2\n");
    fx.append("/proc/swaps", &swaps_line("/odd\\777", false, 1024, 0, -4));
    let r = verify(&fx, &format!("{DATA_MOUNT}\n[memory]\nswap = \"off\"\n"));
    assert_eq!(item(&r, "mount./data.options").status, Status::Pass);
    assert_eq!(
        item(&r, "memory.swap").actual.as_deref(),
        Some("on: /odd\\777 (file)")
    );
}

// ---- clocksource --------------------------------------------------------------------------

#[test]
fn clocksource_pass_drift_unsupported() {
    let current = "/sys/devices/system/clocksource/clocksource0/current_clocksource";
    let fx = FixtureHost::tuned();
    let r = verify(&fx, "[clocksource]\ncurrent = \"tsc\"\n");
    let i = item(&r, "clocksource.current");
    expect(i, Status::Pass, Some("tsc"), Some(current));
    assert_eq!(i.class, Class::Clocksource);

    // The kernel fell back to hpet (an unstable TSC).
    fx.write(current, "hpet\n");
    let r = verify(&fx, "[clocksource]\ncurrent = \"tsc\"\n");
    expect(
        item(&r, "clocksource.current"),
        Status::Drift,
        Some("hpet"),
        Some(current),
    );

    let r = verify(&fx, "[clocksource]\ncurrent = \"kvm-clock\"\n");
    let i = item(&r, "clocksource.current");
    expect(i, Status::Unsupported, Some("hpet"), Some(current));
    assert_eq!(
        i.reason.as_deref(),
        Some("kvm-clock is not available here (available: tsc hpet acpi_pm)")
    );

    fx.remove("/sys/devices/system/clocksource");
    let r = verify(&fx, "[clocksource]\ncurrent = \"tsc\"\n");
    let i = item(&r, "clocksource.current");
    expect(i, Status::Unsupported, None, Some(current));
    assert_eq!(
        i.reason.as_deref(),
        Some("this kernel exposes no clocksource")
    );
}

// ---- whole profiles -----------------------------------------------------------------------

#[test]
fn tuned_host_complies_with_the_full_and_shipped_profiles() {
    let fx = FixtureHost::tuned();
    let stock = FixtureHost::stock();
    let full = fx.profile("fixture-full", FULL_PROFILE);
    let mut paths = vec![full];
    for name in ["base", "trading-latency", "network-latency"] {
        paths.push(shipped_profile(name));
    }
    for path in &paths {
        let profile = load(path);
        let r = tuning::verify(&fx.host(), &profile);
        let findings: Vec<&Item> = r
            .items
            .iter()
            .filter(|i| i.status != Status::Pass)
            .collect();
        assert!(findings.is_empty(), "{}: {findings:#?}", path.display());
        assert!(r.is_compliant(true));
        let r = tuning::verify(&stock.host(), &profile);
        assert!(
            r.summary.drift > 0,
            "{}: stock host must drift",
            path.display()
        );
    }
    // Every class is exercised by the full profile.
    let r = tuning::verify(&fx.host(), &load(&paths[0]));
    let classes: std::collections::BTreeSet<Class> = r.items.iter().map(|i| i.class).collect();
    assert_eq!(
        classes.into_iter().collect::<Vec<_>>(),
        [
            Class::Sysctl,
            Class::Cpu,
            Class::Memory,
            Class::Block,
            Class::Limits,
            Class::Mount,
            Class::Clocksource
        ]
    );
}

// ---- the binary ---------------------------------------------------------------------------

#[test]
fn cli_json_report_matches_the_fixture() {
    let fx = FixtureHost::tuned();
    let path = fx.profile("fixture-full", FULL_PROFILE);
    // By name, through NODE_AGENT_PROFILE_PATH.
    let out = agentctl(
        &fx,
        &[
            "tune",
            "verify",
            "--profile",
            "fixture-full",
            "--output",
            "json",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["profile"]["name"], "fixture-full");
    assert_eq!(v["profile"]["path"], path.display().to_string());
    assert_eq!(v["host"], HOSTNAME);
    let items = v["items"].as_array().expect("items array");
    // sysctl 4; cpu 9 per CPU (4 idle states) + boost, min_perf_pct, pm_qos; memory 5;
    // block 2 per nvme + sda; limits 6; mount 2; clocksource 1.
    assert_eq!(items.len(), 4 + (16 * 9 + 3) + 5 + 5 + 6 + 2 + 1);
    for i in items {
        let mut fields: Vec<&str> = i.as_object().unwrap().keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "actual", "class", "expected", "key", "path", "reason", "status"
            ]
        );
        assert_eq!(i["status"], "pass", "{i}");
    }
    let summary = v["summary"].as_object().expect("summary object");
    let mut counts: Vec<(&str, u64)> = summary
        .iter()
        .map(|(k, n)| (k.as_str(), n.as_u64().unwrap()))
        .collect();
    counts.sort_unstable();
    assert_eq!(
        counts,
        [
            ("drift", 0),
            ("error", 0),
            ("not-persistent", 0),
            ("pass", items.len() as u64),
            ("pending-reboot", 0),
            ("unsupported", 0),
        ]
    );
    // The binary reports exactly what the library computes.
    let report: Report = serde_json::from_slice(&out.stdout).expect("a Report");
    assert_eq!(report, tuning::verify(&fx.host(), &load(&path)));

    // Host name comes from the fixture, and findings show up in JSON with their status.
    fx.write("/proc/sys/kernel/hostname", "md-fix-02\n");
    fx.cpu(3, "cpufreq/scaling_governor", "powersave");
    let out = agentctl(
        &fx,
        &[
            "tune",
            "verify",
            "--profile",
            &path.display().to_string(),
            "--output",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["host"], "md-fix-02");
    assert_eq!(v["summary"]["drift"], 1);
    let drift: Vec<&serde_json::Value> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["status"] == "drift")
        .collect();
    assert_eq!(drift.len(), 1);
    assert_eq!(drift[0]["key"], "cpu.3.governor");
    assert_eq!(drift[0]["actual"], "powersave");
    assert_eq!(
        drift[0]["path"],
        "/sys/devices/system/cpu/cpu3/cpufreq/scaling_governor"
    );
}

#[test]
fn cli_exit_codes() {
    let fx = FixtureHost::tuned();
    fx.profile("fixture-full", FULL_PROFILE);
    fx.profile(
        "absent-knobs",
        "[sysctl]\n\"net.ipv4.tcp_bogus_knob\" = 1\n",
    );
    fx.profile(
        "runtime-only",
        "[sysctl]\n\"net.ipv4.conf.all.rp_filter\" = 0\n",
    );
    let code = |fx: &FixtureHost, name: &str, strict: bool| {
        let mut args = vec!["tune", "verify", "--profile", name];
        if strict {
            args.push("--strict");
        }
        agentctl(fx, &args).status.code()
    };

    assert_eq!(code(&fx, "fixture-full", false), Some(0));
    assert_eq!(code(&fx, "fixture-full", true), Some(0));
    // Unsupported only: a finding with --strict alone.
    assert_eq!(code(&fx, "absent-knobs", false), Some(0));
    assert_eq!(code(&fx, "absent-knobs", true), Some(1));
    // Not-persistent alone is a finding.
    assert_eq!(code(&fx, "runtime-only", false), Some(1));

    // Drift.
    let stock = FixtureHost::stock();
    stock.profile("fixture-full", FULL_PROFILE);
    assert_eq!(code(&stock, "fixture-full", false), Some(1));
    // Error alone is a finding.
    fx.make_unreadable("/sys/devices/system/clocksource/clocksource0/current_clocksource");
    fx.profile("clock", "[clocksource]\ncurrent = \"tsc\"\n");
    assert_eq!(code(&fx, "clock", false), Some(1));
    // Invalid input.
    assert_eq!(code(&fx, "no-such-profile", false), Some(2));
}

#[test]
fn cli_table_fits_100_columns() {
    // The stock host against a broad profile: many findings with long reasons.
    let stock = FixtureHost::stock();
    stock.write(
        "/etc/sysctl.d/zzz-a-rather-long-local-override-file-name-for-wrapping.conf",
        "net.ipv4.tcp_congestion_control = reno\n",
    );
    stock.sysctl("net.ipv4.tcp_congestion_control", "bbr");
    stock.profile("fixture-full", FULL_PROFILE);
    let out = agentctl(&stock, &["tune", "verify", "--profile", "fixture-full"]);
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8(out.stdout).expect("UTF-8 table");
    let wide: Vec<(usize, &str)> = table
        .lines()
        .map(|l| (l.chars().count(), l))
        .filter(|(n, _)| *n > 100)
        .collect();
    assert!(wide.is_empty(), "lines over 100 columns: {wide:#?}");
    let mut lines = table.lines();
    assert_eq!(
        lines.next(),
        Some(format!("profile fixture-full  host {HOSTNAME}").as_str()),
        "{table}"
    );
    assert!(lines.next().unwrap().starts_with("from /"), "{table}");
    for header in [
        "SYSCTL",
        "CPU",
        "MEMORY",
        "BLOCK",
        "LIMITS",
        "MOUNT",
        "CLOCKSOURCE",
    ] {
        assert!(
            table.lines().any(|l| l == header),
            "no {header} section:\n{table}"
        );
    }
    // The long not-persistent reason is wrapped, not cut.
    assert!(table.contains("not-persistent"), "{table}");
    assert!(
        table.contains("zzz-a-rather-long-local-override-file-name-for-wrapping.conf"),
        "{table}"
    );
    let last = table.lines().last().unwrap();
    assert!(
        last.contains(" items: ") && last.contains("drift"),
        "{last}"
    );
}

// ---- read-only ----------------------------------------------------------------------------

#[test]
fn verify_never_modifies_the_host_tree() {
    for fx in [FixtureHost::tuned(), FixtureHost::stock()] {
        let path = fx.profile("fixture-full", FULL_PROFILE);
        let before = fx.snapshot();
        assert!(before.len() > 500, "fixture too small: {}", before.len());

        let profile = load(&path);
        let first = tuning::verify(&fx.host(), &profile);
        let second = tuning::verify(&fx.host(), &profile);
        assert_eq!(first, second, "verify is a pure read");
        for args in [
            &["tune", "verify", "--profile", "fixture-full"][..],
            &[
                "tune",
                "verify",
                "--profile",
                "fixture-full",
                "--output",
                "json",
                "--strict",
            ][..],
        ] {
            let out = agentctl(&fx, args);
            assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
        }
        let after = fx.snapshot();
        assert!(before == after, "verify changed the host tree");

        // The snapshot does see a one-byte change, so the equality above means something.
        fx.write("/sys/kernel/mm/ksm/run", "1\n");
        assert!(fx.snapshot() != after);
    }
}

#[test]
fn fixture_formats_are_the_kernels() {
    let fx = FixtureHost::build(Spec::default());
    let read = |p: &str| std::fs::read_to_string(fx.real(p)).unwrap();
    assert_eq!(read("/sys/devices/system/cpu/online"), "0-15\n");
    assert_eq!(read("/sys/devices/system/cpu/offline"), "16-17\n");
    assert_eq!(read("/sys/devices/system/cpu/possible"), "0-17\n");
    assert_eq!(
        read("/sys/block/nvme0n1/queue/scheduler"),
        "[none] mq-deadline kyber bfq \n"
    );
    assert_eq!(
        read("/sys/block/sda/queue/scheduler"),
        "none [mq-deadline] kyber bfq \n"
    );
    assert!(!fx.real("/sys/block/zram0/queue/scheduler").exists());
    assert!(fx.real("/sys/block/zram0/queue/read_ahead_kb").exists());
    assert_eq!(
        read("/proc/swaps"),
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
    );
    assert_eq!(
        swaps_line("/dev/nvme0n1p3", true, 8_388_604, 0, -2),
        "/dev/nvme0n1p3                          partition\t8388604\t\t0\t\t-2\n"
    );
    assert_eq!(read(&cpu_path(3, "cpuidle/state3/name")), "C6\n");
    assert_eq!(read(&cpu_path(3, "cpuidle/state3/latency")), "133\n");
    assert_eq!(
        std::fs::read_link(fx.real(&cpu_path(3, "cpufreq"))).unwrap(),
        PathBuf::from("../cpufreq/policy3")
    );
    assert!(read(MOUNTINFO).contains(
        "36 26 259:2 / /data rw,noatime,nodiratime shared:30 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro\n"
    ));
    assert!(read(MOUNTINFO).contains(" /mnt/market\\040data "));
    assert_eq!(read(AGENT_SYSCTL), AGENT_SYSCTL_CONF);
    assert_eq!(read(AGENT_LIMITS), AGENT_LIMITS_CONF);
    assert!(!fx.real(&cpu_path(16, "cpufreq")).exists());
    assert_eq!(read(&cpu_path(16, "online")), "0\n");
}
