//! The inbound's keep-alive connections to the app: reused across requests and bursts, given
//! up when the app closes them or its keep-alive timeout nears, and a request never stuck
//! behind another.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// TCP connections (IPv4) in `state` (`/proc/net/tcp` hex: 01 established, 06 time-wait)
/// whose remote end is `port`: the inbound's connections to the app.
fn sockets_to(port: u16, state: &str) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && f[3] == state
                && f[2]
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                    == Some(port)
        })
        .count()
}

/// A ward pair whose inbound forwards to `app` (HTTP, the frontend allowed).
fn pair_in_front_of(app: &App) -> (Ids, Pair) {
    let ids = ids();
    let pair = start_pair(&ids, &[Route::http("web", app.addr, &allow_frontend())]);
    (ids, pair)
}

/// A keep-alive HTTP/1.1 connection to the pair's outbound.
fn keep_alive_client(pair: &Pair) -> std::net::TcpStream {
    let client = std::net::TcpStream::connect(local(pair.out_ports[0])).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    client
}

/// `GET path` on `client`, and its response.
fn get_on(client: &mut std::net::TcpStream, path: &str) -> Option<HttpResponse> {
    use std::io::Write;
    client
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())
        .unwrap();
    read_response(client)
}

/// Two waves of 64 concurrent slow requests: the first opens an app connection for each, the
/// second reuses them; the inbound closes none in between (no churn under steady
/// concurrency, which a too-small idle pool would cause).
#[test]
fn repeated_bursts_reuse_app_connections() {
    let (_ids, app, pair) = echo_pair(&[]);
    let out = pair.out_ports[0];
    let wave = |w: usize| {
        let threads: Vec<_> = (0..64)
            .map(|i| {
                std::thread::spawn(move || {
                    let got = curl(&[&format!("http://127.0.0.1:{out}/burst/{w}/{i}?delay_ms=700")]);
                    assert_eq!(got.status, 200, "{got:?}");
                })
            })
            .collect();
        // The most app connections open at once while the wave runs (sampled, not read once
        // at a fixed moment: 64 curl processes take a while to start on a busy machine).
        let mut during = 0;
        while !threads.iter().all(|t| t.is_finished()) {
            during = during.max(sockets_to(app.addr.port(), "01"));
            std::thread::sleep(Duration::from_millis(20));
        }
        for t in threads {
            t.join().expect("a client thread failed");
        }
        during
    };
    let first = wave(0);
    assert!(
        first > 32,
        "64 slow requests at once need many app connections, saw {first}"
    );
    std::thread::sleep(Duration::from_millis(200));
    wave(1);
    std::thread::sleep(Duration::from_millis(200));
    let closed = sockets_to(app.addr.port(), "06");
    assert_eq!(
        closed, 0,
        "the inbound closed {closed} app connections between bursts"
    );
    assert!(
        sockets_to(app.addr.port(), "01") >= first,
        "idle app connections were dropped"
    );
    assert_eq!(app.count(), 128);
    pair.inbound.assert_no_panic();
}

/// The inbound's keep-alive connections to an HTTP/1.1 app: reused after responses with a
/// body, a chunked body (with and without trailers) and no body; not reused after `Connection: close`; and a connection
/// the app closed while it sat idle costs the next request nothing (it goes on a new one).
#[test]
fn app_connections_are_reused_until_the_app_closes_them() {
    use std::io::Write;
    // Answers by path; closes a connection idle for 300 ms, as apps with a short keep-alive
    // timeout do (Node's default is 5 s).
    let app = App::spawn(|mut s, _| {
        let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
        let mut buf = Vec::new();
        while let Some(head) = read_request_head(&mut s, &mut buf) {
            let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
            let reply: &[u8] = match path.as_str() {
                "/no-content" => b"HTTP/1.1 204 No Content\r\n\r\n",
                "/empty" => b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                "/trailers" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n",
                "/close" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            };
            if s.write_all(reply).is_err() || path == "/close" {
                return;
            }
        }
    });
    let (_ids, pair) = pair_in_front_of(&app);
    let mut client = keep_alive_client(&pair);
    let mut get = |path: &str| {
        let r = get_on(&mut client, path).unwrap_or_else(|| panic!("no response to {path}"));
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    };

    for path in [
        "/a",
        "/b",
        "/no-content",
        "/no-content",
        "/empty",
        "/chunked",
        "/trailers",
        "/c",
    ] {
        let (status, body) = get(path);
        assert_eq!(status, if path == "/no-content" { 204 } else { 200 }, "{path}");
        if path == "/chunked" || path == "/trailers" {
            assert_eq!(body, "abc");
        }
    }
    assert_eq!(
        app.connections(),
        1,
        "one app connection for eight requests in a row"
    );

    // The app closes the idle connection; the next request still succeeds.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(get("/after-idle").0, 200);
    assert_eq!(app.connections(), 2);

    // `Connection: close` from the app: that connection is not used again.
    for path in ["/close", "/d", "/e"] {
        assert_eq!(get(path).0, 200, "{path}");
    }
    assert_eq!(app.connections(), 3);

    let statuses: Vec<Value> = requests(&pair.inbound, 12)
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert!(statuses.iter().all(|s| s == 200 || s == 204), "{statuses:?}");
    pair.inbound.assert_no_panic();
}

/// The app closes a keep-alive connection just as a request arrives on it (its idle timeout
/// fired as the request was on the way): a GET without a body is sent again on a new
/// connection and the caller sees the app's answer; a POST, or a GET with a body, is not sent
/// twice (502).
#[test]
fn a_request_the_app_dropped_on_an_idle_connection_is_sent_again_only_if_safe() {
    use std::io::Write;
    use std::sync::Mutex;
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    // Answers the first request on each connection; reads any later one whose path starts
    // with /race and closes without an answer.
    let app = App::spawn(move |mut s, _| {
        let mut buf = Vec::new();
        let mut first = true;
        while let Some(head) = read_request_head(&mut s, &mut buf) {
            let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
            log.lock().unwrap().push(path.clone());
            if !first && path.starts_with("/race") {
                return;
            }
            first = false;
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .is_err()
            {
                return;
            }
        }
    });
    let (_ids, pair) = pair_in_front_of(&app);
    let mut client = keep_alive_client(&pair);
    let mut send = |req: &str| {
        client.write_all(req.as_bytes()).unwrap();
        read_response(&mut client).map(|r| r.status)
    };
    let times = |path: &str| seen.lock().unwrap().iter().filter(|p| *p == path).count();

    assert_eq!(send("GET /warm HTTP/1.1\r\nHost: app\r\n\r\n"), Some(200));
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(send("GET /race-get HTTP/1.1\r\nHost: app\r\n\r\n"), Some(200));
    assert_eq!(
        times("/race-get"),
        2,
        "sent on the idle connection, then on a new one"
    );
    assert_eq!(app.connections(), 2);

    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        send("POST /race-post HTTP/1.1\r\nHost: app\r\nContent-Length: 1\r\n\r\nx"),
        Some(502)
    );
    assert_eq!(times("/race-post"), 1, "a POST is never sent twice");

    // A GET with a body: a new connection, answered; then the race on it once idle.
    let mut client = keep_alive_client(&pair);
    assert_eq!(get_on(&mut client, "/warm-again").map(|r| r.status), Some(200));
    std::thread::sleep(Duration::from_millis(800));
    client
        .write_all(b"GET /race-body HTTP/1.1\r\nHost: app\r\nContent-Length: 1\r\n\r\nx")
        .unwrap();
    assert_eq!(read_response(&mut client).map(|r| r.status), Some(502));
    assert_eq!(
        times("/race-body"),
        1,
        "a request with a body is never sent twice"
    );

    let statuses: Vec<Value> = requests(&pair.inbound, 5)
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert_eq!(statuses, [200, 200, 502, 200, 502], "{statuses:?}");
    pair.inbound.assert_no_panic();
}

/// The app says `Keep-Alive: timeout=2`: the inbound stops using the connection before those
/// two seconds are up, and closes it itself, so no request goes out on a connection the app
/// is about to close. (This app would drop a request arriving after its timeout instead of
/// answering it.)
#[test]
fn the_app_keep_alive_timeout_is_honoured() {
    use std::io::Write;
    use std::time::Instant;
    let closed_by_ward = Arc::new(AtomicUsize::new(0));
    let closed = closed_by_ward.clone();
    let app = App::spawn(move |mut s, _| {
        let mut buf = Vec::new();
        let mut last = Instant::now();
        while let Some(_head) = read_request_head(&mut s, &mut buf) {
            if last.elapsed() >= Duration::from_secs(2) {
                return;
            }
            let reply = b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=2\r\nContent-Length: 2\r\n\r\nok";
            if s.write_all(reply).is_err() {
                return;
            }
            last = Instant::now();
        }
        closed.fetch_add(1, Ordering::SeqCst);
    });
    let (_ids, pair) = pair_in_front_of(&app);
    let mut client = keep_alive_client(&pair);
    let mut get = |path: &str| get_on(&mut client, path).map(|r| r.status);
    assert_eq!(get("/a"), Some(200));
    assert_eq!(get("/b"), Some(200));
    let answered = Instant::now();
    assert_eq!(app.connections(), 1);
    // ward keeps it for 1 s (the app's 2 s less a second of margin), then closes it.
    while closed_by_ward.load(Ordering::SeqCst) == 0 && answered.elapsed() < Duration::from_millis(1900) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        closed_by_ward.load(Ordering::SeqCst),
        1,
        "the inbound closes the connection before the app's timeout"
    );
    assert!(
        answered.elapsed() >= Duration::from_millis(500),
        "closed too early"
    );
    assert_eq!(get("/c"), Some(200));
    assert_eq!(app.connections(), 2, "a new connection, not the expiring one");
    pair.inbound.assert_no_panic();
}

/// A keep-alive connection from the app that stays quiet past the second after which ward
/// parks it (hyper's buffers given back) is served as before: the same connection, each
/// request once, one access record with every byte.
#[test]
fn a_keep_alive_connection_quiet_past_parking_is_served_as_before() {
    use std::io::Write;
    let app = App::spawn(move |mut s, _| {
        let mut buf = Vec::new();
        while read_request_head(&mut s, &mut buf).is_some() {
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .is_err()
            {
                return;
            }
        }
    });
    let (_ids, pair) = pair_in_front_of(&app);
    let mut client = keep_alive_client(&pair);
    for path in ["/a", "/b", "/c"] {
        let r = get_on(&mut client, path);
        assert_eq!(r.map(|r| r.status), Some(200), "{path}");
        std::thread::sleep(Duration::from_millis(2500));
    }
    drop(client);
    let access = pair
        .outbound
        .wait_record("the client connection's access record", |r| {
            r["kind"] == "access" && r["listener"] == "web"
        });
    let request = "GET /a HTTP/1.1\r\nHost: app\r\n\r\n".len();
    assert_eq!(access["bytes_in"], 3 * request, "{access}");
    assert_eq!(access["reason"], "closed", "{access}");
    let records = pair.outbound.records();
    let requests = records.iter().filter(|r| r["kind"] == "request").count();
    let accesses = records.iter().filter(|r| r["kind"] == "access").count();
    assert_eq!((requests, accesses), (3, 1), "{records:?}");
    pair.outbound.assert_no_panic();
}

/// The app answers an upload before reading its body (as a 401 or 413 would), and the upload
/// then stalls: the connection it is on is still busy sending, so another request must not
/// wait for it; it gets another app connection at once.
#[test]
fn a_request_does_not_wait_behind_an_upload_the_app_answered_early() {
    use std::io::{Read, Write};
    use std::time::Instant;
    let app = App::spawn(|mut s, _| {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        while let Some(head) = read_request_head(&mut s, &mut buf) {
            let head = head.to_ascii_lowercase();
            // Answer first, then read (and drop) whatever body the request has.
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .is_err()
            {
                return;
            }
            let mut body: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while body > 0 {
                let n = if buf.is_empty() {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            buf.extend_from_slice(&chunk[..n]);
                            continue;
                        }
                    }
                } else {
                    buf.len().min(body)
                };
                buf.drain(..n);
                body -= n;
            }
        }
    });
    let ids = ids();
    let pair = start_pair(&ids, &[Route::http("web", app.addr, &allow_frontend())]);
    let out = pair.out_ports[0];
    let get = |path: &str| {
        let mut c = std::net::TcpStream::connect(local(out)).unwrap();
        c.set_read_timeout(Some(WAIT)).unwrap();
        c.write_all(format!("GET {path} HTTP/1.1\r\nHost: app\r\n\r\n").as_bytes())
            .unwrap();
        read_response(&mut c).map(|r| r.status)
    };
    // Warm the pair and leave one idle app connection.
    assert_eq!(get("/warm"), Some(200));

    let uploader = std::thread::spawn(move || {
        let mut c = std::net::TcpStream::connect(local(out)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Length: 20\r\n\r\n0123456789")
            .unwrap();
        std::thread::sleep(Duration::from_secs(4));
        c.write_all(b"0123456789").unwrap();
        read_response(&mut c).map(|r| r.status)
    });
    std::thread::sleep(Duration::from_millis(700));
    let started = Instant::now();
    assert_eq!(get("/meanwhile"), Some(200));
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(2),
        "a request waited {waited:?} behind a stalled upload on a pooled app connection"
    );
    assert_eq!(uploader.join().unwrap(), Some(200));
    pair.inbound.assert_no_panic();
}
