//! The one pattern language for SPIFFE IDs and HTTP paths.
//!
//! A pattern is split on `/`. A literal segment matches itself exactly (case-sensitive), a
//! segment that is exactly `*` matches one whole, non-empty segment, and a final `/**` matches
//! everything below: one or more segments, the first of them non-empty. Wildcards must be whole
//! segments, so `spiffe://example.org/ns/a/*` never matches `spiffe://example.org/ns/ab/x`.
//!
//! Request paths are matched with [`PathPattern::matches_path`], which reads them the way
//! app routers may: a trailing `/` is not significant (`/admin/` is `/admin`), a final `/**`
//! covers the path itself too (`/admin/**` covers `/admin`), and deny rules may fold case.
//!
//! The matcher is written by hand on purpose: glob libraries (globset and friends) let `*` match
//! part of a segment and `**` match zero segments, which is not this language.

use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use thiserror::Error;

const SCHEME: &str = "spiffe://";

/// Why a string is not a valid pattern; the message says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PatternError {
    /// The pattern is the empty string.
    #[error(
        "empty pattern: write a SPIFFE ID pattern like `spiffe://example.org/ns/*/sa/web` or a path like `/api/**`"
    )]
    Empty,
    /// `*` shares a segment with other characters (`a*`, `*.org`, `***`).
    #[error(
        "pattern `{pattern}`: segment `{segment}` mixes `*` with other characters; wildcards must be whole segments (`*` for exactly one segment, a final `/**` for everything below)"
    )]
    PartialWildcard { pattern: String, segment: String },
    /// `**` somewhere other than the last segment.
    #[error(
        "pattern `{pattern}`: `**` may only be the last segment (a final `/**`); use `*` to match exactly one segment elsewhere"
    )]
    DoubleStarNotLast { pattern: String },
    /// A SPIFFE ID pattern that does not start with `spiffe://`.
    #[error(
        "SPIFFE ID pattern `{pattern}` must start with `spiffe://` and a trust domain, like `spiffe://example.org/ns/default/sa/web`"
    )]
    NotSpiffe { pattern: String },
    /// A bad trust-domain segment in a SPIFFE ID pattern.
    #[error("SPIFFE ID pattern `{pattern}`: trust domain `{trust_domain}` {problem}")]
    TrustDomain {
        pattern: String,
        trust_domain: String,
        problem: &'static str,
    },
    /// A bad path segment in a SPIFFE ID pattern.
    #[error("SPIFFE ID pattern `{pattern}`: path segment `{segment}` {problem}")]
    IdSegment {
        pattern: String,
        segment: String,
        problem: &'static str,
    },
    /// A path pattern that does not start with `/`.
    #[error("path pattern `{pattern}` must start with `/`, like `/api/*`")]
    NotAbsolutePath { pattern: String },
    /// A path pattern that could never match a normalized request path.
    #[error("path pattern `{pattern}`: {problem}")]
    PathSegment { pattern: String, problem: &'static str },
}

/// One compiled segment of a pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Segment {
    /// Matches exactly this text.
    Literal(Box<str>),
    /// `*`: exactly one non-empty segment.
    One,
}

/// A compiled pattern: parse once, match many times without allocating.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pattern {
    source: Box<str>,
    /// The segments before a trailing `**` (all of them if there is none).
    segments: Box<[Segment]>,
    /// Whether the pattern ends in `**`.
    below: bool,
}

impl Pattern {
    /// Parses a pattern with only the wildcard rules checked (no SPIFFE or path context).
    pub fn parse(s: &str) -> Result<Pattern, PatternError> {
        if s.is_empty() {
            return Err(PatternError::Empty);
        }
        Pattern::compile(s, s)
    }

    /// Compiles the segments of `body`, a pattern whose source is written as `source`.
    fn compile(source: &str, body: &str) -> Result<Pattern, PatternError> {
        let s = source;
        let mut segments = Vec::new();
        let mut below = false;
        let mut parts = body.split('/').peekable();
        while let Some(part) = parts.next() {
            match part {
                "**" if parts.peek().is_none() => below = true,
                "**" => return Err(PatternError::DoubleStarNotLast { pattern: s.into() }),
                "*" => segments.push(Segment::One),
                _ if part.contains('*') => {
                    return Err(PatternError::PartialWildcard {
                        pattern: s.into(),
                        segment: part.into(),
                    });
                }
                _ => segments.push(Segment::Literal(part.into())),
            }
        }
        Ok(Pattern {
            source: s.into(),
            segments: segments.into(),
            below,
        })
    }

    /// Parses a SPIFFE ID pattern: `spiffe://`, a literal or `*` trust domain, then segments
    /// made of the characters a SPIFFE ID allows (or wildcards).
    pub fn parse_spiffe(s: &str) -> Result<Pattern, PatternError> {
        if s.is_empty() {
            return Err(PatternError::Empty);
        }
        let Some(rest) = s.strip_prefix(SCHEME) else {
            return Err(PatternError::NotSpiffe { pattern: s.into() });
        };
        let pattern = Pattern::parse(s)?;
        let (trust_domain, path) = match rest.split_once('/') {
            Some((td, path)) => (td, Some(path)),
            None => (rest, None),
        };
        check_trust_domain(s, trust_domain)?;
        for segment in path.into_iter().flat_map(|p| p.split('/')) {
            check_id_segment(s, segment)?;
        }
        Ok(pattern)
    }

    /// Parses an HTTP path pattern: starts with `/`; no query, fragment, empty or dot segments
    /// (a normalized request path has none, so such a pattern could never match).
    pub fn parse_path(s: &str) -> Result<Pattern, PatternError> {
        if s.is_empty() {
            return Err(PatternError::Empty);
        }
        let Some(rest) = s.strip_prefix('/') else {
            return Err(PatternError::NotAbsolutePath { pattern: s.into() });
        };
        // Compiled without its trailing slash: `/api/` and `/api` are one path to a matcher
        // (see [`PathPattern::matches_path`]), and `/` is the empty path.
        let pattern = Pattern::compile(s, s.strip_suffix('/').unwrap_or(s))?;
        let problem = |problem| PatternError::PathSegment {
            pattern: s.into(),
            problem,
        };
        if s.contains(['?', '#']) {
            return Err(problem(
                "the query and fragment are not matched; remove everything from `?` or `#` on",
            ));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(problem("contains whitespace or a control character"));
        }
        let mut segments = rest.split('/').peekable();
        while let Some(segment) = segments.next() {
            // A trailing empty segment (`/api/`, or `/` itself) is a literal trailing slash.
            if segment.is_empty() && segments.peek().is_some() {
                return Err(problem(
                    "has an empty segment `//`, which never matches a normalized path",
                ));
            }
            if segment == "." || segment == ".." {
                return Err(problem(
                    "has a `.` or `..` segment, which never matches a normalized path",
                ));
            }
        }
        Ok(pattern)
    }

    /// Whether `candidate` matches. Does not allocate.
    pub fn matches(&self, candidate: &str) -> bool {
        self.matches_with(candidate, false, false)
    }

    /// The matcher: `fold_case` compares literal segments ASCII case-insensitively;
    /// `below_covers_self` lets a final `**` match no segment at all.
    fn matches_with(&self, candidate: &str, fold_case: bool, below_covers_self: bool) -> bool {
        let mut rest = Some(candidate);
        for segment in self.segments.iter() {
            let Some(text) = rest else { return false };
            let (head, tail) = match text.split_once('/') {
                Some((head, tail)) => (head, Some(tail)),
                None => (text, None),
            };
            let ok = match segment {
                Segment::Literal(lit) => **lit == *head || (fold_case && lit.eq_ignore_ascii_case(head)),
                Segment::One => !head.is_empty(),
            };
            if !ok {
                return false;
            }
            rest = tail;
        }
        match rest {
            None => !self.below || below_covers_self,
            // `**` needs at least one more segment; a trailing slash counts (so a deny on
            // `/admin/**` covers `/admin/`), an empty segment in the middle (`//`) does not.
            // `spiffe://a.org/**` never matches `spiffe://a.org`.
            Some(tail) => self.below && !tail.starts_with('/'),
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the pattern has no wildcard, so it matches only its own text.
    pub fn is_literal(&self) -> bool {
        !self.below && self.segments.iter().all(|s| matches!(s, Segment::Literal(_)))
    }

    /// The text of the literal segments before the first wildcard, and how many segments that
    /// is. Whatever a pattern with a wildcard matches starts with this text and, when the
    /// text is not empty, a `/` right after it; a literal pattern gives all of its text.
    pub fn literal_prefix(&self) -> (&str, usize) {
        let n = self
            .segments
            .iter()
            .take_while(|s| matches!(s, Segment::Literal(_)))
            .count();
        let end = match n.checked_sub(1) {
            None => 0,
            Some(k) => self
                .source
                .match_indices('/')
                .nth(k)
                .map_or(self.source.len(), |(i, _)| i),
        };
        (&self.source[..end], n)
    }
}

fn check_trust_domain(pattern: &str, td: &str) -> Result<(), PatternError> {
    let err = |problem| PatternError::TrustDomain {
        pattern: pattern.into(),
        trust_domain: td.into(),
        problem,
    };
    match td {
        "" => Err(err("is empty; write `spiffe://example.org/...`")),
        "*" => Ok(()),
        "**" => Err(err(
            "must be a name or `*`; for any SPIFFE ID write `spiffe://*/**`, or leave out `from` to match any authenticated peer",
        )),
        _ if td.len() > 255 => Err(err("is longer than 255 bytes")),
        _ if !td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')) =>
        {
            Err(err(
                "may only use lowercase letters, digits, `.`, `-` and `_` (no port, userinfo or uppercase)",
            ))
        }
        _ => Ok(()),
    }
}

fn check_id_segment(pattern: &str, segment: &str) -> Result<(), PatternError> {
    let err = |problem| PatternError::IdSegment {
        pattern: pattern.into(),
        segment: segment.into(),
        problem,
    };
    match segment {
        "" => Err(err("is empty; remove the doubled or trailing `/`")),
        "*" | "**" => Ok(()),
        "." | ".." => Err(err("is a dot segment, which SPIFFE IDs never contain")),
        _ if !segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')) =>
        {
            Err(err(
                "may only use letters, digits, `.`, `-` and `_` (no percent-encoding, query or fragment)",
            ))
        }
        _ => Ok(()),
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl FromStr for Pattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pattern::parse(s)
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

/// Deserializes a string through `parse`, turning a parse error into a serde custom error.
struct PatternVisitor<T> {
    expecting: &'static str,
    parse: fn(&str) -> Result<T, PatternError>,
}

impl<T> Visitor<'_> for PatternVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(PatternVisitor {
            expecting: "a pattern string",
            parse: Pattern::parse,
        })
    }
}

/// Defines a newtype over [`Pattern`] that only holds patterns valid in one context.
macro_rules! context_pattern {
    ($(#[$doc:meta])* $name:ident, $parse:path, $expecting:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub struct $name(Pattern);

        impl $name {
            /// Parses and validates a pattern for this context.
            pub fn parse(s: &str) -> Result<Self, PatternError> {
                $parse(s).map($name)
            }
            /// The shared pattern engine underneath.
            pub fn pattern(&self) -> &Pattern {
                &self.0
            }
        }

        impl Deref for $name {
            type Target = Pattern;
            fn deref(&self) -> &Pattern {
                &self.0
            }
        }

        impl From<$name> for Pattern {
            fn from(p: $name) -> Pattern {
                p.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = PatternError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::parse(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                self.0.serialize(serializer)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(PatternVisitor { expecting: $expecting, parse: $name::parse })
            }
        }
    };
}

context_pattern!(
    /// A pattern over SPIFFE IDs, checked by [`Pattern::parse_spiffe`].
    IdPattern,
    Pattern::parse_spiffe,
    "a SPIFFE ID pattern string like `spiffe://example.org/ns/*/sa/web`"
);

context_pattern!(
    /// A pattern over normalized HTTP paths, checked by [`Pattern::parse_path`].
    PathPattern,
    Pattern::parse_path,
    "a path pattern string like `/api/*`"
);

impl PathPattern {
    /// Whether a normalized request path (see [`crate::normalize_path`]) matches, read the
    /// way an app's router may read it, so that no spelling of a denied path is allowed:
    /// - a trailing `/` is not significant: `/secret/` is `/secret` (pattern and path alike;
    ///   `/secret/.` and `/secret/x/..` normalize to `/secret/`);
    /// - a final `/**` covers the path itself: `/admin/**` matches `/admin` and all below it;
    /// - with `fold_case` (deny and audit rules), literal segments match in any ASCII case, so
    ///   `/ADMIN` meets a deny on `/admin/**`; allow rules stay exact, so an ambiguity never
    ///   turns into an allow either way.
    ///
    /// Does not allocate.
    pub fn matches_path(&self, path: &str, fold_case: bool) -> bool {
        self.0
            .matches_with(path.strip_suffix('/').unwrap_or(path), fold_case, true)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
