//! Latency statistics of the benches (included with #[path]): percentiles by nearest rank.

#![allow(dead_code)]

use std::time::Duration;

pub struct Stats {
    pub n: usize,
    pub min: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

pub fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let n = samples.len();
    assert!(n > 0, "no samples");
    let pct = |p: f64| samples[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
    Stats {
        n,
        min: samples[0],
        p50: pct(0.50),
        p90: pct(0.90),
        p99: pct(0.99),
        max: samples[n - 1],
    }
}

/// Microseconds with one decimal.
pub fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}
