# node-collector %postun ($1: 0 erase, 1 upgrade): systemd reload; try-restart on upgrade
# (%systemd_postun_with_restart); on erase the fleet history goes, and the package's own
# directories when empty (cargo-generate-rpm 0.21 cannot declare directories). The
# node-collector user stays (files may still belong to it).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -ge 1 ]; then
    systemctl try-restart node-collector.service >/dev/null 2>&1 || :
    exit 0
fi
# DynamicUser= keeps the state under /var/lib/private (with a link in /var/lib).
rm -rf /var/lib/node-collector /var/lib/private/node-collector
rmdir /etc/node-collector /usr/share/doc/node-collector 2>/dev/null || :
exit 0
