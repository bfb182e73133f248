//! Certificates: a dev CA per trust domain and the SVID files it issues.

use std::path::PathBuf;
use std::time::Duration;

use tempfile::TempDir;
use ward_certs::devca::svid_params;
use ward_certs::{DevCa, IssuedSvid, SpiffeId, TrustDomain};

/// An SVID written to disk: `svid.pem`, `svid_key.pem`, `bundle.pem`.
#[derive(Debug, Clone)]
pub struct SvidFiles {
    pub id: String,
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
    /// The leaf's serial as ward prints it (lowercase hex).
    pub serial: String,
    /// The leaf certificate, DER.
    pub der: Vec<u8>,
}

/// A dev CA for one trust domain, with a directory to write SVIDs into.
pub struct Pki {
    pub ca: DevCa,
    pub dir: TempDir,
}

impl Pki {
    pub fn new(trust_domain: &str) -> Pki {
        let td = TrustDomain::new(trust_domain).expect("trust domain");
        let ca = DevCa::generate(&td).expect("dev CA");
        let dir = tempfile::Builder::new()
            .prefix("ward-e2e-pki-")
            .tempdir()
            .expect("tempdir");
        ca.save(&dir.path().join("ca")).expect("save CA");
        Pki { ca, dir }
    }

    /// The CA directory (`ca.pem`, `ca_key.pem`).
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    /// This CA's certificate as a bundle file.
    pub fn bundle_path(&self) -> PathBuf {
        self.ca_dir().join("ca.pem")
    }

    /// A valid SVID for `id`, valid for an hour.
    pub fn issue(&self, name: &str, id: &str) -> SvidFiles {
        let id = SpiffeId::parse(id).expect("SPIFFE ID");
        let svid = self.ca.issue(&id, Duration::from_secs(3600)).expect("issue");
        self.write(name, &svid)
    }

    /// An SVID for `id` (any trust domain: the CA signs what it is given) valid between
    /// `not_before` and `not_after`, relative to now.
    pub fn sign(
        &self,
        name: &str,
        id: &str,
        not_before: time::Duration,
        not_after: time::Duration,
    ) -> SvidFiles {
        let id = SpiffeId::parse(id).expect("SPIFFE ID");
        let mut params = svid_params(&id).expect("svid params");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + not_before;
        params.not_after = now + not_after;
        let svid = self.ca.sign(&params).expect("sign");
        self.write(name, &svid)
    }

    /// An SVID for `id` that expires `secs` seconds from now (valid since a minute ago).
    pub fn brief(&self, name: &str, id: &str, secs: i64) -> SvidFiles {
        self.sign(
            name,
            id,
            time::Duration::minutes(-1),
            time::Duration::seconds(secs),
        )
    }

    fn write(&self, name: &str, svid: &IssuedSvid) -> SvidFiles {
        let dir = self.dir.path().join(name);
        self.ca.write_svid(svid, &dir).expect("write SVID");
        let serial = ward_certs::svid::check_leaf(&svid.chain[0])
            .map(|i| i.serial)
            .unwrap_or_default();
        SvidFiles {
            id: svid.id.to_string(),
            cert: dir.join("svid.pem"),
            key: dir.join("svid_key.pem"),
            bundle: dir.join("bundle.pem"),
            dir,
            serial,
            der: svid.chain[0].to_vec(),
        }
    }
}
