//! Identity sources: each yields a stream of identity updates. The consumer (a
//! [`crate::CredentialStore`]) validates and swaps them in.
//!
//! - [`FilesSource`]: PEM files on disk, watched (inotify plus a periodic re-check), debounced,
//!   in the layouts real deployments use (spiffe-helper, Kubernetes projected volumes,
//!   cert-manager csi-driver-spiffe, Kubernetes podCertificate credential bundles);
//! - [`WorkloadApiSource`]: the SPIFFE Workload API (a SPIRE agent), streamed;
//! - [`DevSource`]: an in-process dev CA that renews at half-life.
//!
//! Every source can be asked to re-read at once through its [`Reload`] handle (SIGHUP).

mod dev;
mod files;
mod workload_api;

use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::UnixTime;
use tokio::sync::{Notify, mpsc};

use crate::bundle::{BundleSet, TrustBundle};
use crate::identity::{Identity, IdentityError};
use crate::spiffe_id::TrustDomain;

pub use dev::DevSource;
pub use files::{CREDENTIAL_BUNDLE, CSI_BUNDLE, CSI_CERT, CSI_KEY, FilesLayout, FilesSource, FilesTiming};
pub use workload_api::{Backoff, ENDPOINT_ENV, WorkloadApiSource, default_endpoint, validate_endpoint};

/// One update from a source: an identity validated at the time it was read, or why not.
pub type Update = Result<Identity, IdentityError>;

/// The current wall-clock time as rustls wants it.
pub fn now() -> UnixTime {
    UnixTime::now()
}

/// Asks a source to re-read its material now (what SIGHUP does). Cheap to clone; triggers
/// that arrive while a re-read is pending are coalesced into one.
#[derive(Debug, Clone, Default)]
pub struct Reload(Arc<Notify>);

impl Reload {
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests a re-read. Never blocks; a request made before the source waits is kept.
    pub fn trigger(&self) {
        self.0.notify_one();
    }

    /// Waits for the next request.
    pub async fn requested(&self) {
        self.0.notified().await;
    }
}

/// A stream of identity updates, valid or not, and the handle that makes its source re-read.
#[derive(Debug)]
pub struct IdentityUpdates {
    rx: mpsc::Receiver<Update>,
    reload: Reload,
}

impl IdentityUpdates {
    /// A stream read from `rx` whose source listens to `reload`.
    pub fn new(rx: mpsc::Receiver<Update>, reload: Reload) -> Self {
        IdentityUpdates { rx, reload }
    }

    /// The next update; `None` once the source has stopped for good.
    pub async fn recv(&mut self) -> Option<Update> {
        self.rx.recv().await
    }

    /// The handle that makes this stream's source re-read now (SIGHUP).
    pub fn reload(&self) -> Reload {
        self.reload.clone()
    }
}

/// Bundles of other trust domains, each kept under its own name.
#[derive(Debug, Clone, Default)]
pub struct Federation(pub Vec<(TrustDomain, PathBuf)>);

impl Federation {
    /// Loads every federated bundle into `set`; a federated bundle for our own trust domain
    /// is refused (it would let a partner mint our IDs).
    pub fn load_into(&self, own: &str, set: &mut BundleSet) -> Result<(), IdentityError> {
        for (td, path) in &self.0 {
            check_not_own(td, own)?;
            set.insert(TrustBundle::load(td.clone(), path)?);
        }
        Ok(())
    }

    /// The files to watch and fingerprint.
    pub fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.0.iter().map(|(_, p)| p)
    }
}

fn check_not_own(td: &TrustDomain, own: &str) -> Result<(), IdentityError> {
    if td.as_str() == own {
        return Err(IdentityError::Source(format!(
            "identity.federation lists our own trust domain {td}; its anchors come from the identity's own bundle"
        )));
    }
    Ok(())
}
