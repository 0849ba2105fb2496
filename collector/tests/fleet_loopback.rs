//! The collector against fake agents (real tonic servers over mutual TLS on 127.0.0.1, with
//! canned answers): `poll --once` output and exit codes, an agent with a certificate from
//! another CA refused, drift reported for exactly the host and key, `serve` with the Fleet API
//! (agentctl fleet status, HostHistory), the metrics endpoint, SIGHUP reload, history across a
//! restart, and the exit codes for invalid input and an unreachable collector. Runs anywhere,
//! no root; only loopback traffic.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use node_agent_proto::fleet_v1 as fpb;
use node_collector::fake::{FakeAgent, server_tls};
use support::*;

const WAIT: Duration = Duration::from_secs(20);

struct Fakes {
    agents: Vec<(String, FakeAgent, SocketAddr)>,
    _stop: tokio::sync::watch::Sender<bool>,
}

/// Starts fake agents: `good` with the fleet CA's server certificate, `bad` with the other CA's.
async fn fakes(setup: &CollectorSetup, good: &[&str], bad: &[&str]) -> Fakes {
    let (stop, rx) = tokio::sync::watch::channel(false);
    let tls = |p: &node_agent::certs::Generated| {
        server_tls(
            &p.server.files.cert,
            &p.server.files.key,
            &setup.pki.ca.cert,
        )
    };
    let (good_tls, bad_tls) = (tls(&setup.pki), tls(&setup.other));
    let mut agents = Vec::new();
    for (names, t) in [(good, &good_tls), (bad, &bad_tls)] {
        for name in names {
            let a = FakeAgent::new(name);
            let addr = a
                .serve("127.0.0.1:0".parse().unwrap(), t.clone(), rx.clone())
                .await
                .expect("serve a fake agent");
            agents.push((name.to_string(), a, addr));
        }
    }
    Fakes {
        agents,
        _stop: stop,
    }
}

fn inv(f: &Fakes) -> Vec<InvHost> {
    f.agents
        .iter()
        .map(|(n, _, a)| InvHost {
            name: n.clone(),
            address: a.to_string(),
            labels: vec![("rack", format!("r-{n}")), ("role", "engine".into())],
        })
        .collect()
}

fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().expect("thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_once_reports_drift_unreachable_and_wrong_ca() {
    let setup = std::sync::Arc::new(CollectorSetup::new(&["127.0.0.1", "localhost"]));
    let f = fakes(&setup, &["a1", "a2", "a3"], &["rogue"]).await;
    setup.write_config(
        "1s",
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:1".parse().unwrap(),
    );
    let mut hosts = inv(&f);
    // A closed port: refused at once.
    hosts.push(InvHost {
        name: "down".into(),
        address: format!("127.0.0.1:{}", free_port()),
        labels: vec![],
    });
    setup.write_inventory(&hosts);
    f.agents[1]
        .1
        .set_drift(vec![("net.core.somaxconn".into(), "1024".into())]);
    f.agents[2].1.set_version("0.2.0");

    let s = setup.clone();
    let out = blocking(move || s.poll_once("json"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = json(&text);
    assert_eq!(doc["schema_version"], 1);
    let a1 = host(&doc, "a1");
    assert_eq!(a1["reachable"], true);
    assert_eq!(a1["drift_count"], 0);
    assert_eq!(a1["labels"]["site"], "test");
    assert_eq!(a1["labels"]["rack"], "r-a1");
    assert_eq!(a1["profile"], "trading-latency");
    let a2 = host(&doc, "a2");
    assert_eq!(a2["drift_count"], 1);
    assert_eq!(a2["drift"][0]["key"], "net.core.somaxconn");
    assert_eq!(a2["drift"][0]["class"], "sysctl");
    assert_eq!(a2["drift"][0]["actual"], "1024");
    assert_eq!(host(&doc, "a3")["agent_version"], "0.2.0");
    let rogue = host(&doc, "rogue");
    assert_eq!(rogue["reachable"], false);
    let err = rogue["error"].as_str().unwrap();
    assert!(
        err.contains("certificate") || err.contains("UnknownIssuer"),
        "the rogue agent's refusal should name its certificate: {err}"
    );
    assert_eq!(host(&doc, "down")["reachable"], false);

    // Table output: one row per host and the summary.
    let s = setup.clone();
    let out = blocking(move || s.poll_once("table"));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{table}");
    assert!(
        table.contains("5 hosts: 2 unreachable, 1 with drift"),
        "{table}"
    );
    let a2_row = table
        .lines()
        .find(|l| l.starts_with("a2 "))
        .expect("a2 row");
    assert!(
        a2_row.contains("rack=r-a2,role=engine,site=test"),
        "{a2_row}"
    );
    assert!(a2_row.contains("yes") && a2_row.contains(" 1 "), "{a2_row}");

    // Only compliant, reachable agents: exit 0.
    f.agents[1].1.set_drift(vec![]);
    setup.write_inventory(&inv(&f)[..3]);
    let s = setup.clone();
    let out = blocking(move || s.poll_once("json"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The history of the three runs is in the database: a2's drift came and went.
    let store = node_collector::store::Store::open(&setup.db_path()).unwrap();
    let kinds: Vec<_> = store
        .history("a2", 0, 100)
        .unwrap()
        .iter()
        .map(|e| (e.kind, e.key.clone()))
        .collect();
    use node_collector::fleet::EventKind::*;
    assert_eq!(
        kinds,
        vec![
            (Reachable, String::new()),
            (DriftNew, "net.core.somaxconn".into()),
            (DriftResolved, "net.core.somaxconn".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_inventory_and_config_exit_2_naming_the_place() {
    let setup = std::sync::Arc::new(CollectorSetup::new(&["127.0.0.1"]));
    setup.write_config(
        "1s",
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:1".parse().unwrap(),
    );
    std::fs::write(
        setup.inventory_path(),
        "[[host]]\nname = \"a\"\naddress = \"10.0.0.1\"\n",
    )
    .unwrap();
    let s = setup.clone();
    let out = blocking(move || s.poll_once("json"));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    let want = format!("{}:3:11: host[0].address", setup.inventory_path().display());
    assert!(err.contains(&want), "{err}\nwant {want}");

    std::fs::write(setup.config_path(), "[agents]\ncert = 1\n").unwrap();
    let s = setup.clone();
    let out = blocking(move || s.command(None, &["check"]).output().unwrap());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "{}:2:8: agents.cert",
            setup.config_path().display()
        )),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_fleet_api_metrics_reload_and_history_across_restart() {
    let setup = std::sync::Arc::new(CollectorSetup::new(&["127.0.0.1", "localhost"]));
    let f = fakes(&setup, &["b1", "b2"], &[]).await;
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    setup.write_config("300ms", grpc, metrics);
    setup.write_inventory(&inv(&f));
    let mut serve = setup.serve(None, 1);

    let s = setup.clone();
    let status = move |want: u8| {
        let s = s.clone();
        let addr = grpc.to_string();
        wait_ok(&format!("fleet status exit {want}"), WAIT, move || {
            let (code, text) = s.fleet_status(None, &addr, &s.pki);
            if code == want {
                Ok(json(&text))
            } else {
                Err(format!("exit {code}: {text}"))
            }
        })
    };
    let doc = blocking({
        let status = status.clone();
        move || status(0)
    });
    assert_eq!(host(&doc, "b1")["reachable"], true);

    // Drift on b2 only.
    f.agents[1]
        .1
        .set_drift(vec![("net.core.somaxconn".into(), "128".into())]);
    let doc = blocking({
        let status = status.clone();
        move || status(1)
    });
    assert_eq!(host(&doc, "b1")["drift_count"], 0);
    assert_eq!(host(&doc, "b2")["drift_count"], 1);
    assert_eq!(host(&doc, "b2")["drift"][0]["key"], "net.core.somaxconn");

    // Metrics: host_up with labels, drift per class.
    let text = blocking(move || scrape(None, metrics));
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains(
            r#"node_agent_fleet_host_up{host="b1",rack="r-b1",role="engine",site="test"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"node_agent_fleet_drift_items{host="b2",class="sysctl"} 1"#),
        "{text}"
    );
    assert!(
        !text.contains(r#"node_agent_fleet_drift_items{host="b1""#),
        "{text}"
    );
    assert!(
        text.contains("node_agent_fleet_poll_duration_seconds_count"),
        "{text}"
    );

    // A client certificate from another CA is refused by the collector: exit 3.
    let s = setup.clone();
    let (code, text) = blocking(move || s.fleet_status(None, &grpc.to_string(), &s.other));
    assert_eq!(code, 3, "{text}");
    // Nothing listens: exit 3 too.
    let s = setup.clone();
    let (code, text) =
        blocking(move || s.fleet_status(None, &format!("127.0.0.1:{}", free_port()), &s.pki));
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("collector 127.0.0.1:"), "{text}");

    // SIGHUP: a host removed from the inventory disappears; a broken inventory is refused and
    // the one in use stays.
    setup.write_inventory(&inv(&f)[..1]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let doc = blocking({
        let status = status.clone();
        move || status(0)
    });
    assert_eq!(doc["hosts"].as_array().unwrap().len(), 1, "{doc}");
    std::fs::write(setup.inventory_path(), "[[host]]\nname = 1\n").unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    let log = wait_for("the reload error in the log", WAIT, || {
        let l = serve.log_text();
        l.contains("reload failed").then_some(l)
    });
    assert!(log.contains("inventory.toml:2:8"), "{log}");
    assert!(serve.alive());
    setup.write_inventory(&inv(&f));

    // Restart: b2's history survives.
    assert_eq!(serve.stop(), Some(0), "{}", serve.log_text());
    let _serve2 = setup.serve(None, 2);
    let history = wait_for("HostHistory after restart", WAIT, || {
        let setup = setup.clone();
        let r = blocking(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let mut c = fleet_client(&setup, grpc, ADMIN_CN).await.ok()?;
                    c.host_history(fpb::HostHistoryRequest {
                        host: "b2".into(),
                        ..Default::default()
                    })
                    .await
                    .ok()
                })
        });
        r.map(|r| r.into_inner())
    });
    let kinds: Vec<i32> = history.events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds[..2],
        [
            fpb::EventKind::Reachable as i32,
            fpb::EventKind::DriftNew as i32
        ],
        "{history:?}"
    );
    assert_eq!(history.events[1].key, "net.core.somaxconn");
    // The restarted collector knows b2's drift (and its since) at once.
    let doc = blocking({
        let status = status.clone();
        move || status(1)
    });
    assert_eq!(
        host(&doc, "b2")["drift"][0]["since"],
        serde_json::json!(history.events[1].time.as_ref().unwrap().seconds)
    );
    // An unknown host: NOT_FOUND.
    let setup2 = setup.clone();
    let code = blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let mut c = fleet_client(&setup2, grpc, ADMIN_CN).await.unwrap();
                c.host_history(fpb::HostHistoryRequest {
                    host: "nope".into(),
                    ..Default::default()
                })
                .await
                .unwrap_err()
                .code()
            })
    });
    assert_eq!(code, tonic::Code::NotFound);
}

#[test]
fn fleet_status_arguments_are_checked_before_connecting() {
    let setup = CollectorSetup::new(&["127.0.0.1"]);
    let c = client(&setup.pki, ADMIN_CN);
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["agentctl".into()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let (cert, key, ca) = (
        c.files.cert.to_string_lossy().into_owned(),
        c.files.key.to_string_lossy().into_owned(),
        setup.pki.ca.cert.to_string_lossy().into_owned(),
    );
    // No client certificate: 2, saying what is needed.
    let (code, text) = run_agentctl(
        None,
        base(&["fleet", "status", "--collector", "127.0.0.1:9445"]),
    );
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--cert, --key and --ca"), "{text}");
    // Not HOST:PORT: 2, naming the flag.
    let (code, text) = run_agentctl(
        None,
        base(&[
            "--cert",
            &cert,
            "--key",
            &key,
            "--ca",
            &ca,
            "fleet",
            "status",
            "--collector",
            "127.0.0.1",
        ]),
    );
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("--collector") && text.contains("HOST:PORT"),
        "{text}"
    );
    // An unreadable --ca: 2, naming the flag and the file.
    let (code, text) = run_agentctl(
        None,
        base(&[
            "--cert",
            &cert,
            "--key",
            &key,
            "--ca",
            "/nonexistent/ca.crt",
            "fleet",
            "status",
            "--collector",
            "127.0.0.1:9445",
        ]),
    );
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--ca /nonexistent/ca.crt"), "{text}");
}

/// A host whose TCP handshake completes but which never answers (a listener that never
/// accepts: the kernel's backlog completes the handshake) fails at the per-host deadline
/// without holding up the others; a down host is skipped during its backoff, and polled again
/// when asked to ignore it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_and_backoff_bound_slow_and_down_hosts() {
    use node_collector::config::{AgentsTls, Poll};
    use node_collector::fleet::Fleet;
    use node_collector::inventory::Host;
    use node_collector::poll::{Agents, ClientTls, Which, poll_fleet};

    let setup = CollectorSetup::new(&["127.0.0.1"]);
    let f = fakes(&setup, &["ok"], &[]).await;
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = |name: &str, address: String| Host {
        name: name.into(),
        address,
        server_name: "127.0.0.1".into(),
        labels: Default::default(),
    };
    let inventory = vec![
        host("ok", f.agents[0].2.to_string()),
        host("silent", silent.local_addr().unwrap().to_string()),
        host("down", format!("127.0.0.1:{}", free_port())),
    ];
    let c = client(&setup.pki, COLLECTOR_CN);
    let tls = ClientTls::load(&AgentsTls {
        cert: c.files.cert.clone(),
        key: c.files.key.clone(),
        ca: setup.pki.ca.cert.clone(),
    })
    .unwrap();
    let settings = Poll {
        interval: Duration::from_secs(30),
        concurrency: 4,
        // Generous for a debug-build handshake on a loaded 2-core machine: only the silent
        // host may miss it.
        deadline: Duration::from_millis(3000),
        backoff_min: Duration::from_secs(600),
        backoff_max: Duration::from_secs(3600),
        watch: false,
    };
    let mut fleet = Fleet::for_inventory(&inventory, Default::default());
    let mut agents = Agents::default();
    let mut next = std::collections::HashMap::new();
    let cycle = poll_fleet(
        &mut fleet,
        &inventory,
        &mut agents,
        &tls,
        &settings,
        &mut next,
        Which::Due,
    )
    .await;
    assert_eq!((cycle.polled, cycle.skipped), (3, 0));
    assert!(fleet.hosts[0].reachable, "{:?}", fleet.hosts[0]);
    assert!(!fleet.hosts[1].reachable);
    assert!(
        fleet.hosts[1].error.contains("deadline of 3000 ms"),
        "{}",
        fleet.hosts[1].error
    );
    assert!(!fleet.hosts[2].reachable);
    assert!(
        fleet.hosts[2].error.to_lowercase().contains("refused"),
        "{}",
        fleet.hosts[2].error
    );
    // Both failed hosts are in their 10-minute backoff: only "ok" is polled.
    let cycle = poll_fleet(
        &mut fleet,
        &inventory,
        &mut agents,
        &tls,
        &settings,
        &mut next,
        Which::Due,
    )
    .await;
    assert_eq!((cycle.polled, cycle.skipped), (1, 2));
    assert_eq!(cycle.updated, vec![0]);
    // `poll --once` ignores the backoff.
    let cycle = poll_fleet(
        &mut fleet,
        &inventory,
        &mut agents,
        &tls,
        &settings,
        &mut next,
        Which::All,
    )
    .await;
    assert_eq!((cycle.polled, cycle.skipped), (3, 0));
    assert_eq!(fleet.hosts[1].failures, 2);
    drop(silent);
}

/// With a one-hour interval, only the WatchDrift subscription can make drift visible: a drift
/// event makes the collector poll that host at once. An agent without WatchDrift is polled at
/// the interval only, and the log says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_drift_events_trigger_an_immediate_poll() {
    let setup = std::sync::Arc::new(CollectorSetup::new(&["127.0.0.1"]));
    let f = fakes(&setup, &["w1", "w2"], &[]).await;
    f.agents[1].1.without_watch();
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    setup.write_config("1h", grpc, metrics);
    setup.write_inventory(&inv(&f));
    let serve = setup.serve(None, 1);
    let status = |want: u8| {
        let s = setup.clone();
        blocking(move || {
            wait_ok(&format!("fleet status exit {want}"), WAIT, || {
                let (code, text) = s.fleet_status(None, &grpc.to_string(), &s.pki);
                if code == want {
                    Ok(json(&text))
                } else {
                    Err(format!("exit {code}: {text}"))
                }
            })
        })
    };
    status(0);
    let w1 = f.agents[0].1.clone();
    blocking(move || {
        wait_for("the collector's WatchDrift subscription", WAIT, || {
            (w1.watchers() == 1).then_some(())
        })
    });
    wait_for("w2's fallback to polling in the log", WAIT, || {
        serve
            .log_text()
            .contains("w2: the agent does not serve WatchDrift; polling only")
            .then_some(())
    });

    f.agents[0]
        .1
        .set_drift(vec![("net.core.somaxconn".into(), "64".into())]);
    let doc = status(1);
    assert_eq!(host(&doc, "w1")["drift"][0]["key"], "net.core.somaxconn");
    assert_eq!(host(&doc, "w1")["drift"][0]["actual"], "64");
    assert_eq!(host(&doc, "w2")["drift_count"], 0);
    f.agents[0].1.set_drift(vec![]);
    let doc = status(0);
    assert_eq!(host(&doc, "w1")["drift_count"], 0);
}
