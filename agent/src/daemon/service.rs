//! The daemon's state and operations, independent of gRPC: the active settings and profile
//! (swapped whole on SIGHUP), the last verify, drift transitions to subscribers, the enforce
//! round, and apply/rollback as the host's one writer. The RPC layer calls these.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::broadcast;

use super::drift::{self, DriftEvent};
use super::enforce::{self, HeldBack, Limiter, Pause};
use crate::audit::{Audit, Caller};
use crate::health;
use crate::host::HostRoot;
use crate::metrics::HealthRun;
use crate::profile::{self, Profile, ProfileError, SearchPath};
use crate::rollback::apply::{self, ApplyError, ApplyOutcome, RollbackOutcome, Session, SystemdOp};
use crate::rollback::journal::{StateDir, StateError};
use crate::settings::{Mode, Settings, SettingsError};
use crate::system::{NoSystem, RealSystem, SystemActions};
use crate::tuning::plan::{Plan, Scope};
use crate::tuning::{self, units::UnitsObserved};
use crate::units::{Systemd, UnitsCache};
use crate::verify::{Class, Report};

/// Where the daemon finds the host, profiles, its state and the bus (resolved once at start).
#[derive(Debug, Clone)]
pub struct Env {
    pub host: HostRoot,
    pub search: SearchPath,
    pub state: StateDir,
    pub bus: String,
}

impl Env {
    pub fn from_env() -> Env {
        Env {
            host: HostRoot::from_env(),
            search: SearchPath::from_env(),
            state: StateDir::from_env(),
            bus: Systemd::address_from_env(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("{}: agent.profile is not set: the daemon needs a profile to keep", path.display())]
    NoProfile { path: std::path::PathBuf },
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("{path}: {message}")]
    Layout { path: String, message: String },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("{0}")]
    Internal(String),
}

/// The profile the daemon keeps, with what identifies its content.
#[derive(Debug)]
pub struct Active {
    pub profile: Profile,
    /// SHA-256 (hex) of the profile's files, in merge order.
    pub hash: String,
}

impl Active {
    pub fn load(
        settings: &Settings,
        settings_path: &std::path::Path,
        env: &Env,
    ) -> Result<Active, DaemonError> {
        let spec = settings
            .agent
            .profile
            .as_ref()
            .ok_or_else(|| DaemonError::NoProfile {
                path: settings_path.to_owned(),
            })?;
        let profile = profile::load(&spec.to_string(), &env.search)?;
        if let Some(iso) = &profile.settings.isolation {
            tuning::isolation::check_layout(&env.host, iso).map_err(|message| {
                DaemonError::Layout {
                    path: profile.source.display().to_string(),
                    message,
                }
            })?;
        }
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for f in &profile.files {
            ctx.update(&std::fs::read(f).map_err(|source| {
                DaemonError::Profile(ProfileError::Read {
                    path: f.clone(),
                    source,
                })
            })?);
        }
        let hash = ctx
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Active { profile, hash })
    }
}

/// The last verify.
#[derive(Debug, Clone)]
pub struct Verified {
    pub report: Arc<Report>,
    /// The hash of the profile it verified (a SIGHUP may have changed the profile since).
    pub profile_hash: String,
    /// Seconds since the epoch.
    pub at: u64,
    pub took: Duration,
}

/// What an enforce round did.
#[derive(Debug, Default)]
pub struct EnforceRound {
    pub reapplied: Vec<String>,
    pub held_back: Vec<HeldBack>,
    pub error: Option<String>,
}

pub struct Daemon {
    pub env: Env,
    pub settings_path: std::path::PathBuf,
    settings: ArcSwap<Settings>,
    active: ArcSwap<Active>,
    last: RwLock<Option<Verified>>,
    drift: broadcast::Sender<DriftEvent>,
    /// One writer: apply, rollback and enforce take it in turn (the journal lock would refuse a
    /// second writer; this makes them wait instead).
    writer: tokio::sync::Mutex<()>,
    limiter: Mutex<Limiter>,
    audit: Audit,
    /// The units as systemd last reported them, on one kept bus connection, until systemd
    /// signals a change (`units::UnitsCache`); the lock makes concurrent verifies share one
    /// fetch.
    units: tokio::sync::Mutex<UnitsCache>,
    /// Every verify's duration, for the metrics.
    verify_duration: prometheus_client::metrics::histogram::Histogram,
    /// The last health run, for the metrics.
    health: RwLock<Option<HealthRun>>,
    /// Turns true when the daemon stops: open WatchDrift streams end.
    closing: tokio::sync::watch::Sender<bool>,
    pub started: Instant,
}

/// Seconds since the epoch with their fraction, for timestamps in the metrics.
pub fn now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Daemon {
    pub fn new(
        env: Env,
        settings_path: std::path::PathBuf,
        settings: Settings,
    ) -> Result<Daemon, DaemonError> {
        let active = Active::load(&settings, &settings_path, &env)?;
        let limiter = Limiter::new(
            settings.enforce.min_interval.0,
            settings.enforce.max_per_hour,
        );
        let (drift, _) = broadcast::channel(1024);
        let audit = Audit::new(Some(env.state.path()));
        Ok(Daemon {
            env,
            settings_path,
            settings: ArcSwap::from_pointee(settings),
            active: ArcSwap::from_pointee(active),
            last: RwLock::new(None),
            drift,
            writer: tokio::sync::Mutex::new(()),
            limiter: Mutex::new(limiter),
            audit,
            units: tokio::sync::Mutex::new(UnitsCache::new()),
            verify_duration: crate::metrics::verify_duration_histogram(),
            health: RwLock::new(None),
            closing: tokio::sync::watch::Sender::new(false),
            started: Instant::now(),
        })
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    pub fn active(&self) -> Arc<Active> {
        self.active.load_full()
    }

    /// The last verify of the profile now active (`None` right after a SIGHUP changed the
    /// profile, until its first verify: never another profile's result).
    pub fn last(&self) -> Option<Verified> {
        let hash = self.active().hash.clone();
        self.last
            .read()
            .ok()
            .and_then(|l| l.clone())
            .filter(|v| v.profile_hash == hash)
    }

    /// Ends the open drift streams (shutdown).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Turns true at shutdown.
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<DriftEvent> {
        self.drift.subscribe()
    }

    /// SIGHUP: reads the settings and the profile again. Invalid new settings (or a profile
    /// that no longer loads) are refused and the old ones kept.
    pub fn reload(&self) -> Result<Arc<Settings>, DaemonError> {
        let settings = Settings::load(&self.settings_path, true)?;
        let active = Active::load(&settings, &self.settings_path, &self.env)?;
        if let Ok(mut l) = self.limiter.lock() {
            *l = Limiter::new(
                settings.enforce.min_interval.0,
                settings.enforce.max_per_hour,
            );
        }
        self.settings.store(Arc::new(settings));
        self.active.store(Arc::new(active));
        Ok(self.settings())
    }

    /// What the bus says about the units the profile checks (none needed: `None`): the cache's
    /// answer, or with `fresh` systemd's (apply plans from what is, not from what was).
    async fn observe_units(&self, profile: &Profile, fresh: bool) -> Option<UnitsObserved> {
        if !self.env.host.is_live() {
            return None;
        }
        let settings = self.settings();
        let names =
            tuning::units::units_to_observe(profile, || Ok::<_, ()>(settings.units.order.clone()))
                .ok()?;
        if names.is_empty() {
            return None;
        }
        let mut cache = self.units.lock().await;
        if fresh {
            cache.invalidate();
        }
        Some(cache.observe(&self.env.bus, &names).await)
    }

    /// Reads the host afresh, records the result and sends its drift transitions.
    pub async fn verify_now(&self) -> Result<Verified, DaemonError> {
        let active = self.active();
        let hash = active.hash.clone();
        let units = self.observe_units(&active.profile, false).await;
        let host = self.env.host.clone();
        let state = self.env.state.clone();
        let started = Instant::now();
        let report = tokio::task::spawn_blocking(move || {
            let mut report = tuning::verify_with_units(&host, &active.profile, units.as_ref());
            report.interrupted_apply = crate::rollback::journal::interrupted_apply(&state);
            report
        })
        .await
        .map_err(|e| DaemonError::Internal(format!("verify task failed: {e}")))?;
        let verified = Verified {
            report: Arc::new(report),
            profile_hash: hash,
            at: now(),
            took: started.elapsed(),
        };
        self.verify_duration.observe(verified.took.as_secs_f64());
        let previous = self
            .last
            .write()
            .map(|mut l| l.replace(verified.clone()))
            .unwrap_or_default();
        let before = previous.as_ref().map_or(&[][..], |p| &p.report.items[..]);
        for event in drift::transitions(before, &verified.report.items, verified.at) {
            log_transition(&event);
            // No subscriber is fine.
            let _ = self.drift.send(event);
        }
        Ok(verified)
    }

    /// Runs the health checks now (settings' `[health]`, the managed units over the bus, the
    /// last verify's drift) and keeps the result for the metrics.
    pub async fn health_now(&self) -> HealthRun {
        let started = Instant::now();
        let settings = self.settings();
        let active = self.active();
        let drift = Some(
            self.last()
                .map(|v| v.report.summary.clone())
                .ok_or_else(|| "the active profile has not been verified yet".to_owned()),
        );
        let inputs = health::gather_inputs(
            &self.env.host,
            &self.env.bus,
            active.profile.settings.isolation.as_ref(),
            &settings.units.order,
            drift,
        )
        .await;
        let report = health::run(&self.env.host, &settings.health.checks(), &inputs).await;
        let run = HealthRun {
            report,
            at: now_f64(),
            took: started.elapsed(),
            isolation: inputs.layout.is_some(),
        };
        if let Ok(mut h) = self.health.write() {
            *h = Some(run.clone());
        }
        run
    }

    /// The metrics text of one scrape, from what the daemon has (reads no kernel file).
    pub fn metrics_text(&self) -> String {
        let active = self.active();
        let last = self.last();
        let health = self.health.read().ok().and_then(|h| h.clone());
        crate::metrics::encode(&crate::metrics::Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            profile: &active.profile.name,
            profile_hash: &active.hash,
            verified: last.as_ref().map(|v| (&*v.report, v.at as f64)),
            health: health.as_ref(),
            verify_duration: &self.verify_duration,
        })
    }

    /// The pause in effect, if any.
    pub fn pause(&self) -> Option<Pause> {
        enforce::current_pause(&self.env.state, now())
    }

    /// Writes an audit record for an action taken through the API.
    pub fn audit(&self, caller: &Caller, message: &str, fields: &[(&str, &str)]) {
        self.audit.record(caller, message, fields);
    }

    pub fn pause_enforcement(
        &self,
        caller: &Caller,
        for_: Duration,
        reason: &str,
    ) -> Result<Pause, DaemonError> {
        let since = now();
        let pause = Pause {
            until: since + for_.as_secs(),
            by: format!("{} (uid {})", caller.user, caller.uid),
            since,
        };
        enforce::pause(&self.env.state, &pause)?;
        self.audit.record(
            caller,
            &format!(
                "enforcement paused for {}s, until {}{}{reason}",
                for_.as_secs(),
                crate::verify::format_time(pause.until),
                if reason.is_empty() { "" } else { ": " }
            ),
            &[("NODE_AGENT_ACTION", "enforce-pause")],
        );
        Ok(pause)
    }

    pub fn resume_enforcement(&self, caller: &Caller) -> Result<bool, DaemonError> {
        let was = enforce::resume(&self.env.state, now())?;
        self.audit.record(
            caller,
            "enforcement resumed",
            &[("NODE_AGENT_ACTION", "enforce-resume")],
        );
        Ok(was)
    }

    /// In enforce mode and not paused: re-applies the drifted items the settings cover, within
    /// the rate limits. Every re-apply is an audit record (by the daemon itself).
    pub async fn enforce_round(&self, report: &Report) -> Option<EnforceRound> {
        let settings = self.settings();
        if settings.agent.mode != Mode::Enforce || self.pause().is_some() {
            return None;
        }
        let drifted: Vec<String> = report
            .items
            .iter()
            .filter(|i| {
                i.status == crate::verify::Status::Drift
                    && !i.fixes.is_empty()
                    && settings.enforce.targets.covers(i)
            })
            .map(|i| i.key.clone())
            .collect();
        if drifted.is_empty() {
            return None;
        }
        let (go, held_back) = self
            .limiter
            .lock()
            .map(|mut l| l.select(&drifted, Instant::now()))
            .unwrap_or_default();
        for h in &held_back {
            log::warn!(key = h.key.as_str(); "enforce: not re-applying {}: {}", h.key, h.reason);
        }
        let mut round = EnforceRound {
            reapplied: Vec::new(),
            held_back,
            error: None,
        };
        if go.is_empty() {
            return Some(round);
        }
        let caller = Caller {
            uid: nix::unistd::getuid().as_raw(),
            user: "node-agentd (enforce)".into(),
        };
        match self.apply(&caller, OwnedScope::Items(go.clone())).await {
            Ok(outcome) => {
                round.reapplied = outcome.plan.changes.iter().map(|c| c.key.clone()).collect();
                log::warn!(
                    "enforce: re-applied {} change(s) for drifted {}",
                    round.reapplied.len(),
                    go.join(", ")
                );
            }
            Err(e) => {
                log::error!("enforce: re-apply of {} failed: {e}", go.join(", "));
                round.error = Some(e.to_string());
            }
        }
        Some(round)
    }

    /// The plan for the active profile (nothing changes).
    pub async fn plan(&self, scope: OwnedScope) -> Result<Plan, DaemonError> {
        let active = self.active();
        let units = self.observe_units(&active.profile, false).await;
        let host = self.env.host.clone();
        tokio::task::spawn_blocking(move || {
            apply::plan_scope(&host, &active.profile, scope.as_scope(), units.as_ref()).0
        })
        .await
        .map_err(|e| DaemonError::Internal(format!("plan task failed: {e}")))
    }

    /// Applies the active profile (within `scope`) as `caller`: the one writer.
    pub async fn apply(
        &self,
        caller: &Caller,
        scope: OwnedScope,
    ) -> Result<ApplyOutcome, DaemonError> {
        let _writer = self.writer.lock().await;
        let active = self.active();
        let units = self.observe_units(&active.profile, true).await;
        let units_checked = units.is_some();
        let env = self.env.clone();
        let caller = caller.clone();
        let handle = tokio::runtime::Handle::current();
        let outcome = tokio::task::spawn_blocking(move || {
            with_session(&env, &handle, caller, units, |s| {
                apply::apply_checked(
                    s,
                    &active.profile,
                    scope.as_scope(),
                    &super::privileges::check_plan,
                )
            })
        })
        .await;
        // Drop-ins and a reload on another connection, whose signals may not have reached the
        // cache's yet, whatever the outcome.
        self.units.lock().await.invalidate();
        let mut outcome =
            outcome.map_err(|e| DaemonError::Internal(format!("apply task failed: {e}")))??;
        // The host changed: the next verify happens now rather than at the next tick. With
        // units checked it is also the apply's report: the session's own verify saw the units
        // as they were before the reload (agentctl asks the bus again likewise).
        if let Ok(verified) = self.verify_now().await
            && units_checked
        {
            outcome.after = (*verified.report).clone();
        }
        Ok(outcome)
    }

    pub async fn rollback(
        &self,
        caller: &Caller,
        force: bool,
    ) -> Result<RollbackOutcome, DaemonError> {
        let _writer = self.writer.lock().await;
        // Refused before anything is restored when an entry needs what this daemon dropped.
        let journal = self.env.state.load()?;
        super::privileges::check_targets(
            journal
                .baseline
                .iter()
                .map(|e| (e.class.as_str(), e.key.as_str(), &e.target)),
        )
        .map_err(|e| DaemonError::Apply(ApplyError::Refused(e)))?;
        let env = self.env.clone();
        let caller = caller.clone();
        let handle = tokio::runtime::Handle::current();
        let outcome = tokio::task::spawn_blocking(move || {
            with_session(&env, &handle, caller, None, |s| apply::rollback(s, force))
        })
        .await;
        self.units.lock().await.invalidate();
        let outcome =
            outcome.map_err(|e| DaemonError::Internal(format!("rollback task failed: {e}")))??;
        let _ = self.verify_now().await;
        Ok(outcome)
    }
}

/// A [`Scope`] that owns its keys, to cross into a blocking task.
#[derive(Debug, Clone)]
pub enum OwnedScope {
    All,
    Classes(Vec<Class>),
    Items(Vec<String>),
}

impl OwnedScope {
    pub fn as_scope(&self) -> Scope<'_> {
        match self {
            OwnedScope::All => Scope::All,
            OwnedScope::Classes(c) => Scope::Classes(c),
            OwnedScope::Items(k) => Scope::Items(k),
        }
    }
}

impl Scope<'_> {
    pub fn into_owned(self) -> OwnedScope {
        match self {
            Scope::All => OwnedScope::All,
            Scope::Classes(c) => OwnedScope::Classes(c.to_vec()),
            Scope::Items(k) => OwnedScope::Items(k.to_vec()),
        }
    }
}

/// An apply/rollback session in a blocking task: real system calls on the running machine,
/// systemd over the bus through the daemon's runtime.
fn with_session<T>(
    env: &Env,
    handle: &tokio::runtime::Handle,
    caller: Caller,
    units: Option<UnitsObserved>,
    f: impl FnOnce(&mut Session<'_>) -> T,
) -> T {
    let mut system: Box<dyn SystemActions> = if env.host.is_live() {
        Box::new(RealSystem)
    } else {
        Box::new(NoSystem {
            why: format!(
                "system calls act on the running machine, not on the host root {}",
                env.host.root().display()
            ),
        })
    };
    let bus = env.bus.clone();
    let mut systemd = move |op: SystemdOp<'_>| -> Result<(), String> {
        handle.block_on(async {
            let systemd = Systemd::connect(&bus).await.map_err(|e| e.to_string())?;
            match op {
                SystemdOp::Reload => systemd.reload().await,
                SystemdOp::TryRestart(unit) => systemd.try_restart(unit).await,
            }
        })
    };
    let audit = Audit::new(Some(env.state.path()));
    f(&mut Session {
        host: &env.host,
        state: &env.state,
        system: system.as_mut(),
        audit: &audit,
        caller,
        units,
        systemd: Some(&mut systemd),
    })
}

/// One drift transition to journald (structured fields) or stderr.
fn log_transition(e: &DriftEvent) {
    let i = &e.item;
    let actual = i.actual.as_deref().unwrap_or("-");
    let reason = i.reason.as_deref().unwrap_or("");
    let level = match e.transition {
        drift::Transition::Resolved => log::Level::Info,
        _ => log::Level::Warn,
    };
    log::log!(
        level,
        class = i.class.as_str(),
        key = i.key.as_str(),
        expected = i.expected.as_str(),
        actual = actual,
        status = i.status.as_str(),
        transition = e.transition.as_str();
        "drift {}: {} {}: expected {}, actual {actual} ({}){}{reason}",
        e.transition.as_str(),
        i.class.as_str(),
        i.key,
        i.expected,
        i.status.as_str(),
        if reason.is_empty() { "" } else { ": " },
    );
}
