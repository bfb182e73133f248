//! Connection reuse between the sidecars: many requests, sequential or concurrent, ride one
//! sidecar-to-sidecar connection.

use super::*;

/// 200 requests from one curl over one keep-alive connection: all succeed, the outbound sees
/// one client connection (one `src` in its records) and the inbound one pooled connection.
#[test]
fn two_hundred_keepalive_requests_reuse_one_connection() {
    let (_ids, app, pair) = echo_pair(&[]);
    let urls: Vec<String> = (0..200)
        .map(|i| format!("http://127.0.0.1:{}/ka/{i}", pair.out_ports[0]))
        .collect();
    let out = run(
        curl_cmd()
            .args([
                "--max-time",
                "20",
                "--http1.1",
                "-w",
                // (A leading '@' would make curl read the format from a file.)
                "\n@@%{http_code} %{num_connects}\n",
            ])
            .args(&urls),
        b"",
        Duration::from_secs(25),
    );
    assert_eq!(out.code(), 0, "curl failed:\n{}", out.stderr());
    let stdout = out.stdout();
    let lines: Vec<&str> = stdout
        .split("@@")
        .skip(1)
        .map(|l| l.lines().next().unwrap_or_default())
        .collect();
    assert_eq!(lines.len(), 200, "{stdout}");
    assert!(lines.iter().all(|l| l.starts_with("200 ")), "{lines:?}");
    let connects: u32 = lines.iter().map(|l| l[4..].trim().parse::<u32>().unwrap()).sum();
    assert_eq!(connects, 1, "curl opened more than one connection: {lines:?}");

    let want: BTreeSet<String> = (0..200).map(|i| format!("/ka/{i}")).collect();
    let got: BTreeSet<String> = app.seen().into_iter().map(|s| s.target).collect();
    assert_eq!(got, want);

    let outbound = requests(&pair.outbound, 200);
    assert_eq!(outbound.len(), 200);
    assert!(outbound.iter().all(|r| r["status"] == 200), "{outbound:?}");
    let srcs = distinct(&outbound, "src");
    assert_eq!(srcs.len(), 1, "200 requests over one client connection: {srcs:?}");
    let inbound = requests(&pair.inbound, 200);
    assert_eq!(inbound.len(), 200);
    assert!(
        inbound
            .iter()
            .all(|r| r["status"] == 200 && r["decision"] == "allow")
    );
    let srcs = distinct(&inbound, "src");
    assert_eq!(srcs.len(), 1, "one sidecar-to-sidecar connection: {srcs:?}");
}

/// 100 requests, 5 each over 20 concurrent client connections (opened together, each request
/// held 40 ms at the app so they overlap), all ride ONE HTTP/2 connection between the wards.
#[test]
fn concurrent_requests_share_one_sidecar_to_sidecar_connection() {
    use http_body_util::{BodyExt as _, Empty};
    use hyper_util::rt::TokioIo;

    let (_ids, app, pair) = echo_pair(&[]);
    let out = pair.out_ports[0];

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let results: Vec<(u16, String, String)> = rt.block_on(async move {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(20));
        let mut tasks = tokio::task::JoinSet::new();
        for c in 0..20 {
            let barrier = barrier.clone();
            tasks.spawn(async move {
                let tcp = tokio::net::TcpStream::connect(local(out)).await.unwrap();
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .unwrap();
                tokio::spawn(conn);
                barrier.wait().await;
                let mut got = Vec::new();
                for i in 0..5 {
                    let want = format!("/c/{c}/{i}?delay_ms=40");
                    let req = http::Request::get(want.as_str())
                        .header("host", format!("127.0.0.1:{out}"))
                        .body(Empty::<bytes::Bytes>::new())
                        .unwrap();
                    send.ready().await.unwrap();
                    let resp = send.send_request(req).await.unwrap();
                    let status = resp.status().as_u16();
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    let echo: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    got.push((status, want, echo["target"].as_str().unwrap_or("").to_owned()));
                }
                got
            });
        }
        let all = tokio::time::timeout(WAIT * 2, async {
            let mut all = Vec::new();
            while let Some(r) = tasks.join_next().await {
                all.extend(r.unwrap());
            }
            all
        });
        all.await.expect("100 requests within 10 s")
    });
    assert_eq!(results.len(), 100);
    for (status, want, target) in &results {
        assert_eq!((*status, target), (200, want), "request {want}");
    }
    assert_eq!(app.count(), 100);

    let outbound = requests(&pair.outbound, 100);
    assert_eq!(distinct(&outbound, "src").len(), 20, "20 client connections");
    let inbound = requests(&pair.inbound, 100);
    assert_eq!(inbound.len(), 100);
    let srcs = distinct(&inbound, "src");
    assert_eq!(
        srcs.len(),
        1,
        "every request must ride the one pooled HTTP/2 connection: {srcs:?}"
    );
    assert!(inbound.iter().all(|r| r["status"] == 200), "{inbound:?}");
}
