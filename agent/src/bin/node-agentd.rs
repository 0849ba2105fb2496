//! node-agentd: thin main; everything is in `node_agent::daemon::run`.

use clap::Parser;
use node_agent::daemon::run::{Args, init_logging, run};

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    init_logging();
    match run(&args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(stop) => {
            log::error!("node-agentd: {:#}", stop.error);
            std::process::ExitCode::from(stop.code)
        }
    }
}
