//! The fleet's state as the collector knows it: per host, reachability, the agent's identity
//! and the items that are drift now (with the time each was first seen); and the history
//! events a poll's outcome produces. Pure: `HostState::observe` takes an outcome and a time and
//! returns the events, so the transitions are tested without any network.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::inventory::Host;

/// An item that is drift now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftItem {
    /// `sysctl`, `cpu`, ... (agentctl's JSON names).
    pub class: String,
    pub key: String,
    /// `drift`, `pending-reboot`, `not-persistent` or `error`.
    pub status: String,
    pub expected: String,
    pub actual: Option<String>,
    /// When the collector first saw it drift (Unix seconds).
    pub since: i64,
}

/// An item as one poll read it (no `since` yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemObs {
    pub class: String,
    pub key: String,
    pub status: String,
    pub expected: String,
    pub actual: Option<String>,
}

/// What the agent's GetStatus said.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentInfo {
    pub agent_version: String,
    pub api_minor: u32,
    pub agent_host: String,
    pub kernel_release: String,
    pub profile: String,
    /// When the agent's last verify finished (seconds, nanos): equal means the same report.
    pub last_verify: Option<(i64, i32)>,
}

/// The outcome of polling one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Reached {
        info: AgentInfo,
        /// The drift items now; `None`: the agent's last verify is the one already seen, keep
        /// the items as they are.
        drift: Option<Vec<ItemObs>>,
    },
    Failed(String),
}

/// What kind of change an event records (fleet.proto EventKind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    DriftNew,
    DriftResolved,
    DriftChanged,
    Reachable,
    Unreachable,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::DriftNew => "drift-new",
            EventKind::DriftResolved => "drift-resolved",
            EventKind::DriftChanged => "drift-changed",
            EventKind::Reachable => "reachable",
            EventKind::Unreachable => "unreachable",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        [
            EventKind::DriftNew,
            EventKind::DriftResolved,
            EventKind::DriftChanged,
            EventKind::Reachable,
            EventKind::Unreachable,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One recorded change of a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub host: String,
    pub time: i64,
    pub kind: EventKind,
    pub class: String,
    pub key: String,
    pub status: String,
    pub actual: Option<String>,
    pub detail: String,
}

/// The latest state of one host (persisted in the `hosts` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostState {
    pub name: String,
    pub address: String,
    pub labels: BTreeMap<String, String>,
    pub polled: bool,
    pub reachable: bool,
    pub agent_version: String,
    pub api_minor: u32,
    pub agent_host: String,
    pub kernel_release: String,
    pub profile: String,
    pub last_seen: Option<i64>,
    pub last_poll: Option<i64>,
    pub error: String,
    pub unreachable_since: Option<i64>,
    /// Sorted by key.
    pub drift: Vec<DriftItem>,
    /// Runtime only: the agent's last verify whose items `drift` holds.
    #[serde(skip)]
    pub seen_verify: Option<(i64, i32)>,
    /// Runtime only: consecutive failed polls.
    #[serde(skip)]
    pub failures: u32,
}

impl HostState {
    pub fn new(host: &Host) -> HostState {
        HostState {
            name: host.name.clone(),
            address: host.address.clone(),
            labels: host.labels.clone(),
            polled: false,
            reachable: false,
            agent_version: String::new(),
            api_minor: 0,
            agent_host: String::new(),
            kernel_release: String::new(),
            profile: String::new(),
            last_seen: None,
            last_poll: None,
            error: String::new(),
            unreachable_since: None,
            drift: Vec::new(),
            seen_verify: None,
            failures: 0,
        }
    }

    /// The oldest `since` of the drift items.
    pub fn oldest_drift(&self) -> Option<i64> {
        self.drift.iter().map(|d| d.since).min()
    }

    /// Whether the host counts as a finding (unreachable, never polled, or drift).
    pub fn is_finding(&self) -> bool {
        !self.reachable || !self.drift.is_empty()
    }

    fn event(&self, time: i64, kind: EventKind) -> Event {
        Event {
            host: self.name.clone(),
            time,
            kind,
            class: String::new(),
            key: String::new(),
            status: String::new(),
            actual: None,
            detail: String::new(),
        }
    }

    /// Applies one poll's outcome at `now` (Unix seconds); returns the history events.
    pub fn observe(&mut self, outcome: Outcome, now: i64) -> Vec<Event> {
        let mut events = Vec::new();
        let was_polled = self.polled;
        self.polled = true;
        self.last_poll = Some(now);
        match outcome {
            Outcome::Failed(error) => {
                self.failures = self.failures.saturating_add(1);
                if self.reachable || !was_polled {
                    let mut e = self.event(now, EventKind::Unreachable);
                    e.detail = error.clone();
                    events.push(e);
                    self.unreachable_since = Some(now);
                }
                self.reachable = false;
                self.error = error;
                // Drift items stay as last seen: the host is a finding anyway, and their
                // `since` survives a short outage.
            }
            Outcome::Reached { info, drift } => {
                self.failures = 0;
                if !self.reachable {
                    let mut e = self.event(now, EventKind::Reachable);
                    e.detail = info.agent_version.clone();
                    events.push(e);
                }
                self.reachable = true;
                self.unreachable_since = None;
                self.error.clear();
                self.last_seen = Some(now);
                self.agent_version = info.agent_version;
                self.api_minor = info.api_minor;
                self.agent_host = info.agent_host;
                self.kernel_release = info.kernel_release;
                self.profile = info.profile;
                if let Some(items) = drift {
                    self.seen_verify = info.last_verify;
                    events.extend(self.update_drift(items, now));
                }
            }
        }
        events
    }

    fn update_drift(&mut self, items: Vec<ItemObs>, now: i64) -> Vec<Event> {
        let mut events = Vec::new();
        let mut old: HashMap<String, DriftItem> = std::mem::take(&mut self.drift)
            .into_iter()
            .map(|d| (d.key.clone(), d))
            .collect();
        let mut new = Vec::with_capacity(items.len());
        for obs in items {
            let since = match old.remove(&obs.key) {
                Some(prev) => {
                    if prev.status != obs.status || prev.actual != obs.actual {
                        events.push(self.item_event(now, EventKind::DriftChanged, &obs));
                    }
                    prev.since
                }
                None => {
                    events.push(self.item_event(now, EventKind::DriftNew, &obs));
                    now
                }
            };
            new.push(DriftItem {
                class: obs.class,
                key: obs.key,
                status: obs.status,
                expected: obs.expected,
                actual: obs.actual,
                since,
            });
        }
        let mut resolved: Vec<DriftItem> = old.into_values().collect();
        resolved.sort_by(|a, b| a.key.cmp(&b.key));
        for r in resolved {
            let mut e = self.event(now, EventKind::DriftResolved);
            e.class = r.class;
            e.key = r.key;
            e.status = "pass".into();
            events.push(e);
        }
        new.sort_by(|a, b| a.key.cmp(&b.key));
        self.drift = new;
        events
    }

    fn item_event(&self, now: i64, kind: EventKind, obs: &ItemObs) -> Event {
        let mut e = self.event(now, kind);
        e.class = obs.class.clone();
        e.key = obs.key.clone();
        e.status = obs.status.clone();
        e.actual = obs.actual.clone();
        e
    }

    /// How long to skip this host after `failures` consecutive failures.
    pub fn backoff(&self, min: Duration, max: Duration) -> Duration {
        if self.failures == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32 << (self.failures - 1).min(20);
        min.saturating_mul(factor).min(max)
    }
}

/// The fleet: one state per inventory host, in inventory order.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    pub hosts: Vec<HostState>,
}

impl Fleet {
    /// The states for `inventory`, taking what is known (from the database, or from before a
    /// reload) for hosts that keep their name; a changed address or labels are updated.
    pub fn for_inventory(hosts: &[Host], mut known: HashMap<String, HostState>) -> Fleet {
        Fleet {
            hosts: hosts
                .iter()
                .map(|h| match known.remove(&h.name) {
                    Some(mut s) => {
                        if s.address != h.address {
                            s.seen_verify = None;
                            s.failures = 0;
                        }
                        s.address = h.address.clone();
                        s.labels = h.labels.clone();
                        s
                    }
                    None => HostState::new(h),
                })
                .collect(),
        }
    }

    /// The hosts that are findings.
    pub fn findings(&self) -> usize {
        self.hosts.iter().filter(|h| h.is_finding()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostState {
        HostState::new(&Host {
            name: "a".into(),
            address: "h:1".into(),
            server_name: "h".into(),
            labels: BTreeMap::new(),
        })
    }

    fn item(key: &str, actual: &str) -> ItemObs {
        ItemObs {
            class: "sysctl".into(),
            key: key.into(),
            status: "drift".into(),
            expected: "4096".into(),
            actual: Some(actual.into()),
        }
    }

    fn reached(drift: Option<Vec<ItemObs>>) -> Outcome {
        Outcome::Reached {
            info: AgentInfo {
                agent_version: "0.1.0".into(),
                ..AgentInfo::default()
            },
            drift,
        }
    }

    fn kinds(events: &[Event]) -> Vec<(EventKind, &str)> {
        events.iter().map(|e| (e.kind, e.key.as_str())).collect()
    }

    #[test]
    fn drift_transitions_keep_since() {
        let mut h = host();
        let e = h.observe(reached(Some(vec![])), 100);
        assert_eq!(kinds(&e), vec![(EventKind::Reachable, "")]);
        let e = h.observe(reached(Some(vec![item("k1", "1")])), 110);
        assert_eq!(kinds(&e), vec![(EventKind::DriftNew, "k1")]);
        // Same verify: items kept, no event.
        assert!(h.observe(reached(None), 120).is_empty());
        assert_eq!(h.drift.len(), 1);
        let e = h.observe(reached(Some(vec![item("k1", "2"), item("k2", "x")])), 130);
        assert_eq!(
            kinds(&e),
            vec![(EventKind::DriftChanged, "k1"), (EventKind::DriftNew, "k2")]
        );
        assert_eq!(h.oldest_drift(), Some(110));
        let e = h.observe(reached(Some(vec![item("k2", "x")])), 140);
        assert_eq!(kinds(&e), vec![(EventKind::DriftResolved, "k1")]);
        assert_eq!(e[0].status, "pass");
        assert_eq!(h.oldest_drift(), Some(130));
    }

    #[test]
    fn reachability_transitions_and_backoff() {
        let min = Duration::from_secs(1);
        let max = Duration::from_secs(5);
        let mut h = host();
        // Never reached: the first failure is an event.
        let e = h.observe(Outcome::Failed("refused".into()), 1);
        assert_eq!(kinds(&e), vec![(EventKind::Unreachable, "")]);
        assert_eq!(h.backoff(min, max), Duration::from_secs(1));
        assert!(h.observe(Outcome::Failed("refused".into()), 2).is_empty());
        assert_eq!(h.backoff(min, max), Duration::from_secs(2));
        h.observe(Outcome::Failed("refused".into()), 3);
        h.observe(Outcome::Failed("refused".into()), 4);
        assert_eq!(h.backoff(min, max), max);
        assert_eq!(h.unreachable_since, Some(1));
        assert!(h.is_finding());
        let e = h.observe(reached(Some(vec![])), 5);
        assert_eq!(kinds(&e), vec![(EventKind::Reachable, "")]);
        assert_eq!(h.backoff(min, max), Duration::ZERO);
        assert!(!h.is_finding());
        let e = h.observe(Outcome::Failed("deadline".into()), 6);
        assert_eq!(e[0].detail, "deadline");
        assert_eq!(h.unreachable_since, Some(6));
    }
}
