//! Clients through the pair: curl over HTTP/1.1 and h2c to the outbound, h2 over mTLS
//! straight to the inbound, and the XFCC header the app sees.

use serde_json::json;

use super::*;

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
    for (field, want) in [
        ("method", json!("POST")),
        // The query is not part of the path.
        ("path", json!("/echo/one")),
        ("authority", json!("api.internal:8080")),
        ("status", json!(200)),
        ("decision", json!("allow")),
        ("rule", json!("frontend")),
        ("peer_id", json!(FRONTEND)),
        ("peer_serial", json!(ids.frontend.serial)),
        ("listener", json!("backend")),
        ("direction", json!("inbound")),
        // Request body bytes, then response body bytes.
        ("bytes_in", json!(1000)),
        ("bytes_out", json!(got.body.len())),
    ] {
        assert_eq!(post[field], want, "{field}: {post}");
    }
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
    for (field, want) in [
        ("listener", json!("backend")),
        ("direction", json!("outbound")),
        // The server's ID.
        ("peer_id", json!(BACKEND)),
        ("method", json!("POST")),
        ("path", json!("/echo/one")),
        ("status", json!(200)),
        ("bytes_in", json!(1000)),
        ("bytes_out", json!(got.body.len())),
    ] {
        assert_eq!(post[field], want, "{field}: {post}");
    }
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
/// SVID that no request could be allowed for gets 403 for each request.
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

    // The intruder's SVID is valid, but nothing is allowed for it: the handshake completes
    // and each request is answered 403, naming the reason, with a record per request.
    let seen = inbound.records().len();
    let got = curl(&[
        "--http2",
        "-k",
        "--cert",
        intruder.cert.to_str().unwrap(),
        "--key",
        intruder.key.to_str().unwrap(),
        &format!("https://127.0.0.1:{p1}/intrude"),
    ]);
    assert_eq!((got.status, got.version.as_str()), (403, "2"), "{got:?}");
    assert_eq!(got.body, "ward: access denied: default_deny\n");
    let deny = inbound.wait_record_after(seen, "deny for the intruder", |r| r["decision"] == "deny");
    assert_eq!(deny["peer_id"], INTRUDER, "{deny}");
    assert_eq!(
        (&deny["kind"], &deny["path"], &deny["status"]),
        (&"request".into(), &"/intrude".into(), &403.into()),
        "{deny}"
    );
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
