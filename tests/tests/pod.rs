//! The pod-side commands as a user runs them: `ward inject` on manifests (files, stdin, the
//! example in deploy/kubernetes) and `ward iptables print`. No root needed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ward_e2e::{Output, Pki, run, validate_manifest_text, ward_bin};

const T: Duration = Duration::from_secs(20);

fn ward_stdin(args: &[&str], stdin: &str) -> Output {
    run(Command::new(ward_bin()).args(args), stdin.as_bytes(), T)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: app
        image: example/web:1
";

const JOB: &str = "apiVersion: batch/v1
kind: Job
metadata:
  name: once
spec:
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: app
        image: example/once:1
";

const SERVICE: &str = "# kept as written
apiVersion: v1
kind: Service
metadata:
  name: web   # this comment too
spec:
  ports: [{port: 80}]
";

#[test]
fn inject_reads_stdin_and_writes_stdout() {
    let input = format!("{SERVICE}---\n{DEPLOYMENT}---\n{JOB}");
    let out = ward_stdin(&["inject", "-f", "-"], &input);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    let yaml = out.stdout();
    assert!(
        yaml.starts_with(SERVICE),
        "a Service must pass byte for byte:\n{yaml}"
    );
    assert_eq!(yaml.matches("- name: ward-init\n").count(), 2, "{yaml}");
    assert_eq!(yaml.matches("- name: ward\n").count(), 2, "{yaml}");
    assert_eq!(yaml.matches("restartPolicy: Always").count(), 2, "{yaml}");
    assert!(yaml.contains("image: ghcr.io/ward/ward:0.1.0"), "{yaml}");
    assert!(
        out.stderr()
            .contains("2 workload(s) injected, 3 document(s) read"),
        "{}",
        out.stderr()
    );

    validate_manifest_text("injected.yaml", &yaml);

    // Idempotent through the binary too.
    let again = ward_stdin(&["inject", "-f", "-"], &yaml);
    assert_eq!(again.code(), 0, "{}", again.stderr());
    assert_eq!(again.stdout(), yaml);
}

#[test]
fn inject_file_to_file_with_options() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.yaml");
    let output = dir.path().join("out.yaml");
    std::fs::write(&input, DEPLOYMENT).unwrap();
    let out = ward_stdin(
        &[
            "inject",
            "-f",
            input.to_str().unwrap(),
            "--out",
            output.to_str().unwrap(),
            "--image",
            "registry.example/ward:dev",
            "--identity",
            "spire",
            "--config-map",
            "mesh-config",
        ],
        "",
    );
    assert_eq!(out.code(), 0, "{}", out.stderr());
    assert!(out.stdout().is_empty());
    let yaml = std::fs::read_to_string(&output).unwrap();
    assert!(yaml.contains("image: registry.example/ward:dev"), "{yaml}");
    assert!(yaml.contains("driver: csi.spiffe.io"), "{yaml}");
    assert!(yaml.contains("SPIFFE_ENDPOINT_SOCKET"), "{yaml}");
    assert!(yaml.contains("name: mesh-config"), "{yaml}");
    validate_manifest_text("injected-spire.yaml", &yaml);

    // The hostPath flavour of the SPIRE socket too.
    let out = ward_stdin(&["inject", "-f", "-", "--identity", "spire-hostpath"], DEPLOYMENT);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    assert!(out.stdout().contains("hostPath"), "{}", out.stdout());
    validate_manifest_text("injected-hostpath.yaml", &out.stdout());
}

#[test]
fn inject_refuses_bad_input_with_exit_1() {
    for (input, want) in [
        ("kind: Deployment\nspec: [unclosed\n", "stdin: not valid YAML"),
        (
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: 1}\n",
            "document 1 (Deployment x)",
        ),
        (
            &DEPLOYMENT.replace(
                "      labels: {app: web}\n    spec:",
                "      labels: {app: web}\n      annotations: {ward.dev/exclude-inbound-ports: \"ssh\"}\n    spec:",
            ),
            "ward.dev/exclude-inbound-ports",
        ),
    ] {
        let out = ward_stdin(&["inject", "-f", "-"], input);
        assert_eq!(out.code(), 1, "{input}");
        assert!(out.stderr().contains(want), "want {want:?} in: {}", out.stderr());
        assert!(!out.stderr().contains("panicked"), "{}", out.stderr());
        assert!(out.stdout().is_empty(), "nothing is written on error");
    }
    let out = ward_stdin(&["inject", "-f", "/nonexistent/app.yaml"], "");
    assert_eq!(out.code(), 1);
    assert!(
        out.stderr().contains("/nonexistent/app.yaml: cannot read it"),
        "{}",
        out.stderr()
    );
}

/// The example in deploy/kubernetes: every workload gets ward, and each ConfigMap's ward.yaml
/// passes `ward check` against SVID files in csi-driver-spiffe's layout.
#[test]
fn the_kubernetes_example_injects_and_its_configs_check() {
    let app = repo().join("deploy/kubernetes/app.yaml");
    let out = ward_stdin(&["inject", "-f", app.to_str().unwrap()], "");
    assert_eq!(out.code(), 0, "{}", out.stderr());
    assert!(
        out.stderr().contains("3 workload(s) injected"),
        "{}",
        out.stderr()
    );
    assert!(
        !out.stderr().contains("warning"),
        "the example should need no warnings: {}",
        out.stderr()
    );
    let yaml = out.stdout();
    assert!(
        yaml.contains("name: ward-backend") && yaml.contains("name: ward-frontend"),
        "{yaml}"
    );
    validate_manifest_text("app-injected.yaml", &yaml);

    let pki = Pki::new("cluster.local");
    let svid = pki.issue("csi", "spiffe://cluster.local/ns/default/sa/backend");
    let csi = pki.dir.path().join("csi-layout");
    std::fs::create_dir_all(&csi).unwrap();
    std::fs::copy(&svid.cert, csi.join("tls.crt")).unwrap();
    std::fs::copy(&svid.key, csi.join("tls.key")).unwrap();
    std::fs::copy(&svid.bundle, csi.join("ca.crt")).unwrap();

    let configs = std::fs::read_to_string(repo().join("deploy/kubernetes/ward-config.yaml")).unwrap();
    let mut checked = 0;
    for doc in configs.split("\n---\n") {
        // The block under `ward.yaml: |`, dedented.
        let Some((_, block)) = doc.split_once("  ward.yaml: |\n") else {
            continue;
        };
        let text: String = block
            .lines()
            .take_while(|l| l.is_empty() || l.starts_with("    "))
            .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
            .collect();
        let text = text.replace("/var/run/secrets/spiffe.io", csi.to_str().unwrap());
        let path = pki.dir.path().join(format!("ward-{checked}.yaml"));
        std::fs::write(&path, &text).unwrap();
        let out = ward_stdin(&["check", "-c", path.to_str().unwrap()], "");
        assert_eq!(
            out.code(),
            0,
            "deploy/kubernetes/ward-config.yaml document {checked}:\n{text}\n{}{}",
            out.stdout(),
            out.stderr()
        );
        checked += 1;
    }
    assert_eq!(checked, 2);
}

#[test]
fn iptables_print_shows_restore_input_without_root() {
    let out = ward_stdin(
        &[
            "iptables",
            "print",
            "--exclude-inbound-ports",
            "22",
            "--exclude-outbound-cidrs",
            "169.254.169.254/32,fd00::/8",
            "--proxy-uid",
            "2000",
        ],
        "",
    );
    assert_eq!(out.code(), 0, "{}", out.stderr());
    let text = out.stdout();
    assert!(text.starts_with("# iptables-restore --noflush\n*nat\n"), "{text}");
    assert_eq!(text.matches("*nat\n").count(), 2, "IPv4 and IPv6: {text}");
    assert_eq!(text.matches("COMMIT\n").count(), 2, "{text}");
    for want in [
        ":WARD_INBOUND - [0:0]",
        "-A PREROUTING -p tcp -j WARD_INBOUND",
        "-A OUTPUT -p tcp -j WARD_OUTPUT",
        "-A WARD_INBOUND -p tcp -m tcp --dport 22 -j RETURN",
        "-A WARD_INBOUND -p tcp -m tcp --dport 15000 -j RETURN",
        "-A WARD_OUTPUT -m owner --uid-owner 2000 -j RETURN",
        "-A WARD_OUTPUT -d 169.254.169.254/32 -j RETURN",
        "-A WARD_OUTPUT -d fd00::/8 -j RETURN",
        "-A WARD_OUTPUT -d ::1/128 -j RETURN",
    ] {
        assert!(text.contains(want), "{want:?} missing:\n{text}");
    }
    // Every chain ward creates is a WARD_ chain.
    for line in text.lines().filter(|l| l.starts_with(':')) {
        assert!(line.starts_with(":WARD_"), "{line}");
    }

    let off = ward_stdin(&["iptables", "print", "--ipv6", "off"], "");
    assert_eq!(off.code(), 0);
    assert_eq!(off.stdout().matches("*nat\n").count(), 1);

    for (args, want) in [
        (
            vec!["iptables", "print", "--exclude-outbound-cidrs", "10.0.0.0/99"],
            "--exclude-outbound-cidrs",
        ),
        (
            vec!["iptables", "print", "--exclude-inbound-ports", "0"],
            "--exclude-inbound-ports",
        ),
        (
            vec!["iptables", "print", "--inbound-port", "15001"],
            "different ports",
        ),
    ] {
        let out = ward_stdin(&args, "");
        assert_eq!(out.code(), 1, "{args:?}");
        assert!(out.stderr().contains(want), "{args:?}: {}", out.stderr());
    }
}

#[test]
fn shutdown_without_ward_says_so() {
    let out = ward_stdin(&["shutdown", "--admin", "127.0.0.1:9"], "");
    assert_eq!(out.code(), 1);
    assert!(out.stderr().contains("is ward running"), "{}", out.stderr());
}
