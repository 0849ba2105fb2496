//! Real systemd under systemd-nspawn (TESTING.md tier 3): the harness itself, and the D-Bus
//! patterns the agent's unit management builds on (Subscribe, then the JobRemoved stream, then
//! the job; unit and service properties read fresh).
//!
//! Opt-in: runs only with `NODE_AGENT_SYSTEMD_TESTS=1`, as root; otherwise each test says on
//! stderr that it was skipped and passes. Every test removes its containers and checks that
//! nothing of them is left (cgroups, state directory with rootfs copy and bus socket,
//! processes).

use std::time::Duration;

use futures_util::StreamExt;
use node_agent_e2e::nspawn::{self, BootOptions, Container};
use node_agent_e2e::standin::{self, Event, UnitSpec};
use node_agent_e2e::{Error, systemd_tests_enabled};
use zbus::OwnedObjectPath;
use zbus::proxy::CacheProperties;
use zbus_systemd::systemd1::{JobRemovedStream, ManagerProxy, ServiceProxy, UnitProxy};

/// Bound on every wait for a job, a state change or a log line: far above what they take (well
/// under a second), low enough that a hang fails the test rather than CI.
const WAIT: Duration = Duration::from_secs(30);
/// Drain of the trading-engine stand-in.
const DRAIN: Duration = Duration::from_millis(400);

fn assert_clean(name: &str) {
    let left = nspawn::leftovers(name).unwrap();
    assert!(left.is_empty(), "container {name} left behind: {left:?}");
}

/// Waits for the JobRemoved signal of `job` on a stream created before the job was submitted
/// (after Manager.Subscribe), and returns the job's result (`done`, `failed`, ...).
async fn job_result(removed: &mut JobRemovedStream, job: &OwnedObjectPath) -> String {
    let found = tokio::time::timeout(WAIT, async {
        while let Some(signal) = removed.next().await {
            let args = signal.args().unwrap();
            if args.job() == job {
                return args.result().to_owned();
            }
        }
        panic!("JobRemoved stream ended before job {job:?} was removed");
    });
    found
        .await
        .unwrap_or_else(|_| panic!("no JobRemoved for {job:?} within {WAIT:?}"))
}

/// Proxies on `unit` that read every property from systemd (no cache), so a value read right
/// after a JobRemoved signal is the current one.
async fn fresh_unit(
    conn: &zbus::Connection,
    path: &OwnedObjectPath,
) -> (UnitProxy<'static>, ServiceProxy<'static>) {
    let unit = UnitProxy::builder(conn)
        .path(path.clone())
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .unwrap();
    let service = ServiceProxy::builder(conn)
        .path(path.clone())
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .unwrap();
    (unit, service)
}

/// Soft and hard value of one row of /proc/PID/limits (`unlimited` as u64::MAX).
fn limit(limits: &str, row: &str) -> (u64, u64) {
    let line = limits
        .lines()
        .find(|l| l.starts_with(row))
        .unwrap_or_else(|| panic!("no {row:?} in\n{limits}"));
    let mut values = line[row.len()..].split_whitespace().map(|v| match v {
        "unlimited" => u64::MAX,
        v => v.parse().unwrap(),
    });
    (values.next().unwrap(), values.next().unwrap())
}

#[tokio::test]
async fn boots_and_answers_over_the_bus() {
    if !systemd_tests_enabled("boots_and_answers_over_the_bus") {
        return;
    }
    let name = "e2e-smoke-boot";
    let mut container = Container::boot(name, BootOptions::default()).unwrap();

    let conn = container.connect().await.unwrap();
    let manager = ManagerProxy::new(&conn).await.unwrap();
    let state = manager.system_state().await.unwrap();
    assert!(
        state == "running" || state == "degraded",
        "SystemState {state}"
    );
    assert_eq!(manager.virtualization().await.unwrap(), "systemd-nspawn");

    // leader_pid() is the container's systemd: PID 1 in its namespace, in its own cgroup.
    let leader = container.leader_pid();
    let status = std::fs::read_to_string(format!("/proc/{leader}/status")).unwrap();
    let ns_pid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert_eq!(ns_pid.split_whitespace().last(), Some("1"), "{ns_pid}");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{leader}/comm"))
            .unwrap()
            .trim(),
        "systemd"
    );
    let cgroup = std::fs::read_to_string(format!("/proc/{leader}/cgroup")).unwrap();
    assert!(
        cgroup.contains(&format!("/nspawn-{name}/payload")),
        "{cgroup}"
    );

    // exec and write_file reach the container, and the hostname is the machine name.
    assert_eq!(container.exec_ok(["hostname"]).unwrap().trim(), name);
    container
        .write_file("/var/tmp/e2e-probe", "hello\n", 0o640)
        .unwrap();
    assert_eq!(
        container
            .exec_ok(["stat", "-c", "%a %s", "/var/tmp/e2e-probe"])
            .unwrap()
            .trim(),
        "640 6"
    );
    let failing = container.exec(["false"]).unwrap();
    assert_eq!(failing.status.code(), Some(1));
    assert!(container.exec_ok(["false"]).is_err());

    // One container per name: a second boot of the same name is refused, the first untouched.
    let second = Container::boot(name, BootOptions::default());
    assert!(
        matches!(&second, Err(Error::NameTaken { .. })),
        "{second:?}"
    );
    assert_eq!(manager.system_state().await.unwrap(), state);

    drop((manager, conn));
    let took = container.shutdown().unwrap();
    assert!(took > Duration::ZERO);
    assert_clean(name);
    // Idempotent.
    assert_eq!(container.shutdown().unwrap(), Duration::ZERO);
}

#[tokio::test]
async fn starts_and_stops_standin_units_over_the_bus() {
    if !systemd_tests_enabled("starts_and_stops_standin_units_over_the_bus") {
        return;
    }
    let name = "e2e-smoke-units";
    let mut container = Container::boot(name, BootOptions::default()).unwrap();
    let mut specs: Vec<UnitSpec> = UnitSpec::trading_stack()
        .into_iter()
        .map(|s| {
            if s.name == "trading-engine" {
                s.drain(DRAIN)
            } else {
                s
            }
        })
        .collect();
    specs.push(UnitSpec::new("standin-fails").fail_start(true));
    standin::install_standin_units(&container, &specs).unwrap();

    let conn = container.connect().await.unwrap();
    let manager = ManagerProxy::new(&conn).await.unwrap();
    manager.subscribe().await.unwrap();
    // The signal stream exists before any job is submitted: no JobRemoved can be missed.
    let mut removed = manager.receive_job_removed().await.unwrap();

    // Installed and loaded by the reload, none started.
    for spec in &specs {
        let path = manager.load_unit(spec.unit_name()).await.unwrap();
        let (unit, _) = fresh_unit(&conn, &path).await;
        assert_eq!(unit.load_state().await.unwrap(), "loaded", "{}", spec.name);
        assert_eq!(
            unit.active_state().await.unwrap(),
            "inactive",
            "{}",
            spec.name
        );
    }

    // Start.
    let job = manager
        .start_unit("trading-engine.service".to_owned(), "replace".to_owned())
        .await
        .unwrap();
    assert_eq!(job_result(&mut removed, &job).await, "done");
    let path = manager
        .get_unit("trading-engine.service".to_owned())
        .await
        .unwrap();
    let (unit, service) = fresh_unit(&conn, &path).await;
    assert_eq!(unit.active_state().await.unwrap(), "active");
    assert_eq!(unit.sub_state().await.unwrap(), "running");
    let main_pid = service.main_pid().await.unwrap();
    assert_ne!(main_pid, 0);
    let log = standin::wait_for_log(&container, WAIT, |log| {
        log.iter().any(|l| l.unit == "trading-engine")
    })
    .await
    .unwrap();
    let starts: Vec<_> = log.iter().filter(|l| l.unit == "trading-engine").collect();
    assert_eq!(starts.len(), 1, "{log:?}");
    assert_eq!(starts[0].event, Event::Start { pid: main_pid });

    // The manual's limits are configured; the effective ones are those capped by what the
    // container's init may grant (on a host without CAP_SYS_RESOURCE in the bounding set, as on
    // this VM kind, systemd silently clamps to its own hard limits).
    assert_eq!(service.limit_nofile().await.unwrap(), 1_000_000);
    assert_eq!(service.limit_nproc().await.unwrap(), 65_536);
    assert_eq!(service.limit_memlock().await.unwrap(), u64::MAX);
    let init_limits =
        std::fs::read_to_string(format!("/proc/{}/limits", container.leader_pid())).unwrap();
    let service_limits = container
        .exec_ok(["cat", &format!("/proc/{main_pid}/limits")])
        .unwrap();
    for (row, configured) in [
        ("Max open files", 1_000_000),
        ("Max processes", 65_536),
        ("Max locked memory", u64::MAX),
    ] {
        let ceiling = limit(&init_limits, row).1;
        let expected = configured.min(ceiling);
        assert_eq!(
            limit(&service_limits, row),
            (expected, expected),
            "{row}: configured {configured}, init's hard limit {ceiling}"
        );
    }

    // Stop: SIGTERM, the drain, exit 0; the stop job ends after the stand-in exited.
    let job = manager
        .stop_unit("trading-engine.service".to_owned(), "replace".to_owned())
        .await
        .unwrap();
    assert_eq!(job_result(&mut removed, &job).await, "done");
    assert_eq!(unit.active_state().await.unwrap(), "inactive");
    assert_eq!(service.main_pid().await.unwrap(), 0);
    assert_eq!(service.result().await.unwrap(), "success");
    let log = standin::read_log(&container).unwrap();
    let events: Vec<Event> = log
        .iter()
        .filter(|l| l.unit == "trading-engine")
        .map(|l| l.event)
        .collect();
    assert_eq!(
        events,
        [
            Event::Start { pid: main_pid },
            Event::StopBegin,
            Event::StopEnd
        ]
    );
    let drain = standin::last_drain(&log, "trading-engine").unwrap();
    assert!(
        drain >= DRAIN && drain < WAIT,
        "drain {drain:?}, DRAIN_MS {DRAIN:?}"
    );

    // A stand-in that fails at start: the Type=simple job is done (forked), then the unit fails.
    let path = manager
        .load_unit("standin-fails.service".to_owned())
        .await
        .unwrap();
    let watched = UnitProxy::new(&conn, path.clone()).await.unwrap();
    let mut states = watched.receive_active_state_changed().await;
    let job = manager
        .start_unit("standin-fails.service".to_owned(), "replace".to_owned())
        .await
        .unwrap();
    assert_eq!(job_result(&mut removed, &job).await, "done");
    tokio::time::timeout(WAIT, async {
        while let Some(change) = states.next().await {
            if change.get().await.unwrap() == "failed" {
                return;
            }
        }
        panic!("ActiveState stream ended");
    })
    .await
    .unwrap_or_else(|_| panic!("standin-fails not failed within {WAIT:?}"));
    let (_, failed) = fresh_unit(&conn, &path).await;
    assert_eq!(failed.result().await.unwrap(), "exit-code");
    assert_eq!(failed.exec_main_status().await.unwrap(), 1);
    let log = standin::read_log(&container).unwrap();
    assert!(
        log.iter()
            .any(|l| l.unit == "standin-fails" && l.event == Event::FailStart),
        "{log:?}"
    );

    drop((states, watched, unit, service, removed, manager, conn));
    container.shutdown().unwrap();
    assert_clean(name);
}

#[tokio::test]
async fn two_containers_run_side_by_side() {
    if !systemd_tests_enabled("two_containers_run_side_by_side") {
        return;
    }
    let names = ["e2e-smoke-pair-a", "e2e-smoke-pair-b"];
    // Booted at the same time, from two threads.
    let booted: Vec<Container> = std::thread::scope(|scope| {
        let handles: Vec<_> = names
            .iter()
            .map(|name| scope.spawn(move || Container::boot(name, BootOptions::default())))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect()
    });
    let [mut a, mut b] = <[Container; 2]>::try_from(booted).unwrap();
    assert_ne!(a.leader_pid(), b.leader_pid());
    assert_ne!(a.bus_address(), b.bus_address());

    for (container, name) in [(&a, names[0]), (&b, names[1])] {
        let cgroup =
            std::fs::read_to_string(format!("/proc/{}/cgroup", container.leader_pid())).unwrap();
        assert!(
            cgroup.contains(&format!("/nspawn-{name}/payload")),
            "{cgroup}"
        );
        assert_eq!(container.exec_ok(["hostname"]).unwrap().trim(), name);
        standin::install_standin_units(container, &UnitSpec::trading_stack()).unwrap();
    }
    a.write_file("/var/tmp/only-in-a", "a", 0o644).unwrap();
    assert!(
        b.exec(["test", "-e", "/var/tmp/only-in-a"])
            .unwrap()
            .status
            .code()
            == Some(1)
    );

    // Each systemd runs its own trading-engine, over its own bus.
    for container in [&a, &b] {
        let conn = container.connect().await.unwrap();
        let manager = ManagerProxy::new(&conn).await.unwrap();
        manager.subscribe().await.unwrap();
        let mut removed = manager.receive_job_removed().await.unwrap();
        let job = manager
            .start_unit("trading-engine.service".to_owned(), "replace".to_owned())
            .await
            .unwrap();
        assert_eq!(job_result(&mut removed, &job).await, "done");
        let path = manager
            .get_unit("trading-engine.service".to_owned())
            .await
            .unwrap();
        let (unit, _) = fresh_unit(&conn, &path).await;
        assert_eq!(unit.active_state().await.unwrap(), "active");
        let state = manager.system_state().await.unwrap();
        assert!(state == "running" || state == "degraded", "{state}");
    }
    for container in [&a, &b] {
        let log = standin::wait_for_log(container, WAIT, |log| !log.is_empty())
            .await
            .unwrap();
        assert_eq!(log.len(), 1, "{}: {log:?}", container.name());
        assert_eq!(log[0].unit, "trading-engine");
    }

    a.shutdown().unwrap();
    // b is unaffected by a's power-off.
    let conn = b.connect().await.unwrap();
    let manager = ManagerProxy::new(&conn).await.unwrap();
    let state = manager.system_state().await.unwrap();
    assert!(state == "running" || state == "degraded", "{state}");
    drop((manager, conn));
    b.shutdown().unwrap();
    for name in names {
        assert_clean(name);
    }
}

#[test]
fn a_failed_boot_cleans_up_and_shows_the_console() {
    if !systemd_tests_enabled("a_failed_boot_cleans_up_and_shows_the_console") {
        return;
    }
    let name = "e2e-smoke-badboot";
    let err = Container::boot(name, BootOptions::default().arg("--no-such-option")).unwrap_err();
    match &err {
        Error::Exited { console, .. } => assert!(console.contains("no-such-option"), "{err}"),
        other => panic!("expected Exited, got {other}"),
    }
    assert_clean(name);
}

#[test]
fn shutdown_without_a_bus_kills_by_pid_and_cleans_up() {
    if !systemd_tests_enabled("shutdown_without_a_bus_kills_by_pid_and_cleans_up") {
        return;
    }
    let name = "e2e-smoke-kill";
    let mut container = Container::boot(name, BootOptions::default()).unwrap();
    // Unlink the bus socket: PowerOff cannot reach the container any more.
    let socket = container.bus_address();
    std::fs::remove_file(socket.strip_prefix("unix:path=").unwrap()).unwrap();
    let leader = container.leader_pid();

    let err = container.shutdown().unwrap_err();
    assert!(err.to_string().contains("killed by PID"), "{err}");
    assert!(!std::path::Path::new(&format!("/proc/{leader}")).exists());
    assert_clean(name);
}
