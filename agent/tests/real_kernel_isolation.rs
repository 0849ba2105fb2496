//! Real-kernel tier (TESTING.md tier 2) for `[isolation]`'s IRQs and workqueues: `agentctl tune
//! apply`, `verify` and `rollback` with the real binary on this machine's kernel, housekeeping
//! CPU 0 and isolated CPU 1.
//!
//! - verify, before any apply, shows the managed IRQs (their `smp_affinity_list` read-only)
//!   `unsupported` and leaves them out of the plan; apply moves every movable IRQ to CPU 0,
//!   sets `default_smp_affinity` and every workqueue cpumask to CPU 0's mask, refuses nothing
//!   and records nothing; a second apply has nothing of them left to do;
//! - rollback puts every IRQ and mask back byte for byte, and nothing else is left behind (no
//!   record of refused writes: no write was refused);
//! - without systemd as PID 1 (sd_booted) the system.conf.d drop-in is not written and PID 1's
//!   affinity is left alone; where systemd is PID 1 both are applied and rolled back.
//!
//! Also checked here, because the fixture tier relies on it: a managed IRQ's affinity files are
//! read-only and the kernel answers root's write with EPERM, while movable IRQs take a write.
//!
//! Opt-in: runs only with `NODE_AGENT_PRIVILEGED_TESTS=1` (as root). Every test holds the tier
//! lock and a [`Guard`], which snapshots every IRQ's affinity, the masks, PID 1's affinity and
//! the agent's files first and restores them on drop, also when the test fails.

#[path = "support/real.rs"]
mod real;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use node_agent::change::Target;
use node_agent::rollback::journal::StateDir;
use node_agent::verify::{Report, Status};
use real::{
    CPU_DIR, DEFAULT_AFFINITY, Guard, REFUSED_FILE, SYSTEM_CONF_DROP_IN, Snapshot, affinity_of,
    enabled, irq_affinity_files, parse_cpu_list, read, set_affinity, tier_lock,
    workqueue_mask_files,
};
use serde_json::Value as Json;

const PROFILE: &str = "[isolation]\nhousekeeping_cpus = \"0\"\nisolated_cpus = \"1\"\n";
/// sd_booted(3).
const SD_BOOTED: &str = "/run/systemd/system";
const EPERM: i32 = 1;
/// Verify's reason for a managed IRQ.
const MANAGED_REASON: &str =
    "a managed IRQ: the kernel fixed its affinity (smp_affinity_list is read-only)";

struct Agent {
    state: PathBuf,
    cwd: PathBuf,
    profile: PathBuf,
}

impl Agent {
    fn new(guard: &Guard) -> Agent {
        let state = guard.work().join("state");
        let cwd = guard.work().join("cwd");
        std::fs::create_dir_all(&cwd).expect("create the agent's working directory");
        let profile = guard.work().join("isolation-real.toml");
        std::fs::write(&profile, PROFILE).expect("write the profile");
        Agent {
            state,
            cwd,
            profile,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_agentctl"))
            .args(args)
            .current_dir(&self.cwd)
            .env("NODE_AGENT_PROFILE_PATH", self.profile.parent().unwrap())
            .env("NODE_AGENT_STATE_DIR", &self.state)
            .env_remove("NODE_AGENT_HOST_ROOT")
            .env_remove("NODE_AGENT_FAILPOINT")
            .output()
            .expect("run agentctl")
    }

    /// `tune <cmd> [--profile P] ... --output json`: the exit code and the parsed output.
    fn json(&self, args: &[&str]) -> (Option<i32>, Json) {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.run(&all);
        let parsed = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "agentctl {all:?} printed no JSON ({e}); status {:?}\nstdout: {}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code(), parsed)
    }

    fn profile(&self) -> &str {
        self.profile.to_str().unwrap()
    }
}

/// The kernel's mask of CPU 0 for `nr` possible CPUs, as `%*pb` prints it: 32-bit groups,
/// most significant first, the first as wide as its bits need.
fn mask_of_cpu0(nr: usize) -> String {
    let groups = nr.div_ceil(32);
    let first_bits = nr - 32 * (groups - 1);
    let mut out = String::new();
    for g in (0..groups).rev() {
        let v = u32::from(g == 0);
        if g == groups - 1 {
            out.push_str(&format!("{v:0w$x}", w = first_bits.div_ceil(4)));
        } else {
            out.push_str(&format!(",{v:08x}"));
        }
    }
    out
}

/// A read-only `smp_affinity_list`: how the kernel marks a managed IRQ (no S_IWUSR when
/// `irq_can_set_affinity_usr` is false).
fn read_only(path: &str) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o222 == 0)
}

fn irq_key(path: &str) -> String {
    let n = path
        .strip_prefix("/proc/irq/")
        .and_then(|r| r.split('/').next())
        .unwrap();
    format!("isolation.irq.{n}")
}

fn list_key(list: &Json, key: &str) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|c| c[key].as_str().expect("a string").to_owned())
        .collect()
}

fn target_paths(changes: &Json) -> Vec<String> {
    changes
        .as_array()
        .expect("changes")
        .iter()
        .filter_map(|c| c["target"]["path"].as_str().map(str::to_owned))
        .collect()
}

/// Preconditions of the tier on this machine: CPUs 0 and 1 online; `nr_cpu_ids`.
fn cpus_0_and_1() -> Option<usize> {
    let online = parse_cpu_list(&read(&format!("{CPU_DIR}/online"))?)?;
    let possible = parse_cpu_list(&read(&format!("{CPU_DIR}/possible"))?)?;
    (online.contains(&0) && online.contains(&1)).then(|| possible.iter().max().unwrap() + 1)
}

#[test]
fn real_kernel_isolation_irqs_and_workqueues_applied_and_rolled_back() {
    if !enabled("real_kernel_isolation_irqs_and_workqueues_applied_and_rolled_back") {
        return;
    }
    let _lock = tier_lock();
    let guard = Guard::take();
    let nr = cpus_0_and_1().expect("the tier needs CPUs 0 and 1 online");
    let pre = guard.snapshot().now();
    let agent = Agent::new(&guard);
    let cpu0 = mask_of_cpu0(nr);
    let systemd_init = Path::new(SD_BOOTED).exists();

    let irqs = irq_affinity_files();
    assert!(!irqs.is_empty(), "no IRQs: the test would prove nothing");
    let outside = |p: &String| pre.kernel[p].as_deref().is_some_and(|v| v.trim() != "0");
    let managed: BTreeSet<String> = irqs
        .iter()
        .filter(|p| read_only(p) && outside(p))
        .cloned()
        .collect();
    let movable: Vec<String> = irqs
        .iter()
        .filter(|p| !read_only(p) && outside(p))
        .cloned()
        .collect();
    assert!(
        !movable.is_empty(),
        "every IRQ is on CPU 0 already: {pre:#?}"
    );
    if managed.is_empty() {
        #[allow(clippy::print_stderr)]
        {
            eprintln!("note: no managed IRQ outside CPU 0 on this machine; not exercised here");
        }
    }
    let masks = workqueue_mask_files();
    assert!(
        masks.len() >= 2,
        "the global and at least one workqueue mask: {masks:?}"
    );

    let want: BTreeSet<String> = managed.iter().map(|p| irq_key(p)).collect();

    // Verify before any apply: the managed IRQs unsupported (read-only), the movable ones
    // drift (the JSON report carries no fixes: the plan below shows which are written).
    let (_, report) = agent.json(&["tune", "verify", "--profile", agent.profile()]);
    let report: Report = serde_json::from_value(report).expect("a verify report");
    for p in movable.iter().chain(&managed) {
        let key = irq_key(p);
        let i = report
            .items
            .iter()
            .find(|i| i.key == key)
            .unwrap_or_else(|| panic!("no item {key}"));
        if managed.contains(p) {
            assert_eq!(
                (i.status, i.reason.as_deref()),
                (Status::Unsupported, Some(MANAGED_REASON)),
                "{i:?}"
            );
        } else {
            assert_eq!(i.status, Status::Drift, "{i:?}");
        }
    }
    pre.assert_unchanged("after verify");

    // The plan: every movable IRQ off CPU 0 once, the default mask, every workqueue mask once;
    // no managed IRQ, which is listed unsupported instead.
    let (code, plan) = agent.json(&["tune", "apply", "--profile", agent.profile(), "--dry-run"]);
    assert_eq!(code, Some(0), "{plan}");
    let planned = target_paths(&plan["changes"]);
    for p in movable
        .iter()
        .chain(&masks)
        .chain([&DEFAULT_AFFINITY.to_owned()])
    {
        assert_eq!(
            planned.iter().filter(|x| *x == p).count(),
            1,
            "{p} in the plan: {planned:#?}"
        );
    }
    for p in &managed {
        assert!(!planned.contains(p), "managed {p} planned: {planned:#?}");
    }
    let unsupported: BTreeSet<String> = list_key(&plan["unsupported"], "key")
        .into_iter()
        .filter(|k| want.contains(k))
        .collect();
    assert_eq!(unsupported, want, "{}", plan["unsupported"]);
    pre.assert_unchanged("after the dry run");

    // Apply: nothing refused (the managed IRQs were never planned).
    let (code, outcome) = agent.json(&["tune", "apply", "--profile", agent.profile()]);
    assert!(
        outcome["refused"].is_null(),
        "refused: {}",
        outcome["refused"]
    );
    let after: Report = serde_json::from_value(outcome["after"].clone()).expect("after report");
    let findings = after.items.iter().any(|i| i.status.is_finding(false));
    assert!(
        outcome["follow_up_errors"].is_null() && outcome["systemd_reload_error"].is_null(),
        "no irqbalance running and no drop-in for a systemd that is not here: {outcome}"
    );
    assert_eq!(
        code,
        Some(if findings { 1 } else { 0 }),
        "apply exits by the report after: {outcome}"
    );
    for p in &movable {
        assert_eq!(read(p).as_deref(), Some("0\n"), "{p} after apply");
    }
    for p in &managed {
        assert_eq!(read(p), pre.kernel[p], "{p}: managed, left alone");
    }
    assert_eq!(read(DEFAULT_AFFINITY), Some(format!("{cpu0}\n")));
    for m in &masks {
        assert_eq!(read(m), Some(format!("{cpu0}\n")), "{m} after apply");
    }
    assert_eq!(
        read(REFUSED_FILE),
        pre.files[REFUSED_FILE],
        "no write refused, nothing recorded"
    );
    if systemd_init {
        assert!(read(SYSTEM_CONF_DROP_IN).is_some());
        assert_eq!(affinity_of(1).as_deref(), Some("0"));
    } else {
        assert_eq!(read(SYSTEM_CONF_DROP_IN), None, "no systemd to read it");
        assert_eq!(affinity_of(1), pre.pid1_affinity, "PID 1 is not systemd");
    }
    // Everything apply recorded is something the guard restores.
    let journal = StateDir::new(&agent.state).load().expect("the journal");
    for e in &journal.baseline {
        let covered = match &e.target {
            Target::KernelFile { path } => pre.kernel.contains_key(path),
            Target::ConfigFile { path } => pre.files.contains_key(path),
            Target::ProcessAffinity { pid } => *pid == 1 && pre.pid1_affinity.is_some(),
            _ => false,
        };
        assert!(covered, "the guard does not cover {:?}", e.target);
    }

    // Verify: the managed IRQs unsupported as before, the rest of ours pass.
    let (_, report) = agent.json(&["tune", "verify", "--profile", agent.profile()]);
    let report: Report = serde_json::from_value(report).expect("a verify report");
    let ours = |k: &str| k.starts_with("isolation.irq.") || k.starts_with("isolation.workqueue.");
    for i in report.items.iter().filter(|i| ours(&i.key)) {
        if want.contains(&i.key) {
            assert_eq!(
                (i.status, i.reason.as_deref()),
                (Status::Unsupported, Some(MANAGED_REASON)),
                "{i:?}"
            );
        } else {
            assert_eq!(i.status, Status::Pass, "{i:?}");
        }
    }
    let n_irq = report
        .items
        .iter()
        .filter(|i| {
            i.key.starts_with("isolation.irq.") && i.key != "isolation.irq.default_smp_affinity"
        })
        .count();
    assert_eq!(n_irq, irqs.len(), "one item per IRQ");
    let sysd = report
        .items
        .iter()
        .find(|i| i.key == "isolation.systemd.cpu_affinity")
        .expect("the systemd item");
    if !systemd_init {
        assert_eq!(sysd.status, Status::Unsupported, "{sysd:?}");
    }

    // Again: nothing of ours left to do, the managed IRQs still not planned.
    let applied = pre.now();
    let (_, again) = agent.json(&["tune", "apply", "--profile", agent.profile()]);
    let again_paths = target_paths(&again["plan"]["changes"]);
    assert!(
        !again_paths
            .iter()
            .any(|p| p.starts_with("/proc/irq/") || p.starts_with("/sys/devices/virtual/workqueue")),
        "second apply: {again_paths:#?}"
    );
    assert!(again["refused"].is_null(), "{again}");
    assert!(
        applied.diff(&pre.now()).is_empty(),
        "the second apply changed something"
    );

    // Rollback: every IRQ and mask byte-equal to before.
    let (code, rolled) = agent.json(&["tune", "rollback"]);
    assert_eq!(code, Some(0), "{rolled}");
    assert_eq!(rolled["left_alone"], serde_json::json!([]), "{rolled}");
    assert_eq!(rolled["failed"], serde_json::json!([]), "{rolled}");
    let restored: BTreeSet<String> = list_key(&rolled["restored"], "key").into_iter().collect();
    for p in &movable {
        assert!(restored.contains(&irq_key(p)), "{p} not restored: {rolled}");
    }
    assert!(restored.contains("isolation.irq.default_smp_affinity"));
    assert!(!StateDir::new(&agent.state).journal_path().exists());
    // Before and after, everything the guard covers, the refusal record included (none was
    // written): nothing differs.
    pre.assert_unchanged("after rollback");
    for p in irqs
        .iter()
        .chain(&masks)
        .chain([&DEFAULT_AFFINITY.to_owned()])
    {
        assert_eq!(read(p), pre.kernel[p], "{p} after rollback");
    }
    assert_eq!(affinity_of(1), pre.pid1_affinity);
    assert_eq!(read(SYSTEM_CONF_DROP_IN), None);
    drop(guard);
    assert_eq!(read(REFUSED_FILE), pre.files[REFUSED_FILE]);
}

/// What the fixture tier emulates, checked on this kernel: a managed IRQ's affinity files are
/// read-only and root's write gets EPERM; a movable IRQ takes a write (of its current value
/// here, so nothing moves).
#[test]
fn real_kernel_managed_irqs_are_read_only_and_answer_eperm() {
    if !enabled("real_kernel_managed_irqs_are_read_only_and_answer_eperm") {
        return;
    }
    let _lock = tier_lock();
    let guard = Guard::take();
    let mut seen_managed = 0;
    for p in irq_affinity_files() {
        let Some(current) = read(&p) else { continue };
        let value = current.trim_end_matches('\n');
        let result = std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .and_then(|mut f| std::io::Write::write_all(&mut f, value.as_bytes()));
        if read_only(&p) {
            seen_managed += 1;
            let err = result.expect_err("a managed IRQ took a write");
            assert_eq!(err.raw_os_error(), Some(EPERM), "{p}: {err}");
            let mask = p.replace("smp_affinity_list", "smp_affinity");
            assert!(read_only(&mask), "{mask} is writable");
        } else {
            result.unwrap_or_else(|e| panic!("{p}: writing its own value {value:?}: {e}"));
        }
        assert_eq!(read(&p).as_deref(), Some(current.as_str()), "{p}");
    }
    #[allow(clippy::print_stderr)]
    {
        eprintln!("{seen_managed} managed IRQ(s) on this machine");
    }
    drop(guard);
}

/// The guard puts back IRQs, masks and PID 1's affinity bent by a failing test, and removes a
/// drop-in directory the test created.
#[test]
fn real_kernel_isolation_guard_restores_after_a_panic() {
    if !enabled("real_kernel_isolation_guard_restores_after_a_panic") {
        return;
    }
    let _lock = tier_lock();
    cpus_0_and_1().expect("the tier needs CPUs 0 and 1 online");
    let before = Snapshot::take();
    let caught = std::panic::catch_unwind(|| {
        let _guard = Guard::take();
        let irq = irq_affinity_files()
            .into_iter()
            .find(|p| !read_only(p) && read(p).is_some_and(|v| v.trim() != "0"))
            .expect("a movable IRQ off CPU 0");
        std::fs::write(&irq, "0").unwrap();
        let masks = workqueue_mask_files();
        for m in &masks {
            std::fs::write(m, "1").unwrap();
        }
        std::fs::write(DEFAULT_AFFINITY, "1").unwrap();
        let pid1 = affinity_of(1).unwrap();
        set_affinity(1, if pid1 == "0" { "1" } else { "0" }).unwrap();
        let dir = Path::new(SYSTEM_CONF_DROP_IN).parent().unwrap();
        let made_dir = !dir.exists();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(SYSTEM_CONF_DROP_IN, "[Manager]\nCPUAffinity=0\n").unwrap();
        let diff = before.diff(&before.now());
        assert!(
            diff.len() >= 4 + usize::from(made_dir),
            "the bends did not take: {diff:?}"
        );
        panic!("deliberate failure with {} values bent", diff.len());
    });
    assert!(caught.is_err(), "the closure must panic");
    before.assert_unchanged("after the guard restored on panic");
}
