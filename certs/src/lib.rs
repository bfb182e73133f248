//! ward-certs: SPIFFE IDs, X.509-SVID validation, trust bundles per trust domain, identity
//! sources (files, SPIFFE Workload API, dev CA), and the rustls configs ward builds once per identity.
//!
//! This crate knows nothing of policy: it answers "who is this peer, and can we prove it".

pub mod bundle;
pub mod devca;
pub mod identity;
pub mod pem;
pub mod source;
pub mod spiffe_id;
pub mod store;
pub mod svid;
pub mod verify;

pub use bundle::{BundleError, BundleSet, TrustBundle};
pub use devca::{DevCa, DevCaError, IssuedSvid};
pub use identity::{Identity, IdentityError, TlsConfigs, TlsOptions, peer_svid, provider};
pub use source::{
    Backoff, DevSource, Federation, FilesLayout, FilesSource, FilesTiming, IdentityUpdates, Reload,
    WorkloadApiSource,
};
pub use spiffe_id::{IdError, SpiffeId, TrustDomain};
pub use store::{CredentialStore, UpdateResult};
pub use svid::{SvidError, SvidInfo};
pub use verify::{SvidVerifier, VerifyError};

pub use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

/// The key purpose ward checks an SVID chain for outside a handshake (both purposes are
/// required of SVID leaves that carry extendedKeyUsage).
pub fn svid_usage() -> webpki::KeyUsage {
    webpki::KeyUsage::client_auth()
}
