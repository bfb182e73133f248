//! What injection adds to a pod spec: the `ward-init` container that installs the capture
//! rules, the `ward` native sidecar, and the volumes they mount; and what it reads from the
//! pod's annotations.

use super::yaml::{Mapping, Yaml};
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

/// String annotations as pairs (other values turned into their text).
pub(super) fn annotations(node: Option<&Yaml>) -> Vec<(String, String)> {
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
pub(super) fn capture_args(note: &dyn Fn(&str) -> Option<String>) -> Result<Vec<String>, String> {
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
pub(super) fn probe_warnings(spec: &Mapping, kind: &str, name: &str, warnings: &mut Vec<String>) {
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
pub(super) fn inject_pod_spec(spec: &mut Mapping, opts: &Options, capture: &[String]) -> Result<(), String> {
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

pub(super) fn identity_volume(identity: IdentitySource) -> Yaml {
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

pub(super) fn ready_probe(period: i64, failures: i64) -> Yaml {
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
pub(super) fn sidecar(opts: &Options) -> Yaml {
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
                port("ward-hbone", iptables::TUNNEL_PORT),
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

pub(super) fn with_name(name: &str, rest: Yaml) -> Yaml {
    let mut m = Mapping(vec![("name".into(), Yaml::str(name))]);
    if let Yaml::Map(r) = rest {
        m.0.extend(r.0);
    }
    Yaml::Map(m)
}

/// The capture init container.
pub(super) fn init_container(opts: &Options, capture: &[String]) -> Yaml {
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
