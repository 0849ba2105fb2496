//! Health checks (issue 7, point 1): thresholds on this VM's real readings, fixture edge cases
//! under a HostRoot tree, loopback TCP endpoints. Opt-in (root, `NODE_AGENT_PRIVILEGED_TESTS=1`):
//! a 1 MiB tmpfs filled to ~90 %, and an endpoint that never answers (a veth in a network
//! namespace this test creates, whose peer drops the packets).

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use node_agent::health::{
    self, Check, CpuLayout, CpuSample, Endpoint, HealthInputs, HealthReport, HealthSettings,
    Status, Thresholds, UnitState,
};
use node_agent::host::HostRoot;
use node_agent::profile::types::CpuList;
use node_agent::verify::Summary;

fn privileged() -> bool {
    std::env::var("NODE_AGENT_PRIVILEGED_TESTS").as_deref() == Ok("1")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn check(name: &str, status: Status) -> Check {
    Check {
        name: name.to_owned(),
        status,
        value: None,
        threshold: String::new(),
        message: String::new(),
    }
}

fn fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("proc")).unwrap();
    dir
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

fn meminfo(total_kb: u64, available_kb: u64) -> String {
    // The kernel's layout (fields the check must skip included).
    format!(
        "MemTotal:       {total_kb:>8} kB\nMemFree:          123456 kB\n\
         MemAvailable:   {available_kb:>8} kB\nBuffers:           10240 kB\nCached:           204800 kB\n"
    )
}

fn cpus(s: &str) -> CpuList {
    s.parse().unwrap()
}

// ---- the model ----

#[test]
fn overall_status_is_the_worst_check_and_maps_to_plugin_exit_codes() {
    let r = |s: &[Status]| {
        HealthReport::new(
            s.iter()
                .enumerate()
                .map(|(i, s)| check(&format!("c{i}"), *s))
                .collect(),
        )
    };
    assert_eq!(r(&[]).status, Status::Ok);
    assert_eq!(r(&[Status::Ok, Status::Unknown]).status, Status::Unknown);
    assert_eq!(
        r(&[Status::Unknown, Status::Warn, Status::Ok]).status,
        Status::Warn
    );
    assert_eq!(
        r(&[Status::Warn, Status::Crit, Status::Unknown]).status,
        Status::Crit
    );
    assert_eq!(r(&[Status::Ok]).exit_code(), 0);
    assert_eq!(r(&[Status::Warn]).exit_code(), 1);
    assert_eq!(r(&[Status::Crit, Status::Warn]).exit_code(), 2);
    assert_eq!(r(&[Status::Unknown]).exit_code(), 3);
    let json = serde_json::to_string(&r(&[Status::Crit, Status::Ok])).unwrap();
    assert!(
        json.starts_with(r#"{"status":"crit","checks":[{"name":"c0","status":"crit""#),
        "{json}"
    );
    for s in [Status::Ok, Status::Warn, Status::Crit, Status::Unknown] {
        assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
    }
}

#[test]
fn defaults_are_the_operations_manual_thresholds() {
    let s = HealthSettings::default();
    assert_eq!(s.mounts, ["/", "/var"]);
    assert_eq!((s.disk.warn, s.inodes.warn), (85.0, 85.0));
    assert_eq!((s.memory.warn, s.memory.crit), (70.0, 85.0));
    assert_eq!((s.cpu.warn, s.cpu.crit), (70.0, 85.0));
    assert_eq!((s.tcp_latency_ms.warn, s.tcp_latency_ms.crit), (10.0, 30.0));
    assert_eq!(s.tcp_timeout, Duration::from_secs(1));
    let t = s.memory;
    assert_eq!(t.status(69.9), Status::Ok);
    assert_eq!(t.status(70.0), Status::Warn);
    assert_eq!(t.status(85.0), Status::Crit);
}

// ---- memory ----

#[test]
fn memory_from_a_fixture_meminfo() {
    let dir = fixture();
    let host = HostRoot::new(dir.path());
    let s = HealthSettings::default();
    for (avail, status, value) in [
        (100_000, Status::Crit, 90.0),
        (250_000, Status::Warn, 75.0),
        (500_000, Status::Ok, 50.0),
    ] {
        write(dir.path(), "proc/meminfo", &meminfo(1_000_000, avail));
        let c = health::memory_check(&host, &s);
        assert_eq!(
            (c.name.as_str(), c.status),
            ("memory.usage", status),
            "{c:?}"
        );
        assert_eq!(c.value, Some(value));
    }
    // No MemAvailable (kernels before 3.14): cannot run.
    write(
        dir.path(),
        "proc/meminfo",
        "MemTotal: 1000 kB\nMemFree: 10 kB\n",
    );
    let c = health::memory_check(&host, &s);
    assert_eq!((c.status, c.value), (Status::Unknown, None));
    assert!(c.message.contains("MemAvailable"), "{}", c.message);
}

#[test]
fn an_unreadable_or_missing_file_is_unknown_with_the_reason() {
    let dir = fixture();
    let host = HostRoot::new(dir.path());
    let s = HealthSettings::default();
    let c = health::memory_check(&host, &s);
    assert_eq!(c.status, Status::Unknown);
    assert!(c.message.contains("proc/meminfo"), "{}", c.message);
    // A directory where the file should be: read fails with EISDIR (chmod 000 would not stop
    // root).
    fs::create_dir_all(dir.path().join("proc/meminfo")).unwrap();
    fs::create_dir_all(dir.path().join("proc/stat")).unwrap();
    let c = health::memory_check(&host, &s);
    assert_eq!(c.status, Status::Unknown);
    assert!(c.message.contains("failed to read"), "{}", c.message);
    let cpu = rt().block_on(health::cpu_checks(&host, &s, None));
    assert_eq!(cpu.len(), 1);
    assert_eq!(
        (cpu[0].name.as_str(), cpu[0].status),
        ("cpu.usage", Status::Unknown)
    );
}

#[test]
fn memory_thresholds_on_this_vm() {
    let text = fs::read_to_string("/proc/meminfo").unwrap();
    let kb = |k: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{k}:")))
            .unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let mine = (kb("MemTotal") - kb("MemAvailable")) * 100.0 / kb("MemTotal");
    let host = HostRoot::default();
    let got = health::memory_check(&host, &HealthSettings::default());
    let value = got.value.unwrap();
    assert!((value - mine).abs() < 2.0, "check {value}, mine {mine}");
    // The default thresholds, unless the reading sits on a boundary.
    if [70.0, 85.0].iter().all(|b: &f64| (b - mine).abs() > 1.0) {
        let expect = if mine >= 85.0 {
            Status::Crit
        } else if mine >= 70.0 {
            Status::Warn
        } else {
            Status::Ok
        };
        assert_eq!(got.status, expect, "{got:?}");
    }
    // Thresholds placed around the real reading.
    for (warn, crit, expect) in [
        (mine + 10.0, mine + 20.0, Status::Ok),
        (mine - 10.0, mine + 10.0, Status::Warn),
        (mine - 20.0, mine - 10.0, Status::Crit),
    ] {
        let s = HealthSettings {
            memory: Thresholds { warn, crit },
            ..HealthSettings::default()
        };
        assert_eq!(health::memory_check(&host, &s).status, expect);
    }
}

// ---- CPU ----

const STAT_BEFORE: &str = "cpu  1000 0 1000 8000 0 0 0 0 0 0
cpu0 100 0 100 800 0 0 0 0 0 0
cpu1 400 0 400 200 0 0 0 0 0 0
cpu2 500 0 500 7000 0 0 0 0 0 0
intr 14582846 0 0
ctxt 123
";
// Deltas (user nice system idle iowait irq softirq steal):
// cpu0: busy 30+0+10+5+5+10 = 60 of 100 (iowait 20 counts as idle, guest 7 is inside user)
// cpu1: busy 100 of 100 -> 100 % (an isolated busy-polling core)
// cpu2: busy 100 of 100 -> 100 %
// all: busy 200 + 60 = 260 of 300
const STAT_AFTER: &str = "cpu  1130 0 1110 8020 20 5 5 10 7 0
cpu0 130 0 110 820 20 5 5 10 7 0
cpu1 490 0 410 200 0 0 0 0 0 0
cpu2 510 0 590 7000 0 0 0 0 0 0
intr 14582900 0 0
ctxt 456
";

#[test]
fn cpu_usage_from_two_written_samples() {
    let before = CpuSample::parse(STAT_BEFORE).unwrap();
    let after = CpuSample::parse(STAT_AFTER).unwrap();
    let s = HealthSettings::default();
    let all = health::cpu_checks_from(&before, &after, None, &s);
    assert_eq!(all.len(), 1);
    let expect = 260.0 * 100.0 / 300.0;
    assert_eq!(all[0].name, "cpu.usage");
    assert!(
        (all[0].value.unwrap() - expect).abs() < 1e-9,
        "{:?}",
        all[0]
    );
    assert_eq!(all[0].status, Status::Crit); // 86.7 %

    let layout = CpuLayout {
        housekeeping: cpus("0"),
        isolated: cpus("1-2"),
    };
    let split = health::cpu_checks_from(&before, &after, Some(&layout), &s);
    assert_eq!(split.len(), 2, "{split:?}");
    assert_eq!(
        (split[0].name.as_str(), split[0].status, split[0].value),
        ("cpu.usage", Status::Ok, Some(60.0))
    );
    assert_eq!(
        (split[1].name.as_str(), split[1].status, split[1].value),
        ("cpu.isolated.usage", Status::Ok, Some(100.0))
    );
    assert!(
        split[1].message.contains("cpu1 100 %"),
        "{}",
        split[1].message
    );
    // Housekeeping at 60 % against a 50 % warn bound: the isolated cores never count.
    let strict = HealthSettings {
        cpu: Thresholds {
            warn: 50.0,
            crit: 90.0,
        },
        ..HealthSettings::default()
    };
    let split = health::cpu_checks_from(&before, &after, Some(&layout), &strict);
    assert_eq!(split[0].status, Status::Warn);
    assert_eq!(split[1].status, Status::Ok);
    // Housekeeping CPUs absent from /proc/stat (offline, wrong layout): cannot run.
    let wrong = CpuLayout {
        housekeeping: cpus("7"),
        isolated: cpus("1"),
    };
    let c = health::cpu_checks_from(&before, &after, Some(&wrong), &s);
    assert_eq!(c[0].status, Status::Unknown);
    assert!(
        c[0].message.contains("housekeeping CPUs 7"),
        "{}",
        c[0].message
    );
    // The same sample twice: no time elapsed, cannot run.
    let c = health::cpu_checks_from(&before, &before, None, &s);
    assert_eq!(c[0].status, Status::Unknown);
    assert!(CpuSample::parse("intr 1 2\n").is_err());
    assert!(CpuSample::parse("cpu  1 x 3 4\n").is_err());
}

#[test]
fn cpu_usage_on_this_vm() {
    let host = HostRoot::default();
    let s = HealthSettings {
        cpu_sample_interval: Duration::from_millis(100),
        ..HealthSettings::default()
    };
    let all = rt().block_on(health::cpu_checks(&host, &s, None));
    assert_eq!(all.len(), 1);
    let v = all[0].value.expect("a reading");
    assert!((0.0..=100.0).contains(&v), "{v}");
    assert_eq!(all[0].status, s.cpu.status(v));
    let online = fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let online = CpuList::parse_kernel(&online).unwrap();
    if online.len() >= 2 {
        let first = online.iter().next().unwrap();
        let rest: Vec<String> = online.iter().skip(1).map(|c| c.to_string()).collect();
        let layout = CpuLayout {
            housekeeping: cpus(&first.to_string()),
            isolated: cpus(&rest.join(",")),
        };
        let split = rt().block_on(health::cpu_checks(&host, &s, Some(&layout)));
        let names: Vec<&str> = split.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["cpu.usage", "cpu.isolated.usage"]);
        assert_eq!(split[1].status, Status::Ok);
        assert!(
            split
                .iter()
                .all(|c| (0.0..=100.0).contains(&c.value.unwrap()))
        );
    }
}

// ---- disk ----

/// df's reading, independent of statvfs in the check: used and available 1K blocks.
fn df_percent(path: &Path) -> f64 {
    let out = Command::new("df").arg("-P").arg(path).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let f: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
    let used: f64 = f[2].parse().unwrap();
    let avail: f64 = f[3].parse().unwrap();
    used * 100.0 / (used + avail)
}

#[test]
fn disk_usage_on_this_vm() {
    let host = HostRoot::default();
    let got = health::disk_checks(&host, &HealthSettings::default());
    let names: Vec<&str> = got.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "disk./.usage",
            "disk./.inodes",
            "disk./var.usage",
            "disk./var.inodes"
        ]
    );
    let mine = df_percent(Path::new("/"));
    let v = got[0].value.unwrap();
    assert!((v - mine).abs() < 1.0, "check {v}, df {mine}");
    for (warn, crit, expect) in [
        (mine + 5.0, mine + 10.0, Status::Ok),
        (mine - 5.0, mine + 5.0, Status::Warn),
        (mine - 10.0, mine - 5.0, Status::Crit),
    ] {
        let s = HealthSettings {
            mounts: vec!["/".to_owned()],
            disk: Thresholds { warn, crit },
            ..HealthSettings::default()
        };
        assert_eq!(health::disk_checks(&host, &s)[0].status, expect);
    }
    assert!(got[1].value.is_some_and(|v| (0.0..=100.0).contains(&v)));
}

#[test]
fn a_missing_mount_is_unknown_and_a_fixture_root_reads_its_own_filesystem() {
    let dir = fixture();
    fs::create_dir_all(dir.path().join("var")).unwrap();
    let host = HostRoot::new(dir.path());
    let s = HealthSettings {
        mounts: vec!["/var".to_owned(), "/data".to_owned()],
        ..HealthSettings::default()
    };
    let got = health::disk_checks(&host, &s);
    assert_eq!(got[0].name, "disk./var.usage");
    let mine = df_percent(&dir.path().join("var"));
    assert!((got[0].value.unwrap() - mine).abs() < 1.0);
    assert_eq!(
        (got[2].name.as_str(), got[2].status),
        ("disk./data.usage", Status::Unknown)
    );
    assert_eq!(
        (got[3].name.as_str(), got[3].status),
        ("disk./data.inodes", Status::Unknown)
    );
    assert!(got[2].message.contains("statvfs"), "{}", got[2].message);
}

/// Unmounts the tmpfs when dropped, also when the test fails.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_mount_at_90_percent_warns() {
    if !privileged() {
        return;
    }
    let dir = fixture();
    let mnt = dir.path().join("data");
    fs::create_dir_all(&mnt).unwrap();
    let ok = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=1m,nr_inodes=64",
            "node-agent-health",
        ])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(ok.success());
    let _guard = Unmount(mnt.clone());
    // 1 MiB = 256 pages; 231 pages is 90.2 %.
    fs::write(mnt.join("fill"), vec![7u8; 231 * 4096]).unwrap();
    let host = HostRoot::new(dir.path());
    let s = HealthSettings {
        mounts: vec!["/data".to_owned()],
        ..HealthSettings::default()
    };
    let got = health::disk_checks(&host, &s);
    let v = got[0].value.unwrap();
    assert!((89.0..91.0).contains(&v), "{got:?}");
    assert_eq!(got[0].status, Status::Warn, "{got:?}");
    assert!(
        got[0].message.contains("/data is 90."),
        "{}",
        got[0].message
    );
    // 64 inodes, the root directory and one file used.
    assert_eq!(got[1].value, Some(2.0 * 100.0 / 64.0));
    assert_eq!(got[1].status, Status::Ok);
    // Past 95 %: crit.
    fs::write(mnt.join("more"), vec![7u8; 15 * 4096]).unwrap();
    assert_eq!(health::disk_checks(&host, &s)[0].status, Status::Crit);
}

// ---- TCP ----

fn endpoint(name: &str, address: String) -> Endpoint {
    Endpoint {
        name: name.to_owned(),
        address,
    }
}

#[test]
fn tcp_accepting_refused_and_unresolvable_endpoints() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap();
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let s = HealthSettings::default();
    let eps = [
        endpoint("exchange-front", open.to_string()),
        endpoint("database", closed.to_string()),
        endpoint("cache", "no-such-host.invalid:6379".to_owned()),
        endpoint("typo", "no-port-here".to_owned()),
    ];
    let got = rt().block_on(health::tcp_checks(&eps, &s));
    let names: Vec<&str> = got.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "tcp.exchange-front",
            "tcp.database",
            "tcp.cache",
            "tcp.typo"
        ]
    );
    let ms = got[0].value.expect("latency");
    assert!((0.0..1000.0).contains(&ms), "{ms}");
    assert_eq!(got[0].status, s.tcp_latency_ms.status(ms), "{:?}", got[0]);
    assert!(
        got[0].message.contains("connected in"),
        "{}",
        got[0].message
    );
    assert_eq!((got[1].status, got[1].value), (Status::Crit, None));
    assert!(
        got[1].message.contains("connection refused"),
        "{}",
        got[1].message
    );
    assert_eq!(got[2].status, Status::Unknown, "{:?}", got[2]);
    assert_eq!(got[3].status, Status::Unknown, "{:?}", got[3]);
    // The same accepting endpoint against bounds below any real latency: crit with a value.
    let zero = HealthSettings {
        tcp_latency_ms: Thresholds {
            warn: 0.0,
            crit: 0.0,
        },
        ..HealthSettings::default()
    };
    let c = rt().block_on(health::tcp_check(&eps[0], &zero));
    assert_eq!(c.status, Status::Crit);
    assert!(c.value.is_some());
    drop(listener);
}

/// Deletes the network namespace when dropped, also when the test fails.
struct Netns(&'static str);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", self.0]).status();
    }
}

fn ip_in(ns: &str, args: &str) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "ip"])
        .args(args.split_whitespace());
    let st = cmd.status().unwrap();
    assert!(st.success(), "ip {args} in {ns}");
}

#[test]
fn an_endpoint_that_never_answers_is_crit_after_the_timeout() {
    if !privileged() {
        return;
    }
    const NS: &str = "na-health-test";
    let _ = Command::new("ip").args(["netns", "del", NS]).status();
    assert!(
        Command::new("ip")
            .args(["netns", "add", NS])
            .status()
            .unwrap()
            .success()
    );
    let _guard = Netns(NS);
    // A veth pair inside the namespace; the peer has no address, and the neighbour entry
    // sends 169.254.77.2 to a MAC nobody has: the SYN leaves and nothing ever answers.
    ip_in(NS, "link set lo up");
    ip_in(NS, "link add na-h0 type veth peer name na-h1");
    ip_in(NS, "link set na-h0 up");
    ip_in(NS, "link set na-h1 up");
    ip_in(NS, "addr add 169.254.77.1/24 dev na-h0");
    ip_in(
        NS,
        "neigh add 169.254.77.2 lladdr 02:00:00:00:77:02 dev na-h0 nud permanent",
    );

    let s = HealthSettings {
        tcp_timeout: Duration::from_millis(300),
        ..HealthSettings::default()
    };
    let c = std::thread::spawn(move || {
        let ns = fs::File::open(format!("/run/netns/{NS}")).unwrap();
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let ep = endpoint("exchange-front", "169.254.77.2:9".to_owned());
        rt().block_on(health::tcp_check(&ep, &s))
    })
    .join()
    .unwrap();
    assert_eq!((c.status, c.value), (Status::Crit, None), "{c:?}");
    assert!(
        c.message.contains("no answer within 300 ms"),
        "{}",
        c.message
    );
}

// ---- clock, units, drift ----

#[test]
fn clock_sync_from_readings_and_the_real_kernel() {
    let s = HealthSettings::default();
    let r = |synchronised, est| {
        Ok(health::ClockReading {
            synchronised,
            estimated_error_us: est,
            max_error_us: 16_000_000,
        })
    };
    let c = health::clock_check(r(true, 200), &s);
    assert_eq!(
        (c.name.as_str(), c.status, c.value),
        ("clock.sync", Status::Ok, Some(0.2))
    );
    assert_eq!(health::clock_check(r(true, 1000), &s).status, Status::Warn);
    let c = health::clock_check(r(false, 0), &s);
    assert_eq!(c.status, Status::Crit);
    assert!(c.message.contains("not synchronised"), "{}", c.message);
    // adjtimex's raw values: STA_UNSYNC (0x40) or the TIME_ERROR state (5) is unsynchronised.
    assert!(health::clock_reading(0, 0x2001, 150, 4000).synchronised);
    assert!(!health::clock_reading(0, 0x0041, 150, 4000).synchronised);
    assert!(!health::clock_reading(5, 0x0001, 150, 4000).synchronised);
    assert_eq!(
        health::clock_reading(0, 0, -1, 16_000_000).estimated_error_us,
        0
    );
    // This VM's kernel answers (read-only adjtimex needs no privilege); its maximum error is
    // what the kernel keeps (at most 16 s, NTP_PHASE_LIMIT) and the check is never unknown.
    let real = health::read_clock().expect("adjtimex answers");
    assert!(real.max_error_us <= 16_000_000, "{real:?}");
    let c = health::clock_check(Ok(real), &s);
    assert_ne!(c.status, Status::Unknown, "{c:?}");
    assert_eq!(c.status == Status::Crit, !real.synchronised, "{c:?}");
}

#[test]
fn units_not_active_are_crit_and_drift_warns_with_counts() {
    let units = Ok(vec![
        UnitState {
            unit: "trading-engine.service".to_owned(),
            active_state: "active".to_owned(),
        },
        UnitState {
            unit: "md-gateway.service".to_owned(),
            active_state: "failed".to_owned(),
        },
    ]);
    let got = health::unit_checks(&units);
    assert_eq!(got[0].name, "units.trading-engine.service");
    assert_eq!(got[0].status, Status::Ok);
    assert_eq!(got[1].status, Status::Crit);
    assert_eq!(got[1].message, "md-gateway.service is failed");
    let got = health::unit_checks(&Err("D-Bus unreachable".to_owned()));
    assert_eq!((got.len(), got[0].status), (1, Status::Unknown));

    let clean = Summary {
        pass: 40,
        unsupported: 3,
        ..Summary::default()
    };
    let c = health::drift_check(&Ok(clean.clone()));
    assert_eq!((c.status, c.value), (Status::Ok, Some(0.0)));
    let dirty = Summary {
        drift: 2,
        pending_reboot: 1,
        ..clean
    };
    let c = health::drift_check(&Ok(dirty));
    assert_eq!((c.status, c.value), (Status::Warn, Some(3.0)));
    assert_eq!(
        c.message,
        "not compliant: 2 drift, 1 pending-reboot (40 pass)"
    );
    assert_eq!(
        health::drift_check(&Err("no profile".to_owned())).status,
        Status::Unknown
    );
}

// ---- a whole run ----

#[test]
fn a_whole_run_on_a_fixture_root() {
    let dir = fixture();
    fs::create_dir_all(dir.path().join("var")).unwrap();
    write(dir.path(), "proc/meminfo", &meminfo(1_000_000, 100_000));
    write(dir.path(), "proc/stat", STAT_BEFORE);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let s = HealthSettings {
        cpu_sample_interval: Duration::from_millis(10),
        endpoints: vec![endpoint(
            "exchange-front",
            listener.local_addr().unwrap().to_string(),
        )],
        ..HealthSettings::default()
    };
    let inputs = HealthInputs {
        layout: None,
        units: Some(Ok(vec![UnitState {
            unit: "trading-engine.service".to_owned(),
            active_state: "active".to_owned(),
        }])),
        drift: Some(Ok(Summary::default())),
    };
    let report = rt().block_on(health::run(&HostRoot::new(dir.path()), &s, &inputs));
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "disk./.usage",
            "disk./.inodes",
            "disk./var.usage",
            "disk./var.inodes",
            "memory.usage",
            "cpu.usage",
            "tcp.exchange-front",
            // No clock.sync: a fixture tree has no kernel clock.
            "units.trading-engine.service",
            "drift",
        ]
    );
    // Memory at 90 % is crit, and the worst check decides.
    assert_eq!(report.check("memory.usage").unwrap().status, Status::Crit);
    // The fixture's /proc/stat does not move between the samples.
    assert_eq!(report.check("cpu.usage").unwrap().status, Status::Unknown);
    assert_eq!((report.status, report.exit_code()), (Status::Crit, 2));
}
