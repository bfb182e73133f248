#![allow(clippy::unwrap_used, clippy::expect_used)]
//! ward against a hostile neighbour, with real clients: header spellings that an app reads as
//! ward's identity header, headers the policy saw but the app would not, the admin plane
//! (which endpoints answer whom), and descriptor floods.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use ward_e2e::*;

/// A stdlib WSGI app (Python's wsgiref) that answers every request with its CGI environment's
/// `HTTP_*` variables as JSON. wsgiref, like every CGI-style server, maps a header name's `-`
/// to `_`: `x_forwarded_client_cert` and `x-forwarded-client-cert` are one variable to it.
struct WsgiApp {
    child: Child,
    port: u16,
}

const WSGI_APP: &str = r#"
import json, sys
from wsgiref.simple_server import make_server, WSGIRequestHandler

class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass

def app(environ, start_response):
    env = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
    body = json.dumps(env).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]

make_server("127.0.0.1", int(sys.argv[1]), app, handler_class=Quiet).serve_forever()
"#;

impl WsgiApp {
    fn spawn() -> WsgiApp {
        let port = free_port();
        let child = Command::new(require_tool("python3"))
            .args(["-c", WSGI_APP, &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the WSGI app");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_listening(port) {
            assert!(Instant::now() < deadline, "the WSGI app did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        WsgiApp { child, port }
    }

    fn addr(&self) -> std::net::SocketAddr {
        local(self.port)
    }
}

impl Drop for WsgiApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// curl `args`; the status code and the body.
fn curl(args: &[&str]) -> (u16, String) {
    let out = run(
        Command::new(require_tool("curl"))
            .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
            .args(args),
        b"",
        Duration::from_secs(8),
    );
    assert_eq!(out.code(), 0, "curl {args:?}: {}", out.stderr());
    let stdout = out.stdout();
    let (body, status) = stdout.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_owned())
}

/// curl straight to an inbound over mTLS with the frontend's SVID.
fn mtls_args(ids: &Ids) -> [&str; 5] {
    [
        "-k",
        "--cert",
        ids.frontend.cert.to_str().unwrap(),
        "--key",
        ids.frontend.key.to_str().unwrap(),
    ]
}

/// A header spelled with underscores (`x_forwarded_client_cert: ...URI=.../sa/admin`) reaches
/// a CGI/WSGI app as ward's own identity header would, attacker's value first. ward drops it,
/// over HTTP/1.1 and HTTP/2, from the outbound's app and straight from a peer: the app's
/// `HTTP_X_FORWARDED_CLIENT_CERT` is ward's value alone. `underscore_headers: keep` keeps
/// other names with `_` but never an identity spelling; `reject` answers 400.
#[test]
fn an_underscore_spelling_never_forges_the_identity_header() {
    let ids = ids();
    let app = WsgiApp::spawn();
    let rules = allow_frontend();
    let pair = start_pair(
        &ids,
        &[
            Route::http("drop", app.addr(), &rules),
            Route {
                extra: "    underscore_headers: keep\n",
                ..Route::http("keep", app.addr(), &rules)
            },
            Route {
                extra: "    underscore_headers: reject\n",
                ..Route::http("reject", app.addr(), &rules)
            },
        ],
    );
    let forged = "x_forwarded_client_cert: By=evil;URI=spiffe://example.org/ns/default/sa/admin";
    let forged_mixed = "X-Forwarded_Client-Cert: URI=spiffe://example.org/ns/default/sa/root";
    let custom = "x_custom: 1";
    let want = expected_xfcc(&ids);
    let mtls = mtls_args(&ids);
    for (i, route) in ["drop", "keep"].iter().enumerate() {
        let (out, inp) = (pair.out_ports[i], pair.in_ports[i]);
        let via_outbound = [
            (
                "HTTP/1.1 via the outbound",
                vec!["--http1.1"],
                format!("http://127.0.0.1:{out}/u"),
            ),
            (
                "h2c via the outbound",
                vec!["--http2-prior-knowledge"],
                format!("http://127.0.0.1:{out}/u"),
            ),
            (
                "h2 straight to the inbound",
                {
                    let mut a = vec!["--http2"];
                    a.extend(mtls);
                    a
                },
                format!("https://127.0.0.1:{inp}/u"),
            ),
            (
                "HTTP/1.1 straight to the inbound",
                {
                    let mut a = vec!["--http1.1"];
                    a.extend(mtls);
                    a
                },
                format!("https://127.0.0.1:{inp}/u"),
            ),
        ];
        for (how, mut args, url) in via_outbound {
            args.extend(["-H", forged, "-H", forged_mixed, "-H", custom, &url]);
            let (status, body) = curl(&args);
            assert_eq!(status, 200, "{route}, {how}: {body}");
            let env: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                env["HTTP_X_FORWARDED_CLIENT_CERT"], want,
                "{route}, {how}: the app must see ward's XFCC alone: {env}"
            );
            // The outbound listeners drop (the default); only the inbound's `keep` keeps.
            let kept = env.get("HTTP_X_CUSTOM").is_some();
            let keeps = *route == "keep" && how.contains("straight");
            assert_eq!(kept, keeps, "{route}, {how}: x_custom: {env}");
        }
    }
    // reject: 400, over either version; the outbound in front drops them (its default).
    let (out, inp) = (pair.out_ports[2], pair.in_ports[2]);
    let url = format!("https://127.0.0.1:{inp}/r");
    for (version, header) in [("--http1.1", custom), ("--http2", forged)] {
        let mut args = vec![version];
        args.extend(mtls);
        args.extend(["-H", header, &url]);
        let (status, body) = curl(&args);
        assert_eq!(status, 400, "{version} {header}: {body}");
    }
    let (status, _) = curl(&["-H", custom, &format!("http://127.0.0.1:{out}/r")]);
    assert_eq!(
        status, 200,
        "dropped by the outbound, so the inbound has nothing to refuse"
    );
    let r = pair.inbound.wait_record("the reject record", |r| {
        r["kind"] == "request" && r["status"] == 400
    });
    assert!(r["reason"].as_str().unwrap().starts_with("bad_header:"), "{r}");
    pair.inbound.assert_no_panic();
    pair.outbound.assert_no_panic();
}

/// The policy decides on the headers the app gets: a header the request's `Connection`
/// names is hop-by-hop and removed before the app, so a rule that needs it must not see it
/// either (`x-tenant: t1` with `Connection: close, x-tenant` is denied; without the
/// `Connection` token it is allowed and reaches the app).
#[test]
fn the_policy_sees_the_headers_the_app_gets() {
    let ids = ids();
    let app = WsgiApp::spawn();
    let rules = format!(
        "      - {{name: tenant, action: allow, from: [\"{FRONTEND}\"], headers: [{{name: x-tenant, present: true}}]}}\n"
    );
    let pair = start_pair(&ids, &[Route::http("backend", app.addr(), &rules)]);
    let inp = pair.in_ports[0];
    let url = format!("https://127.0.0.1:{inp}/t");
    let mtls = mtls_args(&ids);
    let mut args = vec!["--http1.1"];
    args.extend(mtls);
    args.extend(["-H", "x-tenant: t1", "-H", "Connection: close, x-tenant", &url]);
    let (status, body) = curl(&args);
    assert_eq!(status, 403, "the app would not have seen x-tenant: {body}");

    let mut args = vec!["--http1.1"];
    args.extend(mtls);
    args.extend(["-H", "x-tenant: t1", &url]);
    let (status, body) = curl(&args);
    assert_eq!(status, 200, "{body}");
    let env: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(env["HTTP_X_TENANT"], "t1", "{env}");
    pair.inbound.assert_no_panic();
}

// ---------------------------------------------------------------------------------------------
// Descriptor floods

/// A TCP connection to 127.0.0.1:`port` from the loopback address `src` (any of 127.0.0.0/8).
fn connect_from(src: [u8; 4], port: u16) -> std::io::Result<std::net::TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&std::net::SocketAddr::from((src, 0)).into())?;
    s.connect_timeout(&local(port).into(), Duration::from_secs(2))?;
    Ok(s.into())
}

/// An inbound HTTP listener in front of the WSGI app, with an admin port; `max_connections`
/// as given (or ward's default), run under `prlimit --nofile=N:N`.
fn limited_inbound(app: &WsgiApp, ids: &Ids, nofile: u32, extra: &str) -> (Ward, u16, u16) {
    let (port, admin) = (free_port(), free_port());
    let body = format!(
        "{}inbound:\n  - {{name: web, listen: \"127.0.0.1:{port}\", forward: \"{}\", protocol: http, policy: web{extra}}}\n\
         policies:\n  web:\n    rules:\n{}admin:\n  listen: 127.0.0.1:{admin}\n",
        identity_yaml(&ids.backend, &[]),
        app.addr(),
        allow_frontend()
    );
    let limit = format!("--nofile={nofile}:{nofile}");
    let ward = Ward::start_wrapped(&body, &[port, admin], &[], &["prlimit", &limit, "--"]);
    (ward, port, admin)
}

/// One real mTLS request, which must be answered well before the 10 s handshake timeout.
fn real_request(ids: &Ids, port: u16) -> (u16, String) {
    let mut args = vec!["--http1.1", "--max-time", "4"];
    args.extend(mtls_args(ids));
    let url = format!("https://127.0.0.1:{port}/real");
    args.push(&url);
    curl(&args)
}

/// Under `ulimit -n 400`, one neighbour (127.0.0.2) opens 420 connections and never starts a
/// handshake. Past `max_pending_per_source` (64) its connections are closed at once, so the
/// descriptors last and a real peer's request is answered at once, not after the handshake
/// timeout; the refusals are counted.
#[test]
fn one_neighbour_cannot_exhaust_descriptors_with_idle_handshakes() {
    let ids = ids();
    let app = WsgiApp::spawn();
    // A handshake timeout longer than opening the 420 connections takes on a busy machine:
    // the neighbour's first 64 stay pending all the while, so every later one is refused.
    let (ward, port, admin) = limited_inbound(&app, &ids, 400, ", handshake_timeout: 60s");
    let held: Vec<_> = (0..420)
        .filter_map(|_| connect_from([127, 0, 0, 2], port).ok())
        .collect();
    assert!(held.len() >= 400, "only {} connections", held.len());
    let m = wait_metrics(admin, "per-source refusals", |m| {
        m.value("ward_connections_refused_source_total", &[("listener", "web")]) >= 300.0
    });
    assert!(m.value("ward_connections_active", &[("listener", "web")]) <= 64.0);
    let (status, body) = real_request(&ids, port);
    assert_eq!(status, 200, "{body}\n{}", ward.stderr());
    drop(held);
    ward.assert_no_panic();
}

/// Many neighbours (seven source addresses, 60 connections each, under a raised
/// `max_connections`) do exhaust the 400 descriptors: `accept` fails with EMFILE. ward keeps
/// running, counts it (`ward_accept_errors_total{reason="emfile"}`), logs it once per
/// interval rather than per failure, and serves again as soon as the descriptors come back.
#[test]
fn out_of_descriptors_backs_off_counts_and_recovers() {
    let ids = ids();
    let app = WsgiApp::spawn();
    // A handshake timeout longer than opening the 420 connections takes on a busy machine:
    // none may be closed (and its descriptor freed) before the last one is open.
    let (mut ward, port, admin) =
        limited_inbound(&app, &ids, 400, ", max_connections: 5000, handshake_timeout: 60s");
    let mut held = Vec::new();
    for src in 2..=8u8 {
        held.extend((0..60).filter_map(|_| connect_from([127, 0, 0, src], port).ok()));
    }
    // Wait for the failures to show in the log (the admin port cannot accept either now).
    ward.wait_stderr("accept failed", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    drop(held);
    let m = wait_metrics(admin, "accept errors", |m| {
        m.value(
            "ward_accept_errors_total",
            &[("listener", "web"), ("reason", "emfile")],
        ) >= 1.0
    });
    let failures = m.value(
        "ward_accept_errors_total",
        &[("listener", "web"), ("reason", "emfile")],
    );
    let logged = ward.stderr().matches("accept failed").count();
    assert!(
        logged <= 2 && (logged as f64) <= failures,
        "{logged} log lines for {failures} failures: once per interval, not per failure"
    );
    let (status, body) = real_request(&ids, port);
    assert_eq!(status, 200, "{body}\n{}", ward.stderr());
    ward.assert_alive();
    ward.assert_no_panic();
}

/// 500 connections to the admin port, each with half a request head, from one address: past
/// 16 from one source they are closed at once, the rest when the 5 s header timeout runs out;
/// `/ready` from another address answers at once all the while.
#[test]
fn half_sent_admin_requests_cannot_hold_the_admin_port() {
    use std::io::{Read, Write};
    let ids = ids();
    let app = WsgiApp::spawn();
    let (ward, _, admin) = limited_inbound(&app, &ids, 4096, "");
    let mut held = Vec::new();
    for _ in 0..500 {
        if let Ok(mut s) = connect_from([127, 0, 0, 3], admin) {
            let _ = s.write_all(b"GET /ready HTTP/1.1\r\nHost: 127.0.0.1\r\n");
            held.push(s);
        }
    }
    let started = Instant::now();
    let ready = admin_get(admin, "/ready");
    assert_eq!(ready.status, 200, "{}", ready.text());
    // Every held connection ends, the last by the header timeout: a read sees EOF or a reset
    // well before the 45 s the old build kept them.
    let mut open = 0;
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                open += 1
            }
            Err(_) => {}
        }
    }
    assert_eq!(
        open,
        0,
        "connections still open {:?} after the flood",
        started.elapsed()
    );
    ward.assert_no_panic();
}
