//! The kernel command line of the isolation layout and the boot loader change that sets it.

use crate::host::HostRoot;
use crate::profile::Isolation;
use crate::verify::Item;

pub fn verify(_host: &HostRoot, _iso: &Isolation, _out: &mut Vec<Item>) {}
