//! Limits and timeouts: stalled handshakes, request heads and quiet connections are cut, the
//! connection cap refuses past its limit, and a header flood costs bounded memory.

use std::net::{Shutdown, TcpListener};

use super::*;

/// A TLS peer that stalls mid-handshake is cut at the listener's `handshake_timeout` (inbound),
/// a server that never answers the handshake is given up on at it (outbound), an HTTP client
/// that never finishes its request head is cut at `request_header_timeout`, and a quiet TCP
/// connection is closed at `idle_timeout`.
#[test]
fn stalls_are_cut_at_their_timeouts() {
    let pki = Pki::new("example.org");
    let backend = pki.issue("backend", BACKEND);
    let frontend = pki.issue("frontend", FRONTEND);
    let app = App::echo();
    let (port, admin) = (free_port(), free_port());
    let body = format!(
        "{}{}idle_timeout: 700ms\ninbound:\n{}policies:\n{}",
        identity_yaml(&backend, &[]),
        admin_yaml(admin),
        tcp_inbound("backend", port, app.addr, "    handshake_timeout: 500ms\n"),
        policy("backend", &[("frontend", FRONTEND)])
    );
    let inbound = Ward::start(&body, &[port, admin]);

    // Inbound: the first bytes of a ClientHello record header, then nothing.
    let mut stalled = TcpStream::connect(local(port)).unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).unwrap();
    let took = wait_closed(&mut stalled, WAIT);
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1800),
        "the stalled handshake was cut after {took:?}, not at its 500ms timeout"
    );
    let r = inbound.wait_handshake_deny(0, "timeout");
    assert!(r["reason"].as_str().unwrap().contains("500ms"), "{r}");
    let m = Metrics::scrape(admin);
    assert_eq!(
        m.get(
            "ward_handshake_failures_total",
            &[("listener", "backend"), ("reason", "timeout")]
        ),
        Some(1.0),
        "{}",
        m.text
    );
    assert_eq!(app.connections(), 0);

    // Idle: a live connection with no bytes either way for 700ms is closed, with a record.
    let (_outbound, out) = start_outbound(&frontend, port, BACKEND, &[]);
    let mut live = open_live(out, b"hello\n");
    let took = wait_closed(&mut live, WAIT);
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_millis(2500),
        "idle connection closed after {took:?}"
    );
    let r = inbound.wait_record("idle_timeout", |r| r["kind"] == "access");
    assert!(r["reason"].as_str().unwrap().starts_with("idle_timeout"), "{r}");

    // Outbound: a server that accepts TCP and never says a word.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let holder = std::thread::spawn(move || {
        let (s, _) = silent.accept().unwrap();
        std::thread::sleep(Duration::from_secs(3));
        drop(s);
    });
    let (o_port, h_port) = (free_port(), free_port());
    let body = format!(
        "{}request_header_timeout: 500ms\noutbound:\n  - name: silent\n    listen: 127.0.0.1:{o_port}\n    forward: {silent_addr}\n    protocol: tcp\n    server_id: \"{BACKEND}\"\n    handshake_timeout: 500ms\n  - name: web\n    listen: 127.0.0.1:{h_port}\n    forward: 127.0.0.1:{port}\n    protocol: http\n    server_id: \"{BACKEND}\"\n",
        identity_yaml(&frontend, &[]),
    );
    let outbound = Ward::start(&body, &[o_port, h_port]);
    let mut client = TcpStream::connect(local(o_port)).unwrap();
    client.write_all(b"anyone there?").unwrap();
    let took = wait_closed(&mut client, WAIT);
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1800),
        "the outbound gave up on a silent server after {took:?}"
    );
    let r = outbound.wait_handshake_deny(0, "timeout");
    assert_eq!(r["direction"], "outbound", "{r}");
    holder.join().unwrap();

    // Request head: half a request line and headers, then nothing.
    let mut slow = TcpStream::connect(local(h_port)).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: app\r\nX-Slow: ")
        .unwrap();
    let start = Instant::now();
    let mut rest = Vec::new();
    slow.set_read_timeout(Some(WAIT)).unwrap();
    let _ = slow.read_to_end(&mut rest);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(2500),
        "the unfinished request head was cut after {took:?}"
    );
    let statuses = response_statuses(&rest);
    assert!(
        statuses.is_empty() || statuses == [408],
        "an unfinished request gets 408 or a close, got {:?}",
        String::from_utf8_lossy(&rest)
    );
    inbound.assert_no_panic();
    outbound.assert_no_panic();
}

/// `max_connections`: past the cap a new connection is refused at once (and counted); when an
/// open one ends, a new one is admitted again.
#[test]
fn connection_cap_refuses_past_its_limit_and_recovers() {
    let pki = Pki::new("example.org");
    let backend = pki.issue("backend", BACKEND);
    let frontend = pki.issue("frontend", FRONTEND);
    let app = App::echo();
    let (in_ward, in_port) = start_inbound(&backend, app.addr, &[("frontend", FRONTEND)], &[]);
    let (port, admin) = (free_port(), free_port());
    let body = format!(
        "{}{}outbound:\n  - name: capped\n    listen: 127.0.0.1:{port}\n    forward: 127.0.0.1:{in_port}\n    protocol: tcp\n    server_id: \"{BACKEND}\"\n    max_connections: 2\n",
        identity_yaml(&frontend, &[]),
        admin_yaml(admin)
    );
    let outbound = Ward::start(&body, &[port, admin]);
    let capped = [("listener", "capped"), ("direction", "outbound")];

    let mut first = open_live(port, b"one\n");
    let mut second = open_live(port, b"two\n");
    let start = Instant::now();
    let mut third = TcpStream::connect(local(port)).unwrap();
    let _ = third.write_all(b"three\n");
    let took = wait_closed(&mut third, WAIT);
    assert!(took < Duration::from_millis(500), "refusal took {took:?}");
    assert!(start.elapsed() < Duration::from_secs(1));
    let m = wait_metrics(admin, "one overload refusal", |m| {
        m.value("ward_connections_refused_overload_total", &capped) >= 1.0
    });
    for (name, value) in [
        ("ward_connections_refused_overload_total", 1.0),
        ("ward_connections_active", 2.0),
        ("ward_connections_opened_total", 2.0),
    ] {
        assert_eq!(m.get(name, &capped), Some(value), "{name}:\n{}", m.text);
    }
    assert_eq!(
        app.connections(),
        2,
        "the refused connection never reached the app"
    );
    // The two admitted ones are unaffected.
    ping(&mut first, b"still one\n");
    ping(&mut second, b"still two\n");

    // One ends; the cap has room again.
    first.shutdown(Shutdown::Write).unwrap();
    wait_closed(&mut first, WAIT);
    wait_metrics(admin, "one active connection", |m| {
        m.value("ward_connections_active", &capped) == 1.0
    });
    let mut fourth = open_live(port, b"four\n");
    ping(&mut second, b"two again\n");
    ping(&mut fourth, b"four again\n");
    let m = Metrics::scrape(admin);
    assert_eq!(
        m.get("ward_connections_refused_overload_total", &capped),
        Some(1.0),
        "{}",
        m.text
    );
    assert_eq!(m.get("ward_connections_active", &capped), Some(2.0), "{}", m.text);
    in_ward.assert_no_panic();
    outbound.assert_no_panic();
}

/// A flood of header bytes that never ends a request head costs bounded memory: the
/// connection is cut once the head buffer is full, and ward's resident memory grows by far
/// less than what was sent.
#[test]
fn a_flood_of_header_bytes_costs_bounded_memory() {
    let pki = Pki::new("example.org");
    let frontend = pki.issue("frontend", FRONTEND);
    let port = free_port();
    let body = format!(
        "{}outbound:\n  - name: web\n    listen: 127.0.0.1:{port}\n    forward: 127.0.0.1:9\n    protocol: http\n    server_id: \"{BACKEND}\"\n",
        identity_yaml(&frontend, &[]),
    );
    let ward = Ward::start(&body, &[port]);
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", ward.pid())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        kb * 1024
    };
    let before = rss();
    const FLOOD: usize = 64 * 1024 * 1024;
    let mut sent = 0usize;
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(std::thread::spawn(move || {
            let mut s = TcpStream::connect(local(port)).unwrap();
            s.set_write_timeout(Some(WAIT)).unwrap();
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\nX-Flood: ");
            let chunk = vec![b'a'; 64 * 1024];
            let mut n = 0usize;
            while n < FLOOD / 4 {
                match s.write(&chunk) {
                    Ok(w) => n += w,
                    Err(_) => break,
                }
            }
            n
        }));
    }
    for h in handles {
        sent += h.join().unwrap();
    }
    let after = rss();
    assert!(
        sent < FLOOD,
        "ward took all {sent} bytes of a request head that never ended"
    );
    let grown = after.saturating_sub(before);
    assert!(
        grown < 16 * 1024 * 1024,
        "ward's RSS grew by {grown} bytes ({before} -> {after}) for {sent} bytes of flood"
    );
    ward.assert_no_panic();
}
