//! The outcome of evaluating a policy, and the decision record the proxy logs.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Allow or deny.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Deny,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        })
    }
}

/// What made the decision.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A `deny` rule matched.
    DenyRule,
    /// No `deny` rule matched and an `allow` rule did.
    AllowRule,
    /// No rule decided; the policy's default is `allow`.
    DefaultAllow,
    /// No rule decided; the policy's default is `deny`.
    DefaultDeny,
}

impl Reason {
    /// The stable label used in audit records and metrics (`default_deny`, ...).
    pub fn label(&self) -> &'static str {
        match self {
            Reason::DenyRule => "deny_rule",
            Reason::AllowRule => "allow_rule",
            Reason::DefaultAllow => "default_allow",
            Reason::DefaultDeny => "default_deny",
        }
    }

    /// `label: text`, the `reason` of an audit record.
    pub fn record_text(&self) -> &'static str {
        match self {
            Reason::DenyRule => "deny_rule: denied by a deny rule",
            Reason::AllowRule => "allow_rule: allowed by an allow rule",
            Reason::DefaultAllow => "default_allow: no rule matched; the default allows",
            Reason::DefaultDeny => "default_deny: no rule matched; the default denies",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::DenyRule => "denied by a deny rule",
            Reason::AllowRule => "allowed by an allow rule",
            Reason::DefaultAllow => "no rule matched; the default allows",
            Reason::DefaultDeny => "no rule matched; the default denies",
        })
    }
}

/// A policy's answer for one connection or request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    /// The deciding rule; `None` when the default decided.
    pub rule: Option<Arc<str>>,
    pub reason: Reason,
    /// The `audit` rules that matched, in file order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audit: Vec<Arc<str>>,
}

impl Verdict {
    /// Whether the decision is [`Decision::Allow`].
    pub fn is_allowed(&self) -> bool {
        self.decision == Decision::Allow
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Some(rule) => write!(f, "{} by rule \"{rule}\"", self.decision)?,
            None => write!(f, "{} by default", self.decision)?,
        }
        for (i, rule) in self.audit.iter().enumerate() {
            let sep = if i == 0 { "; audited by " } else { ", " };
            write!(f, "{sep}\"{rule}\"")?;
        }
        Ok(())
    }
}

/// The decision part of an audit log line: where, who, and the verdict (flattened).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DecisionRecord {
    pub listener: Arc<str>,
    /// The peer's SPIFFE ID; `None` for an unauthenticated peer.
    pub peer: Option<Arc<str>>,
    #[serde(flatten)]
    pub verdict: Verdict,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn record_serializes_flat() {
        let record = DecisionRecord {
            listener: "web".into(),
            peer: Some("spiffe://example.org/a".into()),
            verdict: Verdict {
                decision: Decision::Deny,
                rule: Some("no-a".into()),
                reason: Reason::DenyRule,
                audit: vec![],
            },
        };
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(
            json,
            r#"{"listener":"web","peer":"spiffe://example.org/a","decision":"deny","rule":"no-a","reason":"deny_rule"}"#
        );
        let back: DecisionRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn record_lists_audit_and_null_peer() {
        let record = DecisionRecord {
            listener: "web".into(),
            peer: None,
            verdict: Verdict {
                decision: Decision::Allow,
                rule: None,
                reason: Reason::DefaultAllow,
                audit: vec!["watch".into()],
            },
        };
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(
            json,
            r#"{"listener":"web","peer":null,"decision":"allow","rule":null,"reason":"default_allow","audit":["watch"]}"#
        );
        assert_eq!(serde_json::from_str::<DecisionRecord>(&json).unwrap(), record);
    }

    #[test]
    fn display_is_short() {
        let v = Verdict {
            decision: Decision::Allow,
            rule: Some("r".into()),
            reason: Reason::AllowRule,
            audit: vec!["a".into(), "b".into()],
        };
        assert_eq!(v.to_string(), r#"allow by rule "r"; audited by "a", "b""#);
        assert_eq!(
            Reason::DefaultDeny.to_string(),
            "no rule matched; the default denies"
        );
    }

    #[test]
    fn record_text_is_label_then_text() {
        for r in [
            Reason::DenyRule,
            Reason::AllowRule,
            Reason::DefaultAllow,
            Reason::DefaultDeny,
        ] {
            assert_eq!(r.record_text(), format!("{}: {r}", r.label()));
        }
    }
}
