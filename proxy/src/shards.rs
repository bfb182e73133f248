//! Worker shards for `--workers N` (N > 1): N threads, each running its own single-threaded
//! event loop, as nginx, haproxy and Envoy run their workers.
//!
//! The main thread accepts on every listener and hands each connection to the next shard in
//! turn; from then on the connection, its pooled links to the peer sidecar and its
//! connections to the app live on that shard alone. No task is ever woken from another
//! thread, so a request costs about what it costs with one worker (tokio's multi-threaded
//! scheduler spends a third more CPU per request on cross-thread wakeups and work stealing),
//! and the kernel can run the shards on different cores. Round-robin hand-off (not
//! `SO_REUSEPORT`) keeps a few long-lived connections, such as the HTTP/2 links between
//! sidecars, spread over the shards instead of hashed onto one.
//!
//! With one worker there are no shards: everything runs on the main thread's event loop.

use std::cell::Cell;
use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::Handle;

struct Shards {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

static SHARDS: OnceLock<Shards> = OnceLock::new();

thread_local! {
    /// Which shard this thread runs (0 on the main thread and without shards).
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Starts `n` shard threads (nothing for `n <= 1`). Once per process; later calls fail.
pub fn start(n: usize) -> Result<(), String> {
    if n <= 1 {
        return Ok(());
    }
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start worker {i}'s event loop: {e}"))?;
        handles.push(rt.handle().clone());
        std::thread::Builder::new()
            .name(format!("ward-worker-{i}"))
            .spawn(move || {
                INDEX.with(|c| c.set(i));
                // Runs until the process exits; the main thread drains connections first.
                rt.block_on(std::future::pending::<()>());
            })
            .map_err(|e| format!("cannot start worker thread {i}: {e}"))?;
    }
    SHARDS
        .set(Shards {
            handles,
            next: AtomicUsize::new(0),
        })
        .map_err(|_| "worker shards were already started".to_owned())
}

/// How many shards serve connections (1 without shards).
pub fn count() -> usize {
    SHARDS.get().map_or(1, |s| s.handles.len())
}

/// The shard the calling thread runs: an index below [`count`], for per-shard pools.
pub fn current() -> usize {
    INDEX.with(Cell::get)
}

/// Serves an accepted connection: on the next shard in turn, or here without shards.
pub fn serve<F, Fut>(tcp: TcpStream, f: F)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(shards) = SHARDS.get() else {
        tokio::spawn(f(tcp));
        return;
    };
    let i = shards.next.fetch_add(1, Ordering::Relaxed) % shards.handles.len();
    // The socket leaves this thread's event loop and joins the shard's (into_std keeps it
    // non-blocking, as from_std needs).
    let std = match tcp.into_std() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot hand an accepted connection to a worker; closing it");
            return;
        }
    };
    shards.handles[i].spawn(async move {
        match TcpStream::from_std(std) {
            Ok(tcp) => f(tcp).await,
            Err(e) => tracing::warn!(error = %e, "a worker cannot take an accepted connection; closing it"),
        }
    });
}
