//! The fleet's Prometheus endpoint: `GET /metrics` in the Prometheus text format
//! (prometheus-client's OpenMetrics text encoder), rendered from the current fleet snapshot at
//! each scrape, so a host removed from the inventory leaves no stale series. Plain HTTP/1.1 on
//! the hyper tonic already brings; loopback unless the configuration says otherwise.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

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

/// Serves `/metrics` on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    poll: PollMetrics,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = async { let _ = stop.wait_for(|s| *s).await; } => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    log::warn!("metrics endpoint: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let snapshot = snapshot.clone();
        let poll = poll.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let body = if req.uri().path() == "/metrics" && req.method() == hyper::Method::GET {
                    let snap = snapshot.borrow().clone();
                    Ok(render(&snap, &poll))
                } else {
                    Err(())
                };
                async move {
                    Ok::<_, Infallible>(match body {
                        Ok(text) => Response::builder()
                            .header(
                                "content-type",
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )
                            .body(Full::new(Bytes::from(text)))
                            .unwrap_or_default(),
                        Err(()) => Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"only GET /metrics here\n")))
                            .unwrap_or_default(),
                    })
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await
            {
                log::debug!("metrics connection from {peer}: {e}");
            }
        });
    }
}

/// Binds the metrics address (errors name it).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, std::io::Error> {
    TcpListener::bind(addr).await
}
