//! ward: a sidecar proxy that enforces SPIFFE workload identity.
//!
//! The path of a connection reads top to bottom in [`data::inbound`] and [`data::outbound`];
//! identity and certificate checks live in `ward-certs`, policy decisions in `ward-filters`.

pub mod admin;
pub mod audit;
pub mod config;
pub mod data;
pub mod hbone;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod ops;
pub mod pools;
pub mod running;
pub mod state;
