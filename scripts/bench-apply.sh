#!/usr/bin/env bash
# Whole-process benchmark of a full `agentctl tune apply --profile network-latency` and of its
# `agentctl tune rollback` on this machine's real kernel, side by side (one hyperfine
# invocation) with Red Hat TuneD's own switch to its network-latency profile
# (`tuned-adm profile network-latency`) and back (`tuned-adm off`). See docs/BENCHMARKS.md.
#
#   sudo scripts/bench-apply.sh                 # WARMUP=2 RUNS=30 by default
#   RUNS=10 scripts/bench-apply.sh
#   TUNED=0 scripts/bench-apply.sh              # agentctl only
#
# Root only: it changes kernel values, and puts every one back. Before anything it saves
# `sysctl -a`, the sysfs files either tool can touch, /proc/swaps, /etc/tuned and the agent's
# files; on exit (also on failure or Ctrl-C) it rolls the agent back, switches TuneD off, stops
# the TuneD and dbus-daemon processes it started (by their PIDs), writes back every value that
# differs from the saved one, restores /etc/tuned, and exits non-zero if anything still differs.
#
# Writes into target/bench/: apply.md and apply.json (hyperfine's exports), apply-summary.txt,
# apply-env.txt (machine and versions), apply-tuned.log (TuneD's log), apply-restore.txt (what
# was put back at the end).
set -euo pipefail
cd "$(dirname "$0")/.."

WARMUP=${WARMUP:-2}
RUNS=${RUNS:-30}
TUNED=${TUNED:-1}
PROFILE=network-latency
OUT=$PWD/target/bench
BIN=$PWD/target/release/agentctl
mkdir -p "$OUT"

[ "$(id -u)" = 0 ] || { echo "bench-apply.sh: must run as root (it applies a profile)" >&2; exit 3; }

cargo build --release -p node-agent

apt_install() { # command [package]
    command -v "$1" >/dev/null 2>&1 && return 0
    echo "installing ${2:-$1} (apt)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${2:-$1}" >/dev/null
}
apt_install hyperfine
apt_install jq

WORK=$(mktemp -d /tmp/bench-apply.XXXXXX)
export NODE_AGENT_PROFILE_PATH=$PWD/tuning-profiles
export NODE_AGENT_STATE_DIR=$WORK/state
unset NODE_AGENT_HOST_ROOT NODE_AGENT_FAILPOINT

# --- What either tool can touch, saved before anything runs ---------------------------------
# Counters and ids that move by themselves; never compared, never written.
VOLATILE='^(fs\.dentry-state|fs\.file-nr|fs\.inode-nr|fs\.inode-state|fs\.quota\.[a-z_]+|kernel\.ns_last_pid|kernel\.random\.(uuid|entropy_avail|boot_id)|kernel\.pty\.nr|net\.netfilter\.nf_conntrack_count) ='
sysctl_state() { sysctl -a 2>/dev/null | grep -Ev "$VOLATILE" | LC_ALL=C sort; }
sysfs_files() {
    ls -d /sys/kernel/mm/transparent_hugepage/{enabled,defrag,khugepaged/defrag} \
        /sys/kernel/mm/ksm/run \
        /sys/devices/system/cpu/cpu[0-9]*/cpuidle/state[0-9]*/disable \
        /sys/devices/system/cpu/cpu[0-9]*/cpufreq/{scaling_governor,energy_performance_preference} \
        /sys/devices/system/cpu/cpu[0-9]*/power/energy_perf_bias \
        /sys/devices/system/cpu/intel_pstate/{min_perf_pct,no_turbo} \
        /sys/block/*/queue/{scheduler,read_ahead_kb,nr_requests} \
        /sys/kernel/debug/sched/* 2>/dev/null || true
}
sysfs_state() { # path<TAB>value, value as written back (bracketed choice, else the text)
    local f v
    while read -r f; do
        [ -f "$f" ] && [ -r "$f" ] || continue
        v=$(cat "$f" 2>/dev/null) || continue
        if [[ $v == *"["*"]"* ]]; then v=${v#*[}; v=${v%%]*}; fi
        printf '%s\t%s\n' "$f" "$v"
    done < <(sysfs_files)
}
pm_qos() { od -An -td4 /dev/cpu_dma_latency 2>/dev/null | tr -d ' ' || echo absent; }
swaps() { tail -n +2 /proc/swaps | awk '{print $1, $2, $3, $5}'; }

sysctl_state >"$WORK/sysctl.before"
sysfs_state >"$WORK/sysfs.before"
swaps >"$WORK/swaps.before"
PMQOS_BEFORE=$(pm_qos)
for f in /etc/sysctl.d/zz-node-agent.conf /etc/security/limits.d/zz-node-agent.conf; do
    [ ! -e "$f" ] || { echo "$f exists: roll the agent back first" >&2; exit 3; }
done
[ -d /etc/tuned ] && tar -C /etc -cf "$WORK/etc-tuned.tar" tuned
RUN_TUNED_EXISTED=0; [ -e /run/tuned ] && RUN_TUNED_EXISTED=1
LOG_TUNED_EXISTED=0; [ -e /var/log/tuned ] && LOG_TUNED_EXISTED=1
DBUS_PID=""
POLKIT_PID=""
TUNED_PID=""
TUNED_STATUS="not run (TUNED=0)"

alive() { # pid: running (a zombie has ended already)
    [ -n "$1" ] && [ -e "/proc/$1" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}
stop_pid() { # pid name: SIGTERM, wait up to 30 s, then SIGKILL; only this PID
    local pid=$1 i
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 300); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then
        echo "$2 (pid $pid) ignored SIGTERM; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

restore() {
    local rc=0
    set +e
    exec 3>"$OUT/apply-restore.txt"
    echo "restore at $(date -u +%FT%TZ)" >&3
    if [ -e "$NODE_AGENT_STATE_DIR/journal.json" ]; then
        "$BIN" tune rollback >&3 2>&1 || echo "agentctl tune rollback failed" >&3
    fi
    if alive "$TUNED_PID"; then
        timeout 120 tuned-adm off >&3 2>&1 || echo "tuned-adm off failed" >&3
        stop_pid "$TUNED_PID" tuned
        echo "stopped tuned (pid $TUNED_PID)" >&3
    fi
    if [ -n "$DBUS_PID" ]; then
        # polkitd, if our bus activated it for TuneD: its PID, asked from the bus itself.
        POLKIT_PID=$(dbus-send --system --print-reply --dest=org.freedesktop.DBus / \
            org.freedesktop.DBus.GetConnectionUnixProcessID string:org.freedesktop.PolicyKit1 \
            2>/dev/null | awk '/uint32/ {print $2}')
        stop_pid "$DBUS_PID" dbus-daemon
        rm -f /run/dbus/system_bus_socket
        echo "stopped dbus-daemon (pid $DBUS_PID)" >&3
        if [ -n "$POLKIT_PID" ]; then
            for _ in $(seq 1 50); do alive "$POLKIT_PID" || break; sleep 0.1; done
            stop_pid "$POLKIT_PID" polkitd
            echo "polkitd (pid $POLKIT_PID, activated by that bus) ended" >&3
        fi
    fi
    # sysctls: every writable key whose value differs goes back.
    sysctl_state >"$WORK/sysctl.after"
    while IFS= read -r line; do
        key=${line%% = *}
        val=${line#* = }
        path=/proc/sys/${key//.//}
        if [ -w "$path" ]; then
            printf '%s' "$val" >"$path" 2>>"$WORK/restore.err" &&
                echo "sysctl $key -> $val" >&3 ||
                echo "sysctl $key: write failed" >&3
        fi
    done < <(LC_ALL=C comm -23 "$WORK/sysctl.before" "$WORK/sysctl.after")
    # congestion control again, then the allowed list, which setting it changes
    for key in net.ipv4.tcp_congestion_control net.ipv4.tcp_allowed_congestion_control; do
        val=$(grep "^$key = " "$WORK/sysctl.before" | sed 's/^[^=]*= //')
        [ -z "$val" ] || [ "$(sysctl -n "$key")" = "$val" ] || {
            printf '%s' "$val" >"/proc/sys/${key//.//}" && echo "sysctl $key -> $val (again)" >&3
        }
    done
    # sysfs
    sysfs_state >"$WORK/sysfs.after"
    while IFS=$'\t' read -r f v; do
        printf '%s' "$v" >"$f" 2>/dev/null && echo "sysfs $f -> $v" >&3 ||
            echo "sysfs $f: write failed" >&3
    done < <(LC_ALL=C comm -23 "$WORK/sysfs.before" "$WORK/sysfs.after")
    # files
    if [ -f "$WORK/etc-tuned.tar" ]; then
        rm -rf /etc/tuned && tar -C /etc -xpf "$WORK/etc-tuned.tar" && echo "/etc/tuned restored" >&3
    fi
    [ "$RUN_TUNED_EXISTED" = 1 ] || rm -rf /run/tuned
    [ "$RUN_TUNED_EXISTED" = 0 ] || rm -f /run/tuned/tuned.pid
    [ ! -f "$WORK/tuned.log" ] || cp "$WORK/tuned.log" "$OUT/apply-tuned.log"
    if [ "$LOG_TUNED_EXISTED" = 0 ] && [ -d /var/log/tuned ]; then
        rm -rf /var/log/tuned
    fi
    # check
    sysctl_state >"$WORK/sysctl.final"
    sysfs_state >"$WORK/sysfs.final"
    if ! diff "$WORK/sysctl.before" "$WORK/sysctl.final" >&3 ||
        ! diff "$WORK/sysfs.before" "$WORK/sysfs.final" >&3 ||
        ! diff "$WORK/swaps.before" <(swaps) >&3 ||
        [ "$(pm_qos)" != "$PMQOS_BEFORE" ] ||
        [ -e /etc/sysctl.d/zz-node-agent.conf ] || [ -e /etc/security/limits.d/zz-node-agent.conf ]; then
        echo "NOT RESTORED: see $OUT/apply-restore.txt" | tee -a /dev/fd/3 >&2
        rc=1
    else
        echo "every saved value is as before (sysctl -a, sysfs, swaps, cpu_dma_latency, files)" | tee -a /dev/fd/3 >&2
    fi
    exec 3>&-
    rm -rf "$WORK"
    return $rc
}
on_exit() {
    local rc=$?
    restore || rc=1
    exit $rc
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# --- TuneD: installed, a private system bus, the daemon in the foreground -------------------
# TuneD needs the system D-Bus (tuned-adm talks to it over the bus). PID 1 is not systemd, so
# nothing starts either: a private `dbus-daemon --system` if no bus is there, and `tuned` run by
# this script, both ended by their PIDs. TuneD starts in manual mode with no profile (an empty
# active_profile, profile_mode "manual"; /etc/tuned is restored at the end), so its starting
# state is the host as it is and `tuned-adm off` is its way back, as rollback is the agent's.
start_tuned() {
    if ! command -v tuned >/dev/null 2>&1; then
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q tuned >"$WORK/apt.log" 2>&1; then
            TUNED_STATUS="cannot run: apt-get install tuned failed: $(tail -1 "$WORK/apt.log")"
            return 1
        fi
        tar -C /etc -cf "$WORK/etc-tuned.tar" tuned # the package's pristine /etc/tuned
    fi
    if [ ! -S /run/dbus/system_bus_socket ]; then
        mkdir -p /run/dbus
        dbus-daemon --system --nofork --nopidfile &
        DBUS_PID=$!
        for _ in $(seq 1 100); do [ -S /run/dbus/system_bus_socket ] && break; sleep 0.05; done
        [ -S /run/dbus/system_bus_socket ] || { TUNED_STATUS="cannot run: dbus-daemon --system did not start"; return 1; }
    fi
    : >/etc/tuned/active_profile
    echo manual >/etc/tuned/profile_mode
    tuned --log="$WORK/tuned.log" &
    TUNED_PID=$!
    # Ready when tuned-adm gets an answer over the bus (`active` exits 1 with no profile).
    for _ in $(seq 1 200); do
        alive "$TUNED_PID" || break
        out=$(timeout 10 tuned-adm active 2>/dev/null || true)
        if [[ $out == *"active profile"* ]]; then
            TUNED_STATUS="ran"
            return 0
        fi
        sleep 0.1
    done
    TUNED_STATUS="cannot run: tuned did not answer on the bus (log: $(tail -1 "$WORK/tuned.log" 2>/dev/null))"
    return 1
}
if [ "$TUNED" = 1 ]; then
    start_tuned || echo "TuneD: $TUNED_STATUS" >&2
fi

{
    echo "date: $(date -u +%FT%TZ)"
    echo "host: $(hostname), kernel $(uname -r), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
    echo "agentctl: $("$BIN" --version) (release build, $BIN)"
    echo "hyperfine: $(hyperfine --version)"
    echo "tuned: $TUNED_STATUS${TUNED_PID:+ (pid $TUNED_PID)}$(command -v tuned >/dev/null && echo ", $(tuned --version 2>&1)")"
    if [ -n "$DBUS_PID" ]; then echo "dbus-daemon: private, pid $DBUS_PID"; else echo "dbus-daemon: not started here"; fi
} | tee "$OUT/apply-env.txt" >&2

# --- Sanity: one apply and rollback, exit codes and plan size --------------------------------
APPLY=("$BIN" tune apply --profile "$PROFILE")
ROLLBACK=("$BIN" tune rollback)
CHANGES=$("${APPLY[@]}" --dry-run --output json | jq '.changes | length')
set +e
"${APPLY[@]}" >/dev/null 2>&1; APPLY_RC=$?
"${ROLLBACK[@]}" >/dev/null 2>&1; ROLLBACK_RC=$?
set -e
case $APPLY_RC in 0|1) ;; *) echo "agentctl tune apply exited $APPLY_RC" >&2; exit 4 ;; esac
[ "$ROLLBACK_RC" = 0 ] || { echo "agentctl tune rollback exited $ROLLBACK_RC" >&2; exit 4; }
IGNORE=(); [ "$APPLY_RC" = 0 ] || IGNORE=(-i) # exit 1: only unfixable findings remain
echo "plan on this host: $CHANGES change(s); apply exits $APPLY_RC, rollback $ROLLBACK_RC" |
    tee -a "$OUT/apply-env.txt" >&2

# --- One hyperfine invocation --------------------------------------------------------------
# Each timed command gets its own --prepare (in order), so every timed run starts from the
# same state: apply from the host as it was (prepare: rollback), rollback from the applied
# profile (prepare: apply); likewise TuneD's switch from `off` and its `off` from the profile.
# -N: no intermediate shell. Commands run one after another in the order given; the last
# one of each pair leaves the host as it was.
cmds=(
    -n "agentctl tune apply --profile $PROFILE" --prepare "${ROLLBACK[*]}" "${APPLY[*]}"
    -n "agentctl tune rollback" --prepare "${APPLY[*]}" "${ROLLBACK[*]}"
)
if [ "$TUNED_STATUS" = ran ]; then
    cmds+=(
        -n "tuned-adm profile $PROFILE" --prepare "tuned-adm off" "tuned-adm profile $PROFILE"
        -n "tuned-adm off" --prepare "tuned-adm profile $PROFILE" "tuned-adm off"
    )
fi
hyperfine -N "${IGNORE[@]}" --warmup "$WARMUP" --runs "$RUNS" \
    --export-markdown "$OUT/apply.md" --export-json "$OUT/apply.json" "${cmds[@]}"

jq -r '
  def ms: . * 1e6 | round / 1000;
  .results[] | "\(.command): median \(.median | ms) ms, mean \(.mean | ms) ± \(.stddev | ms) ms, min \(.min | ms) ms, max \(.max | ms) ms (\(.times | length) runs)"
' "$OUT/apply.json" | tee "$OUT/apply-summary.txt"
if [ "$TUNED_STATUS" != ran ]; then echo "TuneD: $TUNED_STATUS" | tee -a "$OUT/apply-summary.txt"; fi

# TuneD's own time for each switch, from its log: "loading profile: X" to "static tuning from
# profile 'X' applied" (what tuned-adm waits for; tuned-adm itself polls for the daemon's
# answer once a second, which its wall-clock time above includes).
if [ "$TUNED_STATUS" = ran ] && [ -f "$WORK/tuned.log" ]; then
    awk -v p="$PROFILE" -v q="'" '
      function t(l,  a, h) { split(l, a, /[ ,]/); split(a[2], h, ":"); return (h[1]*3600 + h[2]*60 + h[3]) * 1000 + a[3] }
      index($0, "loading profile: " p) { start = t($0) }
      index($0, "static tuning from profile " q p q " applied") && start { print t($0) - start; start = 0 }
    ' "$WORK/tuned.log" | sort -n | awk -v p="$PROFILE" '
      { d[++n] = $1 }
      END {
        if (!n) exit
        m = (n % 2) ? d[(n + 1) / 2] : (d[n / 2] + d[n / 2 + 1]) / 2
        printf "tuned daemon, load + apply %s (its log, %d switches): median %s ms, min %s ms, max %s ms\n", p, n, m, d[1], d[n]
      }' | tee -a "$OUT/apply-summary.txt"
fi
