//! The outbound path, in order: accept the app's plaintext; for opaque TCP, connect to the
//! peer's inbound, mTLS handshake presenting our SVID, check the server's SPIFFE ID against
//! `server_id`, then bytes both ways. For HTTP (HTTP/1.1 or h2c from the app), every request
//! rides one pooled, multiplexed HTTP/2 mTLS connection to the peer, checked the same way.
//! Audit records along the way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use ward_filters::{Decision, Pattern};

use crate::audit::{ConnInfo, Direction, Kind};
use crate::config::Protocol;
use crate::forward::{self, Shared};
use crate::http::{self as h, Counted, PendingRecord, ServiceResult};
use crate::pool::PeerPool;
use crate::sniff::{self, Detected};
use crate::tls::handshake_failure;

/// One outbound listener, resolved from config.
#[derive(Debug)]
pub struct Outbound {
    pub name: Arc<str>,
    pub forward: SocketAddr,
    pub server_id: Pattern,
    /// `server_id` as written, named in audit records as the deciding rule.
    pub server_id_rule: Arc<str>,
    pub handshake_timeout: Duration,
    pub protocol: Protocol,
    pub detect_timeout: Duration,
    /// The shared HTTP/2 connection to the peer, for HTTP traffic.
    pub pool: PeerPool,
}

/// Accepts until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    ob: Arc<Outbound>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, src)) => {
                    tokio::spawn(handle(ob.clone(), shared.clone(), tcp, src));
                }
                Err(e) => forward::accept_error(&ob.name, e).await,
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn handle(ob: Arc<Outbound>, shared: Arc<Shared>, mut app: TcpStream, src: SocketAddr) {
    let started = Instant::now();
    let _ = app.set_nodelay(true);
    let mut info = ConnInfo {
        listener: ob.name.clone(),
        direction: Direction::Outbound,
        src,
        dst: ob.forward,
        peer_id: None,
        peer_serial: None,
    };
    let detected = match ob.protocol {
        Protocol::Tcp => Detected::Opaque,
        Protocol::Http => Detected::Http1,
        Protocol::Auto => sniff::peek_tcp(&app, ob.detect_timeout).await,
    };
    if detected != Detected::Opaque {
        serve_http(app, detected, ob, shared, info).await;
        return;
    }
    let Some(tls) = shared.store.current() else {
        shared.audit.write(&info.decided(
            Decision::Deny,
            None,
            "no_identity: ward has no SVID loaded yet".into(),
        ));
        return;
    };
    let Some(upstream) = forward::connect(ob.forward, &shared, &info).await else {
        return;
    };
    // No SNI and no DNS-name check: the server is identified by its SPIFFE ID alone.
    let server_name = ServerName::IpAddress(ob.forward.ip().into());
    let connect = TlsConnector::from(tls.client.clone()).connect(server_name, upstream);
    let mut stream = match tokio::time::timeout(ob.handshake_timeout, connect).await {
        Err(_) => {
            let detail = format!("no handshake within {:?}", ob.handshake_timeout);
            shared.audit.write(&info.handshake_failed("timeout", &detail));
            return;
        }
        Ok(Err(e)) => {
            let (reason, detail) = handshake_failure(&e);
            tracing::debug!(listener = %ob.name, dst = %ob.forward, reason, %detail, "outbound handshake failed");
            shared.audit.write(&info.handshake_failed(reason, &detail));
            return;
        }
        Ok(Ok(s)) => s,
    };
    let Some(peer) = forward::peer_svid(stream.get_ref().1.peer_certificates()) else {
        shared
            .audit
            .write(&info.handshake_failed("no_peer_id", "server SPIFFE ID unavailable after handshake"));
        return;
    };
    info.peer_id = Some(peer.id.shared());
    info.peer_serial = Some(peer.serial);
    if !ob.server_id.matches(peer.id.as_str()) {
        let reason = format!(
            "server_id_mismatch: the server presented {} but this listener requires {}",
            peer.id,
            ob.server_id.as_str()
        );
        shared
            .audit
            .write(&info.decided(Decision::Deny, Some(ob.server_id_rule.clone()), reason));
        let _ = stream.shutdown().await;
        let _ = app.shutdown().await;
        return;
    }
    shared.audit.write(&info.decided(
        Decision::Allow,
        Some(ob.server_id_rule.clone()),
        "server_id_match".into(),
    ));
    forward::pipe(app, stream, &shared, &info, started).await;
}

/// Serves the app's HTTP/1.1 or h2c connection; requests go out over the peer pool.
async fn serve_http(
    app: TcpStream,
    detected: Detected,
    ob: Arc<Outbound>,
    shared: Arc<Shared>,
    info: ConnInfo,
) {
    let info = Arc::new(info);
    let service = {
        let (ob, shared, info) = (ob.clone(), shared.clone(), info.clone());
        service_fn(move |req| request(ob.clone(), shared.clone(), info.clone(), req))
    };
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let served = if detected == Detected::Http2 {
        builder
            .http2_only()
            .serve_connection(TokioIo::new(app), service)
            .await
    } else {
        builder.serve_connection(TokioIo::new(app), service).await
    };
    if let Err(e) = served {
        tracing::debug!(listener = %ob.name, src = %info.src, error = %e, "outbound HTTP connection ended with an error");
    }
}

/// One request from the app, forwarded over the shared HTTP/2 connection to the peer.
async fn request(
    ob: Arc<Outbound>,
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> ServiceResult {
    let started = Instant::now();
    let authority = h::authority(&req);
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let record = |decision, rule: Option<Arc<str>>, reason: String, peer: Option<&ward_certs::SvidInfo>| {
        let mut info = (*info).clone();
        if let Some(p) = peer {
            info.peer_id = Some(p.id.shared());
            info.peer_serial = Some(p.serial.clone());
        }
        let mut r = info.decided(decision, rule, reason);
        r.kind = Kind::Request;
        r.method = Some(method.clone());
        r.path = Some(path.clone());
        r.authority = authority.clone();
        r
    };
    let bytes_in = Arc::new(AtomicU64::new(0));
    let conn = match ob.pool.get().await {
        Ok(c) => c,
        Err(e) => {
            let (decision, status) = match e {
                crate::pool::PeerError::ServerIdMismatch { .. } => (Decision::Deny, StatusCode::BAD_GATEWAY),
                _ => (Decision::Deny, StatusCode::SERVICE_UNAVAILABLE),
            };
            tracing::warn!(listener = %ob.name, error = %e, "no connection to the peer");
            let r = record(
                decision,
                Some(ob.server_id_rule.clone()),
                format!("{}: {e}", e.label()),
                None,
            );
            let pending = PendingRecord::new(r, shared.audit.clone(), started, bytes_in);
            return Ok(pending.attach(h::text(status, "ward: the upstream sidecar is unavailable\n")));
        }
    };
    let r = record(
        Decision::Allow,
        Some(ob.server_id_rule.clone()),
        "server_id_match".into(),
        Some(&conn.peer),
    );
    let pending = PendingRecord::new(r, shared.audit.clone(), started, bytes_in.clone());
    let (mut parts, body) = req.into_parts();
    h::strip_hop_by_hop(&mut parts.headers);
    let target = authority.unwrap_or_else(|| ob.forward.to_string());
    let Some(uri) = h::absolute_uri(&target, &path, parts.uri.query()) else {
        return Ok(pending.attach(h::text(StatusCode::BAD_REQUEST, "ward: bad request target\n")));
    };
    parts.uri = uri;
    parts.version = http::Version::HTTP_2;
    // HTTP/2 carries the authority in `:authority`; a Host header beside it is redundant.
    parts.headers.remove(http::header::HOST);
    let mut send = conn.send;
    let req = Request::from_parts(parts, Counted::new(body, bytes_in));
    match send.send_request(req).await {
        Ok(resp) => {
            let mut resp = resp.map(http_body_util::Either::Left);
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
