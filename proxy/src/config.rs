//! `ward.yaml`: typed config, loaded with serde-saphyr. Unknown keys are refused, and every
//! problem is reported with its place (file:line:column) and what to do about it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_saphyr::{Location, Spanned};
use ward_filters::PolicySpec;

/// Durations are humantime strings everywhere: `500ms`, `6s`, `1h`.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!("{s:?} is not a duration like 500ms, 6s or 1h: {e}"))
        })
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub mod option {
        use super::*;
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            super::deserialize(d).map(Some)
        }
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }
    }
}

/// `IP:port` socket addresses, with a message that shows the expected form.
mod addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(|_| {
            serde::de::Error::custom(format!(
                "{s:?} is not an IP:port address like 127.0.0.1:15006 or [::1]:15006 (host names are not resolved)"
            ))
        })
    }

    pub fn deserialize_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        deserialize(d).map(Some)
    }
}

/// The whole config file.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub identity: Spanned<IdentityConfig>,
    #[serde(default)]
    pub inbound: Vec<Spanned<InboundConfig>>,
    #[serde(default)]
    pub outbound: Vec<Spanned<OutboundConfig>>,
    #[serde(default)]
    pub policies: BTreeMap<String, Spanned<PolicySpec>>,
    #[serde(default)]
    pub admin: Option<Spanned<AdminConfig>>,
    #[serde(default)]
    pub log: LogConfig,
    /// How long a TLS handshake may take before the connection is cut.
    #[serde(default = "default_handshake_timeout", with = "duration")]
    pub handshake_timeout: Duration,
    /// How long connecting to a forward address may take.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// `protocol: auto`: how long to wait for the first bytes before treating a connection
    /// as opaque TCP (server-first protocols send nothing).
    #[serde(default = "default_detect_timeout", with = "duration")]
    pub detect_timeout: Duration,
    /// An opaque TCP connection with no bytes either way for this long is closed.
    #[serde(default = "default_idle_timeout", with = "duration")]
    pub idle_timeout: Duration,
    /// An HTTP/1 client must send a whole request head within this; a keep-alive connection
    /// idle this long between requests is closed.
    #[serde(default = "default_request_header_timeout", with = "duration")]
    pub request_header_timeout: Duration,
    /// On SIGTERM: how long open connections and requests get to finish.
    #[serde(default = "default_drain_timeout", with = "duration")]
    pub drain_timeout: Duration,
    /// Connections older than this are closed (with an audit record); none when omitted.
    #[serde(default, with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub max_connection_lifetime: Option<Duration>,
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(3600)
}

fn default_request_header_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(15)
}

fn default_detect_timeout() -> Duration {
    Duration::from_millis(500)
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Where ward's own SVID comes from.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Spanned<FilesConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_api: Option<Spanned<WorkloadApiConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<DevConfig>,
    /// Anchors of other trust domains, one bundle file each, never merged.
    #[serde(default)]
    pub federation: BTreeMap<String, PathBuf>,
}

/// Identity files, watched and re-read when they change. One of: `cert` + `key` + `bundle`;
/// `credential_bundle` (key and chain in one file) + `bundle`; or `dir` (auto-detected layout).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    /// Leaf first, then intermediates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<Spanned<PathBuf>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<Spanned<PathBuf>>,
    /// Anchors of our own trust domain (PEM or SPIFFE JWKS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<Spanned<PathBuf>>,
    /// The private key and the chain in one PEM file (Kubernetes podCertificate projection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_bundle: Option<Spanned<PathBuf>>,
    /// A directory whose layout is detected: svid.pem/svid_key.pem/bundle.pem (spiffe-helper),
    /// tls.crt/tls.key/ca.crt (csi-driver-spiffe) or credentialbundle.pem (podCertificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<Spanned<PathBuf>>,
}

/// The SPIFFE Workload API (a SPIRE agent).
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadApiConfig {
    /// `unix:///run/spire/agent.sock` or `tcp://IP:port`; defaults to $SPIFFE_ENDPOINT_SOCKET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// Take the SVID with this hint (default: the first SVID the API sends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl WorkloadApiConfig {
    /// The endpoint to use: `socket`, else $SPIFFE_ENDPOINT_SOCKET.
    pub fn endpoint(&self) -> Option<String> {
        self.socket.clone().or_else(ward_certs::source::default_endpoint)
    }
}

impl FilesConfig {
    /// The layout these settings describe, if they describe exactly one.
    pub fn layout(&self) -> Result<ward_certs::FilesLayout, String> {
        use ward_certs::FilesLayout;
        let path = |p: &Option<Spanned<PathBuf>>| p.as_ref().map(|p| p.value.clone());
        let (cert, key, bundle, cred) = (
            path(&self.cert),
            path(&self.key),
            path(&self.bundle),
            path(&self.credential_bundle),
        );
        if let Some(dir) = path(&self.dir) {
            if cert.is_some() || key.is_some() || bundle.is_some() || cred.is_some() {
                return Err("identity.files: `dir` finds the files itself; remove cert, key, bundle and credential_bundle, or remove dir".into());
            }
            return Ok(FilesLayout::Dir(dir));
        }
        if let Some(credential) = cred {
            if cert.is_some() || key.is_some() {
                return Err("identity.files: `credential_bundle` holds both the key and the chain; remove cert and key".into());
            }
            let bundle = bundle.ok_or(
                "identity.files.credential_bundle needs `bundle` beside it: the anchors of our own trust domain",
            )?;
            return Ok(FilesLayout::CredentialBundle { credential, bundle });
        }
        match (cert, key, bundle) {
            (Some(cert), Some(key), Some(bundle)) => Ok(FilesLayout::Separate { cert, key, bundle }),
            (cert, key, bundle) => {
                let missing: Vec<&str> = [
                    ("cert", cert.is_none()),
                    ("key", key.is_none()),
                    ("bundle", bundle.is_none()),
                ]
                .iter()
                .filter(|(_, m)| *m)
                .map(|(n, _)| *n)
                .collect();
                Err(format!(
                    "identity.files needs cert, key and bundle (missing: {}), or credential_bundle and bundle, or dir",
                    missing.join(", ")
                ))
            }
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DevConfig {
    /// The SPIFFE ID to issue to ourselves.
    pub id: String,
    /// A CA directory from `ward certs ca` (ca.pem, ca_key.pem); without it, a throwaway CA
    /// is made at start, which only this process trusts.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default = "default_dev_ttl", with = "duration")]
    pub ttl: Duration,
}

fn default_dev_ttl() -> Duration {
    Duration::from_secs(3600)
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Opaque bytes.
    Tcp,
    /// HTTP/1.1 and HTTP/2 with per-request policy.
    Http,
    /// Sniff: HTTP when it looks like HTTP, TCP otherwise.
    #[default]
    Auto,
}

/// What the app behind an inbound listener speaks, for HTTP traffic.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// HTTP/2 (h2c) for gRPC requests, HTTP/1.1 for the rest.
    #[default]
    Auto,
    Http1,
    /// h2c (prior knowledge) for every request.
    Http2,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mtls {
    /// mTLS or nothing.
    #[default]
    Strict,
    /// Plaintext peers are admitted as unauthenticated (for migrations).
    Permissive,
}

/// An inbound listener: mTLS from peers, plaintext to the app. Explicit (`forward`) on a VM;
/// `transparent` in a pod, where the original destination port is the app port.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InboundConfig {
    pub name: String,
    #[serde(deserialize_with = "addr::deserialize")]
    pub listen: SocketAddr,
    #[serde(
        default,
        deserialize_with = "addr::deserialize_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub forward: Option<SocketAddr>,
    /// Captured traffic: forward to the original destination (the pod's address and the
    /// app port), as the peer addressed it.
    #[serde(default)]
    pub transparent: bool,
    /// Transparent listeners: send to this address instead of the original destination's.
    /// `127.0.0.1` exposes to the mesh whatever the app bound to loopback only (a debug or
    /// admin port); prefer the per-port setting for the one port that needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_host: Option<IpAddr>,
    /// Per app port overrides (transparent listeners).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<u16, PortOverride>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub mtls: Mtls,
    pub policy: String,
    /// Connections past this many open ones are refused at once (default: see
    /// [`default_max_connections`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Connections from one source address still in their TLS handshake; more are refused.
    #[serde(default = "default_max_pending_per_source")]
    pub max_pending_per_source: u32,
    #[serde(default, with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub handshake_timeout: Option<Duration>,
    /// Set `x-forwarded-client-cert` toward the app (HTTP). A caller's copy is removed always.
    #[serde(default = "yes")]
    pub xfcc: bool,
    /// What the app speaks for HTTP traffic.
    #[serde(default)]
    pub app_protocol: AppProtocol,
    /// HTTP request headers whose names contain `_`: `drop` (default), `keep` or `reject`.
    #[serde(default)]
    pub underscore_headers: crate::http::Underscores,
}

fn yes() -> bool {
    true
}

fn default_max_pending_per_source() -> u32 {
    64
}

/// The `max_connections` of a listener that sets none: 10,000, or less when the descriptor
/// limit (`nofile`, after ward raised it to its hard limit) could not hold that many: each
/// connection may hold two descriptors (the peer's and the app's), and 128 stay spare for
/// files, the admin server and the identity source.
pub fn default_max_connections(nofile: u64) -> usize {
    let fit = nofile.saturating_sub(128) / 2;
    usize::try_from(fit.clamp(64, 10_000)).unwrap_or(10_000)
}

/// Protocol and policy for one app port of a transparent inbound listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PortOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Send this port's traffic to this address instead of the original destination's, e.g.
    /// `127.0.0.1` for an app that listens on loopback only. That makes the port reachable
    /// from the mesh (under its policy); never set it for a port meant for the pod alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_host: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// What a transparent outbound does with a destination no route covers.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OutboundDefault {
    /// Plain TCP to the original destination, no mTLS (outside the mesh).
    Passthrough,
    /// Refuse.
    #[default]
    Deny,
}

/// One route of a transparent outbound: destinations in `to` must present `server_id`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `CIDR` or `CIDR:port`, e.g. `10.0.0.0/8` or `10.1.2.3/32:8080`.
    pub to: String,
    pub server_id: String,
}

/// An outbound listener: plaintext from the app, mTLS to a peer. Explicit (`forward` +
/// `server_id`) on a VM; `transparent` in a pod, where `routes` pick the expected identity by
/// the original destination.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    pub name: String,
    #[serde(deserialize_with = "addr::deserialize")]
    pub listen: SocketAddr,
    #[serde(
        default,
        deserialize_with = "addr::deserialize_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub forward: Option<SocketAddr>,
    #[serde(default)]
    pub protocol: Protocol,
    /// Exact SPIFFE ID or pattern the server must present (explicit listeners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    #[serde(default)]
    pub transparent: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub default: OutboundDefault,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    #[serde(default, with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub handshake_timeout: Option<Duration>,
    /// The app's HTTP request headers whose names contain `_`: `drop` (default), `keep` or
    /// `reject`.
    #[serde(default)]
    pub underscore_headers: crate::http::Underscores,
    /// Whether `listen` may be a non-loopback address. An outbound listener lends the
    /// workload's SVID to whoever connects: reachable from the network it is an open relay, so
    /// ward refuses that unless this says so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_remote_clients: bool,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Every endpoint; the operator's (`/identity`, `/config`, `/policy`, `POST /shutdown`)
    /// answer only from loopback. Bind it to loopback.
    #[serde(deserialize_with = "addr::deserialize")]
    pub listen: SocketAddr,
    /// `GET /live`, `/ready` and `/metrics` only, for kubelet and Prometheus (`0.0.0.0:15020`
    /// in a pod).
    #[serde(
        default,
        deserialize_with = "addr::deserialize_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub probes: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// `stderr` (default), `stdout`, or a file path.
    #[serde(default = "default_audit")]
    pub audit: Spanned<AuditTarget>,
    /// A tracing filter such as `info` or `ward=debug`; RUST_LOG wins when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
}

fn default_audit() -> Spanned<AuditTarget> {
    Spanned::new(AuditTarget::Stderr, Location::UNKNOWN, Location::UNKNOWN)
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::default(),
            audit: default_audit(),
            level: None,
        }
    }
}

/// Where audit and access records go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AuditTarget {
    #[default]
    Stderr,
    Stdout,
    File(PathBuf),
}

impl<'de> Deserialize<'de> for AuditTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match s.as_str() {
            "stderr" => AuditTarget::Stderr,
            "stdout" => AuditTarget::Stdout,
            "" => {
                return Err(serde::de::Error::custom(
                    "log.audit is empty: use stderr, stdout or a file path",
                ));
            }
            path => AuditTarget::File(PathBuf::from(path)),
        })
    }
}

impl Serialize for AuditTarget {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AuditTarget::Stderr => s.serialize_str("stderr"),
            AuditTarget::Stdout => s.serialize_str("stdout"),
            AuditTarget::File(p) => s.serialize_str(&p.display().to_string()),
        }
    }
}

/// A compiled route of a transparent outbound.
#[derive(Debug, Clone)]
pub struct Route {
    pub net: ipnet::IpNet,
    pub port: Option<u16>,
    pub server_id: ward_filters::Pattern,
}

impl Route {
    /// Parses `to` (`CIDR` or `CIDR:port`; an IPv6 CIDR with a port is written `[::/0]:443`).
    pub fn parse(r: &RouteConfig) -> Result<Route, String> {
        let (net, port) = match r.to.strip_prefix('[') {
            Some(rest) => {
                let (net, port) = rest
                    .split_once("]:")
                    .ok_or("write an IPv6 CIDR with a port as [2001:db8::/32]:443")?;
                (net, Some(port))
            }
            None => match r.to.rsplit_once(':') {
                Some((net, port)) if !net.contains(':') => (net, Some(port)),
                _ => (r.to.as_str(), None),
            },
        };
        let net: ipnet::IpNet = net
            .parse()
            .or_else(|_| net.parse::<IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| format!("{net:?} is not a CIDR like 10.0.0.0/8"))?;
        let port = match port {
            Some(p) => Some(p.parse::<u16>().map_err(|_| format!("{p:?} is not a port"))?),
            None => None,
        };
        let server_id = ward_filters::Pattern::parse_spiffe(&r.server_id).map_err(|e| e.to_string())?;
        Ok(Route { net, port, server_id })
    }

    pub fn covers(&self, dst: SocketAddr) -> bool {
        self.net.contains(&dst.ip()) && self.port.is_none_or(|p| p == dst.port())
    }
}

/// One problem in a config file, with its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub file: String,
    /// 1-based; 0 when the problem has no place in the file.
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)
        } else {
            write!(f, "{}: {}", self.file, self.message)
        }
    }
}

/// Every problem found in a config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Collects problems with their places while a config is checked.
pub(crate) struct Problems {
    file: String,
    list: Vec<ConfigProblem>,
}

impl Problems {
    pub(crate) fn new(file: &str) -> Self {
        Problems {
            file: file.to_owned(),
            list: Vec::new(),
        }
    }

    pub(crate) fn at(&mut self, loc: Location, message: impl Into<String>) {
        self.list.push(ConfigProblem {
            file: self.file.clone(),
            line: loc.line(),
            column: loc.column(),
            message: message.into(),
        });
    }

    pub(crate) fn into_result(self) -> Result<(), ConfigError> {
        if self.list.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems: self.list })
        }
    }
}

/// The first line of serde-saphyr's rendered message, without the place it already names
/// (we print the place ourselves, as file:line:column).
fn parse_message(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let mut msg = text.lines().next().unwrap_or("invalid YAML").trim();
    msg = msg.strip_prefix("error: ").unwrap_or(msg);
    if let Some((_, after)) = msg.strip_prefix("line ").and_then(|rest| rest.split_once(": ")) {
        msg = after;
    }
    msg.to_owned()
}

impl Config {
    /// Parses YAML text; `file` names it in errors. Does not check cross-references.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        serde_saphyr::from_str::<Config>(text).map_err(|e| {
            let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
            ConfigError {
                problems: vec![ConfigProblem {
                    file: file.to_owned(),
                    line,
                    column,
                    message: parse_message(&e),
                }],
            }
        })
    }

    /// Reads and parses a config file.
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            problems: vec![ConfigProblem {
                file: file.clone(),
                line: 0,
                column: 0,
                message: format!("cannot read the config file: {e}"),
            }],
        })?;
        let mut config = Config::parse(&text, &file)?;
        if let Some(dir) = path.parent() {
            config.resolve_paths(dir);
        }
        Ok(config)
    }

    /// Makes relative file paths relative to the config file's directory, so a config means
    /// the same whatever directory ward is started from.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let id = &mut self.identity.value;
        if let Some(files) = &mut id.files {
            let files = &mut files.value;
            for p in [
                &mut files.cert,
                &mut files.key,
                &mut files.bundle,
                &mut files.credential_bundle,
                &mut files.dir,
            ]
            .into_iter()
            .flatten()
            {
                fix(&mut p.value);
            }
        }
        if let Some(ca) = id.dev.as_mut().and_then(|d| d.ca.as_mut()) {
            fix(ca);
        }
        id.federation.values_mut().for_each(fix);
        if let AuditTarget::File(p) = &mut self.log.audit.value {
            fix(p);
        }
    }

    /// Checks what types cannot: references, uniqueness, files. Reports every problem.
    pub fn check(&self, file: &str) -> Result<(), ConfigError> {
        let mut p = Problems::new(file);
        let id = &self.identity;
        let sources = [
            id.value.files.as_ref().map(|_| "files"),
            id.value.workload_api.as_ref().map(|_| "workload_api"),
            id.value.dev.as_ref().map(|_| "dev"),
        ];
        let sources: Vec<&str> = sources.into_iter().flatten().collect();
        if sources.len() > 1 {
            p.at(
                id.referenced,
                format!(
                    "identity has {} sources ({}); choose one",
                    sources.len(),
                    sources.join(", ")
                ),
            );
        }
        match (&id.value.files, &id.value.workload_api, &id.value.dev) {
            (None, None, None) => p.at(
                id.referenced,
                "identity needs a source: `files` (cert, key, bundle; or dir), `workload_api` (socket) or `dev`",
            ),
            (Some(files), _, _) => match files.value.layout() {
                Err(e) => p.at(files.referenced, e),
                Ok(_) => {
                    let f = &files.value;
                    for (what, path) in [
                        ("cert", &f.cert),
                        ("key", &f.key),
                        ("bundle", &f.bundle),
                        ("credential_bundle", &f.credential_bundle),
                    ] {
                        if let Some(path) = path
                            && let Err(e) = std::fs::File::open(&path.value)
                        {
                            p.at(
                                path.referenced,
                                format!("identity.files.{what}: cannot read {}: {e}", path.value.display()),
                            );
                        }
                    }
                    if let Some(dir) = &f.dir
                        && !dir.value.is_dir()
                    {
                        p.at(
                            dir.referenced,
                            format!("identity.files.dir: {} is not a directory", dir.value.display()),
                        );
                    }
                }
            },
            (None, Some(api), _) => {
                let v = &api.value;
                match v.endpoint() {
                    None => p.at(
                        api.referenced,
                        format!(
                            "identity.workload_api.socket is not set and neither is {}: set one, e.g. unix:///run/spire/agent.sock",
                            ward_certs::source::ENDPOINT_ENV
                        ),
                    ),
                    Some(endpoint) => {
                        if let Err(e) = ward_certs::source::validate_endpoint(&endpoint) {
                            let from = if v.socket.is_some() {
                                "identity.workload_api.socket".to_owned()
                            } else {
                                format!("identity.workload_api (from {})", ward_certs::source::ENDPOINT_ENV)
                            };
                            p.at(api.referenced, format!("{from}: {e}"));
                        }
                    }
                }
                if v.hint.as_deref().is_some_and(|h| h.trim().is_empty()) {
                    p.at(
                        api.referenced,
                        "identity.workload_api.hint is empty: remove it to take the first SVID",
                    );
                }
            }
            (None, None, Some(dev)) => {
                if let Err(e) = ward_certs::SpiffeId::parse(&dev.id) {
                    p.at(id.referenced, format!("identity.dev.id {:?}: {e}", dev.id));
                }
                if let Some(ca) = &dev.ca
                    && !ca.join(ward_certs::devca::CA_CERT).is_file()
                {
                    p.at(
                        id.referenced,
                        format!(
                            "identity.dev.ca: {} has no ca.pem; create one with `ward certs ca`",
                            ca.display()
                        ),
                    );
                }
                if dev.ttl < Duration::from_secs(2) {
                    p.at(id.referenced, "identity.dev.ttl must be at least 2s");
                }
            }
        }
        for (td, path) in &id.value.federation {
            if let Err(e) = ward_certs::TrustDomain::new(td) {
                p.at(
                    id.referenced,
                    format!("identity.federation: {td:?} is not a trust domain: {e}"),
                );
            }
            if let Err(e) = std::fs::File::open(path) {
                p.at(
                    id.referenced,
                    format!("identity.federation.{td}: cannot read {}: {e}", path.display()),
                );
            }
        }

        for (name, spec) in &self.policies {
            if let Err(e) = ward_filters::Policy::compile(name, &spec.value) {
                p.at(spec.referenced, e.to_string());
            }
        }

        let mut names: HashMap<&str, Location> = HashMap::new();
        let mut listens: HashMap<SocketAddr, Location> = HashMap::new();
        if let Some(admin) = &self.admin {
            listens.insert(admin.value.listen, admin.referenced);
            if let Some(probes) = admin.value.probes {
                if probes.port() != 0 && probes == admin.value.listen {
                    p.at(
                        admin.referenced,
                        format!("admin.probes {probes} is admin.listen too: give the probes their own port, e.g. 0.0.0.0:15020"),
                    );
                }
                listens.insert(probes, admin.referenced);
            }
        }
        let all = self
            .inbound
            .iter()
            .map(|l| (l.value.name.as_str(), l.value.listen, l.referenced));
        let all = all.chain(
            self.outbound
                .iter()
                .map(|l| (l.value.name.as_str(), l.value.listen, l.referenced)),
        );
        for (name, listen, loc) in all {
            if name.is_empty() {
                p.at(loc, "listener name is empty");
            } else if let Some(first) = names.insert(name, loc) {
                p.at(
                    loc,
                    format!(
                        "listener name {name:?} is used twice (first at line {})",
                        first.line()
                    ),
                );
            }
            if listen.port() != 0
                && let Some(first) = listens.insert(listen, loc)
            {
                p.at(
                    loc,
                    format!(
                        "listen address {listen} is used twice (first at line {})",
                        first.line()
                    ),
                );
            }
        }
        let own_ports: Vec<u16> = self
            .inbound
            .iter()
            .map(|l| l.value.listen.port())
            .chain(self.outbound.iter().map(|l| l.value.listen.port()))
            .chain(self.admin.iter().map(|a| a.value.listen.port()))
            .chain(self.admin.iter().filter_map(|a| a.value.probes).map(|p| p.port()))
            .collect();
        for l in &self.inbound {
            let v = &l.value;
            match (v.transparent, v.forward) {
                (false, None) => p.at(
                    l.referenced,
                    format!("inbound {:?}: set `forward: IP:port` (the app), or `transparent: true` in a pod", v.name),
                ),
                (true, Some(_)) => p.at(
                    l.referenced,
                    format!("inbound {:?}: a transparent listener forwards to the original destination port; remove `forward`", v.name),
                ),
                _ => {}
            }
            if !v.transparent && v.app_host.is_some() {
                p.at(
                    l.referenced,
                    format!("inbound {:?}: `app_host` is for transparent listeners; an explicit one sends to `forward`", v.name),
                );
            }
            if !v.transparent && !v.ports.is_empty() {
                p.at(
                    l.referenced,
                    format!("inbound {:?}: `ports` overrides need `transparent: true`", v.name),
                );
            }
            for (port, o) in &v.ports {
                if own_ports.contains(port) {
                    p.at(
                        l.referenced,
                        format!("inbound {:?}: port {port} is one of ward's own ports", v.name),
                    );
                }
                if let Some(policy) = &o.policy
                    && !self.policies.contains_key(policy)
                {
                    p.at(
                        l.referenced,
                        format!(
                            "inbound {:?}: ports.{port}: policy {policy:?} is not defined under `policies`",
                            v.name
                        ),
                    );
                }
            }
            if !self.policies.contains_key(&v.policy) {
                let known: Vec<&str> = self.policies.keys().map(String::as_str).collect();
                p.at(
                    l.referenced,
                    format!(
                        "inbound {:?}: policy {:?} is not defined under `policies` (defined: {})",
                        v.name,
                        v.policy,
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
        }
        for l in &self.outbound {
            let v = &l.value;
            if !v.allow_remote_clients && !crate::admin::is_loopback(v.listen.ip()) {
                p.at(
                    l.referenced,
                    format!(
                        "outbound {:?}: listen {} is not a loopback address: whoever reaches it would call the mesh with this workload's SVID (an open relay); listen on 127.0.0.1, or set `allow_remote_clients: true` if that is what you want",
                        v.name, v.listen
                    ),
                );
            }
            if let Some(id) = &v.server_id
                && let Err(e) = ward_filters::Pattern::parse_spiffe(id)
            {
                p.at(
                    l.referenced,
                    format!("outbound {:?}: server_id {id:?}: {e}", v.name),
                );
            }
            if v.transparent {
                if v.forward.is_some() || v.server_id.is_some() {
                    p.at(
                        l.referenced,
                        format!("outbound {:?}: a transparent listener uses `routes` and `default`, not `forward`/`server_id`", v.name),
                    );
                }
                for r in &v.routes {
                    if let Err(e) = Route::parse(r) {
                        p.at(
                            l.referenced,
                            format!("outbound {:?}: route {:?}: {e}", v.name, r.to),
                        );
                    }
                }
            } else {
                if v.forward.is_none() || v.server_id.is_none() {
                    p.at(
                        l.referenced,
                        format!("outbound {:?}: set `forward: IP:port` and `server_id`, or `transparent: true` with `routes`", v.name),
                    );
                }
                if !v.routes.is_empty() {
                    p.at(
                        l.referenced,
                        format!("outbound {:?}: `routes` need `transparent: true`", v.name),
                    );
                }
            }
        }
        for (what, d) in [
            ("handshake_timeout", self.handshake_timeout),
            ("connect_timeout", self.connect_timeout),
            ("idle_timeout", self.idle_timeout),
            ("request_header_timeout", self.request_header_timeout),
            ("detect_timeout", self.detect_timeout),
            (
                "max_connection_lifetime",
                self.max_connection_lifetime.unwrap_or(Duration::MAX),
            ),
        ] {
            if d.is_zero() {
                p.at(
                    Location::UNKNOWN,
                    format!("{what} is 0: every connection would fail; use a duration like 10s"),
                );
            }
        }
        for l in &self.inbound {
            if l.value.handshake_timeout.is_some_and(|d| d.is_zero()) || l.value.max_connections == Some(0) {
                p.at(
                    l.referenced,
                    format!(
                        "inbound {:?}: handshake_timeout and max_connections must be above 0",
                        l.value.name
                    ),
                );
            }
        }
        for l in &self.outbound {
            if l.value.handshake_timeout.is_some_and(|d| d.is_zero()) || l.value.max_connections == Some(0) {
                p.at(
                    l.referenced,
                    format!(
                        "outbound {:?}: handshake_timeout and max_connections must be above 0",
                        l.value.name
                    ),
                );
            }
        }
        if self.inbound.is_empty() && self.outbound.is_empty() {
            p.at(
                Location::UNKNOWN,
                "no listeners: add at least one entry under `inbound` or `outbound`",
            );
        }
        if let AuditTarget::File(path) = &self.log.audit.value
            && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            p.at(
                self.log.audit.referenced,
                format!("log.audit: directory {} does not exist", dir.display()),
            );
        }
        p.into_result()
    }

    /// What is allowed but risky, each with its place: `ward check` prints these, `ward run`
    /// logs them at start.
    pub fn warnings(&self, file: &str) -> Vec<ConfigProblem> {
        let mut p = Problems::new(file);
        if let Some(admin) = &self.admin
            && !crate::admin::is_loopback(admin.value.listen.ip())
        {
            p.at(
                admin.referenced,
                format!(
                    "admin.listen {} is not a loopback address: it serves /live, /ready and /metrics to the network (the operator's endpoints still answer only from loopback); bind it to 127.0.0.1 and use admin.probes for kubelet and Prometheus",
                    admin.value.listen
                ),
            );
        }
        for l in &self.outbound {
            let v = &l.value;
            if v.allow_remote_clients && !crate::admin::is_loopback(v.listen.ip()) {
                p.at(
                    l.referenced,
                    format!(
                        "outbound {:?}: listen {} accepts remote clients (allow_remote_clients: true): anyone who reaches it calls the mesh as this workload",
                        v.name, v.listen
                    ),
                );
            }
        }
        p.list
    }

    /// Reads, parses and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::read(path)?;
        config.check(&path.display().to_string())?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const EXAMPLE: &str = r#"
identity:
  dev: {id: "spiffe://example.org/ns/default/sa/web", ttl: 1h}
  federation:
    partner.org: partner.pem
inbound:
  - name: web
    listen: 0.0.0.0:15006
    forward: 127.0.0.1:8080
    protocol: tcp
    mtls: permissive
    policy: web
outbound:
  - name: backend
    listen: 127.0.0.1:15001
    forward: 10.0.0.7:15006
    server_id: spiffe://example.org/ns/default/sa/backend
policies:
  web:
    default: deny
    rules:
      - name: frontend-reads
        action: allow
        from: [spiffe://example.org/ns/default/sa/frontend]
admin:
  listen: 127.0.0.1:15000
log:
  format: json
  audit: /var/log/ward/audit.log
handshake_timeout: 3s
"#;

    #[test]
    fn example_parses_with_defaults() {
        let c = Config::parse(EXAMPLE, "ward.yaml").unwrap();
        let ib = &c.inbound[0].value;
        assert_eq!(ib.mtls, Mtls::Permissive);
        assert_eq!(c.outbound[0].value.protocol, Protocol::Auto);
        assert_eq!(c.handshake_timeout, Duration::from_secs(3));
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(
            c.log.audit.value,
            AuditTarget::File("/var/log/ward/audit.log".into())
        );
        assert_eq!(c.inbound[0].referenced.line(), 7);
        assert_eq!(
            c.identity.value.dev.as_ref().unwrap().ttl,
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let mut c = Config::parse(EXAMPLE, "ward.yaml").unwrap();
        c.resolve_paths(Path::new("/etc/ward"));
        assert_eq!(
            c.identity.value.federation["partner.org"],
            PathBuf::from("/etc/ward/partner.pem")
        );
        assert_eq!(
            c.log.audit.value,
            AuditTarget::File("/var/log/ward/audit.log".into())
        );
    }

    #[test]
    fn parse_errors_have_places() {
        let bad = EXAMPLE.replace("    forward: 127.0.0.1:8080", "    forwad: 127.0.0.1:8080");
        let e = Config::parse(&bad, "ward.yaml").unwrap_err();
        let p = &e.problems[0];
        assert_eq!((p.line, p.file.as_str()), (9, "ward.yaml"));
        assert!(p.message.contains("unknown field `forwad`"), "{}", p.message);
        assert!(e.to_string().starts_with("ward.yaml:9:"), "{e}");

        let bad = EXAMPLE.replace("handshake_timeout: 3s", "handshake_timeout: soon");
        let e = Config::parse(&bad, "ward.yaml").unwrap_err();
        assert!(e.problems[0].message.contains("not a duration"), "{e}");

        let bad = EXAMPLE.replace("listen: 0.0.0.0:15006", "listen: localhost:15006");
        let e = Config::parse(&bad, "ward.yaml").unwrap_err();
        assert!(e.problems[0].message.contains("IP:port"), "{e}");
    }

    #[test]
    fn check_reports_every_problem() {
        let bad = EXAMPLE
            .replace("    policy: web", "    policy: nope")
            .replace(
                "server_id: spiffe://example.org/ns/default/sa/backend",
                "server_id: spiffe://example.org/ns/a*",
            )
            .replace("listen: 127.0.0.1:15001", "listen: 0.0.0.0:15006");
        let c = Config::parse(&bad, "ward.yaml").unwrap();
        let e = c.check("ward.yaml").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("policy \"nope\" is not defined"), "{text}");
        assert!(text.contains("wildcards must be whole segments"), "{text}");
        assert!(text.contains("0.0.0.0:15006 is used twice"), "{text}");
        assert!(text.contains("partner.pem"), "{text}");
        assert!(e.problems.iter().all(|p| p.line > 0), "{text}");
    }

    #[test]
    fn garbage_never_panics() {
        for text in [
            "",
            "[",
            "{{{{",
            "identity: 3",
            "\u{0}\u{1}",
            "a: &x [*x]",
            "- - - -",
            "identity:\n  dev: {id: 5}",
        ] {
            let _ = Config::parse(text, "x.yaml");
        }
    }

    /// The identity sources: file layouts, the Workload API, and their mistakes, each named
    /// with its place.
    #[test]
    fn identity_sources_and_their_mistakes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().display().to_string();
        let listeners = "outbound:\n  - name: o\n    listen: 127.0.0.1:15001\n    forward: 127.0.0.1:15006\n    server_id: spiffe://example.org/x\n";
        let check = |identity: &str| {
            let text = format!("identity:\n{identity}{listeners}");
            let c = Config::parse(&text, "w.yaml").unwrap();
            c.check("w.yaml").map_err(|e| e.to_string())
        };
        // A directory whose layout is detected at run time.
        check(&format!("  files: {{dir: {dir}}}\n")).unwrap();
        let c = Config::parse(&format!("identity:\n  files: {{dir: d}}\n{listeners}"), "w.yaml").unwrap();
        let files = c.identity.value.files.as_ref().unwrap();
        assert_eq!(
            files.value.layout().unwrap(),
            ward_certs::FilesLayout::Dir("d".into())
        );
        // The Workload API with an explicit socket and a hint.
        check("  workload_api: {socket: \"unix:///run/spire/agent.sock\", hint: internal}\n").unwrap();

        let e = check(&format!("  files: {{dir: {dir}/nope}}\n")).unwrap_err();
        assert!(
            e.contains("identity.files.dir:") && e.contains("is not a directory"),
            "{e}"
        );
        assert!(e.starts_with("w.yaml:2:16:"), "{e}");
        let e = check(&format!("  files: {{dir: {dir}, cert: {dir}/c.pem}}\n")).unwrap_err();
        assert!(e.contains("`dir` finds the files itself"), "{e}");
        let e = check(&format!("  files: {{credential_bundle: {dir}/cb.pem}}\n")).unwrap_err();
        assert!(e.contains("credential_bundle needs `bundle`"), "{e}");
        let e = check(&format!("  files: {{cert: {dir}/c.pem}}\n")).unwrap_err();
        assert!(e.contains("missing: key, bundle"), "{e}");
        let e = check("  workload_api: {socket: \"http://agent\"}\n").unwrap_err();
        assert!(
            e.contains("identity.workload_api.socket") && e.contains("unix://"),
            "{e}"
        );
        let e = check("  workload_api: {socket: \"unix:///a.sock\", hint: \"\"}\n").unwrap_err();
        assert!(e.contains("hint is empty"), "{e}");
        let e = check(&format!(
            "  workload_api: {{socket: \"unix:///a.sock\"}}\n  files: {{dir: {dir}}}\n"
        ))
        .unwrap_err();
        assert!(e.contains("2 sources (files, workload_api); choose one"), "{e}");
    }
}
