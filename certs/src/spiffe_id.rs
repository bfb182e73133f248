//! SPIFFE IDs and trust domains, parsed to the SPIFFE-ID standard.
//!
//! Written by hand rather than with a URL library: the standard is far stricter than RFC 3986
//! (no percent-encoding, no port, no userinfo, a closed character set), and a URL parser would
//! normalize inputs that must instead be refused.

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

/// The longest SPIFFE ID the standard allows, in bytes.
pub const MAX_ID_LEN: usize = 2048;
/// The longest trust domain name the standard allows, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME: &str = "spiffe://";

/// Why a string is not a SPIFFE ID (or trust domain).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum IdError {
    #[error("empty SPIFFE ID")]
    Empty,
    #[error("SPIFFE ID must start with \"spiffe://\" (lowercase scheme)")]
    WrongScheme,
    #[error("SPIFFE ID is {0} bytes long; the limit is 2048")]
    TooLong(usize),
    #[error("trust domain is missing (expected spiffe://<trust-domain>/<path>)")]
    EmptyTrustDomain,
    #[error("trust domain is {0} bytes long; the limit is 255")]
    TrustDomainTooLong(usize),
    #[error(
        "trust domain has the character {0:?}; only lowercase letters, digits, '.', '-' and '_' are allowed (no port, userinfo or uppercase)"
    )]
    BadTrustDomainChar(char),
    #[error("path has an empty segment (\"//\" or a trailing '/')")]
    EmptySegment,
    #[error("path has a '.' or '..' segment")]
    DotSegment,
    #[error(
        "path has the character {0:?}; only letters, digits, '.', '-' and '_' are allowed (no percent-encoding, query or fragment)"
    )]
    BadPathChar(char),
}

fn first_char(s: &str) -> char {
    s.chars().next().unwrap_or('\u{FFFD}')
}

fn check_trust_domain(td: &str) -> Result<(), IdError> {
    if td.is_empty() {
        return Err(IdError::EmptyTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdError::TrustDomainTooLong(td.len()));
    }
    for (i, b) in td.bytes().enumerate() {
        if !(b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')) {
            return Err(IdError::BadTrustDomainChar(first_char(&td[i..])));
        }
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), IdError> {
    // `path` is empty or starts with '/'.
    if path.is_empty() {
        return Ok(());
    }
    for segment in path[1..].split('/') {
        if segment.is_empty() {
            return Err(IdError::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(IdError::DotSegment);
        }
        for (i, b) in segment.bytes().enumerate() {
            if !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) {
                return Err(IdError::BadPathChar(first_char(&segment[i..])));
            }
        }
    }
    Ok(())
}

/// A SPIFFE trust domain name, e.g. `example.org`. Clones for the price of a pointer.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(Arc<str>);

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`) or a trust domain ID (`spiffe://example.org`).
    pub fn new(s: &str) -> Result<Self, IdError> {
        let name = match s.strip_prefix(SCHEME) {
            Some(rest) if !rest.contains('/') => rest,
            Some(_) => return Err(IdError::BadTrustDomainChar('/')),
            None => s,
        };
        check_trust_domain(name)?;
        Ok(TrustDomain(Arc::from(name)))
    }

    /// The name, without scheme.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `spiffe://<name>`.
    pub fn id_string(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl std::str::FromStr for TrustDomain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

/// A SPIFFE ID, e.g. `spiffe://example.org/ns/default/sa/web`.
///
/// Immutable and reference-counted: cloning one is a pointer copy, so it can ride along
/// every connection and metric label without allocation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    full: Arc<str>,
    /// Byte offset where the path starts (== len when the path is empty).
    path_start: u16,
}

impl SpiffeId {
    /// Parses and validates `s` against the SPIFFE-ID standard.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(IdError::WrongScheme)?;
        if s.len() > MAX_ID_LEN {
            return Err(IdError::TooLong(s.len()));
        }
        let td_len = rest.find('/').unwrap_or(rest.len());
        check_trust_domain(&rest[..td_len])?;
        check_path(&rest[td_len..])?;
        // MAX_ID_LEN fits in u16.
        let path_start = u16::try_from(SCHEME.len() + td_len).map_err(|_| IdError::TooLong(s.len()))?;
        Ok(SpiffeId {
            full: Arc::from(s),
            path_start,
        })
    }

    /// Builds `spiffe://<td><path>`; `path` must be empty or start with '/'.
    pub fn from_parts(td: &TrustDomain, path: &str) -> Result<Self, IdError> {
        Self::parse(&format!("{SCHEME}{td}{path}"))
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The trust domain name.
    pub fn trust_domain_name(&self) -> &str {
        &self.full[SCHEME.len()..self.path_start as usize]
    }

    /// The trust domain (allocates a new handle; prefer `trust_domain_name` on hot paths).
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(Arc::from(self.trust_domain_name()))
    }

    /// The path, empty or starting with '/'.
    pub fn path(&self) -> &str {
        &self.full[self.path_start as usize..]
    }

    /// Whether this ID names a trust domain only (no path).
    pub fn is_trust_domain_id(&self) -> bool {
        self.path().is_empty()
    }

    /// The shared string, for callers that keep it (metric labels, records).
    pub fn shared(&self) -> Arc<str> {
        self.full.clone()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.full)
    }
}

impl std::str::FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SpiffeId::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for TrustDomain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TrustDomain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TrustDomain::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn valid_ids() {
        let id = SpiffeId::parse("spiffe://example.org/ns/default/sa/web").unwrap();
        assert_eq!(id.trust_domain_name(), "example.org");
        assert_eq!(id.path(), "/ns/default/sa/web");
        assert!(!id.is_trust_domain_id());
        let td = SpiffeId::parse("spiffe://example.org").unwrap();
        assert!(td.is_trust_domain_id());
        for ok in [
            "spiffe://a/b",
            "spiffe://a-b_c.d0/A.b-c_9",
            "spiffe://1.2.3.4/x",
            "spiffe://td/...",
            "spiffe://td/.a",
        ] {
            SpiffeId::parse(ok).unwrap();
        }
    }

    #[test]
    fn invalid_ids_with_reasons() {
        let cases: &[(&str, IdError)] = &[
            ("", IdError::Empty),
            ("http://example.org/a", IdError::WrongScheme),
            ("SPIFFE://example.org/a", IdError::WrongScheme),
            ("spiffe:/example.org/a", IdError::WrongScheme),
            ("spiffe:///a", IdError::EmptyTrustDomain),
            ("spiffe://", IdError::EmptyTrustDomain),
            ("spiffe://Example.org/a", IdError::BadTrustDomainChar('E')),
            ("spiffe://example.org:8080/a", IdError::BadTrustDomainChar(':')),
            ("spiffe://user@example.org/a", IdError::BadTrustDomainChar('@')),
            ("spiffe://exa mple/a", IdError::BadTrustDomainChar(' ')),
            ("spiffe://example.org/", IdError::EmptySegment),
            ("spiffe://example.org/a/", IdError::EmptySegment),
            ("spiffe://example.org//a", IdError::EmptySegment),
            ("spiffe://example.org/./a", IdError::DotSegment),
            ("spiffe://example.org/a/..", IdError::DotSegment),
            ("spiffe://example.org/a%20b", IdError::BadPathChar('%')),
            ("spiffe://example.org/a?x=1", IdError::BadPathChar('?')),
            ("spiffe://example.org/a#f", IdError::BadPathChar('#')),
            ("spiffe://example.org?x", IdError::BadTrustDomainChar('?')),
            ("spiffe://example.org#x", IdError::BadTrustDomainChar('#')),
            ("spiffe://example.org/ü", IdError::BadPathChar('ü')),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input).as_ref(), Err(want), "{input}");
        }
    }

    #[test]
    fn length_limits() {
        let td = "a".repeat(255);
        SpiffeId::parse(&format!("spiffe://{td}/x")).unwrap();
        let long_td = "a".repeat(256);
        assert_eq!(
            SpiffeId::parse(&format!("spiffe://{long_td}/x")),
            Err(IdError::TrustDomainTooLong(256))
        );
        // Exactly 2048 bytes works; 2049 does not.
        let prefix = "spiffe://example.org/";
        let id = format!("{prefix}{}", "p".repeat(MAX_ID_LEN - prefix.len()));
        assert_eq!(id.len(), 2048);
        assert_eq!(SpiffeId::parse(&id).unwrap().as_str().len(), 2048);
        let id = format!("{id}q");
        assert_eq!(SpiffeId::parse(&id), Err(IdError::TooLong(2049)));
    }

    #[test]
    fn trust_domain_forms() {
        assert_eq!(TrustDomain::new("example.org").unwrap().as_str(), "example.org");
        assert_eq!(
            TrustDomain::new("spiffe://example.org").unwrap().as_str(),
            "example.org"
        );
        assert!(TrustDomain::new("spiffe://example.org/a").is_err());
        assert!(TrustDomain::new("").is_err());
        assert!(TrustDomain::new("Example.org").is_err());
    }

    fn td_ok(b: u8) -> bool {
        b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
    }
    fn path_ok(b: u8) -> bool {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
    }

    #[test]
    fn every_byte_value_in_trust_domain_and_path() {
        for b in 0u8..=255 {
            let c = b as char;
            // Build the candidate from the char so non-ASCII bytes become valid UTF-8 code points.
            let in_td = format!("spiffe://ex{c}ample/x");
            // '/' ends the trust domain: "spiffe://ex/ample/x" is trust domain "ex", path "/ample/x".
            assert_eq!(
                SpiffeId::parse(&in_td).is_ok(),
                td_ok(b) || c == '/',
                "td byte {b}"
            );
            let in_path = format!("spiffe://example/a{c}b");
            assert_eq!(
                SpiffeId::parse(&in_path).is_ok(),
                path_ok(b) || c == '/',
                "path byte {b}"
            );
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in ".*") {
            let _ = SpiffeId::parse(&s);
            let _ = TrustDomain::new(&s);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let s = String::from_utf8_lossy(&bytes);
            let _ = SpiffeId::parse(&format!("spiffe://{s}"));
        }

        #[test]
        fn valid_shapes_round_trip(td in "[a-z0-9._-]{1,40}", segs in proptest::collection::vec("[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,10}", 0..6)) {
            let path: String = segs.iter().map(|s| format!("/{s}")).collect();
            let s = format!("spiffe://{td}{path}");
            let id = SpiffeId::parse(&s).unwrap();
            prop_assert_eq!(id.as_str(), s.as_str());
            prop_assert_eq!(id.trust_domain_name(), td.as_str());
            prop_assert_eq!(id.path(), path.as_str());
        }

        #[test]
        fn one_bad_byte_is_refused(td in "[a-z0-9]{1,20}", seg in "[a-z]{1,10}", b in any::<u8>()) {
            prop_assume!(!path_ok(b) && b != b'/');
            let c = b as char;
            let s = format!("spiffe://{td}/{seg}{c}");
            prop_assert!(SpiffeId::parse(&s).is_err());
        }
    }
}
