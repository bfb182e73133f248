//! SVID, key and bundle from files, watched and re-read when they change.
//!
//! The directory is watched, never the file: writers replace files by renaming over them, and
//! Kubernetes swaps a `..data` symlink, so a watch on the old file would go silent. Events are
//! debounced; a periodic re-check catches what inotify misses (a watch that failed, a directory
//! that was replaced, network filesystems). Writers such as spiffe-helper replace cert, key
//! and bundle one at a time, so a read that fails (a key that does not match the cert yet, a
//! half-written PEM) is retried for a while before the failure is reported.

use std::collections::HashSet;
use std::ffi::OsString;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::UnixTime;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Federation, IdentityUpdates, Reload, Update, check_not_own, now};
use crate::bundle::{BundleSet, TrustBundle};
use crate::devca::{BUNDLE, SVID_CERT, SVID_KEY};
use crate::identity::{Identity, IdentityError};
use crate::pem::{self, PemError};
use crate::svid;

/// The single file of a Kubernetes podCertificate projection: the private key and the chain.
pub const CREDENTIAL_BUNDLE: &str = "credentialbundle.pem";
/// cert-manager csi-driver-spiffe file names.
pub const CSI_CERT: &str = "tls.crt";
pub const CSI_KEY: &str = "tls.key";
pub const CSI_BUNDLE: &str = "ca.crt";

/// Where the files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilesLayout {
    /// Chain (leaf first), key and our trust domain's bundle, each in its own file.
    Separate {
        cert: PathBuf,
        key: PathBuf,
        bundle: PathBuf,
    },
    /// The key and the chain in one PEM file (Kubernetes podCertificate projection), and the
    /// bundle in another.
    CredentialBundle { credential: PathBuf, bundle: PathBuf },
    /// Whichever known layout is found in this directory, looked up at every read:
    /// `svid.pem`, `svid_key.pem`, `bundle.pem` (spiffe-helper); `tls.crt`, `tls.key`,
    /// `ca.crt` (cert-manager csi-driver-spiffe); `credentialbundle.pem` with `bundle.pem` or
    /// `ca.crt` (Kubernetes podCertificate).
    Dir(PathBuf),
}

impl FilesLayout {
    /// The concrete layout found now (`Dir` is looked up; the others are returned as they are).
    pub fn detect(&self) -> Result<FilesLayout, IdentityError> {
        let FilesLayout::Dir(dir) = self else {
            return Ok(self.clone());
        };
        let has = |name: &str| dir.join(name).exists();
        if has(SVID_CERT) {
            return Ok(FilesLayout::Separate {
                cert: dir.join(SVID_CERT),
                key: dir.join(SVID_KEY),
                bundle: dir.join(BUNDLE),
            });
        }
        if has(CSI_CERT) {
            return Ok(FilesLayout::Separate {
                cert: dir.join(CSI_CERT),
                key: dir.join(CSI_KEY),
                bundle: dir.join(CSI_BUNDLE),
            });
        }
        if has(CREDENTIAL_BUNDLE) {
            let bundle = if !has(BUNDLE) && has(CSI_BUNDLE) {
                dir.join(CSI_BUNDLE)
            } else {
                dir.join(BUNDLE)
            };
            return Ok(FilesLayout::CredentialBundle {
                credential: dir.join(CREDENTIAL_BUNDLE),
                bundle,
            });
        }
        Err(IdentityError::Pem(PemError::Read {
            path: dir.display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "no identity files there: expected {SVID_CERT}, {SVID_KEY} and {BUNDLE} (spiffe-helper), \
                     {CSI_CERT}, {CSI_KEY} and {CSI_BUNDLE} (cert-manager csi-driver-spiffe), or \
                     {CREDENTIAL_BUNDLE} with {BUNDLE} or {CSI_BUNDLE} (Kubernetes podCertificate)"
                ),
            ),
        }))
    }

    /// Every file this layout may read.
    fn files(&self) -> Vec<PathBuf> {
        match self {
            FilesLayout::Separate { cert, key, bundle } => vec![cert.clone(), key.clone(), bundle.clone()],
            FilesLayout::CredentialBundle { credential, bundle } => vec![credential.clone(), bundle.clone()],
            FilesLayout::Dir(dir) => [
                SVID_CERT,
                SVID_KEY,
                BUNDLE,
                CSI_CERT,
                CSI_KEY,
                CSI_BUNDLE,
                CREDENTIAL_BUNDLE,
            ]
            .iter()
            .map(|n| dir.join(n))
            .collect(),
        }
    }
}

/// How the files are watched. The defaults suit production; tests shorten them.
#[derive(Debug, Clone, Copy)]
pub struct FilesTiming {
    /// Quiet time after the last change event before the files are read.
    pub debounce: Duration,
    /// Re-read this often even without events (changes are only applied when the bytes differ).
    pub recheck: Duration,
    /// After a failed read, wait this long and read again ...
    pub settle: Duration,
    /// ... this many times before the failure is reported.
    pub settle_tries: u32,
    /// Watch the directories with inotify. Off, only the periodic re-check sees changes.
    pub watch: bool,
}

impl Default for FilesTiming {
    fn default() -> Self {
        FilesTiming {
            debounce: Duration::from_millis(200),
            recheck: Duration::from_secs(15),
            settle: Duration::from_millis(250),
            settle_tries: 8,
            watch: true,
        }
    }
}

/// SVID, key and bundle from PEM files (the bundle may be a SPIFFE JWKS bundle), watched.
#[derive(Debug, Clone)]
pub struct FilesSource {
    pub layout: FilesLayout,
    pub federation: Federation,
    pub timing: FilesTiming,
}

/// The bytes of one read, before validation.
struct Read {
    chain: (Vec<u8>, String),
    key: (Vec<u8>, String),
    bundle: (Vec<u8>, String),
    federation: Vec<Vec<u8>>,
}

fn read(path: &Path) -> Result<(Vec<u8>, String), IdentityError> {
    Ok((pem::read_file(path)?, path.display().to_string()))
}

impl FilesSource {
    /// Cert, key and bundle in three files, with the default timing.
    pub fn separate(cert: PathBuf, key: PathBuf, bundle: PathBuf, federation: Federation) -> Self {
        FilesSource {
            layout: FilesLayout::Separate { cert, key, bundle },
            federation,
            timing: FilesTiming::default(),
        }
    }

    /// Reads and validates the files once, at `now`.
    pub fn load(&self, now: UnixTime) -> Result<Identity, IdentityError> {
        self.read_bytes().and_then(|r| self.validate(r, now))
    }

    fn read_bytes(&self) -> Result<Read, IdentityError> {
        let federation = self
            .federation
            .paths()
            .map(|p| pem::read_file(p).map_err(IdentityError::from))
            .collect::<Result<Vec<_>, _>>()?;
        match self.layout.detect()? {
            FilesLayout::Separate { cert, key, bundle } => Ok(Read {
                chain: read(&cert)?,
                key: read(&key)?,
                bundle: read(&bundle)?,
                federation,
            }),
            FilesLayout::CredentialBundle { credential, bundle } => {
                let both = read(&credential)?;
                Ok(Read {
                    chain: both.clone(),
                    key: both,
                    bundle: read(&bundle)?,
                    federation,
                })
            }
            FilesLayout::Dir(_) => Err(IdentityError::Source(
                "identity directory layout not resolved".into(),
            )),
        }
    }

    fn validate(&self, r: Read, now: UnixTime) -> Result<Identity, IdentityError> {
        let chain = pem::certs(&r.chain.0, &r.chain.1)?;
        let key = pem::key(&r.key.0, &r.key.1)?;
        let info = svid::check_leaf(&chain[0])?;
        let own = info.id.trust_domain();
        let mut bundles = BundleSet::new();
        bundles.insert(TrustBundle::parse(own.clone(), &r.bundle.0, &r.bundle.1)?);
        for ((td, path), bytes) in self.federation.0.iter().zip(&r.federation) {
            check_not_own(td, own.as_str())?;
            bundles.insert(TrustBundle::parse(
                td.clone(),
                bytes,
                &path.display().to_string(),
            )?);
        }
        Identity::new(chain, key, bundles, now)
    }

    /// One read: a fingerprint of what was seen (the bytes, or the error) and the update.
    fn read_once(&self) -> (u64, Update) {
        let mut h = DefaultHasher::new();
        match self.read_bytes() {
            Ok(r) => {
                for part in [&r.chain, &r.key, &r.bundle] {
                    part.1.hash(&mut h);
                    part.0.hash(&mut h);
                }
                r.federation.hash(&mut h);
                (h.finish(), self.validate(r, now()))
            }
            Err(e) => {
                e.to_string().hash(&mut h);
                (h.finish(), Err(e))
            }
        }
    }

    /// Directories to watch, and the file names in them that matter.
    fn watch_targets(&self) -> (Vec<PathBuf>, HashSet<OsString>) {
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut names = HashSet::new();
        let files = self
            .layout
            .files()
            .into_iter()
            .chain(self.federation.paths().cloned());
        for file in files {
            if let Some(name) = file.file_name() {
                names.insert(name.to_owned());
            }
            let dir = match file.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
                _ => PathBuf::from("."),
            };
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        (dirs, names)
    }

    /// Starts the source: the first update is the initial load; later ones follow changes.
    pub fn spawn(self) -> IdentityUpdates {
        let (tx, rx) = mpsc::channel(4);
        let reload = Reload::new();
        tokio::spawn(self.run(tx, reload.clone()));
        IdentityUpdates::new(rx, reload)
    }

    async fn run(self, tx: mpsc::Sender<Update>, reload: Reload) {
        let timing = self.timing;
        let (dirs, names) = self.watch_targets();
        let (events_tx, mut events) = mpsc::channel::<()>(1);
        let mut watcher = if timing.watch {
            Watch::new(events_tx.clone(), names)
        } else {
            None
        };
        if let Some(w) = &mut watcher {
            w.ensure(&dirs);
        }
        let mut recheck = tokio::time::interval_at(Instant::now() + timing.recheck, timing.recheck);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<u64> = None;
        let mut force = true;
        loop {
            // Events that arrived before this read are covered by it.
            while events.try_recv().is_ok() {}
            let (mut fp, mut update) = self.read_once();
            let mut tries = 0;
            while update.is_err() && last != Some(fp) && tries < timing.settle_tries {
                // Possibly a writer half-way through replacing the files: wait and re-read.
                tries += 1;
                tokio::select! {
                    _ = tokio::time::sleep(timing.settle) => {}
                    _ = tx.closed() => return,
                }
                while events.try_recv().is_ok() {}
                (fp, update) = self.read_once();
            }
            if force || last != Some(fp) {
                last = Some(fp);
                if tx.send(update).await.is_err() {
                    return;
                }
            }
            force = false;
            tokio::select! {
                Some(()) = events.recv() => debounce(&mut events, timing.debounce).await,
                _ = recheck.tick() => {
                    // A directory that was replaced, or did not exist yet, is watched again.
                    if let Some(w) = &mut watcher {
                        w.ensure(&dirs);
                    }
                }
                _ = reload.requested() => {
                    tracing::info!("identity files: re-reading on request");
                    force = true;
                }
                _ = tx.closed() => return,
            }
        }
    }
}

/// Waits until no event has come for `quiet` (at most ten times `quiet` in all).
async fn debounce(events: &mut mpsc::Receiver<()>, quiet: Duration) {
    let deadline = Instant::now() + quiet * 10;
    loop {
        let until = (Instant::now() + quiet).min(deadline);
        tokio::select! {
            got = events.recv() => {
                if got.is_none() || Instant::now() >= deadline {
                    return;
                }
            }
            _ = tokio::time::sleep_until(until) => return,
        }
    }
}

/// The inotify watch on the directories.
struct Watch {
    watcher: notify::RecommendedWatcher,
    failed: HashSet<PathBuf>,
}

impl Watch {
    fn new(events: mpsc::Sender<()>, names: HashSet<OsString>) -> Option<Watch> {
        use notify::event::{AccessKind, AccessMode, EventKind};
        let handler = move |res: notify::Result<notify::Event>| {
            let relevant = match res {
                // An error may mean missed events: read to be sure.
                Err(_) => true,
                Ok(ev) => {
                    let noise = matches!(
                        ev.kind,
                        EventKind::Access(
                            AccessKind::Open(_) | AccessKind::Read | AccessKind::Close(AccessMode::Read)
                        )
                    );
                    // Our files, or a Kubernetes `..data` swap (or anything else starting `..`).
                    let ours = ev.paths.is_empty()
                        || ev.paths.iter().any(|p| {
                            p.file_name()
                                .is_some_and(|n| names.contains(n) || n.to_string_lossy().starts_with(".."))
                        });
                    !noise && ours
                }
            };
            if relevant {
                // A full channel already holds a wake-up: nothing is lost.
                let _ = events.try_send(());
            }
        };
        match notify::recommended_watcher(handler) {
            Ok(watcher) => Some(Watch {
                watcher,
                failed: HashSet::new(),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the identity files; falling back to the periodic re-check");
                None
            }
        }
    }

    /// (Re-)adds a watch on every directory; re-adding an existing watch is harmless, and picks
    /// up a directory that was replaced.
    fn ensure(&mut self, dirs: &[PathBuf]) {
        use notify::Watcher as _;
        for dir in dirs {
            match self.watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    if self.failed.remove(dir) {
                        tracing::info!(dir = %dir.display(), "watching the identity directory");
                    }
                }
                Err(e) => {
                    if self.failed.insert(dir.clone()) {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the identity directory; relying on the periodic re-check");
                    }
                }
            }
        }
    }
}
