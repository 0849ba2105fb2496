//! The daemon's listeners and its authorization layer over real sockets: the generated
//! `NodeAgentServer` (around a small test implementation that echoes the caller's identity and
//! role) and tonic-health, behind `daemon::auth::AuthLayer`, served on a Unix socket in a
//! temporary directory and on mutual TLS at 127.0.0.1:0, called with the generated client.
//! Certificates are generated here with rcgen: a CA, a server certificate for localhost and
//! 127.0.0.1, observer and operator clients, a client with a name no role lists, an expired
//! client and a client of another CA.
//!
//! The non-root Unix socket cases (`unix_socket_non_root_uids`) need root to create a user and
//! groups and to run a client as another uid; they are opt-in with
//! `NODE_AGENT_PRIVILEGED_TESTS=1`. The client is this test binary itself, re-executed under
//! `setpriv` with `DAEMON_LISTEN_CLIENT` set, running only `unix_client_helper`.

use std::ffi::OsStr;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use nix::unistd::{Group, Uid, User};
use node_agent::daemon::auth::{AuthLayer, Identity, Role, RoleMap, SharedRoleMap};
use node_agent::daemon::listen::{
    ConnectionLimit, Incoming, ListenError, TlsConfig, TlsListener, UnixSocketListener, load_tls,
};
use node_agent_proto::v1::node_agent_client::NodeAgentClient;
use node_agent_proto::v1::node_agent_server::{NodeAgent, NodeAgentServer};
use node_agent_proto::v1::*;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tempfile::TempDir;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Server};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const PRIVILEGED_ENV: &str = "NODE_AGENT_PRIVILEGED_TESTS";
/// Set in the re-executed client: the socket to call.
const CLIENT_ENV: &str = "DAEMON_LISTEN_CLIENT";
/// Set in the re-executed client: the RPC to call (GetStatus or Apply).
const CALL_ENV: &str = "DAEMON_LISTEN_CALL";
/// The client's exit code when it could not connect at all.
const EXIT_CONNECT_FAILED: i32 = 99;

const OBSERVER_CN: &str = "collector.test";
const OPERATOR_CN: &str = "ops-console.test";
const STRANGER_CN: &str = "stranger.test";

// ---------------------------------------------------------------------------------------------
// The service under test

/// Answers GetStatus with the caller as the layer recorded it (`host`: the identity, as audit
/// records print it; `agent_version`: the role), Apply with an empty response, WatchDrift with
/// an empty event every 100 ms until the client goes away; everything else UNIMPLEMENTED.
/// `calls` counts the requests that reached it.
#[derive(Clone, Default)]
struct TestAgent {
    calls: Arc<AtomicUsize>,
}

fn caller<T>(request: &Request<T>) -> Result<(Identity, Role), Status> {
    let identity = request
        .extensions()
        .get::<Identity>()
        .cloned()
        .ok_or_else(|| Status::internal("the layer inserted no Identity"))?;
    let role = request
        .extensions()
        .get::<Role>()
        .copied()
        .ok_or_else(|| Status::internal("the layer inserted no Role"))?;
    Ok((identity, role))
}

type DriftStream = Pin<Box<dyn Stream<Item = Result<DriftEvent, Status>> + Send>>;

#[tonic::async_trait]
impl NodeAgent for TestAgent {
    async fn get_status(
        &self,
        request: Request<GetStatusRequest>,
    ) -> Result<Response<GetStatusResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let (identity, role) = caller(&request)?;
        Ok(Response::new(GetStatusResponse {
            host: identity.to_string(),
            agent_version: role.to_string(),
            ..Default::default()
        }))
    }

    async fn verify(&self, _: Request<VerifyRequest>) -> Result<Response<VerifyResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(Status::unimplemented("test"))
    }

    type WatchDriftStream = DriftStream;

    async fn watch_drift(
        &self,
        _: Request<WatchDriftRequest>,
    ) -> Result<Response<DriftStream>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                if tx.send(Ok(DriftEvent::default())).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn plan(&self, _: Request<PlanRequest>) -> Result<Response<PlanResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(Status::unimplemented("test"))
    }

    async fn apply(
        &self,
        request: Request<ApplyRequest>,
    ) -> Result<Response<ApplyResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let (_, role) = caller(&request)?;
        assert_eq!(role, Role::Operator, "the layer let a non-operator through");
        Ok(Response::new(ApplyResponse::default()))
    }

    async fn rollback(
        &self,
        _: Request<RollbackRequest>,
    ) -> Result<Response<RollbackResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(Status::unimplemented("test"))
    }

    async fn list_units(
        &self,
        _: Request<ListUnitsRequest>,
    ) -> Result<Response<ListUnitsResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(Status::unimplemented("test"))
    }

    async fn control_unit(
        &self,
        _: Request<ControlUnitRequest>,
    ) -> Result<Response<ControlUnitResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(Status::unimplemented("test"))
    }

    async fn platform_stop(
        &self,
        _: Request<PlatformStopRequest>,
    ) -> Result<Response<PlatformStopResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(Status::unimplemented("test"))
    }

    async fn platform_start(
        &self,
        _: Request<PlatformStartRequest>,
    ) -> Result<Response<PlatformStartResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(Status::unimplemented("test"))
    }

    async fn get_health(
        &self,
        _: Request<GetHealthRequest>,
    ) -> Result<Response<GetHealthResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(Status::unimplemented("test"))
    }

    async fn enforce_pause(
        &self,
        _: Request<EnforcePauseRequest>,
    ) -> Result<Response<EnforcePauseResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(Status::unimplemented("test"))
    }

    async fn enforce_resume(
        &self,
        _: Request<EnforceResumeRequest>,
    ) -> Result<Response<EnforceResumeResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(Status::unimplemented("test"))
    }
}

/// The daemon's server shape: the auth layer around health and the API.
async fn serve<IO>(incoming: Incoming<IO>, roles: SharedRoleMap, agent: TestAgent)
where
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<NodeAgentServer<TestAgent>>().await;
    Server::builder()
        .layer(AuthLayer::new(roles))
        .add_service(health)
        .add_service(NodeAgentServer::new(agent))
        .serve_with_incoming(incoming)
        .await
        .expect("server runs");
}

/// Aborts the server task when the test ends.
struct ServerTask(tokio::task::JoinHandle<()>);

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn roles(admin_group: &str) -> SharedRoleMap {
    Arc::new(ArcSwap::from_pointee(RoleMap {
        observers: vec![OBSERVER_CN.into()],
        operators: vec![OPERATOR_CN.into()],
        admin_group: admin_group.into(),
    }))
}

// ---------------------------------------------------------------------------------------------
// Certificates

struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(&self, cn: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose, expired: bool) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn server(&self, cn: &str) -> Leaf {
        self.leaf(
            cn,
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            false,
        )
    }

    fn client(&self, cn: &str) -> Leaf {
        self.leaf(cn, &[], ExtendedKeyUsagePurpose::ClientAuth, false)
    }
}

/// The test fleet's PKI, with the server's files written where a daemon would read them.
struct Pki {
    dir: TempDir,
    ca: Ca,
    server: Leaf,
}

impl Pki {
    fn new() -> Pki {
        let ca = Ca::new("node-agent test CA");
        let server = ca.server("localhost");
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca,
            server,
        };
        pki.write_server(&pki.server);
        std::fs::write(pki.ca_path(), &pki.ca.pem).unwrap();
        pki
    }

    fn write_server(&self, leaf: &Leaf) {
        std::fs::write(self.cert_path(), &leaf.cert_pem).unwrap();
        std::fs::write(self.key_path(), &leaf.key_pem).unwrap();
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn reload(&self, tls: &TlsConfig) -> Result<(), ListenError> {
        tls.reload(&self.cert_path(), &self.key_path(), &self.ca_path())
    }
}

// ---------------------------------------------------------------------------------------------
// TLS plumbing

struct TlsServer {
    addr: SocketAddr,
    tls: TlsConfig,
    limit: ConnectionLimit,
    agent: TestAgent,
    _task: ServerTask,
}

async fn start_tls(pki: &Pki, max_connections: usize, handshake: Duration) -> TlsServer {
    let tls = TlsConfig::load(&pki.cert_path(), &pki.key_path(), &pki.ca_path()).unwrap();
    let listener = TlsListener::bind("127.0.0.1:0".parse().unwrap(), tls.clone())
        .await
        .unwrap()
        .with_handshake_timeout(handshake);
    let addr = listener.local_addr();
    let limit = ConnectionLimit::new(max_connections);
    let agent = TestAgent::default();
    let task = tokio::spawn(serve(
        listener.incoming(limit.clone()),
        roles("node-agent-admin"),
        agent.clone(),
    ));
    TlsServer {
        addr,
        tls,
        limit,
        agent,
        _task: ServerTask(task),
    }
}

async fn tls_channel(
    addr: SocketAddr,
    ca_pem: &str,
    client: Option<&Leaf>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(client) = client {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            &client.cert_pem,
            &client.key_pem,
        ));
    }
    Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// GetStatus over a new TLS connection; a failed connect is UNAVAILABLE with its error.
async fn tls_status(
    addr: SocketAddr,
    ca_pem: &str,
    client: Option<&Leaf>,
) -> Result<GetStatusResponse, Status> {
    let channel = tls_channel(addr, ca_pem, client)
        .await
        .map_err(|e| Status::unavailable(format!("connect: {e:?}")))?;
    NodeAgentClient::new(channel)
        .get_status(GetStatusRequest {})
        .await
        .map(Response::into_inner)
}

/// A bare rustls handshake as the operator: the server certificate it presents.
async fn server_cert_seen(addr: SocketAddr, pki: &Pki, client: &Leaf) -> CertificateDer<'static> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca.pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![client.der.clone()],
            PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// Refused below gRPC: the client sees a transport error (UNAVAILABLE when the connect fails;
/// UNKNOWN "transport error" or CANCELLED "connection closed" when TLS 1.3 lets the client
/// finish its side first and the server's alert or close arrives with the first call), never an
/// answer of the authorization layer or the service.
fn assert_refused_at_handshake(result: Result<GetStatusResponse, Status>, what: &str) {
    let status = match result {
        Ok(r) => panic!("{what}: the call succeeded: {r:?}"),
        Err(status) => status,
    };
    assert!(
        matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled
        ),
        "{what}: {status:?}"
    );
}

/// A bare rustls handshake with `client` (or none) that the server is expected to refuse: the
/// error the client gets, which carries the server's TLS alert. Under TLS 1.3 the client's side
/// of the handshake completes first and the alert arrives on the first read.
async fn handshake_error(addr: SocketAddr, pki: &Pki, client: Option<&Leaf>) -> String {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca.pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some(client) => builder
            .with_client_auth_cert(
                vec![client.der.clone()],
                PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = match connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
    {
        Ok(tls) => tls,
        Err(e) => return e.to_string(),
    };
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
        Ok(Err(e)) => e.to_string(),
        other => panic!("the server did not refuse the handshake: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// TLS tests

#[tokio::test(flavor = "multi_thread")]
async fn tls_observer_reads_but_is_denied_mutations() {
    let pki = Pki::new();
    let server = start_tls(&pki, 16, Duration::from_secs(5)).await;
    let observer = pki.ca.client(OBSERVER_CN);
    let channel = tls_channel(server.addr, &pki.ca.pem, Some(&observer))
        .await
        .unwrap();
    let mut client = NodeAgentClient::new(channel.clone());

    let status = client
        .get_status(GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.host, format!("cert CN={OBSERVER_CN}"));
    assert_eq!(status.agent_version, "observer");

    let calls = server.agent.calls.load(Ordering::SeqCst);
    let denied = client
        .apply(ApplyRequest {
            dry_run: true,
            classes: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(denied.code() as i32, 7);
    assert!(
        denied.message().contains("Apply needs the operator role")
            && denied.message().contains(OBSERVER_CN),
        "{}",
        denied.message()
    );
    for denied in [
        client
            .rollback(RollbackRequest { force: false })
            .await
            .unwrap_err(),
        client
            .enforce_resume(EnforceResumeRequest {})
            .await
            .unwrap_err(),
        client
            .platform_stop(PlatformStopRequest {})
            .await
            .unwrap_err(),
    ] {
        assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    }
    assert_eq!(
        server.agent.calls.load(Ordering::SeqCst),
        calls,
        "a denied call reached the service"
    );

    // Plan only reads: it passes the layer (and the test service has none).
    let plan = client
        .plan(PlanRequest { classes: vec![] })
        .await
        .unwrap_err();
    assert_eq!(plan.code(), Code::Unimplemented);
    assert_eq!(plan.message(), "test");

    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_operator_passes_the_layer() {
    let pki = Pki::new();
    let server = start_tls(&pki, 16, Duration::from_secs(5)).await;
    let operator = pki.ca.client(OPERATOR_CN);
    let mut client = NodeAgentClient::new(
        tls_channel(server.addr, &pki.ca.pem, Some(&operator))
            .await
            .unwrap(),
    );
    let status = client
        .get_status(GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.host, format!("cert CN={OPERATOR_CN}"));
    assert_eq!(status.agent_version, "operator");
    let applied = client
        .apply(ApplyRequest {
            dry_run: false,
            classes: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(applied, ApplyResponse::default());
    // Past the layer, the service answers for itself.
    let rollback = client
        .rollback(RollbackRequest { force: false })
        .await
        .unwrap_err();
    assert_eq!(
        (rollback.code(), rollback.message()),
        (Code::Unimplemented, "test")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_refuses_missing_foreign_and_expired_client_certificates() {
    let pki = Pki::new();
    let server = start_tls(&pki, 16, Duration::from_secs(5)).await;
    let other_ca = Ca::new("another CA");
    let foreign = other_ca.client(OPERATOR_CN);
    let expired = pki
        .ca
        .leaf(OPERATOR_CN, &[], ExtendedKeyUsagePurpose::ClientAuth, true);

    assert_refused_at_handshake(
        tls_status(server.addr, &pki.ca.pem, None).await,
        "no client certificate",
    );
    assert_refused_at_handshake(
        tls_status(server.addr, &pki.ca.pem, Some(&foreign)).await,
        "a client certificate of another CA",
    );
    assert_refused_at_handshake(
        tls_status(server.addr, &pki.ca.pem, Some(&expired)).await,
        "an expired client certificate",
    );
    // The server's reason, as its TLS alert says.
    for (client, alert) in [
        (None, "CertificateRequired"),
        (Some(&foreign), "UnknownCA"),
        (Some(&expired), "CertificateExpired"),
    ] {
        let err = handshake_error(server.addr, &pki, client).await;
        assert_eq!(err, format!("received fatal alert: {alert}"));
    }
    assert_eq!(server.agent.calls.load(Ordering::SeqCst), 0);

    // The listener is unharmed: a good client still gets in.
    let operator = pki.ca.client(OPERATOR_CN);
    tls_status(server.addr, &pki.ca.pem, Some(&operator))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_unknown_common_name_is_denied_everything() {
    let pki = Pki::new();
    let server = start_tls(&pki, 16, Duration::from_secs(5)).await;
    let stranger = pki.ca.client(STRANGER_CN);
    let channel = tls_channel(server.addr, &pki.ca.pem, Some(&stranger))
        .await
        .unwrap();
    let denied = NodeAgentClient::new(channel.clone())
        .get_status(GetStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied.message().contains(&format!("CN={STRANGER_CN}")),
        "{}",
        denied.message()
    );
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(health.code(), Code::PermissionDenied);
    assert_eq!(server.agent.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_role_map_swap_applies_to_the_next_call() {
    let pki = Pki::new();
    let tls = TlsConfig::load(&pki.cert_path(), &pki.key_path(), &pki.ca_path()).unwrap();
    let listener = TlsListener::bind("127.0.0.1:0".parse().unwrap(), tls)
        .await
        .unwrap();
    let addr = listener.local_addr();
    let roles = roles("node-agent-admin");
    let _task = ServerTask(tokio::spawn(serve(
        listener.incoming(ConnectionLimit::new(4)),
        roles.clone(),
        TestAgent::default(),
    )));
    let observer = pki.ca.client(OBSERVER_CN);
    let mut client = NodeAgentClient::new(
        tls_channel(addr, &pki.ca.pem, Some(&observer))
            .await
            .unwrap(),
    );
    let apply = ApplyRequest {
        dry_run: true,
        classes: vec![],
    };
    assert_eq!(
        client.apply(apply.clone()).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    // SIGHUP with new settings: the same connection, the new role.
    roles.store(Arc::new(RoleMap {
        observers: vec![],
        operators: vec![OBSERVER_CN.into()],
        admin_group: "node-agent-admin".into(),
    }));
    client.apply(apply).await.unwrap();
    roles.store(Arc::new(RoleMap::default()));
    assert_eq!(
        client
            .get_status(GetStatusRequest {})
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_reload_keeps_open_streams_and_serves_the_new_certificate() {
    let pki = Pki::new();
    let server = start_tls(&pki, 16, Duration::from_secs(5)).await;
    let operator = pki.ca.client(OPERATOR_CN);
    let old_der = pki.server.der.clone();
    assert_eq!(
        server_cert_seen(server.addr, &pki, &operator).await,
        old_der
    );

    let channel = tls_channel(server.addr, &pki.ca.pem, Some(&operator))
        .await
        .unwrap();
    let mut client = NodeAgentClient::new(channel);
    let mut stream = client
        .watch_drift(WatchDriftRequest {
            initial_state: false,
        })
        .await
        .unwrap()
        .into_inner();
    for _ in 0..2 {
        stream.message().await.unwrap().expect("an event");
    }

    // New server certificate and key at the same paths, as a renewal leaves them; then SIGHUP.
    let renewed = pki.ca.server("localhost");
    pki.write_server(&renewed);
    pki.reload(&server.tls).unwrap();

    // The open stream goes on, on the connection handshaken with the old certificate.
    let started = Instant::now();
    for _ in 0..5 {
        tokio::time::timeout(Duration::from_secs(2), stream.message())
            .await
            .expect("the stream keeps delivering after the reload")
            .unwrap()
            .expect("an event");
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    client.get_status(GetStatusRequest {}).await.unwrap();

    // A new connection gets the new certificate.
    assert_eq!(
        server_cert_seen(server.addr, &pki, &operator).await,
        renewed.der
    );
    tls_status(server.addr, &pki.ca.pem, Some(&operator))
        .await
        .unwrap();

    // A broken reload names the file and keeps the configuration in use.
    std::fs::write(pki.key_path(), "not a key\n").unwrap();
    let err = pki.reload(&server.tls).unwrap_err().to_string();
    assert!(
        err.contains(&pki.key_path().display().to_string()) && err.contains("no private key"),
        "{err}"
    );
    let stranger_key = pki.ca.server("localhost");
    std::fs::write(pki.key_path(), &stranger_key.key_pem).unwrap();
    let err = pki.reload(&server.tls).unwrap_err().to_string();
    assert!(
        err.contains(&pki.cert_path().display().to_string())
            && err.contains(&pki.key_path().display().to_string()),
        "{err}"
    );
    assert_eq!(
        server_cert_seen(server.addr, &pki, &operator).await,
        renewed.der
    );
    stream.message().await.unwrap().expect("an event");
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_connections_beyond_the_limit_are_closed_at_once() {
    let pki = Pki::new();
    let server = start_tls(&pki, 2, Duration::from_secs(5)).await;
    let operator = pki.ca.client(OPERATOR_CN);
    let mut first = NodeAgentClient::new(
        tls_channel(server.addr, &pki.ca.pem, Some(&operator))
            .await
            .unwrap(),
    );
    let mut second = NodeAgentClient::new(
        tls_channel(server.addr, &pki.ca.pem, Some(&operator))
            .await
            .unwrap(),
    );
    first.get_status(GetStatusRequest {}).await.unwrap();
    second.get_status(GetStatusRequest {}).await.unwrap();
    assert_eq!(server.limit.in_use(), 2);

    let started = Instant::now();
    assert_refused_at_handshake(
        tls_status(server.addr, &pki.ca.pem, Some(&operator)).await,
        "a third connection",
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed at once, not after a timeout"
    );
    // The open ones are untouched.
    first.get_status(GetStatusRequest {}).await.unwrap();

    drop(second);
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.limit.in_use() > 1 {
        assert!(
            Instant::now() < deadline,
            "the closed connection's place was not freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tls_status(server.addr, &pki.ca.pem, Some(&operator))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_silent_client_does_not_block_others_and_is_dropped_after_the_deadline() {
    let pki = Pki::new();
    // Long enough that a good client's handshake (a debug build on a loaded CI machine) ends
    // well before it: the check is about order, not speed.
    let deadline = Duration::from_secs(4);
    let server = start_tls(&pki, 16, deadline).await;
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let connected = Instant::now();

    // A good client is served while the silent one still holds its handshake open.
    let operator = pki.ca.client(OPERATOR_CN);
    tls_status(server.addr, &pki.ca.pem, Some(&operator))
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(10), silent.read(&mut buf))
            .await
            .is_err(),
        "the silent connection is still open"
    );
    assert!(connected.elapsed() < deadline);

    // Then the server gives up on it and closes it, not before the deadline.
    let read = tokio::time::timeout(Duration::from_secs(15), silent.read(&mut buf))
        .await
        .expect("the server closes a connection that never handshakes");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(connected.elapsed() >= deadline);
}

#[test]
fn load_tls_errors_name_the_file() {
    let pki = Pki::new();
    let missing = pki.dir.path().join("missing.crt");
    let err = load_tls(&missing, &pki.key_path(), &pki.ca_path()).unwrap_err();
    assert!(matches!(err, ListenError::Read { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );

    let empty = pki.dir.path().join("empty.crt");
    std::fs::write(&empty, "").unwrap();
    let err = load_tls(&pki.cert_path(), &pki.key_path(), &empty)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the client CA") && err.contains(&empty.display().to_string()),
        "{err}"
    );
    let err = load_tls(&empty, &pki.key_path(), &pki.ca_path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no certificate"), "{err}");
    let err = load_tls(&pki.cert_path(), &empty, &pki.ca_path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no private key"), "{err}");

    let config = load_tls(&pki.cert_path(), &pki.key_path(), &pki.ca_path()).unwrap();
    assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
}

// ---------------------------------------------------------------------------------------------
// Unix socket

/// A temporary directory under /tmp that other uids may traverse (mode 0755).
fn open_tempdir() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("node-agent-listen-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// The name of the current user's primary group (root on the test machines): the admin
/// group of the always-run Unix tests, so they need no groupadd.
fn own_group() -> String {
    let user = User::from_uid(Uid::current()).unwrap().unwrap();
    Group::from_gid(user.gid).unwrap().unwrap().name
}

async fn start_unix(path: &Path, group: &str) -> (TestAgent, ServerTask) {
    let listener = UnixSocketListener::bind(path, group).unwrap();
    let agent = TestAgent::default();
    let task = tokio::spawn(serve(
        listener.incoming(ConnectionLimit::new(16)),
        roles(group),
        agent.clone(),
    ));
    (agent, ServerTask(task))
}

async fn unix_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("unix://{}", path.display()))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn unix_socket_as_this_user_is_operator() {
    let dir = open_tempdir();
    let path = dir.path().join("run/node-agent/agent.sock");
    let group = own_group();
    let (_agent, _task) = start_unix(&path, &group).await;

    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o660);
    assert_eq!(
        meta.gid(),
        Group::from_name(&group).unwrap().unwrap().gid.as_raw()
    );
    let dir_meta = std::fs::metadata(path.parent().unwrap()).unwrap();
    assert_eq!(dir_meta.mode() & 0o7777, 0o755);
    // Nothing left of the temporary name it was bound under.
    assert_eq!(
        std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
        1
    );

    let channel = unix_channel(&path).await.unwrap();
    let mut client = NodeAgentClient::new(channel.clone());
    let status = client
        .get_status(GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let uid = Uid::current().as_raw();
    let name = User::from_uid(Uid::current()).unwrap().unwrap().name;
    assert_eq!(status.host, format!("uid {uid} ({name})"));
    assert_eq!(status.agent_version, "operator");
    client
        .apply(ApplyRequest {
            dry_run: true,
            classes: vec![],
        })
        .await
        .unwrap();
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: node_agent_proto::SERVICE_NAME.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
}

#[tokio::test(flavor = "multi_thread")]
async fn unix_socket_bind_replaces_only_a_stale_socket() {
    let dir = open_tempdir();
    let group = own_group();

    let err = UnixSocketListener::bind(&dir.path().join("a.sock"), "no-such-group-for-node-agent")
        .unwrap_err();
    assert!(matches!(err, ListenError::NoSuchGroup { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("\"no-such-group-for-node-agent\" does not exist"),
        "{err}"
    );
    assert!(!dir.path().join("a.sock").exists());

    let file = dir.path().join("file.sock");
    std::fs::write(&file, "precious\n").unwrap();
    let err = UnixSocketListener::bind(&file, &group).unwrap_err();
    assert!(matches!(err, ListenError::NotASocket { .. }), "{err:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious\n");

    let path = dir.path().join("agent.sock");
    let (agent, task) = start_unix(&path, &group).await;
    let err = UnixSocketListener::bind(&path, &group).unwrap_err();
    assert!(matches!(err, ListenError::InUse { .. }), "{err:?}");
    // The running server still answers on it.
    NodeAgentClient::new(unix_channel(&path).await.unwrap())
        .get_status(GetStatusRequest {})
        .await
        .unwrap();
    assert_eq!(agent.calls.load(Ordering::SeqCst), 1);

    // Stopped, it leaves a stale socket file, which the next bind replaces.
    drop(task);
    let deadline = Instant::now() + Duration::from_secs(5);
    let listener = loop {
        match UnixSocketListener::bind(&path, &group) {
            Ok(listener) => break listener,
            Err(ListenError::InUse { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(listener.path(), path);
    let agent = TestAgent::default();
    let _task = ServerTask(tokio::spawn(serve(
        listener.incoming(ConnectionLimit::new(4)),
        roles(&group),
        agent.clone(),
    )));
    NodeAgentClient::new(unix_channel(&path).await.unwrap())
        .get_status(GetStatusRequest {})
        .await
        .unwrap();
    assert_eq!(agent.calls.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------------
// Unix socket as other uids (privileged, opt-in)

/// Not a test of its own: the client the privileged test runs as another uid. Without
/// `DAEMON_LISTEN_CLIENT` it does nothing. With it, it makes one call on that socket, prints
/// `RESULT code=N host=H message=M` on stderr and exits with the gRPC code (0 OK, 7
/// PERMISSION_DENIED, …), or `EXIT_CONNECT_FAILED` when it cannot connect.
#[test]
fn unix_client_helper() {
    let Some(socket) = std::env::var_os(CLIENT_ENV) else {
        return;
    };
    let call = std::env::var(CALL_ENV).unwrap_or_else(|_| "GetStatus".into());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (code, host, message) = runtime.block_on(async {
        let channel = match unix_channel(Path::new(&socket)).await {
            Ok(channel) => channel,
            Err(e) => return (EXIT_CONNECT_FAILED, String::new(), format!("{e:?}")),
        };
        let mut client = NodeAgentClient::new(channel);
        let result = match call.as_str() {
            "Apply" => client
                .apply(ApplyRequest {
                    dry_run: true,
                    classes: vec![],
                })
                .await
                .map(|_| String::new()),
            _ => client
                .get_status(GetStatusRequest {})
                .await
                .map(|r| r.into_inner().host),
        };
        match result {
            Ok(host) => (0, host, String::new()),
            Err(status) => (
                status.code() as i32,
                String::new(),
                status.message().to_owned(),
            ),
        }
    });
    let _ = writeln!(
        std::io::stderr(),
        "RESULT code={code} host={host} message={message}"
    );
    std::process::exit(code);
}

/// The outcome of one call made by the helper as another uid.
#[derive(Debug)]
struct ClientRun {
    code: i32,
    host: String,
    message: String,
}

fn run_client_as(socket: &Path, call: &str, uid: u32, gid: u32, groups: &[u32]) -> ClientRun {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        cmd.arg(format!("--groups={}", list.join(",")));
    }
    cmd.arg("--")
        .arg(exe)
        .args([
            "--exact",
            "unix_client_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CLIENT_ENV, socket)
        .env(CALL_ENV, call)
        .env_remove(PRIVILEGED_ENV);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("the helper printed no result: {stderr}"));
    let (code, rest) = line.split_once(" host=").unwrap();
    let (host, message) = rest.split_once(" message=").unwrap();
    let run = ClientRun {
        code: code.strip_prefix("code=").unwrap().parse().unwrap(),
        host: host.to_owned(),
        message: message.to_owned(),
    };
    assert_eq!(out.status.code(), Some(run.code), "{stderr}");
    run
}

/// Users and groups created for the test, deleted when it ends (also on panic).
#[derive(Default)]
struct Accounts {
    users: Vec<String>,
    groups: Vec<String>,
}

impl Accounts {
    fn run(args: &[&str]) {
        let status = Command::new(args[0]).args(&args[1..]).status().unwrap();
        assert!(status.success(), "{args:?}: {status}");
    }

    fn group(&mut self, name: &str) -> u32 {
        Accounts::run(&["groupadd", "--system", name]);
        self.groups.push(name.to_owned());
        Group::from_name(name).unwrap().unwrap().gid.as_raw()
    }

    /// A system user without home; `groups` are its supplementary groups in /etc/group.
    fn user(&mut self, name: &str, primary: &str, groups: &[&str]) -> User {
        let mut args = vec![
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--gid",
            primary,
        ];
        let list = groups.join(",");
        if !groups.is_empty() {
            args.extend(["--groups", &list]);
        }
        args.push(name);
        Accounts::run(&args);
        self.users.push(name.to_owned());
        User::from_name(name).unwrap().unwrap()
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        for user in self.users.iter().rev() {
            let _ = Command::new("userdel").arg(user).status();
        }
        for group in self.groups.iter().rev() {
            let _ = Command::new("groupdel").arg(group).status();
        }
    }
}

fn free_uid(from: u32) -> u32 {
    (from..from + 1000)
        .find(|&uid| matches!(User::from_uid(Uid::from_raw(uid)), Ok(None)))
        .expect("a free uid")
}

#[tokio::test(flavor = "multi_thread")]
async fn unix_socket_non_root_uids() {
    if std::env::var_os(PRIVILEGED_ENV).as_deref() != Some(OsStr::new("1")) {
        let _ = writeln!(
            std::io::stderr(),
            "skipped: set {PRIVILEGED_ENV}=1 (as root) to run the non-root Unix socket cases"
        );
        return;
    }
    assert!(Uid::effective().is_root(), "{PRIVILEGED_ENV}=1 needs root");

    let tag = std::process::id();
    let admin_name = format!("natest-{tag}-adm");
    let primary_name = format!("natest-{tag}-usr");
    let member_name = format!("natest-{tag}-op");
    let outsider_name = format!("natest-{tag}-no");
    let mut accounts = Accounts::default();
    let admin_gid = accounts.group(&admin_name);
    accounts.group(&primary_name);
    // The admin group only as a supplementary group, in /etc/group.
    let member = accounts.user(&member_name, &primary_name, &[&admin_name]);
    let outsider = accounts.user(&outsider_name, &primary_name, &[]);
    let nameless = free_uid(1234);

    let dir = open_tempdir();
    let path = dir.path().join("run/agent.sock");
    let (agent, _task) = start_unix(&path, &admin_name).await;
    let socket = path.as_path();

    // No passwd entry, no groups: the socket's mode (0660 root:admin) refuses the connect.
    let run = run_client_as(socket, "GetStatus", nameless, nameless, &[]);
    assert_eq!(run.code, EXIT_CONNECT_FAILED, "{run:?}");
    assert!(
        run.message.contains("PermissionDenied") || run.message.contains("Permission denied"),
        "{run:?}"
    );

    // The process holds the admin group (so it can connect), but the user database does not
    // put the uid in it: the layer refuses.
    let run = run_client_as(socket, "GetStatus", nameless, nameless, &[admin_gid]);
    assert_eq!(run.code, Code::PermissionDenied as i32, "{run:?}");
    assert_eq!(
        run.message,
        format!("uid {nameless} is not root and not in group {admin_name}")
    );
    let outsider_uid = outsider.uid.as_raw();
    let run = run_client_as(
        socket,
        "Apply",
        outsider_uid,
        outsider.gid.as_raw(),
        &[admin_gid],
    );
    assert_eq!(run.code, Code::PermissionDenied as i32, "{run:?}");
    assert_eq!(
        run.message,
        format!("uid {outsider_uid} ({outsider_name}) is not root and not in group {admin_name}")
    );
    assert_eq!(agent.calls.load(Ordering::SeqCst), 0);

    // A member through a supplementary group: operator.
    let member_uid = member.uid.as_raw();
    let run = run_client_as(
        socket,
        "GetStatus",
        member_uid,
        member.gid.as_raw(),
        &[admin_gid],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.host, format!("uid {member_uid} ({member_name})"));
    let run = run_client_as(
        socket,
        "Apply",
        member_uid,
        member.gid.as_raw(),
        &[admin_gid],
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(agent.calls.load(Ordering::SeqCst), 2);

    drop(accounts);
    assert!(matches!(User::from_name(&member_name), Ok(None)));
    assert!(matches!(User::from_name(&outsider_name), Ok(None)));
    assert!(matches!(Group::from_name(&admin_name), Ok(None)));
    assert!(matches!(Group::from_name(&primary_name), Ok(None)));
}
