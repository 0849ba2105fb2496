//! `agentctl`: argument model (clap derive; the doc comments are the help text) and the
//! commands, written against an output stream so tests can run them in-process.

use std::io::Write;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::host::HostRoot;
use crate::profile::{self, ProfileError, SearchPath};
use crate::tuning;

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

impl From<ProfileError> for CliError {
    fn from(e: ProfileError) -> Self {
        let code = match &e {
            ProfileError::Read { source, .. }
                if source.kind() == std::io::ErrorKind::PermissionDenied =>
            {
                Exit::CannotRun
            }
            _ => Exit::Invalid,
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

/// Control node-agent: verify kernel tuning against profiles.
///
/// Exit codes: 0 compliant or success; 1 drift found; 2 invalid input; 3 could not run;
/// 4 the operation failed.
#[derive(Debug, Parser)]
#[command(name = "agentctl", version, max_term_width = 100)]
pub struct Cli {
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Table,
    /// For machines; versioned by `schema_version`.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Verify and inspect this host's tuning.
    #[command(subcommand)]
    Tune(Tune),
    /// Validate and list tuning profiles.
    #[command(subcommand)]
    Profile(ProfileCmd),
}

#[derive(Debug, Subcommand)]
pub enum Tune {
    /// Compare this host with a profile, item by item. Read-only.
    ///
    /// Exit 0 when compliant, 1 when any item is drift, pending-reboot, not-persistent or
    /// error (unsupported too with --strict).
    Verify {
        #[command(flatten)]
        profile: ProfileArg,
        /// Count `unsupported` items (knobs this machine lacks) as findings.
        #[arg(long)]
        strict: bool,
    },
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

/// What the commands need from the environment, resolved once in `main`.
#[derive(Debug, Clone)]
pub struct Context {
    pub host: HostRoot,
    pub search: SearchPath,
}

impl Context {
    /// `NODE_AGENT_HOST_ROOT` and `NODE_AGENT_PROFILE_PATH`.
    pub fn from_env() -> Self {
        Context {
            host: HostRoot::from_env(),
            search: SearchPath::from_env(),
        }
    }
}

pub fn run(cli: &Cli, ctx: &Context, out: &mut dyn Write) -> Result<Exit, CliError> {
    match &cli.command {
        Command::Tune(Tune::Verify { profile, strict }) => {
            let profile = profile::load(&profile.profile, &ctx.search)?;
            let report = tuning::verify(&ctx.host, &profile);
            match cli.output {
                Output::Json => writeln!(out, "{}", report.to_json())?,
                Output::Table => write!(out, "{}", report.to_table())?,
            }
            Ok(if report.is_compliant(*strict) {
                Exit::Ok
            } else {
                Exit::Drift
            })
        }
        Command::Tune(Tune::Show { profile }) => {
            let profile = profile::load(&profile.profile, &ctx.search)?;
            match cli.output {
                Output::Json => {
                    let mut flat = profile.settings.clone();
                    flat.profile.include.clear();
                    let json = serde_json::json!({
                        "name": profile.name,
                        "description": profile.description,
                        "files": profile.files,
                        "settings": flat,
                    });
                    writeln!(
                        out,
                        "{}",
                        serde_json::to_string_pretty(&json).unwrap_or_default()
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
                Output::Json => {
                    let json = serde_json::json!({
                        "valid": true,
                        "name": profile.name,
                        "files": profile.files,
                        "warnings": warnings,
                    });
                    writeln!(
                        out,
                        "{}",
                        serde_json::to_string_pretty(&json).unwrap_or_default()
                    )?;
                }
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
                Output::Json => writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&listed).unwrap_or_default()
                )?,
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
