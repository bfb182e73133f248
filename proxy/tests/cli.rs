//! The command line's own contract: every subcommand has --help with an example, and errors
//! exit 1 with a message instead of a panic. (End-to-end proxy tests live in `tests/`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn ward(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(args)
        .output()
        .expect("run ward")
}

#[test]
fn every_subcommand_has_help_with_an_example() {
    for sub in [
        &["run"][..],
        &["check"],
        &["demo"],
        &["certs", "ca"],
        &["certs", "issue"],
        &["certs", "inspect"],
    ] {
        let mut args = sub.to_vec();
        args.push("--help");
        let out = ward(&args);
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("Example"),
            "{args:?} --help has no example:\n{text}"
        );
    }
    let out = ward(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["run", "check", "demo", "certs"] {
        assert!(text.contains(sub), "ward --help does not list {sub}");
    }
}

#[test]
fn version_prints() {
    let out = ward(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ward "));
}

#[test]
fn missing_config_is_a_clear_error() {
    let out = ward(&["check", "-c", "/nonexistent/ward.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/ward.yaml") && err.contains("cannot read"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

#[test]
fn bad_arguments_name_the_problem() {
    let out = ward(&["certs", "ca", "--trust-domain", "Bad:Domain", "--out", "/tmp/x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--trust-domain"), "{err}");
    let out = ward(&[
        "certs",
        "issue",
        "--ca",
        "/nonexistent",
        "--id",
        "spiffe://a/b",
        "--out",
        "/tmp/x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ca"));
}

#[test]
fn policy_explain_names_the_deciding_rule_and_why_others_missed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ward.yaml");
    std::fs::write(
        &cfg,
        r#"
identity:
  dev: {id: "spiffe://example.org/ns/default/sa/web"}
inbound:
  - {name: web, listen: 127.0.0.1:0, forward: 127.0.0.1:8080, protocol: http, policy: web}
policies:
  web:
    rules:
      - {name: reads, action: allow, from: [spiffe://example.org/ns/default/sa/frontend], methods: [GET]}
      - {name: no-admin, action: deny, paths: ["/admin/**"]}
"#,
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let frontend = "spiffe://example.org/ns/default/sa/frontend";
    let out = ward(&[
        "policy",
        "explain",
        "-c",
        cfg,
        "--listener",
        "web",
        "--peer",
        frontend,
        "--method",
        "GET",
        "--path",
        "/x/../admin/y",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("request GET /admin/y"),
        "the path is normalized first:\n{text}"
    );
    assert!(text.contains("decision: deny by rule no-admin"), "{text}");

    // Another spelling of the same denied path: shown as decided, and denied.
    let out = ward(&[
        "policy",
        "explain",
        "-c",
        cfg,
        "--listener",
        "web",
        "--peer",
        frontend,
        "--method",
        "GET",
        "--path",
        "/ADMIN/./",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("request GET /ADMIN/ (normalized from /ADMIN/./)"),
        "{text}"
    );
    assert!(text.contains("decision: deny by rule no-admin"), "{text}");

    let out = ward(&[
        "policy",
        "explain",
        "-c",
        cfg,
        "--listener",
        "web",
        "--peer",
        frontend,
        "--method",
        "POST",
        "--path",
        "/api",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("decision: deny (no rule matched"), "{text}");
    assert!(text.contains("method POST is not one of GET"), "{text}");

    let out = ward(&[
        "policy",
        "explain",
        "-c",
        cfg,
        "--listener",
        "web",
        "--peer",
        "spiffe://example.org/x",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verdict"]["decision"], "deny");
    assert!(
        v["rules"][0]["why_not"]
            .as_str()
            .unwrap()
            .contains("matches none of `from`")
    );

    let out = ward(&[
        "policy",
        "explain",
        "-c",
        cfg,
        "--listener",
        "nope",
        "--peer",
        frontend,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("inbound listeners: web"));
}

/// An outbound listener reachable from the network lends the workload's SVID to anyone: `ward
/// check` refuses it unless `allow_remote_clients: true` says so, and then warns, as it does
/// for an admin server bound beyond loopback.
#[test]
fn check_refuses_an_open_relay_and_warns_about_exposed_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ward.yaml");
    let write = |outbound_extra: &str, admin: &str| {
        std::fs::write(
            &cfg,
            format!(
                "identity:\n  dev: {{id: \"spiffe://example.org/ns/default/sa/web\"}}\n\
                 outbound:\n  - {{name: relay, listen: 0.0.0.0:15001, forward: 127.0.0.1:15006, server_id: \"spiffe://example.org/ns/default/sa/backend\"{outbound_extra}}}\n\
                 admin:\n  listen: {admin}\n"
            ),
        )
        .unwrap();
    };
    let cfg_s = cfg.to_str().unwrap();
    write("", "127.0.0.1:15000");
    let out = ward(&["check", "-c", cfg_s]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(":4:") && err.contains("open relay") && err.contains("allow_remote_clients"),
        "{err}"
    );

    write(", allow_remote_clients: true", "0.0.0.0:15000");
    let out = ward(&["check", "-c", cfg_s]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning:") && err.contains("accepts remote clients"),
        "{err}"
    );
    assert!(
        err.contains("admin.listen 0.0.0.0:15000 is not a loopback address"),
        "{err}"
    );

    write("", "127.0.0.1:15000");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("0.0.0.0:15001", "127.0.0.1:15001");
    std::fs::write(&cfg, text).unwrap();
    let out = ward(&["check", "-c", cfg_s]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("warning"));
}
