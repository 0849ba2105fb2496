//! IRQ affinity: every IRQ, the default for new IRQs, irqbalance's banned CPUs.

use crate::host::HostRoot;
use crate::profile::Isolation;
use crate::verify::Item;

pub fn verify(_host: &HostRoot, _iso: &Isolation, _out: &mut Vec<Item>) {}

/// irqbalance's configuration files (Debian, RHEL): it reads them only at start.
pub const IRQBALANCE_CONFIGS: &[&str] = &["/etc/default/irqbalance", "/etc/sysconfig/irqbalance"];

/// The service to restart after `path` changed, so it reads the new file.
pub fn restart_after(path: &str) -> Option<&'static str> {
    IRQBALANCE_CONFIGS
        .contains(&path)
        .then_some("irqbalance.service")
}
