//! The inbound path, in order: accept, mTLS handshake with our SVID (the peer must present
//! one), connection policy, then bytes both ways to the app; audit records along the way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use ward_filters::{Decision, Peer, Policy};

use crate::audit::{ConnInfo, Direction};
use crate::config::Mtls;
use crate::forward::{self, Shared};
use crate::tls::handshake_failure;

/// One inbound listener, resolved from config.
#[derive(Debug)]
pub struct Inbound {
    pub name: Arc<str>,
    pub forward: SocketAddr,
    pub mtls: Mtls,
    pub policy: Arc<Policy>,
    pub handshake_timeout: Duration,
}

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Accepts until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    ib: Arc<Inbound>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, src)) => {
                    tokio::spawn(handle(ib.clone(), shared.clone(), tcp, src));
                }
                Err(e) => forward::accept_error(&ib.name, e).await,
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn handle(ib: Arc<Inbound>, shared: Arc<Shared>, tcp: TcpStream, src: SocketAddr) {
    let started = Instant::now();
    let dst = tcp.local_addr().unwrap_or(src);
    let _ = tcp.set_nodelay(true);
    let mut info = ConnInfo {
        listener: ib.name.clone(),
        direction: Direction::Inbound,
        src,
        dst,
        peer_id: None,
        peer_serial: None,
    };
    let Some(tls) = shared.store.current() else {
        shared.audit.write(&info.decided(
            Decision::Deny,
            None,
            "no_identity: ward has no SVID loaded yet".into(),
        ));
        return;
    };

    if ib.mtls == Mtls::Permissive && !looks_like_tls(&tcp, ib.handshake_timeout).await {
        let verdict = ib.policy.evaluate_connection(Peer::Unauthenticated);
        shared.audit.write(&info.authz(&verdict));
        if verdict.decision == Decision::Allow {
            forward::to_app(tcp, ib.forward, &shared, &info, started).await;
        }
        return;
    }

    let accept = TlsAcceptor::from(tls.server.clone()).accept(tcp);
    let mut stream = match tokio::time::timeout(ib.handshake_timeout, accept).await {
        Err(_) => {
            let detail = format!("no handshake within {:?}", ib.handshake_timeout);
            shared.audit.write(&info.handshake_failed("timeout", &detail));
            return;
        }
        Ok(Err(e)) => {
            let (reason, detail) = handshake_failure(&e);
            tracing::debug!(listener = %ib.name, %src, reason, %detail, "inbound handshake failed");
            shared.audit.write(&info.handshake_failed(reason, &detail));
            return;
        }
        Ok(Ok(s)) => s,
    };

    let peer = forward::peer_svid(stream.get_ref().1.peer_certificates());
    let Some(peer) = peer else {
        // The verifier accepted the chain, so this cannot happen; refuse rather than guess.
        shared
            .audit
            .write(&info.handshake_failed("no_peer_id", "peer SPIFFE ID unavailable after handshake"));
        return;
    };
    info.peer_id = Some(peer.id.shared());
    info.peer_serial = Some(peer.serial);
    let verdict = ib
        .policy
        .evaluate_connection(Peer::Authenticated(peer.id.as_str()));
    shared.audit.write(&info.authz(&verdict));
    if verdict.decision == Decision::Deny {
        let _ = stream.shutdown().await;
        return;
    }
    forward::to_app(stream, ib.forward, &shared, &info, started).await;
}

/// In permissive mode: does the peer open with a TLS handshake record? Waits at most
/// `within` for the first byte; silence counts as plaintext.
async fn looks_like_tls(tcp: &TcpStream, within: Duration) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(within, tcp.peek(&mut first)).await,
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE
    )
}
