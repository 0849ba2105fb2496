//! node-agentd's cache of the managed units (`units::UnitsCache`) under a real systemd (a booted
//! nspawn container): with a profile that checks unit limits (`[limits] "*"`), the daemon keeps
//! one bus connection and the last answer about the four stand-in trading units, and asks
//! systemd again only after systemd signalled a change. Every verify here is a Verify RPC
//! (`agentctl tune verify` inside, through the daemon's socket; `verify_interval` is 1h):
//!
//! 1. a restart: the next verify asks systemd again and reads the new MainPID's limits;
//! 2. a crash without a job (`systemctl kill -s KILL`, Restart=no): the next verify asks again
//!    and no longer names the dead PID;
//! 3. a drop-in and `systemctl daemon-reload`: the next verify shows the new LimitNOFILE=;
//! 4. no change since: two more verifies ask nothing and answer the same;
//! 5. apply through the daemon asks afresh and reports the unit's new limit; rollback too.
//!
//! "Asks" is what `dbus-monitor` (eavesdropping on every method call to systemd) shows between
//! two marker calls around the verify: LoadUnit/GetAll, all from the daemon's one connection.
//!
//! The binaries are this build's `target/debug/node-agentd` and `target/debug/agentctl` (build
//! them first: `cargo build -p node-agent`), or those in `NODE_AGENT_E2E_BIN_DIR` (the latency
//! measurement of docs/BENCHMARKS.md runs release binaries).
//!
//! Opt-in: `NODE_AGENT_SYSTEMD_TESTS=1`, as root (see the crate docs).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use node_agent_e2e::nspawn::{self, BootOptions, Container};
use node_agent_e2e::standin::{self, TRADING_UNITS, UnitSpec};
use node_agent_e2e::systemd_tests_enabled;

/// The unit file the package ships, compiled in so an edit of it rebuilds this test.
const UNIT_FILE: &str = include_str!("../../systemd/node-agentd.service");
const ADMIN_GROUP: &str = "node-agent-admin";

/// Only the units' open-file limit: the stand-ins' LimitNOFILE= (1000000) meets it.
const PROFILE_PATH: &str = "/etc/node-agent/profiles/e2e-units-cache.toml";
const PROFILE: &str = "[profile]\nname = \"e2e-units-cache\"\n\
                       description = \"node-agent-e2e: the daemon's units cache\"\n\n\
                       [limits]\n\"*\" = { nofile = 1000000 }\n";
/// Observe mode, and no verify of the daemon's own before the test asks for one.
const SETTINGS: &str = "[agent]\nprofile = \"e2e-units-cache\"\nmode = \"observe\"\n\
                        verify_interval = \"1h\"\n";

/// Deadline of one systemctl job (a stuck job is a failure, not a hang).
const JOB_DEADLINE: &str = "30";
/// How long systemd may take to notice a killed process, and the monitor to show a call.
const SETTLE: Duration = Duration::from_secs(20);
/// The calls that ask systemd about a unit.
const UNIT_QUERIES: [&str; 4] = ["LoadUnit", "GetUnit", "GetAll", "Get"];
/// Where dbus-monitor writes, inside (not under /run or /tmp: read through the root).
const MONITOR_LOG: &str = "/var/log/e2e-systemd-calls.log";

/// `systemctl ARGS…`, bounded by [`JOB_DEADLINE`]; panics with the daemon's diagnosis.
fn systemctl(container: &Container, args: &[&str]) {
    let mut all = vec!["timeout", JOB_DEADLINE, "systemctl"];
    all.extend_from_slice(args);
    let (code, out, err) = container.run(&all);
    assert_eq!(
        code,
        0,
        "systemctl {args:?} failed (exit {code}{}): {out}{err}\n{}",
        if code == 124 { ": timed out" } else { "" },
        container.node_agentd_diagnosis(40)
    );
}

/// `systemctl show -p PROP UNIT`'s value.
fn show(container: &Container, unit: &str, prop: &str) -> String {
    let (code, out, err) = container.run(&["systemctl", "show", "-p", prop, "--value", unit]);
    assert_eq!(code, 0, "systemctl show {unit}: {err}");
    out.trim().to_owned()
}

fn main_pid(container: &Container, unit: &str) -> u32 {
    show(container, unit, "MainPID").parse().unwrap()
}

/// Calls `probe` until it gives `Some`, at most for `within`, with a short growing pause (the
/// processes are the container's: there is no event to wait on from here).
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
                container.node_agentd_diagnosis(40)
            );
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// One Verify RPC: `agentctl -o json tune verify` inside, which must go through the daemon.
fn verify(container: &Container) -> serde_json::Value {
    let (code, out, err) = container.run(&["agentctl", "-o", "json", "tune", "verify"]);
    assert!(
        matches!(code, 0 | 1),
        "verify: exit {code}: {out}{err}\n{}",
        container.node_agentd_diagnosis(40)
    );
    assert!(
        !err.contains("not running"),
        "verify must go through the daemon: {err}"
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The report's item `key`, if there.
fn item<'a>(report: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    report["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["key"] == key)
}

/// The path of `units.<unit>.nofile.soft.effective` (None: the item is not there).
fn effective_path(report: &serde_json::Value, unit: &str) -> Option<String> {
    item(report, &format!("units.{unit}.nofile.soft.effective"))
        .map(|i| i["path"].as_str().unwrap_or("").to_owned())
}

/// The actual value of `units.<unit>.nofile.<kind>` (the unit's property).
fn unit_value(report: &serde_json::Value, unit: &str, kind: &str) -> String {
    let key = format!("units.{unit}.nofile.{kind}");
    item(report, &key).unwrap_or_else(|| panic!("no {key} in {report:#}"))["actual"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

/// Installs the binaries, the unit file, the profile and settings, the admin group and the
/// stand-in units; starts the stand-ins and the daemon.
fn install_and_start(container: &Container) {
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
    container.write_file(PROFILE_PATH, PROFILE, 0o644).unwrap();
    container
        .write_file("/etc/node-agent/agent.toml", SETTINGS, 0o644)
        .unwrap();
    container
        .exec_ok(["groupadd", "--system", ADMIN_GROUP])
        .unwrap();
    standin::install_standin_units(container, &UnitSpec::trading_stack()).unwrap();
    container.daemon_reload().unwrap();
    let units: Vec<String> = TRADING_UNITS
        .iter()
        .map(|u| format!("{u}.service"))
        .collect();
    let mut start = vec!["start"];
    start.extend(units.iter().map(String::as_str));
    systemctl(container, &start);
    // Type=notify: returns once the daemon is serving (after its first verify).
    systemctl(container, &["start", "node-agentd"]);
}

/// dbus-monitor inside the container, eavesdropping on every method call to systemd, one line
/// per call (`--profile`: type, time, serial, sender, destination, path, interface, member).
/// Ended by its PID on drop (and bounded by `timeout` in any case).
struct Monitor<'c> {
    container: &'c Container,
    pid: String,
}

impl<'c> Monitor<'c> {
    fn start(container: &'c Container) -> Monitor<'c> {
        let script = format!(
            "timeout 300 dbus-monitor --system --profile \
             \"type='method_call',destination='org.freedesktop.systemd1'\" \
             >{MONITOR_LOG} 2>&1 </dev/null & echo $!"
        );
        let pid = container
            .exec_ok(["sh", "-c", &script])
            .unwrap()
            .trim()
            .to_owned();
        let monitor = Monitor { container, pid };
        // Ready once it shows a call made after it started.
        monitor.mark("ready");
        monitor
    }

    /// A call to systemd that the monitor will show (Peer.Ping on a path named after `name`),
    /// and waits until it does: every call made before it is in the log then.
    fn mark(&self, name: &str) {
        let path = format!("/org/freedesktop/systemd1/e2e_marker_{name}");
        poll(
            self.container,
            &format!("marker {name} in the monitor's log"),
            SETTLE,
            || {
                let _ = self.container.exec([
                    "busctl",
                    "call",
                    "org.freedesktop.systemd1",
                    &path,
                    "org.freedesktop.DBus.Peer",
                    "Ping",
                ]);
                let log = self.log();
                if log.lines().any(|l| l.contains(&path)) {
                    Ok(())
                } else {
                    Err(log)
                }
            },
        );
    }

    fn log(&self) -> String {
        self.container
            .read_file(MONITOR_LOG)
            .unwrap()
            .unwrap_or_default()
    }

    /// The calls asking about units (LoadUnit, GetAll, …) between the first lines of markers
    /// `from` and `to`.
    fn queries_between(&self, from: &str, to: &str) -> Calls {
        self.calls_between(from, to)
            .into_iter()
            .filter(|(_, _, member)| UNIT_QUERIES.contains(&member.as_str()))
            .collect()
    }

    /// The calls between the first lines of markers `from` and `to`: (sender, path, member).
    fn calls_between(&self, from: &str, to: &str) -> Calls {
        let log = self.log();
        let lines: Vec<Vec<&str>> = log.lines().map(|l| l.split('\t').collect()).collect();
        let at = |name: &str| {
            let path = format!("/org/freedesktop/systemd1/e2e_marker_{name}");
            lines
                .iter()
                .position(|f| f.get(5) == Some(&path.as_str()))
                .unwrap_or_else(|| panic!("no marker {name} in\n{log}"))
        };
        lines[at(from) + 1..at(to)]
            .iter()
            .filter(|f| f.first() == Some(&"mc") && f.len() >= 8)
            .map(|f| (f[3].to_owned(), f[5].to_owned(), f[7].to_owned()))
            .collect()
    }
}

impl Drop for Monitor<'_> {
    fn drop(&mut self) {
        let _ = self.container.exec(["kill", &self.pid]);
    }
}

/// The daemon's connections on the system bus (unique names of its PID, from `busctl list`).
fn bus_names_of(container: &Container, pid: u32) -> BTreeSet<String> {
    let (code, out, err) =
        container.run(&["busctl", "list", "--no-pager", "--no-legend", "--unique"]);
    assert_eq!(code, 0, "busctl list: {err}");
    out.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (name, owner) = (f.next()?, f.next()?);
            (owner == pid.to_string()).then(|| name.to_owned())
        })
        .collect()
}

/// Calls to systemd seen by the monitor: (sender, path, member). Any sender: nothing else in
/// the container asks about units while the test runs (the daemon's are checked at the end).
type Calls = Vec<(String, String, String)>;

/// One Verify RPC between markers `<name>_0` and `<name>_1`: the report, and what was asked.
fn verify_watched(
    container: &Container,
    monitor: &Monitor<'_>,
    name: &str,
) -> (serde_json::Value, Calls) {
    let (from, to) = (format!("{name}_0"), format!("{name}_1"));
    monitor.mark(&from);
    let report = verify(container);
    monitor.mark(&to);
    (report, monitor.queries_between(&from, &to))
}

/// The cache was not used: every unit was asked for again.
fn asked_again(monitor: &Monitor<'_>, what: &str, calls: &Calls) {
    let get_alls = calls.iter().filter(|(_, _, m)| m == "GetAll").count();
    assert!(
        get_alls >= TRADING_UNITS.len(),
        "the verify after {what} must ask systemd again ({get_alls} GetAll): {calls:?}\n{}",
        monitor.log()
    );
}

#[test]
fn daemon_asks_systemd_again_only_after_a_signalled_change() {
    if !systemd_tests_enabled("daemon_asks_systemd_again_only_after_a_signalled_change") {
        return;
    }
    // Dropped on any panic below, which powers the container off and removes it.
    let container = Container::boot("na-units-cache", BootOptions::new()).unwrap();
    install_and_start(&container);
    let daemon_pid = main_pid(&container, "node-agentd");
    assert_ne!(daemon_pid, 0, "{}", container.node_agentd_diagnosis(40));
    // Ended (by its PID) before the container is.
    let monitor = Monitor::start(&container);

    // The stand-ins' Restart= is the default: a killed one stays dead, without a job.
    for unit in TRADING_UNITS {
        assert_eq!(show(&container, unit, "Restart"), "no", "{unit}");
    }

    // Every managed unit observed: the running process's limits at its MainPID.
    let report = verify(&container);
    for unit in TRADING_UNITS {
        let unit = format!("{unit}.service");
        let pid = main_pid(&container, &unit);
        assert_ne!(pid, 0, "{unit} runs");
        assert_eq!(
            effective_path(&report, &unit).as_deref(),
            Some(format!("/proc/{pid}/limits").as_str()),
            "{unit}: {report:#}"
        );
        assert_eq!(unit_value(&report, &unit, "soft"), "1000000");
    }
    let mut changed_calls = Vec::new();

    // --- 1. A restart (a job; MainPID changes): the next verify reads the new process.
    let unit = "market-data.service";
    let old = main_pid(&container, unit);
    systemctl(&container, &["restart", unit]);
    let new = main_pid(&container, unit);
    assert!(new != 0 && new != old, "{unit}: MainPID {old} → {new}");
    let (report, calls) = verify_watched(&container, &monitor, "restart");
    asked_again(&monitor, "a restart", &calls);
    assert_eq!(
        effective_path(&report, unit).as_deref(),
        Some(format!("/proc/{new}/limits").as_str()),
        "after the restart of {unit} (pid {old} → {new}): {report:#}"
    );
    changed_calls.extend(calls);

    // --- 2. A crash without a job: SIGKILL, Restart=no. systemctl kill returns once the
    // signal is sent; the test waits until systemd has seen the death, then verifies once.
    // (The report alone could not tell a stale answer here: the dead PID's /proc/PID/limits
    // is gone either way, until the PID is reused. The monitor can.)
    let unit = "risk-engine.service";
    let dead = main_pid(&container, unit);
    systemctl(&container, &["kill", "-s", "KILL", unit]);
    poll(&container, &format!("{unit} dead"), SETTLE, || {
        let (pid, state) = (
            show(&container, unit, "MainPID"),
            show(&container, unit, "ActiveState"),
        );
        if pid == "0" && state != "active" {
            Ok(())
        } else {
            Err(format!("MainPID {pid}, ActiveState {state}"))
        }
    });
    let (report, calls) = verify_watched(&container, &monitor, "kill");
    asked_again(&monitor, "a crash", &calls);
    assert_eq!(
        effective_path(&report, unit),
        None,
        "{unit} (pid {dead}) was killed: no running process to read: {report:#}"
    );
    assert!(
        !report.to_string().contains(&format!("/proc/{dead}/")),
        "the dead pid {dead} is still reported: {report:#}"
    );
    assert_eq!(
        unit_value(&report, unit, "soft"),
        "1000000",
        "the unit's own limit is still reported"
    );
    changed_calls.extend(calls);

    // --- 3. A drop-in and a daemon-reload: the next verify shows the unit's new limit.
    let unit = "trading-engine.service";
    container
        .write_file(
            &format!("/etc/systemd/system/{unit}.d/50-e2e-nofile.conf"),
            "[Service]\nLimitNOFILE=500000\n",
            0o644,
        )
        .unwrap();
    systemctl(&container, &["daemon-reload"]);
    let (report, calls) = verify_watched(&container, &monitor, "reload");
    asked_again(&monitor, "a daemon-reload", &calls);
    assert_eq!(unit_value(&report, unit, "soft"), "500000", "{report:#}");
    assert_eq!(unit_value(&report, unit, "hard"), "500000", "{report:#}");
    let item = item(&report, &format!("units.{unit}.nofile.soft")).unwrap();
    assert_eq!(item["status"], "drift", "{item:#}");
    changed_calls.extend(calls);

    // --- 4. No change since, no call: two more verifies answer from the cache, the same.
    let units_items = |r: &serde_json::Value| -> Vec<serde_json::Value> {
        r["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["class"] == "units")
            .cloned()
            .collect()
    };
    for round in ["same1", "same2"] {
        let (again, calls) = verify_watched(&container, &monitor, round);
        assert!(
            calls.is_empty(),
            "{round}: a verify without a change asked systemd: {calls:?}\n{}",
            monitor.log()
        );
        assert_eq!(units_items(&again), units_items(&report), "{round}");
    }

    // --- 5. Apply and rollback through the daemon: apply plans from systemd's answer, not the
    // cache's (it asks again with nothing signalled), writes the unit's drop-in, reloads
    // systemd; the verify after each shows the result.
    let drop_in = format!("/etc/systemd/system/{unit}.d/zz-node-agent-limits.conf");
    monitor.mark("apply_0");
    let (code, out, err) = container.run(&["agentctl", "-o", "json", "tune", "apply"]);
    // 1: findings remain (the running processes' limits: only a restart changes them).
    assert!(
        matches!(code, 0 | 1),
        "apply: exit {code}: {out}{err}\n{}",
        container.node_agentd_diagnosis(40)
    );
    assert!(!err.contains("not running"), "{err}");
    let applied: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    // The daemon's verify right after its apply (the reload's signals may still be on their
    // way: the apply itself invalidates the cache).
    assert_eq!(
        unit_value(&applied["after"], unit, "soft"),
        "1000000",
        "{applied:#}"
    );
    monitor.mark("apply_1");
    let calls = monitor.queries_between("apply_0", "apply_1");
    asked_again(&monitor, "nothing, for an apply", &calls);
    changed_calls.extend(calls);
    assert!(
        container.read_file(&drop_in).unwrap().is_some(),
        "apply writes {drop_in}"
    );
    let report = verify(&container);
    assert_eq!(unit_value(&report, unit, "soft"), "1000000", "{report:#}");
    let (code, out, err) = container.run(&["agentctl", "tune", "rollback"]);
    assert_eq!(
        code,
        0,
        "rollback: {out}{err}\n{}",
        container.node_agentd_diagnosis(40)
    );
    assert_eq!(container.read_file(&drop_in).unwrap(), None);
    let report = verify(&container);
    assert_eq!(unit_value(&report, unit, "soft"), "500000", "{report:#}");

    // All the asking came from the daemon's one kept connection.
    let daemon = bus_names_of(&container, daemon_pid);
    assert_eq!(
        daemon.len(),
        1,
        "one kept connection of the daemon (pid {daemon_pid}): {daemon:?}"
    );
    assert!(
        changed_calls
            .iter()
            .all(|(sender, _, _)| daemon.contains(sender)),
        "{changed_calls:?} not all from {daemon:?}"
    );

    drop(monitor);
    let mut container = container;
    container.shutdown().unwrap();
}

/// CPU seconds used so far by the container's systemd (PID 1) and dbus-daemon (utime + stime
/// of /proc/PID/stat, in clock ticks of 10 ms).
fn bus_side_cpu(container: &Container) -> f64 {
    let dbus = container.exec_ok(["pidof", "dbus-daemon"]).unwrap();
    let mut ticks = 0u64;
    for pid in std::iter::once("1").chain(dbus.split_whitespace()) {
        let stat = container
            .exec_ok(["cat", &format!("/proc/{pid}/stat")])
            .unwrap();
        // The fields after the command (which may hold spaces): state is the first; utime and
        // stime are fields 14 and 15 of the whole line.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        ticks += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    }
    ticks as f64 / 100.0
}

/// Verify RPC latency through the daemon with the units checked: wall time of `agentctl tune
/// verify` inside the container, one after another (docs/BENCHMARKS.md, "With a system bus").
/// A measurement, not a check: `--ignored`, with `NODE_AGENT_E2E_BIN_DIR` pointing at release
/// binaries, and `VERIFY_CALLS` (default 200).
#[test]
#[ignore = "a measurement: docs/BENCHMARKS.md"]
fn verify_latency_through_the_daemon() {
    if !systemd_tests_enabled("verify_latency_through_the_daemon") {
        return;
    }
    let calls: usize = std::env::var("VERIFY_CALLS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(200);
    let container = Container::boot("na-units-latency", BootOptions::new()).unwrap();
    install_and_start(&container);
    // One line per call: nanoseconds taken by `agentctl tune verify` (through the daemon).
    let script = format!(
        "i=0; while [ $i -lt {calls} ]; do s=$(date +%s%N); \
         agentctl -o json tune verify >/dev/null; e=$(date +%s%N); echo $((e - s)); \
         i=$((i + 1)); done"
    );
    let busy_before = bus_side_cpu(&container);
    let (code, out, err) = container.run(&["timeout", "600", "sh", "-c", &script]);
    assert_eq!(code, 0, "{err}");
    let bus_side = bus_side_cpu(&container) - busy_before;
    let mut ns: Vec<u64> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
    // And the floor: the same agentctl asking the daemon for its status (no verify).
    let script = script.replace("tune verify", "daemon status");
    let (code, out, err) = container.run(&["timeout", "600", "sh", "-c", &script]);
    assert!(matches!(code, 0 | 1), "{err}");
    let mut floor: Vec<u64> = out.lines().map(|l| l.trim().parse().unwrap()).collect();
    let pct = |v: &mut Vec<u64>, p: usize| {
        v.sort_unstable();
        v[(v.len() - 1) * p / 100] as f64 / 1e6
    };
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "agentctl tune verify, {calls} calls: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms; \
             agentctl daemon status: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms; \
             systemd + dbus-daemon CPU during the verifies: {:.0} ms ({:.2} ms per verify)",
            pct(&mut ns, 50),
            pct(&mut ns, 90),
            pct(&mut ns, 99),
            pct(&mut floor, 50),
            pct(&mut floor, 90),
            pct(&mut floor, 99),
            bus_side * 1e3,
            bus_side * 1e3 / calls as f64,
        );
    }
    let mut container = container;
    container.shutdown().unwrap();
}
