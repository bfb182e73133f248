//! The inbound path (a peer's sidecar → this workload), in order, in this file and two more:
//! 1. accept within the listener's caps ([`accept::serve`]);
//! 2. find the app: the configured `forward`, or in a pod the original destination;
//! 3. the mTLS handshake with our SVID; the peer must present one ([`mtls::accept`], in
//!    `data/mtls.rs`: the one place a handshake and the peer check happen);
//! 4. by protocol: opaque TCP gets the connection policy and bytes both ways
//!    ([`tcp::pipe`], `data/tcp.rs`); HTTP gets, per request ([`request`]), the policy (a
//!    deny is answered 403, or gRPC's PERMISSION_DENIED), identity headers and pooled
//!    forwarding to the app, served by [`h::serve_connection`] (`http/serve.rs`).
//!
//! Every served connection is registered in [`crate::data::live`], which closes it when a new
//! bundle (or, for opaque TCP, a reloaded policy) no longer admits its peer. Audit records and metrics along the
//! way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use ward_filters::{Decision, Peer, normalize_target};

use crate::audit::{ConnInfo, Direction, Kind};
use crate::config::{AppProtocol, InboundConfig, Mtls, Protocol};
use crate::data::accept::{self, Caps, ConnGuard, Pending, PendingGuard};
use crate::data::live::{Scope, UpgradeRequest};
use crate::data::mtls::{self, Alpn, MtlsError, PeerIdentity};
use crate::data::sniff::{self, Detected};
use crate::data::tcp;
use crate::http::upgrade::{Asked, ClientSide, Tunnel, Upgrade, tunnel};
use crate::http::{self as h, Counted, HeaderView, PendingRecord, ResponseBody, ServiceResult};
use crate::metrics::ListenerMetrics;
use crate::pools::AppClient;
use crate::state::Shared;

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
pub(crate) struct Target {
    /// Where the peer connected: the listener, or in a pod the original destination (an
    /// HBONE stream's `:authority`).
    pub dst: SocketAddr,
    pub forward: SocketAddr,
    pub protocol: Protocol,
    /// The app port, for a transparent listener's per-port policy.
    pub port: Option<u16>,
    /// `auto` made TCP by `server_first_ports`: a peer that HTTP-only deny rules cover is
    /// refused, as for opaque bytes `auto` saw.
    pub server_first: bool,
}

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Accepts until `stop` flips.
pub async fn serve(
    listener: Arc<TcpListener>,
    ib: Arc<Inbound>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    accept::serve(
        &listener,
        ib.caps(),
        (&shared.open, &shared.metrics),
        stop,
        |tcp, src, guard, pending| {
            let (ib, shared) = (ib.clone(), shared.clone());
            crate::data::shards::serve(tcp, move |tcp| handle(ib, shared, tcp, src, guard, pending));
        },
    )
    .await;
}

impl Inbound {
    /// The app and rules for a connection: explicit `forward`, or the original destination.
    fn target(&self, tcp: &TcpStream, shared: &Shared) -> Result<Target, String> {
        let spec = &self.spec;
        if !spec.transparent {
            let forward = spec.forward.ok_or("no forward address")?;
            let protocol = spec.protocol.for_port(forward.port(), &spec.server_first_ports);
            return Ok(Target {
                dst: tcp.local_addr().map_err(|e| format!("local address: {e}"))?,
                forward,
                server_first: protocol != spec.protocol,
                protocol,
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
        Ok(self.app_at(dst))
    }

    /// What its accept loop holds it to: its connection cap and the per-source handshake cap.
    pub(crate) fn caps(&self) -> Caps<'_> {
        Caps {
            name: &self.name,
            open: &self.open,
            max: self.max_connections,
            metrics: &self.metrics,
            pending: Some((&self.pending, self.spec.max_pending_per_source)),
        }
    }

    /// The app and rules for a connection the peer addressed to `dst` (the original
    /// destination, or an HBONE stream's authority): the app at `dst`'s port, under the
    /// port's overrides.
    pub(crate) fn app_at(&self, dst: SocketAddr) -> Target {
        let spec = &self.spec;
        let port = dst.port();
        let o = spec.ports.get(&port);
        // The address the peer dialled (the pod's), not loopback: what the app bound to
        // 127.0.0.1 only stays the pod's own, unless a port or the listener says otherwise.
        let host = o.and_then(|o| o.app_host).or(spec.app_host).unwrap_or(dst.ip());
        let configured = o.and_then(|o| o.protocol);
        let protocol = configured.unwrap_or_else(|| spec.protocol.for_port(port, &spec.server_first_ports));
        let server_first = configured.is_none() && protocol != spec.protocol;
        Target {
            dst,
            forward: SocketAddr::new(host, port),
            protocol,
            server_first,
            port: Some(port),
        }
    }
}

/// Who the peer of one connection is, as the L7 path needs it.
#[derive(Clone)]
pub(crate) struct PeerCtx {
    /// `None`: a plaintext peer of a permissive listener.
    pub peer: Option<Arc<PeerIdentity>>,
    /// The XFCC header value for the app (when the listener sets it): who this ward was in
    /// the handshake, the peer's leaf hash and ID. Made once per connection; each request
    /// clones it (a reference count).
    pub xfcc: Option<HeaderValue>,
}

impl PeerCtx {
    /// The context of an mTLS peer: its identity, and the XFCC value when the listener sets it.
    pub fn mtls(ib: &Inbound, shared: &Shared, peer: PeerIdentity) -> PeerCtx {
        // Who this ward is (the ID stays across rotations), for the app's XFCC header.
        let xfcc = match (ib.spec.xfcc, shared.store.current()) {
            (true, Some(tls)) => h::xfcc_value(
                tls.identity.id().as_str(),
                &h::cert_sha256(peer.leaf()),
                peer.id.as_str(),
            ),
            _ => None,
        };
        PeerCtx {
            peer: Some(Arc::new(peer)),
            xfcc,
        }
    }

    pub fn peer(&self) -> Peer<'_> {
        match &self.peer {
            Some(p) => Peer::Authenticated(p.id.as_str()),
            None => Peer::Unauthenticated,
        }
    }
}

/// A connection whose peer and protocol are known, ready to be served.
pub(crate) struct Accepted<S> {
    pub io: S,
    pub detected: Detected,
    pub info: ConnInfo,
    pub target: Target,
    pub ctx: PeerCtx,
    pub started: Instant,
}

async fn handle(
    ib: Arc<Inbound>,
    shared: Arc<Shared>,
    tcp: TcpStream,
    src: SocketAddr,
    _guard: ConnGuard,
    pending: Option<PendingGuard>,
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
        forwarded_for: None,
    };
    let target = match ib.target(&tcp, &shared) {
        Ok(t) => t,
        Err(reason) => {
            shared.record(&info.failed(reason));
            return;
        }
    };
    info.dst = target.dst;
    if !shared.store.is_ready() {
        shared.record(&MtlsError::NoIdentity.record(&info, None));
        return;
    }

    if ib.spec.mtls == Mtls::Permissive && !looks_like_tls(&tcp, ib.handshake_timeout).await {
        drop(pending);
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
        let ctx = PeerCtx {
            peer: None,
            xfcc: None,
        };
        let conn = Accepted {
            io: tcp,
            detected,
            info,
            target,
            ctx,
            started,
        };
        Box::pin(serve_detected(conn, &ib, &shared)).await;
        return;
    }

    let alpn = match target.protocol {
        Protocol::Tcp => Alpn::None,
        Protocol::Http | Protocol::Auto => Alpn::Http,
    };
    let Some((stream, peer)) = handshake(tcp, alpn, &ib, &shared, &mut info).await else {
        return;
    };
    drop(pending);
    let ctx = PeerCtx::mtls(&ib, &shared, peer);
    let detected = match (target.protocol, stream.get_ref().1.alpn_protocol()) {
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
    let conn = Accepted {
        io,
        detected,
        info,
        target,
        ctx,
        started,
    };
    Box::pin(serve_detected(conn, &ib, &shared)).await;
}

/// Serves an identified connection as opaque TCP or HTTP, registered among the live
/// connections for as long as it lasts (a bundle that no longer validates its peer closes
/// it, and for opaque TCP a reload whose policy no longer admits the peer).
pub(crate) async fn serve_detected<S>(conn: Accepted<S>, ib: &Arc<Inbound>, shared: &Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Accepted {
        mut io,
        detected,
        info,
        target,
        ctx,
        started,
    } = conn;
    if detected == Detected::Silent {
        shared.record(&info.silent("peer", started.elapsed()));
        return;
    }
    // Registered before the policy is looked up: a reload from now on is swept with it. Opaque
    // TCP is admitted once, so a reload that no longer admits its peer closes it; HTTP asks
    // the policy of now on every request, and only the bundles (and the peer's SVID) bound it.
    let scope = match detected {
        Detected::Opaque => Scope::Policy {
            listener: ib.name.clone(),
            port: target.port,
        },
        _ => Scope::Bundles,
    };
    let lifetime = shared.settings.load().max_connection_lifetime;
    let live = shared
        .live
        .register(ctx.peer.clone(), scope, lifetime, &shared.store);
    if detected == Detected::Opaque {
        if admit_opaque(&mut io, ib, shared, &info, &target, &ctx)
            .await
            .is_some()
            && let Some(app) = tcp::connect(target.forward, shared, &info).await
        {
            tcp::pipe(io, app, shared, &info, &ib.metrics, started, live.closed()).await;
        }
        return;
    }
    // HTTP: every request gets the policy's answer, even from a peer no request of which could
    // be allowed (403, or gRPC's PERMISSION_DENIED, and a record per request): a caller told
    // "forbidden" stops retrying, one cut off at the connection sees an outage.
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
        live.closed(),
    )
    .await;
}

/// The mTLS handshake of a connection on an inbound or HBONE listener: the peer, marked in
/// `info`, or `None` with the failure recorded.
pub(crate) async fn handshake(
    tcp: TcpStream,
    alpn: Alpn,
    ib: &Inbound,
    shared: &Shared,
    info: &mut ConnInfo,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, PeerIdentity)> {
    match mtls::accept(tcp, alpn, ib.handshake_timeout, &shared.store).await {
        Ok((stream, peer)) => {
            peer.mark(info);
            Some((stream, peer))
        }
        Err(e) => {
            tracing::debug!(listener = %ib.name, src = %info.src, reason = e.reason(), detail = %e, "inbound handshake failed");
            shared.record(&e.record(info, None));
            None
        }
    }
}

/// Opaque bytes from a peer (registered among the live connections first): the connection
/// policy, its record, and `Some` when it admits them; a refused peer's `io` is shut down.
pub(crate) async fn admit_opaque<S: AsyncWrite + Unpin>(
    io: &mut S,
    ib: &Inbound,
    shared: &Shared,
    info: &ConnInfo,
    target: &Target,
    ctx: &PeerCtx,
) -> Option<()> {
    let verdict = opaque_verdict(ib, shared, info, target, ctx);
    if verdict.is_none() {
        let _ = io.shutdown().await;
    }
    verdict
}

/// [`admit_opaque`]'s decision and record, for a caller that answers a refusal itself.
pub(crate) fn opaque_verdict(
    ib: &Inbound,
    shared: &Shared,
    info: &ConnInfo,
    target: &Target,
    ctx: &PeerCtx,
) -> Option<()> {
    let Some(policy) = shared.policy(&ib.name, target.port) else {
        shared.record(&info.failed("no_policy: the listener has no policy now"));
        return None;
    };
    // Bytes that are not HTTP on a listener that expected some: the policy's HTTP-only
    // deny rules cannot be applied to them, so a peer they cover is refused.
    if (target.protocol == Protocol::Auto || target.server_first) && policy.denies_some_requests(ctx.peer()) {
        let reason = "not_http: the peer's bytes are not HTTP, and HTTP-only deny rules cover it".to_owned();
        shared.record(&info.decided(Decision::Deny, None, reason));
        return None;
    }
    let verdict = policy.evaluate_connection(ctx.peer());
    shared.record(&info.authz(&verdict));
    (verdict.decision != Decision::Deny).then_some(())
}

/// One request: normalize, authorize, set identity headers, forward to the app.
async fn request(
    ib: Arc<Inbound>,
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    ctx: Arc<PeerCtx>,
    target: Arc<Target>,
    app: AppClient,
    mut req: Request<Incoming>,
) -> ServiceResult {
    let started = Instant::now();
    let authority = h::authority(&req);
    // An upgrade (WebSocket, extended CONNECT): its client side is taken now, and the policy
    // sees it as the app will get it, an HTTP/1.1 `GET` with `Upgrade`.
    let Asked {
        upgrade,
        refused,
        method,
    } = Asked::take(&mut req);
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
    if let Some(why) = refused {
        let reason = format!("bad_upgrade: {why}");
        return bad_request(reason, method, raw_path, authority, "ward: bad upgrade request\n");
    }
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
    if let Some((_, up)) = &upgrade {
        up.set_http1_headers(&mut parts.headers);
    }
    // An upgrade is never answered as gRPC: a 200 to an extended CONNECT means it switched.
    let grpc = upgrade.is_none() && h::is_grpc(&parts.headers);
    let Some(policy) = shared.policy(&ib.name, target.port) else {
        let verdict = no_policy_verdict();
        let r = info.request(&verdict, &method, &path, authority.as_deref());
        return Ok(pending(r).attach(h::denied(&verdict, grpc)));
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
        return Ok(pending.attach(h::denied(&verdict, grpc)));
    }
    if let Some((client, up)) = upgrade {
        let host = authority.unwrap_or_else(|| target.forward.to_string());
        let Some(uri) = h::absolute_uri(host.clone(), &path, &parts.uri) else {
            return Ok(pending.attach(h::text(StatusCode::BAD_REQUEST, "ward: bad request target\n")));
        };
        parts.uri = uri;
        let t = Tunnel {
            shared: shared.clone(),
            info: (*info).clone(),
            metrics: ib.metrics.clone(),
            method,
            path,
            authority: Some(host),
        };
        let scope = |request| Scope::Upgrade {
            listener: ib.name.clone(),
            port: target.port,
            request,
        };
        let resp = Box::pin(upgrade_app(
            parts,
            up,
            client,
            t,
            ctx.peer.clone(),
            scope,
            target.forward,
        ))
        .await;
        return Ok(pending.attach(resp));
    }

    let h2 = match ib.spec.app_protocol {
        AppProtocol::Http1 => false,
        AppProtocol::Http2 => true,
        AppProtocol::Auto => grpc,
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
            let mut resp = resp;
            h::strip_hop_by_hop(resp.headers_mut());
            Ok(pending.attach(resp))
        }
        Err(e) => {
            tracing::warn!(listener = %ib.name, app = %target.forward, error = %e, "cannot reach the app");
            let message = format!("ward: the app at {} is unavailable: {e}", target.forward);
            Ok(pending.attach(h::unavailable(StatusCode::BAD_GATEWAY, message, grpc)))
        }
    }
}

/// An allowed upgrade, to the app: HTTP/1.1 `Upgrade` on a connection of its own (never a
/// pooled one). The app's 101 is answered to the client (101, or 200 to an extended CONNECT)
/// and the tunnel starts; any other answer is relayed as it is.
async fn upgrade_app(
    mut parts: http::request::Parts,
    up: Upgrade,
    client: ClientSide,
    t: Tunnel,
    peer: Option<Arc<PeerIdentity>>,
    scope: impl FnOnce(Arc<UpgradeRequest>) -> Scope,
    app: SocketAddr,
) -> Response<ResponseBody> {
    parts.method = http::Method::GET;
    parts.version = http::Version::HTTP_11;
    // What the registry asks the policy again on a reload.
    let request = Arc::new(UpgradeRequest {
        method: t.method.clone(),
        path: t.path.clone(),
        headers: parts.headers.clone(),
    });
    let req = crate::pools::app::origin_form(Request::from_parts(
        parts,
        http_body_util::Empty::<bytes::Bytes>::new(),
    ));
    let shared = t.shared.clone();
    // Registered before the app is asked, and checked against the policy of now: a reload
    // since the verdict, or while the app answers, is not missed.
    let lifetime = shared.settings.load().max_connection_lifetime;
    let live = shared
        .live
        .register(peer, scope(request), lifetime, &shared.store);
    if let Some(reason) = live.recheck(&shared.settings.load()) {
        tracing::info!(%reason, "an upgrade the reloaded policy denies");
        return h::text(StatusCode::FORBIDDEN, "ward: access denied: the policy changed\n");
    }
    let sent = async {
        let tcp = crate::data::io::dial(app, shared.settings.load().connect_timeout)
            .await
            .map_err(|e| e.to_string())?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn.with_upgrades());
        tx.send_request(req).await.map_err(|e| e.to_string())
    };
    let resp = match sent.await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::warn!(app = %app, error = %e, "cannot reach the app for an upgrade");
            let message = format!("ward: the app at {app} is unavailable: {e}");
            return h::unavailable(StatusCode::BAD_GATEWAY, message, false);
        }
    };
    if !Upgrade::switches(resp.status(), false) {
        let mut resp = resp.map(ResponseBody::upstream);
        h::strip_hop_by_hop(resp.headers_mut());
        return resp;
    }
    let answer = up.switched(resp.headers());
    let closed = crate::data::io::OnWake::new(async move { live.closed().await });
    tunnel(client, hyper::upgrade::on(resp), t, closed);
    answer
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
