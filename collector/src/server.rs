//! `serve` and `poll --once`: the poll loop (state in memory, changes to the database each
//! cycle, SIGHUP reloads the inventory and the certificates, SIGTERM stops), the snapshot the
//! readers share, and the `nodeagent.fleet.v1.Fleet` gRPC service, a thin shell over them.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use node_agent::daemon::listen::{ConnectionLimit, TlsConfig, TlsListener};
use node_agent_proto::fleet_v1 as fpb;
use node_agent_proto::fleet_v1::fleet_server::{Fleet as FleetApi, FleetServer};
use prost_types::Timestamp;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::config::{Config, ConfigError};
use crate::fleet::{Event, EventKind, Fleet, HostState};
use crate::inventory::Inventory;
use crate::metrics::PollMetrics;
use crate::poll::{Agents, ClientTls, Which, poll_fleet, watch_host};
use crate::store::{Store, StoreError};

/// Most events one HostHistory returns.
pub const HISTORY_CAP: u32 = 10_000;
/// Open connections the gRPC listener accepts at once.
const MAX_CONNECTIONS: usize = 256;
/// Open connections to the metrics endpoint (scrapers), apart from the Fleet API's.
const METRICS_CONNECTIONS: usize = 16;

/// What the readers (gRPC, metrics) see: the fleet after the last cycle.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub fleet: Fleet,
    pub last_cycle: Option<i64>,
    pub last_cycle_ms: u64,
}

fn ts(secs: i64) -> Timestamp {
    Timestamp {
        seconds: secs,
        nanos: 0,
    }
}

/// A host's state as the API gives it.
pub fn host_to_proto(h: &HostState) -> fpb::HostStatus {
    fpb::HostStatus {
        host: h.name.clone(),
        address: h.address.clone(),
        labels: h
            .labels
            .iter()
            .map(|(name, value)| fpb::Label {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        reachable: h.reachable,
        polled: h.polled,
        agent_version: h.agent_version.clone(),
        api_minor: h.api_minor,
        profile: h.profile.clone(),
        drift_count: h.drift.len() as u32,
        oldest_drift_since: h.oldest_drift().map(ts),
        drift: h
            .drift
            .iter()
            .map(|d| fpb::DriftItem {
                class: d.class.clone(),
                key: d.key.clone(),
                status: d.status.clone(),
                expected: d.expected.clone(),
                actual: d.actual.clone(),
                since: Some(ts(d.since)),
            })
            .collect(),
        last_seen: h.last_seen.map(ts),
        last_poll: h.last_poll.map(ts),
        error: h.error.clone(),
        unreachable_since: h.unreachable_since.map(ts),
        agent_host: h.agent_host.clone(),
        kernel_release: h.kernel_release.clone(),
    }
}

pub fn snapshot_to_proto(s: &Snapshot) -> fpb::FleetStatusResponse {
    fpb::FleetStatusResponse {
        hosts: s.fleet.hosts.iter().map(host_to_proto).collect(),
        collector_version: crate::VERSION.to_owned(),
        last_cycle: s.last_cycle.map(ts),
        last_cycle_ms: s.last_cycle_ms,
    }
}

pub fn event_to_proto(e: &Event) -> fpb::HistoryEvent {
    let kind = match e.kind {
        EventKind::DriftNew => fpb::EventKind::DriftNew,
        EventKind::DriftResolved => fpb::EventKind::DriftResolved,
        EventKind::DriftChanged => fpb::EventKind::DriftChanged,
        EventKind::Reachable => fpb::EventKind::Reachable,
        EventKind::Unreachable => fpb::EventKind::Unreachable,
    };
    fpb::HistoryEvent {
        time: Some(ts(e.time)),
        kind: kind as i32,
        class: e.class.clone(),
        key: e.key.clone(),
        status: e.status.clone(),
        actual: e.actual.clone(),
        detail: e.detail.clone(),
    }
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct FleetService {
    snapshot: watch::Receiver<Arc<Snapshot>>,
    store: Arc<Mutex<Store>>,
}

impl FleetService {
    pub fn new(snapshot: watch::Receiver<Arc<Snapshot>>, store: Arc<Mutex<Store>>) -> Self {
        FleetService { snapshot, store }
    }
}

fn internal(e: StoreError) -> Status {
    log::error!("{e:#}");
    Status::internal(format!(
        "{}",
        anyhow::Error::new(e).context("fleet database")
    ))
}

#[tonic::async_trait]
impl FleetApi for FleetService {
    async fn fleet_status(
        &self,
        _: Request<fpb::FleetStatusRequest>,
    ) -> Result<Response<fpb::FleetStatusResponse>, Status> {
        let snap = self.snapshot.borrow().clone();
        Ok(Response::new(snapshot_to_proto(&snap)))
    }

    async fn host_history(
        &self,
        request: Request<fpb::HostHistoryRequest>,
    ) -> Result<Response<fpb::HostHistoryResponse>, Status> {
        let r = request.into_inner();
        if r.host.is_empty() {
            return Err(Status::invalid_argument("host: must not be empty"));
        }
        let since = r.since.map_or(0, |t| t.seconds);
        let limit = match r.limit {
            0 => HISTORY_CAP,
            n => n.min(HISTORY_CAP),
        };
        let store = self.store.clone();
        let host = r.host.clone();
        let events = tokio::task::spawn_blocking(move || {
            let store = store.lock().unwrap_or_else(|e| e.into_inner());
            if !store.knows(&host)? {
                return Ok(None);
            }
            store.history(&host, since, limit).map(Some)
        })
        .await
        .map_err(|e| Status::internal(format!("history task: {e}")))?
        .map_err(internal)?;
        match events {
            None => Err(Status::not_found(format!(
                "host: {:?} has no recorded state or history in this collector",
                r.host
            ))),
            Some(events) => Ok(Response::new(fpb::HostHistoryResponse {
                host: r.host,
                events: events.iter().map(event_to_proto).collect(),
            })),
        }
    }
}

/// Why the collector stopped, with its exit code (2: invalid configuration or inventory; 3:
/// could not run: a file it may not read, the database, a port it cannot bind).
#[derive(Debug)]
pub struct Stop {
    pub code: u8,
    pub error: anyhow::Error,
}

impl From<ConfigError> for Stop {
    fn from(e: ConfigError) -> Self {
        let code = match &e {
            ConfigError::Read { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                3
            }
            _ => 2,
        };
        Stop {
            code,
            error: e.into(),
        }
    }
}

fn failed(e: impl Into<anyhow::Error>) -> Stop {
    Stop {
        code: 3,
        error: e.into(),
    }
}

/// The poll loop's state.
pub struct Collector {
    pub config: Config,
    pub inventory: Inventory,
    pub fleet: Fleet,
    tls: ClientTls,
    agents: Agents,
    next_attempt: HashMap<String, Instant>,
    store: Option<Arc<Mutex<Store>>>,
    last_prune: Option<Instant>,
    watches: HashMap<String, tokio::task::JoinHandle<()>>,
}

impl Collector {
    /// Loads the inventory and the client certificate, opens the database (unless `store` is
    /// false) and restores the recorded state of the inventory's hosts.
    pub fn new(config: Config, inventory: Inventory, store: bool) -> Result<Collector, Stop> {
        let tls = ClientTls::load(&config.agents)?;
        let (known, store) = if store {
            let s = Store::open(&config.store.path).map_err(failed)?;
            (
                s.load_hosts().map_err(failed)?,
                Some(Arc::new(Mutex::new(s))),
            )
        } else {
            (HashMap::new(), None)
        };
        let fleet = Fleet::for_inventory(&inventory.hosts, known);
        Ok(Collector {
            config,
            inventory,
            fleet,
            tls,
            agents: Agents::default(),
            next_attempt: HashMap::new(),
            store,
            last_prune: None,
            watches: HashMap::new(),
        })
    }

    pub fn store(&self) -> Option<Arc<Mutex<Store>>> {
        self.store.clone()
    }

    /// One poll of the fleet; changes go to the database. Returns the cycle's duration.
    pub async fn cycle(&mut self, ignore_backoff: bool) -> Result<crate::poll::Cycle, Stop> {
        self.poll(if ignore_backoff {
            Which::All
        } else {
            Which::Due
        })
        .await
    }

    /// Polls the hosts `which` selects; changes go to the database.
    pub async fn poll(&mut self, which: Which<'_>) -> Result<crate::poll::Cycle, Stop> {
        let cycle = poll_fleet(
            &mut self.fleet,
            &self.inventory.hosts,
            &mut self.agents,
            &self.tls,
            &self.config.poll,
            &mut self.next_attempt,
            which,
        )
        .await;
        log::debug!(
            "polled {} hosts ({} in backoff) in {} ms",
            cycle.polled,
            cycle.skipped,
            cycle.elapsed.as_millis()
        );
        for e in &cycle.events {
            log::info!(
                "{}: {}{}{}",
                e.host,
                e.kind.as_str(),
                if e.key.is_empty() { "" } else { " " },
                if e.key.is_empty() { &e.detail } else { &e.key }
            );
        }
        if let Some(store) = &self.store {
            let hosts: Vec<HostState> = cycle
                .updated
                .iter()
                .map(|i| self.fleet.hosts[*i].clone())
                .collect();
            let events = cycle.events.clone();
            let store = store.clone();
            let retention = i64::from(self.config.store.retention_days) * 86_400;
            let prune = self
                .last_prune
                .is_none_or(|t| t.elapsed() > Duration::from_secs(3600));
            if prune {
                self.last_prune = Some(Instant::now());
            }
            tokio::task::spawn_blocking(move || {
                let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
                let refs: Vec<&HostState> = hosts.iter().collect();
                s.save(&refs, &events)?;
                if prune {
                    let n = s.prune(crate::now_secs() - retention)?;
                    if n > 0 {
                        log::info!("pruned {n} history events older than the retention");
                    }
                }
                Ok::<_, StoreError>(())
            })
            .await
            .map_err(failed)?
            .map_err(failed)?;
        }
        Ok(cycle)
    }

    /// Starts a WatchDrift subscription for every inventory host that has none (`[poll]
    /// watch`); events arrive as host names on `wake`.
    pub fn watch(&mut self, wake: &tokio::sync::mpsc::UnboundedSender<String>) {
        if !self.config.poll.watch {
            return;
        }
        let names: HashSet<&str> = self
            .inventory
            .hosts
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        self.watches.retain(|name, task| {
            let keep = names.contains(name.as_str());
            if !keep {
                task.abort();
            }
            keep
        });
        for host in &self.inventory.hosts {
            if self.watches.contains_key(&host.name) {
                continue;
            }
            let Ok(channel) = self
                .agents
                .channel(&self.tls, host, self.config.poll.deadline)
            else {
                continue;
            };
            let task = tokio::spawn(watch_host(
                host.name.clone(),
                channel,
                wake.clone(),
                self.config.poll.backoff_min,
                self.config.poll.backoff_max,
            ));
            self.watches.insert(host.name.clone(), task);
        }
    }

    /// Ends every WatchDrift subscription (a reload restarts them on the new channels).
    pub fn unwatch(&mut self) {
        for (_, task) in self.watches.drain() {
            task.abort();
        }
    }

    /// Re-reads the inventory and the client certificate (SIGHUP); on error keeps the ones in
    /// use and says why.
    pub fn reload(&mut self) -> Result<(), ConfigError> {
        let inventory = Inventory::load(&self.config.inventory)?;
        let tls = ClientTls::load(&self.config.agents)?;
        let known: HashMap<String, HostState> = std::mem::take(&mut self.fleet.hosts)
            .into_iter()
            .map(|h| (h.name.clone(), h))
            .collect();
        self.fleet = Fleet::for_inventory(&inventory.hosts, known);
        if tls != self.tls {
            // New client certificate or CA: every channel reconnects with it.
            self.agents = Agents::default();
        }
        // Hosts that keep name, address and server name keep their open channel.
        self.agents.retain(&inventory.hosts);
        self.next_attempt
            .retain(|k, _| inventory.hosts.iter().any(|h| &h.name == k));
        self.inventory = inventory;
        self.tls = tls;
        Ok(())
    }
}

/// `node-collector serve`.
pub async fn serve(config: Config, inventory: Inventory) -> Result<(), Stop> {
    let server_tls = config.server_tls()?.clone();
    let tls_config = TlsConfig::load(&server_tls.cert, &server_tls.key, &server_tls.client_ca)
        .map_err(|e| Stop {
            code: 2,
            error: e.into(),
        })?;
    let grpc = TlsListener::bind(config.listen.grpc, tls_config.clone())
        .await
        .map_err(failed)?;
    let metrics_listener = tokio::net::TcpListener::bind(config.listen.metrics)
        .await
        .map_err(|e| {
            failed(anyhow::Error::new(e).context(format!(
                "failed to bind the metrics endpoint {}",
                config.listen.metrics
            )))
        })?;
    let grpc_addr: SocketAddr = grpc.local_addr();
    let mut collector = Collector::new(config, inventory, true)?;
    let store = collector.store().expect("serve opens the store");
    let (snap_tx, snap_rx) = watch::channel(Arc::new(Snapshot {
        fleet: collector.fleet.clone(),
        ..Snapshot::default()
    }));
    let (stop_tx, stop_rx) = watch::channel(false);
    let poll_metrics = PollMetrics::default();

    let service = FleetServer::new(FleetService::new(snap_rx.clone(), store));
    let reflection = |b: tonic_reflection::server::Builder<'static>| {
        b.register_encoded_file_descriptor_set(node_agent_proto::FLEET_FILE_DESCRIPTOR_SET)
    };
    let mut router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .add_service(service);
    // Reflection for grpcurl (v1alpha is what grpcurl 1.8 speaks); not fatal when it fails.
    match (
        reflection(tonic_reflection::server::Builder::configure()).build_v1(),
        reflection(tonic_reflection::server::Builder::configure()).build_v1alpha(),
    ) {
        (Ok(a), Ok(b)) => router = router.add_service(a).add_service(b),
        (Err(e), _) | (_, Err(e)) => log::error!("server reflection unavailable: {e}"),
    }
    let mut grpc_stop = stop_rx.clone();
    let grpc_task = tokio::spawn(router.serve_with_incoming_shutdown(
        grpc.incoming(ConnectionLimit::new(MAX_CONNECTIONS)),
        async move {
            let _ = grpc_stop.wait_for(|s| *s).await;
        },
    ));
    log::info!(
        "serving the Fleet API (mutual TLS) on {grpc_addr} and metrics on http://{}/metrics; \
         {} hosts in {}",
        metrics_listener
            .local_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string()),
        collector.inventory.hosts.len(),
        collector.config.inventory.display()
    );
    let render = {
        let (snap_rx, poll) = (snap_rx.clone(), poll_metrics.clone());
        move || crate::metrics::render(&snap_rx.borrow().clone(), &poll)
    };
    let metrics_task = tokio::spawn(node_agent::metrics::serve(
        metrics_listener,
        ConnectionLimit::new(METRICS_CONNECTIONS),
        render,
        stop_rx.clone(),
    ));
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).map_err(failed)?;
    let mut term = signal(SignalKind::terminate()).map_err(failed)?;
    let mut int = signal(SignalKind::interrupt()).map_err(failed)?;
    let (wake_tx, mut wake_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut ticker = tokio::time::interval(collector.config.poll.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            _ = ticker.tick() => {
                // A database error is logged, not fatal: the state in memory is current and
                // the next cycle writes the hosts again (this cycle's events are lost).
                let started = std::time::Instant::now();
                if let Err(e) = collector.cycle(false).await {
                    log::error!("failed to record the poll: {:#}", e.error);
                }
                let elapsed = started.elapsed();
                poll_metrics.duration.observe(elapsed.as_secs_f64());
                poll_metrics.cycles.inc();
                let _ = snap_tx.send(Arc::new(Snapshot {
                    fleet: collector.fleet.clone(),
                    last_cycle: Some(crate::now_secs()),
                    last_cycle_ms: elapsed.as_millis() as u64,
                }));
                // After the first poll: subscriptions for hosts that have none yet.
                collector.watch(&wake_tx);
            }
            Some(first) = wake_rx.recv() => {
                // A drift event: poll the hosts that sent one (all pending ones at once).
                let mut names = HashSet::from([first]);
                while let Ok(n) = wake_rx.try_recv() {
                    names.insert(n);
                }
                if let Err(e) = collector.poll(Which::Hosts(&names)).await {
                    log::error!("failed to record the poll: {:#}", e.error);
                }
                let previous = (**snap_tx.borrow()).clone();
                let _ = snap_tx.send(Arc::new(Snapshot {
                    fleet: collector.fleet.clone(),
                    ..previous
                }));
            }
            _ = hup.recv() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                collector.unwatch();
                match collector.reload() {
                    Ok(()) => log::info!(
                        "reloaded the inventory: {} hosts",
                        collector.inventory.hosts.len()
                    ),
                    Err(e) => log::error!("reload failed, keeping the inventory in use: {e}"),
                }
                if let Err(e) = tls_config.reload(
                    &server_tls.cert, &server_tls.key, &server_tls.client_ca,
                ) {
                    log::error!("reload failed, keeping the server certificate in use: {e}");
                }
                // Not inside send(): borrow() holds the lock send() takes.
                let previous = (**snap_tx.borrow()).clone();
                let _ = snap_tx.send(Arc::new(Snapshot {
                    fleet: collector.fleet.clone(),
                    ..previous
                }));
                collector.watch(&wake_tx);
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            }
            _ = term.recv() => break Ok(()),
            _ = int.recv() => break Ok(()),
        }
    };
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    collector.unwatch();
    let _ = stop_tx.send(true);
    let _ = metrics_task.await;
    match grpc_task.await {
        Ok(Err(e)) => log::warn!("gRPC server: {e}"),
        Err(e) => log::warn!("gRPC server task: {e}"),
        Ok(Ok(())) => {}
    }
    result
}
