#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Connections the inbound must refuse at the handshake, each with an audit record that names
//! why; a server with the wrong identity refused by the outbound; and federation.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};

use ward_e2e::*;

/// The inbound of these tests: the backend's SVID in front of an echo app, allowing the
/// frontend (and the partner's client, when federated).
struct Setup {
    pki: Pki,
    app: App,
    inbound: Ward,
    port: u16,
}

fn setup() -> Setup {
    let pki = Pki::new("example.org");
    let backend = pki.issue("backend", BACKEND);
    let app = App::echo();
    let (inbound, port) = start_inbound(&backend, app.addr, &[("frontend-allowed", FRONTEND)], &[]);
    Setup {
        pki,
        app,
        inbound,
        port,
    }
}

/// Nothing reached the app and nothing was forwarded.
fn assert_not_forwarded(s: &Setup) {
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(s.app.connections(), 0, "the app saw a refused connection");
    assert!(
        !s.inbound
            .records()
            .iter()
            .any(|r| r["kind"] == "access" || r["decision"] == "allow"),
        "{:?}",
        s.inbound.records()
    );
    s.inbound.assert_no_panic();
}

#[test]
fn openssl_without_client_certificate_is_refused() {
    let s = setup();
    let out = s_client_once(s.port, None, &s.pki.bundle_path());
    assert!(out.status.is_some(), "openssl s_client hung: {}", out.stderr());
    let r = s.inbound.wait_handshake_deny(0, "no_client_cert");
    assert!(r["peer_id"].is_null(), "{r}");
    assert_not_forwarded(&s);
}

#[test]
fn curl_without_client_certificate_is_refused() {
    let s = setup();
    let out = curl(s.port, None, &s.pki.bundle_path());
    assert_ne!(
        out.code(),
        0,
        "curl without a client certificate must fail: {}",
        out.stdout()
    );
    assert!(out.stdout.is_empty(), "curl got a body: {}", out.stdout());
    s.inbound.wait_handshake_deny(0, "no_client_cert");
    assert_not_forwarded(&s);
}

#[test]
fn plaintext_http_to_an_inbound_is_refused_as_not_tls() {
    let s = setup();
    let mut c = TcpStream::connect(local(s.port)).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let _ = c.shutdown(Shutdown::Write);
    let mut reply = Vec::new();
    let _ = c.read_to_end(&mut reply);
    assert!(
        !reply.windows(4).any(|w| w == b"HTTP"),
        "a plaintext peer got an HTTP answer: {:?}",
        String::from_utf8_lossy(&reply)
    );
    s.inbound.wait_handshake_deny(0, "not_tls");
    assert_not_forwarded(&s);
}

#[test]
fn client_certificate_from_another_ca_of_our_trust_domain_is_unknown_issuer() {
    let s = setup();
    // Same trust domain, same subject names, different key: only the signature tells them apart.
    let rogue = Pki::new("example.org");
    let fake_frontend = rogue.issue("frontend", FRONTEND);
    s_client_once(s.port, Some(&fake_frontend), &s.pki.bundle_path());
    let r = s.inbound.wait_handshake_deny(0, "unknown_issuer");
    assert!(
        r["peer_id"].is_null(),
        "an unverified peer must not be named: {r}"
    );
    assert_not_forwarded(&s);
}

#[test]
fn expired_client_svid_is_refused_as_expired() {
    let s = setup();
    let expired = s.pki.sign(
        "expired-frontend",
        FRONTEND,
        time::Duration::hours(-2),
        time::Duration::hours(-1),
    );
    s_client_once(s.port, Some(&expired), &s.pki.bundle_path());
    s.inbound.wait_handshake_deny(0, "expired");
    assert_not_forwarded(&s);
}

#[test]
fn not_yet_valid_client_svid_is_refused() {
    let s = setup();
    let future = s.pki.sign(
        "future-frontend",
        FRONTEND,
        time::Duration::hours(1),
        time::Duration::hours(2),
    );
    s_client_once(s.port, Some(&future), &s.pki.bundle_path());
    s.inbound.wait_handshake_deny(0, "not_yet_valid");
    assert_not_forwarded(&s);
}

/// The outbound expects payments; the inbound presents backend: the outbound refuses to send a
/// byte, and says why.
#[test]
fn server_with_the_wrong_id_is_refused_by_the_outbound() {
    let pki = Pki::new("example.org");
    let backend = pki.issue("backend", BACKEND);
    let frontend = pki.issue("frontend", FRONTEND);
    let app = App::echo();
    let (inbound, in_port) = start_inbound(&backend, app.addr, &[("frontend-allowed", FRONTEND)], &[]);
    let (outbound, out_port) = start_outbound(&frontend, in_port, PAYMENTS, &[]);

    let reply = exchange(out_port, b"card number 4111 1111 1111 1111");
    assert!(reply.is_empty(), "got {} bytes back", reply.len());

    let r = outbound.wait_record("server_id decision on the outbound", |r| r["kind"] == "authz");
    assert_eq!(r["decision"], "deny", "{r}");
    assert_eq!(r["peer_id"], BACKEND, "{r}");
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("server_id_mismatch"), "{r}");
    assert!(reason.contains(PAYMENTS), "the reason names the expected ID: {r}");
    assert!(
        !outbound.records().iter().any(|r| r["kind"] == "access"),
        "{:?}",
        outbound.records()
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(app.bytes(), 0, "the app received bytes meant for another server");
    outbound.assert_no_panic();
    inbound.assert_no_panic();
}

/// partner.org's bundle is configured for partner.org only: its CA minting an example.org ID is
/// refused, while its partner.org SVIDs are admitted when the policy allows them.
#[test]
fn federated_ca_cannot_mint_our_ids_but_its_own_ids_are_admitted() {
    let ours = Pki::new("example.org");
    let partner = Pki::new("partner.org");
    let backend = ours.issue("backend", BACKEND);
    let app = App::echo();
    let partner_bundle = partner.bundle_path();
    let (inbound, in_port) = start_inbound(
        &backend,
        app.addr,
        &[
            ("frontend-allowed", FRONTEND),
            ("partner-allowed", PARTNER_CLIENT),
        ],
        &[("partner.org", partner_bundle.as_path())],
    );

    // The partner's CA signs an SVID for an ID in OUR trust domain, one the policy allows.
    let forged = partner.sign(
        "forged-frontend",
        FRONTEND,
        time::Duration::minutes(-1),
        time::Duration::hours(1),
    );
    s_client_once(in_port, Some(&forged), &ours.bundle_path());
    inbound.wait_handshake_deny(0, "unknown_issuer");
    assert_eq!(app.connections(), 0);
    let seen = inbound.records().len();

    // The partner's own client, through a partner sidecar that federates with us in turn.
    let client = partner.issue("client", PARTNER_CLIENT);
    let our_bundle = ours.bundle_path();
    let (_partner_ward, partner_port) = start_outbound(
        &client,
        in_port,
        BACKEND,
        &[("example.org", our_bundle.as_path())],
    );
    assert_eq!(exchange(partner_port, b"invoice 42"), b"invoice 42");
    let r = inbound.wait_record_after(seen, "authz for the partner", |r| r["kind"] == "authz");
    assert_eq!(r["decision"], "allow", "{r}");
    assert_eq!(r["peer_id"], PARTNER_CLIENT, "{r}");
    assert_eq!(r["rule"], "partner-allowed", "{r}");

    // And with openssl, presenting the partner SVID directly.
    let (echo, err) = s_client_echo(in_port, &client, &ours.bundle_path(), b"from openssl\n");
    assert!(
        String::from_utf8_lossy(&echo).contains("from openssl"),
        "no echo: {:?}; openssl stderr:\n{err}",
        String::from_utf8_lossy(&echo)
    );
    inbound.assert_no_panic();
}

/// TLS 1.3 resumption restores the peer's chain without verifying it again: ward checks it
/// anew, so a session saved while the SVID was valid cannot carry it past its expiry.
#[test]
fn a_resumed_session_cannot_carry_an_expired_svid() {
    let s = setup();
    let short = s.pki.sign(
        "short-frontend",
        FRONTEND,
        time::Duration::minutes(-1),
        time::Duration::seconds(3),
    );
    let session = s.pki.dir.path().join("session.pem");
    let openssl = require_tool("openssl");
    let run = |extra: &[&std::ffi::OsStr], msg: &str| {
        let mut child = std::process::Command::new(&openssl)
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{}", s.port),
                "-quiet",
                "-CAfile",
            ])
            .arg(s.pki.bundle_path())
            .arg("-cert")
            .arg(&short.cert)
            .arg("-key")
            .arg(&short.key)
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(msg.as_bytes()).unwrap();
        // Stay a moment so the session ticket and the echo arrive, then hang up.
        std::thread::sleep(std::time::Duration::from_millis(700));
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = run(&["-sess_out".as_ref(), session.as_os_str()], "while valid\n");
    assert!(
        first.contains("while valid"),
        "the first connection was not echoed: {first:?}"
    );
    assert!(session.is_file(), "openssl saved no session");
    // Past the SVID's expiry, offer the saved session.
    std::thread::sleep(std::time::Duration::from_secs(4));
    let second = run(&["-sess_in".as_ref(), session.as_os_str()], "after expiry\n");
    assert!(
        !second.contains("after expiry"),
        "an expired SVID was admitted on a resumed session"
    );
    let r = s.inbound.wait_record("the refused resumption", |r| {
        r["kind"] == "handshake" && r["decision"] == "deny"
    });
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("resumed_invalid") || reason.starts_with("expired"),
        "{r}"
    );
    s.inbound.assert_no_panic();
}
