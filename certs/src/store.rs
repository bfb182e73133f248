//! The current identity and its TLS configs, published lock-free for every new handshake.
//! Updates are validated before they are swapped in; a refused one leaves the last good
//! identity serving. Live connections keep the session they have.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tokio::sync::watch;

use crate::identity::{Identity, IdentityError, TlsConfigs, TlsOptions};

/// What became of one identity update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateResult {
    Applied,
    Refused(&'static str),
}

/// Holds the current [`TlsConfigs`]; cheap to read on every accept.
#[derive(Debug)]
pub struct CredentialStore {
    current: ArcSwapOption<TlsConfigs>,
    opts: TlsOptions,
    changed: watch::Sender<u64>,
}

impl CredentialStore {
    pub fn new(opts: TlsOptions) -> Self {
        CredentialStore {
            current: ArcSwapOption::empty(),
            opts,
            changed: watch::channel(0).0,
        }
    }

    /// The configs for a new handshake; `None` until the first identity has loaded.
    pub fn current(&self) -> Option<Arc<TlsConfigs>> {
        self.current.load_full()
    }

    /// Whether an identity has loaded.
    pub fn is_ready(&self) -> bool {
        self.current.load().is_some()
    }

    /// A receiver that sees a new generation number after every applied update.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Applies one update from a source: builds configs for a valid identity and swaps them
    /// in; logs and reports a refused one, keeping the current identity.
    pub fn apply(&self, update: Result<Identity, IdentityError>) -> UpdateResult {
        let built = update.and_then(|id| TlsConfigs::build(Arc::new(id), &self.opts));
        match built {
            Ok(configs) => {
                let info = configs.identity.info().clone();
                self.current.store(Some(Arc::new(configs)));
                self.changed.send_modify(|g| *g += 1);
                tracing::info!(id = %info.id, serial = %info.serial, not_after = info.not_after, "identity loaded");
                UpdateResult::Applied
            }
            Err(e) => {
                let reason = e.reason();
                if self.is_ready() {
                    tracing::warn!(error = %e, reason, "identity update refused; keeping the last good identity");
                } else {
                    tracing::error!(error = %e, reason, "identity could not be loaded");
                }
                UpdateResult::Refused(reason)
            }
        }
    }
}
