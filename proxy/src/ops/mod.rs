//! The operator's tools: the command line and what each subcommand does.

pub mod cli;
pub mod commands;
pub mod demo;
pub mod inject;
pub mod iptables;
pub mod logging;
pub mod shutdown;
