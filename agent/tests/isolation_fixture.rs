//! Fixture tier for what is built of `[isolation]` and the units' drop-ins: the layout checked
//! against the host's CPUs, engine CPUAffinity= and unit limits drop-ins planned, written,
//! reloaded and rolled back, with the bus replaced by observed data (what the CLI gathers).

mod support;

use std::cell::Cell;

use node_agent::audit::{Audit, Caller};
use node_agent::profile::{self, SearchPath};
use node_agent::rollback::apply::{self, Session, SystemdOp};
use node_agent::rollback::journal::StateDir;
use node_agent::system::RecordingSystem;
use node_agent::tuning::units::{ObservedUnit, UnitsObserved};
use node_agent::verify::Status;
use support::FixtureHost;

const LAYOUT: &str = r#"
[isolation]
housekeeping_cpus = "0-1"
isolated_cpus = "2-15"
engine_units = ["trading-engine"]

[limits]
"*" = { nofile = 1000000 }
"#;

fn engine(main_pid: u32) -> ObservedUnit {
    ObservedUnit {
        unit: "trading-engine.service".into(),
        load_state: "loaded".into(),
        main_pid,
        limits: [
            ("LimitNOFILE".to_owned(), 524_288),
            ("LimitNOFILESoft".to_owned(), 1024),
        ]
        .into(),
        cpu_affinity: None,
    }
}

#[test]
fn a_layout_naming_cpus_the_host_lacks_is_invalid_input() {
    let fx = FixtureHost::tuned();
    let path = fx.profile(
        "elsewhere",
        "[isolation]\nhousekeeping_cpus = \"0-1\"\nisolated_cpus = \"2-40\"\n",
    );
    let out = fx.agentctl(&["tune", "verify", "--profile", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err.trim_end(),
        format!(
            "agentctl: error: {}: isolation.isolated_cpus 2-40: CPU 16-40 is not online on this \
             host (online: 0-15)",
            path.display()
        )
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn engine_and_limits_drop_ins_are_planned_written_reloaded_and_rolled_back() {
    let fx = FixtureHost::tuned();
    let profile = profile::load(
        fx.profile("layout", LAYOUT).to_str().unwrap(),
        &SearchPath::new(Vec::new()),
    )
    .unwrap();
    let host = fx.host();
    let state = StateDir::new(fx.state_dir());
    let audit = Audit::new(Some(&fx.state_dir()));
    let before = fx.snapshot();
    let observed = UnitsObserved::Units(vec![engine(0)]);

    let (plan, report) = apply::plan(&host, &profile, None, Some(&observed));
    let affinity = report
        .items
        .iter()
        .find(|i| i.key == "isolation.trading-engine.service.cpu_affinity")
        .unwrap();
    assert_eq!(affinity.status, Status::Drift);
    assert_eq!(affinity.actual.as_deref(), Some("all"));
    let soft = report
        .items
        .iter()
        .find(|i| i.key == "units.trading-engine.service.nofile.soft")
        .unwrap();
    assert_eq!(
        (soft.status, soft.actual.as_deref()),
        (Status::Drift, Some("1024"))
    );
    let files: Vec<&str> = plan.changes.iter().map(|c| c.key.as_str()).collect();
    assert!(
        files.contains(&"/etc/systemd/system/trading-engine.service.d/zz-node-agent-cpu.conf"),
        "{files:?}"
    );
    assert_eq!(
        files
            .iter()
            .filter(
                |f| **f == "/etc/systemd/system/trading-engine.service.d/zz-node-agent-limits.conf"
            )
            .count(),
        1,
        "soft and hard are fixed by one drop-in, planned once: {files:?}"
    );

    let reloads = Cell::new(0);
    let mut reload = |op: SystemdOp<'_>| -> Result<(), String> {
        assert_eq!(op, SystemdOp::Reload);
        reloads.set(reloads.get() + 1);
        Ok(())
    };
    let mut system = RecordingSystem::default();
    let mut session = Session {
        host: &host,
        state: &state,
        system: &mut system,
        audit: &audit,
        caller: Caller::current(),
        units: Some(observed),
        systemd: Some(&mut reload),
    };
    let outcome = apply::apply(&mut session, &profile, None).expect("apply");
    assert!(outcome.systemd_reload_error.is_none());
    let cpu = std::fs::read_to_string(
        fx.real("/etc/systemd/system/trading-engine.service.d/zz-node-agent-cpu.conf"),
    )
    .unwrap();
    assert!(cpu.ends_with("[Service]\nCPUAffinity=2-15\n"), "{cpu}");
    let limits = std::fs::read_to_string(
        fx.real("/etc/systemd/system/trading-engine.service.d/zz-node-agent-limits.conf"),
    )
    .unwrap();
    assert!(
        limits.ends_with("[Service]\nLimitNOFILE=1000000:1000000\n"),
        "{limits}"
    );

    let out = apply::rollback(&mut session, false).expect("rollback");
    assert!(out.is_complete());
    drop(session);
    assert_eq!(
        reloads.get(),
        2,
        "one reload after apply, one after rollback"
    );
    assert!(
        !fx.real("/etc/systemd/system/trading-engine.service.d/zz-node-agent-cpu.conf")
            .exists()
    );
    // The directories apply created for the drop-ins stay (empty); every file is as before.
    let after: Vec<_> = fx
        .snapshot()
        .into_iter()
        .filter(|(p, _)| !p.starts_with("etc/systemd"))
        .collect();
    let before: Vec<_> = before.into_iter().collect();
    let paths = |v: &[(std::path::PathBuf, support::Node)]| -> Vec<std::path::PathBuf> {
        v.iter().map(|(p, _)| p.clone()).collect()
    };
    assert_eq!(paths(&before), paths(&after));
    assert!(before == after, "a file differs after rollback");
}

const HOUSEKEEPING_ONLY: &str = r#"
[isolation]
housekeeping_cpus = "0-1"
isolated_cpus = "2-15"
"#;

fn item<'r>(report: &'r node_agent::verify::Report, key: &str) -> &'r node_agent::verify::Item {
    report
        .items
        .iter()
        .find(|i| i.key == key)
        .unwrap_or_else(|| panic!("no item {key}"))
}

#[test]
fn without_systemd_as_init_its_affinity_is_unsupported_and_pid1_left_alone() {
    let fx = FixtureHost::tuned();
    let profile = profile::load(
        fx.profile("hk", HOUSEKEEPING_ONLY).to_str().unwrap(),
        &SearchPath::new(Vec::new()),
    )
    .unwrap();
    let (plan, report) = apply::plan(&fx.host(), &profile, None, None);
    let it = item(&report, "isolation.systemd.cpu_affinity");
    assert_eq!(it.status, Status::Unsupported);
    assert_eq!(
        it.reason.as_deref(),
        Some("systemd is not the init system here (sd_booted)")
    );
    assert!(
        !report
            .items
            .iter()
            .any(|i| i.key == "isolation.systemd.pid1_affinity")
    );
    assert!(
        !plan
            .changes
            .iter()
            .any(|c| c.key.contains("system.conf.d") || c.key.contains("pid1")),
        "{:?}",
        plan.changes
    );
}

/// systemd's CPUAffinity= drop-in and PID 1's running affinity: apply writes the one and sets
/// the other (journaled with its original), rollback removes the drop-in and sets PID 1 back,
/// since systemd never undoes a CPUAffinity= that went away.
#[test]
fn systemd_affinity_drop_in_and_pid1_are_applied_and_rolled_back() {
    let fx = FixtureHost::tuned();
    fx.write("/run/systemd/system/.keep", "");
    let profile = profile::load(
        fx.profile("hk", HOUSEKEEPING_ONLY).to_str().unwrap(),
        &SearchPath::new(Vec::new()),
    )
    .unwrap();
    let host = fx.host();
    let state = StateDir::new(fx.state_dir());
    let audit = Audit::new(Some(&fx.state_dir()));
    let drop_in = "/etc/systemd/system.conf.d/zz-node-agent.conf";

    let (plan, report) = apply::plan(&host, &profile, None, None);
    let conf = item(&report, "isolation.systemd.cpu_affinity");
    assert_eq!(
        (conf.status, conf.actual.as_deref(), conf.path.as_deref()),
        (Status::Drift, Some("absent"), Some(drop_in))
    );
    let pid1 = item(&report, "isolation.systemd.pid1_affinity");
    assert_eq!(
        (pid1.status, pid1.expected.as_str(), pid1.actual.as_deref()),
        (Status::Drift, "0-1", Some("0-15"))
    );
    let keys: Vec<&str> = plan.changes.iter().map(|c| c.key.as_str()).collect();
    assert!(keys.contains(&drop_in), "{keys:?}");
    assert!(
        keys.contains(&"isolation.systemd.pid1_affinity"),
        "{keys:?}"
    );

    let ops = std::cell::RefCell::new(Vec::new());
    let mut hook = |op: SystemdOp<'_>| -> Result<(), String> {
        ops.borrow_mut().push(format!("{op:?}"));
        Ok(())
    };
    let mut system = RecordingSystem::default();
    let mut session = Session {
        host: &host,
        state: &state,
        system: &mut system,
        audit: &audit,
        caller: Caller::current(),
        units: None,
        systemd: Some(&mut hook),
    };
    let outcome = apply::apply(&mut session, &profile, None).expect("apply");
    assert!(outcome.systemd_reload_error.is_none());
    assert_eq!(
        std::fs::read_to_string(fx.real(drop_in)).unwrap(),
        "# Written by node-agent (agentctl tune apply); do not edit.\n\
         # Removed by `agentctl tune rollback`.\n[Manager]\nCPUAffinity=0-1\n"
    );
    // What systemd does on the reload (and RealSystem's sched_setaffinity would do).
    fx.write(
        "/proc/1/status",
        support::proc_status("systemd", 1, 0, "0-1", 18),
    );
    assert_eq!(
        item(
            &node_agent::tuning::verify(&host, &profile),
            "isolation.systemd.pid1_affinity"
        )
        .status,
        Status::Pass
    );

    let out = apply::rollback(&mut session, false).expect("rollback");
    assert!(out.is_complete(), "{out:?}");
    drop(session);
    assert!(!fx.real(drop_in).exists());
    assert_eq!(
        system.calls,
        ["set_affinity 1 0-1", "set_affinity 1 0-15"],
        "PID 1 set on apply and put back on rollback"
    );
    assert_eq!(*ops.borrow(), ["Reload", "Reload"]);
}
