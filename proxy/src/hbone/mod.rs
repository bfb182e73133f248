//! HBONE, the tunnel between proxies of Istio's ambient mesh (ztunnel, waypoints): mutual TLS
//! with ALPN `h2` to the destination's IP on port 15008, then one HTTP/2 `CONNECT` stream per
//! tunnelled connection, its `:authority` the final destination (`IP:port`), its bytes in
//! DATA frames both ways.
//! - [`wire`]: what both sides agree on: window sizes, stream limits, the headers;
//! - [`server`]: an inbound listener with `hbone: true`; each stream is one inbound
//!   connection (policy, detection, records, limits) to the app at its authority;
//! - [`client`]: the outbound's pool of tunnel connections, keyed as ztunnel keys its pool.

pub mod client;
pub mod server;
pub mod wire;
