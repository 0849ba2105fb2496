//! The plan: every change apply would make, computed from the verify report (the observed
//! state compared with the profile) and the agent's own persistence files. Pure: it reads
//! nothing itself beyond what `observe_persistence` returned.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::change::{Target, Value, observe};
use crate::host::HostRoot;
use crate::profile::{Expected, Profile};
use crate::verify::{Class, Item, ProfileRef, Report, Status};

use super::{limits, sysctl};

pub const PLAN_SCHEMA_VERSION: u32 = 1;
pub const SYSCTL_FILE: &str = "/etc/sysctl.d/zz-node-agent.conf";

/// One change: `class key: from → to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub class: Class,
    pub key: String,
    pub target: Target,
    pub from: Value,
    pub to: Value,
}

/// An item apply leaves alone, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub class: Class,
    pub key: String,
    pub status: Status,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub schema_version: u32,
    pub profile: ProfileRef,
    pub host: String,
    /// In the order apply makes them: the agent's files first, then the running values.
    pub changes: Vec<Change>,
    /// Knobs this machine lacks.
    pub unsupported: Vec<Skipped>,
    /// Findings apply cannot fix (a later file overriding the agent's, fstab lines, the PM QoS
    /// hold that is the daemon's).
    pub not_fixable: Vec<Skipped>,
}

/// The agent's own persistence files as they are now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persistence {
    pub sysctl_file: Value,
    pub limits_file: Value,
    /// The boot-time sysctl assignments from every file but the agent's.
    pub sysctl_others: Vec<sysctl::Assignment>,
    /// Every limits entry from every file but the agent's.
    pub limits_others: Vec<limits::Entry>,
}

/// Reads the agent's persistence files and everyone else's that affect them.
pub fn observe_persistence(host: &HostRoot) -> Persistence {
    let read = |path: &str| {
        observe(
            host,
            &Target::ConfigFile {
                path: path.to_owned(),
            },
        )
        .unwrap_or(Value::Absent)
    };
    Persistence {
        sysctl_file: read(SYSCTL_FILE),
        limits_file: read(limits::AGENT_FILE),
        sysctl_others: sysctl::boot_config(host)
            .into_iter()
            .filter(|a| a.file != SYSCTL_FILE)
            .collect(),
        limits_others: limits::read_all(host)
            .into_iter()
            .filter(|e| e.file != limits::AGENT_FILE)
            .collect(),
    }
}

/// What a plan covers.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Everything `tune apply` changes (not the boot loader).
    All,
    /// These classes: the daemon's runtime re-apply; `[Class::Cmdline]` for the boot loader.
    Classes(&'a [Class]),
    /// Exactly these items by key (enforce mode), and the agent's files of their classes.
    Items(&'a [String]),
}

impl<'a> From<Option<&'a [Class]>> for Scope<'a> {
    fn from(classes: Option<&'a [Class]>) -> Self {
        classes.map_or(Scope::All, Scope::Classes)
    }
}

/// The plan for `scope` from a verify report and the agent's persistence files.
pub fn plan(profile: &Profile, report: &Report, persisted: &Persistence, scope: Scope<'_>) -> Plan {
    let wanted_item = |i: &Item| match scope {
        Scope::All => true,
        Scope::Classes(cs) => cs.contains(&i.class),
        Scope::Items(keys) => keys.contains(&i.key),
    };
    let wanted = |c: Class| match scope {
        Scope::All => true,
        Scope::Classes(cs) => cs.contains(&c),
        Scope::Items(_) => report.items.iter().any(|i| i.class == c && wanted_item(i)),
    };
    // The boot loader is changed only when asked for by name (`agentctl isolation bootloader
    // --write`): a routine apply must not change how the host boots.
    let boot = matches!(scope, Scope::Classes(cs) if cs.contains(&Class::Cmdline));
    let mut out = Plan {
        schema_version: PLAN_SCHEMA_VERSION,
        profile: report.profile.clone(),
        host: report.host.clone(),
        changes: Vec::new(),
        unsupported: Vec::new(),
        not_fixable: Vec::new(),
    };
    // Runtime changes go after the agent's files (below): an apply interrupted after raising
    // a bound then finds it in the file, so the next apply, which sees the bound met, keeps it.
    let mut runtime = Vec::new();
    for item in report.items.iter().filter(|i| wanted_item(i)) {
        match item.status {
            Status::Pass => {}
            Status::Unsupported => out.unsupported.push(skipped(item, "")),
            Status::PendingReboot if !boot || item.fixes.is_empty() => {
                let mut s = skipped(item, "reboot to apply");
                if !item.fixes.is_empty() {
                    s.reason = "the boot loader does not set it: run `agentctl isolation \
                                bootloader --write`, then reboot"
                        .into();
                }
                out.not_fixable.push(s);
            }
            Status::Drift | Status::PendingReboot if !item.fixes.is_empty() => {
                for f in &item.fixes {
                    // Several items can be fixed by one change (a unit's drop-in holds all
                    // its limits): plan it once.
                    if runtime.iter().any(|c: &Change| c.target == f.target) {
                        continue;
                    }
                    runtime.push(Change {
                        class: item.class,
                        key: match &f.target {
                            Target::ConfigFile { path } => path.clone(),
                            _ => item.key.clone(),
                        },
                        target: f.target.clone(),
                        from: f.from.clone(),
                        to: f.to.clone(),
                    });
                }
            }
            // sysctl and limits findings are fixed by the agent's files, checked below.
            _ if matches!(item.class, Class::Sysctl | Class::Limits) => {}
            _ => out
                .not_fixable
                .push(skipped(item, "apply cannot change this")),
        }
    }
    let s = &profile.settings;
    if wanted(Class::Sysctl) && !s.sysctl.is_empty() {
        let content = sysctl_file(profile, report, persisted);
        // What systemd-sysctl would apply at boot with the new file in place: a file read
        // after the agent's that sets another value explicitly still wins, and apply cannot
        // fix that.
        let ours = file_name(SYSCTL_FILE);
        let mut boot: Vec<sysctl::Assignment> = persisted
            .sysctl_others
            .iter()
            .filter(|a| file_name(&a.file) < ours)
            .cloned()
            .collect();
        sysctl::parse_conf(&content, SYSCTL_FILE, &mut boot);
        boot.extend(
            persisted
                .sysctl_others
                .iter()
                .filter(|a| file_name(&a.file) > ours)
                .cloned(),
        );
        persist(
            &mut out,
            Class::Sysctl,
            SYSCTL_FILE,
            &persisted.sysctl_file,
            content,
        );
        for (key, expected) in &s.sysctl {
            if let Some(eff) = sysctl::effective(&boot, key)
                && eff.file != SYSCTL_FILE
                && expected.is_met_by(&eff.value) != Some(true)
            {
                out.not_fixable.push(Skipped {
                    class: Class::Sysctl,
                    key: key.to_string(),
                    status: Status::NotPersistent,
                    reason: format!(
                        "at boot {}:{} sets {}, after {SYSCTL_FILE}",
                        eff.file, eff.line, eff.value
                    ),
                });
            }
        }
    }
    if wanted(Class::Limits) && !s.limits.is_empty() {
        let content = limits_file(profile);
        persist(
            &mut out,
            Class::Limits,
            limits::AGENT_FILE,
            &persisted.limits_file,
            content.clone(),
        );
        // What pam_limits would see with the new file in place (limits.conf first, then
        // limits.d by name).
        let ours = file_name(limits::AGENT_FILE);
        let before_ours =
            |e: &&limits::Entry| e.file == limits::LIMITS_CONF || file_name(&e.file) < ours;
        let mut entries: Vec<limits::Entry> = persisted
            .limits_others
            .iter()
            .filter(before_ours)
            .cloned()
            .collect();
        limits::parse(&content, limits::AGENT_FILE, &mut entries);
        entries.extend(
            persisted
                .limits_others
                .iter()
                .filter(|e| !before_ours(e))
                .cloned(),
        );
        let mut after = Vec::new();
        limits::verify_entries(&entries, &s.limits, &mut after);
        out.not_fixable.extend(
            after
                .iter()
                .filter(|i| i.status != Status::Pass)
                .map(|i| skipped(i, "a limits file read after the agent's overrides it")),
        );
    }
    out.changes.extend(runtime);
    out
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn skipped(item: &Item, fallback: &str) -> Skipped {
    Skipped {
        class: item.class,
        key: item.key.clone(),
        status: item.status,
        reason: item.reason.clone().unwrap_or_else(|| fallback.to_owned()),
    }
}

fn persist(out: &mut Plan, class: Class, path: &str, current: &Value, content: String) {
    let to = Value::text(content);
    if *current != to {
        out.changes.push(Change {
            class,
            key: path.to_owned(),
            target: Target::ConfigFile {
                path: path.to_owned(),
            },
            from: current.clone(),
            to,
        });
    }
}

const HEADER: &str = "# Written by node-agent (agentctl tune apply); do not edit.\n\
                      # Changes here are overwritten by the next apply and removed by\n\
                      # `agentctl tune rollback`. Put local settings in a file that sorts\n\
                      # before this one.\n";

/// The agent's sysctl.d file: every exact value; a bound only when apply writes it now or the
/// file already holds it (so a value the agent raised survives a reboot, while a bound the
/// kernel default meets is never pinned to a lower number).
fn sysctl_file(profile: &Profile, report: &Report, persisted: &Persistence) -> String {
    let mut ours = Vec::new();
    if let Value::Text { value } = &persisted.sysctl_file {
        sysctl::parse_conf(value, SYSCTL_FILE, &mut ours);
    }
    let items: BTreeMap<&str, &Item> = report
        .items
        .iter()
        .filter(|i| i.class == Class::Sysctl)
        .map(|i| (i.key.as_str(), i))
        .collect();
    let mut out = format!("{HEADER}# profile: {}\n", profile.name);
    for (key, expected) in &profile.settings.sysctl {
        let name = key.to_string();
        if items
            .get(name.as_str())
            .is_some_and(|i| i.status == Status::Unsupported)
        {
            continue;
        }
        let value = match expected {
            Expected::Exact(v) => Some(crate::profile::value::normalize_whitespace(v)),
            Expected::Bound { .. } => {
                let writing = items
                    .get(name.as_str())
                    .and_then(|i| i.fixes.first())
                    .and_then(|f| match &f.to {
                        Value::Text { value } => Some(value.clone()),
                        _ => None,
                    });
                let kept = sysctl::effective(&ours, key)
                    .map(|a| a.value.clone())
                    .filter(|v| expected.is_met_by(v) == Some(true));
                writing.or(kept)
            }
        };
        if let Some(v) = value {
            let _ = writeln!(out, "{name} = {v}");
        }
    }
    out
}

/// The agent's limits.d file: every limit of the profile.
fn limits_file(profile: &Profile) -> String {
    let mut out = format!("{HEADER}# profile: {}\n", profile.name);
    for (domain, items) in &profile.settings.limits {
        for (item, setting) in items {
            for (kind, v) in [("soft", setting.soft), ("hard", setting.hard)] {
                if let Some(v) = v {
                    let _ = writeln!(out, "{domain:<16} {kind:<4} {item:<12} {v}");
                }
            }
        }
    }
    out
}

/// `class key: from → to`, as plans, applies and rollbacks print a change.
pub fn change_line(class: Class, key: &str, from: &Value, to: &Value) -> String {
    format!(
        "{} {key}: {} → {}",
        class.as_str(),
        from.describe(),
        to.describe()
    )
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// `class key: current → target`, one line a change, then what is left alone.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "plan for profile {} ({})  host {}",
            self.profile.name, self.profile.path, self.host
        );
        if self.changes.is_empty() {
            out.push_str("\nno changes: the host already matches the profile\n");
        } else {
            let _ = writeln!(out, "\n{} change(s):", self.changes.len());
            for c in &self.changes {
                let _ = writeln!(out, "  {}", change_line(c.class, &c.key, &c.from, &c.to));
            }
        }
        for (title, list) in [
            ("not fixable by apply", &self.not_fixable),
            ("unsupported here, skipped", &self.unsupported),
        ] {
            if list.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\n{title}:");
            for s in list {
                let _ = writeln!(
                    out,
                    "  {} {} ({}): {}",
                    s.class.as_str(),
                    s.key,
                    s.status.as_str(),
                    s.reason
                );
            }
        }
        out
    }
}
