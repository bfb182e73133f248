//! What both ends of an HBONE tunnel agree on, as ztunnel speaks it: flow-control windows,
//! streams per connection, the `:authority`, and the headers that carry the original client
//! (`forwarded`), the trace (`traceparent`) and who the source workload is (`baggage`).

use std::net::{IpAddr, SocketAddr};

use http::HeaderValue;

/// The flow-control window of one stream: 4 MiB, as ztunnel sets it.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// The flow-control window of a whole connection: 16 MiB, as ztunnel sets it.
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Streams one tunnel connection carries at once (ztunnel's pool: 100); a client opens
/// another connection past it, a server refuses more (`SETTINGS_MAX_CONCURRENT_STREAMS`).
pub const MAX_STREAMS: u32 = 100;
/// The largest DATA frame either side sends.
pub const MAX_FRAME: u32 = 1024 * 1024;

/// Why a CONNECT's `:authority` cannot be tunnelled to.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthorityError {
    #[error("the CONNECT has no :authority")]
    Missing,
    #[error("the :authority {0:?} is not an IP:port (ward tunnels to addresses, not host names)")]
    NotAnAddress(String),
}

/// The destination a CONNECT names: `IP:port`, IPv6 in brackets. Host names (a waypoint's
/// service name) are not resolved.
pub fn authority(uri: &http::Uri) -> Result<SocketAddr, AuthorityError> {
    let a = uri.authority().ok_or(AuthorityError::Missing)?.as_str();
    a.parse::<SocketAddr>()
        .map(unmapped)
        .map_err(|_| AuthorityError::NotAnAddress(a.to_owned()))
}

/// `::ffff:a.b.c.d` as the IPv4 address it is, so one address has one spelling.
pub fn unmapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

/// `forwarded: for="IP:port"` (RFC 7239), the original client, as ztunnel sends it.
pub fn forwarded(client: SocketAddr) -> HeaderValue {
    let value = match client {
        SocketAddr::V4(v4) => format!("for=\"{v4}\""),
        SocketAddr::V6(v6) => format!("for=\"[{}]:{}\"", v6.ip(), v6.port()),
    };
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("for=unknown"))
}

/// The original client a `forwarded` header names: the first `for=` of its first element,
/// when it is an address with a port (an obfuscated or port-less `for` is not recorded).
pub fn forwarded_for(headers: &http::HeaderMap) -> Option<SocketAddr> {
    let value = headers.get(http::header::FORWARDED)?.to_str().ok()?;
    let first = value.split(',').next()?;
    first.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        v.trim()
            .trim_matches('"')
            .parse::<SocketAddr>()
            .ok()
            .map(unmapped)
    })
}

/// A W3C `traceparent` for a new tunnelled connection: a random trace and span, sampled off
/// (ward starts no trace of its own; ztunnel sends one on every CONNECT).
pub fn traceparent() -> HeaderValue {
    let mut ids = [0u8; 24];
    if aws_lc_rs::rand::fill(&mut ids).is_err() {
        ids = [1; 24];
    }
    let mut v = String::with_capacity(55);
    v.push_str("00-");
    for b in &ids[..16] {
        push_hex(&mut v, *b);
    }
    v.push('-');
    for b in &ids[16..] {
        push_hex(&mut v, *b);
    }
    v.push_str("-00");
    HeaderValue::from_str(&v).unwrap_or_else(|_| {
        HeaderValue::from_static("00-00000000000000000000000000000001-0000000000000001-00")
    })
}

fn push_hex(s: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    s.push(char::from(HEX[usize::from(b >> 4)]));
    s.push(char::from(HEX[usize::from(b & 0xf)]));
}

/// The W3C `baggage` ztunnel reads for telemetry, from what ward knows of its own workload:
/// the namespace and service account of a Kubernetes-shaped SPIFFE ID
/// (`spiffe://td/ns/NS/sa/SA`); `None` for an ID of another shape.
pub fn baggage(own_id: &str) -> Option<HeaderValue> {
    let path = own_id.strip_prefix("spiffe://")?.split_once('/')?.1;
    let mut parts = path.split('/');
    let (Some("ns"), Some(ns), Some("sa"), Some(sa), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    HeaderValue::from_str(&format!("k8s.namespace.name={ns},service.name={sa}")).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn authorities_are_addresses() {
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        assert_eq!(
            authority(&uri("10.0.0.7:8080")),
            Ok("10.0.0.7:8080".parse().unwrap())
        );
        assert_eq!(
            authority(&uri("[::ffff:10.0.0.7]:80")),
            Ok("10.0.0.7:80".parse().unwrap())
        );
        assert_eq!(
            authority(&uri("[2001:db8::1]:80")),
            Ok("[2001:db8::1]:80".parse().unwrap())
        );
        assert!(matches!(
            authority(&uri("web.default:80")),
            Err(AuthorityError::NotAnAddress(_))
        ));
        assert!(matches!(
            authority(&uri("10.0.0.7")),
            Err(AuthorityError::NotAnAddress(_))
        ));
        assert_eq!(authority(&uri("/x")), Err(AuthorityError::Missing));
    }

    #[test]
    fn forwarded_round_trips_and_refuses_junk() {
        for a in ["10.1.2.3:4567", "[2001:db8::5]:80"] {
            let addr: SocketAddr = a.parse().unwrap();
            let mut h = http::HeaderMap::new();
            h.insert(http::header::FORWARDED, forwarded(addr));
            assert_eq!(forwarded_for(&h), Some(addr), "{a}");
        }
        let mut h = http::HeaderMap::new();
        for (v, want) in [
            ("for=_hidden", None),
            ("for=10.0.0.1", None),
            (
                "proto=https;For=\"10.0.0.1:9\", for=\"10.0.0.2:9\"",
                Some("10.0.0.1:9"),
            ),
            ("by=x", None),
        ] {
            h.insert(http::header::FORWARDED, HeaderValue::from_static(v));
            assert_eq!(forwarded_for(&h), want.map(|w| w.parse().unwrap()), "{v}");
        }
    }

    #[test]
    fn traceparent_and_baggage_have_their_shapes() {
        let t = traceparent();
        let t = t.to_str().unwrap();
        assert_eq!(t.len(), 55);
        assert!(t.starts_with("00-") && t.ends_with("-00"));
        assert_ne!(traceparent(), traceparent());
        assert_eq!(
            baggage("spiffe://cluster.local/ns/apps/sa/web").unwrap(),
            "k8s.namespace.name=apps,service.name=web"
        );
        assert!(baggage("spiffe://example.org/vm/web").is_none());
    }
}
