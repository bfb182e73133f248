//! The schema of `ward.yaml`: every key, its type and its default, as serde reads them.
//! Unknown keys are refused.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
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
    /// `protocol: auto`: once a connection's first bytes arrived, how long to wait for enough
    /// of them to tell HTTP from opaque TCP. (A client that sends nothing is waited for, up to
    /// `idle_timeout`: server-first protocols belong in `server_first_ports`.)
    #[serde(default = "default_detect_timeout", with = "duration")]
    pub detect_timeout: Duration,
    /// An opaque TCP connection with no bytes either way for this long is closed.
    #[serde(default = "default_idle_timeout", with = "duration")]
    pub idle_timeout: Duration,
    /// A pooled HBONE connection to a peer that carries no stream for this long is closed
    /// (ztunnel's pool releases unused connections after minutes too).
    #[serde(default = "default_pool_idle_timeout", with = "duration")]
    pub pool_idle_timeout: Duration,
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

fn default_pool_idle_timeout() -> Duration {
    Duration::from_secs(300)
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

impl Protocol {
    /// The protocol a connection to `port` gets: `auto` on one of `server_first` is opaque TCP
    /// at once, without waiting `detect_timeout` for a client byte a server-speaks-first
    /// protocol never sends.
    pub fn for_port(self, port: u16, server_first: &[u16]) -> Protocol {
        match self {
            Protocol::Auto if server_first.contains(&port) => Protocol::Tcp,
            p => p,
        }
    }
}

/// Ports whose protocols speak first or are opaque (Linkerd's default list): SMTP (25, 587),
/// MySQL (3306), Galera (4444), PostgreSQL (5432), Redis (6379), Elasticsearch's transport
/// (9300), memcached (11211). `protocol: auto` treats them as TCP without sniffing.
pub const DEFAULT_SERVER_FIRST_PORTS: [u16; 8] = [25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

fn default_server_first_ports() -> Vec<u16> {
    DEFAULT_SERVER_FIRST_PORTS.to_vec()
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
    /// App ports that `protocol: auto` treats as TCP without sniffing (server-first
    /// protocols); a port's own `protocol` wins. `[]` sniffs every port.
    #[serde(default = "default_server_first_ports")]
    pub server_first_ports: Vec<u16>,
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
    pub underscore_headers: Underscores,
    /// An HBONE listener (Istio ambient's tunnel, 15008 by convention): mTLS with ALPN `h2`,
    /// each HTTP/2 `CONNECT` stream one connection to the app at its `:authority` (the
    /// address the peer dialled, and an app port), under the same policy, protocol detection
    /// and records as any inbound connection. With `forward`, only its port may be asked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hbone: bool,
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
    /// How these destinations are reached; the listener's `tunnel` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<Tunnel>,
}

/// How an outbound reaches a destination's sidecar.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Tunnel {
    /// mTLS to the destination address itself (its sidecar captured it, or it is the peer's
    /// listener): opaque TCP on a connection of its own, HTTP over the pooled HTTP/2 link.
    Direct,
    /// HBONE: every connection an HTTP/2 `CONNECT` stream on a pooled mTLS connection to the
    /// destination's IP at `hbone_port`, `:authority` the destination. HTTP rides it as bytes.
    Hbone,
    /// Opaque TCP over HBONE when the destination's IP answers on `hbone_port` with ALPN
    /// `h2`, else direct (learned per IP, asked again after a minute); HTTP direct, over the
    /// pooled HTTP/2 link, so the peer's policy sees every request on its own stream.
    Auto,
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
    /// Destination ports that `protocol: auto` treats as TCP without sniffing (server-first
    /// protocols). `[]` sniffs every port.
    #[serde(default = "default_server_first_ports")]
    pub server_first_ports: Vec<u16>,
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
    pub underscore_headers: Underscores,
    /// How the destination is reached: `direct` (default for explicit listeners, where
    /// `forward` is the peer's own listener), `hbone` (`forward` is the final destination,
    /// reached through the HBONE listener on its IP at `hbone_port`) or `auto` (default for
    /// transparent listeners' routes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<Tunnel>,
    /// The port of the destination's HBONE listener.
    #[serde(default = "default_hbone_port")]
    pub hbone_port: u16,
    /// Whether `listen` may be a non-loopback address. An outbound listener lends the
    /// workload's SVID to whoever connects: reachable from the network it is an open relay, so
    /// ward refuses that unless this says so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_remote_clients: bool,
}

/// The port HBONE listeners take by convention (Istio's ztunnel and waypoints).
pub const HBONE_PORT: u16 = 15008;

fn default_hbone_port() -> u16 {
    HBONE_PORT
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

/// What to do with request headers whose names contain `_` (`underscore_headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Underscores {
    /// Drop them (the default, as nginx and Envoy do): CGI, WSGI and Rack servers read
    /// `x_forwarded_client_cert` as the same variable as `x-forwarded-client-cert`.
    #[default]
    Drop,
    /// Keep them, except those that name an identity header ward sets once `_` is read as `-`.
    Keep,
    /// Answer the request 400.
    Reject,
}
