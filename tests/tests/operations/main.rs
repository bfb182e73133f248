#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Operating ward, end to end with the real binary: the admin server and its endpoints, the
//! Prometheus metrics counting real traffic, graceful drain on SIGTERM and `POST /shutdown`,
//! handshake/header/idle timeouts, the per-listener connection cap, hot reload (SIGHUP and a
//! changed config file) and the re-check of live connections after a reload, a bundle change
//! or at `max_connection_lifetime`.
//!
//! One module per topic: `admin` (the admin endpoints and metrics), `drain` (SIGTERM, SIGINT,
//! `POST /shutdown`, `drain_timeout`), `expiry` (connections bounded by their SVIDs), `limits`
//! (timeouts, the connection cap, header floods)
//! and `reload` (SIGHUP, a changed config file or bundle, `max_connection_lifetime`). The
//! helpers they share are here.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use ward_e2e::*;

mod admin;
mod drain;
mod expiry;
mod limits;
mod reload;

fn admin_yaml(port: u16) -> String {
    format!("admin:\n  listen: 127.0.0.1:{port}\n")
}

/// A tcp inbound listener entry (under an `inbound:` key already written).
fn tcp_inbound(name: &str, port: u16, forward: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "  - name: {name}\n    listen: 127.0.0.1:{port}\n    forward: {forward}\n    protocol: tcp\n    policy: {name}\n{extra}"
    )
}

/// A policy allowing each `(rule, id)`; `default: deny`.
fn policy(name: &str, allow: &[(&str, &str)]) -> String {
    let mut y = format!("  {name}:\n    default: deny\n    rules:\n");
    for (rule, id) in allow {
        y.push_str(&format!(
            "      - {{name: {rule}, action: allow, from: [\"{id}\"]}}\n"
        ));
    }
    if allow.is_empty() {
        y = format!("  {name}:\n    default: deny\n");
    }
    y
}

/// A live TCP connection through the sidecars: opened, then proven with one echo.
fn open_live(port: u16, hello: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&local(port), WAIT).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    ping(&mut s, hello);
    s
}

/// Sends `msg` and reads its echo.
fn ping(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).expect("write on the live connection");
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).expect("echo on the live connection");
    assert_eq!(got, msg);
}

/// Waits (at most `within`) for `s` to be closed by the other side: EOF or a reset. Returns
/// how long that took; panics if data arrives or the connection stays open.
fn wait_closed(s: &mut TcpStream, within: Duration) -> Duration {
    let start = Instant::now();
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1024];
    match s.read(&mut buf) {
        Ok(0) => start.elapsed(),
        Ok(n) => panic!(
            "expected the connection to close, got {n} bytes: {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("the connection was still open after {within:?}")
        }
        Err(_) => start.elapsed(),
    }
}

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}
