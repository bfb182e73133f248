//! No spelling of a denied path is allowed: for a deny rule on any path pattern and any path
//! it denies, every variant an app's router may read as the same path (case changes, trailing
//! slashes, `.` and `..` segments, doubled slashes, percent-encoded unreserved characters) is
//! denied too, or refused as a bad path (400), never allowed.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use ward_filters::{Decision, Peer, Policy, PolicySpec, Request, normalize_target};

const PEER: Peer<'static> = Peer::Authenticated("spiffe://example.org/ns/default/sa/frontend");

/// A literal path segment: unreserved characters, never a dot segment.
fn segment() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_~-][a-zA-Z0-9._~-]{0,5}"
}

/// One pattern segment: a literal or `*`.
fn pattern_segment() -> impl Strategy<Value = Option<String>> {
    prop_oneof![4 => segment().prop_map(Some), 1 => Just(None)]
}

/// A path pattern, as segments (`None` is `*`) and whether it ends in `/**`.
fn pattern() -> impl Strategy<Value = (Vec<Option<String>>, bool)> {
    (prop::collection::vec(pattern_segment(), 1..4), any::<bool>())
}

fn pattern_text((segments, below): &(Vec<Option<String>>, bool)) -> String {
    let mut p: String = segments
        .iter()
        .map(|s| format!("/{}", s.as_deref().unwrap_or("*")))
        .collect();
    if *below {
        p.push_str("/**");
    }
    p
}

/// A deny-all-but policy: allow everything, deny `pattern`.
fn deny_policy(pattern: &str) -> Policy {
    let spec: PolicySpec = serde_json::from_value(serde_json::json!({
        "default": "allow",
        "rules": [{"name": "deny", "action": "deny", "paths": [pattern]}],
    }))
    .unwrap();
    Policy::compile("p", &spec).unwrap()
}

/// What a request with this raw target gets: `None` is 400 (a bad path).
fn decide(policy: &Policy, target: &str) -> Option<Decision> {
    let path = normalize_target("GET", target).ok()?;
    Some(
        policy
            .evaluate_request(PEER, &Request::new("GET", &path))
            .decision,
    )
}

/// One way to respell a segment, chosen per segment.
#[derive(Debug, Clone, Copy)]
enum Respell {
    Same,
    FlipCase,
    /// Percent-encode every unreserved character, with upper or lower hex.
    Encode {
        upper_hex: bool,
    },
    /// `seg` becomes `./seg`.
    DotBefore,
    /// `seg` becomes `junk/../seg`.
    Climb,
    /// `seg` becomes `/seg` (a doubled slash before it).
    DoubleSlash,
}

fn respell() -> impl Strategy<Value = Respell> {
    prop_oneof![
        Just(Respell::Same),
        Just(Respell::FlipCase),
        any::<bool>().prop_map(|upper_hex| Respell::Encode { upper_hex }),
        Just(Respell::DotBefore),
        Just(Respell::Climb),
        Just(Respell::DoubleSlash),
    ]
}

fn apply(seg: &str, how: Respell) -> String {
    match how {
        Respell::Same => seg.to_owned(),
        Respell::FlipCase => seg
            .chars()
            .map(|c| {
                if c.is_ascii_lowercase() {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect(),
        Respell::Encode { upper_hex } => seg
            .bytes()
            .map(|b| {
                if upper_hex {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect(),
        Respell::DotBefore => format!("./{seg}"),
        Respell::Climb => format!("junk/../{seg}"),
        Respell::DoubleSlash => format!("/{seg}"),
    }
}

/// How a respelled path ends.
fn ending() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "", "/", "/.", "//", "/./", "/x/..", "/x/../", "/%2e", "/%2E/",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn every_spelling_of_a_denied_path_is_denied(
        pat in pattern(),
        fill in prop::collection::vec(segment(), 4),
        below in prop::collection::vec(segment(), 0..3),
        spell in prop::collection::vec(respell(), 8),
        end in ending(),
    ) {
        let (segments, has_below) = &pat;
        let policy = deny_policy(&pattern_text(&pat));
        // A path the pattern denies: each `*` filled in, something (or nothing) below `/**`.
        let mut path: Vec<String> = segments
            .iter()
            .zip(&fill)
            .map(|(s, f)| s.clone().unwrap_or_else(|| f.clone()))
            .collect();
        if *has_below {
            path.extend(below.iter().cloned());
        }
        let plain = format!("/{}", path.join("/"));
        prop_assert_eq!(decide(&policy, &plain), Some(Decision::Deny), "{}", plain);

        let respelled: String = path
            .iter()
            .zip(spell.iter().cycle())
            .map(|(s, how)| format!("/{}", apply(s, *how)))
            .collect();
        let target = format!("{respelled}{end}");
        let got = decide(&policy, &target);
        prop_assert!(
            got != Some(Decision::Allow),
            "pattern {} denies {} but allows its spelling {}",
            pattern_text(&pat),
            plain,
            target
        );
    }

    /// The other way round: a path an allow rule does not name is not allowed by any of its
    /// spellings either (allow rules stay exact: case is never folded for them).
    #[test]
    fn case_never_widens_an_allow(seg in "[a-z]{1,6}", flip in 0usize..6) {
        let spec: PolicySpec = serde_json::from_value(serde_json::json!({
            "rules": [{"name": "allow", "action": "allow", "paths": [format!("/{seg}/**")]}],
        }))
        .unwrap();
        let policy = Policy::compile("p", &spec).unwrap();
        let mut other: Vec<char> = seg.chars().collect();
        let i = flip % other.len();
        other[i] = other[i].to_ascii_uppercase();
        let other: String = other.into_iter().collect();
        prop_assert_eq!(decide(&policy, &format!("/{seg}/x")), Some(Decision::Allow));
        prop_assert_eq!(decide(&policy, &format!("/{other}/x")), Some(Decision::Deny));
    }
}
