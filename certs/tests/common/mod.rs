//! Shared helpers for the ward-certs integration tests: test CAs, intermediates, verifiers and
//! the `openssl` CLI for the certificates rcgen cannot make (RSA-1024 keys, SHA-1 signatures).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use tempfile::TempDir;
use ward_certs::devca::{self, svid_params};
use ward_certs::svid::SvidInfo;
use ward_certs::{
    BundleSet, CertificateDer, DevCa, Identity, IssuedSvid, PrivateKeyDer, SpiffeId, SvidVerifier,
    TrustDomain, UnixTime, VerifyError, provider,
};

pub const OUR_TD: &str = "example.org";
pub const PARTNER_TD: &str = "partner.org";

pub fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

pub fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// The ID most tests issue: `spiffe://example.org/ns/default/sa/web`.
pub fn web_id() -> SpiffeId {
    id("spiffe://example.org/ns/default/sa/web")
}

/// A dev CA whose certificate and key are also on disk, so tests can sign with rcgen directly
/// (parameters `DevCa::sign` refuses, e.g. without a SPIFFE URI SAN) or with the `openssl` CLI.
pub struct TestCa {
    pub ca: DevCa,
    pub key: KeyPair,
    pub dir: TempDir,
}

impl TestCa {
    pub fn new(trust_domain: &str) -> TestCa {
        let ca = DevCa::generate(&td(trust_domain)).unwrap();
        let dir = TempDir::new().unwrap();
        ca.save(dir.path()).unwrap();
        let key_pem = std::fs::read_to_string(dir.path().join(devca::CA_KEY)).unwrap();
        let key = KeyPair::from_pem(&key_pem).unwrap();
        TestCa { ca, key, dir }
    }

    pub fn cert(&self) -> &CertificateDer<'static> {
        self.ca.cert()
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join(devca::CA_CERT)
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join(devca::CA_KEY)
    }

    /// Signs any parameters (no SPIFFE URI SAN needed) for a fresh P-256 key.
    pub fn sign_raw(&self, params: &CertificateParams) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_ca_cert_der(self.cert(), &self.key).unwrap();
        params.signed_by(&key, &issuer).unwrap().der().clone()
    }

    /// A valid SVID for `id` through the dev CA.
    pub fn issue(&self, id: &SpiffeId) -> IssuedSvid {
        self.ca.sign(&svid_params(id).unwrap()).unwrap()
    }

    /// Signs an SVID for `id` after `tweak` changed its parameters.
    pub fn issue_with(&self, id: &SpiffeId, tweak: impl FnOnce(&mut CertificateParams)) -> IssuedSvid {
        let mut params = svid_params(id).unwrap();
        tweak(&mut params);
        self.ca.sign(&params).unwrap()
    }

    /// An intermediate CA of this CA's trust domain, `tweak` applied to its parameters.
    pub fn intermediate(&self, tweak: impl FnOnce(&mut CertificateParams)) -> Signer {
        let mut params = ca_params(self.ca.trust_domain());
        tweak(&mut params);
        let issued = self.ca.sign(&params).unwrap();
        Signer {
            key: KeyPair::try_from(&issued.key).unwrap(),
            cert: issued.chain[0].clone(),
        }
    }
}

/// A self-signed root for `trust_domain` named `common_name` (the dev CA's name is fixed per
/// trust domain; this one is not).
pub fn raw_root(trust_domain: &str, common_name: &str) -> Signer {
    let mut params = ca_params(&td(trust_domain));
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap().der().clone();
    Signer { cert, key }
}

/// Parameters of a well-formed SVID signing certificate (CA, keyCertSign, trust-domain URI SAN).
pub fn ca_params(trust_domain: &TrustDomain) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("ward test intermediate {trust_domain}"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.subject_alt_names = vec![SanType::URI(trust_domain.id_string().try_into().unwrap())];
    params.use_authority_key_identifier_extension = true;
    params
}

/// A signing certificate (intermediate, or a root made outside the dev CA) with its key.
pub struct Signer {
    pub cert: CertificateDer<'static>,
    pub key: KeyPair,
}

impl Signer {
    /// Issues a leaf from `params`; returns the chain `[leaf, intermediate]` and the leaf key.
    pub fn sign(&self, params: &CertificateParams) -> (Vec<CertificateDer<'static>>, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_ca_cert_der(&self.cert, &self.key).unwrap();
        let leaf = params.signed_by(&key, &issuer).unwrap().der().clone();
        (vec![leaf, self.cert.clone()], key)
    }
}

/// A bundle set holding each CA as the bundle of its own trust domain.
pub fn bundles(cas: &[&TestCa]) -> BundleSet {
    let mut set = BundleSet::new();
    for ca in cas {
        set.insert(ca.ca.bundle().unwrap());
    }
    set
}

pub fn verifier(cas: &[&TestCa]) -> SvidVerifier {
    SvidVerifier::new(Arc::new(bundles(cas)), &provider())
}

/// Verifies `chain` (leaf first) as a client certificate, now.
pub fn verify(verifier: &SvidVerifier, chain: &[CertificateDer<'static>]) -> Result<SvidInfo, VerifyError> {
    verifier.verify(
        &chain[0],
        &chain[1..],
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
    )
}

/// Builds an identity from an issued SVID, now.
pub fn identity(svid: &IssuedSvid, bundles: BundleSet) -> Identity {
    Identity::new(svid.chain.clone(), svid.key_der(), bundles, UnixTime::now()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The openssl CLI. A missing `openssl` is a test failure, never a skip.

/// Runs `openssl args...` in `dir`; panics with the command and its stderr if it cannot run or fails.
pub fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap_or_else(|e| {
        panic!(
            "this test needs the `openssl` command-line tool to make its certificate, but `openssl {}` could not be run: {e}; install OpenSSL (e.g. `apt-get install openssl`)",
            args.join(" ")
        )
    });
    assert!(
        out.status.success(),
        "`openssl {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Key algorithms the openssl helpers can generate.
#[derive(Debug, Clone, Copy)]
pub enum KeyKind {
    /// `openssl genrsa <bits>`: PKCS#8 ("PRIVATE KEY").
    Rsa(u32),
    /// `openssl genrsa -traditional <bits>`: PKCS#1 ("RSA PRIVATE KEY").
    RsaTraditional(u32),
    /// P-256 via `openssl genpkey`: PKCS#8.
    EcP256,
}

/// Generates a private key with openssl into `dir/name`; returns its path.
pub fn openssl_key(dir: &Path, name: &str, kind: KeyKind) -> PathBuf {
    match kind {
        KeyKind::Rsa(bits) => openssl(dir, &["genrsa", "-out", name, &bits.to_string()]),
        KeyKind::RsaTraditional(bits) => {
            openssl(dir, &["genrsa", "-traditional", "-out", name, &bits.to_string()])
        }
        KeyKind::EcP256 => openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                name,
            ],
        ),
    };
    dir.join(name)
}

static SERIAL: AtomicU64 = AtomicU64::new(0x1000);

/// Signs a leaf for the key at `key` with `ca` through `openssl x509 -req`, with the extensions
/// of a valid X509-SVID for `id` and the given digest (`sha256`, `sha1`, ...). Returns its DER.
pub fn openssl_leaf(
    ca: &TestCa,
    dir: &Path,
    key: &Path,
    id: &SpiffeId,
    digest: &str,
) -> CertificateDer<'static> {
    let ext = dir.join("svid_ext.cnf");
    std::fs::write(
        &ext,
        format!(
            "[svid]\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth, clientAuth\nsubjectAltName = URI:{id}\n"
        ),
    )
    .unwrap();
    let key = key.to_str().unwrap();
    let csr = dir.join("leaf.csr");
    let csr = csr.to_str().unwrap();
    openssl(
        dir,
        &["req", "-new", "-key", key, "-subj", "/O=ward test", "-out", csr],
    );
    let serial = format!("0x{:x}", SERIAL.fetch_add(1, Ordering::Relaxed));
    let out = dir.join("leaf.der");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            ca.cert_path().to_str().unwrap(),
            "-CAkey",
            ca.key_path().to_str().unwrap(),
            "-set_serial",
            &serial,
            "-days",
            "1",
            &format!("-{digest}"),
            "-extfile",
            ext.to_str().unwrap(),
            "-extensions",
            "svid",
            "-outform",
            "DER",
            "-out",
            out.to_str().unwrap(),
        ],
    );
    CertificateDer::from(std::fs::read(out).unwrap())
}

/// Reads a PEM private key file through `ward_certs::pem::key`.
pub fn load_key(path: &Path) -> PrivateKeyDer<'static> {
    ward_certs::pem::key(&std::fs::read(path).unwrap(), &path.display().to_string()).unwrap()
}
