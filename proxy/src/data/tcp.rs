//! Opaque TCP: connecting to a forward address, and copying bytes both ways until both sides
//! are done (or the connection is idle, closed by [`crate::data::live`] or drained away).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use ward_filters::Decision;

use crate::audit::ConnInfo;
use crate::data::io::{self, OnWake};
use crate::metrics::ListenerMetrics;
use crate::state::Shared;

/// Connects to `addr` within the connect timeout; failures are logged and audited.
pub async fn connect(addr: SocketAddr, shared: &Shared, info: &ConnInfo) -> Option<TcpStream> {
    let timeout = shared.settings.load().connect_timeout;
    match io::dial(addr, timeout).await {
        Ok(s) => Some(s),
        Err(e) => {
            let outcome = format!("{}: {e}", e.reason());
            tracing::warn!(listener = %info.listener, %addr, %outcome, "cannot reach the forward address");
            shared.record(&info.failed(outcome));
            None
        }
    }
}

/// How a relay ended: `Ok` with the outcome, or `Err` with the reason it was closed (by
/// [`crate::data::live`]); the bytes each way.
pub struct Relayed {
    pub outcome: Result<String, String>,
    pub up: u64,
    pub down: u64,
}

/// Copies both ways ([`crate::data::copy`]: buffers sized to the traffic, no allocation per
/// read), honouring half-close: EOF on one side shuts down writing on the other, and the
/// other direction goes on until it ends too. Ends early when the connection is idle for
/// `idle_timeout` or when `closed` resolves (with the reason). Counts the bytes into the
/// listener's metrics.
pub async fn relay<A, B>(
    a: A,
    mut b: B,
    shared: &Shared,
    metrics: &ListenerMetrics,
    closed: OnWake<impl Future<Output = String>>,
) -> Relayed
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    // Stamping one side sees traffic both ways: its reads are a → b, its writes b → a.
    let (mut a, activity) = io::metered(a, None);
    let idle = shared.settings.load().idle_timeout;
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    // The idle timer and the close are polled when they were woken, not at every wake-up of
    // the copy.
    let outcome = tokio::select! {
        result = crate::data::copy::bidirectional(&mut a, &mut b, &up, &down) => match result {
            Ok(_) => Ok("closed".to_owned()),
            Err(e) => Ok(format!("error: {e}")),
        },
        _ = OnWake::new(activity.idle_for(idle)) => Ok(format!("idle_timeout: no bytes for {idle:?}")),
        reason = closed => Err(reason),
    };
    let (up, down) = (up.load(Ordering::Relaxed), down.load(Ordering::Relaxed));
    metrics.bytes_received.inc_by(up);
    metrics.bytes_sent.inc_by(down);
    Relayed { outcome, up, down }
}

/// [`relay`], then the access record (or the revocation).
pub async fn pipe<A, B>(
    a: A,
    b: B,
    shared: &Shared,
    info: &ConnInfo,
    metrics: &ListenerMetrics,
    started: Instant,
    closed: OnWake<impl Future<Output = String>>,
) where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let Relayed { outcome, up, down } = relay(a, b, shared, metrics, closed).await;
    match outcome {
        Ok(outcome) => shared.record(&info.access(&outcome, Some(up), Some(down), started.elapsed())),
        Err(reason) => {
            tracing::info!(listener = %info.listener, peer = info.peer_id.as_deref(), %reason, "closing a live connection");
            shared.record(&info.decided(Decision::Deny, None, reason));
            shared.record(&info.access("revoked", Some(up), Some(down), started.elapsed()));
        }
    }
}
