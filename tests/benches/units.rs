//! Latency of agentctl's unit management against a real systemd (nspawn): a status query of the
//! four trading units, and platform stop/start with stand-ins that drain for 0 ms, so what is
//! measured is the agent's and systemd's own overhead. In-process (one bus connection per
//! command, as agentctl makes) and as a whole agentctl process. Opt-in like the tests:
//!
//! ```sh
//! cargo build --release -p node-agent
//! NODE_AGENT_SYSTEMD_TESTS=1 cargo bench -p node-agent-e2e --bench units [-- RUNS]
//! ```

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use node_agent::settings::Units;
use node_agent::units::{self, JobOp, Systemd, UnitManager};
use node_agent_e2e::nspawn::{BootOptions, Container};
use node_agent_e2e::standin::{self, UnitSpec};

fn stats(label: &str, mut v: Vec<Duration>) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label:<44} min {:>7.2} ms  median {:>7.2} ms  p90 {:>7.2} ms  max {:>7.2} ms  (n={})",
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() * 9 / 10]),
        ms(v[v.len() - 1]),
        v.len()
    );
}

fn main() {
    if !node_agent_e2e::systemd_tests_enabled("bench units") {
        return;
    }
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(50);
    let mut container = Container::boot("e2e-bench-units", BootOptions::default()).expect("boot");
    standin::install_standin_units(&container, &UnitSpec::trading_stack()).expect("units");
    let bus = container.bus_address();
    let units = Units::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let (mut status, mut concurrent, mut connect_status) = (vec![], vec![], vec![]);
    let (mut stop, mut start) = (vec![], vec![]);
    rt.block_on(async {
        let systemd = Systemd::connect(&bus).await.expect("bus");
        for _ in 0..runs {
            let t = Instant::now();
            for u in &units.order {
                systemd.status(u).await.expect("status");
            }
            status.push(t.elapsed());

            let t = Instant::now();
            units::status_all(&systemd, &units.order)
                .await
                .expect("status");
            concurrent.push(t.elapsed());

            let t = Instant::now();
            let fresh = Systemd::connect(&bus).await.expect("bus");
            units::status_all(&fresh, &units.order)
                .await
                .expect("status");
            connect_status.push(t.elapsed());

            let t = Instant::now();
            let r = units::platform(&systemd, &units, JobOp::Start, |_| {})
                .await
                .unwrap();
            assert!(r.failed.is_none(), "{r:?}");
            start.push(t.elapsed());
            let t = Instant::now();
            let r = units::platform(&systemd, &units, JobOp::Stop, |_| {})
                .await
                .unwrap();
            assert!(r.failed.is_none(), "{r:?}");
            stop.push(t.elapsed());
        }
    });
    println!("{runs} runs, 4 units, stand-ins with 0 ms drain");
    stats("status of 4 units, one after another", status);
    stats("status of 4 units, concurrent (agentctl)", concurrent);
    stats("connect + concurrent status of 4 units", connect_status);
    stats("platform start (4 start jobs + states)", start);
    stats("platform stop (4 stop jobs + states)", stop);

    // Whole process, as an operator runs it.
    let bin = node_agent_e2e::nspawn::target_dir().join("release/agentctl");
    if bin.exists() {
        let mut process = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            let out = std::process::Command::new(&bin)
                .args(["units", "status"])
                .env("DBUS_SYSTEM_BUS_ADDRESS", &bus)
                .output()
                .expect("agentctl");
            process.push(t.elapsed());
            assert!(out.status.code().is_some(), "{out:?}");
        }
        stats("agentctl units status (whole process)", process);
    } else {
        println!("(build target/release/agentctl to time the whole process)");
    }
    container.shutdown().expect("shutdown");
}
