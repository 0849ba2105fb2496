//! The command line of node-collector (clap derive; the doc comments are the help text, and
//! the packaging generates the man page and completions from `Cli::command()`).

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use node_agent::cli::Output as AgentOutput;
use node_agent::cli::fleet;

use crate::config::{Config, ConfigError};
use crate::inventory::Inventory;
use crate::server::{Collector, Snapshot, Stop, snapshot_to_proto};

/// Poll every node-agent of the fleet over mutual TLS, keep drift history, serve the fleet.
///
/// Reads /etc/node-collector/collector.toml (or --config, or NODE_COLLECTOR_CONFIG) and the
/// inventory it names. Exit codes: 0 every host reachable and compliant (poll --once), or a
/// clean stop (serve); 1 any host drifts or is unreachable (poll --once); 2 invalid
/// configuration, inventory or arguments; 3 could not run (an unreadable file, the database, a
/// port it cannot bind).
#[derive(Debug, Parser)]
#[command(name = "node-collector", version, max_term_width = 100)]
pub struct Cli {
    /// The configuration file [default: /etc/node-collector/collector.toml, or
    /// NODE_COLLECTOR_CONFIG].
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The inventory file [default: the configuration's `inventory`].
    #[arg(long, global = true, value_name = "PATH")]
    pub inventory: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Table,
    /// For machines (the same schema as `agentctl fleet status --output json`).
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Poll every agent once, record the result, print the fleet, and exit.
    ///
    /// For cron and scripts: exit 0 when every host is reachable and compliant, 1 when any
    /// host drifts or is unreachable, 2 for an invalid configuration or inventory.
    Poll {
        /// Poll once and exit (the only mode of `poll`; `serve` polls continuously).
        #[arg(long, required = true)]
        once: bool,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Do not open or write the database (history is not recorded).
        #[arg(long)]
        no_store: bool,
    },
    /// Poll continuously; serve the Fleet gRPC API (mutual TLS) and the Prometheus endpoint.
    ///
    /// SIGHUP reloads the inventory and the certificates; SIGTERM stops. Runs under systemd
    /// (Type=notify).
    Serve,
    /// Validate the configuration and the inventory, and exit (0 valid, 2 invalid).
    Check,
}

fn load(cli: &Cli) -> Result<(Config, Inventory), ConfigError> {
    let mut config = Config::load(&Config::path_from(cli.config.as_deref()))?;
    if let Some(inv) = &cli.inventory {
        config.inventory = inv.clone();
    }
    let inventory = Inventory::load(&config.inventory)?;
    Ok((config, inventory))
}

/// Runs the command; returns the exit code.
pub fn run(cli: &Cli, out: &mut dyn Write) -> Result<u8, Stop> {
    let (config, inventory) = load(cli)?;
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| Stop {
                code: 3,
                error: anyhow::Error::new(e).context("failed to start the async runtime"),
            })
    };
    match &cli.command {
        Command::Check => {
            writeln!(
                out,
                "{}: valid; {}: {} hosts",
                config.path.display(),
                config.inventory.display(),
                inventory.hosts.len()
            )
            .map_err(|e| Stop {
                code: 3,
                error: e.into(),
            })?;
            Ok(0)
        }
        Command::Serve => {
            runtime()?.block_on(crate::server::serve(config, inventory))?;
            Ok(0)
        }
        Command::Poll {
            once: _,
            output,
            no_store,
        } => {
            let snapshot = runtime()?.block_on(async {
                let mut c = Collector::new(config, inventory, !no_store)?;
                let cycle = c.cycle(true).await?;
                Ok::<_, Stop>(Snapshot {
                    fleet: c.fleet.clone(),
                    last_cycle: Some(crate::now_secs()),
                    last_cycle_ms: cycle.elapsed.as_millis() as u64,
                })
            })?;
            let response = snapshot_to_proto(&snapshot);
            let output = match output {
                Output::Table => AgentOutput::Table,
                Output::Json => AgentOutput::Json,
            };
            fleet::print(&response, output, crate::now_secs(), out).map_err(|e| Stop {
                code: 3,
                error: e.into(),
            })?;
            Ok(fleet::verdict(&response) as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["node-collector", "poll", "--once", "-o", "json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Poll {
                output: Output::Json,
                no_store: false,
                ..
            }
        ));
        // `poll` without --once is a usage error (exit 2 from clap).
        let e = Cli::try_parse_from(["node-collector", "poll"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--once"), "{e}");
    }
}
