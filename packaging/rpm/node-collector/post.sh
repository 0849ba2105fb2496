# node-collector %post ($1: 1 install, 2+ upgrade): the static node-collector user of its
# sysusers.d file (the unit uses it when it exists: TLS keys can be group-readable by it), a
# systemd reload, and on first install what %systemd_post does: `systemctl preset` (enabled
# only if the site's preset policy says so). Not started: it needs certificates and hosts first.
systemd-sysusers /usr/lib/sysusers.d/node-collector.conf >/dev/null 2>&1 || :
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
    systemctl --no-reload preset node-collector.service >/dev/null 2>&1 || :
fi
exit 0
