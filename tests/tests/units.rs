//! agentctl's unit management against a real systemd under systemd-nspawn: the CLI layer runs
//! in-process with the container's bus address in its context, exactly as `main` would run it.
//!
//! Opt-in: `NODE_AGENT_SYSTEMD_TESTS=1`, as root (see the crate docs).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use node_agent::cli::{Cli, Context, Exit, run};
use node_agent::host::HostRoot;
use node_agent::profile::SearchPath;
use node_agent::rollback::journal::StateDir;
use node_agent_e2e::nspawn::{self, BootOptions, Container};
use node_agent_e2e::standin::{self, Event, LogLine, UnitSpec};
use node_agent_e2e::systemd_tests_enabled;

struct Agent {
    ctx: Context,
    settings: PathBuf,
    _dir: tempfile::TempDir,
}

/// What one agentctl command gave: exit code, stdout, and the error chain as main prints it.
struct Outcome {
    code: Exit,
    out: String,
    err: String,
}

impl Agent {
    fn new(container: &Container, settings: &str) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, settings).unwrap();
        Agent {
            ctx: Context {
                host: HostRoot::default(),
                search: SearchPath::new(Vec::new()),
                state: StateDir::new(dir.path().join("state")),
                bus: container.bus_address(),
            },
            settings: path,
            _dir: dir,
        }
    }

    fn run(&self, args: &[&str]) -> Outcome {
        let settings = self.settings.display().to_string();
        let argv = ["agentctl", "--settings", settings.as_str()]
            .into_iter()
            .chain(args.iter().copied());
        let cli = Cli::try_parse_from(argv).unwrap();
        let mut out = Vec::new();
        let (code, err) = match run(&cli, &self.ctx, &mut out, &mut std::io::sink()) {
            Ok(code) => (code, String::new()),
            Err(e) => (e.code, format!("{:#}", e.error)),
        };
        Outcome {
            code,
            out: String::from_utf8(out).unwrap(),
            err,
        }
    }

    fn json(&self, args: &[&str]) -> (Exit, serde_json::Value) {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let o = self.run(&all);
        assert!(o.err.is_empty(), "{args:?}: {}", o.err);
        (
            o.code,
            serde_json::from_str(&o.out).unwrap_or_else(|e| panic!("{e}: {}", o.out)),
        )
    }
}

fn boot(name: &str, specs: &[UnitSpec]) -> Container {
    let container = Container::boot(name, BootOptions::new()).unwrap();
    standin::install_standin_units(&container, specs).unwrap();
    container
}

fn finish(mut container: Container) {
    let name = container.name().to_owned();
    container.shutdown().unwrap();
    let left = nspawn::leftovers(&name).unwrap();
    assert!(left.is_empty(), "container {name} left behind: {left:?}");
}

/// Position of the first event of `unit` of kind `event` in the log.
fn at(log: &[LogLine], unit: &str, event: fn(&Event) -> bool) -> usize {
    log.iter()
        .position(|l| l.unit == unit && event(&l.event))
        .unwrap_or_else(|| panic!("no such event of {unit} in {log:#?}"))
}

fn is_stop_begin(e: &Event) -> bool {
    *e == Event::StopBegin
}
fn is_stop_end(e: &Event) -> bool {
    *e == Event::StopEnd
}

const DEFAULTS: &str = "";

#[test]
fn units_status_control_enable_and_refusals() {
    if !systemd_tests_enabled("units_status_control_enable_and_refusals") {
        return;
    }
    let container = boot("na-units-ctl", &UnitSpec::trading_stack());
    let agent = Agent::new(&container, DEFAULTS);

    let (code, status) = agent.json(&["units", "status"]);
    assert_eq!(code, Exit::Drift, "nothing runs yet: {status:#}");
    let units: Vec<&str> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["unit"].as_str().unwrap())
        .collect();
    assert_eq!(
        units,
        [
            "market-data.service",
            "risk-engine.service",
            "trading-engine.service",
            "order-gateway.service"
        ]
    );
    assert!(
        status
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["load_state"] == "loaded" && u["active_state"] == "inactive")
    );

    let (code, step) = agent.json(&["units", "start", "trading-engine"]);
    assert_eq!(code, Exit::Ok, "{step:#}");
    assert_eq!(step["result"], "done");
    assert_eq!(step["active_state"], "active");
    let (_, status) = agent.json(&["units", "status", "trading-engine"]);
    let pid = status[0]["main_pid"].as_u64().unwrap();
    assert_ne!(pid, 0);
    assert!(status[0]["active_since_us"].as_u64().unwrap() > 0);
    let log = standin::read_log(&container).unwrap();
    assert!(
        log.iter()
            .any(|l| l.unit == "trading-engine" && l.event == Event::Start { pid: pid as u32 }),
        "{log:#?}"
    );

    let (code, _) = agent.json(&["units", "restart", "trading-engine"]);
    assert_eq!(code, Exit::Ok);
    let (_, status) = agent.json(&["units", "status", "trading-engine"]);
    assert_ne!(
        status[0]["main_pid"].as_u64().unwrap(),
        pid,
        "restart gives a new process"
    );

    let o = agent.run(&["units", "stop", "trading-engine"]);
    assert_eq!(o.code, Exit::Ok, "{}", o.err);
    assert!(
        o.out.starts_with("stop    trading-engine.service     done"),
        "{}",
        o.out
    );
    assert!(o.out.trim_end().ends_with("now inactive/dead"), "{}", o.out);
    let log = standin::read_log(&container).unwrap();
    assert!(at(&log, "trading-engine", is_stop_begin) < at(&log, "trading-engine", is_stop_end));

    let (_, enabled) = agent.json(&["units", "enable", "market-data"]);
    assert_eq!(enabled["unit_file_state"], "enabled");
    // An absolute symlink: look at the link itself, not where it points on the host.
    let wants = container
        .root()
        .join("etc/systemd/system/multi-user.target.wants/market-data.service");
    assert!(
        wants.symlink_metadata().is_ok(),
        "enable must create {}",
        wants.display()
    );
    let (_, disabled) = agent.json(&["units", "disable", "market-data"]);
    assert_eq!(disabled["unit_file_state"], "disabled");

    let o = agent.run(&["units", "stop", "sshd"]);
    assert_eq!(o.code, Exit::Invalid);
    assert_eq!(
        o.err,
        "sshd.service is not a managed unit (managed: market-data.service, risk-engine.service, \
         trading-engine.service, order-gateway.service); see [units] in the settings"
    );

    // Managed but not installed: systemd says no such unit.
    let ghost = Agent::new(&container, "[units]\norder = [\"ghost\"]\n");
    let o = ghost.run(&["units", "start", "ghost"]);
    assert_eq!(o.code, Exit::Invalid, "{}", o.err);
    assert_eq!(o.err, "no such unit: ghost.service");

    let mut nobus = Agent::new(&container, DEFAULTS);
    nobus.ctx.bus = "unix:path=/nonexistent/system_bus_socket".into();
    let o = nobus.run(&["units", "status"]);
    assert_eq!(o.code, Exit::CannotRun);
    assert!(
        o.err.starts_with(
            "failed to connect to the system bus at unix:path=/nonexistent/system_bus_socket"
        ),
        "{}",
        o.err
    );

    finish(container);
}

#[test]
fn platform_stops_gateway_first_and_starts_it_last() {
    if !systemd_tests_enabled("platform_stops_gateway_first_and_starts_it_last") {
        return;
    }
    let drain = Duration::from_millis(300);
    let specs: Vec<UnitSpec> = UnitSpec::trading_stack()
        .into_iter()
        .map(|s| s.drain(drain))
        .collect();
    let container = boot("na-units-platform", &specs);
    let agent = Agent::new(&container, DEFAULTS);

    let (code, report) = agent.json(&["platform", "start"]);
    assert_eq!(code, Exit::Ok, "{report:#}");
    assert!(report["failed"].is_null());
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["unit"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "market-data.service",
            "risk-engine.service",
            "trading-engine.service",
            "order-gateway.service"
        ]
    );
    // systemd's own record of when each unit became active follows the platform order (the
    // stand-ins' start lines can race each other: a Type=simple start job is done at fork).
    let (code, status) = agent.json(&["units", "status"]);
    assert_eq!(code, Exit::Ok, "all active: {status:#}");
    let since: Vec<u64> = status
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["active_since_us"].as_u64().unwrap())
        .collect();
    assert!(
        since.windows(2).all(|w| w[0] <= w[1]),
        "activation order: {since:?}"
    );

    let o = agent.run(&["platform", "stop"]);
    assert_eq!(o.code, Exit::Ok, "{}\n{}", o.out, o.err);
    let lines: Vec<&str> = o.out.lines().collect();
    assert_eq!(lines.len(), 5, "{}", o.out);
    for (line, unit) in lines.iter().zip([
        "order-gateway",
        "trading-engine",
        "risk-engine",
        "market-data",
    ]) {
        assert!(
            line.starts_with(&format!("stop    {unit}.service")),
            "{line}"
        );
        assert!(line.contains(" done "), "{line}");
    }
    assert_eq!(lines[4], "platform stop: all 4 units done");
    let log = standin::read_log(&container).unwrap();
    // Each unit finished draining before the next one was asked to stop.
    let order = [
        "order-gateway",
        "trading-engine",
        "risk-engine",
        "market-data",
    ];
    for pair in order.windows(2) {
        assert!(
            at(&log, pair[0], is_stop_end) < at(&log, pair[1], is_stop_begin),
            "{} must be drained before {} stops: {log:#?}",
            pair[0],
            pair[1]
        );
    }
    finish(container);
}

#[test]
fn platform_stops_at_a_failed_unit_and_at_a_drain_timeout() {
    if !systemd_tests_enabled("platform_stops_at_a_failed_unit_and_at_a_drain_timeout") {
        return;
    }
    let specs: Vec<UnitSpec> = UnitSpec::trading_stack()
        .into_iter()
        .map(|s| match s.name.as_str() {
            "order-gateway" => s
                .drain(Duration::from_secs(20))
                .service_line("TimeoutStopSec=60"),
            _ => s,
        })
        .collect();
    let container = boot("na-units-fail", &specs);
    // A deploy that lost the risk engine's binary: with Type=exec the start job itself fails.
    container
        .write_file(
            "/etc/systemd/system/risk-engine.service",
            "[Unit]\nDescription=risk engine without its binary\n\n[Service]\nType=exec\n\
             ExecStart=/opt/trading/bin/risk-engine-missing\n",
            0o644,
        )
        .unwrap();
    container.daemon_reload().unwrap();
    let agent = Agent::new(
        &container,
        "[units]\ndrain = { \"order-gateway.service\" = \"1s\" }\n",
    );

    let (code, report) = agent.json(&["platform", "start"]);
    assert_eq!(code, Exit::Failed, "{report:#}");
    assert_eq!(report["failed"], "risk-engine.service");
    assert_eq!(report["steps"][1]["result"], "failed");
    assert_eq!(report["steps"][1]["active_state"], "failed");
    assert_eq!(
        report["not_reached"],
        serde_json::json!(["trading-engine.service", "order-gateway.service"])
    );
    let log = standin::read_log(&container).unwrap();
    assert!(
        !log.iter().any(|l| l.unit == "trading-engine"),
        "trading-engine must not start: {log:#?}"
    );

    // The gateway drains for 20 s but the agent's deadline is 1 s: timeout, and nothing after it.
    let (code, _) = agent.json(&["units", "start", "order-gateway"]);
    assert_eq!(code, Exit::Ok);
    let (code, _) = agent.json(&["units", "start", "trading-engine"]);
    assert_eq!(code, Exit::Ok);
    let o = agent.run(&["platform", "stop"]);
    assert_eq!(o.code, Exit::Failed, "{}", o.out);
    assert!(
        o.out
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .take(3)
            .eq(["stop", "order-gateway.service", "timeout"]),
        "{}",
        o.out
    );
    assert!(
        o.out.contains("platform stop STOPPED at order-gateway.service: timeout (now deactivating/stop-sigterm); not reached: trading-engine.service, risk-engine.service, market-data.service"),
        "{}",
        o.out
    );
    let (_, status) = agent.json(&["units", "status", "trading-engine"]);
    assert_eq!(
        status[0]["active_state"], "active",
        "trading-engine must not be stopped"
    );
    finish(container);
}

#[test]
fn watch_reports_state_changes() {
    if !systemd_tests_enabled("watch_reports_state_changes") {
        return;
    }
    let container = boot("na-units-watch", &UnitSpec::trading_stack());
    let agent = Agent::new(&container, DEFAULTS);
    let ctx = agent.ctx.clone();
    let settings: &Path = &agent.settings;
    let settings = settings.to_owned();
    let watcher = std::thread::spawn(move || {
        let s = settings.display().to_string();
        let cli = Cli::try_parse_from([
            "agentctl",
            "--settings",
            &s,
            "-o",
            "json",
            "units",
            "watch",
            "--count",
            "2",
        ])
        .unwrap();
        let mut out = Vec::new();
        let code =
            run(&cli, &ctx, &mut out, &mut std::io::sink()).map_err(|e| format!("{:#}", e.error));
        (code, String::from_utf8(out).unwrap())
    });
    // The watcher subscribes at some point after the thread starts; toggling the unit until it
    // has seen two changes needs no guess of when that is. Bounded: 50 toggles.
    for i in 0..50 {
        if watcher.is_finished() {
            break;
        }
        let op = if i % 2 == 0 { "start" } else { "stop" };
        assert_eq!(agent.run(&["units", op, "market-data"]).code, Exit::Ok);
    }
    let (code, out) = watcher.join().unwrap();
    assert_eq!(code, Ok(Exit::Ok));
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 2, "{out}");
    assert!(
        events.iter().all(|e| e["unit"] == "market-data.service"),
        "{out}"
    );
    assert!(
        events
            .iter()
            .any(|e| ["active", "activating", "deactivating", "inactive"]
                .contains(&e["active_state"].as_str().unwrap())),
        "{out}"
    );
    finish(container);
}

/// Copies this build's agentctl into the container (same Debian release, same glibc).
fn install_agentctl(container: &Container) {
    container
        .write_file(
            "/usr/local/bin/agentctl",
            nspawn::agent_binary("agentctl"),
            0o755,
        )
        .unwrap();
}

/// Runs the agentctl binary of this build inside the container, where `/`, `/proc` and the
/// system bus are the container's: the agent as it runs on a trading host.
fn agentctl_inside(container: &Container, args: &[&str]) -> (i32, String, String) {
    let mut argv = vec!["/usr/local/bin/agentctl"];
    argv.extend_from_slice(args);
    container.run(&argv)
}

fn item<'a>(report: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    report["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["key"] == key)
        .unwrap_or_else(|| panic!("no item {key} in {report:#}"))
}

#[test]
fn unit_limits_are_verified_applied_by_drop_in_and_rolled_back() {
    if !systemd_tests_enabled("unit_limits_are_verified_applied_by_drop_in_and_rolled_back") {
        return;
    }
    // The engine runs with systemd's default limits; the profile wants 4096 open files (below
    // the container's own hard limit, which an unprivileged container cannot raise).
    let container = boot(
        "na-units-limits",
        &[UnitSpec::new("trading-engine").limits(None)],
    );
    install_agentctl(&container);
    container
        .write_file(
            "/etc/node-agent/agent.toml",
            "[units]\norder = [\"trading-engine\"]\n",
            0o644,
        )
        .unwrap();
    let profile = "/etc/node-agent/profiles/engine-limits.toml";
    container
        .write_file(profile, "[limits]\n\"*\" = { nofile = 4096 }\n", 0o644)
        .unwrap();
    let (code, _, err) = agentctl_inside(&container, &["units", "start", "trading-engine"]);
    assert_eq!(code, 0, "{err}");

    let verify = |expect: i32| -> serde_json::Value {
        let (code, out, err) =
            agentctl_inside(&container, &["tune", "verify", "-p", profile, "-o", "json"]);
        assert_eq!(code, expect, "{out}\n{err}");
        serde_json::from_str(&out).unwrap()
    };
    let before = verify(1);
    let soft = item(&before, "units.trading-engine.service.nofile.soft");
    assert_eq!(soft["status"], "drift", "{soft:#}");
    assert_eq!(soft["actual"], "1024", "systemd's default soft limit");
    assert_eq!(
        soft["path"],
        "/etc/systemd/system/trading-engine.service.d/zz-node-agent-limits.conf"
    );
    let running = item(
        &before,
        "units.trading-engine.service.nofile.soft.effective",
    );
    assert_eq!(running["status"], "drift");
    assert_eq!(running["actual"], "1024");

    // Apply writes the drop-in and reloads systemd; the running process keeps its limits
    // until it restarts, which apply reports instead of doing.
    let (code, out, err) =
        agentctl_inside(&container, &["tune", "apply", "-p", profile, "-o", "json"]);
    assert_eq!(
        code, 1,
        "the running engine still has the old limit: {out}\n{err}"
    );
    let applied: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(applied["systemd_reload_error"].is_null(), "{applied:#}");
    let drop_in = container
        .read_file("/etc/systemd/system/trading-engine.service.d/zz-node-agent-limits.conf")
        .unwrap()
        .expect("drop-in written");
    assert!(
        drop_in.ends_with("[Service]\nLimitNOFILE=4096:4096\n"),
        "{drop_in}"
    );
    assert_eq!(
        item(
            &applied["after"],
            "units.trading-engine.service.nofile.soft"
        )["status"],
        "pass"
    );
    let eff = item(
        &applied["after"],
        "units.trading-engine.service.nofile.soft.effective",
    );
    assert_eq!(eff["status"], "drift");
    assert!(
        eff["reason"]
            .as_str()
            .unwrap()
            .contains("agentctl units restart trading-engine.service")
    );

    let (code, _, err) = agentctl_inside(&container, &["units", "restart", "trading-engine"]);
    assert_eq!(code, 0, "{err}");
    let after = verify(0);
    assert_eq!(
        item(&after, "units.trading-engine.service.nofile.hard.effective")["actual"],
        "4096"
    );

    // Rollback removes the drop-in and reloads: the unit's limit is systemd's default again.
    let (code, out, err) = agentctl_inside(&container, &["tune", "rollback"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        container
            .read_file("/etc/systemd/system/trading-engine.service.d/zz-node-agent-limits.conf")
            .unwrap()
            .is_none()
    );
    let rolled_back = verify(1);
    assert_eq!(
        item(&rolled_back, "units.trading-engine.service.nofile.soft")["actual"],
        "1024"
    );
    finish(container);
}

#[test]
fn engine_cpu_affinity_drop_in_pins_the_restarted_engine() {
    if !systemd_tests_enabled("engine_cpu_affinity_drop_in_pins_the_restarted_engine") {
        return;
    }
    let container = boot("na-units-cpu", &[UnitSpec::new("trading-engine")]);
    install_agentctl(&container);
    let profile = "/etc/node-agent/profiles/engine-cpu.toml";
    container
        .write_file(
            profile,
            "[isolation]\nhousekeeping_cpus = \"0\"\nisolated_cpus = \"1\"\n\
             engine_units = [\"trading-engine\"]\n",
            0o644,
        )
        .unwrap();
    let (code, _, err) = agentctl_inside(&container, &["units", "start", "trading-engine"]);
    assert_eq!(code, 0, "{err}");
    let pid_of = || -> u32 {
        let (_, out, _) = agentctl_inside(
            &container,
            &["-o", "json", "units", "status", "trading-engine"],
        );
        let s: serde_json::Value = serde_json::from_str(&out).unwrap();
        s[0]["main_pid"].as_u64().unwrap() as u32
    };
    let allowed = |pid: u32| -> String {
        let status = container
            .exec_ok(["cat", &format!("/proc/{pid}/status")])
            .unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(allowed(pid_of()), "0-1", "not pinned yet");

    let (code, out, err) =
        agentctl_inside(&container, &["tune", "apply", "-p", profile, "-o", "json"]);
    // The running engine keeps its affinity until it restarts.
    assert_eq!(code, 1, "{out}\n{err}");
    let applied: serde_json::Value = serde_json::from_str(&out).unwrap();
    let drop_in = container
        .read_file("/etc/systemd/system/trading-engine.service.d/zz-node-agent-cpu.conf")
        .unwrap()
        .expect("engine drop-in");
    assert!(drop_in.contains("[Service]\nCPUAffinity=1\n"), "{drop_in}");
    assert_eq!(
        item(
            &applied["after"],
            "isolation.trading-engine.service.cpu_affinity"
        )["status"],
        "pass"
    );
    assert_eq!(
        item(
            &applied["after"],
            "isolation.trading-engine.service.cpu_affinity.effective"
        )["status"],
        "drift"
    );

    let (code, _, err) = agentctl_inside(&container, &["units", "restart", "trading-engine"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        allowed(pid_of()),
        "1",
        "the restarted engine runs on the isolated CPU only"
    );

    let (code, out, err) = agentctl_inside(&container, &["tune", "rollback"]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        container
            .read_file("/etc/systemd/system/trading-engine.service.d/zz-node-agent-cpu.conf")
            .unwrap()
            .is_none()
    );
    let (code, _, err) = agentctl_inside(&container, &["units", "restart", "trading-engine"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        allowed(pid_of()),
        "0-1",
        "unpinned after rollback and restart"
    );
    finish(container);
}
