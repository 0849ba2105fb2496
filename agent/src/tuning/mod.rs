//! Knob classes. Each class reads what its section of the profile names, through the
//! [`HostRoot`], and turns it into report items. Reading never writes.

pub mod block;
pub mod clocksource;
pub mod cpu;
pub mod isolation;
pub mod limits;
pub mod memory;
pub mod mount;
pub mod plan;
pub mod sysctl;
pub mod units;

use crate::change::{Target, Value};
use crate::host::{HostError, HostRoot};
use crate::profile::{Expected, Profile};
use crate::verify::{Class, Item, ProfileRef, Report, Status};

/// Reads the host afresh and compares every value the profile names (without the managed
/// units, which need the bus: see [`verify_with_units`]).
pub fn verify(host: &HostRoot, profile: &Profile) -> Report {
    verify_with_units(host, profile, None)
}

/// [`verify`], plus the managed units' limits from what the bus said about them.
pub fn verify_with_units(
    host: &HostRoot,
    profile: &Profile,
    units_observed: Option<&units::UnitsObserved>,
) -> Report {
    let s = &profile.settings;
    let mut items = Vec::new();
    sysctl::verify(host, &s.sysctl, &mut items);
    if let Some(cpu) = &s.cpu {
        cpu::verify(host, cpu, &mut items);
    }
    if let Some(memory) = &s.memory {
        memory::verify(host, memory, &mut items);
    }
    block::verify(host, &s.block, &mut items);
    limits::verify(host, &s.limits, &mut items);
    mount::verify(host, &s.mount, &mut items);
    if let Some(cs) = &s.clocksource {
        clocksource::verify(host, cs, &mut items);
    }
    if let Some(observed) = units_observed {
        units::verify(host, &profile.name, &s.limits, observed, &mut items);
    }
    if let Some(iso) = &s.isolation {
        isolation::verify(host, iso, units_observed, &mut items);
    }
    Report::new(
        ProfileRef {
            name: profile.name.clone(),
            path: profile.source.display().to_string(),
        },
        host.hostname(),
        items,
    )
}

/// The item for a value that could not be read: `unsupported` when the kernel file does not
/// exist (the knob is absent here), `error` otherwise.
pub(crate) fn read_failure(item: Item, err: &HostError, absent_means: &str) -> Item {
    if err.is_not_found() {
        item.status(Status::Unsupported).reason(absent_means)
    } else {
        item.status(Status::Error).reason(err.to_string())
    }
}

/// Reads a one-value kernel file and compares it with `expected`.
pub(crate) fn check_value(
    host: &HostRoot,
    class: Class,
    key: String,
    path: &str,
    expected: &Expected,
    absent_means: &str,
) -> Item {
    let item = Item::new(class, key, expected.to_string()).path(path);
    match host.read_value(path) {
        Err(e) => read_failure(item, &e, absent_means),
        Ok(actual) => {
            let item = judge(item, expected, &actual);
            match (item.status, expected.target_for(&actual)) {
                (Status::Drift, Some(to)) => fix_file(item, path, &actual, &to),
                _ => item,
            }
        }
    }
}

/// Adds the kernel-file write that would fix `item`.
pub(crate) fn fix_file(item: Item, path: &str, from: &str, to: &str) -> Item {
    item.fix(
        Target::KernelFile {
            path: path.to_owned(),
        },
        Value::text(crate::change::kernel_value(from)),
        Value::text(to),
    )
}

/// Sets actual and status of `item` by comparing `actual` with `expected`.
pub(crate) fn judge(item: Item, expected: &Expected, actual: &str) -> Item {
    let actual = crate::profile::value::normalize_whitespace(actual);
    match expected.is_met_by(&actual) {
        Some(true) => item.actual(actual),
        Some(false) => item.actual(actual).status(Status::Drift),
        None => item
            .actual(actual)
            .status(Status::Error)
            .reason("a bound needs an integer, but the kernel value is not one"),
    }
}

/// A sysfs multiple-choice file such as `always [madvise] never`: the bracketed word is the
/// current choice, the others are what the kernel offers.
pub(crate) fn parse_choice(text: &str) -> (Option<&str>, Vec<&str>) {
    let mut current = None;
    let mut all = Vec::new();
    for word in text.split_whitespace() {
        match word.strip_prefix('[').and_then(|w| w.strip_suffix(']')) {
            Some(w) => {
                current = Some(w);
                all.push(w);
            }
            None => all.push(word),
        }
    }
    (current, all)
}

/// Compares a multiple-choice file with the wanted word; a word the kernel does not offer is
/// `unsupported`.
pub(crate) fn check_choice(
    host: &HostRoot,
    class: Class,
    key: String,
    path: &str,
    want: &str,
    absent_means: &str,
) -> Item {
    let item = Item::new(class, key, want).path(path);
    let text = match host.read_value(path) {
        Ok(t) => t,
        Err(e) => return read_failure(item, &e, absent_means),
    };
    let (current, offered) = parse_choice(&text);
    let current = current.unwrap_or(text.as_str()).to_owned();
    if current == want {
        item.actual(current)
    } else if !offered.contains(&want) {
        item.actual(current)
            .status(Status::Unsupported)
            .reason(format!(
                "{want:?} is not offered here (offered: {})",
                offered.join(" ")
            ))
    } else {
        fix_file(
            item.actual(&current).status(Status::Drift),
            path,
            &current,
            want,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_files() {
        assert_eq!(
            parse_choice("always [madvise] never\n"),
            (Some("madvise"), vec!["always", "madvise", "never"])
        );
        assert_eq!(
            parse_choice("[none] mq-deadline kyber bfq "),
            (Some("none"), vec!["none", "mq-deadline", "kyber", "bfq"])
        );
        assert_eq!(parse_choice("none"), (None, vec!["none"]));
    }
}
