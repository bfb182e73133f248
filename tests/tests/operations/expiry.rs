//! Connections bounded by the SVIDs that opened them: a live connection closes when the
//! certificate its peer presented expires (`peer_svid_expired`), and the pooled connection
//! between two sidecars is retired before either side's SVID expires, so no request meets
//! that close.

use super::*;

/// An opaque TCP connection whose client SVID expires mid-stream is closed by the inbound at
/// its notAfter, with the reason in the record, however busy it is.
#[test]
fn a_live_connection_closes_when_its_peers_svid_expires() {
    let ids = ids();
    // An SVID with a few seconds left (not_after has whole seconds).
    let brief = ids.pki.brief("brief", FRONTEND, 4);
    let echo = App::echo();
    let (inbound, port) = start_inbound(&ids.backend, echo.addr, &[("frontend", FRONTEND)], &[]);
    let (_outbound, out) = start_outbound(&brief, port, BACKEND, &[]);
    let mut live = open_live(out, b"before\n");
    let opened = Instant::now();
    // It keeps working until the SVID expires, then it is closed.
    let mut pings = 0;
    let closed = loop {
        if live.write_all(b"tick\n").is_err() {
            break opened.elapsed();
        }
        let mut got = [0u8; 5];
        match live.read_exact(&mut got) {
            Ok(()) => pings += 1,
            Err(_) => break opened.elapsed(),
        }
        assert!(
            opened.elapsed() < Duration::from_secs(10),
            "still open after 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(pings > 10, "it worked before the expiry: {pings} pings");
    assert!(closed >= Duration::from_secs(2), "closed after {closed:?}");
    let r = inbound.wait_record("the expiry", |r| {
        r["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("peer_svid_expired")
    });
    assert_eq!(r["peer_id"], FRONTEND, "{r}");
    assert_eq!(r["peer_serial"], brief.serial.as_str(), "{r}");
    assert_eq!(r["decision"], "deny", "{r}");
    inbound.wait_record("the access record", |r| {
        r["kind"] == "access" && r["reason"] == "revoked"
    });
    inbound.assert_no_panic();
}

/// Two sidecars whose SVIDs live 4 s and renew at half-life: HTTP requests every 50 ms for
/// 9 s all succeed, over several pooled connections in turn, each retired before an SVID of
/// it expires; the inbound never closes one for expiry under a request.
#[test]
fn pooled_connections_are_retired_before_an_svid_expires() {
    let ids = ids();
    let app = HttpApp::spawn();
    let ca = ids.pki.ca_dir();
    let dev = |id: &str| {
        format!(
            "identity:\n  dev: {{id: \"{id}\", ca: {}, ttl: 4s}}\n",
            ca.display()
        )
    };
    let (inp, outp) = (free_port(), free_port());
    let body = format!(
        "{}inbound:\n  - {{name: web, listen: \"127.0.0.1:{inp}\", forward: \"{}\", protocol: http, policy: web}}\npolicies:\n{}",
        dev(BACKEND),
        app.addr,
        policy("web", &[("frontend", FRONTEND)])
    );
    let inbound = Ward::start(&body, &[inp]);
    let body = format!(
        "{}outbound:\n  - {{name: web, listen: \"127.0.0.1:{outp}\", forward: \"127.0.0.1:{inp}\", protocol: http, server_id: \"{BACKEND}\"}}\n",
        dev(FRONTEND),
    );
    let _outbound = Ward::start(&body, &[outp]);
    let mut client = TcpStream::connect(local(outp)).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(9) {
        client
            .write_all(format!("GET /r{n} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())
            .unwrap();
        let r = read_response(&mut client).unwrap_or_else(|| panic!("request {n}: no response"));
        assert_eq!(
            r.status,
            200,
            "request {n} at {:?}: {}",
            started.elapsed(),
            r.text()
        );
        n += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let records = inbound.records();
    let srcs: std::collections::BTreeSet<String> = records
        .iter()
        .filter(|r| r["kind"] == "request")
        .map(|r| r["src"].to_string())
        .collect();
    assert!(
        srcs.len() >= 3,
        "{n} requests over {} connections: {srcs:?}",
        srcs.len()
    );
    let expired: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["reason"]
                .as_str()
                .unwrap_or_default()
                .starts_with("peer_svid_expired")
        })
        .collect();
    assert!(
        expired.is_empty(),
        "a pooled connection lived to its SVID's expiry: {expired:?}"
    );
    inbound.assert_no_panic();
}
