//! Trust bundles, one per trust domain, kept apart: a peer's chain is only ever validated
//! against the anchors of its own trust domain.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, TrustAnchor};
use serde::Deserialize;
use thiserror::Error;

use crate::pem::{self, PemError};
use crate::spiffe_id::TrustDomain;
use crate::svid::{self, SvidError};

/// Why a trust bundle could not be loaded.
#[derive(Debug, Error)]
pub enum BundleError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("{what}: not a SPIFFE bundle (JWKS): {detail}")]
    Jwks { what: String, detail: String },
    #[error("{what}: holds no x509-svid authority")]
    Empty { what: String },
    #[error("{what}: certificate {index} cannot be a trust anchor: {detail}")]
    BadAnchor {
        what: String,
        index: usize,
        detail: String,
    },
    #[error("{what}: certificate {index} is not a valid SVID signing certificate: {source}")]
    NotSigner {
        what: String,
        index: usize,
        source: SvidError,
    },
}

/// The X.509 authorities of one trust domain.
#[derive(Debug)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    certs: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    /// Builds a bundle from DER certificates; each must be a CA with keyCertSign.
    pub fn from_certs(
        trust_domain: TrustDomain,
        certs: Vec<CertificateDer<'static>>,
        what: &str,
    ) -> Result<Self, BundleError> {
        if certs.is_empty() {
            return Err(BundleError::Empty {
                what: what.to_owned(),
            });
        }
        let mut anchors = Vec::with_capacity(certs.len());
        for (index, cert) in certs.iter().enumerate() {
            svid::check_signing_cert(cert).map_err(|source| BundleError::NotSigner {
                what: what.to_owned(),
                index,
                source,
            })?;
            let anchor = webpki::anchor_from_trusted_cert(cert).map_err(|e| BundleError::BadAnchor {
                what: what.to_owned(),
                index,
                detail: e.to_string(),
            })?;
            anchors.push(anchor.to_owned());
        }
        Ok(TrustBundle {
            trust_domain,
            certs,
            anchors,
        })
    }

    /// Parses PEM certificates or a SPIFFE bundle (JWKS, keys with `use: x509-svid`).
    pub fn parse(trust_domain: TrustDomain, bytes: &[u8], what: &str) -> Result<Self, BundleError> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        let certs = if first == Some(&b'{') {
            parse_jwks(bytes, what)?
        } else {
            pem::certs(bytes, what)?
        };
        Self::from_certs(trust_domain, certs, what)
    }

    /// Reads a bundle file (PEM or SPIFFE JWKS).
    pub fn load(trust_domain: TrustDomain, path: &Path) -> Result<Self, BundleError> {
        let bytes = pem::read_file(path)?;
        Self::parse(trust_domain, &bytes, &path.display().to_string())
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    #[serde(rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    x5c: Vec<String>,
}

fn parse_jwks(bytes: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, BundleError> {
    use base64::Engine;
    let err = |detail: String| BundleError::Jwks {
        what: what.to_owned(),
        detail,
    };
    let jwks: Jwks = serde_json::from_slice(bytes).map_err(|e| err(e.to_string()))?;
    let mut certs = Vec::new();
    for (i, key) in jwks.keys.iter().enumerate() {
        if key.use_.as_deref() != Some("x509-svid") {
            continue; // jwt-svid keys and others are not ours to use
        }
        if key.x5c.len() != 1 {
            return Err(err(format!(
                "key {i}: an x509-svid key must have exactly one x5c entry, found {}",
                key.x5c.len()
            )));
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(&key.x5c[0])
            .map_err(|e| err(format!("key {i}: x5c is not base64: {e}")))?;
        certs.push(CertificateDer::from(der));
    }
    Ok(certs)
}

/// Bundles by trust domain name. Lookups take the peer's trust domain and never fall back
/// to another domain's anchors.
#[derive(Debug, Default, Clone)]
pub struct BundleSet {
    by_domain: HashMap<Arc<str>, Arc<TrustBundle>>,
}

impl BundleSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the bundle of its trust domain.
    pub fn insert(&mut self, bundle: TrustBundle) {
        let key: Arc<str> = Arc::from(bundle.trust_domain.as_str());
        self.by_domain.insert(key, Arc::new(bundle));
    }

    /// The bundle of exactly this trust domain.
    pub fn get(&self, trust_domain: &str) -> Option<&TrustBundle> {
        self.by_domain.get(trust_domain).map(|b| &**b)
    }

    /// Trust domain names, sorted.
    pub fn trust_domains(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.by_domain.keys().map(|k| &**k).collect();
        v.sort_unstable();
        v
    }

    pub fn len(&self) -> usize {
        self.by_domain.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_errors() {
        let td = TrustDomain::new("a.org").ok();
        let Some(td) = td else { return };
        assert!(matches!(
            TrustBundle::parse(td.clone(), b"{not json", "b"),
            Err(BundleError::Jwks { .. })
        ));
        assert!(matches!(
            TrustBundle::parse(td.clone(), br#"{"keys":[]}"#, "b"),
            Err(BundleError::Empty { .. })
        ));
        assert!(matches!(
            TrustBundle::parse(td.clone(), br#"{"keys":[{"use":"x509-svid","x5c":["!!"]}]}"#, "b"),
            Err(BundleError::Jwks { .. })
        ));
        assert!(matches!(
            TrustBundle::parse(td, br#"{"keys":[{"use":"x509-svid","x5c":["AAAA"]}]}"#, "b"),
            Err(BundleError::NotSigner { .. })
        ));
    }
}
