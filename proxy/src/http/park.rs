//! HTTP/1 server connections that give hyper's buffers back while they are idle.
//!
//! hyper keeps a read and a write buffer of 8 KiB for each HTTP/1 connection for as long as the
//! connection lives (hyper 1.x has no setting for it), so each idle keep-alive connection cost
//! about 16 KB, where haproxy frees an idle connection's buffers. A sidecar in front of a busy
//! app holds many such connections. After [`PARK_AFTER`] with no exchange in flight and no byte
//! either way, the connection is parked: hyper's side of it ends without shutting the socket
//! (`graceful_shutdown` on an idle connection, then `into_parts`), and the socket alone, with
//! no buffer, waits for the client's next bytes; they start a new hyper connection.
//!
//! Parking never changes what the client sees, and never lets bytes be read twice or as
//! something else:
//! - It is tried only when every request hyper handed over has had its response dropped
//!   (sent), at least one since the connection was last parked, nothing moved for a whole
//!   [`PARK_AFTER`], and no write is waiting for the client: a slow app, a long poll or a
//!   slow reader keeps its connection as it is.
//! - ... and only when the last request was HTTP/1.1 with no body, no `Connection: close`, no
//!   upgrade and no CONNECT: then hyper has read all of it, and (as hyper parses a request
//!   only after the one before it is read) all before it. A connection whose last request had
//!   a body is not parked until a request without one follows.
//! - `graceful_shutdown` ends an idle hyper connection at once. One that is not idle (a
//!   request body still unread, a response still unflushed) goes on, closes after its exchange
//!   as hyper would for any `Connection: close`, and is not parked: so the unread rest of a
//!   body can never be parsed as a next request.
//! - Bytes hyper read but did not parse yet (the start of a next request head) come back from
//!   `into_parts` and are served first by the next hyper connection.
//! - A parked connection with no request for the rest of `request_header_timeout` is closed,
//!   as hyper closes an idle keep-alive connection (recorded as `idle_timeout`, where hyper's
//!   own close of one it still holds reads `error: read header from client timeout`).

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use crate::data::io::{ByteCount, OnWake};
use crate::data::sniff::Rewind;
use crate::http::upgrade::Handed;

/// How long an HTTP/1 keep-alive connection stays quiet before it is parked. Parking and
/// waking again cost a new hyper connection (two buffers, about a microsecond); a client
/// that reuses its connection within a second pays nothing.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// When to park, and how long a parked connection waits for a request.
#[derive(Debug, Clone, Copy)]
pub struct Parking {
    pub after: Duration,
    /// `request_header_timeout`: hyper closes an idle keep-alive connection after it; a parked
    /// one is closed when it has run out since the connection went quiet.
    pub idle_timeout: Duration,
}

/// How a served HTTP/1 connection ended.
#[derive(Debug)]
pub enum Ended {
    /// The client or hyper closed it.
    Closed,
    /// It switched protocols: its socket went to a tunnel.
    Upgraded,
    /// A parked connection had no request within `request_header_timeout`.
    IdleTimeout,
    /// hyper ended it with an error, or reading a parked connection's next bytes failed.
    Failed(String),
    /// The revocation watcher resolved, with its reason.
    Revoked(String),
}

/// Serves one HTTP/1 connection until it ends, parking it while it is idle. `draining` is set
/// (and the connection closes after its exchange, or at once if parked) when `drained`
/// resolves. Returns how it ended and how many times it was parked.
#[allow(clippy::too_many_arguments)]
pub async fn serve<I, S, B, D, R>(
    builder: &http1::Builder,
    io: I,
    service: S,
    handed: &Arc<std::sync::Mutex<Option<Handed>>>,
    parking: Parking,
    bytes: &ByteCount,
    draining: &mut bool,
    drained: &mut OnWake<D>,
    revoke: &mut OnWake<R>,
) -> (Ended, u32)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Unpin + Send + 'static,
    S::Future: Unpin + Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    D: Future<Output = ()>,
    R: Future<Output = String>,
{
    let exchanges = Arc::new(Exchanges::default());
    let service = Tracked {
        inner: service,
        exchanges: exchanges.clone(),
    };
    let mut io = Rewind::new(Bytes::new(), io);
    let mut parks = 0;
    loop {
        // Boxed: the parked connection's task keeps no room for hyper's connection state.
        let mut conn = Box::new(builder.serve_connection(TokioIo::new(io), service.clone()));
        if *draining {
            Pin::new(&mut *conn).graceful_shutdown();
        }
        let since_park = exchanges.counts().0;
        let mut seen = (bytes.get(), exchanges.counts());
        // Set once hyper was told to close a connection that was not idle: it ends after its
        // exchange and is not parked.
        let mut closing = false;
        let tick = tokio::time::sleep(parking.after);
        tokio::pin!(tick);
        loop {
            tokio::select! {
                // hyper's own end, as its connection future does it: what it has to send is
                // flushed, then the socket shut (`poll_without_shutdown` would hand the socket
                // back with the end of a response still in hyper's buffer).
                served = &mut *conn => {
                    // hyper wrote a 101 and stopped: the socket (and what hyper read past the
                    // request) goes to the tunnel waiting for it.
                    let waiting = handed.lock().ok().and_then(|mut h| h.take()).filter(|tx| !tx.is_closed());
                    if let (Ok(()), Some(tx)) = (&served, waiting) {
                        let parts = (*conn).into_parts();
                        let io = Rewind::new(parts.read_buf, parts.io.into_inner());
                        let _ = tx.send(Box::new(io));
                        return (Ended::Upgraded, parks);
                    }
                    let ended = match served {
                        Ok(()) => Ended::Closed,
                        Err(e) => Ended::Failed(e.to_string()),
                    };
                    return (ended, parks);
                }
                () = &mut *drained, if !*draining => {
                    *draining = true;
                    Pin::new(&mut *conn).graceful_shutdown();
                }
                reason = &mut *revoke => return (Ended::Revoked(reason), parks),
                () = &mut tick, if !*draining && !closing => {
                    let now = (bytes.get(), exchanges.counts());
                    let (started, finished) = now.1;
                    if now == seen
                        && started == finished
                        && started > since_park
                        && exchanges.last_leaves_idle.load(Relaxed)
                        && !bytes.write_waits()
                    {
                        Pin::new(&mut *conn).graceful_shutdown();
                        // An idle connection is done at once; any other goes on.
                        match poll_fn(|cx| Poll::Ready(conn.poll_without_shutdown(cx))).await {
                            Poll::Ready(Ok(())) => break,
                            Poll::Ready(Err(e)) => return (Ended::Failed(e.to_string()), parks),
                            Poll::Pending => closing = true,
                        }
                    }
                    seen = now;
                    tick.as_mut().reset(Instant::now() + parking.after);
                }
            }
        }
        parks += 1;
        let parked_at = Instant::now();
        let hyper::server::conn::http1::Parts {
            io: parked, read_buf, ..
        } = (*conn).into_parts();
        let (left, mut inner) = parked.into_inner().into_parts();
        let unread = join(read_buf, left);
        let unread = if unread.is_empty() {
            // Dropped: even empty, hyper's `read_buf` keeps its whole read buffer alive.
            // The rest of the idle timeout: it began when the connection went quiet, at least
            // `after` ago.
            let deadline = parked_at + parking.idle_timeout.saturating_sub(parking.after);
            drop(unread);
            tokio::select! {
                read = first_bytes(&mut inner) => match read {
                    Ok(b) if b.is_empty() => {
                        close(inner).await;
                        return (Ended::Closed, parks);
                    }
                    Ok(b) => b,
                    Err(e) => return (Ended::Failed(e.to_string()), parks),
                },
                () = tokio::time::sleep_until(deadline) => {
                    close(inner).await;
                    return (Ended::IdleTimeout, parks);
                }
                () = &mut *drained, if !*draining => {
                    *draining = true;
                    close(inner).await;
                    return (Ended::Closed, parks);
                }
                reason = &mut *revoke => return (Ended::Revoked(reason), parks),
            }
        } else {
            unread
        };
        io = Rewind::new(unread, inner);
    }
}

/// Shuts the socket (a TLS close_notify, a FIN), as hyper would have; a client that reads
/// nothing cannot hold the task for long.
async fn close<S: AsyncWrite + Unpin>(mut io: S) {
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
}

/// Whether hyper is idle, every byte of the request read, once this request's response is
/// sent: HTTP/1.1 with no body, keeping the connection alive, upgrading nothing.
fn leaves_idle(req: &Request<Incoming>) -> bool {
    // The header lookups last: a request with a body is settled without them.
    let closes = || {
        req.headers().get_all(http::header::CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        })
    };
    req.version() == http::Version::HTTP_11
        && req.body().is_end_stream()
        && req.method() != http::Method::CONNECT
        && !req.headers().contains_key(http::header::UPGRADE)
        && !closes()
}

/// Bytes hyper read but did not parse, then any of the last prefix it did not read.
fn join(read_buf: Bytes, left: Bytes) -> Bytes {
    if left.is_empty() {
        return read_buf;
    }
    if read_buf.is_empty() {
        return left;
    }
    let mut b = BytesMut::with_capacity(read_buf.len() + left.len());
    b.extend_from_slice(&read_buf);
    b.extend_from_slice(&left);
    b.freeze()
}

/// The client's next bytes (empty at EOF). The buffer lives only during each poll, so a
/// parked connection's task holds none.
fn first_bytes<S: AsyncRead + Unpin>(io: &mut S) -> impl Future<Output = io::Result<Bytes>> + '_ {
    poll_fn(move |cx| {
        let mut buf = [0u8; 1024];
        let mut rb = ReadBuf::new(&mut buf);
        ready!(Pin::new(&mut *io).poll_read(cx, &mut rb))?;
        Poll::Ready(Ok(Bytes::copy_from_slice(rb.filled())))
    })
}

/// Requests handed to the service, and those whose response is gone (sent, or never made).
#[derive(Debug, Default)]
struct Exchanges {
    started: AtomicU64,
    finished: AtomicU64,
    /// The last request leaves hyper idle once answered ([`leaves_idle`]).
    last_leaves_idle: AtomicBool,
}

impl Exchanges {
    fn counts(&self) -> (u64, u64) {
        (self.started.load(Relaxed), self.finished.load(Relaxed))
    }
}

/// Counts its exchange finished when dropped: with the response body once hyper is done with
/// it, or with the service's future if that never answered.
#[derive(Debug)]
struct Finish(Arc<Exchanges>);

impl Drop for Finish {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Relaxed);
    }
}

/// The service, counting its exchanges.
#[derive(Debug, Clone)]
struct Tracked<S> {
    inner: S,
    exchanges: Arc<Exchanges>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Tracking<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.exchanges.last_leaves_idle.store(leaves_idle(&req), Relaxed);
        self.exchanges.started.fetch_add(1, Relaxed);
        Tracking {
            inner: self.inner.call(req),
            finish: Some(Finish(self.exchanges.clone())),
        }
    }
}

pin_project_lite::pin_project! {
    /// The service's future; its response's body carries the [`Finish`].
    struct Tracking<F> {
        #[pin]
        inner: F,
        finish: Option<Finish>,
    }
}

impl<F, B, E> Future for Tracking<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answered = ready!(this.inner.poll(cx));
        let finish = this.finish.take();
        Poll::Ready(answered.map(|r| {
            r.map(|inner| TrackedBody {
                inner,
                _finish: finish,
            })
        }))
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its exchange finished when hyper drops it.
    struct TrackedBody<B> {
        #[pin]
        inner: B,
        _finish: Option<Finish>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body_util::Full;
    use hyper_util::rt::TokioTimer;
    use std::sync::Mutex;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    const AFTER: Duration = Duration::from_millis(150);

    type Paths = Arc<Mutex<Vec<String>>>;

    /// Larger than loopback's socket buffers.
    const BIG: usize = 16 << 20;

    /// Serves one connection with `parking`; the service answers each request with its path
    /// (`/big`: [`BIG`] bytes) after `delay`, without reading its body (held unread for a while). Returns the client's socket, the paths the
    /// service saw, and the server's end. `drain` resolves the drain watcher.
    async fn start(
        parking: Parking,
        delay: Duration,
        drain: tokio::sync::oneshot::Receiver<()>,
    ) -> (TcpStream, Paths, tokio::task::JoinHandle<(Ended, u32, bool)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let paths = Paths::default();
        let seen = paths.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            seen.lock().unwrap().push(req.uri().path().to_owned());
            let body = match req.uri().path() {
                "/big" => Full::new(Bytes::from(vec![b'x'; BIG])),
                path => Full::new(Bytes::from(path.to_owned())),
            };
            // The request's body is kept a while, unread, as a proxy's upstream may.
            let unread = req.into_body();
            tokio::spawn(async move {
                tokio::time::sleep(AFTER * 6).await;
                drop(unread);
            });
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok::<_, std::convert::Infallible>(Response::new(body))
            })
        });
        let server = tokio::spawn(async move {
            let (io, bytes) = crate::data::io::counted(tcp, None);
            let mut b = http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(parking.idle_timeout);
            let mut draining = false;
            let mut drained = OnWake::new(async move {
                if drain.await.is_err() {
                    std::future::pending::<()>().await;
                }
            });
            let mut revoke = OnWake::new(std::future::pending::<String>());
            let (ended, parks) = serve(
                &b,
                io,
                service,
                &Arc::default(),
                parking,
                &bytes,
                &mut draining,
                &mut drained,
                &mut revoke,
            )
            .await;
            (ended, parks, draining)
        });
        (client, paths, server)
    }

    fn parking(idle_timeout: Duration) -> Parking {
        Parking {
            after: AFTER,
            idle_timeout,
        }
    }

    /// Reads one response (head and its Content-Length body); returns the head and the body.
    async fn response(c: &mut TcpStream) -> (String, String) {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        // The head's end and the body's length, once the head is in.
        let mut framed: Option<(usize, usize)> = None;
        loop {
            if let Some((end, len)) = framed
                && got.len() >= end + len
            {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let body = String::from_utf8_lossy(&got[end..end + len]).into_owned();
                return (head, body);
            }
            let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(
                n > 0,
                "EOF before a whole response: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
            if framed.is_none()
                && let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n")
            {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse().unwrap());
                framed = Some((end + 4, len));
            }
        }
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: app\r\n\r\n")
    }

    #[tokio::test]
    async fn an_idle_connection_is_parked_and_serves_its_next_requests() {
        let (_tx, rx) = tokio::sync::oneshot::channel();
        let (mut c, paths, server) = start(parking(Duration::from_secs(10)), Duration::ZERO, rx).await;
        c.write_all(get("/a").as_bytes()).await.unwrap();
        assert_eq!(response(&mut c).await.1, "/a");
        tokio::time::sleep(AFTER * 4).await;
        // Parked once; the next request wakes it.
        c.write_all(get("/b").as_bytes()).await.unwrap();
        assert_eq!(response(&mut c).await.1, "/b");
        // Half a request head, then quiet: parked with those bytes, which the next hyper
        // connection reads first.
        let next = get("/c");
        let (start, rest) = next.split_at(9);
        c.write_all(start.as_bytes()).await.unwrap();
        tokio::time::sleep(AFTER * 4).await;
        c.write_all(rest.as_bytes()).await.unwrap();
        let (head, body) = response(&mut c).await;
        assert_eq!(body, "/c");
        assert!(!head.contains("connection: close"), "{head}");
        drop(c);
        let (ended, parks, _) = server.await.unwrap();
        assert!(matches!(ended, Ended::Closed), "{ended:?}");
        assert_eq!(parks, 2);
        assert_eq!(*paths.lock().unwrap(), ["/a", "/b", "/c"]);
    }

    #[tokio::test]
    async fn a_slow_answer_keeps_its_connection_as_it_is() {
        let (_tx, rx) = tokio::sync::oneshot::channel();
        let (mut c, paths, server) = start(parking(Duration::from_secs(10)), AFTER * 5, rx).await;
        c.write_all(get("/slow").as_bytes()).await.unwrap();
        let (head, body) = response(&mut c).await;
        assert_eq!(body, "/slow");
        assert!(!head.contains("connection: close"), "{head}");
        c.write_all(get("/again").as_bytes()).await.unwrap();
        assert_eq!(response(&mut c).await.1, "/again");
        drop(c);
        let (ended, parks, _) = server.await.unwrap();
        assert!(matches!(ended, Ended::Closed), "{ended:?}");
        assert_eq!(parks, 0, "parked while an answer was on its way");
        assert_eq!(paths.lock().unwrap().len(), 2);
    }

    /// A client that stops reading in the middle of a large response is a slow reader, not an
    /// idle one: its connection is left alone and stays open for its next request.
    #[tokio::test]
    async fn a_slow_reader_keeps_its_connection() {
        let (_tx, rx) = tokio::sync::oneshot::channel();
        let (mut c, paths, server) = start(parking(Duration::from_secs(10)), Duration::ZERO, rx).await;
        c.write_all(get("/big").as_bytes()).await.unwrap();
        tokio::time::sleep(AFTER * 5).await;
        let (head, body) = response(&mut c).await;
        assert_eq!(body.len(), BIG);
        assert!(!head.contains("connection: close"), "{head}");
        c.write_all(get("/a").as_bytes()).await.unwrap();
        assert_eq!(response(&mut c).await.1, "/a");
        drop(c);
        let (ended, _, _) = server.await.unwrap();
        assert!(matches!(ended, Ended::Closed), "{ended:?}");
        assert_eq!(*paths.lock().unwrap(), ["/big", "/a"]);
    }

    /// The app answers before reading a request's body, and the client goes quiet in the
    /// middle of the body (with or without `Connection: close`, which makes hyper's answer
    /// its last): the connection is never parked, and the rest of the body is never read as
    /// a request.
    #[tokio::test]
    async fn the_unread_rest_of_a_body_is_never_read_as_a_request() {
        unread_rest("").await;
        unread_rest("Connection: close\r\n").await;
    }

    async fn unread_rest(header: &str) {
        let (_tx, rx) = tokio::sync::oneshot::channel();
        let (mut c, paths, server) = start(parking(Duration::from_secs(10)), Duration::ZERO, rx).await;
        let smuggled = get("/smuggled");
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: app\r\n{header}Content-Length: {}\r\n\r\n",
            4 + smuggled.len()
        );
        c.write_all(head.as_bytes()).await.unwrap();
        c.write_all(b"data").await.unwrap();
        assert_eq!(response(&mut c).await.1, "/upload");
        tokio::time::sleep(AFTER * 4).await;
        let _ = c.write_all(smuggled.as_bytes()).await;
        // hyper reads those bytes as the body they are, or closes; nothing answers them.
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(AFTER * 8, c.read_to_end(&mut rest)).await;
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
        drop(c);
        let (ended, parks, _) = tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(parks, 0, "{ended:?}");
        assert_eq!(*paths.lock().unwrap(), ["/upload"]);
    }

    /// A last response (`Connection: close`) larger than the socket buffers, answered before
    /// the request's body was read, to a client that reads only later: it arrives whole
    /// before the close.
    #[tokio::test]
    async fn a_last_response_is_flushed_whole_before_the_close() {
        let (_tx, rx) = tokio::sync::oneshot::channel();
        let (mut c, _, server) = start(parking(Duration::from_secs(10)), Duration::ZERO, rx).await;
        let head = "POST /big HTTP/1.1\r\nHost: app\r\nConnection: close\r\nContent-Length: 4\r\n\r\n";
        c.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(AFTER * 2).await;
        c.write_all(b"data").await.unwrap();
        // The service drops the unread body meanwhile, so hyper is done but for the flush.
        tokio::time::sleep(AFTER * 8).await;
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut all))
            .await
            .unwrap()
            .unwrap();
        let end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(all.len() - end, BIG, "{}", String::from_utf8_lossy(&all[..end]));
        let (ended, parks, _) = server.await.unwrap();
        assert!(matches!(ended, Ended::Closed) && parks == 0, "{ended:?} {parks}");
    }

    #[tokio::test]
    async fn a_parked_connection_closes_at_the_idle_timeout_or_on_drain() {
        let (_tx, rx) = tokio::sync::oneshot::channel();
        let (mut c, _, server) = start(parking(Duration::from_secs(1)), Duration::ZERO, rx).await;
        let began = std::time::Instant::now();
        c.write_all(get("/a").as_bytes()).await.unwrap();
        response(&mut c).await;
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        let took = began.elapsed();
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_millis(2500),
            "closed after {took:?}"
        );
        let (ended, parks, draining) = server.await.unwrap();
        assert!(
            matches!(ended, Ended::IdleTimeout) && parks == 1 && !draining,
            "{ended:?} {parks}"
        );

        let (tx, rx) = tokio::sync::oneshot::channel();
        let (mut c, _, server) = start(parking(Duration::from_secs(10)), Duration::ZERO, rx).await;
        c.write_all(get("/a").as_bytes()).await.unwrap();
        response(&mut c).await;
        tokio::time::sleep(AFTER * 4).await;
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        let (ended, parks, draining) = server.await.unwrap();
        assert!(
            matches!(ended, Ended::Closed) && parks == 1 && draining,
            "{ended:?} {parks}"
        );
    }
}
