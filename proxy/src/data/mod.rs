//! The data path: every byte of a proxied connection passes through here.

pub mod accept;
pub mod copy;
pub mod inbound;
pub mod io;
pub mod live;
pub mod mtls;
pub mod origdst;
pub mod outbound;
pub mod shards;
pub mod sniff;
pub mod tcp;
