//! Bidirectional copy with buffers sized to the traffic.
//!
//! tokio's `copy_bidirectional_with_sizes` allocates both buffers in full up front, so ten
//! thousand idle connections would hold 320 MiB of copy buffers. Here each direction starts
//! with a small buffer and grows it (once, to [`LARGE`]) after reads that fill it: idle and
//! chatty connections stay cheap, bulk ones get full TLS-record-sized reads. No allocation per
//! read: a buffer is allocated at most twice in a connection's life. Half-close is honoured:
//! EOF on one side shuts down writing on the other, and the other direction runs on.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The first buffer of each direction.
pub const SMALL: usize = 2 * 1024;
/// The buffer of a direction that proved busy: four full TLS records, so bulk transfers make
/// few, large reads and writes.
pub const LARGE: usize = 64 * 1024;
/// Full reads of the small buffer before it grows.
const GROW_AFTER: u8 = 2;

#[derive(Debug)]
struct Direction {
    buf: Box<[u8]>,
    pos: usize,
    cap: usize,
    full_reads: u8,
    read_done: bool,
    need_flush: bool,
    shut: bool,
    amt: u64,
}

impl Direction {
    fn new() -> Self {
        Direction {
            buf: vec![0; SMALL].into_boxed_slice(),
            pos: 0,
            cap: 0,
            full_reads: 0,
            read_done: false,
            need_flush: false,
            shut: false,
            amt: 0,
        }
    }

    /// Moves bytes from `r` to `w` until `r` is done and `w` is shut down.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        tally: &AtomicU64,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos == self.cap && !self.read_done {
                self.pos = 0;
                self.cap = 0;
                let mut rb = ReadBuf::new(&mut self.buf);
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            self.cap = n;
                            self.grow_if_busy(n);
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Nothing to read now: push out what was written so far.
                        if self.need_flush {
                            ready!(w.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.cap {
                let n = ready!(w.as_mut().poll_write(cx, &self.buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "write returned 0 bytes",
                    )));
                }
                self.pos += n;
                self.amt += n as u64;
                tally.fetch_add(n as u64, Ordering::Relaxed);
                self.need_flush = true;
            }
            if self.pos == self.cap && self.read_done {
                if self.need_flush {
                    ready!(w.as_mut().poll_flush(cx))?;
                    self.need_flush = false;
                }
                if !self.shut {
                    ready!(w.as_mut().poll_shutdown(cx))?;
                    self.shut = true;
                }
                return Poll::Ready(Ok(self.amt));
            }
        }
    }

    /// After a few reads that fill the small buffer, switch to the large one. Called right
    /// after a read, with the data still to be written: the data is carried over.
    fn grow_if_busy(&mut self, n: usize) {
        if self.buf.len() >= LARGE || n < self.buf.len() {
            return;
        }
        self.full_reads += 1;
        if self.full_reads >= GROW_AFTER {
            let mut large = vec![0; LARGE].into_boxed_slice();
            large[..n].copy_from_slice(&self.buf[..n]);
            self.buf = large;
        }
    }

    fn capacity(&self) -> usize {
        self.buf.len()
    }
}

/// Copies `a → b` and `b → a` until both directions are done; returns the bytes each way.
/// The bytes are also added to `a_to_b_tally` / `b_to_a_tally` as they are written, so a
/// caller that stops the copy early (idle, revoked, drained) still knows what went through.
pub async fn bidirectional<A, B>(
    a: &mut A,
    b: &mut B,
    a_to_b_tally: &AtomicU64,
    b_to_a_tally: &AtomicU64,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Direction::new();
    let mut b_to_a = Direction::new();
    let mut a_done = None;
    let mut b_done = None;
    poll_fn(|cx| {
        if a_done.is_none()
            && let Poll::Ready(r) = a_to_b.poll_copy(cx, Pin::new(&mut *a), Pin::new(&mut *b), a_to_b_tally)
        {
            a_done = Some(r?);
        }
        if b_done.is_none()
            && let Poll::Ready(r) = b_to_a.poll_copy(cx, Pin::new(&mut *b), Pin::new(&mut *a), b_to_a_tally)
        {
            b_done = Some(r?);
        }
        match (a_done, b_done) {
            (Some(x), Some(y)) => Poll::Ready(Ok((x, y))),
            _ => Poll::Pending,
        }
    })
    .await
}

/// Buffer sizes of a fresh pair of directions (for the memory-budget test).
pub fn initial_buffer_bytes() -> usize {
    Direction::new().capacity() * 2
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_with_half_close_and_grows() {
        let (mut client, mut proxy_a) = tokio::io::duplex(64 * 1024);
        let (mut proxy_b, mut server) = tokio::io::duplex(64 * 1024);
        let copy = tokio::spawn(async move {
            let (x, y) = (AtomicU64::new(0), AtomicU64::new(0));
            let r = bidirectional(&mut proxy_a, &mut proxy_b, &x, &y).await;
            assert_eq!(
                r.as_ref().ok(),
                Some(&(x.load(Ordering::Relaxed), y.load(Ordering::Relaxed)))
            );
            r
        });
        let up: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..700_000u32).map(|i| (i % 241) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let srv = tokio::spawn(async move {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            // Half-close: the client finished sending, the server still answers.
            server.write_all(&down2).await.unwrap();
            server.shutdown().await.unwrap();
            got
        });
        client.write_all(&up2).await.unwrap();
        client.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(srv.await.unwrap(), up);
        assert_eq!(back, down);
        let (x, y) = copy.await.unwrap().unwrap();
        assert_eq!((x, y), (up.len() as u64, down.len() as u64));
    }

    #[test]
    fn idle_connections_start_small() {
        assert_eq!(initial_buffer_bytes(), 2 * SMALL);
        let mut d = Direction::new();
        d.grow_if_busy(SMALL);
        assert_eq!(d.capacity(), SMALL);
        d.grow_if_busy(SMALL);
        assert_eq!(d.capacity(), LARGE);
        d.grow_if_busy(LARGE);
        assert_eq!(d.capacity(), LARGE);
    }
}
