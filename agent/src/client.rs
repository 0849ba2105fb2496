//! Talking to node-agentd: over its Unix socket (local admins; the daemon checks the peer's
//! uid and groups) or over mutual TLS (`--remote`, with a client certificate).

use std::path::{Path, PathBuf};
use std::time::Duration;

use node_agent_proto::v1::node_agent_client::NodeAgentClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How long connecting may take before the daemon counts as not answering.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the daemon is.
#[derive(Debug, Clone)]
pub enum Daemon {
    /// The local socket (`listen.socket` in the settings).
    Socket(PathBuf),
    /// A remote agent over mutual TLS.
    Remote {
        /// HOST:PORT.
        addr: String,
        /// The name its certificate must carry (default: HOST).
        server_name: String,
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
    },
}

impl std::fmt::Display for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Daemon::Socket(p) => write!(f, "{}", p.display()),
            Daemon::Remote { addr, .. } => write!(f, "{addr}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens there: no socket, or a stale one. Callers may fall back to local work.
    #[error("node-agentd is not running (nothing answers on {at}: {detail})")]
    NotRunning { at: String, detail: String },
    #[error("cannot connect to node-agentd at {at}: {detail}")]
    Connect { at: String, detail: String },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid --remote {addr:?}: {detail}")]
    Address { addr: String, detail: String },
}

fn read(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The host part of HOST:PORT (an IPv6 address in brackets loses them).
pub fn host_of(addr: &str) -> Result<String, ClientError> {
    let bad = |detail: &str| ClientError::Address {
        addr: addr.to_owned(),
        detail: detail.to_owned(),
    };
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| bad("expected HOST:PORT"))?;
    port.parse::<u16>()
        .map_err(|_| bad("the port must be a number from 1 to 65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("expected HOST:PORT"));
    }
    Ok(host.to_owned())
}

/// Connects (the channel is ready for calls when this returns).
pub async fn connect(daemon: &Daemon) -> Result<NodeAgentClient<Channel>, ClientError> {
    let at = daemon.to_string();
    let connect_error = |e: tonic::transport::Error| {
        let detail = error_chain(&e);
        ClientError::Connect {
            at: at.clone(),
            detail,
        }
    };
    let endpoint = match daemon {
        Daemon::Socket(path) => {
            if !path.exists() {
                return Err(ClientError::NotRunning {
                    at,
                    detail: "no such socket".into(),
                });
            }
            Endpoint::from_shared(format!("unix://{}", path.display())).map_err(connect_error)?
        }
        Daemon::Remote {
            addr,
            server_name,
            cert,
            key,
            ca,
        } => {
            host_of(addr)?;
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read(ca)?))
                .identity(Identity::from_pem(read(cert)?, read(key)?))
                .domain_name(server_name.clone());
            Endpoint::from_shared(format!("https://{addr}"))
                .map_err(connect_error)?
                .tls_config(tls)
                .map_err(connect_error)?
        }
    };
    let channel = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(Duration::from_secs(600))
        .connect()
        .await
        .map_err(|e| {
            let detail = error_chain(&e);
            let refused = detail.contains("Connection refused") || detail.contains("os error 111");
            match daemon {
                Daemon::Socket(_) if refused => ClientError::NotRunning {
                    at: at.clone(),
                    detail: "a stale socket: connection refused".into(),
                },
                _ => ClientError::Connect {
                    at: at.clone(),
                    detail,
                },
            }
        })?;
    Ok(NodeAgentClient::new(channel).max_decoding_message_size(64 << 20))
}

/// The error and its sources, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_addresses() {
        assert_eq!(host_of("agent1.example:9443").unwrap(), "agent1.example");
        assert_eq!(host_of("[::1]:9443").unwrap(), "::1");
        assert!(host_of("agent1.example").is_err());
        assert!(host_of(":9443").is_err());
        assert!(host_of("agent1:99999").is_err());
    }
}
