//! Identity sources: each yields a stream of identity updates. The consumer (a
//! [`crate::CredentialStore`]) validates and swaps them in.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::UnixTime;
use tokio::sync::mpsc;

use crate::bundle::{BundleSet, TrustBundle};
use crate::devca::DevCa;
use crate::identity::{Identity, IdentityError};
use crate::pem;
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::svid;

/// A stream of identity updates, valid or not.
pub type IdentityUpdates = mpsc::Receiver<Result<Identity, IdentityError>>;

/// The current wall-clock time as rustls wants it.
pub fn now() -> UnixTime {
    UnixTime::now()
}

/// Bundles of other trust domains, each kept under its own name.
#[derive(Debug, Clone, Default)]
pub struct Federation(pub Vec<(TrustDomain, PathBuf)>);

impl Federation {
    /// Loads every federated bundle into `set`; a federated bundle for our own trust domain
    /// is refused (it would let a partner mint our IDs).
    pub fn load_into(&self, own: &str, set: &mut BundleSet) -> Result<(), IdentityError> {
        for (td, path) in &self.0 {
            if td.as_str() == own {
                return Err(IdentityError::Source(format!(
                    "identity.federation lists our own trust domain {td}; its anchors come from the identity's own bundle"
                )));
            }
            set.insert(TrustBundle::load(td.clone(), path)?);
        }
        Ok(())
    }
}

/// SVID, key and bundle from PEM files (or a SPIFFE JWKS bundle).
#[derive(Debug, Clone)]
pub struct FilesSource {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
    pub federation: Federation,
}

impl FilesSource {
    /// Reads and validates the files once.
    pub fn load(&self, now: UnixTime) -> Result<Identity, IdentityError> {
        let cert_bytes = pem::read_file(&self.cert)?;
        let chain = pem::certs(&cert_bytes, &self.cert.display().to_string())?;
        let key_bytes = pem::read_file(&self.key)?;
        let key = pem::key(&key_bytes, &self.key.display().to_string())?;
        let info = svid::check_leaf(&chain[0])?;
        let own = info.id.trust_domain();
        let mut bundles = BundleSet::new();
        bundles.insert(TrustBundle::load(own.clone(), &self.bundle)?);
        self.federation.load_into(own.as_str(), &mut bundles)?;
        Identity::new(chain, key, bundles, now)
    }

    /// Starts the source: the first update is the initial load.
    pub fn spawn(self) -> IdentityUpdates {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let _ = tx.send(self.load(now())).await;
            // Keep the stream open: the consumer treats a closed stream as a stopped source.
            tx.closed().await;
        });
        rx
    }
}

/// ward's own in-process dev CA: issues an SVID for `id` and renews it at half its lifetime.
pub struct DevSource {
    pub ca: Arc<DevCa>,
    pub id: SpiffeId,
    pub ttl: Duration,
    pub federation: Federation,
}

impl DevSource {
    /// Issues one SVID now.
    pub fn issue(&self) -> Result<Identity, IdentityError> {
        let err = |e: crate::devca::DevCaError| IdentityError::Source(format!("dev CA: {e}"));
        let svid = self.ca.issue(&self.id, self.ttl).map_err(err)?;
        let mut bundles = BundleSet::new();
        bundles.insert(self.ca.bundle().map_err(err)?);
        self.federation
            .load_into(self.ca.trust_domain().as_str(), &mut bundles)?;
        Identity::new(svid.chain.clone(), svid.key_der(), bundles, now())
    }

    /// Starts the source: an SVID now, and a new one every half lifetime.
    pub fn spawn(self) -> IdentityUpdates {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let update = self.issue();
                // Renew at half the lifetime we asked for; not_before is backdated for clock
                // skew, so the certificate's own window would overstate the age.
                let wait = match &update {
                    Ok(_) => self.ttl / 2,
                    Err(_) => Duration::from_secs(1),
                };
                if tx.send(update).await.is_err() {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        rx
    }
}
