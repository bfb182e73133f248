//! The outbound path, in order: accept the app's plaintext, connect to the peer's inbound,
//! mTLS handshake presenting our SVID, check the server's SPIFFE ID against `server_id`, then
//! bytes both ways; audit records along the way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use ward_filters::{Decision, Pattern};

use crate::audit::{ConnInfo, Direction};
use crate::forward::{self, Shared};
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
