//! ward's own identity (SVID chain, key, bundles), validated as a whole before use, and the
//! rustls configs built once per identity.

use std::fmt;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use thiserror::Error;

use crate::bundle::{BundleError, BundleSet};
use crate::pem::PemError;
use crate::svid::{self, SvidError, SvidInfo};
use crate::verify::{SpiffeClientVerifier, SpiffeServerVerifier, SvidVerifier, VerifyError};

/// Why an identity (or an update to it) was refused.
#[derive(Debug, Error)]
pub enum IdentityError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("our SVID is not a valid X509-SVID: {0}")]
    Svid(#[from] SvidError),
    #[error("the private key does not match the SVID's public key")]
    KeyMismatch,
    #[error("the private key cannot be used: {0}")]
    BadKey(String),
    #[error("no trust bundle for our own trust domain {0:?}")]
    NoOwnBundle(String),
    #[error("our SVID does not validate against our own trust bundle: {0}")]
    Chain(#[from] VerifyError),
    #[error("building TLS configuration failed: {0}")]
    Tls(String),
    #[error("{0}")]
    Source(String),
    #[error("{0}")]
    Unavailable(String),
    #[error(
        "the SVID is for trust domain {got:?} but ward serves {want:?}; a trust domain cannot change while ward runs (restart it to move)"
    )]
    WrongTrustDomain { got: String, want: String },
}

impl IdentityError {
    /// Short label for metrics (`ward_identity_rotations_total{result}`) and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            IdentityError::Pem(_) => "unreadable",
            IdentityError::Bundle(_) => "bad_bundle",
            IdentityError::Svid(_) => "invalid_svid",
            IdentityError::KeyMismatch => "key_mismatch",
            IdentityError::BadKey(_) => "bad_key",
            IdentityError::NoOwnBundle(_) => "no_own_bundle",
            IdentityError::Chain(VerifyError::Expired) => "expired",
            IdentityError::Chain(_) => "untrusted",
            IdentityError::Tls(_) => "tls",
            IdentityError::Source(_) => "source",
            IdentityError::Unavailable(_) => "unavailable",
            IdentityError::WrongTrustDomain { .. } => "wrong_trust_domain",
        }
    }

    /// Every label [`IdentityError::reason`] can return, in a fixed order (for counters).
    pub const REASONS: [&'static str; 12] = [
        "unreadable",
        "bad_bundle",
        "invalid_svid",
        "key_mismatch",
        "bad_key",
        "no_own_bundle",
        "expired",
        "untrusted",
        "tls",
        "source",
        "unavailable",
        "wrong_trust_domain",
    ];
}

/// The crypto provider ward uses everywhere: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A validated identity. `Debug` never prints key material.
pub struct Identity {
    info: SvidInfo,
    certified: Arc<CertifiedKey>,
    bundles: Arc<BundleSet>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.info.id)
            .field("serial", &self.info.serial)
            .field("not_after", &self.info.not_after)
            .field("trust_domains", &self.bundles.trust_domains())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Validates chain, key and bundles together at `now`: the leaf is an X509-SVID, the key
    /// matches it, our trust domain has a bundle and the chain validates against it.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundles: BundleSet,
        now: UnixTime,
    ) -> Result<Identity, IdentityError> {
        let leaf = chain.first().ok_or(IdentityError::Pem(PemError::NoCertificate {
            what: "the SVID".into(),
        }))?;
        let info = svid::check_leaf(leaf)?;
        let td = info.id.trust_domain_name().to_owned();
        if bundles.get(&td).is_none() {
            return Err(IdentityError::NoOwnBundle(td));
        }
        let provider = provider();
        let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => IdentityError::KeyMismatch,
            other => IdentityError::BadKey(other.to_string()),
        })?;
        let bundles = Arc::new(bundles);
        let verifier = SvidVerifier::new(bundles.clone(), &provider);
        verifier.verify(
            &certified.cert[0],
            &certified.cert[1..],
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(Identity {
            info,
            certified: Arc::new(certified),
            bundles,
        })
    }

    pub fn info(&self) -> &SvidInfo {
        &self.info
    }

    pub fn id(&self) -> &crate::SpiffeId {
        &self.info.id
    }

    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    pub fn bundles(&self) -> &Arc<BundleSet> {
        &self.bundles
    }
}

/// Options for the rustls configs; the same for every identity of a process.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// ALPN protocols offered by the client side and accepted by the server side, in order.
    pub alpn: Vec<Vec<u8>>,
}

/// The TLS configs of one identity, built once and shared by every handshake that uses it.
#[derive(Debug)]
pub struct TlsConfigs {
    pub identity: Arc<Identity>,
    /// Inbound, no ALPN: opaque TCP listeners.
    pub server: Arc<ServerConfig>,
    /// Outbound, no ALPN: opaque TCP.
    pub client: Arc<ClientConfig>,
    /// Inbound offering ALPN `h2` and `http/1.1`: HTTP and protocol-detecting listeners.
    pub server_http: Arc<ServerConfig>,
    /// Outbound offering ALPN `h2`, then `http/1.1`: another ward (or any HTTP/2 server)
    /// picks `h2`, a server that speaks HTTP/1.1 only picks that, an opaque one nothing.
    pub client_http: Arc<ClientConfig>,
    /// HBONE listeners: ALPN `h2` only (a tunnel is HTTP/2 CONNECT or nothing).
    pub server_h2: Arc<ServerConfig>,
    /// HBONE tunnels: ALPN `h2` only, as ztunnel offers.
    pub client_h2: Arc<ClientConfig>,
}

impl TlsConfigs {
    /// Builds server (inbound, client certificate required) and client (outbound) configs.
    /// TLS 1.3 only: every SPIFFE-aware peer speaks it, and it hides certificates on the wire.
    pub fn build(identity: Arc<Identity>, opts: &TlsOptions) -> Result<TlsConfigs, IdentityError> {
        let provider = provider();
        let tls = |e: rustls::Error| IdentityError::Tls(e.to_string());
        let client_verifier: Arc<dyn ClientCertVerifier> = Arc::new(SpiffeClientVerifier::new(
            SvidVerifier::new(identity.bundles.clone(), &provider),
        ));
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .with_client_cert_verifier(client_verifier)
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(identity.certified.clone())));
        server.alpn_protocols = opts.alpn.clone();

        let server_verifier = Arc::new(SpiffeServerVerifier::new(SvidVerifier::new(
            identity.bundles.clone(),
            &provider,
        )));
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls)?
            .dangerous()
            .with_custom_certificate_verifier(server_verifier)
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(identity.certified.clone())));
        client.alpn_protocols = opts.alpn.clone();
        let mut server_http = server.clone();
        server_http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut client_http = client.clone();
        client_http.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut server_h2 = server.clone();
        server_h2.alpn_protocols = vec![b"h2".to_vec()];
        let mut client_h2 = client.clone();
        client_h2.alpn_protocols = vec![b"h2".to_vec()];
        Ok(TlsConfigs {
            identity,
            server: Arc::new(server),
            client: Arc::new(client),
            server_http: Arc::new(server_http),
            client_http: Arc::new(client_http),
            server_h2: Arc::new(server_h2),
            client_h2: Arc::new(client_h2),
        })
    }
}

/// The SVID of the peer of a finished handshake (its chain was already validated): its SPIFFE
/// ID, serial and validity, read from the leaf.
pub fn peer_svid(peer_certs: Option<&[CertificateDer<'_>]>) -> Option<svid::SvidInfo> {
    svid::check_leaf(peer_certs?.first()?).ok()
}
