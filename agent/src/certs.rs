//! A test-fleet PKI for the TCP listener's mutual TLS (`agentctl certs generate`): one CA, one
//! server certificate, and one client certificate per observer and operator common name, as
//! PEM files a newcomer can point agent.toml and agentctl at within minutes.
//!
//! This is for trying mTLS and for tests, not a production CA: the CA key is written next to
//! the certificates it signs, there is no revocation, and keys are ECDSA P-256 (what rcgen
//! generates with ring), which rustls accepts on both sides.
//!
//! Layout of `Request::dir` (created 0700 when missing; keys 0600, certificates 0644):
//!
//! | file | what |
//! |---|---|
//! | ca.crt, ca.key | the CA `node-agent test fleet CA <key id>` (basicConstraints CA, pathlen 0; keyCertSign, cRLSign) |
//! | server.crt, server.key | serverAuth; SANs: every server name (DNS or IP); CN: the first |
//! | `<cn>.crt`, `<cn>.key` | per client: clientAuth; subject CN exactly as given |
//!
//! Client file names come from the CN with every character outside `[A-Za-z0-9._@+-]` (and a
//! leading '.') replaced by '_'; a CN containing '/' is refused, as are two CNs that would share
//! a file, or one that would take `ca` or `server`.
//!
//! `issue_client` signs one more client certificate with an existing CA and any validity
//! (tests use it for an expired certificate).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::ServerName;
use serde::{Serialize, Serializer};
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::settings::{CommonName, Role};

/// Validity when none is asked for.
pub const DEFAULT_DAYS: u32 = 365;
/// The longest validity `generate` accepts.
pub const MAX_DAYS: u32 = 3650;
/// How far before "now" certificates start, so a host whose clock is a little behind the one
/// that generated them accepts them at once.
pub const BACKDATE: Duration = Duration::from_secs(3600);
/// The TCP address the settings snippet suggests (the daemon has no default TCP listener).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:9443";

const CA_CN: &str = "node-agent test fleet CA";
const ORGANIZATION: &str = "node-agent test fleet";
const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o700;

/// What `generate` makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Where the files go; created (mode 0700) with its parents when missing.
    pub dir: PathBuf,
    /// The server certificate's subject alternative names: DNS names and/or IP addresses. The
    /// first is also its subject CN. At least one.
    pub server_names: Vec<String>,
    /// Client certificate common names for `[roles] observers`.
    pub observers: Vec<String>,
    /// Client certificate common names for `[roles] operators`.
    pub operators: Vec<String>,
    /// Validity of every certificate, from now (1 to `MAX_DAYS`).
    pub days: u32,
    /// Replace files that exist; otherwise an existing file is an error and nothing is written.
    pub overwrite: bool,
}

impl Request {
    /// A request with the default validity, refusing to overwrite.
    pub fn new(dir: impl Into<PathBuf>, server_names: Vec<String>) -> Request {
        Request {
            dir: dir.into(),
            server_names,
            observers: Vec::new(),
            operators: Vec::new(),
            days: DEFAULT_DAYS,
            overwrite: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error(
        "no server name: the server certificate needs at least one DNS name or IP address \
         (the name clients connect to)"
    )]
    NoServerName,
    #[error("invalid server name {name:?}: {why}")]
    InvalidServerName { name: String, why: String },
    #[error("no client: give at least one observer or operator common name")]
    NoClient,
    #[error("invalid client common name {cn:?}: {why}")]
    InvalidCommonName { cn: String, why: String },
    #[error("invalid validity of {days} days: give 1 to {MAX_DAYS}")]
    InvalidDays { days: u32 },
    #[error("invalid validity: not_before must be earlier than not_after")]
    InvalidValidity,
    #[error("{}: already exists; refusing to overwrite it (nothing was written)", path.display())]
    Exists { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("invalid CA: {0}")]
    InvalidCa(String),
    #[error("{what}: {source}")]
    Rcgen { what: String, source: rcgen::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CertsError + '_ {
    move |source| CertsError::Io {
        path: path.to_owned(),
        source,
    }
}

fn rcgen_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CertsError {
    let what = what.into();
    move |source| CertsError::Rcgen { what, source }
}

/// A certificate and its key, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The server certificate's files and names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerFiles {
    /// Its subject alternative names, in the order given; the first is its CN.
    pub names: Vec<String>,
    #[serde(flatten)]
    pub files: Files,
}

/// One client certificate's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientFiles {
    /// The subject common name, exactly as in the certificate and in `[roles]`.
    pub cn: String,
    #[serde(serialize_with = "role_str")]
    pub role: Role,
    #[serde(flatten)]
    pub files: Files,
}

fn role_str<S: Serializer>(role: &Role, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(role.as_str())
}

/// What `generate` wrote (absolute paths), for `--output json` and `summary`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Generated {
    /// The directory, absolute.
    pub dir: PathBuf,
    /// Validity from now, in days (the certificates start `BACKDATE` earlier).
    pub days: u32,
    /// Validity bounds of every certificate, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub ca: Files,
    pub server: ServerFiles,
    /// Observers first, then operators, each in the order given.
    pub clients: Vec<ClientFiles>,
}

impl Generated {
    /// Every file written: CA, server, then the clients; each certificate before its key.
    pub fn paths(&self) -> Vec<&Path> {
        [&self.ca, &self.server.files]
            .into_iter()
            .chain(self.clients.iter().map(|c| &c.files))
            .flat_map(|f| [f.cert.as_path(), f.key.as_path()])
            .collect()
    }

    /// The agent.toml sections for a daemon listening on `listen` with these files:
    /// `[listen] tcp`, `[tls]` and `[roles]`. It parses as settings on its own.
    pub fn settings_snippet(&self, listen: SocketAddr) -> String {
        let s = |p: &Path| toml_str(&p.to_string_lossy());
        let names = |role: Role| {
            let cns: Vec<String> = self
                .clients
                .iter()
                .filter(|c| c.role == role)
                .map(|c| toml_str(&c.cn))
                .collect();
            format!("[{}]", cns.join(", "))
        };
        format!(
            "[listen]\ntcp = {}\n\n[tls]\ncert = {}\nkey = {}\nclient_ca = {}\n\n[roles]\n\
             observers = {}\noperators = {}\n",
            toml_str(&listen.to_string()),
            s(&self.server.files.cert),
            s(&self.server.files.key),
            s(&self.ca.cert),
            names(Role::Observer),
            names(Role::Operator),
        )
    }

    /// The `agentctl` flags that connect as `client` to the server's first name on `port`.
    pub fn agentctl_flags(&self, client: &ClientFiles, port: u16) -> String {
        let host = &self.server.names[0];
        let remote = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        [
            "--remote".to_owned(),
            remote,
            "--cert".to_owned(),
            shell_word(&client.files.cert.to_string_lossy()),
            "--key".to_owned(),
            shell_word(&client.files.key.to_string_lossy()),
            "--ca".to_owned(),
            shell_word(&self.ca.cert.to_string_lossy()),
        ]
        .join(" ")
    }

    /// What a person reads after `agentctl certs generate`, with `DEFAULT_LISTEN`.
    pub fn summary(&self) -> String {
        let listen = SocketAddr::from_str(DEFAULT_LISTEN).expect("DEFAULT_LISTEN is an address");
        self.summary_for(listen)
    }

    /// The summary for a daemon listening on `listen`: the files, the settings snippet and
    /// the agentctl flags of the first operator (else the first observer).
    pub fn summary_for(&self, listen: SocketAddr) -> String {
        let name = |p: &Path| {
            p.file_name().map_or_else(
                || p.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Wrote a test-fleet PKI to {} (valid {} days):",
            self.dir.display(),
            self.days
        );
        let _ = writeln!(
            out,
            "  CA        {}, {}  (ca.key signs what every agent trusts: keep it off the hosts)",
            name(&self.ca.cert),
            name(&self.ca.key)
        );
        let _ = writeln!(
            out,
            "  server    {}, {}  names: {}",
            name(&self.server.files.cert),
            name(&self.server.files.key),
            self.server.names.join(", ")
        );
        for c in &self.clients {
            let _ = writeln!(
                out,
                "  {:<9} {}, {}  CN {:?}",
                c.role.as_str(),
                name(&c.files.cert),
                name(&c.files.key),
                c.cn
            );
        }
        let _ = writeln!(
            out,
            "\nOn the host, copy server.crt, server.key and ca.crt (server.key mode 0600), adjust \
             the paths if they move, and add to agent.toml:\n"
        );
        out.push_str(&self.settings_snippet(listen));
        let client = self
            .clients
            .iter()
            .find(|c| c.role == Role::Operator)
            .or_else(|| self.clients.first());
        if let Some(client) = client {
            let _ = writeln!(
                out,
                "\nThen, from a machine with {}'s files ({}):\n\n  agentctl {} tune verify",
                client.cn,
                client.role.as_str(),
                self.agentctl_flags(client, listen.port())
            );
        }
        out
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// `s` as one POSIX shell word.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+@:=,".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A certificate and its private key, PEM (the key PKCS#8).
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[elided]")
            .finish()
    }
}

/// A common name as `[roles]` accepts it (`settings::CommonName`), so the snippet parses.
fn check_cn(cn: &str) -> Result<(), CertsError> {
    CommonName::from_str(cn)
        .map(drop)
        .map_err(|e| CertsError::InvalidCommonName {
            cn: cn.to_owned(),
            // settings says "invalid common name \"..\": why"; keep the why.
            why: e
                .rsplit_once(": ")
                .map_or(e.as_str(), |(_, why)| why)
                .to_owned(),
        })
}

/// The file stem of a client's files, from its common name (see the module docs).
pub fn file_stem(cn: &str) -> Result<String, CertsError> {
    let invalid = |why: &str| CertsError::InvalidCommonName {
        cn: cn.to_owned(),
        why: why.to_owned(),
    };
    if cn.contains('/') {
        return Err(invalid(
            "'/' is not allowed (the common name names the client's files)",
        ));
    }
    check_cn(cn)?;
    let stem: String = cn
        .chars()
        .enumerate()
        .map(|(i, c)| {
            let keep = c.is_ascii_alphanumeric() || "._-@+".contains(c);
            if keep && !(i == 0 && c == '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if stem == "ca" || stem == "server" {
        return Err(invalid(&format!(
            "its files would be {stem}.crt and {stem}.key, which are the {stem}'s"
        )));
    }
    Ok(stem)
}

fn check_server_names(names: &[String]) -> Result<(), CertsError> {
    if names.is_empty() {
        return Err(CertsError::NoServerName);
    }
    for (i, name) in names.iter().enumerate() {
        let invalid = |why: &str| CertsError::InvalidServerName {
            name: name.clone(),
            why: why.to_owned(),
        };
        if name.is_empty() {
            return Err(invalid("must not be empty"));
        }
        if ServerName::try_from(name.as_str()).is_err() {
            return Err(invalid(
                "neither a DNS name (letters, digits, '-', '.') nor an IP address",
            ));
        }
        if names[..i].contains(name) {
            return Err(invalid("listed twice"));
        }
    }
    Ok(())
}

/// The clients as (cn, role, file stem), checked: valid CNs, each once, distinct files.
fn plan_clients(req: &Request) -> Result<Vec<(String, Role, String)>, CertsError> {
    let all: Vec<(&String, Role)> = req
        .observers
        .iter()
        .map(|cn| (cn, Role::Observer))
        .chain(req.operators.iter().map(|cn| (cn, Role::Operator)))
        .collect();
    if all.is_empty() {
        return Err(CertsError::NoClient);
    }
    let mut by_stem: BTreeMap<String, &str> = BTreeMap::new();
    let mut out = Vec::with_capacity(all.len());
    for (i, &(cn, role)) in all.iter().enumerate() {
        let stem = file_stem(cn)?;
        if let Some(&(_, first)) = all[..i].iter().find(|(c, _)| *c == cn) {
            let why = if first == role {
                format!("listed twice as {}", role.as_str())
            } else {
                "listed as both observer and operator: give each certificate one role".to_owned()
            };
            return Err(CertsError::InvalidCommonName {
                cn: cn.clone(),
                why,
            });
        }
        if let Some(other) = by_stem.insert(stem.clone(), cn) {
            return Err(CertsError::InvalidCommonName {
                cn: cn.clone(),
                why: format!(
                    "its files would be {stem}.crt and {stem}.key, as those of {other:?}: \
                     rename one"
                ),
            });
        }
        out.push((cn.clone(), role, stem));
    }
    Ok(out)
}

/// Seconds since the epoch; times before it are refused.
fn unix_secs(t: SystemTime) -> Result<u64, CertsError> {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| CertsError::InvalidValidity)
}

/// Validity on whole seconds (what X.509 stores).
fn set_validity(
    params: &mut CertificateParams,
    not_before: u64,
    not_after: u64,
) -> Result<(), CertsError> {
    if not_before >= not_after {
        return Err(CertsError::InvalidValidity);
    }
    // rcgen takes time's OffsetDateTime, which this crate does not name: build it from
    // rcgen's own epoch date plus a std Duration.
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(not_before);
    params.not_after = epoch + Duration::from_secs(not_after);
    Ok(())
}

/// The CA's parameters. Its CN ends with the first bytes of its key identifier, so two test
/// fleets' CAs never share a subject: webpki looks trust anchors up by subject, and a client of
/// another fleet would be refused with a misleading `BadSignature` instead of `UnknownIssuer`.
fn ca_params(key: &KeyPair) -> CertificateParams {
    let mut params = CertificateParams::default();
    let id: String = params.key_identifier(key)[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, format!("{CA_CN} {id}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn leaf_params(cn: &str, eku: ExtendedKeyUsagePurpose) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![eku];
    params.use_authority_key_identifier_extension = true;
    params
}

fn server_params(names: &[String]) -> Result<CertificateParams, CertsError> {
    let mut params = leaf_params(&names[0], ExtendedKeyUsagePurpose::ServerAuth);
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n
                .as_str()
                .try_into()
                .map(SanType::DnsName)
                .map_err(rcgen_err(format!("server name {n:?}"))),
        })
        .collect::<Result<_, _>>()?;
    Ok(params)
}

/// Signs `params` for a fresh key.
fn sign(
    params: &CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
    what: &str,
) -> Result<Issued, CertsError> {
    let key = KeyPair::generate().map_err(rcgen_err(format!("generating the {what} key")))?;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(rcgen_err(format!("signing the {what} certificate")))?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Generates the CA, the server certificate and the client certificates of `req` and writes
/// them (see the module docs). Everything is checked, and every target path looked at, before
/// anything is written.
pub fn generate(req: &Request) -> Result<Generated, CertsError> {
    check_server_names(&req.server_names)?;
    let clients = plan_clients(req)?;
    if req.days == 0 || req.days > MAX_DAYS {
        return Err(CertsError::InvalidDays { days: req.days });
    }

    let now = unix_secs(SystemTime::now())?;
    let not_before = now - BACKDATE.as_secs();
    let not_after = now + u64::from(req.days) * 86_400;

    let mut files: Vec<(String, String, u32)> = Vec::new(); // (file name, contents, mode)
    let mut push = |stem: &str, issued: Issued| {
        files.push((format!("{stem}.crt"), issued.cert_pem, CERT_MODE));
        files.push((format!("{stem}.key"), issued.key_pem, KEY_MODE));
    };

    let ca_key = KeyPair::generate().map_err(rcgen_err("generating the CA key"))?;
    let mut ca = ca_params(&ca_key);
    set_validity(&mut ca, not_before, not_after)?;
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(rcgen_err("signing the CA certificate"))?;
    push(
        "ca",
        Issued {
            cert_pem: ca_cert.pem(),
            key_pem: ca_key.serialize_pem(),
        },
    );
    let issuer = Issuer::new(ca, ca_key);

    let mut server = server_params(&req.server_names)?;
    set_validity(&mut server, not_before, not_after)?;
    push("server", sign(&server, &issuer, "server")?);

    for (cn, _, stem) in &clients {
        let mut params = leaf_params(cn, ExtendedKeyUsagePurpose::ClientAuth);
        set_validity(&mut params, not_before, not_after)?;
        push(stem, sign(&params, &issuer, &format!("client {cn:?}"))?);
    }

    if !req.dir.is_dir() {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&req.dir)
            .map_err(io_err(&req.dir))?;
    }
    let dir = fs::canonicalize(&req.dir).map_err(io_err(&req.dir))?;
    if !req.overwrite {
        for (name, _, _) in &files {
            let path = dir.join(name);
            // symlink_metadata: a dangling symlink is in the way too.
            if path.symlink_metadata().is_ok() {
                return Err(CertsError::Exists { path });
            }
        }
    }
    for (name, contents, mode) in &files {
        write_file(&dir.join(name), contents, *mode, req.overwrite)?;
    }

    let pair = |stem: &str| Files {
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
    };
    Ok(Generated {
        ca: pair("ca"),
        server: ServerFiles {
            names: req.server_names.clone(),
            files: pair("server"),
        },
        clients: clients
            .into_iter()
            .map(|(cn, role, stem)| ClientFiles {
                files: pair(&stem),
                cn,
                role,
            })
            .collect(),
        dir,
        days: req.days,
        not_before: not_before as i64,
        not_after: not_after as i64,
    })
}

/// Writes `contents` to `path` with exactly `mode`: a new file unless `overwrite`, never
/// through a symlink; the mode is set before the contents go in, so a key is never readable
/// by others, even when it replaces a file that was.
fn write_file(path: &Path, contents: &str, mode: u32, overwrite: bool) -> Result<(), CertsError> {
    let mut open = OpenOptions::new();
    open.write(true)
        .mode(mode)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits());
    if overwrite {
        open.create(true).truncate(true);
    } else {
        open.create_new(true);
    }
    let mut file = open.open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            CertsError::Exists {
                path: path.to_owned(),
            }
        } else {
            io_err(path)(e)
        }
    })?;
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(io_err(path))?;
    file.write_all(contents.as_bytes()).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// Signs a client certificate for `cn` (clientAuth, subject CN exactly `cn`) with the CA in
/// `ca_cert_pem`/`ca_key_pem`, valid from `not_before` to `not_after` (whole seconds; either
/// may be in the past, for an expired certificate). Nothing is written.
pub fn issue_client(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    cn: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<Issued, CertsError> {
    check_cn(cn)?;
    let ca_key = KeyPair::from_pem(ca_key_pem)
        .map_err(|e| CertsError::InvalidCa(format!("the CA key is not a PKCS#8 PEM key: {e}")))?;
    let ca_der = rustls::pki_types::pem::PemObject::from_pem_slice(ca_cert_pem.as_bytes())
        .map_err(|e: rustls::pki_types::pem::Error| {
            CertsError::InvalidCa(format!("the CA certificate is not PEM: {e}"))
        })
        .map(|c: rustls::pki_types::CertificateDer<'static>| c)?;
    let (_, ca) = X509Certificate::from_der(&ca_der)
        .map_err(|e| CertsError::InvalidCa(format!("the CA certificate does not parse: {e}")))?;
    if !ca.is_ca() {
        return Err(CertsError::InvalidCa(
            "the certificate is not a CA (basicConstraints)".into(),
        ));
    }
    if ca.public_key().subject_public_key.data.as_ref() != rcgen::PublicKeyData::der_bytes(&ca_key)
    {
        return Err(CertsError::InvalidCa(
            "the key does not belong to the CA certificate".into(),
        ));
    }
    let issuer = issuer_from(&ca, ca_key)?;

    let mut params = leaf_params(cn, ExtendedKeyUsagePurpose::ClientAuth);
    set_validity(&mut params, unix_secs(not_before)?, unix_secs(not_after)?)?;
    let issued = sign(&params, &issuer, &format!("client {cn:?}"))?;

    // webpki matches a certificate's issuer to its CA's subject byte for byte: check the
    // rebuilt name did not re-encode anything.
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(issued.cert_pem.as_bytes())
        .map(|c: rustls::pki_types::CertificateDer<'static>| c)
        .map_err(|e| CertsError::InvalidCa(format!("re-reading the issued certificate: {e}")))?;
    let (_, leaf) = X509Certificate::from_der(&der)
        .map_err(|e| CertsError::InvalidCa(format!("re-reading the issued certificate: {e}")))?;
    if leaf.issuer().as_raw() != ca.subject().as_raw() {
        return Err(CertsError::InvalidCa(format!(
            "its subject ({}) cannot be reproduced exactly",
            ca.subject()
        )));
    }
    Ok(issued)
}

/// An rcgen issuer for an existing CA certificate. (rcgen's own `Issuer::from_ca_cert_pem`
/// needs its `x509-parser` feature, which this crate does not enable.)
fn issuer_from(
    ca: &X509Certificate<'_>,
    key: KeyPair,
) -> Result<Issuer<'static, KeyPair>, CertsError> {
    use x509_parser::der_parser::asn1_rs::Tag;

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    for rdn in ca.subject().iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err(CertsError::InvalidCa(
                "multi-valued names in its subject are not supported".into(),
            ));
        };
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or_else(|| CertsError::InvalidCa("an attribute type is too large".into()))?
            .collect();
        let text = attr.as_str().map_err(|_| {
            CertsError::InvalidCa(format!(
                "subject attribute {} is not a supported string type",
                attr.attr_type()
            ))
        })?;
        let value = match attr.attr_value().tag() {
            Tag::Utf8String => DnValue::Utf8String(text.to_owned()),
            Tag::PrintableString => DnValue::PrintableString(text.try_into().map_err(|_| {
                CertsError::InvalidCa(format!("subject attribute {text:?} is not printable"))
            })?),
            Tag::Ia5String => DnValue::Ia5String(text.try_into().map_err(|_| {
                CertsError::InvalidCa(format!("subject attribute {text:?} is not IA5"))
            })?),
            other => {
                return Err(CertsError::InvalidCa(format!(
                    "subject attribute {} has an unsupported string type ({other})",
                    attr.attr_type()
                )));
            }
        };
        dn.push(DnType::from_oid(&oid), value);
    }
    params.distinguished_name = dn;
    // The leaf's authority key identifier must be the CA's subject key identifier.
    for ext in ca.extensions() {
        if let ParsedExtension::SubjectKeyIdentifier(ski) = ext.parsed_extension() {
            params.key_identifier_method = KeyIdMethod::PreSpecified(ski.0.to_vec());
        }
    }
    Ok(Issuer::new(params, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stems() {
        assert_eq!(file_stem("grafana").unwrap(), "grafana");
        assert_eq!(file_stem("ops team ü").unwrap(), "ops_team__");
        assert_eq!(file_stem(".hidden").unwrap(), "_hidden");
        assert_eq!(file_stem("a.b-c_d@e+f").unwrap(), "a.b-c_d@e+f");
        for bad in ["", "a/b", "ca", "server", " x", "x\n"] {
            assert!(file_stem(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shell_words() {
        assert_eq!(shell_word("/tmp/x.crt"), "/tmp/x.crt");
        assert_eq!(shell_word("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }

    #[test]
    fn server_names() {
        let ok =
            |v: &[&str]| check_server_names(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert!(ok(&["trading-01.example", "10.0.0.5", "::1", "localhost"]).is_ok());
        assert!(matches!(ok(&[]), Err(CertsError::NoServerName)));
        for bad in [&["a b"][..], &[""], &["x", "x"], &["bad_name!"]] {
            assert!(ok(bad).is_err(), "{bad:?}");
        }
    }
}
