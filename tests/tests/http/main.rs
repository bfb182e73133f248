#![allow(clippy::unwrap_used, clippy::expect_used)]
//! HTTP at L7 through two real ward processes: curl (HTTP/1.1, h2c prior knowledge, h2 over
//! mTLS) and in-process hyper clients → outbound ward → one pooled HTTP/2 mTLS connection →
//! inbound ward → an HTTP app that echoes what it received. Per-request policy (methods,
//! paths, headers; deny wins), XFCC, path normalization against bypasses, request smuggling,
//! connection reuse on both hops, and `protocol: auto`.
//!
//! One module per topic: `answers` (every answer a caller can get), `clients` (curl through
//! the pair and straight to the inbound,
//! XFCC), `reuse` (one sidecar-to-sidecar connection for many requests), `policy`
//! (per-request rules, path spellings, Host), `smuggling` (ambiguous framing), `detection`
//! (`protocol: auto` and h2c detection), `workers` (`--workers N`) and `app_pool` (the
//! inbound's keep-alive connections to the app). The fixtures they share are here.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use ward_e2e::*;

mod answers;
mod app_pool;
mod clients;
mod detection;
mod peers;
mod policy;
mod reuse;
mod smuggling;
mod websocket;
mod workers;

/// What one curl run got: the (last) response head and body, and `%{http_version}`.
#[derive(Debug)]
struct Curled {
    status: u16,
    version: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Curled {
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The app's echo of the request.
    fn echo(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not the app's JSON echo ({e}): {self:?}"))
    }
}

fn curl_cmd() -> Command {
    let mut cmd = Command::new(require_tool("curl"));
    cmd.args(["-sS", "--max-time", "5"]);
    cmd
}

/// curl `args` (one URL), which must succeed at the transport level.
fn curl(args: &[&str]) -> Curled {
    let out = run(
        curl_cmd()
            .args(["-i", "-w", "\n%{http_code} %{http_version}"])
            .args(args),
        b"",
        Duration::from_secs(8),
    );
    assert_eq!(
        out.code(),
        0,
        "curl {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        out.stdout(),
        out.stderr()
    );
    let stdout = out.stdout();
    let (mut rest, tail) = stdout.rsplit_once('\n').unwrap();
    let (status, version) = tail.split_once(' ').unwrap();
    // Skip interim responses (100 Continue): take the last head.
    let mut head = "";
    while rest.starts_with("HTTP/") {
        let (h, b) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
        head = h;
        rest = b;
    }
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Curled {
        status: status.parse().unwrap(),
        version: version.to_owned(),
        headers,
        body: rest.to_owned(),
    }
}

/// The `kind: request` records of a ward's audit log, at least `n` of them.
fn requests(ward: &Ward, n: usize) -> Vec<Value> {
    ward.wait_records(n, "of kind request", |r| r["kind"] == "request")
}

/// The usual fixture: the echo app behind a pair (`ward run` with `args`) whose inbound
/// allows the frontend everything. Keep the `Ids`: they hold the SVID files.
fn echo_pair(args: &[&str]) -> (Ids, HttpApp, Pair) {
    let ids = ids();
    let app = HttpApp::spawn();
    let rules = allow_frontend();
    let pair = start_pair_with(&ids, &[Route::http("backend", app.addr, &rules)], args);
    (ids, app, pair)
}

fn distinct(records: &[Value], key: &str) -> BTreeSet<String> {
    records.iter().map(|r| r[key].to_string()).collect()
}
