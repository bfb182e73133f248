//! WebSocket and every other HTTP upgrade on HTTP listeners, both ways: an HTTP/1.1 request
//! with `Connection: upgrade` and `Upgrade: <token>`, or HTTP/2 extended CONNECT (RFC 8441)
//! with `:protocol: <token>`. The request goes through the policy like any other, as the app
//! will get it (`GET`, `connection: upgrade`, `upgrade: <token>`, whichever HTTP it came
//! over, so no spelling of the same upgrade meets a different rule); once the upstream has
//! switched (101, or 200 to a CONNECT), the bytes flow both ways as a [`tunnel`] with the idle
//! timeout and re-checks of opaque TCP, and an `upgrade` record at its end.
//!
//! Between two wards the upgraded stream rides the pooled HTTP/2 connection as an extended
//! CONNECT; to the app it is always HTTP/1.1 `Upgrade` (the form every WebSocket server
//! speaks). The WebSocket handshake's own headers ride along end to end, so the app's
//! `Sec-WebSocket-Accept` answers the client's key; a client that came over HTTP/2 (which has
//! no key) gets one made for it.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, oneshot};

use crate::audit::{ConnInfo, Kind};
use crate::data::io::OnWake;
use crate::data::tcp::{Relayed, relay};
use crate::http::body::{ResponseBody, text};
use crate::http::headers::strip_hop_by_hop;
use crate::metrics::ListenerMetrics;
use crate::state::Shared;

/// The upgrade a request asks for.
#[derive(Debug, Clone)]
pub struct Upgrade {
    /// The protocol: the `Upgrade` header's value, or the extended CONNECT's `:protocol`.
    pub token: HeaderValue,
    /// Asked by HTTP/2 extended CONNECT (answered 200), not HTTP/1.1 (answered 101).
    pub h2: bool,
}

impl Upgrade {
    /// The upgrade `req` asks for, if any. An `Upgrade` header without `Connection: upgrade`
    /// asks for none (the header is hop-by-hop and goes), and so does HTTP/1.1 `Upgrade: h2c`
    /// (clients such as curl offer it on any plain request; switching would carry HTTP/2
    /// requests past the policy, h2c smuggling: the request is served as itself). `Err` names
    /// an upgrade that is refused (400): one that is not a `GET`, a list of protocols, a
    /// protocol that is not one token, or `h2c`/`h2` by extended CONNECT. The token is
    /// lowercased, so the policy and the app see one spelling.
    pub fn of<B>(req: &Request<B>) -> Result<Option<Upgrade>, &'static str> {
        let (token, h2) = if req.method() == Method::CONNECT {
            let Some(protocol) = req.extensions().get::<hyper::ext::Protocol>() else {
                return Ok(None);
            };
            (protocol.as_str().as_bytes(), true)
        } else {
            let Some(token) = req.headers().get(header::UPGRADE) else {
                return Ok(None);
            };
            let asks = req.headers().get_all(header::CONNECTION).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
            });
            if !asks || req.version() != http::Version::HTTP_11 {
                return Ok(None);
            }
            let smuggles = token.as_bytes().split(|b| *b == b',').any(|t| {
                t.trim_ascii().eq_ignore_ascii_case(b"h2c") || t.trim_ascii().eq_ignore_ascii_case(b"h2")
            });
            if smuggles {
                return Ok(None);
            }
            if req.method() != Method::GET {
                return Err("an upgrade must be a GET");
            }
            (token.as_bytes(), false)
        };
        // One token (RFC 9110 section 5.6.2), no list, no version suffix ambiguity.
        let is_tchar = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(b);
        if token.is_empty() || !token.iter().all(is_tchar) {
            return Err("the upgrade must name one protocol");
        }
        let lower = token.to_ascii_lowercase();
        if lower == b"h2c" || lower == b"h2" {
            return Err("h2c is not an upgrade ward carries");
        }
        let token = HeaderValue::from_bytes(&lower).map_err(|_| "the upgrade must name one protocol")?;
        Ok(Some(Upgrade { token, h2 }))
    }

    /// Whether it is a WebSocket.
    pub fn is_websocket(&self) -> bool {
        self.token.as_bytes().eq_ignore_ascii_case(b"websocket")
    }

    /// Makes `headers` (hop-by-hop ones already gone) the HTTP/1.1 upgrade request's: the
    /// policy and the app both see `connection: upgrade` and `upgrade: <token>`. A WebSocket
    /// from HTTP/2 carries no key: one is made.
    pub fn set_http1_headers(&self, headers: &mut HeaderMap) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, self.token.clone());
        if self.is_websocket() && !headers.contains_key(header::SEC_WEBSOCKET_KEY) {
            let mut key = [0u8; 16];
            if aws_lc_rs::rand::fill(&mut key).is_ok() {
                use base64::Engine as _;
                let key = base64::engine::general_purpose::STANDARD.encode(key);
                if let Ok(v) = HeaderValue::from_str(&key) {
                    headers.insert(header::SEC_WEBSOCKET_KEY, v);
                }
            }
        }
    }

    /// The answer to the client once the upstream switched: 101 with `Connection: upgrade`
    /// for HTTP/1.1, 200 for extended CONNECT; the upstream's end-to-end headers
    /// (`Sec-WebSocket-Accept`, `-Protocol`, `-Extensions`) carried.
    pub fn switched(&self, upstream: &HeaderMap) -> Response<ResponseBody> {
        let status = if self.h2 {
            StatusCode::OK
        } else {
            StatusCode::SWITCHING_PROTOCOLS
        };
        let mut resp = text(status, "");
        let headers = resp.headers_mut();
        *headers = upstream.clone();
        strip_hop_by_hop(headers);
        headers.remove(header::CONTENT_LENGTH);
        if !self.h2 {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, self.token.clone());
        }
        resp
    }

    /// Whether `status` is the upstream switching.
    pub fn switches(status: StatusCode, over_h2: bool) -> bool {
        if over_h2 {
            status.is_success()
        } else {
            status == StatusCode::SWITCHING_PROTOCOLS
        }
    }
}

/// What a request asks of an upgrade, taken from it before it is used (both directions).
pub struct Asked {
    /// The upgrade and the client's side of it, when one is asked for and may be.
    pub upgrade: Option<(ClientSide, Upgrade)>,
    /// Why an upgrade asked for is refused (400).
    pub refused: Option<&'static str>,
    /// The method the policy and the app see: `GET` for an extended CONNECT.
    pub method: String,
}

impl Asked {
    pub fn take<B>(req: &mut Request<B>) -> Asked {
        let (upgrade, refused) = match Upgrade::of(req) {
            Ok(Some(up)) => (Some((ClientSide::of(req), up)), None),
            Ok(None) => (None, None),
            Err(why) => (None, Some(why)),
        };
        let method = match &upgrade {
            Some((_, up)) if up.h2 => "GET".to_owned(),
            _ => req.method().as_str().to_owned(),
        };
        Asked {
            upgrade,
            refused,
            method,
        }
    }
}

/// A byte stream both ways.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A parked HTTP/1 connection's socket, handed to the tunnel once hyper wrote the 101 (see
/// `http/park.rs`: its connections are served without hyper's upgrade support, so that an idle
/// one can be parked).
pub type Handed = oneshot::Sender<Box<dyn Io>>;

/// What a served connection lends its upgrade requests (in their extensions, only theirs): a
/// count of its tunnels, so the connection (and its place under `max_connections`) lasts
/// until they end, and for an HTTP/1 connection the slot its socket is handed through.
#[derive(Clone, Default)]
pub struct Handoff {
    tunnels: Arc<Tunnels>,
    parked: Option<Arc<Mutex<Option<Handed>>>>,
}

impl Handoff {
    /// For a connection whose HTTP/1 socket is handed over through `parked`.
    pub fn parked(parked: Arc<Mutex<Option<Handed>>>) -> Handoff {
        Handoff {
            tunnels: Arc::default(),
            parked: Some(parked),
        }
    }

    /// Resolves once no tunnel of the connection is left.
    pub async fn tunnels_done(&self) {
        loop {
            let notified = self.tunnels.done.notified();
            if self.tunnels.open.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[derive(Default)]
struct Tunnels {
    open: AtomicUsize,
    done: Notify,
}

/// One open tunnel of a connection.
struct TunnelGuard(Arc<Tunnels>);

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.done.notify_waiters();
        }
    }
}

/// Marks an upgrade request with its connection's [`Handoff`] (no other request pays for it).
pub fn lend<B>(req: &mut Request<B>, handoff: &Handoff) {
    if req.method() == Method::CONNECT || req.headers().contains_key(header::UPGRADE) {
        req.extensions_mut().insert(handoff.clone());
    }
}

/// A connection's service that lends its [`Handoff`] to its upgrade requests.
#[derive(Clone)]
pub struct Lending<S> {
    pub inner: S,
    pub handoff: Handoff,
}

impl<S> Lending<S> {
    /// `inner` lending `handoff`, and the handoff, to wait on its tunnels.
    pub fn new(inner: S, handoff: Handoff) -> (Lending<S>, Handoff) {
        let lending = Lending {
            inner,
            handoff: handoff.clone(),
        };
        (lending, handoff)
    }
}

impl<S, B> hyper::service::Service<Request<B>> for Lending<S>
where
    S: hyper::service::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, mut req: Request<B>) -> S::Future {
        lend(&mut req, &self.handoff);
        self.inner.call(req)
    }
}

/// The client's side of an upgrade, taken from its request before the request is used.
pub struct ClientSide {
    io: Client,
    guard: Option<TunnelGuard>,
}

enum Client {
    Hyper(OnUpgrade),
    Parked(oneshot::Receiver<Box<dyn Io>>),
}

impl ClientSide {
    pub fn of<B>(req: &mut Request<B>) -> ClientSide {
        let handoff = req.extensions_mut().remove::<Handoff>();
        let guard = handoff.as_ref().map(|h| {
            h.tunnels.open.fetch_add(1, Ordering::AcqRel);
            TunnelGuard(h.tunnels.clone())
        });
        let io = match handoff.and_then(|h| h.parked) {
            Some(slot) => {
                let (tx, rx) = oneshot::channel();
                if let Ok(mut slot) = slot.lock() {
                    *slot = Some(tx);
                }
                Client::Parked(rx)
            }
            None => Client::Hyper(hyper::upgrade::on(req)),
        };
        ClientSide { io, guard }
    }

    async fn take(self) -> Result<(Box<dyn Io>, Option<TunnelGuard>), String> {
        let io: Box<dyn Io> = match self.io {
            Client::Hyper(on) => Box::new(TokioIo::new(on.await.map_err(|e| e.to_string())?)),
            Client::Parked(rx) => rx
                .await
                .map_err(|_| "the client's connection ended before the switch".to_owned())?,
        };
        Ok((io, self.guard))
    }
}

/// What a tunnel's record needs.
pub struct Tunnel {
    pub shared: Arc<Shared>,
    pub info: ConnInfo,
    pub metrics: Arc<ListenerMetrics>,
    pub method: String,
    pub path: String,
    pub authority: Option<String>,
}

/// Runs the upgraded stream between the client and the upstream until either side ends it,
/// it is idle for `idle_timeout`, or `closed` resolves (the registry of live connections: a
/// bundle change, a reload whose policy denies the upgrade request now, the peer's SVID
/// expiring, `max_connection_lifetime`). Writes the `upgrade` record at its end.
pub fn tunnel<F>(client: ClientSide, upstream: OnUpgrade, t: Tunnel, closed: OnWake<F>)
where
    F: Future<Output = String> + Send + 'static,
{
    tokio::spawn(async move {
        let started = Instant::now();
        let (client, guard) = match client.take().await {
            Ok(c) => c,
            Err(e) => return t.record(Err(format!("error: {e}")), 0, 0, started),
        };
        let upstream = match upstream.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => return t.record(Err(format!("error: the upstream's switch: {e}")), 0, 0, started),
        };
        let Relayed { outcome, up, down } = relay(client, upstream, &t.shared, &t.metrics, closed).await;
        drop(guard);
        match outcome {
            Ok(outcome) => t.record(Ok(outcome), up, down, started),
            Err(reason) => {
                tracing::info!(listener = %t.info.listener, peer = t.info.peer_id.as_deref(), %reason, "closing an upgraded stream");
                t.shared
                    .record(&t.info.decided(ward_filters::Decision::Deny, None, reason.clone()));
                t.record(Ok(format!("revoked: {reason}")), up, down, started);
            }
        }
    });
}

impl Tunnel {
    fn record(&self, outcome: Result<String, String>, up: u64, down: u64, started: Instant) {
        let outcome = outcome.unwrap_or_else(|e| e);
        let mut r = self
            .info
            .access(&outcome, Some(up), Some(down), started.elapsed());
        r.kind = Kind::Upgrade;
        r.method = Some(self.method.clone());
        r.path = Some(self.path.clone());
        r.authority = self.authority.clone();
        self.shared.record(&r);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn an_upgrade_is_asked_by_connection_upgrade_or_extended_connect_only() {
        let h1 = |headers: &[(&str, &str)]| {
            let mut b = Request::get("/ws");
            for (n, v) in headers {
                b = b.header(*n, *v);
            }
            Upgrade::of(&b.body(()).unwrap()).unwrap()
        };
        let up = h1(&[("connection", "keep-alive, Upgrade"), ("upgrade", "WebSocket")]).unwrap();
        assert!(up.is_websocket() && !up.h2);
        assert_eq!(up.token, "websocket", "one spelling");
        assert!(
            h1(&[("upgrade", "websocket")]).is_none(),
            "no Connection: upgrade"
        );
        assert!(h1(&[("connection", "upgrade")]).is_none(), "no Upgrade");
        for smuggle in ["h2c", "H2C", "websocket, h2c", "h2"] {
            assert!(
                h1(&[("connection", "upgrade"), ("upgrade", smuggle)]).is_none(),
                "{smuggle}"
            );
        }
        let refused = |method: &str, upgrade: &str| {
            let req = Request::builder()
                .method(method)
                .uri("/ws")
                .header("connection", "upgrade")
                .header("upgrade", upgrade)
                .body(())
                .unwrap();
            Upgrade::of(&req).unwrap_err()
        };
        assert_eq!(refused("POST", "websocket"), "an upgrade must be a GET");
        assert_eq!(
            refused("GET", "websocket, foo"),
            "the upgrade must name one protocol"
        );
        assert_eq!(refused("GET", "web socket"), "the upgrade must name one protocol");
        let connect = |protocol: &'static str| {
            let mut req = Request::connect("/ws").body(()).unwrap();
            req.extensions_mut()
                .insert(hyper::ext::Protocol::from_static(protocol));
            Upgrade::of(&req)
        };
        assert!(
            Upgrade::of(&Request::connect("/ws").body(()).unwrap())
                .unwrap()
                .is_none(),
            "plain CONNECT"
        );
        assert!(
            connect("h2c").is_err() && connect("H2").is_err(),
            "h2c by extended CONNECT"
        );
        let up = connect("websocket").unwrap().unwrap();
        assert!(up.h2 && up.is_websocket());
        // From HTTP/2, the HTTP/1.1 request gets the upgrade headers and a fresh key.
        let mut headers = HeaderMap::new();
        up.set_http1_headers(&mut headers);
        assert_eq!(headers["connection"], "upgrade");
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["sec-websocket-key"].len(), 24);
    }

    #[test]
    fn the_switch_answers_101_or_200_with_the_upstreams_headers() {
        let mut upstream = HeaderMap::new();
        upstream.insert("sec-websocket-accept", HeaderValue::from_static("abc"));
        upstream.insert("connection", HeaderValue::from_static("upgrade, x-hop"));
        upstream.insert("x-hop", HeaderValue::from_static("1"));
        let h1 = Upgrade {
            token: HeaderValue::from_static("websocket"),
            h2: false,
        };
        let r = h1.switched(&upstream);
        assert_eq!(r.status(), 101);
        assert_eq!(r.headers()["sec-websocket-accept"], "abc");
        assert_eq!(r.headers()["upgrade"], "websocket");
        assert!(r.headers().get("x-hop").is_none());
        let h2 = Upgrade { h2: true, ..h1 };
        let r = h2.switched(&upstream);
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("upgrade").is_none());
        assert!(Upgrade::switches(StatusCode::SWITCHING_PROTOCOLS, false));
        assert!(!Upgrade::switches(StatusCode::OK, false));
        assert!(Upgrade::switches(StatusCode::OK, true));
    }
}
