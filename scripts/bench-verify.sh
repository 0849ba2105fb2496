#!/usr/bin/env bash
# Whole-process benchmark of `agentctl tune verify --profile trading-latency` against the
# floor for a cold process: one `cat` of the same files. Read-only. See docs/BENCHMARKS.md.
#
#   scripts/bench-verify.sh            # WARMUP=100 RUNS=1000 ROUNDS=3 by default
#   RUNS=300 ROUNDS=1 scripts/bench-verify.sh
#   FILES_FROM=report scripts/bench-verify.sh   # file list from the JSON report, not strace
#
# Writes into target/bench/: verify-files.txt (the files cat reads), verify-strace.txt (the
# trace they come from), verify-rN.md and verify-rN.json (hyperfine's exports, one pair per
# round), verify-summary.txt (each round's ratio to the floor).
set -euo pipefail
cd "$(dirname "$0")/.."

WARMUP=${WARMUP:-100}
RUNS=${RUNS:-1000}
ROUNDS=${ROUNDS:-3}
PROFILE=trading-latency
OUT=target/bench
BIN=$PWD/target/release/agentctl
mkdir -p "$OUT"

cargo build --release -p node-agent

apt_install() {
    command -v "$1" >/dev/null 2>&1 && return 0
    echo "installing $1 (apt)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null
}
apt_install hyperfine
apt_install strace || true

# The profile by name, from the repository's profiles, against this host's real kernel.
export NODE_AGENT_PROFILE_PATH=$PWD/tuning-profiles
unset NODE_AGENT_HOST_ROOT
VERIFY=("$BIN" tune verify --profile "$PROFILE")

# --- The files verify reads ----------------------------------------------------------------
# Preferred: every file one run opens successfully, from strace; minus what any dynamically
# linked program opens before main (ld.so.cache, shared libraries) and /proc/self/maps, which
# Rust's runtime reads at startup (main-thread stack guard), not verify. Directories verify
# lists (sysctl.d, limits.d, cpuidle, /sys/block) are left out: cat cannot read a directory.
# Files read twice (/etc/fstab) are listed once: the floor reads each file once.
# Fallback without strace: the report's item paths plus the configuration files verify parses.
files_from_strace() {
    strace -f -qq -e trace=open,openat,openat2 -o "$OUT/verify-strace.txt" \
        "${VERIFY[@]}" --output json >/dev/null || true
    grep -v -e ' = -1 ' -e O_DIRECTORY "$OUT/verify-strace.txt" |
        sed -n 's/.*open[at2]*([^"]*"\([^"]*\)".*/\1/p' |
        grep -v -e '^/etc/ld\.so\.cache$' -e '\.so\(\.[0-9]*\)*$' -e '^/proc/self/maps$' |
        awk '!seen[$0]++'
}
files_from_report() {
    local paths
    paths=$({ "${VERIFY[@]}" --output json || true; } | jq -r '.items[].path // empty')
    {
        echo "$NODE_AGENT_PROFILE_PATH/$PROFILE.toml"
        echo "$NODE_AGENT_PROFILE_PATH/base.toml"
        ls -d /etc/sysctl.d/*.conf /run/sysctl.d/*.conf /usr/local/lib/sysctl.d/*.conf \
            /usr/lib/sysctl.d/*.conf 2>/dev/null || true
        echo "$paths" | grep '^/proc/sys/' || true
        # cpu items: the online list, and each idle state's latency beside its `disable`.
        if echo "$paths" | grep -q '^/sys/devices/system/cpu/'; then
            echo /sys/devices/system/cpu/online
        fi
        echo "$paths" | sed -n 's|\(/cpuidle/state[0-9]*\)/disable$|\1/latency|p'
        echo "$paths" | grep -v '^/proc/sys/' || true
        echo /etc/fstab /etc/security/limits.conf | tr ' ' '\n'
        ls -d /etc/security/limits.d/*.conf 2>/dev/null || true
        echo /proc/self/mountinfo /proc/sys/kernel/hostname | tr ' ' '\n'
    } | awk '!seen[$0]++' | while read -r f; do if [ -f "$f" ]; then echo "$f"; fi; done
}
if [ "${FILES_FROM:-strace}" = strace ] && command -v strace >/dev/null 2>&1 && files_from_strace >"$OUT/verify-files.txt" &&
    [ -s "$OUT/verify-files.txt" ]; then
    SOURCE="strace -f -e trace=open,openat,openat2 of one run"
else
    apt_install jq
    files_from_report >"$OUT/verify-files.txt"
    SOURCE="the JSON report's item paths plus the configuration files verify parses"
fi
mapfile -t FILES <"$OUT/verify-files.txt"
echo "cat floor: ${#FILES[@]} files, from $SOURCE (list in $OUT/verify-files.txt)" >&2

# --- Side by side, one hyperfine invocation per round ---------------------------------------
# -N: no intermediate shell (these are ~1 ms commands; a shell would dominate and its
# correction would add noise). -i: agentctl exits 1 on drift, which is this host's state.
# `agentctl --version` is reference only: process start-up plus argument parsing, no verify.
# hyperfine runs the commands one after another, so a shared VM that speeds up or slows down
# mid-invocation skews the ratio: ROUNDS repeats the whole invocation and reports each round.
ratio_report() {
    jq -r --arg round "$1" '
      def ms: . * 1e6 | round / 1000;
      .results as $r | $r[0] as $floor
      | ($r[1:3][] | (.median / $floor.median) as $x | (.min / $floor.min) as $m
        | "round \($round): \(.command): median \(.median | ms) ms vs floor \($floor.median | ms) ms = \($x * 100 | round / 100)x (min \(.min | ms) vs \($floor.min | ms) = \($m * 100 | round / 100)x): \(if $x <= 2 then "goal met" else "goal NOT met" end)"),
        "round \($round): start-up only (agentctl --version): median \($r[3].median | ms) ms, min \($r[3].min | ms) ms"
    ' "$2"
}
: >"$OUT/verify-summary.txt"
for round in $(seq 1 "$ROUNDS"); do
    hyperfine -N -i --warmup "$WARMUP" --runs "$RUNS" \
        --export-markdown "$OUT/verify-r$round.md" --export-json "$OUT/verify-r$round.json" \
        -n "cat (floor, ${#FILES[@]} files)" "cat ${FILES[*]}" \
        -n "agentctl verify --output json" "${VERIFY[*]} --output json" \
        -n "agentctl verify (table)" "${VERIFY[*]}" \
        -n "agentctl --version (start-up only)" "$BIN --version"
    ratio_report "$round" "$OUT/verify-r$round.json" >>"$OUT/verify-summary.txt"
done
echo "goal: agentctl tune verify --profile $PROFILE within 2x of the cat floor (median)" |
    cat - "$OUT/verify-summary.txt"
