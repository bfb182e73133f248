#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `Identity::new` (chain + key + bundles validated together) and private keys in every PEM
//! form ward reads: PKCS#8, SEC1 and PKCS#1.

mod common;

use std::path::Path;

use common::*;
use rcgen::{KeyUsagePurpose, date_time_ymd};
use tempfile::TempDir;
use ward_certs::devca::svid_params;
use ward_certs::pem::{self, PemError};
use ward_certs::svid::SvidError;
use ward_certs::{CertificateDer, Identity, IdentityError, PrivateKeyDer, UnixTime, VerifyError};

fn new_identity(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cas: &[&TestCa],
) -> Result<Identity, IdentityError> {
    Identity::new(chain, key, bundles(cas), UnixTime::now())
}

#[test]
fn valid_identity_passes() {
    let ca = TestCa::new(OUR_TD);
    let partner = TestCa::new(PARTNER_TD);
    let svid = ca.issue(&web_id());
    let ident = new_identity(svid.chain.clone(), svid.key_der(), &[&ca, &partner]).unwrap();
    assert_eq!(ident.id(), &web_id());
    assert_eq!(ident.info().id, web_id());
    assert_eq!(ident.chain(), svid.chain.as_slice());
    assert_eq!(ident.bundles().trust_domains(), vec![OUR_TD, PARTNER_TD]);
    // Debug names the identity but never prints key material.
    let debug = format!("{ident:?}");
    assert!(
        debug.contains("spiffe://example.org/ns/default/sa/web"),
        "{debug}"
    );
    assert!(!debug.to_lowercase().contains("key:"), "{debug}");
}

#[test]
fn identity_with_intermediate_chain_passes() {
    let ca = TestCa::new(OUR_TD);
    let inter = ca.intermediate(|_| {});
    let (chain, key) = inter.sign(&svid_params(&web_id()).unwrap());
    let ident = new_identity(
        chain.clone(),
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        &[&ca],
    )
    .unwrap();
    assert_eq!(ident.chain().len(), 2);
    // Without the intermediate, the leaf does not chain to the bundle.
    let err = new_identity(
        chain[..1].to_vec(),
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        &[&ca],
    )
    .unwrap_err();
    assert!(
        matches!(err, IdentityError::Chain(VerifyError::UnknownIssuer(_))),
        "{err:?}"
    );
}

#[test]
fn key_that_does_not_match_the_cert_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue(&web_id());
    let other = ca.issue(&web_id());
    let err = new_identity(svid.chain.clone(), other.key_der(), &[&ca]).unwrap_err();
    assert!(matches!(err, IdentityError::KeyMismatch), "{err:?}");
    assert_eq!(err.reason(), "key_mismatch");
}

#[test]
fn expired_cert_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue_with(&web_id(), |p| {
        p.not_before = date_time_ymd(2001, 1, 1);
        p.not_after = date_time_ymd(2002, 1, 1);
    });
    let err = new_identity(svid.chain.clone(), svid.key_der(), &[&ca]).unwrap_err();
    assert!(
        matches!(err, IdentityError::Chain(VerifyError::Expired)),
        "{err:?}"
    );
    assert_eq!(err.reason(), "expired");
}

#[test]
fn cert_of_another_trust_domain_than_the_bundle_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let partner = TestCa::new(PARTNER_TD);
    let svid = partner.issue(&id("spiffe://partner.org/api"));
    let err = new_identity(svid.chain.clone(), svid.key_der(), &[&ca]).unwrap_err();
    assert!(
        matches!(&err, IdentityError::NoOwnBundle(td) if td == PARTNER_TD),
        "{err:?}"
    );
    assert_eq!(err.reason(), "no_own_bundle");
}

#[test]
fn cert_from_an_untrusted_ca_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let rogue = TestCa::new(OUR_TD);
    let svid = rogue.issue(&web_id());
    let err = new_identity(svid.chain.clone(), svid.key_der(), &[&ca]).unwrap_err();
    assert!(
        matches!(err, IdentityError::Chain(VerifyError::UnknownIssuer(_))),
        "{err:?}"
    );
    assert_eq!(err.reason(), "untrusted");
}

#[test]
fn empty_chain_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue(&web_id());
    let err = new_identity(vec![], svid.key_der(), &[&ca]).unwrap_err();
    assert!(
        matches!(err, IdentityError::Pem(PemError::NoCertificate { .. })),
        "{err:?}"
    );
}

#[test]
fn garbage_key_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue(&web_id());
    for key in [
        PrivateKeyDer::Pkcs8(b"garbage, not a key".to_vec().into()),
        PrivateKeyDer::Sec1(vec![0x30, 0x03, 0x02, 0x01, 0x01].into()),
        PrivateKeyDer::Pkcs1(vec![].into()),
    ] {
        let err = new_identity(svid.chain.clone(), key, &[&ca]).unwrap_err();
        assert!(matches!(err, IdentityError::BadKey(_)), "{err:?}");
        assert_eq!(err.reason(), "bad_key");
    }
}

#[test]
fn invalid_svid_as_own_identity_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue_with(&web_id(), |p| {
        p.key_usages = vec![KeyUsagePurpose::KeyEncipherment]
    });
    let err = new_identity(svid.chain.clone(), svid.key_der(), &[&ca]).unwrap_err();
    assert!(
        matches!(err, IdentityError::Svid(SvidError::NoDigitalSignature)),
        "{err:?}"
    );
}

// --- PEM key formats ------------------------------------------------------------------------

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn pkcs8_key_pem_loads_and_makes_an_identity() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue(&web_id());
    let key = pem::key(svid.key_pem().as_bytes(), "svid_key.pem").unwrap();
    assert!(matches!(key, PrivateKeyDer::Pkcs8(_)));
    let chain = pem::certs(svid.cert_pem().as_bytes(), "svid.pem").unwrap();
    assert_eq!(chain, svid.chain);
    new_identity(chain, key, &[&ca]).unwrap();
}

#[test]
fn sec1_ec_key_loads_and_makes_an_identity() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue(&web_id());
    let dir = TempDir::new().unwrap();
    std::fs::write(dir.path().join("pkcs8.pem"), svid.key_pem()).unwrap();
    openssl(dir.path(), &["ec", "-in", "pkcs8.pem", "-out", "sec1.pem"]);
    let sec1 = read(&dir.path().join("sec1.pem"));
    assert!(
        sec1.contains("-----BEGIN EC PRIVATE KEY-----"),
        "openssl ec wrote: {sec1}"
    );
    let key = load_key(&dir.path().join("sec1.pem"));
    assert!(matches!(key, PrivateKeyDer::Sec1(_)));
    new_identity(svid.chain.clone(), key, &[&ca]).unwrap();

    // And back to PKCS#8 with openssl: the same key again.
    openssl(
        dir.path(),
        &[
            "pkcs8", "-topk8", "-nocrypt", "-in", "sec1.pem", "-out", "back.pem",
        ],
    );
    let back = read(&dir.path().join("back.pem"));
    assert!(
        back.contains("-----BEGIN PRIVATE KEY-----"),
        "openssl pkcs8 wrote: {back}"
    );
    let key = load_key(&dir.path().join("back.pem"));
    assert!(matches!(key, PrivateKeyDer::Pkcs8(_)));
    new_identity(svid.chain.clone(), key, &[&ca]).unwrap();
}

#[test]
fn sec1_key_that_does_not_match_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue(&web_id());
    let dir = TempDir::new().unwrap();
    openssl(
        dir.path(),
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "other.pem",
        ],
    );
    let key = load_key(&dir.path().join("other.pem"));
    assert!(matches!(key, PrivateKeyDer::Sec1(_)));
    let err = new_identity(svid.chain.clone(), key, &[&ca]).unwrap_err();
    assert!(matches!(err, IdentityError::KeyMismatch), "{err:?}");
}

#[test]
fn pkcs1_rsa_key_loads_and_makes_an_identity() {
    let ca = TestCa::new(OUR_TD);
    let dir = TempDir::new().unwrap();
    let key_path = openssl_key(dir.path(), "rsa.pem", KeyKind::RsaTraditional(2048));
    assert!(read(&key_path).contains("-----BEGIN RSA PRIVATE KEY-----"));
    let leaf = openssl_leaf(&ca, dir.path(), &key_path, &web_id(), "sha256");
    let key = load_key(&key_path);
    assert!(matches!(key, PrivateKeyDer::Pkcs1(_)));
    let ident = new_identity(vec![leaf], key, &[&ca]).unwrap();
    assert_eq!(ident.id(), &web_id());
}

#[test]
fn pem_key_file_with_a_certificate_and_one_key_loads() {
    // A combined file: certificate blocks are skipped when looking for the key.
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue(&web_id());
    let combined = format!("{}{}", svid.cert_pem(), svid.key_pem());
    let key = pem::key(combined.as_bytes(), "combined.pem").unwrap();
    new_identity(
        pem::certs(combined.as_bytes(), "combined.pem").unwrap(),
        key,
        &[&ca],
    )
    .unwrap();
}

#[test]
fn pem_key_errors() {
    let ca = TestCa::new(OUR_TD);
    let a = ca.issue(&web_id());
    let b = ca.issue(&web_id());
    let two = format!("{}{}", a.key_pem(), b.key_pem());
    assert!(matches!(
        pem::key(two.as_bytes(), "k"),
        Err(PemError::ManyKeys { count: 2, .. })
    ));
    assert!(matches!(
        pem::key(a.cert_pem().as_bytes(), "k"),
        Err(PemError::NoKey { .. })
    ));
    assert!(matches!(pem::key(b"", "k"), Err(PemError::NoKey { .. })));
    assert!(matches!(
        pem::certs(a.key_pem().as_bytes(), "c"),
        Err(PemError::NoCertificate { .. })
    ));
    let missing = pem::read_file(Path::new("/nonexistent/ward/key.pem")).unwrap_err();
    assert!(matches!(missing, PemError::Read { .. }));
    assert!(missing.to_string().contains("/nonexistent/ward/key.pem"));
}
