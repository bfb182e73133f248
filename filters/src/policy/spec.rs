//! The policy as written in config (`policies:` in `ward.yaml`), before compilation.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::pattern::{IdPattern, PathPattern};

/// What a matching rule does.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Allow, unless a `deny` rule also matches.
    Allow,
    /// Deny; beats every `allow`.
    Deny,
    /// Only record the match; never changes the decision.
    Audit,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Audit => "audit",
        })
    }
}

/// The decision when no `allow` or `deny` rule matches; `deny` when omitted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    Allow,
    #[default]
    Deny,
}

/// One rule as written.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique within the policy; names the rule in verdicts, logs and metrics.
    pub name: String,
    pub action: Action,
    /// SPIFFE ID patterns of the peers this rule covers; omitted: any authenticated peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<IdPattern>>,
    /// Covers only unauthenticated (plaintext, permissive-listener) peers.
    #[serde(default, skip_serializing_if = "is_false")]
    pub unauthenticated: bool,
    /// HTTP methods (HTTP-only rule); empty: any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Normalized request path patterns (HTTP-only rule); empty: any path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathPattern>,
    /// Request header conditions (HTTP-only rule); all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderSpec>,
}

/// One header condition: an exact value, or presence (`present: true`) / absence
/// (`present: false`).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HeaderSpec {
    /// Header name, case-insensitive.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One named policy as written.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    #[serde(default)]
    pub default: DefaultAction,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}
