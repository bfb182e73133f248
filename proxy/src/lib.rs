//! ward: a sidecar proxy that enforces SPIFFE workload identity.
//!
//! The path of a connection reads top to bottom in [`inbound`] and [`outbound`]; identity and
//! certificate checks live in `ward-certs`, policy decisions in `ward-filters`.

pub mod admin;
pub mod audit;
pub mod cli;
pub mod commands;
pub mod config;
pub mod copy;
pub mod demo;
pub mod forward;
pub mod guard;
pub mod http;
pub mod inbound;
pub mod inject;
pub mod iptables;
pub mod limits;
pub mod metrics;
pub mod origdst;
pub mod outbound;
pub mod pool;
pub mod reload;
pub mod server;
pub mod shards;
pub mod shutdown;
pub mod sniff;
pub mod tls;
