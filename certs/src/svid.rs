//! The X509-SVID rules of the SPIFFE standard, checked on one certificate at a time.
//!
//! Path validation (signatures, validity window, chaining to an anchor) is webpki's job in
//! [`crate::verify`]; this module checks what webpki does not: the SPIFFE-specific shape of the
//! leaf and of every signing certificate, weak keys and SHA-1 signatures.

use thiserror::Error;
use x509_parser::prelude::*;
use x509_parser::public_key::PublicKey;

use crate::spiffe_id::{IdError, SpiffeId};

/// The smallest RSA modulus ward accepts anywhere in a chain.
pub const MIN_RSA_BITS: usize = 2048;

/// Why a certificate is not a valid X509-SVID (or SVID signing certificate).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum SvidError {
    #[error("certificate is not valid DER X.509: {0}")]
    Malformed(String),
    #[error("certificate has no URI SAN; an X509-SVID carries exactly one SPIFFE ID as a URI SAN")]
    NoUriSan,
    #[error("certificate has {0} URI SANs; an X509-SVID must have exactly one")]
    MultipleUriSans(usize),
    #[error("URI SAN {uri:?} is not a SPIFFE ID: {source}")]
    BadSpiffeId { uri: String, source: IdError },
    #[error("URI SAN {0:?} names a trust domain only; an SVID's SPIFFE ID needs a path")]
    EmptyPath(String),
    #[error("leaf certificate has basicConstraints cA=true; an SVID leaf must not be a CA")]
    LeafIsCa,
    #[error("leaf certificate has no keyUsage extension; X509-SVIDs must set digitalSignature")]
    NoKeyUsage,
    #[error("leaf keyUsage lacks digitalSignature")]
    NoDigitalSignature,
    #[error("leaf keyUsage has keyCertSign; only signing certificates may")]
    LeafCertSign,
    #[error("leaf keyUsage has cRLSign; only signing certificates may")]
    LeafCrlSign,
    #[error("leaf extendedKeyUsage is present but lacks {0}; it must hold both serverAuth and clientAuth")]
    EkuMissing(&'static str),
    #[error("signing certificate {subject:?} is not a CA (basicConstraints cA=true is required)")]
    SignerNotCa { subject: String },
    #[error("signing certificate {subject:?} lacks keyUsage keyCertSign")]
    SignerNoCertSign { subject: String },
    #[error("certificate {subject:?} has a {bits}-bit RSA key; at least 2048 bits are required")]
    WeakRsaKey { subject: String, bits: usize },
    #[error("certificate {subject:?} is signed with SHA-1, which is refused")]
    Sha1Signature { subject: String },
    #[error("a certificate extension is malformed or duplicated: {0}")]
    BadExtension(String),
}

/// What ward needs to know of a valid SVID leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidInfo {
    pub id: SpiffeId,
    /// Serial number, lowercase hex without separators.
    pub serial: String,
    /// Validity window, seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, SvidError> {
    match X509Certificate::from_der(der) {
        Ok((&[], cert)) => Ok(cert),
        Ok(_) => Err(SvidError::Malformed(
            "trailing bytes after the certificate".into(),
        )),
        Err(e) => Err(SvidError::Malformed(e.to_string())),
    }
}

fn ext_err(e: X509Error) -> SvidError {
    SvidError::BadExtension(e.to_string())
}

/// DER content of the OIDs of SHA-1 based signature algorithms.
const SHA1_SIG_OIDS: &[&[u8]] = &[
    &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05], // sha1WithRSAEncryption
    &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01],             // ecdsa-with-SHA1
    &[0x2b, 0x0e, 0x03, 0x02, 0x1d],                         // sha1WithRSA (OIW)
    &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03],             // dsa-with-sha1
];

fn subject(cert: &X509Certificate<'_>) -> String {
    cert.subject().to_string()
}

/// Bits in an RSA modulus given as a DER INTEGER's content (leading zeros ignored).
fn rsa_bits(modulus: &[u8]) -> usize {
    let trimmed = match modulus.iter().position(|&b| b != 0) {
        Some(i) => &modulus[i..],
        None => return 0,
    };
    (trimmed.len() - 1) * 8 + (8 - trimmed[0].leading_zeros() as usize)
}

/// Refuses weak keys and SHA-1 signatures; shared by leaves and signing certificates.
fn check_crypto(cert: &X509Certificate<'_>) -> Result<(), SvidError> {
    let sig = cert.signature_algorithm.algorithm.as_bytes();
    if SHA1_SIG_OIDS.contains(&sig) {
        return Err(SvidError::Sha1Signature {
            subject: subject(cert),
        });
    }
    if let Ok(PublicKey::RSA(rsa)) = cert.public_key().parsed() {
        let bits = rsa_bits(rsa.modulus);
        if bits < MIN_RSA_BITS {
            return Err(SvidError::WeakRsaKey {
                subject: subject(cert),
                bits,
            });
        }
    }
    Ok(())
}

/// Checks the leaf rules of the X509-SVID standard and returns its SPIFFE ID and facts.
pub fn check_leaf(der: &[u8]) -> Result<SvidInfo, SvidError> {
    let cert = parse(der)?;
    let id = leaf_id(&cert)?;
    let bc = cert.basic_constraints().map_err(ext_err)?;
    if bc.is_some_and(|bc| bc.value.ca) {
        return Err(SvidError::LeafIsCa);
    }
    let ku = cert.key_usage().map_err(ext_err)?.ok_or(SvidError::NoKeyUsage)?;
    if !ku.value.digital_signature() {
        return Err(SvidError::NoDigitalSignature);
    }
    if ku.value.key_cert_sign() {
        return Err(SvidError::LeafCertSign);
    }
    if ku.value.crl_sign() {
        return Err(SvidError::LeafCrlSign);
    }
    if let Some(eku) = cert.extended_key_usage().map_err(ext_err)? {
        if !eku.value.server_auth {
            return Err(SvidError::EkuMissing("serverAuth"));
        }
        if !eku.value.client_auth {
            return Err(SvidError::EkuMissing("clientAuth"));
        }
    }
    check_crypto(&cert)?;
    Ok(SvidInfo {
        id,
        serial: hex(cert.raw_serial()),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// The SPIFFE ID of a leaf: exactly one URI SAN, a SPIFFE ID with a path.
fn leaf_id(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(ext_err)?
        .ok_or(SvidError::NoUriSan)?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let uri = uris.next().ok_or(SvidError::NoUriSan)?;
    let more = uris.count();
    if more > 0 {
        return Err(SvidError::MultipleUriSans(more + 1));
    }
    let id = SpiffeId::parse(uri).map_err(|source| SvidError::BadSpiffeId {
        uri: uri.to_owned(),
        source,
    })?;
    if id.is_trust_domain_id() {
        return Err(SvidError::EmptyPath(uri.to_owned()));
    }
    Ok(id)
}

/// Checks a signing certificate (intermediate or root): a CA with keyCertSign, no weak key,
/// no SHA-1 signature.
pub fn check_signing_cert(der: &[u8]) -> Result<(), SvidError> {
    let cert = parse(der)?;
    let bc = cert.basic_constraints().map_err(ext_err)?;
    if !bc.is_some_and(|bc| bc.value.ca) {
        return Err(SvidError::SignerNotCa {
            subject: subject(&cert),
        });
    }
    // RFC 5280: a CA certificate without keyUsage may sign; the X509-SVID standard requires
    // keyCertSign to be set, so absence is refused too.
    let ku = cert.key_usage().map_err(ext_err)?;
    if !ku.is_some_and(|ku| ku.value.key_cert_sign()) {
        return Err(SvidError::SignerNoCertSign {
            subject: subject(&cert),
        });
    }
    // The anchor's own signature is never verified, so SHA-1 on a self-signed root is not a
    // weakness; weak keys are, anywhere.
    if let Ok(PublicKey::RSA(rsa)) = cert.public_key().parsed() {
        let bits = rsa_bits(rsa.modulus);
        if bits < MIN_RSA_BITS {
            return Err(SvidError::WeakRsaKey {
                subject: subject(&cert),
                bits,
            });
        }
    }
    Ok(())
}

/// Like [`check_signing_cert`] for intermediates, whose own signature is verified: SHA-1 refused.
pub fn check_intermediate(der: &[u8]) -> Result<(), SvidError> {
    check_signing_cert(der)?;
    check_crypto(&parse(der)?)
}

/// Lowercase hex, for serial numbers and hashes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_bit_count() {
        assert_eq!(rsa_bits(&[0x00, 0x80, 0, 0]), 24);
        assert_eq!(rsa_bits(&[0x01, 0, 0]), 17);
        assert_eq!(rsa_bits(&[]), 0);
        let mut m = vec![0x00, 0xc0];
        m.extend(std::iter::repeat_n(0u8, 255));
        assert_eq!(rsa_bits(&m), 2048);
    }

    #[test]
    fn garbage_is_malformed_not_panic() {
        for input in [&b""[..], b"\x30", b"\x30\x82\xff\xff", &[0u8; 100]] {
            assert!(matches!(check_leaf(input), Err(SvidError::Malformed(_))));
            assert!(check_signing_cert(input).is_err());
        }
    }
}
