//! node-agentd as a process: idle memory, the CPU its drift watch uses, and the latency of its
//! RPCs over loopback mutual TLS and over the Unix socket, all side by side in one run. No
//! criterion: std::time::Instant, percentiles by nearest rank. Run `scripts/bench-daemon.sh`
//! (builds the release binaries first), or `cargo build --release --bins` and then
//! `cargo bench -p node-agent --bench daemon`; results in docs/BENCHMARKS.md.
//!
//! Processes, started together from one temporary directory (certificates from
//! `node_agent::certs::generate`, one observer client), each stopped by its pid at the end
//! (SIGTERM, then SIGKILL after 5 s) by a drop guard, and killed by a panic hook if the bench
//! panics:
//! - **A**: `target/release/node-agentd`, the shipped trading-latency profile (from
//!   tuning-profiles/), observe mode, verify_interval 10s, mTLS on 127.0.0.1 and the Unix
//!   socket, its own state directory;
//! - **B**: the same daemon and settings with a one-sysctl profile: the daemon's floor;
//! - **C**: a bare tonic mTLS server (grpc.health.v1 only, on a current-thread runtime as the
//!   daemon's): this bench binary started again with `BENCH_DAEMON_BASELINE=ADDR`;
//! - **D**: as A with verify_interval 1s (the CPU case).
//!
//! Phases:
//! 1. idle: `BENCH_IDLE_SECS` (15) after each process accepts TCP, with no client: VmRSS, VmHWM,
//!    RssAnon, RssFile and threads from /proc/PID/status;
//! 2. CPU over `BENCH_CPU_SECS` (60), right after, still without clients: utime+stime from
//!    /proc/PID/stat (what the process used, exited threads included; USER_HZ resolution) and
//!    the run time of its live threads from /proc/PID/task/*/schedstat (ns);
//! 3. memory again after one mTLS health check of A, B and C (a fresh connection each, closed);
//! 4. B, C and D are stopped. Latency on A, one client: `BENCH_CALLS` (2000) rounds after
//!    `BENCH_WARMUP` (100), each round one call of every case, in a rotating order so the VM's
//!    noise falls on all of them: in-process `tuning::verify` of the same profile on the same
//!    host; in-process `Daemon::verify_now` (what the Verify RPC runs: the managed units from
//!    the bus when the profile needs them, verify on the blocking pool, journal check, drift
//!    bookkeeping) on a runtime built as node-agentd's; in-process the rest of a Verify
//!    (journal check, report to VerifyResponse, encoding); Verify / GetStatus / health Check
//!    over mTLS; Verify / GetStatus over the Unix socket. Then `BENCH_CLIENTS` (64) clients,
//!    each its own connection, 10 warm-up calls each and then `BENCH_CLIENT_CALLS` (200) timed
//!    calls each, released together, one case after another;
//! 5. A's memory after the latency phase.
//!
//! `NODE_AGENTD=PATH` picks another daemon binary. `BENCH_SYSTEM_BUS=ADDRESS` points the
//! daemons (and the in-process one) at a system bus with systemd, e.g. an nspawn container's
//! (`unix:path=.../system_bus_socket`); by default they use the host's, which a host without
//! systemd does not have (the units are then reported without a bus round trip).
//!
//! Needs nothing but the loopback interface and a writable temporary directory; as root the
//! daemon also drops its capabilities, as in production. Read-only for the host: observe mode,
//! and trading-latency holds no PM QoS.

#![allow(clippy::print_stdout, clippy::print_stderr)]

#[path = "support/stats.rs"]
mod stats;

use std::fmt::Write as _;
use std::fs;
use std::hint::black_box;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use node_agent::certs;
use node_agent::client::{self, Daemon as Target};
use node_agent::daemon::service::{Daemon, Env};
use node_agent::host::HostRoot;
use node_agent::profile::{self, SearchPath};
use node_agent::rollback::journal::{self, StateDir};
use node_agent::settings::Settings;
use node_agent::tuning;
use node_agent_proto::v1 as pb;
use prost::Message as _;
use stats::{Stats, stats, us};
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Set in the environment of the baseline server (process C): its listen address.
const BASELINE_ENV: &str = "BENCH_DAEMON_BASELINE";
/// The certificate directory of the baseline server.
const BASELINE_CERTS_ENV: &str = "BENCH_DAEMON_CERTS";
const SERVER_NAME: &str = "localhost";
const OBSERVER: &str = "bench-observer";
/// Warm-up calls per client in the concurrent cases.
const CLIENT_WARMUP: usize = 10;

fn main() -> ExitCode {
    if let Ok(addr) = std::env::var(BASELINE_ENV) {
        return baseline_server(&addr);
    }
    install_panic_hook();
    run();
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------------------
// Settings of the run
// ---------------------------------------------------------------------------------------------

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

struct Config {
    idle: Duration,
    cpu: Duration,
    warmup: usize,
    calls: usize,
    clients: usize,
    client_calls: usize,
    daemon_bin: PathBuf,
    repo: PathBuf,
    /// `BENCH_SYSTEM_BUS`: the system bus the daemons ask about the managed units (e.g. an
    /// nspawn container's); unset: the default, absent on a host without systemd.
    bus: Option<String>,
}

impl Config {
    fn from_env() -> Config {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace root")
            .to_owned();
        let daemon_bin = std::env::var_os("NODE_AGENTD")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo.join("target/release/node-agentd"));
        Config {
            idle: Duration::from_secs(env_num("BENCH_IDLE_SECS", 15) as u64),
            cpu: Duration::from_secs(env_num("BENCH_CPU_SECS", 60) as u64),
            warmup: env_num("BENCH_WARMUP", 100),
            calls: env_num("BENCH_CALLS", 2000),
            clients: env_num("BENCH_CLIENTS", 64),
            client_calls: env_num("BENCH_CLIENT_CALLS", 200),
            daemon_bin,
            repo,
            bus: std::env::var("BENCH_SYSTEM_BUS")
                .ok()
                .filter(|b| !b.is_empty()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes: started, registered for the panic hook, stopped by pid
// ---------------------------------------------------------------------------------------------

/// Pids of the children still running, for the panic hook.
static LIVE: Mutex<Vec<i32>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<i32>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A panic anywhere (a client task included) kills every child by its pid before the panic
/// unwinds or aborts; the drop guards then only reap.
fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        for &pid in live().iter() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        previous(info);
    }));
}

struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Proc {
        let stderr = fs::File::create(&log).expect("create a log file");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        live().push(child.id() as i32);
        Proc { name, child, log }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the process's log if it has exited.
    fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            live().retain(|p| *p != self.child.id() as i32);
            panic!(
                "{} exited ({status}); its stderr:\n{}",
                self.name,
                self.log_text()
            );
        }
    }

    /// SIGTERM, SIGKILL after 5 s, reaped. A reaped child is never signalled again (std keeps
    /// its status), so its pid cannot have been reused.
    fn stop(&mut self) {
        let pid = self.pid();
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
            }
            let _ = self.child.wait();
        }
        live().retain(|p| *p != pid);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until the process accepts TCP on `port` (and its Unix socket exists).
fn wait_ready(p: &mut Proc, port: u16, socket: Option<&Path>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        p.check_alive();
        if socket.is_none_or(Path::exists) && TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not listen on 127.0.0.1:{port} within 30 s; its stderr:\n{}",
            p.name,
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `n` distinct free loopback ports (all held until all are chosen).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("local_addr").port())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The baseline: a bare tonic server with mutual TLS
// ---------------------------------------------------------------------------------------------

/// Process C: grpc.health.v1 behind tonic's own rustls mTLS, one thread, until killed.
fn baseline_server(addr: &str) -> ExitCode {
    let dir = PathBuf::from(std::env::var_os(BASELINE_CERTS_ENV).expect(BASELINE_CERTS_ENV));
    let read = |f: &str| fs::read(dir.join(f)).unwrap_or_else(|e| panic!("read {f}: {e}"));
    let addr = addr.parse().expect("a socket address");
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read("server.crt"), read("server.key")))
        .client_ca_root(Certificate::from_pem(read("ca.crt")));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let served = runtime.block_on(async move {
        let (_reporter, health) = tonic_health::server::health_reporter();
        Server::builder()
            .tls_config(tls)?
            .add_service(health)
            .serve(addr)
            .await
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baseline server: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc readings
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Default)]
struct Mem {
    rss_kib: u64,
    hwm_kib: u64,
    anon_kib: u64,
    file_kib: u64,
    threads: u64,
}

fn mem(pid: i32) -> Mem {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let mut m = Mem::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let n = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        match key {
            "VmRSS" => m.rss_kib = n,
            "VmHWM" => m.hwm_kib = n,
            "RssAnon" => m.anon_kib = n,
            "RssFile" => m.file_kib = n,
            "Threads" => m.threads = n,
            _ => {}
        }
    }
    m
}

#[derive(Debug, Clone, Copy)]
struct Cpu {
    /// utime + stime, in clock ticks.
    ticks: u64,
    /// The live threads' time on a CPU, ns.
    sched_ns: u64,
    at: Instant,
}

fn cpu(pid: i32) -> Cpu {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name (which may contain spaces): state is field 3, utime 14,
    // stime 15.
    let after = &stat[stat.rfind(')').expect("a stat line") + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| -> u64 { fields[n - 3].parse().expect("a number") };
    let mut sched_ns = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task")).expect("read /proc/PID/task") {
        let path = task.expect("a task").path().join("schedstat");
        // A thread may exit between the listing and the read.
        if let Ok(s) = fs::read_to_string(path) {
            sched_ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Cpu {
        ticks: field(14) + field(15),
        sched_ns,
        at: Instant::now(),
    }
}

/// The whole machine's busy and total ticks so far (/proc/stat: user nice system idle iowait
/// irq softirq steal).
fn machine_ticks() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    if v.len() < 8 {
        return (0, 0);
    }
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    (busy, busy + v[3] + v[4])
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100, |t| t as u64)
}

fn mib(kib: u64) -> String {
    format!("{:.2}", kib as f64 / 1024.0)
}

// ---------------------------------------------------------------------------------------------
// Machine facts
// ---------------------------------------------------------------------------------------------

fn first_line_with(path: &str, prefix: &str) -> String {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "?".into())
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Processes named `comm` (other builds on this shared VM).
fn count_comm(comm: &str) -> usize {
    fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| {
                    fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == comm)
                })
                .count()
        })
        .unwrap_or(0)
}

fn date() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".into())
}

fn file_size(p: &Path) -> String {
    fs::metadata(p).map_or_else(
        |_| "?".into(),
        |m| format!("{:.1} MB", m.len() as f64 / 1e6),
    )
}

// ---------------------------------------------------------------------------------------------
// Latency statistics
// ---------------------------------------------------------------------------------------------

fn latency_header() {
    println!("| case | calls | p50 µs | p90 µs | p99 µs | max µs |");
    println!("|---|---:|---:|---:|---:|---:|");
}

fn latency_row(case: &str, s: &Stats, extra: &str) {
    println!(
        "| {case} | {} | {} | {} | {} | {} |{extra}",
        s.n,
        us(s.p50),
        us(s.p90),
        us(s.p99),
        us(s.max)
    );
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Tls,
    Unix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    Verify(Via),
    Status(Via),
    /// grpc.health.v1 Check of the whole server: the smallest call, over mTLS.
    Health,
}

impl Rpc {
    fn name(self) -> &'static str {
        match self {
            Rpc::Verify(Via::Tls) => "Verify, mTLS",
            Rpc::Status(Via::Tls) => "GetStatus, mTLS",
            Rpc::Health => "health Check, mTLS",
            Rpc::Verify(Via::Unix) => "Verify, Unix socket",
            Rpc::Status(Via::Unix) => "GetStatus, Unix socket",
        }
    }
}

/// Where daemon A answers.
#[derive(Clone)]
struct Targets {
    tls: Target,
    unix: Target,
    port: u16,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Targets {
    fn remote(port: u16, g: &certs::Generated) -> Target {
        let client = &g.clients[0].files;
        Target::Remote {
            addr: format!("127.0.0.1:{port}"),
            server_name: SERVER_NAME.into(),
            cert: client.cert.clone(),
            key: client.key.clone(),
            ca: g.ca.cert.clone(),
        }
    }
}

/// A health client over mTLS (the project's client connects to NodeAgent only).
async fn health_client(port: u16, ca: &Path, cert: &Path, key: &Path) -> HealthClient<Channel> {
    let read = |p: &Path| fs::read(p).expect("read a certificate file");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)))
        .identity(Identity::from_pem(read(cert), read(key)))
        .domain_name(SERVER_NAME);
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .expect("an endpoint")
        .tls_config(tls)
        .expect("a TLS config")
        .connect()
        .await
        .expect("connect for a health check");
    HealthClient::new(channel)
}

enum Conn {
    Agent(pb::node_agent_client::NodeAgentClient<Channel>),
    Health(HealthClient<Channel>),
}

/// A new connection for `rpc` (each client has its own).
async fn connect(t: &Targets, rpc: Rpc) -> Conn {
    let agent = |target: &Target| {
        let target = target.clone();
        async move {
            client::connect(&target)
                .await
                .unwrap_or_else(|e| panic!("connect to {target}: {e}"))
        }
    };
    match rpc {
        Rpc::Verify(Via::Tls) | Rpc::Status(Via::Tls) => Conn::Agent(agent(&t.tls).await),
        Rpc::Verify(Via::Unix) | Rpc::Status(Via::Unix) => Conn::Agent(agent(&t.unix).await),
        Rpc::Health => Conn::Health(health_client(t.port, &t.ca, &t.cert, &t.key).await),
    }
}

/// One call; returns the encoded size of the response message.
async fn call(conn: &mut Conn, rpc: Rpc) -> usize {
    match (conn, rpc) {
        (Conn::Agent(c), Rpc::Verify(_)) => c
            .verify(pb::VerifyRequest {})
            .await
            .expect("Verify")
            .get_ref()
            .encoded_len(),
        (Conn::Agent(c), Rpc::Status(_)) => c
            .get_status(pb::GetStatusRequest {})
            .await
            .expect("GetStatus")
            .get_ref()
            .encoded_len(),
        (Conn::Health(c), Rpc::Health) => c
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health Check")
            .get_ref()
            .encoded_len(),
        _ => panic!("{} on the wrong connection", rpc.name()),
    }
}

/// `clients` connections, each `CLIENT_WARMUP` untimed calls, then released together for
/// `calls` timed calls each. Returns every call's latency and the wall time of the timed part.
async fn concurrent(t: &Targets, rpc: Rpc, clients: usize, calls: usize) -> (Vec<Duration>, f64) {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(connect(t, rpc).await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut tasks = Vec::with_capacity(clients);
    for mut conn in conns {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..CLIENT_WARMUP {
                call(&mut conn, rpc).await;
            }
            barrier.wait().await;
            let mut samples = Vec::with_capacity(calls);
            for _ in 0..calls {
                let t = Instant::now();
                call(&mut conn, rpc).await;
                samples.push(t.elapsed());
            }
            (samples, Instant::now())
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut all = Vec::with_capacity(clients * calls);
    let mut end = start;
    for task in tasks {
        let (samples, done) = task.await.expect("a client task");
        all.extend(samples);
        end = end.max(done);
    }
    (all, (end - start).as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

fn toml_str(p: &Path) -> String {
    let s = p.to_str().expect("a UTF-8 path");
    assert!(
        !s.contains(['"', '\\']) && !s.chars().any(char::is_control),
        "unexpected characters in {s:?}"
    );
    format!("\"{s}\"")
}

/// A daemon's settings file: observe mode, mTLS on 127.0.0.1:port, the Unix socket.
fn write_settings(
    dir: &Path,
    profile: &str,
    interval: &str,
    port: u16,
    g: &certs::Generated,
) -> PathBuf {
    let text = format!(
        "[agent]\nprofile = \"{profile}\"\nmode = \"observe\"\nverify_interval = \"{interval}\"\n\
         \n[listen]\nsocket = {socket}\nsocket_group = \"root\"\ntcp = \"127.0.0.1:{port}\"\nmetrics = \"off\"\n\
         \n[tls]\ncert = {cert}\nkey = {key}\nclient_ca = {ca}\n\
         \n[roles]\nobservers = [\"{OBSERVER}\"]\n",
        socket = toml_str(&dir.join("agent.sock")),
        cert = toml_str(&g.server.files.cert),
        key = toml_str(&g.server.files.key),
        ca = toml_str(&g.ca.cert),
    );
    let path = dir.join("agent.toml");
    fs::write(&path, text).expect("write settings");
    path
}

struct DaemonSpec {
    name: &'static str,
    dir: PathBuf,
    port: u16,
}

fn start_daemon(
    cfg: &Config,
    spec: &DaemonSpec,
    profile: &str,
    interval: &str,
    g: &certs::Generated,
) -> Proc {
    fs::create_dir_all(spec.dir.join("state")).expect("create a state directory");
    let settings = write_settings(&spec.dir, profile, interval, spec.port, g);
    let mut cmd = Command::new(&cfg.daemon_bin);
    cmd.arg("--settings")
        .arg(&settings)
        .env("NODE_AGENT_PROFILE_PATH", cfg.repo.join("tuning-profiles"))
        .env("NODE_AGENT_STATE_DIR", spec.dir.join("state"))
        .env_remove("NODE_AGENT_HOST_ROOT")
        .env_remove("NODE_AGENT_SETTINGS");
    match &cfg.bus {
        Some(bus) => cmd.env(node_agent::units::SYSTEM_BUS_ENV, bus),
        None => cmd.env_remove(node_agent::units::SYSTEM_BUS_ENV),
    };
    Proc::spawn(spec.name, cmd, spec.dir.join("stderr.log"))
}

fn run() {
    let cfg = Config::from_env();
    assert!(
        cfg.daemon_bin.is_file(),
        "{} is missing: run `cargo build --release --bins` first (or set NODE_AGENTD)",
        cfg.daemon_bin.display()
    );
    let tmp = tempfile::Builder::new()
        .prefix("bench-daemon")
        .tempdir()
        .expect("a temporary directory");
    let root = tmp.path();
    let generated = certs::generate(&certs::Request {
        observers: vec![OBSERVER.into()],
        days: 1,
        ..certs::Request::new(root.join("certs"), vec![SERVER_NAME.into()])
    })
    .expect("generate certificates");

    let floor_dir = root.join("profiles");
    fs::create_dir_all(&floor_dir).expect("create the floor profile's directory");
    let floor = floor_dir.join("bench-floor.toml");
    fs::write(
        &floor,
        "[profile]\nname = \"bench-floor\"\n\
         description = \"One sysctl: the daemon's floor (agent/benches/daemon.rs)\"\n\
         \n[sysctl]\n\"net.core.somaxconn\" = { min = 1 }\n",
    )
    .expect("write the floor profile");

    let ports = free_ports(4);
    let specs = ["A", "B", "C", "D"]
        .iter()
        .zip(&ports)
        .map(|(name, port)| DaemonSpec {
            name,
            dir: root.join(name),
            port: *port,
        })
        .collect::<Vec<_>>();
    let floor_spec = floor.to_str().expect("a UTF-8 path").to_owned();

    let load_start = loadavg();
    let rustc_start = count_comm("rustc");
    eprintln!(
        "starting A, B, C, D (idle {:?}, CPU {:?})",
        cfg.idle, cfg.cpu
    );
    let mut a = start_daemon(&cfg, &specs[0], "trading-latency", "10s", &generated);
    let mut b = start_daemon(&cfg, &specs[1], &floor_spec, "10s", &generated);
    let mut c = {
        fs::create_dir_all(&specs[2].dir).expect("create a directory");
        let mut cmd = Command::new(std::env::current_exe().expect("the bench binary"));
        cmd.env(BASELINE_ENV, format!("127.0.0.1:{}", specs[2].port))
            .env(BASELINE_CERTS_ENV, root.join("certs"));
        Proc::spawn("C", cmd, specs[2].dir.join("stderr.log"))
    };
    let mut d = start_daemon(&cfg, &specs[3], "trading-latency", "1s", &generated);
    for (p, spec, unix) in [
        (&mut a, &specs[0], true),
        (&mut b, &specs[1], true),
        (&mut c, &specs[2], false),
        (&mut d, &specs[3], true),
    ] {
        let socket = spec.dir.join("agent.sock");
        wait_ready(p, spec.port, unix.then_some(socket.as_path()));
    }

    // Phase 1: idle memory.
    std::thread::sleep(cfg.idle);
    let procs: [(&str, &str); 4] = [
        ("A", "node-agentd, trading-latency, verify_interval 10s"),
        (
            "B",
            "node-agentd, one-sysctl profile (floor), verify_interval 10s",
        ),
        (
            "C",
            "bare tonic mTLS server (grpc.health.v1 only), current-thread",
        ),
        ("D", "node-agentd, trading-latency, verify_interval 1s"),
    ];
    let pids = [a.pid(), b.pid(), c.pid(), d.pid()];
    for p in [&mut a, &mut b, &mut c, &mut d] {
        p.check_alive();
    }
    let idle_mem: Vec<Mem> = pids.iter().map(|p| mem(*p)).collect();

    // Phase 2: CPU, no clients.
    eprintln!("idle memory read; CPU window of {:?}", cfg.cpu);
    let machine0 = machine_ticks();
    let cpu0: Vec<Cpu> = pids.iter().map(|p| cpu(*p)).collect();
    std::thread::sleep(cfg.cpu);
    let cpu1: Vec<Cpu> = pids.iter().map(|p| cpu(*p)).collect();
    let machine1 = machine_ticks();
    let machine_busy =
        (machine1.0 - machine0.0) as f64 / (machine1.1 - machine0.1).max(1) as f64 * 100.0;
    for p in [&mut a, &mut b, &mut c, &mut d] {
        p.check_alive();
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");

    // Phase 3: one mTLS call to A, B, C, then memory again.
    let client_files = &generated.clients[0].files;
    runtime.block_on(async {
        for spec in &specs[..3] {
            let mut h = health_client(
                spec.port,
                &generated.ca.cert,
                &client_files.cert,
                &client_files.key,
            )
            .await;
            h.check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("health Check of {}: {e}", spec.name));
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    let called_mem: Vec<Mem> = pids[..3].iter().map(|p| mem(*p)).collect();
    b.stop();
    c.stop();
    d.stop();

    // Phase 4: latency on A.
    eprintln!("latency phase");
    let targets = Targets {
        tls: Targets::remote(specs[0].port, &generated),
        unix: Target::Socket(specs[0].dir.join("agent.sock")),
        port: specs[0].port,
        ca: generated.ca.cert.clone(),
        cert: client_files.cert.clone(),
        key: client_files.key.clone(),
    };
    let search = SearchPath::new(vec![cfg.repo.join("tuning-profiles")]);
    let profile = profile::load("trading-latency", &search).expect("load trading-latency");
    let host = HostRoot::default();
    let items = tuning::verify(&host, &profile).items.len();

    // The daemon's own verify path in this process (`Daemon::verify_now`: the units on the
    // bus when the profile needs them, verify on the blocking pool, the journal check, drift
    // bookkeeping), on a runtime built as node-agentd builds its own, with A's settings and
    // its own state directory.
    let local_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
        .expect("a runtime");
    let local_dir = root.join("E");
    fs::create_dir_all(local_dir.join("state")).expect("create a state directory");
    let settings_path = specs[0].dir.join("agent.toml");
    let local = Daemon::new(
        Env {
            host: host.clone(),
            search: search.clone(),
            state: StateDir::new(local_dir.join("state")),
            bus: cfg
                .bus
                .clone()
                .unwrap_or_else(|| node_agent::units::DEFAULT_SYSTEM_BUS.to_owned()),
        },
        settings_path.clone(),
        Settings::load(&settings_path, true).expect("A's settings"),
    )
    .expect("an in-process daemon");
    let verified = local_rt.block_on(local.verify_now()).expect("verify_now");
    let report = verified.report.clone();
    let daemon_items = report.items.len();
    let drift = report.summary.drift;
    let state = StateDir::new(specs[0].dir.join("state"));

    let rpcs = [
        Rpc::Verify(Via::Tls),
        Rpc::Status(Via::Tls),
        Rpc::Health,
        Rpc::Verify(Via::Unix),
        Rpc::Status(Via::Unix),
    ];
    const IN_VERIFY: usize = 5;
    const IN_DAEMON: usize = 6;
    const IN_CONVERT: usize = 7;
    let cases = rpcs.len() + 3;
    let mut conns = Vec::new();
    for rpc in rpcs {
        conns.push(runtime.block_on(connect(&targets, rpc)));
    }
    let mut sizes = [0usize; 5];
    let mut sequential: Vec<Vec<Duration>> = vec![Vec::with_capacity(cfg.calls); cases];
    for round in 0..cfg.warmup + cfg.calls {
        for k in 0..cases {
            let case = (round + k) % cases;
            let t = Instant::now();
            match case {
                IN_VERIFY => {
                    black_box(tuning::verify(black_box(&host), black_box(&profile)));
                }
                IN_DAEMON => {
                    black_box(local_rt.block_on(local.verify_now()).expect("verify_now"));
                }
                IN_CONVERT => {
                    black_box(journal::interrupted_apply(&state));
                    let resp = pb::VerifyResponse {
                        report: Some(black_box(report.as_ref()).into()),
                    };
                    black_box(resp.encode_to_vec());
                }
                i => sizes[i] = runtime.block_on(call(&mut conns[i], rpcs[i])),
            }
            let took = t.elapsed();
            if round >= cfg.warmup {
                sequential[case].push(took);
            }
        }
    }
    drop(conns);
    let mut seq_stats: Vec<Stats> = sequential.into_iter().map(stats).collect();

    let mut conc = Vec::new();
    for rpc in [
        Rpc::Verify(Via::Tls),
        Rpc::Status(Via::Tls),
        Rpc::Health,
        Rpc::Verify(Via::Unix),
        Rpc::Status(Via::Unix),
    ] {
        eprintln!("{} clients: {}", cfg.clients, rpc.name());
        let (samples, wall) =
            runtime.block_on(concurrent(&targets, rpc, cfg.clients, cfg.client_calls));
        let n = samples.len();
        conc.push((rpc, stats(samples), n as f64 / wall));
    }
    drop(runtime);
    std::thread::sleep(Duration::from_secs(2));
    a.check_alive();
    let after_mem = mem(a.pid());
    a.stop();
    let load_end = loadavg();
    let rustc_end = count_comm("rustc");

    // ---- Report ---------------------------------------------------------------------------
    let ticks = clock_ticks();
    println!("## node-agentd: idle memory, CPU of the drift watch, RPC latency\n");
    println!(
        "- {}; nproc {}; {}; kernel {}; MemTotal {}; load average {load_start} at start, \
         {load_end} at end",
        date(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        first_line_with("/proc/cpuinfo", "model name"),
        fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        first_line_with("/proc/meminfo", "MemTotal"),
    );
    println!(
        "- node-agentd {} ({}), bench binary (C) {}; USER_HZ {ticks}",
        cfg.daemon_bin.display(),
        file_size(&cfg.daemon_bin),
        std::env::current_exe().map_or_else(|_| "?".into(), |p| file_size(&p)),
    );
    println!(
        "- trading-latency on this host: {items} items from `tuning::verify`, {daemon_items} \
         from the daemon (with the managed units), {drift} drift; Verify response {} bytes, \
         GetStatus response {} bytes, health response {} bytes",
        sizes[0], sizes[1], sizes[2]
    );
    println!(
        "- system bus for the units: {}; rustc processes running at start / end: {rustc_start} \
         / {rustc_end}\n",
        cfg.bus
            .as_deref()
            .unwrap_or("default (none on a host without systemd)"),
    );

    println!(
        "### Memory (MiB; idle = {} s after start, no client yet)\n",
        cfg.idle.as_secs()
    );
    println!("| process | when | VmRSS | VmHWM | RssAnon | RssFile | threads |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let mem_row = |who: &str, when: &str, m: &Mem| {
        println!(
            "| {who} | {when} | {} | {} | {} | {} | {} |",
            mib(m.rss_kib),
            mib(m.hwm_kib),
            mib(m.anon_kib),
            mib(m.file_kib),
            m.threads
        );
    };
    for ((name, what), m) in procs.iter().zip(&idle_mem) {
        mem_row(&format!("{name}: {what}"), "idle", m);
    }
    for ((name, what), m) in procs.iter().zip(&called_mem) {
        mem_row(&format!("{name}: {what}"), "after 1 mTLS health check", m);
    }
    mem_row(
        &format!("A: {}", procs[0].1),
        "after the latency phase",
        &after_mem,
    );
    let goal = 10 * 1024;
    println!(
        "\nIdle VmRSS of A: {} MiB (goal ≤ 10 MiB: {}). TuneD's daemon: 27.9 MB (issue 6, \
         external reference, not measured here).\n",
        mib(idle_mem[0].rss_kib),
        if idle_mem[0].rss_kib <= goal {
            "met"
        } else {
            "missed"
        }
    );

    println!(
        "### CPU over {} s without clients (% of one CPU)\n",
        cfg.cpu.as_secs()
    );
    println!(
        "| process | utime+stime ticks | % (ticks) | live threads' run time ms | % (run time) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (i, (name, what)) in procs.iter().enumerate() {
        let wall = (cpu1[i].at - cpu0[i].at).as_secs_f64();
        let dt = cpu1[i].ticks - cpu0[i].ticks;
        let dns = cpu1[i].sched_ns.saturating_sub(cpu0[i].sched_ns);
        println!(
            "| {name}: {what} | {dt} | {:.3} | {:.1} | {:.3} |",
            dt as f64 / ticks as f64 / wall * 100.0,
            dns as f64 / 1e6,
            dns as f64 / 1e9 / wall * 100.0
        );
    }
    println!(
        "\nThe whole machine was {machine_busy:.1} % busy (all CPUs, /proc/stat) during this \
         window: other work on the VM."
    );

    println!(
        "\n### Latency, one client (A, trading-latency; {} rounds after {} warm-up, cases \
         interleaved)\n",
        cfg.calls, cfg.warmup
    );
    latency_header();
    let in_convert = seq_stats.pop().expect("convert");
    let in_daemon = seq_stats.pop().expect("verify_now");
    let in_verify = seq_stats.pop().expect("verify");
    latency_row(
        &format!("in-process `tuning::verify` ({items} items)"),
        &in_verify,
        "",
    );
    latency_row(
        &format!("in-process `Daemon::verify_now` ({daemon_items} items)"),
        &in_daemon,
        "",
    );
    latency_row(
        "in-process journal check + report → VerifyResponse + encode",
        &in_convert,
        "",
    );
    for (rpc, s) in rpcs.iter().zip(&seq_stats) {
        latency_row(rpc.name(), s, "");
    }
    let verify_tls = &seq_stats[0];
    println!(
        "\nVerify over mTLS, one client: p99 {} µs (goal ≤ 1 ms: {}).\n",
        us(verify_tls.p99),
        if verify_tls.p99 <= Duration::from_millis(1) {
            "met"
        } else {
            "missed"
        }
    );

    println!(
        "### Latency, {} concurrent clients (each its own connection, {} calls each after {} \
         warm-up)\n",
        cfg.clients, cfg.client_calls, CLIENT_WARMUP
    );
    println!("| case | calls | p50 µs | p90 µs | p99 µs | max µs | calls/s |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (rpc, s, rate) in &conc {
        let mut extra = String::new();
        let _ = write!(extra, " {rate:.0} |");
        latency_row(rpc.name(), s, &extra);
    }
}
