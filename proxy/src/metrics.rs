//! Prometheus metrics (`ward_` families), served at the admin server's `/metrics`.
//!
//! Per-listener handles are looked up once when a listener starts, so the hot path touches
//! atomics only; label lookups happen per event (a refusal, a decision), never per byte.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

use crate::audit::Direction;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    listener: String,
    direction: &'static str,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthzLabels {
    // Shared with the records: building a label set per request clones two pointers, no
    // strings.
    listener: Arc<str>,
    rule: Arc<str>,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AcceptLabels {
    listener: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    listener: String,
    direction: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

fn direction(d: Direction) -> &'static str {
    match d {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    }
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A decision counter this thread used lately. It holds the label strings, so while it is here
/// no other string can have their address: a pointer match means the same labels.
struct RecentDecision {
    metrics: u64,
    listener: Arc<str>,
    rule: Arc<str>,
    decision: &'static str,
    counter: Counter,
}

/// A handful: a listener's requests mostly meet the same few rules.
const RECENT_DECISIONS_KEPT: usize = 8;

thread_local! {
    /// Finding a decision's counter in the family hashes its three labels with SipHash and
    /// takes the family's lock, which both workers share: about 800 instructions per request
    /// (callgrind), more than the rest of counting it. Counters found once are kept here,
    /// per thread, and matched by pointer; the family still holds and exports them.
    static RECENT_DECISIONS: std::cell::RefCell<Vec<RecentDecision>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Every metric family ward exports.
pub struct Metrics {
    registry: Registry,
    opened: Family<ListenerLabels, Counter>,
    closed: Family<ListenerLabels, Counter>,
    active: Family<ListenerLabels, Gauge>,
    bytes_received: Family<ListenerLabels, Counter>,
    bytes_sent: Family<ListenerLabels, Counter>,
    refused_overload: Family<ListenerLabels, Counter>,
    refused_source: Family<ListenerLabels, Counter>,
    accept_errors: Family<AcceptLabels, Counter>,
    handshake_failures: Family<HandshakeLabels, Counter>,
    authz: Family<AuthzLabels, Counter>,
    /// Tells this `Metrics` apart in the per-thread cache of decision counters.
    id: u64,
    /// The `rule` label of a decision no rule made.
    default_rule: Arc<str>,
    request_duration: Family<ListenerLabels, Histogram, fn() -> Histogram>,
    pub identity_expiry: Gauge<i64, AtomicI64Compat>,
    rotations: Family<ResultLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    pub audit_dropped: Counter,
    hbone_connections_opened: Family<ListenerLabels, Counter>,
    hbone_connections_active: Family<ListenerLabels, Gauge>,
    hbone_streams: Family<StreamLabels, Counter>,
    hbone_streams_active: Family<ListenerLabels, Gauge>,
}

/// The HBONE handles of one listener: its tunnel connections (pooled, outbound; accepted,
/// inbound) and their CONNECT streams.
#[derive(Clone, Debug)]
pub struct HboneMetrics {
    pub connections_opened: Counter,
    pub connections_active: Gauge,
    pub streams_active: Gauge,
    streams: Family<StreamLabels, Counter>,
    listener: String,
    direction: &'static str,
}

impl HboneMetrics {
    /// A stream ended, or was refused: `ok`, or why not (`denied`, `bad_method`, ...).
    pub fn stream(&self, result: &'static str) {
        self.streams
            .get_or_create(&StreamLabels {
                listener: self.listener.clone(),
                direction: self.direction,
                result,
            })
            .inc();
    }
}

/// prometheus-client's gauge atomic for `i64`.
pub type AtomicI64Compat = std::sync::atomic::AtomicI64;

fn duration_histogram() -> Histogram {
    // 100µs .. ~26s
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// The handles one listener updates on its hot path.
#[derive(Clone, Debug)]
pub struct ListenerMetrics {
    pub opened: Counter,
    pub closed: Counter,
    pub active: Gauge,
    pub bytes_received: Counter,
    pub bytes_sent: Counter,
    pub refused_overload: Counter,
    /// Refused because the source address had too many connections still in their handshake.
    pub refused_source: Counter,
    pub request_duration: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ward");
        let m = Metrics {
            registry: Registry::default(),
            opened: Family::default(),
            closed: Family::default(),
            active: Family::default(),
            bytes_received: Family::default(),
            bytes_sent: Family::default(),
            refused_overload: Family::default(),
            refused_source: Family::default(),
            accept_errors: Family::default(),
            handshake_failures: Family::default(),
            authz: Family::default(),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            default_rule: Arc::from("default"),
            request_duration: Family::new_with_constructor(duration_histogram),
            identity_expiry: Gauge::default(),
            rotations: Family::default(),
            reloads: Family::default(),
            audit_dropped: Counter::default(),
            hbone_connections_opened: Family::default(),
            hbone_connections_active: Family::default(),
            hbone_streams: Family::default(),
            hbone_streams_active: Family::default(),
        };
        registry.register("connections_opened", "Connections accepted", m.opened.clone());
        registry.register("connections_closed", "Connections ended", m.closed.clone());
        registry.register("connections_active", "Connections open now", m.active.clone());
        registry.register(
            "bytes_received",
            "Bytes received from the accepting side's peer (inbound: the remote sidecar; outbound: the app)",
            m.bytes_received.clone(),
        );
        registry.register(
            "bytes_sent",
            "Bytes sent back to the accepting side's peer",
            m.bytes_sent.clone(),
        );
        registry.register(
            "connections_refused_overload",
            "Connections refused because the listener was at max_connections",
            m.refused_overload.clone(),
        );
        registry.register(
            "connections_refused_source",
            "Connections refused because their source address had max_pending_per_source connections still in the TLS handshake",
            m.refused_source.clone(),
        );
        registry.register(
            "accept_errors",
            "Failed accepts by reason (emfile: out of file descriptors); the listener backs off and keeps serving",
            m.accept_errors.clone(),
        );
        registry.register(
            "handshake_failures",
            "TLS handshakes that failed, by reason",
            m.handshake_failures.clone(),
        );
        registry.register(
            "authz_decisions",
            "Policy and server_id decisions, by rule and decision",
            m.authz.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "HTTP request duration, from request head to the end of the response",
            m.request_duration.clone(),
        );
        registry.register(
            "identity_expiry_timestamp_seconds",
            "Expiry of the SVID in use (Unix seconds)",
            m.identity_expiry.clone(),
        );
        registry.register(
            "identity_rotations",
            "Identity updates, by result (applied or the refusal reason)",
            m.rotations.clone(),
        );
        registry.register("config_reloads", "Config reloads, by result", m.reloads.clone());
        registry.register(
            "audit_records_dropped",
            "Audit records dropped because the writer fell behind",
            m.audit_dropped.clone(),
        );
        registry.register(
            "hbone_connections_opened",
            "HBONE tunnel connections (HTTP/2 over mTLS): pooled ones made (outbound), accepted ones (inbound)",
            m.hbone_connections_opened.clone(),
        );
        registry.register(
            "hbone_connections_active",
            "HBONE tunnel connections open now",
            m.hbone_connections_active.clone(),
        );
        registry.register(
            "hbone_streams",
            "HBONE CONNECT streams, by result: ok (tunnelled), or why not (denied, bad_method, bad_authority, port_not_allowed, unreachable, overload; outbound: peer_denied, peer_refused, upstream_failed, not_hbone, no_hbone, a handshake reason)",
            m.hbone_streams.clone(),
        );
        registry.register(
            "hbone_streams_active",
            "HBONE CONNECT streams open now",
            m.hbone_streams_active.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The HBONE handles of one listener.
    pub fn hbone(&self, name: &str, d: Direction) -> HboneMetrics {
        let l = ListenerLabels {
            listener: name.to_owned(),
            direction: direction(d),
        };
        HboneMetrics {
            connections_opened: self.hbone_connections_opened.get_or_create_owned(&l),
            connections_active: self.hbone_connections_active.get_or_create_owned(&l),
            streams_active: self.hbone_streams_active.get_or_create_owned(&l),
            streams: self.hbone_streams.clone(),
            listener: l.listener,
            direction: l.direction,
        }
    }

    /// The handles of one listener.
    pub fn listener(&self, name: &str, d: Direction) -> ListenerMetrics {
        let l = ListenerLabels {
            listener: name.to_owned(),
            direction: direction(d),
        };
        ListenerMetrics {
            opened: self.opened.get_or_create_owned(&l),
            closed: self.closed.get_or_create_owned(&l),
            active: self.active.get_or_create_owned(&l),
            bytes_received: self.bytes_received.get_or_create_owned(&l),
            bytes_sent: self.bytes_sent.get_or_create_owned(&l),
            refused_overload: self.refused_overload.get_or_create_owned(&l),
            refused_source: self.refused_source.get_or_create_owned(&l),
            request_duration: self.request_duration.get_or_create_owned(&l),
        }
    }

    pub fn handshake_failed(&self, listener: &str, d: Direction, reason: &str) {
        self.handshake_failures
            .get_or_create(&HandshakeLabels {
                listener: listener.to_owned(),
                direction: direction(d),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn decision(&self, listener: &Arc<str>, rule: Option<&Arc<str>>, decision: ward_filters::Decision) {
        let rule = rule.unwrap_or(&self.default_rule);
        let decision = match decision {
            ward_filters::Decision::Allow => "allow",
            ward_filters::Decision::Deny => "deny",
        };
        let labels = || AuthzLabels {
            listener: listener.clone(),
            rule: rule.clone(),
            decision,
        };
        let cached = RECENT_DECISIONS.try_with(|recent| {
            // Busy only if counting ever counted again; then the family, as below.
            let Ok(mut recent) = recent.try_borrow_mut() else {
                return false;
            };
            let hit = recent.iter().rposition(|d| {
                d.metrics == self.id
                    && Arc::ptr_eq(&d.listener, listener)
                    && Arc::ptr_eq(&d.rule, rule)
                    && d.decision == decision
            });
            if let Some(i) = hit {
                recent[i].counter.inc();
                // The most recently used last, and the least recently used first out.
                recent[i..].rotate_left(1);
                return true;
            }
            let counter = self.authz.get_or_create(&labels()).clone();
            counter.inc();
            if recent.len() == RECENT_DECISIONS_KEPT {
                recent.remove(0);
            }
            recent.push(RecentDecision {
                metrics: self.id,
                listener: listener.clone(),
                rule: rule.clone(),
                decision,
                counter,
            });
            true
        });
        // Not cached: the thread is exiting (a request's record written as its task is
        // dropped at shutdown).
        if cached != Ok(true) {
            self.authz.get_or_create(&labels()).inc();
        }
    }

    /// A connection to an admin listener (`admin` or `probes`) refused at its cap.
    pub fn admin_refused(&self, listener: &'static str) {
        self.refused_overload
            .get_or_create(&ListenerLabels {
                listener: listener.to_owned(),
                direction: "admin",
            })
            .inc();
    }

    /// A failed accept on `listener`.
    pub fn accept_error(&self, listener: &str, reason: &'static str) {
        self.accept_errors
            .get_or_create(&AcceptLabels {
                listener: listener.to_owned(),
                reason,
            })
            .inc();
    }

    pub fn rotation(&self, result: &str) {
        self.rotations
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn reload(&self, result: &str) {
        self.reloads
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ward_filters::Decision;

    fn count(m: &Metrics, rule: &str, decision: &str) -> Option<u64> {
        let line = format!(
            "ward_authz_decisions_total{{listener=\"web\",rule=\"{rule}\",decision=\"{decision}\"}} "
        );
        m.encode()
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .map(|v| v.trim().parse().unwrap())
    }

    /// Decisions counted through the per-thread cache land on the right series, whether the
    /// label strings are the same allocations or equal copies, and two `Metrics` on one
    /// thread never count into each other.
    #[test]
    fn decisions_are_counted_per_labels_and_per_registry() {
        let (a, b) = (Metrics::new(), Metrics::new());
        let web: Arc<str> = Arc::from("web");
        let allow: Arc<str> = Arc::from("allow-frontend");
        let allow_again: Arc<str> = Arc::from("allow-frontend");
        for _ in 0..3 {
            a.decision(&web, Some(&allow), Decision::Allow);
        }
        a.decision(&web, Some(&allow_again), Decision::Allow);
        a.decision(&web, Some(&allow), Decision::Deny);
        a.decision(&web, None, Decision::Deny);
        b.decision(&web, Some(&allow), Decision::Allow);
        // More label sets than the cache keeps, then the first again.
        for i in 0..RECENT_DECISIONS_KEPT + 2 {
            a.decision(&web, Some(&Arc::from(format!("r{i}"))), Decision::Allow);
        }
        a.decision(&web, Some(&allow), Decision::Allow);

        assert_eq!(count(&a, "allow-frontend", "allow"), Some(5));
        assert_eq!(count(&a, "allow-frontend", "deny"), Some(1));
        assert_eq!(count(&a, "default", "deny"), Some(1));
        assert_eq!(count(&a, "r0", "allow"), Some(1));
        assert_eq!(count(&b, "allow-frontend", "allow"), Some(1));
        assert_eq!(count(&b, "default", "deny"), None);
    }
}
