//! The webhook's answers to AdmissionReviews shaped as the API server sends them
//! (tests/fixtures/admission), checked against `ward inject` on the same pod.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use serde_json::{Value, json};

use super::*;
use crate::ops::inject::{Options, inject_text, parse_documents};

const BARE: &str = include_str!("../../../../../tests/fixtures/admission/bare-pod.json");
const REPLICASET: &str = include_str!("../../../../../tests/fixtures/admission/replicaset-pod.json");
const JOB: &str = include_str!("../../../../../tests/fixtures/admission/job-pod.json");
const HOST_NETWORK: &str = include_str!("../../../../../tests/fixtures/admission/host-network-pod.json");

fn settings(failure_policy: FailurePolicy) -> Settings {
    Settings {
        opts: Options::default(),
        own_namespace: Some("ward-system".into()),
        failure_policy,
    }
}

fn answer(body: &[u8], mode: Mode, policy: FailurePolicy) -> (Verdict, Value) {
    let v = review(body, mode, &settings(policy));
    let doc = if v.status == 200 {
        serde_json::from_slice(&v.body).unwrap()
    } else {
        Value::Null
    };
    (v, doc)
}

/// The pod with the response's patch applied.
fn patched(review_text: &str, response: &Value) -> Value {
    let review: Value = serde_json::from_str(review_text).unwrap();
    let mut pod = review["request"]["object"].clone();
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    json_patch::patch(&mut pod, &patch).unwrap();
    pod
}

/// What `ward inject -f` gives for the review's pod (JSON is YAML), as JSON.
fn cli_injected(review_text: &str) -> Value {
    let review: Value = serde_json::from_str(review_text).unwrap();
    let text = serde_json::to_string_pretty(&review["request"]["object"]).unwrap();
    let out = inject_text(&text, "pod.json", &Options::default()).unwrap();
    assert_eq!(out.documents[0].1, Outcome::Injected);
    let doc = parse_documents(&out.yaml).unwrap().remove(0);
    serde_json::to_value(&doc).unwrap()
}

fn with_object(review_text: &str, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut review: Value = serde_json::from_str(review_text).unwrap();
    edit(&mut review);
    serde_json::to_vec(&review).unwrap()
}

#[test]
fn pods_get_exactly_what_the_cli_gives() {
    for (name, text) in [("bare", BARE), ("replicaset", REPLICASET), ("job", JOB)] {
        let (v, doc) = answer(text.as_bytes(), Mode::Namespace, FailurePolicy::Fail);
        assert_eq!(v.result, Reviewed::Injected, "{name}: {}", v.message);
        assert_eq!(doc["apiVersion"], REVIEW_VERSION);
        assert_eq!(doc["kind"], "AdmissionReview");
        let response = &doc["response"];
        let review: Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            response["uid"], review["request"]["uid"],
            "{name}: the uid is echoed"
        );
        assert_eq!(response["allowed"], true);
        let pod = patched(text, response);
        assert_eq!(pod, cli_injected(text), "{name}: patch applied == ward inject");
        // The app containers, the service-account volume and the defaults are untouched.
        let before = &review["request"]["object"];
        assert_eq!(pod["spec"]["containers"], before["spec"]["containers"], "{name}");
        assert_eq!(pod["metadata"]["labels"], before["metadata"]["labels"], "{name}");
        let inits: Vec<&str> = pod["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(inits, [INIT, SIDECAR], "{name}");
        assert_eq!(
            pod["metadata"]["annotations"][STATUS_ANNOTATION], "injected",
            "{name}"
        );
    }
}

#[test]
fn the_replicaset_pod_keeps_its_generate_name_and_annotations() {
    let (v, doc) = answer(REPLICASET.as_bytes(), Mode::Namespace, FailurePolicy::Fail);
    assert_eq!(v.pod, "shop/web-7d9f8b6c5d-*");
    let pod = patched(REPLICASET, &doc["response"]);
    assert_eq!(pod["metadata"]["generateName"], "web-7d9f8b6c5d-");
    assert!(pod["metadata"].get("name").is_none());
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
    // Its annotation reached the capture arguments.
    let init = &pod["spec"]["initContainers"][0];
    assert!(
        init["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--exclude-outbound-cidrs=169.254.169.254/32"),
        "{init}"
    );
    // Its HTTP readiness probe through ward is worth a warning.
    let warnings = doc["response"]["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("readinessProbe")),
        "{warnings:?}"
    );
    assert!(warnings.iter().all(|w| w.as_str().unwrap().len() <= 256));
}

#[test]
fn the_job_pod_sidecar_does_not_keep_it_alive() {
    let (_, doc) = answer(JOB.as_bytes(), Mode::Namespace, FailurePolicy::Fail);
    let pod = patched(JOB, &doc["response"]);
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    // A native sidecar: an init container with restartPolicy Always ends with the Job's app.
    assert_eq!(pod["spec"]["initContainers"][1]["restartPolicy"], "Always");
    assert_eq!(
        pod["metadata"]["finalizers"][0],
        "batch.kubernetes.io/job-tracking"
    );
}

#[test]
fn skips_say_why() {
    let skipped = |body: &[u8], mode, why: Skip| {
        let (v, doc) = answer(body, mode, FailurePolicy::Fail);
        assert_eq!(v.result, Reviewed::Skipped(why), "{}", v.message);
        let response = &doc["response"];
        assert_eq!(response["allowed"], true);
        assert!(response.get("patch").is_none(), "{response}");
        let warnings = response["warnings"].as_array().unwrap();
        assert!(
            warnings.iter().any(|w| w.as_str().unwrap().contains(why.why())),
            "{warnings:?}"
        );
    };
    skipped(HOST_NETWORK.as_bytes(), Mode::Namespace, Skip::HostNetwork);

    // Already injected: the webhook's own result coming round again (reinvocationPolicy).
    let (_, doc) = answer(REPLICASET.as_bytes(), Mode::Namespace, FailurePolicy::Fail);
    let injected = patched(REPLICASET, &doc["response"]);
    let again = with_object(REPLICASET, |r| r["request"]["object"] = injected);
    skipped(&again, Mode::Namespace, Skip::AlreadyInjected);
    // ... or only a container named ward, without the annotation.
    let named = with_object(BARE, |r| {
        r["request"]["object"]["spec"]["containers"][0]["name"] = json!("ward");
    });
    skipped(&named, Mode::Namespace, Skip::AlreadyInjected);

    let opted_out = with_object(BARE, |r| {
        r["request"]["object"]["metadata"]["annotations"] = json!({"ward.dev/inject": "false"});
    });
    skipped(&opted_out, Mode::Namespace, Skip::OptedOut);

    let own = with_object(BARE, |r| r["request"]["namespace"] = json!("ward-system"));
    skipped(&own, Mode::Namespace, Skip::OwnNamespace);
    let system = with_object(BARE, |r| r["request"]["namespace"] = json!("kube-system"));
    skipped(&system, Mode::OptIn, Skip::SystemNamespace);
}

#[test]
fn opt_in_needs_the_annotation() {
    let (v, doc) = answer(BARE.as_bytes(), Mode::OptIn, FailurePolicy::Fail);
    assert_eq!(v.result, Reviewed::NotRequested);
    assert_eq!(doc["response"]["allowed"], true);
    assert!(doc["response"].get("patch").is_none());
    assert!(
        doc["response"].get("warnings").is_none(),
        "no warning for pods that did not ask"
    );

    let opted_in = with_object(BARE, |r| {
        r["request"]["object"]["metadata"]["annotations"] = json!({"ward.dev/inject": "true"});
    });
    let (v, _) = answer(&opted_in, Mode::OptIn, FailurePolicy::Fail);
    assert_eq!(v.result, Reviewed::Injected);

    let typo = with_object(BARE, |r| {
        r["request"]["object"]["metadata"]["annotations"] = json!({"ward.dev/inject": "ture"});
    });
    let (v, doc) = answer(&typo, Mode::OptIn, FailurePolicy::Fail);
    assert_eq!(v.result, Reviewed::Denied);
    assert!(
        doc["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("\"ture\"")
    );
}

#[test]
fn what_cannot_be_used_follows_the_failure_policy() {
    let bad_annotation = with_object(BARE, |r| {
        r["request"]["object"]["metadata"]["annotations"] = json!({"ward.dev/exclude-inbound-ports": "http"});
    });
    let no_containers = with_object(BARE, |r| {
        r["request"]["object"]["spec"]["containers"] = json!([]);
    });
    let not_a_map = with_object(BARE, |r| r["request"]["object"]["spec"] = json!("oops"));
    let v1beta1 = with_object(BARE, |r| r["apiVersion"] = json!("admission.k8s.io/v1beta1"));
    let no_object = with_object(BARE, |r| r["request"]["object"] = Value::Null);
    for (name, body, says) in [
        ("bad annotation", bad_annotation, "exclude-inbound-ports"),
        ("no containers", no_containers, "no containers"),
        ("spec not a map", not_a_map, "spec"),
        ("v1beta1", v1beta1, "admissionReviewVersions"),
        ("no object", no_object, "request.object"),
    ] {
        let (v, doc) = answer(&body, Mode::Namespace, FailurePolicy::Fail);
        assert_eq!(v.result, Reviewed::Denied, "{name}");
        let response = &doc["response"];
        assert_eq!(response["allowed"], false, "{name}");
        assert_eq!(response["uid"], "0b4c6d2e-1f3a-4b5c-8d7e-9f0a1b2c3d4e", "{name}");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{name}: {message}");
        if name == "v1beta1" {
            assert_eq!(
                doc["apiVersion"], "admission.k8s.io/v1beta1",
                "answered in its own version"
            );
        }

        let (v, doc) = answer(&body, Mode::Namespace, FailurePolicy::Ignore);
        assert_eq!(v.result, Reviewed::Ignored, "{name}");
        let response = &doc["response"];
        assert_eq!(response["allowed"], true, "{name}");
        assert!(response.get("patch").is_none(), "{name}");
        let warning = response["warnings"][0].as_str().unwrap();
        assert!(
            warning.contains(says) && warning.contains("Ignore"),
            "{name}: {warning}"
        );
    }
}

#[test]
fn garbage_is_a_400_whatever_the_policy() {
    for body in [
        &b""[..],
        b"not json",
        b"{\"kind\":\"Pod\"}",
        b"{\"kind\":\"AdmissionReview\"}",
        b"{\"kind\":\"AdmissionReview\",\"request\":{}}",
        b"[1,2,3]",
        b"\xff\xfe",
    ] {
        for policy in [FailurePolicy::Fail, FailurePolicy::Ignore] {
            let v = review(body, Mode::Namespace, &settings(policy));
            assert_eq!(v.status, 400, "{body:?}");
            assert_eq!(v.result, Reviewed::Invalid);
            assert!(!v.message.is_empty());
        }
    }
}

#[test]
fn other_objects_and_operations_pass_unchanged() {
    for edit in [
        |r: &mut Value| r["request"]["operation"] = json!("UPDATE"),
        |r: &mut Value| r["request"]["kind"]["kind"] = json!("Deployment"),
        |r: &mut Value| r["request"]["subResource"] = json!("ephemeralcontainers"),
    ] {
        let body = with_object(BARE, edit);
        let (v, doc) = answer(&body, Mode::Namespace, FailurePolicy::Fail);
        assert_eq!(v.result, Reviewed::NotAPod);
        assert_eq!(doc["response"]["allowed"], true);
        assert!(doc["response"].get("patch").is_none());
    }
}
