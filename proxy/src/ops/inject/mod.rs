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

mod document;
mod pod;
pub mod review;
pub mod serve;
mod yaml;

use document::describe;
pub use document::{Outcome, PodArgs, Skip, inject_annotation, inject_document};
pub use pod::{
    ANNOTATION_PREFIX, CONFIG_DIR, CONFIG_VOLUME, CSI_DIR, DEFAULT_IMAGE, DEFAULT_INIT_IMAGE,
    IDENTITY_VOLUME, INIT, IdentitySource, Options, SIDECAR, SPIRE_DIR, STATUS_ANNOTATION, WARD_BIN,
};
pub use yaml::{Mapping, Yaml, parse_documents, to_yaml};

/// `ward inject` options.
#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct InjectArgs {
    #[command(subcommand)]
    pub command: Option<InjectCommand>,
    /// The manifests to read (multi-document YAML); `-` reads stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    pub file: Option<PathBuf>,
    /// Where to write the result (default: stdout).
    #[arg(short, long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub pod: PodArgs,
}

/// `ward inject serve`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum InjectCommand {
    /// The injection webhook: answers the API server's AdmissionReviews for Pod CREATE over
    /// HTTPS, injecting exactly what `ward inject -f` would.
    #[command(
        after_help = "Example (in the webhook's Deployment, see deploy/kubernetes/webhook.yaml):\n  ward inject serve --cert /tls/tls.crt --key /tls/tls.key --failure-policy fail\n\nEndpoints: POST /inject (namespaces labelled ward.dev/inject=enabled: every pod unless annotated\nward.dev/inject: \"false\"), POST /inject/opt-in (other namespaces: pods annotated ward.dev/inject: \"true\");\nGET /live /ready /metrics on --probes."
    )]
    Serve(serve::ServeArgs),
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

/// `ward inject`: reads, injects, writes; warnings go to stderr.
pub fn run(args: &InjectArgs) -> Result<(), String> {
    use std::io::Read as _;
    let file = match (&args.command, &args.file) {
        (Some(InjectCommand::Serve(serve)), _) => return serve::run(serve),
        (None, Some(file)) => file,
        (None, None) => return Err("give the manifests with -f FILE (or -f - for stdin)".into()),
    };
    let (text, source_name) = if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("stdin: cannot read it as UTF-8 text: {e}"))?;
        (s, "stdin".to_owned())
    } else {
        let s =
            std::fs::read_to_string(file).map_err(|e| format!("{}: cannot read it: {e}", file.display()))?;
        (s, file.display().to_string())
    };
    let injected = inject_text(&text, &source_name, &Options::from(&args.pod)).map_err(|e| e.to_string())?;
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
    for (what, outcome) in &injected.documents {
        if let Outcome::Skipped(why) = outcome {
            eprintln!("ward inject: {what} skipped: {}", why.why());
        }
    }
    eprintln!(
        "ward inject: {n} workload(s) injected, {} document(s) read",
        injected.documents.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests;
