//! Hot reload: SIGHUP and a changed config file apply a new config (or refuse a broken one),
//! and live connections are re-checked after a reload, a bundle change or at
//! `max_connection_lifetime`.

use std::net::TcpListener;

use ward_certs::SpiffeId;

use super::*;

/// Whether an exchange through `port` gets its echo back (an allowed peer) or nothing (denied).
fn echoes(port: u16, msg: &[u8]) -> bool {
    let got = exchange(port, msg);
    assert!(
        got.is_empty() || got == msg,
        "neither an echo nor a refusal: {:?}",
        String::from_utf8_lossy(&got)
    );
    got == msg
}

/// SIGHUP applies a new policy; a broken config (bad YAML, an unknown policy) and one that
/// cannot be applied (a listener on a port in use) are refused with a log line and a metric
/// while the last good config keeps serving; a good config after them is taken.
#[test]
fn sighup_applies_a_new_policy_refuses_broken_ones_and_takes_a_good_one_after() {
    let pki = Pki::new("example.org");
    let backend = pki.issue("backend", BACKEND);
    let frontend = pki.issue("frontend", FRONTEND);
    let intruder = pki.issue("intruder", INTRUDER);
    let app = App::echo();
    let (port, admin) = (free_port(), free_port());
    let config = |allow: &[(&str, &str)], extra_listener: &str| {
        format!(
            "{}{}inbound:\n{}{extra_listener}policies:\n{}",
            identity_yaml(&backend, &[]),
            admin_yaml(admin),
            tcp_inbound("backend", port, app.addr, ""),
            policy("backend", allow)
        )
    };
    let mut inbound = Ward::start(&config(&[("frontend", FRONTEND)], ""), &[port, admin]);
    let (_f, front) = start_outbound(&frontend, port, BACKEND, &[]);
    let (_i, intr) = start_outbound(&intruder, port, BACKEND, &[]);
    assert!(echoes(front, b"f1"));
    assert!(!echoes(intr, b"i1"));
    let reloads =
        |result: &str| Metrics::scrape(admin).value("ward_config_reloads_total", &[("result", result)]);

    // A new policy: the intruder in, the frontend out.
    inbound.rewrite(&config(&[("intruder", INTRUDER)], ""));
    inbound.signal("HUP");
    wait_metrics(admin, "an applied reload", |m| {
        m.value("ward_config_reloads_total", &[("result", "applied")]) >= 1.0
    });
    assert!(echoes(intr, b"i2"), "the new policy allows the intruder");
    assert!(!echoes(front, b"f2"), "the new policy denies the frontend");
    assert_eq!(
        names(&admin_get(admin, "/policy").json()["backend"]["rules"]),
        ["intruder"]
    );
    let applied = reloads("applied");

    // Broken YAML.
    let skip = inbound.stderr().len();
    inbound.rewrite_raw("identity: [this is not\n  valid: yaml\n");
    inbound.signal("HUP");
    wait_metrics(admin, "an invalid reload", |m| {
        m.value("ward_config_reloads_total", &[("result", "invalid")]) >= 1.0
    });
    assert!(
        inbound.stderr()[skip..].contains("config reload refused"),
        "no log line for the refused config:\n{}",
        inbound.stderr()
    );
    // A listener naming a policy that does not exist.
    let invalid_before = reloads("invalid");
    let mut broken = config(&[("frontend", FRONTEND)], "");
    broken = broken.replace("    policy: backend\n", "    policy: nosuch\n");
    inbound.rewrite(&broken);
    inbound.signal("HUP");
    wait_metrics(admin, "a second invalid reload", |m| {
        m.value("ward_config_reloads_total", &[("result", "invalid")]) > invalid_before
    });
    // Valid, but a new listener's port is taken: refused whole, nothing half-applied.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let clash = tcp_inbound("extra", taken_port, app.addr, "").replace("policy: extra", "policy: backend");
    inbound.rewrite(&config(&[("frontend", FRONTEND)], &clash));
    inbound.signal("HUP");
    wait_metrics(admin, "a refused reload", |m| {
        m.value("ward_config_reloads_total", &[("result", "refused")]) >= 1.0
    });
    // The last good config still serves, unchanged.
    assert!(echoes(intr, b"i3"), "the last good policy keeps serving");
    assert!(
        !echoes(front, b"f3"),
        "the refused configs' policy was not applied"
    );
    assert_eq!(
        names(&admin_get(admin, "/policy").json()["backend"]["rules"]),
        ["intruder"]
    );
    assert_eq!(reloads("applied"), applied, "a broken config counted as applied");
    inbound.assert_alive();

    // A good config after the broken ones is taken.
    drop(taken);
    inbound.rewrite(&config(&[("frontend", FRONTEND), ("intruder", INTRUDER)], ""));
    inbound.signal("HUP");
    wait_metrics(admin, "the good reload", |m| {
        m.value("ward_config_reloads_total", &[("result", "applied")]) > applied
    });
    assert!(echoes(front, b"f4"));
    assert!(echoes(intr, b"i4"));
    assert_eq!(
        names(&admin_get(admin, "/policy").json()["backend"]["rules"]),
        ["frontend", "intruder"]
    );
    inbound.assert_no_panic();
}

/// An opaque TCP connection allowed before a reload is closed, with an audit record, when the
/// new policy (here picked up from the changed config file, no signal) denies its peer; a
/// connection the new policy still allows carries on. HTTP is asked per request: a request in
/// flight at the reload finishes, the next one on the same connections gets 403.
#[test]
fn a_live_connection_the_reloaded_policy_denies_is_closed_with_a_record() {
    let ids = ids();
    let payments = ids.pki.issue("payments", PAYMENTS);
    let echo = App::echo();
    let http_app = HttpApp::spawn();
    let (raw, web, admin) = (free_port(), free_port(), free_port());
    let config = |raw_allow: &[(&str, &str)], web_allow: &[(&str, &str)]| {
        format!(
            "{}{}inbound:\n{}  - name: web\n    listen: 127.0.0.1:{web}\n    forward: {}\n    protocol: http\n    policy: web\npolicies:\n{}{}",
            identity_yaml(&ids.backend, &[]),
            admin_yaml(admin),
            tcp_inbound("raw", raw, echo.addr, ""),
            http_app.addr,
            policy("raw", raw_allow),
            policy("web", web_allow)
        )
    };
    let inbound = Ward::start(
        &config(
            &[("frontend", FRONTEND), ("payments", PAYMENTS)],
            &[("frontend", FRONTEND)],
        ),
        &[raw, web, admin],
    );
    let (f_raw, f_web, p_raw) = (free_port(), free_port(), free_port());
    let body = format!(
        "{}outbound:\n  - name: raw\n    listen: 127.0.0.1:{f_raw}\n    forward: 127.0.0.1:{raw}\n    protocol: tcp\n    server_id: \"{BACKEND}\"\n  - name: web\n    listen: 127.0.0.1:{f_web}\n    forward: 127.0.0.1:{web}\n    protocol: http\n    server_id: \"{BACKEND}\"\n",
        identity_yaml(&ids.frontend, &[]),
    );
    let _frontend = Ward::start(&body, &[f_raw, f_web]);
    let body = format!(
        "{}{}",
        identity_yaml(&payments, &[]),
        outbound_yaml("raw", p_raw, local(raw), BACKEND)
    );
    let _payments = Ward::start(&body, &[p_raw]);

    let mut front_live = open_live(f_raw, b"frontend before\n");
    let mut pay_live = open_live(p_raw, b"payments before\n");
    // A keep-alive HTTP connection from the app; its requests ride the pooled HTTP/2 mTLS
    // connection between the sidecars.
    let mut http_live = TcpStream::connect(local(f_web)).unwrap();
    http_live.set_read_timeout(Some(WAIT)).unwrap();
    http_live
        .write_all(b"GET /before HTTP/1.1\r\nHost: app\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut http_live).unwrap().status, 200);
    // A request the app answers slowly, in flight across the reload.
    let mut http_slow = TcpStream::connect(local(f_web)).unwrap();
    http_slow.set_read_timeout(Some(WAIT)).unwrap();
    http_slow
        .write_all(b"GET /slow?delay_ms=2500 HTTP/1.1\r\nHost: app\r\n\r\n")
        .unwrap();
    wait_until("the slow request reaches the app", WAIT, || http_app.count() == 2);
    let skip = inbound.records().len();

    // The new policy, from the file alone: payments only on raw, nobody on web.
    inbound.rewrite(&config(&[("payments", PAYMENTS)], &[]));
    let revoked_raw = inbound.wait_record_after(skip, "the frontend's TCP connection revoked", |r| {
        r["listener"] == "raw" && r["reason"].as_str().unwrap_or_default().starts_with("revoked_")
    });
    assert_eq!(revoked_raw["decision"], "deny", "{revoked_raw}");
    assert_eq!(revoked_raw["peer_id"], FRONTEND, "{revoked_raw}");
    assert_eq!(
        revoked_raw["peer_serial"],
        ids.frontend.serial.as_str(),
        "{revoked_raw}"
    );
    assert!(
        revoked_raw["reason"]
            .as_str()
            .unwrap()
            .starts_with("revoked_policy"),
        "{revoked_raw}"
    );
    wait_closed(&mut front_live, WAIT);
    // Only the frontend's TCP connection was revoked: no HTTP connection is.
    let revoked: Vec<Value> = inbound
        .records()
        .into_iter()
        .skip(skip)
        .filter(|r| r["reason"].as_str().unwrap_or_default().starts_with("revoked_"))
        .collect();
    assert!(
        revoked
            .iter()
            .all(|r| r["peer_id"] == FRONTEND && r["listener"] == "raw"),
        "{revoked:?}"
    );
    ping(&mut pay_live, b"payments after\n");
    // The request in flight at the reload finishes.
    let slow = read_response(&mut http_slow).unwrap();
    assert_eq!(slow.status, 200, "the in-flight request: {slow:?}");
    // The next HTTP request, on the same app connection and the same pooled connection
    // between the sidecars, gets the new policy's answer: 403, and a record per request.
    http_live
        .write_all(b"GET /after HTTP/1.1\r\nHost: app\r\n\r\n")
        .unwrap();
    let after = read_response(&mut http_live).unwrap();
    assert_eq!(after.status, 403, "{after:?}");
    assert_eq!(after.text(), "ward: access denied: default_deny\n");
    let denied = inbound.wait_record_after(skip, "the frontend's next request denied", |r| {
        r["listener"] == "web" && r["kind"] == "request" && r["path"] == "/after"
    });
    assert_eq!(denied["decision"], "deny", "{denied}");
    assert_eq!(denied["status"], 403, "{denied}");
    assert!(
        denied["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("default_deny"),
        "{denied}"
    );
    assert_eq!(http_app.count(), 2, "nothing reached the app after the reload");
    let m = Metrics::scrape(admin);
    assert_eq!(
        m.get("ward_config_reloads_total", &[("result", "applied")]),
        Some(1.0),
        "{}",
        m.text
    );
    inbound.assert_no_panic();
}

/// When the trust bundle changes so that a live connection's peer no longer validates, the
/// connection is closed with a `revoked_…` record; a connection older than
/// `max_connection_lifetime` is closed with a `max_connection_lifetime` record.
#[test]
fn a_bundle_change_revokes_and_max_connection_lifetime_closes_live_connections() {
    let pki = Pki::new("example.org");
    let frontend = pki.issue("frontend", FRONTEND);
    let backend_id = SpiffeId::parse(BACKEND).unwrap();
    let first = pki.ca.issue(&backend_id, Duration::from_secs(3600)).unwrap();
    let mut volume = AtomicDir::new(&pki.dir.path().join("backend"), &svid_dir_files(&pki, &first));
    let app = App::echo();
    let (port, admin) = (free_port(), free_port());
    let body = format!(
        "identity:\n  files:\n    dir: {}\n{}inbound:\n{}policies:\n{}",
        volume.dir.display(),
        admin_yaml(admin),
        tcp_inbound("backend", port, app.addr, ""),
        policy("backend", &[("frontend", FRONTEND)])
    );
    let inbound = Ward::start(&body, &[port, admin]);
    let (_outbound, out) = start_outbound(&frontend, port, BACKEND, &[]);

    // A separate ward with a 1.2 s max_connection_lifetime, started now so both run at once.
    let backend2 = pki.issue("backend2", BACKEND);
    let life_port = free_port();
    let body = format!(
        "{}max_connection_lifetime: 1200ms\ninbound:\n{}policies:\n{}",
        identity_yaml(&backend2, &[]),
        tcp_inbound("backend", life_port, app.addr, ""),
        policy("backend", &[("frontend", FRONTEND)])
    );
    let lifetime = Ward::start(&body, &[life_port]);
    let (_outbound2, life_out) = start_outbound(&frontend, life_port, BACKEND, &[]);
    let opened = Instant::now();
    let mut old = open_live(life_out, b"young\n");

    // The bundle change: the backend moves to a new CA of the same trust domain, which does
    // not vouch for the frontend's SVID.
    let mut live = open_live(out, b"before the new bundle\n");
    let skip = inbound.records().len();
    let other = Pki::new("example.org");
    let moved = other.ca.issue(&backend_id, Duration::from_secs(3600)).unwrap();
    volume.swap(&svid_dir_files(&other, &moved));
    let r = inbound.wait_record_after(skip, "a revocation after the bundle change", |r| {
        r["reason"].as_str().unwrap_or_default().starts_with("revoked_")
    });
    assert_eq!(r["decision"], "deny", "{r}");
    assert_eq!(r["peer_id"], FRONTEND, "{r}");
    assert_eq!(r["listener"], "backend", "{r}");
    wait_closed(&mut live, WAIT);
    let m = Metrics::scrape(admin);
    assert_eq!(
        m.get("ward_identity_rotations_total", &[("result", "applied")]),
        Some(2.0),
        "{}",
        m.text
    );
    let moved_leaf = ward_certs::svid::check_leaf(&moved.chain[0]).unwrap();
    assert_eq!(
        admin_get(admin, "/identity").json()["serial"],
        moved_leaf.serial.as_str()
    );
    // And new connections from the frontend fail: its sidecar does not trust the new CA.
    assert!(exchange(out, b"after").is_empty());

    // max_connection_lifetime: still fine before it, closed at it.
    ping(&mut old, b"still young\n");
    wait_closed(&mut old, WAIT);
    let age = opened.elapsed();
    assert!(
        age >= Duration::from_millis(1100) && age < Duration::from_secs(4),
        "closed at age {age:?}"
    );
    let r = lifetime.wait_record("the lifetime close", |r| {
        r["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("max_connection_lifetime")
    });
    assert_eq!(r["peer_id"], FRONTEND, "{r}");
    inbound.assert_no_panic();
    lifetime.assert_no_panic();
}
