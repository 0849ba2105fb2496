#!/usr/bin/env bash
# One health run (each check and whole) and the /metrics scrape of node-agentd, side by side in
# one run; read-only for the host. See docs/BENCHMARKS.md and agent/benches/health.rs.
#
#   scripts/bench-health.sh                           # the documented run (about a minute)
#   BENCH_ROUNDS=200 BENCH_SLOW_ROUNDS=5 scripts/bench-health.sh   # quick
#
# Writes target/bench/health.md (the report, Markdown) and target/bench/health-env.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/bench
mkdir -p "$OUT"
cargo build --release --bins
cargo bench -p node-agent --bench health --no-run
{
    date -u '+%Y-%m-%d %H:%M:%S UTC'
    echo "nproc: $(nproc)"
    grep -m1 'model name' /proc/cpuinfo
    echo "kernel: $(uname -r)"
    echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
    rustc --version
} >"$OUT/health-env.txt"
cargo bench -p node-agent --bench health | tee "$OUT/health.md"
