//! node-agentd as its package installs it, under a real systemd (a booted nspawn container):
//! the shipped unit file (Type=notify, ProtectSystem=strict and its ReadWritePaths=, the
//! capability bounding set, RuntimeDirectory=), the shipped profiles, journald as the log sink
//! (drift and audit records with their fields), agentctl talking to the daemon over its socket
//! (status, verify, apply, rollback), the capabilities the daemon keeps per profile, reload
//! (SIGHUP: a new profile verified at once, an invalid one refused), restart and stop. A second
//! container has the daemon listen with mutual TLS (`agentctl certs generate` made inside it)
//! and drives the stand-in trading units through it with `agentctl --remote`: units status,
//! control and the platform sequence, as observer (refused) and operator (audited).
//!
//! The binaries are this build's `target/debug/node-agentd` and `target/debug/agentctl` (the
//! container is the same Debian release as the build host): build them first with
//! `cargo build -p node-agent` (`cargo test --workspace` does).
//!
//! Opt-in: `NODE_AGENT_SYSTEMD_TESTS=1`, as root (see the crate docs).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use node_agent_e2e::nspawn::{self, BootOptions, Container};
use node_agent_e2e::standin::{self, UnitSpec};
use node_agent_e2e::systemd_tests_enabled;

/// The unit file the package ships, compiled in so an edit of it rebuilds this test.
const UNIT_FILE: &str = include_str!("../../systemd/node-agentd.service");
const SOCKET: &str = "/run/node-agent/agent.sock";
const ADMIN_GROUP: &str = "node-agent-admin";

/// The settings the test starts with: the shipped network-latency profile, observe mode, a
/// short verify interval so the watch loop runs several rounds within the test.
const SETTINGS: &str = "[agent]\nprofile = \"network-latency\"\nmode = \"observe\"\n\
                        verify_interval = \"2s\"\n";

/// The profile reload switches to: only bounds the container meets, one of them on a sysctl the
/// kernel guards with CAP_SYS_ADMIN (so a restart with it keeps that capability).
const RELOAD_PROFILE_PATH: &str = "/etc/node-agent/profiles/e2e-reload.toml";
const RELOAD_PROFILE: &str = "[profile]\nname = \"e2e-reload\"\n\
                              description = \"node-agent-e2e: reload and capabilities\"\n\n\
                              [sysctl]\n\"net.ipv4.tcp_fastopen\" = { min = 1 }\n\
                              \"kernel.kptr_restrict\" = { min = 0 }\n";

/// The profile apply and rollback run with: one sysctl the container can write (its own network
/// namespace's; /proc/sys is read-only in the container otherwise).
const APPLY_PROFILE_PATH: &str = "/etc/node-agent/profiles/e2e-apply.toml";
const APPLY_PROFILE: &str = "[profile]\nname = \"e2e-apply\"\n\
                             description = \"node-agent-e2e: apply and rollback through the daemon\"\n\n\
                             [sysctl]\n\"net.ipv4.tcp_fastopen\" = 3\n";

/// The sysctl that drifts inside the container under network-latency: the profile wants 3, and
/// the container's own network namespace (--private-network) starts with the kernel's default
/// 1, whatever tests on the host do to the host's value.
const DRIFTING_SYSCTL: &str = "net.ipv4.tcp_fastopen";

/// Capability numbers (linux/capability.h) of the unit's CapabilityBoundingSet.
const CAP_CHOWN: u32 = 0;
const CAP_SETPCAP: u32 = 8;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;

/// Deadline of one systemctl start/stop/reload/restart (a stuck job is a failure, not a hang).
const JOB_DEADLINE: &str = "30";
/// How long the journal, the daemon status or the watch loop may take to show a change.
const SETTLE: Duration = Duration::from_secs(20);

/// `systemctl VERB node-agentd`, bounded by [`JOB_DEADLINE`]; panics with the unit's status and
/// journal when it fails. Returns how long it took.
fn systemctl(container: &Container, verb: &str) -> Duration {
    let started = Instant::now();
    let (code, out, err) =
        container.run(&["timeout", JOB_DEADLINE, "systemctl", verb, "node-agentd"]);
    let took = started.elapsed();
    assert_eq!(
        code,
        0,
        "systemctl {verb} node-agentd failed (exit {code}{}) after {took:?}: {out}{err}\n{}",
        if code == 124 { ": timed out" } else { "" },
        container.node_agentd_diagnosis(60)
    );
    took
}

/// `systemctl show -p P1,P2,… node-agentd` as a map.
fn show(container: &Container, props: &[&str]) -> BTreeMap<String, String> {
    show_unit(container, "node-agentd", props)
}

/// `systemctl show -p P1,P2,… UNIT` as a map.
fn show_unit(container: &Container, unit: &str, props: &[&str]) -> BTreeMap<String, String> {
    let joined = props.join(",");
    let (code, out, err) = container.run(&["systemctl", "show", "-p", &joined, unit]);
    assert_eq!(code, 0, "systemctl show {unit}: {err}");
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Calls `probe` until it gives `Some`, at most until `within` has passed; between attempts a
/// short, growing pause (the daemon, systemd and journald are other processes: there is no
/// event to wait on from here). Panics with the last observation and the unit's diagnosis.
fn poll<T>(
    container: &Container,
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(20);
    loop {
        let last = match probe() {
            Ok(v) => return v,
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            panic!(
                "{what}: not within {within:?}; last seen: {last}\n{}",
                container.node_agentd_diagnosis(60)
            );
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// The daemon's journal as JSON records (`journalctl -u node-agentd -o json`).
fn journal_records(container: &Container) -> Vec<serde_json::Value> {
    let (code, out, err) = container.run(&[
        "journalctl",
        "--no-pager",
        "-u",
        "node-agentd",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "journalctl: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn field<'a>(record: &'a serde_json::Value, name: &str) -> &'a str {
    record[name].as_str().unwrap_or("")
}

/// Waits until the daemon's journal has a record whose MESSAGE contains `text`.
fn journal_has(container: &Container, text: &str) {
    poll(container, &format!("journal line {text:?}"), SETTLE, || {
        let records = journal_records(container);
        if records.iter().any(|r| field(r, "MESSAGE").contains(text)) {
            Ok(())
        } else {
            Err(format!("{} records, none with it", records.len()))
        }
    })
}

/// Waits for the drift record of `key` with `transition` (a structured journald record: the
/// fields come from the daemon's log record, not from parsing the message).
fn drift_record(container: &Container, key: &str, transition: &str) -> serde_json::Value {
    poll(
        container,
        &format!("drift record {transition} {key}"),
        SETTLE,
        || {
            let records = journal_records(container);
            records
                .iter()
                .find(|r| field(r, "KEY") == key && field(r, "TRANSITION") == transition)
                .cloned()
                .ok_or_else(|| {
                    let keyed: Vec<String> = records
                        .iter()
                        .filter(|r| r.get("KEY").is_some())
                        .map(|r| format!("{} {}", field(r, "TRANSITION"), field(r, "KEY")))
                        .collect();
                    format!("drift records: {keyed:?}")
                })
        },
    )
}

/// A capability set line of /proc/PID/status (`CapEff:`, …) as a bit mask.
fn cap_mask(status: &str, name: &str) -> u64 {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

fn status_line<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim()
}

fn bits(caps: &[u32]) -> u64 {
    caps.iter().fold(0, |m, c| m | 1 << c)
}

/// The daemon's MainPID (in the container's PID namespace), checking it is active and running.
fn running_pid(container: &Container) -> u32 {
    let s = show(container, &["MainPID", "ActiveState", "SubState"]);
    assert_eq!(
        (s["ActiveState"].as_str(), s["SubState"].as_str()),
        ("active", "running"),
        "{s:?}\n{}",
        container.node_agentd_diagnosis(60)
    );
    let pid: u32 = s["MainPID"].parse().unwrap();
    assert_ne!(pid, 0, "{s:?}");
    pid
}

/// /proc/PID/status of the daemon, read inside the container.
fn proc_status(container: &Container, pid: u32) -> String {
    container
        .exec_ok(["cat", &format!("/proc/{pid}/status")])
        .unwrap()
}

/// `agentctl -o json daemon status` inside: exit code and the status.
fn daemon_status(container: &Container) -> (i32, serde_json::Value) {
    let (code, out, err) = container.run(&["agentctl", "-o", "json", "daemon", "status"]);
    let status = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("daemon status (exit {code}): {e}: {out}{err}"));
    (code, status)
}

/// The per-mount options of the mount `path` is on, in a mountinfo text: the topmost mount
/// whose mount point is the longest whole-component prefix of `path`.
fn mount_options<'a>(mountinfo: &'a str, path: &str) -> &'a str {
    let covers = |point: &str| {
        point == "/"
            || path == point
            || path
                .strip_prefix(point)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    let mut best: Option<(usize, &str)> = None;
    for line in mountinfo.lines() {
        let mut fields = line.split(' ').skip(4);
        let (Some(point), Some(options)) = (fields.next(), fields.next()) else {
            continue;
        };
        // Later lines are mounted on top of earlier ones at the same point.
        if covers(point) && best.is_none_or(|(len, _)| point.len() >= len) {
            best = Some((point.len(), options));
        }
    }
    best.unwrap_or_else(|| panic!("no mount covers {path} in\n{mountinfo}"))
        .1
}

/// Points agent.profile at `profile` and sets verify_interval (the rest of [`SETTINGS`]
/// unchanged).
fn set_settings(container: &Container, profile: &str, verify_interval: &str) {
    let settings = SETTINGS
        .replace("\"network-latency\"", &format!("\"{profile}\""))
        .replace("\"2s\"", &format!("\"{verify_interval}\""));
    container
        .write_file("/etc/node-agent/agent.toml", settings, 0o644)
        .unwrap();
}

/// Waits until `agentctl daemon status` names `profile` with the verdict `code` (0 compliant, 1
/// findings) of a verify of that profile; returns the status.
fn wait_profile(container: &Container, profile: &str, code: i32) -> serde_json::Value {
    poll(
        container,
        &format!("daemon on profile {profile}, exit {code}"),
        SETTLE,
        || {
            let (got, status) = daemon_status(container);
            if status["profile"]["name"] == profile && got == code {
                Ok(status)
            } else {
                Err(format!("exit {got}: {status}"))
            }
        },
    )
}

/// The value of sysctl `key` inside the container (its network namespace for net.*).
fn sysctl(container: &Container, key: &str) -> String {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    container.exec_ok(["cat", &path]).unwrap().trim().to_owned()
}

/// Installs this build's binaries, the unit file (enabled), the shipped and the test profiles,
/// the starting settings, the admin group, and the stand-in trading units of `standins`.
fn install(container: &Container, standins: &[UnitSpec]) {
    container
        .write_file(
            "/usr/bin/node-agentd",
            nspawn::agent_binary("node-agentd"),
            0o755,
        )
        .unwrap();
    container
        .write_file("/usr/bin/agentctl", nspawn::agent_binary("agentctl"), 0o755)
        .unwrap();
    container
        .write_file("/etc/systemd/system/node-agentd.service", UNIT_FILE, 0o644)
        .unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tuning-profiles");
    let mut profiles = 0;
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            container
                .write_file(
                    &format!("/usr/share/node-agent/profiles/{name}"),
                    std::fs::read(&path).unwrap(),
                    0o644,
                )
                .unwrap();
            profiles += 1;
        }
    }
    assert!(profiles >= 3, "shipped profiles in {}", shipped.display());
    container
        .write_file("/etc/node-agent/agent.toml", SETTINGS, 0o644)
        .unwrap();
    container
        .write_file(RELOAD_PROFILE_PATH, RELOAD_PROFILE, 0o644)
        .unwrap();
    container
        .write_file(APPLY_PROFILE_PATH, APPLY_PROFILE, 0o644)
        .unwrap();
    container
        .exec_ok(["groupadd", "--system", ADMIN_GROUP])
        .unwrap();
    standin::install_standin_units(container, standins).unwrap();
    container.daemon_reload().unwrap();
    // As the package does: enabled, so it starts at boot (and stays loaded when stopped).
    container
        .exec_ok(["systemctl", "enable", "node-agentd"])
        .unwrap();
    assert!(
        container
            .root()
            .join("etc/systemd/system/multi-user.target.wants/node-agentd.service")
            .symlink_metadata()
            .is_ok(),
        "WantedBy=multi-user.target"
    );
}

#[test]
fn node_agentd_runs_under_systemd_with_its_unit_file() {
    if !systemd_tests_enabled("node_agentd_runs_under_systemd_with_its_unit_file") {
        return;
    }
    let test_started = Instant::now();
    // Dropped on any panic below, which powers the container off and removes it.
    let mut container = Container::boot("na-daemon-systemd", BootOptions::new()).unwrap();
    let booted = test_started.elapsed();
    install(&container, &UnitSpec::trading_stack());

    // --- Start: Type=notify, so `systemctl start` returns once the daemon sent READY=1.
    let (code, out, _) = container.run(&["agentctl", "daemon", "status"]);
    assert_eq!(code, 3, "no daemon yet: {out}");
    let start = systemctl(&container, "start");
    let pid = running_pid(&container);
    let unit = show(
        &container,
        &["Type", "NRestarts", "CapabilityBoundingSet", "Result"],
    );
    assert_eq!(unit["Type"], "notify");
    assert_eq!(
        unit["NRestarts"],
        "0",
        "{}",
        container.node_agentd_diagnosis(60)
    );
    assert_eq!(unit["Result"], "success");
    let mut bounding: Vec<&str> = unit["CapabilityBoundingSet"].split(' ').collect();
    bounding.sort_unstable();
    assert_eq!(
        bounding,
        [
            "cap_chown",
            "cap_net_bind_service",
            "cap_setpcap",
            "cap_sys_admin",
            "cap_sys_ptrace"
        ],
        "the unit's bounding set, as systemd parsed it"
    );

    // The socket: mode 0660, group node-agent-admin, owner root.
    let stat = container
        .exec_ok(["stat", "-c", "%F %a %U %G", SOCKET])
        .unwrap();
    assert_eq!(stat.trim_end(), "socket 660 root node-agent-admin");

    // --- The journal: start lines, and a drift record with its structured fields.
    journal_has(&container, "capabilities kept: none");
    journal_has(&container, &format!("serving on {SOCKET}"));
    journal_has(&container, "watching profile network-latency");
    journal_has(&container, "running in a private mount namespace");
    let drift = drift_record(&container, DRIFTING_SYSCTL, "new");
    assert_eq!(field(&drift, "CLASS"), "sysctl", "{drift:#}");
    assert_eq!(field(&drift, "EXPECTED"), "3", "{drift:#}");
    assert_eq!(field(&drift, "ACTUAL"), "1", "{drift:#}");
    assert_eq!(field(&drift, "STATUS"), "drift", "{drift:#}");
    assert_eq!(
        field(&drift, "SYSLOG_IDENTIFIER"),
        "node-agentd",
        "{drift:#}"
    );
    assert_eq!(field(&drift, "PRIORITY"), "4", "a new drift is a warning");
    assert_eq!(field(&drift, "_PID"), pid.to_string(), "{drift:#}");
    let (code, status) = daemon_status(&container);
    assert_eq!(code, 1, "drift is a finding: {status:#}");
    assert_eq!(status["mode"], "observe", "{status:#}");
    assert_eq!(status["summary"]["error"], 0, "{status:#}");
    assert!(
        status["summary"]["drift"].as_u64().unwrap() >= 1,
        "{status:#}"
    );
    // Steady state is silent: after two more verify rounds (verify_interval 2s) there is still
    // one record for the drifted item.
    let first = status["last_verify"].as_u64().unwrap();
    poll(&container, "two more verify rounds", SETTLE, || {
        let (_, status) = daemon_status(&container);
        match status["last_verify"].as_u64() {
            Some(t) if t >= first + 4 => Ok(()),
            other => Err(format!("last_verify {other:?}, first {first}")),
        }
    });
    let records = journal_records(&container)
        .into_iter()
        .filter(|r| field(r, "KEY") == DRIFTING_SYSCTL)
        .count();
    assert_eq!(records, 1, "one transition, one record");

    // --- agentctl inside, through the daemon.
    let (code, out, err) = container.run(&["agentctl", "daemon", "status"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains(
            "profile   network-latency (/usr/share/node-agent/profiles/network-latency.toml)"
        ),
        "{out}"
    );
    assert!(out.contains("mode      observe"), "{out}");
    let (code, out, err) = container.run(&["agentctl", "-o", "json", "tune", "verify"]);
    assert_eq!(code, 1, "drift: {out}{err}");
    assert!(
        !err.contains("not running"),
        "verify must go through the daemon: {err}"
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let item = report["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["key"] == DRIFTING_SYSCTL)
        .unwrap_or_else(|| panic!("no {DRIFTING_SYSCTL} in {report:#}"));
    assert_eq!(item["status"], "drift", "{item:#}");
    let (code, out, err) = container.run(&["agentctl", "-o", "json", "units", "status"]);
    assert_eq!(code, 1, "the trading units are not running: {out}{err}");
    let units: serde_json::Value = serde_json::from_str(&out).unwrap();
    let units: Vec<(&str, &str)> = units
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["unit"].as_str().unwrap(),
                u["load_state"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        units,
        [
            ("market-data.service", "loaded"),
            ("risk-engine.service", "loaded"),
            ("trading-engine.service", "loaded"),
            ("order-gateway.service", "loaded"),
        ]
    );

    // --- Hardening: network-latency needs no capability, so the daemon keeps none, not even in
    // its bounding set (which the unit already limits to its five).
    let proc = proc_status(&container, pid);
    let unit_bounding = bits(&[
        CAP_CHOWN,
        CAP_SETPCAP,
        CAP_NET_BIND_SERVICE,
        CAP_SYS_PTRACE,
        CAP_SYS_ADMIN,
    ]);
    assert_eq!(
        cap_mask(&proc, "CapBnd:") & !unit_bounding,
        0,
        "beyond the unit's set: {proc}"
    );
    for set in ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(cap_mask(&proc, set), 0, "{set} of the daemon:\n{proc}");
    }
    assert_eq!(status_line(&proc, "NoNewPrivs:"), "1", "{proc}");
    assert_eq!(
        status_line(&proc, "Seccomp:"),
        "2",
        "a filter is loaded: {proc}"
    );
    // ProtectSystem=strict: / read-only for the daemon, the ReadWritePaths writable.
    let mountinfo = container
        .exec_ok(["cat", &format!("/proc/{pid}/mountinfo")])
        .unwrap();
    for (path, mode) in [
        ("/", "ro"),
        ("/usr/bin", "ro"),
        ("/etc/passwd", "ro"),
        ("/etc/sysctl.d", "rw"),
        ("/etc/security/limits.d", "rw"),
        ("/etc/systemd", "rw"),
        ("/var/lib/node-agent", "rw"),
        ("/run/node-agent", "rw"),
    ] {
        let options = mount_options(&mountinfo, path);
        assert!(
            options.split(',').next() == Some(mode),
            "{path} should be {mode} for the daemon: {options}\n{mountinfo}"
        );
    }

    // --- Reload (SIGHUP): same process, the new profile in effect, the old drift resolved.
    set_settings(&container, "e2e-reload", "2s");
    let reload = systemctl(&container, "reload");
    let status = wait_profile(&container, "e2e-reload", 0);
    assert_eq!(status["profile"]["path"], RELOAD_PROFILE_PATH, "{status:#}");
    poll(&container, "active again after reload", SETTLE, || {
        let s = show(&container, &["ActiveState", "SubState", "MainPID"]);
        if s["ActiveState"] == "active" && s["SubState"] == "running" {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    });
    assert_eq!(running_pid(&container), pid, "reload keeps the process");
    journal_has(&container, "SIGHUP: settings reloaded; profile e2e-reload");
    let resolved = drift_record(&container, DRIFTING_SYSCTL, "resolved");
    assert_eq!(field(&resolved, "STATUS"), "pass", "{resolved:#}");
    // log's Info, which systemd-journal-logger writes as notice (5).
    assert_eq!(
        field(&resolved, "PRIORITY"),
        "5",
        "a resolution is not a warning"
    );
    let (code, status) = daemon_status(&container);
    assert_eq!(code, 0, "e2e-reload is met in the container: {status:#}");
    // Capabilities dropped at start stay dropped: a reload cannot regain them.
    assert_eq!(
        cap_mask(&proc_status(&container, pid), "CapBnd:"),
        0,
        "after reload"
    );

    // An invalid profile on reload is refused; the daemon keeps running with the old one.
    set_settings(&container, "no-such-profile", "2s");
    systemctl(&container, "reload");
    journal_has(&container, "SIGHUP: settings refused, the old ones stay");
    assert_eq!(running_pid(&container), pid);
    let (_, status) = daemon_status(&container);
    assert_eq!(status["profile"]["name"], "e2e-reload", "{status:#}");
    // From here on the watch loop never runs a round by itself (verify_interval 1h): what is
    // verified is verified at start, on SIGHUP, or on request.
    set_settings(&container, "e2e-reload", "1h");

    // --- Restart with a profile that has a CAP_SYS_ADMIN sysctl: exactly that one is kept
    // (the container's systemd has it to give: nspawn keeps CAP_SYS_ADMIN).
    let restart = systemctl(&container, "restart");
    let restarted = running_pid(&container);
    assert_ne!(restarted, pid, "restart gives a new process");
    let proc = proc_status(&container, restarted);
    assert_eq!(cap_mask(&proc, "CapEff:"), bits(&[CAP_SYS_ADMIN]), "{proc}");
    assert_eq!(cap_mask(&proc, "CapBnd:"), bits(&[CAP_SYS_ADMIN]), "{proc}");
    assert_eq!(cap_mask(&proc, "CapAmb:"), 0, "{proc}");

    // --- Apply and rollback through the daemon, inside its sandbox: the sysctl written, its
    // sysctl.d file under ReadWritePaths=, the journal and audit.log in StateDirectory=, the
    // audit records in journald.
    // The reload verifies the new profile at once (no watch round is due for an hour): the
    // status pairs e2e-apply with its own report, whose tcp_fastopen drifts.
    set_settings(&container, "e2e-apply", "1h");
    systemctl(&container, "reload");
    let status = wait_profile(&container, "e2e-apply", 1);
    assert_eq!(status["summary"]["drift"], 1, "{status:#}");
    assert_eq!(sysctl(&container, DRIFTING_SYSCTL), "1");
    let (code, out, err) = container.run(&["agentctl", "-o", "json", "tune", "apply"]);
    assert_eq!(
        code,
        0,
        "apply through the daemon: {out}{err}\n{}",
        container.node_agentd_diagnosis(60)
    );
    assert!(!err.contains("not running"), "{err}");
    assert_eq!(sysctl(&container, DRIFTING_SYSCTL), "3");
    let persisted = container
        .read_file("/etc/sysctl.d/zz-node-agent.conf")
        .unwrap()
        .expect("apply writes its sysctl.d file");
    assert!(
        persisted.lines().any(|l| l == "net.ipv4.tcp_fastopen = 3"),
        "{persisted}"
    );
    let audit = poll(
        &container,
        "the apply's audit record in the journal",
        SETTLE,
        || {
            journal_records(&container)
                .into_iter()
                .find(|r| {
                    field(r, "NODE_AGENT_ACTION") == "apply"
                        && field(r, "NODE_AGENT_KEY") == DRIFTING_SYSCTL
                })
                .ok_or_else(|| "none yet".to_owned())
        },
    );
    assert_eq!(field(&audit, "NODE_AGENT_AUDIT"), "1", "{audit:#}");
    assert_eq!(field(&audit, "NODE_AGENT_BEFORE"), "1", "{audit:#}");
    assert_eq!(field(&audit, "NODE_AGENT_AFTER"), "3", "{audit:#}");
    assert_eq!(field(&audit, "NODE_AGENT_UID"), "0", "{audit:#}");
    assert_eq!(field(&audit, "_PID"), restarted.to_string(), "{audit:#}");
    let audit_log = container
        .read_file("/var/lib/node-agent/audit.log")
        .unwrap()
        .expect("audit.log in the state directory");
    assert!(
        audit_log.contains("net.ipv4.tcp_fastopen: 1 -> 3"),
        "{audit_log}"
    );
    let (code, out, err) = container.run(&["agentctl", "tune", "rollback"]);
    assert_eq!(code, 0, "rollback through the daemon: {out}{err}");
    assert!(!err.contains("not running"), "{err}");
    assert_eq!(sysctl(&container, DRIFTING_SYSCTL), "1");
    assert_eq!(
        container
            .read_file("/etc/sysctl.d/zz-node-agent.conf")
            .unwrap(),
        None,
        "rollback removes the file apply created"
    );

    // --- Stop: SIGTERM, a clean exit 0 (not death by the signal, not a kill after
    // TimeoutStopSec=). The unit is enabled, so systemd keeps it loaded and its exit status
    // stays readable after the stop.
    let stop = systemctl(&container, "stop");
    let s = show(
        &container,
        &[
            "ActiveState",
            "Result",
            "ExecMainCode",
            "ExecMainStatus",
            "MainPID",
        ],
    );
    assert_eq!(s["ActiveState"], "inactive", "{s:?}");
    assert_eq!(
        s["Result"],
        "success",
        "{s:?}\n{}",
        container.node_agentd_diagnosis(60)
    );
    assert_eq!(
        (s["ExecMainCode"].as_str(), s["ExecMainStatus"].as_str()),
        ("1", "0"),
        "CLD_EXITED with 0, not CLD_KILLED by SIGTERM: {s:?}"
    );
    assert_eq!(s["MainPID"], "0", "{s:?}");
    let (code, _, _) = container.run(&["test", "-e", SOCKET]);
    assert_ne!(code, 0, "{SOCKET} left behind");
    let (code, _, err) = container.run(&["agentctl", "daemon", "status"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("node-agentd is not running"), "{err}");
    let (_, _, err) = container.run(&["agentctl", "tune", "verify"]);
    assert!(
        err.contains("node-agentd is not running; verifying profile e2e-apply locally"),
        "without the daemon, verify says so: {err}"
    );

    // The socket is gone because the daemon removed it, not only because systemd removes the
    // RuntimeDirectory= after the stop: with the directory kept, the socket must still be gone.
    container
        .write_file(
            "/etc/systemd/system/node-agentd.service.d/e2e-preserve.conf",
            "[Service]\nRuntimeDirectoryPreserve=yes\n",
            0o644,
        )
        .unwrap();
    container.daemon_reload().unwrap();
    systemctl(&container, "start");
    running_pid(&container);
    systemctl(&container, "stop");
    let left = container
        .exec_ok(["ls", "-A", "/run/node-agent"])
        .expect("/run/node-agent kept by RuntimeDirectoryPreserve=yes");
    assert!(
        !left.lines().any(|f| f == "agent.sock"),
        "the daemon left its socket behind: {left}"
    );

    let name = container.name().to_owned();
    let power_off = container.shutdown().unwrap();
    let left = nspawn::leftovers(&name).unwrap();
    assert!(left.is_empty(), "container {name} left behind: {left:?}");
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "timings: boot {booted:?} (copy {:?}), start {start:?}, reload {reload:?}, restart \
             {restart:?}, stop {stop:?}, power-off {power_off:?}, whole test {:?}",
            container.timings().copy,
            test_started.elapsed()
        );
    }
}

// --- agentctl --remote: units and platform through the daemon's mutual-TLS listener.

/// Where `agentctl certs generate` writes the test PKI inside the container.
const TLS_DIR: &str = "/etc/node-agent/tls";
/// The daemon's TCP listener inside the container (its own network namespace: only loopback).
const REMOTE_ADDR: &str = "127.0.0.1:9443";
/// The daemon's audit log (StateDirectory=).
const AUDIT_LOG: &str = "/var/lib/node-agent/audit.log";
/// Deadline of one agentctl command inside the container (its own RPC timeout is 600 s).
const AGENTCTL_DEADLINE: &str = "60";
/// How long each stand-in drains on SIGTERM: long enough that a stop out of order would show
/// in the stand-ins' log, short enough for the platform sequence.
const STANDIN_DRAIN: Duration = Duration::from_millis(300);
/// The unit the single-unit operations work on.
const CONTROLLED: &str = "trading-engine.service";

/// The settings of the remote test: the shipped network-latency profile observed (no verify
/// round of its own during the test), the TLS listener with the generated files, one observer
/// and one operator certificate, and the stand-ins in platform order with deadlines well above
/// their drain and well below the test's patience.
fn remote_settings() -> String {
    let order: Vec<String> = standin::TRADING_UNITS
        .iter()
        .map(|u| format!("\"{u}.service\""))
        .collect();
    format!(
        "[agent]\nprofile = \"network-latency\"\nmode = \"observe\"\nverify_interval = \"1h\"\n\n\
         [listen]\ntcp = \"{REMOTE_ADDR}\"\n\n\
         [tls]\ncert = \"{TLS_DIR}/server.crt\"\nkey = \"{TLS_DIR}/server.key\"\n\
         client_ca = \"{TLS_DIR}/ca.crt\"\n\n\
         [roles]\nobservers = [\"watcher\"]\noperators = [\"ops\"]\n\n\
         [units]\norder = [{}]\njob_timeout = \"20s\"\n\
         drain = {{ \"trading-engine.service\" = \"10s\", \"order-gateway.service\" = \"10s\" }}\n",
        order.join(", ")
    )
}

/// The managed units, `<name>.service`, in platform order.
fn managed_units() -> Vec<String> {
    standin::TRADING_UNITS
        .iter()
        .map(|u| format!("{u}.service"))
        .collect()
}

/// `agentctl --remote REMOTE_ADDR` with the certificate of `cn` inside the container, bounded
/// by [`AGENTCTL_DEADLINE`]: exit code, stdout, stderr.
fn remote(container: &Container, cn: &str, args: &[&str]) -> (i32, String, String) {
    let cert = format!("{TLS_DIR}/{cn}.crt");
    let key = format!("{TLS_DIR}/{cn}.key");
    let ca = format!("{TLS_DIR}/ca.crt");
    let mut argv = vec![
        "timeout",
        AGENTCTL_DEADLINE,
        "agentctl",
        "--remote",
        REMOTE_ADDR,
        "--cert",
        &cert,
        "--key",
        &key,
        "--ca",
        &ca,
    ];
    argv.extend_from_slice(args);
    let (code, out, err) = container.run(&argv);
    assert_ne!(
        code,
        124,
        "agentctl {args:?} as {cn}: no answer within {AGENTCTL_DEADLINE} s: {out}{err}\n{}",
        container.node_agentd_diagnosis(60)
    );
    (code, out, err)
}

/// `-o json units status` as `cn` through the daemon: exit code and the parsed list.
fn remote_units(container: &Container, cn: &str) -> (i32, Vec<serde_json::Value>) {
    let (code, out, err) = remote(container, cn, &["-o", "json", "units", "status"]);
    let list: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("units status as {cn} (exit {code}): {e}: {out}{err}"));
    (code, list.as_array().expect("a JSON array").clone())
}

/// ActiveState, SubState and MainPID of a unit, as systemd has them.
/// The status of each `units.<unit>` check of `agentctl health --remote` (observer), in the
/// settings' order; every managed unit must have one.
fn remote_unit_health(container: &Container) -> Vec<String> {
    let (_, out, err) = remote(container, "watcher", &["-o", "json", "health"]);
    let report: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    managed_units()
        .iter()
        .map(|u| {
            let name = format!("units.{u}");
            report["checks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == name.as_str())
                .unwrap_or_else(|| panic!("no {name} check: {report:#}"))["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

fn unit_state(container: &Container, unit: &str) -> (String, String, u32) {
    let s = show_unit(container, unit, &["ActiveState", "SubState", "MainPID"]);
    (
        s["ActiveState"].clone(),
        s["SubState"].clone(),
        s["MainPID"].parse().unwrap(),
    )
}

/// The MainPID of an active, running unit.
fn unit_pid(container: &Container, unit: &str) -> u32 {
    let (active, sub, pid) = unit_state(container, unit);
    assert_eq!(
        (active.as_str(), sub.as_str()),
        ("active", "running"),
        "{unit}"
    );
    assert_ne!(pid, 0, "{unit}");
    pid
}

/// The stand-ins' log, read from the host side of the container's file system.
fn standin_log(container: &Container) -> Vec<standin::LogLine> {
    standin::read_log(container).unwrap()
}

/// Waits until stand-in `unit` (with `.service`) logged its start as `pid`: a `Type=simple`
/// start job is done at fork, before the stand-in set its SIGTERM trap and logged.
fn wait_standin_started(container: &Container, unit: &str, pid: u32) {
    let name = unit.trim_end_matches(".service");
    poll(
        container,
        &format!("stand-in {name} logs its start as pid {pid}"),
        SETTLE,
        || {
            let log = standin::read_log(container).map_err(|e| e.to_string())?;
            if log
                .iter()
                .any(|l| l.unit == name && l.event == standin::Event::Start { pid })
            {
                Ok(())
            } else {
                Err(format!("{log:?}"))
            }
        },
    );
}

/// Position of the first `event` of stand-in `name` in `log`.
fn log_at(log: &[standin::LogLine], name: &str, event: standin::Event) -> usize {
    log.iter()
        .position(|l| l.unit == name && l.event == event)
        .unwrap_or_else(|| panic!("no {event:?} of {name} in {log:#?}"))
}

/// The daemon's audit.log, one JSON record a line (empty before the first record).
fn audit_records(container: &Container) -> Vec<serde_json::Value> {
    container
        .read_file(AUDIT_LOG)
        .unwrap()
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{AUDIT_LOG}: {e}: {l}")))
        .collect()
}

/// The audit.log records whose NODE_AGENT_ACTION is `action`.
fn audited(container: &Container, action: &str) -> Vec<serde_json::Value> {
    audit_records(container)
        .into_iter()
        .filter(|r| r["fields"]["NODE_AGENT_ACTION"] == action)
        .collect()
}

#[test]
fn remote_units_and_platform_over_mutual_tls() {
    if !systemd_tests_enabled("remote_units_and_platform_over_mutual_tls") {
        return;
    }
    let test_started = Instant::now();
    // Dropped on any panic below, which powers the container off and removes it.
    let mut container = Container::boot("na-daemon-remote", BootOptions::new()).unwrap();
    let standins: Vec<UnitSpec> = UnitSpec::trading_stack()
        .into_iter()
        .map(|s| s.drain(STANDIN_DRAIN))
        .collect();
    install(&container, &standins);
    let units = managed_units();

    // --- The test PKI, made inside the container as an operator would on a test host.
    let (code, out, err) = container.run(&[
        "timeout",
        AGENTCTL_DEADLINE,
        "agentctl",
        "certs",
        "generate",
        "--dir",
        TLS_DIR,
        "--server",
        "127.0.0.1",
        "--server",
        "localhost",
        "--observer",
        "watcher",
        "--operator",
        "ops",
    ]);
    assert_eq!(code, 0, "certs generate: {out}{err}");
    for line in [
        format!("cert = \"{TLS_DIR}/server.crt\""),
        format!("key = \"{TLS_DIR}/server.key\""),
        format!("client_ca = \"{TLS_DIR}/ca.crt\""),
        "observers = [\"watcher\"]".to_owned(),
        "operators = [\"ops\"]".to_owned(),
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "the printed settings lack {line:?}:\n{out}"
        );
    }
    assert!(
        out.contains(&format!(
            "agentctl --remote 127.0.0.1:9443 --cert {TLS_DIR}/ops.crt --key {TLS_DIR}/ops.key \
             --ca {TLS_DIR}/ca.crt"
        )),
        "the printed flags name the operator's files: {out}"
    );
    let modes = container
        .exec_ok([
            "stat",
            "-c",
            "%n %a",
            &format!("{TLS_DIR}/server.key"),
            &format!("{TLS_DIR}/watcher.key"),
            &format!("{TLS_DIR}/ops.key"),
        ])
        .unwrap();
    for line in modes.lines() {
        assert!(line.ends_with(" 600"), "keys are 0600: {modes}");
    }

    // --- The stand-ins running, then the daemon with the TLS listener.
    container
        .write_file("/etc/node-agent/agent.toml", remote_settings(), 0o644)
        .unwrap();
    let mut argv = vec!["timeout", JOB_DEADLINE, "systemctl", "start"];
    argv.extend(units.iter().map(String::as_str));
    let (code, out, err) = container.run(&argv);
    assert_eq!(code, 0, "starting the stand-ins: {out}{err}");
    for unit in &units {
        wait_standin_started(&container, unit, unit_pid(&container, unit));
    }
    systemctl(&container, "start");
    let daemon_pid = running_pid(&container);
    journal_has(&container, &format!("serving mutual TLS on {REMOTE_ADDR}"));

    // --- Observer: units status, table and JSON, as systemd sees the units.
    let (code, out, err) = remote(&container, "watcher", &["units", "status"]);
    assert_eq!(code, 0, "all managed units active: {out}{err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    let listed: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    assert_eq!(listed, units, "{out}");
    for row in &rows {
        assert_eq!(row[2..4], ["active", "running"], "{out}");
    }
    let (code, list) = remote_units(&container, "watcher");
    assert_eq!(code, 0, "{list:#?}");
    let names: Vec<&str> = list.iter().map(|u| u["unit"].as_str().unwrap()).collect();
    assert_eq!(names, units, "the settings' order");
    for u in &list {
        let unit = u["unit"].as_str().unwrap();
        let s = show_unit(
            &container,
            unit,
            &["LoadState", "ActiveState", "SubState", "MainPID"],
        );
        assert_eq!(u["load_state"], s["LoadState"].as_str(), "{u:#}");
        assert_eq!(u["active_state"], s["ActiveState"].as_str(), "{u:#}");
        assert_eq!(u["active_state"], "active", "{u:#}");
        assert_eq!(u["sub_state"], s["SubState"].as_str(), "{u:#}");
        assert_eq!(u["main_pid"].to_string(), s["MainPID"], "{u:#}");
    }
    // GetHealth (an observer may ask): every managed unit's check is ok while it runs.
    assert_eq!(remote_unit_health(&container), vec!["ok"; units.len()]);
    // The clock: the unit puts no seccomp filter on adjtimex (no ProtectClock=, which denies
    // @clock). nspawn itself denies @clock to a container without CAP_SYS_TIME (not given: it
    // would let the container set the host's clock), so here the check says why it is unknown.
    let props = show_unit(
        &container,
        "node-agentd.service",
        &["ProtectClock", "SystemCallFilter"],
    );
    assert_eq!(props["ProtectClock"], "no", "{props:?}");
    // Empty, or a deny list ("~…") without adjtimex.
    let filter = &props["SystemCallFilter"];
    assert!(
        filter.is_empty() || (filter.starts_with('~') && !filter.contains("adjtimex")),
        "{props:?}"
    );
    let (_, out, err) = remote(&container, "watcher", &["-o", "json", "health"]);
    let report: serde_json::Value = serde_json::from_str(&out).expect(&err);
    let clock = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "clock.sync")
        .unwrap_or_else(|| panic!("no clock.sync: {report:#}"));
    assert_eq!(clock["status"], "unknown", "{clock:#}");
    assert!(
        clock["message"]
            .as_str()
            .unwrap()
            .contains("adjtimex(2) refused"),
        "{clock:#}"
    );
    // Named units: those only; a unit the daemon does not manage is invalid input.
    let (code, out, err) = remote(
        &container,
        "watcher",
        &["-o", "json", "units", "status", "order-gateway"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let one: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(one[0]["unit"], "order-gateway.service", "{one:#}");
    assert_eq!(one.as_array().unwrap().len(), 1, "{one:#}");
    let (code, out, err) = remote(&container, "watcher", &["units", "status", "ghost"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("ghost.service is not managed by the remote node-agentd"),
        "{err}"
    );

    // --- Observer: no control. Refused by the daemon before anything happens.
    let pid = unit_pid(&container, CONTROLLED);
    let log_before = standin_log(&container).len();
    for args in [
        &["units", "restart", CONTROLLED][..],
        &["units", "stop", CONTROLLED],
        &["platform", "stop"],
    ] {
        let (code, out, err) = remote(&container, "watcher", args);
        assert_eq!(code, 3, "{args:?} as observer: {out}{err}");
        assert!(err.contains("PermissionDenied"), "{args:?}: {err}");
        assert!(
            err.contains("needs the operator role; cert CN=watcher has observer"),
            "{args:?}: {err}"
        );
    }
    journal_has(
        &container,
        "refused /nodeagent.v1.NodeAgent/ControlUnit from TLS client 127.0.0.1:",
    );
    journal_has(
        &container,
        "refused /nodeagent.v1.NodeAgent/PlatformStop from TLS client 127.0.0.1:",
    );
    assert_eq!(
        unit_pid(&container, CONTROLLED),
        pid,
        "an observer restarted it"
    );
    for unit in &units {
        assert_eq!(unit_state(&container, unit).0, "active", "{unit}");
    }
    let log = standin_log(&container);
    assert_eq!(log.len(), log_before, "no stand-in was signalled: {log:#?}");
    assert!(
        audited(&container, "unit-control").is_empty()
            && audited(&container, "platform").is_empty(),
        "a refused call reaches no handler: {:#?}",
        audit_records(&container)
    );

    // --- Operator: restart, stop, start of one unit.
    let (code, out, err) = remote(&container, "ops", &["units", "restart", CONTROLLED]);
    assert_eq!(code, 0, "restart as operator: {out}{err}");
    assert!(
        out.starts_with(&format!("restart {CONTROLLED}")) && out.contains(" done "),
        "{out}"
    );
    let restarted = unit_pid(&container, CONTROLLED);
    assert_ne!(restarted, pid, "restart gives a new MainPID");
    wait_standin_started(&container, CONTROLLED, restarted);
    let log = standin_log(&container);
    let name = CONTROLLED.trim_end_matches(".service");
    let tail = &log[log_before..];
    assert!(
        log_at(tail, name, standin::Event::StopEnd)
            < log_at(tail, name, standin::Event::Start { pid: restarted }),
        "drained, then started again: {tail:#?}"
    );
    for unit in units.iter().filter(|u| *u != CONTROLLED) {
        assert!(
            !tail.iter().any(|l| format!("{}.service", l.unit) == *unit),
            "only {CONTROLLED} was restarted: {tail:#?}"
        );
    }

    let (code, out, err) = remote(
        &container,
        "ops",
        &["-o", "json", "units", "stop", CONTROLLED],
    );
    assert_eq!(code, 0, "stop as operator: {out}{err}");
    let step: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(step["unit"], CONTROLLED, "{step:#}");
    assert_eq!(step["op"], "stop", "{step:#}");
    assert_eq!(step["result"], "done", "{step:#}");
    assert_eq!(step["active_state"], "inactive", "{step:#}");
    let (active, _, stopped_pid) = unit_state(&container, CONTROLLED);
    assert_eq!((active.as_str(), stopped_pid), ("inactive", 0));
    // A managed unit down is a finding for the observer's monitoring.
    let (code, list) = remote_units(&container, "watcher");
    assert_eq!(code, 1, "{list:#?}");
    let down: Vec<&str> = list
        .iter()
        .filter(|u| u["active_state"] != "active")
        .map(|u| u["unit"].as_str().unwrap())
        .collect();
    assert_eq!(down, [CONTROLLED], "{list:#?}");

    let (code, out, err) = remote(&container, "ops", &["units", "start", CONTROLLED]);
    assert_eq!(code, 0, "start as operator: {out}{err}");
    assert!(
        out.starts_with(&format!("start   {CONTROLLED}")) && out.contains(" done "),
        "{out}"
    );
    let started = unit_pid(&container, CONTROLLED);
    assert_ne!(started, restarted);
    wait_standin_started(&container, CONTROLLED, started);

    // Each change is audited with the certificate's name; the change ran as the daemon (uid 0).
    let records = audited(&container, "unit-control");
    let messages: Vec<&str> = records
        .iter()
        .map(|r| r["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        [
            format!("unit {CONTROLLED}: restart -> done"),
            format!("unit {CONTROLLED}: stop -> done"),
            format!("unit {CONTROLLED}: start -> done"),
        ],
        "{records:#?}"
    );
    for r in &records {
        assert_eq!(r["user"], "cert CN=ops", "{r:#}");
        assert_eq!(r["uid"], 0, "{r:#}");
        assert_eq!(r["fields"]["NODE_AGENT_UNIT"], CONTROLLED, "{r:#}");
    }
    // The same records in journald, from the daemon's process.
    let journaled = poll(
        &container,
        "the unit-control audit records in the journal",
        SETTLE,
        || {
            let found: Vec<serde_json::Value> = journal_records(&container)
                .into_iter()
                .filter(|r| field(r, "NODE_AGENT_ACTION") == "unit-control")
                .collect();
            if found.len() == 3 {
                Ok(found)
            } else {
                Err(format!("{found:#?}"))
            }
        },
    );
    for r in &journaled {
        assert_eq!(field(r, "NODE_AGENT_AUDIT"), "1", "{r:#}");
        assert_eq!(field(r, "NODE_AGENT_USER"), "cert CN=ops", "{r:#}");
        assert_eq!(field(r, "NODE_AGENT_UNIT"), CONTROLLED, "{r:#}");
        assert_eq!(field(r, "_PID"), daemon_pid.to_string(), "{r:#}");
    }

    // --- Operator: the platform down in reverse order, each unit drained before the next.
    let mark = standin_log(&container).len();
    let (code, out, err) = remote(&container, "ops", &["-o", "json", "platform", "stop"]);
    assert_eq!(code, 0, "platform stop as operator: {out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(report["failed"].is_null(), "{report:#}");
    assert_eq!(report["op"], "stop", "{report:#}");
    let steps: Vec<(&str, &str)> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["unit"].as_str().unwrap(), s["result"].as_str().unwrap()))
        .collect();
    let reversed: Vec<(&str, &str)> = units.iter().rev().map(|u| (u.as_str(), "done")).collect();
    assert_eq!(steps, reversed, "{report:#}");
    for unit in &units {
        let (active, _, pid) = unit_state(&container, unit);
        assert_eq!((active.as_str(), pid), ("inactive", 0), "{unit}");
    }
    let log = standin_log(&container);
    let tail = &log[mark..];
    let names: Vec<&str> = standin::TRADING_UNITS.iter().rev().copied().collect();
    for pair in names.windows(2) {
        assert!(
            log_at(tail, pair[0], standin::Event::StopEnd)
                < log_at(tail, pair[1], standin::Event::StopBegin),
            "{} must be drained before {} stops: {tail:#?}",
            pair[0],
            pair[1]
        );
    }
    for name in &names {
        let drained = standin::last_drain(tail, name)
            .unwrap_or_else(|| panic!("{name} did not drain: {tail:#?}"));
        assert!(drained >= STANDIN_DRAIN, "{name}: {drained:?}");
    }
    let (code, list) = remote_units(&container, "watcher");
    assert_eq!(code, 1, "the platform is down: {list:#?}");
    assert!(
        list.iter().all(|u| u["active_state"] == "inactive"),
        "{list:#?}"
    );
    // ... and crit in the health checks, which then exit 2 (the plugin code for crit).
    assert_eq!(remote_unit_health(&container), vec!["crit"; units.len()]);
    let (code, out, err) = remote(&container, "watcher", &["health"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains(&format!("{} is inactive", units[0])), "{out}");

    // --- And up again, in order.
    let (code, out, err) = remote(&container, "ops", &["platform", "start"]);
    assert_eq!(code, 0, "platform start as operator: {out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), units.len() + 1, "{out}");
    for (line, unit) in lines.iter().zip(&units) {
        assert!(line.starts_with(&format!("start   {unit} ")), "{out}");
        assert!(line.contains(" done "), "{out}");
    }
    assert_eq!(
        lines[units.len()],
        format!("platform start: all {} units done", units.len())
    );
    for unit in &units {
        wait_standin_started(&container, unit, unit_pid(&container, unit));
    }
    let (code, list) = remote_units(&container, "watcher");
    assert_eq!(code, 0, "all active again: {list:#?}");
    let since: Vec<u64> = list
        .iter()
        .map(|u| u["active_since_us"].as_u64().unwrap())
        .collect();
    assert!(
        since.windows(2).all(|w| w[0] <= w[1]),
        "activation order: {since:?}"
    );
    let records = audited(&container, "platform");
    let messages: Vec<&str> = records
        .iter()
        .map(|r| r["message"].as_str().unwrap())
        .collect();
    assert_eq!(
        messages,
        [
            "platform stop: all units done",
            "platform start: all units done"
        ],
        "{records:#?}"
    );
    assert!(
        records.iter().all(|r| r["user"] == "cert CN=ops"),
        "{records:#?}"
    );

    // --- units watch follows this host's bus: not through a remote daemon.
    let (code, out, err) = remote(&container, "ops", &["units", "watch", "--count", "1"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("units watch follows this host's bus only; run it on the host"),
        "{err}"
    );
    assert!(out.is_empty(), "{out}");

    assert_eq!(running_pid(&container), daemon_pid, "one daemon throughout");
    let name = container.name().to_owned();
    container.shutdown().unwrap();
    let left = nspawn::leftovers(&name).unwrap();
    assert!(left.is_empty(), "container {name} left behind: {left:?}");
    #[allow(clippy::print_stderr)]
    {
        eprintln!("remote test: {:?}", test_started.elapsed());
    }
}
