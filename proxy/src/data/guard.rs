//! What watches over a live connection: the per-listener connection cap, the count drain
//! waits on, idle time, and revocation (a trust bundle or policy change that no longer admits
//! the peer, or `max_connection_lifetime`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, watch};

use crate::metrics::ListenerMetrics;

/// Open connections of the whole process; drain waits for it to reach zero.
#[derive(Debug, Default)]
pub struct OpenCount {
    n: AtomicUsize,
    zero: Notify,
}

impl OpenCount {
    pub fn get(&self) -> usize {
        self.n.load(Ordering::Acquire)
    }

    /// Waits until no connection is open.
    pub async fn wait_zero(&self) {
        loop {
            let notified = self.zero.notified();
            if self.get() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Held by every connection for its whole life: counts it in the listener's cap, the
/// process-wide count and the metrics.
#[derive(Debug)]
pub struct ConnGuard {
    listener_open: Arc<AtomicUsize>,
    open: Arc<OpenCount>,
    metrics: ListenerMetrics,
}

impl ConnGuard {
    /// Admits a connection unless the listener already has `max` open; a refusal is counted.
    pub fn admit(
        listener_open: &Arc<AtomicUsize>,
        max: Option<usize>,
        open: &Arc<OpenCount>,
        metrics: &ListenerMetrics,
    ) -> Option<ConnGuard> {
        let before = listener_open.fetch_add(1, Ordering::AcqRel);
        if max.is_some_and(|max| before >= max) {
            listener_open.fetch_sub(1, Ordering::AcqRel);
            metrics.refused_overload.inc();
            return None;
        }
        open.n.fetch_add(1, Ordering::AcqRel);
        metrics.opened.inc();
        metrics.active.inc();
        Some(ConnGuard {
            listener_open: listener_open.clone(),
            open: open.clone(),
            metrics: metrics.clone(),
        })
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.listener_open.fetch_sub(1, Ordering::AcqRel);
        self.metrics.active.dec();
        self.metrics.closed.inc();
        if self.open.n.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.open.zero.notify_waiters();
        }
    }
}

/// Connections per source address in some state (an inbound listener's: still in their TLS
/// handshake; an admin listener's: open), so one neighbour opening connections it never
/// finishes cannot hold every descriptor, or make every real peer wait out a timeout.
#[derive(Debug, Default)]
pub struct Pending {
    by_source: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, u32>>,
}

/// One connection counted in [`Pending`] until it is dropped (its handshake ended).
#[derive(Debug)]
pub struct PendingGuard {
    pending: Arc<Pending>,
    ip: std::net::IpAddr,
}

impl Pending {
    /// Counts a connection from `ip`, unless `max` from it are pending already.
    pub fn admit(self: &Arc<Self>, ip: std::net::IpAddr, max: u32) -> Option<PendingGuard> {
        let mut map = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PendingGuard {
            pending: self.clone(),
            ip,
        })
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut map = self.pending.by_source.lock().unwrap_or_else(|e| e.into_inner());
        if let std::collections::hash_map::Entry::Occupied(mut e) = map.entry(self.ip) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// Resolves when a change means a live connection must be checked again: a new identity or
/// bundle, a new policy, or the connection's maximum lifetime.
#[derive(Debug)]
pub struct Watch {
    identity: watch::Receiver<u64>,
    policy: watch::Receiver<u64>,
    deadline: Option<tokio::time::Instant>,
}

/// Why a connection is being looked at again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recheck {
    Identity,
    Policy,
    Lifetime,
}

impl Watch {
    pub fn new(
        identity: watch::Receiver<u64>,
        policy: watch::Receiver<u64>,
        max_lifetime: Option<Duration>,
    ) -> Self {
        Watch {
            identity,
            policy,
            deadline: max_lifetime.map(|d| tokio::time::Instant::now() + d),
        }
    }

    /// Waits for the next reason to recheck. A closed channel never fires again.
    pub async fn next(&mut self) -> Recheck {
        let deadline = self.deadline;
        let lifetime = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = self.identity.changed() => match r {
                Ok(()) => Recheck::Identity,
                Err(_) => std::future::pending().await,
            },
            r = self.policy.changed() => match r {
                Ok(()) => Recheck::Policy,
                Err(_) => std::future::pending().await,
            },
            _ = lifetime => Recheck::Lifetime,
        }
    }

    /// Waits until `still_ok` refuses the connection (or its lifetime ends); returns why.
    pub async fn revoked(&mut self, mut still_ok: impl FnMut(Recheck) -> Result<(), String>) -> String {
        loop {
            let why = self.next().await;
            if why == Recheck::Lifetime {
                return "max_connection_lifetime: the connection reached its maximum lifetime".into();
            }
            if let Err(reason) = still_ok(why) {
                return reason;
            }
        }
    }
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
    use crate::metrics::Metrics;

    #[tokio::test]
    async fn cap_refuses_past_max_and_recovers() {
        let m = Metrics::new().listener("l", crate::audit::Direction::Inbound);
        let open = Arc::new(OpenCount::default());
        let per = Arc::new(AtomicUsize::new(0));
        let a = ConnGuard::admit(&per, Some(2), &open, &m).unwrap();
        let _b = ConnGuard::admit(&per, Some(2), &open, &m).unwrap();
        assert!(ConnGuard::admit(&per, Some(2), &open, &m).is_none());
        assert_eq!(m.refused_overload.get(), 1);
        drop(a);
        let c = ConnGuard::admit(&per, Some(2), &open, &m);
        assert!(c.is_some());
        assert_eq!(open.get(), 2);
        drop(c);
        drop(_b);
        tokio::time::timeout(Duration::from_secs(1), open.wait_zero())
            .await
            .unwrap();
    }

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
