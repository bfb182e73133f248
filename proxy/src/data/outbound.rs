//! The outbound path, in order: accept the app's plaintext (within the listener's cap); find
//! the destination and the identity it must prove (explicit `forward` + `server_id`, or in a
//! pod the original destination matched against `routes`; no route: `default` passthrough or
//! deny). Opaque TCP: connect, mTLS handshake presenting our SVID, check the server's SPIFFE
//! ID, then bytes both ways. HTTP (HTTP/1.1 or h2c from the app): every request rides one
//! pooled, multiplexed HTTP/2 mTLS connection per destination, checked the same way.
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
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, watch};
use tokio_rustls::TlsConnector;
use ward_filters::{Decision, Pattern};

use crate::audit::{ConnInfo, Direction, Kind};
use crate::config::{OutboundConfig, OutboundDefault, Protocol, Route};
use crate::data::tcp::{self, PeerChain, Shared};
use crate::data::guard::ConnGuard;
use crate::http::{self as h, Counted, PendingRecord, ServiceResult};
use crate::metrics::ListenerMetrics;
use crate::pools::PeerPool;
use crate::data::sniff::{self, Detected};
use crate::data::mtls::handshake_failure;

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
}

/// The identity a destination must prove, compiled once per listener, and how records name
/// the check.
#[derive(Debug)]
struct Expect {
    server_id: Pattern,
    rule: Arc<str>,
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
        name: &str,
        spec: OutboundConfig,
        handshake_timeout: Duration,
        metrics: ListenerMetrics,
        open: Arc<AtomicUsize>,
    ) -> Result<Outbound, String> {
        let routes = spec
            .routes
            .iter()
            .map(|r| {
                let route = Route::parse(r)?;
                let expect = Expect {
                    rule: Arc::from(format!("route {} -> {}", route.net, route.server_id.as_str())),
                    server_id: route.server_id.clone(),
                };
                Ok((route, Arc::new(expect)))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let explicit = match (spec.transparent, spec.forward, &spec.server_id) {
            (false, Some(addr), Some(id)) => {
                let server_id = Pattern::parse_spiffe(id).map_err(|e| format!("server_id: {e}"))?;
                let rule = Arc::from(format!("server_id {id}"));
                Some((addr, Arc::new(Expect { server_id, rule })))
            }
            (false, _, _) => return Err("an explicit outbound needs forward and server_id".into()),
            (true, _, _) => None,
        };
        Ok(Outbound {
            name: Arc::from(name),
            handshake_timeout,
            explicit,
            routes,
            max_connections: spec
                .max_connections
                .unwrap_or_else(|| crate::config::default_max_connections(crate::limits::nofile())),
            spec,
            metrics: Arc::new(metrics),
            open,
            pools: Mutex::new(HashMap::new()),
        })
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
                Arc::new(PeerPool::new(
                    addr,
                    server_id.clone(),
                    shared.store.clone(),
                    settings.connect_timeout,
                    self.handshake_timeout,
                    settings.max_connection_lifetime,
                ))
            })
            .clone()
    }
}

/// Accepts until `stop` flips.
pub async fn serve(
    listener: Arc<TcpListener>,
    ob: Arc<Outbound>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut errors = tcp::AcceptErrors::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, src)) => {
                    errors.ok();
                    let Some(guard) = ConnGuard::admit(&ob.open, Some(ob.max_connections), &shared.open, &ob.metrics) else {
                        tracing::debug!(listener = %ob.name, %src, "refused: max_connections reached");
                        drop(tcp);
                        continue;
                    };
                    let (ob, shared) = (ob.clone(), shared.clone());
                    crate::data::shards::serve(tcp, move |tcp| handle(ob, shared, tcp, src, guard));
                }
                Err(e) => errors.failed(&ob.name, &e, &shared.metrics).await,
            },
            _ = stop.changed() => return,
        }
    }
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
                        crate::data::guard::OnWake::new(std::future::pending()),
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
    let protocol = ob.spec.protocol;
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
    Box::pin(serve_tcp(app, addr, expect, ob, shared, info, started)).await;
}

/// Forwards the app's connection byte for byte over its own mTLS connection to the peer.
async fn serve_tcp(
    mut app: TcpStream,
    addr: SocketAddr,
    expect: Arc<Expect>,
    ob: Arc<Outbound>,
    shared: Arc<Shared>,
    mut info: ConnInfo,
    started: Instant,
) {
    let Some(tls) = shared.store.current() else {
        shared.record(&info.failed("no_identity: ward has no SVID loaded yet"));
        return;
    };
    let Some(upstream) = tcp::connect(addr, &shared, &info).await else {
        return;
    };
    // No SNI and no DNS-name check: the server is identified by its SPIFFE ID alone.
    let server_name = ServerName::IpAddress(addr.ip().into());
    let connect = TlsConnector::from(tls.client.clone()).connect(server_name, upstream);
    let mut stream = match tokio::time::timeout(ob.handshake_timeout, connect).await {
        Err(_) => {
            let detail = format!("no handshake within {:?}", ob.handshake_timeout);
            shared.record(&info.handshake_failed("timeout", &detail));
            return;
        }
        Ok(Err(e)) => {
            let (reason, detail) = handshake_failure(&e);
            tracing::debug!(listener = %ob.name, dst = %addr, reason, %detail, "outbound handshake failed");
            shared.record(&info.handshake_failed(reason, &detail));
            return;
        }
        Ok(Ok(s)) => s,
    };
    if let Err(reason) = tcp::check_resumed(stream.get_ref().1, &shared.store) {
        shared.record(&info.handshake_failed("resumed_invalid", &reason));
        return;
    }
    let certs = stream.get_ref().1.peer_certificates();
    let Some(peer) = tcp::peer_svid(certs) else {
        shared.record(&info.handshake_failed("no_peer_id", "server SPIFFE ID unavailable after handshake"));
        return;
    };
    let chain = PeerChain::new(certs);
    info.peer_id = Some(peer.id.shared());
    info.peer_serial = Some(peer.serial.into());
    if !expect.server_id.matches(peer.id.as_str()) {
        let reason = format!(
            "server_id_mismatch: the server presented {} but this listener requires {}",
            peer.id,
            expect.server_id.as_str()
        );
        shared.record(&info.decided(Decision::Deny, Some(expect.rule.clone()), reason));
        let _ = stream.shutdown().await;
        let _ = app.shutdown().await;
        return;
    }
    shared.record(&info.decided(Decision::Allow, Some(expect.rule.clone()), "server_id_match"));
    let revoke = tcp::revoked(shared.watch(), shared.store.clone(), Some(chain), || Ok(()));
    tcp::pipe(app, stream, &shared, &info, &ob.metrics, started, revoke).await;
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
    let revoke = tcp::revoked(shared.watch(), shared.store.clone(), None, || Ok(()));
    h::serve_connection(
        app,
        h::Version::from(detected),
        service,
        shared,
        &info,
        &ob.metrics,
        revoke,
    )
    .await;
}

/// One request from the app, forwarded over the shared HTTP/2 connection to the peer.
async fn request(
    ob: Arc<Outbound>,
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    pool: Arc<PeerPool>,
    rule: Arc<str>,
    req: Request<Incoming>,
) -> ServiceResult {
    let started = Instant::now();
    let authority = h::authority(&req);
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let record = |decision, reason: Cow<'static, str>, peer: Option<&crate::pools::PeerConn>| {
        let mut info = (*info).clone();
        if let Some(p) = peer {
            info.peer_id = Some(p.peer.id.shared());
            info.peer_serial = Some(p.serial.clone());
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
    let conn = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            let status = match e {
                crate::pools::PeerError::ServerIdMismatch { .. } => StatusCode::BAD_GATEWAY,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            tracing::warn!(listener = %ob.name, error = %e, "no connection to the peer");
            let r = record(Decision::Deny, format!("{}: {e}", e.label()).into(), None);
            return Ok(pending(r).attach(h::text(status, "ward: the upstream sidecar is unavailable\n")));
        }
    };
    let (mut parts, body) = req.into_parts();
    h::strip_hop_by_hop(&mut parts.headers);
    if let Err(name) = h::sanitize_underscores(&mut parts.headers, ob.spec.underscore_headers) {
        let reason = format!("bad_header: {name} has an underscore (underscore_headers: reject)");
        let r = record(Decision::Deny, reason.into(), Some(&conn));
        return Ok(pending(r).attach(h::text(
            StatusCode::BAD_REQUEST,
            "ward: header names with '_' are refused\n",
        )));
    }
    let pending = pending(record(Decision::Allow, "server_id_match".into(), Some(&conn)));
    let target = authority.unwrap_or_else(|| info.dst.to_string());
    let Some(uri) = h::absolute_uri(target, &path, &parts.uri) else {
        return Ok(pending.attach(h::text(StatusCode::BAD_REQUEST, "ward: bad request target\n")));
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_2;
    // HTTP/2 carries the authority in `:authority`; a Host header beside it is redundant.
    parts.headers.remove(http::header::HOST);
    let mut send = conn.send;
    let req = Request::from_parts(parts, Counted::new(body, bytes_in.clone()));
    match send.send_request(req).await {
        Ok(resp) => {
            let mut resp = resp.map(|b| http_body_util::Either::Left(crate::pools::Upstream::new(b)));
            h::strip_hop_by_hop(resp.headers_mut());
            Ok(pending.attach(resp))
        }
        Err(e) => {
            tracing::warn!(listener = %ob.name, error = %e, "request to the peer failed");
            Ok(pending.attach(h::text(
                StatusCode::BAD_GATEWAY,
                "ward: the upstream sidecar failed the request\n",
            )))
        }
    }
}
