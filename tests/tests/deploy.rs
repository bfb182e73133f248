#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The deployment pieces, checked with the real tools: `systemd-analyze verify` (and
//! `security`) on `deploy/systemd/ward.service`, and the container image of
//! `deploy/container/Containerfile` built with buildah (no daemon: vfs storage, chroot
//! isolation) and run: `ward --version`, then `ward check` on a config inside it.
//!
//! Without the tool these tests say so and pass, except under CI (`CI` set), where a missing
//! tool fails them: `.ci/run` installs buildah and systemd.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ward_e2e::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// The tool's path; `None` (after saying why) when it is missing outside CI.
fn tool(name: &str, package: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(p) = std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
    {
        return Some(p);
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI is set and `{name}` is missing: install it (apt-get install {package}); .ci/run does");
    }
    eprintln!("SKIPPED: `{name}` is not installed (apt-get install {package}); under CI this fails");
    None
}

/// The unit, with `ExecStart` pointing at the ward this workspace built (verify insists the
/// binary exists), in a directory of its own.
fn unit_copy(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("ward.service");
    let text = text.replace(
        "ExecStart=/usr/local/bin/ward ",
        &format!("ExecStart={} ", ward_bin().display()),
    );
    std::fs::write(&unit, text).unwrap();
    (dir, unit)
}

fn verify(analyze: &Path, unit: &Path) -> Output {
    run(
        Command::new(analyze).arg("verify").arg(unit),
        b"",
        Duration::from_secs(30),
    )
}

#[test]
fn systemd_unit_passes_verify_and_is_hardened() {
    let Some(analyze) = tool("systemd-analyze", "systemd") else {
        return;
    };
    let text = std::fs::read_to_string(repo().join("deploy/systemd/ward.service")).unwrap();
    let service: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "[Service]")
        .take_while(|l| *l != "[Install]")
        .collect();
    for line in [
        "ExecStart=/usr/local/bin/ward run -c /etc/ward/ward.yaml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=ward",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
    ] {
        assert!(service.contains(&line), "[Service] lacks `{line}`");
    }

    // verify accepts it: exit 0 and not one warning (it warns, exit 0, on unknown keys and bad
    // values, so silence is the real test).
    let (_dir, unit) = unit_copy(&text);
    let out = verify(&analyze, &unit);
    assert_eq!(
        out.code(),
        0,
        "systemd-analyze verify:\n{}{}",
        out.stdout(),
        out.stderr()
    );
    assert!(
        out.stderr().trim().is_empty() && out.stdout().trim().is_empty(),
        "systemd-analyze verify warned:\n{}{}",
        out.stdout(),
        out.stderr()
    );
    // ... and that silence means something: a misspelt key is reported.
    let (_bad_dir, bad) = unit_copy(&text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"));
    let out = verify(&analyze, &bad);
    assert!(
        out.stderr().contains("NoNewPrivilege"),
        "verify did not report a misspelt key:\n{}",
        out.stderr()
    );

    // systemd's own exposure score: "OK" (below 2 on its 0-10 scale).
    let out = run(
        Command::new(&analyze)
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&unit),
        b"",
        Duration::from_secs(30),
    );
    let all = format!("{}{}", out.stdout(), out.stderr());
    let score: f64 = all
        .lines()
        .find_map(|l| l.split("Overall exposure level for ward.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{all}"));
    assert!(score < 2.0, "exposure level {score}:\n{all}");
}

#[test]
fn container_image_builds_from_scratch_and_runs_ward() {
    let Some(buildah) = tool("buildah", "buildah") else {
        return;
    };
    let image = "localhost/ward-e2e:test";
    // The static build can take minutes the first time (thin LTO); later runs reuse it.
    let out = run(
        Command::new(repo().join("deploy/container/build.sh")).arg(image),
        b"",
        Duration::from_secs(1800),
    );
    let log = format!("{}\n{}", out.stdout(), out.stderr());
    assert_eq!(out.code(), 0, "deploy/container/build.sh failed:\n{log}");
    let version = format!("ward {}", env!("CARGO_PKG_VERSION"));
    assert!(
        out.stdout().lines().any(|l| l.trim() == version),
        "`/ward --version` inside the image did not print {version:?}:\n{log}"
    );

    let vfs = ["--storage-driver", "vfs"];
    let inspect = |format: &str| {
        let out = run(
            Command::new(&buildah)
                .args(vfs)
                .args(["inspect", "--format", format, image]),
            b"",
            Duration::from_secs(60),
        );
        assert_eq!(out.code(), 0, "buildah inspect: {}", out.stderr());
        out.stdout().trim().to_owned()
    };
    assert_eq!(inspect("{{.OCIv1.Config.User}}"), "1337:1337");
    assert_eq!(inspect("{{.OCIv1.Config.Entrypoint}}"), "[/ward]");
    assert_eq!(inspect("{{.OCIv1.Config.Cmd}}"), "[run -c /etc/ward/ward.yaml]");
    // FROM scratch: one layer, holding the binary alone.
    assert_eq!(inspect("{{len .OCIv1.RootFS.DiffIDs}}"), "1");

    // A real command inside it, as UID 1337 with nothing but /ward: check a config (dev CA,
    // TLS configs built, policies compiled) mounted read-only where the manifests mount it.
    let conf = tempfile::tempdir().unwrap();
    std::fs::write(
        conf.path().join("ward.yaml"),
        "identity:\n  dev: {id: spiffe://example.org/ns/default/sa/web, ttl: 1h}\n\
         inbound:\n  - {name: web, listen: 127.0.0.1:15006, forward: 127.0.0.1:8080, policy: web}\n\
         policies:\n  web: {default: deny}\nadmin: {listen: 127.0.0.1:15000}\n",
    )
    .unwrap();
    // The mount must be readable by UID 1337.
    let mut perms = std::fs::metadata(conf.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(conf.path(), perms).unwrap();
    let from = run(
        Command::new(&buildah).args(vfs).args(["from", image]),
        b"",
        Duration::from_secs(120),
    );
    assert_eq!(from.code(), 0, "buildah from: {}", from.stderr());
    let ctr = from.stdout().trim().to_owned();
    let out = run(
        Command::new(&buildah)
            .args(vfs)
            .args(["run", "--isolation", "chroot", "--volume"])
            .arg(format!("{}:/etc/ward:ro", conf.path().display()))
            .args([&ctr, "--", "/ward", "check", "-c", "/etc/ward/ward.yaml"]),
        b"",
        Duration::from_secs(60),
    );
    for cleanup in [["rm", &ctr], ["rmi", image]] {
        let _ = run(
            Command::new(&buildah).args(vfs).args(cleanup),
            b"",
            Duration::from_secs(60),
        );
    }
    assert_eq!(
        out.code(),
        0,
        "`ward check` inside the image:\n{}{}",
        out.stdout(),
        out.stderr()
    );
    assert!(
        out.stdout().contains(
            "ok: 1 inbound, 0 outbound, 1 policies; identity spiffe://example.org/ns/default/sa/web"
        ),
        "{}",
        out.stdout()
    );
}
