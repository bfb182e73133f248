//! Protocol detection: `protocol: auto` gives HTTP L7 policy and opaque bytes plain TCP, and
//! an h2c preface is told from HTTP/1.1 however it arrives.

use super::*;

/// With `protocol: auto` (the default) on both sides: HTTP is detected and gets L7 policy (403
/// for a denied path, XFCC for an allowed one) via the outbound, via h2 ALPN and via TLS with
/// no ALPN at all (openssl s_client, sniffed); opaque bytes fall back to TCP both ways.
#[test]
fn protocol_auto_gets_l7_policy_and_opaque_bytes_fall_back_to_tcp() {
    let ids = ids();
    let app = HttpApp::spawn();
    let echo = App::echo();
    let web_rules = format!(
        "{}      - {{name: no-admin, action: deny, paths: [\"/admin/**\"]}}\n",
        allow_frontend()
    );
    let echo_rules = allow_frontend();
    let pair = start_pair(
        &ids,
        &[
            Route {
                protocol: ("auto", "auto"),
                ..Route::http("web", app.addr, &web_rules)
            },
            Route {
                protocol: ("auto", "auto"),
                ..Route::http("echo", echo.addr, &echo_rules)
            },
        ],
    );
    let (web_out, echo_out) = (pair.out_ports[0], pair.out_ports[1]);
    let web_in = pair.in_ports[0];

    // HTTP/1.1 and h2c through the auto outbound.
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let got = curl(&[version, &format!("http://127.0.0.1:{web_out}/hello")]);
        assert_eq!(got.status, 200, "{version}: {got:?}");
        assert_eq!(
            got.echo()["headers"]["x-forwarded-client-cert"],
            serde_json::json!([expected_xfcc(&ids)]),
            "{version}: L7 at the inbound sets XFCC"
        );
        let got = curl(&[version, &format!("http://127.0.0.1:{web_out}/admin/x")]);
        assert_eq!(got.status, 403, "{version}: {got:?}");
    }
    // h2 by ALPN straight to the auto inbound.
    let cert = ids.frontend.cert.to_str().unwrap();
    let key = ids.frontend.key.to_str().unwrap();
    let got = curl(&[
        "--http2",
        "-k",
        "--cert",
        cert,
        "--key",
        key,
        &format!("https://127.0.0.1:{web_in}/admin/y"),
    ]);
    assert_eq!((got.status, got.version.as_str()), (403, "2"), "{got:?}");
    // TLS without ALPN: the inbound sniffs the plaintext inside.
    let mut cmd = Command::new(require_tool("openssl"));
    cmd.args([
        "s_client",
        "-quiet",
        "-ign_eof",
        "-connect",
        &format!("127.0.0.1:{web_in}"),
    ])
    .args(["-cert", cert, "-key", key]);
    for (path, status) in [("/admin/z", "403"), ("/sniffed", "200")] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: sniffed\r\nConnection: close\r\n\r\n");
        let out = run(&mut cmd, req.as_bytes(), Duration::from_secs(8));
        let text = out.stdout();
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {text}\nstderr:\n{}",
            out.stderr()
        );
        if status == "200" {
            assert!(text.contains(&expected_xfcc(&ids)), "{text}");
        }
    }
    let targets: Vec<String> = app.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(
        targets,
        ["/hello", "/hello", "/sniffed"],
        "the app never sees /admin/*"
    );

    // Opaque bytes (a line protocol) through the auto pair: plain TCP.
    let mut s = std::net::TcpStream::connect(local(echo_out)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    use std::io::{Read as _, Write as _};
    s.write_all(b"hello\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < 6 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    assert_eq!(got, b"hello\n", "opaque bytes must fall back to TCP");
    s.write_all(b"second line\n").unwrap();
    let mut got = Vec::new();
    while got.len() < 12 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    assert_eq!(got, b"second line\n");
    drop(s);
    // The TCP path's records: a connection decision and an access record, no request records.
    let access = pair.inbound.wait_record("access on the echo listener", |r| {
        r["kind"] == "access" && r["listener"] == "echo"
    });
    assert_eq!(access["bytes_in"], 18, "{access}");
    assert!(
        pair.inbound
            .records()
            .iter()
            .filter(|r| r["listener"] == "echo")
            .all(|r| r["kind"] != "request")
    );
    assert!(
        pair.inbound
            .records()
            .iter()
            .any(|r| r["listener"] == "echo" && r["kind"] == "authz" && r["decision"] == "allow")
    );
    for w in [&pair.inbound, &pair.outbound] {
        w.assert_no_panic();
    }
}

/// Regression: on an auto listener, a request that waits past the detection timeout, or is
/// spelled in lowercase, is still HTTP to ward; neither can slip past the HTTP rules (or
/// forge the identity header) by being taken for opaque bytes.
#[test]
fn a_slow_or_lowercase_request_on_an_auto_listener_still_meets_the_http_rules() {
    let ids = ids();
    let app = HttpApp::spawn();
    let rules = format!(
        "{}      - {{name: no-admin, action: deny, paths: [\"/admin/**\"]}}\n      - {{name: no-delete, action: deny, methods: [DELETE]}}\n",
        allow_frontend()
    );
    let pair = start_pair(
        &ids,
        &[Route {
            protocol: ("auto", "auto"),
            ..Route::http("web", app.addr, &rules)
        }],
    );
    let web_in = pair.in_ports[0];
    let cert = ids.frontend.cert.to_str().unwrap();
    let key = ids.frontend.key.to_str().unwrap();
    for (delay, req) in [
        (
            1200,
            "GET /admin/x HTTP/1.1\r\nHost: a\r\nX-Forwarded-Client-Cert: By=evil;URI=spiffe://example.org/ns/prod/sa/admin\r\nConnection: close\r\n\r\n",
        ),
        (0, "delete /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
    ] {
        let mut child = Command::new(require_tool("openssl"))
            .args([
                "s_client",
                "-quiet",
                "-ign_eof",
                "-connect",
                &format!("127.0.0.1:{web_in}"),
            ])
            .args(["-cert", cert, "-key", key])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // Longer than detect_timeout (500ms): the old detection called this opaque.
        std::thread::sleep(Duration::from_millis(delay));
        use std::io::Write as _;
        stdin.write_all(req.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with("HTTP/1.1 403") || text.starts_with("HTTP/1.1 400"),
            "delay {delay}ms, {req:?}: {text}"
        );
    }
    assert!(app.seen().is_empty(), "the app saw {:?}", app.seen());
    pair.inbound.assert_no_panic();
}

/// An h2c client whose preface arrives in two pieces, the first of which could still start an
/// HTTP/1 request (`PRI * HTTP/2`): the outbound must not settle on HTTP/1 early but wait for
/// the rest and answer with its own HTTP/2 SETTINGS; a plain HTTP/1 request on the same
/// listener still gets HTTP/1.
#[test]
fn a_split_h2c_preface_still_gets_http2() {
    use std::io::{Read, Write};
    let (_ids, _app, pair) = echo_pair(&[]);
    let out = pair.out_ports[0];

    let mut tcp = std::net::TcpStream::connect(local(out)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(b"PRI * HTTP/2").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // The rest of the preface, then an empty SETTINGS frame.
    tcp.write_all(b".0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let mut head = [0u8; 9];
    tcp.read_exact(&mut head)
        .unwrap_or_else(|e| panic!("no HTTP/2 frame back ({e}); stderr:\n{}", pair.outbound.stderr()));
    assert_eq!(
        head[3], 0x4,
        "the server's first frame is SETTINGS, not {head:?} (an HTTP/1 answer starts 'HTTP/1.1')"
    );

    let got = curl(&["--http1.1", &format!("http://127.0.0.1:{out}/echo/h1")]);
    assert_eq!((got.status, got.version.as_str()), (200, "1.1"), "{got:?}");
    pair.outbound.assert_no_panic();
}

/// A server-speaks-first protocol on `protocol: auto`: on a port of `server_first_ports` (the
/// default list has Redis's 6379) the banner crosses both sidecars at once, as opaque TCP;
/// with `server_first_ports: []` ward waits for the client's first bytes to sniff, and the
/// banner comes only after them; `ward check --effective` shows the list.
#[test]
fn server_first_ports_are_tcp_on_auto_without_waiting() {
    let ids = ids();
    // A server-first app on Redis's port (on a loopback address of its own).
    let banner_app = std::net::TcpListener::bind("127.0.0.7:6379").expect(
        "bind 127.0.0.7:6379 for the server-first app (is something listening on 6379 on every address?)",
    );
    let app_addr = banner_app.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in banner_app.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let _ = conn.write_all(b"+OK banner\r\n");
                let mut buf = [0u8; 64];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let detect = Duration::from_secs(3);
    let run_pair_with = |inbound_list: &str, outbound_list: &str, rules: &str| {
        let (inp, outp) = (free_port(), free_port());
        let body = format!(
            "{}detect_timeout: 3s\ninbound:\n  - {{name: kv, listen: \"127.0.0.1:{inp}\", forward: \"{app_addr}\", policy: kv{inbound_list}}}\npolicies:\n  kv:\n    default: deny\n    rules:\n{rules}{}",
            identity_yaml(&ids.backend, &[]),
            allow_frontend()
        );
        let inbound = Ward::start(&body, &[inp]);
        let list = outbound_list.replace("IN", &inp.to_string());
        let body = format!(
            "{}detect_timeout: 3s\noutbound:\n  - {{name: kv, listen: \"127.0.0.1:{outp}\", forward: \"127.0.0.1:{inp}\", server_id: \"{BACKEND}\"{list}}}\n",
            identity_yaml(&ids.frontend, &[]),
        );
        let outbound = Ward::start(&body, &[outp]);
        (inbound, outbound, outp)
    };
    let run_pair = |inbound_list: &str, outbound_list: &str| run_pair_with(inbound_list, outbound_list, "");
    let banner_after = |port: u16| {
        use std::io::Read;
        let started = std::time::Instant::now();
        let mut s = std::net::TcpStream::connect(local(port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"+OK banner\r\n");
        started.elapsed()
    };
    // The outbound's destination is the inbound's listen port (explicit listeners): listed
    // on it; the inbound's app port 6379 is on the default list.
    let (inbound, _outbound, port) = run_pair("", ", server_first_ports: [IN]");
    let took = banner_after(port);
    assert!(took < detect, "the banner waited for detection: {took:?}");
    let r = inbound.wait_record("the TCP access record", |r| r["kind"] == "authz");
    assert_eq!(r["decision"], "allow", "{r}");
    // An empty list on the inbound: it waits for the client's first bytes to sniff them, so
    // the banner comes only once the client has spoken.
    let (_inbound, _outbound, port) = run_pair(", server_first_ports: []", ", server_first_ports: [IN]");
    let mut s = std::net::TcpStream::connect(local(port)).unwrap();
    s.set_read_timeout(Some(detect + Duration::from_secs(1))).unwrap();
    let mut buf = [0u8; 12];
    let early = std::io::Read::read(&mut s, &mut buf);
    assert!(early.is_err(), "a banner before the client spoke: {early:?}");
    std::io::Write::write_all(&mut s, b"PING\r\n").unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    std::io::Read::read_exact(&mut s, &mut buf).unwrap();
    assert_eq!(&buf, b"+OK banner\r\n");

    // An HTTP-only deny rule that covers the peer cannot be applied to opaque bytes: a peer it
    // covers is refused on a server-first port, as for opaque bytes `auto` saw.
    let (inbound, _outbound, port) = run_pair_with(
        "",
        ", server_first_ports: [IN]",
        "      - {name: no-admin, action: deny, paths: [\"/admin/**\"]}\n",
    );
    let mut s = std::net::TcpStream::connect(local(port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 12];
    assert!(
        std::io::Read::read_exact(&mut s, &mut buf).is_err(),
        "the banner came through"
    );
    let r = inbound.wait_record("the refusal", |r| r["decision"] == "deny");
    assert!(r["reason"].as_str().unwrap().starts_with("not_http"), "{r}");

    // `ward check --effective` shows the list a listener gets.
    let path = ids.pki.dir.path().join("server-first.yaml");
    std::fs::write(
        &path,
        format!(
            "{}inbound:\n  - {{name: kv, listen: \"127.0.0.1:{}\", forward: \"{app_addr}\", policy: kv}}\npolicies:\n  kv:\n    default: deny\n",
            identity_yaml(&ids.backend, &[]),
            free_port()
        ),
    )
    .unwrap();
    let out = ward(&["check", "-c", path.to_str().unwrap(), "--effective"], WAIT);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    let stdout = out.stdout();
    let json: Value = serde_json::from_str(&stdout[stdout.find('{').unwrap()..]).unwrap();
    assert_eq!(
        json["inbound"][0]["server_first_ports"],
        serde_json::json!([25, 587, 3306, 4444, 5432, 6379, 9300, 11211])
    );
}
