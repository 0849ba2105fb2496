//! The commands that go through node-agentd: over its socket when it runs (it is the host's
//! one writer then), or to a remote agent with `--remote` over mutual TLS.

use std::io::Write;

use node_agent_proto::v1 as pb;

use super::{
    Cli, CliError, DaemonProfileArg, EnforceCmd, Exit, Output, PlatformCmd, UnitsCmd, block_on,
    json, load_settings, print_apply, print_platform, print_unit_statuses, step_line, verdict,
};
use crate::client::{self, ClientError};
use crate::daemon::convert;
use crate::rollback::apply::RollbackOutcome;
use crate::verify::Report;

/// Whether the daemon did the work, or the caller should do it locally with this profile.
pub(super) enum Handled {
    Done(Exit),
    Local(String),
}

fn invalid(msg: impl Into<String>) -> CliError {
    CliError {
        code: Exit::Invalid,
        error: anyhow::anyhow!(msg.into()),
    }
}

fn cannot_run(e: impl Into<anyhow::Error>) -> CliError {
    CliError {
        code: Exit::CannotRun,
        error: e.into(),
    }
}

/// A failed call: the daemon's message, with an exit code by status (docs/API.md, "Errors").
fn rpc_error(what: &str, s: tonic::Status) -> CliError {
    use tonic::Code;
    let code = match s.code() {
        Code::InvalidArgument | Code::OutOfRange => Exit::Invalid,
        Code::Aborted | Code::Internal => Exit::Failed,
        _ => Exit::CannotRun,
    };
    CliError {
        code,
        error: anyhow::anyhow!("{what}: {} ({:?})", s.message(), s.code()),
    }
}

/// Where the daemon is: `--remote`, or the socket of the settings.
fn target(cli: &Cli) -> Result<client::Daemon, CliError> {
    match &cli.remote {
        Some(addr) => {
            let (Some(cert), Some(key), Some(ca)) = (&cli.cert, &cli.key, &cli.ca) else {
                return Err(invalid(
                    "--remote needs --cert, --key and --ca (agentctl certs generate makes a test set)",
                ));
            };
            let host = client::host_of(addr).map_err(|e| invalid(e.to_string()))?;
            Ok(client::Daemon::Remote {
                addr: addr.clone(),
                server_name: cli.server_name.clone().unwrap_or(host),
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            })
        }
        None => {
            if cli.cert.is_some() || cli.key.is_some() || cli.ca.is_some() {
                return Err(invalid("--cert, --key and --ca go with --remote"));
            }
            Ok(client::Daemon::Socket(load_settings(cli)?.listen.socket))
        }
    }
}

/// Connects; `Ok(None)` when the local daemon is not running (never for --remote).
pub(super) async fn connect(
    cli: &Cli,
) -> Result<Option<pb::node_agent_client::NodeAgentClient<tonic::transport::Channel>>, CliError> {
    let daemon = target(cli)?;
    match client::connect(&daemon).await {
        Ok(c) => Ok(Some(c)),
        Err(ClientError::NotRunning { .. }) if cli.remote.is_none() => Ok(None),
        Err(e @ ClientError::Address { .. }) => Err(invalid(e.to_string())),
        Err(e) => Err(cannot_run(e)),
    }
}

/// The profile for local work without `--profile`: the settings' agent.profile.
fn configured_profile(cli: &Cli) -> Result<String, CliError> {
    let settings = load_settings(cli)?;
    settings
        .agent
        .profile
        .map(|p| p.to_string())
        .ok_or_else(|| {
            invalid(format!(
                "no --profile given, node-agentd is not running, and no agent.profile is set in \
                 {}",
                cli.settings
                    .clone()
                    .unwrap_or_else(crate::settings::Settings::path_from_env)
                    .display()
            ))
        })
}

fn print_report(cli: &Cli, report: &Report, out: &mut dyn Write) -> Result<(), CliError> {
    match cli.output {
        Output::Json => writeln!(out, "{}", report.to_json())?,
        Output::Table => write!(out, "{}", report.to_table())?,
    }
    Ok(())
}

pub(super) fn verify(
    cli: &Cli,
    profile: &DaemonProfileArg,
    strict: bool,
    out: &mut dyn Write,
    notes: &mut dyn Write,
) -> Result<Handled, CliError> {
    if let Some(p) = &profile.profile {
        if cli.remote.is_some() {
            return Err(invalid(
                "--profile verifies this host locally; --remote asks that agent to verify its \
                 own profile: use one of them",
            ));
        }
        return Ok(Handled::Local(p.clone()));
    }
    let report = block_on(async {
        let Some(mut c) = connect(cli).await? else {
            return Ok(None);
        };
        let r = c
            .verify(pb::VerifyRequest {})
            .await
            .map_err(|s| rpc_error("verify through node-agentd", s))?;
        Ok(Some(Report::from(
            r.into_inner().report.unwrap_or_default(),
        )))
    })?;
    match report {
        Some(report) => {
            print_report(cli, &report, out)?;
            Ok(Handled::Done(verdict(&report, strict)))
        }
        None => {
            let spec = configured_profile(cli)?;
            writeln!(
                notes,
                "agentctl: note: node-agentd is not running; verifying profile {spec} locally"
            )?;
            Ok(Handled::Local(spec))
        }
    }
}

pub(super) fn apply(
    cli: &Cli,
    profile: &DaemonProfileArg,
    dry_run: bool,
    local: bool,
    out: &mut dyn Write,
    notes: &mut dyn Write,
) -> Result<Handled, CliError> {
    if local {
        if cli.remote.is_some() {
            return Err(invalid("--local and --remote exclude each other"));
        }
        return Ok(Handled::Local(match &profile.profile {
            Some(p) => p.clone(),
            None => configured_profile(cli)?,
        }));
    }
    let answer = block_on(async {
        let Some(mut c) = connect(cli).await? else {
            return Ok(None);
        };
        if profile.profile.is_some() {
            return Err(CliError {
                code: Exit::CannotRun,
                error: anyhow::anyhow!(
                    "node-agentd is running and is this host's one writer: run `agentctl tune \
                     apply` without --profile to apply its profile (agent.profile), or change \
                     agent.profile and reload it (systemctl reload node-agentd)"
                ),
            });
        }
        // A dry run is a Plan: observers may ask for it (Apply needs the operator role).
        if dry_run {
            let r = c
                .plan(pb::PlanRequest {
                    classes: Vec::new(),
                })
                .await
                .map_err(|s| rpc_error("plan through node-agentd", s))?;
            return Ok(Some(pb::ApplyResponse {
                plan: r.into_inner().plan,
                ..Default::default()
            }));
        }
        let r = c
            .apply(pb::ApplyRequest {
                dry_run,
                classes: Vec::new(),
            })
            .await
            .map_err(|s| rpc_error("apply through node-agentd", s))?;
        Ok(Some(r.into_inner()))
    })?;
    let Some(answer) = answer else {
        let spec = match &profile.profile {
            Some(p) => p.clone(),
            None => {
                let spec = configured_profile(cli)?;
                writeln!(
                    notes,
                    "agentctl: note: node-agentd is not running; applying profile {spec} locally"
                )?;
                spec
            }
        };
        return Ok(Handled::Local(spec));
    };
    let outcome = convert::apply_outcome_from_proto(answer);
    if dry_run {
        match cli.output {
            Output::Json => writeln!(out, "{}", outcome.plan.to_json())?,
            Output::Table => write!(out, "{}", outcome.plan.to_table())?,
        }
        return Ok(Handled::Done(Exit::Ok));
    }
    print_apply(cli.output, &outcome, out).map(Handled::Done)
}

/// Rollback through the daemon when it runs; `None`: do it locally.
pub(super) fn rollback(
    cli: &Cli,
    force: bool,
    notes: &mut dyn Write,
) -> Result<Option<RollbackOutcome>, CliError> {
    let answer = block_on(async {
        let Some(mut c) = connect(cli).await? else {
            return Ok(None);
        };
        let r = c
            .rollback(pb::RollbackRequest { force })
            .await
            .map_err(|s| rpc_error("rollback through node-agentd", s))?;
        Ok(Some(r.into_inner()))
    })?;
    if answer.is_none() {
        writeln!(
            notes,
            "agentctl: note: node-agentd is not running; rolling back locally"
        )?;
    }
    Ok(answer.map(convert::rollback_outcome_from_proto))
}

/// `agentctl daemon status`.
pub(super) fn status(cli: &Cli, out: &mut dyn Write) -> Result<Exit, CliError> {
    let s = block_on(async {
        let Some(mut c) = connect(cli).await? else {
            return Err(cannot_run(anyhow::anyhow!(
                "node-agentd is not running (no socket at {})",
                target(cli)?
            )));
        };
        c.get_status(pb::GetStatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| rpc_error("status of node-agentd", s))
    })?;
    let summary = s.summary.unwrap_or_default();
    let findings = summary.drift + summary.pending_reboot + summary.not_persistent + summary.error;
    match cli.output {
        Output::Json => json(out, &convert::status_json(&s))?,
        Output::Table => {
            let profile = s.profile.clone().unwrap_or_default();
            let mode = pb::Mode::try_from(s.mode)
                .map(|m| m.as_str_name().trim_start_matches("MODE_").to_lowercase())
                .unwrap_or_else(|_| format!("unknown ({})", s.mode));
            writeln!(out, "host      {} (kernel {})", s.host, s.kernel_release)?;
            writeln!(
                out,
                "agent     {} (API {}.{})",
                s.agent_version, s.api_version, s.api_minor
            )?;
            writeln!(
                out,
                "profile   {} ({}), sha256 {}",
                profile.name, profile.path, s.profile_sha256
            )?;
            writeln!(out, "mode      {mode}")?;
            if let Some(until) = &s.enforcement_paused_until {
                writeln!(
                    out,
                    "paused    until {} by {}",
                    crate::verify::format_time(convert::secs_from_timestamp(Some(until))),
                    s.enforcement_paused_by
                )?;
            }
            match &s.last_verify {
                Some(t) => writeln!(
                    out,
                    "verified  {}: {} pass, {} drift, {} pending-reboot, {} not-persistent, {} \
                     unsupported, {} error",
                    crate::verify::format_time(convert::secs_from_timestamp(Some(t))),
                    summary.pass,
                    summary.drift,
                    summary.pending_reboot,
                    summary.not_persistent,
                    summary.unsupported,
                    summary.error
                )?,
                None => writeln!(out, "verified  not yet")?,
            }
            if let Some(i) = &s.interrupted_apply {
                writeln!(
                    out,
                    "WARNING   an apply of {} by {} was interrupted ({} of {} steps)",
                    i.profile, i.user, i.steps_done, i.steps_total
                )?;
            }
        }
    }
    Ok(
        if findings == 0 && s.interrupted_apply.is_none() && s.last_verify.is_some() {
            Exit::Ok
        } else {
            Exit::Drift
        },
    )
}

/// `agentctl enforce pause|resume`: only through the daemon.
pub(super) fn enforce(cli: &Cli, cmd: &EnforceCmd, out: &mut dyn Write) -> Result<Exit, CliError> {
    block_on(async {
        let Some(mut c) = connect(cli).await? else {
            return Err(cannot_run(anyhow::anyhow!(
                "node-agentd is not running: there is no enforcement to pause or resume"
            )));
        };
        match cmd {
            EnforceCmd::Pause { duration, reason } => {
                let r = c
                    .enforce_pause(pb::EnforcePauseRequest {
                        duration_seconds: duration.0.as_secs(),
                        reason: reason.clone(),
                    })
                    .await
                    .map_err(|s| rpc_error("pause enforcement", s))?
                    .into_inner();
                let until = convert::secs_from_timestamp(r.paused_until.as_ref());
                match cli.output {
                    Output::Json => json(out, &serde_json::json!({ "paused_until": until }))?,
                    Output::Table => writeln!(
                        out,
                        "enforcement paused until {}",
                        crate::verify::format_time(until)
                    )?,
                }
            }
            EnforceCmd::Resume => {
                let r = c
                    .enforce_resume(pb::EnforceResumeRequest {})
                    .await
                    .map_err(|s| rpc_error("resume enforcement", s))?
                    .into_inner();
                match cli.output {
                    Output::Json => json(out, &serde_json::json!({ "was_paused": r.was_paused }))?,
                    Output::Table => writeln!(
                        out,
                        "{}",
                        if r.was_paused {
                            "enforcement resumed"
                        } else {
                            "enforcement was not paused"
                        }
                    )?,
                }
            }
        }
        Ok(Exit::Ok)
    })
}

/// `agentctl --remote … units …`: the remote daemon's managed units (its settings decide which).
pub(super) fn units(cli: &Cli, cmd: &UnitsCmd, out: &mut dyn Write) -> Result<Exit, CliError> {
    let (unit, action) = match cmd {
        UnitsCmd::Status { units } => {
            let all = block_on(async {
                let mut c = connect(cli)
                    .await?
                    .ok_or_else(|| cannot_run(anyhow::anyhow!("no daemon")))?;
                c.list_units(pb::ListUnitsRequest {})
                    .await
                    .map(|r| r.into_inner().units)
                    .map_err(|s| rpc_error("units of the remote node-agentd", s))
            })?;
            let mut statuses: Vec<crate::units::UnitStatus> =
                all.into_iter().map(Into::into).collect();
            if !units.is_empty() {
                let wanted: Vec<String> = units
                    .iter()
                    .map(|u| {
                        convert::unit_name(u)
                            .map(|n| n.to_string())
                            .map_err(|s| invalid(s.message().to_owned()))
                    })
                    .collect::<Result<_, _>>()?;
                if let Some(missing) = wanted
                    .iter()
                    .find(|w| !statuses.iter().any(|s| &s.unit == *w))
                {
                    return Err(invalid(format!(
                        "{missing} is not managed by the remote node-agentd"
                    )));
                }
                statuses.retain(|s| wanted.contains(&s.unit));
            }
            return print_unit_statuses(cli.output, &statuses, out);
        }
        UnitsCmd::Start { unit } => (unit, pb::UnitAction::Start),
        UnitsCmd::Stop { unit } => (unit, pb::UnitAction::Stop),
        UnitsCmd::Restart { unit } => (unit, pb::UnitAction::Restart),
        UnitsCmd::Enable { unit } => (unit, pb::UnitAction::Enable),
        UnitsCmd::Disable { unit } => (unit, pb::UnitAction::Disable),
        UnitsCmd::Watch { .. } => {
            return Err(invalid(
                "units watch follows this host's bus only; run it on the host",
            ));
        }
    };
    let r = block_on(async {
        let mut c = connect(cli)
            .await?
            .ok_or_else(|| cannot_run(anyhow::anyhow!("no daemon")))?;
        c.control_unit(pb::ControlUnitRequest {
            unit: unit.clone(),
            action: action as i32,
        })
        .await
        .map(|r| r.into_inner())
        .map_err(|s| {
            let verb = action
                .as_str_name()
                .trim_start_matches("UNIT_ACTION_")
                .to_lowercase();
            rpc_error(&format!("{verb} {unit} through node-agentd"), s)
        })
    })?;
    match r.step {
        Some(step) => {
            let step = crate::units::Step::from(step);
            match cli.output {
                Output::Json => json(out, &step)?,
                Output::Table => writeln!(out, "{}", step_line(&step))?,
            }
            Ok(if step.succeeded() {
                Exit::Ok
            } else {
                Exit::Failed
            })
        }
        None => {
            let status = crate::units::UnitStatus::from(r.status.unwrap_or_default());
            match cli.output {
                Output::Json => json(
                    out,
                    &serde_json::json!({ "unit": status.unit, "unit_file_state": status.unit_file_state }),
                )?,
                Output::Table => writeln!(out, "{}: {}", status.unit, status.unit_file_state)?,
            }
            Ok(Exit::Ok)
        }
    }
}

/// `agentctl --remote … platform stop|start`: the remote daemon runs the sequence.
pub(super) fn platform(cli: &Cli, cmd: PlatformCmd, out: &mut dyn Write) -> Result<Exit, CliError> {
    let report = block_on(async {
        let mut c = connect(cli)
            .await?
            .ok_or_else(|| cannot_run(anyhow::anyhow!("no daemon")))?;
        let r = match cmd {
            PlatformCmd::Stop => c
                .platform_stop(pb::PlatformStopRequest {})
                .await
                .map(|r| r.into_inner().report),
            PlatformCmd::Start => c
                .platform_start(pb::PlatformStartRequest {})
                .await
                .map(|r| r.into_inner().report),
        };
        r.map_err(|s| rpc_error("platform through node-agentd", s))
    })?;
    let report = crate::units::PlatformReport::from(report.unwrap_or_default());
    if cli.output == Output::Table {
        for step in &report.steps {
            writeln!(out, "{}", step_line(step))?;
        }
    }
    print_platform(cli.output, &report, out)
}
