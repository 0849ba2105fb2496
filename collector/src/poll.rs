//! The agents' side: one lazily connected, kept-open mutual-TLS channel per host, and one poll
//! of a host: GetStatus (the agent's cached state; cheap), then Verify only when the status
//! counts drift and its last verify is not the one whose items are already known. The whole
//! poll of a host runs within the per-host deadline. A poll of the fleet runs at most
//! `concurrency` hosts at once and skips hosts in their backoff.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use node_agent::daemon::convert::{class_from_proto, status_from_proto};
use node_agent::verify::Status;
use node_agent_proto::v1 as pb;
use node_agent_proto::v1::node_agent_client::NodeAgentClient;
use std::future::Future;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Channel, Endpoint};

use crate::config::{AgentsTls, ConfigError, Poll};
use crate::fleet::{AgentInfo, Event, Fleet, ItemObs, Outcome};
use crate::inventory::Host;

/// The largest response accepted from an agent (a Verify report of a big host).
const MAX_MESSAGE: usize = 64 << 20;

/// The client identity and trust, read once into one rustls configuration that every channel
/// shares (one parsed key and CA for the whole fleet, and one TLS session cache, so a
/// reconnect after an outage resumes its session instead of a full handshake).
#[derive(Debug, Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    /// The PEM files as read: a reload with the same bytes keeps the open channels.
    files: Arc<Vec<u8>>,
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &ClientTls) -> bool {
        self.files == other.files
    }
}

impl ClientTls {
    pub fn load(tls: &AgentsTls) -> Result<ClientTls, ConfigError> {
        let read = |what: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| ConfigError::Read {
                what,
                path: path.to_owned(),
                source,
            })
        };
        let invalid = |path: &Path, message: String| ConfigError::Missing {
            path: path.to_owned(),
            message,
        };
        let ca_pem = read("the agents' CA (agents.ca)", &tls.ca)?;
        let cert_pem = read("the client certificate (agents.cert)", &tls.cert)?;
        let key_pem = read("the client key (agents.key)", &tls.key)?;
        let certs = |pem: &[u8], path: &Path| {
            let v = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(path, format!("not PEM certificates: {e}")))?;
            if v.is_empty() {
                return Err(invalid(
                    path,
                    "no certificate (PEM \"CERTIFICATE\") in it".into(),
                ));
            }
            Ok(v)
        };
        let mut roots = rustls::RootCertStore::empty();
        for ca in certs(&ca_pem, &tls.ca)? {
            roots
                .add(ca)
                .map_err(|e| invalid(&tls.ca, format!("not a usable CA certificate: {e}")))?;
        }
        let chain = certs(&cert_pem, &tls.cert)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| invalid(&tls.key, format!("no usable private key in it: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| invalid(&tls.cert, format!("TLS versions: {e}")))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| {
                invalid(
                    &tls.cert,
                    format!("cannot use it with the key {}: {e}", tls.key.display()),
                )
            })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        config.resumption = rustls::client::Resumption::in_memory_sessions(16_384);
        Ok(ClientTls {
            config: Arc::new(config),
            files: Arc::new([ca_pem, cert_pem, key_pem].concat()),
        })
    }
}

/// Connects to one agent: TCP (no Nagle), then TLS with the shared configuration, checking the
/// server certificate against `server_name`. tonic runs HTTP/2 over the result.
#[derive(Clone)]
struct Connector {
    config: Arc<rustls::ClientConfig>,
    address: String,
    server_name: ServerName<'static>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<tonic::transport::Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::transport::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(this.address.as_str()).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(this.config)
                .connect(this.server_name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// One channel per host, kept open between polls (HTTP/2 keepalive), rebuilt when the host's
/// address or server name changes.
#[derive(Debug, Default)]
pub struct Agents {
    channels: HashMap<String, (String, String, Channel)>,
}

impl Agents {
    /// The channel of `host` (created lazily: the first call connects).
    pub fn channel(
        &mut self,
        tls: &ClientTls,
        host: &Host,
        deadline: Duration,
    ) -> Result<Channel, String> {
        if let Some((addr, name, ch)) = self.channels.get(&host.name)
            && *addr == host.address
            && *name == host.server_name
        {
            return Ok(ch.clone());
        }
        let server_name = ServerName::try_from(host.server_name.clone())
            .map_err(|e| format!("invalid server name {:?}: {e}", host.server_name))?;
        let connector = Connector {
            config: tls.config.clone(),
            address: host.address.clone(),
            server_name,
        };
        // The scheme is http: TLS is the connector's.
        let channel = Endpoint::from_shared(format!("http://{}", host.address))
            .map_err(|e| format!("invalid endpoint {}: {e}", host.address))?
            // A backstop for the WatchDrift subscriptions: a poll is bounded by its own
            // deadline (`poll_host`), which must fire first so an operator reads "no answer
            // within the deadline" rather than a transport timer racing it.
            .connect_timeout(deadline + CONNECT_GRACE)
            .http2_keep_alive_interval(Duration::from_secs(60))
            .keep_alive_timeout(Duration::from_secs(20))
            .connect_with_connector_lazy(connector);
        self.channels.insert(
            host.name.clone(),
            (
                host.address.clone(),
                host.server_name.clone(),
                channel.clone(),
            ),
        );
        Ok(channel)
    }

    /// Drops the channels of hosts no longer in the inventory.
    pub fn retain(&mut self, hosts: &[Host]) {
        let names: std::collections::HashSet<&str> =
            hosts.iter().map(|h| h.name.as_str()).collect();
        self.channels.retain(|k, _| names.contains(k.as_str()));
    }

    pub fn len(&self) -> usize {
        self.channels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}

/// The error and its sources, as one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}

fn status_error(rpc: &str, s: &tonic::Status) -> String {
    let mut m = format!("{rpc}: {:?}: {}", s.code(), s.message());
    if let Some(src) = std::error::Error::source(s) {
        let chain = error_chain(src);
        if !m.contains(&chain) {
            m.push_str(": ");
            m.push_str(&chain);
        }
    }
    m
}

fn drift_count(s: &pb::Summary) -> u32 {
    s.drift + s.pending_reboot + s.not_persistent + s.error
}

/// An item is drift when its status is one an operator must act on (unsupported and statuses
/// this collector does not know are not).
fn item_obs(item: pb::Item) -> Option<ItemObs> {
    let status = status_from_proto(item.status)?;
    if !status.is_finding(false) || status == Status::Pass {
        return None;
    }
    Some(ItemObs {
        class: class_from_proto(item.class).map_or_else(
            || format!("class-{}", item.class),
            |c| c.as_str().to_owned(),
        ),
        key: item.key,
        status: status.as_str().to_owned(),
        expected: item.expected,
        actual: item.actual,
    })
}

/// Polls one agent (without the deadline; `poll_host` adds it).
async fn poll_inner(
    channel: Channel,
    seen_verify: Option<(i64, i32)>,
    have_items: bool,
    force_verify: bool,
) -> Result<Outcome, Outcome> {
    let mut client = NodeAgentClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
    let status = match client.get_status(pb::GetStatusRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(s) => return Err(Outcome::Failed(status_error("GetStatus", &s))),
    };
    let last_verify = status.last_verify.as_ref().map(|t| (t.seconds, t.nanos));
    let info = AgentInfo {
        agent_version: status.agent_version,
        api_minor: status.api_minor,
        agent_host: status.host,
        kernel_release: status.kernel_release,
        profile: status.profile.map(|p| p.name).unwrap_or_default(),
        last_verify,
    };
    let count = status.summary.as_ref().map_or(0, drift_count);
    let drift = if force_verify {
        // Woken by a drift event: the agent's cached status may predate it; ask afresh.
        verify(&mut client).await?
    } else if count == 0 {
        Some(Vec::new())
    } else if have_items && last_verify.is_some() && last_verify == seen_verify {
        None
    } else {
        verify(&mut client).await?
    };
    Ok(Outcome::Reached { info, drift })
}

/// The drift items of a fresh Verify; the failure as an outcome.
async fn verify(client: &mut NodeAgentClient<Channel>) -> Result<Option<Vec<ItemObs>>, Outcome> {
    match client.verify(pb::VerifyRequest {}).await {
        Ok(r) => Ok(Some(
            r.into_inner()
                .report
                .map(|r| r.items.into_iter().filter_map(item_obs).collect())
                .unwrap_or_default(),
        )),
        Err(s) => Err(Outcome::Failed(status_error("Verify", &s))),
    }
}

/// How much longer than the poll deadline a connection attempt may take (see `channel`).
const CONNECT_GRACE: Duration = Duration::from_millis(500);

/// Polls one agent within `deadline`.
pub async fn poll_host(
    channel: Channel,
    deadline: Duration,
    seen_verify: Option<(i64, i32)>,
    have_items: bool,
    force_verify: bool,
) -> Outcome {
    let poll = async {
        match poll_inner(channel, seen_verify, have_items, force_verify).await {
            Ok(o) | Err(o) => o,
        }
    };
    match tokio::time::timeout(deadline, poll).await {
        Ok(o) => o,
        Err(_) => Outcome::Failed(format!(
            "no answer within the deadline of {} ms",
            deadline.as_millis()
        )),
    }
}

/// Subscribes to the agent's WatchDrift and sends `name` on `wake` for every drift event, so
/// the collector polls that host at once instead of at the next interval (the poll, GetStatus
/// then Verify, stays the one source of the host's state: the stream is only a trigger).
/// Resubscribes after the stream ends or fails, waiting `retry_min` doubled per failure up to
/// `retry_max`. Returns when the agent does not implement WatchDrift (polling alone then) or
/// when `wake` is closed.
pub async fn watch_host(
    name: String,
    channel: Channel,
    wake: tokio::sync::mpsc::UnboundedSender<String>,
    retry_min: Duration,
    retry_max: Duration,
) {
    let mut retry = retry_min;
    loop {
        let mut client =
            NodeAgentClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE);
        match client
            .watch_drift(pb::WatchDriftRequest {
                initial_state: false,
            })
            .await
        {
            Ok(response) => {
                retry = retry_min;
                let mut stream = response.into_inner();
                while let Ok(Some(_event)) = stream.message().await {
                    if wake.send(name.clone()).is_err() {
                        return;
                    }
                }
            }
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                log::info!("{name}: the agent does not serve WatchDrift; polling only");
                return;
            }
            Err(s) => log::debug!("{name}: {}", status_error("WatchDrift", &s)),
        }
        if wake.is_closed() {
            return;
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(retry_max);
    }
}

/// What one poll of the fleet did.
#[derive(Debug, Clone, Default)]
pub struct Cycle {
    pub polled: usize,
    pub skipped: usize,
    pub elapsed: Duration,
    pub events: Vec<Event>,
    /// Indexes (into `Fleet::hosts`) of the hosts whose state was updated.
    pub updated: Vec<usize>,
}

/// Which hosts a poll covers.
#[derive(Debug, Clone, Copy)]
pub enum Which<'a> {
    /// Every host not in its backoff (the interval's poll).
    Due,
    /// Every host (`poll --once`).
    All,
    /// These hosts only, backoff or not (a WatchDrift event woke them).
    Hosts(&'a HashSet<String>),
}

/// Polls the hosts of `fleet` that `which` selects, `settings.concurrency` at a time, and
/// applies the outcomes. `inventory` is in the same order as `fleet.hosts`.
pub async fn poll_fleet(
    fleet: &mut Fleet,
    inventory: &[Host],
    agents: &mut Agents,
    tls: &ClientTls,
    settings: &Poll,
    next_attempt: &mut HashMap<String, Instant>,
    which: Which<'_>,
) -> Cycle {
    let started = Instant::now();
    let mut jobs = Vec::new();
    let mut early = Vec::new();
    let mut skipped = 0;
    for (i, host) in inventory.iter().enumerate() {
        let state = &fleet.hosts[i];
        match which {
            Which::Hosts(names) if !names.contains(&host.name) => continue,
            Which::Due if next_attempt.get(&host.name).is_some_and(|t| *t > started) => {
                skipped += 1;
                continue;
            }
            _ => {}
        }
        match agents.channel(tls, host, settings.deadline) {
            Ok(ch) => jobs.push((
                i,
                ch,
                state.seen_verify,
                !state.drift.is_empty(),
                matches!(which, Which::Hosts(_)),
            )),
            Err(e) => early.push((i, Outcome::Failed(e))),
        }
    }
    let deadline = settings.deadline;
    let mut outcomes: Vec<(usize, Outcome)> = futures_util::stream::iter(jobs)
        .map(|(i, ch, seen, have, force)| async move {
            (i, poll_host(ch, deadline, seen, have, force).await)
        })
        .buffer_unordered(settings.concurrency)
        .collect()
        .await;
    outcomes.extend(early);
    outcomes.sort_by_key(|(i, _)| *i);
    let now = crate::now_secs();
    let mut cycle = Cycle {
        polled: outcomes.len(),
        skipped,
        ..Cycle::default()
    };
    for (i, outcome) in outcomes {
        let state = &mut fleet.hosts[i];
        cycle.events.extend(state.observe(outcome, now));
        let wait = state.backoff(settings.backoff_min, settings.backoff_max);
        if wait.is_zero() {
            next_attempt.remove(&state.name);
        } else {
            next_attempt.insert(state.name.clone(), Instant::now() + wait);
        }
        cycle.updated.push(i);
    }
    cycle.elapsed = started.elapsed();
    cycle
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn item(class: i32, status: i32) -> pb::Item {
        pb::Item {
            class,
            key: "net.core.somaxconn".into(),
            expected: "4096".into(),
            actual: Some("128".into()),
            path: None,
            status,
            reason: None,
        }
    }

    #[test]
    fn drift_items_are_the_statuses_to_act_on() {
        use pb::ItemStatus as S;
        for (status, drift) in [
            (S::Pass, false),
            (S::Unsupported, false),
            (S::Drift, true),
            (S::PendingReboot, true),
            (S::NotPersistent, true),
            (S::Error, true),
            (S::Unspecified, false),
        ] {
            let got = item_obs(item(pb::Class::Sysctl as i32, status as i32));
            assert_eq!(got.is_some(), drift, "{status:?}");
        }
        let o = item_obs(item(pb::Class::Cpu as i32, S::PendingReboot as i32)).unwrap();
        assert_eq!(
            (o.class.as_str(), o.status.as_str()),
            ("cpu", "pending-reboot")
        );
        // A newer agent's status number is not drift; its class number is kept visible.
        assert!(item_obs(item(1, 42)).is_none());
        assert_eq!(
            item_obs(item(99, S::Drift as i32)).unwrap().class,
            "class-99"
        );
    }

    #[test]
    fn a_newer_agents_unknown_fields_are_skipped() {
        let status = pb::GetStatusResponse {
            agent_version: "0.9.0".into(),
            api_minor: 7,
            summary: Some(pb::Summary {
                drift: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut wire = status.encode_to_vec();
        // Field 99 (a string a later API minor added), and field 100 (a varint).
        wire.extend([0x9a, 0x06, 3, b'n', b'e', b'w', 0xa0, 0x06, 0x01]);
        let back = pb::GetStatusResponse::decode(wire.as_slice()).unwrap();
        assert_eq!(back.agent_version, "0.9.0");
        assert_eq!(back.api_minor, 7);
        assert_eq!(drift_count(back.summary.as_ref().unwrap()), 2);
    }

    #[test]
    fn invalid_client_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("ca.crt"), "not pem").unwrap();
        let tls = AgentsTls {
            cert: p("c.crt"),
            key: p("c.key"),
            ca: p("ca.crt"),
        };
        let e = ClientTls::load(&tls).unwrap_err().to_string();
        assert!(e.contains("c.crt"), "{e}");
        std::fs::write(p("c.crt"), "").unwrap();
        std::fs::write(p("c.key"), "").unwrap();
        let e = ClientTls::load(&tls).unwrap_err().to_string();
        assert!(e.contains("ca.crt") && e.contains("no certificate"), "{e}");
    }
}
