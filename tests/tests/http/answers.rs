//! Every answer a caller of an outbound sidecar can get, and what it means: the app's own
//! (relayed unchanged, a 403 of the peer's policy included), or ward's when it could not get
//! the request there: 503 when it cannot reach or finish a handshake with the upstream, 502
//! when the upstream proved the wrong identity or the app behind it is down. Each body says
//! which.

use super::*;

#[test]
fn each_answer_a_caller_can_get_says_what_happened() {
    let ids = ids();
    let app = HttpApp::spawn();
    let pair = start_pair(&ids, &[Route::http("web", app.addr, &allow_frontend())]);
    let (refused, wrong_id, app_down) = (free_port(), free_port(), free_port());
    let nobody = free_port();
    // An inbound in front of an app that is not there.
    let down_in = free_port();
    let body = format!(
        "{}inbound:\n  - {{name: down, listen: \"127.0.0.1:{down_in}\", forward: \"127.0.0.1:{}\", protocol: http, policy: p}}\npolicies:\n  p:\n    default: deny\n    rules:\n{}",
        identity_yaml(&ids.backend, &[]),
        free_port(),
        allow_frontend()
    );
    let _down = Ward::start(&body, &[down_in]);
    let outbound = |name: &str, port: u16, to: u16, id: &str| {
        format!(
            "  - {{name: {name}, listen: \"127.0.0.1:{port}\", forward: \"127.0.0.1:{to}\", protocol: http, server_id: \"{id}\"}}\n"
        )
    };
    let body = format!(
        "{}outbound:\n{}{}{}",
        identity_yaml(&ids.frontend, &[]),
        outbound("refused", refused, nobody, BACKEND),
        outbound(
            "wrong-id",
            wrong_id,
            pair.in_ports[0],
            "spiffe://example.org/ns/default/sa/other"
        ),
        outbound("app-down", app_down, down_in, BACKEND),
    );
    let _front = Ward::start(&body, &[refused, wrong_id, app_down]);
    let get = |port: u16| curl(&[&format!("http://127.0.0.1:{port}/x")]);

    let ok = get(pair.out_ports[0]);
    assert_eq!(ok.status, 200, "{ok:?}");
    let cases: [(u16, u16, &str); 3] = [
        (
            refused,
            503,
            &format!("ward: no connection to the upstream at 127.0.0.1:{nobody}: connect_failed: "),
        ),
        (
            wrong_id,
            502,
            &format!(
                "ward: no connection to the upstream at 127.0.0.1:{}: server_id_mismatch: ",
                pair.in_ports[0]
            ),
        ),
        (app_down, 502, "ward: the app at 127.0.0.1:"),
    ];
    for (port, status, starts) in cases {
        let got = get(port);
        assert_eq!(got.status, status, "{got:?}");
        assert!(
            got.body.starts_with(starts),
            "{status}: {:?} does not start with {starts:?}",
            got.body
        );
        assert!(got.body.ends_with('\n'), "{got:?}");
        if status == 502 && port == wrong_id {
            let says = format!(
                "the server presented {BACKEND} but this listener requires spiffe://example.org/ns/default/sa/other"
            );
            assert!(got.body.contains(&says), "{got:?}");
        }
    }

    // Upgrades ward refuses, and one it serves as a plain request: a POST upgrade and a list of
    // protocols are 400; curl's `Upgrade: h2c` offer on plain HTTP is dropped, never switched.
    let raw = |req: &str| {
        let mut s = std::net::TcpStream::connect(local(pair.out_ports[0])).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
        read_response(&mut s).unwrap()
    };
    for bad in [
        "POST /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n",
        "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket, foo\r\n\r\n",
    ] {
        let r = raw(bad);
        assert_eq!(
            (r.status, r.text().as_str()),
            (400, "ward: bad upgrade request\n"),
            "{bad}"
        );
    }
    let got = curl(&[
        "--http2",
        &format!("http://127.0.0.1:{}/no-h2c", pair.out_ports[0]),
    ]);
    assert_eq!((got.status, got.version.as_str()), (200, "1.1"), "{got:?}");
    let echo = got.echo();
    assert!(echo["headers"].get("upgrade").is_none(), "{echo}");
    assert!(echo["headers"].get("http2-settings").is_none(), "{echo}");
    pair.outbound.assert_no_panic();
}
