//! Per-request policy: methods, paths and headers (deny wins), path spellings that try to
//! slip past a deny rule, and a Host header that tries to change the path.

use std::collections::BTreeMap;

use super::*;

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
    for (case, opts, path, status, rule) in cases {
        let url = format!("http://127.0.0.1:{out}{path}");
        let header = format!("x-case: {case}");
        let mut args: Vec<&str> = opts.to_vec();
        args.extend(["-H", &header, &url]);
        let got = curl(&args);
        assert_eq!(got.status, *status, "{case}: {got:?}");
        if *status == 403 {
            // A short text body naming the reason and the rule.
            let want = match rule {
                Some(rule) => format!("ward: access denied: deny_rule (rule {rule:?})\n"),
                None => "ward: access denied: default_deny\n".to_owned(),
            };
            assert_eq!(got.body, want, "{case}");
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
