#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Every SPIFFE-ID / X509-SVID rule: one certificate that breaks just that rule (made here),
//! checked with `svid::check_leaf` and end to end with `SvidVerifier::verify`, and valid
//! certificates that pass.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType,
    date_time_ymd,
};
use tempfile::TempDir;
use ward_certs::devca::svid_params;
use ward_certs::svid::{self, SvidError};
use ward_certs::{CertificateDer, IdError, VerifyError};

/// Asserts that `leaf` breaks exactly `want`, both in `check_leaf` and in full verification
/// (with our CA, which signed it, trusted).
fn assert_leaf_refused(ca: &TestCa, leaf: &CertificateDer<'static>, want: SvidError) {
    assert_eq!(svid::check_leaf(leaf), Err(want.clone()));
    match verify(&verifier(&[ca]), std::slice::from_ref(leaf)) {
        Err(VerifyError::Svid(got)) => assert_eq!(got, want),
        other => panic!("expected VerifyError::Svid({want:?}), got {other:?}"),
    }
}

/// Asserts that `chain` passes both checks, as `expect`.
fn assert_passes(ca: &TestCa, chain: &[CertificateDer<'static>], expect: &ward_certs::SpiffeId) {
    let info = svid::check_leaf(&chain[0]).unwrap();
    assert_eq!(&info.id, expect);
    let verified = verify(&verifier(&[ca]), chain).unwrap();
    assert_eq!(verified, info);
}

/// Signs `svid_params(web_id())` with one change, through rcgen directly (for URI SANs the
/// dev CA would refuse to name).
fn raw_leaf(ca: &TestCa, tweak: impl FnOnce(&mut CertificateParams)) -> CertificateDer<'static> {
    let mut params = svid_params(&web_id()).unwrap();
    tweak(&mut params);
    ca.sign_raw(&params)
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().unwrap())
}

// --- the valid baseline --------------------------------------------------------------------

#[test]
fn valid_svid_passes() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue(&web_id());
    let info = svid::check_leaf(&svid.chain[0]).unwrap();
    assert_eq!(info.id, web_id());
    assert!(!info.serial.is_empty());
    assert!(info.not_before < info.not_after);
    assert_passes(&ca, &svid.chain, &web_id());
    // The same certificate also verifies for the server purpose.
    let v = verifier(&[&ca]);
    v.verify(
        &svid.chain[0],
        &[],
        ward_certs::UnixTime::now(),
        webpki::KeyUsage::server_auth(),
    )
    .unwrap();
}

#[test]
fn valid_svid_via_dev_ca_issue_passes() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca
        .ca
        .issue(&web_id(), std::time::Duration::from_secs(3600))
        .unwrap();
    assert_passes(&ca, &svid.chain, &web_id());
}

// --- URI SAN / SPIFFE ID rules --------------------------------------------------------------

#[test]
fn no_uri_san_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let leaf = raw_leaf(&ca, |p| {
        p.subject_alt_names = vec![SanType::DnsName("web.example.org".try_into().unwrap())]
    });
    assert_leaf_refused(&ca, &leaf, SvidError::NoUriSan);
}

#[test]
fn no_san_extension_at_all_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let leaf = raw_leaf(&ca, |p| p.subject_alt_names.clear());
    assert_leaf_refused(&ca, &leaf, SvidError::NoUriSan);
}

#[test]
fn two_uri_sans_are_refused() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue_with(&web_id(), |p| {
        p.subject_alt_names
            .push(uri("spiffe://example.org/ns/default/sa/db"))
    });
    assert_leaf_refused(&ca, &svid.chain[0], SvidError::MultipleUriSans(2));
}

#[test]
fn three_uri_sans_are_counted() {
    let ca = TestCa::new(OUR_TD);
    let leaf = raw_leaf(&ca, |p| {
        p.subject_alt_names.push(uri("spiffe://example.org/b"));
        p.subject_alt_names.push(uri("https://example.org/c"));
    });
    assert_leaf_refused(&ca, &leaf, SvidError::MultipleUriSans(3));
}

fn assert_bad_id(uri_str: &str, want: IdError) {
    let ca = TestCa::new(OUR_TD);
    let leaf = raw_leaf(&ca, |p| p.subject_alt_names = vec![uri(uri_str)]);
    assert_leaf_refused(
        &ca,
        &leaf,
        SvidError::BadSpiffeId {
            uri: uri_str.to_owned(),
            source: want,
        },
    );
}

#[test]
fn http_uri_san_is_not_a_spiffe_id() {
    assert_bad_id("http://example.org/ns/default/sa/web", IdError::WrongScheme);
}

#[test]
fn uppercase_scheme_is_not_a_spiffe_id() {
    assert_bad_id("SPIFFE://example.org/ns/default/sa/web", IdError::WrongScheme);
}

#[test]
fn bad_path_char_is_not_a_spiffe_id() {
    assert_bad_id(
        "spiffe://example.org/ns/default/sa/we*b",
        IdError::BadPathChar('*'),
    );
}

#[test]
fn bad_trust_domain_char_is_not_a_spiffe_id() {
    assert_bad_id("spiffe://Example.org/web", IdError::BadTrustDomainChar('E'));
    assert_bad_id("spiffe://example.org:8443/web", IdError::BadTrustDomainChar(':'));
}

#[test]
fn percent_encoding_is_not_a_spiffe_id() {
    assert_bad_id("spiffe://example.org/ns/de%66ault", IdError::BadPathChar('%'));
}

#[test]
fn query_is_not_a_spiffe_id() {
    assert_bad_id("spiffe://example.org/web?x=1", IdError::BadPathChar('?'));
}

#[test]
fn dot_segment_is_not_a_spiffe_id() {
    assert_bad_id("spiffe://example.org/ns/../web", IdError::DotSegment);
}

#[test]
fn trust_domain_only_id_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue_with(&web_id(), |p| {
        p.subject_alt_names = vec![uri("spiffe://example.org")]
    });
    assert_leaf_refused(
        &ca,
        &svid.chain[0],
        SvidError::EmptyPath("spiffe://example.org".into()),
    );
}

#[test]
fn dns_and_ip_sans_alongside_one_spiffe_uri_pass() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue_with(&web_id(), |p| {
        p.subject_alt_names
            .insert(0, SanType::DnsName("web.example.org".try_into().unwrap()));
        p.subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7))));
        p.subject_alt_names
            .push(SanType::Rfc822Name("web@example.org".try_into().unwrap()));
    });
    assert_passes(&ca, &svid.chain, &web_id());
}

// --- basicConstraints / keyUsage / extendedKeyUsage ------------------------------------------

#[test]
fn leaf_with_ca_true_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue_with(&web_id(), |p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained));
    assert_leaf_refused(&ca, &svid.chain[0], SvidError::LeafIsCa);
}

#[test]
fn leaf_without_basic_constraints_passes() {
    // cA=false may be expressed by leaving basicConstraints out.
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue_with(&web_id(), |p| p.is_ca = IsCa::NoCa);
    assert_passes(&ca, &svid.chain, &web_id());
}

#[test]
fn leaf_without_key_usage_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue_with(&web_id(), |p| p.key_usages.clear());
    assert_leaf_refused(&ca, &svid.chain[0], SvidError::NoKeyUsage);
}

#[test]
fn key_usage_without_digital_signature_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue_with(&web_id(), |p| {
        p.key_usages.retain(|u| *u != KeyUsagePurpose::DigitalSignature)
    });
    assert_leaf_refused(&ca, &svid.chain[0], SvidError::NoDigitalSignature);
}

#[test]
fn key_usage_with_key_cert_sign_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue_with(&web_id(), |p| p.key_usages.push(KeyUsagePurpose::KeyCertSign));
    assert_leaf_refused(&ca, &svid.chain[0], SvidError::LeafCertSign);
}

#[test]
fn key_usage_with_crl_sign_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue_with(&web_id(), |p| p.key_usages.push(KeyUsagePurpose::CrlSign));
    assert_leaf_refused(&ca, &svid.chain[0], SvidError::LeafCrlSign);
}

#[test]
fn key_usage_digital_signature_only_passes() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue_with(&web_id(), |p| {
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature]
    });
    assert_passes(&ca, &svid.chain, &web_id());
}

#[test]
fn eku_with_only_server_auth_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue_with(&web_id(), |p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]
    });
    assert_leaf_refused(&ca, &svid.chain[0], SvidError::EkuMissing("clientAuth"));
}

#[test]
fn eku_with_only_client_auth_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue_with(&web_id(), |p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth]
    });
    assert_leaf_refused(&ca, &svid.chain[0], SvidError::EkuMissing("serverAuth"));
}

#[test]
fn eku_absent_passes() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue_with(&web_id(), |p| p.extended_key_usages.clear());
    assert_passes(&ca, &svid.chain, &web_id());
    let v = verifier(&[&ca]);
    v.verify(
        &svid.chain[0],
        &[],
        ward_certs::UnixTime::now(),
        webpki::KeyUsage::server_auth(),
    )
    .unwrap();
}

// --- validity window and issuer --------------------------------------------------------------

#[test]
fn expired_svid_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue_with(&web_id(), |p| {
        p.not_before = date_time_ymd(2001, 1, 1);
        p.not_after = date_time_ymd(2002, 1, 1);
    });
    // The leaf's shape is fine; only the validity window is wrong.
    svid::check_leaf(&svid.chain[0]).unwrap();
    let err = verify(&verifier(&[&ca]), &svid.chain).unwrap_err();
    assert!(matches!(err, VerifyError::Expired), "{err:?}");
    assert_eq!(err.reason(), "expired");
}

#[test]
fn not_yet_valid_svid_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue_with(&web_id(), |p| {
        p.not_before = date_time_ymd(2200, 1, 1);
        p.not_after = date_time_ymd(2201, 1, 1);
    });
    svid::check_leaf(&svid.chain[0]).unwrap();
    let err = verify(&verifier(&[&ca]), &svid.chain).unwrap_err();
    assert!(matches!(err, VerifyError::NotYetValid), "{err:?}");
    assert_eq!(err.reason(), "not_yet_valid");
}

#[test]
fn unknown_ca_of_same_trust_domain_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let rogue = TestCa::new(OUR_TD);
    let svid = rogue.issue(&web_id());
    svid::check_leaf(&svid.chain[0]).unwrap();
    let err = verify(&verifier(&[&ca]), &svid.chain).unwrap_err();
    assert!(
        matches!(&err, VerifyError::UnknownIssuer(td) if td == OUR_TD),
        "{err:?}"
    );
    assert_eq!(err.reason(), "unknown_issuer");
}

#[test]
fn unknown_ca_with_another_name_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let rogue = raw_root(OUR_TD, "rogue CA");
    let (chain, _) = rogue.sign(&svid_params(&web_id()).unwrap());
    let err = verify(&verifier(&[&ca]), &chain[..1]).unwrap_err();
    assert!(
        matches!(&err, VerifyError::UnknownIssuer(td) if td == OUR_TD),
        "{err:?}"
    );
}

#[test]
fn leaf_with_tampered_signature_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let mut der = ca.issue(&web_id()).chain[0].to_vec();
    // The last byte belongs to the signature value; the TBS part and every extension stay intact.
    let last = der.len() - 1;
    der[last] ^= 0x01;
    let leaf = CertificateDer::from(der);
    svid::check_leaf(&leaf).unwrap();
    let err = verify(&verifier(&[&ca]), &[leaf]).unwrap_err();
    assert!(
        matches!(&err, VerifyError::UnknownIssuer(td) if td == OUR_TD),
        "{err:?}"
    );
}

#[test]
fn peer_of_trust_domain_without_bundle_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let other = TestCa::new("other.org");
    let svid = other.issue(&id("spiffe://other.org/billing"));
    let err = verify(&verifier(&[&ca]), &svid.chain).unwrap_err();
    assert!(
        matches!(&err, VerifyError::UnknownTrustDomain(td) if td == "other.org"),
        "{err:?}"
    );
    assert_eq!(err.reason(), "unknown_trust_domain");
}

#[test]
fn federated_ca_cannot_mint_ids_of_our_trust_domain() {
    let ours = TestCa::new(OUR_TD);
    let partner = TestCa::new(PARTNER_TD);
    // partner.org's CA (trusted, but only for partner.org) signs an ID in example.org.
    let forged = partner.issue(&web_id());
    svid::check_leaf(&forged.chain[0]).unwrap();
    let err = verify(&verifier(&[&ours, &partner]), &forged.chain).unwrap_err();
    assert!(
        matches!(&err, VerifyError::UnknownIssuer(td) if td == OUR_TD),
        "{err:?}"
    );
}

#[test]
fn partner_svid_signed_by_partner_ca_passes_with_partner_bundle() {
    let ours = TestCa::new(OUR_TD);
    let partner = TestCa::new(PARTNER_TD);
    let partner_id = id("spiffe://partner.org/ns/shop/sa/api");
    let svid = partner.issue(&partner_id);
    let info = verify(&verifier(&[&ours, &partner]), &svid.chain).unwrap();
    assert_eq!(info.id, partner_id);
    // Without partner.org's bundle the same SVID is refused.
    let err = verify(&verifier(&[&ours]), &svid.chain).unwrap_err();
    assert!(matches!(err, VerifyError::UnknownTrustDomain(_)), "{err:?}");
}

// --- intermediates -------------------------------------------------------------------------

#[test]
fn root_intermediate_leaf_chain_passes() {
    let ca = TestCa::new(OUR_TD);
    let inter = ca.intermediate(|_| {});
    svid::check_intermediate(&inter.cert).unwrap();
    let (chain, _) = inter.sign(&svid_params(&web_id()).unwrap());
    assert_passes(&ca, &chain, &web_id());
    // Without the intermediate the leaf does not chain to the root.
    let err = verify(&verifier(&[&ca]), &chain[..1]).unwrap_err();
    assert!(matches!(err, VerifyError::UnknownIssuer(_)), "{err:?}");
}

#[test]
fn intermediate_without_ca_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let inter = ca.intermediate(|p| p.is_ca = IsCa::ExplicitNoCa);
    assert!(matches!(
        svid::check_intermediate(&inter.cert),
        Err(SvidError::SignerNotCa { .. })
    ));
    let (chain, _) = inter.sign(&svid_params(&web_id()).unwrap());
    svid::check_leaf(&chain[0]).unwrap();
    // webpki refuses an end-entity certificate used as an issuer before ward's own check runs.
    let err = verify(&verifier(&[&ca]), &chain).unwrap_err();
    assert!(
        matches!(&err, VerifyError::Chain(detail) if detail == "EndEntityUsedAsCa"),
        "{err:?}"
    );
    assert_eq!(err.reason(), "bad_chain");
}

#[test]
fn intermediate_without_key_cert_sign_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let inter =
        ca.intermediate(|p| p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign]);
    assert!(matches!(
        svid::check_intermediate(&inter.cert),
        Err(SvidError::SignerNoCertSign { .. })
    ));
    let (chain, _) = inter.sign(&svid_params(&web_id()).unwrap());
    svid::check_leaf(&chain[0]).unwrap();
    let err = verify(&verifier(&[&ca]), &chain).unwrap_err();
    assert!(
        matches!(&err, VerifyError::Svid(SvidError::SignerNoCertSign { subject }) if subject.contains("intermediate")),
        "{err:?}"
    );
}

#[test]
fn intermediate_without_key_usage_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let inter = ca.intermediate(|p| p.key_usages.clear());
    let (chain, _) = inter.sign(&svid_params(&web_id()).unwrap());
    let err = verify(&verifier(&[&ca]), &chain).unwrap_err();
    assert!(
        matches!(err, VerifyError::Svid(SvidError::SignerNoCertSign { .. })),
        "{err:?}"
    );
}

// --- key strength and signature algorithm (made with the openssl CLI) -------------------------

#[test]
fn rsa_1024_leaf_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let dir = TempDir::new().unwrap();
    let key = openssl_key(dir.path(), "rsa1024.pem", KeyKind::Rsa(1024));
    let leaf = openssl_leaf(&ca, dir.path(), &key, &web_id(), "sha256");
    assert_leaf_refused(
        &ca,
        &leaf,
        SvidError::WeakRsaKey {
            subject: "O=ward test".into(),
            bits: 1024,
        },
    );
}

#[test]
fn sha1_signed_leaf_is_refused() {
    let ca = TestCa::new(OUR_TD);
    let dir = TempDir::new().unwrap();
    let key = openssl_key(dir.path(), "ec.pem", KeyKind::EcP256);
    let leaf = openssl_leaf(&ca, dir.path(), &key, &web_id(), "sha1");
    assert_leaf_refused(
        &ca,
        &leaf,
        SvidError::Sha1Signature {
            subject: "O=ward test".into(),
        },
    );
}

#[test]
fn valid_rsa_2048_leaf_passes() {
    let ca = TestCa::new(OUR_TD);
    let dir = TempDir::new().unwrap();
    let key = openssl_key(dir.path(), "rsa2048.pem", KeyKind::Rsa(2048));
    let leaf = openssl_leaf(&ca, dir.path(), &key, &web_id(), "sha256");
    assert_passes(&ca, &[leaf], &web_id());
}

#[test]
fn openssl_made_ec_sha256_leaf_passes() {
    // Control for the openssl path: the SHA-1 test differs from this one in the digest only.
    let ca = TestCa::new(OUR_TD);
    let dir = TempDir::new().unwrap();
    let key = openssl_key(dir.path(), "ec.pem", KeyKind::EcP256);
    let leaf = openssl_leaf(&ca, dir.path(), &key, &web_id(), "sha256");
    assert_passes(&ca, &[leaf], &web_id());
}

// --- malformed input ------------------------------------------------------------------------

#[test]
fn trailing_bytes_after_certificate_are_refused() {
    let ca = TestCa::new(OUR_TD);
    let mut der = ca.issue(&web_id()).chain[0].to_vec();
    der.push(0);
    assert!(matches!(svid::check_leaf(&der), Err(SvidError::Malformed(_))));
}

#[test]
fn check_leaf_reads_the_id_of_a_valid_leaf() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue(&web_id());
    assert_eq!(svid::check_leaf(&svid.chain[0]).unwrap().id, web_id());
    assert!(svid::check_leaf(b"not a certificate").is_err());
}
