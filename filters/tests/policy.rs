//! Policy compilation and evaluation, from specs written as JSON (YAML lives in the proxy).
#![allow(clippy::unwrap_used)]

use ward_filters::{
    Action, Decision, DefaultAction, Peer, Policy, PolicyError, PolicySpec, Reason, Request, Verdict,
};

const FRONTEND: Peer<'static> = Peer::Authenticated("spiffe://example.org/ns/default/sa/frontend");
const BATCH: Peer<'static> = Peer::Authenticated("spiffe://example.org/ns/jobs/sa/batch");
const PARTNER: Peer<'static> = Peer::Authenticated("spiffe://partner.org/svc/billing");
const PLAIN: Peer<'static> = Peer::Unauthenticated;

fn spec(json: &str) -> PolicySpec {
    serde_json::from_str(json).unwrap()
}

fn policy(json: &str) -> Policy {
    Policy::compile("web", &spec(json)).unwrap()
}

fn compile_err(json: &str) -> PolicyError {
    Policy::compile("web", &spec(json)).unwrap_err()
}

fn verdict(decision: Decision, rule: Option<&str>, reason: Reason, audit: &[&str]) -> Verdict {
    Verdict {
        decision,
        rule: rule.map(Into::into),
        reason,
        audit: audit.iter().map(|a| (*a).into()).collect(),
    }
}

#[test]
fn default_is_deny_when_omitted() {
    let s = spec("{}");
    assert_eq!(s.default, DefaultAction::Deny);
    assert_eq!(DefaultAction::default(), DefaultAction::Deny);
    let p = Policy::compile("empty", &s).unwrap();
    assert_eq!(p.name(), "empty");
    assert_eq!(
        p.evaluate_connection(FRONTEND),
        verdict(Decision::Deny, None, Reason::DefaultDeny, &[])
    );
}

#[test]
fn default_allow() {
    let p = policy(r#"{"default": "allow"}"#);
    assert_eq!(
        p.evaluate_connection(PLAIN),
        verdict(Decision::Allow, None, Reason::DefaultAllow, &[])
    );
    assert!(p.evaluate_request(BATCH, &Request::new("GET", "/")).is_allowed());
}

#[test]
fn deny_beats_allow_regardless_of_order() {
    let p = policy(
        r#"{"rules": [
            {"name": "all-example", "action": "allow", "from": ["spiffe://example.org/**"]},
            {"name": "no-jobs", "action": "deny", "from": ["spiffe://example.org/ns/jobs/**"]},
            {"name": "no-jobs-again", "action": "deny", "from": ["spiffe://example.org/ns/jobs/sa/*"]}
        ]}"#,
    );
    assert_eq!(
        p.evaluate_connection(BATCH),
        verdict(Decision::Deny, Some("no-jobs"), Reason::DenyRule, &[])
    );
    assert_eq!(
        p.evaluate_connection(FRONTEND),
        verdict(Decision::Allow, Some("all-example"), Reason::AllowRule, &[])
    );
    assert_eq!(
        p.evaluate_connection(PARTNER),
        verdict(Decision::Deny, None, Reason::DefaultDeny, &[])
    );
}

#[test]
fn first_matching_allow_names_the_verdict() {
    let p = policy(
        r#"{"rules": [
            {"name": "second-in-spirit", "action": "allow", "from": ["spiffe://*/**"]},
            {"name": "exact", "action": "allow", "from": ["spiffe://partner.org/svc/billing"]}
        ]}"#,
    );
    assert_eq!(
        p.evaluate_connection(PARTNER).rule.as_deref(),
        Some("second-in-spirit")
    );
}

#[test]
fn audit_never_changes_the_decision_but_is_listed() {
    let p = policy(
        r#"{"rules": [
            {"name": "watch-all", "action": "audit"},
            {"name": "allow-frontend", "action": "allow",
             "from": ["spiffe://example.org/ns/default/sa/frontend"]},
            {"name": "watch-jobs", "action": "audit", "from": ["spiffe://example.org/ns/jobs/**"]},
            {"name": "watch-plain", "action": "audit", "unauthenticated": true}
        ]}"#,
    );
    assert_eq!(
        p.evaluate_connection(FRONTEND),
        verdict(
            Decision::Allow,
            Some("allow-frontend"),
            Reason::AllowRule,
            &["watch-all"]
        )
    );
    assert_eq!(
        p.evaluate_connection(BATCH),
        verdict(
            Decision::Deny,
            None,
            Reason::DefaultDeny,
            &["watch-all", "watch-jobs"]
        )
    );
    assert_eq!(
        p.evaluate_connection(PLAIN),
        verdict(Decision::Deny, None, Reason::DefaultDeny, &["watch-plain"])
    );

    // An audit-only policy decides exactly as the empty one.
    let only_audit = policy(r#"{"default": "allow", "rules": [{"name": "a", "action": "audit"}]}"#);
    let v = only_audit.evaluate_request(FRONTEND, &Request::new("POST", "/x"));
    assert_eq!(v, verdict(Decision::Allow, None, Reason::DefaultAllow, &["a"]));
    // Audit rules never allow.
    let only_audit_deny = policy(r#"{"rules": [{"name": "a", "action": "audit"}]}"#);
    assert!(
        !only_audit_deny
            .evaluate_request(BATCH, &Request::new("GET", "/"))
            .is_allowed()
    );
}

#[test]
fn no_from_matches_any_authenticated_peer_only() {
    let p = policy(r#"{"rules": [{"name": "anyone", "action": "allow"}]}"#);
    for peer in [FRONTEND, BATCH, PARTNER] {
        assert!(p.evaluate_connection(peer).is_allowed(), "{peer}");
    }
    assert_eq!(
        p.evaluate_connection(PLAIN),
        verdict(Decision::Deny, None, Reason::DefaultDeny, &[])
    );

    let p = policy(r#"{"default": "allow", "rules": [{"name": "nobody", "action": "deny"}]}"#);
    assert!(!p.evaluate_connection(FRONTEND).is_allowed());
    assert!(p.evaluate_connection(PLAIN).is_allowed());
}

#[test]
fn unauthenticated_rule_matches_only_plaintext_peers() {
    let p = policy(r#"{"rules": [{"name": "migrating", "action": "allow", "unauthenticated": true}]}"#);
    assert_eq!(
        p.evaluate_connection(PLAIN),
        verdict(Decision::Allow, Some("migrating"), Reason::AllowRule, &[])
    );
    assert!(!p.evaluate_connection(FRONTEND).is_allowed());

    let p = policy(
        r#"{"default": "allow", "rules": [{"name": "no-plain", "action": "deny", "unauthenticated": true}]}"#,
    );
    assert!(!p.evaluate_connection(PLAIN).is_allowed());
    assert!(p.evaluate_connection(FRONTEND).is_allowed());
}

fn http_policy() -> Policy {
    policy(
        r#"{"rules": [
            {"name": "frontend-reads", "action": "allow",
             "from": ["spiffe://example.org/ns/default/sa/frontend"],
             "methods": ["get", "HEAD"], "paths": ["/api/*", "/health"]},
            {"name": "no-admin", "action": "deny", "paths": ["/admin/**"]},
            {"name": "jobs", "action": "allow", "from": ["spiffe://example.org/ns/jobs/**"]},
            {"name": "audit-writes", "action": "audit", "methods": ["POST", "PUT", "DELETE"]}
        ]}"#,
    )
}

#[test]
fn http_only_rules_are_skipped_at_connection_level() {
    let p = http_policy();
    // frontend-reads is HTTP-only: no connection-level allow for the frontend.
    assert_eq!(
        p.evaluate_connection(FRONTEND),
        verdict(Decision::Deny, None, Reason::DefaultDeny, &[])
    );
    // no-admin is HTTP-only: it does not deny jobs' connections.
    assert_eq!(
        p.evaluate_connection(BATCH),
        verdict(Decision::Allow, Some("jobs"), Reason::AllowRule, &[])
    );
    // ...but the frontend's reads are allowed per request, and jobs' requests too.
    assert!(
        p.evaluate_request(FRONTEND, &Request::new("GET", "/api/x"))
            .is_allowed()
    );
    assert!(
        p.evaluate_request(BATCH, &Request::new("POST", "/x"))
            .is_allowed()
    );
    assert!(
        !p.evaluate_request(PARTNER, &Request::new("GET", "/api/x"))
            .is_allowed()
    );
}

#[test]
fn http_rules_apply_per_request() {
    let p = http_policy();
    let allow = |rule, audit: &[&str]| verdict(Decision::Allow, Some(rule), Reason::AllowRule, audit);
    let default_deny = |audit: &[&str]| verdict(Decision::Deny, None, Reason::DefaultDeny, audit);

    assert_eq!(
        p.evaluate_request(FRONTEND, &Request::new("GET", "/api/users")),
        allow("frontend-reads", &[])
    );
    assert_eq!(
        p.evaluate_request(FRONTEND, &Request::new("HEAD", "/health")),
        allow("frontend-reads", &[])
    );
    // Methods were uppercased at compile time and compare case-sensitively.
    assert_eq!(
        p.evaluate_request(FRONTEND, &Request::new("get", "/api/users")),
        default_deny(&[])
    );
    assert_eq!(
        p.evaluate_request(FRONTEND, &Request::new("POST", "/api/users")),
        default_deny(&["audit-writes"])
    );
    assert_eq!(
        p.evaluate_request(FRONTEND, &Request::new("GET", "/api/users/1")),
        default_deny(&[])
    );
    assert_eq!(
        p.evaluate_request(FRONTEND, &Request::new("GET", "/api/")),
        default_deny(&[])
    );
    assert_eq!(
        p.evaluate_request(FRONTEND, &Request::new("GET", "/healthz")),
        default_deny(&[])
    );

    // A non-HTTP allow rule covers every request; an HTTP deny rule still beats it.
    assert_eq!(
        p.evaluate_request(BATCH, &Request::new("DELETE", "/api/x")),
        allow("jobs", &["audit-writes"])
    );
    assert_eq!(
        p.evaluate_request(BATCH, &Request::new("GET", "/admin/users")),
        verdict(Decision::Deny, Some("no-admin"), Reason::DenyRule, &[])
    );
    // `/admin/**` covers `/admin` itself, and a deny rule folds case.
    for spelling in ["/admin", "/admin/", "/ADMIN/users", "/Admin"] {
        assert_eq!(
            p.evaluate_request(BATCH, &Request::new("GET", spelling)),
            verdict(Decision::Deny, Some("no-admin"), Reason::DenyRule, &[]),
            "{spelling}"
        );
    }
    assert_eq!(
        p.evaluate_request(BATCH, &Request::new("GET", "/administrator")),
        allow("jobs", &[])
    );

    // Rules without `from` never match unauthenticated peers, even per request.
    assert_eq!(
        p.evaluate_request(PLAIN, &Request::new("GET", "/admin/x")),
        default_deny(&[])
    );
}

#[test]
fn a_connection_level_deny_covers_every_request_an_http_only_one_its_own() {
    let p = policy(
        r#"{"default": "allow", "rules": [
            {"name": "no-partner", "action": "deny", "from": ["spiffe://partner.org/**"]},
            {"name": "no-jobs-writes", "action": "deny",
             "from": ["spiffe://example.org/ns/jobs/**"], "methods": ["POST"]}
        ]}"#,
    );
    assert!(
        !p.evaluate_request(PARTNER, &Request::new("GET", "/"))
            .is_allowed()
    );
    assert!(!p.evaluate_request(BATCH, &Request::new("POST", "/")).is_allowed());
    assert!(p.evaluate_request(BATCH, &Request::new("GET", "/")).is_allowed());
}

#[test]
fn policy_is_cheap_to_share() {
    let p = http_policy();
    let q = p.clone();
    let v1 = p.evaluate_connection(BATCH);
    let v2 = q.evaluate_connection(BATCH);
    assert!(std::sync::Arc::ptr_eq(
        v1.rule.as_ref().unwrap(),
        v2.rule.as_ref().unwrap()
    ));
    std::thread::spawn(move || q.evaluate_request(FRONTEND, &Request::new("GET", "/api/x")))
        .join()
        .unwrap();
}

// ---- compile errors ----

#[test]
fn error_empty_rule_name() {
    let err =
        compile_err(r#"{"rules": [{"name": "ok", "action": "allow"}, {"name": " ", "action": "deny"}]}"#);
    assert_eq!(
        err,
        PolicyError::EmptyRuleName {
            policy: "web".into(),
            index: 2
        }
    );
    assert_eq!(
        err.to_string(),
        "policy \"web\": rule #2 has an empty name; give every rule a unique name"
    );
}

#[test]
fn error_duplicate_rule_name() {
    let err =
        compile_err(r#"{"rules": [{"name": "a", "action": "allow"}, {"name": "a", "action": "audit"}]}"#);
    assert!(matches!(err, PolicyError::DuplicateRuleName { ref rule, .. } if rule == "a"));
    let msg = err.to_string();
    assert!(
        msg.contains("policy \"web\"") && msg.contains("\"a\"") && msg.contains("unique"),
        "{msg}"
    );
}

#[test]
fn error_unauthenticated_with_from() {
    let err = compile_err(
        r#"{"rules": [{"name": "mixed", "action": "allow", "unauthenticated": true,
                      "from": ["spiffe://example.org/x"]}]}"#,
    );
    let msg = err.to_string();
    assert!(matches!(err, PolicyError::UnauthenticatedWithFrom { .. }));
    assert!(msg.starts_with("policy \"web\", rule \"mixed\":"), "{msg}");
    assert!(msg.contains("split it into two rules"), "{msg}");
}

#[test]
fn error_empty_from() {
    let err = compile_err(r#"{"rules": [{"name": "nobody", "action": "allow", "from": []}]}"#);
    assert!(matches!(err, PolicyError::EmptyFrom { .. }));
    let msg = err.to_string();
    assert!(msg.starts_with("policy \"web\", rule \"nobody\":"), "{msg}");
    assert!(
        msg.contains("remove `from` to match any authenticated peer"),
        "{msg}"
    );
}

#[test]
fn error_invalid_method() {
    for bad in ["", "GET POST", "GET,POST", "ÖFFNEN", "get\n"] {
        let json = serde_json::json!({"rules": [{"name": "m", "action": "allow", "methods": [bad]}]});
        let err = Policy::compile("web", &serde_json::from_value(json).unwrap()).unwrap_err();
        assert_eq!(
            err,
            PolicyError::InvalidMethod {
                policy: "web".into(),
                rule: "m".into(),
                method: bad.into()
            }
        );
        let msg = err.to_string();
        assert!(msg.starts_with("policy \"web\", rule \"m\": method"), "{msg}");
        assert!(msg.contains("GET, POST"), "{msg}");
    }
    // Extension methods are tokens too.
    policy(r#"{"rules": [{"name": "m", "action": "allow", "methods": ["PROPFIND", "m-search"]}]}"#);
}

#[test]
fn bad_patterns_and_fields_fail_to_deserialize() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"rules": [{"name": "a", "action": "allow", "from": ["example.org/x"]}]}"#,
            "must start with `spiffe://`",
        ),
        (
            r#"{"rules": [{"name": "a", "action": "allow", "from": ["spiffe://example.org/ns/a*"]}]}"#,
            "wildcards must be whole segments",
        ),
        (
            r#"{"rules": [{"name": "a", "action": "allow", "paths": ["api/*"]}]}"#,
            "must start with `/`",
        ),
        (
            r#"{"rules": [{"name": "a", "action": "allow", "paths": ["/**/x"]}]}"#,
            "final `/**`",
        ),
        (
            r#"{"rules": [{"name": "a", "action": "permit"}]}"#,
            "unknown variant `permit`",
        ),
        (
            r#"{"rules": [{"name": "a", "action": "allow", "form": []}]}"#,
            "unknown field `form`",
        ),
        (r#"{"default": "audit"}"#, "unknown variant `audit`"),
        (r#"{"defaults": "allow"}"#, "unknown field `defaults`"),
        (r#"{"rules": [{"action": "allow"}]}"#, "missing field `name`"),
    ];
    for (json, want) in cases {
        let err = serde_json::from_str::<PolicySpec>(json).unwrap_err().to_string();
        assert!(err.contains(want), "{json}: {err}");
    }
}

#[test]
fn spec_round_trips_through_json() {
    let json = r#"{"default": "allow", "rules": [
        {"name": "frontend-reads", "action": "allow",
         "from": ["spiffe://example.org/ns/default/sa/frontend", "spiffe://*/ns/*/sa/web"],
         "methods": ["GET", "HEAD"], "paths": ["/api/*", "/static/**", "/"]},
        {"name": "plain", "action": "audit", "unauthenticated": true},
        {"name": "anyone", "action": "deny"}
    ]}"#;
    let s = spec(json);
    assert_eq!(s.default, DefaultAction::Allow);
    assert_eq!(s.rules[0].action, Action::Allow);
    assert_eq!(
        s.rules[0].from.as_ref().unwrap()[1].as_str(),
        "spiffe://*/ns/*/sa/web"
    );
    assert!(s.rules[1].unauthenticated && s.rules[1].from.is_none());

    let out = serde_json::to_string(&s).unwrap();
    let back: PolicySpec = serde_json::from_str(&out).unwrap();
    assert_eq!(back, s);
    // Defaults are left out when written back.
    assert!(out.contains(r#"{"name":"anyone","action":"deny"}"#), "{out}");

    let empty = serde_json::to_string(&PolicySpec::default()).unwrap();
    assert_eq!(empty, r#"{"default":"deny","rules":[]}"#);
}

#[test]
fn header_conditions_exact_presence_absence() {
    let spec: PolicySpec = serde_json::from_str(
        r#"{"rules":[
            {"name":"canary","action":"deny","headers":[{"name":"X-Canary","value":"evil"}]},
            {"name":"tenant","action":"allow","headers":[{"name":"x-tenant","present":true},{"name":"x-debug","present":false}]}
        ]}"#,
    )
    .unwrap();
    let p = Policy::compile("h", &spec).unwrap();
    let req = |h: &[(&str, &str)]| {
        let r = Request {
            method: "GET",
            path: "/",
            headers: &h,
        };
        p.evaluate_request(FRONTEND, &r)
    };
    assert!(req(&[("x-tenant", "a")]).is_allowed());
    assert!(
        req(&[("X-Tenant", "a")]).is_allowed(),
        "names are case-insensitive"
    );
    assert!(!req(&[]).is_allowed(), "a required header is missing");
    assert!(
        !req(&[("x-tenant", "a"), ("x-debug", "1")]).is_allowed(),
        "a forbidden header is present"
    );
    let v = req(&[("x-tenant", "a"), ("x-canary", "evil")]);
    assert_eq!(v.rule.as_deref(), Some("canary"), "deny beats allow");
    assert!(
        req(&[("x-tenant", "a"), ("x-canary", "EVIL")]).is_allowed(),
        "values compare exactly"
    );
    // Header rules are HTTP-only: skipped at connection level.
    assert!(!p.evaluate_connection(FRONTEND).is_allowed());
}

#[test]
fn malformed_header_conditions_are_refused() {
    for bad in [
        r#"{"rules":[{"name":"a","action":"allow","headers":[{"name":"x"}]}]}"#,
        r#"{"rules":[{"name":"a","action":"allow","headers":[{"name":"bad name","present":true}]}]}"#,
        r#"{"rules":[{"name":"a","action":"allow","headers":[{"name":"x","value":"v","present":false}]}]}"#,
    ] {
        let spec: PolicySpec = serde_json::from_str(bad).unwrap();
        let e = Policy::compile("h", &spec).unwrap_err();
        assert!(matches!(e, PolicyError::InvalidHeader { .. }), "{e}");
        assert!(e.to_string().contains("policy \"h\""), "{e}");
    }
}

#[test]
fn ambiguous_requests_never_slip_past_a_deny_nor_win_an_allow() {
    let spec: PolicySpec = serde_json::from_str(
        r#"{"rules":[
            {"name":"no-delete","action":"deny","methods":["DELETE"]},
            {"name":"no-evil","action":"deny","headers":[{"name":"x-canary","value":"evil"}]},
            {"name":"tenant-a","action":"allow","methods":["GET"],"headers":[{"name":"x-tenant","value":"a"}]}
        ]}"#,
    )
    .unwrap();
    let p = Policy::compile("amb", &spec).unwrap();
    let eval = |method: &str, h: &[(&str, &str)]| {
        let r = Request {
            method,
            path: "/",
            headers: &h,
        };
        p.evaluate_request(FRONTEND, &r)
    };
    assert!(eval("GET", &[("x-tenant", "a")]).is_allowed());
    // A method in another case still meets the deny rule ...
    assert_eq!(
        eval("delete", &[("x-tenant", "a")]).rule.as_deref(),
        Some("no-delete")
    );
    // ... but does not meet an allow rule written in uppercase.
    assert!(!eval("get", &[("x-tenant", "a")]).is_allowed());
    // A repeated header: any matching value meets a deny rule ...
    assert_eq!(
        eval(
            "GET",
            &[("x-tenant", "a"), ("x-canary", "ok"), ("x-canary", "evil")]
        )
        .rule
        .as_deref(),
        Some("no-evil")
    );
    // ... and an allow rule needs every value to match.
    assert!(!eval("GET", &[("x-tenant", "b"), ("x-tenant", "a")]).is_allowed());
    assert!(eval("GET", &[("x-tenant", "a"), ("x-tenant", "a")]).is_allowed());
}
