//! Files that change all at once: a file replaced atomically, and a directory updated as
//! Kubernetes updates a mounted volume (an SVID directory, for instance).

use std::path::{Path, PathBuf};

use ward_certs::IssuedSvid;

use crate::pki::Pki;

/// Replaces `path` atomically (a temporary file renamed over it), so a reader polling the file
/// never sees half of it.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).expect("write temporary file");
    std::fs::rename(&tmp, path).expect("rename over the file");
}

/// A directory whose files change all at once, as Kubernetes' AtomicWriter does it: the files
/// live in a generation directory, `..data` points at it, each file is a symlink through
/// `..data`; an update renames a new `..data` over the old one.
pub struct AtomicDir {
    pub dir: PathBuf,
    generation: u32,
}

impl AtomicDir {
    pub fn new(dir: &Path, files: &[(&str, String)]) -> AtomicDir {
        std::fs::create_dir_all(dir).expect("create dir");
        let mut d = AtomicDir {
            dir: dir.to_owned(),
            generation: 0,
        };
        d.swap(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).expect("symlink");
        }
        d
    }

    pub fn swap(&mut self, files: &[(&str, String)]) {
        self.generation += 1;
        let old = format!("..gen_{}", self.generation - 1);
        let new = format!("..gen_{}", self.generation);
        std::fs::create_dir(self.dir.join(&new)).expect("generation dir");
        for (name, text) in files {
            std::fs::write(self.dir.join(&new).join(name), text).expect("write file");
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&new, &tmp).expect("symlink");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("rename ..data");
        let _ = std::fs::remove_dir_all(self.dir.join(old));
    }
}

/// The files of an SVID directory (`svid.pem`, `svid_key.pem`, `bundle.pem`) for `svid`
/// signed by `pki`'s CA.
pub fn svid_dir_files(pki: &Pki, svid: &IssuedSvid) -> Vec<(&'static str, String)> {
    vec![
        ("svid.pem", svid.cert_pem()),
        ("svid_key.pem", svid.key_pem()),
        ("bundle.pem", pki.ca.cert_pem()),
    ]
}
