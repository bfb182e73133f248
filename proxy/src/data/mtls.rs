//! Naming why a TLS handshake failed, for audit records, logs and metrics.

use std::io;

use ward_certs::VerifyError;

/// A short stable reason label and a human detail for a failed handshake.
pub fn handshake_failure(err: &io::Error) -> (&'static str, String) {
    let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) else {
        let reason = match err.kind() {
            io::ErrorKind::UnexpectedEof => "peer_closed",
            io::ErrorKind::ConnectionReset => "peer_reset",
            _ => "io",
        };
        return (reason, err.to_string());
    };
    if let Some(v) = VerifyError::from_rustls(tls) {
        return (v.reason(), v.to_string());
    }
    let reason = match tls {
        rustls::Error::NoCertificatesPresented => {
            return (
                "no_client_cert",
                "the peer presented no client certificate (mTLS is required)".into(),
            );
        }
        rustls::Error::InvalidCertificate(_) => "bad_certificate",
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => "not_tls",
        rustls::Error::AlertReceived(_) => "peer_alert",
        rustls::Error::PeerIncompatible(_) => "incompatible",
        _ => "tls",
    };
    (reason, tls.to_string())
}
