//! Streams and futures the data path wraps around a connection: dialing a TCP connection
//! (within the connect timeout, Nagle off), a stream that stamps its own activity and counts
//! its bytes ([`Metered`]), and a future polled only when it was woken ([`OnWake`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Why a TCP connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("{addr}: {source}")]
    Failed {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

impl DialError {
    /// The stable label of audit records and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DialError::Timeout { .. } => "connect_timeout",
            DialError::Failed { .. } => "connect_failed",
        }
    }
}

/// A TCP connection to `addr` within `timeout`, Nagle off: every connection ward makes (to
/// the app, to a peer, to a passthrough destination) is made here.
pub async fn dial(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, DialError> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| DialError::Timeout { addr, timeout })?
        .map_err(|source| DialError::Failed { addr, source })?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Milliseconds since a process-wide start, for cheap activity stamps.
fn now_ms(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

pin_project_lite::pin_project! {
    /// A stream that watches its own traffic, one atomic store or add per I/O call (not per
    /// byte): it stamps the time of the last read or write, so an idle watcher can close it,
    /// and, when given counters, counts the bytes each way as they pass.
    pub struct Metered<S> {
        #[pin]
        inner: S,
        // None: nobody watches this stream for idleness (HTTP, whose own timers do), so no
        // clock read per I/O call.
        last: Option<Arc<AtomicU64>>,
        start: Instant,
        tally: Option<(Counter, Counter)>,
        // Some: for a [`counted`] stream's owner, the totals each way, and 1 while the last
        // write or flush waits for the peer.
        bytes: Option<Arc<[AtomicU64; 3]>>,
    }
}

/// The idle side of [`Metered`].
#[derive(Debug, Clone)]
pub struct Activity {
    last: Arc<AtomicU64>,
    start: Instant,
}

impl Activity {
    /// Resolves once nothing was read or written for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        loop {
            let last = self.last.load(Ordering::Relaxed);
            let quiet = now_ms(self.start).saturating_sub(last);
            if quiet >= idle_ms {
                return;
            }
            tokio::time::sleep(Duration::from_millis(idle_ms - quiet)).await;
        }
    }
}

/// Wraps `inner`; the [`Activity`] tells how long it has been quiet. With `tally`, bytes read
/// are added to the first counter and bytes written to the second.
pub fn metered<S>(inner: S, tally: Option<(Counter, Counter)>) -> (Metered<S>, Activity) {
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let m = Metered {
        inner,
        last: Some(last.clone()),
        start,
        tally,
        bytes: None,
    };
    (m, Activity { last, start })
}

/// The byte counts of a [`counted`] stream.
#[derive(Debug, Clone)]
pub struct ByteCount(Arc<[AtomicU64; 3]>);

impl ByteCount {
    /// Bytes read from and written to the stream so far.
    pub fn get(&self) -> (u64, u64) {
        (
            self.0[0].load(Ordering::Relaxed),
            self.0[1].load(Ordering::Relaxed),
        )
    }

    /// Whether the last write or flush had to wait for the peer (it is not reading).
    pub fn write_waits(&self) -> bool {
        self.0[2].load(Ordering::Relaxed) != 0
    }
}

/// [`metered`] without the activity stamp (no clock read per I/O call): counts bytes only.
pub fn counted<S>(inner: S, tally: Option<(Counter, Counter)>) -> (Metered<S>, ByteCount) {
    let bytes = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    (
        Metered {
            inner,
            last: None,
            start: Instant::now(),
            tally,
            bytes: Some(bytes.clone()),
        },
        ByteCount(bytes),
    )
}

impl<S> Metered<S> {
    /// For a [`counted`] stream: whether its last write or flush waits for the peer.
    fn note_wait(bytes: Option<&Arc<[AtomicU64; 3]>>, waits: bool) {
        if let Some(b) = bytes {
            b[2].store(u64::from(waits), Ordering::Relaxed);
        }
    }

    fn note(
        last: Option<&Arc<AtomicU64>>,
        start: Instant,
        counter: Option<&Counter>,
        total: Option<&AtomicU64>,
        n: usize,
    ) {
        if let Some(last) = last {
            last.store(now_ms(start), Ordering::Relaxed);
        }
        if let Some(total) = total {
            total.fetch_add(n as u64, Ordering::Relaxed);
        }
        if let Some(c) = counter {
            c.inc_by(n as u64);
        }
    }
}

impl<S: AsyncRead> AsyncRead for Metered<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if r.is_ready() {
            let n = buf.filled().len() - before;
            Self::note(
                this.last.as_ref(),
                *this.start,
                this.tally.as_ref().map(|t| &t.0),
                this.bytes.as_ref().map(|b| &b[0]),
                n,
            );
        }
        r
    }
}

impl<S: AsyncWrite> AsyncWrite for Metered<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write(cx, buf);
        Self::note_wait(this.bytes.as_ref(), r.is_pending());
        if let Poll::Ready(Ok(n)) = r {
            Self::note(
                this.last.as_ref(),
                *this.start,
                this.tally.as_ref().map(|t| &t.1),
                this.bytes.as_ref().map(|b| &b[1]),
                n,
            );
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let r = this.inner.poll_flush(cx);
        Self::note_wait(this.bytes.as_ref(), r.is_pending());
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write_vectored(cx, bufs);
        Self::note_wait(this.bytes.as_ref(), r.is_pending());
        if let Poll::Ready(Ok(n)) = r {
            Self::note(
                this.last.as_ref(),
                *this.start,
                this.tally.as_ref().map(|t| &t.1),
                this.bytes.as_ref().map(|b| &b[1]),
                n,
            );
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A future polled only when it was woken (and the first time). A watcher that waits for rare
/// events (revocation, drain) beside a busy connection in one `select!` would otherwise be
/// polled at every wake-up of the connection's task: for an HTTP connection that was about
/// 1,000 instructions a request (callgrind) spent asking watch channels and a timer whether
/// anything had changed.
pub struct OnWake<F> {
    inner: Pin<Box<F>>,
    flag: Arc<WakeFlag>,
    waker: std::task::Waker,
}

struct WakeFlag {
    woken: std::sync::atomic::AtomicBool,
    /// The waker of the task that polls the `OnWake`, woken in turn.
    task: std::sync::Mutex<Option<std::task::Waker>>,
}

impl std::task::Wake for WakeFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Ok(task) = self.task.lock()
            && let Some(task) = task.as_ref()
        {
            task.wake_by_ref();
        }
    }
}

impl<F: Future> OnWake<F> {
    pub fn new(inner: F) -> Self {
        let flag = Arc::new(WakeFlag {
            woken: std::sync::atomic::AtomicBool::new(true),
            task: std::sync::Mutex::new(None),
        });
        OnWake {
            inner: Box::pin(inner),
            waker: std::task::Waker::from(flag.clone()),
            flag,
        }
    }
}

impl<F: Future> Future for OnWake<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        if let Ok(mut task) = this.flag.task.lock()
            && !task.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
        {
            *task = Some(cx.waker().clone());
        }
        // Cleared before the inner poll: a wake during it sets the flag for the next one.
        if !this.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner.as_mut().poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_fires_only_after_quiet() {
        let (mut s, activity) = metered(tokio::io::empty(), None);
        let mut buf = [0u8; 1];
        tokio::io::AsyncReadExt::read(&mut s, &mut buf).await.unwrap();
        let t = tokio::time::Instant::now();
        activity.idle_for(Duration::from_millis(200)).await;
        assert!(t.elapsed() >= Duration::from_millis(200));
    }

    /// The inner future is polled once at first, then only after its own waker fired, and
    /// its result comes through.
    #[tokio::test]
    async fn on_wake_polls_the_inner_future_only_when_woken() {
        use std::sync::atomic::AtomicUsize;
        let polls = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u8>();
        let counted = polls.clone();
        let mut watcher = OnWake::new(std::future::poll_fn(move |cx| {
            counted.fetch_add(1, Ordering::SeqCst);
            rx.poll_recv(cx)
        }));
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        for _ in 0..5 {
            assert!(Pin::new(&mut watcher).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::SeqCst), 1, "polled again without a wake");
        tx.send(7).unwrap();
        assert_eq!(Pin::new(&mut watcher).poll(&mut cx), Poll::Ready(Some(7)));
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }
}
