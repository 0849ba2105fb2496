//! node-agentd's life: settings → profile → pin to housekeeping CPUs → bind the listeners →
//! drop capabilities → (apply on start) → first verify → serve, READY → verify every interval;
//! SIGHUP reloads settings, profile, roles and certificates; SIGTERM stops.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use node_agent_proto::v1::node_agent_server::NodeAgentServer;
use tokio::sync::watch;
use tonic::transport::Server;

use super::auth::{AuthLayer, RoleMap, SharedRoleMap};
use super::listen::{ConnectionLimit, TlsConfig, TlsListener, UnixSocketListener};
use super::privileges;
use super::server::Service;
use super::service::{Daemon, DaemonError, Env, OwnedScope};
use crate::audit::Caller;
use crate::settings::Settings;

/// node-agentd: keeps this host on its tuning profile and serves the node-agent gRPC API.
///
/// Runs under systemd (Type=notify). Reads /etc/node-agent/agent.toml (or --settings, or
/// NODE_AGENT_SETTINGS); SIGHUP reloads it. Exit 2 for invalid settings or profile, 1 when it
/// cannot start otherwise.
#[derive(Debug, clap::Parser)]
#[command(name = "node-agentd", version, max_term_width = 100)]
pub struct Args {
    /// The settings file [default: /etc/node-agent/agent.toml, or NODE_AGENT_SETTINGS].
    #[arg(long, value_name = "PATH")]
    pub settings: Option<PathBuf>,
}

/// Why the daemon stopped, with the exit code it maps to.
#[derive(Debug)]
pub struct Stop {
    pub code: u8,
    pub error: anyhow::Error,
}

fn invalid(e: impl Into<anyhow::Error>) -> Stop {
    Stop {
        code: 2,
        error: e.into(),
    }
}

fn failed(e: impl Into<anyhow::Error>) -> Stop {
    Stop {
        code: 1,
        error: e.into(),
    }
}

fn role_map(s: &Settings) -> RoleMap {
    RoleMap {
        observers: s
            .roles
            .observers
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect(),
        operators: s
            .roles
            .operators
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect(),
        admin_group: s.listen.socket_group.as_str().to_owned(),
    }
}

/// Holds /dev/cpu_dma_latency open at the profile's value (PM QoS), as TuneD's force_latency
/// does: the kernel keeps the request while the file is open.
struct PmQosHold {
    _file: std::fs::File,
    us: u32,
}

fn hold_pm_qos(daemon: &Daemon) -> Result<Option<PmQosHold>, std::io::Error> {
    let active = daemon.active();
    let Some(us) = active
        .profile
        .settings
        .cpu
        .as_ref()
        .and_then(|c| c.pm_qos_latency_us)
    else {
        return Ok(None);
    };
    let path = daemon
        .env
        .host
        .path(crate::tuning::cpu::PM_QOS_DEVICE)
        .map_err(std::io::Error::other)?;
    let mut file = std::fs::OpenOptions::new().write(true).open(&path)?;
    // The device takes a binary s32 in native byte order.
    file.write_all(&(us as i32).to_ne_bytes())?;
    Ok(Some(PmQosHold { _file: file, us }))
}

/// Sets up logging: journald with structured fields, or stderr when there is no journald.
pub fn init_logging() {
    // JournalLog::new fails when there is no journald socket (these VMs): stderr then.
    let journal = systemd_journal_logger::JournalLog::new()
        .map(|j| j.with_syslog_identifier("node-agentd".into()));
    let installed = journal.is_ok_and(|j| j.install().is_ok());
    if !installed {
        let _ = log::set_boxed_logger(Box::new(StderrLog));
    }
    log::set_max_level(log::LevelFilter::Info);
}

/// The fallback logger: one line per record on stderr, with the structured fields appended.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info
    }

    fn log(&self, r: &log::Record<'_>) {
        struct Fields(String);
        impl<'kvs> log::kv::VisitSource<'kvs> for Fields {
            fn visit_pair(
                &mut self,
                k: log::kv::Key<'kvs>,
                v: log::kv::Value<'kvs>,
            ) -> Result<(), log::kv::Error> {
                self.0.push_str(&format!(" {k}={v}"));
                Ok(())
            }
        }
        let mut fields = Fields(String::new());
        let _ = r.key_values().visit(&mut fields);
        let line = format!("{}: {}{}\n", r.level(), r.args(), fields.0);
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(args: &Args) -> Result<(), Stop> {
    let settings_path = args
        .settings
        .clone()
        .unwrap_or_else(Settings::path_from_env);
    let settings = Settings::load(&settings_path, args.settings.is_some()).map_err(invalid)?;
    let env = Env::from_env();
    let daemon = Daemon::new(env, settings_path, settings).map_err(|e| match e {
        DaemonError::Settings(_)
        | DaemonError::NoProfile { .. }
        | DaemonError::Profile(_)
        | DaemonError::Layout { .. } => invalid(e),
        e => failed(e),
    })?;
    let daemon = Arc::new(daemon);

    // Every thread started from here on inherits the affinity: the daemon never runs on an
    // isolated core.
    if let Some(iso) = &daemon.active().profile.settings.isolation {
        pin_to(&iso.housekeeping_cpus).map_err(failed)?;
        log::info!("pinned to the housekeeping CPUs {}", iso.housekeeping_cpus);
    }

    // One thread runs the API and the watch; verify and apply go to the blocking pool, which
    // starts its threads only when first used, after the capabilities are dropped.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
        .map_err(failed)?;
    runtime.block_on(serve(daemon))
}

fn pin_to(cpus: &crate::profile::types::CpuList) -> Result<(), anyhow::Error> {
    let mut set = nix::sched::CpuSet::new();
    for c in cpus.iter() {
        set.set(c as usize)?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(())
}

async fn serve(daemon: Arc<Daemon>) -> Result<(), Stop> {
    let settings = daemon.settings();
    let unix = UnixSocketListener::bind(
        &settings.listen.socket,
        settings.listen.socket_group.as_str(),
    )
    .map_err(failed)?;
    let tls = match (&settings.listen.tcp, &settings.tls) {
        (Some(addr), Some(t)) => {
            let config = TlsConfig::load(&t.cert, &t.key, &t.client_ca).map_err(invalid)?;
            Some(TlsListener::bind(*addr, config).await.map_err(failed)?)
        }
        _ => None,
    };

    // Bound before the capabilities go (a port below 1024 needs NET_BIND_SERVICE), and before
    // READY: an address in use stops the start with the key named.
    let metrics = match settings.listen.metrics {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            failed(anyhow::Error::new(e).context(format!("listen.metrics: cannot bind {addr}")))
        })?),
        None => None,
    };

    // Needs the capabilities still: reading PID 1's namespace link.
    if crate::system::private_mount_namespace() {
        log::info!(
            "running in a private mount namespace: remounts are left to `agentctl tune apply --local`"
        );
    }
    let keep = privileges::needed(&settings, &daemon.active().profile);
    if nix::unistd::geteuid().is_root() {
        privileges::drop_all_but(&keep).map_err(failed)?;
        log::info!(
            "capabilities kept: {}",
            if keep.is_empty() {
                "none".to_owned()
            } else {
                keep.iter()
                    .map(|k| format!("{} ({})", k.cap, k.why))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
    }

    if settings.agent.apply_on_start {
        let caller = Caller {
            uid: nix::unistd::getuid().as_raw(),
            user: "node-agentd (apply_on_start)".into(),
        };
        let outcome = daemon
            .apply(&caller, OwnedScope::All)
            .await
            .map_err(|e| failed(anyhow::Error::new(e).context("apply_on_start failed")))?;
        log::info!(
            "apply_on_start: {} change(s) applied",
            outcome.plan.changes.len() - outcome.refused.len()
        );
    }
    let first = daemon.verify_now().await.map_err(failed)?;
    log::info!(
        "watching profile {} ({} items, {} drift) every {}",
        daemon.active().profile.name,
        first.report.items.len(),
        first.report.summary.drift,
        settings.agent.verify_interval
    );
    let mut pm_qos = match hold_pm_qos(&daemon) {
        Ok(h) => h,
        Err(e) => {
            log::error!("cannot hold {}: {e}", crate::tuning::cpu::PM_QOS_DEVICE);
            None
        }
    };
    if let Some(h) = &pm_qos {
        log::info!("holding PM QoS at {} us", h.us);
    }

    let roles: SharedRoleMap = Arc::new(ArcSwap::from_pointee(role_map(&settings)));
    let (shutdown_tx, shutdown) = watch::channel(false);
    let router = |daemon: &Arc<Daemon>, roles: &SharedRoleMap, settings: &Settings| {
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = |b: tonic_reflection::server::Builder<'static>| {
            b.register_encoded_file_descriptor_set(node_agent_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let v1 = reflection(tonic_reflection::server::Builder::configure()).build_v1();
        let v1alpha = reflection(tonic_reflection::server::Builder::configure()).build_v1alpha();
        let api = NodeAgentServer::new(Service {
            daemon: daemon.clone(),
        })
        .max_decoding_message_size(settings.rpc.max_message_bytes)
        .max_encoding_message_size(settings.rpc.max_message_bytes.max(16 << 20));
        let router = Server::builder()
            .max_concurrent_streams(settings.rpc.max_concurrent_streams)
            // No server-wide timeout: unit jobs and the platform sequence run up to the
            // [units] deadlines (90 s by default); reads are bounded in the service instead.
            .http2_keepalive_interval(Some(Duration::from_secs(60)))
            .layer(AuthLayer::new(roles.clone()))
            .add_service(health_service)
            .add_service(api);
        let router = match (v1, v1alpha) {
            (Ok(a), Ok(b)) => router.add_service(a).add_service(b),
            (Err(e), _) | (_, Err(e)) => {
                log::error!("server reflection unavailable: {e}");
                router
            }
        };
        (router, health)
    };
    // One limit per listener, so remote clients can never lock local root out.
    let limit = ConnectionLimit::new(settings.rpc.max_connections);
    let tls_limit = ConnectionLimit::new(settings.rpc.max_connections);
    let (unix_router, unix_health) = router(&daemon, &roles, &settings);
    unix_health.set_serving::<NodeAgentServer<Service>>().await;
    let mut servers = tokio::task::JoinSet::new();
    {
        let mut stop = shutdown.clone();
        let incoming = unix.incoming(limit);
        servers.spawn(async move {
            unix_router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        });
    }
    let tls_config = tls.as_ref().map(|t| t.config().clone());
    if let Some(tls) = tls {
        log::info!("serving mutual TLS on {}", tls.local_addr());
        let (tls_router, tls_health) = router(&daemon, &roles, &settings);
        tls_health.set_serving::<NodeAgentServer<Service>>().await;
        let mut stop = shutdown.clone();
        let incoming = tls.incoming(tls_limit);
        servers.spawn(async move {
            tls_router
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        });
    }
    log::info!("serving on {}", settings.listen.socket.display());

    if let Some(listener) = metrics {
        log::info!(
            "serving metrics on http://{}/metrics",
            listener.local_addr().map_err(failed)?
        );
        let d = daemon.clone();
        let render = move || d.metrics_text();
        // Its own small limit: scrapers never take the API's connections.
        // Returns only at shutdown: accept errors are logged and retried inside.
        tokio::spawn(crate::metrics::serve(
            listener,
            ConnectionLimit::new(16),
            render,
            shutdown.clone(),
        ));
    }
    let health = tokio::spawn(health_loop(daemon.clone(), shutdown.clone()));
    let watcher = tokio::spawn(watch_loop(daemon.clone(), shutdown.clone()));
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    let mut hup = signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut term = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = signal(tokio::signal::unix::SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                match daemon.reload() {
                    Ok(new) => {
                        roles.store(Arc::new(role_map(&new)));
                        if let (Some(cfg), Some(t)) = (&tls_config, &new.tls)
                            && let Err(e) = cfg.reload(&t.cert, &t.key, &t.client_ca)
                        {
                            log::error!("SIGHUP: certificates not reloaded, the old ones stay: {e}");
                        }
                        if let Ok(h) = hold_pm_qos(&daemon) {
                            pm_qos = h;
                        }
                        log::info!(
                            "SIGHUP: settings reloaded; profile {} ({})",
                            daemon.active().profile.name,
                            &daemon.active().hash[..12]
                        );
                        // Verify the profile now in effect at once: until the next round, the
                        // status would pair it with the previous profile's report.
                        if let Err(e) = daemon.verify_now().await {
                            log::error!("verify after SIGHUP failed: {e}");
                        }
                    }
                    Err(e) => log::error!("SIGHUP: settings refused, the old ones stay: {e}"),
                }
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            Some(done) = servers.join_next() => {
                let e = match done {
                    Ok(Ok(())) => anyhow::anyhow!("a listener stopped"),
                    Ok(Err(e)) => anyhow::Error::new(e).context("a listener failed"),
                    Err(e) => anyhow::Error::new(e).context("a listener task failed"),
                };
                return Err(failed(e));
            }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    // Streams first: a graceful stop waits for open streams, and WatchDrift never ends alone.
    daemon.close();
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    watcher.abort();
    health.abort();
    drop(pm_qos);
    let _ = std::fs::remove_file(&settings.listen.socket);
    Ok(())
}

fn signal(kind: tokio::signal::unix::SignalKind) -> Result<tokio::signal::unix::Signal, Stop> {
    tokio::signal::unix::signal(kind).map_err(failed)
}

/// Runs the health checks at once and then every `health.interval` (read afresh each round),
/// for the metrics; GetHealth runs its own.
async fn health_loop(daemon: Arc<Daemon>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let run = daemon.health_now().await;
        log::debug!(
            "health {}: {} checks in {:?}",
            run.report.status,
            run.report.checks.len(),
            run.took
        );
        let interval = daemon.settings().health.interval.0;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Verifies every interval (read afresh each round: SIGHUP may change it) and enforces.
async fn watch_loop(daemon: Arc<Daemon>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let interval = daemon.settings().agent.verify_interval.0;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        match daemon.verify_now().await {
            Ok(v) => {
                if let Some(round) = daemon.enforce_round(&v.report).await
                    && let Some(e) = round.error
                {
                    log::error!("enforce round failed: {e}");
                }
            }
            Err(e) => log::error!("verify failed: {e}"),
        }
    }
}
