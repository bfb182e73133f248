//! HTTP/1.1 keep-alive requests per second through a ward pair versus straight to the app.
//!
//!     cargo bench -p ward-benches --bench http_keepalive
//!
//! The bench first runs `cargo build --release -p ward` (a no-op when target/release/ward is
//! fresh; the first fat-LTO build takes minutes) and then starts, on 127.0.0.1: a small hyper
//! app answering `200 ok`, an inbound ward (`protocol: http`) in front of it, and an outbound ward
//! (`protocol: http`) pointing at the inbound. One in-process hyper HTTP/1.1 client sends
//! `GET /` over keep-alive connections for a fixed window, alternately straight to the app and
//! through outbound → one pooled HTTP/2 mTLS connection → inbound → app, in the same run.
//!
//! Reading the output: one line per window with requests/s for `direct` and `ward`, then per
//! scenario the medians and `ward/direct` (1.00 = no cost; 0.25 = a quarter of the direct
//! rate). `1 conn` is latency-bound (one request in flight); `16 conns` is throughput-bound.
//! The client, both wards and the app share the machine's cores, so the ratio is the cost of
//! two extra proxies plus TLS on the same CPUs, not the cost of one ward on a spare core. Each
//! ward also writes one audit record per request (to a file), as in production.
//!
//! Settings: WARD_BENCH_SECS (window length, default 3), WARD_BENCH_ROUNDS (default 3). Without
//! `--bench` (e.g. `cargo test --benches`) it only says how to run it and exits.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Full};
use hyper_util::rt::TokioIo;
use ward_e2e::{Route, allow_frontend, ids, local, start_pair};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `cargo build --release -p ward`, so the bench never measures a stale binary.
fn build_ward() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    eprintln!("building the release ward (cargo build --release -p ward) ...");
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "ward"])
        .current_dir(root)
        .status()
        .expect("run cargo");
    assert!(status.success(), "cargo build --release -p ward failed");
}

/// The app: HTTP/1.1 keep-alive, `200 ok` for everything, on its own thread and runtime.
fn spawn_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
    });
    addr
}

/// Requests per second over `conns` keep-alive connections to `port` for `window`.
async fn measure(port: u16, conns: usize, window: Duration) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + window;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let done = done.clone();
        tasks.spawn(async move {
            let tcp = tokio::net::TcpStream::connect(local(port)).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .unwrap();
            tokio::spawn(conn);
            let host = format!("127.0.0.1:{port}");
            while Instant::now() < deadline {
                let req = http::Request::get("/")
                    .header("host", host.as_str())
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                send.ready().await.unwrap();
                let resp = send.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                resp.into_body().collect().await.unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!(
            "http_keepalive: a load bench; run it with `cargo bench -p ward-benches --bench http_keepalive`"
        );
        return;
    }
    let window = Duration::from_secs(env_or("WARD_BENCH_SECS", 3));
    let rounds = env_or("WARD_BENCH_ROUNDS", 3).max(1);
    build_ward();

    let app = spawn_app();
    let ids = ids();
    let rules = allow_frontend();
    let pair = start_pair(&ids, &[Route::http("backend", app, &rules)]);
    let (direct, via_ward) = (app.port(), pair.out_ports[0]);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "http_keepalive: GET / with a 2-byte body, {window:?} windows, {rounds} rounds, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut summary = Vec::new();
    for conns in [1usize, 16] {
        // Warm up both paths (connections, the pooled HTTP/2 connection, caches).
        rt.block_on(measure(direct, conns, Duration::from_millis(500)));
        rt.block_on(measure(via_ward, conns, Duration::from_millis(500)));
        let (mut d, mut w) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            let rd = rt.block_on(measure(direct, conns, window));
            let rw = rt.block_on(measure(via_ward, conns, window));
            println!(
                "  {conns:>2} conn(s) round {round}: direct {rd:>9.0} req/s   ward {rw:>9.0} req/s   ward/direct {:.3}",
                rw / rd
            );
            d.push(rd);
            w.push(rw);
        }
        let (md, mw) = (median(&mut d), median(&mut w));
        summary.push((conns, md, mw));
    }
    println!("medians:");
    for (conns, md, mw) in summary {
        println!(
            "  {conns:>2} conn(s): direct {md:>9.0} req/s   ward {mw:>9.0} req/s   ward/direct {:.3}   (+{:.0} us latency per request)",
            mw / md,
            (1e6 / mw - 1e6 / md) * conns as f64
        );
    }
    pair.inbound.assert_no_panic();
    pair.outbound.assert_no_panic();
}
