//! `agentctl`: argument model (clap derive; the doc comments are the help text) and the
//! commands, written against an output stream so tests can run them in-process.

use std::io::Write;

use clap::{Args, Parser, Subcommand, ValueEnum};
use futures_util::StreamExt;

mod daemon;
pub mod fleet;
mod health;

use crate::audit::{Audit, Caller};
use crate::host::HostRoot;
use crate::profile::{self, Profile, ProfileError, SearchPath};
use crate::rollback::apply::{self, ApplyError, RollbackOutcome, Session, SystemdOp};
use crate::rollback::journal::{RunState, StateDir, StateError};
use crate::settings::{Settings, SettingsError};
use crate::system::{NoSystem, RealSystem, SystemActions};
use crate::tuning;
use crate::tuning::units::UnitsObserved;
use crate::units::{self, JobOp, Systemd, UnitManager, UnitsError};
use crate::verify::Report;

/// Exit codes, one table for all of agentctl (docs/OPERATIONS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Success; compliant.
    Ok = 0,
    /// Drift found.
    Drift = 1,
    /// Invalid input: usage, malformed profile or settings.
    Invalid = 2,
    /// Could not run: permission denied, daemon or bus unreachable.
    CannotRun = 3,
    /// The operation failed.
    Failed = 4,
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    pub code: Exit,
    pub error: anyhow::Error,
}

/// A file that could not be read is invalid input (2), unless permission was denied (3).
fn read_error_code(source: &std::io::Error) -> Exit {
    if source.kind() == std::io::ErrorKind::PermissionDenied {
        Exit::CannotRun
    } else {
        Exit::Invalid
    }
}

impl From<ProfileError> for CliError {
    fn from(e: ProfileError) -> Self {
        let code = match &e {
            ProfileError::Read { source, .. } => read_error_code(source),
            _ => Exit::Invalid,
        };
        CliError {
            code,
            error: e.into(),
        }
    }
}

impl From<StateError> for CliError {
    fn from(e: StateError) -> Self {
        CliError {
            code: Exit::CannotRun,
            error: e.into(),
        }
    }
}

impl From<ApplyError> for CliError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::State(e) => e.into(),
            refused @ ApplyError::Refused(_) => CliError {
                code: Exit::CannotRun,
                error: refused.into(),
            },
            failed @ ApplyError::Failed(_) => CliError {
                code: Exit::Failed,
                error: failed.into(),
            },
        }
    }
}

impl From<SettingsError> for CliError {
    fn from(e: SettingsError) -> Self {
        let code = match &e {
            SettingsError::Read { source, .. } => read_error_code(source),
            SettingsError::Invalid { .. } => Exit::Invalid,
        };
        CliError {
            code,
            error: e.into(),
        }
    }
}

impl From<UnitsError> for CliError {
    fn from(e: UnitsError) -> Self {
        let code = match &e {
            UnitsError::NoSuchUnit { .. } | UnitsError::NotManaged { .. } => Exit::Invalid,
            UnitsError::Connect { .. } | UnitsError::Bus { .. } => Exit::CannotRun,
        };
        CliError {
            code,
            error: e.into(),
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError {
            code: Exit::CannotRun,
            error: anyhow::Error::new(e).context("failed to write output"),
        }
    }
}

/// Control node-agent: verify, apply and roll back kernel tuning profiles.
///
/// Exit codes: 0 compliant or success; 1 drift found; 2 invalid input; 3 could not run;
/// 4 the operation failed.
#[derive(Debug, Parser)]
#[command(name = "agentctl", version, max_term_width = 100)]
pub struct Cli {
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// The agent's settings file [default: /etc/node-agent/agent.toml, or NODE_AGENT_SETTINGS].
    #[arg(long, global = true, value_name = "PATH")]
    pub settings: Option<std::path::PathBuf>,
    /// Ask the node-agentd at HOST:PORT over mutual TLS instead of this host's (with --cert,
    /// --key and --ca).
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub remote: Option<String>,
    /// Client certificate (PEM) for --remote and `fleet status --collector`.
    #[arg(long, global = true, value_name = "PATH")]
    pub cert: Option<std::path::PathBuf>,
    /// Client key (PEM) for --remote and `fleet status --collector`.
    #[arg(long, global = true, value_name = "PATH")]
    pub key: Option<std::path::PathBuf>,
    /// CA certificate (PEM) the remote's (or the collector's) server certificate must chain to.
    #[arg(long, global = true, value_name = "PATH")]
    pub ca: Option<std::path::PathBuf>,
    /// The name the remote's certificate carries [default: HOST of --remote or --collector].
    #[arg(long, global = true, value_name = "NAME")]
    pub server_name: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Table,
    /// For machines; reports carry a `schema_version`.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Verify, apply and roll back this host's tuning.
    #[command(subcommand)]
    Tune(Tune),
    /// Validate and list tuning profiles.
    #[command(subcommand)]
    Profile(ProfileCmd),
    /// The managed trading units over D-Bus (the system bus, or DBUS_SYSTEM_BUS_ADDRESS).
    ///
    /// Only the units listed in the settings' [units] order may be controlled. Exit 2 for an
    /// unknown or unmanaged unit, 3 when the bus is unreachable, 4 when a job fails or times out.
    #[command(subcommand)]
    Units(UnitsCmd),
    /// Stop or start the whole trading platform in order.
    ///
    /// Stop runs the settings' order backwards (order intake first), waiting for each unit's
    /// stop job up to its drain deadline; start runs it forwards. Both stop at the first unit
    /// that fails or times out and say which (exit 4).
    #[command(subcommand)]
    Platform(PlatformCmd),
    /// The CPU layout of a profile's [isolation]: boot arguments and stray tasks.
    #[command(subcommand)]
    Isolation(IsolationCmd),
    /// node-agentd, the daemon: its status.
    #[command(subcommand)]
    Daemon(DaemonCmd),
    /// Pause or resume the daemon's enforce mode (so a manual change is not reverted).
    #[command(subcommand)]
    Enforce(EnforceCmd),
    /// Certificates for trying mutual TLS: a test-fleet CA, a server and client certificates.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// The fleet as a node-collector sees it (its gRPC API, mutual TLS).
    #[command(subcommand)]
    Fleet(fleet::FleetCmd),
    /// Host health checks: managed units, disk and inodes, memory, CPU (housekeeping CPUs with
    /// an isolation layout), TCP connect latency to the [health] endpoints, clock
    /// synchronisation, and the profile's drift. Thresholds are the settings' [health].
    ///
    /// Asks node-agentd (or --remote); runs the checks here when no daemon answers. Exits with
    /// the monitoring-plugin codes: 0 ok, 1 warn, 2 crit, 3 unknown — also 3 when the checks
    /// could not run at all (bad settings, daemon refused), never 2.
    Health {
        /// Run the checks on this host even when node-agentd runs.
        #[arg(long)]
        local: bool,
        /// The profile whose drift a local run reports (default: the settings' agent.profile);
        /// implies a local run.
        #[arg(long, value_name = "NAME|PATH")]
        profile: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// Generate a CA, a server certificate and observer/operator client certificates into DIR
    /// (keys 0600), and print the agent.toml settings and agentctl flags that use them.
    ///
    /// For test fleets: production certificates come from the firm's own PKI.
    Generate {
        /// Where to write the PEM files (created 0700 if missing).
        #[arg(long, value_name = "DIR")]
        dir: std::path::PathBuf,
        /// DNS name or IP address of the server (repeatable; the first is also its CN).
        #[arg(long = "server", value_name = "NAME", required = true)]
        server_names: Vec<String>,
        /// Client certificate common name with the observer role (repeatable).
        #[arg(long = "observer", value_name = "CN")]
        observers: Vec<String>,
        /// Client certificate common name with the operator role (repeatable).
        #[arg(long = "operator", value_name = "CN")]
        operators: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = crate::certs::DEFAULT_DAYS)]
        days: u32,
        /// Replace files that exist.
        #[arg(long)]
        overwrite: bool,
        /// The daemon's TCP address, for the printed settings.
        #[arg(long, value_name = "ADDR", default_value = crate::certs::DEFAULT_LISTEN)]
        listen: std::net::SocketAddr,
    },
}

#[derive(Debug, Subcommand)]
pub enum DaemonCmd {
    /// Agent and API version, host, kernel, profile and its hash, mode, pause, last verify and
    /// its drift counts (the daemon's cached result; `tune verify` reads the host afresh).
    ///
    /// Exit 0 when the last verify was compliant, 1 when not, 3 when no daemon answers.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum EnforceCmd {
    /// Stop re-applying drifted items for a while (audited). The pause survives a daemon
    /// restart and ends by itself.
    Pause {
        /// How long: e.g. 30m, 2h (at most 24h).
        #[arg(long = "for", value_name = "DURATION")]
        duration: crate::settings::Timeout,
        /// Why, for the audit record.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// End a pause now (audited).
    Resume,
}

#[derive(Debug, Subcommand)]
pub enum IsolationCmd {
    /// Print the kernel command line the layout needs and how to set it: a GRUB drop-in plus
    /// update-grub on Debian, the grubby command on RHEL. Never reboots.
    ///
    /// With --write, writes the Debian drop-in (/etc/default/grub.d) and runs update-grub when
    /// it is installed, journaled like every apply (`tune rollback` removes it and runs
    /// update-grub again). Exit 0 when the running kernel already has every argument, 1 when a
    /// reboot is needed.
    Bootloader {
        #[command(flatten)]
        profile: ProfileArg,
        /// Write the GRUB drop-in and run update-grub.
        #[arg(long)]
        write: bool,
    },
    /// List every task that may run, or last ran, on an isolated CPU (pid, tid, command, unit,
    /// affinity). The engine units' own tasks are not listed; per-CPU kernel threads that
    /// cannot move are counted apart, as expected. Exit 0 when there is none, 1 otherwise.
    Audit {
        #[command(flatten)]
        profile: ProfileArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum UnitsCmd {
    /// Load, active and sub state, main PID, since, CPU affinity and memory of each managed
    /// unit (or of the units named).
    Status {
        /// Managed units to show; all when none are named.
        units: Vec<String>,
    },
    /// Start a managed unit and wait for its job.
    Start { unit: String },
    /// Stop a managed unit and wait for its job (up to its drain deadline).
    Stop { unit: String },
    /// Restart a managed unit and wait for its job.
    Restart { unit: String },
    /// Enable a managed unit (as systemctl enable, then reload systemd).
    Enable { unit: String },
    /// Disable a managed unit (as systemctl disable, then reload systemd).
    Disable { unit: String },
    /// Print state changes of the managed units as they happen, until interrupted.
    Watch {
        /// Exit after this many changes (for scripts and tests).
        #[arg(long, value_name = "N")]
        count: Option<usize>,
    },
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum PlatformCmd {
    /// Stop the platform: the settings' order backwards, each within its drain deadline.
    Stop,
    /// Start the platform: the settings' order forwards.
    Start,
}

#[derive(Debug, Subcommand)]
pub enum Tune {
    /// Compare this host with a profile, item by item. Read-only.
    ///
    /// Exit 0 when compliant, 1 when any item is drift, pending-reboot, not-persistent or
    /// error (unsupported too with --strict), or when an earlier apply was interrupted.
    ///
    /// Without --profile, node-agentd verifies its own profile (or, when no daemon answers,
    /// agentctl verifies the settings' agent.profile locally and says so on stderr).
    Verify {
        #[command(flatten)]
        profile: DaemonProfileArg,
        /// Count `unsupported` items (knobs this machine lacks) as findings.
        #[arg(long)]
        strict: bool,
    },
    /// Change this host to match a profile, recording every original value first so
    /// `tune rollback` can restore it, then verify.
    ///
    /// Exit 0 when the host is compliant afterwards, 1 when findings remain that apply cannot
    /// fix, 3 when another apply or rollback holds the lock, 4 when a write failed (what this
    /// run had changed is restored).
    ///
    /// Without --profile, node-agentd applies its own profile: it is the host's one writer
    /// while it runs. With --profile, agentctl applies locally, and refuses while the daemon
    /// runs.
    Apply {
        #[command(flatten)]
        profile: DaemonProfileArg,
        /// Print the plan (`class key: current → target`) and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Apply in this process even while node-agentd runs (remounts, which the daemon's
        /// private mount namespace cannot do); the journal lock still allows one writer at a
        /// time.
        #[arg(long)]
        local: bool,
    },
    /// Restore every value the agent changed, newest first, and remove the files it created.
    ///
    /// A value someone else changed after the agent set it is reported and left alone unless
    /// --force. Exit 0 when everything was restored, 1 when values were left alone, 4 when a
    /// restore failed.
    Rollback {
        /// Restore values even where someone else changed them since the agent set them.
        #[arg(long)]
        force: bool,
        /// Roll back in this process even while node-agentd runs (see `tune apply --local`).
        #[arg(long)]
        local: bool,
    },
    /// Which profile is applied, when and by whom, and whether an apply was interrupted.
    Status,
    /// Print the effective profile after merging its includes.
    Show {
        #[command(flatten)]
        profile: ProfileArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProfileCmd {
    /// Validate a profile file and its includes; warn about sysctl keys this kernel lacks.
    Check {
        /// The profile file (or a name on the profile search path).
        file: String,
    },
    /// List the profiles found on the search path (NODE_AGENT_PROFILE_PATH, then
    /// /etc/node-agent/profiles, then /usr/share/node-agent/profiles).
    List,
}

#[derive(Debug, Args)]
pub struct ProfileArg {
    /// Profile name (looked up on the profile search path) or path to a .toml file.
    #[arg(long, short = 'p', value_name = "NAME|PATH")]
    pub profile: String,
}

#[derive(Debug, Args)]
pub struct DaemonProfileArg {
    /// Profile name (looked up on the profile search path) or path to a .toml file; without
    /// it, the daemon's profile.
    #[arg(long, short = 'p', value_name = "NAME|PATH")]
    pub profile: Option<String>,
}

/// What the commands need from the environment, resolved once in `main`.
#[derive(Debug, Clone)]
pub struct Context {
    pub host: HostRoot,
    pub search: SearchPath,
    pub state: StateDir,
    /// The system bus systemd is reached on.
    pub bus: String,
}

impl Context {
    /// `NODE_AGENT_HOST_ROOT`, `NODE_AGENT_PROFILE_PATH`, `NODE_AGENT_STATE_DIR` and
    /// `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn from_env() -> Self {
        Context {
            host: HostRoot::from_env(),
            search: SearchPath::from_env(),
            state: StateDir::from_env(),
            bus: Systemd::address_from_env(),
        }
    }

    /// Swap and remount act on the real machine only; under another host root they are refused.
    fn system(&self) -> Box<dyn SystemActions> {
        if self.host.is_live() {
            Box::new(RealSystem)
        } else {
            Box::new(NoSystem {
                why: format!(
                    "system calls act on the running machine, not on the host root {}",
                    self.host.root().display()
                ),
            })
        }
    }
}

fn json(out: &mut dyn Write, value: &impl serde::Serialize) -> std::io::Result<()> {
    writeln!(
        out,
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    )
}

/// Runs a command: results to `out`, notes for the operator (such as a fallback to local
/// work) to `notes`.
pub fn run(
    cli: &Cli,
    ctx: &Context,
    out: &mut dyn Write,
    notes: &mut dyn Write,
) -> Result<Exit, CliError> {
    match &cli.command {
        Command::Health { local, profile } => {
            health::run(cli, ctx, *local, profile.as_deref(), out, notes)
        }
        Command::Tune(Tune::Verify { profile, strict }) => {
            let spec = match daemon::verify(cli, profile, *strict, out, notes)? {
                daemon::Handled::Done(exit) => return Ok(exit),
                daemon::Handled::Local(spec) => spec,
            };
            let profile = profile::load(&spec, &ctx.search)?;
            let report = verify_here(cli, ctx, &profile)?;
            match cli.output {
                Output::Json => writeln!(out, "{}", report.to_json())?,
                Output::Table => write!(out, "{}", report.to_table())?,
            }
            Ok(verdict(&report, *strict))
        }
        Command::Tune(Tune::Apply {
            profile,
            dry_run,
            local,
        }) => {
            let spec = match daemon::apply(cli, profile, *dry_run, *local, out, notes)? {
                daemon::Handled::Done(exit) => return Ok(exit),
                daemon::Handled::Local(spec) => spec,
            };
            let profile = profile::load(&spec, &ctx.search)?;
            if *dry_run {
                let units = observe_units(cli, ctx, &profile)?;
                let (plan, _) = apply::plan(&ctx.host, &profile, None, units.as_ref());
                match cli.output {
                    Output::Json => writeln!(out, "{}", plan.to_json())?,
                    Output::Table => write!(out, "{}", plan.to_table())?,
                }
                return Ok(Exit::Ok);
            }
            let units = observe_units(cli, ctx, &profile)?;
            run_apply(cli, ctx, &profile, units, out)
        }
        Command::Tune(Tune::Rollback { force, local }) => {
            let answer = if *local {
                None
            } else {
                daemon::rollback(cli, *force, notes)?
            };
            let outcome = match answer {
                Some(outcome) => outcome,
                None => with_session(ctx, None, |s| apply::rollback(s, *force))?,
            };
            match cli.output {
                Output::Json => json(out, &outcome)?,
                Output::Table => write!(out, "{}", rollback_table(&outcome))?,
            }
            Ok(
                if !outcome.failed.is_empty()
                    || outcome.systemd_reload_error.is_some()
                    || !outcome.follow_up_errors.is_empty()
                {
                    Exit::Failed
                } else if !outcome.left_alone.is_empty() {
                    Exit::Drift
                } else {
                    Exit::Ok
                },
            )
        }
        Command::Tune(Tune::Status) => status(cli.output, ctx, out),
        Command::Units(cmd) if cli.remote.is_some() => daemon::units(cli, cmd, out),
        Command::Platform(cmd) if cli.remote.is_some() => daemon::platform(cli, *cmd, out),
        Command::Units(cmd) => block_on(units_cmd(cli, ctx, cmd, out)),
        Command::Platform(cmd) => block_on(platform_cmd(cli, ctx, *cmd, out)),
        Command::Isolation(cmd) => isolation_cmd(cli, ctx, cmd, out),
        Command::Daemon(DaemonCmd::Status) => daemon::status(cli, out),
        Command::Enforce(cmd) => daemon::enforce(cli, cmd, out),
        Command::Fleet(cmd) => fleet::run(cli, cmd, out),
        Command::Certs(CertsCmd::Generate {
            dir,
            server_names,
            observers,
            operators,
            days,
            overwrite,
            listen,
        }) => {
            let mut req = crate::certs::Request::new(dir.clone(), server_names.clone());
            req.observers = observers.clone();
            req.operators = operators.clone();
            req.days = *days;
            req.overwrite = *overwrite;
            let generated = crate::certs::generate(&req).map_err(|e| {
                let code = match e {
                    crate::certs::CertsError::Io { .. } => Exit::CannotRun,
                    _ => Exit::Invalid,
                };
                CliError {
                    code,
                    error: e.into(),
                }
            })?;
            match cli.output {
                Output::Json => json(out, &generated)?,
                Output::Table => write!(out, "{}", generated.summary_for(*listen))?,
            }
            Ok(Exit::Ok)
        }
        Command::Tune(Tune::Show { profile }) => {
            let profile = profile::load(&profile.profile, &ctx.search)?;
            match cli.output {
                Output::Json => {
                    let mut flat = profile.settings.clone();
                    flat.profile.include.clear();
                    json(
                        out,
                        &serde_json::json!({
                            "name": profile.name,
                            "description": profile.description,
                            "files": profile.files,
                            "settings": flat,
                        }),
                    )?;
                }
                Output::Table => {
                    writeln!(out, "# effective profile {}, merged from:", profile.name)?;
                    for f in &profile.files {
                        writeln!(out, "#   {}", f.display())?;
                    }
                    write!(out, "{}", profile.to_toml())?;
                }
            }
            Ok(Exit::Ok)
        }
        Command::Profile(ProfileCmd::Check { file }) => {
            let profile = profile::load(file, &ctx.search)?;
            let warnings = unknown_sysctls(&ctx.host, &profile);
            match cli.output {
                Output::Json => json(
                    out,
                    &serde_json::json!({
                        "valid": true,
                        "name": profile.name,
                        "files": profile.files,
                        "warnings": warnings,
                    }),
                )?,
                Output::Table => {
                    writeln!(
                        out,
                        "{}: valid profile {} ({} file{})",
                        profile.source.display(),
                        profile.name,
                        profile.files.len(),
                        if profile.files.len() == 1 { "" } else { "s" }
                    )?;
                    for w in &warnings {
                        writeln!(out, "warning: {w}")?;
                    }
                }
            }
            Ok(Exit::Ok)
        }
        Command::Profile(ProfileCmd::List) => {
            let listed = ctx.search.list();
            match cli.output {
                Output::Json => json(out, &listed)?,
                Output::Table => {
                    if listed.is_empty() {
                        let dirs: Vec<String> = ctx
                            .search
                            .dirs()
                            .iter()
                            .map(|d| d.display().to_string())
                            .collect();
                        writeln!(out, "no profiles in {}", dirs.join(", "))?;
                    }
                    for p in &listed {
                        let note = if p.shadowed { "  (shadowed)" } else { "" };
                        writeln!(out, "{:<24} {}{note}", p.name, p.path.display())?;
                    }
                }
            }
            Ok(Exit::Ok)
        }
    }
}

/// The profile's `[isolation]`, checked against this host's CPUs.
fn isolation_of(ctx: &Context, profile: &Profile) -> Result<crate::profile::Isolation, CliError> {
    let invalid = |msg: String| CliError {
        code: Exit::Invalid,
        error: anyhow::anyhow!("{}: {msg}", profile.source.display()),
    };
    let iso = profile
        .settings
        .isolation
        .clone()
        .ok_or_else(|| invalid("the profile has no [isolation] section".into()))?;
    tuning::isolation::check_layout(&ctx.host, &iso).map_err(invalid)?;
    Ok(iso)
}

fn isolation_cmd(
    cli: &Cli,
    ctx: &Context,
    cmd: &IsolationCmd,
    out: &mut dyn Write,
) -> Result<Exit, CliError> {
    use tuning::isolation::{cmdline, tasks};
    match cmd {
        IsolationCmd::Bootloader { profile, write } => {
            let profile = profile::load(&profile.profile, &ctx.search)?;
            let iso = isolation_of(ctx, &profile)?;
            if *write {
                let outcome = with_session(ctx, None, |s| {
                    apply::apply(s, &profile, Some(&[crate::verify::Class::Cmdline]))
                })?;
                return print_apply(cli.output, &outcome, out);
            }
            let b = cmdline::bootloader(&ctx.host, &iso);
            match cli.output {
                Output::Json => json(out, &b)?,
                Output::Table => cmdline::render(&b, out)?,
            }
            Ok(if b.reboot_needed {
                Exit::Drift
            } else {
                Exit::Ok
            })
        }
        IsolationCmd::Audit { profile } => {
            let profile = profile::load(&profile.profile, &ctx.search)?;
            let iso = isolation_of(ctx, &profile)?;
            let audit = tasks::audit(&ctx.host, &iso).map_err(|e| CliError {
                code: Exit::CannotRun,
                error: anyhow::Error::new(e).context("failed to scan the tasks in /proc"),
            })?;
            match cli.output {
                Output::Json => json(out, &audit)?,
                Output::Table => tasks::render(&audit, out)?,
            }
            Ok(if audit.stray.is_empty() {
                Exit::Ok
            } else {
                Exit::Drift
            })
        }
    }
}

/// Runs a bus command on a single-threaded runtime: one connection, no thread pool.
fn block_on<T>(f: impl std::future::Future<Output = Result<T, CliError>>) -> Result<T, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError {
            code: Exit::CannotRun,
            error: anyhow::Error::new(e).context("failed to start the async runtime"),
        })?
        .block_on(f)
}

fn load_settings(cli: &Cli) -> Result<Settings, CliError> {
    Ok(match &cli.settings {
        Some(path) => Settings::load(path, true)?,
        None => Settings::load(
            &Settings::path_from_env(),
            std::env::var_os(crate::settings::SETTINGS_ENV).is_some(),
        )?,
    })
}

fn format_us(us: u64) -> String {
    if us == 0 {
        "-".into()
    } else {
        crate::verify::format_time(us / 1_000_000)
    }
}

async fn units_cmd(
    cli: &Cli,
    ctx: &Context,
    cmd: &UnitsCmd,
    out: &mut dyn Write,
) -> Result<Exit, CliError> {
    let settings = load_settings(cli)?;
    let units = &settings.units;
    // Names are checked before the bus is touched: a typo is exit 2 even with no bus.
    let named = |u: &str| units::managed(units, u);
    let job = |op, u: &str| named(u).map(|n| (op, n));
    let action = match cmd {
        UnitsCmd::Start { unit } => Some(job(JobOp::Start, unit)?),
        UnitsCmd::Stop { unit } => Some(job(JobOp::Stop, unit)?),
        UnitsCmd::Restart { unit } => Some(job(JobOp::Restart, unit)?),
        _ => None,
    };
    let systemd = Systemd::connect(&ctx.bus).await?;
    if let Some((op, unit)) = action {
        let deadline = match op {
            JobOp::Stop => units.stop_deadline(&unit),
            _ => units.job_timeout.0,
        };
        let step = units::job_step(&systemd, op, &unit, deadline).await?;
        match cli.output {
            Output::Json => json(out, &step)?,
            Output::Table => writeln!(out, "{}", step_line(&step))?,
        }
        return Ok(if step.succeeded() {
            Exit::Ok
        } else {
            Exit::Failed
        });
    }
    match cmd {
        UnitsCmd::Enable { unit } | UnitsCmd::Disable { unit } => {
            let name = named(unit)?;
            let enable = matches!(cmd, UnitsCmd::Enable { .. });
            systemd.set_enabled(&name, enable).await?;
            let state = systemd.status(&name).await?.unit_file_state;
            match cli.output {
                Output::Json => json(
                    out,
                    &serde_json::json!({ "unit": name, "unit_file_state": state }),
                )?,
                Output::Table => writeln!(out, "{name}: {state}")?,
            }
            Ok(Exit::Ok)
        }
        UnitsCmd::Status { units: wanted } => {
            let names = if wanted.is_empty() {
                units.order.clone()
            } else {
                wanted
                    .iter()
                    .map(|u| named(u))
                    .collect::<Result<Vec<_>, _>>()?
            };
            let statuses = units::status_all(&systemd, &names).await?;
            print_unit_statuses(cli.output, &statuses, out)
        }
        UnitsCmd::Watch { count } => {
            let mut events = systemd.watch(&units.order).await?;
            let mut seen = 0;
            while count.is_none_or(|c| seen < c) {
                let Some(e) = events.next().await else { break };
                seen += 1;
                match cli.output {
                    Output::Json => {
                        writeln!(out, "{}", serde_json::to_string(&e).unwrap_or_default())?
                    }
                    Output::Table => writeln!(
                        out,
                        "{}  {:<26} {}/{}",
                        format_us(e.time_us),
                        e.unit,
                        e.active_state,
                        e.sub_state
                    )?,
                }
                out.flush()?;
            }
            Ok(Exit::Ok)
        }
        UnitsCmd::Start { .. } | UnitsCmd::Stop { .. } | UnitsCmd::Restart { .. } => Ok(Exit::Ok),
    }
}

fn step_line(step: &units::Step) -> String {
    format!(
        "{:<7} {:<26} {:<10} {:>7} ms  now {}/{}",
        step.op.as_str(),
        step.unit,
        step.result.as_str(),
        step.duration_ms,
        step.active_state,
        step.sub_state
    )
}

async fn platform_cmd(
    cli: &Cli,
    ctx: &Context,
    cmd: PlatformCmd,
    out: &mut dyn Write,
) -> Result<Exit, CliError> {
    let settings = load_settings(cli)?;
    let systemd = Systemd::connect(&ctx.bus).await?;
    let op = match cmd {
        PlatformCmd::Stop => JobOp::Stop,
        PlatformCmd::Start => JobOp::Start,
    };
    let table = cli.output == Output::Table;
    let mut write_err = None;
    let report = units::platform(&systemd, &settings.units, op, |step| {
        if table && let Err(e) = writeln!(out, "{}", step_line(step)).and_then(|_| out.flush()) {
            write_err.get_or_insert(e);
        }
    })
    .await?;
    if let Some(e) = write_err {
        return Err(e.into());
    }
    print_platform(cli.output, &report, out)
}

/// The units table (or JSON); exit 1 when a managed unit is not active (for monitoring).
fn print_unit_statuses(
    output: Output,
    statuses: &[units::UnitStatus],
    out: &mut dyn Write,
) -> Result<Exit, CliError> {
    match output {
        Output::Json => json(out, &statuses)?,
        Output::Table => {
            writeln!(
                out,
                "{:<26} {:<9} {:<12} {:<10} {:>8} {:<23} {:<9} MEMORY",
                "UNIT", "LOAD", "ACTIVE", "SUB", "PID", "SINCE", "CPUS"
            )?;
            for s in statuses {
                writeln!(
                    out,
                    "{:<26} {:<9} {:<12} {:<10} {:>8} {:<23} {:<9} {}",
                    s.unit,
                    s.load_state,
                    s.active_state,
                    s.sub_state,
                    if s.main_pid == 0 {
                        "-".into()
                    } else {
                        s.main_pid.to_string()
                    },
                    format_us(s.active_since_us),
                    s.cpu_affinity.as_deref().unwrap_or("all"),
                    s.memory_bytes
                        .map_or("-".into(), |m| format!("{:.1} MiB", m as f64 / 1048576.0)),
                )?;
            }
        }
    }
    // A managed unit that is not running is a finding for a monitoring script.
    Ok(if statuses.iter().all(|s| s.active_state == "active") {
        Exit::Ok
    } else {
        Exit::Drift
    })
}

/// The platform's summary line (steps were printed as they happened) or its JSON.
fn print_platform(
    output: Output,
    report: &units::PlatformReport,
    out: &mut dyn Write,
) -> Result<Exit, CliError> {
    let op = report.op;
    match output {
        Output::Json => json(out, report)?,
        Output::Table => match &report.failed {
            None => writeln!(
                out,
                "platform {}: all {} units done",
                op.as_str(),
                report.steps.len()
            )?,
            Some(unit) => {
                let last = report.steps.last();
                writeln!(
                    out,
                    "platform {} STOPPED at {unit}: {} (now {}/{}); not reached: {}",
                    op.as_str(),
                    last.map_or("?", |s| s.result.as_str()),
                    last.map_or("?", |s| s.active_state.as_str()),
                    last.map_or("?", |s| s.sub_state.as_str()),
                    if report.not_reached.is_empty() {
                        "none".into()
                    } else {
                        report.not_reached.join(", ")
                    }
                )?
            }
        },
    }
    Ok(if report.failed.is_none() {
        Exit::Ok
    } else {
        Exit::Failed
    })
}

/// What the bus says about the managed units and the engine units, when the profile has
/// something to check on them (unit limits, engine CPU affinity) and the host is the running
/// machine (under another host root the bus is not that tree's). Also checks the isolation
/// layout against the host's CPUs: a layout for another machine is invalid input.
/// This host against `profile`, here rather than through the daemon: the units from the bus
/// when the profile needs them, and an interrupted apply from the journal.
fn verify_here(cli: &Cli, ctx: &Context, profile: &Profile) -> Result<Report, CliError> {
    let units = observe_units(cli, ctx, profile)?;
    let mut report = tuning::verify_with_units(&ctx.host, profile, units.as_ref());
    report.interrupted_apply = crate::rollback::journal::interrupted_apply(&ctx.state);
    Ok(report)
}

fn observe_units(
    cli: &Cli,
    ctx: &Context,
    profile: &Profile,
) -> Result<Option<UnitsObserved>, CliError> {
    let iso = profile.settings.isolation.as_ref();
    if let Some(iso) = iso {
        tuning::isolation::check_layout(&ctx.host, iso).map_err(|e| CliError {
            code: Exit::Invalid,
            error: anyhow::anyhow!("{}: {e}", profile.source.display()),
        })?;
    }
    if !ctx.host.is_live() {
        return Ok(None);
    }
    let names =
        tuning::units::units_to_observe(profile, || load_settings(cli).map(|s| s.units.order))?;
    if names.is_empty() {
        return Ok(None);
    }
    block_on(async { Ok(units::observe_units(&ctx.bus, &names).await) }).map(Some)
}

/// Runs `f` with an apply/rollback session on this context: real system calls only on the
/// running machine, audit to the state directory, systemd reloaded over the bus.
fn with_session<T>(
    ctx: &Context,
    units: Option<UnitsObserved>,
    f: impl FnOnce(&mut Session<'_>) -> T,
) -> T {
    let mut systemd = systemd_ops(ctx);
    let mut system = ctx.system();
    let audit = Audit::new(Some(ctx.state.path()));
    f(&mut Session {
        host: &ctx.host,
        state: &ctx.state,
        system: system.as_mut(),
        audit: &audit,
        caller: Caller::current(),
        units,
        systemd: Some(&mut systemd),
    })
}

/// Reloads systemd or restarts a service over the bus, for apply and rollback after the files
/// they read changed.
fn systemd_ops(ctx: &Context) -> impl FnMut(SystemdOp<'_>) -> Result<(), String> + '_ {
    |op| {
        let run = async {
            let systemd = Systemd::connect(&ctx.bus)
                .await
                .map_err(|e| e.to_string())?;
            match op {
                SystemdOp::Reload => systemd.reload().await,
                SystemdOp::TryRestart(unit) => systemd.try_restart(unit).await,
            }
        };
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(run)
    }
}

fn verdict(report: &Report, strict: bool) -> Exit {
    if report.is_compliant(strict) {
        Exit::Ok
    } else {
        Exit::Drift
    }
}

fn run_apply(
    cli: &Cli,
    ctx: &Context,
    profile: &Profile,
    units: Option<UnitsObserved>,
    out: &mut dyn Write,
) -> Result<Exit, CliError> {
    let output = cli.output;
    let has_units = units.is_some();
    let mut outcome = with_session(ctx, units, |s| apply::apply(s, profile, None))?;
    if has_units {
        // The units' properties changed with the reload: ask the bus again for the report.
        let fresh = observe_units(cli, ctx, profile)?;
        outcome.after = tuning::verify_with_units(&ctx.host, profile, fresh.as_ref());
    }
    print_apply(output, &outcome, out)
}

/// Prints an apply's outcome; the exit code: 4 when a follow-up failed, else the verdict.
fn print_apply(
    output: Output,
    outcome: &apply::ApplyOutcome,
    out: &mut dyn Write,
) -> Result<Exit, CliError> {
    match output {
        Output::Json => json(out, &outcome)?,
        Output::Table => {
            if let Some(run) = &outcome.interrupted {
                writeln!(
                    out,
                    "note: the previous apply ({} by {}, {} of {} steps done) had been interrupted",
                    run.profile, run.user, run.steps_done, run.steps_total
                )?;
            }
            if outcome.plan.is_empty() {
                writeln!(out, "nothing to change")?;
            } else {
                writeln!(
                    out,
                    "applied {} change(s):",
                    outcome.plan.changes.len() - outcome.refused.len()
                )?;
                for c in outcome
                    .plan
                    .changes
                    .iter()
                    .filter(|c| !outcome.refused.iter().any(|r| r.target == c.target))
                {
                    writeln!(
                        out,
                        "  {}",
                        tuning::plan::change_line(c.class, &c.key, &c.from, &c.to)
                    )?;
                }
            }
            for r in &outcome.refused {
                writeln!(
                    out,
                    "  refused by the kernel, left as it was: {} {}: {} ({})",
                    r.class.as_str(),
                    r.key,
                    r.reason,
                    r.error
                )?;
            }
            if let Some(e) = &outcome.systemd_reload_error {
                writeln!(out, "WARNING: unit drop-ins changed but {e}")?;
            }
            for e in &outcome.follow_up_errors {
                writeln!(out, "WARNING: {e}")?;
            }
            for n in &outcome.notes {
                writeln!(out, "note: {n}")?;
            }
            writeln!(out)?;
            write!(out, "{}", outcome.after.to_table())?;
        }
    }
    if outcome.systemd_reload_error.is_some() || !outcome.follow_up_errors.is_empty() {
        return Ok(Exit::Failed);
    }
    Ok(verdict(&outcome.after, false))
}

fn rollback_table(o: &RollbackOutcome) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    if o.restored.is_empty() && o.is_complete() {
        s.push_str("nothing to roll back\n");
    }
    if !o.restored.is_empty() {
        let _ = writeln!(s, "restored {} value(s):", o.restored.len());
        for r in &o.restored {
            let _ = writeln!(
                s,
                "  {}",
                tuning::plan::change_line(r.class, &r.key, &r.from, &r.to)
            );
        }
    }
    for (title, list) in [
        ("left alone", &o.left_alone),
        ("FAILED to restore", &o.failed),
    ] {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(s, "{title} ({}), kept in the journal:", list.len());
        for n in list {
            let current = n.current.as_ref().map_or("?".into(), |c| c.describe());
            let _ = writeln!(
                s,
                "  {} {}: now {current}, original {}: {}",
                n.class.as_str(),
                n.key,
                n.original.describe(),
                n.reason
            );
        }
    }
    if let Some(e) = &o.systemd_reload_error {
        let _ = writeln!(s, "WARNING: unit drop-ins restored but {e}");
    }
    for e in &o.follow_up_errors {
        let _ = writeln!(s, "WARNING: {e}");
    }
    for n in &o.notes {
        let _ = writeln!(s, "note: {n}");
    }
    s
}

fn status(output: Output, ctx: &Context, out: &mut dyn Write) -> Result<Exit, CliError> {
    let journal = ctx.state.load()?;
    let holder = ctx.state.holder();
    let applied = journal.last_complete();
    let unfinished = journal.unfinished();
    let last_failed = journal.runs.last().map(|r| r.state) == Some(RunState::FailedRolledBack);
    let state = match (unfinished, &holder) {
        (Some(_), Some(_)) => "apply-running",
        (Some(_), None) => "interrupted",
        // Also when the failed apply was the first (nothing recorded): the failure is news.
        (None, _) if last_failed => "last-apply-failed",
        (None, _) if journal.baseline.is_empty() => "not-applied",
        (None, _) => "applied",
    };
    match output {
        Output::Json => json(
            out,
            &serde_json::json!({
                "schema_version": 1,
                "state": state,
                "state_dir": ctx.state.path(),
                "applied": applied,
                "last_run": journal.runs.last(),
                "lock_holder_pid": holder,
                "recorded_values": journal.baseline.len(),
            }),
        )?,
        Output::Table => {
            writeln!(out, "state: {state}")?;
            if let Some(run) = applied {
                writeln!(
                    out,
                    "applied: profile {} ({}) at {} by {} (uid {}), {} change(s)",
                    run.profile,
                    run.profile_path,
                    crate::verify::format_time(run.finished.unwrap_or(run.started)),
                    run.user,
                    run.uid,
                    run.steps.len()
                )?;
            }
            if let Some(run) = journal.runs.last().filter(|r| Some(*r) != applied) {
                writeln!(
                    out,
                    "last run: profile {} at {} by {}: {} ({} of {} steps done){}",
                    run.profile,
                    crate::verify::format_time(run.started),
                    run.user,
                    match (run.state, &holder) {
                        (RunState::InProgress, Some(_)) => "running now",
                        (RunState::InProgress | RunState::Interrupted, _) => "INTERRUPTED",
                        (RunState::FailedRolledBack, _) => "failed, rolled back",
                        (RunState::Complete, _) => "complete",
                    },
                    run.steps.iter().filter(|s| s.done).count(),
                    run.steps.len(),
                    run.error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                )?;
            }
            writeln!(
                out,
                "recorded original values: {} (restored by `agentctl tune rollback`)",
                journal.baseline.len()
            )?;
            writeln!(out, "state directory: {}", ctx.state.path().display())?;
        }
    }
    Ok(Exit::Ok)
}

/// sysctl keys of the profile that this kernel does not have: most likely typos.
fn unknown_sysctls(host: &HostRoot, profile: &profile::Profile) -> Vec<String> {
    profile
        .settings
        .sysctl
        .keys()
        .filter(|k| !host.exists(k.proc_path()))
        .map(|k| {
            format!(
                "sysctl {k}: this kernel has no {} (a typo, or a module not loaded?)",
                k.proc_path()
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap's own consistency checks (unique option names across global and local arguments,
    /// valid defaults): otherwise they fire only when the subcommand is first used.
    #[test]
    fn the_command_line_model_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
