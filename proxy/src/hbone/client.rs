//! The outbound's HBONE tunnels: CONNECT streams over pooled mTLS connections, one pool per
//! outbound listener. Connections are keyed as ztunnel keys them: the worker shard (a shard
//! drives only its own), the tunnel address (destination IP, HBONE port), the identity the
//! server must prove, and our own SPIFFE ID (after a rotation to another ID, new streams go
//! over new connections that present it). A connection carries up to [`wire::MAX_STREAMS`]
//! streams; past that another is made. One that carries no stream for `pool_idle_timeout`
//! is closed, as is one the registry of live connections closes (a bundle that no longer
//! validates its server, the server's SVID expiring); one near an SVID's expiry, or past
//! `max_connection_lifetime`, takes no new streams.
//!
//! For `tunnel: auto`, the pool also remembers which IPs answered no HBONE (nothing listens,
//! or a TLS server there chose no `h2`), so their connections go direct for a while.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Mutex;
use ward_filters::Pattern;

use crate::data::live::{Live, Scope};
use crate::data::mtls::{self, Alpn, Dial, MtlsError, PeerIdentity};
use crate::hbone::wire;
use crate::metrics::HboneMetrics;
use crate::state::Shared;

/// How long an IP that answered no HBONE goes direct before it is asked again.
const DIRECT_FOR: Duration = Duration::from_secs(60);

/// Why a stream could not be had.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error(transparent)]
    Mtls(#[from] MtlsError),
    /// A TLS server answered at the tunnel address but chose no ALPN `h2`.
    #[error("{0} chose no ALPN h2: it is no HBONE listener")]
    NotHbone(SocketAddr),
    /// The tunnel address answered no HBONE a moment ago (for `tunnel: auto`).
    #[error("{0} answered no HBONE lately")]
    NoListener(SocketAddr),
    #[error("HTTP/2 with {addr}: {detail}")]
    H2 { addr: SocketAddr, detail: String },
    /// The server's policy refused the stream (401, or 403).
    #[error("the HBONE server at {addr} answered {status}: its policy denies this workload")]
    Denied {
        addr: SocketAddr,
        status: StatusCode,
        peer: Arc<PeerIdentity>,
    },
    /// The server answered, but not 200 (503: it could not reach the destination).
    #[error("the HBONE server at {addr} answered {status}")]
    Refused {
        addr: SocketAddr,
        status: StatusCode,
        peer: Arc<PeerIdentity>,
    },
    /// The stream failed after the server was reached.
    #[error("the CONNECT to {addr} failed: {detail}")]
    Failed {
        addr: SocketAddr,
        detail: String,
        peer: Arc<PeerIdentity>,
    },
}

impl HboneError {
    /// Stable label for records.
    pub fn label(&self) -> &'static str {
        match self {
            HboneError::Mtls(e) => e.reason(),
            HboneError::NotHbone(_) => "not_hbone",
            HboneError::NoListener(_) => "no_hbone",
            HboneError::H2 { .. } => "h2",
            HboneError::Denied { .. } => "peer_denied",
            HboneError::Refused { .. } => "peer_refused",
            HboneError::Failed { .. } => "upstream_failed",
        }
    }

    /// Whether nothing at the tunnel address speaks HBONE (no listener, no route to it, a
    /// server without `h2`): `tunnel: auto` goes direct then. A handshake that failed, or a
    /// server that proved the wrong ID, is no such answer: it fails closed.
    pub fn no_hbone(&self) -> bool {
        matches!(
            self,
            HboneError::NotHbone(_) | HboneError::NoListener(_) | HboneError::Mtls(MtlsError::Dial(_))
        )
    }

    /// The server that answered, when one did.
    pub fn peer(&self) -> Option<&Arc<PeerIdentity>> {
        match self {
            HboneError::Denied { peer, .. }
            | HboneError::Refused { peer, .. }
            | HboneError::Failed { peer, .. } => Some(peer),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    shard: usize,
    /// The tunnel address: the destination's IP and HBONE port.
    addr: SocketAddr,
    server_id: Arc<str>,
    own_id: Arc<str>,
}

/// How busy a connection is, shared with the task that drives it.
#[derive(Debug)]
struct Usage {
    streams: AtomicUsize,
    idle_since: std::sync::Mutex<Instant>,
}

/// One pooled tunnel connection.
struct Link {
    send: http2::SendRequest<Empty<Bytes>>,
    peer: Arc<PeerIdentity>,
    /// Its entry among the live connections: says when it may take no more streams.
    live: Live,
    usage: Arc<Usage>,
}

/// A stream's hold on its connection: counted in it, and in `ward_hbone_streams_active`,
/// while the stream lives.
#[derive(Debug)]
pub struct Lease(Arc<Usage>, Gauge);

impl Lease {
    fn take(usage: &Arc<Usage>, active: &Gauge) -> Lease {
        usage.streams.fetch_add(1, Ordering::AcqRel);
        active.inc();
        Lease(usage.clone(), active.clone())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.1.dec();
        if self.0.streams.fetch_sub(1, Ordering::AcqRel) == 1
            && let Ok(mut since) = self.0.idle_since.lock()
        {
            *since = Instant::now();
        }
    }
}

/// An open tunnel: its bytes, who the server proved to be, and its hold on the connection.
pub struct Stream {
    pub io: TokioIo<hyper::upgrade::Upgraded>,
    pub peer: Arc<PeerIdentity>,
    pub lease: Lease,
}

/// Where one stream goes.
#[derive(Debug, Clone, Copy)]
pub struct Open<'a> {
    /// The final destination: the CONNECT's `:authority`.
    pub dst: SocketAddr,
    /// The destination's HBONE port; the tunnel goes to `dst`'s IP there.
    pub hbone_port: u16,
    pub server_id: &'a Pattern,
    /// The original client (the app's address), sent in `forwarded`.
    pub client: SocketAddr,
    pub handshake_timeout: Duration,
}

type Slot = Arc<Mutex<Vec<Arc<Link>>>>;

/// One outbound listener's tunnel connections.
pub struct HbonePool {
    slots: std::sync::Mutex<HashMap<Key, Slot>>,
    metrics: HboneMetrics,
    /// `tunnel: auto`: IPs that answered no HBONE, and when.
    direct: std::sync::Mutex<HashMap<IpAddr, Instant>>,
}

impl std::fmt::Debug for HbonePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HbonePool").finish_non_exhaustive()
    }
}

impl HbonePool {
    pub fn new(metrics: HboneMetrics) -> HbonePool {
        HbonePool {
            slots: std::sync::Mutex::default(),
            metrics,
            direct: std::sync::Mutex::default(),
        }
    }

    /// `tunnel: auto`: whether `ip` is worth a tunnel (it did not lately answer no HBONE).
    pub fn may_tunnel(&self, ip: IpAddr) -> bool {
        let mut direct = self.direct.lock().unwrap_or_else(|e| e.into_inner());
        direct.retain(|_, at| at.elapsed() < DIRECT_FOR);
        !direct.contains_key(&ip)
    }

    /// `tunnel: auto`: `ip` answered no HBONE; its connections go direct for a while.
    pub fn go_direct(&self, ip: IpAddr) {
        let mut direct = self.direct.lock().unwrap_or_else(|e| e.into_inner());
        if direct.insert(ip, Instant::now()).is_none() {
            tracing::info!(%ip, "no HBONE listener there; connections go direct (asked again in a minute)");
        }
    }

    /// A tunnel to `to.dst`, on a pooled connection or a new one; counted in
    /// `ward_hbone_streams` by result.
    pub async fn open(&self, to: Open<'_>, shared: &Shared) -> Result<Stream, HboneError> {
        let opened = self.open_stream(to, shared).await;
        self.metrics.stream(match &opened {
            Ok(_) => "ok",
            Err(e) => e.label(),
        });
        opened
    }

    async fn open_stream(&self, to: Open<'_>, shared: &Shared) -> Result<Stream, HboneError> {
        let own_id: Arc<str> = match shared.store.current() {
            Some(tls) => Arc::from(tls.identity.id().as_str()),
            None => return Err(MtlsError::NoIdentity.into()),
        };
        let addr = SocketAddr::new(to.dst.ip(), to.hbone_port);
        let key = Key {
            shard: crate::data::shards::current(),
            addr,
            server_id: Arc::from(to.server_id.as_str()),
            own_id: own_id.clone(),
        };
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            // Keys whose connections have all ended (and nobody is connecting) go, with their
            // entries among the live connections: pod IPs come and go.
            slots.retain(|_, s| {
                Arc::strong_count(s) > 1
                    || s.try_lock()
                        .map_or(true, |l| l.iter().any(|link| !link.send.is_closed()))
            });
            slots.entry(key).or_default().clone()
        };
        // Streams to one key wait for the same connect: a burst opens one connection.
        let (link, lease) = {
            let mut links = slot.lock().await;
            // Streams that queued behind a connect which found no HBONE there fail at once
            // (`tunnel: auto` then goes direct) rather than each dialling again in turn.
            if !self.may_tunnel(addr.ip()) {
                return Err(HboneError::NoListener(addr));
            }
            links.retain(|l| {
                if l.send.is_closed() {
                    return false;
                }
                match l.live.closing(&shared.store) {
                    None => true,
                    Some(reason) => {
                        tracing::debug!(%addr, %reason, "the pooled HBONE connection takes no more streams");
                        false
                    }
                }
            });
            let max = wire::MAX_STREAMS as usize;
            let link = match links
                .iter()
                .find(|l| l.usage.streams.load(Ordering::Acquire) < max)
            {
                Some(l) => l.clone(),
                None => {
                    let l = Arc::new(Box::pin(self.connect(addr, &to, shared)).await?);
                    links.push(l.clone());
                    l
                }
            };
            let lease = Lease::take(&link.usage, &self.metrics.streams_active);
            (link, lease)
        };
        let mut req = Request::new(Empty::<Bytes>::new());
        *req.method_mut() = Method::CONNECT;
        *req.version_mut() = http::Version::HTTP_2;
        *req.uri_mut() = http::Uri::try_from(to.dst.to_string()).map_err(|e| HboneError::Failed {
            addr,
            detail: e.to_string(),
            peer: link.peer.clone(),
        })?;
        let headers = req.headers_mut();
        headers.insert(http::header::FORWARDED, wire::forwarded(to.client));
        headers.insert("traceparent", wire::traceparent());
        if let Some(baggage) = wire::baggage(&own_id) {
            headers.insert("baggage", baggage);
        }
        let failed = |detail: String| HboneError::Failed {
            addr,
            detail,
            peer: link.peer.clone(),
        };
        let mut send = link.send.clone();
        // The server answers once it has reached the destination: its connect timeout, and
        // as long again for the way there and back.
        let wait = shared.settings.load().connect_timeout * 2;
        let answer = async {
            send.ready().await.map_err(|e| failed(e.to_string()))?;
            send.send_request(req).await.map_err(|e| failed(e.to_string()))
        };
        let resp = match tokio::time::timeout(wait, answer).await {
            Ok(r) => r?,
            Err(_) => return Err(failed(format!("no answer within {wait:?}"))),
        };
        let status = resp.status();
        if status != StatusCode::OK {
            let peer = link.peer.clone();
            return Err(match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => HboneError::Denied { addr, status, peer },
                _ => HboneError::Refused { addr, status, peer },
            });
        }
        let io = hyper::upgrade::on(resp)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(Stream {
            io: TokioIo::new(io),
            peer: link.peer.clone(),
            lease,
        })
    }

    /// A new tunnel connection to `addr`, driven on this shard until it ends, is closed by
    /// the registry, or carries no stream for `pool_idle_timeout`.
    async fn connect(&self, addr: SocketAddr, to: &Open<'_>, shared: &Shared) -> Result<Link, HboneError> {
        let settings = shared.settings();
        let dial = Dial {
            addr,
            server_id: to.server_id,
            connect_timeout: settings.connect_timeout,
            handshake_timeout: to.handshake_timeout,
        };
        let (stream, peer) = mtls::connect(dial, Alpn::H2, &shared.store).await?;
        if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(HboneError::NotHbone(addr));
        }
        let (send, driver) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .initial_stream_window_size(wire::STREAM_WINDOW)
            .initial_connection_window_size(wire::CONNECTION_WINDOW)
            .max_frame_size(wire::MAX_FRAME)
            .max_send_buf_size(wire::MAX_FRAME as usize)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| HboneError::H2 {
                addr,
                detail: e.to_string(),
            })?;
        let peer = Arc::new(peer);
        let live = shared.live.register(
            Some(peer.clone()),
            Scope::Bundles,
            settings.max_connection_lifetime,
            &shared.store,
        );
        let usage = Arc::new(Usage {
            streams: AtomicUsize::new(0),
            idle_since: std::sync::Mutex::new(Instant::now()),
        });
        self.metrics.connections_opened.inc();
        self.metrics.connections_active.inc();
        let (active, closed, idle) = (
            self.metrics.connections_active.clone(),
            live.closed(),
            idle(usage.clone(), settings.pool_idle_timeout),
        );
        tracing::debug!(%addr, peer = %peer.id, "HBONE connection made");
        tokio::spawn(async move {
            tokio::select! {
                ended = driver => if let Err(e) = ended {
                    tracing::debug!(%addr, error = %e, "HBONE connection ended");
                },
                reason = closed => tracing::info!(%addr, %reason, "closing an HBONE connection"),
                () = idle => tracing::debug!(%addr, "closing an idle HBONE connection"),
            }
            active.dec();
        });
        Ok(Link {
            send,
            peer,
            live,
            usage,
        })
    }
}

/// Resolves once the connection has carried no stream for `after`.
async fn idle(usage: Arc<Usage>, after: Duration) {
    loop {
        let since = usage
            .idle_since
            .lock()
            .map(|s| *s)
            .unwrap_or_else(|_| Instant::now());
        let quiet = usage.streams.load(Ordering::Acquire) == 0;
        if quiet && since.elapsed() >= after {
            return;
        }
        let wait = if quiet {
            after.saturating_sub(since.elapsed())
        } else {
            after
        };
        tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
    }
}
