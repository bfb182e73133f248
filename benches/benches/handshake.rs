//! An mTLS handshake between two dev-CA identities, in memory: a rustls `ClientConnection`
//! and `ServerConnection` built from `ward_certs::TlsConfigs::build` (the configs ward's
//! listeners use) and driven through byte buffers, so the number is the CPU cost of the
//! handshake itself (key exchange, signatures, SVID chain validation both ways), with no
//! sockets and no scheduler.
//!
//!     cargo bench -p ward-benches --bench handshake
//!
//! `full`: the client has resumption turned off, so every handshake is a full one.
//! `resumed`: the client keeps rustls' default in-memory session cache and the server its
//! default stateful ticket store (what ward's configs carry), so after the first handshake
//! each one resumes a TLS 1.3 session (PSK + ECDHE, no certificates, no chain validation).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use rustls::client::Resumption;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use rustls_pki_types::ServerName;
use ward_certs::{BundleSet, DevCa, Identity, SpiffeId, TlsConfigs, TlsOptions, TrustDomain, UnixTime};

/// TLS configs for one identity issued by `ca`.
fn configs(ca: &DevCa, id: &str) -> TlsConfigs {
    let id = SpiffeId::parse(id).unwrap();
    let svid = ca.issue(&id, Duration::from_secs(3600)).unwrap();
    let mut bundles = BundleSet::new();
    bundles.insert(ca.bundle().unwrap());
    let identity = Identity::new(svid.chain.clone(), svid.key_der(), bundles, UnixTime::now()).unwrap();
    TlsConfigs::build(Arc::new(identity), &TlsOptions::default()).unwrap()
}

/// Moves every pending TLS record from one side to the other until both finish handshaking.
fn handshake(client_config: &Arc<ClientConfig>, server_config: &Arc<ServerConfig>) -> bool {
    let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let mut client = ClientConnection::new(client_config.clone(), name).unwrap();
    let mut server = ServerConnection::new(server_config.clone()).unwrap();
    let mut wire = Vec::with_capacity(8 * 1024);
    for _ in 0..16 {
        wire.clear();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let mut rd = &wire[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd).unwrap();
        }
        server.process_new_packets().unwrap();

        wire.clear();
        while server.wants_write() {
            server.write_tls(&mut wire).unwrap();
        }
        let mut rd = &wire[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
        }
        client.process_new_packets().unwrap();

        if !client.is_handshaking()
            && !server.is_handshaking()
            && !client.wants_write()
            && !server.wants_write()
        {
            // The server saw the client's SVID (the chain was validated by ward's verifier).
            assert!(server.peer_certificates().is_some());
            return client.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        }
    }
    panic!("the handshake did not finish in 16 flights");
}

fn mtls_handshake(c: &mut Criterion) {
    let ca = DevCa::generate(&TrustDomain::new("bench.local").unwrap()).unwrap();
    let client = configs(&ca, "spiffe://bench.local/ns/bench/sa/client");
    let server = configs(&ca, "spiffe://bench.local/ns/bench/sa/server");

    let mut group = c.benchmark_group("mtls_handshake");

    let mut full = (*client.client).clone();
    full.resumption = Resumption::disabled();
    let full = Arc::new(full);
    assert!(!handshake(&full, &server.server));
    group.bench_function("full", |b| b.iter(|| black_box(handshake(&full, &server.server))));

    // ward's own client config: resumption on (rustls' default session cache).
    let resuming = client.client.clone();
    handshake(&resuming, &server.server);
    assert!(
        handshake(&resuming, &server.server),
        "the second handshake did not resume"
    );
    group.bench_function("resumed", |b| {
        b.iter(|| black_box(handshake(&resuming, &server.server)))
    });

    group.finish();
}

criterion_group!(benches, mtls_handshake);
criterion_main!(benches);
