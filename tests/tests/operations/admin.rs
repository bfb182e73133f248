//! The admin server's endpoints, and the Prometheus metrics counting real traffic.

use serde_json::json;
use ward_certs::SpiffeId;

use super::*;

fn rfc3339(unix: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(unix).unwrap();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Every admin endpoint answers with what it should, and the `ward_` families count the
/// traffic that really went through: allowed and denied HTTP requests, a TCP echo of a known
/// size, a plaintext peer and a peer without a client certificate.
#[test]
fn admin_endpoints_and_metrics_count_real_traffic() {
    let ids = ids();
    let http_app = HttpApp::spawn();
    let echo = App::echo();
    let (web_in, raw_in, admin_in) = (free_port(), free_port(), free_port());
    let (web_out, raw_out, admin_out) = (free_port(), free_port(), free_port());

    let body = format!(
        "{}{}drain_timeout: 7s\ninbound:\n  - name: web\n    listen: 127.0.0.1:{web_in}\n    forward: {}\n    protocol: http\n    policy: web\n{}policies:\n  web:\n    default: deny\n    rules:\n      - {{name: no-admin, action: deny, paths: [\"/admin/**\"]}}\n      - {{name: reads, action: allow, from: [\"{FRONTEND}\"], methods: [GET]}}\n{}",
        identity_yaml(&ids.backend, &[]),
        admin_yaml(admin_in),
        http_app.addr,
        tcp_inbound("raw", raw_in, echo.addr, "    max_connections: 50\n"),
        policy("raw", &[("frontend", FRONTEND)]),
    );
    let inbound = Ward::start(&body, &[web_in, raw_in, admin_in]);
    let body = format!(
        "{}{}outbound:\n  - name: web\n    listen: 127.0.0.1:{web_out}\n    forward: 127.0.0.1:{web_in}\n    protocol: http\n    server_id: \"{BACKEND}\"\n  - name: raw\n    listen: 127.0.0.1:{raw_out}\n    forward: 127.0.0.1:{raw_in}\n    protocol: tcp\n    server_id: \"{BACKEND}\"\n",
        identity_yaml(&ids.frontend, &[]),
        admin_yaml(admin_out),
    );
    let outbound = Ward::start(&body, &[web_out, raw_out, admin_out]);

    // /live, /ready
    for (path, text) in [("/live", "live"), ("/ready", "ready")] {
        let r = admin_get(admin_in, path);
        assert_eq!((r.status, r.text().trim()), (200, text), "{path}");
    }

    // /identity: the SVID in use, as the certificate says.
    let leaf = ward_certs::svid::check_leaf(&ids.backend.der).unwrap();
    let r = admin_get(admin_in, "/identity");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let identity = r.json();
    for (field, want) in [
        ("spiffe_id", json!(BACKEND)),
        ("serial", json!(ids.backend.serial)),
        ("not_before", json!(rfc3339(leaf.not_before))),
        ("not_after", json!(rfc3339(leaf.not_after))),
        ("trust_domains", json!(["example.org"])),
    ] {
        assert_eq!(identity[field], want, "{field}: {identity}");
    }

    // /config: the effective config, defaults filled in, paths but no key material.
    let r = admin_get(admin_in, "/config");
    assert_eq!(r.status, 200, "{}", r.text());
    let config = r.json();
    assert_eq!(config["drain_timeout"], "7s", "{config}");
    assert_eq!(config["handshake_timeout"], "2s", "{config}");
    assert_eq!(
        config["admin"]["listen"],
        format!("127.0.0.1:{admin_in}"),
        "{config}"
    );
    assert_eq!(names(&config["inbound"]), ["web", "raw"], "{config}");
    assert_eq!(config["inbound"][1]["max_connections"], 50, "{config}");
    assert_eq!(config["inbound"][0]["protocol"], "http", "{config}");
    assert_eq!(
        config["identity"]["files"]["key"],
        ids.backend.key.display().to_string(),
        "the key is named by its path: {config}"
    );
    let key_pem = std::fs::read_to_string(&ids.backend.key).unwrap();
    let key_body = key_pem.lines().nth(1).unwrap();
    assert!(
        !r.text().contains("PRIVATE KEY") && !r.text().contains(key_body),
        "/config leaks key material:\n{}",
        r.text()
    );

    // /policy: the policies by name, rules in order.
    let r = admin_get(admin_in, "/policy");
    assert_eq!(r.status, 200, "{}", r.text());
    let policies = r.json();
    assert_eq!(
        names(&policies["web"]["rules"]),
        ["no-admin", "reads"],
        "{policies}"
    );
    assert_eq!(names(&policies["raw"]["rules"]), ["frontend"], "{policies}");
    assert_eq!(policies["web"]["default"], "deny", "{policies}");

    // Unknown paths and wrong methods (GET /shutdown must not drain).
    for (method, path, status) in [
        ("GET", "/nope", 404),
        ("GET", "/shutdown", 405),
        ("POST", "/ready", 405),
    ] {
        assert_eq!(
            http_request(admin_in, method, path).status,
            status,
            "{method} {path}"
        );
    }

    // Real traffic: 3 allowed reads, a denied path, a method no rule allows.
    for i in 0..3 {
        let r = http_request(web_out, "GET", &format!("/api/{i}"));
        assert_eq!(r.status, 200, "GET /api/{i}: {}", r.text());
    }
    assert_eq!(http_request(web_out, "GET", "/admin/x").status, 403);
    assert_eq!(http_request(web_out, "POST", "/api/0").status, 403);
    assert_eq!(http_app.count(), 3, "only the allowed requests reach the app");
    // A TCP echo of a known size.
    let payload = random_bytes(7, 1000);
    assert_eq!(exchange(raw_out, &payload), payload);
    // A plaintext peer on the TLS port, and a TLS peer without a client certificate.
    let (_, closed) = raw_exchange(raw_in, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", WAIT);
    assert!(closed, "a plaintext peer must be cut");
    inbound.wait_handshake_deny(0, "not_tls");
    s_client_once(web_in, None, &ids.pki.bundle_path());
    inbound.wait_record("no_client_cert", |r| {
        r["kind"] == "handshake"
            && r["reason"]
                .as_str()
                .unwrap_or_default()
                .starts_with("no_client_cert")
    });

    let raw = [("listener", "raw"), ("direction", "inbound")];
    let m = wait_metrics(admin_in, "the raw listener's connections closed", |m| {
        m.value("ward_connections_closed_total", &raw) >= 2.0
    });
    // Every family the issue names is exported under its ward_ name.
    for family in [
        "connections_opened",
        "connections_closed",
        "connections_active",
        "bytes_received",
        "bytes_sent",
        "connections_refused_overload",
        "handshake_failures",
        "authz_decisions",
        "request_duration_seconds",
        "identity_expiry_timestamp_seconds",
        "identity_rotations",
        "audit_records_dropped",
    ] {
        assert!(
            m.text.contains(&format!("# TYPE ward_{family} ")),
            "no ward_{family} family in /metrics:\n{}",
            m.text
        );
    }
    // Exact values: a family, labels its samples must carry, and the sum of those samples.
    type Want<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);
    let web = [("listener", "web"), ("direction", "inbound")];
    let want: &[Want<'_>] = &[
        // Connections by listener and direction: the echo and the plaintext peer.
        ("ward_connections_opened_total", &raw, 2.0),
        ("ward_connections_closed_total", &raw, 2.0),
        ("ward_connections_active", &raw, 0.0),
        // Bytes each way: exactly the echo.
        ("ward_bytes_received_total", &raw, 1000.0),
        ("ward_bytes_sent_total", &raw, 1000.0),
        ("ward_connections_refused_overload_total", &raw, 0.0),
        // Handshake failures by reason.
        (
            "ward_handshake_failures_total",
            &[
                ("listener", "raw"),
                ("direction", "inbound"),
                ("reason", "not_tls"),
            ],
            1.0,
        ),
        (
            "ward_handshake_failures_total",
            &[("listener", "web"), ("reason", "no_client_cert")],
            1.0,
        ),
        // Authz decisions by listener, rule and decision.
        (
            "ward_authz_decisions_total",
            &[("listener", "web"), ("rule", "reads"), ("decision", "allow")],
            3.0,
        ),
        (
            "ward_authz_decisions_total",
            &[("listener", "web"), ("rule", "no-admin"), ("decision", "deny")],
            1.0,
        ),
        (
            "ward_authz_decisions_total",
            &[("listener", "web"), ("rule", "default"), ("decision", "deny")],
            1.0,
        ),
        (
            "ward_authz_decisions_total",
            &[("listener", "raw"), ("rule", "frontend"), ("decision", "allow")],
            1.0,
        ),
        // Request durations: one observation per request, allowed or denied.
        ("ward_request_duration_seconds_count", &web, 5.0),
        (
            "ward_request_duration_seconds_bucket",
            &[("listener", "web"), ("le", "+Inf")],
            5.0,
        ),
        // The identity: its expiry, and one applied rotation (the first load).
        (
            "ward_identity_expiry_timestamp_seconds",
            &[],
            leaf.not_after as f64,
        ),
        ("ward_identity_rotations_total", &[("result", "applied")], 1.0),
        ("ward_audit_records_dropped_total", &[], 0.0),
    ];
    for &(name, labels, value) in want {
        assert_eq!(m.get(name, labels), Some(value), "{name} {labels:?}:\n{}", m.text);
    }
    // The request durations' sum is above zero.
    assert!(
        m.value("ward_request_duration_seconds_sum", &web) > 0.0,
        "{}",
        m.text
    );

    // The outbound side counts the same traffic from its end.
    let m = wait_metrics(admin_out, "the outbound's connections closed", |m| {
        m.value("ward_connections_closed_total", &[("listener", "web")]) >= 5.0
            && m.value("ward_connections_closed_total", &[("listener", "raw")]) >= 1.0
    });
    let raw = [("listener", "raw"), ("direction", "outbound")];
    let web = [("listener", "web"), ("direction", "outbound")];
    let server_rule = format!("server_id {BACKEND}");
    let want: &[Want<'_>] = &[
        ("ward_connections_opened_total", &raw, 1.0),
        ("ward_bytes_received_total", &raw, 1000.0),
        ("ward_bytes_sent_total", &raw, 1000.0),
        ("ward_connections_opened_total", &web, 5.0),
        ("ward_connections_active", &web, 0.0),
        ("ward_request_duration_seconds_count", &web, 5.0),
        (
            "ward_authz_decisions_total",
            &[("listener", "raw"), ("rule", &server_rule), ("decision", "allow")],
            1.0,
        ),
    ];
    for &(name, labels, value) in want {
        assert_eq!(m.get(name, labels), Some(value), "{name} {labels:?}:\n{}", m.text);
    }
    inbound.assert_no_panic();
    outbound.assert_no_panic();
}

/// HTTP traffic is counted in `ward_bytes_received_total` / `ward_bytes_sent_total` too:
/// the bytes of the connection each way, request and response heads included.
#[test]
fn http_traffic_counts_bytes_each_way() {
    let ids = ids();
    let app = HttpApp::spawn();
    let (port, admin) = (free_port(), free_port());
    let body = format!(
        "{}{}inbound:\n  - name: web\n    listen: 127.0.0.1:{port}\n    forward: {}\n    protocol: http\n    mtls: permissive\n    handshake_timeout: 300ms\n    policy: web\npolicies:\n  web:\n    default: deny\n    rules:\n      - {{name: anyone, action: allow, unauthenticated: true}}\n",
        identity_yaml(&ids.backend, &[]),
        admin_yaml(admin),
        app.addr
    );
    let _ward = Ward::start(&body, &[port, admin]);
    let r = http_request(port, "GET", "/x");
    assert_eq!(r.status, 200, "{}", r.text());
    let web = [("listener", "web"), ("direction", "inbound")];
    let m = wait_metrics(admin, "the request's access", |m| {
        m.value("ward_connections_closed_total", &web) >= 1.0
    });
    assert!(m.value("ward_bytes_received_total", &web) > 0.0, "{}", m.text);
    assert!(
        m.value("ward_bytes_sent_total", &web) >= r.body.len() as f64,
        "{}",
        m.text
    );
}

/// `/ready` says why not until a valid identity has loaded (the admin server is up first);
/// `/live` answers all along; then the identity and readiness appear.
#[test]
fn ready_only_once_an_identity_has_loaded() {
    let pki = Pki::new("example.org");
    let id = SpiffeId::parse(BACKEND).unwrap();
    let mut params = ward_certs::devca::svid_params(&id).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(2);
    params.not_after = now - time::Duration::hours(1);
    let expired = pki.ca.sign(&params).unwrap();
    let mut volume = AtomicDir::new(&pki.dir.path().join("volume"), &svid_dir_files(&pki, &expired));
    let app = App::echo();
    let (port, admin) = (free_port(), free_port());
    let body = format!(
        "identity:\n  files:\n    dir: {}\n{}inbound:\n{}policies:\n{}",
        volume.dir.display(),
        admin_yaml(admin),
        tcp_inbound("backend", port, app.addr, ""),
        policy("backend", &[("frontend", FRONTEND)])
    );
    let ward = Ward::start(&body, &[admin]);
    ward.wait_stderr("expired", WAIT);
    assert_eq!(admin_get(admin, "/live").status, 200);
    let r = admin_get(admin, "/ready");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("no identity"), "{}", r.text());
    assert_eq!(admin_get(admin, "/identity").status, 503);
    assert!(!is_listening(port), "listening without an identity");
    let m = Metrics::scrape(admin);
    assert_eq!(
        m.get("ward_identity_rotations_total", &[("result", "expired")]),
        Some(1.0),
        "{}",
        m.text
    );

    let good = pki.ca.issue(&id, Duration::from_secs(3600)).unwrap();
    volume.swap(&svid_dir_files(&pki, &good));
    let deadline = Instant::now() + WAIT;
    while admin_get(admin, "/ready").status != 200 {
        assert!(Instant::now() < deadline, "never ready:\n{}", ward.stderr());
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(is_listening(port), "ready but not listening");
    let serial = ward_certs::svid::check_leaf(&good.chain[0]).unwrap().serial;
    assert_eq!(admin_get(admin, "/identity").json()["serial"], serial.as_str());
    let m = Metrics::scrape(admin);
    assert_eq!(
        m.get("ward_identity_rotations_total", &[("result", "applied")]),
        Some(1.0),
        "{}",
        m.text
    );
}
