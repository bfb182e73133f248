//! `ward inject serve`, the injection webhook, as the API server meets it: HTTPS with a
//! serving certificate made by the openssl commands of deploy/kubernetes/README.md,
//! AdmissionReviews shaped as the API server sends them (tests/fixtures/admission), curl as
//! the client (HTTP/1.1 and HTTP/2), Python's `jsonpatch` applying the patch, and the result
//! compared with `ward inject -f` on the same pod and validated against Kubernetes' schemas.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use ward_e2e::{
    Daemon, Metrics, Output, free_port, require_python_modules, require_tool, run, validate_manifests,
    wait_until, ward_bin,
};

const T: Duration = Duration::from_secs(20);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/admission").join(name)
}

fn sh(dir: &Path, script: &str) -> Output {
    let out = run(
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", script])
            .current_dir(dir),
        b"",
        T,
    );
    assert_eq!(out.code(), 0, "{script}\n{}{}", out.stdout(), out.stderr());
    out
}

/// A CA and a serving certificate for the webhook's Service (and 127.0.0.1), as the README
/// makes them; `name` tells two certificates apart.
fn make_certs(dir: &Path, name: &str) {
    require_tool("openssl");
    if !dir.join("ca.crt").exists() {
        sh(
            dir,
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
             -subj /CN=ward-webhook-ca -keyout ca.key -out ca.crt 2>/dev/null",
        );
    }
    sh(
        dir,
        &format!(
            "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN={name} \
             -keyout {name}.key -out {name}.csr 2>/dev/null
             printf 'subjectAltName=DNS:ward-webhook.ward-system.svc,IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > {name}.ext
             openssl x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
             -extfile {name}.ext -out {name}.crt 2>/dev/null"
        ),
    );
}

/// Replaces `tls.crt` and `tls.key` at once, as kubelet updates a Secret volume (a new
/// directory, then the symlink swapped).
fn install_cert(dir: &Path, name: &str) {
    let data = dir.join(format!("..{name}"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(dir.join(format!("{name}.crt")), data.join("tls.crt")).unwrap();
    std::fs::copy(dir.join(format!("{name}.key")), data.join("tls.key")).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&data, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key"] {
        if !dir.join(f).exists() {
            std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
        }
    }
}

/// The args of the webhook container in deploy/kubernetes/webhook.yaml.
fn manifest_args() -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/webhook.yaml")).unwrap();
    let (_, rest) = text.split_once("        args:\n").expect("webhook.yaml has args");
    rest.lines()
        .take_while(|l| l.starts_with("        - "))
        .map(|l| l.trim_start_matches("        - ").to_owned())
        .collect()
}

struct Webhook {
    daemon: Daemon,
    port: u16,
    probes: u16,
    dir: tempfile::TempDir,
}

/// Starts the webhook with the manifest's own arguments, the certificate paths and
/// addresses pointed at this test's.
fn start(extra: &[&str]) -> Webhook {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), "first");
    install_cert(dir.path(), "first");
    let (port, probes) = (free_port(), free_port());
    let tls = dir.path();
    let mut args: Vec<String> = manifest_args()
        .into_iter()
        .map(|a| {
            a.replace("/tls/tls.crt", tls.join("tls.crt").to_str().unwrap())
                .replace("/tls/tls.key", tls.join("tls.key").to_str().unwrap())
        })
        .collect();
    assert_eq!(args[..2], ["inject", "serve"], "{args:?}");
    // A flag given here replaces the manifest's.
    args.retain(|a| {
        !extra
            .iter()
            .any(|e| e.starts_with("--") && a.starts_with(&format!("{e}=")))
    });
    args.extend(
        [
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--probes",
            &format!("127.0.0.1:{probes}"),
            "--namespace",
            "ward-system",
        ]
        .map(String::from),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    let daemon = Daemon::start("ward inject serve", Command::new(ward_bin()).args(&args), port);
    let webhook = Webhook {
        daemon,
        port,
        probes,
        dir,
    };
    wait_until("the webhook is ready", Duration::from_secs(10), || {
        webhook.probe("/ready").0 == 200
    });
    webhook
}

impl Webhook {
    /// `GET path` on the probes port: status and body.
    fn probe(&self, path: &str) -> (u16, String) {
        let out = run(
            Command::new(require_tool("curl")).args([
                "-sS",
                "--max-time",
                "5",
                "-w",
                "\n%{http_code}",
                &format!("http://127.0.0.1:{}{path}", self.probes),
            ]),
            b"",
            T,
        );
        let text = out.stdout();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    fn metrics(&self) -> Metrics {
        Metrics::scrape(self.probes)
    }

    /// POSTs `body` to `path` over HTTPS with curl, verifying the serving certificate
    /// against the CA; returns the status and body.
    fn post(&self, path: &str, body: &Path, http2: bool) -> (u16, String) {
        let out = run(
            Command::new(require_tool("curl"))
                .args(["-sS", "--max-time", "5", "-w", "\n%{http_code} %{http_version}"])
                .arg(if http2 { "--http2" } else { "--http1.1" })
                .arg("--cacert")
                .arg(self.dir.path().join("ca.crt"))
                .args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(format!("@{}", body.display()))
                .arg(format!("https://127.0.0.1:{}{path}", self.port)),
            b"",
            T,
        );
        let text = out.stdout();
        let (body, tail) = text.rsplit_once('\n').unwrap_or(("", ""));
        let (code, version) = tail.split_once(' ').unwrap_or(("0", ""));
        if http2 {
            assert_eq!(
                version,
                "2",
                "curl --http2 spoke HTTP/{version}: {}",
                out.stderr()
            );
        }
        (code.parse().unwrap_or(0), body.to_owned())
    }

    fn review(&self, path: &str, body: &Path) -> Value {
        let (status, text) = self.post(path, body, true);
        assert_eq!(status, 200, "{text}\n{}", self.daemon.output());
        serde_json::from_str(&text).unwrap()
    }

    /// The serial of the certificate the webhook serves now.
    fn served_serial(&self) -> String {
        sh(
            self.dir.path(),
            &format!(
                "openssl s_client -connect 127.0.0.1:{} -CAfile ca.crt -verify_return_error </dev/null 2>/dev/null | openssl x509 -noout -serial",
                self.port
            ),
        )
        .stdout()
    }
}

/// Applies the response's patch to the review's pod with Python's jsonpatch, and compares it
/// with `ward inject -f` on the same pod (read back with PyYAML). Returns the patched pod.
fn patched_equals_cli(review: &Path, response: &Value, dir: &Path) -> PathBuf {
    require_python_modules(&["jsonpatch", "yaml"]);
    let pod = dir.join("pod.json");
    let review_doc: Value = serde_json::from_str(&std::fs::read_to_string(review).unwrap()).unwrap();
    std::fs::write(
        &pod,
        serde_json::to_vec_pretty(&review_doc["request"]["object"]).unwrap(),
    )
    .unwrap();
    let cli = run(Command::new(ward_bin()).args(["inject", "-f"]).arg(&pod), b"", T);
    assert_eq!(cli.code(), 0, "{}", cli.stderr());
    std::fs::write(dir.join("cli.yaml"), cli.stdout()).unwrap();
    std::fs::write(dir.join("response.json"), serde_json::to_vec(response).unwrap()).unwrap();
    let script = r#"
import base64, json, sys, jsonpatch, yaml
pod = json.load(open("pod.json"))
response = json.load(open("response.json"))["response"]
assert response["patchType"] == "JSONPatch", response
patch = jsonpatch.JsonPatch(json.loads(base64.b64decode(response["patch"])))
patched = patch.apply(pod)
cli = yaml.safe_load(open("cli.yaml"))
if patched != cli:
    print(json.dumps(patched, indent=1, sort_keys=True))
    print("--- ward inject gives ---")
    print(json.dumps(cli, indent=1, sort_keys=True))
    sys.exit(1)
# The API server names a generateName pod after admission; the schema wants a name.
patched["metadata"].setdefault("name", patched["metadata"].get("generateName", "") + "x1y2z")
yaml.safe_dump(patched, open("patched.yaml", "w"))
"#;
    let out = run(
        Command::new("python3").args(["-c", script]).current_dir(dir),
        b"",
        T,
    );
    assert_eq!(
        out.code(),
        0,
        "{}: the patched pod is not what `ward inject` gives:\n{}{}",
        review.display(),
        out.stdout(),
        out.stderr()
    );
    dir.join("patched.yaml")
}

#[test]
fn api_server_reviews_get_what_ward_inject_gives() {
    let webhook = start(&[]);
    let work = tempfile::tempdir().unwrap();
    for name in ["bare-pod.json", "replicaset-pod.json", "job-pod.json"] {
        let review = fixture(name);
        let doc = webhook.review("/inject", &review);
        let response = &doc["response"];
        assert_eq!(response["allowed"], true, "{name}: {doc}");
        let patched = patched_equals_cli(&review, &doc, work.path());
        validate_manifests(&patched);

        // The patched pod coming round again (reinvocationPolicy: IfNeeded) is left alone.
        let again_review = work.path().join("again.json");
        let mut again: Value = serde_json::from_str(&std::fs::read_to_string(&review).unwrap()).unwrap();
        let out = run(
            Command::new("python3")
                .args([
                    "-c",
                    "import json,yaml,sys; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
                ])
                .arg(&patched),
            b"",
            T,
        );
        again["request"]["object"] = serde_json::from_str(&out.stdout()).unwrap();
        std::fs::write(&again_review, serde_json::to_vec(&again).unwrap()).unwrap();
        let doc = webhook.review("/inject", &again_review);
        assert_eq!(doc["response"]["allowed"], true);
        assert!(doc["response"].get("patch").is_none(), "{doc}");
        let warning = doc["response"]["warnings"][0].as_str().unwrap_or_default();
        assert!(warning.contains("already"), "{warning}");
    }

    // Over HTTP/1.1 too.
    let (status, text) = webhook.post("/inject", &fixture("bare-pod.json"), false);
    assert_eq!(status, 200, "{text}");

    // A host-network pod: admitted unchanged, with the reason.
    let doc = webhook.review("/inject", &fixture("host-network-pod.json"));
    assert_eq!(doc["response"]["allowed"], true);
    assert!(doc["response"].get("patch").is_none());
    assert!(
        doc["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("hostNetwork"),
        "{doc}"
    );

    // The opt-in endpoint: the bare pod did not ask.
    let doc = webhook.review("/inject/opt-in", &fixture("bare-pod.json"));
    assert_eq!(doc["response"]["allowed"], true);
    assert!(doc["response"].get("patch").is_none());

    // Garbage: 400 with a reason, and the webhook keeps serving.
    let junk = work.path().join("junk");
    for body in [
        "",
        "not json",
        "{\"kind\":\"Pod\"}",
        "{\"kind\":\"AdmissionReview\",\"request\":{}}",
    ] {
        std::fs::write(&junk, body).unwrap();
        let (status, text) = webhook.post("/inject", &junk, true);
        assert_eq!(status, 400, "{body:?}: {text}");
        assert!(!text.is_empty());
    }
    std::fs::write(&junk, vec![b'{'; 5 << 20]).unwrap();
    let (status, _) = webhook.post("/inject", &junk, false);
    assert_eq!(status, 413, "a body over the limit");
    let (status, _) = webhook.post("/nowhere", &fixture("bare-pod.json"), true);
    assert_eq!(status, 404);

    // What happened is counted and logged.
    let m = webhook.metrics();
    let reviews = |result: &str| {
        m.value(
            "ward_webhook_reviews_total",
            &[("endpoint", "/inject"), ("result", result)],
        )
    };
    assert_eq!(reviews("injected"), 4.0, "three fixtures and the HTTP/1.1 one");
    assert_eq!(
        reviews("skipped"),
        4.0,
        "three re-invocations and the host-network pod"
    );
    assert_eq!(reviews("invalid"), 5.0);
    assert_eq!(
        m.value("ward_webhook_skips_total", &[("reason", "already_injected")]),
        3.0
    );
    assert_eq!(
        m.value("ward_webhook_skips_total", &[("reason", "host_network")]),
        1.0
    );
    let log = webhook.daemon.output();
    assert!(
        log.contains("\"message\":\"pod skipped\"") && log.contains("\"reason\":\"host_network\""),
        "{log}"
    );
    assert!(
        log.contains("monitoring/node-exporter-abcde"),
        "the log names the pod: {log}"
    );
    assert!(
        log.contains("shop/web-7d9f8b6c5d-*"),
        "a pod without its name yet: {log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn the_failure_policy_setting_decides_bad_pods() {
    let work = tempfile::tempdir().unwrap();
    let mut review: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("bare-pod.json")).unwrap()).unwrap();
    review["request"]["object"]["metadata"]["annotations"] =
        serde_json::json!({"ward.dev/exclude-inbound-ports": "ssh"});
    let bad = work.path().join("bad.json");
    std::fs::write(&bad, serde_json::to_vec(&review).unwrap()).unwrap();

    let fail = start(&[]); // the manifest says --failure-policy=fail
    let doc = fail.review("/inject", &bad);
    assert_eq!(doc["response"]["allowed"], false, "{doc}");
    let message = doc["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("ward.dev/exclude-inbound-ports"), "{message}");
    drop(fail);

    let ignore = start(&["--failure-policy", "ignore"]);
    let doc = ignore.review("/inject", &bad);
    assert_eq!(doc["response"]["allowed"], true, "{doc}");
    assert!(doc["response"].get("patch").is_none());
    assert!(
        doc["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("exclude-inbound-ports"),
        "{doc}"
    );
    assert_eq!(
        ignore.metrics().value(
            "ward_webhook_reviews_total",
            &[("endpoint", "/inject"), ("result", "ignored")]
        ),
        1.0
    );
}

#[test]
fn a_renewed_secret_is_served_and_a_bad_one_is_not() {
    let mut webhook = start(&[]);
    let dir = webhook.dir.path().to_path_buf();
    let first = webhook.served_serial();
    make_certs(&dir, "second");
    install_cert(&dir, "second");
    let second = sh(&dir, "openssl x509 -noout -serial -in second.crt").stdout();
    assert_ne!(first, second);
    wait_until(
        "the renewed certificate is served",
        Duration::from_secs(10),
        || webhook.served_serial() == second,
    );

    // A certificate that does not go with its key: counted, logged, and the last good pair
    // keeps serving.
    std::fs::copy(dir.join("first.crt"), dir.join("mismatch.crt")).unwrap();
    std::fs::copy(dir.join("second.key"), dir.join("mismatch.key")).unwrap();
    install_cert(&dir, "mismatch");
    wait_until("the bad pair is counted", Duration::from_secs(10), || {
        webhook
            .metrics()
            .value("ward_webhook_cert_reloads_total", &[("result", "error")])
            >= 1.0
    });
    assert_eq!(webhook.served_serial(), second);
    assert_eq!(webhook.probe("/ready").0, 200);
    let doc = webhook.review("/inject", &fixture("bare-pod.json"));
    assert_eq!(doc["response"]["allowed"], true);
    assert!(
        webhook.daemon.output().contains("does not hold the private key"),
        "{}",
        webhook.daemon.output()
    );

    // SIGTERM: a clean exit.
    let status = webhook.daemon.terminate(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        webhook.daemon.output()
    );
}

#[test]
fn without_its_certificate_it_starts_unready_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (port, probes) = (free_port(), free_port());
    let mut daemon = Daemon::start(
        "ward inject serve",
        Command::new(ward_bin())
            .args(["inject", "serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--probes", &format!("127.0.0.1:{probes}"), "--cert"])
            .arg(dir.path().join("tls.crt"))
            .arg("--key")
            .arg(dir.path().join("tls.key")),
        port,
    );
    let get = |path: &str| {
        run(
            Command::new(require_tool("curl")).args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://127.0.0.1:{probes}{path}"),
            ]),
            b"",
            T,
        )
        .stdout()
    };
    wait_until("the probes answer", Duration::from_secs(5), || {
        get("/live") == "200"
    });
    assert_eq!(get("/ready"), "503");
    daemon.assert_running();
    assert!(daemon.output().contains("not there yet"), "{}", daemon.output());

    // The files arrive (a csi driver or cert-manager writes them after the pod starts).
    make_certs(dir.path(), "late");
    install_cert(dir.path(), "late");
    wait_until(
        "ready once the certificate is there",
        Duration::from_secs(10),
        || get("/ready") == "200",
    );
}

#[test]
fn every_kubernetes_manifest_in_deploy_is_valid_and_a_typo_is_not() {
    let dir = repo().join("deploy/kubernetes");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            validate_manifests(&path);
            checked += 1;
        }
    }
    assert!(checked >= 3, "webhook.yaml, app.yaml, ward-config.yaml");

    // The validator is strict: an unknown field fails.
    let text = std::fs::read_to_string(dir.join("webhook.yaml")).unwrap();
    let typo = text.replace("reinvocationPolicy: IfNeeded", "reinvokePolicy: IfNeeded");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), typo).unwrap();
    let failed = std::panic::catch_unwind(|| validate_manifests(file.path()));
    assert!(failed.is_err(), "a manifest with a typo passed the validator");
}
