//! mount: required options of mount points, from /proc/self/mountinfo, and whether
//! /etc/fstab keeps them at boot.

use std::collections::BTreeSet;

use crate::change::{MOUNTINFO, Target, Value, merge_options, options_in};
use crate::host::{HostRoot, unescape_octal};
use crate::profile::MountRule;
use crate::verify::{Class, Item, Status};

pub fn verify(host: &HostRoot, rules: &[MountRule], out: &mut Vec<Item>) {
    if rules.is_empty() {
        return;
    }
    let mountinfo = host.read(MOUNTINFO).map_err(|e| e.to_string());
    let fstab = host.read("/etc/fstab").ok();
    for rule in rules {
        let expected: Vec<&str> = rule.options.iter().map(|o| o.as_str()).collect();
        let item = Item::new(
            Class::Mount,
            format!("mount.{}.options", rule.path),
            expected.join(","),
        )
        .path(MOUNTINFO);
        let mountinfo = match &mountinfo {
            Ok(m) => m,
            Err(e) => {
                out.push(item.status(Status::Error).reason(e.clone()));
                continue;
            }
        };
        let Some(have) = options_in(mountinfo, rule.path.as_str()) else {
            out.push(
                item.status(Status::Unsupported)
                    .reason(format!("{} is not a mount point", rule.path)),
            );
            continue;
        };
        let item = item.actual(have.join(","));
        let missing: Vec<&str> = expected
            .iter()
            .copied()
            .filter(|o| !have.iter().any(|h| h == o))
            .collect();
        if !missing.is_empty() {
            let required: Vec<String> = expected.iter().map(|o| o.to_string()).collect();
            let to = merge_options(&have, &required);
            out.push(
                item.status(Status::Drift)
                    .reason(format!("missing {}", missing.join(",")))
                    .fix(
                        Target::Mount {
                            path: rule.path.to_string(),
                        },
                        Value::MountOptions { options: have },
                        Value::MountOptions { options: to },
                    ),
            );
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
