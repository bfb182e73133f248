//! The `ward` binary: parse the command line, hand over to the library.

use clap::Parser;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    give_memory_back();
    ward::ops::commands::main(ward::ops::cli::Cli::parse())
}

/// jemalloc purges pages freed by the program (a finished burst's buffers) only when the
/// program next calls into it, after its decay time (10 s): an idle sidecar kept a busy
/// minute's high-water mark (4 to 6 MiB of anonymous memory more than it uses, measured with
/// benches/load/run.sh). One background thread purges them on that schedule instead; one is
/// enough for a sidecar, whatever the node's core count (jemalloc would allow one per CPU).
/// If jemalloc refuses, ward runs as before, only keeping freed memory longer.
fn give_memory_back() {
    let _ = tikv_jemalloc_ctl::max_background_threads::write(1);
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
}
