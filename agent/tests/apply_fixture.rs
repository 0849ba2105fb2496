//! Fixture tier for `agentctl tune apply`, `rollback` and `status`: plans, every knob class
//! applied and rolled back byte for byte, one baseline across profiles, values changed by
//! others, the lock, failures midway, journal compatibility and the audit log. Crash safety
//! with fail points is in apply_crash.rs. Safe on any machine: every run of the binary points
//! NODE_AGENT_HOST_ROOT at a fixture tree and NODE_AGENT_STATE_DIR beside it.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use node_agent::audit::{Audit, Caller};
use node_agent::change::{self, Target, Value};
use node_agent::profile::{self, Profile, SearchPath};
use node_agent::rollback::apply::{self, Session};
use node_agent::rollback::journal::{JOURNAL_FORMAT_VERSION, RunState, StateDir};
use node_agent::system::RecordingSystem;
use node_agent::tuning;
use node_agent::verify::{Class, Status};
use serde_json::Value as Json;
use support::{CPU_DIR, Driver, FixtureHost, Node, Spec, swaps_line};

const SYSCTL_FILE: &str = "/etc/sysctl.d/zz-node-agent.conf";
const LIMITS_FILE: &str = "/etc/security/limits.d/zz-node-agent.conf";
const OWNED_HEADER: &str = "# Written by node-agent (agentctl tune apply); do not edit.\n";

// ---- helpers ------------------------------------------------------------------------------

/// What one run of the binary did.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn from(out: Output) -> Ran {
        Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[track_caller]
    fn expect_code(self, code: i32) -> Ran {
        assert_eq!(
            self.code, code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    fn json(&self) -> Json {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

fn run(fx: &FixtureHost, args: &[&str]) -> Ran {
    Ran::from(fx.agentctl(args))
}

fn run_env(fx: &FixtureHost, args: &[&str], env: &[(&str, &str)]) -> Ran {
    Ran::from(fx.agentctl_env(args, env))
}

/// Fails with the paths that differ and, for files, both contents.
#[track_caller]
fn assert_same_tree(want: &BTreeMap<PathBuf, Node>, got: &BTreeMap<PathBuf, Node>) {
    let mut diffs = Vec::new();
    for (path, node) in want {
        match got.get(path) {
            None => diffs.push(format!("missing: {}", path.display())),
            Some(other) if other != node => diffs.push(format!(
                "changed: {}\n  want {}\n  got  {}",
                path.display(),
                show(node),
                show(other)
            )),
            Some(_) => {}
        }
    }
    for path in got.keys().filter(|p| !want.contains_key(*p)) {
        diffs.push(format!("extra: {}", path.display()));
    }
    assert!(diffs.is_empty(), "host tree differs:\n{}", diffs.join("\n"));
}

fn show(node: &Node) -> String {
    match node {
        Node::File { mode, bytes } => {
            format!("file {mode:o} {:?}", String::from_utf8_lossy(bytes))
        }
        other => format!("{other:?}"),
    }
}

/// The paths (relative to the host root) whose entry differs between two snapshots.
fn changed_paths(a: &BTreeMap<PathBuf, Node>, b: &BTreeMap<PathBuf, Node>) -> Vec<String> {
    let mut out: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|p| a.get(*p) != b.get(*p))
        .map(|p| format!("/{}", p.display()))
        .collect();
    out.sort();
    out.dedup();
    out
}

fn read(fx: &FixtureHost, host_path: &str) -> String {
    std::fs::read_to_string(fx.real(host_path))
        .unwrap_or_else(|e| panic!("read {host_path} in the fixture: {e}"))
}

fn load(path: &Path) -> Profile {
    profile::load(
        path.to_str().expect("UTF-8 temp path"),
        &SearchPath::new(Vec::new()),
    )
    .unwrap_or_else(|e| panic!("profile {} does not load: {e}", path.display()))
}

fn journal_json(fx: &FixtureHost) -> Json {
    let text = std::fs::read_to_string(fx.state_dir().join("journal.json"))
        .unwrap_or_else(|e| panic!("read the journal: {e}"));
    serde_json::from_str(&text).expect("journal is JSON")
}

fn audit_lines(fx: &FixtureHost) -> Vec<Json> {
    match std::fs::read_to_string(fx.state_dir().join("audit.log")) {
        Ok(text) => text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read audit.log: {e}"),
    }
}

/// `class key: from → to` lines of a plan table.
fn plan_lines(table: &str) -> Vec<String> {
    table
        .lines()
        .skip_while(|l| !l.ends_with("change(s):"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.trim().to_owned())
        .collect()
}

fn status_state(fx: &FixtureHost) -> String {
    let s = run(fx, &["tune", "status", "-o", "json"]).expect_code(0);
    s.json()["state"].as_str().expect("state").to_owned()
}

/// Every file-based knob class on the stock intel_pstate host, with a change for each key of
/// the profile format that can be changed by a file write: exact sysctls (a dotted interface
/// name among them), bounds that are violated (written) and one that is met (neither written
/// nor persisted), every CPU knob but pm_qos (which the daemon holds), THP, KSM, huge pages,
/// I/O scheduler and read-ahead, limits and the clocksource.
const ALL_FILES: &str = r#"
[profile]
name = "apply-all"

[sysctl]
"vm.swappiness" = 10
"net.ipv4.conf.eth0/100.rp_filter" = 1
"net.core.rmem_max" = { min = 134217728 }
"net.ipv4.tcp_fin_timeout" = { max = 30 }
"fs.file-max" = { min = 1048576 }

[cpu]
governor = "performance"
idle = { max_latency_us = 20 }
min_freq = "3GHz"
max_freq = "3.5GHz"
energy_performance_preference = "performance"
energy_perf_bias = "performance"
boost = false
min_perf_pct = 100

[memory]
transparent_hugepage = "never"
transparent_hugepage_defrag = "never"
ksm = "on"
hugepages = { "2M" = 1024, "1G" = { min = 4 } }

[[block]]
devices = "nvme*"
scheduler = "mq-deadline"
read_ahead_kb = 4096

[[block]]
devices = "sda"
scheduler = "none"

[limits]
"*" = { nofile = 1000000, memlock = "unlimited" }
"@trading" = { nproc = { soft = 4096, hard = 8192 } }

[clocksource]
current = "hpet"
"#;

// ---- plan (--dry-run) ---------------------------------------------------------------------

#[test]
fn dry_run_prints_every_change_and_changes_nothing() {
    let fx = FixtureHost::stock();
    fx.profile("all", ALL_FILES);
    let before = fx.snapshot();

    let table = run(&fx, &["tune", "apply", "--profile", "all", "--dry-run"]).expect_code(0);
    let lines = plan_lines(&table.stdout);
    assert!(
        table
            .stdout
            .contains(&format!("{} change(s):", lines.len()))
    );
    let json = run(
        &fx,
        &[
            "tune",
            "apply",
            "--profile",
            "all",
            "--dry-run",
            "-o",
            "json",
        ],
    )
    .expect_code(0)
    .json();
    assert_same_tree(&before, &fx.snapshot());
    assert!(
        !fx.state_dir().exists(),
        "a dry run must not create the state directory"
    );

    let changes = json["changes"].as_array().expect("changes");
    assert_eq!(json["schema_version"], 1);
    assert_eq!(changes.len(), lines.len());
    // 4 sysctls (fs.file-max is met); per CPU governor, C6 (C1 and C1E are within 20 us and
    // already enabled), min and max frequency, EPP and EPB; boost and min_perf_pct; THP x2,
    // KSM, 2M and 1G pages; 2 nvme x (scheduler, read-ahead) and sda's scheduler; the
    // clocksource; the two files.
    let expected_count = 4 + 16 * 6 + 2 + 5 + 5 + 1 + 2;
    assert_eq!(changes.len(), expected_count, "{}", table.stdout);
    for (line, c) in lines.iter().zip(changes) {
        assert_eq!(
            *line,
            format!(
                "{} {}: {} → {}",
                c["class"].as_str().unwrap(),
                c["key"].as_str().unwrap(),
                describe_json(&c["from"]),
                describe_json(&c["to"])
            )
        );
    }
    for want in [
        "sysctl vm.swappiness: 60 → 10",
        "sysctl net.ipv4.conf.eth0/100.rp_filter: 2 → 1",
        "sysctl net.core.rmem_max: 212992 → 134217728",
        "sysctl net.ipv4.tcp_fin_timeout: 60 → 30",
        "cpu cpu.0.governor: powersave → performance",
        "cpu cpu.15.idle.state3.disable: 0 → 1",
        "cpu cpu.3.min_freq: 800000 → 3000000",
        "cpu cpu.3.max_freq: 3900000 → 3500000",
        "cpu cpu.7.energy_performance_preference: balance_performance → performance",
        "cpu cpu.7.energy_perf_bias: 6 → 0",
        "cpu cpu.boost: 0 → 1",
        "cpu cpu.min_perf_pct: 22 → 100",
        "memory memory.transparent_hugepage.enabled: madvise → never",
        "memory memory.transparent_hugepage.defrag: madvise → never",
        "memory memory.ksm: 0 → 1",
        "memory memory.hugepages.2M: 0 → 1024",
        "memory memory.hugepages.1G: 0 → 4",
        "block block.nvme0n1.scheduler: none → mq-deadline",
        "block block.nvme1n1.read_ahead_kb: 128 → 4096",
        "block block.sda.scheduler: mq-deadline → none",
        "clocksource clocksource.current: tsc → hpet",
        "sysctl /etc/sysctl.d/zz-node-agent.conf: absent → 9 lines",
        "limits /etc/security/limits.d/zz-node-agent.conf: absent → 11 lines",
    ] {
        assert!(
            lines.iter().any(|l| l == want),
            "plan lacks {want:?}:\n{}",
            table.stdout
        );
    }
    // Compliant items are not in the plan: fs.file-max's bound is met, C1/C1E stay enabled.
    for absent in ["fs.file-max", "idle.state1", "idle.state2", "idle.state0"] {
        assert!(
            !lines.iter().any(|l| l.contains(absent)),
            "{absent} is compliant but planned:\n{}",
            table.stdout
        );
    }
    assert_eq!(json["unsupported"], serde_json::json!([]));
}

#[test]
fn dry_run_lists_unsupported_items_separately_with_the_reason() {
    let fx = FixtureHost::stock();
    fx.write(
        "/sys/kernel/mm/transparent_hugepage/enabled",
        "always [madvise]\n",
    );
    fx.profile(
        "mixed",
        r#"
[sysctl]
"vm.swappiness" = 10
"net.core.somaxconn" = 4096
"net.no_such.knob" = 1

[memory]
transparent_hugepage = "never"

[[block]]
devices = "vd*"
scheduler = "none"
"#,
    );
    let before = fx.snapshot();
    let table = run(&fx, &["tune", "apply", "-p", "mixed", "--dry-run"]).expect_code(0);
    let json = run(
        &fx,
        &["tune", "apply", "-p", "mixed", "--dry-run", "-o", "json"],
    )
    .expect_code(0)
    .json();
    assert_same_tree(&before, &fx.snapshot());

    let keys: Vec<&str> = json["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap())
        .collect();
    // somaxconn already complies; the unsupported three are not changes. The agent's file
    // comes first (see plan.rs).
    assert_eq!(keys, [SYSCTL_FILE, "vm.swappiness"], "{}", table.stdout);
    let unsupported: Vec<(&str, &str)> = json["unsupported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["key"].as_str().unwrap(), s["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(unsupported.len(), 3, "{unsupported:?}");
    let reason = |key: &str| {
        unsupported
            .iter()
            .find(|(k, _)| *k == key)
            .unwrap_or_else(|| panic!("{key} not listed as unsupported: {unsupported:?}"))
            .1
    };
    assert!(reason("net.no_such.knob").contains("this kernel has no sysctl net.no_such.knob"));
    assert!(reason("memory.transparent_hugepage.enabled").contains("\"never\" is not offered"));
    assert!(reason("block.vd*").contains("no block device matches vd*"));
    let section = table
        .stdout
        .split("unsupported here, skipped:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no unsupported section:\n{}", table.stdout));
    assert!(section.contains("sysctl net.no_such.knob (unsupported): this kernel has no sysctl"));
    assert!(section.contains("memory memory.transparent_hugepage.enabled (unsupported): "));
    // The agent's file persists only what this kernel has.
    let plan = &json["changes"][0]["to"]["value"];
    assert!(!plan.as_str().unwrap().contains("no_such"), "{plan}");
}

// ---- apply every class, verify, idempotence, round trip -----------------------------------

#[test]
fn apply_every_file_class_then_verify_passes_then_rollback_is_byte_equal() {
    let fx = FixtureHost::stock();
    fx.profile("all", ALL_FILES);
    let original = fx.snapshot();

    let applied = run(&fx, &["tune", "apply", "-p", "all"]).expect_code(0);
    assert!(
        applied.stdout.contains("applied 115 change(s):"),
        "{}",
        applied.stdout
    );

    let verify = run(&fx, &["tune", "verify", "-p", "all", "-o", "json"]).expect_code(0);
    let report = verify.json();
    let not_pass: Vec<&Json> = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["status"] != "pass")
        .collect();
    assert!(not_pass.is_empty(), "{not_pass:#?}");
    assert_eq!(
        report["summary"]["pass"],
        report["items"].as_array().unwrap().len()
    );

    // The kernel files hold what the kernel would show.
    assert_eq!(read(&fx, "/proc/sys/vm/swappiness"), "10\n");
    assert_eq!(
        read(&fx, "/proc/sys/net/ipv4/conf/eth0.100/rp_filter"),
        "1\n"
    );
    assert_eq!(read(&fx, "/proc/sys/net/core/rmem_max"), "134217728\n");
    assert_eq!(
        read(&fx, "/proc/sys/fs/file-max"),
        "9223372036854775807\n",
        "a met bound is never lowered"
    );
    assert_eq!(
        read(&fx, "/sys/kernel/mm/transparent_hugepage/defrag"),
        "always defer defer+madvise madvise [never]\n"
    );
    assert_eq!(
        read(&fx, "/sys/block/nvme1n1/queue/scheduler"),
        "none [mq-deadline] kyber bfq \n"
    );
    assert_eq!(
        read(&fx, "/sys/block/sda/queue/scheduler"),
        "[none] mq-deadline kyber bfq \n"
    );
    assert_eq!(
        read(&fx, &format!("{CPU_DIR}/intel_pstate/no_turbo")),
        "1\n"
    );
    assert_eq!(
        read(&fx, &format!("{CPU_DIR}/cpu9/cpuidle/state3/disable")),
        "1\n"
    );
    assert_eq!(
        read(&fx, &format!("{CPU_DIR}/cpu9/cpuidle/state2/disable")),
        "0\n"
    );
    assert_eq!(read(&fx, "/sys/kernel/mm/ksm/run"), "1\n");
    assert_eq!(
        read(
            &fx,
            "/sys/devices/system/clocksource/clocksource0/current_clocksource"
        ),
        "hpet\n"
    );

    // The persistence files say who owns them; bounds only where the kernel was below.
    let sysctl = read(&fx, SYSCTL_FILE);
    assert!(sysctl.starts_with(OWNED_HEADER), "{sysctl}");
    let settings: Vec<&str> = sysctl.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        settings,
        [
            "net.core.rmem_max = 134217728",
            "net.ipv4.conf.eth0/100.rp_filter = 1",
            "net.ipv4.tcp_fin_timeout = 30",
            "vm.swappiness = 10",
        ]
    );
    let limits = read(&fx, LIMITS_FILE);
    assert!(limits.starts_with(OWNED_HEADER), "{limits}");
    let mut entries: Vec<Vec<&str>> = limits
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        [
            ["*", "hard", "memlock", "unlimited"],
            ["*", "hard", "nofile", "1000000"],
            ["*", "soft", "memlock", "unlimited"],
            ["*", "soft", "nofile", "1000000"],
            ["@trading", "hard", "nproc", "8192"],
            ["@trading", "soft", "nproc", "4096"],
        ]
    );

    // Idempotent: the second plan is empty and a second apply changes nothing.
    let after_apply = fx.snapshot();
    let plan = run(
        &fx,
        &["tune", "apply", "-p", "all", "--dry-run", "-o", "json"],
    )
    .expect_code(0)
    .json();
    assert_eq!(plan["changes"], serde_json::json!([]), "{plan:#}");
    let again = run(&fx, &["tune", "apply", "-p", "all"]).expect_code(0);
    assert!(
        again.stdout.starts_with("nothing to change\n"),
        "{}",
        again.stdout
    );
    assert_same_tree(&after_apply, &fx.snapshot());

    let rolled = run(&fx, &["tune", "rollback"]).expect_code(0);
    assert!(
        rolled.stdout.starts_with("restored 115 value(s):\n"),
        "{}",
        rolled.stdout
    );
    assert_same_tree(&original, &fx.snapshot());
    assert!(
        !fx.state_dir().join("journal.json").exists(),
        "a complete rollback removes the journal"
    );
    assert_eq!(status_state(&fx), "not-applied");
}

#[test]
fn boost_through_cpufreq_boost_round_trips() {
    let fx = FixtureHost::build(Spec {
        driver: Driver::AcpiCpufreq,
        ..FixtureHost::stock().spec().clone()
    });
    fx.profile(
        "boost",
        "[cpu]\nboost = false\ngovernor = \"performance\"\ncpus = \"2-3\"\n",
    );
    let original = fx.snapshot();
    let plan = run(&fx, &["tune", "apply", "-p", "boost", "--dry-run"]).expect_code(0);
    assert_eq!(
        plan_lines(&plan.stdout),
        [
            "cpu cpu.2.governor: schedutil → performance",
            "cpu cpu.3.governor: schedutil → performance",
            "cpu cpu.boost: 1 → 0",
        ]
    );
    run(&fx, &["tune", "apply", "-p", "boost"]).expect_code(0);
    assert_eq!(
        changed_paths(&original, &fx.snapshot()),
        [
            "/sys/devices/system/cpu/cpufreq/boost",
            "/sys/devices/system/cpu/cpufreq/policy2/scaling_governor",
            "/sys/devices/system/cpu/cpufreq/policy3/scaling_governor",
        ]
    );
    assert_eq!(read(&fx, "/sys/devices/system/cpu/cpufreq/boost"), "0\n");
    run(&fx, &["tune", "verify", "-p", "boost"]).expect_code(0);
    run(&fx, &["tune", "rollback"]).expect_code(0);
    assert_same_tree(&original, &fx.snapshot());
}

/// The fixture's kernel-file writes join a multi-value write with spaces where the kernel
/// prints tabs (`write_kernel_file` only emulates choice files), so a triple round-trips to
/// the same kernel value rather than the same bytes.
#[test]
fn sysctl_triple_round_trips_to_the_same_kernel_value() {
    let fx = FixtureHost::stock();
    fx.profile(
        "rmem",
        "[sysctl]\n\"net.ipv4.tcp_rmem\" = \"4096 87380 134217728\"\n",
    );
    let path = "/proc/sys/net/ipv4/tcp_rmem";
    assert_eq!(read(&fx, path), "4096\t131072\t6291456\n");
    let plan = run(&fx, &["tune", "apply", "-p", "rmem", "--dry-run"]).expect_code(0);
    assert_eq!(
        plan_lines(&plan.stdout),
        [
            "sysctl /etc/sysctl.d/zz-node-agent.conf: absent → 6 lines",
            "sysctl net.ipv4.tcp_rmem: 4096 131072 6291456 → 4096 87380 134217728"
        ]
    );
    run(&fx, &["tune", "apply", "-p", "rmem"]).expect_code(0);
    run(&fx, &["tune", "verify", "-p", "rmem"]).expect_code(0);
    run(&fx, &["tune", "rollback"]).expect_code(0);
    let back = read(&fx, path);
    assert_eq!(
        back.split_whitespace().collect::<Vec<_>>(),
        ["4096", "131072", "6291456"]
    );
    assert!(!fx.real(SYSCTL_FILE).exists());
}

// ---- swap and remount ---------------------------------------------------------------------

const SWAP_AND_MOUNT: &str = r#"
[memory]
swap = "off"

[[mount]]
path = "/data"
options = ["noatime", "nodiratime"]
"#;

/// Library-level: swap and remounts are system calls, recorded here. The fixture is then
/// changed the way the kernel would have, so rollback sees the agent's values.
#[test]
fn swap_off_and_remount_are_system_actions_and_rollback_reverses_them() {
    let fx = FixtureHost::stock();
    fx.swaps(&[swaps_line("/swapfile", false, 1_048_572, 0, -2)]);
    let profile = load(&fx.profile("sys", SWAP_AND_MOUNT));
    let host = fx.host();
    let state = StateDir::new(fx.state_dir());
    let audit = Audit::new(Some(&fx.state_dir()));
    let original = fx.snapshot();

    let mut system = RecordingSystem::default();
    let outcome = apply::apply(
        &mut Session {
            host: &host,
            state: &state,
            system: &mut system,
            audit: &audit,
            caller: Caller::current(),
            units: None,
            systemd: None,
        },
        &profile,
        None,
    )
    .expect("apply");
    assert_eq!(
        system.calls,
        ["swapoff /swapfile", "remount /data noatime,nodiratime"]
    );
    let targets: Vec<&Target> = outcome.plan.changes.iter().map(|c| &c.target).collect();
    assert_eq!(
        targets,
        [
            &Target::Swap {
                device: "/swapfile".into()
            },
            &Target::Mount {
                path: "/data".into()
            },
        ]
    );
    assert_eq!(outcome.plan.changes[0].from, Value::SwapOn { priority: -2 });
    // Recording changed no file.
    assert_same_tree(&original, &fx.snapshot());

    // What the kernel would show after swapoff and the remount.
    fx.swaps(&[]);
    let mountinfo = read(&fx, "/proc/self/mountinfo");
    let remounted = mountinfo.replace(
        " /data rw,relatime shared:30",
        " /data rw,noatime,nodiratime shared:30",
    );
    assert_ne!(remounted, mountinfo);
    fx.write("/proc/self/mountinfo", &remounted);
    let report = tuning::verify(&host, &profile);
    let statuses: Vec<(&str, Status)> = report
        .items
        .iter()
        .map(|i| (i.key.as_str(), i.status))
        .collect();
    // Running state right; /etc/fstab (never edited) still brings both back at boot.
    assert_eq!(
        statuses,
        [
            ("memory.swap", Status::NotPersistent),
            ("mount./data.options", Status::NotPersistent)
        ]
    );
    let (again, _) = apply::plan(&host, &profile, None, None);
    assert!(again.changes.is_empty(), "{:#?}", again.changes);

    let mut system = RecordingSystem::default();
    let back = apply::rollback(
        &mut Session {
            host: &host,
            state: &state,
            system: &mut system,
            audit: &audit,
            caller: Caller::current(),
            units: None,
            systemd: None,
        },
        false,
    )
    .expect("rollback");
    assert!(back.is_complete(), "{back:#?}");
    // Newest first; `atime` drops the noatime that mount(8) would otherwise carry over.
    assert_eq!(
        system.calls,
        [
            "remount /data relatime,atime,diratime",
            "swapon /swapfile priority -2"
        ]
    );
    assert!(!state.journal_path().exists());

    let audit: Vec<(String, String, String)> = audit_lines(&fx)
        .iter()
        .map(|l| {
            let f = |k: &str| l["fields"][k].as_str().unwrap_or_default().to_owned();
            (
                f("NODE_AGENT_ACTION"),
                f("NODE_AGENT_BEFORE"),
                f("NODE_AGENT_AFTER"),
            )
        })
        .collect();
    let t = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        audit,
        [
            t("apply", "on (priority -2)", "off"),
            t(
                "apply",
                "errors=remount-ro,relatime,rw",
                "errors=remount-ro,noatime,nodiratime,rw"
            ),
            t(
                "rollback",
                "errors=remount-ro,noatime,nodiratime,rw",
                "errors=remount-ro,relatime,rw"
            ),
            t("rollback", "off", "on (priority -2)"),
        ]
    );
}

/// Through the CLI under a fixture root, swap and remount would act on the real machine:
/// refused, and the run's earlier changes are put back.
#[test]
fn cli_refuses_swap_and_remount_under_a_fixture_root_and_restores() {
    const BEFORE: &str =
        "[sysctl]\n\"vm.swappiness\" = 10\n\n[memory]\ntransparent_hugepage = \"never\"\n";
    for (extra, step, refused) in [
        (
            "swap = \"off\"\n",
            "memory memory.swap: setting swap /dev/nvme0n1p3 to off",
            "failed to swapoff /dev/nvme0n1p3",
        ),
        (
            "\n[[mount]]\npath = \"/data\"\noptions = [\"noatime\"]\n",
            "mount mount./data.options: setting mount /data to errors=remount-ro,noatime,rw",
            "failed to remount /data",
        ),
    ] {
        let fx = FixtureHost::stock();
        fx.profile("sys", &format!("{BEFORE}{extra}"));
        let original = fx.snapshot();
        // The agent's sysctl file, swappiness, THP, then the system call.
        let plan = run(&fx, &["tune", "apply", "-p", "sys", "--dry-run"]).expect_code(0);
        assert_eq!(plan_lines(&plan.stdout).len(), 4, "{}", plan.stdout);

        let r = run(&fx, &["tune", "apply", "-p", "sys"]).expect_code(4);
        let root = fx.root();
        let want = format!(
            "agentctl: error: failed to apply {step}: {refused}: system calls act on the \
             running machine, not on the host root {}; restored the 3 value(s) this run had \
             changed\n",
            root.display()
        );
        assert!(r.stderr.ends_with(&want), "{}", r.stderr);
        assert_same_tree(&original, &fx.snapshot());
        let j = journal_json(&fx);
        assert_eq!(j["runs"][0]["state"], "failed-rolled-back");
        assert_eq!(j["baseline"], serde_json::json!([]));
        assert_eq!(status_state(&fx), "last-apply-failed");
    }
}

// ---- one baseline, values changed by others, side effects ---------------------------------

const PROFILE_A: &str = r#"
[sysctl]
"vm.swappiness" = 10

[memory]
transparent_hugepage = "never"

[[block]]
devices = "nvme0n1"
scheduler = "mq-deadline"

[limits]
"*" = { nofile = 1000000 }
"#;

const PROFILE_B: &str = r#"
[sysctl]
"vm.swappiness" = 20
"vm.dirty_ratio" = 15

[memory]
transparent_hugepage = "always"

[limits]
"*" = { nofile = 2000000 }
"#;

#[test]
fn one_baseline_rollback_after_two_profiles_restores_the_values_from_before_the_first() {
    let fx = FixtureHost::stock();
    fx.profile("a", PROFILE_A);
    fx.profile("b", PROFILE_B);
    let original = fx.snapshot();

    run(&fx, &["tune", "apply", "-p", "a"]).expect_code(0);
    let b = run(&fx, &["tune", "apply", "-p", "b"]).expect_code(0);
    for line in [
        "sysctl vm.swappiness: 10 → 20",
        "memory memory.transparent_hugepage.enabled: never → always",
        "sysctl vm.dirty_ratio: 20 → 15",
    ] {
        assert!(b.stdout.contains(line), "{}", b.stdout);
    }
    assert_eq!(read(&fx, "/proc/sys/vm/swappiness"), "20\n");
    let j = journal_json(&fx);
    let entry = |key: &str| {
        j["baseline"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == key)
            .unwrap_or_else(|| panic!("no baseline entry {key}: {j:#}"))
            .clone()
    };
    let swappiness = entry("vm.swappiness");
    assert_eq!(swappiness["original"]["value"], "60");
    assert_eq!(
        swappiness["agent_values"],
        serde_json::json!([
            {"state": "text", "value": "10"},
            {"state": "text", "value": "20"}
        ])
    );
    assert_eq!(
        entry("memory.transparent_hugepage.enabled")["original"]["value"],
        "madvise"
    );
    assert_eq!(entry(LIMITS_FILE)["original"]["state"], "absent");
    assert_eq!(j["baseline"].as_array().unwrap().len(), 6, "{j:#}");
    let st = run(&fx, &["tune", "status", "-o", "json"])
        .expect_code(0)
        .json();
    assert_eq!(st["state"], "applied");
    assert_eq!(st["applied"]["profile"], "b");
    assert_eq!(st["recorded_values"], 6);

    let back = run(&fx, &["tune", "rollback", "-o", "json"])
        .expect_code(0)
        .json();
    let restored: Vec<(&str, &str)> = back["restored"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["to"]["state"] == "text")
        .map(|r| {
            (
                r["key"].as_str().unwrap(),
                r["to"]["value"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(restored.contains(&("vm.swappiness", "60")), "{restored:?}");
    assert!(
        restored.contains(&("memory.transparent_hugepage.enabled", "madvise")),
        "{restored:?}"
    );
    assert!(
        restored.contains(&("block.nvme0n1.scheduler", "none")),
        "{restored:?}"
    );
    assert_same_tree(&original, &fx.snapshot());
}

#[test]
fn value_changed_by_someone_else_is_left_alone_unless_forced() {
    let fx = FixtureHost::stock();
    fx.profile("a", PROFILE_A);
    let original = fx.snapshot();
    run(&fx, &["tune", "apply", "-p", "a"]).expect_code(0);
    // Someone else: a runtime value and the agent's own file.
    fx.sysctl("vm.swappiness", "33");
    fx.append(LIMITS_FILE, "alice soft nofile 4096\n");

    let back = run(&fx, &["tune", "rollback", "-o", "json"])
        .expect_code(1)
        .json();
    let left: Vec<(&str, &str)> = back["left_alone"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["key"].as_str().unwrap(), n["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(left.len(), 2, "{back:#}");
    assert_eq!(left[0].0, "vm.swappiness");
    assert!(
        left[0]
            .1
            .contains("changed by someone else since the agent set it to 10")
            && left[0].1.contains("--force"),
        "{left:?}"
    );
    assert_eq!(left[1].0, LIMITS_FILE);
    assert_eq!(back["failed"], serde_json::json!([]));
    // Everything else is back; the two stay as they are, and in the journal.
    assert_eq!(
        changed_paths(&original, &fx.snapshot()),
        [LIMITS_FILE, "/proc/sys/vm/swappiness"]
    );
    assert_eq!(read(&fx, "/proc/sys/vm/swappiness"), "33\n");
    let kept: Vec<String> = journal_json(&fx)["baseline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kept, [LIMITS_FILE, "vm.swappiness"]);

    // Again without --force: the same answer, in the table.
    let table = run(&fx, &["tune", "rollback"]).expect_code(1);
    assert!(
        table
            .stdout
            .starts_with("left alone (2), kept in the journal:\n")
            && table
                .stdout
                .contains("  sysctl vm.swappiness: now 33, original 60: changed by someone else"),
        "{}",
        table.stdout
    );

    let forced = run(&fx, &["tune", "rollback", "--force"]).expect_code(0);
    assert!(
        forced.stdout.starts_with("restored 2 value(s):\n")
            && forced.stdout.contains("  sysctl vm.swappiness: 33 → 60\n"),
        "{}",
        forced.stdout
    );
    assert_same_tree(&original, &fx.snapshot());
    assert!(!fx.state_dir().join("journal.json").exists());
}

#[test]
fn tcp_congestion_control_records_and_restores_the_allowed_list() {
    let fx = FixtureHost::stock();
    fx.sysctl(
        "net.ipv4.tcp_available_congestion_control",
        "reno cubic bbr",
    );
    fx.profile(
        "bbr",
        "[sysctl]\n\"net.ipv4.tcp_congestion_control\" = \"bbr\"\n",
    );
    let original = fx.snapshot();
    let plan = run(&fx, &["tune", "apply", "-p", "bbr", "--dry-run"]).expect_code(0);
    assert_eq!(
        plan_lines(&plan.stdout),
        [
            "sysctl /etc/sysctl.d/zz-node-agent.conf: absent → 6 lines",
            "sysctl net.ipv4.tcp_congestion_control: cubic → bbr",
        ]
    );
    run(&fx, &["tune", "apply", "-p", "bbr"]).expect_code(0);
    let j = journal_json(&fx);
    let side = j["baseline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "net.ipv4.tcp_allowed_congestion_control")
        .unwrap_or_else(|| panic!("allowed list not recorded: {j:#}"));
    assert_eq!(side["side_effect_of"], "net.ipv4.tcp_congestion_control");
    assert_eq!(side["original"]["value"], "reno cubic");
    assert_eq!(
        side["target"]["path"],
        "/proc/sys/net/ipv4/tcp_allowed_congestion_control"
    );
    // The kernel adds the new default to the allowed list.
    fx.sysctl("net.ipv4.tcp_allowed_congestion_control", "reno cubic bbr");

    let back = run(&fx, &["tune", "rollback"]).expect_code(0);
    assert!(
        back.stdout.contains(
            "  sysctl net.ipv4.tcp_allowed_congestion_control: reno cubic bbr → reno cubic\n"
        ) && back
            .stdout
            .contains("  sysctl net.ipv4.tcp_congestion_control: bbr → cubic\n"),
        "{}",
        back.stdout
    );
    assert_same_tree(&original, &fx.snapshot());
}

// ---- the lock -----------------------------------------------------------------------------

#[test]
fn apply_and_rollback_fail_at_once_while_another_process_holds_the_lock() {
    let fx = FixtureHost::stock();
    fx.profile("a", PROFILE_A);
    let original = fx.snapshot();
    let state = StateDir::new(fx.state_dir());
    let lock = state.lock().expect("take the lock");
    let holder = format!("held by pid {}", std::process::id());

    for args in [
        &["tune", "apply", "-p", "a"][..],
        &["tune", "rollback"],
        &["tune", "rollback", "--force"],
    ] {
        let r = run(&fx, args).expect_code(3);
        assert!(
            r.stderr.contains("another apply or rollback is running") && r.stderr.contains(&holder),
            "{args:?}: {}",
            r.stderr
        );
    }
    assert_same_tree(&original, &fx.snapshot());
    let st = run(&fx, &["tune", "status", "-o", "json"])
        .expect_code(0)
        .json();
    assert_eq!(st["lock_holder_pid"], std::process::id().to_string());

    drop(lock);
    run(&fx, &["tune", "apply", "-p", "a"]).expect_code(0);
    run(&fx, &["tune", "rollback"]).expect_code(0);
    assert_same_tree(&original, &fx.snapshot());
}

// ---- failure midway -----------------------------------------------------------------------

/// Six changes: both of the agent's files, a sysctl, two choice files, a plain kernel file.
const SMALL: &str = r#"
[profile]
name = "small"

[sysctl]
"vm.swappiness" = 10

[memory]
transparent_hugepage = "never"

[[block]]
devices = "sda"
scheduler = "none"

[limits]
"*" = { nofile = 1000000 }

[clocksource]
current = "hpet"
"#;

/// A plan change as the binary's JSON gives it: (class, key, path, to described).
fn planned(fx: &FixtureHost, profile: &str) -> Vec<(String, String, String, String)> {
    let plan = run(
        fx,
        &["tune", "apply", "-p", profile, "--dry-run", "-o", "json"],
    )
    .expect_code(0)
    .json();
    plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["class"].as_str().unwrap().to_owned(),
                c["key"].as_str().unwrap().to_owned(),
                c["target"]["path"].as_str().unwrap().to_owned(),
                describe_json(&c["to"]),
            )
        })
        .collect()
}

/// `Value::describe` of a value in its JSON form.
fn describe_json(v: &Json) -> String {
    serde_json::from_value::<Value>(v.clone())
        .unwrap_or_else(|e| panic!("not a value {v}: {e}"))
        .describe()
}

fn count_action(lines: &[Json], action: &str) -> usize {
    lines
        .iter()
        .filter(|l| l["fields"]["NODE_AGENT_ACTION"] == action)
        .count()
}

#[test]
fn injected_write_error_at_each_step_restores_what_the_run_changed() {
    let changes = {
        let fx = FixtureHost::stock();
        fx.profile("small", SMALL);
        planned(&fx, "small")
    };
    assert_eq!(changes.len(), 6, "{changes:?}");
    for (k, (class, key, path, value)) in changes.iter().enumerate() {
        let k = k + 1;
        let fx = FixtureHost::stock();
        fx.profile("small", SMALL);
        let original = fx.snapshot();
        let spec = format!("apply-write:{k}");

        let r = run_env(
            &fx,
            &["tune", "apply", "-p", "small"],
            &[("NODE_AGENT_FAILPOINT", &spec)],
        )
        .expect_code(4);
        let restored = match k {
            1 => "nothing had been changed by this run".to_owned(),
            _ => format!("restored the {} value(s) this run had changed", k - 1),
        };
        let want = format!(
            "agentctl: error: failed to apply {class} {key}: setting {path} to {value}: \
             failed to write {value:?} to {path}: Input/output error (os error 5); {restored}\n"
        );
        assert_eq!(
            r.stderr.lines().last().map(|l| format!("{l}\n")),
            Some(want),
            "{spec}"
        );
        assert_same_tree(&original, &fx.snapshot());

        let j = journal_json(&fx);
        assert_eq!(j["runs"].as_array().unwrap().len(), 1);
        assert_eq!(j["runs"][0]["state"], "failed-rolled-back", "{spec}");
        assert!(
            j["runs"][0]["error"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{class} {key}: failed to write")),
            "{spec}: {j:#}"
        );
        assert_eq!(j["baseline"], serde_json::json!([]), "{spec}");
        let st = run(&fx, &["tune", "status", "-o", "json"])
            .expect_code(0)
            .json();
        assert_eq!(st["state"], "last-apply-failed", "{spec}");
        assert_eq!(st["last_run"]["state"], "failed-rolled-back");
        let table = run(&fx, &["tune", "status"]).expect_code(0);
        assert!(
            table.stdout.starts_with("state: last-apply-failed\n")
                && table.stdout.contains(&format!(
                    ": failed, rolled back (0 of 6 steps done): {class} {key}: failed to write"
                )),
            "{spec}:\n{}",
            table.stdout
        );
        let audit = audit_lines(&fx);
        assert_eq!(
            (
                count_action(&audit, "apply"),
                count_action(&audit, "apply-restore"),
                count_action(&audit, "apply-failed")
            ),
            (k - 1, k - 1, 1),
            "{spec}: {audit:#?}"
        );

        // The failed run does not get in the way of the next.
        run(&fx, &["tune", "apply", "-p", "small"]).expect_code(0);
        run(&fx, &["tune", "rollback"]).expect_code(0);
        assert_same_tree(&original, &fx.snapshot());
    }
}

/// No fixture write fails on its own with EINVAL: every choice the plan writes is one the file
/// offers (verify calls the rest `unsupported`) and plain files take any value. A real error
/// does come from the agent's files: limits.d is not a directory.
#[test]
fn real_write_error_stops_apply_and_restores_what_the_run_changed() {
    let fx = FixtureHost::stock();
    fx.profile("small", SMALL);
    fx.write("/etc/security/limits.d", "not a directory\n");
    let original = fx.snapshot();
    let r = run(&fx, &["tune", "apply", "-p", "small"]).expect_code(4);
    assert!(
        r.stderr.contains(&format!(
            "failed to apply limits {LIMITS_FILE}: setting {LIMITS_FILE} to 7 lines: failed to \
             replace {LIMITS_FILE}: "
        )) && r.stderr.contains("File exists (os error 17)")
            && r.stderr
                .contains("; restored the 1 value(s) this run had changed"),
        "{}",
        r.stderr
    );
    assert_same_tree(&original, &fx.snapshot());
    assert_eq!(journal_json(&fx)["runs"][0]["state"], "failed-rolled-back");
    assert_eq!(status_state(&fx), "last-apply-failed");
}

// ---- journal compatibility ----------------------------------------------------------------

/// A version-1 journal written by a real apply of this profile on the stock fixture (with bbr
/// available): kept as test data so every later agent must still roll it back.
fn journal_v1() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/journal-v1.json")
}

/// The stock fixture brought to the state the v1 journal's apply left, from the journal
/// alone (so the test does not depend on what today's apply would write).
fn host_after_v1_apply(fx: &FixtureHost) -> node_agent::rollback::journal::Journal {
    fx.sysctl(
        "net.ipv4.tcp_available_congestion_control",
        "reno cubic bbr",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::copy(journal_v1(), dir.path().join("journal.json")).expect("copy v1 journal");
    let journal = StateDir::new(dir.path())
        .load()
        .expect("the current agent loads a version-1 journal");
    let host = fx.host();
    let mut system = RecordingSystem::default();
    for e in &journal.baseline {
        let value = match &e.side_effect_of {
            // What the kernel did when tcp_congestion_control became bbr.
            Some(_) => Value::text("reno cubic bbr"),
            None => e
                .agent_values
                .last()
                .expect("a value the agent set")
                .clone(),
        };
        change::execute(&host, &mut system, &e.target, &value)
            .unwrap_or_else(|err| panic!("set {} as the v1 apply did: {err}", e.key));
    }
    assert!(system.calls.is_empty());
    journal
}

#[test]
fn version_1_journal_loads_and_rolls_back_to_the_original() {
    let fx = FixtureHost::stock();
    fx.sysctl(
        "net.ipv4.tcp_available_congestion_control",
        "reno cubic bbr",
    );
    let original = fx.snapshot();
    let journal = host_after_v1_apply(&fx);

    assert_eq!(journal.format_version, 1);
    let originals: Vec<(&str, String)> = journal
        .baseline
        .iter()
        .map(|e| (e.key.as_str(), e.original.describe()))
        .collect();
    assert_eq!(
        originals,
        [
            (SYSCTL_FILE, "absent".to_owned()),
            (LIMITS_FILE, "absent".to_owned()),
            ("net.core.rmem_max", "212992".to_owned()),
            ("net.ipv4.tcp_congestion_control", "cubic".to_owned()),
            (
                "net.ipv4.tcp_allowed_congestion_control",
                "reno cubic".to_owned()
            ),
            ("vm.swappiness", "60".to_owned()),
            ("memory.transparent_hugepage.enabled", "madvise".to_owned()),
            ("block.nvme0n1.scheduler", "none".to_owned()),
        ]
    );
    assert_eq!(journal.runs.len(), 1);
    assert_eq!(journal.runs[0].state, RunState::Complete);
    assert_eq!(journal.runs[0].steps.len(), 7);
    assert!(journal.runs[0].steps.iter().all(|s| s.done));
    assert_eq!(journal.baseline[0].class, Class::Sysctl);
    assert_eq!(
        journal.baseline[7].target,
        Target::KernelFile {
            path: "/sys/block/nvme0n1/queue/scheduler".into()
        }
    );
    assert_eq!(
        changed_paths(&original, &fx.snapshot()).len(),
        8,
        "the host is in the v1 apply's state"
    );

    std::fs::create_dir_all(fx.state_dir()).unwrap();
    std::fs::copy(journal_v1(), fx.state_dir().join("journal.json")).unwrap();
    let st = run(&fx, &["tune", "status", "-o", "json"])
        .expect_code(0)
        .json();
    assert_eq!(st["state"], "applied");
    assert_eq!(st["applied"]["profile"], "compat-v1");
    assert_eq!(st["recorded_values"], 8);
    let back = run(&fx, &["tune", "rollback"]).expect_code(0);
    assert!(
        back.stdout.starts_with("restored 8 value(s):\n"),
        "{}",
        back.stdout
    );
    assert_same_tree(&original, &fx.snapshot());
    assert!(!fx.state_dir().join("journal.json").exists());
}

#[test]
fn newer_journal_format_is_refused_and_nothing_changes() {
    let fx = FixtureHost::stock();
    fx.profile("a", PROFILE_A);
    host_after_v1_apply(&fx);
    let mut newer: Json =
        serde_json::from_str(&std::fs::read_to_string(journal_v1()).unwrap()).unwrap();
    let version = JOURNAL_FORMAT_VERSION + 1;
    newer["format_version"] = version.into();
    std::fs::create_dir_all(fx.state_dir()).unwrap();
    let path = fx.state_dir().join("journal.json");
    let bytes = serde_json::to_vec_pretty(&newer).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let before = fx.snapshot();

    let message = format!(
        "has format version {version}, newer than this agent understands \
         ({JOURNAL_FORMAT_VERSION}); use a newer agentctl"
    );
    for args in [
        &["tune", "rollback"][..],
        &["tune", "rollback", "--force"],
        &["tune", "apply", "-p", "a"],
        &["tune", "status"],
    ] {
        let r = run(&fx, args).expect_code(3);
        assert!(
            r.stderr
                .contains(&format!("the rollback journal {}", path.display()))
                && r.stderr.contains(&message),
            "{args:?}: {}",
            r.stderr
        );
    }
    assert_same_tree(&before, &fx.snapshot());
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the journal is left as it was"
    );
    assert!(audit_lines(&fx).is_empty());
}

// ---- audit --------------------------------------------------------------------------------

#[test]
fn every_apply_and_rollback_step_is_an_audit_line() {
    let fx = FixtureHost::stock();
    fx.profile("small", SMALL);
    let changes = planned(&fx, "small");
    let plan = run(
        &fx,
        &["tune", "apply", "-p", "small", "--dry-run", "-o", "json"],
    )
    .expect_code(0)
    .json();
    run(&fx, &["tune", "apply", "-p", "small"]).expect_code(0);
    let me = Caller::current();

    let lines = audit_lines(&fx);
    assert_eq!(lines.len(), changes.len(), "{lines:#?}");
    for (line, c) in lines.iter().zip(plan["changes"].as_array().unwrap()) {
        let key = c["key"].as_str().unwrap();
        let (from, to) = (describe_json(&c["from"]), describe_json(&c["to"]));
        assert_eq!(line["uid"], me.uid);
        assert_eq!(line["user"], me.user.as_str());
        assert!(
            line["time"].as_u64().is_some_and(|t| t > 1_600_000_000),
            "{line}"
        );
        assert_eq!(
            line["message"],
            format!(
                "apply small: {} {key}: {from} -> {to}",
                c["class"].as_str().unwrap()
            )
        );
        assert_eq!(
            line["fields"],
            serde_json::json!({
                "NODE_AGENT_ACTION": "apply",
                "NODE_AGENT_PROFILE": "small",
                "NODE_AGENT_KEY": key,
                "NODE_AGENT_BEFORE": from,
                "NODE_AGENT_AFTER": to,
            })
        );
    }

    run(&fx, &["tune", "rollback"]).expect_code(0);
    let lines = audit_lines(&fx);
    assert_eq!(lines.len(), 2 * changes.len());
    // Newest first.
    for (line, c) in lines[changes.len()..]
        .iter()
        .zip(plan["changes"].as_array().unwrap().iter().rev())
    {
        let key = c["key"].as_str().unwrap();
        let (from, to) = (describe_json(&c["from"]), describe_json(&c["to"]));
        assert_eq!(line["uid"], me.uid);
        assert_eq!(line["user"], me.user.as_str());
        assert_eq!(
            line["message"],
            format!(
                "rollback: {} {key}: {to} -> {from}",
                c["class"].as_str().unwrap()
            )
        );
        assert_eq!(
            line["fields"],
            serde_json::json!({
                "NODE_AGENT_ACTION": "rollback",
                "NODE_AGENT_KEY": key,
                "NODE_AGENT_BEFORE": to,
                "NODE_AGENT_AFTER": from,
            })
        );
    }
}

/// The daemon's start-up entry point re-applies only what a reboot loses (cpu, memory, block,
/// clocksource): sysctls and limits persist in the agent's files and are left to them.
#[test]
fn runtime_reapply_touches_only_runtime_classes() {
    let fx = FixtureHost::stock();
    let profile = load(&fx.profile(
        "runtime",
        r#"
[sysctl]
"vm.swappiness" = 10

[memory]
transparent_hugepage = "never"

[limits]
"*" = { nofile = 1000000 }
"#,
    ));
    let host = fx.host();
    let state = StateDir::new(fx.state_dir());
    let audit = Audit::new(Some(&fx.state_dir()));
    let swappiness = std::fs::read_to_string(fx.real("/proc/sys/vm/swappiness")).unwrap();
    let mut system = RecordingSystem::default();
    let mut session = Session {
        host: &host,
        state: &state,
        system: &mut system,
        audit: &audit,
        caller: Caller::current(),
        units: None,
        systemd: None,
    };
    let outcome = apply::reapply_runtime(&mut session, &profile).expect("runtime re-apply");
    let classes: Vec<Class> = outcome.plan.changes.iter().map(|c| c.class).collect();
    assert_eq!(classes, [Class::Memory], "{:#?}", outcome.plan.changes);
    assert_eq!(
        std::fs::read_to_string(fx.real("/sys/kernel/mm/transparent_hugepage/enabled")).unwrap(),
        "always madvise [never]\n"
    );
    assert_eq!(
        std::fs::read_to_string(fx.real("/proc/sys/vm/swappiness")).unwrap(),
        swappiness,
        "sysctls are not runtime-only"
    );
    assert!(!fx.real(SYSCTL_FILE).exists());
    assert!(!fx.real(LIMITS_FILE).exists());
    // Journaled like any apply: rollback restores THP.
    let out = apply::rollback(&mut session, false).expect("rollback");
    assert_eq!(out.restored.len(), 1);
    assert_eq!(
        std::fs::read_to_string(fx.real("/sys/kernel/mm/transparent_hugepage/enabled")).unwrap(),
        "always [madvise] never\n"
    );
}

/// Enforce mode's scope: exactly the items named are re-applied; swap, drifted too, is not
/// touched, and neither is sysctl's file when no sysctl item is named.
#[test]
fn item_scope_applies_only_the_named_items() {
    let fx = FixtureHost::stock();
    fx.swaps(&[swaps_line("/swapfile", false, 1_048_572, 0, -2)]);
    let profile = load(&fx.profile(
        "thp-and-swap",
        "[memory]\nswap = \"off\"\ntransparent_hugepage = \"never\"\ntransparent_hugepage_defrag = \"never\"\n\n[sysctl]\n\"vm.swappiness\" = 1\n",
    ));
    let host = fx.host();
    let state = StateDir::new(fx.state_dir());
    let audit = Audit::new(Some(&fx.state_dir()));
    let report = tuning::verify(&host, &profile);
    let drifted: Vec<&str> = report
        .items
        .iter()
        .filter(|i| i.status == Status::Drift)
        .map(|i| i.key.as_str())
        .collect();
    for k in [
        "memory.swap",
        "memory.transparent_hugepage.enabled",
        "vm.swappiness",
    ] {
        assert!(drifted.contains(&k), "{k} must drift first: {drifted:?}");
    }

    let mut system = RecordingSystem::default();
    let keys = ["memory.transparent_hugepage.enabled".to_owned()];
    let outcome = apply::apply_scope(
        &mut Session {
            host: &host,
            state: &state,
            system: &mut system,
            audit: &audit,
            caller: Caller::current(),
            units: None,
            systemd: None,
        },
        &profile,
        tuning::plan::Scope::Items(&keys),
    )
    .expect("apply");
    let changed: Vec<&str> = outcome
        .plan
        .changes
        .iter()
        .map(|c| c.key.as_str())
        .collect();
    assert_eq!(changed, ["memory.transparent_hugepage.enabled"]);
    assert!(
        system.calls.is_empty(),
        "swap untouched: {:?}",
        system.calls
    );
    let status = |k: &str| {
        outcome
            .after
            .items
            .iter()
            .find(|i| i.key == k)
            .map(|i| i.status)
    };
    assert_eq!(
        status("memory.transparent_hugepage.enabled"),
        Some(Status::Pass)
    );
    assert_eq!(
        status("memory.transparent_hugepage.defrag"),
        Some(Status::Drift)
    );
    assert_eq!(status("vm.swappiness"), Some(Status::Drift));
}
