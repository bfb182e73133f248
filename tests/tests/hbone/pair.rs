//! Two wards over HBONE: an outbound with `tunnel: hbone`, an inbound with `hbone: true`.

use std::io::{Read, Write};
use std::net::TcpStream;

use super::*;

#[test]
fn two_wards_carry_tcp_over_one_pooled_tunnel_under_the_inbound_policy() {
    let ids = ids();
    let intruder = ids.pki.issue("intruder", INTRUDER);
    let app = App::echo();
    let hb = HboneWard::start(
        &ids,
        &format!("    forward: {}\n    protocol: tcp\n    policy: web\n", app.addr),
        &allow_frontend_policy(),
    );
    let outbound = |svid: &SvidFiles| {
        let port = free_port();
        let body = format!(
            "{}outbound:\n  - name: tunnel\n    listen: 127.0.0.1:{port}\n    forward: {}\n    protocol: tcp\n    server_id: \"{BACKEND}\"\n    tunnel: hbone\n    hbone_port: {}\n",
            identity_yaml(svid, &[]),
            app.addr,
            hb.port
        );
        (Ward::start_with(&body, &[port], &["--workers", "1"]), port)
    };
    let (front, port) = outbound(&ids.frontend);
    let mut sources = Vec::new();
    for i in 0..20 {
        let mut s = TcpStream::connect(local(port)).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        sources.push(s.local_addr().unwrap().to_string());
        let msg = format!("connection {i}");
        s.write_all(msg.as_bytes()).unwrap();
        let mut got = vec![0; msg.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, msg.as_bytes());
    }
    assert_eq!(app.connections(), 20);
    let m = Metrics::scrape(hb.admin);
    assert_eq!(
        m.value("ward_hbone_connections_opened_total", &[("listener", "tunnel")]),
        1.0,
        "twenty connections, one handshake"
    );
    let allows = hb.ward.wait_records(20, "twenty allows", |r| {
        r["kind"] == "authz" && r["decision"] == "allow"
    });
    let mut recorded: Vec<String> = allows
        .iter()
        .map(|r| field(r, "forwarded_for").to_owned())
        .collect();
    recorded.sort();
    sources.sort();
    assert_eq!(
        recorded, sources,
        "the inbound records each app connection's own address"
    );

    // Another workload's ward: the inbound's policy answers 401, its app connection closes.
    let (other, port) = outbound(&intruder);
    let mut s = TcpStream::connect(local(port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"let me in").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(buf.is_empty());
    let deny = hb
        .ward
        .wait_record("the inbound's deny", |r| r["decision"] == "deny");
    assert_eq!(field(&deny, "peer_id"), INTRUDER);
    let denied = other.wait_record("the outbound's record", |r| r["decision"] == "deny");
    assert!(field(&denied, "reason").starts_with("peer_denied"), "{denied}");
    assert_eq!(app.connections(), 20);
    for w in [&front, &other, &hb.ward] {
        w.assert_no_panic();
    }
}
