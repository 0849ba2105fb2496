# node-agent %post ($1: 1 install, 2+ upgrade): the state directory, systemd reload, and on
# first install what %systemd_post does: enable node-agentd if, and only if, the systemd preset
# policy says so (RHEL's default preset disables it; a site preset file enables it). The service
# is not started here: RPM packages leave that to the preset and the administrator.
# Nothing here touches kernel settings or the files the agent writes.
install -d -m 0700 -o root -g root /var/lib/node-agent
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
    systemctl --no-reload preset node-agentd.service >/dev/null 2>&1 || :
fi
exit 0
