//! limits: pam_limits entries for login sessions, compared with what pam_limits would apply.
//!
//! pam_limits reads /etc/security/limits.conf, then /etc/security/limits.d/*.conf in name
//! order; for the same domain, item and type a later line wins. The agent's own file is
//! `zz-node-agent.conf` so it is read last unless someone names a file to sort after it.

use std::collections::BTreeMap;

use crate::host::HostRoot;
use crate::profile::LimitSetting;
use crate::profile::types::{LimitDomain, LimitItem, LimitValue};
use crate::verify::{Class, Item, Status};

pub const LIMITS_CONF: &str = "/etc/security/limits.conf";
pub const LIMITS_DIR: &str = "/etc/security/limits.d";
pub const AGENT_FILE: &str = "/etc/security/limits.d/zz-node-agent.conf";

/// Soft or hard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Soft,
    Hard,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Soft => "soft",
            Kind::Hard => "hard",
        }
    }
}

/// One limits line that sets a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub domain: String,
    pub kind: Kind,
    pub item: String,
    pub value: String,
    pub file: String,
    pub line: usize,
}

/// Parses limits.conf(5) lines: `<domain> <type> <item> <value>`; `-` sets soft and hard.
pub fn parse(text: &str, file: &str, out: &mut Vec<Entry>) {
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("");
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 4 {
            continue;
        }
        let kinds: &[Kind] = match f[1] {
            "soft" => &[Kind::Soft],
            "hard" => &[Kind::Hard],
            "-" => &[Kind::Soft, Kind::Hard],
            _ => continue,
        };
        for kind in kinds {
            out.push(Entry {
                domain: f[0].to_owned(),
                kind: *kind,
                item: f[2].to_owned(),
                value: f[3].to_owned(),
                file: file.to_owned(),
                line: i + 1,
            });
        }
    }
}

/// Every entry in the order pam_limits reads them.
pub fn read_all(host: &HostRoot) -> Vec<Entry> {
    let mut out = Vec::new();
    if let Ok(text) = host.read(LIMITS_CONF) {
        parse(&text, LIMITS_CONF, &mut out);
    }
    if let Ok(names) = host.list(LIMITS_DIR) {
        for name in names.iter().filter(|n| n.ends_with(".conf")) {
            let path = format!("{LIMITS_DIR}/{name}");
            if let Ok(text) = host.read(&path) {
                parse(&text, &path, &mut out);
            }
        }
    }
    out
}

pub fn verify(
    host: &HostRoot,
    wanted: &BTreeMap<LimitDomain, BTreeMap<LimitItem, LimitSetting>>,
    out: &mut Vec<Item>,
) {
    if wanted.is_empty() {
        return;
    }
    verify_entries(&read_all(host), wanted, out);
}

/// Checks `wanted` against limits entries given in pam_limits' reading order.
pub fn verify_entries(
    entries: &[Entry],
    wanted: &BTreeMap<LimitDomain, BTreeMap<LimitItem, LimitSetting>>,
    out: &mut Vec<Item>,
) {
    for (domain, items) in wanted {
        for (item, setting) in items {
            for (kind, want) in [(Kind::Soft, setting.soft), (Kind::Hard, setting.hard)] {
                let Some(want) = want else { continue };
                out.push(check(entries, domain, *item, kind, want));
            }
        }
    }
}

fn check(
    entries: &[Entry],
    domain: &LimitDomain,
    item: LimitItem,
    kind: Kind,
    want: LimitValue,
) -> Item {
    let key = format!("limits.{domain}.{item}.{}", kind.as_str());
    let out = Item::new(Class::Limits, key, want.to_string());
    let matching =
        |e: &&Entry| e.domain == domain.as_str() && e.item == item.as_str() && e.kind == kind;
    let Some(effective) = entries.iter().rev().find(matching) else {
        return out
            .path(AGENT_FILE)
            .status(Status::Drift)
            .reason("no limits file sets it");
    };
    let out = out.path(&effective.file).actual(&effective.value);
    let parsed: Result<LimitValue, _> = effective.value.parse();
    if parsed.as_ref() == Ok(&want) {
        return out;
    }
    let out = out.status(Status::Drift);
    let ours = entries
        .iter()
        .rev()
        .filter(matching)
        .find(|e| e.file == AGENT_FILE);
    match ours {
        Some(o) if effective.file != AGENT_FILE => out.reason(format!(
            "{}:{} overrides the agent's {} from {}:{}",
            effective.file, effective.line, o.value, o.file, o.line
        )),
        _ if parsed.is_err() => out.reason(format!(
            "{}:{}: {:?} is not a valid limit",
            effective.file, effective.line, effective.value
        )),
        _ => out.reason(format!("set at {}:{}", effective.file, effective.line)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_limits_syntax() {
        let mut out = Vec::new();
        parse(
            "# comment\n*  soft  nofile  1024 # trailing\n@trading - memlock unlimited\nbad line\n",
            "/f",
            &mut out,
        );
        assert_eq!(out.len(), 3);
        assert_eq!(
            (out[0].domain.as_str(), out[0].kind, out[0].value.as_str()),
            ("*", Kind::Soft, "1024")
        );
        assert_eq!(out[1].kind, Kind::Soft);
        assert_eq!(out[2].kind, Kind::Hard);
        assert_eq!(out[2].line, 3);
    }

    #[test]
    fn later_file_overrides_agent_file() {
        let mut entries = Vec::new();
        parse("* - nofile 1000000\n", AGENT_FILE, &mut entries);
        parse(
            "* soft nofile 4096\n",
            "/etc/security/limits.d/zzz-local.conf",
            &mut entries,
        );
        let domain: LimitDomain = "*".parse().unwrap();
        let soft = check(
            &entries,
            &domain,
            LimitItem::Nofile,
            Kind::Soft,
            LimitValue::Number(1_000_000),
        );
        assert_eq!(soft.status, Status::Drift);
        assert_eq!(soft.actual.as_deref(), Some("4096"));
        assert!(
            soft.reason
                .unwrap()
                .contains("zzz-local.conf:1 overrides the agent's 1000000")
        );
        let hard = check(
            &entries,
            &domain,
            LimitItem::Nofile,
            Kind::Hard,
            LimitValue::Number(1_000_000),
        );
        assert_eq!(hard.status, Status::Pass);
        let unl = check(
            &entries,
            &domain,
            LimitItem::Memlock,
            Kind::Hard,
            LimitValue::Unlimited,
        );
        assert_eq!(unl.status, Status::Drift);
        assert_eq!(unl.reason.as_deref(), Some("no limits file sets it"));
    }
}
