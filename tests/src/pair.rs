//! Sidecars to start: a tcp inbound or outbound ward alone, and the HTTP pair (an inbound
//! ward with the backend's SVID, an outbound ward with the frontend's) with its routes.

use std::net::SocketAddr;
use std::path::Path;

use crate::pki::{Pki, SvidFiles};
use crate::process::Ward;
use crate::yaml::{identity_yaml, inbound_yaml, outbound_yaml};
use crate::{BACKEND, FRONTEND, free_port, local, sha256_hex};

/// Starts an inbound ward (listener `backend`) with `svid`, forwarding to `app`, whose policy
/// allows the `(rule, id)` pairs. Returns it and its port.
pub fn start_inbound(
    svid: &SvidFiles,
    app: SocketAddr,
    allow: &[(&str, &str)],
    federation: &[(&str, &Path)],
) -> (Ward, u16) {
    let port = free_port();
    let body = format!(
        "{}{}",
        identity_yaml(svid, federation),
        inbound_yaml("backend", port, app, allow)
    );
    (Ward::start(&body, &[port]), port)
}

/// Starts an outbound ward (listener `upstream`) with `svid`, to the inbound on `upstream`,
/// requiring `server_id`. Returns it and its port.
pub fn start_outbound(
    svid: &SvidFiles,
    upstream: u16,
    server_id: &str,
    federation: &[(&str, &Path)],
) -> (Ward, u16) {
    let port = free_port();
    let body = format!(
        "{}{}",
        identity_yaml(svid, federation),
        outbound_yaml("upstream", port, local(upstream), server_id)
    );
    (Ward::start(&body, &[port]), port)
}

/// The HTTP mesh's certificates: the backend's (inbound ward) and the frontend's (outbound ward).
pub struct Ids {
    pub pki: Pki,
    pub backend: SvidFiles,
    pub frontend: SvidFiles,
}

pub fn ids() -> Ids {
    let pki = Pki::new("example.org");
    let backend = pki.issue("backend", BACKEND);
    let frontend = pki.issue("frontend", FRONTEND);
    Ids {
        pki,
        backend,
        frontend,
    }
}

/// One route through the pair: an inbound listener (and its policy, both named `name`) in front
/// of `forward`, and an outbound listener of the same name that points at it.
pub struct Route<'a> {
    pub name: &'a str,
    pub forward: SocketAddr,
    /// `protocol:` of the inbound and of the outbound listener.
    pub protocol: (&'a str, &'a str),
    /// More lines for the inbound listener, e.g. `    xfcc: false\n`.
    pub extra: &'a str,
    /// The policy's rules, YAML list items indented by 6.
    pub rules: &'a str,
}

impl<'a> Route<'a> {
    pub fn http(name: &'a str, forward: SocketAddr, rules: &'a str) -> Self {
        Route {
            name,
            forward,
            protocol: ("http", "http"),
            extra: "",
            rules,
        }
    }
}

/// An inbound ward (backend's SVID) and an outbound ward (frontend's SVID) with one listener
/// each per route; `in_ports[i]`/`out_ports[i]` belong to `routes[i]`.
pub struct Pair {
    pub inbound: Ward,
    pub outbound: Ward,
    pub in_ports: Vec<u16>,
    pub out_ports: Vec<u16>,
}

pub fn start_pair(ids: &Ids, routes: &[Route<'_>]) -> Pair {
    start_pair_with(ids, routes, &[])
}

/// [`start_pair`] with more `ward run` arguments for both wards.
pub fn start_pair_with(ids: &Ids, routes: &[Route<'_>], args: &[&str]) -> Pair {
    let in_ports: Vec<u16> = routes.iter().map(|_| free_port()).collect();
    let out_ports: Vec<u16> = routes.iter().map(|_| free_port()).collect();
    let mut body = identity_yaml(&ids.backend, &[]);
    body.push_str("inbound:\n");
    for (r, port) in routes.iter().zip(&in_ports) {
        body.push_str(&format!(
            "  - name: {}\n    listen: 127.0.0.1:{port}\n    forward: {}\n    protocol: {}\n    policy: {}\n{}",
            r.name, r.forward, r.protocol.0, r.name, r.extra
        ));
    }
    body.push_str("policies:\n");
    for r in routes {
        body.push_str(&format!(
            "  {}:\n    default: deny\n    rules:\n{}",
            r.name, r.rules
        ));
    }
    let inbound = Ward::start_with(&body, &in_ports, args);

    let mut body = identity_yaml(&ids.frontend, &[]);
    body.push_str("outbound:\n");
    for ((r, port), upstream) in routes.iter().zip(&out_ports).zip(&in_ports) {
        body.push_str(&format!(
            "  - name: {}\n    listen: 127.0.0.1:{port}\n    forward: 127.0.0.1:{upstream}\n    protocol: {}\n    server_id: \"{BACKEND}\"\n",
            r.name, r.protocol.1
        ));
    }
    let outbound = Ward::start_with(&body, &out_ports, args);
    Pair {
        inbound,
        outbound,
        in_ports,
        out_ports,
    }
}

/// A rule allowing the frontend everything.
pub fn allow_frontend() -> String {
    format!("      - {{name: frontend, action: allow, from: [\"{FRONTEND}\"]}}\n")
}

/// The XFCC value the inbound must set for the frontend's SVID.
pub fn expected_xfcc(ids: &Ids) -> String {
    format!(
        "By={BACKEND};Hash={};URI={FRONTEND}",
        sha256_hex(&ids.frontend.der)
    )
}
