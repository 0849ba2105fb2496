#!/usr/bin/env bash
# node-collector: poll time and memory for 10, 100, 1,000 and 5,000 agents (real tonic gRPC
# servers over mutual TLS with canned answers, many per process on 127.0.0.1 ports), first
# poll with its TLS handshakes and steady-state polls with the channels open. Loopback only;
# read-only for the host. See docs/BENCHMARKS.md and collector/benches/poll.rs.
#
#   scripts/bench-collector.sh                          # the documented run (a few minutes)
#   QUIET=0 scripts/bench-collector.sh                  # do not wait for a quiet machine
#   BENCH_SIZES=10,100 BENCH_CYCLES=3 scripts/bench-collector.sh   # quick
#
# Knobs (environment, passed through): BENCH_SIZES (10,100,1000,5000), BENCH_CYCLES (10),
# BENCH_CONCURRENCY (256). The open-file limit is raised by the bench itself (setrlimit up to
# the hard limit); raise the hard limit first if it is below 65536 (ulimit -Hn).
#
# Writes target/bench/collector.md (the table), collector.csv, collector-env.txt, and the plot
# docs/bench-collector.png (gnuplot: apt-get install gnuplot-nox).
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=target/bench
QUIET=${QUIET:-1}
QUIET_MAX=${QUIET_MAX:-900}
mkdir -p "$OUT"

cargo bench -p node-collector --bench poll --no-run

# This VM is shared with other builds: unless QUIET=0, wait (up to QUIET_MAX s) until the
# machine's CPU use has stayed below 10 % for 10 s in a row with no rustc running (as
# scripts/bench-daemon.sh does); the environment file says how busy it was.
cpu_ticks() {
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat
}
waited=0
if [ "$QUIET" != 0 ]; then
    calm=0
    read -r busy0 all0 < <(cpu_ticks)
    while [ "$waited" -lt "$QUIET_MAX" ] && [ "$calm" -lt 10 ]; do
        sleep 1
        waited=$((waited + 1))
        read -r busy1 all1 < <(cpu_ticks)
        pct=$(( (busy1 - busy0) * 100 / (all1 - all0 > 0 ? all1 - all0 : 1) ))
        busy0=$busy1 all0=$all1
        if [ "$pct" -lt 10 ] && ! pgrep -x rustc >/dev/null; then calm=$((calm + 1)); else calm=0; fi
    done
fi
{
    echo "waited ${waited}s for a quiet machine; load $(cut -d' ' -f1-3 /proc/loadavg)"
    date -u '+%Y-%m-%d %H:%M:%S UTC'
    echo "nproc: $(nproc)"
    grep -m1 'model name' /proc/cpuinfo
    echo "kernel: $(uname -r)"
    grep MemTotal /proc/meminfo
    rustc --version
    echo "open files: soft $(ulimit -Sn), hard $(ulimit -Hn)"
} >"$OUT/collector-env.txt"

BENCH_OUT="$PWD/$OUT" cargo bench -p node-collector --bench poll

if command -v gnuplot >/dev/null; then
    gnuplot <<GNUPLOT
set terminal pngcairo size 1100,480 font "sans,10"
set output "docs/bench-collector.png"
set datafile separator ","
set multiplot layout 1,2 title "node-collector, $(date -u +%Y-%m-%d), $(nproc)-core VM; fake agents (mTLS gRPC) on the same host"
set title "one poll of the whole fleet"
set xlabel "agents"
set ylabel "poll time (ms)"
set logscale xy
set grid
set key top left
set arrow from graph 0, first 1000 to graph 1, first 1000 nohead dt 3 lc rgb "red"
set label "1 s" at graph 0.02, first 1300 tc rgb "red"
plot "$OUT/collector.csv" skip 1 using 1:2 with linespoints lw 2 title "first poll (TLS handshakes)", \
     "" skip 1 using 1:3 with linespoints lw 2 title "steady state, channels open (median)"
unset arrow
unset label
unset logscale
set title "collector memory (RSS after the steady polls)"
set ylabel "RSS (MiB)"
set xrange [0:*]
set yrange [0:*]
f(x) = a*x + b
a = 0.07; b = 5
set fit quiet logfile "$OUT/fit.log"
fit f(x) "$OUT/collector.csv" skip 1 using 1:(\$6/1048576) via a, b
plot "$OUT/collector.csv" skip 1 using 1:(\$6/1048576) with points pt 7 ps 1.3 title "measured", \
     f(x) with lines dt 2 title sprintf("linear fit: %.0f bytes/agent + %.1f MiB", a*1048576, b)
unset multiplot
GNUPLOT
    echo "wrote docs/bench-collector.png"
else
    echo "gnuplot not found (apt-get install gnuplot-nox): no plot" >&2
fi
