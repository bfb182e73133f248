//! Worker shards for `--workers N` (N > 1): N single-threaded event loops, as nginx, haproxy
//! and Envoy run their workers: the main thread's, which is shard 0, and N - 1 more threads.
//!
//! The main thread accepts on every listener (and runs the admin server, reloads and the
//! identity) and gives each connection to the shard serving the fewest connections: it keeps
//! it when that is shard 0, and hands it over otherwise. From then on the connection, its
//! pooled links to the peer sidecar and its connections to the app live on that shard alone.
//! A request's tasks are never woken from another thread (only the hand-off of a new
//! connection is), so a request costs about what it costs with one worker (tokio's
//! multi-threaded scheduler spends a third more CPU per request on cross-thread wakeups and
//! work stealing), and the kernel can run the shards on different cores. The main thread
//! serving too (it used to only accept) spares the hand-off for the connections it keeps, and
//! a thread: with a new connection per request, the pair of wards went from 0.97-0.99× to
//! 1.05-1.09× haproxy's rate in interleaved runs, and keep-alive did not change.
//!
//! Handing out by open connections (not `SO_REUSEPORT`'s hash, nor plain turns) keeps a few
//! long-lived connections, such as the HTTP/2 links between sidecars, spread over the shards:
//! a link never lands on the shard that already holds the other one while a shard with fewer
//! stands idle.
//!
//! With one worker there are no shards: everything runs on the main thread's event loop.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

struct Shards {
    /// Shards 1 and up (shard 0 is the main thread's event loop).
    handles: Vec<Handle>,
    /// Each shard thread, and the sender that ends its event loop.
    threads: std::sync::Mutex<Vec<(oneshot::Sender<()>, std::thread::JoinHandle<()>)>>,
    /// Connections each shard is serving, shard 0 first.
    open: Vec<Arc<AtomicUsize>>,
    /// Where the search for the least busy shard starts, in turn, so ties spread.
    next: AtomicUsize,
}

impl Shards {
    /// The shard with the fewest open connections (ties: the first from a rotating start).
    fn least_busy(&self) -> usize {
        let n = self.open.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .min_by_key(|&i| self.open[i].load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}

/// Counts a connection on its shard while it is served.
struct Serving(Arc<AtomicUsize>);

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

static SHARDS: OnceLock<Shards> = OnceLock::new();

thread_local! {
    /// Which shard this thread runs (0 on the main thread and without shards).
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Sets up `n` shards: the calling (main) thread's event loop and `n - 1` threads (nothing
/// for `n <= 1`). Once per process; later calls fail.
pub fn start(n: usize) -> Result<(), String> {
    if n <= 1 {
        return Ok(());
    }
    let mut handles = Vec::with_capacity(n - 1);
    let mut threads = Vec::with_capacity(n - 1);
    for i in 1..n {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start worker {i}'s event loop: {e}"))?;
        handles.push(rt.handle().clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("ward-worker-{i}"))
            .spawn(move || {
                INDEX.with(|c| c.set(i));
                // Serves until `stop`; shutting the runtime down then drops every connection
                // still open on it (their records are written as they go).
                let _ = rt.block_on(stopped);
                rt.shutdown_timeout(std::time::Duration::from_secs(1));
            })
            .map_err(|e| format!("cannot start worker thread {i}: {e}"))?;
        threads.push((stop, thread));
    }
    SHARDS
        .set(Shards {
            open: (0..n).map(|_| Arc::new(AtomicUsize::new(0))).collect(),
            handles,
            threads: std::sync::Mutex::new(threads),
            next: AtomicUsize::new(0),
        })
        .map_err(|_| "worker shards were already started".to_owned())
}

/// Ends every shard's event loop and waits for its thread: the connections still open there
/// (past `drain_timeout`) are dropped, as the main thread's are when its runtime ends.
pub fn stop() {
    let Some(shards) = SHARDS.get() else {
        return;
    };
    let threads = shards
        .threads
        .lock()
        .map(|mut t| std::mem::take(&mut *t))
        .unwrap_or_default();
    for (stop, thread) in threads {
        let _ = stop.send(());
        if thread.join().is_err() {
            tracing::error!("a worker thread panicked while stopping");
        }
    }
}

/// How many shards serve connections (1 without shards).
pub fn count() -> usize {
    SHARDS.get().map_or(1, |s| s.open.len())
}

/// The shard the calling thread runs: an index below [`count`], for per-shard pools.
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// Serves an accepted connection: on the least busy shard, or here without shards. Called on
/// the main thread, which is shard 0.
pub fn serve<F, Fut>(tcp: TcpStream, f: F)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(shards) = SHARDS.get() else {
        tokio::spawn(f(tcp));
        return;
    };
    let i = shards.least_busy();
    shards.open[i].fetch_add(1, Ordering::Relaxed);
    let serving = Serving(shards.open[i].clone());
    let Some(handle) = i.checked_sub(1).and_then(|k| shards.handles.get(k)) else {
        tokio::spawn(async move {
            let _serving = serving;
            f(tcp).await
        });
        return;
    };
    // The socket leaves this thread's event loop and joins the shard's (into_std keeps it
    // non-blocking, as from_std needs).
    let std = match tcp.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot hand an accepted connection to a worker; closing it");
            return;
        }
    };
    handle.spawn(async move {
        let _serving = serving;
        match TcpStream::from_std(std) {
            Ok(tcp) => f(tcp).await,
            Err(e) => tracing::warn!(error = %e, "a worker cannot take an accepted connection; closing it"),
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn shards(open: &[usize]) -> Shards {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        Shards {
            handles: open.iter().skip(1).map(|_| rt.handle().clone()).collect(),
            threads: std::sync::Mutex::new(Vec::new()),
            open: open.iter().map(|&n| Arc::new(AtomicUsize::new(n))).collect(),
            next: AtomicUsize::new(0),
        }
    }

    #[test]
    fn a_connection_goes_to_the_shard_serving_the_fewest() {
        let s = shards(&[1, 0]);
        assert_eq!((s.least_busy(), s.least_busy()), (1, 1));
        let s = shards(&[3, 5, 2]);
        assert!((0..6).all(|_| s.least_busy() == 2));
    }

    #[test]
    fn ties_are_spread_in_turn() {
        let s = shards(&[0, 0, 0]);
        let picks: Vec<usize> = (0..6).map(|_| s.least_busy()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_served_connection_is_counted_until_it_ends() {
        let open = Arc::new(AtomicUsize::new(1));
        drop(Serving(open.clone()));
        assert_eq!(open.load(Ordering::Relaxed), 0);
    }
}
