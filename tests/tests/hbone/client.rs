//! ward's outbound (`tunnel: hbone`) against the tests' own HBONE server.

use std::io::{Read, Write};
use std::net::TcpStream;

use super::*;

/// An outbound ward (listener `tunnel`) that tunnels to `dst` through the HBONE server on
/// `hbone_port`, requiring it to prove BACKEND; `identity` is its `identity:` section.
struct TunnelWard {
    ward: Ward,
    port: u16,
    admin: u16,
}

impl TunnelWard {
    fn start(identity: &str, dst: SocketAddr, hbone_port: u16, extra: &str, args: &[&str]) -> TunnelWard {
        let (port, admin_port) = (free_port(), free_port());
        let body = format!(
            "{identity}{extra}outbound:\n  - name: tunnel\n    listen: 127.0.0.1:{port}\n    forward: {dst}\n    protocol: tcp\n    server_id: \"{BACKEND}\"\n    tunnel: hbone\n    hbone_port: {hbone_port}\n{}",
            admin(admin_port)
        );
        TunnelWard {
            ward: Ward::start_with(&body, &[port, admin_port], args),
            port,
            admin: admin_port,
        }
    }

    fn metric(&self, name: &str) -> f64 {
        Metrics::scrape(self.admin).value(name, &[("listener", "tunnel"), ("direction", "outbound")])
    }
}

/// An app connection through the outbound: sends `msg`, expects it echoed.
fn echo_through(port: u16, msg: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(local(port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(msg).unwrap();
    let mut got = vec![0; msg.len()];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, msg);
    s
}

/// What the app reads before the connection ends (it must end within WAIT).
fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => out,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => out,
        Err(e) => panic!("the app connection did not close: {e}"),
    }
}

#[test]
fn a_connect_carries_the_destination_the_client_and_a_trace_without_sni() {
    let ids = ids();
    let server = HboneServer::spawn(&ids.backend, |_| 200);
    let dst = local(free_port());
    let tw = TunnelWard::start(&identity_yaml(&ids.frontend, &[]), dst, server.port, "", &[]);
    let s = echo_through(tw.port, b"ping over hbone");
    let app_src = s.local_addr().unwrap();
    let seen = server.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let c = &seen[0];
    assert_eq!(c.method, "CONNECT");
    assert_eq!(
        c.authority.as_deref(),
        Some(dst.to_string().as_str()),
        ":authority is the destination"
    );
    assert_eq!(c.peer_id.as_deref(), Some(FRONTEND), "ward presents its SVID");
    assert_eq!(c.sni, None, "HBONE sends no SNI");
    assert_eq!(c.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(
        c.header("forwarded"),
        Some(format!("for=\"{app_src}\"").as_str()),
        "forwarded names the app's connection"
    );
    let trace = c.header("traceparent").unwrap_or_default();
    let parts: Vec<&str> = trace.split('-').collect();
    assert!(
        parts.len() == 4
            && parts[0] == "00"
            && parts[1].len() == 32
            && parts[2].len() == 16
            && parts[1..3]
                .iter()
                .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit())),
        "traceparent {trace:?}"
    );
    assert_eq!(
        c.header("baggage"),
        Some("k8s.namespace.name=default,service.name=frontend")
    );
    drop(s);
    let allow = tw.ward.wait_record("the allow", |r| r["kind"] == "authz");
    assert_eq!(field(&allow, "decision"), "allow");
    assert_eq!(field(&allow, "peer_id"), BACKEND);
    assert_eq!(field(&allow, "reason"), "server_id_match");
    tw.ward
        .wait_record("the access record", |r| r["kind"] == "access");
    tw.ward.assert_no_panic();
}

#[test]
fn streams_share_a_pooled_connection_a_second_past_100_and_idle_ones_are_released() {
    let ids = ids();
    let server = HboneServer::spawn(&ids.backend, |_| 200);
    let dst = local(free_port());
    let tw = TunnelWard::start(
        &identity_yaml(&ids.frontend, &[]),
        dst,
        server.port,
        "pool_idle_timeout: 1s\n",
        &["--workers", "1"],
    );
    // Ten app connections, five at once and five one after another: one tunnel connection.
    let held: Vec<TcpStream> = (0..5)
        .map(|i| echo_through(tw.port, format!("held {i}").as_bytes()))
        .collect();
    for i in 0..5 {
        drop(echo_through(tw.port, format!("one by one {i}").as_bytes()));
    }
    assert_eq!(server.seen().len(), 10);
    assert_eq!(server.connections_opened(), 1, "ten streams, one connection");
    assert!(server.seen().iter().all(|c| c.conn == 0));
    drop(held);

    // 101 at once: the 101st stream needs a second connection.
    let many: Vec<TcpStream> = (0..101)
        .map(|i| echo_through(tw.port, format!("many {i}").as_bytes()))
        .collect();
    assert_eq!(server.connections_opened(), 2, "100 streams a connection");
    assert_eq!(tw.metric("ward_hbone_streams_active"), 101.0);
    drop(many);

    // Nothing in flight for pool_idle_timeout: both connections are released.
    wait_until(
        "idle tunnel connections to be released",
        Duration::from_secs(10),
        || server.connections_closed() == 2,
    );
    assert_eq!(tw.metric("ward_hbone_connections_active"), 0.0);
    assert_eq!(tw.metric("ward_hbone_streams_active"), 0.0);
    drop(echo_through(tw.port, b"after the release"));
    assert_eq!(
        server.connections_opened(),
        3,
        "a new connection after the release"
    );
    assert_eq!(tw.metric("ward_hbone_connections_opened_total"), 3.0);
    tw.ward.assert_no_panic();
}

#[test]
fn a_new_identity_opens_a_new_connection_that_presents_it() {
    let ids = ids();
    let server = HboneServer::spawn(&ids.backend, |_| 200);
    let dst = local(free_port());
    let first = ids
        .pki
        .ca
        .issue(
            &ward_certs::SpiffeId::parse(FRONTEND).unwrap(),
            Duration::from_secs(3600),
        )
        .unwrap();
    let mut volume = AtomicDir::new(
        &ids.pki.dir.path().join("volume"),
        &svid_dir_files(&ids.pki, &first),
    );
    let identity = format!("identity:\n  files:\n    dir: {}\n", volume.dir.display());
    let tw = TunnelWard::start(&identity, dst, server.port, "", &["--workers", "1"]);
    let held = echo_through(tw.port, b"as the frontend");
    // The workload's SVID is replaced by one for another ID (a re-registered workload).
    let next = ids
        .pki
        .ca
        .issue(
            &ward_certs::SpiffeId::parse(PAYMENTS).unwrap(),
            Duration::from_secs(3600),
        )
        .unwrap();
    volume.swap(&svid_dir_files(&ids.pki, &next));
    wait_until("ward to load the new SVID", Duration::from_secs(10), || {
        admin_get(tw.admin, "/identity").text().contains(PAYMENTS)
    });
    drop(echo_through(tw.port, b"as payments"));
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!((seen[0].conn, seen[0].peer_id.as_deref()), (0, Some(FRONTEND)));
    assert_eq!(
        (seen[1].conn, seen[1].peer_id.as_deref()),
        (1, Some(PAYMENTS)),
        "a stream for the new ID goes over a new connection that presents it"
    );
    assert_eq!(
        seen[1].header("baggage"),
        Some("k8s.namespace.name=default,service.name=payments")
    );
    drop(held);
    tw.ward.assert_no_panic();
}

#[test]
fn a_refused_connect_closes_the_app_connection_with_its_record() {
    let ids = ids();
    let denied = local(free_port());
    let down = local(free_port());
    let server = HboneServer::spawn(&ids.backend, move |c| {
        if c.authority.as_deref() == Some(denied.to_string().as_str()) {
            401
        } else {
            503
        }
    });
    let identity = identity_yaml(&ids.frontend, &[]);
    for (dst, kind, label) in [
        (denied, "authz", "peer_denied: "),
        (down, "error", "peer_refused: "),
    ] {
        let tw = TunnelWard::start(&identity, dst, server.port, "", &[]);
        let mut s = TcpStream::connect(local(tw.port)).unwrap();
        s.write_all(b"hello?").unwrap();
        assert_eq!(
            read_until_closed(&mut s),
            b"",
            "the app reads nothing and the connection ends"
        );
        let r = tw
            .ward
            .wait_record(label, |r| field(r, "reason").starts_with(label));
        assert_eq!((field(&r, "kind"), field(&r, "decision")), (kind, "deny"), "{r}");
        assert_eq!(field(&r, "peer_id"), BACKEND, "{r}");
        let metric = label.trim_end_matches(": ");
        let m = Metrics::scrape(tw.admin);
        assert_eq!(
            m.value(
                "ward_hbone_streams_total",
                &[("listener", "tunnel"), ("result", metric)]
            ),
            1.0
        );
        tw.ward.assert_no_panic();
    }
    assert_eq!(server.bytes_echoed(), 0, "nothing was tunnelled");
}

#[test]
fn a_server_that_proves_another_identity_gets_no_stream() {
    let ids = ids();
    let intruder = ids.pki.issue("intruder", INTRUDER);
    let server = HboneServer::spawn(&intruder, |_| 200);
    let tw = TunnelWard::start(
        &identity_yaml(&ids.frontend, &[]),
        local(free_port()),
        server.port,
        "",
        &[],
    );
    let mut s = TcpStream::connect(local(tw.port)).unwrap();
    s.write_all(b"secret").unwrap();
    assert_eq!(read_until_closed(&mut s), b"");
    let r = tw.ward.wait_record("the mismatch", |r| r["decision"] == "deny");
    assert!(field(&r, "reason").starts_with("server_id_mismatch"), "{r}");
    assert_eq!(field(&r, "peer_id"), INTRUDER);
    assert!(server.seen().is_empty(), "no CONNECT went to the wrong server");
    tw.ward.assert_no_panic();
}
