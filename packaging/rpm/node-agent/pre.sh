# node-agent %pre: the admin group exists before the files are laid down (Fedora/RHEL create
# system groups in %pre). Members of node-agent-admin may use the daemon's socket.
getent group node-agent-admin >/dev/null || groupadd --system node-agent-admin
exit 0
