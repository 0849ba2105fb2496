//! A stand-in trading service and its units, for tests of the agent's unit management.
//!
//! [`STANDIN_SCRIPT`] (installed as `/usr/local/bin/standin`) logs `start NAME NS PID` when it
//! starts, `stop-begin NAME NS` on SIGTERM, drains for `DRAIN_MS` milliseconds, logs
//! `stop-end NAME NS` and exits 0; with `FAIL_START=1` it logs `fail-start NAME NS` and exits 1.
//! NS is nanoseconds since the Unix epoch. Every unit appends to the same log,
//! [`STANDIN_LOG`], so the order of events across units can be checked; [`read_log`] parses it.
//!
//! The units are `Type=simple`: a start job is `done` as soon as the process was forked, so a
//! `FAIL_START` unit shows as ActiveState `failed` afterwards, not as a failed job.

use std::fmt::Write as _;
use std::time::Duration;

use crate::nspawn::Container;
use crate::{Error, Result};

/// Where the stand-in is installed inside the container.
pub const STANDIN_PATH: &str = "/usr/local/bin/standin";
/// The log every stand-in appends to, inside the container.
pub const STANDIN_LOG: &str = "/var/log/standin.log";
/// The stand-in itself (POSIX sh, runs under dash).
pub const STANDIN_SCRIPT: &str = include_str!("standin.sh");

/// The trading units, in the order a trading host starts them.
pub const TRADING_UNITS: [&str; 4] = [
    "market-data",
    "risk-engine",
    "trading-engine",
    "order-gateway",
];

/// Resource limits of a trading unit (the operations manual's values by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `LimitNOFILE=`
    pub nofile: String,
    /// `LimitNPROC=`
    pub nproc: String,
    /// `LimitMEMLOCK=`
    pub memlock: String,
}

impl Limits {
    /// `LimitNOFILE=1000000`, `LimitNPROC=65536`, `LimitMEMLOCK=infinity`.
    pub fn manual() -> Self {
        Limits {
            nofile: "1000000".to_owned(),
            nproc: "65536".to_owned(),
            memlock: "infinity".to_owned(),
        }
    }
}

/// One stand-in unit, `/etc/systemd/system/<name>.service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitSpec {
    /// Unit name without `.service`.
    pub name: String,
    /// Time between `stop-begin` and `stop-end` (`DRAIN_MS`).
    pub drain: Duration,
    /// Exit 1 at start (`FAIL_START=1`).
    pub fail_start: bool,
    /// `Limit*=` lines; `None` leaves systemd's defaults.
    pub limits: Option<Limits>,
    /// `[Unit]` lines, e.g. `After=market-data.service`.
    pub unit_lines: Vec<String>,
    /// Extra `[Service]` lines, e.g. `TimeoutStopSec=5`.
    pub service_lines: Vec<String>,
}

impl UnitSpec {
    /// A stand-in unit with the manual's limits, no drain, starting normally.
    pub fn new(name: &str) -> Self {
        UnitSpec {
            name: name.to_owned(),
            drain: Duration::ZERO,
            fail_start: false,
            limits: Some(Limits::manual()),
            unit_lines: Vec::new(),
            service_lines: Vec::new(),
        }
    }

    /// The four trading units of [`TRADING_UNITS`], with the manual's limits and no
    /// dependencies between them (add them with [`UnitSpec::unit_line`]).
    pub fn trading_stack() -> Vec<UnitSpec> {
        TRADING_UNITS
            .iter()
            .map(|name| UnitSpec::new(name))
            .collect()
    }

    pub fn drain(mut self, drain: Duration) -> Self {
        self.drain = drain;
        self
    }

    pub fn fail_start(mut self, fail: bool) -> Self {
        self.fail_start = fail;
        self
    }

    pub fn limits(mut self, limits: Option<Limits>) -> Self {
        self.limits = limits;
        self
    }

    pub fn unit_line(mut self, line: &str) -> Self {
        self.unit_lines.push(line.to_owned());
        self
    }

    pub fn service_line(mut self, line: &str) -> Self {
        self.service_lines.push(line.to_owned());
        self
    }

    /// `<name>.service`
    pub fn unit_name(&self) -> String {
        format!("{}.service", self.name)
    }

    /// The unit file's text.
    pub fn render(&self) -> String {
        let mut unit = String::new();
        let _ = writeln!(unit, "[Unit]");
        let _ = writeln!(unit, "Description=Stand-in {} (node-agent e2e)", self.name);
        for line in &self.unit_lines {
            let _ = writeln!(unit, "{line}");
        }
        let _ = writeln!(unit, "\n[Service]");
        let _ = writeln!(unit, "Type=simple");
        // SIGTERM to the main process only, as trading units do: with the default
        // control-group mode systemd keeps signalling new children, such as the `date` the
        // stand-in runs while it drains.
        let _ = writeln!(unit, "KillMode=mixed");
        let _ = writeln!(unit, "ExecStart={STANDIN_PATH} {}", self.name);
        let _ = writeln!(unit, "Environment=DRAIN_MS={}", self.drain.as_millis());
        if self.fail_start {
            let _ = writeln!(unit, "Environment=FAIL_START=1");
        }
        if let Some(limits) = &self.limits {
            let _ = writeln!(unit, "LimitNOFILE={}", limits.nofile);
            let _ = writeln!(unit, "LimitNPROC={}", limits.nproc);
            let _ = writeln!(unit, "LimitMEMLOCK={}", limits.memlock);
        }
        for line in &self.service_lines {
            let _ = writeln!(unit, "{line}");
        }
        let _ = writeln!(unit, "\n[Install]");
        let _ = writeln!(unit, "WantedBy=multi-user.target");
        unit
    }
}

/// Installs the stand-in at [`STANDIN_PATH`] and one unit per spec in /etc/systemd/system, then
/// reloads systemd over the bus (Manager.Reload). Units are not enabled or started.
pub fn install_standin_units(container: &Container, specs: &[UnitSpec]) -> Result<()> {
    container.write_file(STANDIN_PATH, STANDIN_SCRIPT, 0o755)?;
    for spec in specs {
        if spec.name.is_empty()
            || !spec
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::Invalid {
                what: "stand-in unit name",
                value: spec.name.clone(),
                why: "letters, digits, '-' and '_' only, without .service",
            });
        }
        container.write_file(
            &format!("/etc/systemd/system/{}", spec.unit_name()),
            spec.render(),
            0o644,
        )?;
    }
    container.daemon_reload()
}

/// What a stand-in logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Started; `pid` is its PID inside the container (systemd's MainPID).
    Start { pid: u32 },
    /// Exited 1 at start (`FAIL_START=1`).
    FailStart,
    /// Received SIGTERM, drain begins.
    StopBegin,
    /// Drain done, exiting 0.
    StopEnd,
}

/// One line of [`STANDIN_LOG`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Unit name without `.service`.
    pub unit: String,
    pub event: Event,
    /// Nanoseconds since the Unix epoch, from the container's clock (the host's).
    pub at_ns: u128,
}

/// Parses the stand-in log; a malformed line is an error naming it.
pub fn parse_log(text: &str) -> Result<Vec<LogLine>> {
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            parse_line(line).ok_or_else(|| Error::Invalid {
                what: "stand-in log line",
                value: format!("{}: {line}", i + 1),
                why: "expected `start NAME NS PID`, `fail-start|stop-begin|stop-end NAME NS`",
            })
        })
        .collect()
}

fn parse_line(line: &str) -> Option<LogLine> {
    let fields: Vec<&str> = line.split(' ').collect();
    let (event, unit, at) = match fields.as_slice() {
        ["start", unit, at, pid] => (
            Event::Start {
                pid: pid.parse().ok()?,
            },
            unit,
            at,
        ),
        ["fail-start", unit, at] => (Event::FailStart, unit, at),
        ["stop-begin", unit, at] => (Event::StopBegin, unit, at),
        ["stop-end", unit, at] => (Event::StopEnd, unit, at),
        _ => return None,
    };
    Some(LogLine {
        unit: (*unit).to_owned(),
        event,
        at_ns: at.parse().ok()?,
    })
}

/// The stand-ins' log of `container` so far (empty before any stand-in ran).
pub fn read_log(container: &Container) -> Result<Vec<LogLine>> {
    parse_log(&container.read_file(STANDIN_LOG)?.unwrap_or_default())
}

/// Waits until `until` holds for the stand-ins' log and returns the log.
///
/// This polls the log file, with a short backoff, up to `timeout`: it is readiness polling of an
/// external process. A `Type=simple` unit counts as started (its job `done`) once forked, before
/// the stand-in wrote its first line, and the stand-in has no other way to say it is up.
pub async fn wait_for_log(
    container: &Container,
    timeout: Duration,
    until: impl Fn(&[LogLine]) -> bool,
) -> Result<Vec<LogLine>> {
    let started = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(5);
    loop {
        let log = read_log(container)?;
        if until(&log) {
            return Ok(log);
        }
        let waited = started.elapsed();
        if waited >= timeout {
            return Err(Error::Timeout {
                what: format!(
                    "the expected stand-in log in container {}",
                    container.name()
                ),
                waited,
                last: format!("{log:?}"),
                console: container.console_log(),
            });
        }
        tokio::time::sleep(backoff.min(timeout - waited)).await;
        backoff = (backoff * 2).min(Duration::from_millis(100));
    }
}

/// The last drain of `unit` in `log`: from its last `stop-begin` to the `stop-end` after it.
pub fn last_drain(log: &[LogLine], unit: &str) -> Option<Duration> {
    let begin = log
        .iter()
        .rposition(|l| l.unit == unit && l.event == Event::StopBegin)?;
    let end = log[begin..]
        .iter()
        .find(|l| l.unit == unit && l.event == Event::StopEnd)?;
    let ns = end.at_ns.checked_sub(log[begin].at_ns)?;
    Some(Duration::from_nanos(u64::try_from(ns).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_manual_limits() {
        let unit = UnitSpec::new("trading-engine")
            .drain(Duration::from_millis(1500))
            .unit_line("After=market-data.service")
            .service_line("TimeoutStopSec=5")
            .render();
        for line in [
            "After=market-data.service",
            "Type=simple",
            "ExecStart=/usr/local/bin/standin trading-engine",
            "Environment=DRAIN_MS=1500",
            "LimitNOFILE=1000000",
            "LimitNPROC=65536",
            "LimitMEMLOCK=infinity",
            "TimeoutStopSec=5",
        ] {
            assert!(
                unit.lines().any(|l| l == line),
                "{line:?} missing in\n{unit}"
            );
        }
        assert!(!unit.contains("FAIL_START"));
        assert!(
            UnitSpec::new("x")
                .fail_start(true)
                .render()
                .contains("\nEnvironment=FAIL_START=1\n")
        );
        assert!(!UnitSpec::new("x").limits(None).render().contains("Limit"));
    }

    #[test]
    fn trading_stack_has_the_four_units() {
        let names: Vec<String> = UnitSpec::trading_stack()
            .iter()
            .map(UnitSpec::unit_name)
            .collect();
        assert_eq!(
            names,
            [
                "market-data.service",
                "risk-engine.service",
                "trading-engine.service",
                "order-gateway.service"
            ]
        );
    }

    #[test]
    fn parses_the_log_and_measures_drains() {
        let log = parse_log(
            "start a 100 7\nfail-start b 150\nstop-begin a 1000\nstop-end a 301000\n\
             start a 400000 9\nstop-begin a 500000\nstop-end a 2500000\n",
        )
        .unwrap();
        assert_eq!(log.len(), 7);
        assert_eq!(log[0].event, Event::Start { pid: 7 });
        assert_eq!(log[1].event, Event::FailStart);
        assert_eq!(last_drain(&log, "a"), Some(Duration::from_micros(2000)));
        assert_eq!(last_drain(&log, "b"), None);
        assert!(parse_log("start a 1\n").is_err());
        assert!(parse_log("stop-end a x\n").is_err());
    }

    /// Runs the script on the host (it is plain POSIX sh) with its log on a FIFO, so each line
    /// is read as it is written: no polling, no sleeps.
    #[test]
    fn script_logs_start_drain_and_stop() {
        use std::io::{BufRead, BufReader};
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};
        use std::sync::mpsc;

        use nix::sys::signal::{Signal, kill};
        use nix::sys::stat::Mode;
        use nix::unistd::{Pid, mkfifo};

        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("standin");
        std::fs::write(&script, STANDIN_SCRIPT).unwrap();
        let fifo = dir.path().join("log");
        mkfifo(&fifo, Mode::S_IRWXU).unwrap();
        // Open read-write: the FIFO always has a writer, so reads block instead of seeing EOF.
        let log = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(log).lines() {
                if tx.send(line.unwrap()).is_err() {
                    break;
                }
            }
        });
        let next = || {
            rx.recv_timeout(Duration::from_secs(10))
                .expect("a log line")
        };

        let fail = Command::new("sh")
            .arg(&script)
            .arg("b")
            .env("STANDIN_LOG", &fifo)
            .env("FAIL_START", "1")
            .status()
            .unwrap();
        assert_eq!(fail.code(), Some(1));
        assert_eq!(parse_line(&next()).unwrap().event, Event::FailStart);

        /// Ends the child by its PID if the test fails before reaping it.
        struct KillOnDrop(std::process::Child, bool);
        impl Drop for KillOnDrop {
            fn drop(&mut self) {
                if !self.1 {
                    let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGKILL);
                    let _ = self.0.wait();
                }
            }
        }
        let mut child = KillOnDrop(
            Command::new("sh")
                .arg(&script)
                .arg("a")
                .env("STANDIN_LOG", &fifo)
                .env("DRAIN_MS", "120")
                .stdin(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap(),
            false,
        );
        let pid = child.0.id();
        let mut lines = vec![parse_line(&next()).unwrap()];
        assert_eq!(lines[0].event, Event::Start { pid });
        assert_eq!(lines[0].unit, "a");
        // The start line is written after the trap is set: SIGTERM now is handled.
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
        lines.push(parse_line(&next()).unwrap());
        lines.push(parse_line(&next()).unwrap());
        assert_eq!(lines[1].event, Event::StopBegin);
        assert_eq!(lines[2].event, Event::StopEnd);
        let status = child.0.wait().unwrap();
        child.1 = true;
        assert!(status.success(), "{status}");
        // Nothing of it is left: its process group (its idle sleep included) is empty.
        assert_eq!(
            kill(Pid::from_raw(-(pid as i32)), None),
            Err(nix::errno::Errno::ESRCH)
        );
        let drain = last_drain(&lines, "a").unwrap();
        assert!(drain >= Duration::from_millis(120), "{drain:?}");
    }
}
