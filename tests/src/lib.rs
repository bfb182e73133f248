//! Shared helpers for ward's end-to-end tests: the real `ward` binary, certificates from the
//! dev CA, small TCP apps, audit-log readers and external tools (curl, openssl) with timeouts.
//!
//! Everything here panics with a clear message on failure: it only runs inside tests.
//!
//! The helpers live in modules by concern; every item is re-exported here, so tests just
//! `use ward_e2e::*`:
//!
//! - `pki`: the dev CA and the SVID files it writes ([`Pki`], [`SvidFiles`]).
//! - `yaml`: config builders ([`identity_yaml`], [`inbound_yaml`], [`outbound_yaml`],
//!   [`ward_yaml`]).
//! - `process`: a running `ward run` ([`Ward`]: start, audit records, signals, config
//!   rewrites, exit) and [`is_listening`].
//! - `apps`: the apps behind an inbound ([`App`], [`HttpApp`] and the [`SeenRequest`]s it
//!   records).
//! - `tools`: bounded runs of external processes ([`run`], [`ward()`], [`curl`], openssl
//!   `s_client`, [`require_tool`]).
//! - `raw_http`: bytes and HTTP/1.1 on plain sockets ([`exchange`], [`raw_exchange`],
//!   [`read_request_head`], [`read_response`], [`http_request`], [`admin_get`],
//!   [`response_statuses`]).
//! - `pair`: sidecars to start: an inbound and an outbound ward ([`start_inbound`],
//!   [`start_outbound`]), and the HTTP pair with its routes ([`Pair`], [`start_pair`]).
//! - `metrics`: the admin server's Prometheus metrics ([`Metrics`], [`wait_metrics`]).
//! - `hbone`: HBONE peers of the tests' own, from the wire format with the `h2` crate
//!   ([`HboneClient`] and its [`Tunnel`]s, [`HboneServer`] and the [`SeenConnect`]s it saw).
//! - `kube`: Kubernetes manifests validated offline against the published schemas
//!   ([`validate_manifests`], [`validate_manifest_text`]).
//! - `dirs`: files that change all at once ([`write_atomic`], [`AtomicDir`],
//!   [`svid_dir_files`]).
//!
//! What is left here are the basics every module uses: the wait bound, the mesh's SPIFFE IDs,
//! the `ward` binary, ports and bytes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod apps;
mod dirs;
mod hbone;
mod kube;
mod metrics;
mod pair;
mod pki;
mod process;
mod raw_http;
mod tools;
mod yaml;

pub use apps::*;
pub use dirs::*;
pub use hbone::*;
pub use kube::*;
pub use metrics::*;
pub use pair::*;
pub use pki::*;
pub use process::*;
pub use raw_http::*;
pub use tools::*;
pub use yaml::*;

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

/// The bound every wait in these tests is held to.
pub const WAIT: Duration = Duration::from_secs(5);

/// The SPIFFE IDs of the test mesh.
pub const BACKEND: &str = "spiffe://example.org/ns/default/sa/backend";
pub const FRONTEND: &str = "spiffe://example.org/ns/default/sa/frontend";
pub const INTRUDER: &str = "spiffe://example.org/ns/default/sa/intruder";
pub const PAYMENTS: &str = "spiffe://example.org/ns/default/sa/payments";
pub const PARTNER_CLIENT: &str = "spiffe://partner.org/ns/billing/sa/client";

/// The `ward` binary next to the test executable (target/debug/ward).
pub fn ward_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/<test>-<hash> → target/debug/ward
    let deps = exe.parent().expect("test executable has a directory");
    let bin = deps.parent().expect("deps has a parent").join("ward");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p ward` first (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// A free loopback port: bind :0, take the port, drop the listener. Ports already handed out
/// in this process are never handed out again.
pub fn free_port() -> u16 {
    // Ports below the kernel's ephemeral range (32768+ by default), handed out once per
    // process: a port given to one ward can then never be taken meanwhile by a listener or
    // client socket the kernel numbers itself (apps bound to port 0, outgoing connections).
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 12) as u16 * 1000;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < 1000, "free_port: this test binary used up its 1000 ports");
        let port = base + n;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Polls `ok` every 20 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), different per seed.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// FNV-1a, to name a large payload in assertion messages.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Hex SHA-256 (lowercase), e.g. of a certificate's DER as XFCC's `Hash=` carries it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest.as_ref().iter().fold(String::new(), |mut s, b| {
        write!(s, "{b:02x}").unwrap();
        s
    })
}
