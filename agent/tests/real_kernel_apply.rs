//! Real-kernel tier (TESTING.md tier 2), writing: `agentctl tune apply`, `verify` and
//! `rollback` with the real binary on this machine's own kernel, with the state directory in a
//! scratch directory.
//!
//! - The shipped `network-latency` and `trading-latency` profiles: apply (exit code as
//!   documented), every applicable item then `pass` by verify and by reads made here, a second
//!   apply with an empty plan, rollback back to the values before, the agent's sysctl.d and
//!   limits.d files gone again. For trading-latency the congestion control is first moved off
//!   bbr (and bbr off the allowed list), so apply changes it and the kernel changes
//!   tcp_allowed_congestion_control as a side effect, which rollback must undo too.
//! - Swap: two swap files made here (one with priority 7, one automatic) are switched off by a
//!   profile with `swap = "off"` and back on with their priorities by rollback.
//! - Remount: an ext4 image on a loop device mounted `relatime` gets `noatime,nodiratime` and
//!   goes back to `relatime` without `nodiratime`.
//! - Fault injection: an apply killed (abort) after each step k in turn, then rollback; and an
//!   apply whose k-th write fails with EIO, which must restore by itself (exit 4).
//!
//! Opt-in: runs only with `NODE_AGENT_PRIVILEGED_TESTS=1` (as root); otherwise each test returns
//! at once after a skip notice, before reading or creating anything. Every test holds the tier
//! lock and a [`Guard`] that snapshots every value the tier may touch and restores it on drop,
//! also when the test fails, then checks the host equals the snapshot.

#[path = "support/real.rs"]
mod real;

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use node_agent::change::Target;
use node_agent::rollback::journal::StateDir;
use node_agent::verify::{Report, Status};
use real::{
    CC, CC_ALLOWED, CC_AVAILABLE, CPU_DIR, Guard, LIMITS_FILE, SYSCTL_FILE, Snapshot, THP_DIR,
    bracketed, enabled, idle_disable_files, kernel_value, mount_options, must, norm, read, run,
    swap_areas, sysctl_path, tier_lock,
};
use serde_json::Value as Json;

const SIGABRT: i32 = 6;

// ---------------------------------------------------------------------------------------------
// The binary

/// agentctl on the live host, its state directory in the guard's scratch directory.
struct Agent {
    state: PathBuf,
    cwd: PathBuf,
}

impl Agent {
    fn new(guard: &Guard) -> Agent {
        let state = guard.work().join("state");
        let cwd = guard.work().join("cwd");
        std::fs::create_dir_all(&cwd).expect("create the agent's working directory");
        Agent { state, cwd }
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_agentctl"))
            .args(args)
            .current_dir(&self.cwd)
            .env("NODE_AGENT_PROFILE_PATH", real::profiles_dir())
            .env("NODE_AGENT_STATE_DIR", &self.state)
            .env_remove("NODE_AGENT_HOST_ROOT")
            .env_remove("NODE_AGENT_FAILPOINT")
            .envs(env.iter().copied())
            .output()
            .expect("run agentctl")
    }

    /// Runs with `--output json`; the exit code and the parsed output.
    fn json(&self, args: &[&str]) -> (Option<i32>, Json) {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.run(&all, &[]);
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

    fn plan(&self, profile: &str) -> Json {
        let (code, plan) = self.json(&["tune", "apply", "--profile", profile, "--dry-run"]);
        assert_eq!(code, Some(0), "dry run of {profile}: {plan}");
        plan
    }

    fn status(&self) -> String {
        let (code, status) = self.json(&["tune", "status"]);
        assert_eq!(code, Some(0), "{status}");
        status["state"].as_str().expect("status state").to_owned()
    }

    /// Apply; checks the exit code against the outcome: 0 when compliant afterwards, 1 when
    /// findings remain, and then only ones the plan called not fixable.
    fn apply(&self, profile: &str) -> Json {
        let (code, outcome) = self.json(&["tune", "apply", "--profile", profile]);
        let after: Report =
            serde_json::from_value(outcome["after"].clone()).expect("the verify report after");
        let findings: Vec<_> = after
            .items
            .iter()
            .filter(|i| i.status.is_finding(false))
            .collect();
        if findings.is_empty() {
            assert_eq!(code, Some(0), "apply {profile}: {outcome}");
        } else {
            assert_eq!(code, Some(1), "apply {profile}: {outcome}");
            let not_fixable = keys(&outcome["plan"]["not_fixable"]);
            for f in findings {
                assert!(
                    not_fixable.contains(&f.key),
                    "apply {profile} left {f:?}, which its plan did not call unfixable"
                );
            }
        }
        outcome
    }

    /// Verify; every item `pass` or, for `unsupported`, exactly the keys given.
    fn verify_passes(&self, profile: &str, unsupported: &BTreeSet<String>) {
        let (code, report) = self.json(&["tune", "verify", "--profile", profile]);
        let report: Report = serde_json::from_value(report).expect("a verify report");
        let bad: Vec<_> = report
            .items
            .iter()
            .filter(|i| !matches!(i.status, Status::Pass | Status::Unsupported))
            .collect();
        assert!(bad.is_empty(), "after apply of {profile}: {bad:#?}");
        let found: BTreeSet<String> = report
            .items
            .iter()
            .filter(|i| i.status == Status::Unsupported)
            .map(|i| i.key.clone())
            .collect();
        assert_eq!(&found, unsupported, "unsupported items of {profile}");
        assert_eq!(code, Some(0), "verify {profile}");
    }

    /// Rollback: exit 0, nothing left alone or failed, the journal gone, status not applied.
    fn rollback(&self) -> Json {
        let (code, outcome) = self.json(&["tune", "rollback"]);
        assert_eq!(code, Some(0), "rollback: {outcome}");
        assert_eq!(outcome["left_alone"], serde_json::json!([]), "{outcome}");
        assert_eq!(outcome["failed"], serde_json::json!([]), "{outcome}");
        assert!(
            !StateDir::new(&self.state).journal_path().exists(),
            "a complete rollback removes the journal"
        );
        assert_eq!(self.status(), "not-applied");
        outcome
    }

    /// Every value the journal recorded is one the guard snapshots (or a resource the test
    /// made and tears down itself): otherwise the guard could not restore it.
    fn assert_journal_covered(&self, guard: &Guard, own_mounts: &[&str]) {
        let journal = StateDir::new(&self.state).load().expect("load the journal");
        let snap = guard.snapshot();
        for e in &journal.baseline {
            let covered = match &e.target {
                Target::KernelFile { path } => snap.kernel.contains_key(path),
                Target::ConfigFile { path } => snap.files.contains_key(path),
                // The guard puts /proc/swaps back as a whole.
                Target::Swap { .. } => true,
                Target::Mount { path } => own_mounts.contains(&path.as_str()),
                // The guard restores PID 1's affinity (set where systemd is PID 1).
                Target::ProcessAffinity { pid } => *pid == 1 && snap.pid1_affinity.is_some(),
            };
            assert!(covered, "the guard does not cover {:?}", e.target);
        }
    }
}

fn keys(list: &Json) -> BTreeSet<String> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|s| s["key"].as_str().expect("a key").to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The profile, read here from its TOML

/// The shipped profile with its includes merged section by section (later wins).
fn raw_profile(name: &str) -> toml::Table {
    let path = real::profiles_dir().join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).expect("read profile");
    let own: toml::Table = text.parse().expect("profile TOML");
    let mut merged = toml::Table::new();
    let includes = own
        .get("profile")
        .and_then(|p| p.get("include"))
        .and_then(toml::Value::as_array)
        .cloned()
        .unwrap_or_default();
    for inc in includes {
        merge(&mut merged, raw_profile(inc.as_str().unwrap()));
    }
    merge(&mut merged, own);
    merged
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => b.extend(o),
            (Some(toml::Value::Array(b)), toml::Value::Array(o)) => b.extend(o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn same_number_or_text(a: &str, b: &str) -> bool {
    match (norm(a).parse::<i128>(), norm(b).parse::<i128>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => norm(a) == norm(b),
    }
}

/// Checks, with reads made here, that the running kernel and the agent's files carry what the
/// profile asks for (skipping knobs this machine lacks).
fn assert_profile_in_effect(name: &str) {
    let p = raw_profile(name);
    let sysctl_conf = read(SYSCTL_FILE);
    if let Some(sysctl) = p.get("sysctl").and_then(toml::Value::as_table) {
        let conf = sysctl_conf
            .as_deref()
            .unwrap_or_else(|| panic!("{SYSCTL_FILE} missing after apply of {name}"));
        let conf_value = |key: &str| -> Option<String> {
            conf.lines().rev().find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == key).then(|| norm(v))
            })
        };
        for (key, want) in sysctl {
            let Some(actual) = read(&sysctl_path(key)) else {
                continue; // unsupported here; verify says so
            };
            match want {
                toml::Value::Table(bound) => {
                    let n: i128 = norm(&actual).parse().expect("a bound on a number");
                    let ok = |v: i128| {
                        bound
                            .get("min")
                            .and_then(toml::Value::as_integer)
                            .is_none_or(|m| v >= i128::from(m))
                            && bound
                                .get("max")
                                .and_then(toml::Value::as_integer)
                                .is_none_or(|m| v <= i128::from(m))
                    };
                    assert!(ok(n), "{key} = {actual} outside {bound:?}");
                    if let Some(v) = conf_value(key) {
                        assert!(
                            ok(v.parse().expect("a number")),
                            "{SYSCTL_FILE}: {key} = {v}"
                        );
                    }
                }
                exact => {
                    let want = match exact {
                        toml::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    assert!(
                        same_number_or_text(&actual, &want),
                        "{key}: running {actual:?}, profile {want:?}"
                    );
                    let persisted = conf_value(key)
                        .unwrap_or_else(|| panic!("{SYSCTL_FILE} does not set {key}"));
                    assert!(
                        same_number_or_text(&persisted, &want),
                        "{SYSCTL_FILE}: {key} = {persisted}, profile {want:?}"
                    );
                }
            }
        }
    }
    if let Some(mem) = p.get("memory").and_then(toml::Value::as_table) {
        for (knob, file) in [
            ("transparent_hugepage", "enabled"),
            ("transparent_hugepage_defrag", "defrag"),
        ] {
            if let Some(want) = mem.get(knob).and_then(toml::Value::as_str) {
                let text = read(&format!("{THP_DIR}/{file}")).expect("THP file");
                assert_eq!(bracketed(&text).as_deref(), Some(want), "THP {file}");
            }
        }
        if mem.get("swap").and_then(toml::Value::as_str) == Some("off") {
            assert!(swap_areas().is_empty(), "swap still on: {:?}", swap_areas());
        }
    }
    if let Some(max) = p
        .get("cpu")
        .and_then(|c| c.get("idle"))
        .and_then(|i| i.get("max_latency_us"))
        .and_then(toml::Value::as_integer)
    {
        let files = idle_disable_files();
        assert!(!files.is_empty(), "no cpuidle states under {CPU_DIR}");
        for (file, latency) in files {
            let want = if i128::from(latency) > i128::from(max) {
                "1"
            } else {
                "0"
            };
            assert_eq!(
                read(&file).map(|s| norm(&s)).as_deref(),
                Some(want),
                "{file}"
            );
        }
    }
    if let Some(limits) = p.get("limits").and_then(toml::Value::as_table) {
        let conf = read(LIMITS_FILE)
            .unwrap_or_else(|| panic!("{LIMITS_FILE} missing after apply of {name}"));
        let lines: BTreeSet<Vec<String>> = conf
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect();
        for (domain, items) in limits {
            for (item, v) in items.as_table().expect("limits table") {
                let value = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                for kind in ["soft", "hard"] {
                    let line = vec![domain.clone(), kind.into(), item.clone(), value.clone()];
                    assert!(
                        lines.contains(&line),
                        "{LIMITS_FILE} lacks {line:?}:\n{conf}"
                    );
                }
            }
        }
    }
}

/// Unsupported keys that must be there on a machine without the hardware.
fn expected_unsupported(name: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    let p = raw_profile(name);
    if p.get("cpu").and_then(|c| c.get("governor")).is_some()
        && !Path::new(&format!("{CPU_DIR}/cpu0/cpufreq")).exists()
    {
        out.push("cpu.governor");
    }
    let nvme = std::fs::read_dir("/sys/block")
        .expect("list /sys/block")
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().starts_with("nvme"));
    if p.contains_key("block") && !nvme {
        out.push("block.nvme*");
    }
    if p.contains_key("mount") && mount_options("/data").is_none() {
        out.push("mount./data.options");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Congestion control

/// Moves the default congestion control off bbr and takes bbr off the allowed list, so that
/// applying `bbr` changes both. Returns false when the kernel offers nothing but bbr.
fn move_congestion_control_off_bbr() -> bool {
    let available = norm(&read(CC_AVAILABLE).expect("read available congestion control"));
    let others: Vec<&str> = available.split(' ').filter(|c| *c != "bbr").collect();
    let Some(other) = others
        .iter()
        .find(|c| **c == "cubic")
        .or(others.first())
        .copied()
    else {
        return false;
    };
    std::fs::write(CC, other).expect("set tcp_congestion_control");
    std::fs::write(CC_ALLOWED, others.join(" ")).expect("set tcp_allowed_congestion_control");
    assert_eq!(norm(&read(CC).unwrap()), other);
    assert!(
        !read(CC_ALLOWED)
            .unwrap()
            .split_whitespace()
            .any(|c| c == "bbr")
    );
    true
}

// ---------------------------------------------------------------------------------------------
// Shipped profiles

fn apply_and_roll_back(name: &str, setup: impl FnOnce()) {
    let _lock = tier_lock();
    let guard = Guard::take();
    setup();
    let pre = guard.snapshot().now();
    let agent = Agent::new(&guard);

    let plan = agent.plan(name);
    assert!(
        !plan["changes"].as_array().unwrap().is_empty(),
        "nothing to apply: the test would prove nothing"
    );
    let unsupported = keys(&plan["unsupported"]);
    for k in expected_unsupported(name) {
        assert!(unsupported.contains(k), "{k} not unsupported: {plan}");
    }
    pre.assert_unchanged("after the dry run");

    agent.apply(name);
    agent.assert_journal_covered(&guard, &[]);
    assert_eq!(agent.status(), "applied");
    assert_profile_in_effect(name);
    agent.verify_passes(name, &unsupported);
    assert!(read(SYSCTL_FILE).is_some(), "{SYSCTL_FILE} not written");
    let applied = pre.now();
    assert_ne!(applied, pre, "apply changed nothing");

    // Again: nothing left to do, nothing changes.
    let again = agent.apply(name);
    assert_eq!(
        again["plan"]["changes"],
        serde_json::json!([]),
        "second apply"
    );
    assert_eq!(pre.now(), applied, "the second apply changed something");

    let rolled = agent.rollback();
    pre.assert_unchanged(&format!("after rollback of {name}"));
    for file in [SYSCTL_FILE, LIMITS_FILE] {
        assert_eq!(read(file), pre.files[file], "{file} after rollback");
    }
    let restored = keys(&rolled["restored"]);
    assert!(!restored.is_empty(), "{rolled}");
    drop(guard);
}

#[test]
fn real_kernel_apply_network_latency() {
    if !enabled("real_kernel_apply_network_latency") {
        return;
    }
    apply_and_roll_back("network-latency", || {});
}

#[test]
fn real_kernel_apply_trading_latency() {
    if !enabled("real_kernel_apply_trading_latency") {
        return;
    }
    apply_and_roll_back("trading-latency", || {
        // Apply must change the congestion control (and with it the allowed list).
        assert!(
            move_congestion_control_off_bbr(),
            "the kernel offers no congestion control but bbr: cannot test the side effect"
        );
    });
}

/// The allowed list really is a side effect: apply puts bbr on it, rollback takes it off.
#[test]
fn real_kernel_congestion_control_side_effect() {
    if !enabled("real_kernel_congestion_control_side_effect") {
        return;
    }
    let _lock = tier_lock();
    let guard = Guard::take();
    assert!(move_congestion_control_off_bbr(), "bbr is the only choice");
    let pre = guard.snapshot().now();
    let profile = guard.work().join("cc.toml");
    std::fs::write(
        &profile,
        "[profile]\nname = \"cc\"\n\n[sysctl]\n\"net.ipv4.tcp_congestion_control\" = \"bbr\"\n",
    )
    .unwrap();
    let agent = Agent::new(&guard);
    agent.apply(profile.to_str().unwrap());
    agent.assert_journal_covered(&guard, &[]);
    assert_eq!(norm(&read(CC).unwrap()), "bbr");
    assert!(
        read(CC_ALLOWED)
            .unwrap()
            .split_whitespace()
            .any(|c| c == "bbr"),
        "setting the default did not allow bbr: the side effect this test relies on is gone"
    );
    let rolled = agent.rollback();
    assert!(
        keys(&rolled["restored"]).contains("net.ipv4.tcp_allowed_congestion_control"),
        "{rolled}"
    );
    pre.assert_unchanged("after rollback");
    drop(guard);
}

// ---------------------------------------------------------------------------------------------
// Swap

/// A swap file of 16 MiB under the scratch directory (zeros written, no holes, so swapon takes
/// it); the guard switches it off and deletes it.
fn make_swap_file(guard: &mut Guard, name: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = guard.work().join(name);
    std::fs::write(&path, vec![0u8; 16 << 20]).expect("write swap file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let p = path.display().to_string();
    must("mkswap", &[&p]);
    let q = p.clone();
    guard.on_drop(&format!("swap file {p}"), move || {
        if swap_areas().contains_key(&q) {
            run("swapoff", &[&q])?;
        }
        match std::fs::remove_file(&q) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("remove {q}: {e}")),
            _ => Ok(()),
        }
    });
    p
}

#[test]
fn real_kernel_swap_off_and_back_on() {
    if !enabled("real_kernel_swap_off_and_back_on") {
        return;
    }
    let _lock = tier_lock();
    let mut guard = Guard::take();
    let fixed = make_swap_file(&mut guard, "swap-prio7");
    let auto = make_swap_file(&mut guard, "swap-auto");
    must("swapon", &["--priority", "7", &fixed]);
    must("swapon", &[&auto]);
    let before = swap_areas();
    assert_eq!(before[&fixed].priority, 7, "{before:?}");
    assert!(before[&auto].priority < 0, "{before:?}");
    let pre = guard.snapshot().now();

    let profile = guard.work().join("swap-off.toml");
    std::fs::write(
        &profile,
        "[profile]\nname = \"swap-off\"\n\n[memory]\nswap = \"off\"\n",
    )
    .unwrap();
    let profile = profile.to_str().unwrap();
    let agent = Agent::new(&guard);
    let plan = agent.plan(profile);
    let devices: BTreeSet<&str> = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["target"]["device"].as_str().expect("a swap target"))
        .collect();
    assert!(
        devices.contains(fixed.as_str()) && devices.contains(auto.as_str()),
        "{plan}"
    );

    agent.apply(profile);
    agent.assert_journal_covered(&guard, &[]);
    let during = swap_areas();
    assert!(
        !during.contains_key(&fixed) && !during.contains_key(&auto),
        "still active after apply: {during:?}"
    );
    agent.verify_passes(profile, &BTreeSet::new());

    agent.rollback();
    assert_eq!(swap_areas(), before, "swap areas after rollback");
    pre.assert_unchanged("after rollback");
    drop(guard);
    let after = swap_areas();
    assert!(
        !after.contains_key(&fixed) && !after.contains_key(&auto),
        "the guard left a swap file on: {after:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Remount

/// The backing file of a loop device, from sysfs.
fn loop_backing_file(dev: &str) -> Option<String> {
    let name = dev.strip_prefix("/dev/")?;
    read(&format!("/sys/block/{name}/loop/backing_file")).map(|s| s.trim().to_owned())
}

#[test]
fn real_kernel_remount_and_back() {
    if !enabled("real_kernel_remount_and_back") {
        return;
    }
    let _lock = tier_lock();
    let mut guard = Guard::take();
    let image = guard.work().join("fs.img");
    let image_s = image.display().to_string();
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(32 << 20))
        .expect("create the image");
    must("mkfs.ext4", &["-q", "-F", &image_s]);
    let dev = must("losetup", &["--find", "--show", &image_s])
        .trim()
        .to_owned();
    assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
    {
        let (dev, image) = (dev.clone(), image_s.clone());
        guard.on_drop(&format!("loop device {dev}"), move || {
            // Only the device this test attached, identified by its backing file.
            match loop_backing_file(&dev) {
                Some(b) if b == image => run("losetup", &["--detach", &dev]).map(|_| ()),
                _ => Ok(()),
            }
        });
    }
    let mnt = guard.work().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mnt_s = mnt.display().to_string();
    must("mount", &["-o", "relatime", &dev, &mnt_s]);
    {
        let mnt = mnt_s.clone();
        guard.on_drop(&format!("mount {mnt}"), move || {
            if mount_options(&mnt).is_some() {
                run("umount", &[&mnt])?;
            }
            Ok(())
        });
    }
    let before = mount_options(&mnt_s).expect("mounted");
    let has = |opts: &[String], o: &str| opts.iter().any(|x| x == o);
    assert!(
        has(&before, "relatime") && !has(&before, "noatime"),
        "{before:?}"
    );
    assert!(!has(&before, "nodiratime"), "{before:?}");
    let pre = guard.snapshot().now();

    let profile = guard.work().join("noatime.toml");
    std::fs::write(
        &profile,
        format!(
            "[profile]\nname = \"noatime\"\n\n[[mount]]\npath = \"{mnt_s}\"\n\
             options = [\"noatime\", \"nodiratime\"]\n"
        ),
    )
    .unwrap();
    let profile = profile.to_str().unwrap();
    let agent = Agent::new(&guard);
    agent.apply(profile);
    agent.assert_journal_covered(&guard, &[&mnt_s]);
    let during = mount_options(&mnt_s).expect("still mounted");
    assert!(
        has(&during, "noatime") && has(&during, "nodiratime") && !has(&during, "relatime"),
        "after apply: {during:?}"
    );
    agent.verify_passes(profile, &BTreeSet::new());

    agent.rollback();
    let after = mount_options(&mnt_s).expect("still mounted");
    assert!(
        has(&after, "relatime") && !has(&after, "noatime") && !has(&after, "nodiratime"),
        "after rollback: {after:?}"
    );
    let set = |v: &[String]| v.iter().cloned().collect::<BTreeSet<_>>();
    assert_eq!(
        set(&after),
        set(&before),
        "per-mount options after rollback"
    );
    pre.assert_unchanged("after rollback");
    drop(guard);
    assert!(
        mount_options(&mnt_s).is_none(),
        "the guard left {mnt_s} mounted"
    );
    assert_ne!(
        loop_backing_file(&dev).as_deref(),
        Some(image_s.as_str()),
        "the guard left {dev} attached"
    );
}

// ---------------------------------------------------------------------------------------------
// Fault injection

/// A value of the plan's JSON (`{"state": "text", "value": ...}` or `{"state": "absent"}`) as
/// the text read here would show it.
fn plan_value(v: &Json) -> Option<String> {
    match v["state"].as_str() {
        Some("text") => Some(v["value"].as_str().expect("text").to_owned()),
        Some("absent") => None,
        other => panic!("a value this test cannot read back: {other:?} in {v}"),
    }
}

/// The first `done` changes of the plan are in effect, the others not yet.
fn assert_steps_in_effect(changes: &[Json], done: usize) {
    for (i, c) in changes.iter().enumerate() {
        let want = if i < done { &c["to"] } else { &c["from"] };
        let path = c["target"]["path"].as_str().expect("a file target");
        match c["target"]["kind"].as_str() {
            Some("kernel-file") => {
                let now = kernel_value(&read(path).expect("kernel file"));
                let want = plan_value(want).expect("a kernel value");
                assert!(
                    same_number_or_text(&now, &want),
                    "step {} ({path}) after {done} done: {now:?}, expected {want:?}",
                    i + 1
                );
            }
            Some("config-file") => {
                assert_eq!(
                    read(path),
                    plan_value(want),
                    "step {} ({path}) after {done} done",
                    i + 1
                );
            }
            other => panic!("a target this test does not check: {other:?} (extend it)"),
        }
    }
}

/// For every step k: apply killed right after step k, then rollback, then the host as before.
fn abort_after_each_step(name: &str, setup: impl FnOnce()) {
    let _lock = tier_lock();
    let guard = Guard::take();
    setup();
    let pre = guard.snapshot().now();
    let agent = Agent::new(&guard);
    let plan = agent.plan(name);
    let changes = plan["changes"].as_array().unwrap().clone();
    let n = changes.len();
    assert!(n > 0, "nothing to apply");
    for k in 1..=n {
        let spec = format!("apply-after-step:{k}");
        let out = agent.run(
            &["tune", "apply", "--profile", name],
            &[("NODE_AGENT_FAILPOINT", &spec)],
        );
        assert_eq!(
            out.status.signal(),
            Some(SIGABRT),
            "{spec}: expected an abort, got {:?}; stderr {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_steps_in_effect(&changes, k);
        agent.assert_journal_covered(&guard, &[]);
        assert_eq!(agent.status(), "interrupted", "{spec}");
        agent.rollback();
        pre.assert_unchanged(&format!("{name}: rollback after {spec}"));
    }
    drop(guard);
}

#[test]
fn real_kernel_abort_after_each_step_network_latency() {
    if !enabled("real_kernel_abort_after_each_step_network_latency") {
        return;
    }
    abort_after_each_step("network-latency", || {});
}

#[test]
fn real_kernel_abort_after_each_step_trading_latency() {
    if !enabled("real_kernel_abort_after_each_step_trading_latency") {
        return;
    }
    abort_after_each_step("trading-latency", || {
        assert!(move_congestion_control_off_bbr(), "bbr is the only choice");
    });
}

/// For every step k: the k-th write fails with EIO; apply restores what it had changed by
/// itself and exits 4, with no rollback call.
#[test]
fn real_kernel_write_error_at_each_step_network_latency() {
    if !enabled("real_kernel_write_error_at_each_step_network_latency") {
        return;
    }
    let _lock = tier_lock();
    let guard = Guard::take();
    let pre = guard.snapshot().now();
    let agent = Agent::new(&guard);
    let name = "network-latency";
    let plan = agent.plan(name);
    let changes = plan["changes"].as_array().unwrap().clone();
    assert!(!changes.is_empty(), "nothing to apply");
    for (i, change) in changes.iter().enumerate() {
        let spec = format!("apply-write:{}", i + 1);
        let out = agent.run(
            &["tune", "apply", "--profile", name],
            &[("NODE_AGENT_FAILPOINT", &spec)],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{spec}: {stderr}");
        let key = change["key"].as_str().unwrap();
        assert!(
            stderr.contains("failed to apply") && stderr.contains(key),
            "{spec}: the error names no step {key}: {stderr}"
        );
        pre.assert_unchanged(&format!("{name}: after {spec}, with no rollback"));
        assert_eq!(agent.status(), "last-apply-failed", "{spec}");
    }
    drop(guard);
}

// ---------------------------------------------------------------------------------------------
// The guard itself

/// The guard restores what a failing test changed: values are bent directly, the test
/// panics, and afterwards the host equals a snapshot taken before.
#[test]
fn real_kernel_guard_restores_after_a_panic() {
    if !enabled("real_kernel_guard_restores_after_a_panic") {
        return;
    }
    let _lock = tier_lock();
    let before = Snapshot::take();
    let caught = std::panic::catch_unwind(|| {
        let _guard = Guard::take();
        let swappiness = sysctl_path("vm.swappiness");
        let now: u32 = norm(&read(&swappiness).unwrap()).parse().unwrap();
        std::fs::write(&swappiness, (if now == 11 { 12 } else { 11 }).to_string()).unwrap();
        let thp = format!("{THP_DIR}/enabled");
        let mode = bracketed(&read(&thp).unwrap()).unwrap();
        std::fs::write(&thp, if mode == "never" { "always" } else { "never" }).unwrap();
        assert!(move_congestion_control_off_bbr() || norm(&read(CC).unwrap()) != "bbr");
        std::fs::write(SYSCTL_FILE, "# left by a failing test\n").unwrap();
        let diff = before.diff(&before.now());
        assert!(diff.len() >= 4, "the bends did not take: {diff:?}");
        panic!("deliberate failure with {} values bent", diff.len());
    });
    assert!(caught.is_err(), "the closure must panic");
    before.assert_unchanged("after the guard restored on panic");
}
