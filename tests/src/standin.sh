#!/bin/sh
# Stand-in for a trading service (node-agent e2e harness). Appends one line per event to
# $STANDIN_LOG (default /var/log/standin.log); NS is nanoseconds since the Unix epoch:
#   start NAME NS PID     at start (PID: its own, as systemd's MainPID reports it)
#   fail-start NAME NS    instead, when FAIL_START=1, and exits 1
#   stop-begin NAME NS    on SIGTERM; then it drains for DRAIN_MS milliseconds (default 0)
#   stop-end NAME NS      after the drain; then it exits 0
name=${1:-${STANDIN_NAME:-standin}}
log=${STANDIN_LOG:-/var/log/standin.log}
drain_ms=${DRAIN_MS:-0}

now() { date +%s%N; }

on_term() {
    echo "stop-begin $name $(now)" >>"$log"
    # The idle sleep below: $! is set as soon as `sleep &` returns, and a trap runs only after
    # that command, so it always names it. (Under systemd the cgroup kill ends it too.)
    sleeper=$!
    [ -n "$sleeper" ] && kill "$sleeper" 2>/dev/null && wait "$sleeper"
    sleep "$((drain_ms / 1000)).$(printf %03d $((drain_ms % 1000)))"
    echo "stop-end $name $(now)" >>"$log"
    exit 0
}

if [ "${FAIL_START:-0}" = 1 ]; then
    echo "fail-start $name $(now)" >>"$log"
    exit 1
fi
trap on_term TERM
echo "start $name $(now) $$" >>"$log"
# A shell runs a trap only between commands: waiting on a background sleep lets SIGTERM
# interrupt the wait at once.
while :; do
    sleep infinity &
    wait $!
done
