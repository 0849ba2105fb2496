//! The fleet's Prometheus metrics: the Prometheus text format, rendered from the current fleet
//! snapshot at each scrape, so a host removed from the inventory leaves no stale series. Served
//! by the agent's /metrics server (`node_agent::metrics::serve`); loopback unless the
//! configuration says otherwise.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::prometheus_text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::server::Snapshot;

/// Process-long metrics (the per-host ones come from the snapshot).
#[derive(Debug, Clone)]
pub struct PollMetrics {
    pub duration: Histogram,
    pub cycles: Counter,
}

impl Default for PollMetrics {
    fn default() -> Self {
        PollMetrics {
            duration: Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
            cycles: Counter::default(),
        }
    }
}

type Labels = Vec<(String, String)>;

/// The text exposition of `snapshot`.
pub fn render(snapshot: &Snapshot, poll: &PollMetrics) -> String {
    let mut registry = Registry::default();
    let up = Family::<Labels, Gauge>::default();
    let drift = Family::<Labels, Gauge>::default();
    let oldest = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let info = Family::<Labels, Gauge>::default();
    let now = crate::now_secs();
    for h in &snapshot.fleet.hosts {
        let mut labels: Labels = vec![("host".into(), h.name.clone())];
        labels.extend(h.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        up.get_or_create(&labels).set(i64::from(h.reachable));
        let mut per_class: std::collections::BTreeMap<&str, i64> = Default::default();
        for d in &h.drift {
            *per_class.entry(d.class.as_str()).or_default() += 1;
        }
        for (class, n) in per_class {
            drift
                .get_or_create(&vec![
                    ("host".into(), h.name.clone()),
                    ("class".into(), class.to_owned()),
                ])
                .set(n);
        }
        if let Some(since) = h.oldest_drift() {
            oldest
                .get_or_create(&vec![("host".into(), h.name.clone())])
                .set((now - since).max(0) as f64);
        }
        if h.polled && !h.agent_version.is_empty() {
            info.get_or_create(&vec![
                ("host".into(), h.name.clone()),
                ("agent_version".into(), h.agent_version.clone()),
                ("profile".into(), h.profile.clone()),
            ])
            .set(1);
        }
    }
    registry.register(
        "node_agent_fleet_host_up",
        "Whether the last poll reached the host's agent (1) or not (0), with its inventory labels",
        up,
    );
    registry.register(
        "node_agent_fleet_drift_items",
        "Items of the host that are drift now, per knob class (absent: none)",
        drift,
    );
    registry.register(
        "node_agent_fleet_oldest_drift_age_seconds",
        "Age of the host's oldest drift item as the collector first saw it",
        oldest,
    );
    registry.register(
        "node_agent_fleet_agent_info",
        "The agent's version and active profile (always 1)",
        info,
    );
    let hosts = Gauge::<i64>::default();
    hosts.set(snapshot.fleet.hosts.len() as i64);
    registry.register("node_agent_fleet_hosts", "Hosts in the inventory", hosts);
    registry.register(
        "node_agent_fleet_poll_duration_seconds",
        "Time one poll of the whole fleet took",
        poll.duration.clone(),
    );
    registry.register(
        "node_agent_fleet_polls",
        "Polls of the whole fleet completed",
        poll.cycles.clone(),
    );
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}
