# node-collector %preun ($1: 0 erase, 1 upgrade): on erase, what %systemd_preun does.
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now node-collector.service >/dev/null 2>&1 || :
fi
exit 0
