//! The stray-task audit (`tuning::isolation::tasks`): which tasks may run, or last ran, on the
//! isolated CPUs.
//!
//! Fixture tier: a /proc tree of a 16-CPU host (housekeeping 0-1, isolated 2-15, engine unit
//! `trading-engine.service`) in the kernel's exact formats (stat as fs/proc/array.c prints it,
//! status from `support::proc_status`, cgroup v2 and v1 lines), with every case the audit must
//! tell apart; the exact lists, the JSON, the table and the verify item are asserted.
//!
//! Real-kernel tier (opt-in with `NODE_AGENT_PRIVILEGED_TESTS=1`; this VM has 2 CPUs, so
//! housekeeping 0, isolated 1): a process started with `taskset -c 1` is reported by its pid and
//! is gone from the next audit once it has ended; one started with `taskset -c 0` is not.

mod support;

#[path = "support/real.rs"]
mod real;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use node_agent::profile::Isolation;
use node_agent::tuning::isolation::tasks::{self, Task, TaskAudit};
use node_agent::verify::{Class, Status};
use serde_json::{Value as Json, json};
use support::{FixtureHost, proc_status};

const LAYOUT: &str = r#"
housekeeping_cpus = "0-1"
isolated_cpus = "2-15"
engine_units = ["trading-engine"]
"#;

fn layout(toml_text: &str) -> Isolation {
    toml::from_str(toml_text).expect("a valid [isolation] table")
}

// ---------------------------------------------------------------------------------------------
// /proc in the kernel's formats

/// PF_KTHREAD | PF_NOFREEZE | ... as a per-CPU kthread shows it (ksoftirqd/N: 0x04208040).
const KTHREAD_PERCPU: u64 = 0x0420_8040;
/// A workqueue worker: PF_WQ_WORKER added (kworker/N:M: 0x04208060).
const KWORKER: u64 = 0x0420_8060;
/// A movable kthread (rcu_preempt, kthreadd: 0x00208040).
const KTHREAD: u64 = 0x0020_8040;
/// A user process after exec (PF_RANDOMIZE: 0x00400000).
const USER: u64 = 0x0040_0000;
/// A user process that used root's privileges (PF_SUPERPRIV added: 0x00400100).
const USER_PRIV: u64 = 0x0040_0100;

/// /proc/PID/stat as do_task_stat prints it: 52 fields, the comm in parentheses as is.
fn stat(pid: u32, tid: u32, comm: &str, state: char, flags: u64, threads: u32, cpu: u32) -> String {
    let kernel = flags & tasks::PF_KTHREAD != 0;
    let line = if kernel {
        format!(
            "{tid} ({comm}) {state} 2 0 0 0 -1 {flags} 0 0 0 0 0 560 0 0 20 0 {threads} 0 23 0 0 \
             18446744073709551615 0 0 0 0 0 0 0 2147483647 0 1 0 0 17 {cpu} 0 0 0 0 0 0 0 0 0 0 \
             0 0 0\n"
        )
    } else {
        format!(
            "{tid} ({comm}) {state} 1 {pid} {pid} 0 -1 {flags} 102 0 0 0 3 5 0 0 20 0 {threads} 0 \
             721388 3133440 411 18446744073709551615 93952397754368 93952397774249 \
             140730415145664 0 0 0 0 0 0 0 0 0 17 {cpu} 0 0 0 0 0 93952397790256 93952397791872 \
             93953039060992 140730415151831 140730415151851 140730415151851 140730415153131 0\n"
        )
    };
    let after_comm = &line[line.rfind(')').expect("comm") + 2..];
    assert_eq!(after_comm.split(' ').count(), 50, "52 stat fields: {line}");
    line
}

/// One task of a process as the kernel shows it.
struct T<'a> {
    tid: u32,
    comm: &'a str,
    state: char,
    flags: u64,
    cpus: &'a str,
    last: u32,
}

fn t<'a>(tid: u32, comm: &'a str, flags: u64, cpus: &'a str, last: u32) -> T<'a> {
    T {
        tid,
        comm,
        state: 'S',
        flags,
        cpus,
        last,
    }
}

/// Writes a process: /proc/PID/{stat,status,cgroup} for the main thread (the first task) and
/// /proc/PID/task/TID/{stat,status} for every task, as the kernel has them.
fn process(fx: &FixtureHost, pid: u32, cgroup: &str, tasks: &[T<'_>]) {
    let n = u32::try_from(tasks.len()).unwrap();
    let possible = fx.spec().possible;
    for (i, t) in tasks.iter().enumerate() {
        let st = stat(pid, t.tid, t.comm, t.state, t.flags, n, t.last);
        let status = proc_status(t.comm, pid, t.tid, t.cpus, possible);
        if i == 0 {
            assert_eq!(t.tid, pid, "the main thread comes first");
            fx.write(&format!("/proc/{pid}/stat"), &st);
            fx.write(&format!("/proc/{pid}/status"), &status);
        }
        fx.write(&format!("/proc/{pid}/task/{}/stat", t.tid), &st);
        fx.write(&format!("/proc/{pid}/task/{}/status", t.tid), &status);
    }
    fx.write(&format!("/proc/{pid}/cgroup"), cgroup);
}

const ROOT_V2: &str = "0::/\n";

/// cgroup v1 (legacy hierarchy) as a Debian 10 / RHEL 7 host shows it.
fn cgroup_v1(unit_path: &str) -> String {
    format!(
        "12:cpuset:/\n11:memory:{unit_path}\n10:pids:{unit_path}\n9:devices:{unit_path}\n\
         8:blkio:{unit_path}\n7:cpu,cpuacct:{unit_path}\n6:freezer:/\n5:net_cls,net_prio:/\n\
         4:perf_event:/\n3:hugetlb:/\n2:rdma:/\n1:name=systemd:{unit_path}\n"
    )
}

/// The host of the fixture tests: every case the audit tells apart.
fn trading_host() -> FixtureHost {
    let fx = FixtureHost::tuned();
    // systemd before apply: may run anywhere.
    process(
        &fx,
        1,
        "0::/init.scope\n",
        &[t(1, "systemd", USER_PRIV, "0-15", 0)],
    );
    // kthreadd on housekeeping: not reported.
    process(&fx, 2, ROOT_V2, &[t(2, "kthreadd", KTHREAD, "0-1", 1)]);
    // A movable kernel thread on every CPU: stray (it can be moved, and should be).
    process(
        &fx,
        15,
        ROOT_V2,
        &[t(15, "rcu_preempt", KTHREAD, "0-15", 0)],
    );
    // Per-CPU kthreads of isolated CPU 5 and of housekeeping CPU 0.
    process(
        &fx,
        42,
        ROOT_V2,
        &[t(42, "ksoftirqd/5", KTHREAD_PERCPU, "5", 5)],
    );
    process(
        &fx,
        14,
        ROOT_V2,
        &[t(14, "ksoftirqd/0", KTHREAD_PERCPU, "0", 0)],
    );
    process(
        &fx,
        120,
        ROOT_V2,
        &[t(120, "kworker/5:1-events", KWORKER, "5", 5)],
    );
    // An unbound workqueue worker: PF_NO_SETAFFINITY, CPUs from the workqueue cpumask.
    process(
        &fx,
        130,
        ROOT_V2,
        &[t(130, "kworker/u36:2-events_unbound", KWORKER, "0-15", 7)],
    );
    // A zombie that last ran on an isolated CPU: it will not run again.
    process(
        &fx,
        777,
        "0::/system.slice/cron.service\n",
        &[T {
            state: 'Z',
            ..t(777, "sh", USER, "0-15", 6)
        }],
    );
    // A user task on all CPUs (cgroup v2).
    process(
        &fx,
        812,
        "0::/system.slice/chrony.service\n",
        &[t(812, "chronyd", USER_PRIV, "0-15", 1)],
    );
    // Multi-threaded (cgroup v1): main thread and one thread on housekeeping, one thread
    // allowed on housekeeping only but last ran on isolated CPU 9, one thread that ended.
    process(
        &fx,
        955,
        &cgroup_v1("/system.slice/risk-gateway.service"),
        &[
            t(955, "java", USER, "0-1", 0),
            t(957, "GC Thread#0", USER, "0-1", 9),
            t(958, "C2 CompilerThre", USER, "0-1", 1),
            t(959, "VM Periodic Tas", USER, "0-1", 1),
        ],
    );
    fx.remove("/proc/955/task/959/stat");
    // A comm with spaces and parentheses.
    process(
        &fx,
        1500,
        "0::/system.slice/odd-name.service\n",
        &[t(1500, "a) b (c) d", USER, "0-15", 3)],
    );
    // Pinned to isolated CPU 5 by hand (`taskset -c 5`) from a login session.
    process(
        &fx,
        2001,
        "0::/user.slice/user-1000.slice/session-4.scope\n",
        &[t(2001, "feed-capture", USER, "5", 5)],
    );
    // Two threads, no task/ (fixture-only): its main thread alone.
    fx.write(
        "/proc/2600/stat",
        stat(2600, 2600, "md-logger", 'S', USER, 2, 0),
    );
    fx.write(
        "/proc/2600/status",
        proc_status("md-logger", 2600, 0, "0-15", fx.spec().possible),
    );
    fx.write("/proc/2600/cgroup", "0::/system.slice/md-logger.service\n");
    // The engine unit's own tasks, in a sub-cgroup of its unit: left out.
    process(
        &fx,
        3000,
        "0::/system.slice/trading-engine.service/payload\n",
        &[
            t(3000, "engine", USER, "2-15", 4),
            t(3002, "engine-md", USER, "3", 3),
        ],
    );
    // Ended during the scan: the directory is there, stat is gone.
    fx.write(
        "/proc/4321/status",
        proc_status("gone", 4321, 0, "0-15", fx.spec().possible),
    );
    fx.write("/proc/4321/cgroup", "0::/system.slice/gone.service\n");
    fx
}

/// (pid, tid, comm, unit, affinity, last CPU) of a task.
type Row<'a> = (u32, u32, &'a str, Option<&'a str>, String, u32);

fn rows(tasks: &[Task]) -> Vec<Row<'_>> {
    tasks
        .iter()
        .map(|t| {
            (
                t.pid,
                t.tid,
                t.comm.as_str(),
                t.unit.as_deref(),
                t.affinity.to_string(),
                t.last_cpu,
            )
        })
        .collect()
}

fn audit_of(fx: &FixtureHost) -> TaskAudit {
    tasks::audit(&fx.host(), &layout(LAYOUT)).expect("audit")
}

// ---------------------------------------------------------------------------------------------
// Fixture tier

#[test]
fn strays_expected_kthreads_and_exclusions_are_told_apart() {
    let fx = trading_host();
    let a = audit_of(&fx);
    assert_eq!(
        rows(&a.stray),
        vec![
            (1, 1, "systemd", Some("init.scope"), "0-15".into(), 0),
            (15, 15, "rcu_preempt", None, "0-15".into(), 0),
            (
                812,
                812,
                "chronyd",
                Some("chrony.service"),
                "0-15".into(),
                1
            ),
            (
                955,
                957,
                "GC Thread#0",
                Some("risk-gateway.service"),
                "0-1".into(),
                9
            ),
            (
                1500,
                1500,
                "a) b (c) d",
                Some("odd-name.service"),
                "0-15".into(),
                3
            ),
            (
                2001,
                2001,
                "feed-capture",
                Some("session-4.scope"),
                "5".into(),
                5
            ),
            (
                2600,
                2600,
                "md-logger",
                Some("md-logger.service"),
                "0-15".into(),
                0
            ),
        ]
    );
    assert_eq!(
        rows(&a.expected_kthreads),
        vec![
            (42, 42, "ksoftirqd/5", None, "5".into(), 5),
            (120, 120, "kworker/5:1-events", None, "5".into(), 5),
            (
                130,
                130,
                "kworker/u36:2-events_unbound",
                None,
                "0-15".into(),
                7
            ),
        ]
    );
    // 1, 2, 14, 15, 42, 120, 130, 777 (zombie), 812, 955 + 957 + 958 (959 ended), 1500, 2001,
    // 2600 (no task/: main thread), 3000 + 3002 (engine); 4321 ended.
    assert_eq!(a.tasks_scanned, 17);
    assert_eq!(a.isolated_cpus.to_string(), "2-15");
}

#[test]
fn json_has_stable_field_names_and_compact_cpu_lists() {
    let fx = trading_host();
    let a = audit_of(&fx);
    let task = |pid: u32, tid: u32, comm: &str, unit: Option<&str>, aff: &str, last: u32| {
        json!({
            "pid": pid, "tid": tid, "comm": comm, "unit": unit, "affinity": aff,
            "last_cpu": last, "kernel_thread": false, "no_setaffinity": false,
        })
    };
    let kthread = |pid: u32, comm: &str, aff: &str, last: u32, fixed: bool| {
        json!({
            "pid": pid, "tid": pid, "comm": comm, "unit": null, "affinity": aff,
            "last_cpu": last, "kernel_thread": true, "no_setaffinity": fixed,
        })
    };
    let want = json!({
        "schema_version": 1,
        "isolated_cpus": "2-15",
        "tasks_scanned": 17,
        "stray": [
            task(1, 1, "systemd", Some("init.scope"), "0-15", 0),
            kthread(15, "rcu_preempt", "0-15", 0, false),
            task(812, 812, "chronyd", Some("chrony.service"), "0-15", 1),
            task(955, 957, "GC Thread#0", Some("risk-gateway.service"), "0-1", 9),
            task(1500, 1500, "a) b (c) d", Some("odd-name.service"), "0-15", 3),
            task(2001, 2001, "feed-capture", Some("session-4.scope"), "5", 5),
            task(2600, 2600, "md-logger", Some("md-logger.service"), "0-15", 0),
        ],
        "expected_kthreads": [
            kthread(42, "ksoftirqd/5", "5", 5, true),
            kthread(120, "kworker/5:1-events", "5", 5, true),
            kthread(130, "kworker/u36:2-events_unbound", "0-15", 7, true),
        ],
    });
    let got: Json = serde_json::from_str(&a.to_json()).expect("JSON");
    assert_eq!(got, want);
    // The field order is the declared one, which scripts reading the text may rely on.
    let text = a.to_json();
    let pos = |k: &str| text.find(&format!("\"{k}\"")).unwrap();
    assert!(pos("schema_version") < pos("isolated_cpus"));
    assert!(pos("tasks_scanned") < pos("stray") && pos("stray") < pos("expected_kthreads"));
}

#[test]
fn table_lists_strays_and_summarises_expected_kthreads_per_cpu() {
    let fx = trading_host();
    let a = audit_of(&fx);
    let mut out = Vec::new();
    tasks::render(&a, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let want = "\
7 stray tasks on isolated CPUs 2-15 (17 tasks scanned):
    PID     TID COMM             UNIT                         AFFINITY             LAST-CPU
      1       1 systemd          init.scope                   0-15                        0
     15      15 rcu_preempt      -                            0-15                        0
    812     812 chronyd          chrony.service               0-15                        1
    955     957 GC Thread#0      risk-gateway.service         0-1                         9
   1500    1500 a) b (c) d       odd-name.service             0-15                        3
   2001    2001 feed-capture     session-4.scope              5                           5
   2600    2600 md-logger        md-logger.service            0-15                        0
3 expected kernel threads on isolated CPUs (per-CPU or not movable):
  CPU 5 (2): ksoftirqd/5, kworker/5:1-events
  CPUs 0-15 (1): kworker/u36:2-events_unbound
";
    assert_eq!(text, want);
    assert!(text.lines().all(|l| l.chars().count() <= 100));
}

#[test]
fn long_names_are_cut_to_fit_the_table() {
    let fx = FixtureHost::tuned();
    let unit = "market-data-feed-handler-primary-venue@instance-01.service";
    process(
        &fx,
        4000,
        &format!("0::/system.slice/system-market.slice/{unit}\n"),
        &[t(
            4000,
            "kworker/u36:2-events_unbound",
            USER,
            "0,2,4,6,8,10,12,14",
            2,
        )],
    );
    let a = audit_of(&fx);
    assert_eq!(a.stray[0].unit.as_deref(), Some(unit));
    let mut out = Vec::new();
    tasks::render(&a, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let row = text.lines().nth(2).unwrap();
    assert_eq!(
        row,
        "   4000    4000 kworker/u36:2-e… market-data-feed-handler-pr… 0,2,4,6,8,10,12,14          2"
    );
}

#[test]
fn verify_item_names_the_first_strays_and_has_no_fix() {
    let fx = trading_host();
    let mut items = Vec::new();
    tasks::verify(&fx.host(), &layout(LAYOUT), &mut items);
    assert_eq!(items.len(), 1);
    let item = &items[0];
    assert_eq!(
        (item.class, item.key.as_str(), item.expected.as_str()),
        (Class::Isolation, "isolation.stray_tasks", "none")
    );
    assert_eq!(item.status, Status::Drift);
    assert_eq!(
        item.actual.as_deref(),
        Some("7 tasks: systemd (1), rcu_preempt (15), chronyd (812), …")
    );
    let reason = item.reason.as_deref().unwrap();
    assert!(
        reason.contains("agentctl isolation audit") && reason.contains("2-15"),
        "{reason}"
    );
    assert!(item.fixes.is_empty(), "apply does not move foreign tasks");
}

#[test]
fn threads_of_one_process_are_named_once_in_the_item() {
    let fx = FixtureHost::tuned();
    process(
        &fx,
        600,
        "0::/system.slice/oms.service\n",
        &[
            t(600, "oms", USER, "0-15", 0),
            t(601, "oms-io", USER, "0-15", 2),
        ],
    );
    let mut items = Vec::new();
    tasks::verify(&fx.host(), &layout(LAYOUT), &mut items);
    assert_eq!(items[0].actual.as_deref(), Some("2 tasks: oms (600)"));
}

#[test]
fn a_host_with_only_housekeeping_tasks_passes() {
    let fx = FixtureHost::tuned();
    process(
        &fx,
        1,
        "0::/init.scope\n",
        &[t(1, "systemd", USER_PRIV, "0-1", 0)],
    );
    process(
        &fx,
        14,
        ROOT_V2,
        &[t(14, "ksoftirqd/0", KTHREAD_PERCPU, "0", 0)],
    );
    process(
        &fx,
        42,
        ROOT_V2,
        &[t(42, "ksoftirqd/5", KTHREAD_PERCPU, "5", 5)],
    );
    let mut items = Vec::new();
    tasks::verify(&fx.host(), &layout(LAYOUT), &mut items);
    assert_eq!(items[0].status, Status::Pass);
    assert_eq!(items[0].actual.as_deref(), Some("none"));
    // The per-CPU kthread is still listed by the audit, apart.
    let a = audit_of(&fx);
    assert_eq!((a.tasks_scanned, a.stray.len()), (3, 0));
    assert_eq!(rows(&a.expected_kthreads)[0].2, "ksoftirqd/5");
    let mut out = Vec::new();
    tasks::render(&a, &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "no stray tasks on isolated CPUs 2-15 (3 tasks scanned)\n\
         1 expected kernel thread on isolated CPUs (per-CPU or not movable):\n  \
         CPU 5 (1): ksoftirqd/5\n"
    );
}

#[test]
fn the_default_fixture_without_stat_files_scans_nothing_and_passes() {
    // FixtureHost has /proc/1/status only: to the audit, a task that ended.
    let fx = FixtureHost::tuned();
    let a = audit_of(&fx);
    assert_eq!((a.tasks_scanned, a.stray.len()), (0, 0));
}

#[test]
fn an_unreadable_task_file_is_an_error_item() {
    let fx = trading_host();
    fx.make_unreadable("/proc/812/status");
    let err = tasks::audit(&fx.host(), &layout(LAYOUT)).unwrap_err();
    assert!(err.to_string().contains("/proc/812/status"), "{err}");
    let mut items = Vec::new();
    tasks::verify(&fx.host(), &layout(LAYOUT), &mut items);
    assert_eq!(items[0].status, Status::Error);
    assert!(
        items[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("/proc/812/status"),
        "{:?}",
        items[0].reason
    );
}

#[test]
fn a_stat_file_in_another_format_is_an_error() {
    let fx = trading_host();
    fx.write("/proc/812/stat", "812 (chronyd) S 1 812\n");
    let err = tasks::audit(&fx.host(), &layout(LAYOUT)).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("/proc/812/stat"), "{msg}");
    assert!(
        std::error::Error::source(&err)
            .unwrap()
            .to_string()
            .contains("unexpected format"),
        "{msg}"
    );
}

#[test]
fn the_item_is_part_of_a_full_verify_with_an_isolation_section() {
    let fx = trading_host();
    let path = fx.profile("layout", &format!("[isolation]{LAYOUT}"));
    let profile = node_agent::profile::load(
        path.to_str().unwrap(),
        &node_agent::profile::SearchPath::new(Vec::new()),
    )
    .unwrap();
    let report = node_agent::tuning::verify(&fx.host(), &profile);
    let item = report
        .items
        .iter()
        .find(|i| i.key == "isolation.stray_tasks")
        .expect("the stray-task item");
    assert_eq!(item.status, Status::Drift);
}

// ---------------------------------------------------------------------------------------------
// Real-kernel tier

/// A child process ended by its pid when dropped (also when the test panics).
struct Running(Option<Child>);

impl Running {
    /// `taskset -c CPU sh -c 'echo ready; exec sleep 30'`, returned once it said `ready`: by
    /// then taskset has set the affinity and the task has run on that CPU.
    fn pinned(cpu: &str) -> Running {
        let mut child = Command::new("taskset")
            .args(["-c", cpu, "sh", "-c", "echo ready; exec sleep 30"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn taskset (util-linux)");
        let stdout = child.stdout.take().expect("stdout");
        let running = Running(Some(child));
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the child's first line");
        assert_eq!(
            line, "ready\n",
            "taskset -c {cpu} failed to start the child"
        );
        running
    }

    fn pid(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    /// SIGKILL to its pid, then reap it.
    fn end(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.end();
    }
}

#[test]
fn real_kernel_a_task_pinned_to_the_isolated_cpu_is_reported_until_it_ends() {
    if !real::enabled("real_kernel_a_task_pinned_to_the_isolated_cpu_is_reported_until_it_ends") {
        return;
    }
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let online: node_agent::profile::types::CpuList = online.trim().parse().unwrap();
    assert!(
        online.contains(0) && online.contains(1),
        "this test needs CPUs 0 and 1 online (have {online})"
    );
    let iso = layout("housekeeping_cpus = \"0\"\nisolated_cpus = \"1\"\n");
    let host = node_agent::host::HostRoot::default();
    let mut on_iso = Running::pinned("1");
    let on_hk = Running::pinned("0");
    let (pid, hk_pid) = (on_iso.pid(), on_hk.pid());

    let a = tasks::audit(&host, &iso).expect("audit of this host");
    let found: Vec<&Task> = a.stray.iter().filter(|t| t.pid == pid).collect();
    assert_eq!(found.len(), 1, "pid {pid} once in {:#?}", a.stray);
    let t = found[0];
    assert_eq!(
        (t.tid, t.affinity.to_string(), t.last_cpu),
        (pid, "1".into(), 1)
    );
    assert!(!t.kernel_thread && !t.no_setaffinity, "{t:?}");
    assert!(["sh", "sleep"].contains(&t.comm.as_str()), "{t:?}");
    assert!(
        !a.stray
            .iter()
            .chain(&a.expected_kthreads)
            .any(|t| t.pid == hk_pid),
        "the task on housekeeping CPU 0 (pid {hk_pid}) is not reported: {:#?}",
        a.stray
    );
    // Per-CPU kthreads of CPU 1 are expected, never strays.
    assert!(
        a.expected_kthreads
            .iter()
            .any(|t| t.comm == "ksoftirqd/1" && t.affinity.to_string() == "1"),
        "{:#?}",
        a.expected_kthreads
    );
    assert!(
        !a.stray.iter().any(|t| t.comm.starts_with("ksoftirqd/")),
        "{:#?}",
        a.stray
    );
    assert!(a.tasks_scanned > a.stray.len() + a.expected_kthreads.len());

    on_iso.end();
    let a = tasks::audit(&host, &iso).expect("audit of this host");
    assert!(
        !a.stray.iter().any(|t| t.pid == pid),
        "pid {pid} ended but is still reported: {:#?}",
        a.stray
    );
    drop(on_hk);
}
