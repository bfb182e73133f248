//! ward's own in-process dev CA as an identity source: never for production.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Federation, IdentityUpdates, Reload, now};
use crate::bundle::BundleSet;
use crate::devca::DevCa;
use crate::identity::{Identity, IdentityError};
use crate::spiffe_id::SpiffeId;

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

    /// Starts the source: an SVID now, and a new one every half lifetime (or when reloaded).
    pub fn spawn(self) -> IdentityUpdates {
        let (tx, rx) = mpsc::channel(4);
        let reload = Reload::new();
        let requested = reload.clone();
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
                    _ = requested.requested() => {}
                    _ = tx.closed() => return,
                }
            }
        });
        IdentityUpdates::new(rx, reload)
    }
}
