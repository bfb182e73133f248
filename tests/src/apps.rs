//! Apps behind an inbound: plain TCP apps with a handler per connection, and an HTTP app
//! that records every request and echoes it back as JSON.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// A plaintext TCP app on 127.0.0.1 that runs `handler` for each connection on its own thread
/// and counts connections and bytes received.
pub struct App {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub bytes: Arc<AtomicUsize>,
}

impl App {
    pub fn spawn<F>(handler: F) -> App
    where
        F: Fn(TcpStream, &AtomicUsize) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind app");
        let addr = listener.local_addr().expect("app addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let (c, b) = (connections.clone(), bytes.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
                let (h, b) = (handler.clone(), b.clone());
                std::thread::spawn(move || h(stream, &b));
            }
        });
        App {
            addr,
            connections,
            bytes,
        }
    }

    /// Echoes every byte back; at EOF shuts down writing.
    pub fn echo() -> App {
        App::spawn(|mut s, bytes| {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        bytes.fetch_add(n, Ordering::SeqCst);
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = s.shutdown(Shutdown::Write);
        })
    }

    /// A minimal HTTP/1.1 responder: reads the request head, answers `200 ok`, closes.
    pub fn http_ok() -> App {
        App::spawn(|mut s, bytes| {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        bytes.fetch_add(n, Ordering::SeqCst);
                        head.extend_from_slice(&buf[..n]);
                    }
                }
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            let _ = s.shutdown(Shutdown::Write);
            // Drain until the client closes, so the close is orderly.
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        })
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::SeqCst)
    }
}

/// One request as [`HttpApp`] saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    /// The request target as it arrived: path and query.
    pub target: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Every header line, names lowercase, in order.
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
}

impl SeenRequest {
    /// Every value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The request as JSON: `{method, target, version, headers: {name: [values]}, body_len}`.
    pub fn to_json(&self) -> Value {
        let mut headers = serde_json::Map::new();
        for (n, v) in &self.headers {
            headers
                .entry(n.clone())
                .or_insert_with(|| Value::Array(Vec::new()))
                .as_array_mut()
                .unwrap()
                .push(Value::String(v.clone()));
        }
        serde_json::json!({
            "method": self.method,
            "target": self.target,
            "version": self.version,
            "headers": headers,
            "body_len": self.body_len,
        })
    }
}

/// A plaintext HTTP app on 127.0.0.1 (hyper: HTTP/1.1 keep-alive and h2c prior knowledge on
/// the same port) that records every request and answers `200` with the request as JSON
/// ([`SeenRequest::to_json`]). Query options: `delay_ms=N` answers after N ms; `hop=1` (over
/// HTTP/1.1) adds hop-by-hop response headers (`Connection: x-app-hop`, `x-app-hop`,
/// `Keep-Alive`) that a proxy must not pass on. Stops when dropped.
pub struct HttpApp {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl HttpApp {
    pub fn spawn() -> HttpApp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind HTTP app");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("app addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let log = seen.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("app runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((tcp, _)) = accepted else { continue };
                            let log = log.clone();
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(move |req| {
                                    http_app_answer(req, log.clone())
                                });
                                let _ = hyper_util::server::conn::auto::Builder::new(
                                    hyper_util::rt::TokioExecutor::new(),
                                )
                                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                                .await;
                            });
                        }
                        _ = &mut stopped => return,
                    }
                }
            });
        });
        HttpApp {
            addr,
            seen,
            stop: Some(stop),
        }
    }

    /// Every request seen so far, in arrival order.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for HttpApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn http_app_answer(
    req: http::Request<hyper::body::Incoming>,
    log: Arc<Mutex<Vec<SeenRequest>>>,
) -> Result<http::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    use http_body_util::BodyExt as _;
    let (parts, body) = req.into_parts();
    let body_len = body.collect().await.map(|c| c.to_bytes().len()).unwrap_or(0);
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let seen = SeenRequest {
        method: parts.method.to_string(),
        version: format!("{:?}", parts.version),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body_len,
        target,
    };
    log.lock().unwrap().push(seen.clone());
    let query = parts.uri.query().unwrap_or_default();
    let option = |key: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
    };
    if let Some(ms) = option("delay_ms").and_then(|v| v.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut resp = http::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("x-app", "echo");
    if option("hop").as_deref() == Some("1") && parts.version == http::Version::HTTP_11 {
        resp = resp
            .header("connection", "x-app-hop")
            .header("x-app-hop", "1")
            .header("keep-alive", "timeout=30");
    }
    let body = bytes::Bytes::from(seen.to_json().to_string());
    Ok(resp.body(http_body_util::Full::new(body)).unwrap())
}
