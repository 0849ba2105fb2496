//! `agentctl fleet status`: the collector's view of the fleet over its `nodeagent.fleet.v1`
//! gRPC API (mutual TLS, the global --cert/--key/--ca/--server-name flags), as a table or
//! JSON. The rendering is public: `node-collector poll --once` prints the same table and JSON.
//!
//! Exit codes: 0 every host reachable and compliant; 1 any host drifts or is unreachable (a
//! finding, not a failure); 2 invalid arguments; 3 the collector cannot be reached.

use std::io::Write;
use std::time::Duration;

use clap::Subcommand;
use node_agent_proto::fleet_v1 as fpb;
use node_agent_proto::fleet_v1::fleet_client::FleetClient;
use serde::Serialize;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use super::{Cli, CliError, Exit, Output, block_on};

/// The JSON output's schema version.
pub const FLEET_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Subcommand)]
pub enum FleetCmd {
    /// The whole fleet as a collector sees it: host, labels, reachable, agent version,
    /// profile, drift count and the age of the oldest drift.
    ///
    /// Uses --cert, --key and --ca (a client certificate the collector's [tls] client_ca
    /// signed). Exit 0 when every host is reachable and compliant, 1 when any host drifts or is
    /// unreachable, 2 for invalid arguments, 3 when the collector cannot be reached.
    Status {
        /// The collector's gRPC address, HOST:PORT (its listen.grpc).
        #[arg(long, value_name = "HOST:PORT")]
        collector: String,
    },
}

fn invalid(msg: impl Into<String>) -> CliError {
    CliError {
        code: Exit::Invalid,
        error: anyhow::anyhow!(msg.into()),
    }
}

fn cannot_run(msg: String) -> CliError {
    CliError {
        code: Exit::CannotRun,
        error: anyhow::anyhow!(msg),
    }
}

pub(super) fn run(cli: &Cli, cmd: &FleetCmd, out: &mut dyn Write) -> Result<Exit, CliError> {
    let FleetCmd::Status { collector } = cmd;
    if cli.remote.is_some() {
        return Err(invalid(
            "--remote does not go with fleet status: use --collector",
        ));
    }
    let (Some(cert), Some(key), Some(ca)) = (&cli.cert, &cli.key, &cli.ca) else {
        return Err(invalid(
            "fleet status needs --cert, --key and --ca: the collector serves mutual TLS only",
        ));
    };
    let host = crate::client::host_of(collector)
        .map_err(|e| invalid(e.to_string().replace("--remote", "--collector")))?;
    let read = |flag: &str, p: &std::path::Path| {
        std::fs::read(p).map_err(|e| invalid(format!("{flag} {}: {e}", p.display())))
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("--ca", ca)?))
        .identity(Identity::from_pem(
            read("--cert", cert)?,
            read("--key", key)?,
        ))
        .domain_name(cli.server_name.clone().unwrap_or(host));
    let response = block_on(async {
        let unreachable =
            |e: &dyn std::error::Error| cannot_run(format!("collector {collector}: {}", chain(e)));
        let channel = Endpoint::from_shared(format!("https://{collector}"))
            .map_err(|e| invalid(format!("--collector {collector:?}: {e}")))?
            .tls_config(tls)
            .map_err(|e| unreachable(&e))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .map_err(|e| unreachable(&e))?;
        FleetClient::new(channel)
            .max_decoding_message_size(256 << 20)
            .fleet_status(fpb::FleetStatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| {
                let mut m = format!("{:?}: {}", s.code(), s.message());
                if let Some(src) = std::error::Error::source(&s) {
                    m = format!("{m}: {}", chain(src));
                }
                cannot_run(format!("collector {collector}: FleetStatus: {m}"))
            })
    })?;
    print(&response, cli.output, now_secs(), out)?;
    Ok(verdict(&response))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        let c_s = c.to_string();
        if !s.contains(&c_s) {
            s = format!("{s}: {c_s}");
        }
        source = c.source();
    }
    s
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// 0 when every host is reachable and compliant, else 1.
pub fn verdict(r: &fpb::FleetStatusResponse) -> Exit {
    if r.hosts.iter().all(|h| h.reachable && h.drift_count == 0) {
        Exit::Ok
    } else {
        Exit::Drift
    }
}

#[derive(Serialize)]
struct JsonFleet<'a> {
    schema_version: u32,
    collector_version: &'a str,
    last_cycle: Option<i64>,
    last_cycle_ms: u64,
    hosts: Vec<JsonHost<'a>>,
}

#[derive(Serialize)]
struct JsonHost<'a> {
    host: &'a str,
    address: &'a str,
    labels: std::collections::BTreeMap<&'a str, &'a str>,
    polled: bool,
    reachable: bool,
    agent_version: &'a str,
    api_minor: u32,
    agent_host: &'a str,
    kernel_release: &'a str,
    profile: &'a str,
    drift_count: u32,
    oldest_drift_since: Option<i64>,
    oldest_drift_age_s: Option<i64>,
    drift: Vec<JsonDrift<'a>>,
    last_seen: Option<i64>,
    last_poll: Option<i64>,
    unreachable_since: Option<i64>,
    error: &'a str,
}

#[derive(Serialize)]
struct JsonDrift<'a> {
    class: &'a str,
    key: &'a str,
    status: &'a str,
    expected: &'a str,
    actual: Option<&'a str>,
    since: Option<i64>,
}

fn secs(t: &Option<prost_types::Timestamp>) -> Option<i64> {
    t.as_ref().map(|t| t.seconds)
}

/// The fleet as JSON (versioned schema: `schema_version`).
pub fn to_json(r: &fpb::FleetStatusResponse, now: i64) -> String {
    let doc = JsonFleet {
        schema_version: FLEET_SCHEMA_VERSION,
        collector_version: &r.collector_version,
        last_cycle: secs(&r.last_cycle),
        last_cycle_ms: r.last_cycle_ms,
        hosts: r
            .hosts
            .iter()
            .map(|h| JsonHost {
                host: &h.host,
                address: &h.address,
                labels: h
                    .labels
                    .iter()
                    .map(|l| (l.name.as_str(), l.value.as_str()))
                    .collect(),
                polled: h.polled,
                reachable: h.reachable,
                agent_version: &h.agent_version,
                api_minor: h.api_minor,
                agent_host: &h.agent_host,
                kernel_release: &h.kernel_release,
                profile: &h.profile,
                drift_count: h.drift_count,
                oldest_drift_since: secs(&h.oldest_drift_since),
                oldest_drift_age_s: secs(&h.oldest_drift_since).map(|s| (now - s).max(0)),
                drift: h
                    .drift
                    .iter()
                    .map(|d| JsonDrift {
                        class: &d.class,
                        key: &d.key,
                        status: &d.status,
                        expected: &d.expected,
                        actual: d.actual.as_deref(),
                        since: secs(&d.since),
                    })
                    .collect(),
                last_seen: secs(&h.last_seen),
                last_poll: secs(&h.last_poll),
                unreachable_since: secs(&h.unreachable_since),
                error: &h.error,
            })
            .collect(),
    };
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// An age for people: `45s`, `12m`, `3h`, `2d`.
pub fn age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The fleet as a table: one row per host, then a summary line.
pub fn to_table(r: &fpb::FleetStatusResponse, now: i64) -> String {
    let header = [
        "HOST",
        "LABELS",
        "REACHABLE",
        "VERSION",
        "PROFILE",
        "DRIFT",
        "OLDEST DRIFT",
    ];
    let rows: Vec<[String; 7]> = r
        .hosts
        .iter()
        .map(|h| {
            let labels: Vec<String> = h
                .labels
                .iter()
                .map(|l| format!("{}={}", l.name, l.value))
                .collect();
            let reachable = match (h.polled, h.reachable) {
                (false, _) => "not yet".to_owned(),
                (true, true) => "yes".to_owned(),
                (true, false) => match secs(&h.unreachable_since) {
                    Some(s) => format!("no ({})", age(now - s)),
                    None => "no".to_owned(),
                },
            };
            let dash = |s: &str| {
                if s.is_empty() {
                    "-".to_owned()
                } else {
                    s.to_owned()
                }
            };
            [
                h.host.clone(),
                dash(&labels.join(",")),
                reachable,
                dash(&h.agent_version),
                dash(&h.profile),
                h.drift_count.to_string(),
                secs(&h.oldest_drift_since).map_or_else(|| "-".to_owned(), |s| age(now - s)),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&header.map(str::to_owned));
    for row in &rows {
        out.push_str(&line(row));
    }
    let unreachable = r.hosts.iter().filter(|h| !h.reachable).count();
    let drifting = r.hosts.iter().filter(|h| h.drift_count > 0).count();
    out.push_str(&format!(
        "{} hosts: {} unreachable, {} with drift\n",
        r.hosts.len(),
        unreachable,
        drifting
    ));
    for h in r
        .hosts
        .iter()
        .filter(|h| !h.reachable && !h.error.is_empty())
    {
        out.push_str(&format!("{}: {}\n", h.host, h.error));
    }
    out
}

/// Writes `r` in `output`'s format.
pub fn print(
    r: &fpb::FleetStatusResponse,
    output: Output,
    now: i64,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    match output {
        Output::Json => writeln!(out, "{}", to_json(r, now)),
        Output::Table => write!(out, "{}", to_table(r, now)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, reachable: bool, drift: u32) -> fpb::HostStatus {
        fpb::HostStatus {
            host: name.into(),
            polled: true,
            reachable,
            drift_count: drift,
            agent_version: "0.1.0".into(),
            labels: vec![fpb::Label {
                name: "site".into(),
                value: "ld4".into(),
            }],
            oldest_drift_since: (drift > 0).then_some(prost_types::Timestamp {
                seconds: 1000,
                nanos: 0,
            }),
            unreachable_since: (!reachable).then_some(prost_types::Timestamp {
                seconds: 1000,
                nanos: 0,
            }),
            error: if reachable { "" } else { "refused" }.into(),
            ..Default::default()
        }
    }

    #[test]
    fn verdict_and_table() {
        let mut r = fpb::FleetStatusResponse {
            hosts: vec![host("a", true, 0)],
            ..Default::default()
        };
        assert_eq!(verdict(&r), Exit::Ok);
        r.hosts.push(host("b", true, 2));
        assert_eq!(verdict(&r), Exit::Drift);
        r.hosts[1] = host("b", false, 0);
        assert_eq!(verdict(&r), Exit::Drift);
        r.hosts.push(host("c", true, 1));
        let t = to_table(&r, 1000 + 7200);
        assert!(t.starts_with("HOST"), "{t}");
        assert!(t.contains("b     site=ld4  no (2h)"), "{t}");
        assert!(t.contains("c     site=ld4  yes"), "{t}");
        assert!(
            t.ends_with("3 hosts: 1 unreachable, 1 with drift\nb: refused\n"),
            "{t}"
        );
        let j: serde_json::Value = serde_json::from_str(&to_json(&r, 1060)).unwrap();
        assert_eq!(j["schema_version"], 1);
        assert_eq!(j["hosts"][2]["oldest_drift_age_s"], 60);
        assert_eq!(j["hosts"][0]["labels"]["site"], "ld4");
    }
}
