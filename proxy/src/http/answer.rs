//! The answers ward gives of its own, rather than relaying the upstream's: a denied request
//! gets 403 (gRPC: `grpc-status: 7`, PERMISSION_DENIED) naming the reason; ward's own failure
//! to reach an upstream gets 502 or 503 (gRPC: `grpc-status: 14`, UNAVAILABLE) naming which.
//! A gRPC request (`content-type: application/grpc*`) gets a trailers-only response, as gRPC
//! clients expect: HTTP 200, the status in the one HEADERS frame, no body.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use ward_filters::Verdict;

use crate::http::body::{ResponseBody, text};

/// gRPC status codes ward answers with (grpc/doc/statuscodes.md).
const PERMISSION_DENIED: u8 = 7;
const UNAVAILABLE: u8 = 14;

/// A request the policy denied: 403 with a short text naming the reason and the rule, or for
/// gRPC, `grpc-status: 7` with the same text as `grpc-message`.
pub fn denied(verdict: &Verdict, grpc: bool) -> Response<ResponseBody> {
    let why = match &verdict.rule {
        Some(rule) => format!("ward: access denied: {} (rule {rule:?})", verdict.reason.label()),
        None => format!("ward: access denied: {}", verdict.reason.label()),
    };
    if grpc {
        grpc_status(PERMISSION_DENIED, &why)
    } else {
        text(StatusCode::FORBIDDEN, why + "\n")
    }
}

/// Ward could not get the request to its upstream: `status` (502 or 503) with `message`, or
/// for gRPC, `grpc-status: 14` with it.
pub fn unavailable(status: StatusCode, message: String, grpc: bool) -> Response<ResponseBody> {
    if grpc {
        grpc_status(UNAVAILABLE, &message)
    } else {
        text(status, message + "\n")
    }
}

/// A trailers-only gRPC response: 200, `content-type: application/grpc`, the status and its
/// message (percent-encoded, as the gRPC spec says), and an empty body that ends the stream
/// with the headers.
fn grpc_status(code: u8, message: &str) -> Response<ResponseBody> {
    let mut resp = text(StatusCode::OK, "");
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(u16::from(code)));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert("grpc-message", v);
    }
    resp
}

/// gRPC's `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX`. Written
/// here because it is this one loop; a crate would bring a table of encode sets for it.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use http_body::Body as _;
    use ward_filters::{Decision, Reason};

    fn verdict(rule: Option<&str>, reason: Reason) -> Verdict {
        Verdict {
            decision: Decision::Deny,
            rule: rule.map(Into::into),
            reason,
            audit: Vec::new(),
        }
    }

    #[test]
    fn a_denied_request_gets_403_naming_the_reason_and_the_rule() {
        let r = denied(&verdict(Some("no-admin"), Reason::DenyRule), false);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.body().size_hint().exact(), Some(49));
        let r = denied(&verdict(None, Reason::DefaultDeny), false);
        assert_eq!(
            r.body().size_hint().exact(),
            Some("ward: access denied: default_deny\n".len() as u64)
        );
    }

    #[test]
    fn a_denied_grpc_call_is_trailers_only_permission_denied() {
        let r = denied(&verdict(Some("ünïcode 100%"), Reason::DenyRule), true);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert_eq!(r.headers()["grpc-status"], "7");
        assert_eq!(
            r.headers()["grpc-message"],
            "ward: access denied: deny_rule (rule \"%C3%BCn%C3%AFcode 100%25\")"
        );
        assert!(r.body().is_end_stream());
        let r = unavailable(StatusCode::SERVICE_UNAVAILABLE, "ward: down".into(), true);
        assert_eq!(r.headers()["grpc-status"], "14");
        let r = unavailable(StatusCode::BAD_GATEWAY, "ward: wrong server".into(), false);
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    }
}
