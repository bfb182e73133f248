//! The inbound path, in order: accept (within the listener's connection cap), find the app
//! (the configured `forward`, or in a pod the original destination port), mTLS handshake with
//! our SVID (the peer must present one), then by protocol: opaque TCP gets the connection
//! policy and bytes both ways; HTTP gets a connection-level check, then the policy per
//! request, identity headers and pooled forwarding. A live connection is closed when a new
//! bundle or policy no longer admits its peer. Audit records and metrics along the way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use ward_certs::SpiffeId;
use ward_filters::{Decision, Peer, normalize_target};

use crate::audit::{ConnInfo, Direction, Kind};
use crate::config::{AppProtocol, InboundConfig, Mtls, Protocol};
use crate::data::tcp::{self, PeerChain, Shared};
use crate::data::guard::{ConnGuard, Pending, PendingGuard};
use crate::http::{self as h, Counted, HeaderView, PendingRecord, ServiceResult};
use crate::metrics::ListenerMetrics;
use crate::pools::AppClient;
use crate::data::sniff::{self, Detected};
use crate::data::mtls::handshake_failure;

/// One inbound listener, resolved from config. Replaced (not mutated) when a reload changes
/// its spec; policies are looked up by name at use, so a reload reaches live connections.
#[derive(Debug)]
pub struct Inbound {
    pub name: Arc<str>,
    pub spec: InboundConfig,
    pub handshake_timeout: Duration,
    /// Pooled connections to the app, for explicit listeners: one pool per worker shard.
    pub app: Option<Vec<AppClient>>,
    pub metrics: Arc<ListenerMetrics>,
    pub open: Arc<AtomicUsize>,
    /// `max_connections`, or its default for this process's descriptor limit.
    pub max_connections: usize,
    /// Connections per source address still in their handshake (`max_pending_per_source`).
    pub pending: Arc<Pending>,
}

/// Where one connection goes and under which rules.
#[derive(Debug, Clone)]
struct Target {
    /// Where the peer connected: the listener, or in a pod the original destination.
    dst: SocketAddr,
    forward: SocketAddr,
    protocol: Protocol,
    /// The app port, for a transparent listener's per-port policy.
    port: Option<u16>,
}

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Accepts until `stop` flips.
pub async fn serve(
    listener: Arc<TcpListener>,
    ib: Arc<Inbound>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut errors = tcp::AcceptErrors::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, src)) => {
                    errors.ok();
                    let Some(guard) = ConnGuard::admit(&ib.open, Some(ib.max_connections), &shared.open, &ib.metrics) else {
                        tracing::debug!(listener = %ib.name, %src, "refused: max_connections reached");
                        drop(tcp);
                        continue;
                    };
                    let Some(pending) = ib.pending.admit(src.ip(), ib.spec.max_pending_per_source) else {
                        ib.metrics.refused_source.inc();
                        tracing::debug!(listener = %ib.name, %src, "refused: max_pending_per_source handshakes from this address");
                        drop(tcp);
                        continue;
                    };
                    let (ib, shared) = (ib.clone(), shared.clone());
                    crate::data::shards::serve(tcp, move |tcp| handle(ib, shared, tcp, src, guard, pending));
                }
                Err(e) => errors.failed(&ib.name, &e, &shared.metrics).await,
            },
            _ = stop.changed() => return,
        }
    }
}

impl Inbound {
    /// The app and rules for a connection: explicit `forward`, or the original destination.
    fn target(&self, tcp: &TcpStream, shared: &Shared) -> Result<Target, String> {
        let spec = &self.spec;
        if !spec.transparent {
            let forward = spec.forward.ok_or("no forward address")?;
            return Ok(Target {
                dst: tcp.local_addr().map_err(|e| format!("local address: {e}"))?,
                forward,
                protocol: spec.protocol,
                port: None,
            });
        }
        let dst = crate::data::origdst::original_dst(tcp).map_err(|e| format!("no_original_dst: {e}"))?;
        let port = dst.port();
        if shared.settings.load().own_ports.contains(&port) {
            return Err(format!(
                "loop: the original destination {dst} is one of ward's own ports"
            ));
        }
        let o = spec.ports.get(&port);
        // The address the peer dialled (the pod's), not loopback: what the app bound to
        // 127.0.0.1 only stays the pod's own, unless a port or the listener says otherwise.
        let host = o.and_then(|o| o.app_host).or(spec.app_host).unwrap_or(dst.ip());
        Ok(Target {
            dst,
            forward: SocketAddr::new(host, port),
            protocol: o.and_then(|o| o.protocol).unwrap_or(spec.protocol),
            port: Some(port),
        })
    }
}

/// Who the peer of one connection is, as the L7 path needs it.
#[derive(Clone)]
struct PeerCtx {
    id: Option<SpiffeId>,
    /// The XFCC header value for the app (when the listener sets it): who this ward was in
    /// the handshake, the peer's leaf hash and ID. Made once per connection; each request
    /// clones it (a reference count).
    xfcc: Option<HeaderValue>,
    chain: Option<PeerChain>,
}

impl PeerCtx {
    fn peer(&self) -> Peer<'_> {
        match &self.id {
            Some(id) => Peer::Authenticated(id.as_str()),
            None => Peer::Unauthenticated,
        }
    }
}

async fn handle(
    ib: Arc<Inbound>,
    shared: Arc<Shared>,
    tcp: TcpStream,
    src: SocketAddr,
    _guard: ConnGuard,
    pending: PendingGuard,
) {
    let started = Instant::now();
    let local = tcp.local_addr().unwrap_or(src);
    let _ = tcp.set_nodelay(true);
    let mut info = ConnInfo {
        listener: ib.name.clone(),
        direction: Direction::Inbound,
        src,
        dst: local,
        peer_id: None,
        peer_serial: None,
    };
    let target = match ib.target(&tcp, &shared) {
        Ok(t) => t,
        Err(reason) => {
            shared.record(&info.failed(reason));
            return;
        }
    };
    info.dst = target.dst;
    let Some(tls) = shared.store.current() else {
        shared.record(&info.failed("no_identity: ward has no SVID loaded yet"));
        return;
    };

    if ib.spec.mtls == Mtls::Permissive && !looks_like_tls(&tcp, ib.handshake_timeout).await {
        drop(pending);
        let plain = PeerCtx {
            id: None,
            xfcc: None,
            chain: None,
        };
        let detected = match target.protocol {
            Protocol::Tcp => Detected::Opaque,
            Protocol::Http => {
                // looks_like_tls saw bytes or gave up on a silent client; either way the
                // first bytes get no longer than a request head would.
                let wait = shared.settings().request_header_timeout;
                tokio::select! {
                    d = tokio::time::timeout(wait, sniff::peek_http(&tcp)) => d.unwrap_or(Detected::Silent),
                    _ = shared.drained() => Detected::Silent,
                }
            }
            Protocol::Auto => {
                let settings = shared.settings();
                sniff::peek_tcp(&tcp, settings.idle_timeout, settings.detect_timeout).await
            }
        };
        Box::pin(serve_detected(
            tcp, detected, &ib, &shared, info, target, plain, started,
        ))
        .await;
        return;
    }

    let server_config = match target.protocol {
        Protocol::Tcp => tls.server.clone(),
        Protocol::Http | Protocol::Auto => tls.server_http.clone(),
    };
    let accept = TlsAcceptor::from(server_config).accept(tcp);
    let stream = match tokio::time::timeout(ib.handshake_timeout, accept).await {
        Err(_) => {
            let detail = format!("no handshake within {:?}", ib.handshake_timeout);
            shared.record(&info.handshake_failed("timeout", &detail));
            return;
        }
        Ok(Err(e)) => {
            let (reason, detail) = handshake_failure(&e);
            tracing::debug!(listener = %ib.name, %src, reason, %detail, "inbound handshake failed");
            shared.record(&info.handshake_failed(reason, &detail));
            return;
        }
        Ok(Ok(s)) => s,
    };
    drop(pending);

    let (_, conn) = stream.get_ref();
    if let Err(reason) = tcp::check_resumed(conn, &shared.store) {
        shared.record(&info.handshake_failed("resumed_invalid", &reason));
        return;
    }
    let certs = conn.peer_certificates();
    let (Some(peer), Some(leaf)) = (tcp::peer_svid(certs), certs.and_then(|c| c.first())) else {
        // The verifier accepted the chain, so this cannot happen; refuse rather than guess.
        shared.record(&info.handshake_failed("no_peer_id", "peer SPIFFE ID unavailable after handshake"));
        return;
    };
    let ctx = PeerCtx {
        id: Some(peer.id.clone()),
        xfcc: ib
            .spec
            .xfcc
            .then(|| {
                h::xfcc_value(
                    tls.identity.id().as_str(),
                    &h::cert_sha256(leaf),
                    peer.id.as_str(),
                )
            })
            .flatten(),
        chain: Some(PeerChain::new(certs)),
    };
    info.peer_id = Some(peer.id.shared());
    info.peer_serial = Some(peer.serial.into());
    let detected = match (target.protocol, conn.alpn_protocol()) {
        (Protocol::Tcp, _) => Some(Detected::Opaque),
        (_, Some(b"h2")) => Some(Detected::Http2),
        (_, Some(_)) => Some(Detected::Http1),
        // An HTTP listener and no ALPN: hyper tells the versions apart.
        (Protocol::Http, None) => Some(Detected::Http),
        // No ALPN: look at the first decrypted bytes.
        (Protocol::Auto, None) => None,
    };
    let (detected, io) = match detected {
        Some(d) => (d, sniff::Rewind::new(bytes::Bytes::new(), stream)),
        None => {
            let settings = shared.settings();
            sniff::read_prefix(stream, settings.idle_timeout, settings.detect_timeout).await
        }
    };
    Box::pin(serve_detected(
        io, detected, &ib, &shared, info, target, ctx, started,
    ))
    .await;
}

/// Serves an identified connection as opaque TCP or HTTP.
#[allow(clippy::too_many_arguments)]
async fn serve_detected<S>(
    mut io: S,
    detected: Detected,
    ib: &Arc<Inbound>,
    shared: &Arc<Shared>,
    info: ConnInfo,
    target: Target,
    ctx: PeerCtx,
    started: Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if detected == Detected::Silent {
        shared.record(&info.silent("peer", started.elapsed()));
        return;
    }
    let Some(policy) = shared.policy(&ib.name, target.port) else {
        shared.record(&info.failed("no_policy: the listener has no policy now"));
        return;
    };
    // A later reload re-checks this connection against the listener's policy then.
    let recheck = {
        let (shared, listener, port, ctx) = (shared.clone(), ib.name.clone(), target.port, ctx.clone());
        let http = detected != Detected::Opaque;
        move || match shared.policy(&listener, port) {
            None => Err(format!("revoked_policy: listener {listener:?} has no policy now")),
            Some(p) if http && !p.may_allow_requests(ctx.peer()) => Err(format!(
                "revoked_policy: policy {:?} no longer admits this peer",
                p.name()
            )),
            Some(p) if !http && p.evaluate_connection(ctx.peer()).decision == Decision::Deny => Err(format!(
                "revoked_policy: policy {:?} now denies this peer",
                p.name()
            )),
            Some(_) => Ok(()),
        }
    };
    let revoke = tcp::revoked(shared.watch(), shared.store.clone(), ctx.chain.clone(), recheck);

    if detected == Detected::Opaque {
        // Bytes that are not HTTP on a listener that expected some: the policy's HTTP-only
        // deny rules cannot be applied to them, so a peer they cover is refused.
        if target.protocol == Protocol::Auto && policy.denies_some_requests(ctx.peer()) {
            let reason =
                "not_http: the peer's bytes are not HTTP, and HTTP-only deny rules cover it".to_owned();
            shared.record(&info.decided(Decision::Deny, None, reason));
            let _ = io.shutdown().await;
            return;
        }
        let verdict = policy.evaluate_connection(ctx.peer());
        shared.record(&info.authz(&verdict));
        if verdict.decision == Decision::Deny {
            let _ = io.shutdown().await;
            return;
        }
        if let Some(app) = tcp::connect(target.forward, shared, &info).await {
            tcp::pipe(io, app, shared, &info, &ib.metrics, started, revoke).await;
        }
        return;
    }
    // HTTP: refuse at once a peer no request of which could be allowed.
    if !policy.may_allow_requests(ctx.peer()) {
        let verdict = policy.evaluate_connection(ctx.peer());
        shared.record(&info.authz(&verdict));
        let _ = io.shutdown().await;
        return;
    }
    let app = match &ib.app {
        Some(apps) => apps[crate::data::shards::current() % apps.len()].clone(),
        None => AppClient::new(target.forward, shared.settings.load().connect_timeout),
    };
    let info = Arc::new(info);
    let ctx = Arc::new(ctx);
    let service = {
        let (ib, shared, info) = (ib.clone(), shared.clone(), info.clone());
        let target = Arc::new(target);
        // Boxed per request: hyper moves each stream's future several times (into the stream
        // state, into its task); the future is about 4 KB, its box a pointer (callgrind: about
        // 1,500 fewer instructions a request, net of the allocation).
        service_fn(move |req| {
            Box::pin(request(
                ib.clone(),
                shared.clone(),
                info.clone(),
                ctx.clone(),
                target.clone(),
                app.clone(),
                req,
            ))
        })
    };
    h::serve_connection(
        io,
        h::Version::from(detected),
        service,
        shared,
        &info,
        &ib.metrics,
        revoke,
    )
    .await;
}

/// One request: normalize, authorize, set identity headers, forward to the app.
async fn request(
    ib: Arc<Inbound>,
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    ctx: Arc<PeerCtx>,
    target: Arc<Target>,
    app: AppClient,
    req: Request<Incoming>,
) -> ServiceResult {
    let started = Instant::now();
    let authority = h::authority(&req);
    let method = req.method().as_str().to_owned();
    let raw_path = req.uri().path().to_owned();
    let bytes_in = Arc::new(AtomicU64::new(0));
    let pending = |r| PendingRecord::new(r, shared.clone(), ib.metrics.clone(), started, bytes_in.clone());
    // A request refused as malformed: 400, recorded as a deny with the path as it came.
    let bad_request = |reason: String, method: String, path: String, authority, body: &'static str| {
        let mut r = info.decided(Decision::Deny, None, reason);
        r.kind = Kind::Request;
        r.method = Some(method);
        r.path = Some(path);
        r.authority = authority;
        Ok(pending(r).attach(h::text(StatusCode::BAD_REQUEST, body)))
    };
    let path = match normalize_target(&method, &raw_path) {
        Ok(p) => p.into_owned(),
        Err(e) => {
            let reason = format!("bad_path: {e}");
            return bad_request(reason, method, raw_path, authority, "ward: bad request path\n");
        }
    };
    // The headers are made what the app will get before the policy looks at them, so the
    // policy decides on exactly what the app sees: hop-by-hop headers (and those the
    // `Connection` header names) go, names with `_` are dropped (or refused), a caller's
    // identity header is replaced by ward's.
    let (mut parts, body) = req.into_parts();
    h::strip_hop_by_hop(&mut parts.headers);
    if let Err(name) = h::sanitize_underscores(&mut parts.headers, ib.spec.underscore_headers) {
        let reason = format!("bad_header: {name} has an underscore (underscore_headers: reject)");
        let body = "ward: header names with '_' are refused\n";
        return bad_request(reason, method, path, authority, body);
    }
    parts.headers.remove(&h::XFCC);
    if let Some(v) = &ctx.xfcc {
        parts.headers.insert(h::XFCC.clone(), v.clone());
    }
    let Some(policy) = shared.policy(&ib.name, target.port) else {
        let r = info.request(&no_policy_verdict(), &method, &path, authority.as_deref());
        return Ok(pending(r).attach(h::text(StatusCode::FORBIDDEN, "ward: access denied\n")));
    };
    let verdict = policy.evaluate_request(
        ctx.peer(),
        &ward_filters::Request {
            method: &method,
            path: &path,
            headers: &HeaderView(&parts.headers),
        },
    );
    let pending = pending(info.request(&verdict, &method, &path, authority.as_deref()));
    if verdict.decision == Decision::Deny {
        return Ok(pending.attach(h::text(StatusCode::FORBIDDEN, "ward: access denied\n")));
    }

    let h2 = match ib.spec.app_protocol {
        AppProtocol::Http1 => false,
        AppProtocol::Http2 => true,
        AppProtocol::Auto => h::is_grpc(&parts.headers),
    };
    let host = authority.unwrap_or_else(|| target.forward.to_string());
    let Some(uri) = h::absolute_uri(host, &path, &parts.uri) else {
        return Ok(pending.attach(h::text(StatusCode::BAD_REQUEST, "ward: bad request target\n")));
    };
    parts.uri = uri;
    parts.version = if h2 {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    let req = Request::from_parts(parts, Counted::new(body, bytes_in.clone()));
    match app.send(req, h2).await {
        Ok(resp) => {
            let mut resp = resp.map(http_body_util::Either::Left);
            h::strip_hop_by_hop(resp.headers_mut());
            Ok(pending.attach(resp))
        }
        Err(e) => {
            tracing::warn!(listener = %ib.name, app = %target.forward, error = %e, "cannot reach the app");
            Ok(pending.attach(h::text(StatusCode::BAD_GATEWAY, "ward: the app is unavailable\n")))
        }
    }
}

fn no_policy_verdict() -> ward_filters::Verdict {
    ward_filters::Verdict {
        decision: Decision::Deny,
        rule: None,
        reason: ward_filters::Reason::DefaultDeny,
        audit: Vec::new(),
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
