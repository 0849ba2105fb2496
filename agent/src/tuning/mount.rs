//! mount: required options of mount points, from /proc/self/mountinfo, and whether
//! /etc/fstab keeps them at boot.

use std::collections::BTreeSet;

use procfs_core::FromRead;
use procfs_core::process::MountInfos;

use crate::change::{Target, Value};
use crate::host::{HostRoot, unescape_octal};
use crate::profile::MountRule;
use crate::verify::{Class, Item, Status};

const MOUNTINFO: &str = "/proc/self/mountinfo";

pub fn verify(host: &HostRoot, rules: &[MountRule], out: &mut Vec<Item>) {
    if rules.is_empty() {
        return;
    }
    let mounts = host
        .read(MOUNTINFO)
        .map_err(|e| e.to_string())
        .and_then(|t| MountInfos::from_read(t.as_bytes()).map_err(|e| format!("{MOUNTINFO}: {e}")));
    let fstab = host.read("/etc/fstab").ok();
    for rule in rules {
        let expected: Vec<&str> = rule.options.iter().map(|o| o.as_str()).collect();
        let item = Item::new(
            Class::Mount,
            format!("mount.{}.options", rule.path),
            expected.join(","),
        )
        .path(MOUNTINFO);
        let mounts = match &mounts {
            Ok(m) => m,
            Err(e) => {
                out.push(item.status(Status::Error).reason(e.clone()));
                continue;
            }
        };
        // The last entry for a path is the one on top, the one processes see.
        let Some(mount) = mounts
            .0
            .iter()
            .rev()
            .find(|m| unescape_octal(&m.mount_point.to_string_lossy()) == rule.path.as_str())
        else {
            out.push(
                item.status(Status::Unsupported)
                    .reason(format!("{} is not a mount point", rule.path)),
            );
            continue;
        };
        let mut have: BTreeSet<String> = mount
            .mount_options
            .iter()
            .chain(mount.super_options.iter())
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k.clone(),
            })
            .collect();
        crate::change::add_implicit_options(&mut have);
        let mut shown: Vec<&str> = mount.mount_options.keys().map(String::as_str).collect();
        shown.sort();
        let item = item.actual(shown.join(","));
        let missing: Vec<&str> = expected
            .iter()
            .copied()
            .filter(|o| !have.contains(*o))
            .collect();
        if !missing.is_empty() {
            let mut item = item
                .status(Status::Drift)
                .reason(format!("missing {}", missing.join(",")));
            let target = Target::Mount {
                path: rule.path.to_string(),
            };
            if let Ok(Value::MountOptions { options }) = crate::change::observe(host, &target) {
                let required: Vec<String> = expected.iter().map(|o| o.to_string()).collect();
                let to = crate::change::merge_options(&options, &required);
                item = item.fix(
                    target,
                    Value::MountOptions { options },
                    Value::MountOptions { options: to },
                );
            }
            out.push(item);
            continue;
        }
        out.push(
            match fstab.as_deref().map(|f| fstab_entry(f, rule.path.as_str())) {
                Some(Some((line, opts))) => {
                    let opts: BTreeSet<&str> = opts.split(',').collect();
                    let lacking: Vec<&str> = expected
                        .iter()
                        .copied()
                        .filter(|o| !opts.contains(o) && !implied(o, &opts))
                        .collect();
                    if lacking.is_empty() {
                        item
                    } else {
                        item.status(Status::NotPersistent).reason(format!(
                            "/etc/fstab:{line} lacks {}: the next mount drops them",
                            lacking.join(",")
                        ))
                    }
                }
                _ => item.reason("no /etc/fstab entry: persistence not checked"),
            },
        );
    }
}

/// Options mount(8) and the kernel use unless the fstab line names another of the same
/// family: `defaults` means rw, suid, dev, exec, async; relatime is the kernel's default.
fn implied(option: &str, fstab_options: &BTreeSet<&str>) -> bool {
    const DEFAULTS: [&str; 7] = ["rw", "relatime", "suid", "dev", "exec", "async", "diratime"];
    DEFAULTS.contains(&option)
        && !fstab_options
            .iter()
            .any(|o| crate::change::family(o) == crate::change::family(option))
}

/// The fstab line for a mount point: (line number, options field).
fn fstab_entry(fstab: &str, path: &str) -> Option<(usize, String)> {
    fstab
        .lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 4 || f[0].starts_with('#') || unescape_octal(f[1]) != path {
                return None;
            }
            Some((i + 1, f[3].to_owned()))
        })
        .last()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_imply_kernel_default_options() {
        let defaults: BTreeSet<&str> = ["defaults"].into();
        assert!(implied("relatime", &defaults));
        assert!(implied("rw", &defaults));
        assert!(!implied("noatime", &defaults));
        let noatime: BTreeSet<&str> = ["defaults", "noatime"].into();
        assert!(!implied("relatime", &noatime));
        let ro: BTreeSet<&str> = ["ro"].into();
        assert!(!implied("rw", &ro));
    }
}
