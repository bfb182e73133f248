//! Shared fixtures for ward's criterion benchmarks (`cargo bench -p ward-benches`).

use ward_filters::{Action, DefaultAction, IdPattern, PolicySpec, RuleSpec};

/// A policy of `n` allow rules, each naming one service account, the last one `target`'s.
pub fn policy_with_rules(n: usize, target: &str) -> PolicySpec {
    let mut rules: Vec<RuleSpec> = (0..n.saturating_sub(1))
        .map(|i| {
            rule(
                &format!("r{i}"),
                &format!("spiffe://example.org/ns/bench/sa/svc-{i}"),
            )
        })
        .collect();
    rules.push(rule("target", target));
    PolicySpec {
        default: DefaultAction::Deny,
        rules,
    }
}

/// A policy of `n` rules, one per namespace with a wildcard service account
/// (`spiffe://example.org/ns/ns-{i}/sa/*`), the last of them covering `target`'s namespace.
pub fn policy_with_wildcard_rules(n: usize, target_ns: &str) -> PolicySpec {
    let mut rules: Vec<RuleSpec> = (0..n.saturating_sub(1))
        .map(|i| rule(&format!("r{i}"), &format!("spiffe://example.org/ns/ns-{i}/sa/*")))
        .collect();
    rules.push(rule(
        "target",
        &format!("spiffe://example.org/ns/{target_ns}/sa/*"),
    ));
    PolicySpec {
        default: DefaultAction::Deny,
        rules,
    }
}

fn rule(name: &str, id: &str) -> RuleSpec {
    RuleSpec {
        name: name.to_owned(),
        action: Action::Allow,
        from: IdPattern::parse(id).ok().map(|p| vec![p]),
        unauthenticated: false,
        methods: Vec::new(),
        paths: Vec::new(),
        headers: Vec::new(),
    }
}
