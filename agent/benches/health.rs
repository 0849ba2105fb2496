//! One health run and the metrics scrape, side by side in one run (issue 7). No criterion:
//! std::time::Instant, percentiles by nearest rank. Run `scripts/bench-health.sh` (builds the
//! release binaries first); results in docs/BENCHMARKS.md.
//!
//! Cases, each round running every case once in a rotating order so the VM's noise falls on
//! all of them:
//! - in-process, on this host: each check's own work (disk and inodes of `/` and `/var`,
//!   memory, one /proc/stat read and parse, the clock through adjtimex, a TCP connect to a
//!   loopback listener) and a whole `health::run` with the shortest CPU sample (10 ms);
//! - in-process `metrics::encode` of a snapshot as the daemon holds it (this host's verify of
//!   the shipped network-latency profile and one health run);
//! - node-agentd (`target/release/node-agentd`, or `NODE_AGENTD`), network-latency in observe
//!   mode, metrics on a loopback port: GET /metrics on one kept-alive connection (as Prometheus
//!   scrapes) and on a fresh connection each time.
//!
//! Then, fewer rounds, what an operator waits for: a whole run with the default 250 ms CPU
//! sample in-process, and GetHealth over the daemon's Unix socket.
//!
//! `BENCH_ROUNDS` (1000) and `BENCH_SLOW_ROUNDS` (20). The daemon is stopped by its pid
//! (SIGTERM, then SIGKILL) by a drop guard. Read-only for the host.

#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "support/stats.rs"]
mod stats;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use node_agent::health::{self, Endpoint, HealthInputs, HealthSettings};
use node_agent::host::HostRoot;
use node_agent::metrics::{self, HealthRun, Snapshot};
use node_agent::profile::{self, SearchPath};
use stats::{Stats, stats, us};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = kill(pid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_daemon(dir: &Path, port: u16) -> Daemon {
    let bin = std::env::var_os("NODE_AGENTD")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/release/node-agentd"));
    assert!(
        bin.is_file(),
        "{}: build it first (cargo build --release --bins)",
        bin.display()
    );
    let settings = dir.join("agent.toml");
    std::fs::write(
        &settings,
        format!(
            "[agent]\nprofile = \"network-latency\"\nverify_interval = \"10s\"\n\n\
             [listen]\nsocket = \"{}\"\nsocket_group = \"root\"\nmetrics = \"127.0.0.1:{port}\"\n",
            dir.join("agent.sock").display()
        ),
    )
    .unwrap();
    let child = Command::new(bin)
        .arg("--settings")
        .arg(&settings)
        .env("NODE_AGENT_STATE_DIR", dir.join("state"))
        .env("NODE_AGENT_PROFILE_PATH", repo().join("tuning-profiles"))
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("daemon.log")).unwrap(),
        ))
        .spawn()
        .expect("spawn node-agentd");
    let d = Daemon { child };
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port))
            && scrape(&mut c, true).contains("node_agent_health_last_run_timestamp_seconds")
        {
            return d;
        }
        assert!(Instant::now() < end, "node-agentd did not serve /metrics");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One GET /metrics on `c`; the body.
fn scrape(c: &mut TcpStream, close: bool) -> String {
    // One write, no Nagle delay: as Prometheus's Go client sends a request.
    c.set_nodelay(true).unwrap();
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    );
    c.write_all(request.as_bytes()).unwrap();
    let mut r = BufReader::new(c);
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
    String::from_utf8(body).unwrap()
}

fn row(case: &str, s: &Stats) {
    println!(
        "| {case} | {} | {} | {} | {} |",
        s.n,
        us(s.p50),
        us(s.p99),
        us(s.max)
    );
}

fn main() {
    let rounds = env_num("BENCH_ROUNDS", 1000);
    let slow_rounds = env_num("BENCH_SLOW_ROUNDS", 20);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let host = HostRoot::new("/");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = Endpoint {
        name: "loopback".into(),
        address: listener.local_addr().unwrap().to_string(),
    };
    // The listener never accepts: the kernel completes handshakes until the backlog is full.
    // Drain it from a thread so a thousand connects keep finding room.
    std::thread::spawn(move || {
        for c in listener.incoming() {
            drop(c);
        }
    });
    let settings = HealthSettings {
        cpu_sample_interval: Duration::from_millis(10),
        endpoints: vec![endpoint.clone()],
        ..HealthSettings::default()
    };
    let profile = profile::load(
        "network-latency",
        &SearchPath::new(vec![repo().join("tuning-profiles")]),
    )
    .expect("load network-latency");
    let report = node_agent::tuning::verify(&host, &profile);
    let inputs = HealthInputs {
        drift: Some(Ok(report.summary.clone())),
        ..HealthInputs::default()
    };
    let run = rt.block_on(health::run(&host, &settings, &inputs));
    let health_run = HealthRun {
        report: run,
        at: 0.0,
        took: Duration::ZERO,
        isolation: false,
    };
    let histogram = metrics::verify_duration_histogram();
    histogram.observe(0.001);
    let encode = || {
        metrics::encode(&Snapshot {
            version: "0.1.0",
            profile: "network-latency",
            profile_hash: "0".repeat(64).as_str(),
            verified: Some((&report, 1.0)),
            health: Some(&health_run),
            verify_duration: &histogram,
        })
    };
    let encoded_len = encode().len();

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    let port = free_port();
    let daemon = start_daemon(dir.path(), port);
    let mut kept = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let scraped_len = scrape(&mut kept, false).len();

    type Case<'a> = (&'a str, Box<dyn FnMut() + 'a>);
    let mut cases: Vec<Case<'_>> = vec![
        (
            "disk + inodes, / and /var",
            Box::new(|| {
                std::hint::black_box(health::disk_checks(&host, &settings));
            }),
        ),
        (
            "memory (/proc/meminfo)",
            Box::new(|| {
                std::hint::black_box(health::memory_check(&host, &settings));
            }),
        ),
        (
            "one /proc/stat read + parse",
            Box::new(|| {
                let s = host.read("/proc/stat").unwrap();
                std::hint::black_box(health::CpuSample::parse(&s).unwrap());
            }),
        ),
        (
            "clock (adjtimex)",
            Box::new(|| {
                std::hint::black_box(health::clock_check(health::read_clock(), &settings));
            }),
        ),
        (
            "TCP connect, loopback",
            Box::new(|| {
                std::hint::black_box(rt.block_on(health::tcp_check(&endpoint, &settings)));
            }),
        ),
        (
            "whole run, 10 ms CPU sample",
            Box::new(|| {
                std::hint::black_box(rt.block_on(health::run(&host, &settings, &inputs)));
            }),
        ),
        (
            "metrics::encode (in-process)",
            Box::new(|| {
                std::hint::black_box(encode());
            }),
        ),
        (
            "GET /metrics, kept-alive connection",
            Box::new(|| {
                std::hint::black_box(scrape(&mut kept, false));
            }),
        ),
        (
            "GET /metrics, new connection",
            Box::new(|| {
                let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                std::hint::black_box(scrape(&mut c, true));
            }),
        ),
    ];
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds); cases.len()];
    for round in 0..rounds + 20 {
        for k in 0..cases.len() {
            let i = (round + k) % cases.len();
            let t = Instant::now();
            (cases[i].1)();
            let d = t.elapsed();
            if round >= 20 {
                samples[i].push(d);
            }
        }
    }

    println!("# Health run and metrics scrape\n");
    println!(
        "{rounds} rounds (after 20 warm-up), every case once per round in rotating order. \
         Encoded metrics: {encoded_len} bytes in-process, {scraped_len} bytes from node-agentd.\n"
    );
    println!("| case | n | p50 µs | p99 µs | max µs |\n|---|---|---|---|---|");
    for (i, (name, _)) in cases.iter().enumerate() {
        row(name, &stats(samples[i].clone()));
    }
    drop(cases);

    // What an operator waits for: the default CPU sample, and GetHealth through the daemon.
    let defaults = HealthSettings {
        endpoints: vec![endpoint.clone()],
        ..HealthSettings::default()
    };
    let socket = dir.path().join("agent.sock");
    let mut full = Vec::new();
    let mut rpc = Vec::new();
    rt.block_on(async {
        let mut client =
            node_agent::client::connect(&node_agent::client::Daemon::Socket(socket.clone()))
                .await
                .expect("connect to the socket");
        for _ in 0..slow_rounds {
            let t = Instant::now();
            std::hint::black_box(health::run(&host, &defaults, &inputs).await);
            full.push(t.elapsed());
            let t = Instant::now();
            client
                .get_health(node_agent_proto::v1::GetHealthRequest {})
                .await
                .expect("GetHealth");
            rpc.push(t.elapsed());
        }
    });
    println!(
        "\n| case (default 250 ms CPU sample) | n | p50 µs | p99 µs | max µs |\n|---|---|---|---|---|"
    );
    row("whole run, in-process", &stats(full));
    row("GetHealth over the Unix socket", &stats(rpc));
    drop(daemon);
}
