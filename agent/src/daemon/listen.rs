//! The daemon's listeners, as incoming-connection streams for tonic's `serve_with_incoming`:
//!
//! - the local admin socket (`UnixSocketListener`): created mode 0660 and group-owned by the
//!   admin group before any client can see it (bound under a temporary name, then renamed into
//!   place), a stale socket replaced, anything else at the path left alone;
//! - TCP with mutual TLS (`TlsListener`): our own accept loop and `tokio_rustls::TlsAcceptor`
//!   rather than tonic's built-in TLS, so the certificates can be reloaded (`TlsConfig::reload`,
//!   on SIGHUP) without dropping open connections: each new connection is handshaken with the
//!   configuration current when it was accepted, while established ones keep the session they
//!   have. Handshakes run in their own tasks with a deadline, so a client that connects and
//!   sends nothing cannot hold up the accept loop.
//!
//! Both take a `ConnectionLimit`: a connection beyond it is closed at once (before any TLS
//! work). The permit lives as long as the connection (`Connection` holds it), so the count is
//! of open connections, handshakes in progress included.
//!
//! tonic 0.14 (with `tls-ring`, which enables its `tls-connect-info`) implements `Connected` for
//! `tokio_rustls::server::TlsStream<TcpStream>` with `TlsConnectInfo<TcpConnectInfo>` as connect
//! info: the verified peer certificate chain plus the TCP addresses. `Connection` passes its
//! inner stream's connect info through unchanged, so the authorization layer (`daemon::auth`)
//! reads `TlsConnectInfo<TcpConnectInfo>` on TLS and `UdsConnectInfo` (SO_PEERCRED) on the Unix
//! socket, and `tonic::Request::peer_certs()` works in handlers.

use std::convert::Infallible;
use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use nix::unistd::{Gid, Group, chown};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, VerifierBuilderError, WebPkiClientVerifier};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// How long a TLS client has to complete its handshake after the TCP connect.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The pause after an accept error that is not about one connection (EMFILE, ENOBUFS…), so the
/// loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Connections accepted (and handshaken) but not yet taken by the server.
const QUEUE: usize = 16;

/// The socket file's mode: owner (root) and the admin group may connect.
const SOCKET_MODE: u32 = 0o660;

/// The mode of the socket's directory, when the listener creates it.
const SOCKET_DIR_MODE: u32 = 0o755;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "group {group:?} does not exist: create it (groupadd --system {group}) or set \
         listen.socket_group"
    )]
    NoSuchGroup { group: String },
    #[error("failed to look up group {group:?}: {source}")]
    GroupLookup {
        group: String,
        #[source]
        source: nix::Error,
    },
    #[error("{} exists and is not a socket: refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("another process is listening on {}: is node-agentd already running?", path.display())]
    InUse { path: PathBuf },
    #[error("failed to {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to listen on {addr}: {source}")]
    BindTcp {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("failed to read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to load {what} from {}: {reason}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("failed to use the client CA {} to verify clients: {source}", path.display())]
    ClientCa {
        path: PathBuf,
        #[source]
        source: VerifierBuilderError,
    },
    #[error("{what}: {source}")]
    Tls {
        what: String,
        #[source]
        source: rustls::Error,
    },
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ListenError + 'a {
    move |source| ListenError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// Connection limit

/// A maximum number of open connections (`rpc.max_connections`). Clones share the count: give
/// both listeners clones of one limit to cap them together, or separate limits so that remote
/// clients can never use up the local admin's connections.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
    max: usize,
}

impl ConnectionLimit {
    pub fn new(max: usize) -> ConnectionLimit {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        ConnectionLimit {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections open now (for metrics).
    pub fn in_use(&self) -> usize {
        self.max - self.permits.available_permits()
    }

    pub(crate) fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }
}

/// An accepted connection holding its place under the `ConnectionLimit` until it is dropped.
/// Its connect info is the inner stream's: `UdsConnectInfo`, or `TlsConnectInfo<TcpConnectInfo>`
/// for TLS.
#[derive(Debug)]
pub struct Connection<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
}

impl<IO> Connection<IO> {
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: Connected> Connected for Connection<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Connection<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Connection<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The stream of accepted connections a listener hands to tonic's `serve_with_incoming`.
/// Accept and handshake errors are logged and dropped inside, so the stream never yields an
/// error. Dropping it (server shutdown) stops the accept loop and closes the listening socket.
#[derive(Debug)]
pub struct Incoming<IO> {
    inner: ReceiverStream<Result<Connection<IO>, Infallible>>,
}

impl<IO> Stream for Incoming<IO> {
    type Item = Result<Connection<IO>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

type Sender<IO> = mpsc::Sender<Result<Connection<IO>, Infallible>>;

// ---------------------------------------------------------------------------------------------
// Unix socket

/// The local admin socket, bound and with its mode and group set.
#[derive(Debug)]
pub struct UnixSocketListener {
    listener: UnixListener,
    path: PathBuf,
}

impl UnixSocketListener {
    /// Binds the socket at `path` (call within the tokio runtime): creates its directory (mode
    /// 0755) if missing, binds under a temporary name in that directory, sets mode 0660 and the
    /// group `group` (the owner stays the daemon's uid: root in production), then renames it
    /// onto `path`, so no client ever sees a socket with other permissions. Whatever is at
    /// `path` must be a socket nobody listens on (a stale one from a previous run): any other
    /// file, or a live socket, is an error and left alone. The group must exist.
    pub fn bind(path: &Path, group: &str) -> Result<UnixSocketListener, ListenError> {
        let gid = group_gid(group)?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .ok_or_else(|| ListenError::Io {
                what: "find the directory of",
                path: path.to_owned(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not an absolute path"),
            })?;
        let name = path.file_name().ok_or_else(|| ListenError::Io {
            what: "bind",
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "no file name"),
        })?;
        if !dir.exists() {
            DirBuilder::new()
                .recursive(true)
                .mode(SOCKET_DIR_MODE)
                .create(dir)
                .map_err(io_error("create the socket directory", dir))?;
            // The mode given to mkdir is masked by the umask.
            fs::set_permissions(dir, Permissions::from_mode(SOCKET_DIR_MODE))
                .map_err(io_error("set the mode of", dir))?;
        }
        check_stale(path)?;

        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = dir.join(tmp_name);
        remove_socket_if_present(&tmp)?;
        let listener =
            std::os::unix::net::UnixListener::bind(&tmp).map_err(io_error("bind", &tmp))?;
        let placed = (|| {
            fs::set_permissions(&tmp, Permissions::from_mode(SOCKET_MODE))
                .map_err(io_error("set the mode of", &tmp))?;
            chown(&tmp, None, Some(gid))
                .map_err(|e| io_error("change the group of", &tmp)(e.into()))?;
            fs::rename(&tmp, path).map_err(io_error("move the socket into place at", path))?;
            listener
                .set_nonblocking(true)
                .map_err(io_error("set non-blocking", path))?;
            UnixListener::from_std(listener).map_err(io_error("register", path))
        })();
        match placed {
            Ok(listener) => Ok(UnixSocketListener {
                listener,
                path: path.to_owned(),
            }),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The accepted connections, for `serve_with_incoming`. Spawns the accept loop (call within
    /// the tokio runtime).
    pub fn incoming(self, limit: ConnectionLimit) -> Incoming<UnixStream> {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(accept_unix(self.listener, self.path, limit, tx));
        Incoming {
            inner: ReceiverStream::new(rx),
        }
    }
}

fn group_gid(group: &str) -> Result<Gid, ListenError> {
    match Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(ListenError::NoSuchGroup {
            group: group.to_owned(),
        }),
        Err(source) => Err(ListenError::GroupLookup {
            group: group.to_owned(),
            source,
        }),
    }
}

/// Refuses to replace anything at `path` but a stale socket.
fn check_stale(path: &Path) -> Result<(), ListenError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("inspect", path)(e)),
        Ok(meta) if !meta.file_type().is_socket() => Err(ListenError::NotASocket {
            path: path.to_owned(),
        }),
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => Err(ListenError::InUse {
                path: path.to_owned(),
            }),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
            Err(e) => Err(io_error("check whether anyone listens on", path)(e)),
        },
    }
}

fn remove_socket_if_present(path: &Path) -> Result<(), ListenError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("inspect", path)(e)),
        Ok(meta) if meta.file_type().is_socket() => {
            fs::remove_file(path).map_err(io_error("remove the stale socket", path))
        }
        Ok(_) => Err(ListenError::NotASocket {
            path: path.to_owned(),
        }),
    }
}

async fn accept_unix(
    listener: UnixListener,
    path: PathBuf,
    limit: ConnectionLimit,
    tx: Sender<UnixStream>,
) {
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("failed to accept a connection on {}: {e}", path.display());
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(permit) = limit.try_acquire() else {
            let who = stream
                .peer_cred()
                .map_or_else(|_| "a peer".to_owned(), |c| format!("uid {}", c.uid()));
            log::warn!(
                "closed a connection from {who} on {}: {} connections open, the limit",
                path.display(),
                limit.max()
            );
            continue;
        };
        let connection = Connection {
            io: stream,
            _permit: permit,
        };
        if tx.send(Ok(connection)).await.is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TLS

/// Reads the server certificate chain, its key and the client CA (PEM files) into a rustls
/// server configuration: ring only, TLS 1.3 and 1.2, ALPN `h2`, and a client certificate
/// required and verified against the client CA (chain, validity period, client-auth usage).
/// Errors name the file.
pub fn load_tls(cert: &Path, key: &Path, client_ca: &Path) -> Result<ServerConfig, ListenError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certs("the server certificate", cert)?;
    let key_der = read_key(key)?;
    let mut roots = RootCertStore::empty();
    for ca in read_certs("the client CA", client_ca)? {
        roots.add(ca).map_err(|source| ListenError::Tls {
            what: format!(
                "failed to add a certificate of {} to the client CA roots",
                client_ca.display()
            ),
            source,
        })?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|source| ListenError::ClientCa {
            path: client_ca.to_owned(),
            source,
        })?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| ListenError::Tls {
            what: "failed to configure the TLS versions".into(),
            source,
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der)
        .map_err(|source| ListenError::Tls {
            what: format!(
                "failed to use the server certificate {} with the key {}",
                cert.display(),
                key.display()
            ),
            source,
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, ListenError> {
    fs::read(path).map_err(|source| ListenError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, ListenError> {
    let pem = read_file(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ListenError::Pem {
            what,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(ListenError::Pem {
            what,
            path: path.to_owned(),
            reason: "no certificate (PEM \"CERTIFICATE\") in it".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, ListenError> {
    const WHAT: &str = "the server key";
    let pem = read_file(WHAT, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| ListenError::Pem {
        what: WHAT,
        path: path.to_owned(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no private key (PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\") \
                 in it"
                    .into()
            }
            e => e.to_string(),
        },
    })
}

/// The TLS listener's current configuration; clones share it. `reload` swaps it for new
/// connections; established ones are not touched.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    current: Arc<ArcSwap<ServerConfig>>,
}

impl TlsConfig {
    pub fn new(config: ServerConfig) -> TlsConfig {
        TlsConfig {
            current: Arc::new(ArcSwap::from_pointee(config)),
        }
    }

    /// `load_tls` then `new`.
    pub fn load(cert: &Path, key: &Path, client_ca: &Path) -> Result<TlsConfig, ListenError> {
        load_tls(cert, key, client_ca).map(TlsConfig::new)
    }

    /// Reads the files again and, if they make a valid configuration, uses it for every
    /// connection accepted from now on. On error the configuration in use stays.
    pub fn reload(&self, cert: &Path, key: &Path, client_ca: &Path) -> Result<(), ListenError> {
        let config = load_tls(cert, key, client_ca)?;
        self.current.store(Arc::new(config));
        Ok(())
    }

    /// Replaces the configuration (for a caller that built it itself).
    pub fn set(&self, config: ServerConfig) {
        self.current.store(Arc::new(config));
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }
}

/// The TCP listener for mutual TLS.
#[derive(Debug)]
pub struct TlsListener {
    listener: TcpListener,
    local_addr: SocketAddr,
    config: TlsConfig,
    handshake_timeout: Duration,
}

impl TlsListener {
    /// Binds `addr` (port 0: any free port, see `local_addr`). Handshakes use `config` as it is
    /// when each connection arrives.
    pub async fn bind(addr: SocketAddr, config: TlsConfig) -> Result<TlsListener, ListenError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ListenError::BindTcp { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ListenError::BindTcp { addr, source })?;
        Ok(TlsListener {
            listener,
            local_addr,
            config,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        })
    }

    /// How long a client has for its TLS handshake (default `HANDSHAKE_TIMEOUT`).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> TlsListener {
        self.handshake_timeout = timeout;
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The configuration handle, for `reload`.
    pub fn config(&self) -> &TlsConfig {
        &self.config
    }

    /// The established TLS connections, for `serve_with_incoming`. Spawns the accept loop (call
    /// within the tokio runtime).
    pub fn incoming(self, limit: ConnectionLimit) -> Incoming<TlsStream<TcpStream>> {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(accept_tls(self, limit, tx));
        Incoming {
            inner: ReceiverStream::new(rx),
        }
    }
}

async fn accept_tls(
    listener: TlsListener,
    limit: ConnectionLimit,
    tx: Sender<TlsStream<TcpStream>>,
) {
    let timeout = listener.handshake_timeout;
    loop {
        let accepted = tokio::select! {
            _ = tx.closed() => return,
            accepted = listener.listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                log::warn!(
                    "failed to accept a connection on {}: {e}",
                    listener.local_addr
                );
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(permit) = limit.try_acquire() else {
            log::warn!(
                "closed the connection from {peer}: {} connections open, the limit",
                limit.max()
            );
            continue;
        };
        // gRPC messages are small and latency matters more than packet count.
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(listener.config.current());
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let connection = Connection {
                        io: tls,
                        _permit: permit,
                    };
                    // Err: the server is shutting down; the connection closes when dropped.
                    let _ = tx.send(Ok(connection)).await;
                }
                Ok(Err(e)) => log::warn!("TLS handshake with {peer} failed: {e}"),
                Err(_) => log::warn!(
                    "TLS handshake with {peer} did not complete within {} ms",
                    timeout.as_millis()
                ),
            }
        });
    }
}
