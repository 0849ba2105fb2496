//! `agentctl health`: the host health checks with the monitoring-plugin exit codes (0 ok,
//! 1 warn, 2 crit, 3 unknown), through node-agentd's GetHealth when it runs (or `--remote`),
//! else run here. Every error of this command exits 3 (unknown), as a plugin's must: a broken
//! settings file is not a critical host.

use std::io::Write;

use node_agent_proto::v1 as pb;

use super::daemon::connect;
use super::{Cli, CliError, Context, Exit, Output, block_on, json, load_settings};
use crate::daemon::convert;
use crate::health::{self, HealthReport, Status};
use crate::profile;

/// The plugin code as agentctl's exit (the numbers coincide: 0, 1, 2, 3).
fn plugin_exit(s: Status) -> Exit {
    match s {
        Status::Ok => Exit::Ok,
        Status::Warn => Exit::Drift,
        Status::Crit => Exit::Invalid,
        Status::Unknown => Exit::CannotRun,
    }
}

/// `agentctl health`.
pub(super) fn run(
    cli: &Cli,
    ctx: &Context,
    local: bool,
    profile: Option<&str>,
    out: &mut dyn Write,
    notes: &mut dyn Write,
) -> Result<Exit, CliError> {
    let unknown = |e: CliError| CliError {
        code: Exit::CannotRun,
        error: e.error,
    };
    let report = report(cli, ctx, local, profile, notes).map_err(unknown)?;
    print(cli, &report, out).map_err(unknown)?;
    Ok(plugin_exit(report.status))
}

fn report(
    cli: &Cli,
    ctx: &Context,
    local: bool,
    profile: Option<&str>,
    notes: &mut dyn Write,
) -> Result<HealthReport, CliError> {
    let invalid = |m: &str| CliError {
        code: Exit::Invalid,
        error: anyhow::anyhow!(m.to_owned()),
    };
    if cli.remote.is_some() && (local || profile.is_some()) {
        return Err(invalid(
            "--local and --profile run the checks on this host; --remote asks that agent: use \
             one of them",
        ));
    }
    if !local && profile.is_none() {
        let answer = block_on(async {
            let Some(mut c) = connect(cli).await? else {
                return Ok(None);
            };
            let r = c
                .get_health(pb::GetHealthRequest {})
                .await
                .map_err(|s| CliError {
                    code: Exit::CannotRun,
                    error: anyhow::anyhow!(
                        "health through node-agentd: {} ({:?})",
                        s.message(),
                        s.code()
                    ),
                })?;
            Ok(Some(convert::health_from_proto(r.get_ref())))
        })?;
        if let Some(report) = answer {
            return Ok(report);
        }
        writeln!(
            notes,
            "agentctl: note: node-agentd is not running; running the health checks locally"
        )?;
    }
    local_report(cli, ctx, profile, notes)
}

/// The checks on this host: drift from a local verify of `--profile` or agent.profile (no
/// drift check when neither is set).
fn local_report(
    cli: &Cli,
    ctx: &Context,
    profile: Option<&str>,
    notes: &mut dyn Write,
) -> Result<HealthReport, CliError> {
    let settings = load_settings(cli)?;
    let spec = profile
        .map(str::to_owned)
        .or_else(|| settings.agent.profile.as_ref().map(|p| p.to_string()));
    let profile = match &spec {
        Some(s) => Some(profile::load(s, &ctx.search)?),
        None => {
            writeln!(
                notes,
                "agentctl: note: no --profile and no agent.profile: no drift check"
            )?;
            None
        }
    };
    let isolation = profile.as_ref().and_then(|p| p.settings.isolation.as_ref());
    let drift = match &profile {
        Some(p) => Some(Ok(super::verify_here(cli, ctx, p)?.summary)),
        None => None,
    };
    block_on(async {
        let inputs =
            health::gather_inputs(&ctx.host, &ctx.bus, isolation, &settings.units.order, drift)
                .await;
        Ok(health::run(&ctx.host, &settings.health.checks(), &inputs).await)
    })
}

fn print(cli: &Cli, report: &HealthReport, out: &mut dyn Write) -> Result<(), CliError> {
    match cli.output {
        Output::Json => json(out, report)?,
        Output::Table => write!(out, "{}", table(report))?,
    }
    Ok(())
}

/// A plugin's first line (`HEALTH CRIT: …`), then one row per check.
pub fn table(report: &HealthReport) -> String {
    let mut s = String::new();
    let bad: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| c.status != Status::Ok)
        .map(|c| c.name.as_str())
        .collect();
    let upper = report.status.as_str().to_uppercase();
    if bad.is_empty() {
        s.push_str(&format!(
            "HEALTH {upper}: {} checks ok\n",
            report.checks.len()
        ));
    } else {
        s.push_str(&format!("HEALTH {upper}: {}\n", bad.join(", ")));
    }
    let w = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    s.push_str(&format!(
        "{:<7}  {:<w$}  {:>12}  MESSAGE\n",
        "STATUS", "CHECK", "VALUE"
    ));
    for c in &report.checks {
        let value = c.value_text();
        s.push_str(&format!(
            "{:<7}  {:<w$}  {:>12}  {}\n",
            c.status.as_str(),
            c.name,
            if value.is_empty() { "-" } else { &value },
            c.message
        ));
    }
    s
}
