//! The HBONE listener (`inbound` with `hbone: true`), in order:
//! 1. accept within the listener's caps, as any inbound listener ([`accept::serve`]);
//! 2. mTLS with ALPN `h2` ([`mtls::accept`]): the peer's SVID is checked as on every inbound
//!    connection; the tunnel connection is registered among the live connections, so a bundle
//!    that no longer admits the peer (or its SVID's expiry) closes it with every stream;
//! 3. HTTP/2 with ztunnel's windows and at most [`wire::MAX_STREAMS`] streams at once
//!    ([`h::serve_connection`]), drained with GOAWAY;
//! 4. each stream ([`stream`]): `CONNECT` only (else 400), to the address the tunnel was
//!    dialled at and an app port that is not ward's own (else 400 / 403), within
//!    `max_connections` (else 503); then it is one inbound connection: opaque TCP ports get
//!    the connection policy before the answer (401 on deny, with the deny record) and the
//!    app connected (503 if it cannot be), HTTP and `auto` ports get 200 and then exactly
//!    what a connection on the inbound listener gets ([`inbound::serve_detected`]: protocol
//!    detection, per-request policy, identity headers, records, re-checks).
//!
//! Every stream is counted in `ward_hbone_streams` by result.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use ward_filters::Decision;

use crate::audit::{ConnInfo, Direction};
use crate::config::Protocol;
use crate::data::accept::{self, ConnGuard, PendingGuard};
use crate::data::inbound::{self, Accepted, Inbound, PeerCtx, Target};
use crate::data::live::Scope;
use crate::data::mtls::{Alpn, MtlsError};
use crate::data::sniff::{self, Detected};
use crate::data::tcp;
use crate::hbone::wire;
use crate::http::{self as h, ResponseBody, ServiceResult};
use crate::metrics::HboneMetrics;
use crate::state::Shared;

/// Accepts tunnel connections until `stop` flips.
pub async fn serve(
    listener: Arc<TcpListener>,
    ib: Arc<Inbound>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let metrics = Arc::new(shared.metrics.hbone(&ib.name, Direction::Inbound));
    accept::serve(
        &listener,
        ib.caps(),
        (&shared.open, &shared.metrics),
        stop,
        |tcp, src, guard, pending| {
            let (ib, shared, metrics) = (ib.clone(), shared.clone(), metrics.clone());
            crate::data::shards::serve(tcp, move |tcp| {
                handle(ib, shared, metrics, tcp, src, guard, pending)
            });
        },
    )
    .await;
}

/// One tunnel connection: what its streams share.
struct Tunnel {
    ib: Arc<Inbound>,
    shared: Arc<Shared>,
    metrics: Arc<HboneMetrics>,
    info: ConnInfo,
    ctx: PeerCtx,
    /// The address the peer dialled: every stream's authority must name it.
    local: SocketAddr,
}

/// Counts a tunnel connection in `ward_hbone_connections_active` while it lives.
struct Active(prometheus_client::metrics::gauge::Gauge);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn handle(
    ib: Arc<Inbound>,
    shared: Arc<Shared>,
    metrics: Arc<HboneMetrics>,
    tcp: TcpStream,
    src: SocketAddr,
    _guard: ConnGuard,
    pending: Option<PendingGuard>,
) {
    let local = tcp.local_addr().map(wire::unmapped).unwrap_or(src);
    let _ = tcp.set_nodelay(true);
    let mut info = ConnInfo {
        listener: ib.name.clone(),
        direction: Direction::Inbound,
        src: wire::unmapped(src),
        dst: local,
        peer_id: None,
        peer_serial: None,
        forwarded_for: None,
    };
    if !shared.store.is_ready() {
        shared.record(&MtlsError::NoIdentity.record(&info, None));
        return;
    }
    let Some((stream, peer)) = inbound::handshake(tcp, Alpn::H2, &ib, &shared, &mut info).await else {
        return;
    };
    drop(pending);
    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        shared.record(&info.handshake_failed(
            "not_hbone",
            "the peer offered no ALPN h2: an HBONE listener takes HTTP/2 CONNECT tunnels only",
        ));
        return;
    }
    metrics.connections_opened.inc();
    metrics.connections_active.inc();
    let _active = Active(metrics.connections_active.clone());
    let ctx = PeerCtx::mtls(&ib, &shared, peer);
    let lifetime = shared.settings.load().max_connection_lifetime;
    let live = shared
        .live
        .register(ctx.peer.clone(), Scope::Bundles, lifetime, &shared.store);
    let tunnel = Arc::new(Tunnel {
        ib: ib.clone(),
        shared: shared.clone(),
        metrics,
        info: info.clone(),
        ctx,
        local,
    });
    // Boxed per stream, as the inbound's requests are.
    let service = service_fn(move |req| Box::pin(stream_of(tunnel.clone(), req)));
    h::serve_connection(
        stream,
        h::Version::Hbone,
        service,
        &shared,
        &info,
        &ib.metrics,
        live.closed(),
    )
    .await;
}

async fn stream_of(t: Arc<Tunnel>, req: Request<Incoming>) -> ServiceResult {
    Ok(stream(&t, req).await)
}

/// One CONNECT stream: checked, admitted, answered, then served as an inbound connection.
async fn stream(t: &Arc<Tunnel>, mut req: Request<Incoming>) -> Response<ResponseBody> {
    let started = Instant::now();
    let (ib, shared) = (&t.ib, &t.shared);
    let mut info = t.info.clone();
    info.forwarded_for = wire::forwarded_for(req.headers());
    // A refusal: its answer, its metric and its record (a deny of ward's own, not a rule's).
    let refuse = |info: &ConnInfo, status: StatusCode, result: &'static str, reason: String| {
        t.metrics.stream(result);
        tracing::debug!(listener = %ib.name, peer = info.peer_id.as_deref(), %reason, "HBONE stream refused");
        shared.record(&info.decided(Decision::Deny, None, format!("{result}: {reason}")));
        h::text(status, format!("ward: {reason}\n"))
    };
    if req.method() != http::Method::CONNECT || req.extensions().get::<hyper::ext::Protocol>().is_some() {
        let reason = format!("HBONE takes CONNECT only, not {}", req.method());
        return refuse(&info, StatusCode::BAD_REQUEST, "bad_method", reason);
    }
    let dst = match wire::authority(req.uri()) {
        Ok(dst) => dst,
        Err(e) => return refuse(&info, StatusCode::BAD_REQUEST, "bad_authority", e.to_string()),
    };
    info.dst = dst;
    if dst.ip() != t.local.ip() {
        let reason = format!(
            "the :authority {dst} is not this tunnel's address {}: ward tunnels only to the workload it was dialled at",
            t.local.ip()
        );
        return refuse(&info, StatusCode::BAD_REQUEST, "bad_authority", reason);
    }
    let target = match target(ib, shared, dst) {
        Ok(target) => target,
        Err(reason) => return refuse(&info, StatusCode::FORBIDDEN, "port_not_allowed", reason),
    };
    let Some(guard) = ConnGuard::admit_stream(
        &ib.open,
        ib.max_connections,
        &shared.open,
        &t.metrics.streams_active,
    ) else {
        ib.metrics.refused_overload.inc();
        let reason = format!("the listener has max_connections ({}) open", ib.max_connections);
        t.metrics.stream("overload");
        shared.record(&info.failed(format!("overload: {reason}")));
        return h::text(StatusCode::SERVICE_UNAVAILABLE, format!("ward: {reason}\n"));
    };
    let upgrade = hyper::upgrade::on(&mut req);
    if target.protocol == Protocol::Tcp {
        // Opaque bytes: decided now, so the peer hears 401 for a deny and 503 for an app
        // that is down, as ztunnel answers, not a stream that opens and closes.
        let lifetime = shared.settings.load().max_connection_lifetime;
        let scope = Scope::Policy {
            listener: ib.name.clone(),
            port: target.port,
        };
        let live = shared
            .live
            .register(t.ctx.peer.clone(), scope, lifetime, &shared.store);
        if inbound::opaque_verdict(ib, shared, &info, &target, &t.ctx).is_none() {
            t.metrics.stream("denied");
            return h::text(StatusCode::UNAUTHORIZED, "ward: access denied by policy\n");
        }
        let Some(app) = tcp::connect(target.forward, shared, &info).await else {
            t.metrics.stream("unreachable");
            let body = format!("ward: the app at {} is unreachable\n", target.forward);
            return h::text(StatusCode::SERVICE_UNAVAILABLE, body);
        };
        t.metrics.stream("ok");
        let (ib, shared) = (ib.clone(), shared.clone());
        tokio::spawn(async move {
            let _guard = guard;
            let Some(io) = upgraded(upgrade, &shared, &info).await else {
                return;
            };
            tcp::pipe(io, app, &shared, &info, &ib.metrics, started, live.closed()).await;
        });
        return established();
    }
    // HTTP or `auto`: what the bytes are is seen after the answer; from there the stream is
    // served as a connection on the inbound listener is.
    t.metrics.stream("ok");
    let (ib, shared, ctx) = (ib.clone(), shared.clone(), t.ctx.clone());
    tokio::spawn(async move {
        let _guard = guard;
        let Some(io) = upgraded(upgrade, &shared, &info).await else {
            return;
        };
        let (detected, io) = match target.protocol {
            Protocol::Auto => {
                let settings = shared.settings();
                sniff::read_prefix(io, settings.idle_timeout, settings.detect_timeout).await
            }
            _ => (Detected::Http, sniff::Rewind::new(bytes::Bytes::new(), io)),
        };
        let conn = Accepted {
            io,
            detected,
            info,
            target,
            ctx,
            started,
        };
        Box::pin(inbound::serve_detected(conn, &ib, &shared)).await;
    });
    established()
}

/// Where a stream to `dst` goes: ward's own ports are a loop; with `forward`, only its port
/// may be asked for.
fn target(ib: &Inbound, shared: &Shared, dst: SocketAddr) -> Result<Target, String> {
    let port = dst.port();
    if shared.settings.load().own_ports.contains(&port) {
        return Err(format!("port {port} is one of ward's own ports"));
    }
    match ib.spec.forward {
        Some(forward) if forward.port() != port => Err(format!(
            "this listener tunnels to port {} only (its forward address), not {port}",
            forward.port()
        )),
        Some(forward) => {
            let protocol = ib.spec.protocol.for_port(port, &ib.spec.server_first_ports);
            Ok(Target {
                dst,
                forward,
                server_first: protocol != ib.spec.protocol,
                protocol,
                port: None,
            })
        }
        None => Ok(ib.app_at(dst)),
    }
}

/// The 200 that opens the tunnel: no body, no content headers.
fn established() -> Response<ResponseBody> {
    let mut resp = h::text(StatusCode::OK, "");
    resp.headers_mut().clear();
    resp
}

/// The stream's bytes once hyper has sent the 200; `None` (recorded) when the peer reset it
/// first.
async fn upgraded(
    upgrade: hyper::upgrade::OnUpgrade,
    shared: &Shared,
    info: &ConnInfo,
) -> Option<TokioIo<hyper::upgrade::Upgraded>> {
    match upgrade.await {
        Ok(io) => Some(TokioIo::new(io)),
        Err(e) => {
            shared.record(&info.access(
                &format!("error: {e}"),
                Some(0),
                Some(0),
                std::time::Duration::ZERO,
            ));
            None
        }
    }
}
