//! What each HTTP request's record costs ward: building the audit record, counting the
//! decision in its metric family, and encoding the JSON line into the writer's queue (the
//! writer thread itself writes to /dev/null here).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use ward::audit::{AuditLog, ConnInfo, Direction};
use ward::config::AuditTarget;
use ward::metrics::Metrics;
use ward_filters::{Decision, Reason, Verdict};

fn request_record(c: &mut Criterion) {
    let info = ConnInfo {
        listener: Arc::from("backend"),
        direction: Direction::Inbound,
        src: "10.1.2.3:41234".parse().unwrap(),
        dst: "10.1.2.4:8080".parse().unwrap(),
        peer_id: Some(Arc::from("spiffe://example.org/ns/default/sa/frontend")),
        peer_serial: Some("5a1f0c9e2b7d4e3f8a6b".into()),
        forwarded_for: None,
    };
    let verdict = Verdict {
        decision: Decision::Allow,
        rule: Some(Arc::from("frontend")),
        reason: Reason::AllowRule,
        audit: Vec::new(),
    };
    let log = AuditLog::open(&AuditTarget::File("/dev/null".into())).unwrap();
    let metrics = Metrics::new();
    c.bench_function("record/http_request", |b| {
        b.iter(|| {
            let r = info.request(
                black_box(&verdict),
                "GET",
                "/api/v1/items/42",
                Some("backend.default.svc:8080"),
            );
            metrics.decision(&r.listener, r.rule.as_ref(), r.decision);
            log.write(black_box(&r));
        })
    });
}

criterion_group!(benches, request_record);
criterion_main!(benches);
