//! Checking a [`PolicySpec`](super::PolicySpec)'s rules and compiling them.

use std::collections::HashSet;

use thiserror::Error;

use super::spec::RuleSpec;
use super::{HeaderMatch, Peers, Rule};

/// Why a policy does not compile; the message names the policy and rule and says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A rule's `name` is empty (or only whitespace).
    #[error("policy \"{policy}\": rule #{index} has an empty name; give every rule a unique name")]
    EmptyRuleName { policy: String, index: usize },
    /// Two rules share a name.
    #[error(
        "policy \"{policy}\": more than one rule is named \"{rule}\"; rule names must be unique within a policy"
    )]
    DuplicateRuleName { policy: String, rule: String },
    /// `unauthenticated: true` together with `from`.
    #[error(
        "policy \"{policy}\", rule \"{rule}\": `unauthenticated: true` and `from` exclude each other (unauthenticated peers have no SPIFFE ID); split it into two rules"
    )]
    UnauthenticatedWithFrom { policy: String, rule: String },
    /// `from: []`, which would match no peer at all.
    #[error(
        "policy \"{policy}\", rule \"{rule}\": `from` is an empty list and would match no peer; list SPIFFE ID patterns, or remove `from` to match any authenticated peer"
    )]
    EmptyFrom { policy: String, rule: String },
    /// A method that is not an HTTP token.
    #[error(
        "policy \"{policy}\", rule \"{rule}\": method {method:?} is not an HTTP method; write a token like GET, POST or DELETE (letters, digits and !#$%&'*+-.^_`|~ only)"
    )]
    InvalidMethod {
        policy: String,
        rule: String,
        method: String,
    },
    /// A header condition that is malformed.
    #[error("policy \"{policy}\", rule \"{rule}\": header condition {header:?}: {problem}")]
    InvalidHeader {
        policy: String,
        rule: String,
        header: String,
        problem: &'static str,
    },
}

/// Validates and compiles every rule of the policy `policy`.
pub(super) fn rules(policy: &str, specs: &[RuleSpec]) -> Result<Vec<Rule>, PolicyError> {
    let mut seen = HashSet::new();
    let mut rules = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let err_rule = || (policy.to_owned(), spec.name.clone());
        if spec.name.trim().is_empty() {
            return Err(PolicyError::EmptyRuleName {
                policy: policy.into(),
                index: i + 1,
            });
        }
        if !seen.insert(spec.name.as_str()) {
            let (policy, rule) = err_rule();
            return Err(PolicyError::DuplicateRuleName { policy, rule });
        }
        let peers = match (&spec.from, spec.unauthenticated) {
            (Some(_), true) => {
                let (policy, rule) = err_rule();
                return Err(PolicyError::UnauthenticatedWithFrom { policy, rule });
            }
            (Some(from), false) if from.is_empty() => {
                let (policy, rule) = err_rule();
                return Err(PolicyError::EmptyFrom { policy, rule });
            }
            (Some(from), false) => Peers::Matching(from.clone().into()),
            (None, true) => Peers::Unauthenticated,
            (None, false) => Peers::AnyAuthenticated,
        };
        let mut methods: Vec<Box<str>> = Vec::with_capacity(spec.methods.len());
        for method in &spec.methods {
            let upper = method.to_ascii_uppercase();
            if !is_token(&upper) {
                let (policy, rule) = err_rule();
                return Err(PolicyError::InvalidMethod {
                    policy,
                    rule,
                    method: method.clone(),
                });
            }
            if !methods.iter().any(|m| **m == *upper) {
                methods.push(upper.into());
            }
        }
        let mut headers = Vec::with_capacity(spec.headers.len());
        for h in &spec.headers {
            let bad = |problem| {
                let (policy, rule) = err_rule();
                PolicyError::InvalidHeader {
                    policy,
                    rule,
                    header: h.name.clone(),
                    problem,
                }
            };
            if !is_token(&h.name) {
                return Err(bad("the name is not an HTTP header name"));
            }
            let name: Box<str> = h.name.to_ascii_lowercase().into();
            headers.push(match (&h.value, h.present) {
                (Some(v), None | Some(true)) => HeaderMatch::Exact(name, v.as_str().into()),
                (None, Some(true)) => HeaderMatch::Present(name),
                (None, Some(false)) => HeaderMatch::Absent(name),
                (None, None) => return Err(bad("give `value: ...` (exact match) or `present: true|false`")),
                (Some(_), Some(false)) => return Err(bad("`value` and `present: false` exclude each other")),
            });
        }
        rules.push(Rule {
            name: spec.name.as_str().into(),
            action: spec.action,
            peers,
            methods: methods.into(),
            paths: spec.paths.clone().into(),
            headers: headers.into(),
        });
    }
    Ok(rules)
}

/// RFC 9110 `token`: one or more `tchar`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
