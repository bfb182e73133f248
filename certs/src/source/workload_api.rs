//! The SPIFFE Workload API (what a SPIRE agent serves) as an identity source.
//!
//! Per the SPIFFE Workload Endpoint and Workload API standards: every call carries the
//! `workload.spiffe.io: true` metadata (the `spiffe` crate's client adds it); `FetchX509SVID`
//! is a stream, each message a complete picture (our SVIDs, our trust domain's bundle, the
//! federated bundles), so a bundle missing from a message is dropped; `Unavailable` and
//! `PermissionDenied` are retried with backoff, `InvalidArgument` stops the source; a stream
//! that ends is reconnected, for ever, while the store keeps serving the last good identity.

use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use spiffe::transport::{Endpoint, GrpcStatusCode, TransportError};
use spiffe::{WorkloadApiClient, WorkloadApiError, X509Context};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;

use super::{Federation, IdentityUpdates, Reload, Update, now};
use crate::bundle::{BundleSet, TrustBundle};
use crate::identity::{Identity, IdentityError};
use crate::spiffe_id::TrustDomain;
use crate::svid;

/// The environment variable that names the Workload API endpoint (SPIFFE Workload Endpoint).
pub const ENDPOINT_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

/// The endpoint from `SPIFFE_ENDPOINT_SOCKET`, when it is set and not empty.
pub fn default_endpoint() -> Option<String> {
    std::env::var(ENDPOINT_ENV).ok().filter(|s| !s.trim().is_empty())
}

/// Checks an endpoint address: `unix:///path/to/agent.sock` or `tcp://IP:port`.
pub fn validate_endpoint(endpoint: &str) -> Result<(), String> {
    Endpoint::parse(endpoint)
        .map(|_| ())
        .map_err(|e| format!("{endpoint:?} is not a Workload API address like unix:///run/spire/agent.sock or tcp://127.0.0.1:8081: {e}"))
}

/// Exponential backoff between reconnects.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// ward's SVID and bundles from the SPIFFE Workload API.
#[derive(Debug, Clone)]
pub struct WorkloadApiSource {
    /// `unix:///path` or `tcp://IP:port`.
    pub endpoint: String,
    /// Take the SVID with this hint; without one, the first SVID (the default one).
    pub hint: Option<String>,
    /// Bundle files configured beside the API's own; they replace the API's bundle of the
    /// same trust domain.
    pub federation: Federation,
    pub backoff: Backoff,
}

/// How one connection to the Workload API ended.
enum Ended {
    /// Nobody reads the updates any more.
    Closed,
    /// The API refused our request as invalid: retrying cannot help.
    Fatal,
    /// Reconnect after the backoff; `fresh` when the session delivered something (the backoff
    /// starts over).
    Retry { fresh: bool },
    /// Asked to re-read: reconnect at once.
    Reload,
}

impl WorkloadApiSource {
    /// A source for `endpoint` with the default backoff and no hint.
    pub fn new(endpoint: impl Into<String>) -> Self {
        WorkloadApiSource {
            endpoint: endpoint.into(),
            hint: None,
            federation: Federation::default(),
            backoff: Backoff::default(),
        }
    }

    /// Starts the source: connects, streams, reconnects for ever (until `InvalidArgument`).
    pub fn spawn(self) -> IdentityUpdates {
        let (tx, rx) = mpsc::channel(4);
        let reload = Reload::new();
        tokio::spawn(self.run(tx, reload.clone()));
        IdentityUpdates::new(rx, reload)
    }

    async fn run(self, tx: mpsc::Sender<Update>, reload: Reload) {
        let endpoint = match Endpoint::parse(&self.endpoint) {
            Ok(e) => e,
            Err(e) => {
                let _ = tx
                    .send(Err(IdentityError::Source(format!(
                        "identity.workload_api.socket {:?} is not a Workload API address (unix:///path or tcp://IP:port): {e}",
                        self.endpoint
                    ))))
                    .await;
                return;
            }
        };
        let mut errors = Errors::default();
        let mut delay = self.backoff.initial;
        loop {
            match self.session(&endpoint, &tx, &reload, &mut errors).await {
                Ended::Closed => return,
                Ended::Fatal => {
                    tracing::error!(endpoint = %self.endpoint, "the Workload API refused the request as invalid; not retrying (the last good identity keeps serving)");
                    return;
                }
                Ended::Reload => {
                    delay = self.backoff.initial;
                    continue;
                }
                Ended::Retry { fresh } => {
                    if fresh {
                        delay = self.backoff.initial;
                    }
                }
            }
            tracing::debug!(endpoint = %self.endpoint, ?delay, "reconnecting to the Workload API");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = reload.requested() => {}
                _ = tx.closed() => return,
            }
            delay = (delay * 2).min(self.backoff.max);
        }
    }

    async fn session(
        &self,
        endpoint: &Endpoint,
        tx: &mpsc::Sender<Update>,
        reload: &Reload,
        errors: &mut Errors,
    ) -> Ended {
        let client = tokio::select! {
            c = WorkloadApiClient::connect(endpoint.clone()) => c,
            _ = tx.closed() => return Ended::Closed,
        };
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                let err = IdentityError::Unavailable(format!(
                    "cannot connect to the SPIFFE Workload API at {}: {e} (is the SPIRE agent running, and is the socket mounted?)",
                    self.endpoint
                ));
                return match errors.send(tx, err).await {
                    false => Ended::Closed,
                    true => Ended::Retry { fresh: false },
                };
            }
        };
        let stream = tokio::select! {
            s = client.stream_x509_contexts() => s,
            _ = tx.closed() => return Ended::Closed,
        };
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => return self.failed(e, tx, errors, false).await,
        };
        let mut fresh = false;
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = reload.requested() => {
                    tracing::info!(endpoint = %self.endpoint, "Workload API: reconnecting on request");
                    return Ended::Reload;
                }
                _ = tx.closed() => return Ended::Closed,
            };
            match item {
                None => {
                    tracing::warn!(endpoint = %self.endpoint, "the Workload API closed the stream; reconnecting (the last good identity keeps serving)");
                    return Ended::Retry { fresh };
                }
                Some(Ok(ctx)) => {
                    fresh = true;
                    errors.clear();
                    if tx.send(self.identity_of(&ctx)).await.is_err() {
                        return Ended::Closed;
                    }
                }
                Some(Err(e)) if status_of(&e).is_some() => return self.failed(e, tx, errors, fresh).await,
                Some(Err(e)) => {
                    // A message we could not parse: refuse it, keep the stream.
                    let err = IdentityError::Source(format!(
                        "the Workload API sent an unusable X509-SVID response: {e}"
                    ));
                    if tx.send(Err(err)).await.is_err() {
                        return Ended::Closed;
                    }
                }
            }
        }
    }

    /// A failed call or stream: reported, then retried or (InvalidArgument) given up.
    async fn failed(
        &self,
        e: WorkloadApiError,
        tx: &mpsc::Sender<Update>,
        errors: &mut Errors,
        fresh: bool,
    ) -> Ended {
        let code = status_of(&e);
        let fatal = code == Some(GrpcStatusCode::InvalidArgument);
        let err = if fatal {
            IdentityError::Source(format!(
                "the SPIFFE Workload API at {} refused the request as invalid: {e}",
                self.endpoint
            ))
        } else {
            IdentityError::Unavailable(format!("the SPIFFE Workload API at {}: {e}", self.endpoint))
        };
        if !errors.send(tx, err).await {
            return Ended::Closed;
        }
        if fatal {
            Ended::Fatal
        } else {
            Ended::Retry { fresh }
        }
    }

    /// The identity in one X509-SVID response: the SVID we want, its trust domain's bundle and
    /// the federated bundles sent with it (plus configured ones).
    pub fn identity_of(&self, ctx: &X509Context) -> Update {
        let svids = ctx.svids();
        let chosen = match &self.hint {
            Some(hint) => svids
                .iter()
                .find(|s| s.hint() == Some(hint.as_str()))
                .ok_or_else(|| {
                    let offered: Vec<&str> = svids.iter().filter_map(|s| s.hint()).collect();
                    IdentityError::Source(format!(
                        "the Workload API offers no SVID with hint {hint:?} (hints offered: {})",
                        if offered.is_empty() {
                            "none".to_owned()
                        } else {
                            offered.join(", ")
                        }
                    ))
                })?,
            None => svids
                .first()
                .ok_or_else(|| IdentityError::Source("the Workload API sent no SVID".into()))?,
        };
        let chain: Vec<CertificateDer<'static>> = chosen
            .cert_chain()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect();
        let key = PrivateKeyDer::Pkcs8(chosen.private_key().as_bytes().to_vec().into());
        let leaf = chain.first().ok_or_else(|| {
            IdentityError::Source("the Workload API sent an SVID without certificates".into())
        })?;
        let own = svid::check_leaf(leaf)?.id.trust_domain();
        let mut bundles = BundleSet::new();
        for (td, bundle) in ctx.bundle_set().iter() {
            let certs: Vec<CertificateDer<'static>> = bundle
                .authorities()
                .iter()
                .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
                .collect();
            let what = format!("the Workload API's bundle of {td}");
            let parsed = TrustDomain::new(td.as_str())
                .map_err(|e| IdentityError::Source(format!("{what}: {e}")))
                .and_then(|td| TrustBundle::from_certs(td, certs, &what).map_err(IdentityError::from));
            match parsed {
                Ok(b) => bundles.insert(b),
                // Our own bundle must be usable; a bad federated one only costs that domain.
                Err(e) if td.as_str() == own.as_str() => return Err(e),
                Err(e) => tracing::warn!(error = %e, "ignoring a federated bundle from the Workload API"),
            }
        }
        self.federation.load_into(own.as_str(), &mut bundles)?;
        Identity::new(chain, key, bundles, now())
    }
}

/// The gRPC status of a failed call, if it was one (connection failures count as Unavailable).
fn status_of(e: &WorkloadApiError) -> Option<GrpcStatusCode> {
    match e {
        WorkloadApiError::Transport(TransportError::Status(s)) => Some(s.code()),
        WorkloadApiError::Transport(_) => Some(GrpcStatusCode::Unavailable),
        WorkloadApiError::PermissionDenied(_) | WorkloadApiError::NoIdentityIssued => {
            Some(GrpcStatusCode::PermissionDenied)
        }
        _ => None,
    }
}

/// Reports connection errors once each: the same failure repeated on every retry of an outage
/// is logged at debug level, not counted again.
#[derive(Default)]
struct Errors {
    last: Option<String>,
}

impl Errors {
    /// Sends `err` unless it repeats the last one; false when nobody reads any more.
    async fn send(&mut self, tx: &mpsc::Sender<Update>, err: IdentityError) -> bool {
        let text = err.to_string();
        if self.last.as_deref() == Some(text.as_str()) {
            tracing::debug!(error = %text, "Workload API still unavailable");
            return !tx.is_closed();
        }
        self.last = Some(text);
        tx.send(Err(err)).await.is_ok()
    }

    fn clear(&mut self) {
        self.last = None;
    }
}
