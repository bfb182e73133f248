//! The admin server (localhost by default): `/live`, `/ready`, `/metrics`, `/identity`,
//! `/config`, `/policy`, and `POST /shutdown` for Jobs whose app has finished.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use ward_certs::CredentialStore;

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

/// Answers one admin request.
pub fn route(state: &AdminState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
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
                    "not_before": crate::commands::rfc3339(info.not_before),
                    "not_after": crate::commands::rfc3339(info.not_after),
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

/// Serves the admin endpoints on `listener` until `stop` flips.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, mut stop: watch::Receiver<bool>) {
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    crate::forward::accept_error("admin", e).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let resp = route(&state, req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .http1_only()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// Binds the admin address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
