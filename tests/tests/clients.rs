#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Real TLS clients (openssl s_client, curl) with client certificates against an inbound ward.

use std::path::Path;

use ward_e2e::*;

#[test]
fn openssl_s_client_with_an_allowed_svid_reaches_the_echo_app() {
    let pki = Pki::new("example.org");
    let backend = pki.issue("backend", BACKEND);
    let frontend = pki.issue("frontend", FRONTEND);
    let intruder = pki.issue("intruder", INTRUDER);
    let app = App::echo();
    let (inbound, port) = start_inbound(&backend, app.addr, &[("frontend-allowed", FRONTEND)], &[]);

    let msg = b"hello from openssl s_client\n";
    let (echo, err) = s_client_echo(port, &frontend, &pki.bundle_path(), msg);
    assert!(
        echo.windows(msg.len()).any(|w| w == msg),
        "no echo through ward: {:?}; openssl stderr:\n{err}",
        String::from_utf8_lossy(&echo)
    );
    let r = inbound.wait_record("authz for openssl", |r| r["kind"] == "authz");
    assert_eq!(r["decision"], "allow", "{r}");
    assert_eq!(r["peer_id"], FRONTEND, "{r}");
    assert_eq!(r["peer_serial"], frontend.serial.as_str(), "{r}");
    let seen = inbound.records().len();
    let before = app.connections();

    // The same client with a valid SVID the policy does not allow: no echo.
    let (echo, _) = s_client_echo(port, &intruder, &pki.bundle_path(), b"let me in\n");
    assert!(
        echo.is_empty(),
        "a denied SVID got {:?}",
        String::from_utf8_lossy(&echo)
    );
    let r = inbound.wait_record_after(seen, "authz deny for openssl", |r| r["kind"] == "authz");
    assert_eq!(r["decision"], "deny", "{r}");
    assert_eq!(r["peer_id"], INTRUDER, "{r}");
    assert_eq!(app.connections(), before, "the app saw the denied client");
    inbound.assert_no_panic();
}

/// Certificates from the CLI (`ward certs ca` / `ward certs issue`), an HTTP responder behind a
/// tcp inbound, and curl presenting the SVID (-k: SVIDs carry no DNS name).
#[test]
fn curl_with_an_allowed_svid_gets_the_body_and_a_denied_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &str| dir.path().join(p);
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let ok = |o: Output| assert_eq!(o.code(), 0, "stdout:\n{}\nstderr:\n{}", o.stdout(), o.stderr());
    ok(ward(
        &[
            "certs",
            "ca",
            "--trust-domain",
            "example.org",
            "--out",
            &s(&path("ca")),
        ],
        WAIT,
    ));
    for (name, id) in [
        ("backend", BACKEND),
        ("frontend", FRONTEND),
        ("intruder", INTRUDER),
    ] {
        ok(ward(
            &[
                "certs",
                "issue",
                "--ca",
                &s(&path("ca")),
                "--id",
                id,
                "--ttl",
                "10m",
                "--out",
                &s(&path(name)),
            ],
            WAIT,
        ));
    }
    let files = |name: &str, id: &str| SvidFiles {
        id: id.to_owned(),
        dir: path(name),
        cert: path(name).join("svid.pem"),
        key: path(name).join("svid_key.pem"),
        bundle: path(name).join("bundle.pem"),
        serial: String::new(),
        der: Vec::new(),
    };
    let backend = files("backend", BACKEND);
    let frontend = files("frontend", FRONTEND);
    let intruder = files("intruder", INTRUDER);

    let app = App::http_ok();
    let (inbound, port) = start_inbound(&backend, app.addr, &[("frontend-allowed", FRONTEND)], &[]);

    let out = curl(port, Some(&frontend), &frontend.bundle);
    assert_eq!(out.code(), 0, "curl failed:\n{}", out.stderr());
    assert_eq!(out.stdout(), "ok");
    let r = inbound.wait_record("authz for curl", |r| r["kind"] == "authz");
    assert_eq!(r["decision"], "allow", "{r}");
    assert_eq!(r["peer_id"], FRONTEND, "{r}");
    let access = inbound.wait_record("access for curl", |r| r["kind"] == "access");
    assert!(access["bytes_in"].as_u64().unwrap_or(0) > 0, "{access}");
    assert_eq!(access["bytes_out"], 59, "the response's size: {access}");
    let seen = inbound.records().len();

    let out = curl(port, Some(&intruder), &intruder.bundle);
    assert_ne!(out.code(), 0, "curl with a denied SVID must fail");
    assert!(
        out.stdout.is_empty(),
        "a denied SVID got a body: {}",
        out.stdout()
    );
    let r = inbound.wait_record_after(seen, "authz deny for curl", |r| r["kind"] == "authz");
    assert_eq!(r["decision"], "deny", "{r}");
    assert_eq!(r["peer_id"], INTRUDER, "{r}");
    assert_eq!(app.connections(), 1, "only the allowed request reached the app");
    inbound.assert_no_panic();
}
