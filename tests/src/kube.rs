//! Kubernetes manifests checked offline against the API server's published OpenAPI schemas,
//! with PyPI's `kubernetes-validate` (it bundles the schemas of every release), and JSON
//! Patch applied by PyPI's `jsonpatch`, an implementation independent of ward's.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::run;

/// The Kubernetes releases ward supports: from the first with native sidecars on by default
/// (1.29) to the newest the validator knows.
pub const KUBERNETES_VERSIONS: [&str; 3] = ["1.29.0", "1.33.0", "1.37.0"];

/// The Python modules these checks run; a missing one fails the test (`.ci/run` installs them).
pub fn require_python_modules(modules: &[&str]) {
    let import = format!("import {}", modules.join(", "));
    let out = run(
        Command::new("python3").args(["-c", &import]),
        b"",
        Duration::from_secs(30),
    );
    assert!(
        out.status.is_some_and(|s| s.success()),
        "the Kubernetes checks need the Python modules {modules:?}: python3 -m pip install kubernetes-validate jsonpatch (.ci/run does)\n{}",
        out.stderr()
    );
}

/// Validates every document of `file` strictly (unknown fields are errors) against each of
/// [`KUBERNETES_VERSIONS`]; panics with the validator's words on the first failure.
pub fn validate_manifests(file: &Path) {
    require_python_modules(&["kubernetes_validate"]);
    for version in KUBERNETES_VERSIONS {
        let out = run(
            Command::new("python3")
                .args(["-m", "kubernetes_validate", "--strict", "-k", version])
                .arg(file),
            b"",
            Duration::from_secs(60),
        );
        assert!(
            out.status.is_some_and(|s| s.success()),
            "{} is not valid for Kubernetes {version}:\n{}{}",
            file.display(),
            out.stdout(),
            out.stderr()
        );
    }
}

/// [`validate_manifests`] on a text.
pub fn validate_manifest_text(name: &str, text: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join(name);
    std::fs::write(&file, text).expect("write the manifest");
    validate_manifests(&file);
}
