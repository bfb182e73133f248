#![allow(clippy::unwrap_used, clippy::expect_used)]
//! HBONE, Istio ambient's tunnel (HTTP/2 CONNECT over mTLS, ALPN h2, no SNI), between the real
//! ward binary and HBONE peers the tests write themselves from the wire format with the `h2`
//! crate (`ward_e2e::HboneClient`, `ward_e2e::HboneServer`), never with ward's own code.
//!
//! `server`: ward's HBONE listener (`hbone: true`) against the tests' client: allowed streams,
//! 401 on a deny with its record, per-request policy when the tunnelled bytes are HTTP, and
//! every bad input (method, authority, port, resets, 10 000 streams) answered without
//! disturbing the other streams. `client`: ward's outbound (`tunnel: hbone`) against the tests'
//! server: what a CONNECT carries, pooling (one connection for many streams, a second past
//! 100, idle release, a new connection for a new identity), and what the app sees of a 401 or
//! a 503. `pair`: two wards over HBONE.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use ward_e2e::*;

mod client;
mod pair;
mod server;

/// A runtime for the tests' async HBONE peers; blocking waits (records, metrics) run outside
/// `block_on` while its workers keep the connections going.
fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The `admin:` section on a fresh port.
fn admin(port: u16) -> String {
    format!("admin:\n  listen: 127.0.0.1:{port}\n")
}

/// The `web` policy: FRONTEND may do anything, everyone else nothing.
fn allow_frontend_policy() -> String {
    format!(
        "policies:\n  web:\n    default: deny\n    rules:\n      - name: frontend\n        action: allow\n        from: [\"{FRONTEND}\"]\n"
    )
}

/// A ward (the backend's SVID) with one HBONE listener, `tunnel`, whose other keys are
/// `listener` (indented four spaces), and `policies`.
struct HboneWard {
    ward: Ward,
    port: u16,
    admin: u16,
}

impl HboneWard {
    fn start(ids: &Ids, listener: &str, policies: &str) -> HboneWard {
        let (port, admin_port) = (free_port(), free_port());
        let body = format!(
            "{}inbound:\n  - name: tunnel\n    listen: 127.0.0.1:{port}\n    hbone: true\n{listener}{policies}{}",
            identity_yaml(&ids.backend, &[]),
            admin(admin_port)
        );
        HboneWard {
            ward: Ward::start(&body, &[port, admin_port]),
            port,
            admin: admin_port,
        }
    }

    fn addr(&self) -> SocketAddr {
        local(self.port)
    }

    fn metrics(&self) -> Metrics {
        Metrics::scrape(self.admin)
    }

    /// `ward_hbone_streams_total` of this listener with `result`.
    fn streams(&self, result: &str) -> f64 {
        self.metrics().value(
            "ward_hbone_streams_total",
            &[("listener", "tunnel"), ("result", result)],
        )
    }

    fn wait_streams(&self, result: &str, n: f64) {
        let what = format!("ward_hbone_streams_total{{result={result}}} = {n}");
        wait_metrics(self.admin, &what, |m| {
            m.value(
                "ward_hbone_streams_total",
                &[("listener", "tunnel"), ("result", result)],
            ) >= n
        });
    }
}

/// A record's string field.
fn field<'a>(r: &'a Value, key: &str) -> &'a str {
    r[key].as_str().unwrap_or_default()
}
