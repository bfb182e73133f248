//! Headers and request targets, the same in both directions: hop-by-hop headers (RFC 9110
//! section 7.6.1), names with `_`, identity headers (XFCC), the request's authority and the
//! absolute URI the clients want, and the policy's view of a header map.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri};

use crate::config::Underscores;

/// The XFCC header ward sets toward the app (and removes from every caller).
pub static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// The identity headers ward sets toward the app. A caller's copy is always removed, in
/// every spelling an app may read as the same name (see [`sanitize_underscores`]).
static IDENTITY_HEADERS: [&HeaderName; 1] = [&XFCC];

/// Applies `mode` to the request headers whose names contain `_`. Whatever the mode, a name
/// that equals an identity header ward sets once `_` is read as `-` (names are lowercase
/// already) never passes. `Err` names the header a `Reject` refuses. Allocates only when
/// such a header is present.
pub fn sanitize_underscores(headers: &mut HeaderMap, mode: Underscores) -> Result<(), HeaderName> {
    if !headers.keys().any(|n| n.as_str().contains('_')) {
        return Ok(());
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .cloned()
        .collect();
    for name in names {
        let spoofs = IDENTITY_HEADERS.iter().any(|id| {
            let (a, b) = (name.as_str().as_bytes(), id.as_str().as_bytes());
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y || (*x == b'_' && *y == b'-'))
        });
        match mode {
            Underscores::Keep if !spoofs => {}
            Underscores::Reject => return Err(name),
            Underscores::Keep | Underscores::Drop => {
                headers.remove(&name);
            }
        }
    }
    Ok(())
}

/// The headers that are hop-by-hop by name (RFC 9110 section 7.6.1, and the legacy
/// `keep-alive` and `proxy-connection`); `TE` last, as it is kept when it says `trailers`.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
];

/// Removes hop-by-hop headers: those named in `Connection`, and the fixed set. `te: trailers`
/// is end-to-end in practice (gRPC needs it) and is kept.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Which of them the message has, from one pass over its names: most requests have none,
    // and most responses only `connection`. Removing the whole set unconditionally cost about
    // 2,700 instructions a message (callgrind).
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & 1 != 0
        && let header::Entry::Occupied(entry) = headers.entry(header::CONNECTION)
    {
        let (first, more) = {
            let mut values = entry.remove_entry_mult().1;
            let first = values.next();
            // Nearly always one value: an empty Vec does not allocate.
            (first, values.collect::<Vec<HeaderValue>>())
        };
        for value in first.iter().chain(&more) {
            for token in value.to_str().unwrap_or_default().split(',') {
                let token = token.trim();
                // A name that is not a valid header name matches nothing.
                if !token.is_empty() && !token.eq_ignore_ascii_case("te") {
                    headers.remove(token);
                }
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate().take(7).skip(1) {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if present & (1 << 7) != 0 {
        let te_trailers = headers.get_all(header::TE).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")))
        });
        headers.remove(header::TE);
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }
}

/// The request's authority: from an absolute-form target or `:authority`, else `Host`.
pub fn authority<B>(req: &Request<B>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| req.headers().get(header::HOST)?.to_str().ok().map(str::to_owned))
}

/// `http://<authority><path>?<query>`: the absolute form hyper's clients want, with the query
/// of `original`, the request's target. `path` is the normalized path, so the app sees what
/// the policy saw. The authority (which may come from a caller's Host header) is parsed on its
/// own, so it can never smuggle in a path or query.
pub fn absolute_uri(authority: String, path: &str, original: &Uri) -> Option<Uri> {
    let authority = http::uri::Authority::from_maybe_shared(Bytes::from(authority)).ok()?;
    let pq = match original.path_and_query() {
        // Normalizing changed nothing (the usual case): the target's own bytes, shared. Not
        // for a target with an empty path (`http://h?x`): its `path()` says `/`, its bytes not.
        Some(pq) if pq.path() == path && pq.as_str().starts_with(path) => pq.clone(),
        _ => {
            let pq = match original.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_owned(),
            };
            let pq = http::uri::PathAndQuery::from_maybe_shared(Bytes::from(pq)).ok()?;
            if pq.path() != path {
                return None;
            }
            pq
        }
    };
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(pq)
        .build()
        .ok()
}

/// `By=<ward's ID>;Hash=<hex SHA-256 of the peer's leaf>;URI=<peer ID>` (Envoy's format).
pub fn xfcc_value(by: &str, peer_leaf_sha256: &str, peer_id: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("By={by};Hash={peer_leaf_sha256};URI={peer_id}")).ok()
}

/// Hex SHA-256 of a certificate's DER.
pub fn cert_sha256(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    ward_certs::svid::hex(digest.as_ref())
}

/// Policy header lookups over an `http::HeaderMap`.
pub struct HeaderView<'a>(pub &'a HeaderMap);

impl ward_filters::Headers for HeaderView<'_> {
    fn count(&self, name: &str, value: &[u8]) -> (usize, usize) {
        self.0.get_all(name).iter().fold((0, 0), |(t, e), v| {
            (t + 1, e + usize::from(v.as_bytes() == value))
        })
    }
}

/// Whether a request is gRPC (which needs HTTP/2 to the app), by its headers.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_te_trailers_stays() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive, X-Secret"),
        );
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("x-other, bad name, te"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none() && h.get("keep-alive").is_none());
        assert!(
            h.get("x-other").is_none(),
            "a name in a second Connection value was kept"
        );
        assert!(h.get(header::CONNECTION).is_none() && h.get(header::UPGRADE).is_none());
        assert_eq!(h.get(header::TE).map(|v| v.as_bytes()), Some(&b"trailers"[..]));
        assert!(h.get("x-kept").is_some());
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed() {
        for name in [
            "transfer-encoding",
            "upgrade",
            "proxy-authenticate",
            "proxy-authorization",
            "keep-alive",
            "proxy-connection",
            "te",
        ] {
            let mut h = HeaderMap::new();
            h.insert("x-kept", HeaderValue::from_static("1"));
            h.append(HeaderName::from_static(name), HeaderValue::from_static("gzip"));
            strip_hop_by_hop(&mut h);
            assert!(h.get(name).is_none(), "{name} was kept");
            assert_eq!(h.len(), 1, "{name}: {h:?}");
        }
        let mut h = HeaderMap::new();
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn authority_cannot_carry_a_path() {
        let uri = |authority: &str, path: &str, target: &str| {
            absolute_uri(authority.into(), path, &target.parse().unwrap()).map(|u| {
                // What goes on the wire (HTTP/2's `:path`, HTTP/1.1's origin form) is
                // the path and query as they are, not as `Display` would fix them up.
                let pq = u.path_and_query().unwrap().as_str();
                assert!(pq.starts_with(path), "{target}: {pq}");
                u.to_string()
            })
        };
        let absolute = "http://example.org:8080/a?x=1";
        assert_eq!(uri("example.org:8080", "/a", "/a?x=1").as_deref(), Some(absolute));
        // The normalized path replaces the target's; the query stays.
        assert_eq!(
            uri("example.org:8080", "/a", "/b/../a?x=1").as_deref(),
            Some(absolute)
        );
        assert_eq!(
            uri("example.org:8080", "/a", "/./a?x=1").as_deref(),
            Some(absolute)
        );
        assert_eq!(uri("h", "/a", "/%61").as_deref(), Some("http://h/a"));
        assert_eq!(uri("h", "/a", "http://other/a").as_deref(), Some("http://h/a"));
        assert_eq!(uri("h", "/", "http://o?x=1").as_deref(), Some("http://h/?x=1"));
        assert_eq!(uri("h", "/", "/admin/..?x").as_deref(), Some("http://h/?x"));
        for evil in ["h/admin", "h?x", "h#f", "user@h/x", "h /x", ""] {
            let u = absolute_uri(evil.into(), "/ok", &"/ok".parse().unwrap());
            assert!(
                u.is_none() || u.as_ref().is_some_and(|u| u.path() == "/ok"),
                "{evil}: {u:?}"
            );
        }
    }

    #[test]
    fn underscore_headers_never_pass_as_identity_headers() {
        let forged = || {
            let mut h = HeaderMap::new();
            for name in [
                "x_forwarded_client_cert",
                "x-forwarded_client-cert",
                "x_request_id",
            ] {
                h.insert(
                    HeaderName::from_static(name),
                    HeaderValue::from_static("URI=evil"),
                );
            }
            h.insert("x-kept", HeaderValue::from_static("1"));
            h
        };
        let mut h = forged();
        sanitize_underscores(&mut h, Underscores::Drop).unwrap();
        assert_eq!(h.keys().map(|n| n.as_str()).collect::<Vec<_>>(), ["x-kept"]);

        let mut h = forged();
        sanitize_underscores(&mut h, Underscores::Keep).unwrap();
        let mut kept: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        kept.sort_unstable();
        assert_eq!(
            kept,
            ["x-kept", "x_request_id"],
            "keep drops only identity spellings"
        );

        let mut h = forged();
        assert!(sanitize_underscores(&mut h, Underscores::Reject).is_err());
        let mut h = HeaderMap::new();
        h.insert("x-kept", HeaderValue::from_static("1"));
        assert!(sanitize_underscores(&mut h, Underscores::Reject).is_ok());
    }

    #[test]
    fn xfcc_format() {
        let v =
            xfcc_value("spiffe://a/ward", "ab12", "spiffe://a/peer").map(|v| v.to_str().map(str::to_owned));
        assert_eq!(
            v.and_then(Result::ok).as_deref(),
            Some("By=spiffe://a/ward;Hash=ab12;URI=spiffe://a/peer")
        );
    }
}
