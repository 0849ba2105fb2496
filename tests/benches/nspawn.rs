//! Timings of the systemd-nspawn harness: rootfs cache, copy, boot to SystemState running,
//! power-off. Opt-in like the tests (`NODE_AGENT_SYSTEMD_TESTS=1`, root):
//!
//! ```sh
//! NODE_AGENT_SYSTEMD_TESTS=1 cargo bench -p node-agent-e2e --bench nspawn [-- RUNS]
//! ```
//!
//! A cold rootfs build is timed when the cache is absent: point `NODE_AGENT_E2E_CACHE` at an
//! empty directory for that.

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use node_agent_e2e::nspawn::{self, BootOptions, Container, Rootfs};

fn main() {
    if !node_agent_e2e::systemd_tests_enabled("bench nspawn") {
        return;
    }
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);

    let started = Instant::now();
    let rootfs = Rootfs::cached().expect("rootfs");
    println!(
        "rootfs {} ready in {:.1?} (a build if the cache was absent)",
        rootfs.path().display(),
        started.elapsed()
    );

    let (mut copy, mut boot, mut poweroff) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let name = "e2e-bench";
        let mut container = Container::boot(name, BootOptions::default()).expect("boot");
        let timings = container.timings();
        copy.push(timings.copy);
        boot.push(timings.boot);
        poweroff.push(container.shutdown().expect("shutdown"));
        assert!(nspawn::leftovers(name).expect("leftovers").is_empty());
    }
    println!("{runs} runs            min       median    max");
    for (what, values) in [
        ("copy rootfs", &mut copy),
        ("boot to running", &mut boot),
        ("power-off", &mut poweroff),
    ] {
        values.sort();
        let ms = |d: Duration| format!("{:>7.0} ms", d.as_secs_f64() * 1000.0);
        println!(
            "{what:<16} {} {} {}",
            ms(values[0]),
            ms(values[values.len() / 2]),
            ms(values[values.len() - 1])
        );
    }
}
