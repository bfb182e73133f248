//! Every live mesh connection, in one registry, and the one place that decides which of them
//! must close, and why (in the spirit of ztunnel's connection manager):
//! - a new identity or trust bundle: a connection whose peer's chain no longer validates
//!   (its CA left the bundle, its SVID expired) closes, `revoked_<reason>`;
//! - a reloaded policy: an inbound opaque TCP connection its listener's policy no longer
//!   admits closes, `revoked_policy` (HTTP asks the policy on every request instead);
//! - the peer's SVID expires: the connection closes at its notAfter, `peer_svid_expired`
//!   (however long it is, whatever it carries: an opaque stream, an upgraded one, HTTP);
//! - `max_connection_lifetime`: a connection older than it closes.
//!
//! A pooled connection between sidecars is retired (takes no new request) a little before
//! either side's SVID expires ([`Live::closing`]), so that no request meets that close.
//!
//! A connection registers once its peer is known and holds its [`Live`] for its whole life
//! (dropping it leaves the registry). A connection that carries bytes waits on
//! [`Live::closed`]; the peer pool, whose connections are shared, asks [`Live::closing`]
//! before it hands one out. [`Connections::watch`] sweeps the registry on every change. The
//! app's own connections into an outbound listener prove nothing and no policy governs them:
//! they are not registered, and only a [`lifetime`] timer closes them.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use ward_certs::CredentialStore;
use ward_filters::{Decision, Peer};

use crate::config::Settings;
use crate::data::io::OnWake;
use crate::data::mtls::PeerIdentity;

/// What, besides the trust bundles, must keep admitting a connection.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Nothing else: an outbound connection, or one of the peer pool's.
    Bundles,
    /// The connection verdict of an inbound listener's policy (for an app port, when
    /// transparent): opaque TCP, admitted once. (HTTP asks the policy on every request: a
    /// reload never closes its connections, their next request gets the new answer.)
    Policy { listener: Arc<str>, port: Option<u16> },
    /// An upgraded stream of an inbound listener (WebSocket, extended CONNECT): admitted once,
    /// by its request's verdict, which a reload asks again.
    Upgrade {
        listener: Arc<str>,
        port: Option<u16>,
        request: Arc<UpgradeRequest>,
    },
}

/// The request an upgraded stream was admitted by, as the policy saw it.
#[derive(Debug)]
pub struct UpgradeRequest {
    pub method: String,
    pub path: String,
    pub headers: http::HeaderMap,
}

/// Why the registry looks at its connections again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recheck {
    Identity,
    Policy,
}

/// The reason a connection closes at `max_connection_lifetime`.
const LIFETIME: &str = "max_connection_lifetime: the connection reached its maximum lifetime";
/// Why a pooled connection takes no more requests.
const RETIRED: &str = "retired: an SVID of the connection expires soon";
/// How long before the first of its two SVIDs expires a pooled connection is retired (at most
/// half of the time it had left when it was made): longer than most requests take, so the
/// last ones it carried end before the peer closes it.
const RETIRE_BEFORE: Duration = Duration::from_secs(10);

/// The instant of a Unix time, from `now` (the past is now).
fn at_unix(unix: i64, now: Instant) -> Instant {
    let wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let left_ms = (i128::from(unix) * 1000 - i128::try_from(wall_ms).unwrap_or(i128::MAX)).clamp(0, 1 << 40);
    now + Duration::from_millis(u64::try_from(left_ms).unwrap_or(0))
}

fn expired_reason(peer: &PeerIdentity) -> Arc<str> {
    format!(
        "peer_svid_expired: the peer's SVID (serial {}) expired at {}",
        peer.serial,
        crate::audit::rfc3339(peer.not_after)
    )
    .into()
}

#[derive(Debug)]
struct Entry {
    /// `None` for a connection whose peer proved nothing (permissive plaintext, the app).
    peer: Option<Arc<PeerIdentity>>,
    scope: Scope,
    /// When it must end, and why: the peer's SVID expires, or it reaches
    /// `max_connection_lifetime`, whichever comes first.
    deadline: Option<(Instant, Arc<str>)>,
    /// When a pooled connection stops taking requests: before either SVID expires.
    retire: Option<Instant>,
    /// The identity generation the peer's chain was last validated under.
    checked: AtomicU64,
    /// Set once, when the connection must close.
    reason: OnceLock<String>,
    closed: Notify,
}

impl Entry {
    fn close(&self, reason: String) {
        if self.reason.set(reason).is_ok() {
            self.closed.notify_waiters();
            self.closed.notify_one();
        }
    }

    /// The one decision: may this connection stay open after `why` changed?
    fn decide(&self, why: Recheck, store: &CredentialStore, settings: &Settings) -> Result<(), String> {
        match why {
            Recheck::Identity => self.still_validates(store),
            Recheck::Policy => self.still_admitted(settings),
        }
    }

    /// After a new identity or bundle: the peer's chain must validate against the bundles of
    /// now (checked once per identity generation).
    fn still_validates(&self, store: &CredentialStore) -> Result<(), String> {
        let generation = store.generation();
        if self.checked.load(Ordering::Acquire) == generation {
            return Ok(());
        }
        if let Some(peer) = &self.peer {
            peer.still_valid(store)
                .map_err(|(reason, e)| format!("revoked_{reason}: the trust bundle changed: {e}"))?;
        }
        self.checked.store(generation, Ordering::Release);
        Ok(())
    }

    /// After a reload: an inbound connection's listener must still have a policy that admits
    /// its peer.
    fn still_admitted(&self, settings: &Settings) -> Result<(), String> {
        let peer = match &self.peer {
            Some(p) => Peer::Authenticated(p.id.as_str()),
            None => Peer::Unauthenticated,
        };
        let (listener, port) = match &self.scope {
            Scope::Bundles => return Ok(()),
            Scope::Policy { listener, port } => (listener, port),
            Scope::Upgrade {
                listener,
                port,
                request,
            } => {
                let Some((_, p)) = settings.policy_for(listener, *port) else {
                    return Err(format!("revoked_policy: listener {listener:?} has no policy now"));
                };
                let verdict = p.evaluate_request(
                    peer,
                    &ward_filters::Request {
                        method: &request.method,
                        path: &request.path,
                        headers: &crate::http::headers::HeaderView(&request.headers),
                    },
                );
                return match verdict.decision {
                    Decision::Allow => Ok(()),
                    Decision::Deny => Err(format!(
                        "revoked_policy: policy {:?} now denies this upgraded request",
                        p.name()
                    )),
                };
            }
        };
        match settings.policy_for(listener, *port) {
            None => Err(format!("revoked_policy: listener {listener:?} has no policy now")),
            Some((_, p)) if p.evaluate_connection(peer).decision == Decision::Deny => Err(format!(
                "revoked_policy: policy {:?} now denies this peer",
                p.name()
            )),
            Some(_) => Ok(()),
        }
    }
}

/// The registry of live connections.
#[derive(Debug, Default)]
pub struct Connections {
    entries: Mutex<HashMap<u64, Arc<Entry>>>,
    next: AtomicU64,
}

/// One registered connection; dropping it leaves the registry.
#[derive(Debug)]
pub struct Live {
    key: u64,
    entry: Arc<Entry>,
    registry: Arc<Connections>,
}

impl Connections {
    /// Registers a connection whose peer is `peer` (validated under its generation), kept
    /// open while `scope` admits it, for at most `lifetime`. Register before looking up the
    /// policy that admits the connection, so a reload after that is swept with it; an
    /// identity that changed since the peer was validated is checked here at once (its sweep
    /// may have run before the connection was registered).
    pub fn register(
        self: &Arc<Self>,
        peer: Option<Arc<PeerIdentity>>,
        scope: Scope,
        lifetime: Option<Duration>,
        store: &CredentialStore,
    ) -> Live {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let lifetime = lifetime.map(|d| (now + d, Arc::<str>::from(LIFETIME)));
        let expiry = peer
            .as_ref()
            .map(|p| (at_unix(p.not_after, now), expired_reason(p)));
        let deadline = match (lifetime, expiry) {
            (Some(l), Some(e)) => Some(if e.0 <= l.0 { e } else { l }),
            (l, e) => l.or(e),
        };
        let retire = peer.as_ref().map(|p| {
            let first = at_unix(p.not_after.min(p.own_not_after), now);
            let left = first.saturating_duration_since(now);
            first - RETIRE_BEFORE.min(left / 2)
        });
        let entry = Arc::new(Entry {
            checked: AtomicU64::new(peer.as_ref().map_or(u64::MAX, |p| p.generation)),
            peer,
            scope,
            deadline,
            retire,
            reason: OnceLock::new(),
            closed: Notify::new(),
        });
        self.lock().insert(key, entry.clone());
        if let Err(reason) = entry.still_validates(store) {
            entry.close(reason);
        }
        Live {
            key,
            entry,
            registry: self.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Entry>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many connections are registered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decides, for every registered connection, whether it may stay after `why` changed;
    /// the ones that may not are told to close, with the reason. Returns how many.
    pub async fn sweep(&self, why: Recheck, store: &CredentialStore, settings: &Settings) -> usize {
        let entries: Vec<Arc<Entry>> = self.lock().values().cloned().collect();
        let mut closed = 0;
        for (i, entry) in entries.iter().enumerate() {
            if entry.reason.get().is_some() {
                continue;
            }
            if let Err(reason) = entry.decide(why, store, settings) {
                entry.close(reason);
                closed += 1;
            }
            // Validating chains costs tens of microseconds each: other tasks on this thread
            // get their turn between batches.
            if i % 64 == 63 {
                tokio::task::yield_now().await;
            }
        }
        closed
    }

    /// Sweeps on every new identity (`store`) and every applied reload (`policy`), with the
    /// settings of then, until a sender is gone or `settings` has none (the process is
    /// shutting down: nothing is left to decide).
    pub async fn watch(
        self: Arc<Self>,
        store: Arc<CredentialStore>,
        mut policy: watch::Receiver<u64>,
        settings: impl Fn() -> Option<Arc<Settings>>,
    ) {
        let mut identity = store.subscribe();
        loop {
            let why = tokio::select! {
                r = identity.changed() => match r {
                    Ok(()) => Recheck::Identity,
                    Err(_) => return,
                },
                r = policy.changed() => match r {
                    Ok(()) => Recheck::Policy,
                    Err(_) => return,
                },
            };
            let Some(settings) = settings() else { return };
            let closed = self.sweep(why, &store, &settings).await;
            if closed > 0 {
                tracing::info!(
                    ?why,
                    closed,
                    "closing live connections the change no longer admits"
                );
            }
        }
    }
}

/// For a connection whose peer proved nothing and that no policy governs (the app's own
/// connection into an outbound listener, whose mesh side is a pooled, registered connection):
/// only `max_connection_lifetime` closes it, so it is not registered; a timer is all it needs.
pub fn lifetime(lifetime: Option<Duration>) -> OnWake<impl Future<Output = String> + use<>> {
    let deadline = lifetime.map(|d| Instant::now() + d);
    OnWake::new(async move {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
        LIFETIME.to_owned()
    })
}

impl Live {
    /// Why the connection must close, if it must: the registry decided so, or it reached its
    /// maximum lifetime. `store` is asked first whether the identity changed since the last
    /// sweep, so a shared connection is never handed out between an update and its sweep.
    pub fn closing(&self, store: &CredentialStore) -> Option<String> {
        if let Some(reason) = self.entry.reason.get() {
            return Some(reason.clone());
        }
        let now = Instant::now();
        if let Some((at, reason)) = &self.entry.deadline
            && now >= *at
        {
            return Some(reason.to_string());
        }
        if self.entry.retire.is_some_and(|r| now >= r) {
            return Some(RETIRED.to_owned());
        }
        if let Err(reason) = self.entry.still_validates(store) {
            self.entry.close(reason.clone());
            return Some(reason);
        }
        None
    }

    /// Asks the policy of now whether it still admits the connection, for one registered
    /// after its policy was looked up (a reload in between would otherwise pass it by); closes
    /// it, and says why, if not.
    pub fn recheck(&self, settings: &Settings) -> Option<String> {
        let reason = self.entry.still_admitted(settings).err()?;
        self.entry.close(reason.clone());
        Some(reason)
    }

    /// Resolves with the reason once the connection must close. Boxed here (in [`OnWake`]):
    /// a connection's future keeps a pointer for its whole life, and polls it only when it
    /// was woken.
    pub fn closed(&self) -> OnWake<impl Future<Output = String> + use<>> {
        let (entry, deadline) = (self.entry.clone(), self.entry.deadline.clone());
        OnWake::new(async move {
            let ends = async move {
                match deadline {
                    Some((at, reason)) => {
                        tokio::time::sleep_until(at).await;
                        reason.to_string()
                    }
                    None => std::future::pending().await,
                }
            };
            let decided = async {
                loop {
                    let notified = entry.closed.notified();
                    if let Some(reason) = entry.reason.get() {
                        return reason.clone();
                    }
                    notified.await;
                }
            };
            tokio::select! {
                reason = decided => reason,
                reason = ends => reason,
            }
        })
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn settings() -> Settings {
        Settings::default()
    }

    /// A connection of a listener whose policy a reload removed is told to close, with the
    /// reason; one that only the bundles govern stays; both leave the registry when dropped.
    #[tokio::test]
    async fn a_reload_closes_what_the_policy_no_longer_admits() {
        let conns = Arc::new(Connections::default());
        let store = CredentialStore::new(ward_certs::TlsOptions::default());
        let inbound = conns.register(
            None,
            Scope::Policy {
                listener: "web".into(),
                port: None,
            },
            None,
            &store,
        );
        let outbound = conns.register(None, Scope::Bundles, None, &store);
        assert_eq!(conns.len(), 2);
        let closed = inbound.closed();
        assert_eq!(conns.sweep(Recheck::Policy, &store, &settings()).await, 1);
        let reason = tokio::time::timeout(Duration::from_secs(1), closed)
            .await
            .unwrap();
        assert!(reason.starts_with("revoked_policy: listener \"web\""), "{reason}");
        assert_eq!(outbound.closing(&store), None);
        drop((inbound, outbound));
        assert!(conns.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_closes_at_its_maximum_lifetime() {
        let conns = Arc::new(Connections::default());
        let store = CredentialStore::new(ward_certs::TlsOptions::default());
        let live = conns.register(None, Scope::Bundles, Some(Duration::from_secs(5)), &store);
        assert_eq!(live.closing(&store), None);
        let started = Instant::now();
        let reason = live.closed().await;
        assert!(started.elapsed() >= Duration::from_secs(5));
        assert_eq!(reason, LIFETIME);
        assert_eq!(live.closing(&store).as_deref(), Some(LIFETIME));
    }
}
