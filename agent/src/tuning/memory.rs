//! memory: transparent huge pages, swap, KSM, persistent huge pages.

use crate::change::{Target, Value};
use crate::host::{HostRoot, unescape_octal};
use crate::profile::Memory;
use crate::profile::types::{KsmState, SwapState};
use crate::verify::{Class, Item, Status};

const THP_DIR: &str = "/sys/kernel/mm/transparent_hugepage";
const NO_THP: &str = "this kernel has no transparent huge pages";

pub fn verify(host: &HostRoot, m: &Memory, out: &mut Vec<Item>) {
    if let Some(mode) = m.transparent_hugepage {
        out.push(super::check_choice(
            host,
            Class::Memory,
            "memory.transparent_hugepage.enabled".into(),
            &format!("{THP_DIR}/enabled"),
            mode.as_str(),
            NO_THP,
        ));
    }
    if let Some(mode) = m.transparent_hugepage_defrag {
        out.push(super::check_choice(
            host,
            Class::Memory,
            "memory.transparent_hugepage.defrag".into(),
            &format!("{THP_DIR}/defrag"),
            mode.as_str(),
            NO_THP,
        ));
    }
    if let Some(SwapState::Off) = m.swap {
        out.push(swap_item(host));
    }
    if let Some(ksm) = m.ksm {
        out.push(ksm_item(host, ksm));
    }
    for (size, expected) in &m.hugepages {
        let path = format!("/sys/kernel/mm/hugepages/{}/nr_hugepages", size.dir_name());
        out.push(super::check_value(
            host,
            Class::Memory,
            format!("memory.hugepages.{size}"),
            &path,
            expected,
            &format!("this machine has no {size} huge pages"),
        ));
    }
}

/// Active swap areas from /proc/swaps: (name, type).
pub fn active_swaps(text: &str) -> Vec<(String, String)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((unescape_octal(f.next()?), f.next()?.to_owned()))
        })
        .collect()
}

/// Swap entries /etc/fstab activates at boot: (line number, device).
pub fn fstab_swaps(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 3 || f[0].starts_with('#') || f[2] != "swap" {
                return None;
            }
            let noauto = f
                .get(3)
                .is_some_and(|o| o.split(',').any(|o| o == "noauto"));
            (!noauto).then(|| (i + 1, unescape_octal(f[0])))
        })
        .collect()
}

fn swap_item(host: &HostRoot) -> Item {
    let item = Item::new(Class::Memory, "memory.swap", "off").path("/proc/swaps");
    let text = match host.read("/proc/swaps") {
        Ok(t) => t,
        Err(e) => return super::read_failure(item, &e, "this kernel has no swap support"),
    };
    let active = active_swaps(&text);
    if !active.is_empty() {
        let list: Vec<String> = active.iter().map(|(n, t)| format!("{n} ({t})")).collect();
        let mut item = item
            .actual(format!("on: {}", list.join(", ")))
            .status(Status::Drift);
        for (device, _) in active {
            let target = Target::Swap { device };
            if let Ok(from) = crate::change::observe(host, &target) {
                item = item.fix(target, from, Value::SwapOff);
            }
        }
        return item;
    }
    let item = item.actual("off");
    match host.read("/etc/fstab") {
        Ok(fstab) => match fstab_swaps(&fstab).first() {
            Some((line, dev)) => item
                .status(Status::NotPersistent)
                .reason(format!("/etc/fstab:{line} activates swap {dev} at boot")),
            None => item,
        },
        Err(_) => item,
    }
}

fn ksm_item(host: &HostRoot, want: KsmState) -> Item {
    let path = "/sys/kernel/mm/ksm/run";
    let item = Item::new(Class::Memory, "memory.ksm", want.as_str()).path(path);
    let raw = match host.read_value(path) {
        Ok(v) => v,
        Err(e) => return super::read_failure(item, &e, "this kernel has no KSM"),
    };
    // run: 0 stopped, 1 running, 2 stopped after unmerging every page.
    let actual = match raw.as_str() {
        "0" | "2" => "off",
        "1" => "on",
        _ => {
            return item
                .actual(raw)
                .status(Status::Error)
                .reason("unexpected value in ksm/run");
        }
    };
    let item = item.actual(actual);
    if actual == want.as_str() {
        item
    } else {
        let to = if want == KsmState::On { "1" } else { "0" };
        super::fix_file(item.status(Status::Drift), path, &raw, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_and_fstab() {
        let swaps = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n\
                     /swap\\040file                             file\t\t1048572\t\t0\t\t-2\n";
        assert_eq!(
            active_swaps(swaps),
            [("/swap file".to_string(), "file".to_string())]
        );
        assert!(active_swaps("Filename\tType\tSize\tUsed\tPriority\n").is_empty());
        let fstab = "# /dev/sda2 none swap sw 0 0\nUUID=1 / ext4 defaults 0 1\n\
                     /dev/sdb none swap sw 0 0\n/swapfile none swap noauto 0 0\n";
        assert_eq!(fstab_swaps(fstab), [(3, "/dev/sdb".to_string())]);
    }
}
