//! Fixture tier for `[isolation]`'s IRQs, workqueues and irqbalance: verify items in the
//! kernel's formats (a managed IRQ `unsupported` before any apply), apply moving them (going on
//! past a write to an IRQ the kernel still refuses), rollback restoring them byte for byte, and
//! irqbalance's configuration rewritten line by line with its restart requested.
//!
//! The fixture is the 16-CPU host of `support` (CPUs 16-17 possible but offline, so the
//! kernel's masks are 18 bits wide: `3ffff`). The IRQ tree is laid out as /proc/irq is: a
//! directory per IRQ with `smp_affinity` (mask), `smp_affinity_list`, `effective_affinity*`,
//! `node`, `spurious` and a directory named after the handler. A managed IRQ has its affinity
//! files read-only (0444), as the kernel creates them, which verify finds with a stat (the
//! fixture root's kernel-file writer would answer EPERM as the kernel does, measured on 6.18).

#[path = "support/real.rs"]
mod real;
mod support;

use std::cell::{Cell, RefCell};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use node_agent::audit::{Audit, Caller};
use node_agent::change::{Target, Value};
use node_agent::profile::{self, Profile, SearchPath};
use node_agent::rollback::apply::{self, ApplyOutcome, RollbackOutcome, Session, SystemdOp};
use node_agent::rollback::journal::StateDir;
use node_agent::system::RecordingSystem;
use node_agent::tuning;
use node_agent::verify::{Item, Report, Status};
use support::{FixtureHost, Node, proc_status};

const LAYOUT: &str = "[isolation]\nhousekeeping_cpus = \"0-1\"\nisolated_cpus = \"2-15\"\n";

/// (IRQ, smp_affinity_list, handler, managed). Numbers chosen so that byte order (1, 100, 101,
/// 130, 131, 16, ...) differs from number order.
const IRQS: &[(u32, &str, &str, bool)] = &[
    (1, "0-15", "i8042", false),
    (8, "0-15", "rtc0", false),
    (9, "0-15", "acpi", false),
    (16, "0-15", "i801_smbus", false),
    (24, "0-1", "PCIe PME", false),
    (25, "0", "aerdrv", false),
    (100, "0-15", "eth0-TxRx-0", false),
    // Pinned by hand onto an isolated CPU.
    (101, "4", "eth0-TxRx-1", false),
    // NVMe queues: managed, spread by the kernel; one of them already on housekeeping.
    (130, "4-5", "nvme0q3", true),
    (131, "0-1", "nvme0q1", true),
];

/// The IRQs verify and apply must move (outside 0-1 and not managed).
const MOVABLE_DRIFT: &[u32] = &[1, 8, 9, 16, 100, 101];
/// The managed IRQ outside housekeeping: `unsupported` at verify, never planned.
const MANAGED_OUTSIDE: u32 = 130;
/// Verify's reason for a managed IRQ (its `smp_affinity_list` read-only).
const MANAGED_REASON: &str =
    "a managed IRQ: the kernel fixed its affinity (smp_affinity_list is read-only)";

const WQ: &str = "/sys/devices/virtual/workqueue";
const WORKQUEUES: &[&str] = &["blkcg_punt_bio", "writeback"];
const REFUSED: &str = "/run/node-agent/refused-writes.json";

/// irqbalance 1.9.2's /etc/default/irqbalance as Debian 12 ships it (upstream's
/// misc/irqbalance.env, which RHEL installs as /etc/sysconfig/irqbalance).
const IRQBALANCE_ENV: &str = "\
# irqbalance is a daemon process that distributes interrupts across
# CPUs on SMP systems.  The default is to rebalance once every 10
# seconds.  This is the environment file that is specified to systemd via the
# EnvironmentFile key in the service unit file (or via whatever method the init
# system you're using has).

#
# IRQBALANCE_ONESHOT
#    After starting, wait for ten seconds, then look at the interrupt
#    load and balance it once; after balancing exit and do not change
#    it again.
#
#IRQBALANCE_ONESHOT=

#
# IRQBALANCE_BANNED_CPUS
#    64 bit bitmask which allows you to indicate which CPUs should
#    be skipped when reblancing IRQs.  CPU numbers which have their
#    corresponding bits set to one in this mask will not have any
#    IRQs assigned to them on rebalance.
#
#IRQBALANCE_BANNED_CPUS=

#
# IRQBALANCE_BANNED_CPULIST
#    The CPUs list which allows you to indicate which CPUs should
#    be skipped when reblancing IRQs. CPU numbers in CPUs list will
#    not have any IRQs assigned to them on rebalance.
#
#      The format of CPUs list is:
#        <cpu number>,...,<cpu number>
#      or a range:
#        <cpu number>-<cpu number>
#      or a mixture:
#        <cpu number>,...,<cpu number>-<cpu number>
#
#IRQBALANCE_BANNED_CPULIST=

#
# IRQBALANCE_ARGS
#    Append any args here to the irqbalance daemon as documented in the man
#    page.
#
#IRQBALANCE_ARGS=
";

// ---------------------------------------------------------------------------------------------
// The fixture

/// A CPU list as the kernel's 18-bit mask of this fixture (`smp_affinity`).
fn mask(list: &str) -> String {
    let bits = list
        .parse::<node_agent::profile::types::CpuList>()
        .unwrap()
        .iter()
        .fold(0u32, |m, c| m | 1 << c);
    format!("{bits:05x}")
}

fn irq_tree(fx: &FixtureHost) {
    fx.write("/proc/irq/default_smp_affinity", "3ffff\n");
    for &(n, list, handler, managed) in IRQS {
        let d = format!("/proc/irq/{n}");
        let first: String = list.split(['-', ',']).next().unwrap().to_owned();
        fx.write(&format!("{d}/smp_affinity"), format!("{}\n", mask(list)));
        fx.write(&format!("{d}/smp_affinity_list"), format!("{list}\n"));
        fx.write(
            &format!("{d}/effective_affinity"),
            format!("{}\n", mask(&first)),
        );
        fx.write(
            &format!("{d}/effective_affinity_list"),
            format!("{first}\n"),
        );
        fx.write(&format!("{d}/affinity_hint"), "00000\n");
        fx.write(&format!("{d}/node"), "0\n");
        fx.write(
            &format!("{d}/spurious"),
            "count 0\nunhandled 0\nlast_unhandled 0 ms\n",
        );
        std::fs::create_dir_all(fx.real(&format!("{d}/{handler}"))).unwrap();
        if managed {
            for f in ["smp_affinity", "smp_affinity_list"] {
                let p = fx.real(&format!("{d}/{f}"));
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
            }
        }
    }
}

/// The unbound workqueues as sysfs shows them on 6.x: the global mask with its two read-only
/// views, and the WQ_SYSFS workqueues with their attributes.
fn workqueue_tree(fx: &FixtureHost) {
    fx.write(&format!("{WQ}/cpumask"), "3ffff\n");
    fx.write(&format!("{WQ}/cpumask_requested"), "3ffff\n");
    fx.write(&format!("{WQ}/cpumask_isolated"), "00000\n");
    fx.write(&format!("{WQ}/uevent"), "");
    std::fs::create_dir_all(fx.real(&format!("{WQ}/power"))).unwrap();
    for f in ["cpumask_requested", "cpumask_isolated"] {
        let p = fx.real(&format!("{WQ}/{f}"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
    }
    for wq in WORKQUEUES {
        let d = format!("{WQ}/{wq}");
        fx.write(&format!("{d}/cpumask"), "3ffff\n");
        fx.write(&format!("{d}/affinity_scope"), "default (cache)\n");
        fx.write(&format!("{d}/affinity_strict"), "0\n");
        fx.write(&format!("{d}/max_active"), "256\n");
        fx.write(&format!("{d}/nice"), "0\n");
        fx.write(&format!("{d}/per_cpu"), "0\n");
        fx.write(&format!("{d}/uevent"), "");
        std::fs::create_dir_all(fx.real(&format!("{d}/power"))).unwrap();
        fx.symlink(&format!("{d}/subsystem"), "../../../../bus/workqueue");
    }
}

fn host_with_irqs() -> FixtureHost {
    let fx = FixtureHost::tuned();
    irq_tree(&fx);
    workqueue_tree(&fx);
    fx
}

/// A running irqbalance as /proc shows it (started by systemd with `environ`).
fn irqbalance_process(fx: &FixtureHost, pid: u32, environ: &[&str]) {
    let d = format!("/proc/{pid}");
    fx.write(&format!("{d}/comm"), "irqbalance\n");
    let mut env: Vec<u8> = Vec::new();
    for kv in environ {
        env.extend_from_slice(kv.as_bytes());
        env.push(0);
    }
    fx.write(&format!("{d}/environ"), env);
    fx.write(
        &format!("{d}/status"),
        proc_status("irqbalance", pid, 0, "0-1", 18),
    );
    // 52 fields; num_threads (20th) 1, processor (39th) 0.
    let mut stat: Vec<String> = vec!["0".into(); 52];
    stat[0] = pid.to_string();
    stat[1] = "(irqbalance)".into();
    stat[2] = "S".into();
    stat[3] = "1".into();
    stat[19] = "1".into();
    fx.write(&format!("{d}/stat"), format!("{}\n", stat.join(" ")));
    fx.write(
        &format!("{d}/cgroup"),
        "0::/system.slice/irqbalance.service\n",
    );
}

/// The environment systemd gives irqbalance.service, plus the file's assignments.
fn systemd_env(pid: u32, extra: &[&str]) -> Vec<String> {
    let mut env = vec![
        "LANG=C.UTF-8".to_owned(),
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        "INVOCATION_ID=3f0c1d2e4b5a69788796a5b4c3d2e1f0".to_owned(),
        "JOURNAL_STREAM=8:21394".to_owned(),
        format!("SYSTEMD_EXEC_PID={pid}"),
    ];
    env.extend(extra.iter().map(|s| s.to_string()));
    env
}

fn start_irqbalance(fx: &FixtureHost, pid: u32, extra: &[&str]) {
    let env = systemd_env(pid, extra);
    let refs: Vec<&str> = env.iter().map(String::as_str).collect();
    irqbalance_process(fx, pid, &refs);
}

fn load(fx: &FixtureHost, toml: &str) -> Profile {
    profile::load(
        fx.profile("layout", toml).to_str().unwrap(),
        &SearchPath::new(Vec::new()),
    )
    .unwrap()
}

fn verify(fx: &FixtureHost, p: &Profile) -> Report {
    tuning::verify(&fx.host(), p)
}

fn item<'r>(report: &'r Report, key: &str) -> &'r Item {
    report
        .items
        .iter()
        .find(|i| i.key == key)
        .unwrap_or_else(|| panic!("no item {key} in {:#?}", keys(report, "isolation.")))
}

fn keys(report: &Report, prefix: &str) -> Vec<String> {
    report
        .items
        .iter()
        .filter(|i| i.key.starts_with(prefix))
        .map(|i| i.key.clone())
        .collect()
}

fn read(fx: &FixtureHost, path: &str) -> String {
    std::fs::read_to_string(fx.real(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// The single kernel-file fix of an item.
fn kernel_fix(i: &Item) -> (String, Value, Value) {
    assert_eq!(i.fixes.len(), 1, "{i:?}");
    let f = &i.fixes[0];
    match &f.target {
        Target::KernelFile { path } => (path.clone(), f.from.clone(), f.to.clone()),
        t => panic!("{}: not a kernel file: {t:?}", i.key),
    }
}

// ---------------------------------------------------------------------------------------------
// Apply and rollback in-process, with the systemd hook counted

#[derive(Default)]
struct Ops {
    reloads: Cell<usize>,
    restarts: RefCell<Vec<String>>,
}

fn with_session<T>(fx: &FixtureHost, ops: &Ops, f: impl FnOnce(&mut Session<'_>) -> T) -> T {
    let host = fx.host();
    let state = StateDir::new(fx.state_dir());
    let audit = Audit::new(Some(&fx.state_dir()));
    let mut hook = |op: SystemdOp<'_>| -> Result<(), String> {
        match op {
            SystemdOp::Reload => ops.reloads.set(ops.reloads.get() + 1),
            SystemdOp::TryRestart(unit) => ops.restarts.borrow_mut().push(unit.to_owned()),
        }
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
    f(&mut session)
}

fn apply_profile(fx: &FixtureHost, ops: &Ops, p: &Profile) -> ApplyOutcome {
    with_session(fx, ops, |s| apply::apply(s, p, None)).expect("apply")
}

fn rollback(fx: &FixtureHost, ops: &Ops) -> RollbackOutcome {
    let out = with_session(fx, ops, |s| apply::rollback(s, false)).expect("rollback");
    assert!(out.is_complete(), "{out:#?}");
    out
}

/// The fixture tree without what apply leaves by design: the directories it created for its
/// drop-ins and this boot's record of refused writes.
fn settled(fx: &FixtureHost) -> Vec<(PathBuf, Node)> {
    fx.snapshot()
        .into_iter()
        .filter(|(p, _)| !p.starts_with("etc/systemd") && !p.starts_with("run/node-agent"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Verify

#[test]
fn every_irq_in_number_order_outside_housekeeping_is_drift_with_a_list_fix() {
    let fx = host_with_irqs();
    let report = verify(&fx, &load(&fx, LAYOUT));
    let irq_keys: Vec<String> = keys(&report, "isolation.irq.");
    let mut want: Vec<String> = IRQS
        .iter()
        .map(|(n, ..)| format!("isolation.irq.{n}"))
        .collect();
    want.push("isolation.irq.default_smp_affinity".into());
    assert_eq!(irq_keys, want, "numeric order, then the default");

    for &(n, list, _, _) in IRQS {
        let i = item(&report, &format!("isolation.irq.{n}"));
        let path = format!("/proc/irq/{n}/smp_affinity_list");
        assert_eq!(i.expected, "0-1");
        assert_eq!(i.actual.as_deref(), Some(list), "{i:?}");
        assert_eq!(i.path.as_deref(), Some(path.as_str()));
        if MOVABLE_DRIFT.contains(&n) {
            assert_eq!(i.status, Status::Drift, "{i:?}");
            assert_eq!(
                kernel_fix(i),
                (path, Value::text(list), Value::text("0-1")),
                "{i:?}"
            );
        } else if n == MANAGED_OUTSIDE {
            // Read-only affinity files: the kernel will not move it; known before any apply.
            assert_eq!(i.status, Status::Unsupported, "{i:?}");
            assert_eq!(i.reason.as_deref(), Some(MANAGED_REASON), "{i:?}");
            assert!(i.fixes.is_empty(), "{i:?}");
        } else {
            // Within housekeeping, the managed IRQ 131 included.
            assert_eq!(i.status, Status::Pass, "{i:?}");
            assert!(i.fixes.is_empty());
        }
    }
    let i = item(&report, "isolation.irq.101");
    assert!(
        i.reason.as_deref().unwrap().contains("CPU 4 outside"),
        "{i:?}"
    );

    // The default mask: compared as a set, written as wide as nr_cpu_ids (18 bits).
    let d = item(&report, "isolation.irq.default_smp_affinity");
    assert_eq!(
        (d.status, d.actual.as_deref()),
        (Status::Drift, Some("0-17"))
    );
    assert_eq!(
        kernel_fix(d),
        (
            "/proc/irq/default_smp_affinity".to_owned(),
            Value::text("3ffff"),
            Value::text("00003")
        )
    );
}

#[test]
fn irqs_and_masks_within_housekeeping_pass_whatever_their_spelling() {
    let fx = host_with_irqs();
    for &(n, ..) in IRQS {
        // `1` is within 0-1, spelled as a single CPU; so is `0-1` and `0`.
        let list = if n % 2 == 0 { "1" } else { "0-1" };
        fx.write(
            &format!("/proc/irq/{n}/smp_affinity_list"),
            format!("{list}\n"),
        );
    }
    fx.write("/proc/irq/default_smp_affinity", "00002\n");
    fx.write(&format!("{WQ}/cpumask"), "00003\n");
    // As wide as the kernel prints it, or without the leading zeros.
    fx.write(&format!("{WQ}/writeback/cpumask"), "00001\n");
    fx.write(&format!("{WQ}/blkcg_punt_bio/cpumask"), "3\n");
    let report = verify(&fx, &load(&fx, LAYOUT));
    let bad: Vec<&Item> = report
        .items
        .iter()
        .filter(|i| {
            (i.key.starts_with("isolation.irq.") || i.key.starts_with("isolation.workqueue."))
                && i.status != Status::Pass
        })
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
    assert_eq!(
        item(&report, "isolation.workqueue.writeback")
            .actual
            .as_deref(),
        Some("0")
    );
}

#[test]
fn workqueue_masks_one_item_per_file_read_only_views_left_out() {
    let fx = host_with_irqs();
    let p = load(&fx, LAYOUT);
    let report = verify(&fx, &p);
    assert_eq!(
        keys(&report, "isolation.workqueue"),
        [
            "isolation.workqueue.cpumask",
            "isolation.workqueue.blkcg_punt_bio",
            "isolation.workqueue.writeback"
        ]
    );
    for (key, path) in [
        ("isolation.workqueue.cpumask", format!("{WQ}/cpumask")),
        (
            "isolation.workqueue.writeback",
            format!("{WQ}/writeback/cpumask"),
        ),
        (
            "isolation.workqueue.blkcg_punt_bio",
            format!("{WQ}/blkcg_punt_bio/cpumask"),
        ),
    ] {
        let i = item(&report, key);
        assert_eq!(
            (i.status, i.actual.as_deref(), i.expected.as_str()),
            (Status::Drift, Some("0-17"), "0-1"),
            "{i:?}"
        );
        assert_eq!(
            kernel_fix(i),
            (path, Value::text("3ffff"), Value::text("00003"))
        );
    }
    // The plan writes each file exactly once.
    let (plan, _) = apply::plan(&fx.host(), &p, None, None);
    for path in [
        format!("{WQ}/cpumask"),
        format!("{WQ}/writeback/cpumask"),
        format!("{WQ}/blkcg_punt_bio/cpumask"),
    ] {
        let n = plan
            .changes
            .iter()
            .filter(|c| c.target == Target::KernelFile { path: path.clone() })
            .count();
        assert_eq!(n, 1, "{path} planned {n} times");
    }
    assert!(
        !plan
            .changes
            .iter()
            .any(|c| c.target.describe().contains("cpumask_")),
        "a read-only view planned: {:#?}",
        plan.changes
    );
}

#[test]
fn a_kernel_without_proc_irq_or_workqueues_gives_one_unsupported_item_each() {
    let fx = FixtureHost::tuned();
    let report = verify(&fx, &load(&fx, LAYOUT));
    let irq: Vec<&Item> = report
        .items
        .iter()
        .filter(|i| i.key == "isolation.irq" || i.key.starts_with("isolation.irq."))
        .collect();
    assert_eq!(irq.len(), 1, "{irq:#?}");
    assert_eq!(
        (irq[0].key.as_str(), irq[0].status),
        ("isolation.irq", Status::Unsupported)
    );
    let wq: Vec<&Item> = report
        .items
        .iter()
        .filter(|i| i.key.starts_with("isolation.workqueue"))
        .collect();
    assert_eq!(wq.len(), 1, "{wq:#?}");
    assert_eq!(
        (wq[0].key.as_str(), wq[0].status),
        ("isolation.workqueue", Status::Unsupported)
    );
}

#[test]
fn an_irq_the_kernel_refused_this_boot_is_unsupported_not_drift() {
    let fx = host_with_irqs();
    // IRQ 101 is writable (movable as far as its file mode tells) but its chip refused the
    // write with EIO during this boot; IRQ 130 is managed and recorded as refused too.
    let error = "failed to write \"0-1\" to /proc/irq/101/smp_affinity_list: \
                 Input/output error (os error 5)";
    let record = serde_json::json!({
        "/proc/irq/101/smp_affinity_list": {
            "value": "0-1",
            "errno": 5,
            "error": error,
            "at": 1795651200u64,
        },
        "/proc/irq/130/smp_affinity_list": {
            "value": "0-1",
            "errno": 1,
            "error": "failed to write \"0-1\" to /proc/irq/130/smp_affinity_list: \
                      Operation not permitted (os error 1)",
            "at": 1795651200u64,
        },
    });
    fx.write(REFUSED, serde_json::to_string_pretty(&record).unwrap());
    let p = load(&fx, LAYOUT);
    let report = verify(&fx, &p);
    let i = item(&report, "isolation.irq.101");
    assert_eq!(i.status, Status::Unsupported, "{i:?}");
    assert_eq!(i.actual.as_deref(), Some("4"));
    let path = "/proc/irq/101/smp_affinity_list";
    let chip = tuning::isolation::expected_refusal(
        &Target::KernelFile {
            path: path.to_owned(),
        },
        5,
    )
    .expect("EIO on an IRQ's affinity is an expected refusal");
    assert!(chip.contains("interrupt chip"), "{chip}");
    assert_eq!(
        i.reason.as_deref(),
        Some(format!("{chip}: {error} (at 2026-11-26 00:00:00 UTC)").as_str()),
        "{i:?}"
    );
    assert!(i.fixes.is_empty());
    // The managed IRQ reads as such (its file mode), whatever the record says.
    let m = item(&report, "isolation.irq.130");
    assert_eq!(
        (m.status, m.reason.as_deref()),
        (Status::Unsupported, Some(MANAGED_REASON)),
        "{m:?}"
    );
    // Another IRQ outside housekeeping is still drift; a refused one back within housekeeping
    // passes.
    assert_eq!(item(&report, "isolation.irq.100").status, Status::Drift);
    fx.write(path, "0\n");
    let back = verify(&fx, &p);
    let i = item(&back, "isolation.irq.101");
    assert_eq!((i.status, i.actual.as_deref()), (Status::Pass, Some("0")));
    fx.write(path, "4\n");
    let (plan, _) = apply::plan(&fx.host(), &p, None, None);
    for key in ["isolation.irq.101", "isolation.irq.130"] {
        let u: Vec<_> = plan.unsupported.iter().filter(|s| s.key == key).collect();
        assert_eq!(u.len(), 1, "{key}: {:#?}", plan.unsupported);
        assert_eq!(u[0].status, Status::Unsupported);
        assert!(!plan.changes.iter().any(|c| c.key == key), "{key} planned");
    }
    assert!(
        plan.changes.iter().any(|c| c.key == "isolation.irq.100"),
        "{:#?}",
        plan.changes
    );
}

// ---------------------------------------------------------------------------------------------
// Apply and rollback

#[test]
fn apply_moves_irqs_and_masks_goes_on_past_a_managed_irq_and_rollback_restores_bytes() {
    let fx = host_with_irqs();
    let p = load(&fx, LAYOUT);
    let before = settled(&fx);
    let ops = Ops::default();

    let outcome = apply_profile(&fx, &ops, &p);
    // The managed IRQ: found at verify (read-only), never planned, never written, so nothing
    // was refused and nothing recorded.
    let u: Vec<_> = outcome
        .plan
        .unsupported
        .iter()
        .filter(|s| s.key == "isolation.irq.130")
        .collect();
    assert_eq!(u.len(), 1, "{:#?}", outcome.plan.unsupported);
    assert_eq!(
        (u[0].status, u[0].reason.as_str()),
        (Status::Unsupported, MANAGED_REASON)
    );
    assert!(
        !outcome
            .plan
            .changes
            .iter()
            .any(|c| c.key == "isolation.irq.130"
                || c.target.describe().starts_with("/proc/irq/130/")),
        "{:#?}",
        outcome.plan.changes
    );
    assert!(outcome.refused.is_empty(), "{:#?}", outcome.refused);
    assert!(!fx.real(REFUSED).exists(), "a refusal recorded");
    let applied = settled(&fx);
    for f in ["smp_affinity", "smp_affinity_list"] {
        let rel = PathBuf::from(format!("proc/irq/130/{f}"));
        let node = |v: &[(PathBuf, Node)]| v.iter().find(|(p, _)| *p == rel).cloned();
        assert!(
            node(&before).is_some(),
            "{} not in the snapshot",
            rel.display()
        );
        // Same bytes, same 0444 mode.
        assert_eq!(node(&before), node(&applied), "{} written", rel.display());
    }
    assert_eq!(read(&fx, "/proc/irq/130/smp_affinity_list"), "4-5\n");
    // Every movable IRQ now reads as the kernel would print it; so do the masks.
    for n in MOVABLE_DRIFT.iter().chain(&[24, 25, 131]) {
        let want = match n {
            25 => "0\n",
            _ => "0-1\n",
        };
        assert_eq!(
            read(&fx, &format!("/proc/irq/{n}/smp_affinity_list")),
            want,
            "IRQ {n}"
        );
    }
    assert_eq!(read(&fx, "/proc/irq/default_smp_affinity"), "00003\n");
    for f in ["cpumask", "writeback/cpumask", "blkcg_punt_bio/cpumask"] {
        assert_eq!(read(&fx, &format!("{WQ}/{f}")), "00003\n", "{f}");
    }
    // Nothing but the IRQs and masks outside housekeeping was written.
    let written: Vec<&str> = outcome
        .plan
        .changes
        .iter()
        .filter(|c| c.key.starts_with("isolation.irq") || c.key.starts_with("isolation.workqueue"))
        .map(|c| c.key.as_str())
        .collect();
    assert_eq!(
        written,
        [
            "isolation.irq.1",
            "isolation.irq.8",
            "isolation.irq.9",
            "isolation.irq.16",
            "isolation.irq.100",
            "isolation.irq.101",
            "isolation.irq.default_smp_affinity",
            "isolation.workqueue.cpumask",
            "isolation.workqueue.blkcg_punt_bio",
            "isolation.workqueue.writeback"
        ]
    );
    // Verify afterwards: the managed IRQ still unsupported as read-only, the rest pass.
    let after = &outcome.after;
    let m = item(after, "isolation.irq.130");
    assert_eq!(
        (m.status, m.reason.as_deref()),
        (Status::Unsupported, Some(MANAGED_REASON)),
        "{m:?}"
    );
    for i in after.items.iter().filter(|i| {
        (i.key.starts_with("isolation.irq") || i.key.starts_with("isolation.workqueue"))
            && i.key != "isolation.irq.130"
    }) {
        assert_eq!(i.status, Status::Pass, "{i:?}");
    }
    // No irqbalance and no systemd (sd_booted) in this fixture: no follow-up at all.
    assert_eq!(ops.reloads.get(), 0);
    assert!(ops.restarts.borrow().is_empty());

    // A second apply has no IRQ or workqueue left to write, the managed one included.
    let again = apply_profile(&fx, &ops, &p);
    assert!(again.refused.is_empty(), "{:#?}", again.refused);
    assert!(
        !again
            .plan
            .changes
            .iter()
            .any(|c| c.key.starts_with("isolation.irq") || c.key.starts_with("isolation.workqueue")),
        "{:#?}",
        again.plan.changes
    );

    let out = rollback(&fx, &ops);
    assert!(
        out.restored
            .iter()
            .any(|r| r.key == "isolation.workqueue.writeback"),
        "{out:#?}"
    );
    let after = settled(&fx);
    let paths = |v: &[(PathBuf, Node)]| v.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>();
    assert_eq!(paths(&before), paths(&after));
    for ((p, a), (_, b)) in before.iter().zip(&after) {
        assert!(a == b, "{} differs after rollback", p.display());
    }
    assert!(!fx.real(REFUSED).exists(), "a refusal recorded");
    assert!(
        !out.restored.iter().any(|r| r.key == "isolation.irq.130"),
        "{out:#?}"
    );
    assert!(ops.restarts.borrow().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Injected write errors, with the real binary

/// `agentctl` against the fixture: (exit code, stdout parsed as JSON, stderr).
fn agentctl_json(
    fx: &FixtureHost,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, serde_json::Value, String) {
    let out = fx.agentctl_env(args, env);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "agentctl {args:?} printed no JSON ({e}); status {:?}\nstdout: {}\nstderr: {stderr}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.code(), json, stderr)
}

/// `agentctl tune apply --dry-run`: the plan's changes as (key, target path, value written).
fn planned_changes(fx: &FixtureHost, profile: &str) -> Vec<(String, String, String)> {
    let args = [
        "tune",
        "apply",
        "--profile",
        profile,
        "--dry-run",
        "--output",
        "json",
    ];
    let (code, plan, stderr) = agentctl_json(fx, &args, &[]);
    assert_eq!(code, Some(0), "{plan}\n{stderr}");
    plan["changes"]
        .as_array()
        .unwrap_or_else(|| panic!("no changes in {plan}"))
        .iter()
        .map(|c| {
            let to: Value = serde_json::from_value(c["to"].clone()).expect("a value");
            (
                c["key"].as_str().expect("a key").to_owned(),
                c["target"]["path"]
                    .as_str()
                    .unwrap_or_else(|| panic!("not a file: {c}"))
                    .to_owned(),
                to.describe(),
            )
        })
        .collect()
}

/// An IRQ's own affinity (not the default mask, which also lives under /proc/irq).
fn is_irq_affinity(path: &str) -> bool {
    path.starts_with("/proc/irq/") && path.ends_with("/smp_affinity_list")
}

fn audit_actions(fx: &FixtureHost, action: &str) -> Vec<String> {
    let text = std::fs::read_to_string(fx.state_dir().join("audit.log")).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("an audit line"))
        .filter(|l| l["fields"]["NODE_AGENT_ACTION"] == action)
        .map(|l| {
            l["fields"]["NODE_AGENT_KEY"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

fn journal(fx: &FixtureHost) -> serde_json::Value {
    let text = std::fs::read_to_string(fx.state_dir().join("journal.json"))
        .unwrap_or_else(|e| panic!("read the journal: {e}"));
    serde_json::from_str(&text).expect("the journal is JSON")
}

/// The number of findings when every one is a boot argument pending a reboot (`cmdline.*`),
/// else None.
fn pending_boot_arguments_only(report: &Report) -> Option<usize> {
    let findings: Vec<&Item> = report
        .items
        .iter()
        .filter(|i| i.status.is_finding(false))
        .collect();
    findings
        .iter()
        .all(|i| i.status == Status::PendingReboot && i.key.starts_with("cmdline."))
        .then_some(findings.len())
}

#[test]
fn apply_goes_on_past_an_expected_refusal_and_rollback_restores_bytes() {
    let fx = host_with_irqs();
    let profile = fx.profile("layout", LAYOUT);
    let profile = profile.to_str().unwrap();
    let before = settled(&fx);
    let changes = planned_changes(&fx, profile);
    assert_eq!(before, settled(&fx), "the dry run changed the tree");
    // A movable IRQ with IRQ changes before and after it in the plan.
    let victim = "isolation.irq.100";
    let at = changes
        .iter()
        .position(|(k, ..)| k == victim)
        .unwrap_or_else(|| panic!("{victim} not planned: {changes:#?}"));
    let path = changes[at].1.clone();
    assert!(is_irq_affinity(&path), "{path}");
    assert!(
        changes[..at].iter().any(|(_, p, _)| is_irq_affinity(p))
            && changes[at + 1..].iter().any(|(_, p, _)| is_irq_affinity(p))
            && changes[at + 1..]
                .iter()
                .any(|(_, p, _)| !is_irq_affinity(p)),
        "{victim} at {at} is not in the middle: {changes:#?}"
    );
    let spec = format!("apply-write:{}", at + 1);

    let args = ["tune", "apply", "--profile", profile, "--output", "json"];
    let (code, outcome, stderr) = agentctl_json(&fx, &args, &[("NODE_AGENT_FAILPOINT", &spec)]);
    // Refused and unsupported items are not findings: what is left are the boot arguments,
    // pending a reboot (this fixture has no boot loader to set them), so apply exits 1 by the
    // report after, not 4.
    let after: Report = serde_json::from_value(outcome["after"].clone()).expect("the report");
    assert_eq!(
        pending_boot_arguments_only(&after),
        Some(5),
        "{spec}: {outcome}\n{stderr}"
    );
    assert_eq!(code, Some(1), "{spec}: {outcome}\n{stderr}");

    let eio = "Input/output error (os error 5)";
    let chip = tuning::isolation::expected_refusal(&Target::KernelFile { path: path.clone() }, 5)
        .expect("EIO on an IRQ's affinity is expected");
    let refused = outcome["refused"].as_array().expect("refused listed");
    assert_eq!(refused.len(), 1, "{outcome}");
    let r = &refused[0];
    assert_eq!(
        (
            r["key"].as_str(),
            r["target"]["path"].as_str(),
            r["value"].as_str(),
            r["reason"].as_str()
        ),
        (Some(victim), Some(path.as_str()), Some("0-1"), Some(chip)),
        "{r}"
    );
    let error = r["error"].as_str().unwrap();
    assert_eq!(
        error,
        format!("failed to write \"0-1\" to {path}: {eio}"),
        "{r}"
    );
    // Every other change was made, those after the refused one included; it stayed.
    for (i, (key, p, value)) in changes.iter().enumerate() {
        let got = read(&fx, p);
        if i == at {
            assert_eq!(got, "0-15\n", "{key}: refused, left as it was");
        } else {
            assert_eq!(got.trim_end(), value, "{key} (step {}) not made", i + 1);
        }
    }
    assert_eq!(audit_actions(&fx, "apply-refused"), [victim]);
    assert_eq!(audit_actions(&fx, "apply").len(), changes.len() - 1);
    assert!(audit_actions(&fx, "apply-failed").is_empty());
    // A complete run: every step done but the refused one.
    let run = &journal(&fx)["runs"][0];
    assert_eq!(run["state"], "complete", "{run}");
    let done: Vec<bool> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| st["done"].as_bool().unwrap())
        .collect();
    assert_eq!(
        done,
        (0..changes.len()).map(|i| i != at).collect::<Vec<_>>(),
        "{run}"
    );
    // Recorded for this boot, with the kernel's error.
    let record_text = read(&fx, REFUSED);
    let record: serde_json::Value = serde_json::from_str(&record_text).unwrap();
    let entries = record.as_object().expect("a map of refusals");
    assert_eq!(
        entries.keys().collect::<Vec<_>>(),
        [&path],
        "only the refused write: {record}"
    );
    assert_eq!(
        (
            record[&path]["value"].as_str(),
            record[&path]["errno"].as_i64(),
            record[&path]["error"].as_str()
        ),
        (Some("0-1"), Some(5), Some(error)),
        "{record}"
    );

    // Verify: unsupported with the chip's reason and the recorded error; the managed IRQ as
    // before; the rest passes.
    let args = ["tune", "verify", "--profile", profile, "--output", "json"];
    let (code, report, stderr) = agentctl_json(&fx, &args, &[]);
    let report: Report = serde_json::from_value(report).expect("a verify report");
    assert_eq!(pending_boot_arguments_only(&report), Some(5), "{report:#?}");
    assert_eq!(code, Some(1), "{stderr}");
    let i = item(&report, victim);
    assert_eq!(
        (i.status, i.actual.as_deref()),
        (Status::Unsupported, Some("0-15")),
        "{i:?}"
    );
    let reason = i.reason.as_deref().unwrap();
    assert!(
        reason.starts_with(&format!("{chip}: {error} (at ")) && reason.ends_with(" UTC)"),
        "{reason}"
    );
    assert_eq!(
        item(&report, "isolation.irq.130").reason.as_deref(),
        Some(MANAGED_REASON)
    );
    let ours = |k: &str| k.starts_with("isolation.irq") || k.starts_with("isolation.workqueue");
    for i in report
        .items
        .iter()
        .filter(|i| ours(&i.key) && i.key != victim && i.key != "isolation.irq.130")
    {
        assert_eq!(i.status, Status::Pass, "{i:?}");
    }
    // No fix (the JSON report carries none): not planned again while the record stands.
    assert!(
        !planned_changes(&fx, profile)
            .iter()
            .any(|(k, ..)| k == victim),
        "the refused IRQ planned again"
    );

    // Rollback: the tree byte-equal to before; the record stays for this boot.
    let (code, rolled, stderr) = agentctl_json(&fx, &["tune", "rollback", "--output", "json"], &[]);
    assert_eq!(code, Some(0), "{rolled}\n{stderr}");
    assert_eq!(rolled["left_alone"], serde_json::json!([]), "{rolled}");
    assert_eq!(rolled["failed"], serde_json::json!([]), "{rolled}");
    let restored: Vec<&str> = rolled["restored"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    let mut want: Vec<&str> = changes
        .iter()
        .filter(|(k, ..)| k != victim)
        .map(|(k, ..)| k.as_str())
        .collect();
    let mut got = restored.clone();
    want.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, want, "{rolled}");
    let after = settled(&fx);
    assert_eq!(
        before.iter().map(|(p, _)| p).collect::<Vec<_>>(),
        after.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    for ((p, a), (_, b)) in before.iter().zip(&after) {
        assert!(a == b, "{} differs after rollback", p.display());
    }
    assert_eq!(read(&fx, REFUSED), record_text, "the record changed");
}

#[test]
fn an_injected_write_error_on_a_non_irq_step_still_fails_the_apply_and_restores() {
    let changes = {
        let fx = host_with_irqs();
        let profile = fx.profile("layout", LAYOUT);
        planned_changes(&fx, profile.to_str().unwrap())
    };
    let others: Vec<usize> = (0..changes.len())
        .filter(|i| !is_irq_affinity(&changes[*i].1))
        .collect();
    // The default mask lives under /proc/irq too, and is no IRQ's affinity.
    assert!(
        others
            .iter()
            .any(|i| changes[*i].0 == "isolation.irq.default_smp_affinity")
            && others
                .iter()
                .any(|i| changes[*i].0 == "isolation.workqueue.cpumask")
            && others.iter().any(|i| *i > 0),
        "{changes:#?}"
    );
    for at in others {
        let (key, path, value) = &changes[at];
        let fx = host_with_irqs();
        let profile = fx.profile("layout", LAYOUT);
        let original = fx.snapshot();
        let spec = format!("apply-write:{}", at + 1);
        let out = fx.agentctl_env(
            &["tune", "apply", "--profile", profile.to_str().unwrap()],
            &[("NODE_AGENT_FAILPOINT", &spec)],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{spec} ({key}): {stderr}");
        let restored = match at {
            0 => "nothing had been changed by this run".to_owned(),
            n => format!("restored the {n} value(s) this run had changed"),
        };
        let want = format!(
            "agentctl: error: failed to apply isolation {key}: setting {path} to {value}: \
             failed to write {value:?} to {path}: Input/output error (os error 5); {restored}"
        );
        assert_eq!(stderr.lines().last(), Some(want.as_str()), "{spec}");
        // Restored byte for byte, nothing recorded as refused.
        assert!(
            fx.snapshot() == original,
            "{spec} ({key}): tree not restored"
        );
        assert!(!fx.real(REFUSED).exists(), "{spec} ({key}): recorded");
        assert!(audit_actions(&fx, "apply-refused").is_empty(), "{spec}");
        assert_eq!(audit_actions(&fx, "apply-failed"), [key.as_str()], "{spec}");
        assert_eq!(audit_actions(&fx, "apply-restore").len(), at, "{spec}");
        let j = journal(&fx);
        assert_eq!(j["runs"][0]["state"], "failed-rolled-back", "{spec}: {j}");
        assert_eq!(j["baseline"], serde_json::json!([]), "{spec}: {j}");
    }
}

// ---------------------------------------------------------------------------------------------
// irqbalance

fn banned_item(report: &Report) -> &Item {
    item(report, "isolation.irqbalance.banned_cpus")
}

fn effective_item(report: &Report) -> &Item {
    item(report, "isolation.irqbalance.banned_cpus.effective")
}

/// The whole-file fix of the config item: (path, from, to).
fn config_fix(i: &Item) -> (String, Value, Value) {
    assert_eq!(i.fixes.len(), 1, "{i:?}");
    let f = &i.fixes[0];
    match &f.target {
        Target::ConfigFile { path } => (path.clone(), f.from.clone(), f.to.clone()),
        t => panic!("not a config file: {t:?}"),
    }
}

#[test]
fn irqbalance_not_running_is_one_pass_item() {
    let fx = host_with_irqs();
    // Installed, configured to ban nothing, but not running.
    fx.write("/etc/default/irqbalance", IRQBALANCE_ENV);
    let report = verify(&fx, &load(&fx, LAYOUT));
    assert_eq!(
        keys(&report, "isolation.irqbalance"),
        ["isolation.irqbalance.banned_cpus"]
    );
    let i = banned_item(&report);
    assert_eq!(i.status, Status::Pass);
    assert_eq!(i.actual.as_deref(), Some("irqbalance not running"));
    assert!(i.fixes.is_empty());
    // A process merely named like it is not irqbalance.
    fx.write("/proc/777/comm", "irqbalance-ui\n");
    assert_eq!(
        banned_item(&verify(&fx, &load(&fx, LAYOUT)))
            .actual
            .as_deref(),
        Some("irqbalance not running")
    );
}

#[test]
fn irqbalance_without_banned_cpus_gets_the_list_appended_restarted_and_restored() {
    let fx = host_with_irqs();
    fx.write("/etc/default/irqbalance", IRQBALANCE_ENV);
    start_irqbalance(&fx, 612, &[]);
    let p = load(&fx, LAYOUT);
    let report = verify(&fx, &p);

    let i = banned_item(&report);
    assert_eq!(
        (i.status, i.actual.as_deref(), i.expected.as_str()),
        (Status::Drift, Some("not set"), "2-15")
    );
    assert_eq!(i.path.as_deref(), Some("/etc/default/irqbalance"));
    assert!(
        i.reason.as_deref().unwrap().contains("isolcpus"),
        "the reason explains irqbalance's own banning: {i:?}"
    );
    let appended = format!("{IRQBALANCE_ENV}IRQBALANCE_BANNED_CPULIST=2-15\n");
    assert_eq!(
        config_fix(i),
        (
            "/etc/default/irqbalance".to_owned(),
            Value::text(IRQBALANCE_ENV),
            Value::text(&appended)
        )
    );
    let e = effective_item(&report);
    assert_eq!(e.status, Status::Drift, "{e:?}");
    assert_eq!(e.path.as_deref(), Some("/proc/612/environ"));
    assert_eq!(
        e.actual.as_deref(),
        Some("none (not set; the kernel isolates none)")
    );

    let ops = Ops::default();
    let outcome = apply_profile(&fx, &ops, &p);
    assert_eq!(read(&fx, "/etc/default/irqbalance"), appended);
    assert_eq!(*ops.restarts.borrow(), ["irqbalance.service"]);
    assert_eq!(banned_item(&outcome.after).status, Status::Pass);
    // The process in the fixture did not restart: still drift, with what to do.
    let e = effective_item(&outcome.after);
    assert_eq!(e.status, Status::Drift);
    assert!(e.reason.as_deref().unwrap().contains("restart"), "{e:?}");
    // Once restarted (new pid, the file's variable in its environment) it passes.
    fx.remove("/proc/612");
    start_irqbalance(&fx, 2231, &["IRQBALANCE_BANNED_CPULIST=2-15"]);
    let report = verify(&fx, &p);
    let e = effective_item(&report);
    assert_eq!(
        (e.status, e.actual.as_deref(), e.path.as_deref()),
        (Status::Pass, Some("2-15"), Some("/proc/2231/environ"))
    );

    rollback(&fx, &ops);
    assert_eq!(read(&fx, "/etc/default/irqbalance"), IRQBALANCE_ENV);
    assert_eq!(
        *ops.restarts.borrow(),
        ["irqbalance.service", "irqbalance.service"],
        "restarted after apply and after rollback"
    );
}

#[test]
fn irqbalance_banned_list_is_replaced_in_place_keeping_every_other_line() {
    let fx = host_with_irqs();
    // An admin's file: a policy script, CPU 17 banned for other reasons, CPUs 2-3 only.
    let text = IRQBALANCE_ENV.replace(
        "#IRQBALANCE_BANNED_CPULIST=\n",
        "#IRQBALANCE_BANNED_CPULIST=\nIRQBALANCE_BANNED_CPULIST=\"2-3,17\"\n",
    ) + "IRQBALANCE_ARGS=\"--policyscript=/etc/irqbalance.d/policy.sh\"\n";
    fx.write("/etc/default/irqbalance", &text);
    start_irqbalance(
        &fx,
        612,
        &[
            "IRQBALANCE_BANNED_CPULIST=2-3,17",
            "IRQBALANCE_ARGS=--policyscript=/etc/irqbalance.d/policy.sh",
        ],
    );
    let p = load(&fx, LAYOUT);
    let report = verify(&fx, &p);
    let i = banned_item(&report);
    assert_eq!(
        (i.status, i.actual.as_deref()),
        (Status::Drift, Some("2-3,17"))
    );
    let (_, from, to) = config_fix(i);
    assert_eq!(from, Value::text(&text));
    let Value::Text { value: to } = to else {
        panic!("{to:?}")
    };
    let old: Vec<&str> = text.split('\n').collect();
    let new: Vec<&str> = to.split('\n').collect();
    assert_eq!(old.len(), new.len(), "no line added or removed:\n{to}");
    let changed: Vec<(usize, &str)> = new
        .iter()
        .enumerate()
        .filter(|(n, l)| old[*n] != **l)
        .map(|(n, l)| (n, *l))
        .collect();
    let at = old
        .iter()
        .position(|l| *l == "IRQBALANCE_BANNED_CPULIST=\"2-3,17\"")
        .unwrap();
    // The CPUs banned already stay banned.
    assert_eq!(changed, [(at, "IRQBALANCE_BANNED_CPULIST=2-15,17")]);
    let e = effective_item(&report);
    assert_eq!(
        (e.status, e.actual.as_deref()),
        (Status::Drift, Some("2-3,17"))
    );
    assert!(e.reason.as_deref().unwrap().contains("CPU 4-15"), "{e:?}");
}

#[test]
fn irqbalance_on_rhel_with_the_deprecated_mask_form() {
    let fx = host_with_irqs();
    let covering = format!("{IRQBALANCE_ENV}IRQBALANCE_BANNED_CPUS=0000fffc\n");
    fx.write("/etc/sysconfig/irqbalance", &covering);
    start_irqbalance(&fx, 901, &["IRQBALANCE_BANNED_CPUS=0000fffc"]);
    let p = load(&fx, LAYOUT);
    let report = verify(&fx, &p);
    let i = banned_item(&report);
    assert_eq!(
        (i.status, i.actual.as_deref(), i.path.as_deref()),
        (
            Status::Pass,
            Some("2-15 (IRQBALANCE_BANNED_CPUS=0000fffc)"),
            Some("/etc/sysconfig/irqbalance")
        )
    );
    assert_eq!(effective_item(&report).status, Status::Pass);

    // A mask too narrow: the line becomes the list form in place.
    let narrow = format!("{IRQBALANCE_ENV}IRQBALANCE_BANNED_CPUS=0000000c\n");
    fx.write("/etc/sysconfig/irqbalance", &narrow);
    let report = verify(&fx, &p);
    let i = banned_item(&report);
    assert_eq!(i.status, Status::Drift);
    assert_eq!(
        config_fix(i),
        (
            "/etc/sysconfig/irqbalance".to_owned(),
            Value::text(&narrow),
            Value::text(format!("{IRQBALANCE_ENV}IRQBALANCE_BANNED_CPULIST=2-15\n"))
        )
    );
    // irqbalance lets the mask win over a list: with both, the mask must not stay active.
    let both = format!(
        "{IRQBALANCE_ENV}IRQBALANCE_BANNED_CPULIST=2-15\nIRQBALANCE_BANNED_CPUS=0000000c\n"
    );
    fx.write("/etc/sysconfig/irqbalance", &both);
    let i = banned_item(&verify(&fx, &p)).clone();
    assert_eq!(
        (i.status, i.actual.as_deref()),
        (Status::Drift, Some("2-3 (IRQBALANCE_BANNED_CPUS=0000000c)"))
    );
    assert_eq!(
        config_fix(&i).2,
        Value::text(format!(
            "{IRQBALANCE_ENV}IRQBALANCE_BANNED_CPULIST=2-15\n#IRQBALANCE_BANNED_CPUS=0000000c\n"
        ))
    );
}

#[test]
fn irqbalance_without_any_config_file_gets_one_created_and_removed() {
    let fx = host_with_irqs();
    std::fs::create_dir_all(fx.real("/etc/default")).unwrap();
    start_irqbalance(&fx, 612, &[]);
    let p = load(&fx, LAYOUT);
    let report = verify(&fx, &p);
    let i = banned_item(&report);
    assert_eq!(
        (i.status, i.actual.as_deref()),
        (Status::Drift, Some("no file"))
    );
    assert_eq!(
        config_fix(i),
        (
            "/etc/default/irqbalance".to_owned(),
            Value::Absent,
            Value::text("IRQBALANCE_BANNED_CPULIST=2-15\n")
        )
    );
    let ops = Ops::default();
    apply_profile(&fx, &ops, &p);
    assert_eq!(
        read(&fx, "/etc/default/irqbalance"),
        "IRQBALANCE_BANNED_CPULIST=2-15\n"
    );
    rollback(&fx, &ops);
    assert!(!fx.real("/etc/default/irqbalance").exists());
    assert_eq!(ops.restarts.borrow().len(), 2);
}

/// A read-only bind mount of the fixture's directory, undone on drop (by its path, which the
/// test created).
struct ReadOnlyMount(PathBuf);

impl ReadOnlyMount {
    fn new(dir: PathBuf) -> ReadOnlyMount {
        let run = |args: &[&str]| {
            let st = std::process::Command::new("mount")
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "mount {args:?}");
        };
        let d = dir.to_str().unwrap();
        run(&["--bind", d, d]);
        let guard = ReadOnlyMount(dir.clone());
        run(&["-o", "remount,bind,ro", d]);
        guard
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// In a container /proc/irq and /sys are the host's, mounted read-only: one unsupported item
/// each, nothing planned (apply would otherwise stop at the first IRQ with EROFS). Needs root
/// for the bind mounts.
#[test]
fn read_only_irq_and_workqueue_mounts_are_unsupported_and_not_planned() {
    if !real::enabled("read_only_irq_and_workqueue_mounts_are_unsupported_and_not_planned") {
        return;
    }
    let fx = host_with_irqs();
    let p = load(&fx, LAYOUT);
    let _irq = ReadOnlyMount::new(fx.real("/proc/irq"));
    let _wq = ReadOnlyMount::new(fx.real(WQ));
    let report = verify(&fx, &p);
    for key in ["isolation.irq", "isolation.workqueue"] {
        let i = item(&report, key);
        assert_eq!(
            (i.status, i.reason.as_deref()),
            (
                Status::Unsupported,
                Some("mounted read-only here (a container): the host's to set, not this system's")
            ),
            "{i:?}"
        );
    }
    assert_eq!(keys(&report, "isolation.irq."), Vec::<String>::new());
    assert_eq!(keys(&report, "isolation.workqueue."), Vec::<String>::new());
    let (plan, _) = apply::plan(&fx.host(), &p, None, None);
    assert!(
        !plan
            .changes
            .iter()
            .any(|c| c.key.starts_with("isolation.irq") || c.key.starts_with("isolation.workqueue")),
        "{:#?}",
        plan.changes
    );
}
