//! The admin planes. Two listeners, for two kinds of caller:
//! - the **admin** server (`admin.listen`, loopback): `/live`, `/ready`, `/metrics`, and the
//!   operator's endpoints `/identity`, `/config`, `/policy` and `POST /shutdown` (for Jobs
//!   whose app has finished, and the sidecar's preStop hook). The operator's endpoints answer
//!   only a peer on loopback, whatever address the server is bound to; every request needs a
//!   `Host` that is a loopback name or an IP literal (a DNS-rebinding page sends its own
//!   name), and browser-style cross-site requests (`Origin`, `Sec-Fetch-Site: cross-site`)
//!   get 403, so no web page the operator opens can reach them;
//! - the **probes** server (`admin.probes`, e.g. `0.0.0.0:15020` in a pod): `GET /live`,
//!   `/ready` and `/metrics` only, for kubelet and Prometheus on the pod network.
//!
//! Both cap their connections (in all and per source address) and the time a request head may
//! take, so a flood of half-sent requests cannot hold them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use ward_certs::CredentialStore;

use crate::config::is_loopback;
use crate::metrics::Metrics;

/// What the admin endpoints read.
pub struct AdminState {
    pub store: Arc<CredentialStore>,
    pub metrics: Arc<Metrics>,
    pub audit: crate::audit::AuditLog,
    /// The effective config as JSON (paths only; ward's config holds no secrets).
    pub config: Arc<arc_swap::ArcSwap<serde_json::Value>>,
    /// Whether every listener is bound.
    pub listening: watch::Receiver<bool>,
    /// Whether ward is draining (not ready).
    pub draining: watch::Receiver<bool>,
    /// Asks ward to drain and exit (`POST /shutdown`).
    pub shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState").finish_non_exhaustive()
    }
}

impl AdminState {
    /// Ready: identity loaded, every listener bound, not draining.
    pub fn ready(&self) -> Result<(), &'static str> {
        if !self.store.is_ready() {
            return Err("no identity loaded yet");
        }
        if !*self.listening.borrow() {
            return Err("listeners not bound yet");
        }
        if *self.draining.borrow() {
            return Err("draining");
        }
        Ok(())
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn json(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    respond(StatusCode::OK, "application/json", body)
}

const TEXT: &str = "text/plain; charset=utf-8";

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// `admin.listen`: everything, the operator's endpoints from loopback only.
    Admin,
    /// `admin.probes`: `GET /live`, `/ready`, `/metrics` only.
    Probes,
}

/// At most this many connections per admin listener; more are closed at once.
pub const MAX_CONNECTIONS: usize = 256;
/// At most this many from one source address, so one neighbour flooding the probes port
/// cannot starve kubelet's probes (which come from the node's address).
pub const MAX_PER_SOURCE: u32 = 16;
/// A request head must arrive within this; an idle keep-alive connection is closed after it.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a `Host` header value names this machine unambiguously: `localhost` (or a name
/// under `.localhost`, which resolvers must keep on loopback, RFC 6761) or an IP literal, with
/// an optional port. A DNS-rebinding page reaches 127.0.0.1 under a name of its own, which
/// its `Host` carries.
fn host_is_local(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || port.starts_with(':') => {
                return v6.parse::<std::net::Ipv6Addr>().is_ok();
            }
            _ => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok() || name == "localhost" || name.ends_with(".localhost")
}

/// Why a request to the admin server is refused before routing, if it is.
fn refusal(headers: &HeaderMap, peer: SocketAddr, path: &str) -> Option<&'static str> {
    if let Some(host) = headers.get(header::HOST)
        && !host.to_str().is_ok_and(host_is_local)
    {
        return Some("forbidden: the Host header is not a loopback name or an IP address\n");
    }
    // Browsers send Origin on cross-origin and on POST requests, and Sec-Fetch-Site on all of
    // them; command-line clients, kubelet and Prometheus send neither.
    let site = headers.get("sec-fetch-site").map(|v| v.as_bytes());
    if headers.contains_key(header::ORIGIN) || site.is_some_and(|s| s != b"none" && s != b"same-origin") {
        return Some("forbidden: browser cross-site requests are refused\n");
    }
    let operator = matches!(path, "/identity" | "/config" | "/policy" | "/shutdown");
    if operator && !is_loopback(peer.ip()) {
        return Some("forbidden: this endpoint answers only from the machine itself (loopback)\n");
    }
    None
}

/// Answers one request that came in on `plane` from `peer`.
pub fn answer(
    state: &AdminState,
    plane: Plane,
    peer: SocketAddr,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Response<Full<Bytes>> {
    match plane {
        Plane::Probes => match path {
            "/live" | "/ready" | "/metrics" => route(state, method, path),
            _ => respond(
                StatusCode::NOT_FOUND,
                TEXT,
                "not found: this port serves GET /live /ready /metrics; the rest is on the admin port, from loopback\n",
            ),
        },
        Plane::Admin => match refusal(headers, peer, path) {
            Some(why) => {
                tracing::warn!(%peer, path, why = why.trim_end(), "admin request refused");
                respond(StatusCode::FORBIDDEN, TEXT, why)
            }
            None => route(state, method, path),
        },
    }
}

/// Answers one admin request, by method and path alone.
pub fn route(state: &AdminState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    match (method, path) {
        (&Method::GET, "/live") => respond(StatusCode::OK, TEXT, "live\n"),
        (&Method::GET, "/ready") => match state.ready() {
            Ok(()) => respond(StatusCode::OK, TEXT, "ready\n"),
            Err(why) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: {why}\n"),
            ),
        },
        (&Method::GET, "/metrics") => {
            if let Some(tls) = state.store.current() {
                state.metrics.identity_expiry.set(tls.identity.info().not_after);
            }
            let dropped = state.audit.dropped();
            let counted = state.metrics.audit_dropped.get();
            state
                .metrics
                .audit_dropped
                .inc_by(dropped.saturating_sub(counted));
            respond(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                state.metrics.encode(),
            )
        }
        (&Method::GET, "/identity") => match state.store.current() {
            Some(tls) => {
                let info = tls.identity.info();
                json(&serde_json::json!({
                    "spiffe_id": info.id.as_str(),
                    "serial": info.serial,
                    "not_before": crate::audit::rfc3339(info.not_before),
                    "not_after": crate::audit::rfc3339(info.not_after),
                    "trust_domains": tls.identity.bundles().trust_domains(),
                }))
            }
            None => respond(StatusCode::SERVICE_UNAVAILABLE, TEXT, "no identity loaded yet\n"),
        },
        (&Method::GET, "/config") => json(&state.config.load()),
        (&Method::GET, "/policy") => json(&state.config.load()["policies"]),
        (&Method::POST, "/shutdown") => {
            let _ = state.shutdown.send(true);
            respond(StatusCode::OK, TEXT, "draining\n")
        }
        (_, "/live" | "/ready" | "/metrics" | "/identity" | "/config" | "/policy" | "/shutdown") => {
            respond(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n")
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found; try /live /ready /metrics /identity /config /policy, or POST /shutdown\n",
        ),
    }
}

/// Serves `plane`'s endpoints on `listener` until `stop` flips.
pub async fn serve(
    listener: TcpListener,
    plane: Plane,
    state: Arc<AdminState>,
    mut stop: watch::Receiver<bool>,
) {
    let name = match plane {
        Plane::Admin => "admin",
        Plane::Probes => "probes",
    };
    let open = Arc::new(AtomicUsize::new(0));
    let per_source = Arc::new(crate::data::accept::Pending::default());
    let mut errors = crate::data::accept::AcceptErrors::default();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    errors.failed(name, &e, &state.metrics).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        errors.ok();
        let Some(source) = per_source.admit(peer.ip(), MAX_PER_SOURCE) else {
            state.metrics.admin_refused(name);
            drop(tcp);
            continue;
        };
        if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::AcqRel);
            state.metrics.admin_refused(name);
            drop(tcp);
            continue;
        }
        let (state, open) = (state.clone(), open.clone());
        tokio::spawn(async move {
            let _source = source;
            let service = service_fn(|req: Request<Incoming>| {
                let resp = answer(&state, plane, peer, req.method(), req.uri().path(), req.headers());
                async move { Ok::<_, Infallible>(resp) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
            open.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// Binds the admin address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn local_hosts() {
        for ok in [
            "127.0.0.1",
            "127.0.0.1:15000",
            "10.1.2.3:15020",
            "[::1]:15000",
            "[::1]",
            "localhost",
            "LOCALHOST:15000",
            "localhost.:15000",
            "x.localhost:1",
        ] {
            assert!(host_is_local(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:15000",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "[::1",
            "[::1]x",
            "[evil]:1",
            "",
        ] {
            assert!(!host_is_local(bad), "{bad}");
        }
    }

    #[test]
    fn loopback_peers() {
        for ip in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"] {
            assert!(
                is_loopback(ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))),
                "{ip}"
            );
        }
        for ip in ["10.0.0.1", "::ffff:10.0.0.1", "0.0.0.0", "fe80::1"] {
            assert!(
                !is_loopback(ip.parse().unwrap_or(IpAddr::from([127, 0, 0, 1]))),
                "{ip}"
            );
        }
    }
}
