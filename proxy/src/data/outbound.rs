//! The outbound path (this workload → a peer), in order, in this file and two more:
//! 1. accept the app's plaintext within the listener's cap ([`accept::serve`]);
//! 2. find the destination and the identity it must prove ([`Outbound::dest`]): explicit
//!    `forward` + `server_id`, or in a pod the original destination matched against `routes`
//!    (no route: `default` passthrough or deny);
//! 3. opaque TCP ([`serve_tcp`]): connect, mTLS presenting our SVID and the server's SPIFFE ID
//!    checked ([`mtls::connect`], `data/mtls.rs`), then bytes both ways ([`tcp::pipe`],
//!    `data/tcp.rs`);
//! 4. HTTP/1.1 or h2c from the app ([`serve_http`], served by `http/serve.rs`): every request
//!    ([`request`]) rides one pooled, multiplexed HTTP/2 mTLS connection per destination
//!    (`pools/peer.rs`, made by the same [`mtls::connect`]).
//!
//! Audit records and metrics along the way.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, watch};
use ward_filters::{Decision, Pattern};

use crate::audit::{ConnInfo, Direction, Kind};
use crate::config::{
    Expect, OutboundConfig, OutboundDefault, OutboundModel, Protocol, Route, Tunnel as Reach,
};
use crate::data::accept::{self, Caps, ConnGuard};
use crate::data::live::Scope;
use crate::data::mtls::{self, Alpn, Dial, MtlsError, PeerIdentity};
use crate::data::sniff::{self, Detected};
use crate::data::tcp;
use crate::hbone::client::{HboneError, HbonePool, Open};
use crate::http::upgrade::{Asked, ClientSide, Tunnel, Upgrade, tunnel};
use crate::http::{self as h, Counted, PendingRecord, ServiceResult};
use crate::metrics::{HboneMetrics, ListenerMetrics};
use crate::pools::{PeerDial, PeerError, PeerPool, Speaks};
use crate::state::Shared;

/// One outbound listener, resolved from config.
#[derive(Debug)]
pub struct Outbound {
    pub name: Arc<str>,
    pub spec: OutboundConfig,
    pub handshake_timeout: Duration,
    /// Explicit listeners: the one destination and what it must prove.
    explicit: Option<(SocketAddr, Arc<Expect>)>,
    /// Transparent listeners: what each route's destinations must prove.
    routes: Vec<(Route, Arc<Expect>)>,
    pub metrics: Arc<ListenerMetrics>,
    pub open: Arc<AtomicUsize>,
    /// `max_connections`, or its default for this process's descriptor limit.
    pub max_connections: usize,
    /// One HTTP/2 connection per destination and worker shard, shared by every request
    /// of that shard to it (a shard never drives another's connections).
    pools: Mutex<HashMap<(usize, SocketAddr), Arc<PeerPool>>>,
    /// HBONE tunnels (`tunnel: hbone`, or `auto` for opaque TCP).
    hbone: HbonePool,
}

/// Where a connection goes.
#[derive(Debug, Clone)]
enum Dest {
    /// mTLS to `addr`, whose server must prove what `expect` says.
    Mesh { addr: SocketAddr, expect: Arc<Expect> },
    /// Plain TCP to a destination outside the mesh (`default: passthrough`).
    Passthrough(SocketAddr),
}

impl Outbound {
    pub fn new(
        model: &OutboundModel,
        metrics: ListenerMetrics,
        hbone: HboneMetrics,
        open: Arc<AtomicUsize>,
    ) -> Outbound {
        let spec = model.spec.clone();
        Outbound {
            name: model.name.clone(),
            handshake_timeout: model.handshake_timeout,
            explicit: model.explicit.clone(),
            routes: model.routes.clone(),
            max_connections: spec
                .max_connections
                .unwrap_or_else(|| crate::config::default_max_connections(crate::limits::nofile())),
            spec,
            metrics: Arc::new(metrics),
            open,
            pools: Mutex::new(HashMap::new()),
            hbone: HbonePool::new(hbone),
        }
    }

    /// Where this connection goes, or why it may not.
    fn dest(&self, tcp: &TcpStream, shared: &Shared) -> Result<Dest, (SocketAddr, String)> {
        if let Some((addr, expect)) = &self.explicit {
            return Ok(Dest::Mesh {
                addr: *addr,
                expect: expect.clone(),
            });
        }
        let dst = crate::data::origdst::original_dst(tcp).map_err(|e| {
            let here = tcp.local_addr().unwrap_or(([0, 0, 0, 0], 0).into());
            (here, format!("no_original_dst: {e}"))
        })?;
        if shared.settings.load().own_ports.contains(&dst.port())
            && (dst.ip().is_loopback() || tcp.local_addr().is_ok_and(|l| l.ip() == dst.ip()))
        {
            return Err((dst, format!("loop: {dst} is one of ward's own listeners")));
        }
        if let Some((_, expect)) = self.routes.iter().find(|(r, _)| r.covers(dst)) {
            return Ok(Dest::Mesh {
                addr: dst,
                expect: expect.clone(),
            });
        }
        match self.spec.default {
            OutboundDefault::Passthrough => Ok(Dest::Passthrough(dst)),
            OutboundDefault::Deny => Err((
                dst,
                format!("no_route: no route covers {dst} and the default is deny"),
            )),
        }
    }

    async fn pool(&self, addr: SocketAddr, server_id: &Pattern, shared: &Shared) -> Arc<PeerPool> {
        let settings = shared.settings();
        let mut pools = self.pools.lock().await;
        // Pools unused for the idle timeout go, and their connections with them (transparent
        // listeners meet many destinations over a pod's life).
        pools.retain(|_, p| p.idle_for() < settings.idle_timeout);
        pools
            .entry((crate::data::shards::current(), addr))
            .or_insert_with(|| {
                let to = PeerDial {
                    addr,
                    server_id: server_id.clone(),
                    connect_timeout: settings.connect_timeout,
                    handshake_timeout: self.handshake_timeout,
                    max_lifetime: settings.max_connection_lifetime,
                };
                Arc::new(PeerPool::new(to, shared.store.clone(), shared.live.clone()))
            })
            .clone()
    }
}

/// Accepts until `stop` flips.
pub async fn serve(
    listener: Arc<TcpListener>,
    ob: Arc<Outbound>,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let caps = Caps {
        name: &ob.name,
        open: &ob.open,
        max: ob.max_connections,
        metrics: &ob.metrics,
        pending: None,
    };
    accept::serve(
        &listener,
        caps,
        (&shared.open, &shared.metrics),
        stop,
        |tcp, src, guard, _| {
            let (ob, shared) = (ob.clone(), shared.clone());
            crate::data::shards::serve(tcp, move |tcp| handle(ob, shared, tcp, src, guard));
        },
    )
    .await;
}

async fn handle(
    ob: Arc<Outbound>,
    shared: Arc<Shared>,
    mut app: TcpStream,
    src: SocketAddr,
    _guard: ConnGuard,
) {
    let started = Instant::now();
    let _ = app.set_nodelay(true);
    let mut info = ConnInfo {
        listener: ob.name.clone(),
        direction: Direction::Outbound,
        src,
        dst: src,
        peer_id: None,
        peer_serial: None,
        forwarded_for: None,
    };
    let dest = match ob.dest(&app, &shared) {
        Ok(d) => d,
        Err((dst, reason)) => {
            info.dst = dst;
            // No route under `default: deny` is policy; the rest are ward's own failures.
            if reason.starts_with("no_route") {
                shared.record(&info.decided(Decision::Deny, None, reason));
            } else {
                shared.record(&info.failed(reason));
            }
            let _ = app.shutdown().await;
            return;
        }
    };
    let (addr, expect) = match dest {
        Dest::Passthrough(dst) => {
            info.dst = dst;
            shared.record(&info.decided(
                Decision::Allow,
                None,
                "passthrough: no route covers the destination; plain TCP outside the mesh",
            ));
            // Boxed, like the other paths: each is allocated only by the connections that
            // take it, so the task every connection starts with stays small.
            Box::pin(async move {
                if let Some(up) = tcp::connect(dst, &shared, &info).await {
                    tcp::pipe(
                        app,
                        up,
                        &shared,
                        &info,
                        &ob.metrics,
                        started,
                        crate::data::io::OnWake::new(std::future::pending()),
                    )
                    .await;
                }
            })
            .await;
            return;
        }
        Dest::Mesh { addr, expect } => (addr, expect),
    };
    info.dst = addr;
    // `tunnel: hbone`: whatever the app sends rides a CONNECT stream as it is.
    if expect.tunnel == Reach::Hbone {
        Box::pin(serve_hbone(app, addr, expect, ob, shared, info, started, false)).await;
        return;
    }
    let protocol = ob
        .spec
        .protocol
        .for_port(addr.port(), &ob.spec.server_first_ports);
    let detected = match protocol {
        Protocol::Tcp => Detected::Opaque,
        Protocol::Http => {
            // An app connection that has sent nothing yet costs only this small task: the
            // HTTP machinery (and its buffers) is made once the first bytes arrive.
            // (peek waits for the first bytes; readable() may wake without any.)
            let idle = shared.settings.load().idle_timeout;
            // Boxed, as the waits below: their timers and peek buffers would otherwise stay
            // in the task of every connection for its whole life, idle or parked.
            let first = Box::pin(async {
                tokio::select! {
                    r = tokio::time::timeout(idle, sniff::peek_http(&app)) => r.ok(),
                    // A drain does not wait for an app that never sent a request.
                    _ = shared.drained() => None,
                }
            })
            .await;
            match first {
                Some(d) => d,
                None => return,
            }
        }
        Protocol::Auto => {
            let settings = shared.settings();
            Box::pin(sniff::peek_tcp(
                &app,
                settings.idle_timeout,
                settings.detect_timeout,
            ))
            .await
        }
    };
    if detected == Detected::Silent {
        shared.record(&info.silent("app", started.elapsed()));
        return;
    }
    if detected != Detected::Opaque {
        let pool = ob.pool(addr, &expect.server_id, &shared).await;
        // A server that chose no HTTP in ALPN (an opaque inbound) gets the app's bytes as they
        // are, on a connection of their own.
        if Box::pin(pool.learn()).await == Speaks::Opaque {
            if expect.tunnel == Reach::Auto && ob.hbone.may_tunnel(addr.ip()) {
                Box::pin(serve_hbone(app, addr, expect, ob, shared, info, started, true)).await;
            } else {
                Box::pin(serve_tcp(app, addr, expect, ob, shared, info, started)).await;
            }
            return;
        }
        // Boxed: the large HTTP connection state is allocated only for connections that get
        // this far, not carried by every task from its start.
        Box::pin(serve_http(
            app,
            detected,
            &ob,
            &shared,
            info,
            pool,
            expect.rule.clone(),
        ))
        .await;
        return;
    }
    // `tunnel: auto`: opaque TCP over HBONE where the destination has a listener for it.
    if expect.tunnel == Reach::Auto && ob.hbone.may_tunnel(addr.ip()) {
        Box::pin(serve_hbone(app, addr, expect, ob, shared, info, started, true)).await;
        return;
    }
    Box::pin(serve_tcp(app, addr, expect, ob, shared, info, started)).await;
}

/// Forwards the app's connection over an HBONE stream to `addr` (through the HBONE listener
/// on its IP), registered among the live connections while it lasts. With `or_direct`, a
/// destination with no HBONE listener gets the connection direct instead.
#[allow(clippy::too_many_arguments)]
async fn serve_hbone(
    mut app: TcpStream,
    addr: SocketAddr,
    expect: Arc<Expect>,
    ob: Arc<Outbound>,
    shared: Arc<Shared>,
    mut info: ConnInfo,
    started: Instant,
    or_direct: bool,
) {
    let to = Open {
        dst: addr,
        hbone_port: expect.hbone_port,
        server_id: &expect.server_id,
        client: info.src,
        handshake_timeout: ob.handshake_timeout,
    };
    let stream = match ob.hbone.open(to, &shared).await {
        Ok(stream) => stream,
        Err(e) if or_direct && e.no_hbone() => {
            ob.hbone.go_direct(addr.ip());
            Box::pin(serve_tcp(app, addr, expect, ob, shared, info, started)).await;
            return;
        }
        Err(e) => {
            tracing::warn!(listener = %ob.name, dst = %addr, reason = e.label(), error = %e, "no HBONE tunnel to the destination");
            let rule = Some(expect.rule.clone());
            let record = match &e {
                HboneError::Mtls(m) => m.record(&info, rule),
                HboneError::Denied { peer, .. } => {
                    peer.mark(&mut info);
                    info.decided(Decision::Deny, rule, format!("{}: {e}", e.label()))
                }
                _ => {
                    if let Some(peer) = e.peer() {
                        peer.mark(&mut info);
                    }
                    info.failed(format!("{}: {e}", e.label()))
                }
            };
            shared.record(&record);
            let _ = app.shutdown().await;
            return;
        }
    };
    stream.peer.mark(&mut info);
    shared.record(&info.decided(Decision::Allow, Some(expect.rule.clone()), "server_id_match"));
    let live = shared.live.register(
        Some(stream.peer.clone()),
        Scope::Bundles,
        shared.settings.load().max_connection_lifetime,
        &shared.store,
    );
    let _lease = stream.lease;
    tcp::pipe(
        app,
        stream.io,
        &shared,
        &info,
        &ob.metrics,
        started,
        live.closed(),
    )
    .await;
}

/// Forwards the app's connection byte for byte over its own mTLS connection to the peer,
/// registered among the live connections while it lasts.
async fn serve_tcp(
    mut app: TcpStream,
    addr: SocketAddr,
    expect: Arc<Expect>,
    ob: Arc<Outbound>,
    shared: Arc<Shared>,
    mut info: ConnInfo,
    started: Instant,
) {
    let settings = shared.settings();
    let to = Dial {
        addr,
        server_id: &expect.server_id,
        connect_timeout: settings.connect_timeout,
        handshake_timeout: ob.handshake_timeout,
    };
    let (stream, peer) = match mtls::connect(to, Alpn::None, &shared.store).await {
        Ok(connected) => connected,
        Err(e) => {
            match &e {
                MtlsError::Dial(_) => {
                    tracing::warn!(listener = %ob.name, %addr, error = %e, "cannot reach the forward address");
                }
                _ => {
                    tracing::debug!(listener = %ob.name, dst = %addr, reason = e.reason(), detail = %e, "outbound mTLS failed")
                }
            }
            shared.record(&e.record(&info, Some(expect.rule.clone())));
            let _ = app.shutdown().await;
            return;
        }
    };
    peer.mark(&mut info);
    shared.record(&info.decided(Decision::Allow, Some(expect.rule.clone()), "server_id_match"));
    let live = shared.live.register(
        Some(Arc::new(peer)),
        Scope::Bundles,
        settings.max_connection_lifetime,
        &shared.store,
    );
    tcp::pipe(app, stream, &shared, &info, &ob.metrics, started, live.closed()).await;
}

/// Serves the app's HTTP/1.1 or h2c connection; requests go out over the peer pool.
async fn serve_http(
    app: TcpStream,
    detected: Detected,
    ob: &Arc<Outbound>,
    shared: &Arc<Shared>,
    info: ConnInfo,
    pool: Arc<PeerPool>,
    rule: Arc<str>,
) {
    let info = Arc::new(info);
    let service = {
        let (ob, shared, info) = (ob.clone(), shared.clone(), info.clone());
        // Boxed per request: hyper keeps a slot the size of the service's future for the
        // whole life of a keep-alive connection; a pointer there, not the 1.8 KB future,
        // makes each idle app connection that much smaller.
        service_fn(move |req| {
            Box::pin(request(
                ob.clone(),
                shared.clone(),
                info.clone(),
                pool.clone(),
                rule.clone(),
                req,
            ))
        })
    };
    // The app proved nothing: only max_connection_lifetime closes this connection.
    let closed = crate::data::live::lifetime(shared.settings.load().max_connection_lifetime);
    h::serve_connection(
        app,
        h::Version::from(detected),
        service,
        shared,
        &info,
        &ob.metrics,
        closed,
    )
    .await;
}

/// One request from the app, forwarded to the peer the way it speaks: over the shared HTTP/2
/// connection, or a pooled HTTP/1.1 one.
async fn request(
    ob: Arc<Outbound>,
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    pool: Arc<PeerPool>,
    rule: Arc<str>,
    mut req: Request<Incoming>,
) -> ServiceResult {
    let started = Instant::now();
    let authority = h::authority(&req);
    // An upgrade (WebSocket, extended CONNECT from an h2c app): its client side is taken now.
    let Asked {
        upgrade,
        refused,
        method,
    } = Asked::take(&mut req);
    let path = req.uri().path().to_owned();
    let record = |decision, reason: Cow<'static, str>, peer: Option<&PeerIdentity>| {
        let mut info = (*info).clone();
        if let Some(p) = peer {
            p.mark(&mut info);
        }
        let mut r = info.decided(decision, Some(rule.clone()), reason);
        r.kind = Kind::Request;
        r.method = Some(method.clone());
        r.path = Some(path.clone());
        r.authority = authority.clone();
        r
    };
    let bytes_in = Arc::new(AtomicU64::new(0));
    let pending = |r| PendingRecord::new(r, shared.clone(), ob.metrics.clone(), started, bytes_in.clone());
    let grpc = upgrade.is_none() && h::is_grpc(req.headers());
    if let Some(why) = refused {
        let r = record(Decision::Deny, format!("bad_upgrade: {why}").into(), None);
        return Ok(pending(r).attach(h::text(StatusCode::BAD_REQUEST, "ward: bad upgrade request\n")));
    }
    let (mut parts, body) = req.into_parts();
    h::strip_hop_by_hop(&mut parts.headers);
    // The app's own identity header never leaves: a ward on the other side replaces it, and a
    // server that is not a ward must not take it for ward's.
    parts.headers.remove(&h::XFCC);
    if let Err(name) = h::sanitize_underscores(&mut parts.headers, ob.spec.underscore_headers) {
        let reason = format!("bad_header: {name} has an underscore (underscore_headers: reject)");
        let r = record(Decision::Deny, reason.into(), None);
        return Ok(pending(r).attach(h::text(
            StatusCode::BAD_REQUEST,
            "ward: header names with '_' are refused\n",
        )));
    }
    let target = authority.clone().unwrap_or_else(|| info.dst.to_string());
    let Some(uri) = h::absolute_uri(target, &path, &parts.uri) else {
        let r = record(Decision::Deny, "bad_target: no valid request target".into(), None);
        return Ok(pending(r).attach(h::text(StatusCode::BAD_REQUEST, "ward: bad request target\n")));
    };
    parts.uri = uri;
    if let Some((client, up)) = upgrade {
        up.set_http1_headers(&mut parts.headers);
        let req = Request::from_parts(parts, Counted::new(body, bytes_in.clone()));
        let r = record(Decision::Allow, "server_id_match".into(), None);
        let t = Tunnel {
            shared: shared.clone(),
            info: (*info).clone(),
            metrics: ob.metrics.clone(),
            method,
            path,
            authority,
        };
        return Ok(Box::pin(upgrade_peer(&ob, &pool, req, up, client, t, pending(r))).await);
    }
    let req = Request::from_parts(parts, Counted::new(body, bytes_in.clone()));
    // Made before the request goes out: a request cut in flight (the client gone, a drain
    // timeout) is still recorded.
    let mut pending = pending(record(Decision::Allow, "server_id_match".into(), None));
    let mark = |pending: &mut PendingRecord, peer: Option<&PeerIdentity>| {
        if let (Some(r), Some(p)) = (pending.record_mut(), peer) {
            r.peer_id = Some(p.id_text.clone());
            r.peer_serial = Some(p.serial.clone());
        }
    };
    match pool.send(req).await {
        Ok((mut resp, peer)) => {
            h::strip_hop_by_hop(resp.headers_mut());
            mark(&mut pending, peer.as_deref());
            Ok(pending.attach(resp))
        }
        // The peer proved who it must be and took the request; it failed there.
        Err(PeerError::Failed { detail, peer }) => {
            tracing::warn!(listener = %ob.name, error = %detail, "request to the peer failed");
            mark(&mut pending, peer.as_deref());
            let message = format!(
                "ward: the request to the upstream at {} failed: {detail}",
                info.dst
            );
            Ok(pending.attach(h::unavailable(StatusCode::BAD_GATEWAY, message, grpc)))
        }
        Err(e) => {
            tracing::warn!(listener = %ob.name, error = %e, "no connection to the peer");
            Ok(no_upstream(&e, "no connection to", info.dst, pending, grpc))
        }
    }
}

/// An upgrade from the app, to the peer the way it speaks (extended CONNECT to a ward); the
/// peer's switch is answered to the app (101, or 200 to an h2c app's extended CONNECT) and
/// the tunnel starts, any other answer (a 403 of the peer's policy) is relayed as it is.
async fn upgrade_peer(
    ob: &Outbound,
    pool: &PeerPool,
    req: Request<crate::pools::InBody>,
    up: Upgrade,
    client: ClientSide,
    mut t: Tunnel,
    mut pending: PendingRecord,
) -> http::Response<crate::http::ResponseBody> {
    let (resp, peer, over_h2) = match pool.upgrade(req, &up.token).await {
        Ok(answered) => answered,
        Err(e) => {
            tracing::warn!(listener = %ob.name, error = %e, "upgrade to the peer failed");
            return no_upstream(&e, "no upgrade to", t.info.dst, pending, false);
        }
    };
    if let Some(r) = pending.record_mut() {
        r.peer_id = Some(peer.id_text.clone());
        r.peer_serial = Some(peer.serial.clone());
    }
    peer.mark(&mut t.info);
    if !Upgrade::switches(resp.status(), over_h2) {
        let mut resp = resp.map(crate::http::ResponseBody::upstream);
        h::strip_hop_by_hop(resp.headers_mut());
        return pending.attach(resp);
    }
    let answer = up.switched(resp.headers());
    let shared = t.shared.clone();
    let lifetime = shared.settings.load().max_connection_lifetime;
    let live = shared
        .live
        .register(Some(peer), Scope::Bundles, lifetime, &shared.store);
    let closed = crate::data::io::OnWake::new(async move { live.closed().await });
    tunnel(client, hyper::upgrade::on(resp), t, closed);
    pending.attach(answer)
}

/// Ward's own answer when a request got no upstream: 502 when the server proved the wrong
/// identity, 503 when it could not be reached or its handshake failed; the record a deny
/// naming why.
fn no_upstream(
    e: &PeerError,
    what: &str,
    dst: SocketAddr,
    mut pending: PendingRecord,
    grpc: bool,
) -> http::Response<crate::http::ResponseBody> {
    let status = if e.wrong_server() {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let message = format!("ward: {what} the upstream at {dst}: {}: {e}", e.label());
    if let Some(r) = pending.record_mut() {
        r.decision = Decision::Deny;
        r.reason = format!("{}: {e}", e.label()).into();
    }
    pending.attach(h::unavailable(status, message, grpc))
}
