//! clocksource: the kernel's current clocksource.

use crate::host::HostRoot;
use crate::profile::Clocksource;
use crate::verify::{Class, Item, Status};

const DIR: &str = "/sys/devices/system/clocksource/clocksource0";

pub fn verify(host: &HostRoot, cs: &Clocksource, out: &mut Vec<Item>) {
    let want = cs.current.as_str();
    let path = format!("{DIR}/current_clocksource");
    let item = Item::new(Class::Clocksource, "clocksource.current", want).path(&path);
    let current = match host.read_value(&path) {
        Ok(c) => c,
        Err(e) => {
            out.push(super::read_failure(
                item,
                &e,
                "this kernel exposes no clocksource",
            ));
            return;
        }
    };
    let item = item.actual(&current);
    if current == want {
        out.push(item);
        return;
    }
    let available = host
        .read_value(format!("{DIR}/available_clocksource"))
        .unwrap_or_default();
    out.push(if available.split_whitespace().any(|c| c == want) {
        super::fix_file(item.status(Status::Drift), &path, &current, want)
    } else {
        item.status(Status::Unsupported).reason(format!(
            "{want} is not available here (available: {available})"
        ))
    });
}
