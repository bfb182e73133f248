//! What a listener's accept loop holds a connection to: the per-listener connection cap, the
//! process-wide count drain waits on, the per-source cap on handshakes not yet finished, and
//! what to do when `accept` itself fails.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::metrics::{ListenerMetrics, Metrics};

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
    active: Gauge,
    closed: Option<Counter>,
}

impl ConnGuard {
    /// Admits a connection unless the listener already has `max` open; a refusal is counted.
    pub fn admit(
        listener_open: &Arc<AtomicUsize>,
        max: Option<usize>,
        open: &Arc<OpenCount>,
        metrics: &ListenerMetrics,
    ) -> Option<ConnGuard> {
        let admitted = Self::enter(listener_open, max, open, &metrics.active, Some(&metrics.closed));
        match &admitted {
            Some(_) => metrics.opened.inc(),
            None => metrics.refused_overload.inc(),
        };
        admitted
    }

    /// Admits one HBONE stream of a listener's connection: it counts against the listener's
    /// `max_connections` and in the process-wide count a drain waits for, as a connection
    /// does; its metrics are the stream gauge (the caller counts what became of it).
    pub fn admit_stream(
        listener_open: &Arc<AtomicUsize>,
        max: usize,
        open: &Arc<OpenCount>,
        streams_active: &Gauge,
    ) -> Option<ConnGuard> {
        Self::enter(listener_open, Some(max), open, streams_active, None)
    }

    fn enter(
        listener_open: &Arc<AtomicUsize>,
        max: Option<usize>,
        open: &Arc<OpenCount>,
        active: &Gauge,
        closed: Option<&Counter>,
    ) -> Option<ConnGuard> {
        let before = listener_open.fetch_add(1, Ordering::AcqRel);
        if max.is_some_and(|max| before >= max) {
            listener_open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        open.n.fetch_add(1, Ordering::AcqRel);
        active.inc();
        Some(ConnGuard {
            listener_open: listener_open.clone(),
            open: open.clone(),
            active: active.clone(),
            closed: closed.cloned(),
        })
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.listener_open.fetch_sub(1, Ordering::AcqRel);
        self.active.dec();
        if let Some(closed) = &self.closed {
            closed.inc();
        }
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

/// What a listener's accept loop does when `accept` fails (most often: out of file
/// descriptors, EMFILE): count it, log it at most once per [`AcceptErrors::LOG_EVERY`] with
/// how many more there were, and back off (doubling from 5 ms to 1 s, reset by the next
/// success) so a persistent error never spins; connections already open keep being served,
/// and the pending ones are accepted as descriptors free up.
#[derive(Debug, Default)]
pub struct AcceptErrors {
    backoff: Duration,
    logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    const LOG_EVERY: Duration = Duration::from_secs(10);
    const FIRST_BACKOFF: Duration = Duration::from_millis(5);
    const MAX_BACKOFF: Duration = Duration::from_secs(1);

    /// A successful accept: the next failure backs off from the start again.
    pub fn ok(&mut self) {
        self.backoff = Duration::ZERO;
    }

    /// Counts, maybe logs, and sleeps the backoff.
    pub async fn failed(&mut self, listener: &str, e: &std::io::Error, metrics: &Metrics) {
        // Linux errno values: the descriptor limits of the process and of the system, and
        // memory; everything else is counted as `other`.
        let reason = match e.raw_os_error() {
            Some(24) => "emfile",
            Some(23) => "enfile",
            Some(12 | 105) => "nomem",
            _ => "other",
        };
        metrics.accept_error(listener, reason);
        if self.logged.is_none_or(|at| at.elapsed() >= Self::LOG_EVERY) {
            tracing::warn!(
                listener,
                error = %e,
                reason,
                more_since_last_log = self.unlogged,
                backoff = ?self.backoff.max(Self::FIRST_BACKOFF),
                "accept failed; backing off (raise the descriptor limit or lower max_connections)"
            );
            self.logged = Some(Instant::now());
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        self.backoff = (self.backoff * 2).clamp(Self::FIRST_BACKOFF, Self::MAX_BACKOFF);
        tokio::time::sleep(self.backoff).await;
    }
}

/// The caps one listener puts on the connections it takes.
#[derive(Debug, Clone, Copy)]
pub struct Caps<'a> {
    pub name: &'a str,
    /// Its open connections, and at most how many.
    pub open: &'a Arc<AtomicUsize>,
    pub max: usize,
    pub metrics: &'a ListenerMetrics,
    /// Connections one source address may have in their handshake (`max_pending_per_source`).
    pub pending: Option<(&'a Arc<Pending>, u32)>,
}

/// Accepts on `listener` until `stop` flips. A connection within the caps goes to `handle`
/// with the guards that count it (the per-source one, when the listener has that cap); one
/// past them is closed at once and counted.
pub async fn serve(
    listener: &TcpListener,
    caps: Caps<'_>,
    process: (&Arc<OpenCount>, &Metrics),
    mut stop: watch::Receiver<bool>,
    mut handle: impl FnMut(TcpStream, SocketAddr, ConnGuard, Option<PendingGuard>),
) {
    let mut errors = AcceptErrors::default();
    loop {
        let (tcp, src) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    errors.failed(caps.name, &e, process.1).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        errors.ok();
        let Some(guard) = ConnGuard::admit(caps.open, Some(caps.max), process.0, caps.metrics) else {
            tracing::debug!(listener = caps.name, %src, "refused: max_connections reached");
            continue;
        };
        let pending = match caps.pending {
            None => None,
            Some((pending, max)) => match pending.admit(src.ip(), max) {
                Some(p) => Some(p),
                None => {
                    caps.metrics.refused_source.inc();
                    tracing::debug!(listener = caps.name, %src, "refused: max_pending_per_source handshakes from this address");
                    continue;
                }
            },
        };
        handle(tcp, src, guard, pending);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
}
