//! From a parsed config to the model the proxy runs: every check types cannot make, with every
//! problem reported at its place, and what is compiled on the way (policies, `server_id`
//! patterns, routes) kept, not thrown away: `ward check`, `ward run`, a reload and `ward policy
//! explain` all take the [`Model`] this returns.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::Location;

use super::model::{Compiled, Model, Route};
use super::problems::{ConfigError, ConfigProblem, Problems};
use super::schema::{AuditTarget, Config};

/// Whether `ip` is a loopback address (IPv4-mapped loopback included).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

impl Config {
    /// Checks everything types cannot, the files it names included, and returns the model to
    /// run. Reports every problem.
    pub fn check(self, file: &str) -> Result<Model, ConfigError> {
        self.into_model(file, true)
    }

    /// Like [`Config::check`], without looking at the files it names: for `ward policy
    /// explain`, which needs the policies, not the identity.
    pub fn compile(self, file: &str) -> Result<Model, ConfigError> {
        self.into_model(file, false)
    }

    fn into_model(self, file: &str, look_at_files: bool) -> Result<Model, ConfigError> {
        let mut p = Problems::new(file);
        let compiled = self.examine(&mut p, look_at_files);
        p.into_result()?;
        Ok(Model::new(self, compiled))
    }

    /// Checks what types cannot (references, uniqueness and, with `look_at_files`, that the files it
    /// names exist), and compiles what the model needs on the way: the policies, the
    /// `server_id` patterns and the routes.
    fn examine(&self, p: &mut Problems, look_at_files: bool) -> Compiled {
        let mut compiled = Compiled::default();
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
                            && look_at_files
                            && let Err(e) = std::fs::File::open(&path.value)
                        {
                            p.at(
                                path.referenced,
                                format!("identity.files.{what}: cannot read {}: {e}", path.value.display()),
                            );
                        }
                    }
                    if let Some(dir) = &f.dir
                        && look_at_files
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
                    && look_at_files
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
            if look_at_files && let Err(e) = std::fs::File::open(path) {
                p.at(
                    id.referenced,
                    format!("identity.federation.{td}: cannot read {}: {e}", path.display()),
                );
            }
        }

        for (name, spec) in &self.policies {
            match ward_filters::Policy::compile(name, &spec.value) {
                Ok(policy) => {
                    compiled.policies.insert(name.clone(), Arc::new(policy));
                }
                Err(e) => p.at(spec.referenced, e.to_string()),
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
            if v.hbone {
                if v.transparent {
                    p.at(
                        l.referenced,
                        format!("inbound {:?}: an HBONE listener takes each stream's destination from its CONNECT; remove `transparent`", v.name),
                    );
                }
                if v.mtls == super::schema::Mtls::Permissive {
                    p.at(
                        l.referenced,
                        format!(
                            "inbound {:?}: an HBONE listener is mTLS only; remove `mtls: permissive`",
                            v.name
                        ),
                    );
                }
                if v.forward.is_some() && (v.app_host.is_some() || !v.ports.is_empty()) {
                    p.at(
                        l.referenced,
                        format!("inbound {:?}: with `forward`, every stream goes there; `app_host` and `ports` are for an HBONE listener without it", v.name),
                    );
                }
            }
            match (v.transparent, v.forward) {
                (false, None) if !v.hbone => p.at(
                    l.referenced,
                    format!("inbound {:?}: set `forward: IP:port` (the app), or `transparent: true` in a pod", v.name),
                ),
                (true, Some(_)) => p.at(
                    l.referenced,
                    format!("inbound {:?}: a transparent listener forwards to the original destination port; remove `forward`", v.name),
                ),
                _ => {}
            }
            if !v.transparent && !v.hbone && v.app_host.is_some() {
                p.at(
                    l.referenced,
                    format!("inbound {:?}: `app_host` is for transparent listeners; an explicit one sends to `forward`", v.name),
                );
            }
            if !v.transparent && !v.hbone && !v.ports.is_empty() {
                p.at(
                    l.referenced,
                    format!(
                        "inbound {:?}: `ports` overrides need `transparent: true` (or `hbone: true`)",
                        v.name
                    ),
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
            if !v.allow_remote_clients && !is_loopback(v.listen.ip()) {
                p.at(
                    l.referenced,
                    format!(
                        "outbound {:?}: listen {} is not a loopback address: whoever reaches it would call the mesh with this workload's SVID (an open relay); listen on 127.0.0.1, or set `allow_remote_clients: true` if that is what you want",
                        v.name, v.listen
                    ),
                );
            }
            if let Some(id) = &v.server_id {
                match ward_filters::Pattern::parse_spiffe(id) {
                    Ok(pattern) => {
                        compiled.server_ids.insert(v.name.clone(), pattern);
                    }
                    Err(e) => p.at(
                        l.referenced,
                        format!("outbound {:?}: server_id {id:?}: {e}", v.name),
                    ),
                }
            }
            if v.transparent {
                if v.forward.is_some() || v.server_id.is_some() {
                    p.at(
                        l.referenced,
                        format!("outbound {:?}: a transparent listener uses `routes` and `default`, not `forward`/`server_id`", v.name),
                    );
                }
                for r in &v.routes {
                    if r.tunnel == Some(super::schema::Tunnel::Hbone)
                        && r.to.ends_with(&format!(":{}", v.hbone_port))
                    {
                        p.at(
                            l.referenced,
                            format!("outbound {:?}: route {:?}: its destinations are HBONE listeners themselves; HBONE tunnels to an app port", v.name, r.to),
                        );
                    }
                    match Route::parse(r) {
                        Ok(route) => compiled.routes.entry(v.name.clone()).or_default().push(route),
                        Err(e) => p.at(
                            l.referenced,
                            format!("outbound {:?}: route {:?}: {e}", v.name, r.to),
                        ),
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
                if v.tunnel == Some(super::schema::Tunnel::Auto) {
                    p.at(
                        l.referenced,
                        format!("outbound {:?}: `tunnel: auto` is for transparent listeners; an explicit one says `direct` (forward is the peer's listener) or `hbone` (forward is the final destination)", v.name),
                    );
                }
                if v.tunnel == Some(super::schema::Tunnel::Hbone)
                    && let Some(f) = v.forward
                    && f.port() == v.hbone_port
                {
                    p.at(
                        l.referenced,
                        format!("outbound {:?}: with `tunnel: hbone`, `forward` is the final destination (the app's IP:port), reached through the HBONE listener on port {}; it is not that listener", v.name, v.hbone_port),
                    );
                }
            }
        }
        for (what, d) in [
            ("handshake_timeout", self.handshake_timeout),
            ("connect_timeout", self.connect_timeout),
            ("idle_timeout", self.idle_timeout),
            ("pool_idle_timeout", self.pool_idle_timeout),
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
            && look_at_files
            && !dir.is_dir()
        {
            p.at(
                self.log.audit.referenced,
                format!("log.audit: directory {} does not exist", dir.display()),
            );
        }
        compiled
    }

    /// What is allowed but risky, each with its place: `ward check` prints these, `ward run`
    /// logs them at start.
    pub fn warnings(&self, file: &str) -> Vec<ConfigProblem> {
        let mut p = Problems::new(file);
        if let Some(admin) = &self.admin
            && !is_loopback(admin.value.listen.ip())
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
            if v.allow_remote_clients && !is_loopback(v.listen.ip()) {
                p.at(
                    l.referenced,
                    format!(
                        "outbound {:?}: listen {} accepts remote clients (allow_remote_clients: true): anyone who reaches it calls the mesh as this workload",
                        v.name, v.listen
                    ),
                );
            }
        }
        p.into_list()
    }
}
