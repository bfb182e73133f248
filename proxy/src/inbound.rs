//! The inbound path, in order: accept, mTLS handshake with our SVID (the peer must present
//! one), then by protocol: opaque TCP gets the connection policy and bytes both ways to the
//! app; HTTP gets a connection-level check, then the policy per request, identity headers and
//! pooled forwarding to the app. Audit records along the way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use ward_certs::SpiffeId;
use ward_filters::{Decision, Peer, Policy, normalize_path};

use crate::audit::{ConnInfo, Direction};
use crate::config::{AppProtocol, Mtls, Protocol};
use crate::forward::{self, Shared};
use crate::http::{self as h, Counted, HeaderView, PendingRecord, ServiceResult};
use crate::pool::AppClient;
use crate::sniff::{self, Detected};
use crate::tls::handshake_failure;

/// One inbound listener, resolved from config.
#[derive(Debug)]
pub struct Inbound {
    pub name: Arc<str>,
    pub forward: SocketAddr,
    pub protocol: Protocol,
    pub mtls: Mtls,
    pub policy: Arc<Policy>,
    pub handshake_timeout: Duration,
    pub detect_timeout: Duration,
    /// Set `x-forwarded-client-cert` toward the app (the caller's copy is always removed).
    pub xfcc: bool,
    pub app_protocol: AppProtocol,
    pub app: AppClient,
}

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Accepts until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    ib: Arc<Inbound>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, src)) => {
                    tokio::spawn(handle(ib.clone(), shared.clone(), tcp, src));
                }
                Err(e) => forward::accept_error(&ib.name, e).await,
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// Who the peer of one connection is, as the L7 path needs it.
#[derive(Clone)]
struct PeerCtx {
    id: Option<SpiffeId>,
    /// Hex SHA-256 of the peer's leaf, for XFCC.
    leaf_sha256: Option<String>,
}

impl PeerCtx {
    fn peer(&self) -> Peer<'_> {
        match &self.id {
            Some(id) => Peer::Authenticated(id.as_str()),
            None => Peer::Unauthenticated,
        }
    }
}

async fn handle(ib: Arc<Inbound>, shared: Arc<Shared>, tcp: TcpStream, src: SocketAddr) {
    let started = Instant::now();
    let dst = tcp.local_addr().unwrap_or(src);
    let _ = tcp.set_nodelay(true);
    let mut info = ConnInfo {
        listener: ib.name.clone(),
        direction: Direction::Inbound,
        src,
        dst,
        peer_id: None,
        peer_serial: None,
    };
    let Some(tls) = shared.store.current() else {
        shared.audit.write(&info.decided(
            Decision::Deny,
            None,
            "no_identity: ward has no SVID loaded yet".into(),
        ));
        return;
    };

    if ib.mtls == Mtls::Permissive && !looks_like_tls(&tcp, ib.handshake_timeout).await {
        let plain = PeerCtx {
            id: None,
            leaf_sha256: None,
        };
        let detected = match ib.protocol {
            Protocol::Tcp => Detected::Opaque,
            Protocol::Http => Detected::Http1,
            Protocol::Auto => sniff::peek_tcp(&tcp, ib.detect_timeout).await,
        };
        serve_detected(tcp, detected, ib, shared, info, plain, started).await;
        return;
    }

    let server_config = match ib.protocol {
        Protocol::Tcp => tls.server.clone(),
        Protocol::Http | Protocol::Auto => tls.server_http.clone(),
    };
    let accept = TlsAcceptor::from(server_config).accept(tcp);
    let stream = match tokio::time::timeout(ib.handshake_timeout, accept).await {
        Err(_) => {
            let detail = format!("no handshake within {:?}", ib.handshake_timeout);
            shared.audit.write(&info.handshake_failed("timeout", &detail));
            return;
        }
        Ok(Err(e)) => {
            let (reason, detail) = handshake_failure(&e);
            tracing::debug!(listener = %ib.name, %src, reason, %detail, "inbound handshake failed");
            shared.audit.write(&info.handshake_failed(reason, &detail));
            return;
        }
        Ok(Ok(s)) => s,
    };

    let (_, conn) = stream.get_ref();
    let leaf = conn.peer_certificates().and_then(|c| c.first());
    let (Some(peer), Some(leaf)) = (forward::peer_svid(conn.peer_certificates()), leaf) else {
        // The verifier accepted the chain, so this cannot happen; refuse rather than guess.
        shared
            .audit
            .write(&info.handshake_failed("no_peer_id", "peer SPIFFE ID unavailable after handshake"));
        return;
    };
    let ctx = PeerCtx {
        id: Some(peer.id.clone()),
        leaf_sha256: ib.xfcc.then(|| h::cert_sha256(leaf)),
    };
    info.peer_id = Some(peer.id.shared());
    info.peer_serial = Some(peer.serial);
    match (ib.protocol, conn.alpn_protocol()) {
        (Protocol::Tcp, _) => serve_detected(stream, Detected::Opaque, ib, shared, info, ctx, started).await,
        (_, Some(b"h2")) => serve_detected(stream, Detected::Http2, ib, shared, info, ctx, started).await,
        (_, Some(_)) | (Protocol::Http, None) => {
            serve_detected(stream, Detected::Http1, ib, shared, info, ctx, started).await
        }
        (Protocol::Auto, None) => {
            let (detected, io) = sniff::read_prefix(stream, ib.detect_timeout).await;
            serve_detected(io, detected, ib, shared, info, ctx, started).await
        }
    }
}

/// Serves an identified connection as opaque TCP or HTTP.
async fn serve_detected<S>(
    mut io: S,
    detected: Detected,
    ib: Arc<Inbound>,
    shared: Arc<Shared>,
    info: ConnInfo,
    ctx: PeerCtx,
    started: Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if detected == Detected::Opaque {
        let verdict = ib.policy.evaluate_connection(ctx.peer());
        shared.audit.write(&info.authz(&verdict));
        if verdict.decision == Decision::Deny {
            let _ = io.shutdown().await;
            return;
        }
        forward::to_app(io, ib.forward, &shared, &info, started).await;
        return;
    }
    // HTTP: refuse at once a peer no request of which could be allowed.
    if !ib.policy.may_allow_requests(ctx.peer()) {
        let verdict = ib.policy.evaluate_connection(ctx.peer());
        shared.audit.write(&info.authz(&verdict));
        let _ = io.shutdown().await;
        return;
    }
    let info = Arc::new(info);
    let service = {
        let (ib, shared, info, ctx) = (ib.clone(), shared.clone(), info.clone(), ctx.clone());
        service_fn(move |req| request(ib.clone(), shared.clone(), info.clone(), ctx.clone(), req))
    };
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let served = if detected == Detected::Http2 {
        builder
            .http2_only()
            .serve_connection(TokioIo::new(io), service)
            .await
    } else {
        builder.serve_connection(TokioIo::new(io), service).await
    };
    if let Err(e) = served {
        tracing::debug!(listener = %ib.name, src = %info.src, error = %e, "inbound HTTP connection ended with an error");
    }
}

/// One request: normalize, authorize, set identity headers, forward to the app.
async fn request(
    ib: Arc<Inbound>,
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    ctx: PeerCtx,
    req: Request<Incoming>,
) -> ServiceResult {
    let started = Instant::now();
    let authority = h::authority(&req);
    let method = req.method().as_str().to_owned();
    let raw_path = req.uri().path().to_owned();
    let path = match normalize_path(&raw_path) {
        Ok(p) => p.into_owned(),
        Err(e) => {
            let mut r = info.decided(Decision::Deny, None, format!("bad_path: {e}"));
            r.kind = crate::audit::Kind::Request;
            r.method = Some(method);
            r.path = Some(raw_path);
            r.authority = authority;
            let pending = PendingRecord::new(r, shared.audit.clone(), started, Arc::new(AtomicU64::new(0)));
            return Ok(pending.attach(h::text(StatusCode::BAD_REQUEST, "ward: bad request path\n")));
        }
    };
    let verdict = ib.policy.evaluate_request(
        ctx.peer(),
        &ward_filters::Request {
            method: &method,
            path: &path,
            headers: &HeaderView(req.headers()),
        },
    );
    let bytes_in = Arc::new(AtomicU64::new(0));
    let record = info.request(&verdict, &method, &path, authority.as_deref());
    let pending = PendingRecord::new(record, shared.audit.clone(), started, bytes_in.clone());
    if verdict.decision == Decision::Deny {
        return Ok(pending.attach(h::text(StatusCode::FORBIDDEN, "ward: access denied\n")));
    }

    let h2 = match ib.app_protocol {
        AppProtocol::Http1 => false,
        AppProtocol::Http2 => true,
        AppProtocol::Auto => h::is_grpc(&req),
    };
    let (mut parts, body) = req.into_parts();
    h::strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(&h::XFCC);
    if let (true, Some(id), Some(hash)) = (ib.xfcc, &ctx.id, &ctx.leaf_sha256) {
        let by = shared
            .store
            .current()
            .map(|t| t.identity.id().to_string())
            .unwrap_or_default();
        if let Some(v) = h::xfcc_value(&by, hash, id.as_str()) {
            parts.headers.insert(h::XFCC.clone(), v);
        }
    }
    let target = authority.clone().unwrap_or_else(|| ib.forward.to_string());
    let Some(uri) = h::absolute_uri(&target, &path, parts.uri.query()) else {
        return Ok(pending.attach(h::text(StatusCode::BAD_REQUEST, "ward: bad request target\n")));
    };
    parts.uri = uri;
    parts.version = if h2 {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    let req = Request::from_parts(parts, Counted::new(body, bytes_in));
    match ib.app.send(req, h2).await {
        Ok(resp) => {
            let mut resp = resp.map(http_body_util::Either::Left);
            h::strip_hop_by_hop(resp.headers_mut());
            Ok(pending.attach(resp))
        }
        Err(e) => {
            tracing::warn!(listener = %ib.name, app = %ib.forward, error = %e, "cannot reach the app");
            Ok(pending.attach(h::text(StatusCode::BAD_GATEWAY, "ward: the app is unavailable\n")))
        }
    }
}

/// In permissive mode: does the peer open with a TLS handshake record? Waits at most
/// `within` for the first byte; silence counts as plaintext.
async fn looks_like_tls(tcp: &TcpStream, within: Duration) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(within, tcp.peek(&mut first)).await,
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE
    )
}
