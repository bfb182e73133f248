//! Protocol detection for `protocol: auto`: a bounded look at the first bytes, with a timeout,
//! tells HTTP/1.x, the HTTP/2 preface and opaque bytes apart. Opaque (or silent, for
//! server-first protocols) falls back to TCP forwarding.

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
    Opaque,
}

/// Enough bytes to tell: the 24-byte HTTP/2 preface, or the longest method plus a space.
pub const PEEK: usize = 24;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: &[&[u8]] = &[
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
];

/// Classifies a prefix; `None` while more bytes could still change the answer.
pub fn classify(prefix: &[u8]) -> Option<Detected> {
    if prefix.is_empty() {
        return None;
    }
    let n = prefix.len().min(H2_PREFACE.len());
    if prefix[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Detected::Http2);
    }
    let mut undecided = false;
    for m in METHODS {
        let n = prefix.len().min(m.len());
        if prefix[..n] == m[..n] {
            if n == m.len() {
                return Some(Detected::Http1);
            }
            undecided = true;
        }
    }
    if undecided { None } else { Some(Detected::Opaque) }
}

/// Peeks at a plaintext socket without consuming; silence for `within` means opaque.
pub async fn peek_tcp(tcp: &TcpStream, within: Duration) -> Detected {
    let mut buf = [0u8; PEEK];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => return Detected::Opaque,
        };
        if n == 0 {
            return Detected::Opaque;
        }
        if let Some(d) = classify(&buf[..n]) {
            return d;
        }
        if n == buf.len() || tokio::time::Instant::now() >= deadline {
            return Detected::Opaque;
        }
        // peek returns at once while data is buffered: wait a little for more to arrive.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Reads up to [`PEEK`] bytes from a stream that cannot peek (TLS) and classifies them; the
/// bytes read are handed back in a [`Rewind`] so nothing is lost.
pub async fn read_prefix<S: AsyncRead + Unpin>(mut io: S, within: Duration) -> (Detected, Rewind<S>) {
    let mut buf = BytesMut::with_capacity(PEEK);
    let deadline = tokio::time::Instant::now() + within;
    let detected = loop {
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break classify(&buf).unwrap_or(Detected::Opaque),
            Ok(Ok(_)) => {
                if let Some(d) = classify(&buf) {
                    break d;
                }
                if buf.len() >= PEEK {
                    break Detected::Opaque;
                }
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

    pub fn inner(&self) -> &S {
        &self.inner
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
    fn classification() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"DELETE /x"), Some(Detected::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Detected::Http2)
        );
        assert_eq!(classify(b"PRI * HTTP/2"), None);
        assert_eq!(classify(b"\x16\x03\x01"), Some(Detected::Opaque));
        assert_eq!(classify(b"SSH-2.0-OpenSSH"), Some(Detected::Opaque));
        assert_eq!(classify(b"GETX"), Some(Detected::Opaque));
        assert_eq!(classify(b""), None);
    }

    #[tokio::test]
    async fn rewind_replays_the_prefix() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b"GET / HTTP/1.1\r\n\r\n")
            .await
            .ok();
        drop(a);
        let (d, mut r) = read_prefix(b, Duration::from_secs(1)).await;
        assert_eq!(d, Detected::Http1);
        let mut all = Vec::new();
        r.read_to_end(&mut all).await.ok();
        assert_eq!(all, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn silence_is_opaque() {
        let (_a, b) = tokio::io::duplex(64);
        let (d, _) = read_prefix(b, Duration::from_millis(20)).await;
        assert_eq!(d, Detected::Opaque);
    }
}
