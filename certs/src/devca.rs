//! A development CA: issues short-lived X509-SVIDs for demos and tests. Never a production CA.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use thiserror::Error;

use crate::bundle::{BundleError, TrustBundle};
use crate::pem::{self, PemError};
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// File names of a CA directory and of an issued SVID directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca_key.pem";
pub const SVID_CERT: &str = "svid.pem";
pub const SVID_KEY: &str = "svid_key.pem";
pub const BUNDLE: &str = "bundle.pem";

/// Why the dev CA could not do what was asked.
#[derive(Debug, Error)]
pub enum DevCaError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a CA certificate with a SPIFFE trust domain ID (URI SAN spiffe://<td>)")]
    NotDevCa(String),
    #[error("cannot issue {id}: it is not in this CA's trust domain {td}")]
    WrongTrustDomain { id: String, td: String },
    #[error("the TTL must be between 1s and 10 years")]
    BadTtl,
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    let rng = crate::identity::provider().secure_random;
    if rng.fill(&mut bytes).is_err() {
        // Uniqueness, not secrecy, is what a serial needs: fall back to the clock.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes = nanos.to_be_bytes();
    }
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // positive and never shortened
    SerialNumber::from_slice(&bytes)
}

/// An SVID freshly issued by a dev CA.
pub struct IssuedSvid {
    pub id: SpiffeId,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivatePkcs8KeyDer<'static>,
}

impl IssuedSvid {
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    pub fn cert_pem(&self) -> String {
        pem::encode_certs(&self.chain)
    }

    pub fn key_pem(&self) -> String {
        pem::encode("PRIVATE KEY", self.key.secret_pkcs8_der())
    }
}

/// A self-signed root for one trust domain, with its key in memory.
pub struct DevCa {
    trust_domain: TrustDomain,
    cert: CertificateDer<'static>,
    key: KeyPair,
}

impl DevCa {
    /// A new root CA (ECDSA P-256) for `trust_domain`, valid for ten years.
    pub fn generate(trust_domain: &TrustDomain) -> Result<DevCa, DevCaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "ward dev CA");
        dn.push(DnType::CommonName, format!("ward dev CA {trust_domain}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(trust_domain.id_string().try_into()?)];
        params.serial_number = Some(random_serial());
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key)?;
        Ok(DevCa {
            trust_domain: trust_domain.clone(),
            cert: cert.der().clone(),
            key,
        })
    }

    /// Loads `ca.pem` and `ca_key.pem` from `dir`.
    pub fn load(dir: &Path) -> Result<DevCa, DevCaError> {
        let cert_path = dir.join(CA_CERT);
        let cert_bytes = pem::read_file(&cert_path)?;
        let what = cert_path.display().to_string();
        let cert = pem::certs(&cert_bytes, &what)?.remove(0);
        let key_path = dir.join(CA_KEY);
        let key_pem = String::from_utf8_lossy(&pem::read_file(&key_path)?).into_owned();
        let key = KeyPair::from_pem(&key_pem)?;
        let trust_domain = ca_trust_domain(&cert).ok_or_else(|| DevCaError::NotDevCa(what.clone()))?;
        Ok(DevCa {
            trust_domain,
            cert,
            key,
        })
    }

    /// Writes `ca.pem` and `ca_key.pem` (mode 0600) into `dir`, creating it.
    pub fn save(&self, dir: &Path) -> Result<(), DevCaError> {
        create_dir(dir)?;
        write_file(
            &dir.join(CA_CERT),
            pem::encode("CERTIFICATE", &self.cert).as_bytes(),
            false,
        )?;
        write_file(&dir.join(CA_KEY), self.key.serialize_pem().as_bytes(), true)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub fn cert_pem(&self) -> String {
        pem::encode("CERTIFICATE", &self.cert)
    }

    /// This CA as the trust bundle of its trust domain.
    pub fn bundle(&self) -> Result<TrustBundle, DevCaError> {
        Ok(TrustBundle::from_certs(
            self.trust_domain.clone(),
            vec![self.cert.clone()],
            "dev CA",
        )?)
    }

    /// Issues an X509-SVID for `id`, valid from a minute ago (clock skew) for `ttl`.
    pub fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<IssuedSvid, DevCaError> {
        if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(10 * 365 * 86400) {
            return Err(DevCaError::BadTtl);
        }
        if id.trust_domain_name() != self.trust_domain.as_str() {
            return Err(DevCaError::WrongTrustDomain {
                id: id.to_string(),
                td: self.trust_domain.to_string(),
            });
        }
        let now = time::OffsetDateTime::now_utc();
        let ttl = time::Duration::try_from(ttl).map_err(|_| DevCaError::BadTtl)?;
        let mut params = svid_params(id)?;
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + ttl;
        self.sign(&params)
    }

    /// Signs arbitrary parameters with a fresh P-256 key (tests use it to break single rules).
    pub fn sign(&self, params: &CertificateParams) -> Result<IssuedSvid, DevCaError> {
        let key = KeyPair::generate()?;
        self.sign_key(params, &key)
    }

    /// Signs `params` for the given subject key.
    pub fn sign_key(&self, params: &CertificateParams, key: &KeyPair) -> Result<IssuedSvid, DevCaError> {
        let issuer = Issuer::from_ca_cert_der(&self.cert, &self.key)?;
        let cert = params.signed_by(key, &issuer)?;
        let id = uri_of(params).ok_or_else(|| DevCaError::NotDevCa("the parameters".into()))?;
        Ok(IssuedSvid {
            id,
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        })
    }

    /// Writes `svid.pem`, `svid_key.pem` (0600) and `bundle.pem` for `svid` into `dir`.
    pub fn write_svid(&self, svid: &IssuedSvid, dir: &Path) -> Result<(), DevCaError> {
        create_dir(dir)?;
        write_file(&dir.join(SVID_CERT), svid.cert_pem().as_bytes(), false)?;
        write_file(&dir.join(SVID_KEY), svid.key_pem().as_bytes(), true)?;
        write_file(&dir.join(BUNDLE), self.cert_pem().as_bytes(), false)
    }
}

/// The parameters of a well-formed X509-SVID for `id` (validity left at rcgen's defaults).
pub fn svid_params(id: &SpiffeId) -> Result<CertificateParams, DevCaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "ward dev CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyAgreement,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn uri_of(params: &CertificateParams) -> Option<SpiffeId> {
    params.subject_alt_names.iter().find_map(|san| match san {
        SanType::URI(u) => SpiffeId::parse(u.as_str()).ok(),
        _ => None,
    })
}

fn ca_trust_domain(cert: &CertificateDer<'_>) -> Option<TrustDomain> {
    use x509_parser::prelude::*;
    let (_, parsed) = X509Certificate::from_der(cert).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) => TrustDomain::new(u).ok(),
        _ => None,
    })
}

fn create_dir(dir: &Path) -> Result<(), DevCaError> {
    std::fs::create_dir_all(dir).map_err(|source| DevCaError::Io {
        path: dir.display().to_string(),
        source,
    })
}

/// Writes a file atomically (temp file + rename); `secret` files get mode 0600.
pub fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), DevCaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| DevCaError::Io {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
