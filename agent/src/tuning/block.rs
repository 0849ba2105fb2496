//! block: I/O scheduler and read-ahead per device, selected by globs over /sys/block.

use crate::host::HostRoot;
use crate::profile::types::IoScheduler;
use crate::profile::{BlockRule, Expected};
use crate::verify::{Class, Item, Status};

pub fn verify(host: &HostRoot, rules: &[BlockRule], out: &mut Vec<Item>) {
    if rules.is_empty() {
        return;
    }
    let devices = match host.list("/sys/block") {
        Ok(d) => d,
        Err(e) => {
            let item = Item::new(Class::Block, "block", "readable").path("/sys/block");
            out.push(super::read_failure(
                item,
                &e,
                "no /sys/block on this machine",
            ));
            return;
        }
    };
    for rule in rules {
        if !devices.iter().any(|d| rule.devices.matches(d)) {
            out.push(
                Item::new(
                    Class::Block,
                    format!("block.{}", rule.devices),
                    "a matching device",
                )
                .path("/sys/block")
                .status(Status::Unsupported)
                .reason(format!(
                    "no block device matches {} (devices: {})",
                    rule.devices,
                    if devices.is_empty() {
                        "none".into()
                    } else {
                        devices.join(" ")
                    }
                )),
            );
        }
    }
    for dev in &devices {
        // Later rules win, field by field, for a device several globs match.
        let (mut scheduler, mut read_ahead): (Option<IoScheduler>, Option<&Expected>) =
            (None, None);
        for rule in rules.iter().filter(|r| r.devices.matches(dev)) {
            scheduler = rule.scheduler.or(scheduler);
            read_ahead = rule.read_ahead_kb.as_ref().or(read_ahead);
        }
        if let Some(s) = scheduler {
            out.push(super::check_choice(
                host,
                Class::Block,
                format!("block.{dev}.scheduler"),
                &format!("/sys/block/{dev}/queue/scheduler"),
                s.as_str(),
                "this device has no I/O scheduler",
            ));
        }
        if let Some(ra) = read_ahead {
            out.push(super::check_value(
                host,
                Class::Block,
                format!("block.{dev}.read_ahead_kb"),
                &format!("/sys/block/{dev}/queue/read_ahead_kb"),
                ra,
                "this device has no read-ahead setting",
            ));
        }
    }
}
