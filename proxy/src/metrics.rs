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
struct ResultLabels {
    result: String,
}

fn direction(d: Direction) -> &'static str {
    match d {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    }
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
    handshake_failures: Family<HandshakeLabels, Counter>,
    authz: Family<AuthzLabels, Counter>,
    /// The `rule` label of a decision no rule made.
    default_rule: Arc<str>,
    request_duration: Family<ListenerLabels, Histogram, fn() -> Histogram>,
    pub identity_expiry: Gauge<i64, AtomicI64Compat>,
    rotations: Family<ResultLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    pub audit_dropped: Counter,
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
            handshake_failures: Family::default(),
            authz: Family::default(),
            default_rule: Arc::from("default"),
            request_duration: Family::new_with_constructor(duration_histogram),
            identity_expiry: Gauge::default(),
            rotations: Family::default(),
            reloads: Family::default(),
            audit_dropped: Counter::default(),
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
        Metrics { registry, ..m }
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
        self.authz
            .get_or_create(&AuthzLabels {
                listener: listener.clone(),
                rule: rule.unwrap_or(&self.default_rule).clone(),
                decision: match decision {
                    ward_filters::Decision::Allow => "allow",
                    ward_filters::Decision::Deny => "deny",
                },
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
