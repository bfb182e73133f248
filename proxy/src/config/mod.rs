//! `ward.yaml`: its [`schema`] (typed, loaded with serde-saphyr; unknown keys are refused),
//! the [`problems`] found in it (each with its place and what to do about it), and
//! [`compile`]: the checks types cannot make, which return the [`Model`] the proxy runs.

use std::path::{Path, PathBuf};

pub mod compile;
pub mod model;
pub mod problems;
pub mod schema;

pub use compile::is_loopback;
pub use model::{Expect, InboundModel, Model, OutboundModel, Route, Settings};
use problems::parse_message;
pub use problems::{ConfigError, ConfigProblem};
pub use schema::*;

/// Reads, parses and checks a config file: the model to run.
pub fn load(path: &Path) -> Result<Model, ConfigError> {
    Config::read(path)?.check(&path.display().to_string())
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
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

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
        // Server-first ports are TCP on `auto`, and only on `auto`.
        assert_eq!(ib.server_first_ports, DEFAULT_SERVER_FIRST_PORTS);
        assert_eq!(c.outbound[0].value.server_first_ports, DEFAULT_SERVER_FIRST_PORTS);
        for (protocol, port, want) in [
            (Protocol::Auto, 3306, Protocol::Tcp),
            (Protocol::Auto, 25, Protocol::Tcp),
            (Protocol::Auto, 8080, Protocol::Auto),
            (Protocol::Http, 3306, Protocol::Http),
            (Protocol::Tcp, 8080, Protocol::Tcp),
        ] {
            assert_eq!(
                protocol.for_port(port, &ib.server_first_ports),
                want,
                "{protocol:?} {port}"
            );
        }
        assert_eq!(Protocol::Auto.for_port(3306, &[]), Protocol::Auto);
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
