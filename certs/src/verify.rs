//! Peer certificate verification: X509-SVID rules plus webpki path validation against the
//! bundle of the peer's *own* trust domain, and the rustls verifiers built on it.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use thiserror::Error;

use crate::bundle::BundleSet;
use crate::svid::{self, SvidError, SvidInfo};

/// Why a peer's certificate chain was refused.
#[derive(Debug, Clone, Error)]
pub enum VerifyError {
    #[error("peer certificate is not a valid X509-SVID: {0}")]
    Svid(#[from] SvidError),
    #[error(
        "peer's trust domain {0:?} has no trust bundle here (add it under identity.federation to trust it)"
    )]
    UnknownTrustDomain(String),
    #[error("peer certificate has expired")]
    Expired,
    #[error("peer certificate is not valid yet")]
    NotYetValid,
    #[error("peer certificate does not chain to the trust bundle of {0:?}")]
    UnknownIssuer(String),
    #[error("peer certificate chain is invalid: {0}")]
    Chain(String),
}

impl VerifyError {
    /// A short, stable label for metrics and audit records.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::Svid(_) => "invalid_svid",
            VerifyError::UnknownTrustDomain(_) => "unknown_trust_domain",
            VerifyError::Expired => "expired",
            VerifyError::NotYetValid => "not_yet_valid",
            VerifyError::UnknownIssuer(_) => "unknown_issuer",
            VerifyError::Chain(_) => "bad_chain",
        }
    }

    /// The rustls error carried in the handshake; standard variants where TLS has an alert
    /// for them, this error itself otherwise (recoverable with [`VerifyError::from_rustls`]).
    fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }

    /// Recovers ward's reason from a handshake error, if the verifier produced it.
    pub fn from_rustls(err: &rustls::Error) -> Option<&VerifyError> {
        match err {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(e))) => e.downcast_ref(),
            _ => None,
        }
    }
}

/// Validates peer chains as X509-SVIDs against per-trust-domain bundles.
#[derive(Debug)]
pub struct SvidVerifier {
    bundles: Arc<BundleSet>,
    algs: WebPkiSupportedAlgorithms,
}

impl SvidVerifier {
    pub fn new(bundles: Arc<BundleSet>, provider: &CryptoProvider) -> Self {
        SvidVerifier {
            bundles,
            algs: provider.signature_verification_algorithms,
        }
    }

    pub fn bundles(&self) -> &Arc<BundleSet> {
        &self.bundles
    }

    /// Full validation of a peer chain at `now` for the given key purpose.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<SvidInfo, VerifyError> {
        let info = svid::check_leaf(end_entity)?;
        let td = info.id.trust_domain_name();
        let bundle = self
            .bundles
            .get(td)
            .ok_or_else(|| VerifyError::UnknownTrustDomain(td.to_owned()))?;
        let ee =
            webpki::EndEntityCert::try_from(end_entity).map_err(|e| VerifyError::Chain(e.to_string()))?;
        let path = ee
            .verify_for_usage(
                self.algs.all,
                bundle.anchors(),
                intermediates,
                now,
                usage,
                None,
                None,
            )
            .map_err(|e| match e {
                webpki::Error::CertExpired { .. } => VerifyError::Expired,
                webpki::Error::CertNotValidYet { .. } => VerifyError::NotYetValid,
                // A CA of the bundle with the issuer's name whose key did not make the signature:
                // typically another CA of the same trust domain (dev CAs and SPIRE CAs reuse their
                // subject names), so the chain does not reach the bundle either.
                webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
                    VerifyError::UnknownIssuer(td.to_owned())
                }
                other => VerifyError::Chain(format!("{other:?}")),
            })?;
        for cert in path.intermediate_certificates() {
            svid::check_intermediate(&cert.der())?;
        }
        Ok(info)
    }
}

/// Inbound: the client must present an SVID that validates against its trust domain's bundle.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    inner: SvidVerifier,
    mandatory: bool,
}

impl SpiffeClientVerifier {
    pub fn new(inner: SvidVerifier) -> Self {
        SpiffeClientVerifier {
            inner,
            mandatory: true,
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // SPIFFE peers choose their SVID without hints; naming our anchors would leak them.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify(end_entity, intermediates, now, webpki::KeyUsage::client_auth())
            .map(|_| ClientCertVerified::assertion())
            .map_err(VerifyError::into_rustls)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.inner.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.inner.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.algs.supported_schemes()
    }
}

/// Outbound: the server must present a valid SVID. No DNS-name check: which SPIFFE ID is
/// acceptable is decided by the caller after the handshake, before any byte is forwarded.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    inner: SvidVerifier,
}

impl SpiffeServerVerifier {
    pub fn new(inner: SvidVerifier) -> Self {
        SpiffeServerVerifier { inner }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify(end_entity, intermediates, now, webpki::KeyUsage::server_auth())
            .map(|_| ServerCertVerified::assertion())
            .map_err(VerifyError::into_rustls)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.inner.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.inner.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.algs.supported_schemes()
    }
}
