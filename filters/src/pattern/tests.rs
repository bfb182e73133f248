use super::*;

fn id(s: &str) -> Pattern {
    Pattern::parse_spiffe(s).unwrap()
}

#[test]
fn literal_matches_only_itself() {
    let p = id("spiffe://a.org/ns/x/sa/web");
    assert!(p.is_literal());
    assert!(p.matches("spiffe://a.org/ns/x/sa/web"));
    for other in [
        "spiffe://a.org/ns/x/sa/web/",
        "spiffe://a.org/ns/x/sa/webx",
        "spiffe://a.org/ns/x/sa/We",
        "spiffe://a.org/ns/x/sa",
        "spiffe://a.org/ns/x/sa/web/more",
        "spiffe://A.org/ns/x/sa/web",
        "spiffe://a.org.evil/ns/x/sa/web",
        "",
    ] {
        assert!(!p.matches(other), "{other}");
    }
}

#[test]
fn trust_domain_only_literal() {
    let p = id("spiffe://a.org");
    assert!(p.matches("spiffe://a.org"));
    assert!(!p.matches("spiffe://a.org/"));
    assert!(!p.matches("spiffe://a.org/x"));
}

#[test]
fn star_is_exactly_one_whole_segment() {
    let p = id("spiffe://a.org/ns/x/*");
    assert!(!p.is_literal());
    assert!(p.matches("spiffe://a.org/ns/x/y"));
    assert!(!p.matches("spiffe://a.org/ns/xy/z"));
    assert!(!p.matches("spiffe://a.org/ns/x/y/z"));
    assert!(!p.matches("spiffe://a.org/ns/x/"));
    assert!(!p.matches("spiffe://a.org/ns/x"));
    assert!(!p.matches("spiffe://b.org/ns/x/y"));
}

#[test]
fn star_in_the_middle() {
    let p = id("spiffe://a.org/ns/*/sa/web");
    assert!(p.matches("spiffe://a.org/ns/default/sa/web"));
    assert!(!p.matches("spiffe://a.org/ns//sa/web"));
    assert!(!p.matches("spiffe://a.org/ns/a/b/sa/web"));
    assert!(!p.matches("spiffe://a.org/ns/default/sa/web2"));
}

#[test]
fn star_trust_domain() {
    let p = id("spiffe://*/ns/a");
    assert!(p.matches("spiffe://a.org/ns/a"));
    assert!(p.matches("spiffe://partner.org/ns/a"));
    assert!(!p.matches("spiffe:///ns/a"));
    assert!(!p.matches("spiffe://a.org/x/ns/a"));
}

#[test]
fn double_star_is_one_or_more_segments_below() {
    let p = id("spiffe://a.org/**");
    assert!(p.matches("spiffe://a.org/x"));
    assert!(p.matches("spiffe://a.org/x/y"));
    assert!(p.matches("spiffe://a.org/x/y/z"));
    assert!(!p.matches("spiffe://a.org.evil/z"));
    assert!(!p.matches("spiffe://a.org"));
    // Not a valid SPIFFE ID (peers' IDs are validated before matching); a trailing slash
    // counts as a segment so that path rules like `/admin/**` cover `/admin/`.
    assert!(p.matches("spiffe://a.org/"));
    assert!(!p.matches("spiffe://a.org//x"));
    assert!(!p.matches("spiffe://a.orgx/y"));
    assert!(!p.matches("spiffe://b.org/a.org/x"));
}

#[test]
fn any_id_anywhere() {
    let p = id("spiffe://*/**");
    assert!(p.matches("spiffe://a.org/x"));
    assert!(p.matches("spiffe://b.org/x/y"));
    assert!(!p.matches("spiffe://a.org"));
    assert!(!p.matches("http://a.org/x"));
}

#[test]
fn path_boundaries() {
    let m = |p: &str, path: &str| PathPattern::parse(p).unwrap().matches_path(path, false);
    let folded = |p: &str, path: &str| PathPattern::parse(p).unwrap().matches_path(path, true);
    assert!(m("/api/*", "/api/x"));
    assert!(m("/api/*", "/api/x/"), "a trailing slash is not significant");
    assert!(!m("/api/*", "/api/x/y"));
    assert!(!m("/api/*", "/api/"));
    assert!(!m("/api/*", "/api"));
    assert!(!m("/api/*", "/apix/y"));

    for covered in ["/api", "/api/", "/api/x", "/api/x/y", "/api/x/"] {
        assert!(m("/api/**", covered), "/api/** must cover {covered}");
    }
    for outside in ["/apix", "/apix/y", "api/x", "/", "/ap"] {
        assert!(!m("/api/**", outside), "/api/** must not cover {outside}");
    }

    assert!(m("/", "/"));
    assert!(!m("/", "/x"));
    for any in ["/", "/x", "/x/y", "/x/"] {
        assert!(m("/**", any), "`/**` covers every path: {any}");
    }

    assert!(m("/api/", "/api/") && m("/api/", "/api") && m("/api", "/api/"));
    assert!(m("/secret", "/secret/"));

    assert!(!m("/Api", "/api"), "exact without folding");
    assert!(folded("/Api", "/api") && folded("/admin/**", "/ADMIN/x") && folded("/admin/**", "/Admin"));
    assert!(!folded("/admin/**", "/admins"));
    assert!(folded("/a/*/c", "/A/anything/C"));

    // IDs keep their own rules: `**` is one or more segments, no folding.
    let p = id("spiffe://a.org/ns/**");
    assert!(!p.matches("spiffe://a.org/ns"));
    assert!(!p.matches("spiffe://a.org/NS/x"));
}

#[test]
fn generic_parse() {
    assert!(Pattern::parse("*").unwrap().matches("x"));
    assert!(!Pattern::parse("*").unwrap().matches(""));
    assert!(!Pattern::parse("*").unwrap().matches("x/y"));
    assert!(Pattern::parse("**").unwrap().matches("x/y"));
    assert!(Pattern::parse("a/b").unwrap().matches("a/b"));
    assert_eq!("a/*".parse::<Pattern>().unwrap().as_str(), "a/*");
    assert_eq!(Pattern::parse(""), Err(PatternError::Empty));
}

#[test]
fn wildcards_must_be_whole_segments() {
    for bad in [
        "spiffe://a.org/ns/a*",
        "spiffe://*.org/x",
        "spiffe://a.org/***",
        "spiffe://a.org/x**",
        "/api/v*",
        "/api/*.json",
    ] {
        let err = Pattern::parse(bad).unwrap_err();
        assert!(
            matches!(err, PatternError::PartialWildcard { .. }),
            "{bad}: {err:?}"
        );
        assert!(
            err.to_string().contains("wildcards must be whole segments"),
            "{err}"
        );
    }
}

#[test]
fn double_star_only_last() {
    for bad in ["spiffe://a.org/**/x", "/**/api", "/a/**/"] {
        let err = Pattern::parse(bad).unwrap_err();
        assert_eq!(err, PatternError::DoubleStarNotLast { pattern: bad.into() });
        assert!(err.to_string().contains("final `/**`"), "{err}");
    }
}

#[test]
fn spiffe_context_errors() {
    let cases: &[(&str, &str)] = &[
        ("", "empty pattern"),
        ("a.org/x", "must start with `spiffe://`"),
        ("SPIFFE://a.org/x", "must start with `spiffe://`"),
        ("spiffe:/a.org", "must start with `spiffe://`"),
        ("/api/*", "must start with `spiffe://`"),
        ("spiffe://", "is empty"),
        ("spiffe:///x", "is empty"),
        ("spiffe://**", "must be a name or `*`"),
        ("spiffe://A.org/x", "lowercase letters"),
        ("spiffe://a.org:443/x", "lowercase letters"),
        ("spiffe://a.org/", "is empty; remove the doubled or trailing `/`"),
        ("spiffe://a.org/x//y", "is empty"),
        ("spiffe://a.org/x/../y", "dot segment"),
        ("spiffe://a.org/x%20y", "may only use letters"),
        ("spiffe://a.org/x?y", "may only use letters"),
    ];
    for (bad, want) in cases {
        let err = Pattern::parse_spiffe(bad).unwrap_err();
        assert!(err.to_string().contains(want), "{bad}: {err}");
    }
    let long = format!("spiffe://{}/x", "a".repeat(256));
    assert!(
        Pattern::parse_spiffe(&long)
            .unwrap_err()
            .to_string()
            .contains("255")
    );
}

#[test]
fn spiffe_context_accepts() {
    for ok in [
        "spiffe://a.org",
        "spiffe://*",
        "spiffe://a.org/**",
        "spiffe://*/**",
        "spiffe://a-b_c.0.org/ns/My_App.v1/sa/*",
    ] {
        Pattern::parse_spiffe(ok).unwrap();
    }
}

#[test]
fn path_context_errors() {
    let cases: &[(&str, &str)] = &[
        ("", "empty pattern"),
        ("api/*", "must start with `/`"),
        ("*", "must start with `/`"),
        ("spiffe://a.org/x", "must start with `/`"),
        ("/api?x=1", "query and fragment are not matched"),
        ("/api#top", "query and fragment are not matched"),
        ("//api", "empty segment"),
        ("/api//x", "empty segment"),
        ("/api/./x", "`.` or `..`"),
        ("/api/..", "`.` or `..`"),
        ("/a b", "whitespace"),
        ("/api/v*", "wildcards must be whole segments"),
    ];
    for (bad, want) in cases {
        let err = Pattern::parse_path(bad).unwrap_err();
        assert!(err.to_string().contains(want), "{bad}: {err}");
    }
}

#[test]
fn newtypes_parse_in_context() {
    assert!(IdPattern::parse("/api").is_err());
    assert!(PathPattern::parse("spiffe://a.org/x").is_err());
    let p: IdPattern = "spiffe://a.org/*".parse().unwrap();
    assert!(p.matches("spiffe://a.org/x"));
    assert_eq!(p.to_string(), "spiffe://a.org/*");
    let inner: Pattern = p.clone().into();
    assert_eq!(&inner, p.pattern());
}

#[test]
fn serde_strings() {
    let p: Pattern = serde_json::from_str(r#""a/*""#).unwrap();
    assert_eq!(serde_json::to_string(&p).unwrap(), r#""a/*""#);

    let ids: Vec<IdPattern> = serde_json::from_str(r#"["spiffe://a.org/**", "spiffe://*/x"]"#).unwrap();
    assert_eq!(
        serde_json::to_string(&ids).unwrap(),
        r#"["spiffe://a.org/**","spiffe://*/x"]"#
    );

    let err = serde_json::from_str::<IdPattern>(r#""/api/*""#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("must start with `spiffe://`"), "{err}");
    let err = serde_json::from_str::<PathPattern>(r#""/api/v*""#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("wildcards must be whole segments"), "{err}");
    let err = serde_json::from_str::<PathPattern>("42").unwrap_err().to_string();
    assert!(err.contains("path pattern string"), "{err}");
}

#[test]
fn literal_prefix_stops_before_the_first_wildcard() {
    for (pattern, prefix, n) in [
        ("spiffe://a.org/ns/x/sa/web", "spiffe://a.org/ns/x/sa/web", 7),
        ("spiffe://a.org/ns/*/sa/web", "spiffe://a.org/ns", 4),
        ("spiffe://a.org/ns/x/**", "spiffe://a.org/ns/x", 5),
        ("spiffe://a.org/**", "spiffe://a.org", 3),
        ("spiffe://*/ns/x", "spiffe:/", 2),
        ("*/x", "", 0),
        ("/api/*", "/api", 2),
    ] {
        assert_eq!(
            Pattern::parse(pattern).unwrap().literal_prefix(),
            (prefix, n),
            "{pattern}"
        );
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn segment() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["a", "b", "ab", "*", ""])
    }

    proptest! {
        /// What the policy index relies on: whatever a pattern matches starts with its literal
        /// prefix and, unless the pattern is literal or starts with a wildcard, a `/` right
        /// after it.
        #[test]
        fn matches_start_with_the_literal_prefix(
            pattern in prop::collection::vec(segment(), 1..5),
            below in any::<bool>(),
            candidate in prop::collection::vec(prop::sample::select(vec!["a", "b", "ab", ""]), 1..7),
        ) {
            let mut pattern = pattern.join("/");
            if below {
                pattern.push_str("/**");
            }
            let candidate = candidate.join("/");
            let Ok(p) = Pattern::parse(&pattern) else { return Ok(()) };
            if p.matches(&candidate) {
                let (prefix, n) = p.literal_prefix();
                prop_assert!(candidate.starts_with(prefix), "{pattern} {candidate}");
                prop_assert_eq!(prefix.split('/').count(), n.max(1));
                if p.is_literal() {
                    prop_assert_eq!(prefix, candidate.as_str());
                } else if n > 0 {
                    prop_assert_eq!(candidate.as_bytes().get(prefix.len()), Some(&b'/'), "{} {}", pattern, candidate);
                }
            }
        }
    }
}
