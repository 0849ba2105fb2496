//! Invalid input: every file in tests/data/malformed must be rejected with exactly the message in
//! `CASES`, by the library and by `agentctl` (exit 2, the message on stderr, nothing on stdout),
//! and rejecting it must not touch the host.

#[path = "support/corpus.rs"]
mod corpus;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

use node_agent::profile::{self, ProfileError, SearchPath};

/// `{dir}` stands for the corpus directory, `{search}` for the profile search path as agentctl
/// builds it (NODE_AGENT_PROFILE_PATH, then the two default directories).
const CASES: &[(&str, &str)] = &[
    // TOML syntax.
    (
        "syntax-error",
        "{dir}/syntax-error.toml:5:19: string values must be quoted, expected literal string",
    ),
    (
        "syntax-unclosed-table",
        "{dir}/syntax-unclosed-table.toml:1:8: unclosed table, expected `]`",
    ),
    (
        "duplicate-key",
        "{dir}/duplicate-key.toml:3:1: duplicate key `governor`",
    ),
    // Unknown sections and keys.
    // [isolation]: validated when the profile loads.
    (
        "isolation-overlap",
        "{dir}/isolation-overlap.toml:4:1: isolation: housekeeping_cpus 0-2 and isolated_cpus 2-15 \
         overlap on 2: a CPU is either housekeeping or isolated",
    ),
    (
        "isolation-no-cpu0",
        "{dir}/isolation-no-cpu0.toml:1:1: isolation: housekeeping_cpus 1 leaves out CPU 0, which \
         the kernel uses for boot and timekeeping work; include it, or set \
         allow_housekeeping_without_cpu0 = true",
    ),
    (
        "isolation-bad-kernel-arg",
        "{dir}/isolation-bad-kernel-arg.toml:1:1: isolation: invalid kernel argument \
         \"skew_tick=1 nosoftlockup\": one argument per string, of letters, digits and = , . - \
         _ : / + @ % ~ (no spaces, quotes or shell characters)",
    ),
    (
        "isolation-shell-kernel-arg",
        "{dir}/isolation-shell-kernel-arg.toml:1:1: isolation: invalid kernel argument \
         \"quiet$(reboot)\": one argument per string, of letters, digits and = , . - _ : / + @ \
         % ~ (no spaces, quotes or shell characters)",
    ),
    (
        "isolation-empty-cpu-list",
        "{dir}/isolation-empty-cpu-list.toml:3:17: isolation.isolated_cpus: empty CPU list",
    ),
    (
        "isolation-bad-unit",
        "{dir}/isolation-bad-unit.toml:4:16: isolation.engine_units: invalid unit name \
         \"trading engine\": letters, digits and \":-_.@\\\", with a type suffix such as .service",
    ),
    (
        "unknown-section-sysctls",
        "{dir}/unknown-section-sysctls.toml:1:2: unknown section `sysctls`, expected one of \
         `profile`, `sysctl`, `cpu`, `memory`, `block`, `limits`, `mount`, `clocksource`, `isolation`",
    ),
    (
        "unknown-section-blocks",
        "{dir}/unknown-section-blocks.toml:1:3: unknown section `blocks`, expected one of \
         `profile`, `sysctl`, `cpu`, `memory`, `block`, `limits`, `mount`, `clocksource`, `isolation`",
    ),
    (
        "unknown-top-level-key",
        "{dir}/unknown-top-level-key.toml:2:1: unknown top-level key `governor`, expected one of \
         `profile`, `sysctl`, `cpu`, `memory`, `block`, `limits`, `mount`, `clocksource`, `isolation`",
    ),
    (
        "unknown-key-cpu",
        "{dir}/unknown-key-cpu.toml:3:1: cpu: unknown field `governour`, expected one of `cpus`, \
         `governor`, `idle`, `min_freq`, `max_freq`, `energy_perf_bias`, \
         `energy_performance_preference`, `boost`, `min_perf_pct`, `pm_qos_latency_us`",
    ),
    (
        "unknown-key-idle",
        "{dir}/unknown-key-idle.toml:2:10: cpu.idle: unknown field `max_latency`, expected \
         `max_latency_us`",
    ),
    (
        "unknown-key-memory",
        "{dir}/unknown-key-memory.toml:2:1: memory: unknown field `transparent_hugepages`, \
         expected one of `transparent_hugepage`, `transparent_hugepage_defrag`, `swap`, `ksm`, \
         `hugepages`",
    ),
    (
        "unknown-key-block",
        "{dir}/unknown-key-block.toml:4:1: block[0]: unknown field `nr_requests`, expected one of \
         `devices`, `scheduler`, `read_ahead_kb`",
    ),
    (
        "unknown-key-mount",
        "{dir}/unknown-key-mount.toml:4:1: mount[0]: unknown field `fstype`, expected `path` or \
         `options`",
    ),
    (
        "unknown-key-profile",
        "{dir}/unknown-key-profile.toml:3:1: profile: unknown field `includes`, expected one of \
         `name`, `description`, `include`",
    ),
    // Wrong types.
    (
        "type-governor-integer",
        "{dir}/type-governor-integer.toml:2:12: cpu.governor: invalid type: integer `1`, expected \
         one of \"performance\", \"powersave\", \"schedutil\", \"ondemand\", \"conservative\", \
         \"userspace\"",
    ),
    (
        "type-swap-bool",
        "{dir}/type-swap-bool.toml:2:8: memory.swap: invalid type: boolean `true`, expected \"off\"",
    ),
    (
        "type-boost-string",
        "{dir}/type-boost-string.toml:2:9: cpu.boost: invalid type: string \"yes\", expected a \
         boolean",
    ),
    (
        "type-mount-options-string",
        "{dir}/type-mount-options-string.toml:3:11: mount[0].options: invalid type: string \
         \"noatime\", expected a sequence",
    ),
    (
        "type-hugepages-bool",
        "{dir}/type-hugepages-bool.toml:2:8: memory.hugepages.2M: invalid type: boolean `true`, \
         expected an integer, a string, or a bound such as { min = 1000 }",
    ),
    (
        "type-sysctl-bool",
        "{dir}/type-sysctl-bool.toml:2:30: sysctl.\"net.ipv4.tcp_low_latency\": invalid type: \
         boolean `true`, expected an integer, a string, or a bound such as { min = 1000 }",
    ),
    (
        "type-sysctl-float",
        "{dir}/type-sysctl-float.toml:2:19: sysctl.\"vm.swappiness\": invalid type: floating \
         point `1.5`, expected an integer, a string, or a bound such as { min = 1000 }",
    ),
    (
        "type-include-string",
        "{dir}/type-include-string.toml:2:11: profile.include: invalid type: string \"base\", \
         expected a sequence",
    ),
    // Invalid values of validated types.
    (
        "invalid-governor",
        "{dir}/invalid-governor.toml:2:12: cpu.governor: invalid governor \"turbo\": expected one \
         of performance, powersave, schedutil, ondemand, conservative, userspace",
    ),
    (
        "invalid-scheduler",
        "{dir}/invalid-scheduler.toml:3:13: block[0].scheduler: invalid I/O scheduler \"cfq\": \
         expected one of none, mq-deadline, kyber, bfq",
    ),
    (
        "invalid-thp-mode",
        "{dir}/invalid-thp-mode.toml:2:24: memory.transparent_hugepage: invalid \
         transparent_hugepage mode \"sometimes\": expected one of always, madvise, never",
    ),
    (
        "invalid-thp-defrag",
        "{dir}/invalid-thp-defrag.toml:2:31: memory.transparent_hugepage_defrag: invalid \
         transparent_hugepage_defrag mode \"defer-madvise\": expected one of always, defer, \
         defer+madvise, madvise, never",
    ),
    (
        "invalid-epp",
        "{dir}/invalid-epp.toml:2:33: cpu.energy_performance_preference: invalid \
         energy_performance_preference \"fast\": expected one of default, performance, \
         balance_performance, balance_power, power",
    ),
    (
        "invalid-epb-16",
        "{dir}/invalid-epb-16.toml:2:20: cpu.energy_perf_bias: invalid energy_perf_bias \"16\": \
         expected 0-15 or one of performance, balance-performance, normal, balance-power, power",
    ),
    (
        "invalid-min-perf-pct-101",
        "{dir}/invalid-min-perf-pct-101.toml:2:16: cpu.min_perf_pct: invalid percentage 101: \
         expected 0-100",
    ),
    (
        "invalid-min-perf-pct-negative",
        "{dir}/invalid-min-perf-pct-negative.toml:2:16: cpu.min_perf_pct: invalid percentage -1: \
         expected 0-100",
    ),
    (
        "invalid-frequency",
        "{dir}/invalid-frequency.toml:2:12: cpu.max_freq: invalid frequency \"fast\": expected kHz \
         as an integer, a number with GHz, MHz or kHz, or \"min\"/\"max\"",
    ),
    // CPU lists.
    (
        "cpulist-reversed",
        "{dir}/cpulist-reversed.toml:2:8: cpu.cpus: invalid CPU list \"3-1\": range 3-1 is reversed",
    ),
    (
        "cpulist-letter",
        "{dir}/cpulist-letter.toml:2:8: cpu.cpus: invalid CPU list \"a\": \"a\" is not a CPU number",
    ),
    (
        "cpulist-double-comma",
        "{dir}/cpulist-double-comma.toml:2:8: cpu.cpus: invalid CPU list \"0,,1\": \"\" is not a \
         CPU number",
    ),
    (
        "cpulist-empty",
        "{dir}/cpulist-empty.toml:2:8: cpu.cpus: empty CPU list",
    ),
    // Sysctl keys: the error points at the key.
    (
        "sysctl-key-empty",
        "{dir}/sysctl-key-empty.toml:2:1: sysctl: empty sysctl key",
    ),
    (
        "sysctl-key-empty-component",
        "{dir}/sysctl-key-empty-component.toml:2:1: sysctl: invalid sysctl key \
         \"net..core.somaxconn\": empty component",
    ),
    (
        "sysctl-key-trailing-dot",
        "{dir}/sysctl-key-trailing-dot.toml:2:1: sysctl: invalid sysctl key \"net.core.\": empty \
         component",
    ),
    (
        "sysctl-key-dotdot",
        "{dir}/sysctl-key-dotdot.toml:2:1: sysctl: invalid sysctl key \"net/../../etc/shadow\": \
         component \"..\" is not allowed",
    ),
    (
        "sysctl-key-dot",
        "{dir}/sysctl-key-dot.toml:2:1: sysctl: invalid sysctl key \"net/./core/somaxconn\": \
         component \".\" is not allowed",
    ),
    (
        "sysctl-key-whitespace",
        "{dir}/sysctl-key-whitespace.toml:2:1: sysctl: invalid sysctl key \"net.core.some \
         maxconn\": character ' ' is not allowed",
    ),
    (
        "sysctl-key-glob",
        "{dir}/sysctl-key-glob.toml:2:1: sysctl: invalid sysctl key \"net.ipv4.conf.*.rp_filter\": \
         character '*' is not allowed",
    ),
    (
        "sysctl-key-glob-bracket",
        "{dir}/sysctl-key-glob-bracket.toml:2:1: sysctl: invalid sysctl key \
         \"net.ipv4.conf.eth[01].rp_filter\": character '[' is not allowed",
    ),
    (
        "sysctl-key-two-spellings",
        "{dir}/sysctl-key-two-spellings.toml:2:1: sysctl: \"net/core/somaxconn\" and \
         \"net.core.somaxconn\" are the same key (net.core.somaxconn): keep one",
    ),
    // Sysctl values and bounds.
    (
        "sysctl-value-empty",
        "{dir}/sysctl-value-empty.toml:2:37: sysctl.\"net.ipv4.tcp_congestion_control\": empty \
         value: give the value the kernel should hold",
    ),
    (
        "sysctl-bound-unknown-key",
        "{dir}/sysctl-bound-unknown-key.toml:2:24: sysctl.\"net.core.somaxconn\": unknown field \
         `minimum`, expected `min` or `max`",
    ),
    (
        "sysctl-bound-min-above-max",
        "{dir}/sysctl-bound-min-above-max.toml:2:24: sysctl.\"net.core.somaxconn\": bound min \
         65535 is above max 4096",
    ),
    (
        "sysctl-bound-empty",
        "{dir}/sysctl-bound-empty.toml:2:24: sysctl.\"net.core.somaxconn\": a bound needs `min`, \
         `max` or both",
    ),
    // Limits.
    (
        "limits-bad-domain",
        "{dir}/limits-bad-domain.toml:2:1: limits: invalid limits domain \"trading desk\": \
         expected \"*\", a user, \"@group\", \"%group\" or a uid range such as \"1000:\"",
    ),
    (
        "limits-unknown-item",
        "{dir}/limits-unknown-item.toml:2:9: limits.\"*\": invalid limits item \"nofiles\": \
         expected one of core, data, fsize, memlock, nofile, rss, stack, cpu, nproc, as, \
         maxlogins, maxsyslogins, nonewprivs, priority, locks, sigpending, msgqueue, nice, rtprio",
    ),
    (
        "limits-bad-value",
        "{dir}/limits-bad-value.toml:2:18: limits.\"*\".nofile: invalid limit value \"lots\": \
         expected a number or \"unlimited\"",
    ),
    (
        "limits-empty-table",
        "{dir}/limits-empty-table.toml:2:18: limits.\"*\".nofile: a limit table needs `soft`, \
         `hard` or both",
    ),
    (
        "limits-empty-domain",
        "{dir}/limits-empty-domain.toml:2:7: limits.\"*\": empty limits table: give at least one \
         item, such as `nofile = 1000000`",
    ),
    // Block rules.
    (
        "block-glob-slash",
        "{dir}/block-glob-slash.toml:2:11: block[0].devices: invalid device glob \"../sda\": a \
         name or glob over /sys/block, without '/'",
    ),
    (
        "block-glob-unclosed",
        "{dir}/block-glob-unclosed.toml:2:11: block[0].devices: invalid device glob \"sd[a-d\": \
         invalid range pattern",
    ),
    (
        "block-sets-nothing",
        "{dir}/block-sets-nothing.toml:1:1: block[0]: block rule for \"nvme*\" sets nothing: give \
         `scheduler` and/or `read_ahead_kb`",
    ),
    // The second rule is blamed, at its own header, not the first rule of the file.
    (
        "block-second-sets-nothing",
        "{dir}/block-second-sets-nothing.toml:8:1: block[1]: block rule for \"nvme*\" sets \
         nothing: give `scheduler` and/or `read_ahead_kb`",
    ),
    // Mount rules.
    (
        "mount-relative",
        "{dir}/mount-relative.toml:2:8: mount[0].path: invalid mount path \"data\": must be absolute",
    ),
    (
        "mount-trailing-slash",
        "{dir}/mount-trailing-slash.toml:2:8: mount[0].path: invalid mount path \"/data/\": remove \
         the trailing '/'",
    ),
    (
        "mount-dotdot",
        "{dir}/mount-dotdot.toml:2:8: mount[0].path: invalid mount path \"/data/../etc\": empty, \
         '.' and '..' components are not allowed",
    ),
    (
        "mount-no-options",
        "{dir}/mount-no-options.toml:4:1: mount[0]: mount rule for /data lists no options: give \
         at least one, such as \"noatime\"",
    ),
    (
        "mount-option-comma",
        "{dir}/mount-option-comma.toml:3:12: mount[0].options[0]: invalid mount option \
         \"noatime,nodiratime\": one option per string, without ',' or spaces",
    ),
    // Huge pages.
    (
        "hugepage-size-invalid",
        "{dir}/hugepage-size-invalid.toml:2:1: memory.hugepages: invalid huge page size \"3M\": \
         not a power of two",
    ),
    (
        "hugepage-size-two-spellings",
        "{dir}/hugepage-size-two-spellings.toml:2:1: memory.hugepages: \"2M\" and \"2048kB\" are \
         the same key (2M): keep one",
    ),
    // Includes: the error points at the include string.
    (
        "include-missing",
        "{dir}/include-missing.toml:2:12: profile.include[0]: included profile \"nosuch-base\" not \
         found; searched {dir}, {search}",
    ),
    (
        "include-path-missing",
        "{dir}/include-path-missing.toml:2:12: profile.include[0]: included profile \
         \"../nosuch/base.toml\" not found at {dir}/../nosuch/base.toml",
    ),
    (
        "include-bad-name",
        "{dir}/include-bad-name.toml:2:12: profile.include[0]: invalid profile name \"base \
         profile\": 1-64 characters of letters, digits, '-', '_', '.', starting with a letter or \
         digit",
    ),
    (
        "include-bad-name2",
        "{dir}/include-bad-name2.toml:2:12: profile.include[0]: invalid profile name \"-base\": \
         1-64 characters of letters, digits, '-', '_', '.', starting with a letter or digit",
    ),
    // A cycle is reported where it closes, with the whole chain.
    (
        "include-cycle-a",
        "{dir}/include-cycle-b.toml:2:12: profile.include[0]: include cycle: \
         {dir}/include-cycle-a.toml -> {dir}/include-cycle-b.toml -> {dir}/include-cycle-a.toml",
    ),
    (
        "include-cycle-b",
        "{dir}/include-cycle-a.toml:2:12: profile.include[0]: include cycle: \
         {dir}/include-cycle-b.toml -> {dir}/include-cycle-a.toml -> {dir}/include-cycle-b.toml",
    ),
    (
        "include-self",
        "{dir}/include-self.toml:2:12: profile.include[0]: include cycle: {dir}/include-self.toml \
         -> {dir}/include-self.toml",
    ),
    // The [profile] table.
    (
        "profile-bad-name",
        "{dir}/profile-bad-name.toml:2:8: profile.name: invalid profile name \"trading latency\": \
         1-64 characters of letters, digits, '-', '_', '.', starting with a letter or digit",
    ),
    // Profiles that set nothing.
    (
        "sets-nothing",
        "{dir}/sets-nothing.toml:1:1: the profile sets nothing: add at least one of [sysctl], \
         [cpu], [memory], [[block]], [limits], [[mount]], [clocksource], or include a profile",
    ),
    (
        "empty-file",
        "{dir}/empty-file.toml:1:1: the profile sets nothing: add at least one of [sysctl], \
         [cpu], [memory], [[block]], [limits], [[mount]], [clocksource], or include a profile",
    ),
];

/// agentctl's search path after NODE_AGENT_PROFILE_PATH.
const DEFAULT_PROFILE_DIRS: [&str; 2] =
    ["/etc/node-agent/profiles", "/usr/share/node-agent/profiles"];

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/malformed")
}

fn case_path(case: &str) -> PathBuf {
    corpus_dir().join(format!("{case}.toml"))
}

/// An empty profile directory standing first on the search path, so a lookup by name finds
/// nothing there and the message lists it.
struct Env {
    profiles: tempfile::TempDir,
    host: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            profiles: tempfile::tempdir().unwrap(),
            host: tempfile::tempdir().unwrap(),
        }
    }

    /// The search path agentctl builds from NODE_AGENT_PROFILE_PATH = `self.profiles`.
    fn search(&self) -> SearchPath {
        let mut dirs = vec![self.profiles.path().to_owned()];
        dirs.extend(DEFAULT_PROFILE_DIRS.iter().map(PathBuf::from));
        SearchPath::new(dirs)
    }

    fn expected(&self, template: &str) -> String {
        let search: Vec<String> = self
            .search()
            .dirs()
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        template
            .replace("{dir}", &corpus_dir().display().to_string())
            .replace("{search}", &search.join(", "))
    }

    fn agentctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_agentctl"))
            .args(args)
            .env("NODE_AGENT_PROFILE_PATH", self.profiles.path())
            .env("NODE_AGENT_HOST_ROOT", self.host.path())
            .output()
            .unwrap()
    }
}

/// Asserts agentctl rejected its input: exit 2, nothing on stdout, exactly this on stderr.
fn assert_invalid(out: &Output, expected: &str, what: &str) -> Result<(), String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!("agentctl: error: {expected}\n");
    if out.status.code() != Some(2) || !stdout.is_empty() || stderr != want {
        return Err(format!(
            "{what}: exit {:?}\n  stdout: {stdout:?}\n  stderr: {stderr:?}\n  wanted: {want:?}",
            out.status.code()
        ));
    }
    Ok(())
}

#[test]
fn corpus_and_table_list_the_same_cases() {
    corpus::assert_corpus_matches(&corpus_dir(), CASES);
}

#[test]
fn library_rejects_each_case_with_its_message() {
    let env = Env::new();
    corpus::for_each_case(CASES, |case, expected| {
        let expected = env.expected(expected);
        match profile::load(case_path(case).to_str().unwrap(), &env.search()) {
            Ok(p) => Err(format!("{case}: loaded as {p:?}")),
            // Everything wrong inside a file is `Invalid`, with a position.
            Err(e @ ProfileError::Invalid { .. }) if e.to_string() == expected => Ok(()),
            Err(e) => Err(format!(
                "{case}:\n  got:    {e}\n  wanted: {expected}\n  ({e:?})"
            )),
        }
    });
}

#[test]
fn profile_check_rejects_each_case_with_exit_2() {
    let env = Env::new();
    corpus::for_each_case(CASES, |case, expected| {
        let file = case_path(case);
        let out = env.agentctl(&["profile", "check", file.to_str().unwrap()]);
        assert_invalid(&out, &env.expected(expected), case)
    });
}

#[test]
fn tune_verify_rejects_each_case_with_exit_2() {
    let env = Env::new();
    corpus::for_each_case(CASES, |case, expected| {
        let file = case_path(case);
        let out = env.agentctl(&["tune", "verify", "--profile", file.to_str().unwrap()]);
        assert_invalid(&out, &env.expected(expected), case)?;
        // The JSON output mode fails the same way: no half-written document on stdout.
        let out = env.agentctl(&["tune", "verify", "-o", "json", "-p", file.to_str().unwrap()]);
        assert_invalid(&out, &env.expected(expected), case)
    });
}

#[test]
fn profile_not_found_by_name_lists_the_searched_directories() {
    let env = Env::new();
    let expected = env.expected("profile \"nosuch\" not found; searched {search}");
    let err = profile::load("nosuch", &env.search()).unwrap_err();
    assert!(matches!(err, ProfileError::NotFound { .. }), "{err:?}");
    assert_eq!(err.to_string(), expected);
    for args in [
        &["tune", "verify", "--profile", "nosuch"][..],
        &["tune", "show", "--profile", "nosuch"],
        &["profile", "check", "nosuch"],
    ] {
        assert_invalid(&env.agentctl(args), &expected, &args.join(" ")).unwrap();
    }
}

#[test]
fn invalid_profile_names_and_missing_files_are_invalid_input() {
    let env = Env::new();
    let bad_name = "invalid profile name \"no such\": 1-64 characters of letters, digits, '-', \
                    '_', '.', starting with a letter or digit";
    let err = profile::load("no such", &env.search()).unwrap_err();
    assert_eq!(err.to_string(), bad_name);
    assert_invalid(
        &env.agentctl(&["tune", "verify", "--profile", "no such"]),
        bad_name,
        "bad name",
    )
    .unwrap();

    let missing = env.profiles.path().join("absent.toml");
    let err = profile::load(missing.to_str().unwrap(), &env.search()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("failed to read profile {}", missing.display())
    );
    let cause = std::error::Error::source(&err).map(|e| e.to_string());
    assert_eq!(
        cause.as_deref(),
        Some("No such file or directory (os error 2)")
    );
    // agentctl prints the chain: the cause once.
    let expected = format!(
        "failed to read profile {}: No such file or directory (os error 2)",
        missing.display()
    );
    assert_invalid(
        &env.agentctl(&["profile", "check", missing.to_str().unwrap()]),
        &expected,
        "missing file",
    )
    .unwrap();
}

/// Every file and directory under `root`: type, mode, size, mtime and contents.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, Option<SystemTime>, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let contents = if meta.is_dir() {
                todo.push(path.clone());
                Vec::new()
            } else if meta.file_type().is_symlink() {
                std::fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                std::fs::read(&path).unwrap()
            };
            let mtime = (!meta.is_dir()).then(|| meta.modified().unwrap());
            let rel = path.strip_prefix(root).unwrap().to_owned();
            out.insert(rel, (meta.permissions().mode(), mtime, contents));
        }
    }
    out
}

/// A small host: the files trading-latency-like profiles read.
fn write_host(root: &Path) {
    let files: &[(&str, &str)] = &[
        ("proc/sys/vm/swappiness", "60\n"),
        ("proc/sys/net/core/somaxconn", "4096\n"),
        ("proc/sys/net/ipv4/tcp_rmem", "4096\t131072\t6291456\n"),
        ("proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n"),
        (
            "sys/kernel/mm/transparent_hugepage/enabled",
            "always [madvise] never\n",
        ),
        ("sys/devices/system/cpu/online", "0-3\n"),
        (
            "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor",
            "powersave\n",
        ),
        ("sys/block/nvme0n1/queue/scheduler", "[none] mq-deadline\n"),
        (
            "etc/security/limits.d/90-local.conf",
            "* soft nofile 1024\n",
        ),
        ("etc/sysctl.d/99-sysctl.conf", "vm.swappiness = 60\n"),
        ("etc/fstab", "/dev/nvme0n1p1 /data xfs defaults 0 2\n"),
        (
            "proc/self/mounts",
            "/dev/nvme0n1p1 /data xfs rw,relatime 0 0\n",
        ),
    ];
    for (rel, text) in files {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
}

#[test]
fn invalid_input_changes_nothing_on_the_host() {
    let env = Env::new();
    write_host(env.host.path());
    // Read-only bits too: a future apply must not "fix" permissions either.
    let ro = env.host.path().join("proc/sys/net/core/somaxconn");
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o444)).unwrap();
    let before = snapshot(env.host.path());
    assert!(before.len() > 10, "fixture not written: {before:?}");

    // The fixture is the host agentctl reads: a valid profile sees its values.
    let valid = env.profiles.path().join("valid.toml");
    std::fs::write(&valid, "[sysctl]\n\"vm.swappiness\" = 10\n").unwrap();
    let out = env.agentctl(&["tune", "verify", "--profile", valid.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.lines().any(|l| l
            .split_whitespace()
            .eq(["drift", "vm.swappiness", "10", "60"])),
        "{stdout}"
    );

    for (case, expected) in CASES {
        let file = case_path(case);
        let out = env.agentctl(&["tune", "verify", "--profile", file.to_str().unwrap()]);
        assert_invalid(&out, &env.expected(expected), case).unwrap();
    }
    assert_eq!(snapshot(env.host.path()), before);
}
