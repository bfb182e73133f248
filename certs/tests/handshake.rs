#![allow(clippy::unwrap_used, clippy::expect_used)]
//! In-memory rustls handshakes between `TlsConfigs` built for test identities: mutual SVID
//! authentication succeeds within a trust domain (and a federated one) and fails, with ward's
//! reason recoverable, for peers the other side does not trust.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;

use common::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, Connection, ServerConnection};
use ward_certs::{
    BundleSet, Identity, SpiffeId, TlsConfigs, TlsOptions, TrustBundle, UnixTime, VerifyError, peer_svid,
};

fn configs(identity: Identity, alpn: &[&[u8]]) -> TlsConfigs {
    let opts = TlsOptions {
        alpn: alpn.iter().map(|p| p.to_vec()).collect(),
    };
    TlsConfigs::build(Arc::new(identity), &opts).unwrap()
}

fn pair(client: &TlsConfigs, server: &TlsConfigs) -> (Connection, Connection) {
    // The server name is not checked: which SPIFFE ID is acceptable is decided after the handshake.
    let name = ServerName::try_from("anything.invalid").unwrap();
    let c = ClientConnection::new(client.client.clone(), name).unwrap();
    let s = ServerConnection::new(server.server.clone()).unwrap();
    (Connection::Client(c), Connection::Server(s))
}

/// Feeds `data` into `conn`; the first processing error is kept in `res`.
fn feed(conn: &mut Connection, mut data: &[u8], res: &mut Result<(), rustls::Error>) {
    while res.is_ok() && !data.is_empty() {
        if conn.read_tls(&mut data).unwrap() == 0 {
            break;
        }
        if let Err(e) = conn.process_new_packets() {
            *res = Err(e);
        }
    }
}

/// Moves TLS records both ways until neither side has anything to send. Returns each side's
/// first error (client, server).
fn pump(
    client: &mut Connection,
    server: &mut Connection,
) -> (Result<(), rustls::Error>, Result<(), rustls::Error>) {
    let (mut c_res, mut s_res) = (Ok(()), Ok(()));
    for _ in 0..32 {
        let mut progressed = false;
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            progressed = true;
            feed(server, &buf, &mut s_res);
        }
        buf.clear();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            progressed = true;
            feed(client, &buf, &mut c_res);
        }
        if !progressed {
            return (c_res, s_res);
        }
    }
    panic!("handshake did not settle");
}

fn identity_for(ca: &TestCa, id: &SpiffeId, bundles: BundleSet) -> Identity {
    let svid = ca.issue(id);
    Identity::new(svid.chain.clone(), svid.key_der(), bundles, UnixTime::now()).unwrap()
}

fn db_id() -> SpiffeId {
    id("spiffe://example.org/ns/default/sa/db")
}

#[test]
fn mutual_handshake_succeeds_and_each_side_sees_the_other_id() {
    let ca = TestCa::new(OUR_TD);
    let web = configs(identity_for(&ca, &web_id(), bundles(&[&ca])), &[]);
    let db = configs(identity_for(&ca, &db_id(), bundles(&[&ca])), &[]);
    let (mut client, mut server) = pair(&web, &db);
    let (c, s) = pump(&mut client, &mut server);
    c.unwrap();
    s.unwrap();
    assert!(!client.is_handshaking() && !server.is_handshaking());
    assert_eq!(client.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(
        peer_svid(server.peer_certificates()).map(|s| s.id),
        Some(web_id())
    );
    assert_eq!(peer_svid(client.peer_certificates()).map(|s| s.id), Some(db_id()));

    // Application data flows both ways.
    client.writer().write_all(b"ping").unwrap();
    let (c, s) = pump(&mut client, &mut server);
    c.unwrap();
    s.unwrap();
    let mut got = [0u8; 4];
    server.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    server.writer().write_all(b"pong").unwrap();
    let (c, s) = pump(&mut client, &mut server);
    c.unwrap();
    s.unwrap();
    client.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
}

#[test]
fn alpn_is_negotiated() {
    let ca = TestCa::new(OUR_TD);
    let web = configs(
        identity_for(&ca, &web_id(), bundles(&[&ca])),
        &[b"h2", b"http/1.1"],
    );
    let db = configs(identity_for(&ca, &db_id(), bundles(&[&ca])), &[b"http/1.1"]);
    let (mut client, mut server) = pair(&web, &db);
    let (c, s) = pump(&mut client, &mut server);
    c.unwrap();
    s.unwrap();
    assert_eq!(client.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[test]
fn client_with_svid_from_untrusted_ca_fails_the_server_handshake() {
    let ca = TestCa::new(OUR_TD);
    let rogue = TestCa::new(OUR_TD);
    // The rogue client trusts the real CA too (so it accepts the server), but its own SVID
    // comes from the rogue CA of the same trust domain, which the server does not trust.
    let client_bundle =
        TrustBundle::from_certs(td(OUR_TD), vec![rogue.cert().clone(), ca.cert().clone()], "b").unwrap();
    let mut client_bundles = BundleSet::new();
    client_bundles.insert(client_bundle);
    let web = configs(identity_for(&rogue, &web_id(), client_bundles), &[]);
    let db = configs(identity_for(&ca, &db_id(), bundles(&[&ca])), &[]);

    let (mut client, mut server) = pair(&web, &db);
    let (c, s) = pump(&mut client, &mut server);
    let err = s.unwrap_err();
    let reason = VerifyError::from_rustls(&err).unwrap_or_else(|| panic!("not ward's error: {err:?}"));
    assert!(
        matches!(reason, VerifyError::UnknownIssuer(td) if td == OUR_TD),
        "{reason:?}"
    );
    assert_eq!(reason.reason(), "unknown_issuer");
    assert!(peer_svid(server.peer_certificates()).map(|s| s.id).is_none());
    // The client learns of the refusal through the server's alert.
    let c_err = c.unwrap_err();
    assert!(matches!(c_err, rustls::Error::AlertReceived(_)), "{c_err:?}");
}

#[test]
fn client_from_trust_domain_without_bundle_fails_the_server_handshake() {
    let ca = TestCa::new(OUR_TD);
    let partner = TestCa::new(PARTNER_TD);
    let partner_id = id("spiffe://partner.org/api");
    let api = configs(
        identity_for(&partner, &partner_id, bundles(&[&partner, &ca])),
        &[],
    );
    let db = configs(identity_for(&ca, &db_id(), bundles(&[&ca])), &[]);
    let (mut client, mut server) = pair(&api, &db);
    let (_, s) = pump(&mut client, &mut server);
    let err = s.unwrap_err();
    let reason = VerifyError::from_rustls(&err).unwrap();
    assert!(
        matches!(reason, VerifyError::UnknownTrustDomain(td) if td == PARTNER_TD),
        "{reason:?}"
    );
}

#[test]
fn federated_client_is_accepted_when_its_bundle_is_present() {
    let ca = TestCa::new(OUR_TD);
    let partner = TestCa::new(PARTNER_TD);
    let partner_id = id("spiffe://partner.org/api");
    let api = configs(
        identity_for(&partner, &partner_id, bundles(&[&partner, &ca])),
        &[],
    );
    let db = configs(identity_for(&ca, &db_id(), bundles(&[&ca, &partner])), &[]);
    let (mut client, mut server) = pair(&api, &db);
    let (c, s) = pump(&mut client, &mut server);
    c.unwrap();
    s.unwrap();
    assert_eq!(
        peer_svid(server.peer_certificates()).map(|s| s.id),
        Some(partner_id)
    );
    assert_eq!(peer_svid(client.peer_certificates()).map(|s| s.id), Some(db_id()));
}

#[test]
fn server_with_svid_from_untrusted_ca_fails_the_client_handshake() {
    let ca = TestCa::new(OUR_TD);
    let rogue = TestCa::new(OUR_TD);
    let web = configs(identity_for(&ca, &web_id(), bundles(&[&ca])), &[]);
    let evil = configs(identity_for(&rogue, &db_id(), bundles(&[&rogue])), &[]);
    let (mut client, mut server) = pair(&web, &evil);
    let (c, s) = pump(&mut client, &mut server);
    let err = c.unwrap_err();
    let reason = VerifyError::from_rustls(&err).unwrap();
    assert!(matches!(reason, VerifyError::UnknownIssuer(_)), "{reason:?}");
    assert!(matches!(s.unwrap_err(), rustls::Error::AlertReceived(_)));
    assert!(peer_svid(client.peer_certificates()).map(|s| s.id).is_none());
}

#[test]
fn from_rustls_ignores_errors_it_did_not_make() {
    assert!(VerifyError::from_rustls(&rustls::Error::DecryptError).is_none());
    assert!(
        VerifyError::from_rustls(&rustls::Error::InvalidCertificate(
            rustls::CertificateError::Expired
        ))
        .is_none()
    );
    assert_eq!(peer_svid(None).map(|s| s.id), None);
    assert_eq!(peer_svid(Some(&[])).map(|s| s.id), None);
}
