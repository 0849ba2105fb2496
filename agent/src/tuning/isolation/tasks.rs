//! The stray-task audit: tasks that may run, or last ran, on an isolated CPU.

use crate::host::HostRoot;
use crate::profile::Isolation;
use crate::verify::Item;

pub fn verify(_host: &HostRoot, _iso: &Isolation, _out: &mut Vec<Item>) {}
