//! Drift transitions: what changed between two verify reports, item by item. The daemon logs
//! each transition and pushes it to `WatchDrift` subscribers; a steady state produces nothing.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::verify::{Item, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transition {
    /// The item was compliant (or not checked) and is not any more.
    New,
    /// The item was not compliant and now is (or is no longer checked).
    Resolved,
    /// Still not compliant, but its status or value changed.
    Changed,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::New => "new",
            Transition::Resolved => "resolved",
            Transition::Changed => "changed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriftEvent {
    pub transition: Transition,
    /// The item as verified now; for `Resolved` of an item no longer checked, as it was.
    pub item: Item,
    /// Its status before.
    pub previous: Option<Status>,
    /// Its actual value before, when there was one.
    pub previous_actual: Option<String>,
    /// Seconds since the epoch of the verify that saw it.
    pub at: u64,
}

/// Whether an item counts as drift for the watch: anything an operator must act on
/// (`unsupported` is a property of the machine, not drift).
pub fn is_drift(status: Status) -> bool {
    status.is_finding(false)
}

/// The transitions from `before` to `after`, in the order of `after` (then vanished items).
pub fn transitions(before: &[Item], after: &[Item], at: u64) -> Vec<DriftEvent> {
    let old: BTreeMap<&str, &Item> = before.iter().map(|i| (i.key.as_str(), i)).collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for item in after {
        seen.insert(item.key.as_str());
        let prev = old.get(item.key.as_str());
        let was = prev.is_some_and(|p| is_drift(p.status));
        let transition = match (was, is_drift(item.status)) {
            (false, true) => Some(Transition::New),
            (true, false) => Some(Transition::Resolved),
            (true, true) => prev
                .filter(|p| p.status != item.status || p.actual != item.actual)
                .map(|_| Transition::Changed),
            (false, false) => None,
        };
        if let Some(transition) = transition {
            out.push(DriftEvent {
                transition,
                item: item.clone(),
                previous: prev.map(|p| p.status),
                previous_actual: prev.and_then(|p| p.actual.clone()),
                at,
            });
        }
    }
    for item in before {
        if !seen.contains(item.key.as_str()) && is_drift(item.status) {
            out.push(DriftEvent {
                transition: Transition::Resolved,
                item: item.clone(),
                previous: Some(item.status),
                previous_actual: item.actual.clone(),
                at,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Class;

    fn item(key: &str, status: Status, actual: &str) -> Item {
        Item::new(Class::Sysctl, key, "1")
            .actual(actual)
            .status(status)
    }

    #[test]
    fn steady_state_is_silent_and_changes_are_typed() {
        let a = vec![
            item("a", Status::Pass, "1"),
            item("b", Status::Drift, "0"),
            item("c", Status::Drift, "0"),
            item("d", Status::Unsupported, ""),
            item("gone", Status::Drift, "7"),
        ];
        assert!(transitions(&a, &a, 5).is_empty());
        let b = vec![
            item("a", Status::Drift, "2"),
            item("b", Status::Pass, "1"),
            item("c", Status::Drift, "3"),
            item("d", Status::Unsupported, ""),
            item("fresh", Status::Error, ""),
        ];
        let events = transitions(&a, &b, 5);
        let got: Vec<(Transition, &str, Option<Status>)> = events
            .iter()
            .map(|e| (e.transition, e.item.key.as_str(), e.previous))
            .collect();
        assert!(events.iter().all(|e| e.at == 5));
        let actuals: Vec<Option<&str>> = events
            .iter()
            .map(|e| e.previous_actual.as_deref())
            .collect();
        assert_eq!(
            actuals,
            [Some("1"), Some("0"), Some("0"), None, Some("7")],
            "the value before each transition"
        );
        assert_eq!(
            got,
            vec![
                (Transition::New, "a", Some(Status::Pass)),
                (Transition::Resolved, "b", Some(Status::Drift)),
                (Transition::Changed, "c", Some(Status::Drift)),
                (Transition::New, "fresh", None),
                (Transition::Resolved, "gone", Some(Status::Drift)),
            ]
        );
    }
}
