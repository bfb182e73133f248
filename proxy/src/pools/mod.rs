//! Connections ward reuses, one pool on each side: to the app ([`app`]: HTTP/1.1 keep-alive,
//! or h2c for gRPC) and to a peer ([`peer`]: one multiplexed HTTP/2 connection over mTLS to
//! another ward, made again when it closes; keep-alive HTTP/1.1 over mTLS to a server that
//! speaks only that).

pub mod app;
pub mod peer;

pub use app::{AppClient, AppError, InBody};
pub use peer::{PeerDial, PeerError, PeerPool, Speaks};
