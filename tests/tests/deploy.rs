#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The deployment pieces, checked with the real tools: `systemd-analyze verify` (and
//! `security`) on `deploy/systemd/ward.service`, and the container image of
//! `deploy/container/Containerfile` built with buildah (no daemon: vfs storage, chroot
//! isolation) and run: `ward --version`, then `ward check` on a config inside it; and the
//! capture init image (`build.sh --init`, a debootstrapped Debian base) running its capture step
//! in a network namespace.
//!
//! Without the tool these tests say so and pass, except under CI (`CI` set), where a missing
//! tool fails them: `.ci/run` installs buildah, debootstrap and systemd.

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

/// `deploy/container/build.sh ARGS`, which must succeed and print this ward's `--version` from
/// inside the image; its stdout. The static build can take minutes the first time (thin LTO);
/// later runs reuse it.
fn build(args: &[&str]) -> String {
    let out = run(
        Command::new(repo().join("deploy/container/build.sh")).args(args),
        b"",
        Duration::from_secs(1800),
    );
    let log = format!("{}\n{}", out.stdout(), out.stderr());
    assert_eq!(out.code(), 0, "deploy/container/build.sh {args:?} failed:\n{log}");
    let version = format!("ward {}", env!("CARGO_PKG_VERSION"));
    assert!(
        out.stdout().lines().any(|l| l.trim() == version),
        "`/ward --version` inside the image did not print {version:?}:\n{log}"
    );
    out.stdout()
}

/// `buildah inspect --format FORMAT IMAGE` (vfs storage), trimmed.
fn inspect(buildah: &Path, image: &str, format: &str) -> String {
    let out = run(
        Command::new(buildah).args(["--storage-driver", "vfs", "inspect", "--format", format, image]),
        b"",
        Duration::from_secs(60),
    );
    assert_eq!(out.code(), 0, "buildah inspect: {}", out.stderr());
    out.stdout().trim().to_owned()
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
    build(&[image]);

    let vfs = ["--storage-driver", "vfs"];
    let inspect = |format: &str| inspect(&buildah, image, format);
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

/// Runs `args` (in network namespace `ns` when given); panics with the output unless it
/// succeeds.
fn ok_in(ns: Option<&str>, args: &[&str], timeout: Duration) -> String {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).args(args);
            c
        }
        None => {
            let mut c = Command::new(args[0]);
            c.args(&args[1..]);
            c
        }
    };
    let out = run(&mut cmd, b"", timeout);
    assert_eq!(
        out.code(),
        0,
        "{args:?} (netns {ns:?}):\n{}{}",
        out.stdout(),
        out.stderr()
    );
    out.stdout()
}

/// Every table of both families as the host's iptables shows it (both variants).
fn rules_in(ns: Option<&str>) -> String {
    let mut all = String::new();
    for save in [
        "iptables-nft-save",
        "ip6tables-nft-save",
        "iptables-legacy-save",
        "ip6tables-legacy-save",
    ] {
        if tool(save, "iptables").is_some() {
            all.push_str(&format!(
                "## {save}\n{}",
                ok_in(ns, &[save], Duration::from_secs(30))
            ));
        }
    }
    all
}

/// The rules and the chains a user made, without counters, comments or the built-in chains
/// at policy ACCEPT (iptables-nft keeps an emptied table with its built-ins: no rule at all).
fn rules_only(save: &str) -> String {
    save.lines()
        .filter(|l| {
            l.starts_with("## ") || l.starts_with('-') || (l.starts_with(':') && !l.contains(" ACCEPT "))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A network namespace for one test, deleted on drop.
struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// The capture init image (`build.sh --init`: debootstrap's Debian with iptables, ward on top)
/// builds here, and its entry point, run as the pod runs it (root with NET_ADMIN and NET_RAW and
/// no other capability, in the pod's network namespace), installs capture that redirects the
/// namespace's outbound TCP, touches nothing outside it, and `ward iptables uninstall` from the
/// same image leaves the namespace's rules, a user's own included, as it found them.
#[test]
fn capture_init_image_builds_from_debian_packages_and_captures_in_a_netns() {
    let (Some(buildah), Some(_), Some(_), Some(_)) = (
        tool("buildah", "buildah"),
        tool("debootstrap", "debootstrap"),
        tool("ip", "iproute2"),
        tool("python3", "python3"),
    ) else {
        return;
    };
    let root = run(Command::new("id").arg("-u"), b"", Duration::from_secs(5)).stdout();
    if root.trim() != "0" {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set: this test needs root (debootstrap, ip netns)"
        );
        eprintln!("SKIPPED: not root (debootstrap and ip netns need it); under CI this fails");
        return;
    }
    let image = "localhost/ward-init-e2e:test";
    let stdout = build(&["--init", image]);
    assert!(
        stdout.contains("iptables-restore v1.8"),
        "no iptables-restore inside the image:\n{stdout}"
    );

    let vfs = ["--storage-driver", "vfs"];
    let inspect = |format: &str| inspect(&buildah, image, format);
    assert_eq!(inspect("{{.OCIv1.Config.Entrypoint}}"), "[/ward]");
    assert_eq!(inspect("{{.OCIv1.Config.Cmd}}"), "[iptables install]");

    let name = format!("wardimg-{}", std::process::id());
    let _ = Command::new("ip").args(["netns", "del", &name]).output();
    ok_in(None, &["ip", "netns", "add", &name], Duration::from_secs(10));
    let ns = Ns(name);
    let netns = Some(ns.0.as_str());
    for cmd in [
        &["ip", "link", "set", "lo", "up"][..],
        &[
            "ip", "link", "add", "pod0", "type", "veth", "peer", "name", "pod1",
        ],
        &["ip", "addr", "add", "10.250.99.1/24", "dev", "pod0"],
        &["ip", "link", "set", "pod0", "up"],
        &["ip", "link", "set", "pod1", "up"],
        // A user's own rules, which capture must leave alone.
        &[
            "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "9999", "-j", "RETURN",
        ],
        &[
            "iptables", "-A", "INPUT", "-p", "tcp", "--dport", "9998", "-j", "ACCEPT",
        ],
    ] {
        ok_in(netns, cmd, Duration::from_secs(10));
    }
    let host_before = rules_only(&rules_in(None));
    let ns_before = rules_only(&rules_in(netns));
    assert!(ns_before.contains("--dport 9999 -j RETURN"), "{ns_before}");

    let from = run(
        Command::new(&buildah).args(vfs).args(["from", image]),
        b"",
        Duration::from_secs(120),
    );
    assert_eq!(from.code(), 0, "buildah from: {}", from.stderr());
    let ctr = from.stdout().trim().to_owned();
    struct Container<'a>(&'a Path, String);
    impl Drop for Container<'_> {
        fn drop(&mut self) {
            for args in [["rm", self.1.as_str()], ["rmi", "localhost/ward-init-e2e:test"]] {
                let _ = Command::new(self.0)
                    .args(["--storage-driver", "vfs"])
                    .args(args)
                    .output();
            }
        }
    }
    let ctr = Container(&buildah, ctr);
    // As the pod runs it: root, NET_ADMIN and NET_RAW, nothing else (buildah's default set
    // dropped by name: `--cap-drop ALL` would also drop what --cap-add gives).
    let in_image = |script: &str| {
        let out = run(
            Command::new("ip")
                .args(["netns", "exec", &ns.0])
                .arg(&buildah)
                .args(vfs)
                .args(["run", "--isolation", "chroot", "--user", "0:0"])
                .args([
                    "--cap-drop",
                    "CAP_CHOWN,CAP_DAC_OVERRIDE,CAP_FOWNER,CAP_FSETID,CAP_KILL,CAP_NET_BIND_SERVICE,\
                     CAP_SETFCAP,CAP_SETGID,CAP_SETPCAP,CAP_SETUID,CAP_SYS_CHROOT,CAP_AUDIT_WRITE,CAP_MKNOD",
                    "--cap-add",
                    "CAP_NET_ADMIN",
                    "--cap-add",
                    "CAP_NET_RAW",
                ])
                .args([&ctr.1, "--", "/bin/sh", "-c", script]),
            b"",
            Duration::from_secs(120),
        );
        (out.code(), format!("{}{}", out.stdout(), out.stderr()))
    };
    // The image's default command (`/ward iptables install`), with the capabilities checked first:
    // NET_ADMIN is bit 12, NET_RAW 13.
    let (code, out) = in_image("grep '^CapEff:' /proc/self/status && /ward iptables install");
    assert_eq!(code, 0, "`ward iptables install` inside the image:\n{out}");
    assert!(
        out.contains("CapEff:\t0000000000003000"),
        "the capture step ran with other capabilities:\n{out}"
    );
    assert!(
        out.contains("ward capture rules installed with iptables-"),
        "{out}"
    );

    let ns_captured = rules_in(netns);
    for want in [
        "-A OUTPUT -p tcp -j WARD_OUTPUT",
        "-A PREROUTING -p tcp -j WARD_INBOUND",
        "-A WARD_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A WARD_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A WARD_OUTPUT -d ::1/128 -j RETURN",
    ] {
        assert!(
            ns_captured.contains(want),
            "{want:?} missing in the namespace:\n{ns_captured}"
        );
    }
    assert_eq!(
        rules_only(&rules_in(None)),
        host_before,
        "capture inside the namespace changed the host's rules"
    );

    // Captured for real: an app's connection to another address lands on ward's outbound port.
    let probe = r#"
import socket, sys, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 15001)); srv.listen(1)
def serve():
    c, _ = srv.accept(); c.sendall(b"captured by 15001"); c.close()
threading.Thread(target=serve, daemon=True).start()
c = socket.create_connection(("10.250.99.2", 80), timeout=5)
print(c.recv(100).decode())
"#;
    let out = ok_in(netns, &["python3", "-c", probe], Duration::from_secs(20));
    assert_eq!(out.trim(), "captured by 15001", "outbound TCP was not redirected");

    let (code, out) = in_image("/ward iptables uninstall");
    assert_eq!(code, 0, "`ward iptables uninstall` inside the image:\n{out}");
    let ns_after = rules_in(netns);
    assert!(
        !ns_after.contains("WARD_"),
        "ward's rules left after uninstall:\n{ns_after}"
    );
    assert_eq!(
        rules_only(&ns_after),
        ns_before,
        "uninstall did not leave the namespace as it found it"
    );
    drop(ctr);
}
