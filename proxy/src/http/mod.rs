//! What HTTP forwarding shares in both directions: hop-by-hop headers (RFC 9110 §7.6.1),
//! request targets, short error responses, identity headers, and bodies that count their bytes
//! and write the request's record when they end.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use std::future::Future;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::audit::{ConnInfo, Record};
use crate::data::tcp::Shared;
use crate::data::guard::OnWake;
use crate::metrics::ListenerMetrics;

mod park;

/// Response bodies ward sends: the upstream's, streamed, or a short one of its own.
pub type OutBody = Either<crate::pools::Upstream, Full<Bytes>>;

/// The XFCC header ward sets toward the app (and removes from every caller).
pub static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// The identity headers ward sets toward the app. A caller's copy is always removed, in
/// every spelling an app may read as the same name (see [`sanitize_underscores`]).
static IDENTITY_HEADERS: [&HeaderName; 1] = [&XFCC];

/// What to do with request headers whose names contain `_` (`underscore_headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Underscores {
    /// Drop them (the default, as nginx and Envoy do): CGI, WSGI and Rack servers read
    /// `x_forwarded_client_cert` as the same variable as `x-forwarded-client-cert`.
    #[default]
    Drop,
    /// Keep them, except those that name an identity header ward sets once `_` is read as `-`.
    Keep,
    /// Answer the request 400.
    Reject,
}

/// Applies `mode` to the request headers whose names contain `_`. Whatever the mode, a name
/// that equals an identity header ward sets once `_` is read as `-` (names are lowercase
/// already) never passes. `Err` names the header a `Reject` refuses. Allocates only when
/// such a header is present.
pub fn sanitize_underscores(headers: &mut HeaderMap, mode: Underscores) -> Result<(), HeaderName> {
    if !headers.keys().any(|n| n.as_str().contains('_')) {
        return Ok(());
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .cloned()
        .collect();
    for name in names {
        let spoofs = IDENTITY_HEADERS.iter().any(|id| {
            let (a, b) = (name.as_str().as_bytes(), id.as_str().as_bytes());
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y || (*x == b'_' && *y == b'-'))
        });
        match mode {
            Underscores::Keep if !spoofs => {}
            Underscores::Reject => return Err(name),
            Underscores::Keep | Underscores::Drop => {
                headers.remove(&name);
            }
        }
    }
    Ok(())
}

/// A short text response of ward's own.
pub fn text(status: StatusCode, body: &'static str) -> Response<OutBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(body.as_bytes()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The headers that are hop-by-hop by name (RFC 9110 section 7.6.1, and the legacy
/// `keep-alive` and `proxy-connection`); `TE` last, as it is kept when it says `trailers`.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
];

/// Removes hop-by-hop headers: those named in `Connection`, and the fixed set. `te: trailers`
/// is end-to-end in practice (gRPC needs it) and is kept.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Which of them the message has, from one pass over its names: most requests have none,
    // and most responses only `connection`. Removing the whole set unconditionally cost about
    // 2,700 instructions a message (callgrind).
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0
        && let header::Entry::Occupied(entry) = headers.entry(header::CONNECTION)
    {
        let (first, more) = {
            let mut values = entry.remove_entry_mult().1;
            let first = values.next();
            // Nearly always one value: an empty Vec does not allocate.
            (first, values.collect::<Vec<HeaderValue>>())
        };
        for value in first.iter().chain(&more) {
            for token in value.to_str().unwrap_or_default().split(',') {
                let token = token.trim();
                // A name that is not a valid header name matches nothing.
                if !token.is_empty() && !token.eq_ignore_ascii_case("te") {
                    headers.remove(token);
                }
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate().take(7).skip(1) {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if present & (1 << 7) != 0 {
        let te_trailers = headers.get_all(header::TE).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")))
        });
        headers.remove(header::TE);
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
}

/// The request's authority: from an absolute-form target or `:authority`, else `Host`.
pub fn authority<B>(req: &Request<B>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| req.headers().get(header::HOST)?.to_str().ok().map(str::to_owned))
}

/// `http://<authority><path>?<query>`: the absolute form hyper's clients want, with the query
/// of `original`, the request's target. `path` is the normalized path, so the app sees what
/// the policy saw. The authority (which may come from a caller's Host header) is parsed on its
/// own, so it can never smuggle in a path or query.
pub fn absolute_uri(authority: String, path: &str, original: &Uri) -> Option<Uri> {
    let authority = http::uri::Authority::from_maybe_shared(Bytes::from(authority)).ok()?;
    let pq = match original.path_and_query() {
        // Normalizing changed nothing (the usual case): the target's own bytes, shared. Not
        // for a target with an empty path (`http://h?x`): its `path()` says `/`, its bytes not.
        Some(pq) if pq.path() == path && pq.as_str().starts_with(path) => pq.clone(),
        _ => {
            let pq = match original.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_owned(),
            };
            let pq = http::uri::PathAndQuery::from_maybe_shared(Bytes::from(pq)).ok()?;
            if pq.path() != path {
                return None;
            }
            pq
        }
    };
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(pq)
        .build()
        .ok()
}

/// `By=<ward's ID>;Hash=<hex SHA-256 of the peer's leaf>;URI=<peer ID>` (Envoy's format).
pub fn xfcc_value(by: &str, peer_leaf_sha256: &str, peer_id: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("By={by};Hash={peer_leaf_sha256};URI={peer_id}")).ok()
}

/// Hex SHA-256 of a certificate's DER.
pub fn cert_sha256(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    ward_certs::svid::hex(digest.as_ref())
}

/// Policy header lookups over an `http::HeaderMap`.
pub struct HeaderView<'a>(pub &'a HeaderMap);

impl ward_filters::Headers for HeaderView<'_> {
    fn count(&self, name: &str, value: &[u8]) -> (usize, usize) {
        self.0.get_all(name).iter().fold((0, 0), |(t, e), v| {
            (t + 1, e + usize::from(v.as_bytes() == value))
        })
    }
}

/// Whether a request is gRPC (which needs HTTP/2 to the app), by its headers.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

pin_project_lite::pin_project! {
    /// A body that counts the bytes of its data frames into a shared counter.
    pub struct Counted<B> {
        #[pin]
        inner: B,
        count: Arc<AtomicU64>,
    }
}

impl<B> Counted<B> {
    pub fn new(inner: B, count: Arc<AtomicU64>) -> Self {
        Counted { inner, count }
    }
}

impl<B: Body<Data = Bytes>> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The record of one request, written once when its response body ends or is dropped.
pub struct PendingRecord {
    record: Option<Record>,
    shared: Arc<Shared>,
    metrics: Arc<ListenerMetrics>,
    started: Instant,
    bytes_in: Arc<AtomicU64>,
    bytes_out: Arc<AtomicU64>,
}

impl PendingRecord {
    pub fn new(
        record: Record,
        shared: Arc<Shared>,
        metrics: Arc<ListenerMetrics>,
        started: Instant,
        bytes_in: Arc<AtomicU64>,
    ) -> Self {
        PendingRecord {
            record: Some(record),
            shared,
            metrics,
            started,
            bytes_in,
            bytes_out: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Writes the record now, with `status`.
    pub fn finish(mut self, status: StatusCode) {
        self.write(status.as_u16());
    }

    fn write(&mut self, status: u16) {
        if let Some(mut r) = self.record.take() {
            r.status = r.status.or(Some(status));
            let (bytes_in, bytes_out) = (
                self.bytes_in.load(Ordering::Relaxed),
                self.bytes_out.load(Ordering::Relaxed),
            );
            r.bytes_in = Some(bytes_in);
            r.bytes_out = Some(bytes_out);
            let elapsed = self.started.elapsed();
            r.duration_ms = Some(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
            self.metrics.request_duration.observe(elapsed.as_secs_f64());
            self.shared.record(&r);
        }
    }

    /// Wraps a response so its body counts bytes out and writes the record when it ends.
    pub fn attach(mut self, resp: Response<OutBody>) -> Response<Logged> {
        if let Some(r) = self.record.as_mut() {
            r.status = Some(resp.status().as_u16());
        }
        let count = self.bytes_out.clone();
        resp.map(|body| Logged {
            inner: Counted::new(body, count),
            pending: Some(self),
        })
    }
}

impl Drop for PendingRecord {
    fn drop(&mut self) {
        // A response dropped before its end (client went away) is still recorded.
        self.write(499);
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts bytes and writes its request's record at the end.
    pub struct Logged {
        #[pin]
        inner: Counted<OutBody>,
        pending: Option<PendingRecord>,
    }
}

impl Body for Logged {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(None) | Poll::Ready(Some(Err(_))) = &polled
            && let Some(mut p) = this.pending.take()
        {
            p.write(0);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// hyper services never fail: every error becomes a response.
pub type ServiceResult = Result<Response<Logged>, Infallible>;

/// Which HTTP a connection speaks, when it is known before the first request is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.1 (ALPN said so, or the first bytes cannot be the HTTP/2 preface).
    H1,
    /// HTTP/2: ALPN `h2`, or the prior-knowledge preface was seen.
    H2,
    /// Either: hyper reads the preface to decide.
    Either,
}

impl From<crate::data::sniff::Detected> for Version {
    fn from(d: crate::data::sniff::Detected) -> Version {
        use crate::data::sniff::Detected;
        match d {
            Detected::Http1 => Version::H1,
            Detected::Http2 => Version::H2,
            Detected::Http | Detected::Opaque | Detected::Silent => Version::Either,
        }
    }
}

/// Serves one HTTP connection until it ends. On drain, in-flight requests finish and the
/// connection closes (`Connection: close` / GOAWAY); when `revoke` resolves, the connection is
/// closed at once with an audit record.
///
/// A connection whose version is known gets hyper's HTTP/1 or HTTP/2 server alone: no
/// version probe in front of every read, and an HTTP/1 connection's state carries no HTTP/2
/// machinery (smaller per idle keep-alive connection).
pub async fn serve_connection<I, S, B>(
    io: I,
    version: Version,
    service: S,
    shared: &Shared,
    info: &ConnInfo,
    metrics: &ListenerMetrics,
    revoke: OnWake<impl Future<Output = String>>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Unpin + Send + 'static,
    S::Future: Unpin + Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let settings = shared.settings();
    // Wire bytes each way, headers included, counted as they pass.
    let started = Instant::now();
    let tally = (metrics.bytes_received.clone(), metrics.bytes_sent.clone());
    let (io, bytes) = crate::data::guard::counted(io, Some(tally));
    let ctx = Drive {
        shared,
        info,
        bytes: &bytes,
        started,
    };
    // Each version's state is boxed on its own, so a connection carries only its own: an idle
    // (parked) HTTP/1 connection a few hundred bytes, not the several KB of the HTTP/2 and
    // auto-detecting servers' futures.
    match version {
        Version::H1 => {
            Box::pin(async move {
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(TokioTimer::new())
                    .header_read_timeout(settings.request_header_timeout);
                let parking = park::Parking {
                    after: park::PARK_AFTER,
                    idle_timeout: settings.request_header_timeout,
                };
                // Served, parked while idle ([`park`]), until it ends.
                let mut revoke = revoke;
                let (mut draining, mut drained) = ctx.drain_watch();
                let (ended, parks) = park::serve(
                    &b,
                    io,
                    service,
                    parking,
                    ctx.bytes,
                    &mut draining,
                    &mut drained,
                    &mut revoke,
                )
                .await;
                ctx.h1_ended(ended, parks, draining, parking);
            })
            .await;
        }
        Version::H2 => {
            Box::pin(async move {
                let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                b.timer(TokioTimer::new()).keep_alive_interval(H2_KEEPALIVE);
                ctx.drive(b.serve_connection(TokioIo::new(io), service), revoke)
                    .await;
            })
            .await;
        }
        Version::Either => {
            Box::pin(async move {
                let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                b.http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(settings.request_header_timeout);
                b.http2()
                    .timer(TokioTimer::new())
                    .keep_alive_interval(H2_KEEPALIVE);
                ctx.drive(b.serve_connection(TokioIo::new(io), service), revoke)
                    .await;
            })
            .await;
        }
    }
}

/// HTTP/2 PINGs on an idle client connection, so a dead peer is noticed.
const H2_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(30);

/// What driving a served connection needs for its records.
struct Drive<'a> {
    shared: &'a Shared,
    info: &'a ConnInfo,
    bytes: &'a crate::data::guard::ByteCount,
    started: Instant,
}

impl Drive<'_> {
    /// The connection's access record, whichever way it ends.
    fn access(&self, outcome: &str) {
        let (read, written) = self.bytes.get();
        self.shared.record(
            &self
                .info
                .access(outcome, Some(read), Some(written), self.started.elapsed()),
        );
    }

    /// The connection was revoked: the deny and the access record.
    fn revoked(&self, reason: &str) {
        let info = self.info;
        tracing::info!(listener = %info.listener, peer = info.peer_id.as_deref(), %reason, "closing a live connection");
        self.shared
            .record(&info.decided(ward_filters::Decision::Deny, None, reason.to_owned()));
        self.access("revoked");
    }

    /// Whether ward is draining now, and a future that resolves once it starts (never if it
    /// already has). Drain and revocation are rare: each is polled when it was woken, not at
    /// every wake-up of the connection.
    fn drain_watch(&self) -> (bool, OnWake<impl Future<Output = ()> + use<>>) {
        let mut drain = self.shared.draining.subscribe();
        let draining = *drain.borrow_and_update();
        let drained = OnWake::new(async move {
            while drain.changed().await.is_ok() {
                if *drain.borrow_and_update() {
                    return;
                }
            }
            // No sender left: no drain will come.
            std::future::pending::<()>().await
        });
        (draining, drained)
    }

    /// The records of an HTTP/1 connection [`park::serve`] ended.
    fn h1_ended(&self, ended: park::Ended, parks: u32, draining: bool, parking: park::Parking) {
        let info = self.info;
        match ended {
            park::Ended::Closed => self.access(if draining { "drained" } else { "closed" }),
            park::Ended::IdleTimeout => self.access(&format!(
                "idle_timeout: no request within {:?}",
                parking.idle_timeout
            )),
            park::Ended::Failed(e) => {
                tracing::debug!(listener = %info.listener, src = %info.src, error = %e, parks, "HTTP connection ended with an error");
                self.access(&format!("error: {e}"));
            }
            park::Ended::Revoked(reason) => self.revoked(&reason),
        }
    }

    async fn drive<C>(&self, conn: C, mut revoke: OnWake<impl Future<Output = String>>)
    where
        C: GracefulConnection,
        C::Error: std::fmt::Display,
    {
        let info = self.info;
        tokio::pin!(conn);
        let (mut draining, mut drained) = self.drain_watch();
        if draining {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                served = conn.as_mut() => {
                    match served {
                        Ok(()) => self.access(if draining { "drained" } else { "closed" }),
                        Err(e) => {
                            tracing::debug!(listener = %info.listener, src = %info.src, error = %e, "HTTP connection ended with an error");
                            self.access(&format!("error: {e}"));
                        }
                    }
                    return;
                }
                () = &mut drained, if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                reason = &mut revoke => {
                    self.revoked(&reason);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_te_trailers_stays() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive, X-Secret"),
        );
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("x-other, bad name, te"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none() && h.get("keep-alive").is_none());
        assert!(
            h.get("x-other").is_none(),
            "a name in a second Connection value was kept"
        );
        assert!(h.get(header::CONNECTION).is_none() && h.get(header::UPGRADE).is_none());
        assert_eq!(h.get(header::TE).map(|v| v.as_bytes()), Some(&b"trailers"[..]));
        assert!(h.get("x-kept").is_some());
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed() {
        for name in [
            "transfer-encoding",
            "upgrade",
            "proxy-authenticate",
            "proxy-authorization",
            "keep-alive",
            "proxy-connection",
            "te",
        ] {
            let mut h = HeaderMap::new();
            h.insert("x-kept", HeaderValue::from_static("1"));
            h.append(HeaderName::from_static(name), HeaderValue::from_static("gzip"));
            strip_hop_by_hop(&mut h);
            assert!(h.get(name).is_none(), "{name} was kept");
            assert_eq!(h.len(), 1, "{name}: {h:?}");
        }
        let mut h = HeaderMap::new();
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn authority_cannot_carry_a_path() {
        let uri = |authority: &str, path: &str, target: &str| {
            absolute_uri(authority.into(), path, &target.parse().unwrap()).map(|u| {
                // What goes on the wire (HTTP/2's `:path`, HTTP/1.1's origin form) is
                // the path and query as they are, not as `Display` would fix them up.
                let pq = u.path_and_query().unwrap().as_str();
                assert!(pq.starts_with(path), "{target}: {pq}");
                u.to_string()
            })
        };
        let absolute = "http://example.org:8080/a?x=1";
        assert_eq!(uri("example.org:8080", "/a", "/a?x=1").as_deref(), Some(absolute));
        // The normalized path replaces the target's; the query stays.
        assert_eq!(
            uri("example.org:8080", "/a", "/b/../a?x=1").as_deref(),
            Some(absolute)
        );
        assert_eq!(
            uri("example.org:8080", "/a", "/./a?x=1").as_deref(),
            Some(absolute)
        );
        assert_eq!(uri("h", "/a", "/%61").as_deref(), Some("http://h/a"));
        assert_eq!(uri("h", "/a", "http://other/a").as_deref(), Some("http://h/a"));
        assert_eq!(uri("h", "/", "http://o?x=1").as_deref(), Some("http://h/?x=1"));
        assert_eq!(uri("h", "/", "/admin/..?x").as_deref(), Some("http://h/?x"));
        for evil in ["h/admin", "h?x", "h#f", "user@h/x", "h /x", ""] {
            let u = absolute_uri(evil.into(), "/ok", &"/ok".parse().unwrap());
            assert!(
                u.is_none() || u.as_ref().is_some_and(|u| u.path() == "/ok"),
                "{evil}: {u:?}"
            );
        }
    }

    #[test]
    fn underscore_headers_never_pass_as_identity_headers() {
        let forged = || {
            let mut h = HeaderMap::new();
            for name in [
                "x_forwarded_client_cert",
                "x-forwarded_client-cert",
                "x_request_id",
            ] {
                h.insert(
                    HeaderName::from_static(name),
                    HeaderValue::from_static("URI=evil"),
                );
            }
            h.insert("x-kept", HeaderValue::from_static("1"));
            h
        };
        let mut h = forged();
        sanitize_underscores(&mut h, Underscores::Drop).unwrap();
        assert_eq!(h.keys().map(|n| n.as_str()).collect::<Vec<_>>(), ["x-kept"]);

        let mut h = forged();
        sanitize_underscores(&mut h, Underscores::Keep).unwrap();
        let mut kept: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        kept.sort_unstable();
        assert_eq!(
            kept,
            ["x-kept", "x_request_id"],
            "keep drops only identity spellings"
        );

        let mut h = forged();
        assert!(sanitize_underscores(&mut h, Underscores::Reject).is_err());
        let mut h = HeaderMap::new();
        h.insert("x-kept", HeaderValue::from_static("1"));
        assert!(sanitize_underscores(&mut h, Underscores::Reject).is_ok());
    }

    #[test]
    fn xfcc_format() {
        let v =
            xfcc_value("spiffe://a/ward", "ab12", "spiffe://a/peer").map(|v| v.to_str().map(str::to_owned));
        assert_eq!(
            v.and_then(Result::ok).as_deref(),
            Some("By=spiffe://a/ward;Hash=ab12;URI=spiffe://a/peer")
        );
    }
}
