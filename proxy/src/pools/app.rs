//! The pool on the app's side: pooled clients to the app behind an inbound listener,
//! HTTP/1.1 keep-alive connections (this module's own pool) or h2c for gRPC (hyper-util's).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::Body;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::data::io::{DialError, dial};
use crate::data::live::{Connections, Live, Scope};
use crate::data::mtls::{self, Alpn, Dial, MtlsError, PeerIdentity};
use crate::http::{Counted, ResponseBody};
use ward_certs::CredentialStore;
use ward_filters::Pattern;

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
            match dial(addr, timeout).await {
                Ok(tcp) => Ok(TokioIo::new(tcp)),
                Err(DialError::Failed { source, .. }) => Err(source),
                Err(e) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, e.to_string())),
            }
        })
    }
}

/// Idle HTTP/1.1 connections kept to the app behind one inbound listener: above the 200
/// streams one peer's HTTP/2 connection may carry at once, so steady concurrency never churns
/// app connections, yet a burst from many peers does not stay pooled without bound.
const APP_MAX_IDLE: usize = 256;
/// How long an idle connection to the app is kept: after load, memory falls back within it.
/// Shorter when the app says in `Keep-Alive: timeout=N` that it closes sooner.
const APP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection idle for this long may be one the app is closing for idleness just as a
/// request goes out on it (few apps close an idle connection sooner). A request on it that is
/// safe to send twice keeps a copy, and is sent again on a new connection if the app closes
/// before answering, within `APP_CLOSE_RACE`. Below this, no copy: busy connections cost
/// nothing extra.
const APP_MAY_CLOSE_IDLE_AFTER: Duration = Duration::from_millis(500);
/// How soon after sending the app's close must come for the request to be sent again: the
/// idle-close race ends within a round trip, while an app that worked on a request for longer
/// and then closed (a crash, a restart) may have acted on it, so it does not get it twice.
const APP_CLOSE_RACE: Duration = Duration::from_millis(500);

/// Pooled clients to the app behind an inbound listener; cheap to clone (every request's
/// future holds one, so it is a pointer, not two pools).
#[derive(Clone, Debug)]
pub struct AppClient(Arc<AppClients>);

#[derive(Debug)]
struct AppClients {
    http1: Arc<Http1Pool>,
    h2c: Client<FixedAddr, InBody>,
}

/// Why a request could not be had from the app.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("connect to {0}; is the app up and listening there?")]
    Dial(#[from] DialError),
    /// Calling a peer over mTLS (an HTTP/1.1 server in the mesh) failed.
    #[error(transparent)]
    Mtls(#[from] MtlsError),
    /// A peer that chose HTTP/1.1 before chose something else on a new connection.
    #[error("{addr} no longer chose HTTP/1.1 in ALPN")]
    NotHttp1 { addr: SocketAddr },
    #[error("HTTP/1.1 with the app at {addr}: {source}")]
    Http1 {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error(
        "HTTP/1.1 with the app at {addr}: the app closed the connection before answering, twice (once on a connection idle for {idle:?}, then on a new one): {source}"
    )]
    Http1Retried {
        addr: SocketAddr,
        idle: Duration,
        #[source]
        source: hyper::Error,
    },
    #[error("HTTP/2 (h2c) with the app: {0}")]
    H2c(#[source] hyper_util::client::legacy::Error),
}

impl AppClient {
    pub fn new(addr: SocketAddr, connect_timeout: Duration) -> Self {
        let connector = FixedAddr {
            addr,
            timeout: connect_timeout,
        };
        let h2c = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .pool_idle_timeout(APP_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(connector);
        AppClient(Arc::new(AppClients {
            http1: Http1Pool::new(addr, connect_timeout, APP_IDLE_TIMEOUT),
            h2c,
        }))
    }

    /// Sends over HTTP/2 (h2c) when `h2`, else HTTP/1.1 keep-alive. `req` has an absolute URI.
    pub async fn send(&self, req: Request<InBody>, h2: bool) -> Result<Response<ResponseBody>, AppError> {
        if h2 {
            let resp = self.0.h2c.request(req).await.map_err(AppError::H2c)?;
            Ok(resp.map(ResponseBody::upstream))
        } else {
            Ok(self.0.http1.send(req).await?.0)
        }
    }
}

/// Keep-alive HTTP/1.1 connections to the app, most recently used first.
///
/// Written here rather than using hyper-util's pooled client, which the h2c path still uses:
/// that client keys its pool by scheme and authority (hashing and formatting them for every
/// request), spawns a task per response to notice when the connection is free again, and
/// built a Host header through `format!`. This pool has one address, hands a connection back
/// when the response body ends, and cost about a tenth of the inbound's instructions less per
/// request (callgrind, keep-alive at 1 connection).
#[derive(Debug)]
pub(crate) struct Http1Pool {
    addr: SocketAddr,
    /// Plain TCP to the app, or mTLS to a peer.
    dialer: Dialer,
    connect_timeout: Duration,
    /// How long an idle connection is kept (`APP_IDLE_TIMEOUT`).
    idle_timeout: Duration,
    idle: std::sync::Mutex<Idle>,
    /// Wakes the reaper when a connection is kept for less than the one it sleeps for.
    wake: Arc<tokio::sync::Notify>,
}

#[derive(Debug, Default)]
struct Idle {
    /// Idle connections, the most recently used last.
    conns: Vec<IdleConn>,
    /// When the reaper wakes next; `None` when there is no reaper.
    reap_at: Option<Instant>,
}

/// How a pool's connections are made.
#[derive(Debug)]
pub(crate) enum Dialer {
    /// Plain TCP: the app behind an inbound listener.
    App,
    /// mTLS to a peer that chose HTTP/1.1 in ALPN (a server that is not a ward).
    Mesh(Box<MeshDial>),
}

/// How a mesh pool calls its peer: the server must prove `server_id`; each connection is
/// registered among the live connections.
#[derive(Debug)]
pub(crate) struct MeshDial {
    pub server_id: Pattern,
    pub store: Arc<CredentialStore>,
    pub live: Arc<Connections>,
    pub handshake_timeout: Duration,
    pub max_lifetime: Option<Duration>,
}

/// An mTLS connection of a mesh pool: who the server proved to be, and its registry entry.
#[derive(Debug)]
pub(crate) struct MeshLink {
    pub peer: Arc<PeerIdentity>,
    live: Live,
}

#[derive(Debug)]
struct IdleConn {
    tx: AppSender,
    mesh: Option<Arc<MeshLink>>,
    since: Instant,
    /// When the pool stops handing it out: the idle timeout, or sooner if the app said so.
    until: Instant,
}

/// Request bodies on HTTP/1.1 connections to the app: the caller's, or none for a request
/// sent again (only one with no body is).
type AppBody = Either<InBody, Empty<Bytes>>;
type AppSender = http1::SendRequest<AppBody>;

/// A copy of a request with no body, to send again.
fn copy_without_body<B>(req: &Request<B>) -> Request<AppBody> {
    let mut copy = Request::new(Either::Right(Empty::new()));
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// Whether a request may be sent again after the app closed the connection without an answer:
/// a safe method (RFC 9110 section 9.2.1) and no body. PUT and DELETE are idempotent, and RFC
/// 9110 would allow them, but a DELETE the app carried out and a repeated one differ in what
/// the app logs and answers, so they are not sent twice (as Go's HTTP client does not).
fn may_send_again<B: Body>(req: &Request<B>) -> bool {
    use http::Method;
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) && req.body().is_end_stream()
}

/// Whether `e` says the app closed or reset the connection before its response was read.
fn closed_before_answering(e: &hyper::Error) -> bool {
    use std::io::ErrorKind;
    e.is_incomplete_message()
        || std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| {
                matches!(
                    io.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted
                )
            })
}

/// How long to keep a connection after this response: `idle_timeout`, or less when the app's
/// `Keep-Alive: timeout=N` (RFC 2068 19.7.1.1; Node.js and Apache send 5 s) says it closes
/// sooner, leaving a margin of up to a second so ward stops using it first. The app's clock
/// starts when it has written the response, ward's when it has read it; a slow reader eats
/// into the margin, and a request that still meets a close is sent again if it may be.
fn keep_for(headers: &http::HeaderMap, idle_timeout: Duration) -> Duration {
    static KEEP_ALIVE: http::HeaderName = http::HeaderName::from_static("keep-alive");
    let app = headers
        .get(&KEEP_ALIVE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',').find_map(|param| {
                let (name, value) = param.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("timeout")
                    .then(|| value.trim().trim_matches('"').parse::<u64>().ok())?
            })
        });
    match app {
        Some(secs) => {
            let app = Duration::from_secs(secs);
            idle_timeout.min(app - (app / 2).min(Duration::from_secs(1)))
        }
        None => idle_timeout,
    }
}

impl Http1Pool {
    fn new(addr: SocketAddr, connect_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        Http1Pool::with_dialer(addr, Dialer::App, connect_timeout, idle_timeout)
    }

    pub(crate) fn with_dialer(
        addr: SocketAddr,
        dialer: Dialer,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Http1Pool {
            addr,
            dialer,
            connect_timeout,
            idle_timeout,
            idle: std::sync::Mutex::default(),
            wake: Arc::default(),
        })
    }

    /// Sends `req` (absolute URI) on a kept connection or a new one; the response, and who the
    /// server proved to be when the pool calls a peer.
    pub(crate) async fn send(
        self: &Arc<Self>,
        req: Request<InBody>,
    ) -> Result<(Response<ResponseBody>, Option<Arc<PeerIdentity>>), AppError> {
        let mut req = origin_form(req).map(Either::Left);
        // Set once a copy was sent again: it is not sent a third time.
        let mut resent = None;
        loop {
            let taken = if resent.is_none() { self.take() } else { None };
            let (mut tx, mesh, idle) = match taken {
                Some((tx, mesh, idle)) => (tx, mesh, Some(idle)),
                // Boxed: a new connection is the rare case, and its future would otherwise
                // make every request's future larger.
                None => {
                    let (tx, mesh) = Box::pin(self.connect()).await?;
                    (tx, mesh, None)
                }
            };
            let copy = (resent.is_none()
                && idle.is_some_and(|idle| idle >= APP_MAY_CLOSE_IDLE_AFTER)
                && may_send_again(&req))
            .then(|| copy_without_body(&req));
            let sent = copy.as_ref().map(|_| Instant::now());
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    let keep = keep_for(resp.headers(), self.idle_timeout);
                    let mut resp = resp.map(ResponseBody::upstream);
                    let peer = mesh.as_ref().map(|m| m.peer.clone());
                    if resp.body().is_end_stream() {
                        // No body to wait for (HEAD, 204, 304, an empty one).
                        self.put(tx, mesh, keep);
                    } else {
                        // Back to the pool when the response body has ended.
                        let pool = self.clone();
                        resp.body_mut().on_end(Box::new(move || pool.put(tx, mesh, keep)));
                    }
                    return Ok((resp, peer));
                }
                Err(mut e) => match (e.take_message(), copy) {
                    // The app closed a pooled connection before the request went out on it:
                    // nothing was sent, so it goes on another.
                    (Some(unsent), _) if idle.is_some() => req = unsent,
                    // It closed a connection idle for a while as the request went out, most
                    // likely for idleness: the copy goes on a new connection.
                    (None, Some(copy))
                        if closed_before_answering(e.error())
                            && sent.is_some_and(|t| t.elapsed() < APP_CLOSE_RACE) =>
                    {
                        let idle = idle.unwrap_or_default();
                        tracing::debug!(app = %self.addr, ?idle, error = %e.error(),
                            "the app closed an idle connection as a request went out; sending it again on a new connection");
                        resent = Some(idle);
                        req = copy;
                    }
                    _ => {
                        let source = e.into_error();
                        return Err(match resent {
                            Some(idle) => AppError::Http1Retried {
                                addr: self.addr,
                                idle,
                                source,
                            },
                            None => AppError::Http1 {
                                addr: self.addr,
                                source,
                            },
                        });
                    }
                },
            }
        }
    }

    /// The most recently used idle connection that is still open and ready, and how long it
    /// was idle.
    fn take(self: &Arc<Self>) -> Option<(AppSender, Option<Arc<MeshLink>>, Duration)> {
        let mut idle = self.idle.lock().ok()?;
        loop {
            let mut conn = idle.conns.pop()?;
            let now = Instant::now();
            if conn.tx.is_closed() || now >= conn.until {
                continue;
            }
            // A peer's connection after a bundle change, or close to an SVID's expiry.
            if let (Some(m), Dialer::Mesh(dial)) = (&conn.mesh, &self.dialer)
                && let Some(reason) = m.live.closing(&dial.store)
            {
                tracing::debug!(addr = %self.addr, %reason, "dropping a pooled HTTP/1.1 connection to the peer");
                continue;
            }
            if conn.tx.is_ready() {
                return Some((conn.tx, conn.mesh, now - conn.since));
            }
            // Handed back when its response ended, a connection is ready at once, unless the
            // app answered before reading the whole request body and hyper is still sending
            // it: that may take long, so this request does not wait on it; it comes back to
            // the pool when it is free.
            let pool = self.clone();
            tokio::spawn(async move {
                let free = tokio::time::timeout_at(conn.until.into(), conn.tx.ready()).await;
                if matches!(free, Ok(Ok(()))) {
                    let keep = conn.until.saturating_duration_since(Instant::now());
                    pool.put(conn.tx, conn.mesh, keep);
                }
            });
        }
    }

    /// Keeps a connection whose response has ended, for the next request, for at most `keep`.
    fn put(self: &Arc<Self>, tx: AppSender, mesh: Option<Arc<MeshLink>>, keep: Duration) {
        if tx.is_closed() || keep.is_zero() {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        if idle.conns.len() >= APP_MAX_IDLE {
            // Dropped: hyper closes the connection.
            return;
        }
        let since = Instant::now();
        let until = since + keep;
        idle.conns.push(IdleConn {
            tx,
            mesh,
            since,
            until,
        });
        match idle.reap_at {
            // Outside a runtime (never in ward) there is no reaper; `take` skips expired ones.
            None => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    idle.reap_at = Some(until);
                    drop(rt.spawn(reap(Arc::downgrade(self), self.wake.clone())));
                }
            }
            // Kept for less than the reaper sleeps (the app's `Keep-Alive` said so).
            Some(at) if until < at => {
                idle.reap_at = Some(until);
                self.wake.notify_one();
            }
            Some(_) => {}
        }
    }

    async fn connect(&self) -> Result<(AppSender, Option<Arc<MeshLink>>), AppError> {
        let addr = self.addr;
        let Dialer::Mesh(mesh) = &self.dialer else {
            let tcp = dial(addr, self.connect_timeout).await?;
            let (tx, conn) = http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|source| AppError::Http1 { addr, source })?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(app = %addr, error = %e, "app connection ended with an error");
                }
            });
            return Ok((tx, None));
        };
        let to = Dial {
            addr,
            server_id: &mesh.server_id,
            connect_timeout: self.connect_timeout,
            handshake_timeout: mesh.handshake_timeout,
        };
        let (stream, peer) = mtls::connect(to, Alpn::Http, &mesh.store).await?;
        if stream.get_ref().1.alpn_protocol() != Some(b"http/1.1") {
            return Err(AppError::NotHttp1 { addr });
        }
        let (tx, link) = mesh.adopt(addr, stream, peer).await?;
        Ok((tx, Some(link)))
    }

    /// How this pool calls a peer, when it does.
    pub(crate) fn mesh(&self) -> Option<&MeshDial> {
        match &self.dialer {
            Dialer::Mesh(m) => Some(m),
            Dialer::App => None,
        }
    }

    /// Keeps a connection just made (by [`MeshDial::adopt`]) for the next request.
    pub(crate) fn keep(self: &Arc<Self>, tx: AppSender, link: Arc<MeshLink>) {
        self.put(tx, Some(link), self.idle_timeout);
    }
}

impl MeshDial {
    /// Speaks HTTP/1.1 over a new mTLS connection to the peer at `addr` (made by the pool, or
    /// by the peer pool when it learned that the server chose HTTP/1.1), registered among
    /// the live connections: its driver ends it when the registry says so.
    pub(crate) async fn adopt<S>(
        &self,
        addr: SocketAddr,
        stream: S,
        peer: PeerIdentity,
    ) -> Result<(AppSender, Arc<MeshLink>), AppError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| AppError::Http1 { addr, source })?;
        let peer = Arc::new(peer);
        let live = self
            .live
            .register(Some(peer.clone()), Scope::Bundles, self.max_lifetime, &self.store);
        let closed = live.closed();
        tokio::spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%addr, error = %e, "peer HTTP/1.1 connection ended with an error");
                },
                reason = closed => tracing::info!(%addr, %reason, "closing an HTTP/1.1 connection to the peer"),
            }
        });
        Ok((tx, Arc::new(MeshLink { peer, live })))
    }
}

/// Closes connections idle past their time; ends when none is left (or the pool is gone), and
/// `put` starts it again. `put` wakes it early when a connection expires before `reap_at`.
async fn reap(pool: Weak<Http1Pool>, wake: Arc<tokio::sync::Notify>) {
    loop {
        let next = {
            let Some(pool) = pool.upgrade() else {
                return;
            };
            let Ok(mut idle) = pool.idle.lock() else {
                return;
            };
            let now = Instant::now();
            idle.conns.retain(|c| !c.tx.is_closed() && now < c.until);
            idle.reap_at = idle.conns.iter().map(|c| c.until).min();
            match idle.reap_at {
                Some(next) => next,
                None => return,
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(next.into()) => {}
            () = wake.notified() => {}
        }
    }
}

/// HTTP/1.1 wants the origin form (`/path?query`) and a Host header. Host is set from the
/// absolute URI ward built, whose authority came from the caller's `:authority`, absolute-form
/// target or Host: the one the policy and the audit record saw (RFC 9112 section 3.2.2: a
/// proxy replaces a Host that disagrees with the target). Userinfo and the default port 80
/// are left out, as clients write Host.
pub(crate) fn origin_form<B>(mut req: Request<B>) -> Request<B> {
    if let Some(a) = req.uri().authority() {
        let host = if a.as_str().contains('@') || a.port_u16() == Some(80) {
            match a.port_u16() {
                Some(port) if port != 80 => http::HeaderValue::from_str(&format!("{}:{port}", a.host())),
                _ => http::HeaderValue::from_str(a.host()),
            }
        } else {
            http::HeaderValue::from_str(a.as_str())
        };
        if let Ok(host) = host {
            req.headers_mut().insert(http::header::HOST, host);
        }
    }
    let origin = req
        .uri()
        .path_and_query()
        .cloned()
        .map_or_else(|| Uri::from_static("/"), Uri::from);
    *req.uri_mut() = origin;
    req
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A listening stand-in for the app, and a pool to it.
    async fn app_and_pool(idle_timeout: Duration) -> (tokio::net::TcpListener, Arc<Http1Pool>) {
        let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Http1Pool::new(app.local_addr().unwrap(), Duration::from_secs(2), idle_timeout);
        (app, pool)
    }

    /// An idle app connection stays open for the idle timeout, then ward closes it (the app
    /// reads EOF) and the pool is empty again.
    #[tokio::test]
    async fn an_idle_app_connection_is_closed_after_the_idle_timeout() {
        let idle_timeout = Duration::from_millis(300);
        let (app, pool) = app_and_pool(idle_timeout).await;
        let tx = pool.connect().await.unwrap().0;
        let (mut conn, _) = app.accept().await.unwrap();
        let kept = Instant::now();
        pool.put(tx, None, idle_timeout);
        assert_eq!(pool.idle.lock().unwrap().conns.len(), 1);
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(3), conn.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0))), "the app saw {read:?}, not EOF");
        assert!(
            kept.elapsed() >= idle_timeout,
            "closed after {:?}",
            kept.elapsed()
        );
        assert!(pool.idle.lock().unwrap().conns.is_empty());
    }

    /// A connection kept for less than one already idle (its app's `Keep-Alive` said so) is
    /// closed at its own time, not when the reaper would have woken for the other.
    #[tokio::test]
    async fn a_connection_kept_briefly_is_closed_at_its_own_time() {
        let (app, pool) = app_and_pool(APP_IDLE_TIMEOUT).await;
        let long = pool.connect().await.unwrap().0;
        let (_long_conn, _) = app.accept().await.unwrap();
        let brief = pool.connect().await.unwrap().0;
        let (mut brief_conn, _) = app.accept().await.unwrap();
        pool.put(long, None, APP_IDLE_TIMEOUT);
        // Let the reaper start its sleep towards the long one's end.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let kept = Instant::now();
        pool.put(brief, None, Duration::from_millis(300));
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), brief_conn.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0))), "the app saw {read:?}, not EOF");
        assert!(kept.elapsed() >= Duration::from_millis(300));
        assert_eq!(pool.idle.lock().unwrap().conns.len(), 1, "the long one stays");
    }

    #[test]
    fn the_app_keep_alive_timeout_shortens_the_time_a_connection_is_kept() {
        let keep = |value: Option<&str>| {
            let mut h = http::HeaderMap::new();
            if let Some(v) = value {
                h.insert("keep-alive", v.parse().unwrap());
            }
            keep_for(&h, Duration::from_secs(30))
        };
        let s = Duration::from_secs;
        assert_eq!(keep(None), s(30));
        assert_eq!(keep(Some("timeout=5")), s(4));
        assert_eq!(keep(Some("timeout=5, max=1000")), s(4));
        assert_eq!(keep(Some("max=1000,Timeout = 3")), s(2));
        assert_eq!(keep(Some("timeout=\"2\"")), s(1));
        assert_eq!(keep(Some("timeout=1")), Duration::from_millis(500));
        assert_eq!(keep(Some("timeout=0")), Duration::ZERO);
        assert_eq!(keep(Some("timeout=600")), s(30));
        assert_eq!(keep(Some("timeout=-1")), s(30));
        assert_eq!(keep(Some("timeout=soon")), s(30));
        assert_eq!(keep(Some("max=5")), s(30));
    }

    #[test]
    fn only_safe_requests_without_a_body_are_sent_again() {
        let req = |method: &str, body: &'static str| {
            Request::builder()
                .method(method)
                .uri("http://app/x")
                .header("x-a", "1")
                .body(http_body_util::Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap()
        };
        for m in ["GET", "HEAD", "OPTIONS", "TRACE"] {
            assert!(may_send_again(&req(m, "")), "{m}");
            assert!(!may_send_again(&req(m, "body")), "{m} with a body");
        }
        for m in ["POST", "PUT", "DELETE", "PATCH", "CONNECT"] {
            assert!(!may_send_again(&req(m, "")), "{m}");
        }
        let copy = copy_without_body(&req("GET", ""));
        assert_eq!(
            (copy.method(), copy.uri().to_string()),
            (&http::Method::GET, "http://app/x".into())
        );
        assert_eq!(copy.headers()["x-a"], "1");
        assert!(copy.body().is_end_stream());
    }

    #[test]
    fn origin_form_and_host_come_from_the_authority_the_policy_saw() {
        let req = |uri: &str, host: Option<&str>| {
            let mut b = Request::builder().uri(uri);
            if let Some(h) = host {
                b = b.header(http::header::HOST, h);
            }
            let r = origin_form(b.body(()).unwrap());
            (
                r.uri().to_string(),
                r.headers()
                    .get_all(http::header::HOST)
                    .iter()
                    .map(|v| v.to_str().unwrap().to_owned())
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            req("http://app:8080/a?b=1", None),
            ("/a?b=1".into(), vec!["app:8080".into()])
        );
        assert_eq!(
            req("http://app:8080/a", Some("evil")),
            ("/a".into(), vec!["app:8080".into()])
        );
        assert_eq!(req("http://u:pw@app:80/", None), ("/".into(), vec!["app".into()]));
        assert_eq!(
            req("http://u@app:81/x", None),
            ("/x".into(), vec!["app:81".into()])
        );
        assert_eq!(
            req("http://[::1]:9000/", None),
            ("/".into(), vec!["[::1]:9000".into()])
        );
    }

    /// A pooled connection the app has closed is not handed out.
    #[tokio::test]
    async fn a_connection_the_app_closed_is_not_taken() {
        let (app, pool) = app_and_pool(APP_IDLE_TIMEOUT).await;
        let tx = pool.connect().await.unwrap().0;
        let (conn, _) = app.accept().await.unwrap();
        pool.put(tx, None, APP_IDLE_TIMEOUT);
        drop(conn);
        // Give the connection's task the moment it needs to read the EOF.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(pool.take().is_none());
    }
}
