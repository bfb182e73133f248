//! Request path normalization, so that no spelling of a path slips past a rule.
//!
//! Written here rather than taken from a URL library: the rules are a security decision
//! (what to decode, what to refuse), and URL libraries make different, looser choices.
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded; other escapes
//!   are kept, with uppercase hex;
//! - an encoded `/` or `\` (`%2F`, `%5C`) is refused: decoding it would change the segments
//!   a rule sees, and keeping it lets a backend that decodes it see another path;
//! - empty segments (`//`) are merged, `.` segments dropped, `..` segments resolved, and a
//!   path that climbs above `/` is refused;
//! - a raw `\` or `;` is refused too: some servers read `\` as `/`, and some (Tomcat, Spring)
//!   drop `;parameters` from a segment, so either could show the app another path than the
//!   policy saw;
//! - a raw or percent-encoded control byte (NUL, CR, LF, any of `%00`-`%1F`, `%7F`) is
//!   refused: apps that decode it may cut the path there or log another line;
//! - the request target `*` is not a path: it is taken only with OPTIONS, by the caller
//!   ([`normalize_target`]);
//! - a trailing `/` is kept for the app (`/a/` and `/a` can be different resources); path
//!   rules read it as not significant (see `PathPattern::matches_path`).

use std::borrow::Cow;

use thiserror::Error;

/// Why a request path is refused (the proxy answers 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("the path does not start with '/'")]
    NotAbsolute,
    #[error("the path has a malformed percent-escape")]
    BadEscape,
    #[error("the path has an encoded '/' or '\\' (%2F, %5C)")]
    EncodedSlash,
    #[error("the path has a '\\' or ';', which servers read in different ways")]
    Ambiguous,
    #[error("the path climbs above the root with '..'")]
    AboveRoot,
    #[error("the path has a control character (raw or percent-encoded, such as %00 or %0A)")]
    Control,
    #[error("the request target '*' is only valid with OPTIONS")]
    Asterisk,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Whether `path` is already in normal form (the common case: no allocation).
fn is_normal(path: &str) -> bool {
    !path.contains('%')
        && !path.contains("//")
        && !path.contains("/./")
        && !path.contains("/../")
        && !path.ends_with("/.")
        && !path.ends_with("/..")
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// Normalizes the path of a request target for `method`: the asterisk form `*` is kept for
/// OPTIONS (RFC 9112 section 3.2.4) and refused with any other method; every other target
/// goes through [`normalize_path`].
pub fn normalize_target<'a>(method: &str, path: &'a str) -> Result<Cow<'a, str>, PathError> {
    match path {
        "*" if method == "OPTIONS" => Ok(Cow::Borrowed(path)),
        "*" => Err(PathError::Asterisk),
        _ => normalize_path(path),
    }
}

/// Normalizes the path part of a request target (no query).
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, PathError> {
    if path == "*" {
        return Err(PathError::Asterisk);
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    // One pass for the bytes refused wherever they stand.
    if let Some(b) = path.bytes().find(|&b| b == b'\\' || b == b';' || is_control(b)) {
        return Err(if is_control(b) {
            PathError::Control
        } else {
            PathError::Ambiguous
        });
    }
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    // 1. Percent-decoding of unreserved characters.
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            decoded.push(b as char);
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::BadEscape);
        };
        let v = h << 4 | l;
        if v == b'/' || v == b'\\' {
            return Err(PathError::EncodedSlash);
        }
        if v == b';' {
            return Err(PathError::Ambiguous);
        }
        if is_control(v) {
            return Err(PathError::Control);
        }
        if is_unreserved(v) {
            decoded.push(v as char);
        } else {
            decoded.push('%');
            decoded.push(char::from(b"0123456789ABCDEF"[usize::from(h)]));
            decoded.push(char::from(b"0123456789ABCDEF"[usize::from(l)]));
        }
        i += 3;
    }
    // 2. Segments: merge empty ones, drop `.`, resolve `..`.
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded[1..].split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || out.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize_path(p).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in ["/", "/a", "/a/b/", "/a.b/c..d/.e"] {
            assert!(matches!(normalize_path(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn spellings_collapse() {
        assert_eq!(n("/a/../b").unwrap(), "/b");
        assert_eq!(n("/a/./b").unwrap(), "/a/b");
        assert_eq!(n("//admin//x").unwrap(), "/admin/x");
        assert_eq!(n("/%61dmin").unwrap(), "/admin");
        assert_eq!(n("/%2e%2e/x"), Err(PathError::AboveRoot));
        assert_eq!(n("/a/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(n("/a/%2E/b").unwrap(), "/a/b");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/.").unwrap(), "/a/");
        assert_eq!(n("/..").unwrap_err(), PathError::AboveRoot);
        assert_eq!(n("/a/../..").unwrap_err(), PathError::AboveRoot);
        assert_eq!(n("/%7euser").unwrap(), "/~user");
        assert_eq!(n("/a%20b").unwrap(), "/a%20b");
        assert_eq!(n("/a%3fb").unwrap(), "/a%3Fb");
        assert_eq!(n("/admin%2fx"), Err(PathError::EncodedSlash));
        assert_eq!(n("/admin%5Cx"), Err(PathError::EncodedSlash));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a%2"), Err(PathError::BadEscape));
        assert_eq!(n("/x/..\\admin/y"), Err(PathError::Ambiguous));
        assert_eq!(n("/admin;x/y"), Err(PathError::Ambiguous));
        assert_eq!(n("/admin%3bx/y"), Err(PathError::Ambiguous));
        assert_eq!(n("a/b"), Err(PathError::NotAbsolute));
        assert_eq!(n("/.").unwrap(), "/");
        for bad in [
            "/a%00", "/a%0a/b", "/a%0D", "/%1f", "/a%7F", "/a\u{0}b", "/a\nb", "/a\u{7f}",
        ] {
            assert_eq!(n(bad), Err(PathError::Control), "{bad:?}");
        }
        assert_eq!(n("*"), Err(PathError::Asterisk));
    }

    #[test]
    fn the_asterisk_form_is_only_for_options() {
        assert_eq!(normalize_target("OPTIONS", "*").as_deref(), Ok("*"));
        for m in ["GET", "POST", "options", "DELETE"] {
            assert_eq!(normalize_target(m, "*"), Err(PathError::Asterisk), "{m}");
        }
        assert_eq!(normalize_target("GET", "/a/../b").as_deref(), Ok("/b"));
    }

    proptest! {
        #[test]
        fn idempotent_and_never_panics(p in "/[a-z./%0-9A-F~_-]{0,40}") {
            if let Ok(once) = normalize_path(&p) {
                let twice = normalize_path(&once).unwrap();
                prop_assert_eq!(twice.as_ref(), once.as_ref());
                prop_assert!(once.starts_with('/'));
                prop_assert!(!once.contains("//") && !once.contains("/./") && !once.contains("/../"));
            }
        }

        #[test]
        fn arbitrary_input_never_panics(p in ".{0,64}") {
            let _ = normalize_path(&p);
        }
    }
}
