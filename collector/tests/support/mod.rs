//! Shared by the collector's integration tests: a test-fleet PKI (and a second CA), the
//! collector's config and inventory files, `node-collector` as a child process ended by its
//! PID (also on panic), in-process `agentctl fleet status`, a Fleet API client.

#![allow(dead_code)]

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use node_agent::certs::{self, Generated};
use node_agent_proto::fleet_v1::fleet_client::FleetClient;
use tempfile::TempDir;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub const COLLECTOR_CN: &str = "collector.test";
pub const ADMIN_CN: &str = "admin.test";

pub fn pki(dir: &Path, names: &[&str]) -> Generated {
    let mut req = certs::Request::new(dir, names.iter().map(|s| s.to_string()).collect());
    req.observers = vec![COLLECTOR_CN.to_owned(), ADMIN_CN.to_owned()];
    req.days = 2;
    certs::generate(&req).unwrap_or_else(|e| panic!("generate the PKI in {}: {e}", dir.display()))
}

pub fn client<'a>(pki: &'a Generated, cn: &str) -> &'a certs::ClientFiles {
    pki.clients
        .iter()
        .find(|c| c.cn == cn)
        .unwrap_or_else(|| panic!("no client {cn}"))
}

fn q(p: &Path) -> String {
    toml::Value::String(p.to_string_lossy().into_owned()).to_string()
}

/// One inventory entry.
pub struct InvHost {
    pub name: String,
    pub address: String,
    pub labels: Vec<(&'static str, String)>,
}

pub fn inventory_text(hosts: &[InvHost]) -> String {
    let mut s = String::from("[defaults]\nlabels = { site = \"test\" }\n");
    for h in hosts {
        let labels: Vec<String> = h
            .labels
            .iter()
            .map(|(k, v)| format!("{k} = {v:?}"))
            .collect();
        s.push_str(&format!(
            "\n[[host]]\nname = {:?}\naddress = {:?}\nlabels = {{ {} }}\n",
            h.name,
            h.address,
            labels.join(", ")
        ));
    }
    s
}

/// The collector's files in a temporary directory.
pub struct CollectorSetup {
    pub dir: TempDir,
    pub pki: Generated,
    pub other: Generated,
}

impl CollectorSetup {
    pub fn new(server_names: &[&str]) -> CollectorSetup {
        let dir = tempfile::Builder::new()
            .prefix("nc-test-")
            .tempdir()
            .expect("temporary directory");
        let pki = pki(&dir.path().join("pki"), server_names);
        let other = pki_other(&dir.path().join("other-pki"), server_names);
        CollectorSetup { dir, pki, other }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("collector.toml")
    }

    pub fn inventory_path(&self) -> PathBuf {
        self.path().join("inventory.toml")
    }

    pub fn db_path(&self) -> PathBuf {
        self.path().join("state/fleet.db")
    }

    /// Writes collector.toml: polls every `interval`, backoff `backoff_min`..`backoff_max`,
    /// gRPC and metrics on the given addresses.
    pub fn write_config(&self, interval: &str, grpc: SocketAddr, metrics: SocketAddr) {
        let c = client(&self.pki, COLLECTOR_CN);
        let text = format!(
            "inventory = {}\n\n[agents]\ncert = {}\nkey = {}\nca = {}\n\n\
             [tls]\ncert = {}\nkey = {}\nclient_ca = {}\n\n\
             [poll]\ninterval = {interval:?}\nconcurrency = 8\ndeadline = \"2s\"\n\
             backoff_min = \"200ms\"\nbackoff_max = \"1s\"\n\n\
             [store]\npath = {}\nretention_days = 30\n\n\
             [listen]\ngrpc = \"{grpc}\"\nmetrics = \"{metrics}\"\n",
            q(&self.inventory_path()),
            q(&c.files.cert),
            q(&c.files.key),
            q(&self.pki.ca.cert),
            q(&self.pki.server.files.cert),
            q(&self.pki.server.files.key),
            q(&self.pki.ca.cert),
            q(&self.db_path()),
        );
        fs::write(self.config_path(), text).expect("write collector.toml");
    }

    pub fn write_inventory(&self, hosts: &[InvHost]) {
        fs::write(self.inventory_path(), inventory_text(hosts)).expect("write the inventory");
    }

    /// `node-collector ARGS --config <ours>`, optionally inside a network namespace.
    pub fn command(&self, netns: Option<&str>, args: &[&str]) -> Command {
        let bin = env!("CARGO_BIN_EXE_node-collector");
        let mut c = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, bin]);
                c
            }
            None => Command::new(bin),
        };
        c.args(args)
            .arg("--config")
            .arg(self.config_path())
            .env_remove("NODE_COLLECTOR_CONFIG")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null());
        c
    }

    pub fn poll_once(&self, output: &str) -> Output {
        self.command(None, &["poll", "--once", "--output", output])
            .output()
            .expect("run node-collector poll --once")
    }

    /// Starts `node-collector serve` (in `netns` when given); logs to serve-N.log.
    pub fn serve(&self, netns: Option<&str>, n: u32) -> Running {
        let log = self.path().join(format!("serve-{n}.log"));
        let out = File::create(&log).expect("create the log");
        let err = out.try_clone().expect("clone the log");
        let child = self
            .command(netns, &["serve"])
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn node-collector serve");
        Running::new(child, log)
    }

    /// `agentctl fleet status --collector ADDR --output json` in-process (on its own thread,
    /// in `netns` when given), with a client certificate of `pki`.
    pub fn fleet_status(&self, netns: Option<&str>, addr: &str, pki: &Generated) -> (u8, String) {
        let c = client(pki, ADMIN_CN);
        let args: Vec<String> = vec![
            "agentctl".into(),
            "--output".into(),
            "json".into(),
            "--cert".into(),
            c.files.cert.to_string_lossy().into(),
            "--key".into(),
            c.files.key.to_string_lossy().into(),
            "--ca".into(),
            self.pki.ca.cert.to_string_lossy().into(),
            "fleet".into(),
            "status".into(),
            "--collector".into(),
            addr.into(),
        ];
        run_agentctl(netns, args)
    }
}

fn pki_other(dir: &Path, names: &[&str]) -> Generated {
    pki(dir, names)
}

/// Runs agentctl's `run` on a fresh thread (its own runtime), after entering `netns`.
pub fn run_agentctl(netns: Option<&str>, args: Vec<String>) -> (u8, String) {
    let netns = netns.map(str::to_owned);
    std::thread::spawn(move || {
        if let Some(ns) = netns {
            enter_netns(&ns);
        }
        let cli = node_agent::cli::Cli::try_parse_from(&args).expect("agentctl arguments");
        let ctx = node_agent::cli::Context::from_env();
        let mut out = Vec::new();
        let mut notes = Vec::new();
        let code = match node_agent::cli::run(&cli, &ctx, &mut out, &mut notes) {
            Ok(code) => code as u8,
            Err(e) => {
                notes.extend(format!("error: {:#}", e.error).bytes());
                e.code as u8
            }
        };
        let mut text = String::from_utf8_lossy(&out).into_owned();
        text.push_str(&String::from_utf8_lossy(&notes));
        (code, text)
    })
    .join()
    .expect("agentctl thread")
}

/// Moves the calling thread into the network namespace /run/netns/NAME.
pub fn enter_netns(name: &str) {
    let f = File::open(format!("/run/netns/{name}"))
        .unwrap_or_else(|e| panic!("open /run/netns/{name}: {e}"));
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns into {name}: {e}"));
}

/// GET /metrics from `addr` (in `netns` when given).
pub fn scrape(netns: Option<&str>, addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let netns = netns.map(str::to_owned);
    std::thread::spawn(move || {
        if let Some(ns) = netns {
            enter_netns(&ns);
        }
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to the metrics endpoint {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).expect("read the metrics");
        body
    })
    .join()
    .expect("scrape thread")
}

/// A Fleet API client (mutual TLS with `cn` of `pki`).
pub async fn fleet_client(
    setup: &CollectorSetup,
    addr: SocketAddr,
    cn: &str,
) -> Result<FleetClient<Channel>, String> {
    let c = client(&setup.pki, cn);
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(fs::read(&setup.pki.ca.cert).unwrap()))
        .identity(Identity::from_pem(
            fs::read(&c.files.cert).unwrap(),
            fs::read(&c.files.key).unwrap(),
        ))
        .domain_name(addr.ip().to_string());
    let ch = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(FleetClient::new(ch))
}

/// A child process ended by its PID when dropped (SIGTERM, then SIGKILL after 10 s), reaped.
pub struct Running {
    child: Child,
    pub pid: u32,
    pub log: PathBuf,
    done: bool,
}

impl Running {
    pub fn new(child: Child, log: PathBuf) -> Running {
        Running {
            pid: child.id(),
            child,
            log,
            done: false,
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM (or `signal`) and wait for it to exit (SIGKILL after 10 s); returns the code.
    pub fn stop_with(&mut self, signal: Signal) -> Option<i32> {
        if self.done {
            return None;
        }
        let _ = kill(Pid::from_raw(self.pid as i32), signal);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.done = true;
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
                let status = self.child.wait().ok();
                self.done = true;
                return status.and_then(|s| s.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) -> Option<i32> {
        self.stop_with(Signal::SIGTERM)
    }

    pub fn alive(&mut self) -> bool {
        !self.done && matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            #[allow(clippy::print_stderr)]
            {
                eprintln!(
                    "--- {} (pid {})\n{}",
                    self.log.display(),
                    self.pid,
                    self.log_text()
                );
            }
        }
    }
}

/// Retries `f` every 100 ms until it returns Ok, or panics with `what` and the last Err after
/// `timeout`.
pub fn wait_ok<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; last: {last}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Retries `f` every 100 ms until it returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The JSON of a fleet status.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The host entry named `name` of a fleet JSON.
pub fn host<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    doc["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .find(|h| h["host"] == name)
        .unwrap_or_else(|| panic!("no host {name} in {doc}"))
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
