//! The gRPC service: a thin shell over [`Daemon`] (Kata's pattern). Each method converts the
//! request, calls the daemon, converts the answer; authorization happened in the layer before
//! (`auth`), which left the caller's identity in the request's extensions for the audit.

use std::pin::Pin;
use std::sync::Arc;

use node_agent_proto::v1 as pb;
use node_agent_proto::v1::node_agent_server::NodeAgent;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::auth::Identity;
use super::convert;
use super::service::{Daemon, DaemonError, OwnedScope};
use crate::audit::Caller;
use crate::rollback::apply::ApplyError;
use crate::rollback::journal::StateError;
use crate::units::{self, JobOp, Systemd, UnitManager, UnitsError};

/// The service handed to tonic; cheap to clone.
#[derive(Clone)]
pub struct Service {
    pub daemon: Arc<Daemon>,
}

/// The audit's caller for a request: the Unix peer's uid, or the certificate's CN (the change
/// then runs as the daemon's own uid).
fn caller<T>(req: &Request<T>) -> Caller {
    match req.extensions().get::<Identity>() {
        Some(Identity::Unix { uid, user, .. }) => Caller {
            uid: *uid,
            user: user.clone().unwrap_or_else(|| uid.to_string()),
        },
        Some(id @ Identity::Cert { .. }) => Caller {
            uid: nix::unistd::getuid().as_raw(),
            user: id.to_string(),
        },
        // The layer always sets it; a request without one is the daemon's own.
        None => Caller {
            uid: nix::unistd::getuid().as_raw(),
            user: "node-agentd".into(),
        },
    }
}

/// The status code an operation's failure maps to (docs/API.md, "Errors").
fn status_of(e: DaemonError) -> Status {
    let msg = e.to_string();
    match e {
        DaemonError::State(StateError::Locked { .. })
        | DaemonError::Apply(ApplyError::State(StateError::Locked { .. })) => {
            Status::unavailable(msg)
        }
        DaemonError::Apply(ApplyError::Failed(_)) => Status::aborted(msg),
        DaemonError::Apply(ApplyError::Refused(_)) => Status::failed_precondition(msg),
        DaemonError::Settings(_) | DaemonError::NoProfile { .. } | DaemonError::Profile(_) => {
            Status::failed_precondition(msg)
        }
        _ => Status::internal(msg),
    }
}

fn units_status(e: UnitsError) -> Status {
    match e {
        UnitsError::NoSuchUnit { .. } | UnitsError::NotManaged { .. } => {
            Status::invalid_argument(e.to_string())
        }
        UnitsError::Connect { .. } | UnitsError::Bus { .. } => Status::unavailable(e.to_string()),
    }
}

type DriftStream = Pin<Box<dyn Stream<Item = Result<pb::DriftEvent, Status>> + Send>>;

#[tonic::async_trait]
impl NodeAgent for Service {
    async fn get_status(
        &self,
        _req: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let d = &self.daemon;
        let active = d.active();
        let settings = d.settings();
        let last = d.last();
        let pause = d.pause();
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Response::new(pb::GetStatusResponse {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            api_version: node_agent_proto::API_VERSION.into(),
            api_minor: node_agent_proto::API_MINOR,
            host: d.env.host.hostname(),
            kernel_release: release,
            profile: Some(pb::ProfileRef {
                name: active.profile.name.clone(),
                path: active.profile.source.display().to_string(),
            }),
            profile_sha256: active.hash.clone(),
            mode: pb::Mode::from(settings.agent.mode) as i32,
            enforcement_paused_until: pause
                .as_ref()
                .map(|p| convert::timestamp_from_secs(p.until)),
            enforcement_paused_by: pause.map(|p| p.by).unwrap_or_default(),
            last_verify: last.as_ref().map(|l| convert::timestamp_from_secs(l.at)),
            summary: last.as_ref().map(|l| (&l.report.summary).into()),
            interrupted_apply: last
                .as_ref()
                .and_then(|l| l.report.interrupted_apply.as_ref())
                .map(Into::into),
        }))
    }

    async fn verify(
        &self,
        _req: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let v = self.bounded(self.daemon.verify_now()).await?;
        Ok(Response::new(pb::VerifyResponse {
            report: Some(v.report.as_ref().into()),
        }))
    }

    type WatchDriftStream = DriftStream;

    async fn watch_drift(
        &self,
        req: Request<pb::WatchDriftRequest>,
    ) -> Result<Response<Self::WatchDriftStream>, Status> {
        // Subscribe before reading the current state, so nothing falls in between.
        let rx = self.daemon.subscribe();
        let initial: Vec<pb::DriftEvent> = if req.get_ref().initial_state {
            self.daemon
                .last()
                .map(|l| {
                    super::drift::transitions(&[], &l.report.items, l.at)
                        .iter()
                        .map(Into::into)
                        .collect()
                })
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let stream = drift_stream(initial, rx, self.daemon.closing());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn plan(
        &self,
        req: Request<pb::PlanRequest>,
    ) -> Result<Response<pb::PlanResponse>, Status> {
        let scope = scope_of(&req.get_ref().classes)?;
        let plan = self.bounded(self.daemon.plan(scope)).await?;
        Ok(Response::new(pb::PlanResponse {
            plan: Some((&plan).into()),
        }))
    }

    async fn apply(
        &self,
        req: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let scope = scope_of(&req.get_ref().classes)?;
        if req.get_ref().dry_run {
            let plan = self.daemon.plan(scope).await.map_err(status_of)?;
            return Ok(Response::new(convert::dry_run_response(&plan)));
        }
        let caller = caller(&req);
        let result = self.daemon.apply(&caller, scope.clone()).await;
        // One record per call, whatever it changed (each change has its own record too).
        self.daemon.audit(
            &caller,
            &format!(
                "Apply ({scope:?}) through the API: {}",
                match &result {
                    Ok(o) => format!(
                        "{} change(s), {} refused",
                        o.plan.changes.len() - o.refused.len(),
                        o.refused.len()
                    ),
                    Err(e) => format!("failed: {e}"),
                }
            ),
            &[("NODE_AGENT_ACTION", "api-apply")],
        );
        let outcome = result.map_err(status_of)?;
        Ok(Response::new((&outcome).into()))
    }

    async fn rollback(
        &self,
        req: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::RollbackResponse>, Status> {
        let caller = caller(&req);
        let force = req.get_ref().force;
        let result = self.daemon.rollback(&caller, force).await;
        self.daemon.audit(
            &caller,
            &format!(
                "Rollback (force {force}) through the API: {}",
                match &result {
                    Ok(o) => format!(
                        "{} restored, {} left alone, {} failed",
                        o.restored.len(),
                        o.left_alone.len(),
                        o.failed.len()
                    ),
                    Err(e) => format!("failed: {e}"),
                }
            ),
            &[("NODE_AGENT_ACTION", "api-rollback")],
        );
        let outcome = result.map_err(status_of)?;
        Ok(Response::new((&outcome).into()))
    }

    async fn list_units(
        &self,
        _req: Request<pb::ListUnitsRequest>,
    ) -> Result<Response<pb::ListUnitsResponse>, Status> {
        let settings = self.daemon.settings();
        let systemd = Systemd::connect(&self.daemon.env.bus)
            .await
            .map_err(units_status)?;
        let statuses = units::status_all(&systemd, &settings.units.order)
            .await
            .map_err(units_status)?;
        Ok(Response::new(pb::ListUnitsResponse {
            units: statuses.iter().map(Into::into).collect(),
        }))
    }

    async fn control_unit(
        &self,
        req: Request<pb::ControlUnitRequest>,
    ) -> Result<Response<pb::ControlUnitResponse>, Status> {
        let settings = self.daemon.settings();
        let units = &settings.units;
        let unit = convert::managed_unit(units, &req.get_ref().unit)?;
        let action = convert::unit_action_from_proto(req.get_ref().action)?;
        let caller = caller(&req);
        let systemd = Systemd::connect(&self.daemon.env.bus)
            .await
            .map_err(units_status)?;
        let step = match action {
            convert::UnitAction::Job(op) => {
                let deadline = match op {
                    JobOp::Stop => units.stop_deadline(&unit),
                    _ => units.job_timeout.0,
                };
                let step = units::job_step(&systemd, op, &unit, deadline)
                    .await
                    .map_err(units_status)?;
                self.daemon.audit(
                    &caller,
                    &format!("unit {unit}: {} -> {}", op.as_str(), step.result.as_str()),
                    &[
                        ("NODE_AGENT_ACTION", "unit-control"),
                        ("NODE_AGENT_UNIT", unit.as_str()),
                    ],
                );
                Some((&step).into())
            }
            convert::UnitAction::Enable | convert::UnitAction::Disable => {
                let enable = action == convert::UnitAction::Enable;
                let result = systemd.set_enabled(&unit, enable).await;
                self.daemon.audit(
                    &caller,
                    &format!(
                        "unit {unit}: {}: {}",
                        if enable { "enable" } else { "disable" },
                        result
                            .as_ref()
                            .map_or_else(|e| e.to_string(), |_| "done".into())
                    ),
                    &[
                        ("NODE_AGENT_ACTION", "unit-control"),
                        ("NODE_AGENT_UNIT", unit.as_str()),
                    ],
                );
                result.map_err(units_status)?;
                None
            }
        };
        let status = systemd.status(&unit).await.map_err(units_status)?;
        Ok(Response::new(pb::ControlUnitResponse {
            step,
            status: Some((&status).into()),
        }))
    }

    async fn platform_stop(
        &self,
        req: Request<pb::PlatformStopRequest>,
    ) -> Result<Response<pb::PlatformStopResponse>, Status> {
        let report = self.platform(&caller(&req), JobOp::Stop).await?;
        Ok(Response::new(pb::PlatformStopResponse {
            report: Some(report),
        }))
    }

    async fn platform_start(
        &self,
        req: Request<pb::PlatformStartRequest>,
    ) -> Result<Response<pb::PlatformStartResponse>, Status> {
        let report = self.platform(&caller(&req), JobOp::Start).await?;
        Ok(Response::new(pb::PlatformStartResponse {
            report: Some(report),
        }))
    }

    async fn get_health(
        &self,
        _req: Request<pb::GetHealthRequest>,
    ) -> Result<Response<pb::GetHealthResponse>, Status> {
        // A fresh run (about the CPU sample interval, at most the TCP timeout more), also
        // kept for the metrics.
        let run = self
            .bounded(async { Ok(self.daemon.health_now().await) })
            .await?;
        Ok(Response::new((&run.report).into()))
    }

    async fn enforce_pause(
        &self,
        req: Request<pb::EnforcePauseRequest>,
    ) -> Result<Response<pb::EnforcePauseResponse>, Status> {
        let d = convert::pause_duration(req.get_ref().duration_seconds)?;
        let pause = self
            .daemon
            .pause_enforcement(&caller(&req), d, &req.get_ref().reason)
            .map_err(status_of)?;
        Ok(Response::new(pb::EnforcePauseResponse {
            paused_until: Some(convert::timestamp_from_secs(pause.until)),
        }))
    }

    async fn enforce_resume(
        &self,
        req: Request<pb::EnforceResumeRequest>,
    ) -> Result<Response<pb::EnforceResumeResponse>, Status> {
        let was_paused = self
            .daemon
            .resume_enforcement(&caller(&req))
            .map_err(status_of)?;
        Ok(Response::new(pb::EnforceResumeResponse { was_paused }))
    }
}

impl Service {
    /// A read bounded by `rpc.request_timeout` (mutations run to their own deadlines: a timeout
    /// answered while an apply goes on would mislead the caller).
    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, DaemonError>>,
    ) -> Result<T, Status> {
        let limit = self.daemon.settings().rpc.request_timeout;
        match tokio::time::timeout(limit.0, f).await {
            Ok(r) => r.map_err(status_of),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer within rpc.request_timeout ({limit})"
            ))),
        }
    }

    async fn platform(&self, caller: &Caller, op: JobOp) -> Result<pb::PlatformReport, Status> {
        let settings = self.daemon.settings();
        let systemd = Systemd::connect(&self.daemon.env.bus)
            .await
            .map_err(units_status)?;
        let report = units::platform(&systemd, &settings.units, op, |_| {})
            .await
            .map_err(units_status)?;
        self.daemon.audit(
            caller,
            &format!(
                "platform {}: {}",
                op.as_str(),
                report
                    .failed
                    .as_ref()
                    .map_or("all units done".into(), |u| format!("stopped at {u}"))
            ),
            &[("NODE_AGENT_ACTION", "platform")],
        );
        Ok((&report).into())
    }
}

fn scope_of(classes: &[i32]) -> Result<OwnedScope, Status> {
    Ok(match convert::classes_from_proto(classes)? {
        None => OwnedScope::All,
        Some(c) => OwnedScope::Classes(c),
    })
}

/// The initial state, then every drift event as it happens. A subscriber too slow to keep up
/// gets RESOURCE_EXHAUSTED and the stream ends: it must resubscribe rather than miss events.
/// The stream also ends (OK) when the daemon shuts down, so a stop does not wait for its
/// subscribers to hang up.
fn drift_stream(
    initial: Vec<pb::DriftEvent>,
    rx: tokio::sync::broadcast::Receiver<super::drift::DriftEvent>,
    closing: tokio::sync::watch::Receiver<bool>,
) -> impl Stream<Item = Result<pb::DriftEvent, Status>> + Send {
    use tokio::sync::broadcast::error::RecvError;
    let first = tokio_stream::iter(initial.into_iter().map(Ok));
    let rest = futures_util::stream::unfold(Some((rx, closing)), |state| async move {
        let (mut rx, mut closing) = state?;
        let next = tokio::select! {
            r = rx.recv() => r,
            _ = closing.wait_for(|c| *c) => return None,
        };
        match next {
            Ok(e) => Some((Ok((&e).into()), Some((rx, closing)))),
            Err(RecvError::Lagged(n)) => Some((
                Err(Status::resource_exhausted(format!(
                    "this subscriber fell {n} drift events behind; subscribe again (with \
                     initial_state) to resynchronise"
                ))),
                None,
            )),
            Err(RecvError::Closed) => None,
        }
    });
    tokio_stream::StreamExt::chain(first, rest)
}
