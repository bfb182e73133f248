//! Raw bytes and HTTP/1.1 on plain sockets: exchanges bounded by [`WAIT`], request heads
//! for hand-written apps, and a small HTTP/1.1 client for ward's listeners and admin server.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{WAIT, local};

/// Connects to `port`, sends `data`, half-closes, and reads until EOF. A reset counts as the
/// end of the reply. Every step is bounded by [`WAIT`].
pub fn exchange(port: u16, data: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&local(port), WAIT).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    // The peer may close before taking everything we send: write errors are not failures.
    let _ = s.write_all(data);
    let _ = s.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "no EOF within {WAIT:?} from 127.0.0.1:{port} (got {} bytes)",
                    out.len()
                )
            }
            Err(_) => break,
        }
    }
    out
}

/// Sends `data` to 127.0.0.1:`port` as is and reads what comes back until the server closes
/// (`true`) or nothing more arrives for `quiet` (`false`). Bounded by [`WAIT`] overall.
pub fn raw_exchange(port: u16, data: &[u8], quiet: Duration) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect_timeout(&local(port), WAIT).expect("connect");
    s.set_write_timeout(Some(WAIT)).unwrap();
    s.set_read_timeout(Some(quiet)).unwrap();
    let _ = s.write_all(data);
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (out, false);
            }
            // A reset: the server closed (perhaps before reading all we sent).
            Err(_) => return (out, true),
        }
        if Instant::now() >= deadline {
            return (out, false);
        }
    }
}

/// The status codes of every HTTP/1.x response head in `raw` (e.g. `[200, 400]`).
pub fn response_statuses(raw: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(raw);
    text.match_indices("HTTP/1.")
        .filter(|(i, _)| *i == 0 || text[..*i].ends_with('\n'))
        .filter_map(|(i, _)| text[i..].split(' ').nth(1)?.get(..3)?.parse().ok())
        .collect()
}

/// For hand-written apps: reads from `s` into `buf` until a request head is complete, takes
/// the head (without its blank line) out of `buf`, and returns it; `None` at EOF or an error.
/// Bytes after the head stay in `buf`.
pub fn read_request_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header lines, names lowercase, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Reads one HTTP/1.1 response from `s` (`Content-Length`, chunked, or until close). `None`
/// when the connection ends (or fails) before a whole response head arrived.
pub fn read_response(s: &mut TcpStream) -> Option<HttpResponse> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut rest = buf[head_end..].to_vec();
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let mut fill = |rest: &mut Vec<u8>, want: usize| -> bool {
        while rest.len() < want {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return false,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
            }
        }
        true
    };
    // 1xx, 204 and 304 never have a body (RFC 9112 section 6.3).
    let body = if status / 100 == 1 || status == 204 || status == 304 {
        Vec::new()
    } else if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        fill(&mut rest, len);
        rest.truncate(len);
        rest
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                let more = rest.len() + 1;
                if !fill(&mut rest, more) {
                    return None;
                }
            };
            let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            rest.drain(..line_end + 2);
            if size == 0 {
                break;
            }
            fill(&mut rest, size + 2);
            body.extend_from_slice(&rest[..size.min(rest.len())]);
            rest.drain(..(size + 2).min(rest.len()));
        }
        body
    } else {
        let _ = s.read_to_end(&mut rest);
        rest
    };
    Some(HttpResponse {
        status,
        headers,
        body,
    })
}

/// Sends one HTTP/1.1 request (`Connection: close`) to 127.0.0.1:`port` and reads the answer.
pub fn http_request(port: u16, method: &str, path: &str) -> HttpResponse {
    let mut s = TcpStream::connect_timeout(&local(port), WAIT)
        .unwrap_or_else(|e| panic!("connect 127.0.0.1:{port}: {e}"));
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    read_response(&mut s)
        .unwrap_or_else(|| panic!("no HTTP response to {method} {path} from 127.0.0.1:{port}"))
}

/// `GET path` on an admin server.
pub fn admin_get(port: u16, path: &str) -> HttpResponse {
    http_request(port, "GET", path)
}
