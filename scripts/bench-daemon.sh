#!/usr/bin/env bash
# node-agentd as a process: idle RSS with trading-latency (beside a one-sysctl floor and a bare
# tonic mTLS server), CPU of the drift watch at verify_interval 1s, and Verify / GetStatus
# latency over loopback mTLS and the Unix socket with 1 and 64 clients. Read-only for the host.
# See docs/BENCHMARKS.md and agent/benches/daemon.rs.
#
#   scripts/bench-daemon.sh                     # the documented run (about 2.5 minutes)
#   BENCH_CPU_SECS=10 BENCH_CALLS=300 BENCH_CLIENT_CALLS=20 scripts/bench-daemon.sh   # quick
#   QUIET=0 scripts/bench-daemon.sh             # do not wait for other builds to finish
#
# Knobs (environment, passed through to the bench): BENCH_IDLE_SECS (15), BENCH_CPU_SECS (60),
# BENCH_WARMUP (100), BENCH_CALLS (2000), BENCH_CLIENTS (64), BENCH_CLIENT_CALLS (200),
# NODE_AGENTD (daemon binary), BENCH_SYSTEM_BUS (a system bus with systemd for the units).
#
# This VM is shared with other builds (often in other containers, so not visible as processes):
# unless QUIET=0, the script waits (up to QUIET_MAX seconds, default 900) until the whole
# machine's CPU use (/proc/stat) has stayed below QUIET_BUSY percent (default 10) for 20 s in a
# row with no rustc running here, then runs anyway; the report shows how busy the machine was.
#
# Writes target/bench/daemon.md (the report, Markdown) and target/bench/daemon-env.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/bench
QUIET=${QUIET:-1}
QUIET_MAX=${QUIET_MAX:-900}
QUIET_BUSY=${QUIET_BUSY:-10}
mkdir -p "$OUT"

cargo build --release --bins
cargo bench -p node-agent --bench daemon --no-run

# Busy ticks and all ticks of the whole machine so far (user nice system idle iowait irq
# softirq steal).
cpu_ticks() {
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat
}

if [ "$QUIET" != 0 ]; then
    waited=0
    calm=0
    pct=0
    read -r busy0 all0 < <(cpu_ticks)
    while [ "$waited" -lt "$QUIET_MAX" ] && [ "$calm" -lt 20 ]; do
        sleep 1
        waited=$((waited + 1))
        read -r busy1 all1 < <(cpu_ticks)
        pct=$(( (busy1 - busy0) * 100 / (all1 - all0 > 0 ? all1 - all0 : 1) ))
        busy0=$busy1 all0=$all1
        if [ "$pct" -lt "$QUIET_BUSY" ] && ! pgrep -x rustc >/dev/null; then
            calm=$((calm + 1))
        else
            calm=0
        fi
    done
    echo "waited ${waited}s for a quiet machine (last second ${pct}% busy, load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
fi

{
    date -u '+%Y-%m-%d %H:%M:%S UTC'
    echo "nproc: $(nproc)"
    grep -m1 'model name' /proc/cpuinfo
    echo "kernel: $(uname -r)"
    grep MemTotal /proc/meminfo
    rustc --version
    ls -l target/release/node-agentd
} >"$OUT/daemon-env.txt"

cargo bench -p node-agent --bench daemon | tee "$OUT/daemon.md"
