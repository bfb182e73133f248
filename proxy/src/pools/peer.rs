//! The pool on the peer's side: one multiplexed HTTP/2 connection over mTLS to each peer
//! sidecar, shared by every request of a worker shard to it, made again when it closes, is
//! revoked or grows too old.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Mutex;
use ward_certs::CredentialStore;
use ward_filters::Pattern;

use crate::data::live::{Connections, Live, Scope};
use crate::data::mtls::{self, Alpn, Dial, MtlsError, PeerIdentity};
use crate::pools::app::InBody;

/// Why a peer connection could not be had.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(transparent)]
    Mtls(#[from] MtlsError),
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
            PeerError::Mtls(e) => e.reason(),
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
    pub peer: Arc<PeerIdentity>,
    /// Its entry among the live connections: says when it may take no more requests.
    live: Arc<Live>,
}

/// The multiplexed HTTP/2 connection to one peer sidecar; every request of an outbound
/// listener shares it, and a new one is made when it closes.
pub struct PeerPool {
    addr: SocketAddr,
    server_id: Pattern,
    store: Arc<CredentialStore>,
    live: Arc<Connections>,
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
        live: Arc<Connections>,
        connect_timeout: Duration,
        handshake_timeout: Duration,
        max_lifetime: Option<Duration>,
    ) -> Self {
        PeerPool {
            addr,
            server_id,
            store,
            live,
            connect_timeout,
            handshake_timeout,
            current: Mutex::new(None),
            max_lifetime,
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
        if let Some(c) = current.as_ref()
            && !c.send.is_closed()
        {
            // After an identity or bundle change its server's chain must still validate, and
            // it must be younger than max_connection_lifetime.
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
        let to = Dial {
            addr,
            server_id: &self.server_id,
            connect_timeout: self.connect_timeout,
            handshake_timeout: self.handshake_timeout,
        };
        let (stream, peer) = mtls::connect(to, Alpn::Http, &self.store).await?;
        if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
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
        let peer = Arc::new(peer);
        let live = self
            .live
            .register(Some(peer.clone()), Scope::Bundles, self.max_lifetime, &self.store);
        Ok(PeerConn {
            send,
            peer,
            live: Arc::new(live),
        })
    }
}
