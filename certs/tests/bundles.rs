#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Trust bundles: PEM and SPIFFE JWKS forms load and validate leaves; certificates that cannot
//! sign SVIDs are refused; bundles stay per trust domain.

mod common;

use std::sync::Arc;

use base64::Engine;
use common::*;
use rcgen::{IsCa, KeyUsagePurpose};
use tempfile::TempDir;
use ward_certs::devca::svid_params;
use ward_certs::svid::SvidError;
use ward_certs::{BundleError, BundleSet, SvidVerifier, TrustBundle, VerifyError, provider};

fn b64(der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(der)
}

fn verifier_for(bundle: TrustBundle) -> SvidVerifier {
    let mut set = BundleSet::new();
    set.insert(bundle);
    SvidVerifier::new(Arc::new(set), &provider())
}

#[test]
fn pem_bundle_loads_and_validates_a_leaf() {
    let ca = TestCa::new(OUR_TD);
    let pem = ca.ca.cert_pem();
    let bundle = TrustBundle::parse(td(OUR_TD), pem.as_bytes(), "bundle.pem").unwrap();
    assert_eq!(bundle.trust_domain(), &td(OUR_TD));
    assert_eq!(bundle.certs(), std::slice::from_ref(ca.cert()));
    assert_eq!(bundle.anchors().len(), 1);
    let svid = ca.issue(&web_id());
    let info = verify(&verifier_for(bundle), &svid.chain).unwrap();
    assert_eq!(info.id, web_id());
}

#[test]
fn pem_bundle_file_loads() {
    let ca = TestCa::new(OUR_TD);
    let bundle = TrustBundle::load(td(OUR_TD), &ca.cert_path()).unwrap();
    let svid = ca.issue(&web_id());
    verify(&verifier_for(bundle), &svid.chain).unwrap();
}

#[test]
fn pem_bundle_with_two_cas_validates_leaves_of_both() {
    // CA rotation: the old and the new root of one trust domain side by side.
    let old = TestCa::new(OUR_TD);
    let new = TestCa::new(OUR_TD);
    let pem = format!("{}\n{}", old.ca.cert_pem(), new.ca.cert_pem());
    let bundle = TrustBundle::parse(td(OUR_TD), pem.as_bytes(), "bundle.pem").unwrap();
    assert_eq!(bundle.certs().len(), 2);
    let v = verifier_for(bundle);
    verify(&v, &old.issue(&web_id()).chain).unwrap();
    verify(&v, &new.issue(&web_id()).chain).unwrap();
}

#[test]
fn spiffe_jwks_bundle_loads_ignores_jwt_keys_and_validates_a_leaf() {
    let ca = TestCa::new(OUR_TD);
    // A non-CA certificate in the jwt-svid key: used as an X.509 authority it would be refused,
    // so the bundle loading proves the jwt-svid key is ignored.
    let not_a_ca = ca.issue(&web_id()).chain[0].clone();
    let jwks = format!(
        r#"{{
  "spiffe_sequence": 7,
  "spiffe_refresh_hint": 300,
  "keys": [
    {{"use": "jwt-svid", "kty": "EC", "kid": "jwt-1", "crv": "P-256", "x5c": ["{}"]}},
    {{"use": "x509-svid", "kty": "EC", "crv": "P-256", "x5c": ["{}"]}}
  ]
}}"#,
        b64(&not_a_ca),
        b64(ca.cert())
    );
    let bundle = TrustBundle::parse(td(OUR_TD), jwks.as_bytes(), "bundle.json").unwrap();
    assert_eq!(bundle.certs(), std::slice::from_ref(ca.cert()));
    let svid = ca.issue(&web_id());
    let info = verify(&verifier_for(bundle), &svid.chain).unwrap();
    assert_eq!(info.id, web_id());
}

#[test]
fn spiffe_jwks_bundle_file_with_leading_whitespace_loads() {
    let ca = TestCa::new(OUR_TD);
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("bundle.json");
    let jwks = format!(
        "\n  {{\"keys\":[{{\"use\":\"x509-svid\",\"kty\":\"EC\",\"x5c\":[\"{}\"]}},{{\"use\":\"jwt-svid\",\"kty\":\"EC\",\"kid\":\"k\",\"crv\":\"P-256\",\"x\":\"AA\",\"y\":\"AA\"}}]}}",
        b64(ca.cert())
    );
    std::fs::write(&path, jwks).unwrap();
    let bundle = TrustBundle::load(td(OUR_TD), &path).unwrap();
    verify(&verifier_for(bundle), &ca.issue(&web_id()).chain).unwrap();
}

#[test]
fn jwks_with_only_jwt_keys_is_empty() {
    let jwks = r#"{"keys":[{"use":"jwt-svid","kty":"EC","kid":"k","crv":"P-256","x":"AA","y":"AA"}]}"#;
    let err = TrustBundle::parse(td(OUR_TD), jwks.as_bytes(), "b").unwrap_err();
    assert!(matches!(err, BundleError::Empty { .. }), "{err:?}");
}

#[test]
fn jwks_x509_key_with_two_x5c_entries_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let c = b64(ca.cert());
    let jwks = format!(r#"{{"keys":[{{"use":"x509-svid","kty":"EC","x5c":["{c}","{c}"]}}]}}"#);
    let err = TrustBundle::parse(td(OUR_TD), jwks.as_bytes(), "b").unwrap_err();
    assert!(matches!(err, BundleError::Jwks { .. }), "{err:?}");
}

#[test]
fn bundle_cert_that_is_not_a_ca_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let leaf = ca.issue(&web_id()).chain[0].clone();
    let pem = format!(
        "{}{}",
        ca.ca.cert_pem(),
        ward_certs::pem::encode("CERTIFICATE", &leaf)
    );
    let err = TrustBundle::parse(td(OUR_TD), pem.as_bytes(), "bundle.pem").unwrap_err();
    match err {
        BundleError::NotSigner { index, source, .. } => {
            assert_eq!(index, 1);
            assert!(matches!(source, SvidError::SignerNotCa { .. }), "{source:?}");
        }
        other => panic!("expected NotSigner, got {other:?}"),
    }
    // The same through JWKS.
    let jwks = format!(
        r#"{{"keys":[{{"use":"x509-svid","kty":"EC","x5c":["{}"]}}]}}"#,
        b64(&leaf)
    );
    let err = TrustBundle::parse(td(OUR_TD), jwks.as_bytes(), "b").unwrap_err();
    assert!(
        matches!(
            err,
            BundleError::NotSigner {
                index: 0,
                source: SvidError::SignerNotCa { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn bundle_ca_without_key_cert_sign_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let no_cert_sign = ca.intermediate(|p| p.key_usages = vec![KeyUsagePurpose::CrlSign]);
    let err = TrustBundle::from_certs(td(OUR_TD), vec![no_cert_sign.cert], "b").unwrap_err();
    assert!(
        matches!(
            err,
            BundleError::NotSigner {
                source: SvidError::SignerNoCertSign { .. },
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn bundle_with_rsa_1024_root_is_refused() {
    let dir = TempDir::new().unwrap();
    let key = openssl_key(dir.path(), "root.pem", KeyKind::Rsa(1024));
    openssl(
        dir.path(),
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            key.to_str().unwrap(),
            "-subj",
            "/CN=weak root",
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            "root.crt",
        ],
    );
    let pem = std::fs::read(dir.path().join("root.crt")).unwrap();
    let err = TrustBundle::parse(td(OUR_TD), &pem, "root.crt").unwrap_err();
    assert!(
        matches!(
            err,
            BundleError::NotSigner {
                source: SvidError::WeakRsaKey { bits: 1024, .. },
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn empty_and_garbage_bundles_are_refused() {
    assert!(matches!(
        TrustBundle::from_certs(td(OUR_TD), vec![], "b"),
        Err(BundleError::Empty { .. })
    ));
    assert!(matches!(
        TrustBundle::parse(td(OUR_TD), b"", "b"),
        Err(BundleError::Pem(ward_certs::pem::PemError::NoCertificate { .. }))
    ));
    assert!(matches!(
        TrustBundle::parse(td(OUR_TD), b"{\"keys\": 3}", "b"),
        Err(BundleError::Jwks { .. })
    ));
    let not_der = ward_certs::pem::encode("CERTIFICATE", b"definitely not DER");
    assert!(matches!(
        TrustBundle::parse(td(OUR_TD), not_der.as_bytes(), "b"),
        Err(BundleError::NotSigner {
            source: SvidError::Malformed(_),
            ..
        })
    ));
}

#[test]
fn bundle_set_is_keyed_by_trust_domain_and_replaces() {
    let ours = TestCa::new(OUR_TD);
    let partner = TestCa::new(PARTNER_TD);
    let mut set = bundles(&[&ours, &partner]);
    assert_eq!(set.trust_domains(), vec![OUR_TD, PARTNER_TD]);
    assert_eq!(set.len(), 2);
    assert!(set.get("example").is_none());
    assert_eq!(
        set.get(OUR_TD).unwrap().certs(),
        std::slice::from_ref(ours.cert())
    );

    // Replacing example.org's bundle drops the old CA.
    let rotated = TestCa::new(OUR_TD);
    set.insert(rotated.ca.bundle().unwrap());
    assert_eq!(set.len(), 2);
    let v = SvidVerifier::new(Arc::new(set), &provider());
    verify(&v, &rotated.issue(&web_id()).chain).unwrap();
    let err = verify(&v, &ours.issue(&web_id()).chain).unwrap_err();
    assert!(matches!(err, VerifyError::UnknownIssuer(_)), "{err:?}");
}

#[test]
fn intermediate_in_bundle_is_an_anchor() {
    // A bundle may hold an intermediate: leaves it signed then validate without the chain.
    let root = TestCa::new(OUR_TD);
    let inter = root.intermediate(|_| {});
    let bundle = TrustBundle::from_certs(td(OUR_TD), vec![inter.cert.clone()], "b").unwrap();
    let (chain, _) = inter.sign(&svid_params(&web_id()).unwrap());
    verify(&verifier_for(bundle), &chain[..1]).unwrap();
}

#[test]
fn bundle_anchor_without_basic_constraints_is_refused() {
    let root = TestCa::new(OUR_TD);
    let inter = root.intermediate(|p| p.is_ca = IsCa::NoCa);
    let err = TrustBundle::from_certs(td(OUR_TD), vec![inter.cert], "b").unwrap_err();
    assert!(
        matches!(
            err,
            BundleError::NotSigner {
                source: SvidError::SignerNotCa { .. },
                ..
            }
        ),
        "{err:?}"
    );
}
