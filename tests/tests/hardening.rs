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
