//! `certs`: the test-fleet PKI. The files and their X.509 contents, chain verification with
//! rustls' webpki verifiers, and real mutual-TLS handshakes over loopback TCP (tokio-rustls)
//! with the generated files: an observer is accepted; another CA's client, an expired client
//! and a client without a certificate are refused at the handshake.

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use node_agent::certs::{self, CertsError, Generated, Request};
use node_agent::settings::{Role, Settings};
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

const DAY: i64 = 86_400;

fn request(dir: &Path) -> Request {
    Request {
        dir: dir.to_owned(),
        server_names: vec![
            "trading-01.example".into(),
            "localhost".into(),
            "127.0.0.1".into(),
            "::1".into(),
        ],
        observers: vec!["grafana".into(), "ops team ü".into()],
        operators: vec!["alice".into()],
        days: 30,
        overwrite: false,
    }
}

fn generate_in(dir: &Path) -> Generated {
    certs::generate(&request(dir)).expect("generate")
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn parse<'a>(der: &'a [u8]) -> X509Certificate<'a> {
    X509Certificate::from_der(der).expect("parses").1
}

fn cn(cert: &X509Certificate<'_>) -> String {
    let cns: Vec<&str> = cert
        .subject()
        .iter_common_name()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(cns.len(), 1, "one CN in {}", cert.subject());
    cns[0].to_owned()
}

struct Eku {
    server: bool,
    client: bool,
}

fn eku(cert: &X509Certificate<'_>) -> Option<Eku> {
    cert.extended_key_usage().unwrap().map(|e| Eku {
        server: e.value.server_auth,
        client: e.value.client_auth,
    })
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &Path) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(der(ca)).unwrap();
    Arc::new(roots)
}

fn client_verifier(ca: &Path) -> Arc<dyn ClientCertVerifier> {
    WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
        .build()
        .unwrap()
}

fn server_verifier(ca: &Path) -> Arc<rustls::client::WebPkiServerVerifier> {
    rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca), provider())
        .build()
        .unwrap()
}

fn err_of(r: Result<Generated, CertsError>) -> CertsError {
    match r {
        Ok(g) => panic!("expected an error, generated {g:?}"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

#[test]
fn generate_writes_every_file_with_its_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki/fleet");
    let g = generate_in(&dir);

    assert_eq!(g.dir, std::fs::canonicalize(&dir).unwrap());
    assert_eq!(mode(&dir), 0o700, "created directory");
    let names: Vec<String> = g
        .paths()
        .iter()
        .map(|p| {
            assert!(p.is_absolute(), "{}", p.display());
            assert_eq!(p.parent().unwrap(), g.dir);
            p.file_name().unwrap().to_string_lossy().into_owned()
        })
        .collect();
    assert_eq!(
        names,
        [
            "ca.crt",
            "ca.key",
            "server.crt",
            "server.key",
            "grafana.crt",
            "grafana.key",
            "ops_team__.crt",
            "ops_team__.key",
            "alice.crt",
            "alice.key",
        ]
    );
    let mut listed: Vec<String> = std::fs::read_dir(&g.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(listed, expected, "nothing else in the directory");

    for p in g.paths() {
        let want = if p.extension().unwrap() == "key" {
            0o600
        } else {
            0o644
        };
        assert_eq!(mode(p), want, "{}", p.display());
        let text = std::fs::read_to_string(p).unwrap();
        let label = if want == 0o600 {
            "-----BEGIN PRIVATE KEY-----"
        } else {
            "-----BEGIN CERTIFICATE-----"
        };
        assert!(text.starts_with(label), "{}: {text}", p.display());
    }

    let roles: Vec<(&str, Role)> = g.clients.iter().map(|c| (c.cn.as_str(), c.role)).collect();
    assert_eq!(
        roles,
        [
            ("grafana", Role::Observer),
            ("ops team ü", Role::Observer),
            ("alice", Role::Operator)
        ]
    );
}

#[test]
fn an_existing_directory_keeps_its_mode() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
    generate_in(tmp.path());
    assert_eq!(mode(tmp.path()), 0o750);
}

#[test]
fn json_lists_the_paths_and_roles() {
    let tmp = tempfile::tempdir().unwrap();
    let g = generate_in(tmp.path());
    let v = serde_json::to_value(&g).unwrap();
    assert_eq!(v["days"], 30);
    assert_eq!(v["ca"]["cert"], g.ca.cert.to_str().unwrap());
    assert_eq!(v["server"]["key"], g.server.files.key.to_str().unwrap());
    assert_eq!(v["server"]["names"][2], "127.0.0.1");
    assert_eq!(v["clients"][0]["cn"], "grafana");
    assert_eq!(v["clients"][0]["role"], "observer");
    assert_eq!(v["clients"][2]["role"], "operator");
    assert_eq!(
        v["clients"][1]["cert"],
        g.dir.join("ops_team__.crt").to_str().unwrap()
    );
}

#[test]
fn refuses_to_overwrite_naming_the_file_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut req = request(tmp.path());
    req.observers = vec!["grafana".into()];
    req.operators = vec![];
    let first = certs::generate(&req).unwrap();
    let before = std::fs::read(&first.ca.key).unwrap();

    // A second run that adds alice: grafana's and the CA's files are in the way.
    req.operators = vec!["alice".into()];
    let e = err_of(certs::generate(&req));
    assert!(
        matches!(&e, CertsError::Exists { path } if *path == first.ca.cert),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("ca.crt") && msg.contains("refusing to overwrite"),
        "{msg}"
    );
    assert!(!tmp.path().join("alice.crt").exists(), "nothing written");
    assert_eq!(std::fs::read(&first.ca.key).unwrap(), before);

    // Only a client file in the way: still named.
    std::fs::remove_file(tmp.path().join("ca.crt")).unwrap();
    std::fs::remove_file(tmp.path().join("ca.key")).unwrap();
    std::fs::remove_file(tmp.path().join("server.crt")).unwrap();
    std::fs::remove_file(tmp.path().join("server.key")).unwrap();
    let e = err_of(certs::generate(&req));
    assert!(e.to_string().contains("grafana.crt"), "{e}");

    // A dangling symlink is in the way too, and overwrite does not write through it.
    let target = tmp.path().join("elsewhere");
    std::os::unix::fs::symlink(&target, tmp.path().join("ca.crt")).unwrap();
    let e = err_of(certs::generate(&req));
    assert!(e.to_string().contains("ca.crt"), "{e}");
    req.overwrite = true;
    let e = err_of(certs::generate(&req));
    assert!(
        matches!(&e, CertsError::Io { path, .. } if path.ends_with("ca.crt")),
        "{e:?}"
    );
    assert!(!target.exists(), "wrote through a symlink");
    std::fs::remove_file(tmp.path().join("ca.crt")).unwrap();

    // overwrite: replaces every file with new keys, at exact modes even where the old
    // file's were looser.
    let second = certs::generate(&req).unwrap();
    let second_key = std::fs::read(&second.ca.key).unwrap();
    assert_ne!(second_key, before);
    assert!(tmp.path().join("alice.key").exists());
    std::fs::set_permissions(
        &second.server.files.key,
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::set_permissions(&second.ca.cert, std::fs::Permissions::from_mode(0o600)).unwrap();
    let third = certs::generate(&req).unwrap();
    assert_ne!(std::fs::read(&third.ca.key).unwrap(), second_key);
    assert_eq!(mode(&third.server.files.key), 0o600);
    assert_eq!(mode(&third.ca.cert), 0o644);
}

// ---------------------------------------------------------------------------------------------
// Invalid requests
// ---------------------------------------------------------------------------------------------

#[test]
fn invalid_common_names_are_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &[&str], &str)] = &[
        (&[""], &[], "must not be empty"),
        (&["ops/alice"], &[], "'/' is not allowed"),
        (&[" alice"], &[], "leading or trailing spaces"),
        (&["bell\u{7}"], &[], "control characters"),
        (&[&"x".repeat(65)], &[], "longer than 64"),
        (&["ca"], &[], "ca.crt"),
        (&[], &["server"], "server.crt"),
        (&["grafana", "grafana"], &[], "listed twice as observer"),
        (&["alice"], &["alice"], "both observer and operator"),
        (&["ops team"], &["ops_team"], "as those of \"ops team\""),
        (&[], &[], "give at least one observer or operator"),
    ];
    for (observers, operators, want) in cases {
        let mut req = request(tmp.path());
        req.observers = observers.iter().map(|s| s.to_string()).collect();
        req.operators = operators.iter().map(|s| s.to_string()).collect();
        let msg = err_of(certs::generate(&req)).to_string();
        assert!(msg.contains(want), "{observers:?} {operators:?}: {msg}");
    }
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

#[test]
fn invalid_server_names_and_validity_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], u32, &str)] = &[
        (&[], 30, "no server name"),
        (&[""], 30, "\"\": must not be empty"),
        (&["trading 01"], 30, "neither a DNS name"),
        (&["host", "host"], 30, "listed twice"),
        (&["host"], 0, "0 days"),
        (&["host"], certs::MAX_DAYS + 1, "give 1 to"),
    ];
    for (names, days, want) in cases {
        let mut req = request(tmp.path());
        req.server_names = names.iter().map(|s| s.to_string()).collect();
        req.days = *days;
        let msg = err_of(certs::generate(&req)).to_string();
        assert!(msg.contains(want), "{names:?} {days}: {msg}");
    }
}

// ---------------------------------------------------------------------------------------------
// X.509 contents
// ---------------------------------------------------------------------------------------------

fn assert_validity(cert: &X509Certificate<'_>, g: &Generated, days: i64) {
    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    assert_eq!((nb, na), (g.not_before, g.not_after));
    let now = now_unix();
    assert!(
        nb <= now && now - nb <= 3600 + 60,
        "not_before {nb}, now {now}"
    );
    assert_eq!(
        na - nb,
        days * DAY + 3600,
        "{days} days from now, 1 h backdated"
    );
    assert!(cert.validity().is_valid());
}

#[test]
fn the_ca_is_a_ca_that_signs_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let g = generate_in(tmp.path());
    let der = der(&g.ca.cert);
    let ca = parse(&der);
    let ca_cn = cn(&ca);
    let id = ca_cn
        .strip_prefix("node-agent test fleet CA ")
        .unwrap_or_else(|| panic!("{ca_cn}"));
    assert!(
        id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{ca_cn}"
    );
    assert_eq!(ca.subject(), ca.issuer(), "self-signed");
    let bc = ca.basic_constraints().unwrap().expect("basicConstraints");
    assert!(bc.critical);
    assert!(bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = ca.key_usage().unwrap().expect("keyUsage").value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    assert!(eku(&ca).is_none());
    assert_validity(&ca, &g, 30);
}

#[test]
fn the_server_certificate_names_the_server_for_server_auth() {
    let tmp = tempfile::tempdir().unwrap();
    let g = generate_in(tmp.path());
    let der = der(&g.server.files.cert);
    let server = parse(&der);
    assert_eq!(cn(&server), "trading-01.example");
    assert!(!server.is_ca());
    let e = eku(&server).expect("extendedKeyUsage");
    assert!(e.server && !e.client);
    let ku = server.key_usage().unwrap().expect("keyUsage").value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    let sans: Vec<String> = server
        .subject_alternative_name()
        .unwrap()
        .expect("SANs")
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => format!("dns:{d}"),
            GeneralName::IPAddress(b) => match b.len() {
                4 => format!("ip:{}", IpAddr::from(<[u8; 4]>::try_from(&b[..]).unwrap())),
                16 => format!("ip:{}", IpAddr::from(<[u8; 16]>::try_from(&b[..]).unwrap())),
                _ => panic!("bad IP SAN {b:?}"),
            },
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect();
    assert_eq!(
        sans,
        [
            "dns:trading-01.example",
            "dns:localhost",
            "ip:127.0.0.1",
            "ip:::1"
        ]
    );
    assert_validity(&server, &g, 30);
}

#[test]
fn client_certificates_carry_the_exact_common_name_for_client_auth() {
    let tmp = tempfile::tempdir().unwrap();
    let g = generate_in(tmp.path());
    for c in &g.clients {
        let der = der(&c.files.cert);
        let cert = parse(&der);
        assert_eq!(cn(&cert), c.cn);
        assert!(!cert.is_ca());
        let e = eku(&cert).expect("extendedKeyUsage");
        assert!(e.client && !e.server, "{}", c.cn);
        assert!(cert.subject_alternative_name().unwrap().is_none());
        assert_validity(&cert, &g, 30);
        assert_eq!(cert.issuer(), parse(&self::der(&g.ca.cert)).subject());
    }
}

#[test]
fn certificates_verify_against_their_ca_only() {
    let tmp = tempfile::tempdir().unwrap();
    let other_tmp = tempfile::tempdir().unwrap();
    let g = generate_in(tmp.path());
    let other = generate_in(other_tmp.path());
    let now = UnixTime::now();
    let (ca, other_ca) = (der(&g.ca.cert), der(&other.ca.cert));
    assert_ne!(
        parse(&ca).subject(),
        parse(&other_ca).subject(),
        "two fleets' CAs have distinct subjects"
    );

    let sv = server_verifier(&g.ca.cert);
    let server = der(&g.server.files.cert);
    for name in ["trading-01.example", "localhost", "127.0.0.1", "::1"] {
        let name = ServerName::try_from(name).unwrap();
        sv.verify_server_cert(&server, &[], &name, &[], now)
            .unwrap_or_else(|e| panic!("{name:?}: {e}"));
    }
    let wrong = ServerName::try_from("trading-02.example").unwrap();
    let e = sv
        .verify_server_cert(&server, &[], &wrong, &[], now)
        .unwrap_err();
    assert!(matches!(
        e,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    ));
    let localhost = ServerName::try_from("localhost").unwrap();
    let e = sv
        .verify_server_cert(&der(&other.server.files.cert), &[], &localhost, &[], now)
        .unwrap_err();
    assert_eq!(
        e,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    // A client certificate is no server certificate (EKU).
    let e = sv
        .verify_server_cert(&der(&g.clients[0].files.cert), &[], &localhost, &[], now)
        .unwrap_err();
    assert!(matches!(e, rustls::Error::InvalidCertificate(_)), "{e}");

    let cv = client_verifier(&g.ca.cert);
    for c in &g.clients {
        cv.verify_client_cert(&der(&c.files.cert), &[], now)
            .unwrap_or_else(|e| panic!("{}: {e}", c.cn));
    }
    let e = cv
        .verify_client_cert(&der(&other.clients[0].files.cert), &[], now)
        .unwrap_err();
    assert_eq!(
        e,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    // The server certificate is no client certificate (EKU).
    let e = cv.verify_client_cert(&server, &[], now).unwrap_err();
    assert!(matches!(e, rustls::Error::InvalidCertificate(_)), "{e}");
}

// ---------------------------------------------------------------------------------------------
// issue_client
// ---------------------------------------------------------------------------------------------

fn issue_expired(g: &Generated, cn: &str) -> certs::Issued {
    let now = SystemTime::now();
    certs::issue_client(
        &std::fs::read_to_string(&g.ca.cert).unwrap(),
        &std::fs::read_to_string(&g.ca.key).unwrap(),
        cn,
        now - Duration::from_secs(10 * DAY as u64),
        now - Duration::from_secs(DAY as u64),
    )
    .unwrap()
}

#[test]
fn issue_client_makes_an_expired_certificate_of_the_same_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let g = generate_in(tmp.path());
    let issued = issue_expired(&g, "grafana");
    assert!(issued.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(!format!("{issued:?}").contains("PRIVATE KEY"), "key elided");
    let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
    let cert = parse(&der);
    assert_eq!(cn(&cert), "grafana");
    let e = eku(&cert).unwrap();
    assert!(e.client && !e.server);
    let now = now_unix();
    let na = cert.validity().not_after.timestamp();
    assert!(na < now, "not_after {na} is in the past (now {now})");
    assert!(!cert.validity().is_valid());

    // Chains to the CA (byte-exact issuer name, AKI = the CA's SKI): expired, not unknown.
    let cv = client_verifier(&g.ca.cert);
    let e = cv
        .verify_client_cert(&der, &[], UnixTime::now())
        .unwrap_err();
    assert!(
        matches!(
            e,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "{e}"
    );
    // ... and is accepted at a time inside its validity.
    let then = UnixTime::since_unix_epoch(Duration::from_secs((now - 5 * DAY) as u64));
    cv.verify_client_cert(&der, &[], then).unwrap();

    let ca_der = self::der(&g.ca.cert);
    let ca = parse(&ca_der);
    assert_eq!(cert.issuer().as_raw(), ca.subject().as_raw());
}

#[test]
fn issue_client_refuses_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let other_tmp = tempfile::tempdir().unwrap();
    let g = generate_in(tmp.path());
    let other = generate_in(other_tmp.path());
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    let now = SystemTime::now();
    let later = now + Duration::from_secs(3600);

    let e =
        certs::issue_client(&read(&g.ca.cert), &read(&other.ca.key), "x", now, later).unwrap_err();
    assert!(e.to_string().contains("does not belong"), "{e}");
    let e = certs::issue_client(
        &read(&g.server.files.cert),
        &read(&g.server.files.key),
        "x",
        now,
        later,
    )
    .unwrap_err();
    assert!(e.to_string().contains("not a CA"), "{e}");
    let e = certs::issue_client(&read(&g.ca.cert), &read(&g.ca.key), "x", later, now).unwrap_err();
    assert!(matches!(e, CertsError::InvalidValidity), "{e}");
    let e = certs::issue_client(&read(&g.ca.cert), &read(&g.ca.key), "", now, later).unwrap_err();
    assert!(matches!(e, CertsError::InvalidCommonName { .. }), "{e}");
    let e = certs::issue_client("junk", &read(&g.ca.key), "x", now, later).unwrap_err();
    assert!(e.to_string().contains("invalid CA"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Summary
// ---------------------------------------------------------------------------------------------

#[test]
fn the_summary_snippet_is_valid_agent_toml() {
    let tmp = tempfile::tempdir().unwrap();
    let g = generate_in(tmp.path());
    let snippet = g.settings_snippet("127.0.0.1:9443".parse().unwrap());
    let s = Settings::parse(&snippet).unwrap_or_else(|e| panic!("{e:?}\n{snippet}"));
    assert_eq!(s.listen.tcp, Some("127.0.0.1:9443".parse().unwrap()));
    let tls = s.tls.expect("[tls]");
    assert_eq!(tls.cert, g.server.files.cert);
    assert_eq!(tls.key, g.server.files.key);
    assert_eq!(tls.client_ca, g.ca.cert);
    assert_eq!(s.roles.role_of("grafana"), Some(Role::Observer));
    assert_eq!(s.roles.role_of("ops team ü"), Some(Role::Observer));
    assert_eq!(s.roles.role_of("alice"), Some(Role::Operator));

    let summary = g.summary();
    assert!(summary.contains(&g.settings_snippet(certs::DEFAULT_LISTEN.parse().unwrap())));
    assert!(summary.contains("tcp = \"0.0.0.0:9443\""), "{summary}");
    let flags = format!(
        "agentctl --remote trading-01.example:9443 --cert {} --key {} --ca {}",
        g.dir.join("alice.crt").display(),
        g.dir.join("alice.key").display(),
        g.ca.cert.display()
    );
    assert!(summary.contains(&flags), "{summary}");
    assert!(summary.contains("keep it off the hosts"), "{summary}");
}

// ---------------------------------------------------------------------------------------------
// Mutual TLS over loopback
// ---------------------------------------------------------------------------------------------

fn server_config(g: &Generated) -> Arc<ServerConfig> {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(client_verifier(&g.ca.cert))
        .with_single_cert(vec![der(&g.server.files.cert)], key(&g.server.files.key))
        .unwrap();
    Arc::new(config)
}

/// A client trusting `ca`, presenting `identity` (certificate and key PEM) if given.
fn client_config(ca: &Path, identity: Option<(&str, &str)>) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(ca));
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

fn identity_files(files: &certs::Files) -> (String, String) {
    (
        std::fs::read_to_string(&files.cert).unwrap(),
        std::fs::read_to_string(&files.key).unwrap(),
    )
}

/// One connection: the server accepts, reports the client's CN and writes "hello"; the client
/// connects to "localhost" and reads to the end. (server result, client result)
async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> (
    Result<String, rustls::Error>,
    Result<Vec<u8>, std::io::Error>,
) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server);
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = match acceptor.accept(tcp).await {
            Ok(tls) => tls,
            Err(e) => {
                let inner = e
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<rustls::Error>())
                    .cloned();
                return Err(inner.unwrap_or_else(|| panic!("not a TLS error: {e}")));
            }
        };
        let peer = tls.get_ref().1.peer_certificates().expect("client certs")[0].clone();
        let cn = cn(&parse(&peer));
        tls.write_all(b"hello").await.unwrap();
        tls.shutdown().await.unwrap();
        Ok(cn)
    });
    let client_side = async move {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = TlsConnector::from(client).connect(name, tcp).await?;
        let mut got = Vec::new();
        tls.read_to_end(&mut got).await?;
        Ok(got)
    };
    let deadline = Duration::from_secs(20);
    let client_result = tokio::time::timeout(deadline, client_side)
        .await
        .expect("client timed out");
    let server_result = tokio::time::timeout(deadline, server_side)
        .await
        .expect("server timed out")
        .unwrap();
    (server_result, client_result)
}

/// The client was refused: no "hello", and the server's alert as the error.
fn assert_client_refused(client: Result<Vec<u8>, std::io::Error>) {
    match client {
        Ok(got) => panic!("client read {:?}", String::from_utf8_lossy(&got)),
        Err(e) => {
            let tls = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
            assert!(
                matches!(tls, Some(rustls::Error::AlertReceived(_))),
                "client error: {e}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_accepts_an_observer_and_an_operator() {
    let tmp = tempfile::tempdir().unwrap();
    let g = generate_in(tmp.path());
    for c in [&g.clients[0], &g.clients[2]] {
        let (cert, key) = identity_files(&c.files);
        let (server, client) = handshake(
            server_config(&g),
            client_config(&g.ca.cert, Some((&cert, &key))),
        )
        .await;
        assert_eq!(server.unwrap(), c.cn);
        assert_eq!(client.unwrap(), b"hello");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_a_client_of_another_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let other_tmp = tempfile::tempdir().unwrap();
    let g = generate_in(tmp.path());
    let other = generate_in(other_tmp.path());
    // Same CN as an observer of ours, but signed by the other CA.
    let (cert, key) = identity_files(&other.clients[0].files);
    let (server, client) = handshake(
        server_config(&g),
        client_config(&g.ca.cert, Some((&cert, &key))),
    )
    .await;
    assert_eq!(
        server.unwrap_err(),
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    );
    assert_client_refused(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_an_expired_client() {
    let tmp = tempfile::tempdir().unwrap();
    let g = generate_in(tmp.path());
    let expired = issue_expired(&g, "grafana");
    let (server, client) = handshake(
        server_config(&g),
        client_config(&g.ca.cert, Some((&expired.cert_pem, &expired.key_pem))),
    )
    .await;
    let e = server.unwrap_err();
    assert!(
        matches!(
            e,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "{e}"
    );
    assert_client_refused(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_a_client_without_a_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let g = generate_in(tmp.path());
    let (server, client) = handshake(server_config(&g), client_config(&g.ca.cert, None)).await;
    assert_eq!(server.unwrap_err(), rustls::Error::NoCertificatesPresented);
    assert_client_refused(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_client_refuses_a_server_of_another_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let other_tmp = tempfile::tempdir().unwrap();
    let g = generate_in(tmp.path());
    let other = generate_in(other_tmp.path());
    let (cert, key) = identity_files(&g.clients[0].files);
    // The client trusts the other CA only.
    let (server, client) = handshake(
        server_config(&g),
        client_config(&other.ca.cert, Some((&cert, &key))),
    )
    .await;
    let e = client.unwrap_err();
    let tls = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    assert_eq!(
        tls,
        Some(&rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer
        )),
        "{e}"
    );
    assert!(
        matches!(server, Err(rustls::Error::AlertReceived(_))),
        "{server:?}"
    );
}
