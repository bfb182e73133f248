//! ward's HBONE listener against the tests' own HBONE client.

use super::*;

/// The listener keys for an opaque TCP app behind `forward`.
fn tcp_to(app: SocketAddr) -> String {
    format!("    forward: {app}\n    protocol: tcp\n    policy: web\n")
}

#[test]
fn allowed_streams_reach_the_app_and_records_name_the_original_client() {
    let ids = ids();
    let app = App::echo();
    let hb = HboneWard::start(&ids, &tcp_to(app.addr), &allow_frontend_policy());
    let rt = rt();
    let authority = app.addr.to_string();
    let client = rt.block_on(async {
        let client = HboneClient::dial(hb.addr(), &ids.frontend, BACKEND)
            .await
            .unwrap();
        assert_eq!(client.handshake.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(client.handshake.peer_id.as_deref(), Some(BACKEND));
        // Three tunnels at once on one connection, each its own app connection.
        let mut tunnels = Vec::new();
        for i in 0..3 {
            let forwarded = format!("for=\"10.1.2.{i}:4567\"");
            let t = client
                .connect(
                    Some(&authority),
                    &[
                        ("forwarded", forwarded.as_str()),
                        (
                            "traceparent",
                            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                        ),
                    ],
                )
                .await
                .unwrap();
            assert_eq!(t.status, 200, "stream {i}");
            tunnels.push(t);
        }
        for (i, t) in tunnels.iter_mut().enumerate() {
            let msg = format!("hello from stream {i}");
            t.write(msg.as_bytes()).unwrap();
            assert_eq!(t.read_exact(msg.len()).await.unwrap(), msg.as_bytes());
        }
        // A big payload in both directions, more than a stream's 4 MiB window.
        let big = random_bytes(19, 6 * 1024 * 1024);
        let t = &mut tunnels[0];
        let (mut sent, mut got) = (0, Vec::new());
        while got.len() < big.len() {
            if sent < big.len() {
                let end = (sent + 256 * 1024).min(big.len());
                t.write(&big[sent..end]).unwrap();
                sent = end;
            }
            if let Some(b) = t.read().await.unwrap() {
                got.extend_from_slice(&b);
            }
        }
        assert_eq!(fnv1a(&got), fnv1a(&big), "6 MiB echoed intact");
        for t in &mut tunnels {
            t.finish().unwrap();
            assert_eq!(
                t.read_to_end().await.unwrap(),
                b"",
                "the app's close ends the stream"
            );
        }
        client
    });
    assert_eq!(app.connections(), 3);
    let allows = hb.ward.wait_records(3, "three allows", |r| {
        r["kind"] == "authz" && r["decision"] == "allow"
    });
    let mut clients: Vec<&str> = allows.iter().map(|r| field(r, "forwarded_for")).collect();
    clients.sort_unstable();
    assert_eq!(clients, ["10.1.2.0:4567", "10.1.2.1:4567", "10.1.2.2:4567"]);
    for r in &allows {
        assert_eq!(field(r, "peer_id"), FRONTEND);
        assert_eq!(field(r, "dst"), authority, "dst is the stream's :authority");
        assert!(
            field(r, "src").starts_with("127.0.0.1:"),
            "src is the tunnel's peer: {r}"
        );
        assert_eq!(field(r, "rule"), "frontend");
    }
    let access = hb
        .ward
        .wait_records(3, "three access records", |r| r["kind"] == "access");
    assert!(
        access.iter().all(|r| r["forwarded_for"].is_string()),
        "{access:?}"
    );
    let m = wait_metrics(hb.admin, "streams ended", |m| {
        m.value("ward_hbone_streams_active", &[("listener", "tunnel")]) == 0.0
    });
    assert_eq!(
        m.value("ward_hbone_connections_opened_total", &[("listener", "tunnel")]),
        1.0
    );
    assert_eq!(
        m.value("ward_hbone_connections_active", &[("listener", "tunnel")]),
        1.0
    );
    assert_eq!(hb.streams("ok"), 3.0);
    drop(client);
    wait_metrics(hb.admin, "the tunnel connection closed", |m| {
        m.value("ward_hbone_connections_active", &[("listener", "tunnel")]) == 0.0
    });
    hb.ward.assert_no_panic();
}

#[test]
fn a_denied_peer_hears_401_and_the_deny_is_recorded() {
    let ids = ids();
    let intruder = ids.pki.issue("intruder", INTRUDER);
    let app = App::echo();
    let hb = HboneWard::start(&ids, &tcp_to(app.addr), &allow_frontend_policy());
    let rt = rt();
    let authority = app.addr.to_string();
    rt.block_on(async {
        let client = HboneClient::dial(hb.addr(), &intruder, BACKEND).await.unwrap();
        for _ in 0..2 {
            let mut t = client.connect(Some(&authority), &[]).await.unwrap();
            assert_eq!(t.status, 401, "a deny is 401, as ztunnel answers it");
            assert!(t.text().await.contains("denied"));
        }
    });
    let deny = hb.ward.wait_record("the deny", |r| r["decision"] == "deny");
    assert_eq!(field(&deny, "kind"), "authz");
    assert_eq!(field(&deny, "peer_id"), INTRUDER);
    assert_eq!(field(&deny, "dst"), authority);
    assert!(field(&deny, "reason").starts_with("default_deny"), "{deny}");
    assert_eq!(app.connections(), 0, "a denied stream never reaches the app");
    hb.wait_streams("denied", 2.0);
    hb.ward.assert_no_panic();
}

#[test]
fn bad_streams_get_their_answer_and_a_metric_while_others_keep_flowing() {
    let ids = ids();
    let app = App::echo();
    let hb = HboneWard::start(&ids, &tcp_to(app.addr), &allow_frontend_policy());
    let rt = rt();
    let authority = app.addr.to_string();
    let other_port = free_port();
    rt.block_on(async {
        let client = HboneClient::dial(hb.addr(), &ids.frontend, BACKEND)
            .await
            .unwrap();
        let mut good = client.connect(Some(&authority), &[]).await.unwrap();
        assert_eq!(good.status, 200);
        let cases: Vec<(http::Method, Option<String>, u16, &str)> = vec![
            (
                http::Method::GET,
                Some(format!("https://{authority}/")),
                400,
                "a GET",
            ),
            (
                http::Method::POST,
                Some(format!("https://{authority}/x")),
                400,
                "a POST",
            ),
            (
                http::Method::CONNECT,
                Some(format!("backend.default.svc:{}", app.addr.port())),
                400,
                "a host name",
            ),
            (
                http::Method::CONNECT,
                Some(format!("127.0.0.1:{}", 0)),
                403,
                "port 0",
            ),
            (
                http::Method::CONNECT,
                Some(format!("10.9.9.9:{}", app.addr.port())),
                400,
                "another address",
            ),
            (
                http::Method::CONNECT,
                Some(format!("[::ffff:10.9.9.9]:{}", app.addr.port())),
                400,
                "another address, v4-mapped",
            ),
            (
                http::Method::CONNECT,
                Some(format!("127.0.0.1:{}", hb.port)),
                403,
                "the HBONE port itself",
            ),
            (
                http::Method::CONNECT,
                Some(format!("127.0.0.1:{other_port}")),
                403,
                "a port other than forward's",
            ),
            (
                http::Method::CONNECT,
                Some(format!("127.0.0.1:{}", hb.admin)),
                403,
                "ward's admin port",
            ),
        ];
        for (method, uri, want, what) in &cases {
            let answer = if *method == http::Method::CONNECT {
                client.connect(uri.as_deref(), &[]).await
            } else {
                client.request(method.clone(), uri.as_deref().unwrap(), &[]).await
            };
            let mut t = answer.unwrap_or_else(|e| panic!("{what}: {e:?}"));
            let status = t.status;
            assert_eq!(status, *want, "{what}: {}", t.text().await);
            // The good tunnel still flows between the bad ones.
            good.write(what.as_bytes()).unwrap();
            assert_eq!(
                good.read_exact(what.len()).await.unwrap(),
                what.as_bytes(),
                "{what}"
            );
        }
        // A CONNECT without :authority is malformed HTTP/2 (RFC 9113 §8.5): the HTTP/2 layer
        // resets that stream (PROTOCOL_ERROR) before ward sees it, and only that stream.
        match client.connect(None, &[]).await {
            Err(StreamError::Reset(r)) => assert_eq!(r, h2::Reason::PROTOCOL_ERROR),
            Ok(t) => assert_eq!(t.status, 400, "a CONNECT without :authority"),
            Err(e) => panic!("a CONNECT without :authority: {e:?}"),
        }
        good.write(b"still here").unwrap();
        assert_eq!(good.read_exact(10).await.unwrap(), b"still here");
        good.finish().unwrap();
        assert_eq!(good.read_to_end().await.unwrap(), b"");
    });
    hb.wait_streams("bad_method", 2.0);
    hb.wait_streams("bad_authority", 3.0);
    hb.wait_streams("port_not_allowed", 4.0);
    assert_eq!(hb.streams("ok"), 1.0);
    assert_eq!(app.connections(), 1, "no bad stream reached the app");
    let denies = hb
        .ward
        .wait_records(9, "a deny record per bad stream", |r| r["decision"] == "deny");
    for label in ["bad_method: ", "bad_authority: ", "port_not_allowed: "] {
        assert!(
            denies.iter().any(|r| field(r, "reason").starts_with(label)),
            "{label} in {denies:?}"
        );
    }
    hb.ward.assert_no_panic();
}

#[test]
fn a_stream_reset_mid_copy_leaves_the_others_flowing() {
    let ids = ids();
    let app = App::echo();
    let hb = HboneWard::start(&ids, &tcp_to(app.addr), &allow_frontend_policy());
    let rt = rt();
    let authority = app.addr.to_string();
    rt.block_on(async {
        let client = HboneClient::dial(hb.addr(), &ids.frontend, BACKEND)
            .await
            .unwrap();
        let mut a = client.connect(Some(&authority), &[]).await.unwrap();
        let mut b = client.connect(Some(&authority), &[]).await.unwrap();
        assert_eq!((a.status, b.status), (200, 200));
        // A: a megabyte in flight, half of it echoed, then reset.
        let chunk = random_bytes(3, 1024 * 1024);
        a.write(&chunk).unwrap();
        let _ = a.read_exact(512 * 1024).await.unwrap();
        a.reset();
        // B carries on: 2 MiB through after A's reset.
        let payload = random_bytes(4, 2 * 1024 * 1024);
        let mut got = Vec::new();
        for part in payload.chunks(128 * 1024) {
            b.write(part).unwrap();
            got.extend(b.read_exact(part.len()).await.unwrap());
        }
        assert_eq!(fnv1a(&got), fnv1a(&payload));
        // And new streams still open.
        let mut c = client.connect(Some(&authority), &[]).await.unwrap();
        assert_eq!(c.status, 200);
        c.write(b"after").unwrap();
        assert_eq!(c.read_exact(5).await.unwrap(), b"after");
    });
    // The reset stream's app connection is closed and its access record written.
    hb.ward
        .wait_record("the reset stream's access record", |r| r["kind"] == "access");
    wait_until("the reset stream's app connection to close", WAIT, || {
        hb.metrics()
            .value("ward_hbone_streams_active", &[("listener", "tunnel")])
            <= 2.0
    });
    hb.ward.assert_no_panic();
}

/// A peer that opens 10 000 streams on one connection, 300 at a time against ward's limit of
/// 100 concurrent streams: every one is answered, the limit holds, nothing leaks.
#[test]
fn ten_thousand_streams_on_one_connection_are_all_answered() {
    const STREAMS: usize = 10_000;
    let ids = ids();
    let app = App::echo();
    let hb = HboneWard::start(&ids, &tcp_to(app.addr), &allow_frontend_policy());
    let rt = rt();
    let authority = app.addr.to_string();
    let (ok, other) = rt.block_on(async {
        let client = std::sync::Arc::new(
            HboneClient::dial(hb.addr(), &ids.frontend, BACKEND)
                .await
                .unwrap(),
        );
        let mut tasks = tokio::task::JoinSet::new();
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..300 {
            let (client, next, authority) = (client.clone(), next.clone(), authority.clone());
            tasks.spawn(async move {
                let (mut ok, mut other) = (0usize, Vec::new());
                let mut refused = 0usize;
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < STREAMS {
                    // REFUSED_STREAM (RFC 9113 §8.7: not processed, safe to retry) is the
                    // HTTP/2 layer's answer to a stream over the server's limit.
                    let mut answer = client.connect(Some(&authority), &[]).await;
                    while matches!(answer, Err(StreamError::Reset(h2::Reason::REFUSED_STREAM))) {
                        refused += 1;
                        answer = client.connect(Some(&authority), &[]).await;
                    }
                    match answer {
                        Ok(mut t) if t.status == 200 => {
                            t.write(b"x").unwrap();
                            match t.read_exact(1).await {
                                Ok(b) if b == b"x" => ok += 1,
                                r => other.push(format!("echo: {r:?}")),
                            }
                            t.reset();
                        }
                        Ok(t) => other.push(format!("status {}", t.status)),
                        Err(e) => other.push(format!("{e:?}")),
                    }
                }
                (ok, other, refused)
            });
        }
        let (mut ok, mut other, mut refused) = (0, Vec::new(), 0);
        while let Some(r) = tasks.join_next().await {
            let (o, e, r) = r.unwrap();
            ok += o;
            other.extend(e);
            refused += r;
        }
        eprintln!("{refused} of the streams were refused once or more (REFUSED_STREAM) and retried");
        assert!(refused < STREAMS / 10, "{refused} refused streams");
        (ok, other)
    });
    assert_eq!(
        ok,
        STREAMS,
        "every stream answered and echoed; failures: {:?}",
        &other[..other.len().min(5)]
    );
    let m = wait_metrics(hb.admin, "every stream to end", |m| {
        m.value("ward_hbone_streams_active", &[("listener", "tunnel")]) == 0.0
    });
    assert_eq!(
        m.value(
            "ward_hbone_streams_total",
            &[("listener", "tunnel"), ("result", "ok")]
        ),
        STREAMS as f64
    );
    assert_eq!(
        m.value("ward_hbone_connections_opened_total", &[("listener", "tunnel")]),
        1.0
    );
    assert_eq!(app.connections(), STREAMS);
    hb.ward.assert_no_panic();
}

#[test]
fn tunnelled_http_gets_per_request_policy_and_the_identity_header() {
    let ids = ids();
    let web = HttpApp::spawn();
    // No `forward`: the stream's :authority names the app port (the pod's HBONE listener).
    let listener = "    protocol: http\n    policy: web\n";
    let policies = format!(
        "policies:\n  web:\n    default: deny\n    rules:\n      - name: reads\n        action: allow\n        from: [\"{FRONTEND}\"]\n        methods: [GET]\n        paths: [\"/api/**\"]\n"
    );
    let hb = HboneWard::start(&ids, listener, &policies);
    let rt = rt();
    let authority = web.addr.to_string();
    let raw = rt.block_on(async {
        let client = HboneClient::dial(hb.addr(), &ids.frontend, BACKEND)
            .await
            .unwrap();
        let mut t = client
            .connect(Some(&authority), &[("forwarded", "for=\"10.7.7.7:1234\"")])
            .await
            .unwrap();
        assert_eq!(
            t.status, 200,
            "HTTP ports open first; each request is decided on its own"
        );
        t.write(
            b"GET /api/users HTTP/1.1\r\nHost: web\r\nx-forwarded-client-cert: By=forged\r\n\r\n\
              GET /%61dmin HTTP/1.1\r\nHost: web\r\n\r\n\
              GET /api/../admin HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        t.read_to_end().await.unwrap()
    });
    // The app's JSON body ends without a newline, so the status lines are found by their text.
    let text = String::from_utf8_lossy(&raw);
    let statuses: Vec<&str> = text.split("HTTP/1.1 ").skip(1).map(|r| &r[..3]).collect();
    assert_eq!(statuses, ["200", "403", "403"], "{text}");
    let seen = web.seen();
    assert_eq!(seen.len(), 1, "only the allowed request reached the app");
    let xfcc = seen[0].header("x-forwarded-client-cert");
    assert_eq!(xfcc.len(), 1, "{xfcc:?}");
    assert!(
        xfcc[0].contains(&format!("URI={FRONTEND}")) && !xfcc[0].contains("forged"),
        "{xfcc:?}"
    );
    let requests = hb
        .ward
        .wait_records(3, "three request records", |r| r["kind"] == "request");
    assert!(
        requests
            .iter()
            .all(|r| field(r, "forwarded_for") == "10.7.7.7:1234"),
        "{requests:?}"
    );
    assert_eq!(requests.iter().filter(|r| r["decision"] == "deny").count(), 2);

    // The pod form refuses ward's own ports as app ports.
    rt.block_on(async {
        let client = HboneClient::dial(hb.addr(), &ids.frontend, BACKEND)
            .await
            .unwrap();
        for port in [hb.port, hb.admin] {
            let t = client
                .connect(Some(&format!("127.0.0.1:{port}")), &[])
                .await
                .unwrap();
            assert_eq!(t.status, 403, "port {port}");
        }
    });
    hb.ward.assert_no_panic();
}

#[test]
fn a_tls_client_without_h2_is_refused_as_no_hbone_peer() {
    let ids = ids();
    let app = App::echo();
    let hb = HboneWard::start(&ids, &tcp_to(app.addr), &allow_frontend_policy());
    let rt = rt();
    rt.block_on(async {
        // No ALPN at all: TLS completes, then ward closes the connection.
        let (mut tls, hs) = tls_dial(hb.addr(), &ids.frontend, BACKEND, &[]).await.unwrap();
        assert_eq!(hs.alpn, None);
        use tokio::io::AsyncReadExt as _;
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(WAIT, tls.read(&mut buf))
            .await
            .expect("ward closes");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
        // ALPN http/1.1 only: no protocol in common, the handshake fails.
        assert!(
            tls_dial(hb.addr(), &ids.frontend, BACKEND, &[b"http/1.1"])
                .await
                .is_err()
        );
    });
    let r = hb.ward.wait_record("not_hbone", |r| r["kind"] == "handshake");
    assert!(field(&r, "reason").starts_with("not_hbone"), "{r}");
    assert_eq!(field(&r, "peer_id"), FRONTEND);
    assert_eq!(app.connections(), 0);
    hb.ward.assert_no_panic();
}
