# node-agent %postun ($1: 0 erase, 1 upgrade): systemd reload; on upgrade what
# %systemd_postun_with_restart does (try-restart: only a running node-agentd restarts). On
# erase, the state directory goes unless an apply is still in effect: then the rollback
# journal stays, and this says why. rpm itself keeps a changed agent.toml as .rpmsave.
# Kernel settings, the files the agent wrote and the node-agent-admin group are left alone.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -ge 1 ]; then
    systemctl try-restart node-agentd.service >/dev/null 2>&1 || :
    exit 0
fi
state=/var/lib/node-agent
# agentctl is gone by now: the journal itself says whether host values are recorded.
if [ -e "$state/journal.json" ] && ! grep -Eq '"baseline": *\[ *\]' "$state/journal.json"; then
    cat >&2 <<'MSG'
node-agent: kept /var/lib/node-agent: its rollback journal records the host's original values
  of a tuning profile that is still applied. Reinstall node-agent and run
  `agentctl tune rollback` to restore them; then remove /var/lib/node-agent.
MSG
else
    rm -rf "$state"
fi
# cargo-generate-rpm 0.21 cannot declare directories (its `dir = true` assets fail): the
# package's own directories go here, when empty.
rmdir /usr/share/node-agent/profiles /usr/share/node-agent /usr/share/doc/node-agent \
    /etc/node-agent 2>/dev/null || :
exit 0
