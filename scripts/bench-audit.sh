#!/usr/bin/env bash
# The stray-task audit (`agentctl isolation audit`, `isolation.stray_tasks` in verify) on this
# host's real /proc: time per 1,000 tasks with 1,000 and 3,000 extra sleeping processes, side by
# side with the floor of reading the same /proc files raw. See docs/BENCHMARKS.md.
#
#   scripts/bench-audit.sh                                # BENCH_TASKS=1000,3000 BENCH_ITERS=100
#   BENCH_TASKS=1000 BENCH_ITERS=30 scripts/bench-audit.sh
#
# Run as root: the bench starts BENCH_TASKS `sleep 600` processes per case (each killed by its
# pid when the case ends, also on a panic) and needs at least two online CPUs (housekeeping 0,
# isolated the others). Read-only otherwise. Writes target/bench/audit.md (machine line and
# the bench's table).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/bench
mkdir -p "$OUT"
export BENCH_TASKS=${BENCH_TASKS:-1000,3000}
export BENCH_ITERS=${BENCH_ITERS:-100}

if [ "$(nproc)" -lt 2 ]; then
    echo "bench-audit: needs at least two online CPUs (have $(nproc))" >&2
    exit 2
fi
# Room for the children: the largest N, plus what already runs.
max=$(echo "$BENCH_TASKS" | tr ',' '\n' | sort -n | tail -1)
limit=$(ulimit -u)
if [ "$limit" != unlimited ] && [ "$limit" -lt $((max + 1000)) ]; then
    echo "bench-audit: ulimit -u is $limit; the bench starts $max processes at once" >&2
    exit 2
fi

cargo build --release -p node-agent --bench audit

{
    echo "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), kernel $(uname -r), $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    cargo bench -p node-agent --bench audit
    echo
    echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/audit.md"
