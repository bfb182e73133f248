//! The state every connection handler of the process shares: the identity store, the audit
//! log, the metrics, the settings a reload swaps, the registry of live connections, and the
//! drain signal.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use ward_certs::CredentialStore;
use ward_filters::Policy;

use crate::audit::{AuditLog, Kind, Record};
use crate::config::Settings;
use crate::data::accept::OpenCount;
use crate::data::live::Connections;
use crate::metrics::Metrics;

/// State every connection handler borrows.
#[derive(Debug)]
pub struct Shared {
    pub store: Arc<CredentialStore>,
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
    pub settings: ArcSwap<Settings>,
    /// Bumped after every applied config reload; [`Connections::watch`] re-checks then.
    pub policy_gen: watch::Sender<u64>,
    /// `true` once ward drains: HTTP connections finish in-flight requests and close.
    pub draining: watch::Sender<bool>,
    pub open: Arc<OpenCount>,
    /// Every live mesh connection, and what decides which must close.
    pub live: Arc<Connections>,
}

impl Shared {
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Resolves once ward starts draining: a connection still waiting for its first bytes
    /// gives up then instead of holding the drain up.
    pub async fn drained(&self) {
        let mut rx = self.draining.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// The current policy of an inbound listener (for an app port, when transparent).
    pub fn policy(&self, listener: &str, port: Option<u16>) -> Option<Arc<Policy>> {
        self.settings
            .load()
            .policy_for(listener, port)
            .map(|(_, p)| p.clone())
    }

    /// Writes a record to the audit log and counts it in the metrics.
    pub fn record(&self, r: &Record) {
        match r.kind {
            Kind::Handshake => {
                let label = r.reason.split(':').next().unwrap_or("unknown");
                self.metrics.handshake_failed(&r.listener, r.direction, label);
            }
            Kind::Authz | Kind::Request => self.metrics.decision(&r.listener, r.rule.as_ref(), r.decision),
            Kind::Access | Kind::Upgrade | Kind::Error => {}
        }
        self.audit.write(r);
    }
}
