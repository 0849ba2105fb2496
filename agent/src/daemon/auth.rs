//! Who is calling and what they may do: the one authorization layer in front of every gRPC
//! service the daemon serves (docs/API.md, "Listeners and roles").
//!
//! `AuthLayer` is a tower layer around tonic's routes (`Server::builder().layer(..)`), not a
//! tonic interceptor: an interceptor does not see the method path in tonic 0.14. For every
//! request it
//!
//! 1. identifies the caller from the connection info tonic puts into the request extensions:
//!    `UdsConnectInfo` (SO_PEERCRED) on the Unix socket, `TlsConnectInfo<TcpConnectInfo>` (the
//!    client certificate chain rustls verified during the handshake) on the TLS listener. A
//!    connection with neither (plain TCP by mistake) is refused: the layer fails closed;
//! 2. maps the caller to a role: a Unix peer is an operator when it is uid 0 or its user's
//!    groups (getgrouplist, supplementary ones included) contain the admin group, and is refused
//!    otherwise; a certificate maps by its exact subject common name through `RoleMap`, and a
//!    name in neither list is refused;
//! 3. looks up the role the method needs (`required_role`) and refuses a caller whose role is
//!    lower.
//!
//! Refusals answer at once with a gRPC status (HTTP 200, `grpc-status` and `grpc-message`
//! headers), without reaching a handler: PERMISSION_DENIED for an unknown caller or a role too
//! low, UNIMPLEMENTED for a method path no table lists. A known caller calling a method this
//! daemon does not know gets the same code tonic's router would answer (docs/API.md: an RPC an
//! older agent does not have is UNIMPLEMENTED), but the request is never passed on: a service
//! added to the routes without a role here is unreachable, not open. Every refusal is logged
//! (warn) with the caller and the path.
//!
//! On success the layer inserts the caller's `Identity` and `Role` into the request extensions,
//! so handlers can put the caller into their audit records
//! (`request.extensions().get::<Identity>()`).
//!
//! The role map is read per request from an `ArcSwap`, so the daemon swaps it on SIGHUP without
//! touching open connections. The user database (getpwuid, getgrouplist) is also read per
//! request, so removing someone from the admin group takes effect on their next call; the
//! lookups run on the blocking pool, as NSS may be slow (sssd, LDAP).

use std::ffi::CString;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use nix::unistd::{Gid, Group, Uid, User, getgrouplist};
use rustls::pki_types::CertificateDer;
use tokio::net::unix::UCred;
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo, UdsConnectInfo};
use tower::{Layer, Service};

/// Roles are the settings' (`[roles]`): one type for the file and the layer.
pub use crate::settings::Role;

/// Who called, as audit records name them: `uid 1000 (alice)`, `cert CN=collector.example`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A local process on the Unix socket, from SO_PEERCRED (at connect time). `user` is the
    /// uid's name in the user database, when it has one.
    Unix {
        uid: u32,
        gid: u32,
        pid: Option<i32>,
        user: Option<String>,
    },
    /// A TLS client, by the subject common name of its (verified) certificate.
    Cert { cn: String },
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Unix {
                uid,
                user: Some(user),
                ..
            } => write!(f, "uid {uid} ({user})"),
            Identity::Unix {
                uid, user: None, ..
            } => write!(f, "uid {uid}"),
            Identity::Cert { cn } => write!(f, "cert CN={cn}"),
        }
    }
}

/// Every `nodeagent.v1.NodeAgent` RPC and the role it needs (docs/API.md, "Listeners and
/// roles"). A unit test checks this table against the API's descriptor set both ways, so an RPC
/// added to agent.proto fails the tests until it is given a role here.
pub const NODE_AGENT_METHODS: &[(&str, Role)] = &[
    ("GetStatus", Role::Observer),
    ("Verify", Role::Observer),
    ("WatchDrift", Role::Observer),
    ("ListUnits", Role::Observer),
    ("GetHealth", Role::Observer),
    ("Plan", Role::Observer),
    ("Apply", Role::Operator),
    ("Rollback", Role::Operator),
    ("ControlUnit", Role::Operator),
    ("PlatformStop", Role::Operator),
    ("PlatformStart", Role::Operator),
    ("EnforcePause", Role::Operator),
    ("EnforceResume", Role::Operator),
];

/// Services every authenticated caller may use, whatever the method: they only describe the
/// server (grpc.health.v1, server reflection in both versions grpcurl and others speak).
pub const OBSERVER_SERVICES: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// The role a gRPC method path (`/package.Service/Method`) needs, or None for a path no table
/// lists: the layer answers those with UNIMPLEMENTED and never passes them on.
pub fn required_role(path: &str) -> Option<Role> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    if method.is_empty() || method.contains('/') {
        return None;
    }
    if service == node_agent_proto::SERVICE_NAME {
        NODE_AGENT_METHODS
            .iter()
            .find(|(name, _)| *name == method)
            .map(|(_, role)| *role)
    } else if OBSERVER_SERVICES.contains(&service) {
        Some(Role::Observer)
    } else {
        None
    }
}

/// The daemon's role mapping, filled from settings (`[roles]`, `listen.socket_group`) and
/// swapped whole on SIGHUP (`SharedRoleMap`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleMap {
    /// Certificate subject common names with the observer role (exact match, case included).
    pub observers: Vec<String>,
    /// Certificate subject common names with the operator role.
    pub operators: Vec<String>,
    /// The group whose members (primary or supplementary, per the user database) are operators
    /// on the Unix socket.
    pub admin_group: String,
}

impl RoleMap {
    /// The role of a certificate's subject common name; operators win if a name is in both
    /// lists (settings refuse that anyway).
    pub fn cert_role(&self, cn: &str) -> Option<Role> {
        if self.operators.iter().any(|n| n == cn) {
            Some(Role::Operator)
        } else if self.observers.iter().any(|n| n == cn) {
            Some(Role::Observer)
        } else {
            None
        }
    }
}

/// The role map as the layer reads it: replace it with `store` on SIGHUP.
pub type SharedRoleMap = Arc<ArcSwap<RoleMap>>;

/// The subject common name of a DER certificate. Exactly one CN attribute, as a string, is
/// required: a subject with none or several is ambiguous and gets no role.
pub fn common_name(der: &[u8]) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("cannot parse the client certificate: {e}"))?;
    let mut names = cert.subject().iter_common_name();
    let first = names
        .next()
        .ok_or("the client certificate's subject has no common name")?;
    if names.next().is_some() {
        return Err("the client certificate's subject has more than one common name".into());
    }
    first
        .as_str()
        .map(str::to_owned)
        .map_err(|e| format!("the client certificate's common name is not a string: {e}"))
}

/// What the connection says about the caller, taken from the request extensions before any
/// await (the request body need not be Sync).
#[derive(Debug, Clone)]
enum Peer {
    Unix(UCred),
    Cert {
        certs: Arc<Vec<CertificateDer<'static>>>,
        remote: Option<std::net::SocketAddr>,
    },
    Anonymous,
}

impl Peer {
    fn of(extensions: &http::Extensions) -> Peer {
        if let Some(info) = extensions.get::<UdsConnectInfo>() {
            return info.peer_cred.map_or(Peer::Anonymous, Peer::Unix);
        }
        if let Some(info) = extensions.get::<TlsConnectInfo<TcpConnectInfo>>() {
            return match info.peer_certs() {
                Some(certs) if !certs.is_empty() => Peer::Cert {
                    certs,
                    remote: info.get_ref().remote_addr(),
                },
                _ => Peer::Anonymous,
            };
        }
        Peer::Anonymous
    }

    /// For log lines about a caller that was refused before it had an identity.
    fn describe(&self) -> String {
        match self {
            Peer::Unix(cred) => format!("uid {} on the Unix socket", cred.uid()),
            Peer::Cert {
                remote: Some(addr), ..
            } => format!("TLS client {addr}"),
            Peer::Cert { remote: None, .. } => "TLS client".into(),
            Peer::Anonymous => "a connection without credentials".into(),
        }
    }
}

fn denied(message: String) -> Status {
    Status::permission_denied(message)
}

/// Resolves a certificate peer: the leaf's exact subject CN through the role map.
fn cert_caller(
    certs: &[CertificateDer<'static>],
    roles: &RoleMap,
) -> Result<(Identity, Role), Status> {
    let leaf = certs
        .first()
        .ok_or_else(|| denied("no client certificate".into()))?;
    let cn = common_name(leaf).map_err(denied)?;
    match roles.cert_role(&cn) {
        Some(role) => Ok((Identity::Cert { cn }, role)),
        None => Err(denied(format!(
            "certificate CN={cn} has no role: it is in neither roles.observers nor \
             roles.operators"
        ))),
    }
}

/// Whether `user` belongs to `group` per the user database: its primary group (passwd) or a
/// supplementary one (getgrouplist, which reads /etc/group and whatever NSS serves). A group
/// that does not exist has no members.
fn in_group(user: &User, group: &str) -> Result<bool, String> {
    let Some(group) =
        Group::from_name(group).map_err(|e| format!("cannot look up group {group}: {e}"))?
    else {
        return Ok(false);
    };
    if user.gid == group.gid {
        return Ok(true);
    }
    let name = CString::new(user.name.as_str())
        .map_err(|_| format!("user name {:?} contains a NUL byte", user.name))?;
    let groups: Vec<Gid> = getgrouplist(&name, user.gid)
        .map_err(|e| format!("cannot list the groups of {}: {e}", user.name))?;
    Ok(groups.contains(&group.gid))
}

/// Resolves a Unix peer (blocking: reads the user database). uid 0 and members of the admin
/// group are operators; anyone else is refused.
fn unix_caller(cred: UCred, admin_group: &str) -> Result<(Identity, Role), Status> {
    let uid = cred.uid();
    let user = User::from_uid(Uid::from_raw(uid)).ok().flatten();
    let identity = Identity::Unix {
        uid,
        gid: cred.gid(),
        pid: cred.pid(),
        user: user.as_ref().map(|u| u.name.clone()),
    };
    if uid == 0 {
        return Ok((identity, Role::Operator));
    }
    let member = match &user {
        // No passwd entry: no database groups either. The process's own groups (which the
        // socket's mode already checked) are not trusted for the role.
        None => Ok(false),
        Some(user) => in_group(user, admin_group),
    };
    match member {
        Ok(true) => Ok((identity, Role::Operator)),
        Ok(false) => Err(denied(format!(
            "{identity} is not root and not in group {admin_group}"
        ))),
        Err(e) => Err(denied(format!(
            "{identity} refused: cannot check membership of group {admin_group}: {e}"
        ))),
    }
}

/// The whole decision for one request: caller, role, and whether the role covers the path.
async fn authorize(path: &str, peer: Peer, roles: &RoleMap) -> Result<(Identity, Role), Status> {
    let (identity, role) = match &peer {
        Peer::Unix(cred) => {
            let cred = *cred;
            let group = roles.admin_group.clone();
            tokio::task::spawn_blocking(move || unix_caller(cred, &group))
                .await
                .unwrap_or_else(|e| {
                    Err(Status::internal(format!(
                        "failed to look up the Unix peer: {e}"
                    )))
                })?
        }
        Peer::Cert { certs, .. } => cert_caller(certs, roles)?,
        Peer::Anonymous => {
            return Err(denied(
                "the connection has neither peer credentials nor a client certificate".into(),
            ));
        }
    };
    match required_role(path) {
        None => Err(Status::unimplemented(format!("unknown method {path}"))),
        Some(required) if role.allows(required) => Ok((identity, role)),
        Some(required) => Err(denied(format!(
            "{path} needs the {required} role; {identity} has {role}"
        ))),
    }
}

/// The authorization layer: `Server::builder().layer(AuthLayer::new(roles))`.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    roles: SharedRoleMap,
}

impl AuthLayer {
    pub fn new(roles: SharedRoleMap) -> AuthLayer {
        AuthLayer { roles }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            roles: self.roles.clone(),
        }
    }
}

/// The service `AuthLayer` wraps around the routes.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    roles: SharedRoleMap,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for AuthService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        // The service that was polled ready is the one that gets the call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let roles = self.roles.load_full();
        let peer = Peer::of(request.extensions());
        let path = request.uri().path().to_owned();
        Box::pin(async move {
            let who = peer.describe();
            match authorize(&path, peer, &roles).await {
                Ok((identity, role)) => {
                    request.extensions_mut().insert(identity);
                    request.extensions_mut().insert(role);
                    inner.call(request).await
                }
                Err(status) => {
                    log::warn!("refused {path} from {who}: {}", status.message());
                    Ok(status.into_http())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message;
    use prost_types::FileDescriptorSet;

    use super::*;

    /// Every method path of every service in an encoded descriptor set.
    fn method_paths(encoded: &[u8]) -> Vec<(String, String)> {
        let set = FileDescriptorSet::decode(encoded).expect("descriptor set decodes");
        let mut paths = Vec::new();
        for file in &set.file {
            for service in &file.service {
                let full = format!("{}.{}", file.package(), service.name());
                for method in &service.method {
                    paths.push((full.clone(), format!("/{full}/{}", method.name())));
                }
            }
        }
        paths
    }

    #[test]
    fn every_node_agent_method_has_a_role_and_every_role_entry_a_method() {
        let paths: Vec<String> = method_paths(node_agent_proto::FILE_DESCRIPTOR_SET)
            .into_iter()
            .filter(|(service, _)| service == node_agent_proto::SERVICE_NAME)
            .map(|(_, path)| path)
            .collect();
        assert!(paths.len() >= 13, "NodeAgent methods found: {paths:?}");
        for path in &paths {
            assert!(
                required_role(path).is_some(),
                "{path} has no role in NODE_AGENT_METHODS"
            );
        }
        let in_descriptor: BTreeSet<&str> = paths
            .iter()
            .map(|p| p.rsplit('/').next().unwrap())
            .collect();
        for (name, _) in NODE_AGENT_METHODS {
            assert!(
                in_descriptor.contains(name),
                "NODE_AGENT_METHODS lists {name}, which agent.proto does not have"
            );
        }
    }

    #[test]
    fn roles_follow_the_api_table() {
        let observer = [
            "GetStatus",
            "Verify",
            "WatchDrift",
            "Plan",
            "ListUnits",
            "GetHealth",
        ];
        let operator = [
            "Apply",
            "Rollback",
            "ControlUnit",
            "PlatformStop",
            "PlatformStart",
            "EnforcePause",
            "EnforceResume",
        ];
        for m in observer {
            assert_eq!(
                required_role(&format!("/nodeagent.v1.NodeAgent/{m}")),
                Some(Role::Observer),
                "{m}"
            );
        }
        for m in operator {
            assert_eq!(
                required_role(&format!("/nodeagent.v1.NodeAgent/{m}")),
                Some(Role::Operator),
                "{m}"
            );
        }
        assert_eq!(NODE_AGENT_METHODS.len(), observer.len() + operator.len());
    }

    #[test]
    fn health_and_reflection_methods_are_observer() {
        let sets = [
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        let mut seen = 0;
        for set in sets {
            for (_, path) in method_paths(set) {
                assert_eq!(required_role(&path), Some(Role::Observer), "{path}");
                seen += 1;
            }
        }
        assert!(seen >= 4, "health Check/Watch and both reflection streams");
    }

    #[test]
    fn unknown_and_malformed_paths_have_no_role() {
        for path in [
            "",
            "/",
            "//",
            "/nodeagent.v1.NodeAgent/",
            "/nodeagent.v1.NodeAgent/Nope",
            "/nodeagent.v1.NodeAgent/Apply/",
            "/nodeagent.v1.NodeAgent/Apply/x",
            "nodeagent.v1.NodeAgent/Apply",
            "/nodeagent.v1.NodeAgent/apply",
            "/nodeagent.v2.NodeAgent/GetStatus",
            "/grpc.health.v1.Health",
            "/grpc.health.v1.Health/",
            "/other.Service/Check",
        ] {
            assert_eq!(required_role(path), None, "{path:?}");
        }
    }

    #[test]
    fn operator_covers_observer_but_not_the_reverse() {
        assert!(Role::Operator.allows(Role::Observer));
        assert!(Role::Operator.allows(Role::Operator));
        assert!(Role::Observer.allows(Role::Observer));
        assert!(!Role::Observer.allows(Role::Operator));
    }

    #[test]
    fn identities_display_as_audit_records_name_them() {
        let alice = Identity::Unix {
            uid: 1000,
            gid: 1000,
            pid: Some(42),
            user: Some("alice".into()),
        };
        assert_eq!(alice.to_string(), "uid 1000 (alice)");
        let nobody = Identity::Unix {
            uid: 1234,
            gid: 1234,
            pid: None,
            user: None,
        };
        assert_eq!(nobody.to_string(), "uid 1234");
        let cert = Identity::Cert {
            cn: "collector.example".into(),
        };
        assert_eq!(cert.to_string(), "cert CN=collector.example");
    }

    #[test]
    fn cert_roles_match_the_exact_common_name() {
        let roles = RoleMap {
            observers: vec!["collector.example".into()],
            operators: vec!["ops.example".into()],
            admin_group: "node-agent-admin".into(),
        };
        assert_eq!(roles.cert_role("collector.example"), Some(Role::Observer));
        assert_eq!(roles.cert_role("ops.example"), Some(Role::Operator));
        assert_eq!(roles.cert_role("Ops.example"), None);
        assert_eq!(roles.cert_role("ops.example "), None);
        assert_eq!(roles.cert_role(""), None);
    }

    fn cert_with(names: &[&str]) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (i, n) in names.iter().enumerate() {
            // rcgen keeps one value per type; a second CN needs the OID spelled out.
            let ty = if i == 0 {
                rcgen::DnType::CommonName
            } else {
                rcgen::DnType::CustomDnType(vec![2, 5, 4, 3])
            };
            params.distinguished_name.push(ty, *n);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn common_name_needs_exactly_one() {
        assert_eq!(
            common_name(&cert_with(&["ops.example"])).unwrap(),
            "ops.example"
        );
        assert!(
            common_name(&cert_with(&[]))
                .unwrap_err()
                .contains("no common name")
        );
        assert!(
            common_name(&cert_with(&["a", "b"]))
                .unwrap_err()
                .contains("more than one")
        );
        assert!(common_name(b"not a certificate").is_err());
    }

    #[test]
    fn cert_caller_refuses_unknown_names_naming_them() {
        let roles = RoleMap {
            observers: vec!["collector.example".into()],
            operators: vec![],
            admin_group: "node-agent-admin".into(),
        };
        let (identity, role) = cert_caller(&[cert_with(&["collector.example"])], &roles).unwrap();
        assert_eq!(identity.to_string(), "cert CN=collector.example");
        assert_eq!(role, Role::Observer);
        let err = cert_caller(&[cert_with(&["intruder.example"])], &roles).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message().contains("CN=intruder.example"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn root_is_in_its_primary_group_and_nobody_is_not() {
        // The user database of any Linux host: root's primary group is root (gid 0).
        let root = User::from_uid(Uid::from_raw(0)).unwrap().unwrap();
        let root_group = Group::from_gid(root.gid).unwrap().unwrap().name;
        assert!(in_group(&root, &root_group).unwrap());
        assert!(!in_group(&root, "no-such-group-for-node-agent").unwrap());
        if let Ok(Some(nobody)) = User::from_name("nobody") {
            assert!(!in_group(&nobody, &root_group).unwrap());
        }
    }

    #[tokio::test]
    async fn anonymous_connections_are_refused() {
        let roles = RoleMap::default();
        let err = authorize("/nodeagent.v1.NodeAgent/GetStatus", Peer::Anonymous, &roles)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
    }

    #[tokio::test]
    async fn known_callers_get_unimplemented_for_unknown_methods() {
        let roles = RoleMap {
            observers: vec![],
            operators: vec!["ops.example".into()],
            admin_group: "node-agent-admin".into(),
        };
        let peer = Peer::Cert {
            certs: Arc::new(vec![cert_with(&["ops.example"])]),
            remote: None,
        };
        let err = authorize("/nodeagent.v1.NodeAgent/Nope", peer.clone(), &roles)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented);
        let (identity, role) = authorize("/nodeagent.v1.NodeAgent/Apply", peer, &roles)
            .await
            .unwrap();
        assert_eq!(identity.to_string(), "cert CN=ops.example");
        assert_eq!(role, Role::Operator);
    }
}
