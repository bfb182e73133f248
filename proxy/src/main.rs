//! The `ward` binary: parse the command line, hand over to the library.

use clap::Parser;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    ward::ops::commands::main(ward::ops::cli::Cli::parse())
}
