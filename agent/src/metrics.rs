//! The Prometheus endpoint (issue 7, point 3): GET /metrics in the Prometheus text format
//! (0.0.4), encoded by prometheus-client from what the daemon already knows — its last verify
//! and its last health run — so a scrape reads no kernel file and waits on nothing.
//!
//! Series (docs/OPERATIONS.md has the table and example queries):
//! - `node_agent_info{version,profile,profile_hash}` 1.
//! - `node_agent_drift_items{class,status}`: item counts of the last verify, every status for
//!   every class the report has (0 included, so `> 0` alerts need no `absent()`).
//! - `node_agent_drift_item{class,key}` 1, only for items not compliant now (drift,
//!   pending-reboot, not-persistent, error): the series count follows the drift, not the
//!   hundreds of per-CPU and per-IRQ items a host has. A resolved item's series disappears.
//! - `node_agent_verify_duration_seconds` (histogram), `node_agent_last_verify_timestamp_seconds`.
//! - `node_agent_health_status{check}`: 0 ok, 1 warn, 2 crit, 3 unknown (the plugin codes),
//!   `node_agent_health_last_run_timestamp_seconds`, `node_agent_health_run_duration_seconds`.
//! - `node_agent_unit_active{unit}`: 1 active, 0 not (absent when systemd could not be asked).
//! - Host gauges from the same health run: `node_agent_host_disk_used_ratio{mount}`,
//!   `node_agent_host_inodes_used_ratio{mount}`, `node_agent_host_memory_used_ratio`,
//!   `node_agent_host_cpu_busy_ratio{cpus}` (`all`, or `housekeeping` and `isolated` with an
//!   isolation layout), `node_agent_host_tcp_connect_seconds{endpoint}`,
//!   `node_agent_host_clock_synchronized`, `node_agent_host_clock_estimated_error_seconds`.
//!
//! The server is HTTP/1.1 only, GET and HEAD of /metrics, behind its own connection limit and
//! timeouts: a slow or hostile scraper cannot hold the daemon's runtime or the API's
//! connections.

use std::convert::Infallible;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::health::{HealthReport, Status as HealthStatus};
use crate::verify::{Report, Status};

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// The verify-duration histogram: 0.5 ms to ~4 s in doublings (a verify takes about 1 ms on a
/// small host and tens of ms with a full isolation audit).
pub fn verify_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

/// One health run, as the daemon keeps it for the metrics.
#[derive(Debug, Clone)]
pub struct HealthRun {
    pub report: HealthReport,
    /// Seconds since the epoch.
    pub at: f64,
    pub took: Duration,
    /// The profile has an isolation layout: `cpu.usage` is the housekeeping CPUs.
    pub isolation: bool,
}

/// What one scrape shows.
pub struct Snapshot<'a> {
    pub version: &'a str,
    pub profile: &'a str,
    pub profile_hash: &'a str,
    /// The last verify of the active profile and when it ended (seconds since the epoch).
    pub verified: Option<(&'a Report, f64)>,
    pub health: Option<&'a HealthRun>,
    pub verify_duration: &'a Histogram,
}

fn gauge_family() -> Family<Labels, FloatGauge> {
    Family::default()
}

fn set(family: &Family<Labels, FloatGauge>, labels: Labels, v: f64) {
    family.get_or_create(&labels).set(v);
}

fn single(registry: &mut Registry, name: &str, help: &str, v: f64) {
    let g = FloatGauge::default();
    g.set(v);
    registry.register(name, help, g);
}

/// Whether an item makes `tune verify` exit 1.
pub fn not_compliant(status: Status) -> bool {
    matches!(
        status,
        Status::Drift | Status::PendingReboot | Status::NotPersistent | Status::Error
    )
}

/// The monitoring-plugin code of a health status, as the metric's value.
pub fn health_code(s: HealthStatus) -> f64 {
    f64::from(s.exit_code())
}

/// The text a scrape returns.
pub fn encode(s: &Snapshot<'_>) -> String {
    let mut r = Registry::default();
    r.register(
        "node_agent",
        "The agent's version and the profile it keeps (value 1)",
        Info::new(vec![
            ("version", s.version.to_owned()),
            ("profile", s.profile.to_owned()),
            ("profile_hash", s.profile_hash.to_owned()),
        ]),
    );
    r.register(
        "node_agent_verify_duration_seconds",
        "Time one verify of the active profile took",
        s.verify_duration.clone(),
    );
    if let Some((report, at)) = s.verified {
        encode_report(&mut r, report, at);
    }
    if let Some(h) = s.health {
        encode_health(&mut r, h);
    }
    let mut out = String::with_capacity(8192);
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut out, &r);
    out
}

fn encode_report(r: &mut Registry, report: &Report, at: f64) {
    single(
        r,
        "node_agent_last_verify_timestamp_seconds",
        "When the last verify ended, seconds since the epoch",
        at,
    );
    let counts = gauge_family();
    let mut classes: Vec<_> = report.items.iter().map(|i| i.class).collect();
    classes.sort();
    classes.dedup();
    for class in classes {
        for status in Status::ALL {
            let n = report
                .items
                .iter()
                .filter(|i| i.class == class && i.status == status)
                .count();
            set(
                &counts,
                vec![
                    ("class", class.as_str().to_owned()),
                    ("status", status.as_str().to_owned()),
                ],
                n as f64,
            );
        }
    }
    r.register(
        "node_agent_drift_items",
        "Items of the last verify by class and status",
        counts,
    );
    let items = gauge_family();
    for i in report.items.iter().filter(|i| not_compliant(i.status)) {
        set(
            &items,
            vec![
                ("class", i.class.as_str().to_owned()),
                ("key", i.key.clone()),
            ],
            1.0,
        );
    }
    r.register(
        "node_agent_drift_item",
        "1 for each item not compliant now (drift, pending-reboot, not-persistent, error); \
         absent when compliant",
        items,
    );
}

fn encode_health(r: &mut Registry, h: &HealthRun) {
    single(
        r,
        "node_agent_health_last_run_timestamp_seconds",
        "When the last health run ended, seconds since the epoch",
        h.at,
    );
    single(
        r,
        "node_agent_health_run_duration_seconds",
        "Time the last health run took",
        h.took.as_secs_f64(),
    );
    let status = gauge_family();
    let units = gauge_family();
    let disk = gauge_family();
    let inodes = gauge_family();
    let cpu = gauge_family();
    let tcp = gauge_family();
    let mut memory = None;
    let mut clock = None;
    for c in &h.report.checks {
        set(
            &status,
            vec![("check", c.name.clone())],
            health_code(c.status),
        );
        let Some(v) = c.value else { continue };
        let name = c.name.as_str();
        if let Some(unit) = name.strip_prefix("units.") {
            set(&units, vec![("unit", unit.to_owned())], v);
        } else if let Some(mount) = name
            .strip_prefix("disk.")
            .and_then(|n| n.strip_suffix(".usage"))
        {
            set(&disk, vec![("mount", mount.to_owned())], v / 100.0);
        } else if let Some(mount) = name
            .strip_prefix("disk.")
            .and_then(|n| n.strip_suffix(".inodes"))
        {
            set(&inodes, vec![("mount", mount.to_owned())], v / 100.0);
        } else if name == "memory.usage" {
            memory = Some(v / 100.0);
        } else if name == "cpu.usage" {
            let cpus = if h.isolation { "housekeeping" } else { "all" };
            set(&cpu, vec![("cpus", cpus.to_owned())], v / 100.0);
        } else if name == "cpu.isolated.usage" {
            set(&cpu, vec![("cpus", "isolated".to_owned())], v / 100.0);
        } else if let Some(endpoint) = name.strip_prefix("tcp.") {
            set(&tcp, vec![("endpoint", endpoint.to_owned())], v / 1000.0);
        } else if name == "clock.sync" {
            clock = Some((c.status != HealthStatus::Crit, v / 1000.0));
        }
    }
    r.register(
        "node_agent_health_status",
        "Each health check's status: 0 ok, 1 warn, 2 crit, 3 unknown",
        status,
    );
    r.register(
        "node_agent_unit_active",
        "1 when the managed unit is active, 0 otherwise",
        units,
    );
    r.register(
        "node_agent_host_disk_used_ratio",
        "Disk usage as df shows it (used / (used + available)), 0-1",
        disk,
    );
    r.register(
        "node_agent_host_inodes_used_ratio",
        "Inode usage, 0-1",
        inodes,
    );
    if let Some(m) = memory {
        single(
            r,
            "node_agent_host_memory_used_ratio",
            "Memory in use (1 - MemAvailable / MemTotal), 0-1",
            m,
        );
    }
    r.register(
        "node_agent_host_cpu_busy_ratio",
        "CPU busy share over the sample interval: all CPUs, or housekeeping and isolated \
         apart, 0-1",
        cpu,
    );
    r.register(
        "node_agent_host_tcp_connect_seconds",
        "TCP connect time to each configured endpoint",
        tcp,
    );
    if let Some((synced, error)) = clock {
        single(
            r,
            "node_agent_host_clock_synchronized",
            "1 when the kernel's clock is synchronised (adjtimex: STA_UNSYNC clear)",
            if synced { 1.0 } else { 0.0 },
        );
        single(
            r,
            "node_agent_host_clock_estimated_error_seconds",
            "The kernel's estimated clock error (adjtimex esterror)",
            error,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The HTTP server

/// How long a scraper may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one connection may stay open.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The answer to one request; `render` builds the metrics text.
pub fn respond<B>(req: &Request<B>, render: impl FnOnce() -> String) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "node-agentd serves only /metrics here\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are allowed\n",
        );
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    let body = if req.method() == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(render())
    };
    let mut r = Response::new(Full::new(body));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(prometheus_text::CONTENT_TYPE),
    );
    r
}

/// Serves /metrics on `listener` until `shutdown` turns true; `render` builds each scrape's
/// text. Connections past `limit` are closed at once.
pub async fn serve<F>(
    listener: tokio::net::TcpListener,
    limit: crate::daemon::listen::ConnectionLimit,
    render: F,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()>
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
{
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                // Out of descriptors and the like: keep serving what is open.
                Err(e) => {
                    log::warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            changed = shutdown.changed() => {
                // A dropped sender is a shutdown too.
                if changed.is_err() || *shutdown.borrow() {
                    return Ok(());
                }
                continue;
            }
        };
        let Some(permit) = limit.try_acquire() else {
            drop(stream);
            continue;
        };
        // One request, one response: no Nagle delay on a kept-alive connection.
        let _ = stream.set_nodelay(true);
        let render = render.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let render = render.clone();
                async move { Ok::<_, Infallible>(respond(&req, render)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            drop(permit);
        });
    }
}
