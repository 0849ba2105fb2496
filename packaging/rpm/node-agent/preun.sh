# node-agent %preun ($1: 0 erase, 1 upgrade): on erase, say when an apply is still in effect
# (the tuning stays: no package script changes kernel settings or the files the agent wrote),
# then what %systemd_preun does: disable and stop node-agentd.

# True when the rollback journal records host values the agent changed: asks agentctl (which
# reads the journal as the daemon does), or reads the journal itself when agentctl cannot answer.
node_agent_applied() {
    if [ -x /usr/bin/agentctl ] &&
        status=$(NODE_AGENT_STATE_DIR=/var/lib/node-agent /usr/bin/agentctl tune status --output json 2>/dev/null); then
        recorded=$(printf '%s\n' "$status" | sed -n 's/^ *"recorded_values": *\([0-9][0-9]*\).*/\1/p')
        [ -n "$recorded" ] && [ "$recorded" -gt 0 ]
        return
    fi
    [ -e /var/lib/node-agent/journal.json ] &&
        ! grep -Eq '"baseline": *\[ *\]' /var/lib/node-agent/journal.json
}

if [ "$1" -eq 0 ]; then
    if node_agent_applied; then
        cat >&2 <<'MSG'
node-agent: WARNING: a tuning profile applied with node-agent is still in effect.
  Removing the package does not undo it: kernel settings, /etc/sysctl.d/zz-node-agent.conf,
  /etc/security/limits.d/zz-node-agent.conf and unit drop-ins stay as they are.
  To restore the host's original values, run `agentctl tune rollback` first (reinstall
  node-agent to run it). The rollback journal stays in /var/lib/node-agent until then.
MSG
    fi
    systemctl --no-reload disable --now node-agentd.service >/dev/null 2>&1 || :
fi
exit 0
