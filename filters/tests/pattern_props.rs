//! Property tests for the pattern matcher's boundaries.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use ward_filters::Pattern;

/// A segment of SPIFFE-ID characters (never a wildcard).
fn segment() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._-]{1,8}".prop_filter("not a dot segment", |s| s != "." && s != "..")
}

fn segments(min: usize, max: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(segment(), min..=max)
}

fn id(td: &str, segs: &[String]) -> String {
    let mut s = format!("spiffe://{td}");
    for seg in segs {
        s.push('/');
        s.push_str(seg);
    }
    s
}

proptest! {
    /// A literal pattern matches itself, and nothing that differs from it in one byte.
    #[test]
    fn literal_matches_exactly_itself(
        segs in segments(0, 5),
        td in "[a-z0-9.-]{1,12}",
        pos in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let s = id(&td, &segs);
        let p = Pattern::parse_spiffe(&s).unwrap();
        prop_assert!(p.is_literal());
        prop_assert!(p.matches(&s));

        let mut bytes = s.clone().into_bytes();
        let i = pos.index(bytes.len());
        prop_assume!(bytes[i] != byte);
        bytes[i] = byte;
        if let Ok(other) = String::from_utf8(bytes) {
            prop_assert!(!p.matches(&other), "{} matched {}", s, other);
        }
        // Also one byte longer or shorter.
        let longer = format!("{s}{}", byte as char);
        prop_assert!(!p.matches(&longer), "{} matched {}", s, longer);
        prop_assert!(!p.matches(&s[..s.len() - 1]));
    }

    /// `x/*` never matches a candidate whose leading segments differ, nor one with more segments.
    #[test]
    fn star_never_crosses_a_prefix(
        prefix in segments(1, 4),
        other in segments(1, 4),
        last in segment(),
        extra in segments(1, 3),
    ) {
        let p = Pattern::parse_spiffe(&(id("a.org", &prefix) + "/*")).unwrap();
        let same = id("a.org", &prefix) + "/" + &last;
        prop_assert!(p.matches(&same), "{} !~ {}", p, same);
        if other != prefix {
            let differs = id("a.org", &other) + "/" + &last;
            prop_assert!(!p.matches(&differs), "{} ~ {}", p, differs);
        }
        // A prefix segment that only starts like the pattern's.
        let mut longer = prefix.clone();
        if let Some(l) = longer.last_mut() {
            l.push('x');
        }
        let longer = id("a.org", &longer) + "/" + &last;
        prop_assert!(!p.matches(&longer), "{} ~ {}", p, longer);
        let mut deeper = prefix.clone();
        deeper.push(last);
        deeper.extend(extra);
        let deeper = id("a.org", &deeper);
        prop_assert!(!p.matches(&deeper), "{} ~ {}", p, deeper);
    }

    /// `/**` below a prefix never matches when the segment boundary is elsewhere.
    #[test]
    fn double_star_respects_segment_boundaries(
        prefix in segments(1, 4),
        tail in segments(1, 4),
        glue in segment(),
    ) {
        let base = format!("/{}", prefix.join("/"));
        let tail = tail.join("/");
        let p = Pattern::parse_path(&format!("{base}/**")).unwrap();
        let below = format!("{base}/{tail}");
        prop_assert!(p.matches(&below), "{} !~ {}", p, below);
        // The last prefix segment continues without a '/': `/api/**` vs `/apix/...`.
        for bad in [
            format!("{base}{glue}"),
            format!("{base}{glue}/{tail}"),
            base.clone(),
            format!("{base}//{tail}"),
        ] {
            prop_assert!(!p.matches(&bad), "{} ~ {}", p, bad);
        }
        // A trailing slash is below: a deny on `/api/**` covers `/api/`.
        let slash = format!("{base}/");
        prop_assert!(p.matches(&slash), "{} !~ {}", p, slash);
        // The boundary shifted one segment up: `/a/b/**` vs `/a/<tail>`.
        if prefix.len() > 1 {
            let shifted = format!("/{}/{tail}", prefix[..prefix.len() - 1].join("/"));
            let really_below = shifted.starts_with(&format!("{base}/"));
            prop_assert_eq!(p.matches(&shifted), really_below, "{} vs {}", p, shifted);
        }
    }

    /// The same for SPIFFE IDs: the trust domain must match as a whole segment.
    #[test]
    fn double_star_never_leaves_the_trust_domain(
        td in "[a-z0-9-]{1,10}",
        glue in "[a-z0-9.-]{1,6}",
        tail in segments(1, 3),
    ) {
        let p = Pattern::parse_spiffe(&format!("spiffe://{td}/**")).unwrap();
        let below = id(&td, &tail);
        prop_assert!(p.matches(&below), "{} !~ {}", p, below);
        let evil = id(&format!("{td}{glue}"), &tail);
        prop_assert!(!p.matches(&evil), "{} ~ {}", p, evil);
        prop_assert!(!p.matches(&id(&td, &[])));
    }

    /// Parsing never panics, and a parsed pattern's text round-trips.
    #[test]
    fn parse_never_panics(s in "\\PC{0,40}", c in "\\PC{0,40}") {
        if let Ok(p) = Pattern::parse(&s) {
            prop_assert_eq!(p.as_str(), s.as_str());
            let _ = p.matches(&c);
        }
        let _ = Pattern::parse_spiffe(&s);
        let _ = Pattern::parse_path(&s);
    }
}
