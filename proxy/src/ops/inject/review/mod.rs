//! The injection webhook's decisions: an AdmissionReview request in, the AdmissionReview
//! response out. No I/O here; [`super::serve`] carries it over HTTPS.
//!
//! A pod is injected by [`super::document::inject_document`], the code `ward inject` runs, so the JSON
//! Patch returned, applied to the pod, gives what `ward inject -f pod.yaml` gives.

use base64::Engine as _;
use serde_json::{Value, json};

use super::document::{Outcome, Skip, inject_annotation, inject_document};
use super::pod::{INIT, Options, SIDECAR, STATUS_ANNOTATION};
use super::yaml::Yaml;

/// The AdmissionReview version ward answers (the API server sends the first of the
/// webhook's `admissionReviewVersions` it speaks).
pub const REVIEW_VERSION: &str = "admission.k8s.io/v1";

/// What the webhook answers when it cannot decide (a review it cannot read, a pod it cannot
/// parse, annotations that are wrong). Mirrors the webhook's `failurePolicy`: `Fail` denies
/// the pod with the reason, `Ignore` admits it unchanged with the reason as a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FailurePolicy {
    /// Admit the pod without ward, with a warning (the pod then runs outside the mesh).
    Ignore,
    /// Deny the pod with the reason (fail closed: nothing runs that should have had ward).
    Fail,
}

/// Which pods a webhook endpoint is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `/inject`: pods of namespaces labelled `ward.dev/inject=enabled`; injected unless
    /// annotated `ward.dev/inject: "false"`.
    Namespace,
    /// `/inject/opt-in`: pods of other namespaces; injected only when annotated
    /// `ward.dev/inject: "true"`.
    OptIn,
}

/// What the webhook injects and how it fails.
#[derive(Debug, Clone)]
pub struct Settings {
    pub opts: Options,
    /// The webhook's own namespace; its pods are never injected.
    pub own_namespace: Option<String>,
    pub failure_policy: FailurePolicy,
}

/// What happened to one review, for the metrics and the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reviewed {
    Injected,
    Skipped(Skip),
    /// An opt-in endpoint's pod that did not ask for ward; not worth a warning.
    NotRequested,
    /// Not a Pod CREATE (the webhook configuration sends more than it should).
    NotAPod,
    /// The review or pod could not be used; admitted unchanged (`failurePolicy: Ignore`).
    Ignored,
    /// The review or pod could not be used; denied (`failurePolicy: Fail`).
    Denied,
    /// Not an AdmissionReview at all: answered 400, so the API server applies its policy.
    Invalid,
}

impl Reviewed {
    pub fn label(self) -> &'static str {
        match self {
            Reviewed::Injected => "injected",
            Reviewed::Skipped(_) => "skipped",
            Reviewed::NotRequested => "not_requested",
            Reviewed::NotAPod => "not_a_pod",
            Reviewed::Ignored => "ignored",
            Reviewed::Denied => "denied",
            Reviewed::Invalid => "invalid",
        }
    }
}

/// The answer to one review.
#[derive(Debug)]
pub struct Verdict {
    /// The HTTP status: 200 with an AdmissionReview, or 400 with a text body.
    pub status: u16,
    pub body: Vec<u8>,
    pub result: Reviewed,
    /// `namespace/name` of the pod (`generateName` plus `*` before the API server names it).
    pub pod: String,
    pub uid: String,
    /// The reason for a skip, an ignore or a denial, and any warnings; for the log line.
    pub message: String,
}

/// The API server shows each warning to the user and may cut those over 256 characters.
const MAX_WARNING: usize = 256;

/// The system namespaces no pod of which is injected, whatever their labels say.
const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

fn clip(text: &str) -> String {
    if text.len() <= MAX_WARNING {
        return text.to_owned();
    }
    let mut end = MAX_WARNING - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// Answers one AdmissionReview request body arriving at `mode`'s endpoint.
pub fn review(body: &[u8], mode: Mode, settings: &Settings) -> Verdict {
    let invalid = |message: String| Verdict {
        status: 400,
        body: format!("{message}\n").into_bytes(),
        result: Reviewed::Invalid,
        pod: String::new(),
        uid: String::new(),
        message,
    };
    let doc: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return invalid(format!("the body is not JSON ({e}); send an AdmissionReview")),
    };
    if doc.get("kind").and_then(Value::as_str) != Some("AdmissionReview") {
        return invalid("the body is not an AdmissionReview (kind is not \"AdmissionReview\")".into());
    }
    let Some(request) = doc.get("request").filter(|r| r.is_object()) else {
        return invalid("the AdmissionReview has no request".into());
    };
    let Some(uid) = request
        .get("uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
    else {
        return invalid("the AdmissionReview request has no uid".into());
    };
    let version = doc.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let mut answer = Answer {
        version: if version.is_empty() {
            REVIEW_VERSION
        } else {
            version
        }
        .to_owned(),
        uid: uid.to_owned(),
        pod: pod_name(request),
        warnings: Vec::new(),
    };
    if version != REVIEW_VERSION {
        return answer.fail(
            settings.failure_policy,
            format!(
                "ward answers {REVIEW_VERSION} reviews, not {version:?}: set admissionReviewVersions: [\"v1\"] in the MutatingWebhookConfiguration"
            ),
        );
    }
    let kind = request.get("kind");
    let field = |k: &str| kind.and_then(|v| v.get(k)).and_then(Value::as_str);
    let operation = request
        .get("operation")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let sub_resource = request
        .get("subResource")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if (field("group"), field("version"), field("kind")) != (Some(""), Some("v1"), Some("Pod"))
        || operation != "CREATE"
        || !sub_resource.is_empty()
    {
        let what = format!(
            "{}/{} {operation}",
            field("version").unwrap_or("?"),
            field("kind").unwrap_or("?")
        );
        answer.warnings.push(format!(
            "ward's injection webhook handles Pod CREATE only, not {what}; admitted unchanged (check the MutatingWebhookConfiguration's rules)"
        ));
        return answer.allow(Reviewed::NotAPod, None);
    }
    let namespace = request
        .get("namespace")
        .and_then(Value::as_str)
        .or_else(|| {
            request
                .pointer("/object/metadata/namespace")
                .and_then(Value::as_str)
        })
        .unwrap_or_default();
    if settings
        .own_namespace
        .as_deref()
        .is_some_and(|own| own == namespace)
    {
        return answer.skip(Skip::OwnNamespace);
    }
    if SYSTEM_NAMESPACES.contains(&namespace) {
        return answer.skip(Skip::SystemNamespace);
    }
    let Some(object) = request.get("object").filter(|o| o.is_object()) else {
        return answer.fail(
            settings.failure_policy,
            "the review carries no pod (request.object)".into(),
        );
    };
    if already_injected(object) {
        return answer.skip(Skip::AlreadyInjected);
    }
    if mode == Mode::OptIn {
        let note = object
            .pointer(&format!("/metadata/annotations/{}", "ward.dev~1inject"))
            .and_then(Value::as_str);
        match note.map(inject_annotation) {
            Some(Ok(true)) => {}
            None | Some(Ok(false)) => return answer.allow(Reviewed::NotRequested, None),
            Some(Err(e)) => return answer.fail(settings.failure_policy, e),
        }
    }
    let mut pod: Yaml = match serde_json::from_value(object.clone()) {
        Ok(p) => p,
        Err(e) => return answer.fail(settings.failure_policy, format!("cannot read the pod: {e}")),
    };
    let mut warnings = Vec::new();
    let outcome = match inject_document(&mut pod, &settings.opts, &mut warnings) {
        Ok(o) => o,
        Err(e) => return answer.fail(settings.failure_policy, format!("cannot inject ward: {e}")),
    };
    match outcome {
        Outcome::Skipped(why) => answer.skip(why),
        Outcome::Unchanged => answer.fail(settings.failure_policy, "the object is not a Pod".into()),
        Outcome::Injected => {
            let after = match serde_json::to_value(&pod) {
                Ok(v) => v,
                Err(e) => {
                    return answer.fail(settings.failure_policy, format!("cannot write the pod back: {e}"));
                }
            };
            let patch = json_patch::diff(object, &after);
            let patch = match serde_json::to_vec(&patch) {
                Ok(p) => p,
                Err(e) => {
                    return answer.fail(settings.failure_policy, format!("cannot write the patch: {e}"));
                }
            };
            answer.warnings.extend(warnings);
            answer.allow(Reviewed::Injected, Some(&patch))
        }
    }
}

/// Whether ward is in the pod already: its status annotation or one of its containers.
fn already_injected(pod: &Value) -> bool {
    let status = pod
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(STATUS_ANNOTATION));
    let named = |list: &str| {
        pod.pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter().any(
                    |c| matches!(c.get("name").and_then(Value::as_str), Some(n) if n == SIDECAR || n == INIT),
                )
            })
    };
    status.is_some() || named("initContainers") || named("containers")
}

/// `namespace/name`, or `namespace/generateName*` for a pod the API server has yet to name.
fn pod_name(request: &Value) -> String {
    let ns = request.get("namespace").and_then(Value::as_str).unwrap_or("");
    let meta = request.pointer("/object/metadata");
    let text = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let name = match (text("name"), text("generateName")) {
        (Some(n), _) => n.to_owned(),
        (None, Some(g)) => format!("{g}*"),
        (None, None) => request
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("(unnamed)")
            .to_owned(),
    };
    format!("{ns}/{name}")
}

/// The parts of a response shared by every answer.
struct Answer {
    version: String,
    uid: String,
    pod: String,
    warnings: Vec<String>,
}

impl Answer {
    fn verdict(self, result: Reviewed, response: Value, message: String) -> Verdict {
        let body = json!({
            "apiVersion": self.version,
            "kind": "AdmissionReview",
            "response": response,
        });
        Verdict {
            status: 200,
            body: serde_json::to_vec(&body).unwrap_or_default(),
            result,
            pod: self.pod,
            uid: self.uid,
            message,
        }
    }

    fn allow(self, result: Reviewed, patch: Option<&[u8]>) -> Verdict {
        let mut response = json!({ "uid": self.uid, "allowed": true });
        if let Some(patch) = patch {
            response["patchType"] = json!("JSONPatch");
            response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
        }
        let message = self.warnings.join("; ");
        if !self.warnings.is_empty() {
            response["warnings"] = json!(self.warnings.iter().map(|w| clip(w)).collect::<Vec<_>>());
        }
        self.verdict(result, response, message)
    }

    fn skip(mut self, why: Skip) -> Verdict {
        let text = format!("ward not injected: {}", why.why());
        if !self.warnings.contains(&text) {
            self.warnings.push(text);
        }
        self.allow(Reviewed::Skipped(why), None)
    }

    fn fail(mut self, policy: FailurePolicy, reason: String) -> Verdict {
        match policy {
            FailurePolicy::Ignore => {
                self.warnings.push(format!(
                    "ward not injected: {reason} (admitted without ward: failure policy Ignore)"
                ));
                let mut v = self.allow(Reviewed::Ignored, None);
                v.message = reason;
                v
            }
            FailurePolicy::Fail => {
                let response = json!({
                    "uid": self.uid,
                    "allowed": false,
                    "status": {
                        "code": 400,
                        "reason": "BadRequest",
                        "message": format!("ward's injection webhook: {reason}"),
                    },
                });
                self.verdict(Reviewed::Denied, response, reason)
            }
        }
    }
}

#[cfg(test)]
mod tests;
