//! `--workers N`: one event loop or several, each serving both hops.

use super::*;

/// `--workers 1` runs each ward on one single-threaded event loop: both hops, the pooled
/// HTTP/2 link and the app pool still serve many concurrent HTTP/1.1 and h2c requests.
#[test]
fn one_worker_serves_concurrent_requests_on_both_hops() {
    let (_ids, app, pair) = echo_pair(&["--workers", "1"]);
    concurrent_http_through(&app, &pair);
    for ward in [&pair.inbound, &pair.outbound] {
        assert!(
            worker_run_times(ward).is_empty(),
            "one worker needs no worker threads"
        );
    }
}

/// `--workers 2`: each ward serves its connections on two event loops, the main thread's and
/// one worker thread's, each with its own links and app pool. The worker of both wards serves
/// (the outbound's two links to the inbound land on different event loops there), and SIGTERM
/// still drains and exits cleanly.
#[test]
fn two_workers_share_the_connections_and_drain() {
    let (_ids, app, mut pair) = echo_pair(&["--workers", "2"]);
    let before = [worker_run_times(&pair.inbound), worker_run_times(&pair.outbound)];
    concurrent_http_through(&app, &pair);
    let after = [worker_run_times(&pair.inbound), worker_run_times(&pair.outbound)];
    for ((side, before), after) in ["inbound", "outbound"].iter().zip(before).zip(after) {
        let names: Vec<&str> = after.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["ward-worker-1"],
            "{side}: one worker thread besides the main one"
        );
        // An idle worker sleeps in epoll_wait and runs no time at all.
        for ((name, t0), (_, t1)) in before.iter().zip(&after) {
            assert!(t1 > t0, "{side}: {name} served no connection ({t0} -> {t1} ns)");
        }
    }
    for ward in [&mut pair.outbound, &mut pair.inbound] {
        ward.signal("TERM");
        let status = ward
            .wait_exit(Duration::from_secs(10))
            .expect("ward exits after SIGTERM");
        assert!(status.success(), "{status:?}");
    }
}

/// 8 clients, half HTTP/1.1 and half h2c, 5 requests each, each on a new connection, through
/// the pair; every request reaches the app and is recorded by the inbound.
fn concurrent_http_through(app: &HttpApp, pair: &Pair) {
    let out = pair.out_ports[0];
    let threads: Vec<_> = (0..8)
        .map(|i| {
            std::thread::spawn(move || {
                let version = if i % 2 == 0 {
                    "--http1.1"
                } else {
                    "--http2-prior-knowledge"
                };
                for j in 0..5 {
                    let got = curl(&[version, &format!("http://127.0.0.1:{out}/echo/{i}/{j}")]);
                    assert_eq!(got.status, 200, "{got:?}");
                    assert_eq!(got.echo()["target"], format!("/echo/{i}/{j}"), "{got:?}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client thread failed");
    }
    assert_eq!(app.count(), 40);
    assert_eq!(requests(&pair.inbound, 40).len(), 40);
    pair.inbound.assert_no_panic();
    pair.outbound.assert_no_panic();
}

/// The `ward-worker-N` threads of a ward process and the CPU time each has run, in
/// nanoseconds (`/proc/PID/task/TID/schedstat`).
fn worker_run_times(ward: &Ward) -> Vec<(String, u64)> {
    let tasks = format!("/proc/{}/task", ward.pid());
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&tasks).expect("read the task list") {
        let dir = entry.expect("task entry").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if !comm.starts_with("ward-worker") {
            continue;
        }
        let path = dir.join("schedstat");
        let schedstat = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{} unreadable ({e}): this test needs a kernel with schedstats",
                path.display()
            )
        });
        let ns = schedstat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        out.push((comm.to_owned(), ns));
    }
    out.sort();
    out
}
