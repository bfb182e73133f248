#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The allowed and the denied path through two real ward processes:
//! client → outbound ward → mTLS → inbound ward → app.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use ward_e2e::*;

const MIB: usize = 1024 * 1024;

/// 1 MiB each way, independently: the app reads the client's MiB to EOF (so the client's
/// half-close must cross both sidecars) and only then sends its own MiB and closes.
#[test]
fn allowed_peer_gets_through_both_ways_with_half_close_and_audit() {
    let pki = Pki::new("example.org");
    let backend = pki.issue("backend", BACKEND);
    let frontend = pki.issue("frontend", FRONTEND);
    let upload = random_bytes(1, MIB);
    let download = random_bytes(2, MIB);

    let (got_tx, got_rx) = mpsc::channel::<Vec<u8>>();
    let got_tx = std::sync::Mutex::new(got_tx);
    let reply = download.clone();
    let app = App::spawn(move |mut s, bytes| {
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        bytes.fetch_add(got.len(), Ordering::SeqCst);
        let _ = got_tx.lock().unwrap().send(got);
        let _ = s.write_all(&reply);
        let _ = s.shutdown(Shutdown::Write);
    });

    let (inbound, in_port) = start_inbound(&backend, app.addr, &[("frontend-allowed", FRONTEND)], &[]);
    let (outbound, out_port) = start_outbound(&frontend, in_port, BACKEND, &[]);

    let mut client = TcpStream::connect(local(out_port)).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    client.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut writer = client.try_clone().unwrap();
    let sent = upload.clone();
    let write = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        // Half-close: no more bytes from the client, but the reply must still arrive.
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut received = Vec::new();
    client
        .read_to_end(&mut received)
        .expect("read the app's reply to EOF");
    write.join().unwrap();

    let at_app = got_rx.recv_timeout(WAIT).expect("the app saw the connection");
    assert_eq!(at_app.len(), MIB, "bytes the app received");
    assert!(
        at_app == upload,
        "client → app corrupted: fnv {:x} != {:x}",
        fnv1a(&at_app),
        fnv1a(&upload)
    );
    assert_eq!(
        received.len(),
        MIB,
        "bytes the client received after its half-close"
    );
    assert!(
        received == download,
        "app → client corrupted: fnv {:x} != {:x}",
        fnv1a(&received),
        fnv1a(&download)
    );
    assert_eq!(app.connections(), 1);

    // The inbound's audit: the decision, then the access record with the byte counts.
    let authz = inbound.wait_record("authz on the inbound", |r| r["kind"] == "authz");
    assert_eq!(authz["decision"], "allow", "{authz}");
    assert_eq!(authz["peer_id"], FRONTEND, "{authz}");
    assert_eq!(authz["peer_serial"], frontend.serial.as_str(), "{authz}");
    assert_eq!(authz["rule"], "frontend-allowed", "{authz}");
    assert_eq!(authz["listener"], "backend", "{authz}");
    assert_eq!(authz["direction"], "inbound", "{authz}");
    assert_eq!(authz["dst"], local(in_port).to_string(), "{authz}");
    for key in [
        "timestamp",
        "kind",
        "listener",
        "direction",
        "peer_id",
        "peer_serial",
        "src",
        "dst",
        "rule",
        "decision",
        "reason",
        "audit_rules",
        "bytes_in",
        "bytes_out",
        "duration_ms",
    ] {
        assert!(authz.get(key).is_some(), "audit record lacks {key}: {authz}");
    }
    let access = inbound.wait_record("access on the inbound", |r| r["kind"] == "access");
    assert_eq!(access["peer_id"], FRONTEND, "{access}");
    assert_eq!(access["bytes_in"], MIB as u64, "peer → app bytes: {access}");
    assert_eq!(access["bytes_out"], MIB as u64, "app → peer bytes: {access}");
    assert!(access["duration_ms"].is_u64(), "{access}");

    // The outbound's audit: the server's ID was checked, and the same byte counts.
    let authz = outbound.wait_record("authz on the outbound", |r| r["kind"] == "authz");
    assert_eq!(authz["decision"], "allow", "{authz}");
    assert_eq!(authz["peer_id"], BACKEND, "{authz}");
    assert_eq!(authz["peer_serial"], backend.serial.as_str(), "{authz}");
    assert_eq!(authz["direction"], "outbound", "{authz}");
    let access = outbound.wait_record("access on the outbound", |r| r["kind"] == "access");
    assert_eq!(access["bytes_in"], MIB as u64, "app → peer bytes: {access}");
    assert_eq!(access["bytes_out"], MIB as u64, "peer → app bytes: {access}");

    // Nothing was refused along the way.
    for w in [&inbound, &outbound] {
        assert!(
            w.records().iter().all(|r| r["decision"] == "allow"),
            "{:?}",
            w.records()
        );
        w.assert_no_panic();
    }
}

/// A valid SVID of our trust domain that the policy does not name: the client gets nothing,
/// the app sees nothing, and the inbound records a default deny.
#[test]
fn denied_peer_gets_nothing_and_the_app_sees_nothing() {
    let pki = Pki::new("example.org");
    let backend = pki.issue("backend", BACKEND);
    let frontend = pki.issue("frontend", FRONTEND);
    let intruder = pki.issue("intruder", INTRUDER);
    let app = App::echo();

    let (inbound, in_port) = start_inbound(&backend, app.addr, &[("frontend-allowed", FRONTEND)], &[]);
    let (_intruder_ward, intruder_port) = start_outbound(&intruder, in_port, BACKEND, &[]);

    let reply = exchange(intruder_port, b"let me in");
    assert!(
        reply.is_empty(),
        "the denied client got {} bytes back",
        reply.len()
    );

    let deny = inbound.wait_record("authz deny for the intruder", |r| r["kind"] == "authz");
    assert_eq!(deny["decision"], "deny", "{deny}");
    assert_eq!(deny["peer_id"], INTRUDER, "{deny}");
    assert_eq!(deny["peer_serial"], intruder.serial.as_str(), "{deny}");
    assert!(deny["rule"].is_null(), "the default decided, not a rule: {deny}");
    let reason = deny["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("default") && reason.contains("den"),
        "reason should name the default deny: {deny}"
    );

    // Give a (wrongly) forwarded connection time to show up at the app.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        app.connections(),
        0,
        "the app saw a connection from a denied peer"
    );
    assert_eq!(app.bytes(), 0, "the app saw bytes from a denied peer");
    assert!(
        !inbound.records().iter().any(|r| r["kind"] == "access"),
        "a denied connection must not be forwarded: {:?}",
        inbound.records()
    );

    // The same inbound and app do work for the allowed peer: the zero above is not vacuous.
    let (_frontend_ward, front_port) = start_outbound(&frontend, in_port, BACKEND, &[]);
    assert_eq!(exchange(front_port, b"hello"), b"hello");
    assert_eq!(app.connections(), 1);
    inbound.assert_no_panic();
}
