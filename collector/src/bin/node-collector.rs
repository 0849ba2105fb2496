//! node-collector: polls the fleet's node-agents, keeps drift history, serves the fleet.

use std::process::ExitCode;

use clap::Parser;
use node_collector::cli::{Cli, run};

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let mut stdout = std::io::stdout().lock();
    match run(&cli, &mut stdout) {
        Ok(code) => ExitCode::from(code),
        Err(stop) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("node-collector: error: {:#}", stop.error);
            }
            ExitCode::from(stop.code)
        }
    }
}

/// journald with structured fields, or stderr when there is no journald.
fn init_logging() {
    let journal = systemd_journal_logger::JournalLog::new()
        .map(|j| j.with_syslog_identifier("node-collector".into()));
    if !journal.is_ok_and(|j| j.install().is_ok()) {
        let _ = log::set_boxed_logger(Box::new(Stderr));
    }
    let level = match std::env::var("NODE_COLLECTOR_LOG").as_deref() {
        Ok("debug") => log::LevelFilter::Debug,
        Ok("warn") => log::LevelFilter::Warn,
        _ => log::LevelFilter::Info,
    };
    log::set_max_level(level);
}

struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info || m.target().starts_with("node_collector")
    }

    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        #[allow(clippy::print_stderr)]
        {
            eprintln!("node-collector: {}: {}", r.level(), r.args());
        }
    }

    fn flush(&self) {}
}
