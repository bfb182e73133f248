//! Connections ward reuses: to the app (HTTP/1.1 keep-alive, or h2c for gRPC), and to a peer
//! sidecar (one multiplexed HTTP/2 connection over mTLS, re-made when it closes).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;
use ward_certs::{CredentialStore, SvidInfo};
use ward_filters::Pattern;

use crate::forward::peer_svid;
use crate::http::Counted;
use crate::tls::handshake_failure;

/// Request bodies ward forwards: the caller's, streamed, counting bytes.
pub type InBody = Counted<Incoming>;

/// Connects every request to one fixed address, whatever its URI says: the app behind an
/// inbound listener.
#[derive(Clone, Debug)]
pub struct FixedAddr {
    pub addr: SocketAddr,
    pub timeout: Duration,
}

impl tower_service::Service<Uri> for FixedAddr {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (addr, timeout) = (self.addr, self.timeout);
        Box::pin(async move {
            let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connect to {addr} timed out"),
                    )
                })??;
            let _ = tcp.set_nodelay(true);
            Ok(TokioIo::new(tcp))
        })
    }
}

/// Idle HTTP/1.1 connections kept to the app behind one inbound listener: above the 200
/// streams one peer's HTTP/2 connection may carry at once, so steady concurrency never churns
/// app connections, yet a burst from many peers does not stay pooled without bound.
const APP_MAX_IDLE: usize = 256;
/// How long an idle connection to the app is kept: after load, memory falls back within it.
const APP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Pooled clients to the app behind an inbound listener; cheap to clone (every request's
/// future holds one, so it is a pointer, not two hyper clients).
#[derive(Clone, Debug)]
pub struct AppClient(Arc<AppClients>);

#[derive(Debug)]
struct AppClients {
    http1: Client<FixedAddr, InBody>,
    h2c: Client<FixedAddr, InBody>,
}

impl AppClient {
    pub fn new(addr: SocketAddr, connect_timeout: Duration) -> Self {
        let connector = FixedAddr {
            addr,
            timeout: connect_timeout,
        };
        // A burst of concurrent requests opens as many app connections; afterwards at most
        // APP_MAX_IDLE of them are kept (each holds hyper's buffers and a task), each for
        // APP_IDLE_TIMEOUT.
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(APP_IDLE_TIMEOUT)
            .pool_max_idle_per_host(APP_MAX_IDLE)
            .pool_timer(TokioTimer::new())
            .build(connector.clone());
        let h2c = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(APP_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(connector);
        AppClient(Arc::new(AppClients { http1, h2c }))
    }

    /// Sends over HTTP/2 (h2c) when `h2`, else HTTP/1.1 keep-alive.
    pub async fn send(
        &self,
        req: Request<InBody>,
        h2: bool,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        if h2 {
            self.0.h2c.request(req).await
        } else {
            self.0.http1.request(req).await
        }
    }
}

/// Why a peer connection could not be had.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("no identity loaded")]
    NoIdentity,
    #[error("connect to {addr}: {detail}")]
    Connect { addr: SocketAddr, detail: String },
    #[error("TLS handshake with {addr} failed ({reason}): {detail}")]
    Handshake {
        addr: SocketAddr,
        reason: &'static str,
        detail: String,
    },
    #[error("the server presented {got} but this listener requires {want}")]
    ServerIdMismatch { got: String, want: String },
    #[error("{0} did not negotiate HTTP/2 (ALPN h2); is its inbound listener `protocol: http` or `auto`?")]
    NoH2(SocketAddr),
    #[error("HTTP/2 with {addr}: {detail}")]
    H2 { addr: SocketAddr, detail: String },
    #[error("{addr} failed a moment ago ({detail}); not retrying yet")]
    Recent {
        addr: SocketAddr,
        label: &'static str,
        detail: Arc<String>,
    },
}

impl PeerError {
    /// Stable label for records.
    pub fn label(&self) -> &'static str {
        match self {
            PeerError::NoIdentity => "no_identity",
            PeerError::Connect { .. } => "connect_failed",
            PeerError::Handshake { reason, .. } => reason,
            PeerError::ServerIdMismatch { .. } => "server_id_mismatch",
            PeerError::NoH2(_) => "no_h2",
            PeerError::H2 { .. } => "h2",
            PeerError::Recent { label, .. } => label,
        }
    }
}

/// One live HTTP/2 connection to a peer sidecar and who the peer proved to be.
#[derive(Clone)]
pub struct PeerConn {
    pub send: http2::SendRequest<InBody>,
    pub peer: Arc<SvidInfo>,
    /// The peer's serial, shared by every request's record.
    pub serial: Arc<str>,
    chain: crate::forward::PeerChain,
    /// The identity generation the chain was last validated under.
    generation: u64,
    born: std::time::Instant,
}

/// The multiplexed HTTP/2 connection to one peer sidecar; every request of an outbound
/// listener shares it, and a new one is made when it closes.
pub struct PeerPool {
    addr: SocketAddr,
    server_id: Pattern,
    store: Arc<CredentialStore>,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    current: Mutex<Option<PeerConn>>,
    max_lifetime: Option<Duration>,
    last_used: std::sync::Mutex<std::time::Instant>,
    /// The last failed connect: requests queued behind it fail fast instead of each waiting
    /// out its own connect timeout against a peer that is down.
    failed: std::sync::Mutex<Option<(std::time::Instant, Arc<String>, &'static str)>>,
}

/// How long a failed connect is remembered.
const FAIL_FAST: Duration = Duration::from_millis(500);

impl std::fmt::Debug for PeerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerPool")
            .field("addr", &self.addr)
            .field("server_id", &self.server_id.as_str())
            .finish_non_exhaustive()
    }
}

impl PeerPool {
    pub fn new(
        addr: SocketAddr,
        server_id: Pattern,
        store: Arc<CredentialStore>,
        connect_timeout: Duration,
        handshake_timeout: Duration,
        max_lifetime: Option<Duration>,
    ) -> Self {
        PeerPool {
            addr,
            server_id,
            store,
            connect_timeout,
            handshake_timeout,
            current: Mutex::new(None),
            max_lifetime,
            last_used: std::sync::Mutex::new(std::time::Instant::now()),
            failed: std::sync::Mutex::new(None),
        }
    }

    /// Whether a live connection may take more requests: after an identity or bundle change
    /// its server's chain must still validate, and it must be younger than
    /// `max_connection_lifetime`.
    fn still_good(&self, c: &mut PeerConn) -> bool {
        if self.max_lifetime.is_some_and(|max| c.born.elapsed() >= max) {
            return false;
        }
        let generation = self.store.generation();
        if c.generation != generation {
            if let Err(reason) = c.chain.still_valid(&self.store) {
                tracing::info!(addr = %self.addr, %reason, "dropping the pooled connection to the peer");
                return false;
            }
            c.generation = generation;
        }
        true
    }

    fn touch(&self) {
        if let Ok(mut used) = self.last_used.lock() {
            *used = std::time::Instant::now();
        }
    }

    /// How long since a request last used this pool.
    pub fn idle_for(&self) -> Duration {
        self.last_used.lock().map(|u| u.elapsed()).unwrap_or_default()
    }

    fn recent_failure(&self) -> Option<PeerError> {
        let failed = self.failed.lock().ok()?;
        let (at, detail, label) = failed.as_ref()?;
        (at.elapsed() < FAIL_FAST).then(|| PeerError::Recent {
            addr: self.addr,
            label,
            detail: detail.clone(),
        })
    }

    /// The live connection, or a new one. Concurrent callers wait for the same connect, so a
    /// burst of requests opens one connection, not one each.
    pub async fn get(&self) -> Result<PeerConn, PeerError> {
        self.touch();
        let mut current = self.current.lock().await;
        if let Some(c) = current.as_mut()
            && !c.send.is_closed()
            && self.still_good(c)
        {
            return Ok(c.clone());
        }
        // A closed, revoked or too old connection is dropped: its requests in flight finish,
        // new ones go over a new connection.
        *current = None;
        if let Some(e) = self.recent_failure() {
            return Err(e);
        }
        // Boxed: the handshake's state is large and rarely needed; inline it would be copied
        // with every request's future.
        match Box::pin(self.connect()).await {
            Ok(conn) => {
                *current = Some(conn.clone());
                Ok(conn)
            }
            Err(e) => {
                if let Ok(mut failed) = self.failed.lock() {
                    *failed = Some((std::time::Instant::now(), Arc::new(e.to_string()), e.label()));
                }
                Err(e)
            }
        }
    }

    async fn connect(&self) -> Result<PeerConn, PeerError> {
        let addr = self.addr;
        let tls = self.store.current().ok_or(PeerError::NoIdentity)?;
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                return Err(PeerError::Connect {
                    addr,
                    detail: e.to_string(),
                });
            }
            Err(_) => {
                return Err(PeerError::Connect {
                    addr,
                    detail: "timed out".into(),
                });
            }
        };
        let _ = tcp.set_nodelay(true);
        let connect =
            TlsConnector::from(tls.client_h2.clone()).connect(ServerName::IpAddress(addr.ip().into()), tcp);
        let stream = match tokio::time::timeout(self.handshake_timeout, connect).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let (reason, detail) = handshake_failure(&e);
                return Err(PeerError::Handshake { addr, reason, detail });
            }
            Err(_) => {
                return Err(PeerError::Handshake {
                    addr,
                    reason: "timeout",
                    detail: format!("no handshake within {:?}", self.handshake_timeout),
                });
            }
        };
        let generation = self.store.generation();
        let (_, conn) = stream.get_ref();
        let conn_chain: Option<Vec<rustls_pki_types::CertificateDer<'static>>> = conn
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect());
        if let Err(detail) = crate::forward::check_resumed(conn, &self.store) {
            return Err(PeerError::Handshake {
                addr,
                reason: "resumed_invalid",
                detail,
            });
        }
        let peer = peer_svid(conn.peer_certificates()).ok_or(PeerError::Handshake {
            addr,
            reason: "no_peer_id",
            detail: "server SPIFFE ID unavailable after handshake".into(),
        })?;
        if !self.server_id.matches(peer.id.as_str()) {
            return Err(PeerError::ServerIdMismatch {
                got: peer.id.to_string(),
                want: self.server_id.as_str().to_owned(),
            });
        }
        if conn.alpn_protocol() != Some(b"h2") {
            return Err(PeerError::NoH2(addr));
        }
        let (send, driver) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| PeerError::H2 {
                addr,
                detail: e.to_string(),
            })?;
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                tracing::debug!(%addr, error = %e, "peer HTTP/2 connection ended");
            }
        });
        Ok(PeerConn {
            send,
            serial: peer.serial.as_str().into(),
            peer: Arc::new(peer),
            chain: crate::forward::PeerChain::new(conn_chain.as_deref()),
            generation,
            born: std::time::Instant::now(),
        })
    }
}
