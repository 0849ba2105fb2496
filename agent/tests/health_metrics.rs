//! Health checks and the metrics endpoint through the real binaries (issue 7, points 2 and 3):
//! node-agentd's /metrics scraped over HTTP and parsed with a Prometheus text-format parser,
//! checked against a Verify report and a GetHealth report taken at the same time; the HTTP
//! edges of the endpoint; `agentctl health` with the monitoring-plugin exit codes, through the
//! daemon and on fixture trees; the example alert rules with promtool.
//!
//! Unprivileged. promtool (`NODE_AGENT_PROMTOOL`, else on PATH) lints the scrape and checks
//! and unit-tests the alert rules; `.ci/run` provides it, so CI never skips those parts.

#[path = "support/daemon.rs"]
mod daemon_support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use daemon_support::{Opts, Setup, describe, free_port, now_secs, read_sysctl};
use node_agent_proto::v1 as pb;
use prometheus_parse::{Sample, Scrape, Value};

const DRIFT_KEY: &str = "fs.inotify.max_user_instances";
const ABSENT_KEY: &str = "kernel.node_agent_no_such_knob";

/// One drifted sysctl (its current value + 1), one that passes, one this kernel lacks.
fn profile_text() -> String {
    let wanted = read_sysctl(DRIFT_KEY).parse::<u64>().expect("a number") + 1;
    format!(
        "[profile]\nname = \"e2e-metrics\"\n\n[sysctl]\n\"kernel.threads-max\" = {{ min = 1 }}\n\
         \"{DRIFT_KEY}\" = {wanted}\n\"{ABSENT_KEY}\" = 1\n"
    )
}

#[allow(clippy::print_stderr)]
fn note(msg: &str) {
    eprintln!("health_metrics: {msg}");
}

/// One HTTP/1.1 request on a fresh connection: (status, headers, body).
fn http(port: u16, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (status, head.to_owned(), body.to_owned())
}

fn scrape(port: u16) -> (String, Scrape) {
    let (status, head, body) = http(port, "GET", "/metrics");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    let parsed = Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).expect("parse the scrape");
    (body, parsed)
}

fn value(s: &Sample) -> f64 {
    match &s.value {
        Value::Gauge(v) | Value::Counter(v) | Value::Untyped(v) => *v,
        other => panic!("{}: not a single value: {other:?}", s.metric),
    }
}

fn samples<'a>(scrape: &'a Scrape, name: &str) -> Vec<&'a Sample> {
    scrape.samples.iter().filter(|s| s.metric == name).collect()
}

fn label<'a>(s: &'a Sample, key: &str) -> &'a str {
    s.labels
        .get(key)
        .unwrap_or_else(|| panic!("{} has no label {key}", s.metric))
}

fn one(scrape: &Scrape, name: &str) -> f64 {
    let v = samples(scrape, name);
    assert_eq!(v.len(), 1, "{name}: {v:?}");
    value(v[0])
}

/// promtool from NODE_AGENT_PROMTOOL or PATH; `None` (with a note) when neither has it.
fn promtool() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NODE_AGENT_PROMTOOL") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "NODE_AGENT_PROMTOOL={} is not a file",
            p.display()
        );
        return Some(p);
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        note("promtool not found (set NODE_AGENT_PROMTOOL): its checks are skipped here");
    }
    found
}

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn health_code(status: i32) -> f64 {
    match pb::HealthStatus::try_from(status).expect("a known status") {
        pb::HealthStatus::Ok => 0.0,
        pb::HealthStatus::Warn => 1.0,
        pb::HealthStatus::Crit => 2.0,
        pb::HealthStatus::Unknown | pb::HealthStatus::Unspecified => 3.0,
    }
}

// ---------------------------------------------------------------------------------------------
// 1. A scrape against a verify report and a health run of the same moment

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_agree_with_verify_and_health_taken_at_the_same_time() {
    let setup = Setup::new();
    let profile = setup.profile("e2e-metrics", &profile_text());
    // One endpoint that accepts (the kernel completes the handshake from the backlog), one
    // closed port (refused).
    let open = TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = free_port();
    let port = free_port();
    let daemon = setup
        .start(&Opts {
            // Long intervals: the runs compared are the ones this test asks for.
            verify_interval: "1h",
            metrics: Some(port),
            extra: format!(
                "\n[health]\ninterval = \"1h\"\nmounts = [\"/\"]\ncpu_sample_interval = \"50ms\"\n\
                 tcp_timeout = \"2s\"\n\n[health.endpoints]\nexchange-front = \"{}\"\n\
                 closed = \"127.0.0.1:{closed}\"\n",
                open.local_addr().unwrap()
            ),
            ..Opts::observe(&profile)
        })
        .await;
    let mut client = daemon.unix().await;

    // The start-up health run is done once its timestamp shows.
    daemon_support::poll(
        "the first health run",
        Duration::from_secs(10),
        async || {
            let (_, s) = scrape(port);
            (!samples(&s, "node_agent_health_last_run_timestamp_seconds").is_empty()).then_some(())
        },
    )
    .await;

    let before = now_secs();
    let report = client
        .verify(pb::VerifyRequest {})
        .await
        .expect("Verify")
        .into_inner()
        .report
        .expect("a report");
    let health = client
        .get_health(pb::GetHealthRequest {})
        .await
        .expect("GetHealth")
        .into_inner();
    let status = client
        .get_status(pb::GetStatusRequest {})
        .await
        .expect("GetStatus")
        .into_inner();
    let (text, s) = scrape(port);
    let after = now_secs();

    // node_agent_info.
    let info = samples(&s, "node_agent_info");
    assert_eq!(info.len(), 1, "{text}");
    assert_eq!(value(info[0]), 1.0);
    assert_eq!(label(info[0], "version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(label(info[0], "profile"), "e2e-metrics");
    assert_eq!(label(info[0], "profile_hash"), status.profile_sha256);

    // node_agent_drift_items{class,status}: the report's counts, every status of each class.
    let mut want: BTreeMap<(String, String), f64> = BTreeMap::new();
    for st in [
        "pass",
        "drift",
        "pending-reboot",
        "not-persistent",
        "unsupported",
        "error",
    ] {
        want.insert(("sysctl".into(), st.into()), 0.0);
    }
    for i in &report.items {
        let class = pb::Class::try_from(i.class).unwrap();
        assert_eq!(class, pb::Class::Sysctl, "{i:?}");
        let st = match pb::ItemStatus::try_from(i.status).unwrap() {
            pb::ItemStatus::Pass => "pass",
            pb::ItemStatus::Drift => "drift",
            pb::ItemStatus::Unsupported => "unsupported",
            other => panic!("unexpected {other:?} for {}", i.key),
        };
        *want.get_mut(&("sysctl".into(), st.into())).unwrap() += 1.0;
    }
    let got: BTreeMap<(String, String), f64> = samples(&s, "node_agent_drift_items")
        .iter()
        .map(|x| {
            (
                (label(x, "class").to_owned(), label(x, "status").to_owned()),
                value(x),
            )
        })
        .collect();
    assert_eq!(got, want, "{text}");
    assert_eq!(want[&("sysctl".to_owned(), "drift".to_owned())], 1.0);

    // node_agent_drift_item: exactly the items not compliant, nothing for pass/unsupported.
    let drifted: BTreeSet<(String, String)> = samples(&s, "node_agent_drift_item")
        .iter()
        .map(|x| {
            assert_eq!(value(x), 1.0);
            (label(x, "class").to_owned(), label(x, "key").to_owned())
        })
        .collect();
    assert_eq!(
        drifted,
        BTreeSet::from([("sysctl".to_owned(), DRIFT_KEY.to_owned())]),
        "{text}"
    );

    // The verify timestamp is this Verify's; the histogram counts the start-up verify too.
    let at = one(&s, "node_agent_last_verify_timestamp_seconds");
    assert!(
        (before as f64) <= at.ceil() && at <= after as f64 + 1.0,
        "{at} not in [{before}, {after}]"
    );
    let count = one(&s, "node_agent_verify_duration_seconds_count");
    assert!(count >= 2.0, "{count} verifies counted:\n{text}");

    // node_agent_health_status{check}: every check of the GetHealth run, with its code.
    let want: BTreeMap<String, f64> = health
        .checks
        .iter()
        .map(|c| (c.name.clone(), health_code(c.status)))
        .collect();
    let got: BTreeMap<String, f64> = samples(&s, "node_agent_health_status")
        .iter()
        .map(|x| (label(x, "check").to_owned(), value(x)))
        .collect();
    assert_eq!(got, want, "{text}");
    for name in [
        "disk./.usage",
        "memory.usage",
        "cpu.usage",
        "tcp.exchange-front",
        "tcp.closed",
        "clock.sync",
        "drift",
    ] {
        assert!(want.contains_key(name), "no {name} check: {health:?}");
    }
    assert_eq!(want["tcp.closed"], 2.0, "a refused port is crit");
    assert_eq!(want["drift"], 1.0, "one drifted item warns");

    // Host gauges from the same run: the values GetHealth gave, in base units.
    let check = |name: &str| health.checks.iter().find(|c| c.name == name).unwrap();
    let number = |c: &pb::HealthCheck| -> f64 {
        c.value
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{}: value {:?}", c.name, c.value))
    };
    let disk = samples(&s, "node_agent_host_disk_used_ratio");
    assert_eq!(disk.len(), 1, "{text}");
    assert_eq!(label(disk[0], "mount"), "/");
    assert!((value(disk[0]) - number(check("disk./.usage")) / 100.0).abs() < 1e-3);
    let mem = one(&s, "node_agent_host_memory_used_ratio");
    assert!(mem > 0.0 && mem < 1.0, "{mem}");
    assert!((mem - number(check("memory.usage")) / 100.0).abs() < 1e-3);
    let cpu = samples(&s, "node_agent_host_cpu_busy_ratio");
    if check("cpu.usage").value.is_empty() {
        assert!(cpu.is_empty(), "{text}");
    } else {
        assert_eq!(label(cpu[0], "cpus"), "all", "no isolation layout here");
    }
    let tcp: BTreeMap<&str, f64> = samples(&s, "node_agent_host_tcp_connect_seconds")
        .iter()
        .map(|x| (label(x, "endpoint"), value(x)))
        .collect();
    assert_eq!(tcp.keys().copied().collect::<Vec<_>>(), ["exchange-front"]);
    assert!(tcp["exchange-front"] > 0.0 && tcp["exchange-front"] < 2.0);
    let synced = one(&s, "node_agent_host_clock_synchronized");
    assert_eq!(
        synced == 1.0,
        health_code(check("clock.sync").status) != 2.0
    );

    // No systemd on the bus here, or units not installed: no unit is ever reported active.
    for u in samples(&s, "node_agent_unit_active") {
        assert_eq!(value(u), 0.0, "{text}");
    }

    // promtool lints names, types and help texts (the Prometheus conventions).
    if let Some(promtool) = promtool() {
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run promtool");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The HTTP edges: only /metrics, only GET and HEAD.
    let (code, head, _) = http(port, "GET", "/");
    assert_eq!(code, 404, "{head}");
    let (code, head, _) = http(port, "POST", "/metrics");
    assert_eq!(code, 405, "{head}");
    assert!(head.to_lowercase().contains("allow: get, head"), "{head}");
    let (code, head, body) = http(port, "HEAD", "/metrics");
    assert_eq!((code, body.as_str()), (200, ""), "{head}");

    // `agentctl health` through the daemon: its exit code is the plugin code of the status.
    let out = setup.agentctl(&["health", "--output", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let code = out.status.code().unwrap();
    let status = json["status"].as_str().unwrap();
    assert_eq!(
        code,
        match status {
            "ok" => 0,
            "warn" => 1,
            "crit" => 2,
            _ => 3,
        },
        "{}",
        describe(&out)
    );
    assert!(
        json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "tcp.exchange-front"),
        "{}",
        describe(&out)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("not running"),
        "went through the daemon: {}",
        describe(&out)
    );
    drop(open);
}

// ---------------------------------------------------------------------------------------------
// 2. `agentctl health --local` on fixture trees: each exit code

/// A fixture tree, settings without disk findings (the fixture's filesystem is this
/// machine's), and a /proc/stat that is a FIFO fed two samples, so CPU usage is known.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(mem_total_kb: u64, mem_available_kb: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::fs::write(
            root.join("proc/meminfo"),
            format!(
                "MemTotal:       {mem_total_kb} kB\nMemFree:          1000 kB\n\
                 MemAvailable:   {mem_available_kb} kB\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("agent.toml"),
            "[listen]\nsocket = \"/nonexistent/agent.sock\"\nmetrics = \"off\"\n\n\
             [health]\nmounts = [\"/\"]\ndisk = { warn = 100, crit = 100 }\n\
             inodes = { warn = 100, crit = 100 }\ncpu_sample_interval = \"500ms\"\n",
        )
        .unwrap();
        Fixture { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// /proc/stat as a FIFO that gives `before`, then `after`, one reader each.
    fn feed_stat(&self, before: &'static str, after: &'static str) -> std::thread::JoinHandle<()> {
        let path = self.root().join("proc/stat");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        std::thread::spawn(move || {
            for text in [before, after] {
                // Blocks until agentctl opens it for reading.
                std::fs::write(&path, text).unwrap();
                // Opening again before the reader has closed would hand it this writer (and
                // lose the second sample): agentctl closes within microseconds of EOF, and
                // takes its second sample 500 ms after the first.
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    }

    fn health(&self) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_agentctl"))
            .args(["--settings"])
            .arg(self.dir.path().join("agent.toml"))
            .args(["health", "--local"])
            .env("NODE_AGENT_HOST_ROOT", self.root())
            .env_remove("NODE_AGENT_SETTINGS")
            .output()
            .unwrap()
    }
}

/// 2 CPUs; between the samples 100 jiffies pass on each, 10 of them busy.
const STAT_BEFORE: &str = "cpu  1000 0 1000 8000 0 0 0 0 0 0\n\
                           cpu0 500 0 500 4000 0 0 0 0 0 0\n\
                           cpu1 500 0 500 4000 0 0 0 0 0 0\n";
const STAT_AFTER: &str = "cpu  1010 0 1010 8180 0 0 0 0 0 0\n\
                          cpu0 505 0 505 4090 0 0 0 0 0 0\n\
                          cpu1 505 0 505 4090 0 0 0 0 0 0\n";

#[test]
fn agentctl_health_exits_with_the_plugin_codes() {
    // Everything within bounds: 0.
    let f = Fixture::new(1_000_000, 800_000);
    let feeder = f.feed_stat(STAT_BEFORE, STAT_AFTER);
    let out = f.health();
    feeder.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HEALTH OK: 4 checks ok\n"), "{text}");
    assert!(text.contains("cpu.usage"), "{text}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no drift check"), "{stderr}");

    // Memory at 75 %: warn, 1.
    let f = Fixture::new(1_000_000, 250_000);
    let feeder = f.feed_stat(STAT_BEFORE, STAT_AFTER);
    let out = f.health();
    feeder.join().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("HEALTH WARN: memory.usage\n"),
        "{}",
        describe(&out)
    );

    // Memory at 90 %: crit, 2.
    let f = Fixture::new(1_000_000, 100_000);
    let feeder = f.feed_stat(STAT_BEFORE, STAT_AFTER);
    let out = f.health();
    feeder.join().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));

    // No /proc/stat: CPU usage cannot be measured, unknown, 3.
    let f = Fixture::new(1_000_000, 800_000);
    let out = f.health();
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("HEALTH UNKNOWN: cpu.usage\n"),
        "{}",
        describe(&out)
    );

    // Broken settings: 3 as well (a plugin's "could not check"), never 2, and the key named.
    let f = Fixture::new(1_000_000, 800_000);
    std::fs::write(
        f.dir.path().join("agent.toml"),
        "[health]\nmemory = { warn = 90, crit = 80 }\n",
    )
    .unwrap();
    let out = f.health();
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("agent.toml:2:10: health.memory: warn 90 is above crit 80"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. The example alert rules

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    let rules = repo_file("packaging/prometheus/node-agent-rules.yml");
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("SUCCESS: 5 rules found"),
        "{}",
        describe(&out)
    );
    let out = Command::new(&promtool)
        .args(["test", "rules", "node-agent-rules.test.yml"])
        .current_dir(rules.parent().unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
}
