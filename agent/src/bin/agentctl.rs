//! agentctl: the operator's command line for node-agent.

use std::process::ExitCode;

use clap::Parser;
use node_agent::cli::{Cli, Context, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = Context::from_env();
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr();
    match run(&cli, &ctx, &mut stdout, &mut stderr) {
        Ok(code) => ExitCode::from(code as u8),
        Err(err) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("agentctl: error: {:#}", err.error);
            }
            ExitCode::from(err.code as u8)
        }
    }
}
