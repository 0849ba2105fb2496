//! sysctl: /proc/sys values, and whether the sysctl.d files read at boot keep them.

use std::collections::BTreeMap;

use crate::host::HostRoot;
use crate::profile::Expected;
use crate::profile::types::SysctlKey;
use crate::verify::{Class, Item, Status};

/// The file the agent owns; `zz` sorts after the usual `NN-` names so it is read last.
pub const AGENT_FILE: &str = "zz-node-agent.conf";

/// Directories systemd-sysctl reads at boot, highest precedence first: a file in an earlier
/// directory hides a file of the same name in a later one.
pub const SYSCTL_DIRS: [&str; 5] = [
    "/etc/sysctl.d",
    "/run/sysctl.d",
    "/usr/local/lib/sysctl.d",
    "/usr/lib/sysctl.d",
    "/lib/sysctl.d",
];

/// One assignment found in a sysctl.d file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Path components; a component may be a glob (`net.ipv4.conf.*.rp_filter`).
    pub pattern: Vec<String>,
    pub value: String,
    pub file: String,
    pub line: usize,
    /// A `-key` line without `=`: sets nothing, but keeps globs off this key.
    pub exclude: bool,
}

impl Assignment {
    fn is_glob(&self) -> bool {
        self.pattern.iter().any(|p| p.contains(['*', '?', '[']))
    }

    pub fn matches(&self, key: &SysctlKey) -> bool {
        let comps = key.components();
        self.pattern.len() == comps.len()
            && self.pattern.iter().zip(comps).all(|(p, c)| {
                if p.contains(['*', '?', '[']) {
                    glob::Pattern::new(p).is_ok_and(|g| g.matches(c))
                } else {
                    p == c
                }
            })
    }
}

/// The boot-time configuration: every assignment in the order systemd-sysctl applies them
/// (files sorted by name across all directories, same name resolved by directory precedence).
pub fn boot_config(host: &HostRoot) -> Vec<Assignment> {
    let mut files: BTreeMap<String, String> = BTreeMap::new();
    for dir in SYSCTL_DIRS {
        let Ok(names) = host.list(dir) else { continue };
        for name in names.into_iter().filter(|n| n.ends_with(".conf")) {
            files
                .entry(name.clone())
                .or_insert_with(|| format!("{dir}/{name}"));
        }
    }
    let mut out = Vec::new();
    for path in files.values() {
        if let Ok(text) = host.read(path) {
            parse_conf(&text, path, &mut out);
        }
    }
    out
}

/// Parses sysctl.d(5) syntax: `key = value`, comments with `#` or `;`, a leading `-` meaning
/// "ignore failure", and `-key` alone excluding the key from globs.
pub fn parse_conf(text: &str, file: &str, out: &mut Vec<Assignment>) {
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let (key, value, exclude) = match line.split_once('=') {
            Some((key, value)) => (key, value, false),
            None if line.starts_with('-') => (line, "", true),
            None => continue,
        };
        let key = key.trim();
        let key = key.strip_prefix('-').unwrap_or(key).trim();
        if key.is_empty() {
            continue;
        }
        out.push(Assignment {
            pattern: SysctlKey::split(key.strip_prefix('/').unwrap_or(key)),
            value: value.trim().to_owned(),
            file: file.to_owned(),
            line: i + 1,
            exclude,
        });
    }
}

pub fn verify(host: &HostRoot, wanted: &BTreeMap<SysctlKey, Expected>, out: &mut Vec<Item>) {
    if wanted.is_empty() {
        return;
    }
    let boot = boot_config(host);
    for (key, expected) in wanted {
        let path = key.proc_path();
        let item = super::check_value(
            host,
            Class::Sysctl,
            key.to_string(),
            &path,
            expected,
            &format!("this kernel has no sysctl {key} ({path} does not exist)"),
        );
        out.push(persistence(item, key, expected, &boot));
    }
}

/// The assignment that sets `key` at boot, as systemd-sysctl decides: the last explicit line
/// for the key wins, and a glob never sets a key that some line names explicitly (a `-key`
/// exclusion included), whatever the file order.
pub fn effective<'a>(boot: &'a [Assignment], key: &SysctlKey) -> Option<&'a Assignment> {
    match boot.iter().rev().find(|a| !a.is_glob() && a.matches(key)) {
        Some(explicit) => (!explicit.exclude).then_some(explicit),
        None => boot.iter().rev().find(|a| !a.exclude && a.matches(key)),
    }
}

/// Downgrades a passing item to `not-persistent` when a reboot would not keep the value.
fn persistence(item: Item, key: &SysctlKey, expected: &Expected, boot: &[Assignment]) -> Item {
    if item.status != Status::Pass {
        return item;
    }
    match effective(boot, key) {
        Some(last) if expected.is_met_by(&last.value) == Some(true) => item,
        Some(last) => item.status(Status::NotPersistent).reason(format!(
            "at boot {}:{} sets {}",
            last.file, last.line, last.value
        )),
        // A bound met by the kernel's own default needs no file; an exact value does.
        None if matches!(expected, Expected::Bound { .. }) => item,
        None => item
            .status(Status::NotPersistent)
            .reason("runtime only: no sysctl.d file sets it, a reboot restores the default"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_conf_syntax() {
        let mut out = Vec::new();
        parse_conf(
            "# c\n; c\n\nnet.core.somaxconn = 4096\n-net.ipv4.conf.*.rp_filter=2\n\
             net/ipv4/conf/eth0.100/rp_filter = 1\nno equals sign\n",
            "/etc/sysctl.d/x.conf",
            &mut out,
        );
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].pattern, ["net", "core", "somaxconn"]);
        assert_eq!(out[0].value, "4096");
        assert_eq!(out[0].line, 4);
        let eth: SysctlKey = "net.ipv4.conf.eth0/100.rp_filter".parse().unwrap();
        assert!(out[1].matches(&eth));
        assert!(out[2].matches(&eth));
        assert!(!out[0].matches(&eth));
    }
}
