//! The copy loop of an opaque TCP connection: `tokio::io::copy_bidirectional_with_sizes` with
//! one 16 KiB buffer per direction (what ward ran before its own loop, `proxy/src/data/copy.rs`,
//! whose buffers grow from 2 to 64 KiB with the traffic), between two in-memory
//! tokio duplex pipes (app ⇄ proxy ⇄ upstream). Throughput is reported in bytes/s (criterion
//! prints MiB/s); no sockets, no TLS, so this is the ceiling the loop itself puts on a
//! connection, and how it changes with the size of the writes that feed it.
//!
//!     cargo bench -p ward-benches --bench copy_loop
//!
//! `one_way/N`: 8 MiB written by the app in N-byte writes, read at the upstream end, while the
//! other direction stays open and idle. `both_ways`: 8 MiB each way at once, 16 KiB writes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// Buffer per direction, as ward's forwarding had before `data/copy.rs`.
const COPY_BUF: usize = 16 * 1024;
/// The capacity of each in-memory pipe (a socket buffer stand-in).
const PIPE: usize = 256 * 1024;
const TOTAL: usize = 8 * 1024 * 1024;

/// app ⇄ [copy loop] ⇄ upstream; returns the two outer ends.
fn proxied_pair() -> (DuplexStream, DuplexStream) {
    let (app, mut a) = tokio::io::duplex(PIPE);
    let (mut b, upstream) = tokio::io::duplex(PIPE);
    tokio::spawn(async move {
        let _ = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, COPY_BUF, COPY_BUF).await;
    });
    (app, upstream)
}

async fn send(mut w: impl AsyncWriteExt + Unpin, total: usize, chunk: usize) {
    let buf = vec![0x5a_u8; chunk];
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk);
        w.write_all(&buf[..n]).await.unwrap();
        left -= n;
    }
    w.shutdown().await.unwrap();
}

async fn drain(mut r: impl AsyncReadExt + Unpin, total: usize) {
    let mut buf = vec![0_u8; 64 * 1024];
    let mut got = 0;
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    assert_eq!(got, total);
}

fn copy_loop(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let mut group = c.benchmark_group("copy_loop");
    group.throughput(Throughput::Bytes(TOTAL as u64));
    group.measurement_time(Duration::from_secs(5));
    for chunk in [1024usize, 16 * 1024, 64 * 1024] {
        group.bench_with_input(BenchmarkId::new("one_way", chunk), &chunk, |b, &chunk| {
            b.iter(|| {
                rt.block_on(async {
                    let (app, upstream) = proxied_pair();
                    let (_app_rd, app_wr) = tokio::io::split(app);
                    let (up_rd, _up_wr) = tokio::io::split(upstream);
                    let reader = tokio::spawn(drain(up_rd, TOTAL));
                    send(app_wr, TOTAL, chunk).await;
                    reader.await.unwrap();
                })
            })
        });
    }
    group.throughput(Throughput::Bytes(2 * TOTAL as u64));
    group.bench_function("both_ways", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (app, upstream) = proxied_pair();
                let (app_rd, app_wr) = tokio::io::split(app);
                let (up_rd, up_wr) = tokio::io::split(upstream);
                let to_up = tokio::spawn(drain(up_rd, TOTAL));
                let to_app = tokio::spawn(drain(app_rd, TOTAL));
                let from_up = tokio::spawn(send(up_wr, TOTAL, COPY_BUF));
                send(app_wr, TOTAL, COPY_BUF).await;
                from_up.await.unwrap();
                to_up.await.unwrap();
                to_app.await.unwrap();
            })
        })
    });
    group.finish();
}

criterion_group!(benches, copy_loop);
criterion_main!(benches);
