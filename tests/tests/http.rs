#![allow(clippy::unwrap_used, clippy::expect_used)]
//! HTTP at L7 through two real ward processes: curl (HTTP/1.1, h2c prior knowledge, h2 over
//! mTLS) and in-process hyper clients → outbound ward → one pooled HTTP/2 mTLS connection →
//! inbound ward → an HTTP app that echoes what it received. Per-request policy (methods,
//! paths, headers; deny wins), XFCC, path normalization against bypasses, request smuggling,
//! connection reuse on both hops, and `protocol: auto`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use ward_e2e::*;

// ---------------------------------------------------------------------------------------------
// Fixtures

/// What one curl run got: the (last) response head and body, and `%{http_version}`.
#[derive(Debug)]
struct Curled {
    status: u16,
    version: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Curled {
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The app's echo of the request.
    fn echo(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not the app's JSON echo ({e}): {self:?}"))
    }
}

fn curl_cmd() -> Command {
    let mut cmd = Command::new(require_tool("curl"));
    cmd.args(["-sS", "--max-time", "5"]);
    cmd
}

/// curl `args` (one URL), which must succeed at the transport level.
fn curl(args: &[&str]) -> Curled {
    let out = run(
        curl_cmd()
            .args(["-i", "-w", "\n%{http_code} %{http_version}"])
            .args(args),
        b"",
        Duration::from_secs(8),
    );
    assert_eq!(
        out.code(),
        0,
        "curl {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        out.stdout(),
        out.stderr()
    );
    let stdout = out.stdout();
    let (mut rest, tail) = stdout.rsplit_once('\n').unwrap();
    let (status, version) = tail.split_once(' ').unwrap();
    // Skip interim responses (100 Continue): take the last head.
    let mut head = "";
    while rest.starts_with("HTTP/") {
        let (h, b) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
        head = h;
        rest = b;
    }
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Curled {
        status: status.parse().unwrap(),
        version: version.to_owned(),
        headers,
        body: rest.to_owned(),
    }
}

/// curl over several URLs in one run (so one connection when it can): the status of each.
fn curl_statuses(args: &[&str], urls: &[String]) -> Vec<u16> {
    let out = run(
        curl_cmd()
            .args(["--max-time", "20", "-w", "\n@@%{http_code}\n"])
            .args(args)
            .args(urls),
        b"",
        Duration::from_secs(25),
    );
    assert_eq!(out.code(), 0, "curl failed:\n{}", out.stderr());
    out.stdout()
        .lines()
        .filter_map(|l| l.strip_prefix("@@"))
        .map(|c| c.parse().unwrap())
        .collect()
}

/// The `kind: request` records of a ward's audit log, at least `n` of them.
fn requests(ward: &Ward, n: usize) -> Vec<Value> {
    ward.wait_records(n, "of kind request", |r| r["kind"] == "request")
}

/// The usual fixture: the echo app behind a pair (`ward run` with `args`) whose inbound
/// allows the frontend everything. Keep the `Ids`: they hold the SVID files.
fn echo_pair(args: &[&str]) -> (Ids, HttpApp, Pair) {
    let ids = ids();
    let app = HttpApp::spawn();
    let rules = allow_frontend();
    let pair = start_pair_with(&ids, &[Route::http("backend", app.addr, &rules)], args);
    (ids, app, pair)
}

fn distinct(records: &[Value], key: &str) -> BTreeSet<String> {
    records.iter().map(|r| r[key].to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Clients through the pair

/// HTTP/1.1 and h2c (prior knowledge) from curl to the outbound: the app gets the request with
/// Host kept, hop-by-hop headers gone, the body, and ward's XFCC; both wards write a request
/// record with status, bytes and duration.
#[test]
fn curl_http1_and_h2c_reach_the_app_through_both_sidecars() {
    let (ids, app, pair) = echo_pair(&[]);
    let out = pair.out_ports[0];
    let body = "x".repeat(1000);

    // HTTP/1.1, with hop-by-hop headers that must not cross and a Host that must.
    let got = curl(&[
        "--http1.1",
        "--data-binary",
        &body,
        "-H",
        "Host: api.internal:8080",
        "-H",
        "Connection: keep-alive, x-hop",
        "-H",
        "x-hop: secret",
        "-H",
        "Proxy-Authorization: Basic Zm9vOmJhcg==",
        "-H",
        "x-end-to-end: kept",
        &format!("http://127.0.0.1:{out}/echo/one?hop=1&q=2"),
    ]);
    assert_eq!((got.status, got.version.as_str()), (200, "1.1"), "{got:?}");
    let echo = got.echo();
    assert_eq!(echo["method"], "POST", "{echo}");
    assert_eq!(echo["target"], "/echo/one?hop=1&q=2", "{echo}");
    assert_eq!(
        echo["version"], "HTTP/1.1",
        "a plain request goes to the app as HTTP/1.1"
    );
    assert_eq!(echo["body_len"], 1000, "{echo}");
    let h = &echo["headers"];
    assert_eq!(
        h["host"],
        serde_json::json!(["api.internal:8080"]),
        "Host is kept: {echo}"
    );
    assert_eq!(h["x-end-to-end"], serde_json::json!(["kept"]), "{echo}");
    assert_eq!(
        h["x-forwarded-client-cert"],
        serde_json::json!([expected_xfcc(&ids)]),
        "{echo}"
    );
    for hop in ["x-hop", "proxy-authorization", "keep-alive", "upgrade"] {
        assert!(h.get(hop).is_none(), "hop-by-hop {hop} reached the app: {echo}");
    }
    // The app's own hop-by-hop response headers do not reach the client; the rest do.
    assert_eq!(got.header("x-app"), ["echo"], "{got:?}");
    assert!(got.header("x-app-hop").is_empty(), "{got:?}");
    assert!(
        !got.header("keep-alive").iter().any(|v| v.contains("timeout=30")),
        "{got:?}"
    );

    // h2c with prior knowledge from the app side.
    let got2 = curl(&[
        "--http2-prior-knowledge",
        &format!("http://127.0.0.1:{out}/echo/two"),
    ]);
    assert_eq!((got2.status, got2.version.as_str()), (200, "2"), "{got2:?}");
    let echo2 = got2.echo();
    assert_eq!(echo2["method"], "GET", "{echo2}");
    assert_eq!(echo2["target"], "/echo/two", "{echo2}");
    assert_eq!(
        echo2["headers"]["host"],
        serde_json::json!([format!("127.0.0.1:{out}")]),
        ":authority becomes Host: {echo2}"
    );
    assert_eq!(
        echo2["headers"]["x-forwarded-client-cert"],
        serde_json::json!([expected_xfcc(&ids)]),
        "{echo2}"
    );
    assert_eq!(app.count(), 2);

    // One request record per request on each side, with the issue's fields.
    let inbound = requests(&pair.inbound, 2);
    let post = &inbound[0];
    assert_eq!(post["method"], "POST", "{post}");
    assert_eq!(
        post["path"], "/echo/one",
        "the query is not part of the path: {post}"
    );
    assert_eq!(post["authority"], "api.internal:8080", "{post}");
    assert_eq!(post["status"], 200, "{post}");
    assert_eq!(post["decision"], "allow", "{post}");
    assert_eq!(post["rule"], "frontend", "{post}");
    assert_eq!(post["peer_id"], FRONTEND, "{post}");
    assert_eq!(post["peer_serial"], ids.frontend.serial.as_str(), "{post}");
    assert_eq!(post["listener"], "backend", "{post}");
    assert_eq!(post["direction"], "inbound", "{post}");
    assert_eq!(post["bytes_in"], 1000, "request body bytes: {post}");
    assert_eq!(post["bytes_out"], got.body.len(), "response body bytes: {post}");
    assert!(post["duration_ms"].is_u64(), "{post}");
    let get = &inbound[1];
    assert_eq!(
        (
            get["method"].as_str(),
            get["path"].as_str(),
            get["status"].as_u64()
        ),
        (Some("GET"), Some("/echo/two"), Some(200)),
        "{get}"
    );
    assert_eq!(get["bytes_out"], got2.body.len(), "{get}");

    let outbound = requests(&pair.outbound, 2);
    let post = &outbound[0];
    assert_eq!(post["listener"], "backend", "{post}");
    assert_eq!(post["direction"], "outbound", "{post}");
    assert_eq!(post["peer_id"], BACKEND, "the server's ID: {post}");
    assert_eq!(post["method"], "POST", "{post}");
    assert_eq!(post["path"], "/echo/one", "{post}");
    assert_eq!(post["status"], 200, "{post}");
    assert_eq!(post["bytes_in"], 1000, "{post}");
    assert_eq!(post["bytes_out"], got.body.len(), "{post}");
    assert!(post["duration_ms"].is_u64(), "{post}");
    assert_eq!(outbound[1]["status"], 200, "{}", outbound[1]);

    // Two client connections, one sidecar-to-sidecar connection.
    assert_eq!(distinct(&outbound, "src").len(), 2, "{outbound:?}");
    assert_eq!(distinct(&inbound, "src").len(), 1, "{inbound:?}");
    for w in [&pair.inbound, &pair.outbound] {
        w.assert_no_panic();
    }
}

/// curl straight to the inbound over mTLS with the frontend's SVID: HTTP/2 by ALPN, XFCC from
/// the presented leaf, a forged XFCC dropped; `app_protocol: http2` speaks h2c to the app; an
/// SVID that no request could be allowed for is refused at the connection.
#[test]
fn curl_h2_with_an_svid_straight_to_the_inbound() {
    let ids = ids();
    let intruder = ids.pki.issue("intruder", INTRUDER);
    let app = HttpApp::spawn();
    let rules = allow_frontend();
    let (p1, p2) = (free_port(), free_port());
    let body = format!(
        "{}inbound:\n\
         \x20 - {{name: backend, listen: \"127.0.0.1:{p1}\", forward: \"{app}\", protocol: http, policy: backend}}\n\
         \x20 - {{name: backend-h2, listen: \"127.0.0.1:{p2}\", forward: \"{app}\", protocol: http, policy: backend, app_protocol: http2}}\n\
         policies:\n  backend:\n    default: deny\n    rules:\n{rules}",
        identity_yaml(&ids.backend, &[]),
        app = app.addr
    );
    let inbound = Ward::start(&body, &[p1, p2]);
    let cert = ids.frontend.cert.to_str().unwrap();
    let key = ids.frontend.key.to_str().unwrap();

    let got = curl(&[
        "--http2",
        "-k",
        "--cert",
        cert,
        "--key",
        key,
        "-H",
        "x-forwarded-client-cert: By=evil;URI=spiffe://example.org/ns/default/sa/admin",
        &format!("https://127.0.0.1:{p1}/direct?x=1"),
    ]);
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.version, "2", "ALPN must choose HTTP/2: {got:?}");
    let echo = got.echo();
    assert_eq!(echo["target"], "/direct?x=1", "{echo}");
    assert_eq!(echo["version"], "HTTP/1.1", "{echo}");
    assert_eq!(
        echo["headers"]["host"],
        serde_json::json!([format!("127.0.0.1:{p1}")]),
        "{echo}"
    );
    assert_eq!(
        echo["headers"]["x-forwarded-client-cert"],
        serde_json::json!([expected_xfcc(&ids)]),
        "only ward's XFCC, Hash = SHA-256 of the frontend's leaf: {echo}"
    );

    // HTTP/1.1 from the client, h2c to the app.
    let got = curl(&[
        "--http1.1",
        "-k",
        "--cert",
        cert,
        "--key",
        key,
        &format!("https://127.0.0.1:{p2}/to-h2-app"),
    ]);
    assert_eq!((got.status, got.version.as_str()), (200, "1.1"), "{got:?}");
    let echo = got.echo();
    assert_eq!(echo["version"], "HTTP/2.0", "app_protocol: http2: {echo}");
    assert_eq!(echo["target"], "/to-h2-app", "{echo}");
    assert_eq!(
        echo["headers"]["x-forwarded-client-cert"],
        serde_json::json!([expected_xfcc(&ids)]),
        "{echo}"
    );
    assert_eq!(app.count(), 2);

    let r = requests(&inbound, 2);
    assert_eq!(r[0]["peer_id"], FRONTEND, "{}", r[0]);
    assert_eq!(r[0]["path"], "/direct", "{}", r[0]);
    assert_eq!(r[1]["listener"], "backend-h2", "{}", r[1]);

    // The intruder's SVID is valid, but nothing is allowed for it: refused before any request.
    let seen = inbound.records().len();
    let out = run(
        curl_cmd()
            .args(["--http2", "-k", "--cert"])
            .arg(&intruder.cert)
            .arg("--key")
            .arg(&intruder.key)
            .arg(format!("https://127.0.0.1:{p1}/intrude")),
        b"",
        Duration::from_secs(8),
    );
    assert_ne!(out.code(), 0, "the intruder got an answer: {}", out.stdout());
    let deny = inbound.wait_record_after(seen, "deny for the intruder", |r| r["decision"] == "deny");
    assert_eq!(deny["peer_id"], INTRUDER, "{deny}");
    assert_eq!(app.count(), 2, "the app saw the intruder");
    inbound.assert_no_panic();
}

/// A caller's XFCC never reaches the app, whatever its spelling or count: the app sees only
/// ward's value, or, with `xfcc: false`, none at all.
#[test]
fn forged_xfcc_is_removed_and_xfcc_false_sets_none() {
    let ids = ids();
    let app = HttpApp::spawn();
    let rules = allow_frontend();
    let pair = start_pair(
        &ids,
        &[
            Route::http("backend", app.addr, &rules),
            Route {
                extra: "    xfcc: false\n",
                ..Route::http("noxfcc", app.addr, &rules)
            },
        ],
    );
    let forged = [
        "-H",
        "x-forwarded-client-cert: By=evil;URI=spiffe://example.org/ns/default/sa/admin",
        "-H",
        "X-Forwarded-Client-Cert: URI=spiffe://example.org/ns/default/sa/root",
    ];
    for (i, port) in pair.out_ports.iter().enumerate() {
        for version in ["--http1.1", "--http2-prior-knowledge"] {
            let url = format!("http://127.0.0.1:{port}/xfcc/{i}");
            let mut args = vec![version];
            args.extend(forged);
            args.push(&url);
            let got = curl(&args);
            assert_eq!(got.status, 200, "{got:?}");
            let xfcc = &got.echo()["headers"]["x-forwarded-client-cert"];
            if i == 0 {
                assert_eq!(
                    *xfcc,
                    serde_json::json!([expected_xfcc(&ids)]),
                    "{version}: {got:?}"
                );
            } else {
                assert!(
                    xfcc.is_null(),
                    "xfcc: false must set none and drop forged ones: {got:?}"
                );
            }
        }
    }
    let seen = app.seen();
    assert_eq!(seen.len(), 4);
    for s in &seen {
        assert!(
            !s.header("x-forwarded-client-cert")
                .iter()
                .any(|v| v.contains("evil") || v.contains("sa/admin") || v.contains("sa/root")),
            "a forged XFCC reached the app: {s:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Connection reuse

/// 200 requests from one curl over one keep-alive connection: all succeed, the outbound sees
/// one client connection (one `src` in its records) and the inbound one pooled connection.
#[test]
fn two_hundred_keepalive_requests_reuse_one_connection() {
    let (_ids, app, pair) = echo_pair(&[]);
    let urls: Vec<String> = (0..200)
        .map(|i| format!("http://127.0.0.1:{}/ka/{i}", pair.out_ports[0]))
        .collect();
    let out = run(
        curl_cmd()
            .args([
                "--max-time",
                "20",
                "--http1.1",
                "-w",
                // (A leading '@' would make curl read the format from a file.)
                "\n@@%{http_code} %{num_connects}\n",
            ])
            .args(&urls),
        b"",
        Duration::from_secs(25),
    );
    assert_eq!(out.code(), 0, "curl failed:\n{}", out.stderr());
    let stdout = out.stdout();
    let lines: Vec<&str> = stdout
        .split("@@")
        .skip(1)
        .map(|l| l.lines().next().unwrap_or_default())
        .collect();
    assert_eq!(lines.len(), 200, "{stdout}");
    assert!(lines.iter().all(|l| l.starts_with("200 ")), "{lines:?}");
    let connects: u32 = lines.iter().map(|l| l[4..].trim().parse::<u32>().unwrap()).sum();
    assert_eq!(connects, 1, "curl opened more than one connection: {lines:?}");

    let want: BTreeSet<String> = (0..200).map(|i| format!("/ka/{i}")).collect();
    let got: BTreeSet<String> = app.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(got, want);

    let outbound = requests(&pair.outbound, 200);
    assert_eq!(outbound.len(), 200);
    assert!(outbound.iter().all(|r| r["status"] == 200), "{outbound:?}");
    let srcs = distinct(&outbound, "src");
    assert_eq!(srcs.len(), 1, "200 requests over one client connection: {srcs:?}");
    let inbound = requests(&pair.inbound, 200);
    assert_eq!(inbound.len(), 200);
    assert!(
        inbound
            .iter()
            .all(|r| r["status"] == 200 && r["decision"] == "allow")
    );
    let srcs = distinct(&inbound, "src");
    assert_eq!(srcs.len(), 1, "one sidecar-to-sidecar connection: {srcs:?}");
}

/// 100 requests, 5 each over 20 concurrent client connections (opened together, each request
/// held 40 ms at the app so they overlap), all ride ONE HTTP/2 connection between the wards.
#[test]
fn concurrent_requests_share_one_sidecar_to_sidecar_connection() {
    use http_body_util::{BodyExt as _, Empty};
    use hyper_util::rt::TokioIo;

    let (_ids, app, pair) = echo_pair(&[]);
    let out = pair.out_ports[0];

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let results: Vec<(u16, String, String)> = rt.block_on(async move {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(20));
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..20 {
            let barrier = barrier.clone();
            tasks.spawn(async move {
                let tcp = tokio::net::TcpStream::connect(local(out)).await.unwrap();
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .unwrap();
                tokio::spawn(conn);
                barrier.wait().await;
                let mut got = Vec::new();
                for i in 0..5 {
                    let want = format!("/c/{c}/{i}?delay_ms=40");
                    let req = http::Request::get(want.as_str())
                        .header("host", format!("127.0.0.1:{out}"))
                        .body(Empty::<bytes::Bytes>::new())
                        .unwrap();
                    send.ready().await.unwrap();
                    let resp = send.send_request(req).await.unwrap();
                    let status = resp.status().as_u16();
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    let echo: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    got.push((status, want, echo["target"].as_str().unwrap_or("").to_owned()));
                }
                got
            });
        }
        let all = tokio::time::timeout(WAIT * 2, async {
            let mut all = Vec::new();
            while let Some(r) = tasks.join_next().await {
                all.extend(r.unwrap());
            }
            all
        });
        all.await.expect("100 requests within 10 s")
    });
    assert_eq!(results.len(), 100);
    for (status, want, target) in &results {
        assert_eq!((*status, target), (200, want), "request {want}");
    }
    assert_eq!(app.count(), 100);

    let outbound = requests(&pair.outbound, 100);
    assert_eq!(distinct(&outbound, "src").len(), 20, "20 client connections");
    let inbound = requests(&pair.inbound, 100);
    assert_eq!(inbound.len(), 100);
    let srcs = distinct(&inbound, "src");
    assert_eq!(
        srcs.len(),
        1,
        "every request must ride the one pooled HTTP/2 connection: {srcs:?}"
    );
    assert!(inbound.iter().all(|r| r["status"] == 200), "{inbound:?}");
}

// ---------------------------------------------------------------------------------------------
// Policy

/// 403 for a method, a path or a header condition not allowed, and for a deny rule that beats
/// an allow rule; each with a request record naming the rule; the app sees none of them.
#[test]
fn requests_denied_by_method_path_and_header_get_403_and_never_reach_the_app() {
    let ids = ids();
    let app = HttpApp::spawn();
    let rules = format!(
        "      - {{name: reads, action: allow, from: [\"{FRONTEND}\"], methods: [GET, HEAD], paths: [\"/api/*\", \"/public/**\"]}}\n\
         \x20     - {{name: writes, action: allow, from: [\"{FRONTEND}\"], methods: [POST], paths: [\"/api/*\"], headers: [{{name: x-csrf, present: true}}]}}\n\
         \x20     - {{name: legacy, action: allow, from: [\"{FRONTEND}\"], methods: [GET], paths: [\"/legacy/*\"], headers: [{{name: x-new-client, present: false}}]}}\n\
         \x20     - {{name: no-debug, action: deny, headers: [{{name: X-Debug, value: \"1\"}}]}}\n\
         \x20     - {{name: secret, action: deny, from: [\"{FRONTEND}\"], paths: [\"/api/secret\"]}}\n"
    );
    let pair = start_pair(&ids, &[Route::http("backend", app.addr, &rules)]);
    let out = pair.out_ports[0];

    // (case, curl options, path, status, deciding rule)
    type Case<'a> = (&'a str, &'a [&'a str], &'a str, u16, Option<&'a str>);
    let cases: &[Case<'_>] = &[
        ("get", &[], "/api/items", 200, Some("reads")),
        ("head", &["-I"], "/api/items", 200, Some("reads")),
        ("delete", &["-X", "DELETE"], "/api/items", 403, None),
        ("put", &["-X", "PUT"], "/public/a", 403, None),
        ("other-path", &[], "/other", 403, None),
        ("two-segments", &[], "/api/a/b", 403, None),
        // `/public/**` covers `/public` itself.
        ("bare-prefix", &[], "/public", 200, Some("reads")),
        ("deep", &[], "/public/a/b/c", 200, Some("reads")),
        ("post-no-csrf", &["--data", "a=1"], "/api/items", 403, None),
        (
            "post-csrf",
            &["--data", "a=1", "-H", "x-csrf: t"],
            "/api/items",
            200,
            Some("writes"),
        ),
        (
            "debug-1",
            &["-H", "X-Debug: 1"],
            "/api/items",
            403,
            Some("no-debug"),
        ),
        (
            "debug-1-post",
            &["--data", "a", "-H", "x-csrf: t", "-H", "x-debug: 1"],
            "/api/items",
            403,
            Some("no-debug"),
        ),
        ("debug-0", &["-H", "x-debug: 0"], "/api/items", 200, Some("reads")),
        ("deny-beats-allow", &[], "/api/secret", 403, Some("secret")),
        (
            "query-ignored",
            &[],
            "/api/secret?p=/api/items",
            403,
            Some("secret"),
        ),
        (
            "query-ignored-ok",
            &[],
            "/api/items?p=/api/secret",
            200,
            Some("reads"),
        ),
        ("legacy", &[], "/legacy/x", 200, Some("legacy")),
        ("legacy-new", &["-H", "x-new-client: 1"], "/legacy/x", 403, None),
    ];
    for (case, opts, path, status, _) in cases {
        let url = format!("http://127.0.0.1:{out}{path}");
        let header = format!("x-case: {case}");
        let mut args: Vec<&str> = opts.to_vec();
        args.extend(["-H", &header, &url]);
        let got = curl(&args);
        assert_eq!(got.status, *status, "{case}: {got:?}");
        if *status == 403 {
            assert_eq!(got.body, "ward: access denied\n", "{case}: a short text body");
        }
    }

    // The app saw exactly the allowed requests.
    let allowed: BTreeSet<&str> = cases.iter().filter(|c| c.3 == 200).map(|c| c.0).collect();
    let seen: Vec<String> = app.seen().iter().map(|s| s.header("x-case").join(",")).collect();
    assert_eq!(seen.len(), allowed.len(), "{seen:?}");
    assert_eq!(seen.iter().map(String::as_str).collect::<BTreeSet<_>>(), allowed);

    // One request record per case, in order, with the decision and the rule behind it.
    let records = requests(&pair.inbound, cases.len());
    assert_eq!(records.len(), cases.len());
    for ((case, opts, path, status, rule), r) in cases.iter().zip(&records) {
        let method = match *opts {
            ["-I"] => "HEAD",
            ["-X", m] => m,
            o if o.contains(&"--data") => "POST",
            _ => "GET",
        };
        let path = path.split('?').next().unwrap();
        assert_eq!(r["method"], method, "{case}: {r}");
        assert_eq!(r["path"], path, "{case}: {r}");
        assert_eq!(r["status"], *status, "{case}: {r}");
        assert_eq!(r["authority"], format!("127.0.0.1:{out}"), "{case}: {r}");
        assert_eq!(r["peer_id"], FRONTEND, "{case}: {r}");
        assert_eq!(r["kind"], "request", "{case}: {r}");
        let decision = if *status == 200 { "allow" } else { "deny" };
        assert_eq!(r["decision"], decision, "{case}: {r}");
        match rule {
            Some(rule) => assert_eq!(r["rule"], *rule, "{case}: {r}"),
            None => {
                assert!(r["rule"].is_null(), "{case}: {r}");
                assert!(
                    r["reason"].as_str().unwrap().starts_with("default_deny"),
                    "{case}: {r}"
                );
            }
        }
    }
    pair.inbound.assert_no_panic();
}

/// Spellings of a path under a denied `/admin/**` (which covers `/admin` itself) and a denied
/// GET/POST `/secret` get 403 (or 400 when they cannot be normalized or carry a control byte),
/// through the outbound (curl --path-as-is over HTTP/1.1, and raw request targets) and straight
/// to the inbound over h2; the app sees none of them, and for allowed paths it gets the
/// normalized form. Deny rules fold case and ignore a trailing slash, as app routers may.
#[test]
fn path_spellings_cannot_slip_past_a_deny_rule() {
    let ids = ids();
    let app = HttpApp::spawn();
    let rules = format!(
        "{}      - {{name: no-admin, action: deny, paths: [\"/admin/**\"]}}\n\
         \x20     - {{name: no-secret, action: deny, methods: [GET, POST], paths: [\"/secret\"]}}\n",
        allow_frontend()
    );
    let pair = start_pair(&ids, &[Route::http("backend", app.addr, &rules)]);
    let (out, inp) = (pair.out_ports[0], pair.in_ports[0]);

    let denied: &[(&str, u16)] = &[
        ("/admin/x", 403),
        ("/a/../admin/x", 403),
        ("/%61dmin/x", 403),
        ("/%2e%2e/admin", 400),
        ("/x/%2e%2e/admin/y", 403),
        ("/x/%2E%2E/admin/y", 403),
        ("//admin/x", 403),
        ("/admin//x", 403),
        ("/admin%2fx", 400),
        ("/admin%2Fx", 400),
        ("/%5cadmin/x", 400),
        ("/./admin/x", 403),
        ("/%2e/admin/x", 403),
        ("/admin/./x", 403),
        ("/b/..//admin/x", 403),
        ("/.%2e/admin/x", 400),
        ("/admin/x?y=1", 403),
        ("/admin", 403),
        ("/admin/", 403),
        ("/ADMIN/x", 403),
        ("/Admin", 403),
        ("/%41dmin/x", 403),
        ("/aDmIn/.", 403),
        ("/secret", 403),
        ("/secret/", 403),
        ("/secret/.", 403),
        ("/secret/x/..", 403),
        ("/Secret", 403),
        ("/SECRET//", 403),
        ("/secret%00", 400),
        ("/secret%0a", 400),
        ("/admin%1f/x", 400),
        ("/a%7f", 400),
    ];
    let allowed: &[(&str, &str)] = &[
        ("/a/../b", "/b"),
        ("/%61pi/x", "/api/x"),
        ("//b//c/", "/b/c/"),
        ("/b/./c?q=/admin/x", "/b/c?q=/admin/x"),
        ("/administrator", "/administrator"),
        ("/secrets", "/secrets"),
        ("/secret/x", "/secret/x"),
    ];
    let urls = |port: u16, scheme: &str| -> Vec<String> {
        denied
            .iter()
            .map(|(p, _)| *p)
            .chain(allowed.iter().map(|(p, _)| *p))
            .map(|p| format!("{scheme}://127.0.0.1:{port}{p}"))
            .collect()
    };
    let want: Vec<u16> = denied
        .iter()
        .map(|(_, s)| *s)
        .chain(allowed.iter().map(|_| 200))
        .collect();

    // Through the pair, HTTP/1.1 from the client.
    let got = curl_statuses(&["--http1.1", "--path-as-is"], &urls(out, "http"));
    assert_eq!(got, want, "via the outbound: {:?}", urls(out, "http"));
    // Straight to the inbound, HTTP/2 over mTLS.
    let got = curl_statuses(
        &[
            "--http2",
            "--path-as-is",
            "-k",
            "--cert",
            ids.frontend.cert.to_str().unwrap(),
            "--key",
            ids.frontend.key.to_str().unwrap(),
        ],
        &urls(inp, "https"),
    );
    assert_eq!(got, want, "straight to the inbound over h2");
    // A raw absolute-form request target.
    let (raw, _) = raw_exchange(
        out,
        format!(
            "GET http://127.0.0.1:{out}/a/../admin/x HTTP/1.1\r\nHost: 127.0.0.1:{out}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
        Duration::from_secs(3),
    );
    assert_eq!(
        response_statuses(&raw),
        [403],
        "{}",
        String::from_utf8_lossy(&raw)
    );
    // The asterisk form is for OPTIONS only: `GET *` is a bad request, straight to the
    // inbound and through the pair.
    for port in [inp, out] {
        let https = port == inp;
        let mut args = vec!["--http1.1", "-X", "GET", "--request-target", "*"];
        let (cert, key) = (
            ids.frontend.cert.to_str().unwrap(),
            ids.frontend.key.to_str().unwrap(),
        );
        if https {
            args.extend(["-k", "--cert", cert, "--key", key]);
        }
        let scheme = if https { "https" } else { "http" };
        let got = curl_statuses(&args, &[format!("{scheme}://127.0.0.1:{port}/")]);
        assert_eq!(got, [400], "GET * via port {port}");
    }

    // The app saw only the allowed requests, normalized, once from each client.
    let seen: Vec<String> = app.seen().into_iter().map(|s| s.target).collect();
    let expect: Vec<String> = allowed
        .iter()
        .chain(allowed)
        .map(|(_, n)| n.to_string())
        .collect();
    let count = |v: &[String]| {
        v.iter().fold(BTreeMap::new(), |mut m, t| {
            *m.entry(t.clone()).or_insert(0) += 1;
            m
        })
    };
    assert_eq!(count(&seen), count(&expect), "what the app saw");

    // The refusals are recorded: 400s as bad_path with the raw path, 403s with the
    // normalized path and the rule.
    let records = requests(&pair.inbound, 2 * want.len() + 1);
    let bad = records.iter().find(|r| r["status"] == 400).unwrap();
    assert_eq!(bad["decision"], "deny", "{bad}");
    assert!(bad["reason"].as_str().unwrap().starts_with("bad_path"), "{bad}");
    for r in records.iter().filter(|r| r["status"] == 403) {
        let path = r["path"].as_str().unwrap().to_ascii_lowercase();
        let rule = if path.starts_with("/admin") {
            "no-admin"
        } else {
            "no-secret"
        };
        assert_eq!(r["rule"], rule, "{r}");
        assert!(
            path == "/admin" || path.starts_with("/admin/") || path.starts_with("/secret"),
            "403 records carry the normalized path: {r}"
        );
        assert!(!path.contains("/."), "{r}");
    }
    pair.inbound.assert_no_panic();
}

/// The Host header (or an h2 request's `host` when it has no `:authority`) names the authority
/// only: one carrying a path (`127.0.0.1/admin/x?`) must not turn the allowed `GET /public`
/// the policy saw into `GET /admin/x?/public` at the app. Straight to the inbound over HTTP/1.1
/// with an SVID, over h2c without `:authority` on a permissive listener, and via the outbound.
#[test]
fn a_host_header_cannot_change_the_path_the_policy_saw() {
    use http_body_util::{BodyExt as _, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let ids = ids();
    let app = HttpApp::spawn();
    let no_admin = "      - {name: no-admin, action: deny, paths: [\"/admin/**\"]}\n";
    let rules = format!("{}{no_admin}", allow_frontend());
    let plain_rules = "      - {name: anon, action: allow, unauthenticated: true}\n\
         \x20     - {name: no-admin-anon, action: deny, unauthenticated: true, paths: [\"/admin/**\"]}\n";
    let pair = start_pair(
        &ids,
        &[
            Route::http("backend", app.addr, &rules),
            Route {
                protocol: ("auto", "http"),
                extra: "    mtls: permissive\n",
                ..Route::http("plain", app.addr, plain_rules)
            },
        ],
    );
    let (inp, plain, out) = (pair.in_ports[0], pair.in_ports[1], pair.out_ports[0]);
    let hosts = ["127.0.0.1/admin/x?", "127.0.0.1/admin"];
    let mut statuses = Vec::new();
    for host in hosts {
        let header = format!("Host: {host}");
        for url in [
            format!("https://127.0.0.1:{inp}/public"),
            format!("http://127.0.0.1:{out}/public"),
        ] {
            let got = curl(&[
                "--http1.1",
                "-k",
                "--cert",
                ids.frontend.cert.to_str().unwrap(),
                "--key",
                ids.frontend.key.to_str().unwrap(),
                "-H",
                &header,
                &url,
            ]);
            statuses.push((host, url, got.status));
        }
    }
    // h2c on the permissive listener: no :authority, a `host` header instead.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(local(plain)).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        for host in hosts {
            let req = http::Request::get("/public")
                .header("host", host)
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            let status = match tokio::time::timeout(WAIT, send.send_request(req)).await.unwrap() {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let _ = resp.into_body().collect().await;
                    status
                }
                Err(_) => 0, // refused as malformed: fine
            };
            statuses.push((host, format!("h2c http://127.0.0.1:{plain}/public"), status));
        }
    });

    let seen: Vec<String> = app.seen().into_iter().map(|s| s.target).collect();
    assert!(
        !seen.iter().any(|t| t.starts_with("/admin")),
        "the policy allowed GET /public, but the app got {seen:?}; statuses: {statuses:?}"
    );
    for (host, url, status) in &statuses {
        assert!(
            matches!(status, 400 | 403 | 0),
            "Host {host:?} to {url}: want 400 (or 403), got {status}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Smuggling

/// Ambiguous framing from the app side is refused with 400 (or answered once and the
/// connection closed, as RFC 9112 §6.3 allows for Content-Length + chunked), and no request
/// hidden in a body ever reaches the app.
#[test]
fn request_smuggling_is_refused() {
    let (_ids, app, pair) = echo_pair(&[]);
    let out = pair.out_ports[0];
    let inner = |n: u32| format!("GET /smuggled-{n} HTTP/1.1\r\nHost: a\r\n\r\n");

    // Content-Length and chunked together: either refused, or read as chunked and then closed.
    let lenient: Vec<(u32, String)> = vec![
        (
            1,
            format!(
                "POST /s1 HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{}",
                inner(1)
            ),
        ),
        (2, {
            let hidden = inner(2);
            format!(
                "POST /s2 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\n",
                hidden.len()
            )
        }),
    ];
    // Refused outright.
    let strict: Vec<(u32, String)> = vec![
        (
            3,
            format!(
                "POST /s3 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 40\r\n\r\nhello{}",
                inner(3)
            ),
        ),
        (
            4,
            format!(
                "POST /s4 HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 40\r\n\r\nhello{}",
                inner(4)
            ),
        ),
        (
            5,
            format!(
                "POST /s5 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{}",
                inner(5)
            ),
        ),
        (
            6,
            format!(
                "POST /s6 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{}",
                inner(6)
            ),
        ),
        (
            7,
            format!(
                "POST /s7 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{}",
                inner(7)
            ),
        ),
        (
            8,
            format!(
                "POST /s8 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{}",
                inner(8)
            ),
        ),
        (
            9,
            format!(
                "POST /s9 HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{}",
                inner(9)
            ),
        ),
        (
            10,
            format!(
                "POST /s10 HTTP/1.1\r\nHost: a\r\nX-Pad: a\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{}",
                inner(10)
            ),
        ),
        (
            11,
            format!(
                "POST /s11 HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello{}",
                inner(11)
            ),
        ),
        (
            12,
            format!(
                "POST /s12 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: gzip\r\n\r\nhello{}",
                inner(12)
            ),
        ),
    ];
    for (n, attack) in &lenient {
        let (raw, closed) = raw_exchange(out, attack.as_bytes(), Duration::from_secs(2));
        let statuses = response_statuses(&raw);
        let text = String::from_utf8_lossy(&raw);
        assert!(
            statuses == [400] || (statuses == [200] && closed),
            "attack {n}: want 400, or one answer and a close; got {statuses:?} (closed: {closed}):\n{text}"
        );
        if statuses == [200] {
            assert!(text.contains("\"body_len\":"), "{text}");
        }
    }
    for (n, attack) in &strict {
        let (raw, closed) = raw_exchange(out, attack.as_bytes(), Duration::from_secs(2));
        let statuses = response_statuses(&raw);
        assert!(
            statuses == [400] || (statuses.is_empty() && closed),
            "attack {n}: want 400 (or a close), got {statuses:?} (closed: {closed}):\n{}",
            String::from_utf8_lossy(&raw)
        );
    }

    let seen = app.seen();
    for s in &seen {
        assert!(
            !s.target.starts_with("/smuggled"),
            "a smuggled request reached the app: {s:?}"
        );
        // The only requests that may arrive are the outer ones of the lenient cases, read as
        // chunked: /s1 with an empty body, /s2 with the hidden request as its body.
        match s.target.as_str() {
            "/s1" => assert_eq!(s.body_len, 0, "{s:?}"),
            "/s2" => assert_eq!(s.body_len, inner(2).len(), "{s:?}"),
            other => panic!("request {other} should have been refused: {s:?}"),
        }
    }

    // The pair still serves ordinary requests.
    let got = curl(&[&format!("http://127.0.0.1:{out}/after")]);
    assert_eq!(got.status, 200, "{got:?}");
    for w in [&pair.inbound, &pair.outbound] {
        w.assert_no_panic();
    }
}

// ---------------------------------------------------------------------------------------------
// protocol: auto

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

/// `--workers 1` runs each ward on one single-threaded event loop: both hops, the pooled
/// HTTP/2 link and the app pool still serve many concurrent HTTP/1.1 and h2c requests.
#[test]
fn one_worker_serves_concurrent_requests_on_both_hops() {
    let (_ids, app, pair) = echo_pair(&["--workers", "1"]);
    concurrent_http_through(&app, &pair);
    for ward in [&pair.inbound, &pair.outbound] {
        assert!(
            worker_run_times(ward).is_empty(),
            "one worker needs no worker threads"
        );
    }
}

/// `--workers 2`: each ward serves its connections on two event loops, the main thread's and
/// one worker thread's, each with its own links and app pool. The worker of both wards serves
/// (the outbound's two links to the inbound land on different event loops there), and SIGTERM
/// still drains and exits cleanly.
#[test]
fn two_workers_share_the_connections_and_drain() {
    let (_ids, app, mut pair) = echo_pair(&["--workers", "2"]);
    let before = [worker_run_times(&pair.inbound), worker_run_times(&pair.outbound)];
    concurrent_http_through(&app, &pair);
    let after = [worker_run_times(&pair.inbound), worker_run_times(&pair.outbound)];
    for ((side, before), after) in ["inbound", "outbound"].iter().zip(before).zip(after) {
        let names: Vec<&str> = after.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["ward-worker-1"],
            "{side}: one worker thread besides the main one"
        );
        // An idle worker sleeps in epoll_wait and runs no time at all.
        for ((name, t0), (_, t1)) in before.iter().zip(&after) {
            assert!(t1 > t0, "{side}: {name} served no connection ({t0} -> {t1} ns)");
        }
    }
    for ward in [&mut pair.outbound, &mut pair.inbound] {
        ward.signal("TERM");
        let status = ward
            .wait_exit(Duration::from_secs(10))
            .expect("ward exits after SIGTERM");
        assert!(status.success(), "{status:?}");
    }
}

/// 8 clients, half HTTP/1.1 and half h2c, 5 requests each, each on a new connection, through
/// the pair; every request reaches the app and is recorded by the inbound.
fn concurrent_http_through(app: &HttpApp, pair: &Pair) {
    let out = pair.out_ports[0];
    let threads: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let version = if i % 2 == 0 {
                    "--http1.1"
                } else {
                    "--http2-prior-knowledge"
                };
                for j in 0..5 {
                    let got = curl(&[version, &format!("http://127.0.0.1:{out}/echo/{i}/{j}")]);
                    assert_eq!(got.status, 200, "{got:?}");
                    assert_eq!(got.echo()["target"], format!("/echo/{i}/{j}"), "{got:?}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client thread failed");
    }
    assert_eq!(app.count(), 40);
    assert_eq!(requests(&pair.inbound, 40).len(), 40);
    pair.inbound.assert_no_panic();
    pair.outbound.assert_no_panic();
}

/// The `ward-worker-N` threads of a ward process and the CPU time each has run, in
/// nanoseconds (`/proc/PID/task/TID/schedstat`).
fn worker_run_times(ward: &Ward) -> Vec<(String, u64)> {
    let tasks = format!("/proc/{}/task", ward.pid());
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&tasks).expect("read the task list") {
        let dir = entry.expect("task entry").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if !comm.starts_with("ward-worker") {
            continue;
        }
        let path = dir.join("schedstat");
        let schedstat = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{} unreadable ({e}): this test needs a kernel with schedstats",
                path.display()
            )
        });
        let ns = schedstat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        out.push((comm.to_owned(), ns));
    }
    out.sort();
    out
}

/// TCP connections (IPv4) in `state` (`/proc/net/tcp` hex: 01 established, 06 time-wait)
/// whose remote end is `port`: the inbound's connections to the app.
fn sockets_to(port: u16, state: &str) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && f[3] == state
                && f[2]
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                    == Some(port)
        })
        .count()
}

/// A ward pair whose inbound forwards to `app` (HTTP, the frontend allowed).
fn pair_in_front_of(app: &App) -> (Ids, Pair) {
    let ids = ids();
    let pair = start_pair(&ids, &[Route::http("web", app.addr, &allow_frontend())]);
    (ids, pair)
}

/// A keep-alive HTTP/1.1 connection to the pair's outbound.
fn keep_alive_client(pair: &Pair) -> std::net::TcpStream {
    let client = std::net::TcpStream::connect(local(pair.out_ports[0])).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    client
}

/// `GET path` on `client`, and its response.
fn get_on(client: &mut std::net::TcpStream, path: &str) -> Option<HttpResponse> {
    use std::io::Write;
    client
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())
        .unwrap();
    read_response(client)
}

/// Two waves of 64 concurrent slow requests: the first opens an app connection for each, the
/// second reuses them; the inbound closes none in between (no churn under steady
/// concurrency, which a too-small idle pool would cause).
#[test]
fn repeated_bursts_reuse_app_connections() {
    let (_ids, app, pair) = echo_pair(&[]);
    let out = pair.out_ports[0];
    let wave = |w: usize| {
        let threads: Vec<_> = (0..64)
            .map(|i| {
                std::thread::spawn(move || {
                    let got = curl(&[&format!("http://127.0.0.1:{out}/burst/{w}/{i}?delay_ms=700")]);
                    assert_eq!(got.status, 200, "{got:?}");
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(400));
        let during = sockets_to(app.addr.port(), "01");
        for t in threads {
            t.join().expect("a client thread failed");
        }
        during
    };
    let first = wave(0);
    assert!(
        first > 32,
        "64 slow requests at once need many app connections, saw {first}"
    );
    std::thread::sleep(Duration::from_millis(200));
    wave(1);
    std::thread::sleep(Duration::from_millis(200));
    let closed = sockets_to(app.addr.port(), "06");
    assert_eq!(
        closed, 0,
        "the inbound closed {closed} app connections between bursts"
    );
    assert!(
        sockets_to(app.addr.port(), "01") >= first,
        "idle app connections were dropped"
    );
    assert_eq!(app.count(), 128);
    pair.inbound.assert_no_panic();
}

/// The inbound's keep-alive connections to an HTTP/1.1 app: reused after responses with a
/// body, a chunked body (with and without trailers) and no body; not reused after `Connection: close`; and a connection
/// the app closed while it sat idle costs the next request nothing (it goes on a new one).
#[test]
fn app_connections_are_reused_until_the_app_closes_them() {
    use std::io::Write;
    // Answers by path; closes a connection idle for 300 ms, as apps with a short keep-alive
    // timeout do (Node's default is 5 s).
    let app = App::spawn(|mut s, _| {
        let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
        let mut buf = Vec::new();
        while let Some(head) = read_request_head(&mut s, &mut buf) {
            let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
            let reply: &[u8] = match path.as_str() {
                "/no-content" => b"HTTP/1.1 204 No Content\r\n\r\n",
                "/empty" => b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                "/trailers" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n",
                "/close" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            };
            if s.write_all(reply).is_err() || path == "/close" {
                return;
            }
        }
    });
    let (_ids, pair) = pair_in_front_of(&app);
    let mut client = keep_alive_client(&pair);
    let mut get = |path: &str| {
        let r = get_on(&mut client, path).unwrap_or_else(|| panic!("no response to {path}"));
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    };

    for path in [
        "/a",
        "/b",
        "/no-content",
        "/no-content",
        "/empty",
        "/chunked",
        "/trailers",
        "/c",
    ] {
        let (status, body) = get(path);
        assert_eq!(status, if path == "/no-content" { 204 } else { 200 }, "{path}");
        if path == "/chunked" || path == "/trailers" {
            assert_eq!(body, "abc");
        }
    }
    assert_eq!(
        app.connections(),
        1,
        "one app connection for eight requests in a row"
    );

    // The app closes the idle connection; the next request still succeeds.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(get("/after-idle").0, 200);
    assert_eq!(app.connections(), 2);

    // `Connection: close` from the app: that connection is not used again.
    assert_eq!(get("/close").0, 200);
    assert_eq!(get("/d").0, 200);
    assert_eq!(get("/e").0, 200);
    assert_eq!(app.connections(), 3);

    let statuses: Vec<Value> = requests(&pair.inbound, 12)
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert!(statuses.iter().all(|s| s == 200 || s == 204), "{statuses:?}");
    pair.inbound.assert_no_panic();
}

/// The app closes a keep-alive connection just as a request arrives on it (its idle timeout
/// fired as the request was on the way): a GET without a body is sent again on a new
/// connection and the caller sees the app's answer; a POST, or a GET with a body, is not sent
/// twice (502).
#[test]
fn a_request_the_app_dropped_on_an_idle_connection_is_sent_again_only_if_safe() {
    use std::io::Write;
    use std::sync::Mutex;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    // Answers the first request on each connection; reads any later one whose path starts
    // with /race and closes without an answer.
    let app = App::spawn(move |mut s, _| {
        let mut buf = Vec::new();
        let mut first = true;
        while let Some(head) = read_request_head(&mut s, &mut buf) {
            let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
            log.lock().unwrap().push(path.clone());
            if !first && path.starts_with("/race") {
                return;
            }
            first = false;
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .is_err()
            {
                return;
            }
        }
    });
    let (_ids, pair) = pair_in_front_of(&app);
    let mut client = keep_alive_client(&pair);
    let mut send = |req: &str| {
        client.write_all(req.as_bytes()).unwrap();
        read_response(&mut client).map(|r| r.status)
    };
    let times = |path: &str| seen.lock().unwrap().iter().filter(|p| *p == path).count();

    assert_eq!(send("GET /warm HTTP/1.1\r\nHost: app\r\n\r\n"), Some(200));
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(send("GET /race-get HTTP/1.1\r\nHost: app\r\n\r\n"), Some(200));
    assert_eq!(
        times("/race-get"),
        2,
        "sent on the idle connection, then on a new one"
    );
    assert_eq!(app.connections(), 2);

    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        send("POST /race-post HTTP/1.1\r\nHost: app\r\nContent-Length: 1\r\n\r\nx"),
        Some(502)
    );
    assert_eq!(times("/race-post"), 1, "a POST is never sent twice");

    // A GET with a body: a new connection, answered; then the race on it once idle.
    let mut client = keep_alive_client(&pair);
    assert_eq!(get_on(&mut client, "/warm-again").map(|r| r.status), Some(200));
    std::thread::sleep(Duration::from_millis(800));
    client
        .write_all(b"GET /race-body HTTP/1.1\r\nHost: app\r\nContent-Length: 1\r\n\r\nx")
        .unwrap();
    assert_eq!(read_response(&mut client).map(|r| r.status), Some(502));
    assert_eq!(
        times("/race-body"),
        1,
        "a request with a body is never sent twice"
    );

    let statuses: Vec<Value> = requests(&pair.inbound, 5)
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert_eq!(statuses, [200, 200, 502, 200, 502], "{statuses:?}");
    pair.inbound.assert_no_panic();
}

/// The app says `Keep-Alive: timeout=2`: the inbound stops using the connection before those
/// two seconds are up, and closes it itself, so no request goes out on a connection the app
/// is about to close. (This app would drop a request arriving after its timeout instead of
/// answering it.)
#[test]
fn the_app_keep_alive_timeout_is_honoured() {
    use std::io::Write;
    use std::time::Instant;
    let closed_by_ward = Arc::new(AtomicUsize::new(0));
    let closed = closed_by_ward.clone();
    let app = App::spawn(move |mut s, _| {
        let mut buf = Vec::new();
        let mut last = Instant::now();
        while let Some(_head) = read_request_head(&mut s, &mut buf) {
            if last.elapsed() >= Duration::from_secs(2) {
                return;
            }
            let reply = b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=2\r\nContent-Length: 2\r\n\r\nok";
            if s.write_all(reply).is_err() {
                return;
            }
            last = Instant::now();
        }
        closed.fetch_add(1, Ordering::SeqCst);
    });
    let (_ids, pair) = pair_in_front_of(&app);
    let mut client = keep_alive_client(&pair);
    let mut get = |path: &str| get_on(&mut client, path).map(|r| r.status);
    assert_eq!(get("/a"), Some(200));
    assert_eq!(get("/b"), Some(200));
    let answered = Instant::now();
    assert_eq!(app.connections(), 1);
    // ward keeps it for 1 s (the app's 2 s less a second of margin), then closes it.
    while closed_by_ward.load(Ordering::SeqCst) == 0 && answered.elapsed() < Duration::from_millis(1900) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        closed_by_ward.load(Ordering::SeqCst),
        1,
        "the inbound closes the connection before the app's timeout"
    );
    assert!(
        answered.elapsed() >= Duration::from_millis(500),
        "closed too early"
    );
    assert_eq!(get("/c"), Some(200));
    assert_eq!(app.connections(), 2, "a new connection, not the expiring one");
    pair.inbound.assert_no_panic();
}

/// A keep-alive connection from the app that stays quiet past the second after which ward
/// parks it (hyper's buffers given back) is served as before: the same connection, each
/// request once, one access record with every byte.
#[test]
fn a_keep_alive_connection_quiet_past_parking_is_served_as_before() {
    use std::io::Write;
    let app = App::spawn(move |mut s, _| {
        let mut buf = Vec::new();
        while read_request_head(&mut s, &mut buf).is_some() {
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .is_err()
            {
                return;
            }
        }
    });
    let (_ids, pair) = pair_in_front_of(&app);
    let mut client = keep_alive_client(&pair);
    for path in ["/a", "/b", "/c"] {
        let r = get_on(&mut client, path);
        assert_eq!(r.map(|r| r.status), Some(200), "{path}");
        std::thread::sleep(Duration::from_millis(2500));
    }
    drop(client);
    let access = pair
        .outbound
        .wait_record("the client connection's access record", |r| {
            r["kind"] == "access" && r["listener"] == "web"
        });
    let request = "GET /a HTTP/1.1\r\nHost: app\r\n\r\n".len();
    assert_eq!(access["bytes_in"], 3 * request, "{access}");
    assert_eq!(access["reason"], "closed", "{access}");
    let records = pair.outbound.records();
    let requests = records.iter().filter(|r| r["kind"] == "request").count();
    let accesses = records.iter().filter(|r| r["kind"] == "access").count();
    assert_eq!((requests, accesses), (3, 1), "{records:?}");
    pair.outbound.assert_no_panic();
}

/// The app answers an upload before reading its body (as a 401 or 413 would), and the upload
/// then stalls: the connection it is on is still busy sending, so another request must not
/// wait for it; it gets another app connection at once.
#[test]
fn a_request_does_not_wait_behind_an_upload_the_app_answered_early() {
    use std::io::{Read, Write};
    use std::time::Instant;
    let app = App::spawn(|mut s, _| {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        while let Some(head) = read_request_head(&mut s, &mut buf) {
            let head = head.to_ascii_lowercase();
            // Answer first, then read (and drop) whatever body the request has.
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .is_err()
            {
                return;
            }
            let mut body: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while body > 0 {
                let n = if buf.is_empty() {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            buf.extend_from_slice(&chunk[..n]);
                            continue;
                        }
                    }
                } else {
                    buf.len().min(body)
                };
                buf.drain(..n);
                body -= n;
            }
        }
    });
    let ids = ids();
    let pair = start_pair(&ids, &[Route::http("web", app.addr, &allow_frontend())]);
    let out = pair.out_ports[0];
    let get = |path: &str| {
        let mut c = std::net::TcpStream::connect(local(out)).unwrap();
        c.set_read_timeout(Some(WAIT)).unwrap();
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())
            .unwrap();
        read_response(&mut c).map(|r| r.status)
    };
    // Warm the pair and leave one idle app connection.
    assert_eq!(get("/warm"), Some(200));

    let uploader = std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(local(out)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 20\r\n\r\n0123456789")
            .unwrap();
        std::thread::sleep(Duration::from_secs(4));
        c.write_all(b"0123456789").unwrap();
        read_response(&mut c).map(|r| r.status)
    });
    std::thread::sleep(Duration::from_millis(700));
    let started = Instant::now();
    assert_eq!(get("/meanwhile"), Some(200));
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(2),
        "a request waited {waited:?} behind a stalled upload on a pooled app connection"
    );
    assert_eq!(uploader.join().unwrap(), Some(200));
    pair.inbound.assert_no_panic();
}
