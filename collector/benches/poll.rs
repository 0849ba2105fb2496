//! Poll time and memory of the collector for 10 to 5,000 agents (docs/BENCHMARKS.md; run with
//! scripts/bench-collector.sh). Not a timed test: it measures and reports.
//!
//! The agents are real tonic gRPC servers over mutual TLS (the agent's own TlsListener)
//! implementing nodeagent.v1.NodeAgent with canned answers (`node_collector::fake`), many per
//! process on 127.0.0.1 ports. For each fleet size, two fresh processes: one serving the N fake
//! agents, one running the collector's library exactly as `serve` does (one kept-open channel
//! per host, bounded concurrency, every cycle written to SQLite). The collector process
//! reports:
//! - the first poll, with N TLS handshakes;
//! - steady-state polls (channels open): median, min and max of BENCH_CYCLES polls;
//! - its RSS before the inventory is loaded and after the steady polls: bytes per host.
//!
//! Knobs (environment): BENCH_SIZES (10,100,1000,5000), BENCH_CYCLES (10), BENCH_CONCURRENCY
//! (256), BENCH_OUT (../target/bench: collector.md and collector.csv).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use node_agent::certs;
use node_collector::config::{AgentsTls, Config, Listen, Poll, Store};
use node_collector::fake::{FakeAgent, server_tls};
use node_collector::inventory::Inventory;
use node_collector::server::Collector;

const CN: &str = "collector.bench";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let want = 65_536.min(hard).max(1024);
    let target = if hard < 65_536 { hard } else { want };
    let _ = setrlimit(Resource::RLIMIT_NOFILE, target, hard.max(target));
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[allow(clippy::print_stdout)]
fn agents_main() {
    let n: usize = env_or("NC_BENCH_N", "10").parse().unwrap();
    let pki = PathBuf::from(env_or("NC_BENCH_PKI", ""));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tls = server_tls(
            &pki.join("server.crt"),
            &pki.join("server.key"),
            &pki.join("ca.crt"),
        );
        let (_stop, rx) = tokio::sync::watch::channel(false);
        let mut out = std::io::stdout().lock();
        for i in 0..n {
            let a = FakeAgent::new(&format!("agent{i}"));
            let addr = a
                .serve("127.0.0.1:0".parse().unwrap(), tls.clone(), rx.clone())
                .await
                .expect("serve a fake agent");
            writeln!(out, "{}", addr.port()).unwrap();
        }
        writeln!(out, "ready").unwrap();
        out.flush().unwrap();
        drop(out);
        // Until the parent closes stdin.
        tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
        })
        .await
        .unwrap();
    });
}

#[allow(clippy::print_stdout, clippy::print_stderr)]
fn collector_main() {
    let dir = PathBuf::from(env_or("NC_BENCH_DIR", ""));
    let pki = dir.join("pki");
    let cycles: usize = env_or("BENCH_CYCLES", "10").parse().unwrap();
    let concurrency: usize = env_or("BENCH_CONCURRENCY", "256").parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let result = rt.block_on(async {
        let rss0 = rss_bytes();
        let config = Config {
            path: dir.join("collector.toml"),
            inventory: dir.join("inventory.toml"),
            agents: AgentsTls {
                cert: pki.join(format!("{CN}.crt")),
                key: pki.join(format!("{CN}.key")),
                ca: pki.join("ca.crt"),
            },
            tls: None,
            poll: Poll {
                interval: Duration::from_secs(30),
                concurrency,
                deadline: Duration::from_secs(10),
                backoff_min: Duration::from_secs(30),
                backoff_max: Duration::from_secs(600),
                watch: false,
            },
            store: Store {
                path: dir.join("fleet.db"),
                retention_days: 90,
            },
            listen: Listen {
                grpc: "127.0.0.1:0".parse().unwrap(),
                metrics: "127.0.0.1:0".parse().unwrap(),
            },
        };
        let inventory = Inventory::load(&config.inventory).expect("inventory");
        let n = inventory.hosts.len();
        let mut c = Collector::new(config, inventory, true)
            .map_err(|s| s.error)
            .unwrap();
        let first = c.cycle(true).await.map_err(|s| s.error).unwrap();
        let reachable = c.fleet.hosts.iter().filter(|h| h.reachable).count();
        if reachable != n {
            let e = c
                .fleet
                .hosts
                .iter()
                .find(|h| !h.reachable)
                .map(|h| h.error.clone());
            eprintln!("only {reachable} of {n} reachable; e.g. {e:?}");
        }
        let rss_first = rss_bytes();
        let mut steady = Vec::new();
        for _ in 0..cycles {
            let cy = c.cycle(true).await.map_err(|s| s.error).unwrap();
            steady.push(cy.elapsed.as_secs_f64() * 1000.0);
        }
        let rss_steady = rss_bytes();
        steady.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let median = steady[steady.len() / 2];
        // Then with a WatchDrift stream open per host (`[poll] watch`): its memory, and the
        // poll with the streams open.
        let (wake, _events) = tokio::sync::mpsc::unbounded_channel();
        c.config.poll.watch = true;
        c.watch(&wake);
        tokio::time::sleep(Duration::from_secs(2 + n as u64 / 1000)).await;
        let mut watched = Vec::new();
        for _ in 0..cycles {
            let cy = c.cycle(true).await.map_err(|s| s.error).unwrap();
            watched.push(cy.elapsed.as_secs_f64() * 1000.0);
        }
        watched.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let rss_watch = rss_bytes();
        c.unwatch();
        serde_json::json!({
            "n": n,
            "reachable": reachable,
            "first_ms": first.elapsed.as_secs_f64() * 1000.0,
            "steady_median_ms": median,
            "steady_min_ms": steady[0],
            "steady_max_ms": steady[steady.len() - 1],
            "rss_base": rss0,
            "rss_first": rss_first,
            "rss_steady": rss_steady,
            "bytes_per_host": (rss_steady.saturating_sub(rss0)) / n.max(1) as u64,
            "watch_median_ms": watched[watched.len() / 2],
            "rss_watch": rss_watch,
        })
    });
    println!("{result}");
}

fn gen_pki(dir: &Path) {
    let mut req = certs::Request::new(dir, vec!["127.0.0.1".to_owned()]);
    req.observers = vec![CN.to_owned()];
    req.days = 2;
    certs::generate(&req).expect("PKI");
}

#[allow(clippy::print_stdout, clippy::print_stderr)]
fn orchestrate() {
    raise_nofile();
    let sizes: Vec<usize> = env_or("BENCH_SIZES", "10,100,1000,5000")
        .split(',')
        .map(|s| s.trim().parse().expect("BENCH_SIZES: numbers"))
        .collect();
    let out_dir = PathBuf::from(env_or("BENCH_OUT", "../target/bench"));
    std::fs::create_dir_all(&out_dir).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    gen_pki(&tmp.path().join("pki"));
    let exe = std::env::current_exe().unwrap();
    let mut rows = Vec::new();
    for n in sizes {
        let dir = tmp.path();
        let _ = std::fs::remove_file(dir.join("fleet.db"));
        let _ = std::fs::remove_file(dir.join("fleet.db-wal"));
        let _ = std::fs::remove_file(dir.join("fleet.db-shm"));
        let mut agents = Command::new(&exe)
            .env("NC_BENCH_ROLE", "agents")
            .env("NC_BENCH_N", n.to_string())
            .env("NC_BENCH_PKI", dir.join("pki"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the agents");
        let mut ports = Vec::new();
        for line in BufReader::new(agents.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if line == "ready" {
                break;
            }
            ports.push(line);
        }
        assert_eq!(
            ports.len(),
            n,
            "the agents process did not start {n} agents"
        );
        let mut inv = String::from("[defaults]\nlabels = { site = \"bench\" }\n");
        for (i, p) in ports.iter().enumerate() {
            inv.push_str(&format!(
                "[[host]]\nname = \"agent{i}\"\naddress = \"127.0.0.1:{p}\"\nlabels = {{ rack = \"r{}\", role = \"engine\" }}\n",
                i / 40
            ));
        }
        std::fs::write(dir.join("inventory.toml"), inv).unwrap();
        let out = Command::new(&exe)
            .env("NC_BENCH_ROLE", "collector")
            .env("NC_BENCH_DIR", dir)
            .stderr(Stdio::inherit())
            .output()
            .expect("run the collector");
        drop(agents.stdin.take());
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agents.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = agents.wait();
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        let r: serde_json::Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("collector output {line:?}: {e}"));
        eprintln!("{r}");
        rows.push(r);
    }
    let mut md = String::from(
        "| agents | reachable | first poll (TLS handshakes) ms | steady poll median ms | min | max | collector RSS MiB | bytes per host |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut csv = String::from(
        "n,first_ms,steady_median_ms,steady_min_ms,steady_max_ms,rss_steady,bytes_per_host\n",
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} |\n",
            r["n"],
            r["reachable"],
            r["first_ms"].as_f64().unwrap(),
            r["steady_median_ms"].as_f64().unwrap(),
            r["steady_min_ms"].as_f64().unwrap(),
            r["steady_max_ms"].as_f64().unwrap(),
            r["rss_steady"].as_f64().unwrap() / 1048576.0,
            r["bytes_per_host"],
        ));
        csv.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            r["n"],
            r["first_ms"],
            r["steady_median_ms"],
            r["steady_min_ms"],
            r["steady_max_ms"],
            r["rss_steady"],
            r["bytes_per_host"]
        ));
    }
    // The marginal cost of a host: the RSS slope between consecutive sizes (the fixed cost of
    // the runtime, TLS and SQLite cancels out).
    md.push_str(
        "\n| between | RSS slope, bytes per host | with WatchDrift streams |\n|---|---:|---:|\n",
    );
    for w in rows.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let dn = b["n"].as_f64().unwrap() - a["n"].as_f64().unwrap();
        let dr = b["rss_steady"].as_f64().unwrap() - a["rss_steady"].as_f64().unwrap();
        let dw = b["rss_watch"].as_f64().unwrap() - a["rss_watch"].as_f64().unwrap();
        md.push_str(&format!(
            "| {} → {} | {:.0} | {:.0} |\n",
            a["n"],
            b["n"],
            dr / dn,
            dw / dn
        ));
    }
    md.push_str("\n| agents | steady poll median with the streams open, ms | RSS with streams, MiB |\n|---:|---:|---:|\n");
    for r in &rows {
        md.push_str(&format!(
            "| {} | {:.1} | {:.1} |\n",
            r["n"],
            r["watch_median_ms"].as_f64().unwrap(),
            r["rss_watch"].as_f64().unwrap() / 1048576.0
        ));
    }
    print!("{md}");
    std::fs::write(out_dir.join("collector.md"), &md).unwrap();
    std::fs::write(out_dir.join("collector.csv"), &csv).unwrap();
}

fn main() {
    // `cargo bench` passes --bench; nothing else is taken from the arguments.
    match std::env::var("NC_BENCH_ROLE").as_deref() {
        Ok("agents") => agents_main(),
        Ok("collector") => collector_main(),
        _ => orchestrate(),
    }
}
