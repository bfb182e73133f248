//! The pool on the peer's side, one per destination and worker shard. What it speaks follows
//! the server's ALPN answer (ward offers `h2`, then `http/1.1`):
//! - `h2` (another ward, or any HTTP/2 server): one multiplexed HTTP/2 connection over mTLS,
//!   shared by every request, made again when it closes, is revoked or is retired;
//! - `http/1.1` (nginx, haproxy, Envoy or ghostunnel configured so): keep-alive HTTP/1.1
//!   connections over mTLS, pooled like the app-side pool ([`Http1Pool`]);
//! - nothing (a ward `tcp` inbound, any opaque mTLS server): [`Speaks::Opaque`], and the
//!   outbound passes the app's bytes through on a connection of their own.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use http::Request;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Mutex;
use ward_certs::CredentialStore;
use ward_filters::Pattern;

use crate::data::live::{Connections, Live, Scope};
use crate::data::mtls::{self, Alpn, Dial, MtlsError, PeerIdentity};
use crate::http::ResponseBody;
use crate::pools::app::{AppError, Dialer, Http1Pool, InBody, MeshDial};

/// Why a request could not be had from a peer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Mtls(#[from] MtlsError),
    #[error("HTTP/2 with {addr}: {detail}")]
    H2 { addr: SocketAddr, detail: String },
    #[error("{addr} failed a moment ago ({detail}); not retrying yet")]
    Recent {
        addr: SocketAddr,
        label: &'static str,
        detail: Arc<String>,
    },
    /// The server chose no HTTP protocol in ALPN (an opaque inbound): its connections carry
    /// the app's bytes through instead.
    #[error(
        "{0} chose no HTTP protocol in ALPN (an opaque TCP server, such as a ward inbound with `protocol: tcp`)"
    )]
    Opaque(SocketAddr),
    /// The request went out and failed there.
    #[error("{detail}")]
    Failed {
        detail: String,
        peer: Option<Arc<PeerIdentity>>,
    },
}

impl PeerError {
    /// Stable label for records.
    pub fn label(&self) -> &'static str {
        match self {
            PeerError::Mtls(e) => e.reason(),
            PeerError::H2 { .. } => "h2",
            PeerError::Recent { label, .. } => label,
            PeerError::Opaque(_) => "opaque_upstream",
            PeerError::Failed { .. } => "upstream_failed",
        }
    }

    /// Whether the server proved the wrong identity (now, or at the failure remembered): a
    /// bad gateway, where other failures leave the upstream unavailable.
    pub fn wrong_server(&self) -> bool {
        match self {
            PeerError::Mtls(e) => matches!(e, MtlsError::ServerIdMismatch { .. }),
            PeerError::Recent { label, .. } => *label == "server_id_mismatch",
            _ => false,
        }
    }

    fn from_http1(e: AppError, peer: Option<Arc<PeerIdentity>>) -> PeerError {
        match e {
            AppError::Mtls(e) => PeerError::Mtls(e),
            e => PeerError::Failed {
                detail: e.to_string(),
                peer,
            },
        }
    }
}

/// What the server at a pool's address speaks, from its last ALPN answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    /// No connection has been made yet.
    Unknown,
    H2,
    Http1,
    /// No ALPN: opaque TCP.
    Opaque,
}

impl Speaks {
    fn from_u8(v: u8) -> Speaks {
        match v {
            1 => Speaks::H2,
            2 => Speaks::Http1,
            3 => Speaks::Opaque,
            _ => Speaks::Unknown,
        }
    }

    fn as_u8(self) -> u8 {
        match self {
            Speaks::Unknown => 0,
            Speaks::H2 => 1,
            Speaks::Http1 => 2,
            Speaks::Opaque => 3,
        }
    }
}

/// One live HTTP/2 connection to a peer and who the peer proved to be.
#[derive(Clone)]
struct PeerConn {
    send: http2::SendRequest<InBody>,
    peer: Arc<PeerIdentity>,
    /// Its entry among the live connections: says when it may take no more requests.
    live: Arc<Live>,
}

/// The connections to one peer of an outbound listener's worker shard.
pub struct PeerPool {
    addr: SocketAddr,
    server_id: Pattern,
    store: Arc<CredentialStore>,
    live: Arc<Connections>,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    current: Mutex<Option<PeerConn>>,
    /// Keep-alive HTTP/1.1 connections, for a server that chose HTTP/1.1.
    http1: Arc<Http1Pool>,
    /// [`Speaks`], as learned from the last handshake.
    speaks: AtomicU8,
    max_lifetime: Option<Duration>,
    last_used: std::sync::Mutex<std::time::Instant>,
    /// The last failed connect: requests queued behind it fail fast instead of each waiting
    /// out its own connect timeout against a peer that is down.
    failed: std::sync::Mutex<Option<(std::time::Instant, Arc<String>, &'static str)>>,
}

/// How long a failed connect is remembered.
const FAIL_FAST: Duration = Duration::from_millis(500);
/// How long an idle HTTP/1.1 connection to a peer is kept.
const PEER_HTTP1_IDLE: Duration = Duration::from_secs(30);

impl std::fmt::Debug for PeerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerPool")
            .field("addr", &self.addr)
            .field("server_id", &self.server_id.as_str())
            .field("speaks", &self.speaks())
            .finish_non_exhaustive()
    }
}

/// How a pool reaches its peer.
#[derive(Debug, Clone)]
pub struct PeerDial {
    pub addr: SocketAddr,
    pub server_id: Pattern,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    pub max_lifetime: Option<Duration>,
}

impl PeerPool {
    pub fn new(to: PeerDial, store: Arc<CredentialStore>, live: Arc<Connections>) -> Self {
        let mesh = MeshDial {
            server_id: to.server_id.clone(),
            store: store.clone(),
            live: live.clone(),
            handshake_timeout: to.handshake_timeout,
            max_lifetime: to.max_lifetime,
        };
        PeerPool {
            http1: Http1Pool::with_dialer(
                to.addr,
                Dialer::Mesh(Box::new(mesh)),
                to.connect_timeout,
                PEER_HTTP1_IDLE,
            ),
            addr: to.addr,
            server_id: to.server_id,
            store,
            live,
            connect_timeout: to.connect_timeout,
            handshake_timeout: to.handshake_timeout,
            current: Mutex::new(None),
            speaks: AtomicU8::new(0),
            max_lifetime: to.max_lifetime,
            last_used: std::sync::Mutex::new(std::time::Instant::now()),
            failed: std::sync::Mutex::new(None),
        }
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

    /// What the server speaks, as far as the pool knows.
    pub fn speaks(&self) -> Speaks {
        Speaks::from_u8(self.speaks.load(Ordering::Relaxed))
    }

    /// What the server speaks, connecting once to ask when nobody has yet. A failed connect
    /// leaves it [`Speaks::Unknown`] (requests then get the failure).
    pub async fn learn(&self) -> Speaks {
        if self.speaks() == Speaks::Unknown {
            let _ = self.h2().await;
        }
        self.speaks()
    }

    /// The HTTP/2 connection when the server speaks HTTP/2, `None` when it chose HTTP/1.1.
    async fn h2_unless_http1(&self) -> Result<Option<PeerConn>, PeerError> {
        if self.speaks() == Speaks::Http1 {
            return Ok(None);
        }
        match self.h2().await {
            Ok(conn) => Ok(Some(conn)),
            // The server chose HTTP/1.1 this time: its connection is in the HTTP/1.1 pool.
            Err(None) if self.speaks() == Speaks::Http1 => Ok(None),
            Err(None) => Err(PeerError::Opaque(self.addr)),
            Err(Some(e)) => Err(e),
        }
    }

    /// Sends `req` on the HTTP/2 connection; the response and who the server proved to be.
    async fn send_h2(
        conn: PeerConn,
        req: Request<InBody>,
    ) -> Result<(http::Response<hyper::body::Incoming>, Arc<PeerIdentity>), PeerError> {
        let mut send = conn.send;
        match send.send_request(req).await {
            Ok(resp) => Ok((resp, conn.peer)),
            Err(e) => Err(PeerError::Failed {
                detail: e.to_string(),
                peer: Some(conn.peer),
            }),
        }
    }

    /// Sends one request (absolute URI) the way the server speaks; the response and who the
    /// server proved to be.
    pub async fn send(
        &self,
        mut req: Request<InBody>,
    ) -> Result<(http::Response<ResponseBody>, Option<Arc<PeerIdentity>>), PeerError> {
        self.touch();
        if let Some(conn) = self.h2_unless_http1().await? {
            *req.version_mut() = http::Version::HTTP_2;
            // HTTP/2 carries the authority in `:authority`; a Host header beside it is
            // redundant.
            req.headers_mut().remove(http::header::HOST);
            let (resp, peer) = Self::send_h2(conn, req).await?;
            return Ok((resp.map(ResponseBody::upstream), Some(peer)));
        }
        *req.version_mut() = http::Version::HTTP_11;
        self.http1.send(req).await.map_err(|e| {
            if matches!(e, AppError::NotHttp1 { .. }) {
                // The server changed what it speaks: the next request learns it again.
                self.speaks.store(Speaks::Unknown.as_u8(), Ordering::Relaxed);
            }
            PeerError::from_http1(e, None)
        })
    }

    /// Sends an upgrade request (absolute URI, HTTP/1.1 `Upgrade` headers set) the way the
    /// server speaks: an extended CONNECT (RFC 8441) on the HTTP/2 connection, or HTTP/1.1
    /// `Upgrade` on a connection of its own. The server's answer, who it proved to be, and
    /// whether it came over HTTP/2 (where 200 means it switched).
    pub async fn upgrade(
        &self,
        mut req: Request<InBody>,
        token: &http::HeaderValue,
    ) -> Result<(http::Response<hyper::body::Incoming>, Arc<PeerIdentity>, bool), PeerError> {
        self.touch();
        if let Some(conn) = self.h2_unless_http1().await? {
            // A server that does not take extended CONNECT (RFC 8441; a ward does) resets the
            // stream: the request fails.
            let protocol = token.to_str().unwrap_or_default();
            req.extensions_mut().insert(hyper::ext::Protocol::from(protocol));
            *req.method_mut() = http::Method::CONNECT;
            *req.version_mut() = http::Version::HTTP_2;
            for name in [
                http::header::HOST,
                http::header::CONNECTION,
                http::header::UPGRADE,
            ] {
                req.headers_mut().remove(name);
            }
            let (resp, peer) = Self::send_h2(conn, req).await?;
            return Ok((resp, peer, true));
        }
        // An HTTP/1.1 server: the upgrade gets a connection of its own.
        let to = Dial {
            addr: self.addr,
            server_id: &self.server_id,
            connect_timeout: self.connect_timeout,
            handshake_timeout: self.handshake_timeout,
        };
        let (stream, peer) = mtls::connect(to, Alpn::Http, &self.store).await?;
        if stream.get_ref().1.alpn_protocol() != Some(b"http/1.1") {
            // The server changed what it speaks: the next request learns it again.
            self.speaks.store(Speaks::Unknown.as_u8(), Ordering::Relaxed);
            return Err(PeerError::Failed {
                detail: format!("{} no longer chose HTTP/1.1 in ALPN", self.addr),
                peer: Some(Arc::new(peer)),
            });
        }
        let peer = Arc::new(peer);
        let failed = |e: hyper::Error| PeerError::Failed {
            detail: e.to_string(),
            peer: Some(peer.clone()),
        };
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(failed)?;
        tokio::spawn(conn.with_upgrades());
        // An h2c app's extended CONNECT is a GET with `Upgrade` in HTTP/1.1.
        *req.method_mut() = http::Method::GET;
        *req.version_mut() = http::Version::HTTP_11;
        let req = crate::pools::app::origin_form(req);
        let resp = tx.send_request(req).await.map_err(failed)?;
        Ok((resp, peer, false))
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

    /// The live HTTP/2 connection, or a new one. Concurrent callers wait for the same connect,
    /// so a burst of requests opens one connection, not one each. `Err(None)`: the server chose
    /// another protocol ([`PeerPool::speaks`] says which).
    async fn h2(&self) -> Result<PeerConn, Option<PeerError>> {
        let mut current = self.current.lock().await;
        if let Some(c) = current.as_ref()
            && !c.send.is_closed()
        {
            // After an identity or bundle change its server's chain must still validate; it
            // must be younger than max_connection_lifetime and not close to an SVID's expiry.
            match c.live.closing(&self.store) {
                None => return Ok(c.clone()),
                Some(reason) => {
                    tracing::info!(addr = %self.addr, %reason, "dropping the pooled connection to the peer");
                }
            }
        }
        // A closed, revoked or too old connection is dropped: its requests in flight finish,
        // new ones go over a new connection.
        *current = None;
        if let Some(e) = self.recent_failure() {
            return Err(Some(e));
        }
        // Boxed: the handshake's state is large and rarely needed; inline it would be copied
        // with every request's future.
        match Box::pin(self.connect()).await {
            Ok(Some(conn)) => {
                *current = Some(conn.clone());
                Ok(conn)
            }
            Ok(None) => Err(None),
            Err(e) => {
                if let Ok(mut failed) = self.failed.lock() {
                    *failed = Some((std::time::Instant::now(), Arc::new(e.to_string()), e.label()));
                }
                Err(Some(e))
            }
        }
    }

    /// A new mTLS connection, and by its ALPN answer what the server speaks: HTTP/2 (the
    /// connection), HTTP/1.1 (the connection goes to the HTTP/1.1 pool) or nothing.
    async fn connect(&self) -> Result<Option<PeerConn>, PeerError> {
        let addr = self.addr;
        let to = Dial {
            addr,
            server_id: &self.server_id,
            connect_timeout: self.connect_timeout,
            handshake_timeout: self.handshake_timeout,
        };
        let (stream, peer) = mtls::connect(to, Alpn::Http, &self.store).await?;
        let speaks = match stream.get_ref().1.alpn_protocol() {
            Some(b"h2") => Speaks::H2,
            Some(b"http/1.1") => Speaks::Http1,
            _ => Speaks::Opaque,
        };
        if self.speaks.swap(speaks.as_u8(), Ordering::Relaxed) != speaks.as_u8() {
            tracing::info!(%addr, ?speaks, "the peer's ALPN answer");
        }
        match speaks {
            Speaks::H2 => {}
            Speaks::Http1 => {
                if let Some(mesh) = self.http1.mesh() {
                    let (tx, link) = mesh
                        .adopt(addr, stream, peer)
                        .await
                        .map_err(|e| PeerError::from_http1(e, None))?;
                    self.http1.keep(tx, link);
                }
                return Ok(None);
            }
            Speaks::Opaque | Speaks::Unknown => return Ok(None),
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
        let peer = Arc::new(peer);
        let live = self
            .live
            .register(Some(peer.clone()), Scope::Bundles, self.max_lifetime, &self.store);
        Ok(Some(PeerConn {
            send,
            peer,
            live: Arc::new(live),
        }))
    }
}
