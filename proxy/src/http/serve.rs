//! Serving one HTTP connection, whichever version it speaks, until it ends: drained (in-flight
//! requests finish, then `Connection: close` or GOAWAY), closed by the registry of live
//! connections (at once, with an audit record), or ended by either side; its access record
//! at the end.

use std::future::Future;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::audit::ConnInfo;
use crate::data::io::OnWake;
use crate::http::park;
use crate::http::upgrade::{Handoff, Lending};
use crate::metrics::ListenerMetrics;
use crate::state::Shared;

/// Which HTTP a connection speaks, when it is known before the first request is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.1 (ALPN said so, or the first bytes cannot be the HTTP/2 preface).
    H1,
    /// HTTP/2: ALPN `h2`, or the prior-knowledge preface was seen.
    H2,
    /// Either: hyper reads the preface to decide.
    Either,
    /// HTTP/2 carrying HBONE tunnels: CONNECT streams with ztunnel's windows and stream
    /// limit; its bytes are counted by each stream's own relay, not here.
    Hbone,
}

impl From<crate::data::sniff::Detected> for Version {
    fn from(d: crate::data::sniff::Detected) -> Version {
        use crate::data::sniff::Detected;
        match d {
            Detected::Http1 => Version::H1,
            Detected::Http2 => Version::H2,
            Detected::Http | Detected::Opaque | Detected::Silent => Version::Either,
        }
    }
}

/// Serves one HTTP connection until it ends. On drain, in-flight requests finish and the
/// connection closes (`Connection: close` / GOAWAY); when `revoke` resolves, the connection is
/// closed at once with an audit record.
///
/// A connection whose version is known gets hyper's HTTP/1 or HTTP/2 server alone: no
/// version probe in front of every read, and an HTTP/1 connection's state carries no HTTP/2
/// machinery (smaller per idle keep-alive connection).
pub async fn serve_connection<I, S, B>(
    io: I,
    version: Version,
    service: S,
    shared: &Shared,
    info: &ConnInfo,
    metrics: &ListenerMetrics,
    revoke: OnWake<impl Future<Output = String>>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Unpin + Send + 'static,
    S::Future: Unpin + Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let settings = shared.settings();
    // Wire bytes each way, headers included, counted as they pass.
    let started = Instant::now();
    let tally =
        (version != Version::Hbone).then(|| (metrics.bytes_received.clone(), metrics.bytes_sent.clone()));
    let (io, bytes) = crate::data::io::counted(io, tally);
    let ctx = Drive {
        shared,
        info,
        bytes: &bytes,
        started,
    };
    // Each version's state is boxed on its own, so a connection carries only its own: an idle
    // (parked) HTTP/1 connection a few hundred bytes, not the several KB of the HTTP/2 and
    // auto-detecting servers' futures.
    match version {
        Version::H1 => {
            Box::pin(async move {
                // Upgrades: hyper writes the 101, then this connection's socket is handed to
                // the tunnel through `handed` (see `park`).
                let handed = std::sync::Arc::new(std::sync::Mutex::new(None));
                let (service, handoff) = Lending::new(service, Handoff::parked(handed.clone()));
                let mut b = hyper::server::conn::http1::Builder::new();
                b.timer(TokioTimer::new())
                    .header_read_timeout(settings.request_header_timeout);
                let parking = park::Parking {
                    after: park::PARK_AFTER,
                    idle_timeout: settings.request_header_timeout,
                };
                // Served, parked while idle ([`park`]), until it ends.
                let mut revoke = revoke;
                let (mut draining, mut drained) = ctx.drain_watch();
                let (ended, parks) = park::serve(
                    &b,
                    io,
                    service,
                    &handed,
                    parking,
                    ctx.bytes,
                    &mut draining,
                    &mut drained,
                    &mut revoke,
                )
                .await;
                ctx.h1_ended(ended, parks, draining, parking);
                // A tunnel still waiting for a socket that never came (the connection was
                // revoked or failed after its 101 was made) ends now.
                if let Ok(mut waiting) = handed.lock() {
                    waiting.take();
                }
                // The connection holds its place (under `max_connections`) while its tunnel runs.
                handoff.tunnels_done().await;
            })
            .await;
        }
        Version::H2 => {
            Box::pin(async move {
                let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                b.timer(TokioTimer::new())
                    .keep_alive_interval(H2_KEEPALIVE)
                    .enable_connect_protocol();
                let (service, handoff) = Lending::new(service, Handoff::default());
                ctx.drive(b.serve_connection(TokioIo::new(io), service), revoke)
                    .await;
                handoff.tunnels_done().await;
            })
            .await;
        }
        Version::Hbone => {
            Box::pin(async move {
                use crate::hbone::wire;
                let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                b.timer(TokioTimer::new())
                    .keep_alive_interval(H2_KEEPALIVE)
                    .initial_stream_window_size(wire::STREAM_WINDOW)
                    .initial_connection_window_size(wire::CONNECTION_WINDOW)
                    .max_frame_size(wire::MAX_FRAME)
                    .max_concurrent_streams(wire::MAX_STREAMS)
                    .max_send_buf_size(wire::MAX_FRAME as usize);
                ctx.drive(b.serve_connection(TokioIo::new(io), service), revoke)
                    .await;
            })
            .await;
        }
        Version::Either => {
            Box::pin(async move {
                let mut b = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                b.http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(settings.request_header_timeout);
                b.http2()
                    .timer(TokioTimer::new())
                    .keep_alive_interval(H2_KEEPALIVE)
                    .enable_connect_protocol();
                let (service, handoff) = Lending::new(service, Handoff::default());
                ctx.drive(
                    b.serve_connection_with_upgrades(TokioIo::new(io), service),
                    revoke,
                )
                .await;
                handoff.tunnels_done().await;
            })
            .await;
        }
    }
}

/// HTTP/2 PINGs on an idle client connection, so a dead peer is noticed.
const H2_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(30);

/// What driving a served connection needs for its records.
struct Drive<'a> {
    shared: &'a Shared,
    info: &'a ConnInfo,
    bytes: &'a crate::data::io::ByteCount,
    started: Instant,
}

impl Drive<'_> {
    /// The connection's access record, whichever way it ends.
    fn access(&self, outcome: &str) {
        let (read, written) = self.bytes.get();
        self.shared.record(
            &self
                .info
                .access(outcome, Some(read), Some(written), self.started.elapsed()),
        );
    }

    /// The connection was revoked: the deny and the access record.
    fn revoked(&self, reason: &str) {
        let info = self.info;
        tracing::info!(listener = %info.listener, peer = info.peer_id.as_deref(), %reason, "closing a live connection");
        self.shared
            .record(&info.decided(ward_filters::Decision::Deny, None, reason.to_owned()));
        self.access("revoked");
    }

    /// Whether ward is draining now, and a future that resolves once it starts (never if it
    /// already has). Drain and revocation are rare: each is polled when it was woken, not at
    /// every wake-up of the connection.
    fn drain_watch(&self) -> (bool, OnWake<impl Future<Output = ()> + use<>>) {
        let mut drain = self.shared.draining.subscribe();
        let draining = *drain.borrow_and_update();
        let drained = OnWake::new(async move {
            while drain.changed().await.is_ok() {
                if *drain.borrow_and_update() {
                    return;
                }
            }
            // No sender left: no drain will come.
            std::future::pending::<()>().await
        });
        (draining, drained)
    }

    /// The records of an HTTP/1 connection [`park::serve`] ended.
    fn h1_ended(&self, ended: park::Ended, parks: u32, draining: bool, parking: park::Parking) {
        let info = self.info;
        match ended {
            park::Ended::Closed => self.access(if draining { "drained" } else { "closed" }),
            park::Ended::Upgraded => self.access("upgraded"),
            park::Ended::IdleTimeout => self.access(&format!(
                "idle_timeout: no request within {:?}",
                parking.idle_timeout
            )),
            park::Ended::Failed(e) => {
                tracing::debug!(listener = %info.listener, src = %info.src, error = %e, parks, "HTTP connection ended with an error");
                self.access(&format!("error: {e}"));
            }
            park::Ended::Revoked(reason) => self.revoked(&reason),
        }
    }

    async fn drive<C>(&self, conn: C, mut revoke: OnWake<impl Future<Output = String>>)
    where
        C: GracefulConnection,
        C::Error: std::fmt::Display,
    {
        let info = self.info;
        tokio::pin!(conn);
        let (mut draining, mut drained) = self.drain_watch();
        if draining {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                served = conn.as_mut() => {
                    match served {
                        Ok(()) => self.access(if draining { "drained" } else { "closed" }),
                        Err(e) => {
                            tracing::debug!(listener = %info.listener, src = %info.src, error = %e, "HTTP connection ended with an error");
                            self.access(&format!("error: {e}"));
                        }
                    }
                    return;
                }
                () = &mut drained, if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                reason = &mut revoke => {
                    self.revoked(&reason);
                    return;
                }
            }
        }
    }
}
