//! `ward shutdown --admin ADDR`: asks a running ward to drain and exit, by `POST /shutdown` on
//! its admin port. A pod's `preStop` hook runs it, so ward stops taking new connections and
//! lets the open ones finish before Kubernetes sends SIGTERM.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long each step (connect, write, read) may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `POST /shutdown` to ward's admin server at `admin`; Ok when it answered 2xx.
pub fn request(admin: SocketAddr) -> Result<(), String> {
    let fail =
        |e: std::io::Error| format!("{admin}: {e} (is ward running, with its admin server on this address?)");
    let mut tcp = TcpStream::connect_timeout(&admin, TIMEOUT).map_err(fail)?;
    tcp.set_read_timeout(Some(TIMEOUT)).map_err(fail)?;
    tcp.set_write_timeout(Some(TIMEOUT)).map_err(fail)?;
    let request = format!(
        "POST /shutdown HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\nUser-Agent: ward/{}\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    tcp.write_all(request.as_bytes()).map_err(fail)?;
    let mut response = Vec::new();
    // Read until close, at most 64 KiB: the answer is a status line and a word.
    let _ = tcp.take(64 * 1024).read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    let status_line = text.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(code) if (200..300).contains(&code) => {
            println!("ward at {admin} is draining");
            Ok(())
        }
        Some(code) => Err(format!("{admin}: POST /shutdown answered {code}: {status_line}")),
        None => Err(format!(
            "{admin}: no HTTP answer to POST /shutdown (got {} bytes)",
            response.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::net::TcpListener;

    use super::*;

    fn serve_once(answer: &'static [u8]) -> (SocketAddr, std::thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            s.write_all(answer).unwrap();
            buf[..n].to_vec()
        });
        (addr, t)
    }

    #[test]
    fn posts_shutdown_and_accepts_2xx() {
        let (addr, t) = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\ndraining\n");
        request(addr).unwrap();
        let sent = String::from_utf8(t.join().unwrap()).unwrap();
        assert!(sent.starts_with("POST /shutdown HTTP/1.1\r\n"), "{sent}");
    }

    #[test]
    fn refuses_other_answers_and_no_server() {
        let (addr, t) = serve_once(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
        let e = request(addr).unwrap_err();
        assert!(e.contains("404"), "{e}");
        t.join().unwrap();
        let (addr, t) = serve_once(b"garbage");
        let e = request(addr).unwrap_err();
        assert!(e.contains("no HTTP answer"), "{e}");
        t.join().unwrap();
        // Nobody listening.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = request(addr).unwrap_err();
        assert!(e.contains("is ward running"), "{e}");
    }
}
