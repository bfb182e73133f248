#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The files identity source against the layouts real deployments write: a Kubernetes
//! projected volume (`..data` symlink swap), spiffe-helper's one-by-one writes, a single
//! podCertificate credential bundle, cert-manager csi-driver-spiffe names; bad updates refused
//! while the last good identity keeps serving; debounce, the periodic re-check, forced re-reads.
//! Every timing is shortened so the suite runs in about a second.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use tempfile::TempDir;
use ward_certs::source::Update;
use ward_certs::{
    CredentialStore, DevSource, Federation, FilesLayout, FilesSource, FilesTiming, IdentityUpdates,
    IssuedSvid, SpiffeId, TlsOptions, UpdateResult,
};

/// Bounds every wait for an update that must come.
const WAIT: Duration = Duration::from_secs(5);

fn fast() -> FilesTiming {
    FilesTiming {
        debounce: Duration::from_millis(30),
        recheck: Duration::from_secs(3600),
        settle: Duration::from_millis(20),
        settle_tries: 3,
        watch: true,
    }
}

fn source(layout: FilesLayout, timing: FilesTiming) -> IdentityUpdates {
    FilesSource {
        layout,
        federation: Federation::default(),
        timing,
    }
    .spawn()
}

async fn next(updates: &mut IdentityUpdates) -> Update {
    tokio::time::timeout(WAIT, updates.recv())
        .await
        .expect("an identity update within 5s")
        .expect("the source is still running")
}

/// Asserts that no update comes within `d`.
async fn quiet(updates: &mut IdentityUpdates, d: Duration) {
    if let Ok(got) = tokio::time::timeout(d, updates.recv()).await {
        panic!(
            "expected no update, got {:?}",
            got.map(|u| u.map(|i| i.info().serial.clone()))
        );
    }
}

fn serial(svid: &IssuedSvid) -> String {
    ward_certs::svid::check_leaf(&svid.chain[0]).unwrap().serial
}

fn serial_of(update: &Update) -> String {
    match update {
        Ok(id) => id.info().serial.clone(),
        Err(e) => panic!("expected a valid identity, got: {e}"),
    }
}

fn write(path: &Path, bytes: &[u8]) {
    // Atomically, as careful writers do: a temp file renamed over the old one.
    static N: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!("tmp{}", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The three spiffe-helper files of `svid` (and `ca`'s bundle) in `dir`, under `names`.
fn write_svid(dir: &Path, names: [&str; 3], ca: &TestCa, svid: &IssuedSvid) {
    write(&dir.join(names[0]), svid.cert_pem().as_bytes());
    write(&dir.join(names[1]), svid.key_pem().as_bytes());
    write(&dir.join(names[2]), ca.ca.cert_pem().as_bytes());
}

const HELPER: [&str; 3] = ["svid.pem", "svid_key.pem", "bundle.pem"];
const CSI: [&str; 3] = ["tls.crt", "tls.key", "ca.crt"];

/// A Kubernetes projected volume as kubelet's AtomicWriter lays it out: the payload in a
/// timestamped directory, `..data` a symlink to it, each file a symlink through `..data`.
/// An update writes a new timestamped directory and renames a new `..data` over the old one.
struct ProjectedVolume {
    dir: PathBuf,
    generation: u32,
}

impl ProjectedVolume {
    fn new(dir: &Path, files: &[(&str, Vec<u8>)]) -> Self {
        let mut v = ProjectedVolume {
            dir: dir.to_owned(),
            generation: 0,
        };
        v.swap(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
        v
    }

    fn swap(&mut self, files: &[(&str, Vec<u8>)]) {
        self.generation += 1;
        let old = self.payload(self.generation - 1);
        let new = self.payload(self.generation);
        std::fs::create_dir(self.dir.join(&new)).unwrap();
        for (name, bytes) in files {
            std::fs::write(self.dir.join(&new).join(name), bytes).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&new, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        let _ = std::fs::remove_dir_all(self.dir.join(old));
    }

    fn payload(&self, generation: u32) -> String {
        format!("..2025_01_01_00_00_{generation:02}.{generation}")
    }
}

fn helper_files(ca: &TestCa, svid: &IssuedSvid) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("svid.pem", svid.cert_pem().into_bytes()),
        ("svid_key.pem", svid.key_pem().into_bytes()),
        ("bundle.pem", ca.ca.cert_pem().into_bytes()),
    ]
}

#[tokio::test]
async fn kubernetes_data_symlink_swap_rotates_five_times() {
    let ca = TestCa::new(OUR_TD);
    let tmp = TempDir::new().unwrap();
    let first = ca.issue(&web_id());
    let mut volume = ProjectedVolume::new(tmp.path(), &helper_files(&ca, &first));
    let mut updates = source(FilesLayout::Dir(tmp.path().to_owned()), fast());
    let store = CredentialStore::new(TlsOptions::default());
    let up = next(&mut updates).await;
    assert_eq!(serial_of(&up), serial(&first));
    assert_eq!(store.apply(up), UpdateResult::Applied);
    for _ in 0..5 {
        let svid = ca.issue(&web_id());
        volume.swap(&helper_files(&ca, &svid));
        let up = next(&mut updates).await;
        assert_eq!(serial_of(&up), serial(&svid), "the swapped-in SVID is read");
        assert_eq!(store.apply(up), UpdateResult::Applied);
        assert_eq!(store.current().unwrap().identity.info().serial, serial(&svid));
    }
    assert_eq!(store.applied_total(), 6);
    assert!(
        store.refused_counts().iter().all(|(_, n)| *n == 0),
        "{:?}",
        store.refused_counts()
    );
}

#[tokio::test]
async fn csi_driver_spiffe_names_are_detected_and_followed() {
    let ca = TestCa::new(OUR_TD);
    let tmp = TempDir::new().unwrap();
    let first = ca.issue(&web_id());
    write_svid(tmp.path(), CSI, &ca, &first);
    let mut updates = source(FilesLayout::Dir(tmp.path().to_owned()), fast());
    assert_eq!(serial_of(&next(&mut updates).await), serial(&first));
    let second = ca.issue(&web_id());
    write_svid(tmp.path(), CSI, &ca, &second);
    assert_eq!(serial_of(&next(&mut updates).await), serial(&second));
}

#[tokio::test]
async fn podcertificate_credential_bundle_holds_key_and_chain() {
    let ca = TestCa::new(OUR_TD);
    let inter = ca.intermediate(|_| {});
    let tmp = TempDir::new().unwrap();
    let credential = |chain: &[ward_certs::CertificateDer<'static>], key: &rcgen::KeyPair| {
        // Kubernetes writes the key first, then the chain, leaf first.
        format!("{}{}", key.serialize_pem(), ward_certs::pem::encode_certs(chain))
    };
    let (chain, key) = inter.sign(&ward_certs::devca::svid_params(&web_id()).unwrap());
    write(
        &tmp.path().join("credentialbundle.pem"),
        credential(&chain, &key).as_bytes(),
    );
    write(&tmp.path().join("ca.crt"), ca.ca.cert_pem().as_bytes());

    // Auto-detected in a directory (bundle from ca.crt), then as an explicit layout.
    let mut updates = source(FilesLayout::Dir(tmp.path().to_owned()), fast());
    let up = next(&mut updates).await;
    let id = up.unwrap();
    assert_eq!(id.chain().len(), 2, "leaf and intermediate");
    assert_eq!(id.id(), &web_id());

    let explicit = FilesSource {
        layout: FilesLayout::CredentialBundle {
            credential: tmp.path().join("credentialbundle.pem"),
            bundle: tmp.path().join("ca.crt"),
        },
        federation: Federation::default(),
        timing: fast(),
    };
    let mut explicit_updates = explicit.spawn();
    next(&mut explicit_updates).await.unwrap();

    // A rotation of the single file is followed.
    let (chain2, key2) = inter.sign(&ward_certs::devca::svid_params(&web_id()).unwrap());
    write(
        &tmp.path().join("credentialbundle.pem"),
        credential(&chain2, &key2).as_bytes(),
    );
    let want = ward_certs::svid::check_leaf(&chain2[0]).unwrap().serial;
    assert_eq!(serial_of(&next(&mut updates).await), want);
    assert_eq!(serial_of(&next(&mut explicit_updates).await), want);
}

/// spiffe-helper replaces cert, key and bundle one at a time: between the cert and the key the
/// pair does not match. That is a writer half-way through, not a bad update.
#[tokio::test]
async fn one_by_one_writes_wait_for_the_matching_key() {
    let ca = TestCa::new(OUR_TD);
    let tmp = TempDir::new().unwrap();
    let first = ca.issue(&web_id());
    write_svid(tmp.path(), HELPER, &ca, &first);
    let timing = FilesTiming {
        settle: Duration::from_millis(50),
        settle_tries: 40, // up to 2s for the writer to finish
        ..fast()
    };
    let mut updates = source(FilesLayout::Dir(tmp.path().to_owned()), timing);
    let store = CredentialStore::new(TlsOptions::default());
    store.apply(next(&mut updates).await);

    let second = ca.issue(&web_id());
    write(&tmp.path().join("svid.pem"), second.cert_pem().as_bytes());
    // Several re-reads see the new cert with the old key ...
    tokio::time::sleep(Duration::from_millis(300)).await;
    write(&tmp.path().join("svid_key.pem"), second.key_pem().as_bytes());
    write(&tmp.path().join("bundle.pem"), ca.ca.cert_pem().as_bytes());
    // ... and the first update after the burst is the complete, matching pair.
    let up = next(&mut updates).await;
    assert_eq!(serial_of(&up), serial(&second));
    assert_eq!(store.apply(up), UpdateResult::Applied);
    quiet(&mut updates, Duration::from_millis(200)).await;
    assert_eq!(store.refused_total("key_mismatch"), 0);
}

/// Garbage, a key that never matches, an expired SVID and an SVID of another trust domain are
/// each refused with their reason while the last good SVID keeps serving; a good one after
/// them is taken.
#[tokio::test]
async fn bad_updates_are_refused_and_the_last_good_identity_serves_on() {
    let ca = TestCa::new(OUR_TD);
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    let good = ca.issue(&web_id());
    write_svid(dir, HELPER, &ca, &good);
    let mut updates = source(FilesLayout::Dir(dir.to_owned()), fast());
    let store = CredentialStore::new(TlsOptions::default());
    assert_eq!(store.apply(next(&mut updates).await), UpdateResult::Applied);
    let serving = || store.current().unwrap().identity.info().serial.clone();

    // Garbage where the cert was.
    write(&dir.join("svid.pem"), b"\x00\xffnot a certificate at all\n");
    let up = next(&mut updates).await;
    assert_eq!(
        up.as_ref().err().map(|e| e.reason()),
        Some("unreadable"),
        "{up:?}"
    );
    assert_eq!(store.apply(up), UpdateResult::Refused("unreadable"));
    assert_eq!(serving(), serial(&good));

    // A cert with a key that is not its own, for good.
    let other = ca.issue(&web_id());
    let stranger = ca.issue(&web_id());
    write(&dir.join("svid_key.pem"), stranger.key_pem().as_bytes());
    write(&dir.join("svid.pem"), other.cert_pem().as_bytes());
    let up = next(&mut updates).await;
    assert_eq!(store.apply(up), UpdateResult::Refused("key_mismatch"));
    assert_eq!(serving(), serial(&good));

    // An expired SVID.
    let expired = ca.issue_with(&web_id(), |p| {
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(2);
        p.not_after = now - time::Duration::hours(1);
    });
    write_svid(dir, HELPER, &ca, &expired);
    let up = next(&mut updates).await;
    assert_eq!(store.apply(up), UpdateResult::Refused("expired"));
    assert_eq!(serving(), serial(&good));

    // A valid SVID of another trust domain (signed by the same CA, so it chains to the bundle
    // that came with it): ward's trust domain cannot change under it.
    let foreign = ca.issue(&SpiffeId::parse("spiffe://partner.org/ns/default/sa/web").unwrap());
    write_svid(dir, HELPER, &ca, &foreign);
    let up = next(&mut updates).await;
    assert_eq!(store.apply(up), UpdateResult::Refused("wrong_trust_domain"));
    assert_eq!(serving(), serial(&good));

    // A good update after all that is taken.
    let fresh = ca.issue(&web_id());
    write_svid(dir, HELPER, &ca, &fresh);
    let up = next(&mut updates).await;
    assert_eq!(store.apply(up), UpdateResult::Applied);
    assert_eq!(serving(), serial(&fresh));

    assert_eq!(store.applied_total(), 2);
    for (reason, n) in [
        ("unreadable", 1),
        ("key_mismatch", 1),
        ("expired", 1),
        ("wrong_trust_domain", 1),
    ] {
        assert_eq!(
            store.refused_total(reason),
            n,
            "{reason}: {:?}",
            store.refused_counts()
        );
    }
    assert_eq!(
        store.not_after(),
        Some(ward_certs::svid::check_leaf(&fresh.chain[0]).unwrap().not_after)
    );
}

#[tokio::test]
async fn a_burst_of_writes_is_read_once() {
    let ca = TestCa::new(OUR_TD);
    let tmp = TempDir::new().unwrap();
    let first = ca.issue(&web_id());
    write_svid(tmp.path(), HELPER, &ca, &first);
    let timing = FilesTiming {
        debounce: Duration::from_millis(300),
        ..fast()
    };
    let mut updates = source(FilesLayout::Dir(tmp.path().to_owned()), timing);
    next(&mut updates).await.unwrap();
    let mut last = None;
    for _ in 0..10 {
        let svid = ca.issue(&web_id());
        write_svid(tmp.path(), HELPER, &ca, &svid);
        last = Some(svid);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let up = next(&mut updates).await;
    assert_eq!(
        serial_of(&up),
        serial(last.as_ref().unwrap()),
        "one read, of the final state"
    );
    quiet(&mut updates, Duration::from_millis(400)).await;
}

/// With inotify off (as when a watch cannot be set up, or events are lost), the periodic
/// re-check still finds a change; unchanged files produce no update.
#[tokio::test]
async fn the_periodic_recheck_finds_changes_without_events() {
    let ca = TestCa::new(OUR_TD);
    let tmp = TempDir::new().unwrap();
    let first = ca.issue(&web_id());
    write_svid(tmp.path(), HELPER, &ca, &first);
    let timing = FilesTiming {
        recheck: Duration::from_millis(40),
        watch: false,
        ..fast()
    };
    let mut updates = source(FilesLayout::Dir(tmp.path().to_owned()), timing);
    next(&mut updates).await.unwrap();
    quiet(&mut updates, Duration::from_millis(200)).await; // five re-checks, nothing new
    let second = ca.issue(&web_id());
    write_svid(tmp.path(), HELPER, &ca, &second);
    assert_eq!(serial_of(&next(&mut updates).await), serial(&second));
}

/// SIGHUP's path: a forced re-read, taken at once, even when nothing signalled a change.
#[tokio::test]
async fn reload_forces_a_re_read() {
    let ca = TestCa::new(OUR_TD);
    let tmp = TempDir::new().unwrap();
    let first = ca.issue(&web_id());
    write_svid(tmp.path(), HELPER, &ca, &first);
    let timing = FilesTiming {
        watch: false,
        ..fast()
    };
    let mut updates = source(FilesLayout::Dir(tmp.path().to_owned()), timing);
    next(&mut updates).await.unwrap();
    let second = ca.issue(&web_id());
    write_svid(tmp.path(), HELPER, &ca, &second);
    quiet(&mut updates, Duration::from_millis(150)).await; // no watch, re-check in an hour
    updates.reload().trigger();
    assert_eq!(serial_of(&next(&mut updates).await), serial(&second));
    // Forced: the same files are handed over again.
    updates.reload().trigger();
    assert_eq!(serial_of(&next(&mut updates).await), serial(&second));
}

/// Files that are not there yet (the writer has not run): the first update says so, and the
/// identity is taken as soon as the files appear.
#[tokio::test]
async fn files_that_appear_later_are_taken() {
    let ca = TestCa::new(OUR_TD);
    let tmp = TempDir::new().unwrap();
    let mut updates = source(FilesLayout::Dir(tmp.path().to_owned()), fast());
    let err = next(&mut updates).await.unwrap_err();
    assert_eq!(err.reason(), "unreadable");
    assert!(err.to_string().contains("svid.pem"), "{err}");
    let svid = ca.issue(&web_id());
    write_svid(tmp.path(), HELPER, &ca, &svid);
    assert_eq!(serial_of(&next(&mut updates).await), serial(&svid));
}

/// Federated bundle files are watched and fingerprinted too.
#[tokio::test]
async fn a_changed_federated_bundle_is_taken() {
    let ca = TestCa::new(OUR_TD);
    let partner = TestCa::new(PARTNER_TD);
    let partner2 = TestCa::new(PARTNER_TD);
    let tmp = TempDir::new().unwrap();
    let svid = ca.issue(&web_id());
    write_svid(tmp.path(), HELPER, &ca, &svid);
    let fed = tmp.path().join("partner.pem");
    write(&fed, partner.ca.cert_pem().as_bytes());
    let mut updates = FilesSource {
        layout: FilesLayout::Dir(tmp.path().to_owned()),
        federation: Federation(vec![(td(PARTNER_TD), fed.clone())]),
        timing: fast(),
    }
    .spawn();
    let id = next(&mut updates).await.unwrap();
    let anchor = |id: &ward_certs::Identity| id.bundles().get(PARTNER_TD).unwrap().certs()[0].clone();
    assert_eq!(&anchor(&id), partner.cert());
    write(&fed, partner2.ca.cert_pem().as_bytes());
    let id = next(&mut updates).await.unwrap();
    assert_eq!(&anchor(&id), partner2.cert());
}

/// The dev CA renews at half-life: the SVID rolls over by itself before it expires.
#[tokio::test]
async fn dev_source_rolls_over_before_expiry() {
    let ca = ward_certs::DevCa::generate(&td(OUR_TD)).unwrap();
    let mut updates = DevSource {
        ca: std::sync::Arc::new(ca),
        id: web_id(),
        ttl: Duration::from_secs(2),
        federation: Federation::default(),
    }
    .spawn();
    let store = CredentialStore::new(TlsOptions::default());
    let first = next(&mut updates).await.unwrap();
    let first_info = first.info().clone();
    store.apply(Ok(first));
    let second = next(&mut updates).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert_ne!(second.info().serial, first_info.serial);
    assert!(
        now < first_info.not_after,
        "renewed before the first SVID expired"
    );
    assert!(second.info().not_after >= first_info.not_after);
    assert_eq!(store.apply(Ok(second)), UpdateResult::Applied);
    assert_eq!(store.applied_total(), 2);
}
