//! A fake node-agent for tests and the benchmark: a real tonic server over mutual TLS (the
//! agent's own `TlsListener`) implementing `nodeagent.v1.NodeAgent` with canned answers that
//! a test can change (`FakeAgent::set_drift`, which also streams WatchDrift events). Every RPC
//! but GetStatus, Verify and WatchDrift answers UNIMPLEMENTED. Not for production use.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use node_agent::daemon::listen::{ConnectionLimit, TlsConfig, TlsListener};
use node_agent_proto::v1 as pb;
use node_agent_proto::v1::node_agent_server::{NodeAgent, NodeAgentServer};
use tonic::{Request, Response, Status};

/// What the fake answers.
#[derive(Debug, Clone, Default)]
pub struct Canned {
    pub version: String,
    pub host: String,
    pub profile: String,
    /// Items that are drift: (key, actual).
    pub drift: Vec<(String, String)>,
    /// Bumped by `set_drift`, reported as the last verify's time.
    pub verify_seq: i64,
    /// Whether WatchDrift is served (else UNIMPLEMENTED, as an agent without it).
    pub watch: bool,
    /// The open WatchDrift streams.
    pub watchers: Vec<tokio::sync::mpsc::Sender<Result<pb::DriftEvent, Status>>>,
}

/// A handle on one fake agent's answers.
#[derive(Debug, Clone)]
pub struct FakeAgent {
    canned: Arc<Mutex<Canned>>,
}

impl FakeAgent {
    pub fn new(host: &str) -> FakeAgent {
        FakeAgent {
            canned: Arc::new(Mutex::new(Canned {
                version: "0.1.0".into(),
                host: host.into(),
                profile: "trading-latency".into(),
                drift: Vec::new(),
                verify_seq: 1,
                watch: true,
                watchers: Vec::new(),
            })),
        }
    }

    /// The drift items from now on (a new "verify"); a NEW event for each new key and a
    /// RESOLVED one for each key gone goes to every WatchDrift stream.
    pub fn set_drift(&self, drift: Vec<(String, String)>) {
        let mut c = self.canned.lock().unwrap_or_else(|e| e.into_inner());
        let mut events = Vec::new();
        for (key, actual) in &drift {
            if !c.drift.iter().any(|(k, _)| k == key) {
                events.push(event(pb::DriftTransition::New, key, actual));
            }
        }
        for (key, actual) in &c.drift {
            if !drift.iter().any(|(k, _)| k == key) {
                events.push(event(pb::DriftTransition::Resolved, key, actual));
            }
        }
        c.drift = drift;
        c.verify_seq += 1;
        c.watchers
            .retain(|w| events.iter().all(|e| w.try_send(Ok(e.clone())).is_ok()));
    }

    /// Answer WatchDrift with UNIMPLEMENTED from now on.
    pub fn without_watch(&self) {
        self.canned.lock().unwrap_or_else(|e| e.into_inner()).watch = false;
    }

    /// The number of open WatchDrift streams.
    pub fn watchers(&self) -> usize {
        let mut c = self.canned.lock().unwrap_or_else(|e| e.into_inner());
        c.watchers.retain(|w| !w.is_closed());
        c.watchers.len()
    }

    pub fn set_version(&self, version: &str) {
        self.canned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .version = version.into();
    }

    fn canned(&self) -> Canned {
        self.canned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Serves on `addr` with the server certificate `cert`/`key`, requiring client
    /// certificates signed by `client_ca`; returns the bound address. Runs until the runtime
    /// ends or `stop` turns true.
    pub async fn serve(
        &self,
        addr: SocketAddr,
        tls: TlsConfig,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> std::io::Result<SocketAddr> {
        let listener = TlsListener::bind(addr, tls)
            .await
            .map_err(std::io::Error::other)?;
        let local = listener.local_addr();
        let incoming = listener.incoming(ConnectionLimit::new(64));
        let svc = NodeAgentServer::new(self.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
        });
        Ok(local)
    }
}

/// The server TLS configuration for fakes (one for many).
pub fn server_tls(cert: &Path, key: &Path, client_ca: &Path) -> TlsConfig {
    TlsConfig::load(cert, key, client_ca).expect("fake agent TLS configuration")
}

fn event(transition: pb::DriftTransition, key: &str, actual: &str) -> pb::DriftEvent {
    pb::DriftEvent {
        transition: transition as i32,
        item: Some(pb::Item {
            class: pb::Class::Sysctl as i32,
            key: key.into(),
            expected: "4096".into(),
            actual: Some(actual.into()),
            path: None,
            status: pb::ItemStatus::Drift as i32,
            reason: None,
        }),
        time: None,
        previous_status: 0,
        previous_actual: None,
    }
}

fn summary(c: &Canned) -> pb::Summary {
    pb::Summary {
        pass: 40,
        drift: c.drift.len() as u32,
        ..Default::default()
    }
}

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

fn no<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("fake agent"))
}

#[tonic::async_trait]
impl NodeAgent for FakeAgent {
    async fn get_status(
        &self,
        _: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::GetStatusResponse>, Status> {
        let c = self.canned();
        Ok(Response::new(pb::GetStatusResponse {
            agent_version: c.version.clone(),
            api_version: "v1".into(),
            api_minor: 0,
            host: c.host.clone(),
            kernel_release: "6.1.0-fake".into(),
            profile: Some(pb::ProfileRef {
                name: c.profile.clone(),
                path: format!("/etc/node-agent/profiles/{}.toml", c.profile),
            }),
            mode: pb::Mode::Observe as i32,
            last_verify: Some(prost_types::Timestamp {
                seconds: c.verify_seq,
                nanos: 0,
            }),
            summary: Some(summary(&c)),
            ..Default::default()
        }))
    }

    async fn verify(
        &self,
        _: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let c = self.canned();
        let items = c
            .drift
            .iter()
            .map(|(key, actual)| pb::Item {
                class: pb::Class::Sysctl as i32,
                key: key.clone(),
                expected: "4096".into(),
                actual: Some(actual.clone()),
                path: None,
                status: pb::ItemStatus::Drift as i32,
                reason: None,
            })
            .chain(std::iter::once(pb::Item {
                class: pb::Class::Sysctl as i32,
                key: "vm.swappiness".into(),
                expected: "1".into(),
                actual: Some("1".into()),
                path: None,
                status: pb::ItemStatus::Pass as i32,
                reason: None,
            }))
            .collect();
        Ok(Response::new(pb::VerifyResponse {
            report: Some(pb::Report {
                schema_version: 1,
                host: c.host.clone(),
                items,
                summary: Some(summary(&c)),
                ..Default::default()
            }),
        }))
    }

    type WatchDriftStream = Stream<pb::DriftEvent>;

    async fn watch_drift(
        &self,
        _: Request<pb::WatchDriftRequest>,
    ) -> Result<Response<Self::WatchDriftStream>, Status> {
        let mut c = self.canned.lock().unwrap_or_else(|e| e.into_inner());
        if !c.watch {
            return no();
        }
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        c.watchers.push(tx);
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
    async fn plan(
        &self,
        _: Request<pb::PlanRequest>,
    ) -> Result<Response<pb::PlanResponse>, Status> {
        no()
    }
    async fn apply(
        &self,
        _: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        no()
    }
    async fn rollback(
        &self,
        _: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::RollbackResponse>, Status> {
        no()
    }
    async fn list_units(
        &self,
        _: Request<pb::ListUnitsRequest>,
    ) -> Result<Response<pb::ListUnitsResponse>, Status> {
        no()
    }
    async fn control_unit(
        &self,
        _: Request<pb::ControlUnitRequest>,
    ) -> Result<Response<pb::ControlUnitResponse>, Status> {
        no()
    }
    async fn platform_stop(
        &self,
        _: Request<pb::PlatformStopRequest>,
    ) -> Result<Response<pb::PlatformStopResponse>, Status> {
        no()
    }
    async fn platform_start(
        &self,
        _: Request<pb::PlatformStartRequest>,
    ) -> Result<Response<pb::PlatformStartResponse>, Status> {
        no()
    }
    async fn get_health(
        &self,
        _: Request<pb::GetHealthRequest>,
    ) -> Result<Response<pb::GetHealthResponse>, Status> {
        no()
    }
    async fn enforce_pause(
        &self,
        _: Request<pb::EnforcePauseRequest>,
    ) -> Result<Response<pb::EnforcePauseResponse>, Status> {
        no()
    }
    async fn enforce_resume(
        &self,
        _: Request<pb::EnforceResumeRequest>,
    ) -> Result<Response<pb::EnforceResumeResponse>, Status> {
        no()
    }
}
