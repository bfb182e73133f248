//! Compiled policies and their evaluation at connection (L4) and request (L7) level.
//!
//! Any matching `deny` rule denies; else any matching `allow` rule allows; else the default.
//! `audit` rules never change the decision; they are listed in [`Verdict::audit`]. When several
//! rules of the deciding kind match, the first in file order names the verdict.

mod compile;
mod spec;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

pub use compile::PolicyError;
pub use spec::{Action, DefaultAction, HeaderSpec, PolicySpec, RuleSpec};

use crate::pattern::{IdPattern, PathPattern};
use crate::verdict::{Decision, Reason, Verdict};

/// Who is on the other end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer<'a> {
    /// A peer that presented a valid SVID with this SPIFFE ID.
    Authenticated(&'a str),
    /// A plaintext peer admitted by a permissive listener.
    Unauthenticated,
}

impl<'a> Peer<'a> {
    /// The SPIFFE ID, if authenticated.
    pub fn id(&self) -> Option<&'a str> {
        match self {
            Peer::Authenticated(id) => Some(id),
            Peer::Unauthenticated => None,
        }
    }
}

impl fmt::Display for Peer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Authenticated(id) => f.write_str(id),
            Peer::Unauthenticated => f.write_str("unauthenticated"),
        }
    }
}

/// A compiled, validated policy. Cheap to clone; shareable across threads.
#[derive(Clone, Debug)]
pub struct Policy {
    name: Arc<str>,
    default: DefaultAction,
    rules: Arc<[Rule]>,
    index: Arc<Index>,
}

/// Which rules a peer may meet, so a decision over 10 000 per-service rules looks at a handful
/// instead of all of them. Every candidate still checks the peer in full; the index only
/// leaves out rules that cannot match.
#[derive(Debug, Default)]
struct Index {
    /// Rules by the exact IDs in their `from`.
    exact: HashMap<Box<str>, Vec<u32>>,
    /// Rules by the literal start of the wildcard patterns in their `from`, up to the `/`
    /// before the first wildcard (`spiffe://a.org/ns/x` for `spiffe://a.org/ns/x/sa/*`): an ID
    /// can only match if it starts with that text and a `/`.
    prefixed: HashMap<Box<str>, Vec<u32>>,
    /// Bit `n` is set when some key of `prefixed` has `n` segments: only those prefixes of an
    /// ID are looked up.
    depths: u64,
    /// Every other rule: no `from`, unauthenticated peers, or a wildcard pattern whose literal
    /// start is too short to index (a wildcard trust domain) or deeper than `MAX_DEPTH`.
    general: Vec<u32>,
}

impl Index {
    /// A prefix needs the scheme, the empty segment after it and a literal trust domain.
    const MIN_DEPTH: usize = 3;
    const MAX_DEPTH: usize = 63;

    fn new(rules: &[Rule]) -> Index {
        let mut index = Index::default();
        for (i, rule) in rules.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            let Peers::Matching(patterns) = &rule.peers else {
                index.general.push(i);
                continue;
            };
            let keys = patterns.iter().map(|p| (p.is_literal(), p.literal_prefix()));
            if keys
                .clone()
                .any(|(literal, (_, n))| !literal && !(Self::MIN_DEPTH..=Self::MAX_DEPTH).contains(&n))
            {
                index.general.push(i);
                continue;
            }
            for (literal, (prefix, n)) in keys {
                let list = if literal {
                    index.exact.entry(prefix.into()).or_default()
                } else {
                    index.depths |= 1 << n;
                    index.prefixed.entry(prefix.into()).or_default()
                };
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        index
    }

    /// The rules `peer` may meet: each at least once, in no particular order.
    fn candidates<'a>(&'a self, peer: Peer<'a>) -> impl Iterator<Item = u32> + Clone + 'a {
        let exact = peer
            .id()
            .and_then(|id| self.exact.get(id))
            .map_or(&[][..], |v| &v[..]);
        let id = peer.id().unwrap_or_default();
        // The prefix of `id` before its k-th `/` (from 0) has k + 1 segments.
        let slashes = if self.depths == 0 { "" } else { id };
        let prefixed = slashes
            .bytes()
            .enumerate()
            .filter(|&(_, b)| b == b'/')
            .map(|(at, _)| at)
            .enumerate()
            .take_while(|&(k, _)| k < Self::MAX_DEPTH)
            .filter(move |&(k, _)| self.depths & (1 << (k + 1)) != 0)
            .filter_map(move |(_, at)| self.prefixed.get(&id[..at]))
            .flatten();
        exact.iter().chain(&self.general).chain(prefixed).copied()
    }
}

/// Which peers a rule covers.
#[derive(Clone, Debug)]
enum Peers {
    AnyAuthenticated,
    Matching(Box<[IdPattern]>),
    Unauthenticated,
}

#[derive(Clone, Debug)]
struct Rule {
    name: Arc<str>,
    action: Action,
    peers: Peers,
    /// Uppercased, validated tokens; empty: any method.
    methods: Box<[Box<str>]>,
    /// Empty: any path.
    paths: Box<[PathPattern]>,
    /// All must hold; empty: no header condition.
    headers: Box<[HeaderMatch]>,
}

/// A compiled header condition; names are lowercase.
#[derive(Clone, Debug)]
enum HeaderMatch {
    Exact(Box<str>, Box<str>),
    Present(Box<str>),
    Absent(Box<str>),
}

impl fmt::Display for HeaderMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderMatch::Exact(n, v) => write!(f, "{n}: {v}"),
            HeaderMatch::Present(n) => write!(f, "{n} present"),
            HeaderMatch::Absent(n) => write!(f, "{n} absent"),
        }
    }
}

/// The answer of [`Policy::explain`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct Explanation {
    pub verdict: Verdict,
    pub rules: Vec<RuleExplanation>,
}

/// One rule's part in an [`Explanation`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct RuleExplanation {
    pub name: Arc<str>,
    pub action: Action,
    /// `None`: the rule matched.
    pub why_not: Option<String>,
}

impl HeaderMatch {
    /// Whether the condition holds. A repeated header is ambiguous (apps read the first, the
    /// last or all of its values): `allow` rules (`lenient == false`) need every value to
    /// match, `deny` and `audit` rules (`lenient == true`) are satisfied by any one value.
    fn holds(&self, headers: &dyn Headers, lenient: bool) -> bool {
        match self {
            HeaderMatch::Exact(name, value) => {
                let (total, equal) = headers.count(name, value.as_bytes());
                if lenient {
                    equal > 0
                } else {
                    total > 0 && equal == total
                }
            }
            HeaderMatch::Present(name) => headers.count(name, b"").0 > 0,
            HeaderMatch::Absent(name) => headers.count(name, b"").0 == 0,
        }
    }
}

/// Read access to a request's headers; names are passed lowercase.
pub trait Headers {
    /// How many values the header has, and how many of them equal `value` exactly.
    fn count(&self, name: &str, value: &[u8]) -> (usize, usize);
}

/// No headers at all.
impl Headers for () {
    fn count(&self, _: &str, _: &[u8]) -> (usize, usize) {
        (0, 0)
    }
}

/// Name/value pairs (names compared case-insensitively), for tests and tools.
impl Headers for &[(&str, &str)] {
    fn count(&self, name: &str, value: &[u8]) -> (usize, usize) {
        self.iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .fold((0, 0), |(t, e), (_, v)| {
                (t + 1, e + usize::from(v.as_bytes() == value))
            })
    }
}

/// What per-request policy looks at.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// Normalized (see [`crate::normalize_path`]), without the query.
    pub path: &'a str,
    pub headers: &'a dyn Headers,
}

impl<'a> Request<'a> {
    /// A request without headers.
    pub fn new(method: &'a str, path: &'a str) -> Self {
        Request {
            method,
            path,
            headers: &(),
        }
    }
}

impl fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Rule {
    fn http_only(&self) -> bool {
        !self.methods.is_empty() || !self.paths.is_empty() || !self.headers.is_empty()
    }

    fn matches_peer(&self, peer: Peer<'_>) -> bool {
        match (&self.peers, peer) {
            (Peers::AnyAuthenticated, Peer::Authenticated(_)) => true,
            (Peers::Matching(patterns), Peer::Authenticated(id)) => patterns.iter().any(|p| p.matches(id)),
            (Peers::Unauthenticated, Peer::Unauthenticated) => true,
            _ => false,
        }
    }

    /// `None` when the rule matches; otherwise the first reason it does not.
    fn why_not(&self, peer: Peer<'_>, req: Option<&Request<'_>>) -> Option<String> {
        if !self.matches_peer(peer) {
            return Some(match (&self.peers, peer) {
                (Peers::Unauthenticated, _) => "covers only unauthenticated peers".into(),
                (_, Peer::Unauthenticated) => "covers only authenticated peers".into(),
                (Peers::Matching(p), _) => format!(
                    "the peer matches none of `from`: {}",
                    p.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
                ),
                (Peers::AnyAuthenticated, _) => "the peer is not authenticated".into(),
            });
        }
        let Some(req) = req else {
            return self.http_only().then(|| {
                "HTTP-only rule (methods/paths/headers); not used for a connection-level decision".into()
            });
        };
        if !self.method_matches(req.method) {
            return Some(format!(
                "method {} is not one of {}",
                req.method,
                self.methods.join(", ")
            ));
        }
        if !self.path_matches(req.path) {
            let paths: Vec<&str> = self.paths.iter().map(|p| p.as_str()).collect();
            return Some(format!("path {} matches none of {}", req.path, paths.join(", ")));
        }
        if let Some(h) = self
            .headers
            .iter()
            .find(|h| !h.holds(req.headers, self.lenient()))
        {
            return Some(format!("header condition {h} does not hold"));
        }
        None
    }

    /// Deny and audit rules match ambiguous requests (a method in another case, a repeated
    /// header); allow rules do not. An ambiguity never turns into an allow.
    fn lenient(&self) -> bool {
        self.action != Action::Allow
    }

    fn method_matches(&self, method: &str) -> bool {
        self.methods.is_empty()
            || self
                .methods
                .iter()
                .any(|m| **m == *method || (self.lenient() && m.eq_ignore_ascii_case(method)))
    }

    /// Deny and audit rules fold case (an app router may); allow rules match exactly.
    fn path_matches(&self, path: &str) -> bool {
        self.paths.is_empty() || self.paths.iter().any(|p| p.matches_path(path, self.lenient()))
    }

    fn matches_request(&self, req: &Request<'_>) -> bool {
        self.method_matches(req.method)
            && self.path_matches(req.path)
            && self.headers.iter().all(|h| h.holds(req.headers, self.lenient()))
    }
}

impl Policy {
    /// Validates and compiles `spec` under `name` (the key under `policies:`).
    pub fn compile(name: &str, spec: &PolicySpec) -> Result<Policy, PolicyError> {
        let rules = compile::rules(name, &spec.rules)?;
        Ok(Policy {
            name: name.into(),
            default: spec.default,
            index: Arc::new(Index::new(&rules)),
            rules: rules.into(),
        })
    }

    /// The rules `peer` may meet, with their indices, in no particular order and possibly
    /// more than once; each still checks the peer in full.
    fn candidates<'a>(&'a self, peer: Peer<'a>) -> impl Iterator<Item = (u32, &'a Rule)> + Clone + 'a {
        self.index
            .candidates(peer)
            .filter_map(|i| Some((i, self.rules.get(i as usize)?)))
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verdict for a new connection; HTTP-only rules are skipped.
    pub fn evaluate_connection(&self, peer: Peer<'_>) -> Verdict {
        self.decide(
            self.candidates(peer)
                .filter(|(_, r)| !r.http_only() && r.matches_peer(peer)),
        )
    }

    /// The verdict for one HTTP request; its path is already normalized and has no query.
    pub fn evaluate_request(&self, peer: Peer<'_>, req: &Request<'_>) -> Verdict {
        self.decide(
            self.candidates(peer)
                .filter(|(_, r)| r.matches_peer(peer) && r.matches_request(req)),
        )
    }

    /// Whether an HTTP-only `deny` rule covers `peer`: traffic from it that cannot be read as
    /// HTTP must then be refused, since those rules could not be applied to it.
    pub fn denies_some_requests(&self, peer: Peer<'_>) -> bool {
        self.candidates(peer)
            .any(|(_, r)| r.action == Action::Deny && r.http_only() && r.matches_peer(peer))
    }

    /// The verdict and, for every rule in order, whether it matched and if not, why not.
    /// `req` is `None` for a connection-level question (HTTP-only rules are then skipped).
    pub fn explain(&self, peer: Peer<'_>, req: Option<&Request<'_>>) -> Explanation {
        let verdict = match req {
            Some(r) => self.evaluate_request(peer, r),
            None => self.evaluate_connection(peer),
        };
        let rules = self
            .rules
            .iter()
            .map(|rule| RuleExplanation {
                name: rule.name.clone(),
                action: rule.action,
                why_not: rule.why_not(peer, req),
            })
            .collect();
        Explanation { verdict, rules }
    }

    /// The verdict from the matching rules, given in any order and possibly repeated: the
    /// first deny in file order, else the first allow, else the default; audit rules listed
    /// once each, in file order.
    fn decide<'r>(&self, matching: impl Iterator<Item = (u32, &'r Rule)>) -> Verdict {
        let mut deny: Option<(u32, &Rule)> = None;
        let mut allow: Option<(u32, &Rule)> = None;
        let mut audit = Vec::new();
        for (i, rule) in matching {
            let first = match rule.action {
                Action::Deny => &mut deny,
                Action::Allow => &mut allow,
                Action::Audit => {
                    audit.push((i, rule));
                    continue;
                }
            };
            if first.is_none_or(|(j, _)| i < j) {
                *first = Some((i, rule));
            }
        }
        audit.sort_unstable_by_key(|&(i, _)| i);
        audit.dedup_by_key(|&mut (i, _)| i);
        let (decision, rule, reason) = match (deny, allow, self.default) {
            (Some((_, r)), _, _) => (Decision::Deny, Some(r), Reason::DenyRule),
            (None, Some((_, r)), _) => (Decision::Allow, Some(r), Reason::AllowRule),
            (None, None, DefaultAction::Allow) => (Decision::Allow, None, Reason::DefaultAllow),
            (None, None, DefaultAction::Deny) => (Decision::Deny, None, Reason::DefaultDeny),
        };
        Verdict {
            decision,
            rule: rule.map(|r| r.name.clone()),
            reason,
            audit: audit.into_iter().map(|(_, r)| r.name.clone()).collect(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + Clone + fmt::Debug>() {}

    #[test]
    fn policy_is_send_sync_clone() {
        assert_send_sync::<Policy>();
        assert_send_sync::<Verdict>();
    }

    #[test]
    fn peer_id() {
        assert_eq!(
            Peer::Authenticated("spiffe://a.org/x").id(),
            Some("spiffe://a.org/x")
        );
        assert_eq!(Peer::Unauthenticated.id(), None);
        assert_eq!(Peer::Unauthenticated.to_string(), "unauthenticated");
    }

    use proptest::prelude::*;

    const IDS: [&str; 9] = [
        "spiffe://a.org/ns/x/sa/one",
        "spiffe://a.org/ns/x/sa/two",
        "spiffe://a.org/ns/y/sa/one",
        "spiffe://b.org/ns/x/sa/one",
        "spiffe://a.org/ns/x",
        "spiffe://a.org/ns",
        "spiffe://a.org",
        "spiffe://a.org/ns/x/sa/one/extra",
        "spiffe://a.orgx/ns/x/sa/one",
    ];
    const FROMS: [&str; 14] = [
        "spiffe://a.org/ns/x/sa/one",
        "spiffe://a.org/ns/x/sa/two",
        "spiffe://a.org/ns/y/sa/one",
        "spiffe://a.org/ns/x/*/one",
        "spiffe://a.org/**",
        "spiffe://*/ns/x/sa/one",
        "spiffe://b.org/ns/x/sa/one",
        "spiffe://a.org/ns/*",
        "spiffe://a.org/ns/x/**",
        "spiffe://a.org/ns/x/sa/*",
        "spiffe://a.org/ns/*/sa/one",
        "spiffe://a.org/*/x/sa/one",
        "spiffe://a.org/ns/x/sa/one/**",
        "spiffe://*/**",
    ];

    /// The verdicts a walk over every rule gives, with no index.
    fn walk(p: &Policy) -> impl Iterator<Item = (u32, &Rule)> + Clone {
        p.rules.iter().enumerate().map(|(i, r)| (i as u32, r))
    }

    fn rule_spec() -> impl Strategy<Value = RuleSpec> {
        (
            0u8..3,
            proptest::option::of(proptest::collection::vec(0usize..FROMS.len(), 1..4)),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(action, from, unauth, get_only)| RuleSpec {
                name: String::new(),
                action: [Action::Allow, Action::Deny, Action::Audit][action as usize],
                from: if unauth {
                    None
                } else {
                    from.map(|f| {
                        f.iter()
                            .map(|k| crate::IdPattern::parse(FROMS[*k]).unwrap())
                            .collect()
                    })
                },
                unauthenticated: unauth,
                methods: if get_only { vec!["GET".into()] } else { Vec::new() },
                paths: Vec::new(),
                headers: Vec::new(),
            })
    }

    proptest! {
        /// The index only narrows what is looked at: every answer equals the one a walk over
        /// all rules in file order gives.
        #[test]
        fn indexed_evaluation_equals_a_full_walk(
            rules in proptest::collection::vec(rule_spec(), 0..16),
            default_allow in any::<bool>(),
        ) {
            let rules: Vec<RuleSpec> = rules
                .into_iter()
                .enumerate()
                .map(|(i, r)| RuleSpec { name: format!("r{i}"), ..r })
                .collect();
            let spec = PolicySpec {
                default: if default_allow { DefaultAction::Allow } else { DefaultAction::Deny },
                rules,
            };
            let p = Policy::compile("p", &spec).unwrap();
            let peers = IDS.iter().map(|id| Peer::Authenticated(id)).chain([Peer::Unauthenticated]);
            for peer in peers {
                let get = Request::new("GET", "/");
                let post = Request::new("POST", "/");
                prop_assert_eq!(
                    p.evaluate_connection(peer),
                    p.decide(walk(&p).filter(|(_, r)| !r.http_only() && r.matches_peer(peer)))
                );
                for req in [&get, &post] {
                    prop_assert_eq!(
                        p.evaluate_request(peer, req),
                        p.decide(walk(&p).filter(|(_, r)| r.matches_peer(peer) && r.matches_request(req)))
                    );
                }
                let matching = walk(&p).map(|(_, r)| r).filter(|r| r.matches_peer(peer));
                prop_assert_eq!(
                    p.denies_some_requests(peer),
                    matching.clone().any(|r| r.action == Action::Deny && r.http_only())
                );
            }
        }
    }

    /// Patterns and IDs deeper than the index's depth bits still meet their rules.
    #[test]
    fn very_deep_patterns_are_still_matched() {
        let deep = |n: usize, last: &str| {
            let mut s = "spiffe://a.org".to_owned();
            for i in 0..n {
                s.push_str(&format!("/s{i}"));
            }
            s.push('/');
            s.push_str(last);
            s
        };
        let spec = PolicySpec {
            default: DefaultAction::Deny,
            rules: vec![
                rule("depth-61", Action::Allow, &deep(58, "*")),
                rule("depth-64", Action::Allow, &deep(61, "*")),
                rule("depth-70", Action::Allow, &deep(67, "**")),
            ],
        };
        let p = Policy::compile("p", &spec).unwrap();
        for (id, want) in [
            (deep(58, "x"), "depth-61"),
            (deep(61, "x"), "depth-64"),
            (deep(67, "x/y"), "depth-70"),
        ] {
            let v = p.evaluate_connection(Peer::Authenticated(&id));
            assert_eq!(v.rule.as_deref(), Some(want), "{id}");
        }
        assert!(
            !p.evaluate_connection(Peer::Authenticated(&deep(60, "x")))
                .is_allowed()
        );
    }

    /// A rule for peers matching `from`, with no HTTP condition.
    fn rule(name: &str, action: Action, from: &str) -> RuleSpec {
        RuleSpec {
            name: name.into(),
            action,
            from: Some(vec![crate::IdPattern::parse(from).unwrap()]),
            unauthenticated: false,
            methods: Vec::new(),
            paths: Vec::new(),
            headers: Vec::new(),
        }
    }

    #[test]
    fn the_first_matching_rule_in_file_order_names_the_verdict() {
        let spec = PolicySpec {
            default: DefaultAction::Deny,
            rules: vec![
                rule("audit-late", Action::Audit, "spiffe://a.org/ns/x/sa/one"),
                rule("allow-prefix", Action::Allow, "spiffe://a.org/ns/x/**"),
                rule("allow-exact", Action::Allow, "spiffe://a.org/ns/x/sa/one"),
                rule("audit-any", Action::Audit, "spiffe://*/**"),
                rule("audit-prefix", Action::Audit, "spiffe://a.org/ns/*/sa/one"),
            ],
        };
        let p = Policy::compile("p", &spec).unwrap();
        let v = p.evaluate_connection(Peer::Authenticated("spiffe://a.org/ns/x/sa/one"));
        assert_eq!(v.rule.as_deref(), Some("allow-prefix"));
        let audit: Vec<&str> = v.audit.iter().map(|a| &**a).collect();
        assert_eq!(audit, ["audit-late", "audit-any", "audit-prefix"]);
    }
}
