//! Every mutual-TLS connection ward takes or makes is set up here, and nowhere else:
//! 1. the handshake with our current SVID, within the listener's handshake timeout (calling
//!    out, after a TCP connect within the connect timeout);
//! 2. a resumed session's chain checked again against the bundles and the clock of now (a
//!    session ticket must not outlive the SVID or the CA it was made with);
//! 3. the peer's SVID read from its validated leaf: its SPIFFE ID and serial;
//! 4. calling out, the server's ID matched against the ID the destination must prove
//!    (`server_id`, or the route's).
//!
//! Inbound listeners call [`accept`]; outbound listeners and the peer pool call [`connect`].
//! Both return the TLS stream and one [`PeerIdentity`], or one [`MtlsError`] whose
//! [`reason`](MtlsError::reason) is the label of audit records and metrics and whose
//! [`record`](MtlsError::record) is the audit record of the failure.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};
use ward_certs::{CertificateDer, CredentialStore, SpiffeId, SvidVerifier, UnixTime, VerifyError};
use ward_filters::{Decision, Pattern};

use crate::audit::{ConnInfo, Record};
use crate::data::io::{DialError, dial};

/// Who the peer of one connection proved to be.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    pub id: SpiffeId,
    /// The ID as records carry it, shared by every record of the connection.
    pub id_text: Arc<str>,
    /// The serial of the peer's leaf, shared by every record of the connection.
    pub serial: Arc<str>,
    /// The leaf's notAfter, Unix seconds.
    pub not_after: i64,
    /// The peer's chain, leaf first: kept so the connection can be validated again when the
    /// bundles change.
    chain: Arc<[CertificateDer<'static>]>,
    /// The identity generation the chain was checked against.
    pub generation: u64,
    /// The notAfter (Unix seconds) of our own SVID in this handshake: a pooled connection is
    /// retired before it, as the peer closes it then.
    pub own_not_after: i64,
}

impl PeerIdentity {
    /// From the peer certificates of a finished (verified) handshake.
    fn of(
        conn: &rustls::CommonState,
        generation: u64,
        own: &ward_certs::Identity,
    ) -> Result<PeerIdentity, MtlsError> {
        let certs = conn.peer_certificates();
        let svid = ward_certs::peer_svid(certs).ok_or(MtlsError::NoPeerId)?;
        Ok(PeerIdentity {
            id_text: svid.id.shared(),
            id: svid.id,
            serial: svid.serial.into(),
            not_after: svid.not_after,
            chain: certs
                .unwrap_or_default()
                .iter()
                .map(|c| c.clone().into_owned())
                .collect(),
            generation,
            own_not_after: own.info().not_after,
        })
    }

    /// The peer's leaf certificate (DER).
    pub fn leaf(&self) -> &[u8] {
        self.chain.first().map_or(&[], |c| c.as_ref())
    }

    /// Validates the chain again against the bundles of `store` now. `Err` carries the
    /// verifier's reason label and what it said.
    pub fn still_valid(&self, store: &CredentialStore) -> Result<(), (&'static str, String)> {
        let Some(tls) = store.current() else {
            return Ok(());
        };
        let Some((leaf, rest)) = self.chain.split_first() else {
            return Ok(());
        };
        let verifier = SvidVerifier::new(tls.identity.bundles().clone(), &ward_certs::provider());
        verifier
            .verify(leaf, rest, UnixTime::now(), ward_certs::svid_usage())
            .map(|_| ())
            .map_err(|e| (e.reason(), e.to_string()))
    }

    /// The audit fields of the peer, set on a connection's records.
    pub fn mark(&self, info: &mut ConnInfo) {
        info.peer_id = Some(self.id_text.clone());
        info.peer_serial = Some(self.serial.clone());
    }
}

/// Why an mTLS connection could not be had. [`reason`](MtlsError::reason) is the stable label.
#[derive(Debug, thiserror::Error)]
pub enum MtlsError {
    #[error("ward has no SVID loaded yet")]
    NoIdentity,
    #[error("{0}")]
    Dial(#[from] DialError),
    #[error("no handshake within {0:?}")]
    Timeout(Duration),
    /// The handshake failed: `reason` names how (a verifier reason such as `expired`, or
    /// `no_client_cert`, `not_tls`, `peer_closed`, ...).
    #[error("{detail}")]
    Handshake { reason: &'static str, detail: String },
    #[error("{detail}")]
    Resumed { detail: String },
    #[error("peer SPIFFE ID unavailable after handshake")]
    NoPeerId,
    /// The server proved an ID the destination does not accept; the handshake itself was good.
    #[error("the server presented {} but this listener requires {want}", .peer.id)]
    ServerIdMismatch { peer: Box<PeerIdentity>, want: String },
}

impl MtlsError {
    /// The stable label of audit records and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            MtlsError::NoIdentity => "no_identity",
            MtlsError::Dial(e) => e.reason(),
            MtlsError::Timeout(_) => "timeout",
            MtlsError::Handshake { reason, .. } => reason,
            MtlsError::Resumed { .. } => "resumed_invalid",
            MtlsError::NoPeerId => "no_peer_id",
            MtlsError::ServerIdMismatch { .. } => "server_id_mismatch",
        }
    }

    /// The audit record of this failure for a connection: ward's own failures (no identity,
    /// no TCP connection) are errors, a failed handshake a handshake record, and a server
    /// that proved the wrong ID a deny by `rule` (with the peer it was).
    pub fn record(&self, info: &ConnInfo, rule: Option<Arc<str>>) -> Record {
        match self {
            MtlsError::NoIdentity | MtlsError::Dial(_) => info.failed(format!("{}: {self}", self.reason())),
            MtlsError::ServerIdMismatch { peer, .. } => {
                let mut info = info.clone();
                peer.mark(&mut info);
                info.decided(Decision::Deny, rule, format!("{}: {self}", self.reason()))
            }
            _ => info.handshake_failed(self.reason(), &self.to_string()),
        }
    }
}

/// Names why a TLS handshake failed: a short stable label and what rustls (or the SVID
/// verifier) said.
fn handshake_failure(err: &io::Error) -> MtlsError {
    let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        let reason = match err.kind() {
            io::ErrorKind::UnexpectedEof => "peer_closed",
            io::ErrorKind::ConnectionReset => "peer_reset",
            _ => "io",
        };
        return MtlsError::Handshake {
            reason,
            detail: err.to_string(),
        };
    };
    if let Some(v) = VerifyError::from_rustls(tls) {
        return MtlsError::Handshake {
            reason: v.reason(),
            detail: v.to_string(),
        };
    }
    let reason = match tls {
        rustls::Error::NoCertificatesPresented => {
            return MtlsError::Handshake {
                reason: "no_client_cert",
                detail: "the peer presented no client certificate (mTLS is required)".into(),
            };
        }
        rustls::Error::InvalidCertificate(_) => "bad_certificate",
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => "not_tls",
        rustls::Error::AlertReceived(_) => "peer_alert",
        rustls::Error::PeerIncompatible(_) => "incompatible",
        _ => "tls",
    };
    MtlsError::Handshake {
        reason,
        detail: tls.to_string(),
    }
}

/// On a resumed TLS session the peer's chain is restored, not verified again: it is checked
/// now against the current bundles and time, so an SVID that expired (or whose CA left the
/// bundle) since the first handshake cannot ride a session ticket.
fn check_resumed(
    conn: &rustls::CommonState,
    peer: &PeerIdentity,
    store: &CredentialStore,
) -> Result<(), MtlsError> {
    if conn.handshake_kind() != Some(rustls::HandshakeKind::Resumed) {
        return Ok(());
    }
    peer.still_valid(store).map_err(|(reason, e)| MtlsError::Resumed {
        detail: format!("resumed_{reason}: resumed session: {e}"),
    })
}

/// Which of the current identity's TLS configs a handshake uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// No ALPN: opaque TCP.
    None,
    /// HTTP: `h2` and `http/1.1`, in that order (a server prefers `h2` too).
    Http,
    /// `h2` only: HBONE tunnels.
    H2,
}

/// The identity generation and the configs of now, in that order: the store swaps the configs
/// in before it bumps the generation, so a handshake is never taken as checked under a
/// generation newer than the bundles it was verified with.
fn current(store: &CredentialStore) -> Result<(u64, Arc<ward_certs::TlsConfigs>), MtlsError> {
    let generation = store.generation();
    let tls = store.current().ok_or(MtlsError::NoIdentity)?;
    Ok((generation, tls))
}

/// Takes an mTLS connection on `tcp` with the current identity (a client SVID is required),
/// within `timeout`.
pub async fn accept(
    tcp: TcpStream,
    alpn: Alpn,
    timeout: Duration,
    store: &CredentialStore,
) -> Result<(server::TlsStream<TcpStream>, PeerIdentity), MtlsError> {
    let (generation, tls) = current(store)?;
    let config = match alpn {
        Alpn::None => tls.server.clone(),
        Alpn::Http => tls.server_http.clone(),
        Alpn::H2 => tls.server_h2.clone(),
    };
    let stream = match tokio::time::timeout(timeout, TlsAcceptor::from(config).accept(tcp)).await {
        Err(_) => return Err(MtlsError::Timeout(timeout)),
        Ok(Err(e)) => return Err(handshake_failure(&e)),
        Ok(Ok(s)) => s,
    };
    let conn = stream.get_ref().1;
    let peer = PeerIdentity::of(conn, generation, &tls.identity)?;
    check_resumed(conn, &peer, store)?;
    Ok((stream, peer))
}

/// How to call out to one destination.
#[derive(Debug, Clone, Copy)]
pub struct Dial<'a> {
    pub addr: SocketAddr,
    /// The ID the server must prove.
    pub server_id: &'a Pattern,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
}

/// Connects to `to.addr` and makes an mTLS connection with the current identity, whose server
/// must prove an ID `to.server_id` matches. The server is identified by its SPIFFE ID alone:
/// no SNI, no DNS-name check.
pub async fn connect(
    to: Dial<'_>,
    alpn: Alpn,
    store: &CredentialStore,
) -> Result<(client::TlsStream<TcpStream>, PeerIdentity), MtlsError> {
    // Refused before a TCP connection is made when there is no identity yet.
    current(store)?;
    let tcp = dial(to.addr, to.connect_timeout).await?;
    let (generation, tls) = current(store)?;
    let config = match alpn {
        Alpn::None => tls.client.clone(),
        Alpn::Http => tls.client_http.clone(),
        Alpn::H2 => tls.client_h2.clone(),
    };
    let server_name = ServerName::IpAddress(to.addr.ip().into());
    let connect = TlsConnector::from(config).connect(server_name, tcp);
    let stream = match tokio::time::timeout(to.handshake_timeout, connect).await {
        Err(_) => return Err(MtlsError::Timeout(to.handshake_timeout)),
        Ok(Err(e)) => return Err(handshake_failure(&e)),
        Ok(Ok(s)) => s,
    };
    let conn = stream.get_ref().1;
    let peer = PeerIdentity::of(conn, generation, &tls.identity)?;
    check_resumed(conn, &peer, store)?;
    if !to.server_id.matches(peer.id.as_str()) {
        return Err(MtlsError::ServerIdMismatch {
            want: to.server_id.as_str().to_owned(),
            peer: Box::new(peer),
        });
    }
    Ok((stream, peer))
}
