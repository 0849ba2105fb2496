//! The trading units over D-Bus: status, start/stop/restart with the job awaited by its
//! JobRemoved signal (never a sleep), enable/disable, the platform's ordered stop and start,
//! and a live stream of state changes. One bus connection, shared.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use zbus::fdo::PropertiesProxy;
use zbus::names::InterfaceName;
use zbus::{Connection, MatchRule, MessageStream, OwnedObjectPath, OwnedVariant};
use zbus_systemd::systemd1::ManagerProxy;

use crate::profile::types::CpuList;
use crate::settings::{UnitName, Units};
use crate::tuning::units::{ObservedUnit, UnitsObserved};

/// The environment variable the D-Bus specification names for the system bus address.
pub const SYSTEM_BUS_ENV: &str = "DBUS_SYSTEM_BUS_ADDRESS";
pub const DEFAULT_SYSTEM_BUS: &str = "unix:path=/run/dbus/system_bus_socket";
const SYSTEMD_NAME: &str = "org.freedesktop.systemd1";
const UNIT_IFACE: &str = "org.freedesktop.systemd1.Unit";
const SERVICE_IFACE: &str = "org.freedesktop.systemd1.Service";

#[derive(Debug, thiserror::Error)]
pub enum UnitsError {
    // zbus's error already carries its cause in its text: kept out of the source chain so
    // the chain printed by agentctl says it once.
    #[error("failed to connect to the system bus at {address}: {error}")]
    Connect { address: String, error: zbus::Error },
    #[error("no such unit: {unit}")]
    NoSuchUnit { unit: String },
    #[error("{unit} is not a managed unit (managed: {managed}); see [units] in the settings")]
    NotManaged { unit: String, managed: String },
    #[error("failed to {op} {unit}: {detail}")]
    Bus {
        op: &'static str,
        unit: String,
        detail: String,
    },
}

impl UnitsError {
    /// One place that turns bus errors into typed ones: systemd's error names are matched here
    /// and nowhere else.
    fn from_bus(op: &'static str, unit: &UnitName, e: zbus::Error) -> UnitsError {
        if let zbus::Error::MethodError(name, detail, _) = &e {
            match name.as_str() {
                "org.freedesktop.systemd1.NoSuchUnit" | "org.freedesktop.systemd1.LoadFailed" => {
                    return UnitsError::NoSuchUnit {
                        unit: unit.to_string(),
                    };
                }
                _ => {
                    return UnitsError::Bus {
                        op,
                        unit: unit.to_string(),
                        detail: format!("{name}: {}", detail.as_deref().unwrap_or("")),
                    };
                }
            }
        }
        UnitsError::Bus {
            op,
            unit: unit.to_string(),
            detail: e.to_string(),
        }
    }
}

/// Refuses units outside the managed list.
pub fn managed(units: &Units, unit: &str) -> Result<UnitName, UnitsError> {
    let name: UnitName = unit.parse().map_err(|_| UnitsError::NoSuchUnit {
        unit: unit.to_owned(),
    })?;
    if units.is_managed(&name) {
        Ok(name)
    } else {
        Err(UnitsError::NotManaged {
            unit: name.to_string(),
            managed: units
                .order
                .iter()
                .map(UnitName::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

/// What `units status` shows of one unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitStatus {
    pub unit: String,
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    /// `enabled`, `disabled`, `static`, … (empty when systemd has no unit file state).
    pub unit_file_state: String,
    /// 0 when not running.
    pub main_pid: u32,
    /// When it last entered the active state, microseconds since the epoch (0: never).
    pub active_since_us: u64,
    /// CPUs the service may run on; absent when not restricted.
    pub cpu_affinity: Option<String>,
    /// Current memory of its cgroup; absent when not accounted.
    pub memory_bytes: Option<u64>,
}

/// How a job ended, as JobRemoved reports it, or `timeout` when the agent's deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobResult {
    Done,
    Canceled,
    Timeout,
    Failed,
    Dependency,
    Skipped,
    /// A result string this agent does not know.
    Other,
}

impl JobResult {
    fn parse(s: &str) -> JobResult {
        match s {
            "done" => JobResult::Done,
            "canceled" => JobResult::Canceled,
            "timeout" => JobResult::Timeout,
            "failed" => JobResult::Failed,
            "dependency" => JobResult::Dependency,
            "skipped" => JobResult::Skipped,
            _ => JobResult::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobResult::Done => "done",
            JobResult::Canceled => "canceled",
            JobResult::Timeout => "timeout",
            JobResult::Failed => "failed",
            JobResult::Dependency => "dependency",
            JobResult::Skipped => "skipped",
            JobResult::Other => "other",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobOp {
    Start,
    Stop,
    Restart,
}

impl JobOp {
    pub fn as_str(self) -> &'static str {
        match self {
            JobOp::Start => "start",
            JobOp::Stop => "stop",
            JobOp::Restart => "restart",
        }
    }
}

/// The seam between the sequencing logic and systemd: the bus implementation below, and
/// fakes in tests.
pub trait UnitManager {
    fn status(&self, unit: &UnitName) -> impl Future<Output = Result<UnitStatus, UnitsError>>;
    /// Submits a job and waits for its JobRemoved up to `deadline` (then `Timeout`).
    fn run_job(
        &self,
        op: JobOp,
        unit: &UnitName,
        deadline: Duration,
    ) -> impl Future<Output = Result<JobResult, UnitsError>>;
    fn set_enabled(
        &self,
        unit: &UnitName,
        enabled: bool,
    ) -> impl Future<Output = Result<(), UnitsError>>;
}

/// systemd's manager on one bus connection, subscribed to its signals.
pub struct Systemd {
    conn: Connection,
    manager: ManagerProxy<'static>,
}

impl Systemd {
    /// The system bus: `DBUS_SYSTEM_BUS_ADDRESS`, else the standard socket.
    pub fn address_from_env() -> String {
        std::env::var(SYSTEM_BUS_ENV)
            .ok()
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| DEFAULT_SYSTEM_BUS.to_owned())
    }

    pub async fn connect(address: &str) -> Result<Systemd, UnitsError> {
        let err = |error| UnitsError::Connect {
            address: address.to_owned(),
            error,
        };
        let conn = zbus::connection::Builder::address(address)
            .build()
            .await
            .map_err(err)?;
        let manager = ManagerProxy::new(&conn).await.map_err(err)?;
        // Without Subscribe, systemd does not send JobRemoved to this client.
        manager.subscribe().await.map_err(err)?;
        Ok(Systemd { conn, manager })
    }

    /// All properties of one interface in one call. (Asking for the few needed ones with
    /// concurrent Gets measured slower against systemd 252: docs/BENCHMARKS.md.)
    async fn properties(
        &self,
        path: &OwnedObjectPath,
        iface: &'static str,
    ) -> zbus::Result<HashMap<String, OwnedVariant>> {
        let props = PropertiesProxy::builder(&self.conn)
            .destination("org.freedesktop.systemd1")
            .path(path.clone())
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?;
        props
            .get_all(InterfaceName::from_static_str_unchecked(iface))
            .await
            .map_err(Into::into)
    }

    /// Live `ActiveState`/`SubState` changes of `units`, as they happen.
    pub async fn watch(
        &self,
        units: &[UnitName],
    ) -> Result<impl futures_util::Stream<Item = UnitEvent> + use<>, UnitsError> {
        let mut streams = Vec::new();
        for unit in units {
            let path = self
                .manager
                .load_unit(unit.to_string())
                .await
                .map_err(|e| UnitsError::from_bus("watch", unit, e))?;
            let props = PropertiesProxy::builder(&self.conn)
                .destination("org.freedesktop.systemd1")
                .path(path)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await
                .map_err(|e| UnitsError::from_bus("watch", unit, e))?;
            let changes = props
                .receive_properties_changed()
                .await
                .map_err(|e| UnitsError::from_bus("watch", unit, e))?;
            let name = unit.to_string();
            streams.push(changes.filter_map(move |signal| {
                let name = name.clone();
                async move {
                    let args = signal.args().ok()?;
                    if args.interface_name.as_str() != UNIT_IFACE {
                        return None;
                    }
                    let get = |k: &str| {
                        args.changed_properties
                            .get(k)
                            .and_then(|v| String::try_from(v.try_clone().ok()?).ok())
                    };
                    let (active, sub) = (get("ActiveState"), get("SubState"));
                    (active.is_some() || sub.is_some()).then(|| UnitEvent {
                        unit: name,
                        active_state: active.unwrap_or_default(),
                        sub_state: sub.unwrap_or_default(),
                        time_us: now_us(),
                    })
                }
            }));
        }
        Ok(futures_util::stream::select_all(
            streams.into_iter().map(Box::pin),
        ))
    }
}

impl Systemd {
    /// LoadState, MainPID and every Limit*= property of one unit.
    pub async fn observe_limits(&self, unit: &UnitName) -> Result<ObservedUnit, UnitsError> {
        let e = |e| UnitsError::from_bus("query", unit, e);
        let path = self.manager.load_unit(unit.to_string()).await.map_err(e)?;
        let u = self.properties(&path, UNIT_IFACE).await.map_err(e)?;
        let load_state = get::<String>(&u, "LoadState").unwrap_or_default();
        if load_state != "loaded" || !unit.as_str().ends_with(".service") {
            return Ok(ObservedUnit {
                unit: unit.to_string(),
                load_state,
                main_pid: 0,
                limits: Default::default(),
                cpu_affinity: None,
            });
        }
        let s = self.properties(&path, SERVICE_IFACE).await.map_err(e)?;
        Ok(ObservedUnit {
            unit: unit.to_string(),
            load_state,
            main_pid: get(&s, "MainPID").unwrap_or(0),
            limits: s
                .iter()
                .filter(|(k, _)| k.starts_with("Limit"))
                .filter_map(|(k, v)| Some((k.clone(), u64::try_from(v.try_clone().ok()?).ok()?)))
                .collect(),
            cpu_affinity: get::<Vec<u8>>(&s, "CPUAffinity")
                .map(|m| mask_to_cpus(&m))
                .filter(|c| !c.is_empty()),
        })
    }

    /// Reloads systemd's unit files (as `systemctl daemon-reload`).
    pub async fn reload(&self) -> Result<(), String> {
        self.manager
            .reload()
            .await
            .map_err(|e| format!("failed to reload systemd: {e}"))
    }

    /// Restarts `unit` if it is running (as `systemctl try-restart`), without waiting for the
    /// job: a service re-reading its configuration (irqbalance) is not a platform step.
    pub async fn try_restart(&self, unit: &str) -> Result<(), String> {
        self.manager
            .try_restart_unit(unit.to_owned(), "replace".to_owned())
            .await
            .map(|_| ())
            .map_err(|e| format!("failed to restart {unit}: {e}"))
    }
}

/// What the bus says about the managed units' limits, for verify and apply. A host without a
/// system bus socket has no systemd to ask: that is `NoBus` (the class is unsupported there),
/// any other failure is `Failed`. One connection for one answer: agentctl's way; the daemon
/// keeps a [`UnitsCache`].
pub async fn observe_units(bus: &str, units: &[UnitName]) -> UnitsObserved {
    if let Some(no_bus) = no_bus(bus) {
        return no_bus;
    }
    let systemd = match Systemd::connect(bus).await {
        Ok(s) => s,
        Err(e) => return UnitsObserved::Failed(e.to_string()),
    };
    match fetch(&systemd, units).await {
        Ok(observed) => UnitsObserved::Units(observed),
        Err(e) => UnitsObserved::Failed(e.to_string()),
    }
}

/// `NoBus` when `bus` is a socket path that does not exist: no systemd runs here.
fn no_bus(bus: &str) -> Option<UnitsObserved> {
    let socket = bus.strip_prefix("unix:path=")?;
    (!std::path::Path::new(socket).exists()).then(|| {
        UnitsObserved::NoBus(format!(
            "no system bus at {socket}: systemd is not running here"
        ))
    })
}

/// Every unit, concurrently on the one connection.
async fn fetch(systemd: &Systemd, units: &[UnitName]) -> Result<Vec<ObservedUnit>, UnitsError> {
    futures_util::future::try_join_all(units.iter().map(|u| systemd.observe_limits(u))).await
}

/// The daemon's observation of the units, kept between verifies: one bus connection for as
/// long as it works, and the last answer, given again until systemd signals that something it
/// reported may have changed. A verify with a valid cache asks nothing on the bus.
///
/// What invalidates it (signals from systemd on the kept connection, which is subscribed; a
/// background task sets a flag for each): `PropertiesChanged` on an observed unit's object
/// (MainPID, ActiveState: a restart, a crash without any job), `JobRemoved` of an observed unit,
/// the manager's `Reloading` (Limit*=, CPUAffinity= and LoadState change only with a reload)
/// and `UnitFilesChanged`, and a new owner of `org.freedesktop.systemd1` (re-exec). The
/// connection closing ends the task, and the next call connects again. An answer with a unit
/// that is not loaded is not kept (LoadUnit may load it the next time without a signal here).
#[derive(Default)]
pub struct UnitsCache {
    watch: Option<Watch>,
}

/// One connection and what it watches.
struct Watch {
    bus: String,
    names: Vec<UnitName>,
    systemd: Systemd,
    /// Set by the listener on every signal; cleared before each fetch.
    changed: Arc<AtomicBool>,
    listener: tokio::task::JoinHandle<()>,
    /// The last answer, when it may be given again.
    last: Option<Vec<ObservedUnit>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// What [`UnitsCache::observe`] does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheStep {
    /// Give the kept answer: no bus traffic.
    Reuse,
    /// Ask systemd again on the kept connection.
    Fetch,
    /// Drop the connection (if any), connect, watch and ask.
    Connect,
}

/// What the cache has, for [`cache_step`].
#[derive(Debug, Clone, Copy)]
struct CacheState<'a> {
    bus: &'a str,
    names: &'a [UnitName],
    /// The listener still runs (the connection is open).
    listening: bool,
    /// A signal came since the last fetch began.
    changed: bool,
    /// An answer is kept.
    kept: bool,
}

/// The decision of [`UnitsCache::observe`], pure: `have` is `None` without a connection.
fn cache_step(have: Option<CacheState<'_>>, bus: &str, names: &[UnitName]) -> CacheStep {
    match have {
        // The match rules name the units' objects: other units need another watch.
        Some(h) if h.listening && h.bus == bus && h.names == names => {
            if h.changed || !h.kept {
                CacheStep::Fetch
            } else {
                CacheStep::Reuse
            }
        }
        _ => CacheStep::Connect,
    }
}

/// Whether an answer may be given again until a signal: every unit loaded.
fn keepable(units: &[ObservedUnit]) -> bool {
    units.iter().all(|u| u.load_state == "loaded")
}

impl UnitsCache {
    pub fn new() -> UnitsCache {
        UnitsCache::default()
    }

    /// What the bus says about `names` (as [`observe_units`]), from the cache when nothing has
    /// been signalled since it was filled. Any bus error drops the connection and the cache:
    /// the next call starts afresh.
    pub async fn observe(&mut self, bus: &str, names: &[UnitName]) -> UnitsObserved {
        let state = self.watch.as_ref().map(|w| CacheState {
            bus: &w.bus,
            names: &w.names,
            listening: !w.listener.is_finished(),
            changed: w.changed.load(Ordering::SeqCst),
            kept: w.last.is_some(),
        });
        let step = cache_step(state, bus, names);
        if step == CacheStep::Connect {
            self.watch = None;
            if let Some(no_bus) = no_bus(bus) {
                return no_bus;
            }
            match Watch::start(bus, names).await {
                Ok(w) => self.watch = Some(w),
                Err(e) => return UnitsObserved::Failed(e.to_string()),
            }
        }
        let Some(watch) = self.watch.as_mut() else {
            return UnitsObserved::Failed("no bus connection".into());
        };
        if step == CacheStep::Reuse
            && let Some(last) = &watch.last
        {
            return UnitsObserved::Units(last.clone());
        }
        // Cleared before asking: a change signalled while the answers come in makes the next
        // call ask again.
        watch.changed.store(false, Ordering::SeqCst);
        match fetch(&watch.systemd, names).await {
            Ok(units) => {
                watch.last = keepable(&units).then(|| units.clone());
                UnitsObserved::Units(units)
            }
            Err(e) => {
                self.watch = None;
                UnitsObserved::Failed(e.to_string())
            }
        }
    }

    /// Forgets the kept answer (the next call asks systemd): for changes the daemon made itself,
    /// whose signals may still be on their way.
    pub fn invalidate(&mut self) {
        if let Some(w) = self.watch.as_mut() {
            w.last = None;
        }
    }
}

impl Watch {
    /// Connects, subscribes, and registers the match rules before anything is asked, so that
    /// no change after the first answer can go unsignalled.
    async fn start(bus: &str, names: &[UnitName]) -> Result<Watch, UnitsError> {
        let systemd = Systemd::connect(bus).await?;
        let err = |error| UnitsError::Connect {
            address: bus.to_owned(),
            error,
        };
        let systemd1 = || {
            MatchRule::builder()
                .msg_type(zbus::message::Type::Signal)
                .sender(SYSTEMD_NAME)
        };
        let manager = |member| {
            systemd1()
                .interface("org.freedesktop.systemd1.Manager")
                .member(member)
        };
        let mut rules = vec![
            manager("Reloading").build(),
            manager("UnitFilesChanged").build(),
            MatchRule::builder()
                .msg_type(zbus::message::Type::Signal)
                .sender("org.freedesktop.DBus")
                .interface("org.freedesktop.DBus")
                .member("NameOwnerChanged")
                .arg(0, SYSTEMD_NAME)
                .build(),
        ];
        let mut paths = Vec::new();
        for unit in names {
            // The object systemd signals on (its primary name's, also for an alias).
            let path = systemd
                .manager
                .load_unit(unit.to_string())
                .await
                .map_err(|e| UnitsError::from_bus("watch", unit, e))?;
            paths.push(path);
        }
        for (unit, path) in names.iter().zip(&paths) {
            rules.push(manager("JobRemoved").arg(2, unit.as_str()).build());
            rules.push(
                systemd1()
                    .interface("org.freedesktop.DBus.Properties")
                    .member("PropertiesChanged")
                    .path(path.as_ref())
                    .build(),
            );
        }
        let mut streams = Vec::new();
        for rule in rules {
            let rule = rule.map_err(err)?.to_owned();
            streams.push(
                MessageStream::for_match_rule(rule, &systemd.conn, None)
                    .await
                    .map_err(err)?,
            );
        }
        let changed = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&changed);
        let mut signals = futures_util::stream::select_all(streams);
        // Ends when the connection closes (every stream ends then).
        let listener = tokio::spawn(async move {
            while signals.next().await.is_some() {
                flag.store(true, Ordering::SeqCst);
            }
        });
        Ok(Watch {
            bus: bus.to_owned(),
            names: names.to_vec(),
            systemd,
            changed,
            listener,
            last: None,
        })
    }
}

/// A state change of a watched unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitEvent {
    pub unit: String,
    pub active_state: String,
    pub sub_state: String,
    pub time_us: u64,
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn get<T: TryFrom<OwnedVariant>>(props: &HashMap<String, OwnedVariant>, key: &str) -> Option<T> {
    T::try_from(props.get(key)?.try_clone().ok()?).ok()
}

/// systemd's CPUAffinity is a little-endian bit mask, one bit per CPU.
fn mask_to_cpus(mask: &[u8]) -> CpuList {
    mask.iter()
        .enumerate()
        .flat_map(|(byte, bits)| {
            (0..8)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| (byte * 8 + b) as u32)
        })
        .collect()
}

impl UnitManager for Systemd {
    async fn status(&self, unit: &UnitName) -> Result<UnitStatus, UnitsError> {
        let e = |e| UnitsError::from_bus("query", unit, e);
        // LoadUnit also answers for units that are not loaded (LoadState "not-found").
        let path = self.manager.load_unit(unit.to_string()).await.map_err(e)?;
        let unit_props = self.properties(&path, UNIT_IFACE);
        let service_props = async {
            if unit.as_str().ends_with(".service") {
                self.properties(&path, SERVICE_IFACE).await
            } else {
                Ok(HashMap::new())
            }
        };
        let (u, s) = futures_util::future::try_join(unit_props, service_props)
            .await
            .map_err(e)?;
        let text = |k: &str| get::<String>(&u, k).unwrap_or_default();
        let cpus = get::<Vec<u8>>(&s, "CPUAffinity")
            .map(|m| mask_to_cpus(&m))
            .filter(|c| !c.is_empty());
        Ok(UnitStatus {
            unit: unit.to_string(),
            load_state: text("LoadState"),
            active_state: text("ActiveState"),
            sub_state: text("SubState"),
            unit_file_state: text("UnitFileState"),
            main_pid: get(&s, "MainPID").unwrap_or(0),
            active_since_us: get(&u, "ActiveEnterTimestamp").unwrap_or(0),
            cpu_affinity: cpus.map(|c| c.to_string()),
            // u64::MAX means "not accounted".
            memory_bytes: get::<u64>(&s, "MemoryCurrent").filter(|m| *m != u64::MAX),
        })
    }

    async fn run_job(
        &self,
        op: JobOp,
        unit: &UnitName,
        deadline: Duration,
    ) -> Result<JobResult, UnitsError> {
        let e = |e| UnitsError::from_bus(op.as_str(), unit, e);
        // The signal stream exists before the job does, so its JobRemoved cannot be missed.
        let mut removed = self.manager.receive_job_removed().await.map_err(e)?;
        let (name, mode) = (unit.to_string(), "replace".to_owned());
        let job = match op {
            JobOp::Start => self.manager.start_unit(name, mode).await,
            JobOp::Stop => self.manager.stop_unit(name, mode).await,
            JobOp::Restart => self.manager.restart_unit(name, mode).await,
        }
        .map_err(e)?;
        let wait = async {
            while let Some(signal) = removed.next().await {
                if let Ok(args) = signal.args()
                    && args.job == job
                {
                    return Ok(JobResult::parse(&args.result));
                }
            }
            Err(UnitsError::Bus {
                op: op.as_str(),
                unit: unit.to_string(),
                detail: "the bus connection closed before the job finished".into(),
            })
        };
        match tokio::time::timeout(deadline, wait).await {
            Ok(result) => result,
            Err(_) => Ok(JobResult::Timeout),
        }
    }

    async fn set_enabled(&self, unit: &UnitName, enabled: bool) -> Result<(), UnitsError> {
        let files = vec![unit.to_string()];
        if enabled {
            let e = |e| UnitsError::from_bus("enable", unit, e);
            self.manager
                .enable_unit_files(files, false, false)
                .await
                .map_err(e)?;
        } else {
            let e = |e| UnitsError::from_bus("disable", unit, e);
            self.manager
                .disable_unit_files(files, false)
                .await
                .map_err(e)?;
        }
        // As systemctl does: reload so the new [Install] links take effect.
        self.manager
            .reload()
            .await
            .map_err(|e| UnitsError::from_bus("reload systemd for", unit, e))
    }
}

/// The status of several units, queried concurrently on the one connection (the bus
/// pipelines the calls instead of paying a round trip per property set in turn).
pub async fn status_all<M: UnitManager>(
    m: &M,
    units: &[UnitName],
) -> Result<Vec<UnitStatus>, UnitsError> {
    futures_util::future::try_join_all(units.iter().map(|u| m.status(u))).await
}

/// The ActiveState of each unit for the health checks, on one connection asked concurrently. A
/// unit systemd does not know is reported as `not-found` (its LoadState), never as active.
pub async fn active_states(
    bus: &str,
    units: &[UnitName],
) -> Result<Vec<crate::health::UnitState>, String> {
    if let Some(UnitsObserved::NoBus(why)) = no_bus(bus) {
        return Err(why);
    }
    let systemd = Systemd::connect(bus).await.map_err(|e| e.to_string())?;
    let all = status_all(&systemd, units)
        .await
        .map_err(|e| e.to_string())?;
    Ok(all
        .into_iter()
        .map(|s| crate::health::UnitState {
            active_state: if s.load_state == "not-found" {
                s.load_state
            } else {
                s.active_state
            },
            unit: s.unit,
        })
        .collect())
}

/// One step of a platform stop or start.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub unit: String,
    pub op: JobOp,
    pub result: JobResult,
    pub duration_ms: u64,
    /// ActiveState/SubState right after the job.
    pub active_state: String,
    pub sub_state: String,
}

impl Step {
    /// Done, and the unit is where the operation should leave it.
    pub fn succeeded(&self) -> bool {
        self.result == JobResult::Done
            && match self.op {
                JobOp::Stop => matches!(self.active_state.as_str(), "inactive" | ""),
                JobOp::Start | JobOp::Restart => {
                    matches!(
                        self.active_state.as_str(),
                        "active" | "activating" | "reloading"
                    )
                }
            }
    }
}

/// The whole sequence; `steps` ends at the first failure.
#[derive(Debug, Clone, Serialize)]
pub struct PlatformReport {
    pub op: JobOp,
    pub steps: Vec<Step>,
    /// The unit the sequence stopped at.
    pub failed: Option<String>,
    /// Units not reached because of the failure.
    pub not_reached: Vec<String>,
}

/// Runs one job and reads the unit's state after it.
pub async fn job_step<M: UnitManager>(
    m: &M,
    op: JobOp,
    unit: &UnitName,
    deadline: Duration,
) -> Result<Step, UnitsError> {
    let started = Instant::now();
    let result = m.run_job(op, unit, deadline).await?;
    let duration_ms = started.elapsed().as_millis() as u64;
    let status = m.status(unit).await?;
    Ok(Step {
        unit: unit.to_string(),
        op,
        result,
        duration_ms,
        active_state: status.active_state,
        sub_state: status.sub_state,
    })
}

/// The platform's ordered stop (last unit first, each within its drain deadline) or start
/// (first unit first); stops at the first unit that does not end where it should.
/// `on_step` sees each step as it finishes (progress for people watching a 30 s drain).
pub async fn platform<M: UnitManager>(
    m: &M,
    units: &Units,
    op: JobOp,
    mut on_step: impl FnMut(&Step),
) -> Result<PlatformReport, UnitsError> {
    let order: Vec<&UnitName> = match op {
        JobOp::Stop => units.order.iter().rev().collect(),
        _ => units.order.iter().collect(),
    };
    let mut report = PlatformReport {
        op,
        steps: Vec::new(),
        failed: None,
        not_reached: Vec::new(),
    };
    for (i, unit) in order.iter().enumerate() {
        let deadline = match op {
            JobOp::Stop => units.stop_deadline(unit),
            _ => units.job_timeout.0,
        };
        let step = job_step(m, op, unit, deadline).await?;
        on_step(&step);
        let ok = step.succeeded();
        report.steps.push(step);
        if !ok {
            report.failed = Some(unit.to_string());
            report.not_reached = order[i + 1..].iter().map(|u| u.to_string()).collect();
            break;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Records the order of jobs; a unit named in `fail` fails its job, in `hang` times out.
    struct Fake {
        log: RefCell<Vec<String>>,
        fail: &'static str,
        hang: &'static str,
    }

    impl UnitManager for Fake {
        async fn status(&self, unit: &UnitName) -> Result<UnitStatus, UnitsError> {
            let last = self
                .log
                .borrow()
                .iter()
                .rev()
                .find(|l| l.ends_with(unit.as_str()))
                .cloned();
            let active = match last.as_deref() {
                Some(l)
                    if l.starts_with("start")
                        && (self.fail.is_empty() || !l.ends_with(self.fail)) =>
                {
                    "active"
                }
                Some(l) if l.starts_with("start") => "failed",
                _ => "inactive",
            };
            Ok(UnitStatus {
                unit: unit.to_string(),
                load_state: "loaded".into(),
                active_state: active.into(),
                sub_state: String::new(),
                unit_file_state: String::new(),
                main_pid: 0,
                active_since_us: 0,
                cpu_affinity: None,
                memory_bytes: None,
            })
        }
        async fn run_job(
            &self,
            op: JobOp,
            unit: &UnitName,
            deadline: Duration,
        ) -> Result<JobResult, UnitsError> {
            self.log
                .borrow_mut()
                .push(format!("{} {}s {}", op.as_str(), deadline.as_secs(), unit));
            Ok(if unit.as_str() == self.hang {
                JobResult::Timeout
            } else if unit.as_str() == self.fail {
                JobResult::Failed
            } else {
                JobResult::Done
            })
        }
        async fn set_enabled(&self, _: &UnitName, _: bool) -> Result<(), UnitsError> {
            Ok(())
        }
    }

    fn run<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn stop_runs_in_reverse_with_drain_deadlines_and_start_in_order() {
        let fake = Fake {
            log: RefCell::default(),
            fail: "",
            hang: "",
        };
        let units = Units::default();
        let stop = run(platform(&fake, &units, JobOp::Stop, |_| {})).unwrap();
        assert!(stop.failed.is_none());
        assert_eq!(stop.steps.len(), 4);
        let start = run(platform(&fake, &units, JobOp::Start, |_| {})).unwrap();
        assert!(start.failed.is_none(), "{start:?}");
        assert_eq!(
            *fake.log.borrow(),
            [
                "stop 30s order-gateway.service",
                "stop 30s trading-engine.service",
                "stop 90s risk-engine.service",
                "stop 90s market-data.service",
                "start 90s market-data.service",
                "start 90s risk-engine.service",
                "start 90s trading-engine.service",
                "start 90s order-gateway.service",
            ]
        );
    }

    #[test]
    fn sequence_stops_at_the_first_failure_or_timeout() {
        let units = Units::default();
        let fake = Fake {
            log: RefCell::default(),
            fail: "risk-engine.service",
            hang: "",
        };
        let start = run(platform(&fake, &units, JobOp::Start, |_| {})).unwrap();
        assert_eq!(start.failed.as_deref(), Some("risk-engine.service"));
        assert_eq!(start.steps.last().unwrap().result, JobResult::Failed);
        assert_eq!(
            start.not_reached,
            ["trading-engine.service", "order-gateway.service"]
        );
        let fake = Fake {
            log: RefCell::default(),
            fail: "",
            hang: "order-gateway.service",
        };
        let stop = run(platform(&fake, &units, JobOp::Stop, |_| {})).unwrap();
        assert_eq!(stop.steps.len(), 1);
        assert_eq!(stop.steps[0].result, JobResult::Timeout);
        assert_eq!(stop.failed.as_deref(), Some("order-gateway.service"));
        assert_eq!(
            fake.log.borrow().len(),
            1,
            "nothing after the gateway is stopped"
        );
    }

    #[test]
    fn the_cache_is_reused_only_while_listening_unchanged_for_the_same_units() {
        let units = Units::default();
        let names = &units.order[..];
        let bus = "unix:path=/run/dbus/system_bus_socket";
        let state = CacheState {
            bus,
            names,
            listening: true,
            changed: false,
            kept: true,
        };
        assert_eq!(cache_step(Some(state), bus, names), CacheStep::Reuse);
        assert_eq!(cache_step(None, bus, names), CacheStep::Connect);
        // A signal since the last fetch, or nothing kept (a unit was not loaded, or the daemon
        // changed something itself): ask again on the same connection.
        let changed = CacheState {
            changed: true,
            ..state
        };
        assert_eq!(cache_step(Some(changed), bus, names), CacheStep::Fetch);
        let nothing = CacheState {
            kept: false,
            ..state
        };
        assert_eq!(cache_step(Some(nothing), bus, names), CacheStep::Fetch);
        // The listener ended (the connection closed): signals may have been missed.
        let deaf = CacheState {
            listening: false,
            ..state
        };
        assert_eq!(cache_step(Some(deaf), bus, names), CacheStep::Connect);
        // Other units (a new profile or settings) or another bus: another watch.
        assert_eq!(
            cache_step(Some(state), bus, &names[..2]),
            CacheStep::Connect
        );
        assert_eq!(
            cache_step(Some(state), "unix:path=/tmp/other", names),
            CacheStep::Connect
        );
    }

    #[test]
    fn only_an_answer_with_every_unit_loaded_is_kept() {
        let unit = |load_state: &str| ObservedUnit {
            unit: "trading-engine.service".into(),
            load_state: load_state.into(),
            main_pid: 7,
            limits: Default::default(),
            cpu_affinity: None,
        };
        assert!(keepable(&[unit("loaded"), unit("loaded")]));
        assert!(keepable(&[]));
        assert!(!keepable(&[unit("loaded"), unit("not-found")]));
    }

    #[test]
    fn no_bus_only_for_a_missing_socket() {
        assert!(matches!(
            no_bus("unix:path=/nonexistent/system_bus_socket"),
            Some(UnitsObserved::NoBus(why)) if why.contains("/nonexistent/system_bus_socket")
        ));
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(no_bus(&format!("unix:path={}", dir.path().display())), None);
        assert_eq!(no_bus("tcp:host=localhost,port=1"), None);
    }

    #[test]
    fn affinity_masks_and_managed_units() {
        assert_eq!(
            mask_to_cpus(&[0b0000_1100, 0b0000_0001]).to_string(),
            "2-3,8"
        );
        let units = Units::default();
        assert_eq!(
            managed(&units, "trading-engine").unwrap().as_str(),
            "trading-engine.service"
        );
        let err = managed(&units, "sshd.service").unwrap_err();
        assert_eq!(
            err.to_string(),
            "sshd.service is not a managed unit (managed: market-data.service, risk-engine.service, \
             trading-engine.service, order-gateway.service); see [units] in the settings"
        );
    }
}
