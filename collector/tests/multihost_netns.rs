//! Multi-host for real (root, opt-in with NODE_AGENT_PRIVILEGED_TESTS=1): three real
//! `node-agentd` processes, each in its own network namespace with a veth link to a fourth
//! namespace where `node-collector serve` runs (169.254.0.0/16 addresses, only inside the
//! namespaces this test creates). Each agent watches net.core.somaxconn, which is per network
//! namespace, so drift written inside one namespace is that host's alone.
//!
//! Proves: drift on one host is reported for exactly that host and key; an agent killed (by
//! PID) makes that host unreachable while the others stay reachable, and it is reachable again
//! after a restart; the collector's restart keeps the history; an agent presenting a server
//! certificate from another CA is refused by the collector.
//!
//! Cleanup: every process is ended by its PID and every namespace deleted by `Drop` guards,
//! also when an assertion fails. node-agentd comes from this build's target directory (next to
//! node-collector): `cargo build -p node-agent --bin node-agentd` first.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::Signal;
use support::*;

const PRIVILEGED_ENV: &str = "NODE_AGENT_PRIVILEGED_TESTS";
const WAIT: Duration = Duration::from_secs(30);
const KNOB: &str = "net.core.somaxconn";
const GRPC: &str = "127.0.0.1:9445";

fn enabled(test: &str) -> bool {
    if std::env::var(PRIVILEGED_ENV).as_deref() == Ok("1") {
        assert!(
            nix::unistd::geteuid().is_root(),
            "{PRIVILEGED_ENV}=1 needs root (network namespaces)"
        );
        return true;
    }
    #[allow(clippy::print_stderr)]
    {
        eprintln!("{test}: skipped (set {PRIVILEGED_ENV}=1 to run the multi-host tier)");
    }
    false
}

/// The tier's process-wide lock (the tests of one binary run on several threads).
static LOCK: Mutex<()> = Mutex::new(());

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run ip {args:?}: {e} (apt-get install iproute2)"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Network namespaces deleted on drop (the veth ends moved into them go with them), and veth
/// pairs created in this namespace deleted too in case the test failed before moving them.
struct Namespaces(Vec<String>, Vec<String>);

impl Namespaces {
    fn add(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        self.0.push(name.to_owned());
        ip(&["-n", name, "link", "set", "lo", "up"]);
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.0.drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        for link in self.1.drain(..) {
            // Gone already when it was moved into a namespace: the error is expected then.
            let _ = Command::new("ip")
                .args(["link", "del", &link])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs `sh -c SCRIPT` inside namespace `ns` (`ip netns exec`).
fn in_ns(ns: &str, script: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", script])
        .output()
        .expect("ip netns exec");
    assert!(
        out.status.success(),
        "{ns}: {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn agentd_binary() -> PathBuf {
    let dir = std::env::var_os("NODE_AGENT_E2E_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_BIN_EXE_node-collector"))
                .parent()
                .expect("target dir")
                .to_owned()
        });
    let p = dir.join("node-agentd");
    assert!(
        p.is_file(),
        "{}: missing: cargo build -p node-agent --bin node-agentd first",
        p.display()
    );
    p
}

struct Agent {
    ns: String,
    dir: PathBuf,
    addr: String,
}

impl Agent {
    /// Writes its profile (KNOB held at `value` by a bound) and settings.
    fn write(&self, pki: &node_agent::certs::Generated, ca: &Path, value: &str) {
        std::fs::create_dir_all(self.dir.join("state")).unwrap();
        let profile = self.dir.join("fleet-test.toml");
        std::fs::write(
            &profile,
            format!(
                "[profile]\nname = \"fleet-test\"\n\n[sysctl]\n\"{KNOB}\" = {{ min = {value}, max = {value} }}\n"
            ),
        )
        .unwrap();
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        std::fs::write(
            self.dir.join("agent.toml"),
            format!(
                "[agent]\nprofile = {}\nmode = \"observe\"\nverify_interval = \"1s\"\n\n\
                 [listen]\nsocket = {}\nsocket_group = \"root\"\ntcp = \"{}\"\n\n\
                 [tls]\ncert = {}\nkey = {}\nclient_ca = {}\n\n\
                 [roles]\nobservers = [\"{COLLECTOR_CN}\"]\n",
                q(&profile),
                q(&self.dir.join("agent.sock")),
                self.addr,
                q(&pki.server.files.cert),
                q(&pki.server.files.key),
                q(ca),
            ),
        )
        .unwrap();
    }

    fn start(&self, n: u32) -> Running {
        let log = self.dir.join(format!("agentd-{n}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(agentd_binary())
            .arg("--settings")
            .arg(self.dir.join("agent.toml"))
            .env("NODE_AGENT_STATE_DIR", self.dir.join("state"))
            .env_remove("NODE_AGENT_HOST_ROOT")
            .env_remove("NODE_AGENT_PROFILE_PATH")
            .env_remove("NODE_AGENT_SETTINGS")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("spawn node-agentd");
        Running::new(child, log)
    }
}

#[test]
fn three_agents_in_namespaces_drift_outage_restart_and_wrong_ca() {
    if !enabled("three_agents_in_namespaces_drift_outage_restart_and_wrong_ca") {
        return;
    }
    let _lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let tag = format!("nc{}", std::process::id() % 100_000);
    let mut namespaces = Namespaces(Vec::new(), Vec::new());
    let collector_ns = format!("{tag}c");
    namespaces.add(&collector_ns);
    let names = ["h1", "h2", "h3"];
    let mut agents = Vec::new();
    let mut server_names = vec!["127.0.0.1".to_owned()];
    for (i, name) in names.iter().enumerate() {
        let ns = format!("{tag}{name}");
        namespaces.add(&ns);
        let net = 101 + i;
        let (c_if, a_if) = (format!("{tag}c{i}"), format!("{tag}a{i}"));
        namespaces.1.push(c_if.clone());
        ip(&["link", "add", &c_if, "type", "veth", "peer", "name", &a_if]);
        ip(&["link", "set", &c_if, "netns", &collector_ns]);
        ip(&["link", "set", &a_if, "netns", &ns]);
        ip(&[
            "-n",
            &collector_ns,
            "addr",
            "add",
            &format!("169.254.{net}.1/24"),
            "dev",
            &c_if,
        ]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("169.254.{net}.2/24"),
            "dev",
            &a_if,
        ]);
        ip(&["-n", &collector_ns, "link", "set", &c_if, "up"]);
        ip(&["-n", &ns, "link", "set", &a_if, "up"]);
        server_names.push(format!("169.254.{net}.2"));
        agents.push(Agent {
            ns,
            dir: PathBuf::new(),
            addr: format!("169.254.{net}.2:9443"),
        });
    }
    let names_ref: Vec<&str> = server_names.iter().map(String::as_str).collect();
    let setup = CollectorSetup::new(&names_ref);
    for (a, name) in agents.iter_mut().zip(names) {
        a.dir = setup.path().join(name);
    }
    // Each namespace starts with the kernel's default somaxconn; hold every agent at it.
    let default_value = in_ns(
        &agents[0].ns,
        &format!("cat /proc/sys/{}", KNOB.replace('.', "/")),
    );
    for a in &agents {
        a.write(&setup.pki, &setup.pki.ca.cert, &default_value);
    }
    let mut running: Vec<Running> = agents
        .iter()
        .enumerate()
        .map(|(i, a)| a.start(i as u32))
        .collect();

    setup.write_config(
        "500ms",
        GRPC.parse().unwrap(),
        "127.0.0.1:9465".parse().unwrap(),
    );
    setup.write_inventory(
        &agents
            .iter()
            .zip(names)
            .map(|(a, n)| InvHost {
                name: n.into(),
                address: a.addr.clone(),
                labels: vec![("rack", format!("r{n}"))],
            })
            .collect::<Vec<_>>(),
    );
    let mut collector = setup.serve(Some(&collector_ns), 1);
    let cns = collector_ns.clone();
    let status = |want: u8, what: &str| {
        wait_ok(what, WAIT, || {
            let (code, text) = setup.fleet_status(Some(&cns), GRPC, &setup.pki);
            if code == want {
                Ok(json(&text))
            } else {
                Err(format!("exit {code}: {text}"))
            }
        })
    };

    // 1. All three reachable and compliant.
    let doc = status(0, "all three hosts reachable and compliant");
    for n in names {
        assert_eq!(host(&doc, n)["reachable"], true, "{doc}");
        assert_eq!(host(&doc, n)["profile"], "fleet-test", "{doc}");
        assert!(!host(&doc, n)["agent_version"].as_str().unwrap().is_empty());
    }

    // 2. Drift inside h2's namespace only: reported for exactly h2 and the key.
    let other = if default_value == "1000" {
        "999"
    } else {
        "1000"
    };
    in_ns(
        &agents[1].ns,
        &format!("echo {other} > /proc/sys/{}", KNOB.replace('.', "/")),
    );
    let doc = status(1, "h2's drift reported");
    let doc = if host(&doc, "h2")["drift_count"] == 1 {
        doc
    } else {
        wait_for("h2 drift_count 1", WAIT, || {
            let (_, text) = setup.fleet_status(Some(&cns), GRPC, &setup.pki);
            let d = json(&text);
            (host(&d, "h2")["drift_count"] == 1).then_some(d)
        })
    };
    assert_eq!(host(&doc, "h1")["drift_count"], 0, "{doc}");
    assert_eq!(host(&doc, "h3")["drift_count"], 0, "{doc}");
    let h2 = host(&doc, "h2");
    assert_eq!(h2["drift"].as_array().unwrap().len(), 1, "{doc}");
    assert_eq!(h2["drift"][0]["key"], KNOB);
    assert_eq!(h2["drift"][0]["actual"], other);
    // And back.
    in_ns(
        &agents[1].ns,
        &format!(
            "echo {default_value} > /proc/sys/{}",
            KNOB.replace('.', "/")
        ),
    );
    status(0, "h2 compliant again");

    // 3. h3's agent killed by PID: h3 unreachable, the others not.
    assert!(running[2].alive());
    running[2].stop_with(Signal::SIGKILL);
    let doc = status(1, "h3 unreachable");
    assert_eq!(host(&doc, "h3")["reachable"], false, "{doc}");
    assert_eq!(host(&doc, "h1")["reachable"], true, "{doc}");
    assert_eq!(host(&doc, "h2")["reachable"], true, "{doc}");
    running[2] = agents[2].start(10);
    status(0, "h3 reachable again after its restart");

    // 4. The collector restarts: the history is still there.
    assert_eq!(collector.stop(), Some(0), "{}", collector.log_text());
    collector = setup.serve(Some(&collector_ns), 2);
    status(0, "the restarted collector sees the fleet");
    let store = node_collector::store::Store::open(&setup.db_path()).unwrap();
    use node_collector::fleet::EventKind::*;
    let kinds = |h: &str| -> Vec<(node_collector::fleet::EventKind, String)> {
        store
            .history(h, 0, 100)
            .unwrap()
            .into_iter()
            .map(|e| (e.kind, e.key))
            .collect()
    };
    assert_eq!(
        kinds("h2"),
        vec![
            (Reachable, String::new()),
            (DriftNew, KNOB.to_owned()),
            (DriftResolved, KNOB.to_owned())
        ]
    );
    assert_eq!(
        kinds("h3"),
        vec![
            (Reachable, String::new()),
            (Unreachable, String::new()),
            (Reachable, String::new())
        ]
    );
    assert_eq!(kinds("h1"), vec![(Reachable, String::new())]);

    // 5. h1 restarted with a server certificate from another CA: refused by the collector.
    running[0].stop();
    agents[0].write(&setup.other, &setup.pki.ca.cert, &default_value);
    running[0] = agents[0].start(20);
    // Until the new h1 listens its port refuses; then the TLS handshake fails on its
    // certificate, and keeps failing.
    let doc = wait_ok("h1 refused for its certificate", WAIT, || {
        let (code, text) = setup.fleet_status(Some(&cns), GRPC, &setup.pki);
        let d = json(&text);
        let h1 = host(&d, "h1");
        let err = h1["error"].as_str().unwrap_or_default().to_owned();
        if code == 1
            && h1["reachable"] == false
            && (err.contains("certificate") || err.contains("UnknownIssuer"))
        {
            Ok(d)
        } else {
            Err(format!("exit {code}: h1 error {err:?}"))
        }
    });
    assert!(
        running[0].alive(),
        "the new h1 agent runs: {}",
        running[0].log_text()
    );
    assert_eq!(host(&doc, "h2")["reachable"], true, "{doc}");
    assert_eq!(host(&doc, "h3")["reachable"], true, "{doc}");

    drop(collector);
    drop(running);
    drop(namespaces);
}
