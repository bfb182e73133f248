//! The `ward` binary: parse the command line, hand over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    ward::commands::main(ward::cli::Cli::parse())
}
