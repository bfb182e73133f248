//! PEM decoding with rustls-pki-types, with errors that name the file and what to fix.

use std::path::Path;

use rustls_pki_types::pem::{self, PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

/// Why PEM material could not be read.
#[derive(Debug, Error)]
pub enum PemError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is not valid PEM: {detail}")]
    Syntax { what: String, detail: String },
    #[error("{what} holds no CERTIFICATE block")]
    NoCertificate { what: String },
    #[error("{what} holds no private key (expected a PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block)")]
    NoKey { what: String },
    #[error("{what} holds {count} private keys; exactly one is expected")]
    ManyKeys { what: String, count: usize },
}

/// Reads a whole file, naming it in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|source| PemError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn syntax(what: &str, e: pem::Error) -> PemError {
    PemError::Syntax {
        what: what.to_owned(),
        detail: e.to_string(),
    }
}

/// All CERTIFICATE blocks, in order; other block types are skipped. `what` names the input.
pub fn certs(bytes: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| syntax(what, e))?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            what: what.to_owned(),
        });
    }
    Ok(certs)
}

/// Exactly one private key: PKCS#8, SEC1 (EC) or PKCS#1 (RSA).
pub fn key(bytes: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, PemError> {
    let mut keys = Vec::new();
    for item in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(bytes) {
        let (kind, der) = item.map_err(|e| syntax(what, e))?;
        let key = match kind {
            SectionKind::PrivateKey => PrivateKeyDer::Pkcs8(der.into()),
            SectionKind::EcPrivateKey => PrivateKeyDer::Sec1(der.into()),
            SectionKind::RsaPrivateKey => PrivateKeyDer::Pkcs1(der.into()),
            _ => continue,
        };
        keys.push(key);
    }
    match keys.len() {
        0 => Err(PemError::NoKey {
            what: what.to_owned(),
        }),
        1 => Ok(keys.remove(0)),
        count => Err(PemError::ManyKeys {
            what: what.to_owned(),
            count,
        }),
    }
}

/// PEM-encodes certificates.
pub fn encode_certs<'a>(certs: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> String {
    let mut out = String::new();
    for c in certs {
        out.push_str(&encode("CERTIFICATE", c.as_ref()));
    }
    out
}

/// PEM-encodes one block with 64-column base64 lines.
pub fn encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_gives_errors() {
        assert!(matches!(certs(b"", "x"), Err(PemError::NoCertificate { .. })));
        assert!(
            certs(
                b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
                "x"
            )
            .is_err()
        );
        assert!(matches!(key(b"hello", "k"), Err(PemError::NoKey { .. })));
        assert!(key(b"-----BEGIN PRIVATE KEY-----\nAAAA", "k").is_err());
    }
}
