//! The unbound workqueues' cpumasks.
//!
//! - `isolation.workqueue.cpumask`: /sys/devices/virtual/workqueue/cpumask, the CPUs every
//!   unbound workqueue may use (on 6.x kernels reading it gives what was requested minus the
//!   CPUs isolcpus=domain isolates);
//! - `isolation.workqueue.<name>`: the `cpumask` of every workqueue that shows one in sysfs
//!   (WQ_SYSFS: `writeback`, `blkcg_punt_bio`, …). Measured on 6.18: the per-workqueue file
//!   shows what was written to it, independent of the global mask, so each is checked and
//!   written on its own, and restoring them in any order gives the same result.
//!
//! Both hold hex masks as wide as the possible CPUs; they pass when within housekeeping and
//! apply writes the housekeeping mask. Every file is one item, so apply writes it once and
//! rollback restores it once (TuneD names writeback twice and leaves it changed on rollback).
//! `cpumask_requested` and `cpumask_isolated` (6.x) are read-only views and not checked.

use crate::host::HostRoot;
use crate::profile::Isolation;
use crate::profile::types::CpuList;
use crate::tuning::read_failure;
use crate::verify::{Class, Item, Status};

use super::irq::{MaskFile, check_mask, nr_cpu_ids};

pub const WORKQUEUE_DIR: &str = "/sys/devices/virtual/workqueue";

pub fn verify(host: &HostRoot, iso: &Isolation, out: &mut Vec<Item>) {
    let hk = &iso.housekeeping_cpus;
    let names = match host.list(WORKQUEUE_DIR) {
        Ok(n) => n,
        Err(e) => {
            let item = Item::new(Class::Isolation, "isolation.workqueue", hk.to_string())
                .path(WORKQUEUE_DIR);
            out.push(read_failure(
                item,
                &e,
                "this kernel shows no workqueues in sysfs",
            ));
            return;
        }
    };
    if host.on_read_only_mount(WORKQUEUE_DIR) {
        out.push(
            Item::new(Class::Isolation, "isolation.workqueue", hk.to_string())
                .path(WORKQUEUE_DIR)
                .status(Status::Unsupported)
                .reason(super::irq::READ_ONLY_HERE),
        );
        return;
    }
    let nr = nr_cpu_ids(host);
    check(
        host,
        hk,
        nr.clone(),
        "isolation.workqueue.cpumask".into(),
        &format!("{WORKQUEUE_DIR}/cpumask"),
        out,
    );
    for name in names {
        let path = format!("{WORKQUEUE_DIR}/{name}/cpumask");
        // Directories only (`cpumask`, `power`, `uevent` are not workqueues); a workqueue
        // without WQ_SYSFS has no directory at all.
        if !host.exists(&path) {
            continue;
        }
        check(
            host,
            hk,
            nr.clone(),
            format!("isolation.workqueue.{name}"),
            &path,
            out,
        );
    }
}

fn check(
    host: &HostRoot,
    hk: &CpuList,
    nr: Result<u32, String>,
    key: String,
    path: &str,
    out: &mut Vec<Item>,
) {
    check_mask(
        host,
        hk,
        nr,
        MaskFile {
            key,
            path,
            absent_means: "no such workqueue cpumask here",
            outside_means: "unbound work may run on",
        },
        out,
    );
}
