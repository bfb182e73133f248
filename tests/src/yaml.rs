//! Config builders: YAML sections for an identity and tcp listeners, and the whole config
//! [`Ward::start`](crate::Ward::start) writes around a body.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use crate::pki::SvidFiles;

/// The `identity:` section for an SVID, with federated bundles.
pub fn identity_yaml(svid: &SvidFiles, federation: &[(&str, &Path)]) -> String {
    let mut y = format!(
        "identity:\n  files:\n    cert: {}\n    key: {}\n    bundle: {}\n",
        svid.cert.display(),
        svid.key.display(),
        svid.bundle.display()
    );
    if !federation.is_empty() {
        y.push_str("  federation:\n");
        for (td, path) in federation {
            writeln!(y, "    {td}: {}", path.display()).unwrap();
        }
    }
    y
}

/// One tcp inbound listener with a `default: deny` policy that allows `allow` (one rule each,
/// named `allow-<n>` unless a name is given with `name=ID`).
pub fn inbound_yaml(name: &str, listen: u16, forward: SocketAddr, allow: &[(&str, &str)]) -> String {
    let mut y = format!(
        "inbound:\n  - name: {name}\n    listen: 127.0.0.1:{listen}\n    forward: {forward}\n    protocol: tcp\n    mtls: strict\n    policy: {name}\npolicies:\n  {name}:\n    default: deny\n    rules:\n"
    );
    for (rule, id) in allow {
        write!(
            y,
            "      - name: {rule}\n        action: allow\n        from: [\"{id}\"]\n"
        )
        .unwrap();
    }
    y
}

/// One tcp outbound listener.
pub fn outbound_yaml(name: &str, listen: u16, forward: SocketAddr, server_id: &str) -> String {
    format!(
        "outbound:\n  - name: {name}\n    listen: 127.0.0.1:{listen}\n    forward: {forward}\n    protocol: tcp\n    server_id: \"{server_id}\"\n"
    )
}

/// The whole config [`Ward::start`](crate::Ward::start) writes for `body`: a 2 s handshake
/// timeout, then `body`, then a JSON audit log to `audit`.
pub fn ward_yaml(body: &str, audit: &Path) -> String {
    format!(
        "handshake_timeout: 2s\n{body}log:\n  format: json\n  audit: {}\n  level: info\n",
        audit.display()
    )
}
