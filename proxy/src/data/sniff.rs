//! Protocol detection for `protocol: auto`: a bounded look at the first bytes tells HTTP/1.x,
//! the HTTP/2 preface and opaque bytes apart.
//!
//! Detection errs towards HTTP, because opaque bytes skip every HTTP rule: only bytes that
//! cannot start an HTTP request are opaque (any method token, in any case, is HTTP/1, and
//! hyper answers 400 to what is not). A prefix still undecided when `detect` runs out is
//! handed to the HTTP parser, never to TCP forwarding. A peer that sends nothing is not
//! guessed at either: it is waited for (up to the idle timeout) and then closed, so
//! server-first protocols need `protocol: tcp` (or a `ports` override).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    /// HTTP, but the bytes so far could still be the start of the HTTP/2 preface: hyper
    /// reads on to decide.
    Http,
    Opaque,
    /// Nothing arrived before the wait for a first byte ran out (or the peer closed).
    Silent,
}

/// Enough bytes to tell: the 24-byte HTTP/2 preface, or the longest method plus a space.
pub const PEEK: usize = 24;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// RFC 9110 `tchar`: what a method token is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Classifies a prefix; `None` while more bytes could still change the answer.
pub fn classify(prefix: &[u8]) -> Option<Detected> {
    if prefix.is_empty() {
        return None;
    }
    let n = prefix.len().min(H2_PREFACE.len());
    if prefix[..n] == H2_PREFACE[..n] && n == H2_PREFACE.len() {
        return Some(Detected::Http2);
    }
    // An HTTP/1 request starts with a method token and a space (or an empty line, which
    // servers may skip); `PRI ` is also a token, so a partial preface is HTTP too.
    if prefix[0] == b'\r' || prefix[0] == b'\n' {
        return Some(Detected::Http1);
    }
    for (i, &b) in prefix.iter().enumerate() {
        if b == b' ' {
            return Some(if i > 0 {
                http1_unless_preface(prefix)
            } else {
                Detected::Opaque
            });
        }
        if !is_tchar(b) {
            return Some(Detected::Opaque);
        }
    }
    if prefix.len() >= PEEK {
        Some(Detected::Http1)
    } else {
        None
    }
}

/// HTTP/1 unless the bytes so far could still be the HTTP/2 preface.
fn http1_unless_preface(prefix: &[u8]) -> Detected {
    let n = prefix.len().min(H2_PREFACE.len());
    if prefix[..n] == H2_PREFACE[..n] {
        Detected::Http
    } else {
        Detected::Http1
    }
}

/// What an undecided prefix is taken for when time runs out: a token so far, so HTTP.
fn undecided(prefix: &[u8]) -> Detected {
    if prefix.is_empty() {
        Detected::Silent
    } else {
        classify(prefix).unwrap_or_else(|| http1_unless_preface(prefix))
    }
}

/// On a listener that speaks HTTP: which version, from the client's first bytes (waits for
/// them, not for more); anything unclear is left to hyper.
pub async fn peek_http(tcp: &TcpStream) -> Detected {
    let mut buf = [0u8; PEEK];
    let n = tcp.peek(&mut buf).await.unwrap_or(0);
    match classify(&buf[..n]) {
        Some(d @ (Detected::Http1 | Detected::Http2 | Detected::Http)) => d,
        // Not HTTP at all: hyper's HTTP/1 parser answers 400.
        Some(_) => Detected::Http1,
        None if n == 0 => Detected::Http,
        None => http1_unless_preface(&buf[..n]),
    }
}

/// Peeks at a plaintext socket without consuming: waits up to `first` for a first byte, then
/// up to `detect` for enough bytes to decide.
pub async fn peek_tcp(tcp: &TcpStream, first: Duration, detect: Duration) -> Detected {
    let mut buf = [0u8; PEEK];
    if !matches!(
        tokio::time::timeout(first, tcp.peek(&mut buf[..1])).await,
        Ok(Ok(1))
    ) {
        return Detected::Silent;
    }
    let deadline = tokio::time::Instant::now() + detect;
    loop {
        let n = match tcp.peek(&mut buf).await {
            Ok(n) => n,
            Err(_) => return Detected::Silent,
        };
        if let Some(d) = classify(&buf[..n]) {
            return d;
        }
        if n == 0 || tokio::time::Instant::now() >= deadline {
            return undecided(&buf[..n]);
        }
        // peek returns at once while data is buffered: wait a little for more to arrive.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Reads up to [`PEEK`] bytes from a stream that cannot peek (TLS) and classifies them: waits
/// up to `first` for a first byte, then up to `detect` to decide. The bytes read are handed
/// back in a [`Rewind`] so nothing is lost.
pub async fn read_prefix<S: AsyncRead + Unpin>(
    mut io: S,
    first: Duration,
    detect: Duration,
) -> (Detected, Rewind<S>) {
    let mut buf = BytesMut::with_capacity(PEEK);
    let mut deadline = tokio::time::Instant::now() + first;
    let detected = loop {
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break undecided(&buf),
            Ok(Ok(_)) => {
                if let Some(d) = classify(&buf) {
                    break d;
                }
                if buf.len() >= PEEK {
                    break undecided(&buf);
                }
                // The first bytes are here: the rest of the decision gets `detect`.
                deadline = deadline.min(tokio::time::Instant::now() + detect);
            }
        }
    };
    (detected, Rewind::new(buf.freeze(), io))
}

/// A stream that first yields bytes already read from it.
#[derive(Debug)]
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Rewind { prefix, inner }
    }

    /// The prefix bytes not yet read, and the stream.
    pub fn into_parts(self) -> (Bytes, S) {
        (self.prefix, self.inner)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_errs_towards_http() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"DELETE /x"), Some(Detected::Http1));
        assert_eq!(classify(b"get /x"), Some(Detected::Http1), "any case");
        assert_eq!(
            classify(b"PROPFIND /x"),
            Some(Detected::Http1),
            "any method token"
        );
        assert_eq!(
            classify(b"\r\nGET / HTTP/1.1"),
            Some(Detected::Http1),
            "a leading empty line"
        );
        assert_eq!(classify(b"GE"), None);
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Detected::Http2)
        );
        assert_eq!(
            classify(b"PRI * HTTP/2"),
            Some(Detected::Http),
            "hyper decides the rest"
        );
        assert_eq!(classify(b"PRIX /a"), Some(Detected::Http1));
        assert_eq!(undecided(b"PR"), Detected::Http, "could be the preface");
        assert_eq!(classify(b"\x16\x03\x01"), Some(Detected::Opaque));
        assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Some(Detected::Opaque));
        assert_eq!(classify(b" GET"), Some(Detected::Opaque));
        assert_eq!(classify(b"hello\n"), Some(Detected::Opaque));
        assert_eq!(classify(b""), None);
        assert_eq!(
            undecided(b"GE"),
            Detected::Http1,
            "undecided at the deadline is HTTP"
        );
        assert_eq!(undecided(b""), Detected::Silent);
    }

    #[tokio::test]
    async fn rewind_replays_the_prefix() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"GET / HTTP/1.1\r\n\r\n")
            .await
            .ok();
        drop(a);
        let (d, mut r) = read_prefix(b, Duration::from_secs(1), Duration::from_secs(1)).await;
        assert_eq!(d, Detected::Http1);
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.ok();
        assert_eq!(all, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn silence_is_silent_and_a_slow_request_is_still_http() {
        let (_a, b) = tokio::io::duplex(64);
        let (d, _) = read_prefix(b, Duration::from_millis(20), Duration::from_millis(20)).await;
        assert_eq!(d, Detected::Silent);
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"GE").await.ok();
        let (d, _) = read_prefix(b, Duration::from_secs(1), Duration::from_millis(20)).await;
        assert_eq!(
            d,
            Detected::Http1,
            "a request sent a byte at a time is never opaque"
        );
    }
}
