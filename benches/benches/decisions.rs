//! Per-connection decision costs: SPIFFE ID parsing, SVID leaf checks, policy evaluation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ward_certs::{DevCa, SpiffeId, TrustDomain};
use ward_filters::{Peer, Policy};

fn spiffe_id(c: &mut Criterion) {
    let id = "spiffe://example.org/ns/default/sa/frontend-with-a-longer-name";
    c.bench_function("spiffe_id/parse", |b| {
        b.iter(|| SpiffeId::parse(black_box(id)).unwrap())
    });
}

fn svid(c: &mut Criterion) {
    let ca = DevCa::generate(&TrustDomain::new("example.org").unwrap()).unwrap();
    let id = SpiffeId::parse("spiffe://example.org/ns/default/sa/web").unwrap();
    let svid = ca.issue(&id, Duration::from_secs(3600)).unwrap();
    let leaf = svid.chain[0].clone();
    c.bench_function("svid/check_leaf", |b| {
        b.iter(|| ward_certs::svid::check_leaf(black_box(&leaf)).unwrap())
    });
    let mut set = ward_certs::BundleSet::new();
    set.insert(ca.bundle().unwrap());
    let verifier = ward_certs::SvidVerifier::new(std::sync::Arc::new(set), &ward_certs::provider());
    c.bench_function("svid/verify_chain", |b| {
        b.iter(|| {
            verifier
                .verify(
                    black_box(&leaf),
                    &[],
                    ward_certs::UnixTime::now(),
                    ward_certs::svid_usage(),
                )
                .unwrap()
        })
    });
}

fn policy(c: &mut Criterion) {
    let target = "spiffe://example.org/ns/bench/sa/target";
    let mut group = c.benchmark_group("policy/evaluate_connection");
    for n in [10usize, 1_000, 10_000] {
        let policy = Policy::compile("bench", &ward_benches::policy_with_rules(n, target)).unwrap();
        group.bench_with_input(BenchmarkId::from_parameter(n), &policy, |b, p| {
            b.iter(|| p.evaluate_connection(Peer::Authenticated(black_box(target))))
        });
    }
    group.finish();
    let mut group = c.benchmark_group("policy/evaluate_connection_wildcards");
    for n in [10usize, 1_000, 10_000] {
        let spec = ward_benches::policy_with_wildcard_rules(n, "bench");
        let policy = Policy::compile("bench", &spec).unwrap();
        group.bench_with_input(BenchmarkId::from_parameter(n), &policy, |b, p| {
            b.iter(|| p.evaluate_connection(Peer::Authenticated(black_box(target))))
        });
    }
    group.finish();
}

criterion_group!(benches, spiffe_id, svid, policy);
criterion_main!(benches);
