//! Harness of the end-to-end daemon tests (daemon_e2e.rs): the real `node-agentd` binary as a
//! child process, with everything it touches besides the kernel in a temporary directory (its
//! settings, its socket, its state directory, its profiles, a test-fleet PKI from
//! `node_agent::certs::generate`), clients over the socket and over mutual TLS, and `agentctl`
//! pointed at the same settings.
//!
//! Every daemon is ended by its PID ([`Running`] sends SIGTERM, then SIGKILL after a bound,
//! and reaps it), also when the test panics, before the temporary directory goes.

// Included with #[path] by daemon_e2e.rs; not every test uses every helper.
#![allow(dead_code)]

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use node_agent::certs::{self, Generated};
use node_agent::client::{self, Daemon};
use node_agent_proto::v1 as pb;
use node_agent_proto::v1::node_agent_client::NodeAgentClient;
use tempfile::TempDir;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub const OBSERVER_CN: &str = "observer.e2e";
pub const OPERATOR_CN: &str = "operator.e2e";
/// How long a daemon may take from spawn to answering GetStatus on its socket.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SIGTERM may take before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub type Client = NodeAgentClient<Channel>;

/// What the settings file of a test daemon says. The socket, its group, the TLS files and the
/// roles come from the [`Setup`].
#[derive(Debug, Clone)]
pub struct Opts {
    pub profile: PathBuf,
    /// `observe` or `enforce`.
    pub mode: &'static str,
    pub verify_interval: &'static str,
    pub enforce_targets: &'static [&'static str],
    pub min_interval: &'static str,
    /// Listen on 127.0.0.1 (a free port) with mutual TLS.
    pub tcp: bool,
    pub max_message_bytes: Option<u64>,
    /// Serve /metrics on 127.0.0.1 at this port; `None`: `metrics = "off"` (tests run daemons
    /// side by side, and the default 127.0.0.1:9750 would collide).
    pub metrics: Option<u16>,
    /// Extra settings text appended at the end (e.g. a `[health]` table).
    pub extra: String,
}

impl Opts {
    /// Observe mode, a 1 s verify interval, no TCP listener.
    pub fn observe(profile: &Path) -> Opts {
        Opts {
            profile: profile.to_owned(),
            mode: "observe",
            verify_interval: "1s",
            enforce_targets: &["sysctl"],
            min_interval: "1s",
            tcp: false,
            max_message_bytes: None,
            metrics: None,
            extra: String::new(),
        }
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn toml_path(p: &Path) -> String {
    toml_str(&p.to_string_lossy())
}

/// The name of a group that exists and that this process may give a socket to: root when
/// running as root, else the primary group of the user (so the test runs on a laptop too).
pub fn socket_group() -> String {
    let gid = nix::unistd::getegid();
    nix::unistd::Group::from_gid(gid)
        .ok()
        .flatten()
        .map(|g| g.name)
        .unwrap_or_else(|| "root".to_owned())
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local address").port()
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `/proc/sys/<key with dots as slashes>`.
pub fn sysctl_path(key: &str) -> PathBuf {
    PathBuf::from(format!("/proc/sys/{}", key.replace('.', "/")))
}

/// A sysctl's running value, whitespace folded.
pub fn read_sysctl(key: &str) -> String {
    let p = sysctl_path(key);
    let text = fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub fn write_sysctl(key: &str, value: &str) {
    let p = sysctl_path(key);
    fs::write(&p, format!("{value}\n"))
        .unwrap_or_else(|e| panic!("write {value} to {}: {e}", p.display()));
}

/// A field of /proc/PID/status (or /proc/PID/task/TID/status), trimmed.
pub fn status_field(status_file: &Path, field: &str) -> String {
    let text = fs::read_to_string(status_file)
        .unwrap_or_else(|e| panic!("read {}: {e}", status_file.display()));
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("{} has no {field}:", status_file.display()))
        .trim()
        .to_owned()
}

/// Polls `f` every 50 ms until it gives a value or `timeout` passes (then panics with `what`).
pub async fn poll<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {} ms",
            timeout.as_millis()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next event of `stream` for `key` with `transition` (others are skipped), within
/// `timeout`.
pub async fn next_event(
    stream: &mut tonic::Streaming<pb::DriftEvent>,
    key: &str,
    transition: pb::DriftTransition,
    timeout: Duration,
) -> pb::DriftEvent {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut skipped = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => panic!(
                "no {transition:?} event for {key} within {} ms; skipped: {skipped:#?}",
                timeout.as_millis()
            ),
            Ok(Err(status)) => panic!("the drift stream failed: {status:?}"),
            Ok(Ok(None)) => panic!("the drift stream ended; skipped: {skipped:#?}"),
            Ok(Ok(Some(e))) => {
                if e.transition == transition as i32
                    && e.item.as_ref().is_some_and(|i| i.key == key)
                {
                    return e;
                }
                skipped.push(e);
            }
        }
    }
}

/// A temporary directory holding everything of one test's daemon but the kernel.
pub struct Setup {
    dir: TempDir,
    /// The fleet PKI: CA, server (127.0.0.1 and localhost), observer and operator clients.
    pub pki: Generated,
    /// Another CA with a client of the operator's name.
    pub other_pki: Generated,
    starts: std::cell::Cell<u32>,
}

impl Default for Setup {
    fn default() -> Self {
        Self::new()
    }
}

impl Setup {
    pub fn new() -> Setup {
        let dir = tempfile::Builder::new()
            .prefix("na-e2e-")
            .tempdir()
            .expect("create the temporary directory");
        let generate = |sub: &str| {
            let mut req = certs::Request::new(
                dir.path().join(sub),
                vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            );
            req.observers = vec![OBSERVER_CN.to_owned()];
            req.operators = vec![OPERATOR_CN.to_owned()];
            req.days = 2;
            certs::generate(&req).unwrap_or_else(|e| panic!("generate the {sub} PKI: {e}"))
        };
        let pki = generate("pki");
        let other_pki = generate("other-pki");
        for sub in ["state", "profiles", "run"] {
            fs::create_dir_all(dir.path().join(sub)).expect("create a directory");
        }
        Setup {
            dir,
            pki,
            other_pki,
            starts: std::cell::Cell::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn settings_path(&self) -> PathBuf {
        self.path().join("agent.toml")
    }

    pub fn socket(&self) -> PathBuf {
        self.path().join("run/agent.sock")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path().join("state")
    }

    pub fn audit_log(&self) -> PathBuf {
        self.state_dir().join("audit.log")
    }

    /// The audit records written so far (JSON lines).
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.audit_log())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
            .collect()
    }

    /// Writes `profiles/<file_stem>.toml`; returns its path.
    pub fn profile(&self, file_stem: &str, toml: &str) -> PathBuf {
        let p = self
            .path()
            .join("profiles")
            .join(format!("{file_stem}.toml"));
        fs::write(&p, toml).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }

    /// The client certificate and key of `cn` in the fleet PKI.
    pub fn client_files(&self, pki: &Generated, cn: &str) -> (PathBuf, PathBuf) {
        let c = pki
            .clients
            .iter()
            .find(|c| c.cn == cn)
            .unwrap_or_else(|| panic!("no client {cn} in the PKI"));
        (c.files.cert.clone(), c.files.key.clone())
    }

    /// The settings file for `opts`, with the TCP listener on `port` when `opts.tcp`.
    pub fn settings_text(&self, opts: &Opts, port: Option<u16>) -> String {
        let targets: Vec<String> = opts.enforce_targets.iter().map(|t| toml_str(t)).collect();
        let mut s = format!(
            "[agent]\nprofile = {}\nmode = {}\nverify_interval = {}\n\n\
             [enforce]\ntargets = [{}]\nmin_interval = {}\n\n\
             [listen]\nsocket = {}\nsocket_group = {}\n",
            toml_path(&opts.profile),
            toml_str(opts.mode),
            toml_str(opts.verify_interval),
            targets.join(", "),
            toml_str(opts.min_interval),
            toml_path(&self.socket()),
            toml_str(&socket_group()),
        );
        s.push_str(&format!(
            "metrics = {}\n",
            toml_str(
                &opts
                    .metrics
                    .map_or("off".to_owned(), |p| format!("127.0.0.1:{p}"))
            )
        ));
        if let (true, Some(port)) = (opts.tcp, port) {
            s.push_str(&format!(
                "tcp = {}\n\n[tls]\ncert = {}\nkey = {}\nclient_ca = {}\n\n\
                 [roles]\nobservers = [{}]\noperators = [{}]\n",
                toml_str(&format!("127.0.0.1:{port}")),
                toml_path(&self.pki.server.files.cert),
                toml_path(&self.pki.server.files.key),
                toml_path(&self.pki.ca.cert),
                toml_str(OBSERVER_CN),
                toml_str(OPERATOR_CN),
            ));
        }
        if let Some(max) = opts.max_message_bytes {
            s.push_str(&format!("\n[rpc]\nmax_message_bytes = {max}\n"));
        }
        s.push_str(&opts.extra);
        s
    }

    pub fn write_settings(&self, text: &str) {
        fs::write(self.settings_path(), text).expect("write the settings");
    }

    /// Writes the settings for `opts` and starts the daemon; returns once it answers GetStatus
    /// on its socket and has its SIGHUP handler in place. A TCP port taken between choosing it
    /// and the daemon binding it is retried with another.
    pub async fn start(&self, opts: &Opts) -> Running {
        let mut last_error = String::new();
        for _ in 0..3 {
            let port = opts.tcp.then(free_port);
            self.write_settings(&self.settings_text(opts, port));
            let mut running = self.spawn(port);
            match running.wait_ready().await {
                Ok(()) => return running,
                Err(e) => {
                    let in_use = e.contains("in use");
                    last_error = e;
                    if !in_use {
                        break;
                    }
                }
            }
        }
        panic!("node-agentd did not start: {last_error}");
    }

    /// Spawns node-agentd with the settings file as it is (see `start`).
    pub fn spawn(&self, port: Option<u16>) -> Running {
        let n = self.starts.get() + 1;
        self.starts.set(n);
        let log = self.path().join(format!("node-agentd-{n}.log"));
        let out = File::create(&log).expect("create the daemon log");
        let err = out.try_clone().expect("clone the log handle");
        let child = Command::new(env!("CARGO_BIN_EXE_node-agentd"))
            .arg("--settings")
            .arg(self.settings_path())
            .env("NODE_AGENT_STATE_DIR", self.state_dir())
            .env_remove("NODE_AGENT_HOST_ROOT")
            .env_remove("NODE_AGENT_PROFILE_PATH")
            .env_remove("NODE_AGENT_SETTINGS")
            .env_remove("NODE_AGENT_FAILPOINT")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn node-agentd");
        Running {
            pid: child.id(),
            child,
            log,
            socket: self.socket(),
            tcp: port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
            ca: self.pki.ca.cert.clone(),
            exited: None,
        }
    }

    /// Runs `agentctl --settings <ours> ARGS` with our state directory.
    pub fn agentctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_agentctl"))
            .arg("--settings")
            .arg(self.settings_path())
            .args(args)
            .env("NODE_AGENT_STATE_DIR", self.state_dir())
            .env_remove("NODE_AGENT_HOST_ROOT")
            .env_remove("NODE_AGENT_PROFILE_PATH")
            .env_remove("NODE_AGENT_SETTINGS")
            .env_remove("NODE_AGENT_FAILPOINT")
            .stdin(Stdio::null())
            .output()
            .expect("run agentctl")
    }
}

/// `agentctl`'s exit code, stdout and stderr, for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A running node-agentd. Dropping it stops it (SIGTERM to its PID, SIGKILL after
/// `STOP_TIMEOUT`) and reaps it.
pub struct Running {
    child: Child,
    pub pid: u32,
    /// Its stdout and stderr.
    pub log: PathBuf,
    pub socket: PathBuf,
    /// The mutual TLS listener, when the settings have one.
    pub tcp: Option<SocketAddr>,
    ca: PathBuf,
    exited: Option<ExitStatus>,
}

impl Running {
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running (reaps it when it is not).
    pub fn alive(&mut self) -> bool {
        if self.exited.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exited = Some(status);
                false
            }
            _ => true,
        }
    }

    pub fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.pid).expect("pid fits i32"));
        kill(pid, signal).unwrap_or_else(|e| panic!("kill -{signal} {}: {e}", self.pid));
    }

    /// SIGTERM, then SIGKILL if it has not exited within `STOP_TIMEOUT`; its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.exited {
            return status;
        }
        if self.alive() {
            // ESRCH: it exited in between; the wait below reaps it.
            let _ = kill(
                Pid::from_raw(i32::try_from(self.pid).expect("pid fits i32")),
                Signal::SIGTERM,
            );
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if !self.alive() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some(status) = self.exited {
            return status;
        }
        // Child::kill sends SIGKILL to this child's PID.
        let _ = self.child.kill();
        let status = self.child.wait().expect("reap node-agentd");
        self.exited = Some(status);
        status
    }

    /// Whether its main thread catches SIGHUP (tokio's handler is installed): a SIGHUP sent
    /// before that would kill it.
    pub fn catches_sighup(&self) -> bool {
        let mask = status_field(Path::new(&format!("/proc/{}/status", self.pid)), "SigCgt");
        u64::from_str_radix(&mask, 16).is_ok_and(|m| m & (1 << (libc_sighup() - 1)) != 0)
    }

    pub async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if !self.alive() {
                return Err(format!(
                    "node-agentd exited ({:?}) before it was ready; its log:\n{}",
                    self.exited,
                    self.log_text()
                ));
            }
            if self.socket.exists() {
                let answered = tokio::time::timeout(Duration::from_secs(2), async {
                    let mut c = client::connect(&Daemon::Socket(self.socket.clone()))
                        .await
                        .ok()?;
                    c.get_status(pb::GetStatusRequest {}).await.ok()
                })
                .await
                .ok()
                .flatten();
                if answered.is_some() && self.catches_sighup() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "node-agentd did not answer on {} within {} ms; its log:\n{}",
                    self.socket.display(),
                    READY_TIMEOUT.as_millis(),
                    self.log_text()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A client over the Unix socket (as this process's uid: root is operator).
    pub async fn unix(&self) -> Client {
        client::connect(&Daemon::Socket(self.socket.clone()))
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.socket.display()))
    }

    pub fn tcp(&self) -> SocketAddr {
        self.tcp.expect("the daemon has a TCP listener")
    }

    /// A client over mutual TLS with this certificate and key, trusting our CA, as
    /// `node_agent::client` (agentctl --remote) connects.
    pub async fn tls(&self, cert: &Path, key: &Path) -> Result<Client, String> {
        client::connect(&Daemon::Remote {
            addr: self.tcp().to_string(),
            server_name: "localhost".into(),
            cert: cert.to_owned(),
            key: key.to_owned(),
            ca: self.ca.clone(),
        })
        .await
        .map_err(|e| e.to_string())
    }

    /// GetStatus over a new TLS connection with the given client identity (PEM cert and key),
    /// or none; a failed connect is reported as `Err` with its error.
    pub async fn tls_status_with(
        &self,
        identity: Option<(&[u8], &[u8])>,
    ) -> Result<pb::GetStatusResponse, String> {
        let ca = fs::read(&self.ca).expect("read the CA");
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca))
            .domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        let channel = Endpoint::from_shared(format!("https://{}", self.tcp()))
            .map_err(|e| format!("endpoint: {e}"))?
            .tls_config(tls)
            .map_err(|e| format!("tls config: {e}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("connect: {e:?}"))?;
        NodeAgentClient::new(channel)
            .get_status(pb::GetStatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| format!("call: {:?}: {}", s.code(), s.message()))
    }

    /// Waits until its log has `needle` at least `count` times.
    pub async fn wait_log(&self, needle: &str, count: usize, timeout: Duration) {
        let what = format!("{count} x {needle:?} in the daemon log");
        poll(&what, timeout, async || {
            (self.log_text().matches(needle).count() >= count).then_some(())
        })
        .await;
    }

    /// The status files of every thread, /proc/PID/task/TID/status.
    pub fn thread_status_files(&self) -> Vec<PathBuf> {
        let dir = format!("/proc/{}/task", self.pid);
        let mut out: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("list {dir}: {e}"))
            .filter_map(Result::ok)
            .map(|e| e.path().join("status"))
            .collect();
        out.sort();
        out
    }
}

fn libc_sighup() -> u32 {
    Signal::SIGHUP as i32 as u32
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}
