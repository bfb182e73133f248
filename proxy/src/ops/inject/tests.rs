#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::document::*;
use super::pod::*;
use super::*;

const POD_SPEC: &str = "      containers:\n      - name: app\n        image: example/app:1\n        ports:\n        - containerPort: 8080\n";

/// A workload of `kind` whose pod template holds `POD_SPEC`, indented for its place.
fn workload(kind: &str) -> String {
    let spec = |by: usize| {
        // Re-indent POD_SPEC (written at 6) to `by`.
        POD_SPEC
            .lines()
            .map(|l| {
                let rest = l.strip_prefix("      ").unwrap_or(l);
                format!("{}{rest}\n", " ".repeat(by))
            })
            .collect::<String>()
    };
    let api = match kind {
        "Pod" | "ReplicationController" => "v1",
        "Job" | "CronJob" => "batch/v1",
        _ => "apps/v1",
    };
    let head = format!(
        "apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: {}\n",
        kind.to_lowercase()
    );
    match kind {
        "Pod" => format!("{head}spec:\n{}", spec(2)),
        "CronJob" => format!(
            "{head}spec:\n  schedule: \"*/5 * * * *\"\n  jobTemplate:\n    spec:\n      template:\n        metadata:\n          labels: {{app: x}}\n        spec:\n          restartPolicy: Never\n{}",
            spec(10)
        ),
        "Job" => format!(
            "{head}spec:\n  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n{}",
            spec(6)
        ),
        _ => format!(
            "{head}spec:\n  selector:\n    matchLabels: {{app: x}}\n  template:\n    metadata:\n      labels: {{app: x}}\n    spec:\n{}",
            spec(6)
        ),
    }
}

const KINDS: [&str; 8] = [
    "Pod",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "ReplicationController",
    "Job",
    "CronJob",
];

fn inject(text: &str) -> Injected {
    inject_text(text, "test.yaml", &Options::default()).unwrap()
}

fn pod_spec(doc: &Yaml) -> &Mapping {
    let kind = doc.at(&["kind"]).and_then(Yaml::as_str).unwrap();
    let mut path: Vec<&str> = template_path(kind).unwrap().to_vec();
    path.push("spec");
    doc.at(&path).and_then(Yaml::as_map).unwrap()
}

fn names(list: Option<&Yaml>) -> Vec<String> {
    match list {
        Some(Yaml::Seq(items)) => items
            .iter()
            .map(|c| c.at(&["name"]).and_then(Yaml::as_str).unwrap_or("?").to_owned())
            .collect(),
        _ => vec![],
    }
}

fn container<'a>(spec: &'a Mapping, list: &str, name: &str) -> &'a Yaml {
    let Some(Yaml::Seq(items)) = spec.get(list) else {
        panic!("no {list}")
    };
    items
        .iter()
        .find(|c| c.at(&["name"]).and_then(Yaml::as_str) == Some(name))
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

fn strs(y: Option<&Yaml>) -> Vec<String> {
    match y {
        Some(Yaml::Seq(items)) => items.iter().map(|i| i.as_str().unwrap().to_owned()).collect(),
        other => panic!("not a list of strings: {other:?}"),
    }
}

#[test]
fn every_workload_kind_gets_the_sidecar_and_the_capture() {
    for kind in KINDS {
        let out = inject(&workload(kind));
        assert_eq!(
            out.documents,
            [(format!("{kind}/{}", kind.to_lowercase()), Outcome::Injected)]
        );
        let docs = parse_documents(&out.yaml).unwrap();
        assert_eq!(docs.len(), 1, "{kind}");
        let spec = pod_spec(&docs[0]);
        // ward-init first, then the native sidecar; the app stays the only container.
        assert_eq!(names(spec.get("initContainers")), [INIT, SIDECAR], "{kind}");
        assert_eq!(names(spec.get("containers")), ["app"], "{kind}");
        assert_eq!(
            names(spec.get("volumes")),
            [CONFIG_VOLUME, IDENTITY_VOLUME],
            "{kind}"
        );

        let ward = container(spec, "initContainers", SIDECAR);
        assert_eq!(
            ward.at(&["restartPolicy"]).and_then(Yaml::as_str),
            Some("Always"),
            "{kind}"
        );
        assert_eq!(ward.at(&["securityContext", "runAsUser"]), Some(&Yaml::Int(1337)));
        assert_eq!(
            ward.at(&["securityContext", "runAsGroup"]),
            Some(&Yaml::Int(1337))
        );
        assert_eq!(
            ward.at(&["securityContext", "runAsNonRoot"]),
            Some(&Yaml::Bool(true))
        );
        assert_eq!(
            ward.at(&["securityContext", "readOnlyRootFilesystem"]),
            Some(&Yaml::Bool(true))
        );
        assert_eq!(
            strs(ward.at(&["securityContext", "capabilities", "drop"])),
            ["ALL"]
        );
        for probe in ["readinessProbe", "startupProbe"] {
            assert_eq!(
                ward.at(&[probe, "httpGet", "path"]).and_then(Yaml::as_str),
                Some("/ready")
            );
            assert_eq!(ward.at(&[probe, "httpGet", "port"]), Some(&Yaml::Int(15020)));
        }
        assert_eq!(
            strs(ward.at(&["lifecycle", "preStop", "exec", "command"])),
            ["/ward", "shutdown", "--admin", "127.0.0.1:15000"]
        );
        assert_eq!(strs(ward.at(&["args"])), ["run", "-c", "/etc/ward/ward.yaml"]);
        let Some(Yaml::Seq(ports)) = ward.at(&["ports"]) else {
            panic!("the sidecar declares its ports")
        };
        let ports: Vec<_> = ports
            .iter()
            .map(|p| (p.at(&["name"]).and_then(Yaml::as_str), p.at(&["containerPort"])))
            .collect();
        assert_eq!(
            ports,
            [
                (Some("ward-inbound"), Some(&Yaml::Int(15006))),
                (Some("ward-hbone"), Some(&Yaml::Int(15008))),
                (Some("ward-probes"), Some(&Yaml::Int(15020))),
            ],
            "the HBONE port is opened beside the inbound and probes ports"
        );
        let mounts = names(ward.at(&["volumeMounts"]));
        assert_eq!(mounts, [CONFIG_VOLUME, IDENTITY_VOLUME]);

        let init = container(spec, "initContainers", INIT);
        assert!(
            init.at(&["restartPolicy"]).is_none(),
            "ward-init runs to completion"
        );
        assert_eq!(strs(init.at(&["args"]))[..2], ["iptables", "install"]);
        assert_eq!(
            strs(init.at(&["securityContext", "capabilities", "add"])),
            ["NET_ADMIN", "NET_RAW"]
        );
        assert_eq!(init.at(&["securityContext", "runAsUser"]), Some(&Yaml::Int(0)));
        assert_eq!(
            init.at(&["securityContext", "runAsNonRoot"]),
            Some(&Yaml::Bool(false))
        );

        let vols = spec.get("volumes").unwrap();
        let Yaml::Seq(vols) = vols else { panic!() };
        assert_eq!(
            vols[0].at(&["configMap", "name"]).and_then(Yaml::as_str),
            Some("ward-config")
        );
        assert_eq!(
            vols[1].at(&["csi", "driver"]).and_then(Yaml::as_str),
            Some("spiffe.csi.cert-manager.io")
        );
        let status = if kind == "Pod" {
            docs[0].at(&["metadata", "annotations", STATUS_ANNOTATION])
        } else {
            let mut p: Vec<&str> = template_path(kind).unwrap().to_vec();
            p.extend(["metadata", "annotations", STATUS_ANNOTATION]);
            docs[0].at(&p)
        };
        assert_eq!(status.and_then(Yaml::as_str), Some("injected"), "{kind}");
    }
}

#[test]
fn jobs_complete_because_ward_is_a_native_sidecar() {
    // A Job completes when its containers exit; ward is not among them (it is an init
    // container with restartPolicy Always, which Kubernetes stops after the app ends).
    for kind in ["Job", "CronJob"] {
        let out = inject(&workload(kind));
        let docs = parse_documents(&out.yaml).unwrap();
        let spec = pod_spec(&docs[0]);
        assert_eq!(spec.get("restartPolicy").and_then(Yaml::as_str), Some("Never"));
        assert!(!names(spec.get("containers")).iter().any(|n| n == SIDECAR));
        let ward = container(spec, "initContainers", SIDECAR);
        assert_eq!(ward.at(&["restartPolicy"]).and_then(Yaml::as_str), Some("Always"));
    }
}

#[test]
fn injecting_twice_is_injecting_once() {
    let all: Vec<String> = KINDS.iter().map(|k| workload(k)).collect();
    let text = all.join("---\n");
    let once = inject(&text).yaml;
    let twice = inject(&once).yaml;
    assert_eq!(once, twice);
    // Also with annotations, another image and the SPIRE identity.
    let opts = Options {
        image: "registry.example/ward:dev".into(),
        init_image: "registry.example/ward-init:dev".into(),
        identity: IdentitySource::Spire,
        config_map: "mesh".into(),
    };
    let annotated = workload("Deployment").replace(
        "    metadata:\n      labels: {app: x}\n",
        "    metadata:\n      labels: {app: x}\n      annotations:\n        ward.dev/exclude-inbound-ports: \"22\"\n",
    );
    let once = inject_text(&annotated, "a", &opts).unwrap().yaml;
    let twice = inject_text(&once, "a", &opts).unwrap().yaml;
    assert_eq!(once, twice);
    assert_eq!(once.matches("name: ward\n").count(), 1, "{once}");
}

#[test]
fn other_kinds_pass_unchanged_byte_for_byte() {
    let text = "# leading comment\napiVersion: v1\nkind: Service\nmetadata:\n  name: web  # kept\nspec:\n  ports: [{port: 80}]\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata:\n  on: \"yes\"\n  n: 0777\n---\n# only a comment\n";
    let out = inject(text);
    assert_eq!(out.yaml, text);
    assert!(
        out.documents.iter().all(|(_, o)| *o == Outcome::Unchanged),
        "{:?}",
        out.documents
    );
    assert_eq!(out.documents.len(), 2);
}

#[test]
fn multi_document_input_keeps_its_order_and_separators() {
    let text = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: web}}\n---\n{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\n",
        workload("Deployment")
    );
    let out = inject(&text);
    let docs = parse_documents(&out.yaml).unwrap();
    let kinds: Vec<&str> = docs
        .iter()
        .map(|d| d.at(&["kind"]).and_then(Yaml::as_str).unwrap())
        .collect();
    assert_eq!(kinds, ["ServiceAccount", "Deployment", "Service"]);
    assert!(
        out.yaml
            .starts_with("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: web}\n---\n")
    );
    assert!(
        out.yaml
            .ends_with("---\napiVersion: v1\nkind: Service\nmetadata: {name: web}\n")
    );
}

#[test]
fn annotations_are_honoured() {
    let with = |notes: &str| {
        workload("Deployment").replace(
            "    metadata:\n      labels: {app: x}\n",
            &format!("    metadata:\n      labels: {{app: x}}\n      annotations:\n{notes}"),
        )
    };
    let text = with(
        "        ward.dev/exclude-inbound-ports: \"22, 9000-9010\"\n        ward.dev/exclude-outbound-ports: \"5432\"\n        ward.dev/exclude-outbound-cidrs: 169.254.169.254/32,10.0.0.0/8\n        ward.dev/include-inbound-ports: \"8080\"\n        ward.dev/config-map: web-ward\n",
    );
    let docs = parse_documents(&inject(&text).yaml).unwrap();
    let spec = pod_spec(&docs[0]);
    let args = strs(container(spec, "initContainers", INIT).at(&["args"]));
    for want in [
        "--exclude-inbound-ports=22,9000-9010",
        "--exclude-outbound-ports=5432",
        "--exclude-outbound-cidrs=169.254.169.254/32,10.0.0.0/8",
        "--include-inbound-ports=8080",
    ] {
        assert!(args.iter().any(|a| a == want), "{want} missing from {args:?}");
    }
    let Some(Yaml::Seq(vols)) = spec.get("volumes") else {
        panic!()
    };
    assert_eq!(
        vols[0].at(&["configMap", "name"]).and_then(Yaml::as_str),
        Some("web-ward")
    );

    // inject: "false" skips, and the document stays as written.
    let off = with("        ward.dev/inject: \"false\"\n");
    let out = inject(&off);
    assert_eq!(out.yaml, off);
    assert_eq!(out.documents[0].1, Outcome::Skipped(Skip::OptedOut));

    // On the workload's own metadata too.
    let off = workload("StatefulSet").replace(
        "metadata:\n  name: statefulset\n",
        "metadata:\n  name: statefulset\n  annotations: {ward.dev/inject: \"false\"}\n",
    );
    assert_eq!(inject(&off).documents[0].1, Outcome::Skipped(Skip::OptedOut));
}

#[test]
fn bad_annotations_and_workloads_are_clear_errors() {
    let with = |notes: &str| {
        workload("Deployment").replace(
            "    metadata:\n      labels: {app: x}\n",
            &format!("    metadata:\n      labels: {{app: x}}\n      annotations:\n{notes}"),
        )
    };
    let err = |text: &str| {
        inject_text(text, "bad.yaml", &Options::default())
            .unwrap_err()
            .to_string()
    };
    let e = err(&with("        ward.dev/exclude-outbound-cidrs: nonsense\n"));
    assert!(e.contains("bad.yaml: document 1 (Deployment deployment)"), "{e}");
    assert!(
        e.contains("ward.dev/exclude-outbound-cidrs") && e.contains("nonsense"),
        "{e}"
    );
    let e = err(&with("        ward.dev/inject: maybe\n"));
    assert!(e.contains("ward.dev/inject") && e.contains("\"false\""), "{e}");
    let e = err("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: empty}\nspec: {replicas: 1}\n");
    assert!(e.contains("spec.template"), "{e}");
    let e = err("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n");
    assert!(e.contains("no containers"), "{e}");
}

#[test]
fn malformed_yaml_is_an_error_not_a_panic() {
    for text in [
        "kind: Pod\nspec: [unclosed\n",
        "a: b\n c: d\n",
        "kind: Deployment\nspec:\n  template: *missing\n",
        "a: [1, 2\nb: 3\n",
        "key: \"unterminated\n",
    ] {
        let e = inject_text(text, "broken.yaml", &Options::default()).unwrap_err();
        assert!(e.to_string().starts_with("broken.yaml: not valid YAML: "), "{e}");
    }
    // Odd but valid: scalars, sequences, nulls at the top level pass unchanged.
    for text in [
        "just a string\n",
        "- 1\n- 2\n",
        "---\n---\n",
        "",
        "kind: 42\n",
        "kind: Pod\n",
    ] {
        let r = inject_text(text, "odd.yaml", &Options::default());
        if text == "kind: Pod\n" {
            assert!(r.unwrap_err().to_string().contains("nothing to inject"));
        } else {
            assert_eq!(r.unwrap().yaml, text);
        }
    }
}

#[test]
fn scalars_round_trip() {
    let text = "a: \"1\"\nb: 1\nc: true\nd: \"true\"\ne: 1.5\nf: \"\"\ng: null\nh: \"yes\"\ni: \"0777\"\nj: \"multi\\nline\\n\"\nk: \"with: colon\"\nl: \"#hash\"\nm: -3\nn: 18446744073709551615\no: \"~\"\n\"8080\": x\non: y\n";
    let docs = parse_documents(text).unwrap();
    let back = to_yaml(&docs[0]).unwrap();
    assert_eq!(parse_documents(&back).unwrap(), docs, "{back}");
    let m = docs[0].as_map().unwrap();
    assert_eq!(m.get("a"), Some(&Yaml::Str("1".into())));
    assert_eq!(m.get("b"), Some(&Yaml::Int(1)));
    assert_eq!(m.get("c"), Some(&Yaml::Bool(true)));
    assert_eq!(m.get("d"), Some(&Yaml::Str("true".into())));
    assert_eq!(m.get("g"), Some(&Yaml::Null));
    assert_eq!(m.get("n"), Some(&Yaml::UInt(u64::MAX)));
    // Keys keep their text and their order.
    let keys: Vec<&str> = m.0.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys.last(), Some(&"on"));
    assert!(keys.contains(&"8080"));
}

#[test]
fn lists_are_walked() {
    let text = format!(
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {{name: s}}\n- {}",
        workload("Pod").replace('\n', "\n  ").trim_end()
    );
    let out = inject(&format!("{text}\n"));
    assert_eq!(out.documents[0].1, Outcome::Injected);
    let docs = parse_documents(&out.yaml).unwrap();
    let Some(Yaml::Seq(items)) = docs[0].at(&["items"]) else {
        panic!()
    };
    assert_eq!(names(items[1].at(&["spec", "initContainers"])), [INIT, SIDECAR]);
    assert!(items[0].at(&["spec"]).is_none());
}

#[test]
fn spire_identity_mounts_the_socket_and_sets_the_endpoint() {
    for (identity, vol_key) in [
        (IdentitySource::Spire, "csi"),
        (IdentitySource::SpireHostpath, "hostPath"),
    ] {
        let opts = Options {
            identity,
            ..Options::default()
        };
        let out = inject_text(&workload("Deployment"), "x", &opts).unwrap();
        let docs = parse_documents(&out.yaml).unwrap();
        let spec = pod_spec(&docs[0]);
        let Some(Yaml::Seq(vols)) = spec.get("volumes") else {
            panic!()
        };
        assert!(vols[1].at(&[vol_key]).is_some(), "{identity:?}");
        let ward = container(spec, "initContainers", SIDECAR);
        let Some(Yaml::Seq(env)) = ward.at(&["env"]) else {
            panic!()
        };
        let endpoint = env
            .iter()
            .find(|e| e.at(&["name"]).and_then(Yaml::as_str) == Some("SPIFFE_ENDPOINT_SOCKET"))
            .and_then(|e| e.at(&["value"]))
            .and_then(Yaml::as_str);
        assert_eq!(endpoint, Some("unix:///spiffe-workload-api/spire-agent.sock"));
    }
}

#[test]
fn existing_init_containers_run_after_ward() {
    let text = workload("Deployment").replace(
        "    spec:\n      containers:",
        "    spec:\n      initContainers:\n      - name: migrate\n        image: example/migrate\n      containers:",
    );
    let docs = parse_documents(&inject(&text).yaml).unwrap();
    assert_eq!(
        names(pod_spec(&docs[0]).get("initContainers")),
        [INIT, SIDECAR, "migrate"]
    );
}

#[test]
fn app_probes_through_ward_are_warned_about() {
    let text = workload("Deployment").replace(
        "        - containerPort: 8080\n",
        "        - containerPort: 8080\n        readinessProbe: {httpGet: {path: /healthz, port: 8080}}\n",
    );
    let out = inject(&text);
    assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
    assert!(out.warnings[0].contains("readinessProbe") && out.warnings[0].contains("8080"));
}

#[test]
fn host_network_pods_are_skipped_with_a_warning() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: node-agent\nspec:\n  hostNetwork: true\n  containers:\n  - name: agent\n    image: agent:1\n";
    let out = inject_text(text, "t", &Options::default()).unwrap();
    assert_eq!(out.yaml, text, "a host-network pod is written back as it was");
    assert_eq!(out.documents[0].1, Outcome::Skipped(Skip::HostNetwork));
    assert!(
        out.warnings
            .iter()
            .any(|w| w.contains("Pod node-agent") && w.contains("hostNetwork")),
        "{:?}",
        out.warnings
    );
    // hostNetwork: false is an ordinary pod.
    let out = inject_text(&text.replace("true", "false"), "t", &Options::default()).unwrap();
    assert_eq!(out.documents[0].1, Outcome::Injected);
}
