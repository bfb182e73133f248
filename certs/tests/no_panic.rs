#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property tests: the parsers of untrusted input (`check_leaf`, `TrustBundle::parse`,
//! `pem::certs`, `pem::key`, full verification) return errors, never panic, on arbitrary bytes
//! and on valid certificates with random bytes flipped.

mod common;

use std::sync::{Arc, OnceLock};

use common::*;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use ward_certs::devca::svid_params;
use ward_certs::svid;
use ward_certs::{CertificateDer, SvidVerifier, TrustBundle, UnixTime, pem, provider};

/// A CA, an intermediate and a leaf it signed, made once for all cases.
struct Fixture {
    ca: CertificateDer<'static>,
    inter: CertificateDer<'static>,
    leaf: CertificateDer<'static>,
    verifier: SvidVerifier,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let ca = TestCa::new(OUR_TD);
        let inter = ca.intermediate(|_| {});
        let (chain, _) = inter.sign(&svid_params(&web_id()).unwrap());
        Fixture {
            ca: ca.cert().clone(),
            inter: inter.cert.clone(),
            leaf: chain[0].clone(),
            verifier: SvidVerifier::new(Arc::new(bundles(&[&ca])), &provider()),
        }
    })
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        // Fixed so runs are reproducible.
        rng_seed: RngSeed::Fixed(0x7761_7264),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Flips the bytes at `flips` (index modulo length, xor with a non-zero mask).
fn mutate(der: &[u8], flips: &[(usize, u8)]) -> Vec<u8> {
    let mut out = der.to_vec();
    for &(i, mask) in flips {
        let i = i % out.len();
        out[i] ^= mask.max(1);
    }
    out
}

fn flips() -> impl Strategy<Value = Vec<(usize, u8)>> {
    proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)
}

fn all_parsers(bytes: &[u8]) {
    let _ = svid::check_leaf(bytes);
    let _ = svid::check_signing_cert(bytes);
    let _ = svid::check_intermediate(bytes);
    let _ = TrustBundle::parse(td(OUR_TD), bytes, "fuzz");
    let _ = pem::certs(bytes, "fuzz");
    let _ = pem::key(bytes, "fuzz");
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        all_parsers(&bytes);
        let leaf = CertificateDer::from(bytes);
        let _ = verify(&fixture().verifier, &[leaf]);
    }

    #[test]
    fn der_shaped_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        // A SEQUENCE header with a matching length, so parsers get past the first byte.
        let mut bytes = vec![0x30, 0x82];
        bytes.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(&body);
        all_parsers(&bytes);
    }

    #[test]
    fn mutated_leaf_never_panics(flips in flips()) {
        let f = fixture();
        let der = mutate(&f.leaf, &flips);
        all_parsers(&der);
        let chain = [CertificateDer::from(der), f.inter.clone()];
        let _ = verify(&f.verifier, &chain);
    }

    #[test]
    fn mutated_intermediate_never_panics(flips in flips()) {
        let f = fixture();
        let inter = CertificateDer::from(mutate(&f.inter, &flips));
        let _ = svid::check_intermediate(&inter);
        let _ = f.verifier.verify(&f.leaf, &[inter], UnixTime::now(), webpki::KeyUsage::client_auth());
    }

    #[test]
    fn mutated_ca_never_panics_as_a_bundle(flips in flips()) {
        let f = fixture();
        let der = mutate(&f.ca, &flips);
        let _ = TrustBundle::from_certs(td(OUR_TD), vec![CertificateDer::from(der.clone())], "fuzz");
        let _ = TrustBundle::parse(td(OUR_TD), pem::encode("CERTIFICATE", &der).as_bytes(), "fuzz");
    }

    #[test]
    fn mutated_pem_text_never_panics(flips in flips()) {
        let f = fixture();
        let text = format!("{}{}", pem::encode("CERTIFICATE", &f.leaf), pem::encode("PRIVATE KEY", &f.inter));
        all_parsers(&mutate(text.as_bytes(), &flips));
    }

    #[test]
    fn arbitrary_jwks_never_panics(
        use_ in prop_oneof![Just("x509-svid".to_owned()), Just("jwt-svid".to_owned()), ".{0,12}"],
        x5c in proptest::collection::vec("[A-Za-z0-9+/=!]{0,40}", 0..3),
    ) {
        let entries: Vec<String> = x5c.iter().map(|s| format!("{s:?}")).collect();
        let json = format!(r#"{{"keys":[{{"use":{use_:?},"kty":"EC","x5c":[{}]}}]}}"#, entries.join(","));
        let _ = TrustBundle::parse(td(OUR_TD), json.as_bytes(), "fuzz");
    }
}

#[test]
fn fixture_is_valid() {
    // The mutation tests start from certificates that do pass.
    let f = fixture();
    svid::check_leaf(&f.leaf).unwrap();
    svid::check_intermediate(&f.inter).unwrap();
    verify(&f.verifier, &[f.leaf.clone(), f.inter.clone()]).unwrap();
}
