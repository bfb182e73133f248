//! The current identity and its TLS configs, published lock-free for every new handshake.
//! Updates are validated before they are swapped in; a refused one leaves the last good
//! identity serving. Live connections keep the session they have.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;
use tokio::sync::watch;

use crate::identity::{Identity, IdentityError, TlsConfigs, TlsOptions};

/// What became of one identity update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateResult {
    Applied,
    Refused(&'static str),
}

const REASONS: usize = IdentityError::REASONS.len();

/// Holds the current [`TlsConfigs`]; cheap to read on every accept.
///
/// The trust domain is pinned by the first identity applied (or by
/// [`CredentialStore::expect_trust_domain`]): an update for another trust domain is refused,
/// however well it validates against the bundle that came with it.
#[derive(Debug)]
pub struct CredentialStore {
    current: ArcSwapOption<TlsConfigs>,
    opts: TlsOptions,
    changed: watch::Sender<u64>,
    trust_domain: OnceLock<String>,
    applied: AtomicU64,
    refused: [AtomicU64; REASONS],
    /// The current SVID's notAfter (Unix seconds); `i64::MIN` before the first.
    not_after: AtomicI64,
}

impl CredentialStore {
    pub fn new(opts: TlsOptions) -> Self {
        CredentialStore {
            current: ArcSwapOption::empty(),
            opts,
            changed: watch::channel(0).0,
            trust_domain: OnceLock::new(),
            applied: AtomicU64::new(0),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
            not_after: AtomicI64::new(i64::MIN),
        }
    }

    /// Pins the trust domain before the first identity arrives. False if one is pinned already
    /// (the first pin stays).
    pub fn expect_trust_domain(&self, trust_domain: &str) -> bool {
        self.trust_domain.set(trust_domain.to_owned()).is_ok()
    }

    /// The trust domain ward serves: pinned by the first identity (or configured).
    pub fn trust_domain(&self) -> Option<&str> {
        self.trust_domain.get().map(String::as_str)
    }

    /// How many updates were applied (`ward_identity_rotations_total{result="applied"}`).
    pub fn applied_total(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// How many updates were refused for `reason` (an [`IdentityError::reason`] label).
    pub fn refused_total(&self, reason: &str) -> u64 {
        IdentityError::REASONS
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.refused.get(i))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Refusals by reason label, every label present (zero when it never happened).
    pub fn refused_counts(&self) -> [(&'static str, u64); REASONS] {
        std::array::from_fn(|i| {
            let n = self.refused.get(i).map_or(0, |c| c.load(Ordering::Relaxed));
            (IdentityError::REASONS[i], n)
        })
    }

    /// The current SVID's notAfter in Unix seconds (`ward_identity_expiry_timestamp_seconds`);
    /// `None` until the first identity has loaded.
    pub fn not_after(&self) -> Option<i64> {
        match self.not_after.load(Ordering::Relaxed) {
            i64::MIN => None,
            t => Some(t),
        }
    }

    fn count_refused(&self, reason: &str) {
        if let Some(c) = IdentityError::REASONS
            .iter()
            .position(|r| *r == reason)
            .and_then(|i| self.refused.get(i))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn check_trust_domain(&self, identity: &Identity) -> Result<(), IdentityError> {
        let got = identity.id().trust_domain_name();
        match self.trust_domain.get() {
            Some(want) if want != got => Err(IdentityError::WrongTrustDomain {
                got: got.to_owned(),
                want: want.clone(),
            }),
            _ => Ok(()),
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

    /// The generation of the current identity: it changes with every applied update.
    pub fn generation(&self) -> u64 {
        *self.changed.borrow()
    }

    /// A receiver that sees a new generation number after every applied update.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Applies one update from a source: builds configs for a valid identity and swaps them
    /// in; logs and reports a refused one, keeping the current identity.
    pub fn apply(&self, update: Result<Identity, IdentityError>) -> UpdateResult {
        let built = update.and_then(|id| {
            self.check_trust_domain(&id)?;
            TlsConfigs::build(Arc::new(id), &self.opts)
        });
        match built {
            Ok(configs) => {
                let info = configs.identity.info().clone();
                let _ = self.trust_domain.set(info.id.trust_domain_name().to_owned());
                self.not_after.store(info.not_after, Ordering::Relaxed);
                self.applied.fetch_add(1, Ordering::Relaxed);
                self.current.store(Some(Arc::new(configs)));
                self.changed.send_modify(|g| *g += 1);
                tracing::info!(id = %info.id, serial = %info.serial, not_after = info.not_after, "identity loaded");
                UpdateResult::Applied
            }
            Err(e) => {
                let reason = e.reason();
                self.count_refused(reason);
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
