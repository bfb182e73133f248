//! HTTP forwarding, the same in both directions: headers and request targets ([`headers`]),
//! ward's own answers ([`answer`]),
//! bodies and the per-request record ([`body`]), serving a connection ([`serve`]) and parking
//! an idle HTTP/1 one ([`park`]), and upgrades (WebSocket, extended CONNECT: [`upgrade`]).

pub mod answer;
pub mod body;
pub mod headers;
mod park;
pub mod serve;
pub mod upgrade;

pub use answer::{denied, unavailable};
pub use body::{Counted, PendingRecord, ResponseBody, ServiceResult, text};
pub use headers::{
    HeaderView, XFCC, absolute_uri, authority, cert_sha256, is_grpc, sanitize_underscores, strip_hop_by_hop,
    xfcc_value,
};
pub use serve::{Version, serve_connection};
