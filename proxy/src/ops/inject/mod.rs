//! `ward inject -f manifest.yaml`: adds ward to every Pod template in Kubernetes manifests.
//!
//! For each Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job and
//! CronJob (and the items of a `List`), the pod spec gets, in this order at the front of
//! `initContainers`:
//! - `ward-init`, which runs `ward iptables install` (NET_ADMIN, NET_RAW, as root) so the pod's
//!   TCP is captured before anything else runs;
//! - `ward`, a native sidecar (`restartPolicy: Always` inside `initContainers`): it starts
//!   before the app and is ready (startup probe on `/ready`) before the app starts, it runs as
//!   UID/GID 1337 so the capture lets its own traffic through, it drains on `preStop`, and it
//!   does not keep a Job's pod alive once the app containers have exited.
//!
//! plus the volumes it mounts: the config (a ConfigMap) and the identity (csi-driver-spiffe by
//! default, or the SPIRE agent's Workload API socket). Injecting twice gives what injecting
//! once gives: ward's containers and volumes are replaced, never duplicated. Documents that are
//! not touched are written back byte for byte, comments included.
//!
//! Annotations on the pod template (or on the workload) steer it: `ward.dev/inject: "false"`
//! skips the workload; `ward.dev/exclude-inbound-ports`, `ward.dev/exclude-outbound-ports`,
//! `ward.dev/exclude-outbound-cidrs`, `ward.dev/include-inbound-ports` and
//! `ward.dev/include-outbound-cidrs` become the `ward iptables install` options of the same names;
//! `ward.dev/config-map` names the workload's ConfigMap instead of `--config-map`.

use std::path::PathBuf;

mod pod;
mod yaml;

use pod::*;
pub use pod::{
    ANNOTATION_PREFIX, CONFIG_DIR, CONFIG_VOLUME, CSI_DIR, DEFAULT_IMAGE, DEFAULT_INIT_IMAGE,
    IDENTITY_VOLUME, INIT, IdentitySource, Options, SIDECAR, SPIRE_DIR, STATUS_ANNOTATION, WARD_BIN,
};
pub use yaml::{Mapping, Yaml, parse_documents, to_yaml};

/// `ward inject` options.
#[derive(Debug, Clone, clap::Args)]
pub struct InjectArgs {
    /// The manifests to read (multi-document YAML); `-` reads stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// Where to write the result (default: stdout).
    #[arg(short, long, value_name = "FILE")]
    pub out: Option<PathBuf>,
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

impl From<&InjectArgs> for Options {
    fn from(a: &InjectArgs) -> Self {
        Options {
            image: a.image.clone(),
            init_image: a.init_image.clone(),
            identity: a.identity,
            config_map: a.config_map.clone(),
        }
    }
}

/// Why manifests could not be injected.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("{source_name}: not valid YAML: {message}")]
    Yaml { source_name: String, message: String },
    #[error("{source_name}: document {doc} ({kind} {name}): {message}")]
    Workload {
        source_name: String,
        doc: usize,
        kind: String,
        name: String,
        message: String,
    },
    #[error("{source_name}: document {doc}: cannot write it back as YAML: {message}")]
    Write {
        source_name: String,
        doc: usize,
        message: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Documents

/// One `---`-separated piece of the input text, kept verbatim unless ward changes it.
struct Chunk<'a> {
    text: &'a str,
    /// 1-based line of the chunk's first line in the input.
    line: usize,
}

/// Splits at lines that start a document (`---`, alone or followed by a space).
fn chunks(text: &str) -> Vec<Chunk<'_>> {
    let mut out = Vec::new();
    let (mut start, mut start_line, mut offset) = (0, 1, 0);
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let marker = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        if marker && offset > start {
            out.push(Chunk {
                text: &text[start..offset],
                line: start_line,
            });
            start = offset;
            start_line = i + 1;
        }
        offset += line.len();
    }
    if offset > start || out.is_empty() {
        out.push(Chunk {
            text: &text[start..],
            line: start_line,
        });
    }
    out
}

/// What injection did to one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A workload: ward added (or re-added) to its pod template.
    Injected,
    /// A workload annotated `ward.dev/inject: "false"`.
    Skipped,
    /// Not a workload.
    Unchanged,
}

/// The result of injecting a whole text.
#[derive(Debug, Clone, Default)]
pub struct Injected {
    pub yaml: String,
    /// Per document, `kind/name` and what was done.
    pub documents: Vec<(String, Outcome)>,
    /// Things the user should know (printed to stderr by the CLI).
    pub warnings: Vec<String>,
}

/// Injects every workload in `text`. `source_name` names the input in errors.
pub fn inject_text(text: &str, source_name: &str, opts: &Options) -> Result<Injected, InjectError> {
    // Parse the whole text first: its errors carry the right line numbers.
    parse_documents(text).map_err(|message| InjectError::Yaml {
        source_name: source_name.to_owned(),
        message,
    })?;
    let mut result = Injected::default();
    let mut doc_index = 0;
    for chunk in chunks(text) {
        let docs = parse_documents(chunk.text).map_err(|message| InjectError::Yaml {
            source_name: source_name.to_owned(),
            message: format!("in the document starting at line {}: {message}", chunk.line),
        })?;
        let mut changed = false;
        let mut outs = Vec::new();
        for mut doc in docs {
            doc_index += 1;
            let what = describe(&doc);
            let outcome = inject_document(&mut doc, opts, &mut result.warnings).map_err(|message| {
                InjectError::Workload {
                    source_name: source_name.to_owned(),
                    doc: doc_index,
                    kind: what.0.clone(),
                    name: what.1.clone(),
                    message,
                }
            })?;
            changed |= outcome == Outcome::Injected;
            result.documents.push((format!("{}/{}", what.0, what.1), outcome));
            outs.push(doc);
        }
        if !changed {
            result.yaml.push_str(chunk.text);
            if !chunk.text.is_empty() && !chunk.text.ends_with('\n') {
                result.yaml.push('\n');
            }
            continue;
        }
        let marker_line = chunk.text.lines().next().unwrap_or_default();
        if marker_line.trim_end() == "---" || marker_line.starts_with("--- ") {
            result.yaml.push_str("---\n");
        }
        for (i, doc) in outs.iter().enumerate() {
            if i > 0 {
                result.yaml.push_str("---\n");
            }
            let text = to_yaml(doc).map_err(|message| InjectError::Write {
                source_name: source_name.to_owned(),
                doc: doc_index,
                message,
            })?;
            result.yaml.push_str(&text);
            if !text.ends_with('\n') {
                result.yaml.push('\n');
            }
        }
    }
    Ok(result)
}

/// `(kind, name)` of a document, for messages.
fn describe(doc: &Yaml) -> (String, String) {
    let kind = doc.at(&["kind"]).and_then(Yaml::as_str).unwrap_or("(no kind)");
    let name = doc
        .at(&["metadata", "name"])
        .and_then(Yaml::as_str)
        .or_else(|| doc.at(&["metadata", "generateName"]).and_then(Yaml::as_str))
        .unwrap_or("(no name)");
    (kind.to_owned(), name.to_owned())
}

/// The path from a workload to its pod template (`None` for kinds without one).
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
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
                    Outcome::Skipped if any == Outcome::Unchanged => any = Outcome::Skipped,
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
    if let Some(v) = note("inject") {
        match v.trim() {
            "false" | "disabled" | "no" => return Ok(Outcome::Skipped),
            "true" | "enabled" | "yes" | "" => {}
            other => {
                return Err(format!(
                    "annotation ward.dev/inject is {other:?}: write \"true\" or \"false\""
                ));
            }
        }
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

/// `ward inject`: reads, injects, writes; warnings go to stderr.
pub fn run(args: &InjectArgs) -> Result<(), String> {
    use std::io::Read as _;
    let (text, source_name) = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("stdin: cannot read it as UTF-8 text: {e}"))?;
        (s, "stdin".to_owned())
    } else {
        let s = std::fs::read_to_string(&args.file)
            .map_err(|e| format!("{}: cannot read it: {e}", args.file.display()))?;
        (s, args.file.display().to_string())
    };
    let injected = inject_text(&text, &source_name, &Options::from(args)).map_err(|e| e.to_string())?;
    for w in &injected.warnings {
        eprintln!("warning: {w}");
    }
    match &args.out {
        Some(path) => std::fs::write(path, &injected.yaml)
            .map_err(|e| format!("{}: cannot write it: {e}", path.display()))?,
        None => {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            out.write_all(injected.yaml.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| format!("stdout: {e}"))?;
        }
    }
    let n = injected
        .documents
        .iter()
        .filter(|(_, o)| *o == Outcome::Injected)
        .count();
    eprintln!(
        "ward inject: {n} workload(s) injected, {} document(s) read",
        injected.documents.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests;
