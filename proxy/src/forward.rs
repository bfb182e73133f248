//! What inbound and outbound share: the per-process state, connecting to a forward address,
//! and copying bytes both ways until both sides are done.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use ward_certs::{CertificateDer, CredentialStore, SvidInfo};
use ward_filters::Decision;

use crate::audit::{AuditLog, ConnInfo};

/// Copy buffer per direction. 16 KiB holds one full TLS record, so a read from the TLS side
/// never has to be split across two writes.
pub const COPY_BUF: usize = 16 * 1024;

/// State every connection handler borrows.
#[derive(Debug)]
pub struct Shared {
    pub store: Arc<CredentialStore>,
    pub audit: AuditLog,
    pub connect_timeout: Duration,
}

/// The validated peer's SPIFFE ID and serial, from the leaf of a finished handshake.
pub fn peer_svid(certs: Option<&[CertificateDer<'_>]>) -> Option<SvidInfo> {
    ward_certs::svid::check_leaf(certs?.first()?).ok()
}

/// Connects to `addr` within the connect timeout; failures are logged and audited.
pub async fn connect(addr: SocketAddr, shared: &Shared, info: &ConnInfo) -> Option<TcpStream> {
    let outcome = match tokio::time::timeout(shared.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            return Some(s);
        }
        Ok(Err(e)) => format!("connect_failed: {addr}: {e}"),
        Err(_) => format!(
            "connect_timeout: {addr} did not answer within {:?}",
            shared.connect_timeout
        ),
    };
    tracing::warn!(listener = %info.listener, %addr, %outcome, "cannot reach the forward address");
    shared.audit.write(&info.decided(Decision::Deny, None, outcome));
    None
}

/// Connects to the app at `forward` and pipes `peer` to it.
pub async fn to_app<S>(peer: S, forward: SocketAddr, shared: &Shared, info: &ConnInfo, started: Instant)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(app) = connect(forward, shared, info).await {
        pipe(peer, app, shared, info, started).await;
    }
}

/// Copies both ways with one fixed buffer per direction (no allocation per read), honouring
/// half-close: EOF on one side shuts down writing on the other, and the other direction goes
/// on until it ends too. Writes the access record at the end.
pub async fn pipe<A, B>(mut a: A, mut b: B, shared: &Shared, info: &ConnInfo, started: Instant)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let result = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, COPY_BUF, COPY_BUF).await;
    let record = match result {
        Ok((a_to_b, b_to_a)) => info.access("closed", Some(a_to_b), Some(b_to_a), started.elapsed()),
        Err(e) => info.access(&format!("error: {e}"), None, None, started.elapsed()),
    };
    shared.audit.write(&record);
}

/// An accept error (such as running out of file descriptors): log it and pause briefly so a
/// persistent error does not spin.
pub async fn accept_error(listener: &str, e: std::io::Error) {
    tracing::warn!(listener, error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}
