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

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

use crate::ops::iptables::{self, CaptureArgs};

/// The image `ward inject` uses unless `--image` says otherwise (a placeholder until the
/// project publishes one).
pub const DEFAULT_IMAGE: &str = "ghcr.io/ward/ward:0.1.0";
/// The capture init container's image: ward plus `iptables` (deploy/container/Containerfile.init);
/// the sidecar's `FROM scratch` image has no iptables to run.
pub const DEFAULT_INIT_IMAGE: &str = "ghcr.io/ward/ward-init:0.1.0";
/// Where the `ward` binary is inside the image.
pub const WARD_BIN: &str = "/ward";
/// The names ward's containers and volumes go by in a pod.
pub const SIDECAR: &str = "ward";
pub const INIT: &str = "ward-init";
pub const CONFIG_VOLUME: &str = "ward-config";
pub const IDENTITY_VOLUME: &str = "ward-identity";
/// Where the config map is mounted; the config is its `ward.yaml` key.
pub const CONFIG_DIR: &str = "/etc/ward";
/// Where csi-driver-spiffe's files (tls.crt, tls.key, ca.crt) are mounted.
pub const CSI_DIR: &str = "/var/run/secrets/spiffe.io";
/// Where the SPIRE agent's socket directory is mounted.
pub const SPIRE_DIR: &str = "/spiffe-workload-api";
/// The annotation prefix.
pub const ANNOTATION_PREFIX: &str = "ward.dev/";
/// Set on every injected pod template.
pub const STATUS_ANNOTATION: &str = "ward.dev/status";

/// Where ward's identity comes from in the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IdentitySource {
    /// cert-manager's csi-driver-spiffe (`spiffe.csi.cert-manager.io`): SVID files in
    /// /var/run/secrets/spiffe.io, renewed by the driver.
    Csi,
    /// The SPIRE agent's Workload API socket through the SPIFFE CSI driver (`csi.spiffe.io`).
    Spire,
    /// The SPIRE agent's Workload API socket from a hostPath (/run/spire/agent-sockets).
    SpireHostpath,
}

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

/// What `ward inject` does, without the file handling.
#[derive(Debug, Clone)]
pub struct Options {
    pub image: String,
    pub init_image: String,
    pub identity: IdentitySource,
    pub config_map: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            image: DEFAULT_IMAGE.into(),
            init_image: DEFAULT_INIT_IMAGE.into(),
            identity: IdentitySource::Csi,
            config_map: "ward-config".into(),
        }
    }
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
// An untyped YAML value that keeps key order.

/// A YAML node. Mappings keep their keys in order, so manifests come back as they were written.
#[derive(Debug, Clone, PartialEq)]
pub enum Yaml {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Yaml>),
    Map(Mapping),
}

/// An ordered mapping with string keys (Kubernetes manifests have no other kind).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Mapping(pub Vec<(String, Yaml)>);

impl Mapping {
    pub fn get(&self, key: &str) -> Option<&Yaml> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Yaml> {
        self.0.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key`, in place when it exists, else at the end.
    pub fn insert(&mut self, key: &str, value: Yaml) {
        match self.get_mut(key) {
            Some(v) => *v = value,
            None => self.0.push((key.to_owned(), value)),
        }
    }

    /// The mapping under `key`, made (or replaced, when it is not a mapping) if need be.
    pub fn map_entry(&mut self, key: &str) -> Option<&mut Mapping> {
        if !matches!(self.get(key), Some(Yaml::Map(_))) {
            self.insert(key, Yaml::Map(Mapping::default()));
        }
        self.get_mut(key).and_then(Yaml::as_map_mut)
    }

    /// The sequence under `key`, made if missing or null.
    fn seq_entry(&mut self, key: &str) -> Option<&mut Vec<Yaml>> {
        if matches!(self.get(key), None | Some(Yaml::Null)) {
            self.insert(key, Yaml::Seq(Vec::new()));
        }
        match self.get_mut(key) {
            Some(Yaml::Seq(s)) => Some(s),
            _ => None,
        }
    }
}

impl Yaml {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Yaml::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&Mapping> {
        match self {
            Yaml::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_map_mut(&mut self) -> Option<&mut Mapping> {
        match self {
            Yaml::Map(m) => Some(m),
            _ => None,
        }
    }

    /// The node at a path of mapping keys.
    pub fn at(&self, path: &[&str]) -> Option<&Yaml> {
        path.iter().try_fold(self, |node, key| node.as_map()?.get(key))
    }

    pub fn at_mut(&mut self, path: &[&str]) -> Option<&mut Yaml> {
        path.iter()
            .try_fold(self, |node, key| node.as_map_mut()?.get_mut(key))
    }

    fn str(s: impl Into<String>) -> Yaml {
        Yaml::Str(s.into())
    }

    fn map<const N: usize>(entries: [(&str, Yaml); N]) -> Yaml {
        Yaml::Map(Mapping(
            entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        ))
    }

    fn strs(items: &[&str]) -> Yaml {
        Yaml::Seq(items.iter().map(|s| Yaml::str(*s)).collect())
    }
}

impl<'de> Deserialize<'de> for Yaml {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Yaml, D::Error> {
        d.deserialize_any(YamlVisitor)
    }
}

struct YamlVisitor;

impl<'de> Visitor<'de> for YamlVisitor {
    type Value = Yaml;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Yaml, E> {
        Ok(Yaml::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Yaml, E> {
        Ok(Yaml::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Yaml, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => Yaml::Int(i),
            Err(_) => Yaml::UInt(v),
        })
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Yaml, E> {
        i64::try_from(v)
            .map(Yaml::Int)
            .map_err(|_| E::custom(format!("the integer {v} is too large")))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Yaml, E> {
        u64::try_from(v)
            .map(|v| self.visit_u64::<E>(v).unwrap_or(Yaml::UInt(v)))
            .map_err(|_| E::custom(format!("the integer {v} is too large")))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Yaml, E> {
        Ok(Yaml::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Yaml, E> {
        Ok(Yaml::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Yaml, E> {
        Ok(Yaml::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Yaml, E> {
        String::from_utf8(v.to_vec())
            .map(Yaml::Str)
            .map_err(|_| E::custom("binary data is not supported in manifests ward injects"))
    }
    fn visit_none<E>(self) -> Result<Yaml, E> {
        Ok(Yaml::Null)
    }
    fn visit_unit<E>(self) -> Result<Yaml, E> {
        Ok(Yaml::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Yaml, D::Error> {
        Yaml::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Yaml, D::Error> {
        Yaml::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Yaml, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element::<Yaml>()? {
            out.push(v);
        }
        Ok(Yaml::Seq(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Yaml, A::Error> {
        let mut out = Mapping::default();
        // Keys as their text: `n:` or `on:` stay what they were written as, never `false:`.
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value::<Yaml>()?;
            out.insert(&key, value);
        }
        Ok(Yaml::Map(out))
    }
}

impl Serialize for Yaml {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Yaml::Null => s.serialize_unit(),
            Yaml::Bool(b) => s.serialize_bool(*b),
            Yaml::Int(i) => s.serialize_i64(*i),
            Yaml::UInt(u) => s.serialize_u64(*u),
            Yaml::Float(f) => s.serialize_f64(*f),
            Yaml::Str(v) => s.serialize_str(v),
            Yaml::Seq(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Yaml::Map(m) => {
                let mut map = s.serialize_map(Some(m.0.len()))?;
                for (k, v) in &m.0 {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// Parses every document of a multi-document YAML text (empty documents are skipped).
pub fn parse_documents(text: &str) -> Result<Vec<Yaml>, String> {
    serde_saphyr::from_multiple::<Yaml>(text).map_err(|e| e.to_string())
}

/// Writes one document.
pub fn to_yaml(doc: &Yaml) -> Result<String, String> {
    serde_saphyr::to_string(doc).map_err(|e| e.to_string())
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

/// String annotations as pairs (other values turned into their text).
fn annotations(node: Option<&Yaml>) -> Vec<(String, String)> {
    let Some(Yaml::Map(m)) = node else {
        return Vec::new();
    };
    m.0.iter()
        .filter_map(|(k, v)| {
            let text = match v {
                Yaml::Str(s) => s.clone(),
                Yaml::Bool(b) => b.to_string(),
                Yaml::Int(i) => i.to_string(),
                Yaml::UInt(u) => u.to_string(),
                _ => return None,
            };
            Some((k.clone(), text))
        })
        .collect()
}

/// A list option of [`CaptureArgs`].
type Field = fn(&mut CaptureArgs) -> &mut Vec<String>;

/// The `ward iptables install` arguments, from the annotations; checked now so a typo fails
/// the injection rather than the pod.
fn capture_args(note: &dyn Fn(&str) -> Option<String>) -> Result<Vec<String>, String> {
    let mut args = CaptureArgs::default();
    let mut out: Vec<String> = vec![
        "iptables".into(),
        "install".into(),
        "--inbound-port".into(),
        args.inbound_port.to_string(),
        "--outbound-port".into(),
        args.outbound_port.to_string(),
        "--proxy-uid".into(),
        args.proxy_uid.to_string(),
        "--proxy-gid".into(),
        args.proxy_gid.to_string(),
    ];
    let keys: [(&str, Field); 5] = [
        ("exclude-inbound-ports", |a| &mut a.exclude_inbound_ports),
        ("exclude-outbound-ports", |a| &mut a.exclude_outbound_ports),
        ("exclude-outbound-cidrs", |a| &mut a.exclude_outbound_cidrs),
        ("include-inbound-ports", |a| &mut a.include_inbound_ports),
        ("include-outbound-cidrs", |a| &mut a.include_outbound_cidrs),
    ];
    for (key, field) in keys {
        if let Some(value) = note(key) {
            let value: String = value.split(',').map(str::trim).collect::<Vec<_>>().join(",");
            *field(&mut args) = vec![value.clone()];
            out.push(format!("--{key}={value}"));
        }
    }
    iptables::Capture::from_args(&args).map_err(|e| {
        format!(
            "annotation {ANNOTATION_PREFIX}{}",
            e.to_string().trim_start_matches("--")
        )
    })?;
    Ok(out)
}

/// kubelet's HTTP and TCP probes arrive at the pod IP without a client certificate; ward's
/// strict mTLS refuses them unless their port is excluded from capture.
fn probe_warnings(spec: &Mapping, kind: &str, name: &str, warnings: &mut Vec<String>) {
    let Some(Yaml::Seq(containers)) = spec.get("containers") else {
        return;
    };
    for c in containers.iter().filter_map(Yaml::as_map) {
        let cname = c.get("name").and_then(Yaml::as_str).unwrap_or("?");
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            let Some(p) = c.get(probe).and_then(Yaml::as_map) else {
                continue;
            };
            let port = ["httpGet", "tcpSocket", "grpc"]
                .iter()
                .find_map(|k| p.get(k)?.as_map()?.get("port"));
            if let Some(port) = port {
                let port = match port {
                    Yaml::Int(i) => i.to_string(),
                    Yaml::Str(s) => s.clone(),
                    _ => "?".into(),
                };
                warnings.push(format!(
                    "{kind} {name}: container {cname}'s {probe} reaches port {port} through ward, which requires mTLS: \
                     kubelet presents no SVID, so use an exec probe, or add the port to ward.dev/exclude-inbound-ports \
                     (that port is then reachable without mTLS)"
                ));
            }
        }
    }
}

/// Adds ward to a pod spec, replacing any ward containers and volumes already there.
fn inject_pod_spec(spec: &mut Mapping, opts: &Options, capture: &[String]) -> Result<(), String> {
    let named = |c: &Yaml, names: &[&str]| {
        c.as_map()
            .and_then(|m| m.get("name"))
            .and_then(Yaml::as_str)
            .is_some_and(|n| names.contains(&n))
    };
    let ours = [SIDECAR, INIT];
    for key in ["containers", "initContainers"] {
        if let Some(Yaml::Seq(list)) = spec.get_mut(key) {
            list.retain(|c| !named(c, &ours));
        }
    }
    if matches!(spec.get("containers"), Some(Yaml::Seq(c)) if c.is_empty())
        || spec.get("containers").is_none()
    {
        return Err("its pod spec has no containers".into());
    }
    let init = spec
        .seq_entry("initContainers")
        .ok_or("spec.initContainers is not a list")?;
    init.insert(0, sidecar(opts));
    init.insert(0, init_container(opts, capture));

    let volumes = spec.seq_entry("volumes").ok_or("spec.volumes is not a list")?;
    volumes.retain(|v| !named(v, &[CONFIG_VOLUME, IDENTITY_VOLUME]));
    volumes.push(Yaml::map([
        ("name", Yaml::str(CONFIG_VOLUME)),
        ("configMap", Yaml::map([("name", Yaml::str(&opts.config_map))])),
    ]));
    volumes.push(identity_volume(opts.identity));
    Ok(())
}

fn identity_volume(identity: IdentitySource) -> Yaml {
    let source = match identity {
        IdentitySource::Csi => (
            "csi",
            Yaml::map([
                ("driver", Yaml::str("spiffe.csi.cert-manager.io")),
                ("readOnly", Yaml::Bool(true)),
            ]),
        ),
        IdentitySource::Spire => (
            "csi",
            Yaml::map([
                ("driver", Yaml::str("csi.spiffe.io")),
                ("readOnly", Yaml::Bool(true)),
            ]),
        ),
        IdentitySource::SpireHostpath => (
            "hostPath",
            Yaml::map([
                ("path", Yaml::str("/run/spire/agent-sockets")),
                ("type", Yaml::str("Directory")),
            ]),
        ),
    };
    Yaml::map([("name", Yaml::str(IDENTITY_VOLUME)), source])
}

fn ready_probe(period: i64, failures: i64) -> Yaml {
    Yaml::map([
        (
            "httpGet",
            Yaml::map([
                ("path", Yaml::str("/ready")),
                ("port", Yaml::Int(i64::from(iptables::DEFAULT_PROBES_PORT))),
            ]),
        ),
        ("periodSeconds", Yaml::Int(period)),
        ("failureThreshold", Yaml::Int(failures)),
    ])
}

/// The native sidecar.
fn sidecar(opts: &Options) -> Yaml {
    let uid = Yaml::Int(i64::from(iptables::DEFAULT_PROXY_UID));
    let config_path = format!("{CONFIG_DIR}/ward.yaml");
    let admin = format!("127.0.0.1:{}", iptables::DEFAULT_ADMIN_PORT);
    let identity_dir = match opts.identity {
        IdentitySource::Csi => CSI_DIR,
        IdentitySource::Spire | IdentitySource::SpireHostpath => SPIRE_DIR,
    };
    let field = |path: &str| {
        Yaml::map([(
            "valueFrom",
            Yaml::map([("fieldRef", Yaml::map([("fieldPath", Yaml::str(path))]))]),
        )])
    };
    let mut env = vec![
        with_name("POD_NAME", field("metadata.name")),
        with_name("POD_NAMESPACE", field("metadata.namespace")),
    ];
    if opts.identity != IdentitySource::Csi {
        env.push(Yaml::map([
            ("name", Yaml::str(ward_certs::source::ENDPOINT_ENV)),
            ("value", Yaml::str(format!("unix://{SPIRE_DIR}/spire-agent.sock"))),
        ]));
    }
    let port = |name: &str, port: u16| {
        Yaml::map([
            ("name", Yaml::str(name)),
            ("containerPort", Yaml::Int(i64::from(port))),
            ("protocol", Yaml::str("TCP")),
        ])
    };
    Yaml::map([
        ("name", Yaml::str(SIDECAR)),
        ("image", Yaml::str(&opts.image)),
        ("restartPolicy", Yaml::str("Always")),
        ("command", Yaml::strs(&[WARD_BIN])),
        ("args", Yaml::strs(&["run", "-c", &config_path])),
        (
            "ports",
            Yaml::Seq(vec![
                port("ward-inbound", iptables::DEFAULT_INBOUND_PORT),
                port("ward-probes", iptables::DEFAULT_PROBES_PORT),
            ]),
        ),
        ("env", Yaml::Seq(env)),
        (
            "securityContext",
            Yaml::map([
                ("runAsUser", uid.clone()),
                ("runAsGroup", uid),
                ("runAsNonRoot", Yaml::Bool(true)),
                ("readOnlyRootFilesystem", Yaml::Bool(true)),
                ("allowPrivilegeEscalation", Yaml::Bool(false)),
                ("capabilities", Yaml::map([("drop", Yaml::strs(&["ALL"]))])),
            ]),
        ),
        ("startupProbe", ready_probe(1, 60)),
        ("readinessProbe", ready_probe(2, 3)),
        (
            "lifecycle",
            Yaml::map([(
                "preStop",
                Yaml::map([(
                    "exec",
                    Yaml::map([("command", Yaml::strs(&[WARD_BIN, "shutdown", "--admin", &admin]))]),
                )]),
            )]),
        ),
        (
            "resources",
            Yaml::map([(
                "requests",
                Yaml::map([("cpu", Yaml::str("10m")), ("memory", Yaml::str("32Mi"))]),
            )]),
        ),
        (
            "volumeMounts",
            Yaml::Seq(vec![
                Yaml::map([
                    ("name", Yaml::str(CONFIG_VOLUME)),
                    ("mountPath", Yaml::str(CONFIG_DIR)),
                    ("readOnly", Yaml::Bool(true)),
                ]),
                Yaml::map([
                    ("name", Yaml::str(IDENTITY_VOLUME)),
                    ("mountPath", Yaml::str(identity_dir)),
                    ("readOnly", Yaml::Bool(true)),
                ]),
            ]),
        ),
    ])
}

fn with_name(name: &str, rest: Yaml) -> Yaml {
    let mut m = Mapping(vec![("name".into(), Yaml::str(name))]);
    if let Yaml::Map(r) = rest {
        m.0.extend(r.0);
    }
    Yaml::Map(m)
}

/// The capture init container.
fn init_container(opts: &Options, capture: &[String]) -> Yaml {
    let args: Vec<&str> = capture.iter().map(String::as_str).collect();
    Yaml::map([
        ("name", Yaml::str(INIT)),
        ("image", Yaml::str(&opts.init_image)),
        ("command", Yaml::strs(&[WARD_BIN])),
        ("args", Yaml::strs(&args)),
        (
            "securityContext",
            Yaml::map([
                ("runAsUser", Yaml::Int(0)),
                ("runAsGroup", Yaml::Int(0)),
                ("runAsNonRoot", Yaml::Bool(false)),
                ("allowPrivilegeEscalation", Yaml::Bool(false)),
                // iptables-legacy takes its lock in /run.
                ("readOnlyRootFilesystem", Yaml::Bool(false)),
                (
                    "capabilities",
                    Yaml::map([
                        ("add", Yaml::strs(&["NET_ADMIN", "NET_RAW"])),
                        ("drop", Yaml::strs(&["ALL"])),
                    ]),
                ),
            ]),
        ),
        (
            "resources",
            Yaml::map([(
                "requests",
                Yaml::map([("cpu", Yaml::str("10m")), ("memory", Yaml::str("16Mi"))]),
            )]),
        ),
    ])
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
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

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
        assert_eq!(out.documents[0].1, Outcome::Skipped);

        // On the workload's own metadata too.
        let off = workload("StatefulSet").replace(
            "metadata:\n  name: statefulset\n",
            "metadata:\n  name: statefulset\n  annotations: {ward.dev/inject: \"false\"}\n",
        );
        assert_eq!(inject(&off).documents[0].1, Outcome::Skipped);
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
}
