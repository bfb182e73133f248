//! What inbound and outbound share: the per-process state, connecting to a forward address,
//! and copying bytes both ways until both sides are done (or the connection is idle, revoked
//! or drained away).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use ward_certs::{CertificateDer, CredentialStore, SvidInfo, SvidVerifier, UnixTime};
use ward_filters::{Decision, Policy};

use crate::audit::{AuditLog, ConnInfo, Kind, Record};
use crate::data::guard::{self, OpenCount, Recheck, Watch};
use crate::metrics::{ListenerMetrics, Metrics};

/// What a config reload may change without restarting listeners.
#[derive(Debug, Clone)]
pub struct Settings {
    pub policies: HashMap<String, Arc<Policy>>,
    pub connect_timeout: Duration,
    pub detect_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_header_timeout: Duration,
    pub max_connection_lifetime: Option<Duration>,
    /// Ports ward itself listens on: traffic aimed at them is a loop and refused.
    pub own_ports: Vec<u16>,
    /// Each inbound listener's policy name, and its per-port overrides: looked up at use, so
    /// a reload that points a listener at another policy reaches its live connections too.
    pub listener_policies: HashMap<String, (String, HashMap<u16, String>)>,
}

impl Settings {
    /// The policy of an inbound listener (for an app port, when transparent), by name.
    pub fn policy_for(&self, listener: &str, port: Option<u16>) -> Option<(&str, &Arc<Policy>)> {
        let (default, ports) = self.listener_policies.get(listener)?;
        let name = port.and_then(|p| ports.get(&p)).unwrap_or(default);
        Some((name.as_str(), self.policies.get(name)?))
    }
}

/// State every connection handler borrows.
#[derive(Debug)]
pub struct Shared {
    pub store: Arc<CredentialStore>,
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
    pub settings: ArcSwap<Settings>,
    /// Bumped after every applied config reload; live connections re-check their policy.
    pub policy_gen: watch::Sender<u64>,
    /// `true` once ward drains: HTTP connections finish in-flight requests and close.
    pub draining: watch::Sender<bool>,
    pub open: Arc<OpenCount>,
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
            Kind::Access | Kind::Error => {}
        }
        self.audit.write(r);
    }

    /// What a live connection watches for a reason to be checked again.
    pub fn watch(&self) -> Watch {
        Watch::new(
            self.store.subscribe(),
            self.policy_gen.subscribe(),
            self.settings.load().max_connection_lifetime,
        )
    }
}

/// The validated peer's SPIFFE ID and serial, from the leaf of a finished handshake.
pub fn peer_svid(certs: Option<&[CertificateDer<'_>]>) -> Option<SvidInfo> {
    ward_certs::svid::check_leaf(certs?.first()?).ok()
}

/// A peer's chain, kept so the connection can be validated again when bundles change.
#[derive(Debug, Clone)]
pub struct PeerChain(Arc<[CertificateDer<'static>]>);

impl PeerChain {
    pub fn new(certs: Option<&[CertificateDer<'_>]>) -> Self {
        PeerChain(
            certs
                .unwrap_or_default()
                .iter()
                .map(|c| c.clone().into_owned())
                .collect(),
        )
    }

    /// Validates the chain again against the current bundles.
    pub fn still_valid(&self, store: &CredentialStore) -> Result<(), String> {
        let Some(tls) = store.current() else {
            return Ok(());
        };
        let Some((leaf, rest)) = self.0.split_first() else {
            return Ok(());
        };
        let verifier = SvidVerifier::new(tls.identity.bundles().clone(), &ward_certs::provider());
        verifier
            .verify(leaf, rest, UnixTime::now(), ward_certs::svid_usage())
            .map(|_| ())
            .map_err(|e| format!("revoked_{}: the trust bundle changed: {e}", e.reason()))
    }
}

/// On a resumed TLS session the peer's chain is restored, not verified again: check it now
/// against the current bundles and time, so an SVID that expired (or whose CA left the
/// bundle) since the first handshake cannot ride a session ticket.
pub fn check_resumed(conn: &rustls::CommonState, store: &CredentialStore) -> Result<(), String> {
    if conn.handshake_kind() != Some(rustls::HandshakeKind::Resumed) {
        return Ok(());
    }
    PeerChain::new(conn.peer_certificates())
        .still_valid(store)
        .map_err(|e| {
            e.replacen("revoked_", "resumed_", 1)
                .replacen("the trust bundle changed", "resumed session", 1)
        })
}

/// Resolves with a reason once the connection must close: its peer no longer validates
/// against the current bundles, `policy_ok` refuses it under a reloaded policy, or it reached
/// `max_connection_lifetime`.
pub fn revoked(
    mut watch: Watch,
    store: Arc<CredentialStore>,
    chain: Option<PeerChain>,
    mut policy_ok: impl FnMut() -> Result<(), String>,
) -> guard::OnWake<impl Future<Output = String>> {
    // Boxed here (OnWake), where it is made: a connection's future that holds the watcher
    // keeps a pointer for its whole life, not the watcher's several hundred bytes.
    guard::OnWake::new(async move {
        watch
            .revoked(|why| match why {
                Recheck::Identity => chain.as_ref().map_or(Ok(()), |c| c.still_valid(&store)),
                Recheck::Policy => policy_ok(),
                Recheck::Lifetime => Ok(()),
            })
            .await
    })
}

/// Connects to `addr` within the connect timeout; failures are logged and audited.
pub async fn connect(addr: SocketAddr, shared: &Shared, info: &ConnInfo) -> Option<TcpStream> {
    let timeout = shared.settings.load().connect_timeout;
    let outcome = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            return Some(s);
        }
        Ok(Err(e)) => format!("connect_failed: {addr}: {e}"),
        Err(_) => format!("connect_timeout: {addr} did not answer within {timeout:?}"),
    };
    tracing::warn!(listener = %info.listener, %addr, %outcome, "cannot reach the forward address");
    shared.record(&info.failed(outcome));
    None
}

/// Copies both ways ([`crate::data::copy`]: buffers sized to the traffic, no allocation per read),
/// honouring half-close: EOF on one side shuts down writing on the other, and the other
/// direction goes on until it ends too. Ends early when the connection is idle for `idle_timeout` or when
/// `revoke` resolves. Writes the access record (or the revocation) at the end.
pub async fn pipe<A, B>(
    a: A,
    mut b: B,
    shared: &Shared,
    info: &ConnInfo,
    metrics: &ListenerMetrics,
    started: Instant,
    revoke: guard::OnWake<impl Future<Output = String>>,
) where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    // Stamping one side sees traffic both ways: its reads are a → b, its writes b → a.
    let (mut a, activity) = guard::metered(a, None);
    let idle = shared.settings.load().idle_timeout;
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    // The idle timer and revocation are polled when they were woken, not at every wake-up
    // of the copy.
    let outcome = tokio::select! {
        result = crate::data::copy::bidirectional(&mut a, &mut b, &up, &down) => match result {
            Ok(_) => Ok("closed".to_owned()),
            Err(e) => Ok(format!("error: {e}")),
        },
        _ = guard::OnWake::new(activity.idle_for(idle)) => Ok(format!("idle_timeout: no bytes for {idle:?}")),
        reason = revoke => Err(reason),
    };
    let (up, down) = (up.load(Ordering::Relaxed), down.load(Ordering::Relaxed));
    metrics.bytes_received.inc_by(up);
    metrics.bytes_sent.inc_by(down);
    match outcome {
        Ok(outcome) => shared.record(&info.access(&outcome, Some(up), Some(down), started.elapsed())),
        Err(reason) => {
            tracing::info!(listener = %info.listener, peer = info.peer_id.as_deref(), %reason, "closing a live connection");
            shared.record(&info.decided(Decision::Deny, None, reason));
            shared.record(&info.access("revoked", Some(up), Some(down), started.elapsed()));
        }
    }
}

/// What a listener's accept loop does when `accept` fails (most often: out of file
/// descriptors, EMFILE): count it, log it at most once per [`AcceptErrors::LOG_EVERY`] with
/// how many more there were, and back off (doubling from 5 ms to 1 s, reset by the next
/// success) so a persistent error never spins; connections already open keep being served,
/// and the pending ones are accepted as descriptors free up.
#[derive(Debug, Default)]
pub struct AcceptErrors {
    backoff: Duration,
    logged: Option<Instant>,
    unlogged: u64,
}

impl AcceptErrors {
    const LOG_EVERY: Duration = Duration::from_secs(10);
    const FIRST_BACKOFF: Duration = Duration::from_millis(5);
    const MAX_BACKOFF: Duration = Duration::from_secs(1);

    /// A successful accept: the next failure backs off from the start again.
    pub fn ok(&mut self) {
        self.backoff = Duration::ZERO;
    }

    /// Counts, maybe logs, and sleeps the backoff.
    pub async fn failed(&mut self, listener: &str, e: &std::io::Error, metrics: &Metrics) {
        // Linux errno values: the descriptor limits of the process and of the system, and
        // memory; everything else is counted as `other`.
        let reason = match e.raw_os_error() {
            Some(24) => "emfile",
            Some(23) => "enfile",
            Some(12 | 105) => "nomem",
            _ => "other",
        };
        metrics.accept_error(listener, reason);
        if self.logged.is_none_or(|at| at.elapsed() >= Self::LOG_EVERY) {
            tracing::warn!(
                listener,
                error = %e,
                reason,
                more_since_last_log = self.unlogged,
                backoff = ?self.backoff.max(Self::FIRST_BACKOFF),
                "accept failed; backing off (raise the descriptor limit or lower max_connections)"
            );
            self.logged = Some(Instant::now());
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        self.backoff = (self.backoff * 2).clamp(Self::FIRST_BACKOFF, Self::MAX_BACKOFF);
        tokio::time::sleep(self.backoff).await;
    }
}
