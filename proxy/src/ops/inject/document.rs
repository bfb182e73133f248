//! One document, one pod template: what ward decides for a workload. `ward inject -f` and the
//! webhook both come here; it is the one place that decides what a pod gets.

use super::pod::*;
use super::yaml::Yaml;

/// What goes into a pod: shared by `ward inject -f` and `ward inject serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct PodArgs {
    /// The ward container image.
    #[arg(long, default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// The capture init container's image (ward with iptables).
    #[arg(long, default_value = DEFAULT_INIT_IMAGE)]
    pub init_image: String,
    /// Where ward's identity comes from.
    #[arg(long, value_enum, default_value_t = IdentitySource::Csi)]
    pub identity: IdentitySource,
    /// The ConfigMap holding ward's config under the key `ward.yaml`.
    #[arg(long, default_value = "ward-config")]
    pub config_map: String,
}

impl From<&PodArgs> for Options {
    fn from(a: &PodArgs) -> Self {
        Options {
            image: a.image.clone(),
            init_image: a.init_image.clone(),
            identity: a.identity,
            config_map: a.config_map.clone(),
        }
    }
}

/// What injection did to one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A workload: ward added (or re-added) to its pod template.
    Injected,
    /// A workload left as it is, and why.
    Skipped(Skip),
    /// Not a workload.
    Unchanged,
}

/// Why a pod is left without ward. The CLI meets the first two; the webhook all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Annotated `ward.dev/inject: "false"`.
    OptedOut,
    /// `hostNetwork: true`: the capture rules would be programmed into the node's own network
    /// namespace, and ward's ports would collide with the node's.
    HostNetwork,
    /// ward's containers or `ward.dev/status` are already there (a re-invocation, or a pod
    /// injected by `ward inject` before it reached the API server).
    AlreadyInjected,
    /// A pod in the webhook's own namespace: ward's own pods must start without ward.
    OwnNamespace,
    /// A pod in kube-system, kube-public or kube-node-lease.
    SystemNamespace,
}

impl Skip {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Skip::OptedOut => "opted_out",
            Skip::HostNetwork => "host_network",
            Skip::AlreadyInjected => "already_injected",
            Skip::OwnNamespace => "own_namespace",
            Skip::SystemNamespace => "system_namespace",
        }
    }

    /// Why, in words for the user.
    pub fn why(self) -> &'static str {
        match self {
            Skip::OptedOut => "annotated ward.dev/inject: \"false\"",
            Skip::HostNetwork => {
                "it uses hostNetwork: true; capture would rewrite the node's own network rules, so it runs without ward"
            }
            Skip::AlreadyInjected => "ward is already in it",
            Skip::OwnNamespace => "it is in the injection webhook's own namespace",
            Skip::SystemNamespace => "it is in a Kubernetes system namespace",
        }
    }
}

/// Reads a `ward.dev/inject` annotation value: `Ok(true)` to inject, `Ok(false)` to skip.
pub fn inject_annotation(value: &str) -> Result<bool, String> {
    match value.trim() {
        "false" | "disabled" | "no" => Ok(false),
        "true" | "enabled" | "yes" | "" => Ok(true),
        other => Err(format!(
            "annotation ward.dev/inject is {other:?}: write \"true\" or \"false\""
        )),
    }
}

/// `(kind, name)` of a document, for messages.
pub(super) fn describe(doc: &Yaml) -> (String, String) {
    let kind = doc.at(&["kind"]).and_then(Yaml::as_str).unwrap_or("(no kind)");
    let name = doc
        .at(&["metadata", "name"])
        .and_then(Yaml::as_str)
        .or_else(|| doc.at(&["metadata", "generateName"]).and_then(Yaml::as_str))
        .unwrap_or("(no name)");
    (kind.to_owned(), name.to_owned())
}

/// The path from a workload to its pod template (`None` for kinds without one).
pub(super) fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "ReplicationController" | "Job" => {
            Some(&["spec", "template"])
        }
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// Injects one document in place.
pub fn inject_document(
    doc: &mut Yaml,
    opts: &Options,
    warnings: &mut Vec<String>,
) -> Result<Outcome, String> {
    let Some(kind) = doc.at(&["kind"]).and_then(Yaml::as_str).map(str::to_owned) else {
        return Ok(Outcome::Unchanged);
    };
    if kind == "List" {
        let mut any = Outcome::Unchanged;
        if let Some(Yaml::Seq(items)) = doc.at_mut(&["items"]) {
            for (i, item) in items.iter_mut().enumerate() {
                let what = describe(item);
                match inject_document(item, opts, warnings)
                    .map_err(|e| format!("items[{i}] ({} {}): {e}", what.0, what.1))?
                {
                    Outcome::Injected => any = Outcome::Injected,
                    Outcome::Skipped(why) if any == Outcome::Unchanged => any = Outcome::Skipped(why),
                    _ => {}
                }
            }
        }
        return Ok(any);
    }
    let Some(path) = template_path(&kind) else {
        return Ok(Outcome::Unchanged);
    };
    let (_, name) = describe(doc);
    let workload_annotations = annotations(doc.at(&["metadata", "annotations"]));
    let Some(template) = doc.at_mut(path) else {
        return Err(format!("has no {}: nothing to inject into", path.join(".")));
    };
    let Some(template) = template.as_map_mut() else {
        return Err(format!("{} is not a mapping", path.join(".")));
    };
    // The pod template's annotations win over the workload's.
    let mut notes = workload_annotations;
    for (k, v) in annotations(
        template
            .get("metadata")
            .and_then(|m| m.as_map()?.get("annotations")),
    ) {
        notes.retain(|(key, _)| *key != k);
        notes.push((k, v));
    }
    let note = |key: &str| {
        notes
            .iter()
            .find(|(k, _)| k == &format!("{ANNOTATION_PREFIX}{key}"))
            .map(|(_, v)| v.clone())
    };
    if let Some(v) = note("inject")
        && !inject_annotation(&v)?
    {
        return Ok(Outcome::Skipped(Skip::OptedOut));
    }
    let capture = capture_args(&note)?;
    let config_map = note("config-map");
    let opts = &Options {
        config_map: config_map.unwrap_or_else(|| opts.config_map.clone()),
        ..opts.clone()
    };
    let Some(spec) = template.get_mut("spec").and_then(Yaml::as_map_mut) else {
        return Err(format!(
            "has no {}: nothing to inject into",
            path.iter()
                .chain(["spec"].iter())
                .copied()
                .collect::<Vec<_>>()
                .join(".")
        ));
    };
    if matches!(spec.get("hostNetwork"), Some(Yaml::Bool(true))) {
        warnings.push(format!(
            "{kind} {name}: not injected: {}",
            Skip::HostNetwork.why()
        ));
        return Ok(Outcome::Skipped(Skip::HostNetwork));
    }
    probe_warnings(spec, &kind, &name, warnings);
    inject_pod_spec(spec, opts, &capture)?;
    if let Some(notes) = template
        .map_entry("metadata")
        .and_then(|m| m.map_entry("annotations"))
    {
        notes.insert(STATUS_ANNOTATION, Yaml::str("injected"));
    }
    Ok(Outcome::Injected)
}
