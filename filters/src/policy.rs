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
    /// Rules whose `from` lists only exact IDs, by ID: a peer meets at most these and the
    /// `general` ones, so a decision over 10 000 per-service rules looks at a handful.
    by_id: Arc<HashMap<Box<str>, Vec<u32>>>,
    /// Every other rule (wildcards, no `from`, unauthenticated), in file order.
    general: Arc<[u32]>,
}

/// Merges two ascending index lists: the rules a peer may meet, in file order.
#[derive(Clone)]
struct Candidates<'a> {
    a: &'a [u32],
    b: &'a [u32],
}

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let take_a = match (self.a.first(), self.b.first()) {
            (Some(x), Some(y)) => x < y,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        let (list, rest) = if take_a {
            (self.a, &mut self.a)
        } else {
            (self.b, &mut self.b)
        };
        let (first, tail) = list.split_first()?;
        *rest = tail;
        Some(*first as usize)
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
        if !(self.paths.is_empty() || self.paths.iter().any(|p| p.matches(req.path))) {
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

    fn matches_request(&self, req: &Request<'_>) -> bool {
        self.method_matches(req.method)
            && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(req.path)))
            && self.headers.iter().all(|h| h.holds(req.headers, self.lenient()))
    }
}

impl Policy {
    /// Validates and compiles `spec` under `name` (the key under `policies:`).
    pub fn compile(name: &str, spec: &PolicySpec) -> Result<Policy, PolicyError> {
        let rules = compile::rules(name, &spec.rules)?;
        let mut by_id: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        let mut general = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            match &rule.peers {
                Peers::Matching(patterns) if patterns.iter().all(|p| p.is_literal()) => {
                    for p in patterns.iter() {
                        let ids = by_id.entry(p.as_str().into()).or_default();
                        if ids.last() != Some(&i) {
                            ids.push(i);
                        }
                    }
                }
                _ => general.push(i),
            }
        }
        Ok(Policy {
            name: name.into(),
            default: spec.default,
            rules: rules.into(),
            by_id: Arc::new(by_id),
            general: general.into(),
        })
    }

    /// The rules `peer` may meet, in file order (each still checks the peer in full).
    fn candidates<'a>(&'a self, peer: Peer<'_>) -> impl Iterator<Item = &'a Rule> + Clone + 'a {
        let indexed = peer
            .id()
            .and_then(|id| self.by_id.get(id))
            .map_or(&[][..], |v| &v[..]);
        Candidates {
            a: indexed,
            b: &self.general,
        }
        .filter_map(|i| self.rules.get(i))
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verdict for a new connection; HTTP-only rules are skipped.
    pub fn evaluate_connection(&self, peer: Peer<'_>) -> Verdict {
        self.decide(
            self.candidates(peer)
                .filter(|r| !r.http_only() && r.matches_peer(peer)),
        )
    }

    /// The verdict for one HTTP request; its path is already normalized and has no query.
    pub fn evaluate_request(&self, peer: Peer<'_>, req: &Request<'_>) -> Verdict {
        self.decide(
            self.candidates(peer)
                .filter(|r| r.matches_peer(peer) && r.matches_request(req)),
        )
    }

    /// For HTTP listeners at connection time: `false` only if no request from `peer` could
    /// ever be allowed, so the connection can be refused up front.
    pub fn may_allow_requests(&self, peer: Peer<'_>) -> bool {
        let mut matching = self.candidates(peer).filter(|r| r.matches_peer(peer));
        if matching
            .clone()
            .any(|r| r.action == Action::Deny && !r.http_only())
        {
            return false;
        }
        self.default == DefaultAction::Allow || matching.any(|r| r.action == Action::Allow)
    }

    /// Whether an HTTP-only `deny` rule covers `peer`: traffic from it that cannot be read as
    /// HTTP must then be refused, since those rules could not be applied to it.
    pub fn denies_some_requests(&self, peer: Peer<'_>) -> bool {
        self.rules
            .iter()
            .any(|r| r.action == Action::Deny && r.http_only() && r.matches_peer(peer))
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

    fn decide<'r>(&self, matching: impl Iterator<Item = &'r Rule>) -> Verdict {
        let mut deny = None;
        let mut allow = None;
        let mut audit = Vec::new();
        for rule in matching {
            match rule.action {
                Action::Deny => {
                    deny.get_or_insert(rule);
                }
                Action::Allow => {
                    allow.get_or_insert(rule);
                }
                Action::Audit => audit.push(rule.name.clone()),
            }
        }
        let (decision, rule, reason) = match (deny, allow, self.default) {
            (Some(r), _, _) => (Decision::Deny, Some(r), Reason::DenyRule),
            (None, Some(r), _) => (Decision::Allow, Some(r), Reason::AllowRule),
            (None, None, DefaultAction::Allow) => (Decision::Allow, None, Reason::DefaultAllow),
            (None, None, DefaultAction::Deny) => (Decision::Deny, None, Reason::DefaultDeny),
        };
        Verdict {
            decision,
            rule: rule.map(|r| r.name.clone()),
            reason,
            audit,
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

    const IDS: [&str; 4] = [
        "spiffe://a.org/ns/x/sa/one",
        "spiffe://a.org/ns/x/sa/two",
        "spiffe://a.org/ns/y/sa/one",
        "spiffe://b.org/ns/x/sa/one",
    ];
    const FROMS: [&str; 7] = [
        "spiffe://a.org/ns/x/sa/one",
        "spiffe://a.org/ns/x/sa/two",
        "spiffe://a.org/ns/y/sa/one",
        "spiffe://a.org/ns/x/*/one",
        "spiffe://a.org/**",
        "spiffe://*/ns/x/sa/one",
        "spiffe://b.org/ns/x/sa/one",
    ];

    fn naive(p: &Policy, peer: Peer<'_>) -> Verdict {
        p.decide(p.rules.iter().filter(|r| !r.http_only() && r.matches_peer(peer)))
    }

    proptest! {
        /// The by-ID index only narrows what is looked at: every verdict equals the one a
        /// walk over all rules gives.
        #[test]
        fn indexed_evaluation_equals_a_full_walk(
            rules in proptest::collection::vec((0u8..3, proptest::option::of(proptest::collection::vec(0usize..7, 1..3)), any::<bool>()), 0..12),
            default_allow in any::<bool>(),
        ) {
            let rules: Vec<RuleSpec> = rules
                .iter()
                .enumerate()
                .map(|(i, (action, from, unauth))| RuleSpec {
                    name: format!("r{i}"),
                    action: [Action::Allow, Action::Deny, Action::Audit][*action as usize],
                    from: if *unauth { None } else {
                        from.as_ref().map(|f| f.iter().map(|k| crate::IdPattern::parse(FROMS[*k]).unwrap()).collect())
                    },
                    unauthenticated: *unauth,
                    methods: Vec::new(),
                    paths: Vec::new(),
                    headers: Vec::new(),
                })
                .collect();
            let spec = PolicySpec {
                default: if default_allow { DefaultAction::Allow } else { DefaultAction::Deny },
                rules,
            };
            let p = Policy::compile("p", &spec).unwrap();
            for id in IDS {
                prop_assert_eq!(p.evaluate_connection(Peer::Authenticated(id)), naive(&p, Peer::Authenticated(id)));
            }
            prop_assert_eq!(p.evaluate_connection(Peer::Unauthenticated), naive(&p, Peer::Unauthenticated));
        }
    }
}
