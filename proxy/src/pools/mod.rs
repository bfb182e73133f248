//! Connections ward reuses, one pool on each side: to the app ([`app`]: HTTP/1.1 keep-alive,
//! or h2c for gRPC) and to a peer sidecar ([`peer`]: one multiplexed HTTP/2 connection over
//! mTLS, made again when it closes).

pub mod app;
pub mod peer;

pub use app::{AppClient, AppError, InBody};
pub use peer::{PeerConn, PeerError, PeerPool};
