#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The CLI: `ward check`, `ward certs ca|issue|inspect`, `ward demo`.

use std::path::Path;
use std::time::Duration;

use ward_e2e::*;

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

/// The lines of `stderr` that name `file` with a place, as (line, message).
fn problems(stderr: &str, file: &Path) -> Vec<(u64, String)> {
    let prefix = format!("{}:", file.display());
    stderr
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find(&prefix)? + prefix.len()..];
            let mut parts = rest.splitn(3, ':');
            let line = parts.next()?.parse().ok()?;
            let _column: u64 = parts.next()?.parse().ok()?;
            Some((line, parts.next()?.trim().to_owned()))
        })
        .collect()
}

/// Asserts one problem mentions `needle`, at one of `lines`.
fn assert_problem(found: &[(u64, String)], needle: &str, lines: &[u64], stderr: &str) {
    let hit = found.iter().find(|(_, m)| m.contains(needle));
    let Some((line, msg)) = hit else {
        panic!("no problem mentions {needle:?}; stderr:\n{stderr}");
    };
    assert!(
        lines.contains(line),
        "{needle:?} reported at line {line} ({msg}), expected one of {lines:?}; stderr:\n{stderr}"
    );
}

#[test]
fn check_names_every_problem_with_its_place_and_passes_a_good_config() {
    let pki = Pki::new("example.org");
    let svid = pki.issue("backend", BACKEND);
    let dir = tempfile::tempdir().unwrap();

    // Line numbers matter below: keep this text as is.
    let bad = dir.path().join("bad.yaml");
    let text = format!(
        "identity:
  files:
    cert: {cert}
    key: /nonexistent/ward/svid_key.pem
    bundle: {bundle}
inbound:
  - name: in1
    listen: 127.0.0.1:17001
    forward: 127.0.0.1:8080
    protocol: tcp
    policy: nosuch
  - name: in2
    listen: 127.0.0.1:17001
    forward: 127.0.0.1:8080
    protocol: tcp
    policy: web
outbound:
  - name: out1
    listen: 127.0.0.1:17002
    forward: 127.0.0.1:17001
    protocol: tcp
    server_id: \"not-a-spiffe-id\"
policies:
  web:
    default: deny
",
        cert = svid.cert.display(),
        bundle = svid.bundle.display()
    );
    std::fs::write(&bad, text).unwrap();
    let out = ward(&["check", "-c", &s(&bad)], WAIT);
    let err = out.stderr();
    assert_eq!(out.code(), 1, "stderr:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    let found = problems(&err, &bad);
    // Unreadable key: the `key:` line.
    assert_problem(&found, "/nonexistent/ward/svid_key.pem", &[4], &err);
    // Undefined policy: the listener's entry, or its `policy:` line.
    assert_problem(&found, "nosuch", &[7, 11], &err);
    // Duplicate listen address: the second listener's entry, or its `listen:` line.
    assert_problem(&found, "used twice", &[12, 13], &err);
    // A server_id that is no SPIFFE ID: the outbound's entry, or its `server_id:` line.
    assert_problem(&found, "not-a-spiffe-id", &[18, 22], &err);
    assert!(!out.stdout().contains("ok"), "{}", out.stdout());

    // An unknown key is refused with its place.
    let unknown = dir.path().join("unknown.yaml");
    std::fs::write(
        &unknown,
        format!(
            "{}inbound:\n  - name: in1\n    listen: 127.0.0.1:17003\n    forward: 127.0.0.1:8080\n    bogus_key: 1\n    policy: web\npolicies:\n  web: {{default: deny}}\n",
            identity_yaml(&svid, &[])
        ),
    )
    .unwrap();
    let out = ward(&["check", "-c", &s(&unknown)], WAIT);
    let err = out.stderr();
    assert_eq!(out.code(), 1, "stderr:\n{err}");
    assert_problem(&problems(&err, &unknown), "bogus_key", &[10], &err);

    // Unreadable cert and bundle, and a federated bundle that does not exist.
    let missing = dir.path().join("missing.yaml");
    std::fs::write(
        &missing,
        "identity:\n  files:\n    cert: /nonexistent/a.pem\n    key: /nonexistent/b.pem\n    bundle: /nonexistent/c.pem\n  federation:\n    partner.org: /nonexistent/partner.pem\ninbound:\n  - {name: in1, listen: 127.0.0.1:17004, forward: 127.0.0.1:8080, protocol: tcp, policy: web}\npolicies:\n  web: {default: deny}\n",
    )
    .unwrap();
    let out = ward(&["check", "-c", &s(&missing)], WAIT);
    let err = out.stderr();
    assert_eq!(out.code(), 1, "stderr:\n{err}");
    let found = problems(&err, &missing);
    assert_problem(&found, "/nonexistent/a.pem", &[3], &err);
    assert_problem(&found, "/nonexistent/b.pem", &[4], &err);
    assert_problem(&found, "/nonexistent/c.pem", &[5], &err);
    assert!(err.contains("/nonexistent/partner.pem"), "{err}");

    // A good config.
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        format!(
            "{}{}{}",
            identity_yaml(&svid, &[]),
            inbound_yaml("backend", 17005, local(8080), &[("frontend-allowed", FRONTEND)]),
            "outbound:\n  - {name: out, listen: 127.0.0.1:17006, forward: 127.0.0.1:17005, protocol: tcp, server_id: \"spiffe://example.org/ns/default/sa/*\"}\n"
        ),
    )
    .unwrap();
    let out = ward(&["check", "-c", &s(&good)], WAIT);
    assert_eq!(
        out.code(),
        0,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout(),
        out.stderr()
    );
    assert!(out.stdout().contains("ok"), "{}", out.stdout());
    assert!(out.stdout().contains(BACKEND), "{}", out.stdout());
}

#[test]
fn certs_ca_issue_inspect_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let web = dir.path().join("web");
    let id = "spiffe://example.org/ns/default/sa/web";

    let out = ward(
        &["certs", "ca", "--trust-domain", "example.org", "--out", &s(&ca)],
        WAIT,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr());
    assert!(ca.join("ca.pem").is_file() && ca.join("ca_key.pem").is_file());

    let out = ward(
        &[
            "certs",
            "issue",
            "--ca",
            &s(&ca),
            "--id",
            id,
            "--ttl",
            "1h",
            "--out",
            &s(&web),
        ],
        WAIT,
    );
    assert_eq!(out.code(), 0, "{}", out.stderr());
    assert!(out.stdout().contains(id), "{}", out.stdout());
    for f in ["svid.pem", "svid_key.pem", "bundle.pem"] {
        assert!(web.join(f).is_file(), "{f} missing");
    }

    let out = ward(
        &[
            "certs",
            "inspect",
            &s(&web.join("svid.pem")),
            "--bundle",
            &s(&web.join("bundle.pem")),
        ],
        WAIT,
    );
    assert_eq!(
        out.code(),
        0,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout(),
        out.stderr()
    );
    assert!(out.stdout().contains(id), "{}", out.stdout());
    assert!(out.stdout().contains("valid"), "{}", out.stdout());

    // Without a bundle, too.
    let out = ward(&["certs", "inspect", &s(&web.join("svid.pem"))], WAIT);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    assert!(out.stdout().contains(id), "{}", out.stdout());

    // The same SVID against another CA's bundle does not validate.
    let other = dir.path().join("other");
    assert_eq!(
        ward(
            &[
                "certs",
                "ca",
                "--trust-domain",
                "example.org",
                "--out",
                &s(&other)
            ],
            WAIT
        )
        .code(),
        0
    );
    let out = ward(
        &[
            "certs",
            "inspect",
            &s(&web.join("svid.pem")),
            "--bundle",
            &s(&other.join("ca.pem")),
        ],
        WAIT,
    );
    assert_eq!(out.code(), 1, "stdout:\n{}", out.stdout());

    // An expired certificate: exit 1, with and without a bundle.
    let pki = Pki::new("example.org");
    let expired = pki.sign(
        "expired",
        id,
        time::Duration::hours(-3),
        time::Duration::hours(-1),
    );
    let out = ward(&["certs", "inspect", &s(&expired.cert)], WAIT);
    assert_eq!(out.code(), 1, "stdout:\n{}", out.stdout());
    assert!(
        out.stdout().contains("EXPIRED") || out.stderr().contains("expired"),
        "{}",
        out.stdout()
    );
    let out = ward(
        &[
            "certs",
            "inspect",
            &s(&expired.cert),
            "--bundle",
            &s(&expired.bundle),
        ],
        WAIT,
    );
    assert_eq!(out.code(), 1, "stdout:\n{}", out.stdout());
    assert!(out.stderr().contains("expired"), "{}", out.stderr());

    // Issuing outside the CA's trust domain is refused.
    let out = ward(
        &[
            "certs",
            "issue",
            "--ca",
            &s(&ca),
            "--id",
            "spiffe://evil.org/ns/default/sa/web",
            "--out",
            &s(&dir.path().join("evil")),
        ],
        WAIT,
    );
    assert_eq!(out.code(), 1, "{}", out.stdout());
}

#[test]
fn demo_runs_and_every_step_behaves() {
    let out = ward(&["demo"], Duration::from_secs(60));
    assert_eq!(
        out.code(),
        0,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout(),
        out.stderr()
    );
    assert!(
        out.stdout().contains("all steps behaved as expected"),
        "stdout:\n{}",
        out.stdout()
    );
    assert!(!out.stderr().contains("panicked"), "{}", out.stderr());
}
