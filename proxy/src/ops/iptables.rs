//! `ward iptables install|uninstall|print`: the nat-table rules that capture a pod's TCP
//! traffic into ward, in the shape mesh users know from Istio's `istio-iptables`.
//!
//! The rules are data ([`Ruleset`]), generated once from [`Capture`]; `print` writes them in
//! `iptables-restore` form and `install` feeds that same text to `iptables-restore --noflush`
//! (and `ip6tables-restore`). Every chain ward owns is named `WARD_*`, so `uninstall` finds
//! and removes all of them, and every jump to them, from what `iptables-save` shows.
//!
//! What is captured:
//! - inbound (PREROUTING → `WARD_INBOUND`): TCP to the pod on any port (or the included
//!   ports), except ward's own ports (inbound, outbound, admin, tunnel) and the excluded
//!   ones, is redirected to the inbound port; ward reads the app port from the original
//!   destination;
//! - outbound (OUTPUT → `WARD_OUTPUT`): TCP the pod sends out, except what ward itself sends
//!   (its UID or GID), what goes out over loopback (localhost and the pod's own addresses),
//!   excluded ports and CIDRs, is redirected to the outbound port; ward reads where it was
//!   going from the original destination.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::str::FromStr;

use ipnet::IpNet;

/// Ward's chains; every chain ward creates starts with this.
pub const CHAIN_PREFIX: &str = "WARD_";
/// PREROUTING jumps here for every inbound TCP packet.
pub const INBOUND: &str = "WARD_INBOUND";
/// Redirects to the inbound port.
pub const IN_REDIRECT: &str = "WARD_IN_REDIRECT";
/// OUTPUT jumps here for every outbound TCP packet.
pub const OUTPUT: &str = "WARD_OUTPUT";
/// Redirects to the outbound port.
pub const REDIRECT: &str = "WARD_REDIRECT";

/// The default ports and proxy identity (the mesh conventions).
pub const DEFAULT_INBOUND_PORT: u16 = 15006;
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;
pub const DEFAULT_ADMIN_PORT: u16 = 15000;
/// `admin.probes`: `/live`, `/ready`, `/metrics` for kubelet and Prometheus (Istio's 15020).
pub const DEFAULT_PROBES_PORT: u16 = 15020;
/// The HBONE listener's port (`hbone: true`), never captured: peers reach it directly.
pub const TUNNEL_PORT: u16 = crate::config::schema::HBONE_PORT;
pub const DEFAULT_PROXY_UID: u32 = 1337;

/// What went wrong, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("{flag}: {value:?} is not a port or port range (write 8080, or 8000-8100, comma separated)")]
    BadPort { flag: &'static str, value: String },
    #[error("{flag}: {value:?} is not a CIDR (write 10.0.0.0/8 or fd00::/8, comma separated)")]
    BadCidr { flag: &'static str, value: String },
    #[error(
        "no iptables found (looked for iptables-nft-restore, iptables-legacy-restore and iptables-restore on PATH): install the iptables package"
    )]
    NotFound,
    #[error(
        "the {backend} backend is not installed ({tool} is missing from PATH): install iptables, or pick another --backend"
    )]
    BackendMissing { backend: Backend, tool: String },
    #[error("`{command}` failed: {detail} (is this run as root, or with NET_ADMIN and NET_RAW?)")]
    Command { command: String, detail: String },
    #[error("{0}")]
    Invalid(String),
}

/// A port or an inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub first: u16,
    pub last: u16,
}

impl Ports {
    pub fn one(port: u16) -> Ports {
        Ports {
            first: port,
            last: port,
        }
    }

    fn parse(flag: &'static str, s: &str) -> Result<Ports, IptablesError> {
        let bad = || IptablesError::BadPort {
            flag,
            value: s.to_owned(),
        };
        let port = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad);
        match s.split_once(['-', ':']) {
            Some((a, b)) => {
                let (first, last) = (port(a)?, port(b)?);
                if first > last {
                    return Err(bad());
                }
                Ok(Ports { first, last })
            }
            None => Ok(Ports::one(port(s)?)),
        }
    }
}

impl fmt::Display for Ports {
    /// As iptables writes a port match: `8080` or `8000:8100`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}:{}", self.first, self.last)
        }
    }
}

/// An include list: everything (`*`), or only these (possibly none: an empty string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Include<T> {
    All,
    Only(Vec<T>),
}

/// Splits a comma-separated flag value; empty items are ignored.
fn items(values: &[String]) -> impl Iterator<Item = &str> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn parse_ports(flag: &'static str, values: &[String]) -> Result<Vec<Ports>, IptablesError> {
    items(values).map(|s| Ports::parse(flag, s)).collect()
}

fn parse_cidrs(flag: &'static str, values: &[String]) -> Result<Vec<IpNet>, IptablesError> {
    items(values)
        .map(|s| {
            IpNet::from_str(s)
                .or_else(|_| IpAddr::from_str(s).map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| IptablesError::BadCidr {
                    flag,
                    value: s.to_owned(),
                })
        })
        .collect()
}

fn parse_include<T>(
    values: &[String],
    parse: impl Fn(&[String]) -> Result<Vec<T>, IptablesError>,
) -> Result<Include<T>, IptablesError> {
    if items(values).any(|s| s == "*") {
        return Ok(Include::All);
    }
    parse(values).map(Include::Only)
}

/// Which iptables implementation programs the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// `iptables-legacy` (x_tables).
    Legacy,
    /// `iptables-nft` (nf_tables).
    Nft,
    /// Whichever already has rules, else nft when present (what kube-proxy and Istio do).
    Auto,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Legacy => "legacy",
            Backend::Nft => "nft",
            Backend::Auto => "auto",
        })
    }
}

/// IPv4 or IPv6: iptables or ip6tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }

    fn holds(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }
}

/// Whether to program ip6tables too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ipv6 {
    /// When `ip6tables-save` works (the kernel has IPv6).
    Auto,
    On,
    Off,
}

/// The command-line options of `ward iptables`, shared by install, uninstall and print.
#[derive(Debug, Clone, clap::Args)]
pub struct CaptureArgs {
    /// The port of ward's transparent inbound listener.
    #[arg(long, default_value_t = DEFAULT_INBOUND_PORT)]
    pub inbound_port: u16,
    /// The port of ward's transparent outbound listener.
    #[arg(long, default_value_t = DEFAULT_OUTBOUND_PORT)]
    pub outbound_port: u16,
    /// ward's admin port (never captured; it answers the operator's endpoints only from
    /// loopback).
    #[arg(long, default_value_t = DEFAULT_ADMIN_PORT)]
    pub admin_port: u16,
    /// ward's probes port (`admin.probes`; never captured, so kubelet and Prometheus reach it).
    #[arg(long, default_value_t = DEFAULT_PROBES_PORT)]
    pub probes_port: u16,
    /// The UID ward runs as; its own traffic is never captured.
    #[arg(long, default_value_t = DEFAULT_PROXY_UID)]
    pub proxy_uid: u32,
    /// The GID ward runs as; its own traffic is never captured.
    #[arg(long, default_value_t = DEFAULT_PROXY_UID)]
    pub proxy_gid: u32,
    /// Inbound ports (or ranges, 8000-8100) never captured; comma separated. ward's own
    /// ports (inbound, outbound, admin, probes, tunnel 15008) are always excluded.
    #[arg(long, value_name = "PORTS", value_delimiter = ',')]
    pub exclude_inbound_ports: Vec<String>,
    /// Outbound destination ports never captured; comma separated.
    #[arg(long, value_name = "PORTS", value_delimiter = ',')]
    pub exclude_outbound_ports: Vec<String>,
    /// Outbound destination CIDRs never captured; comma separated.
    #[arg(long, value_name = "CIDRS", value_delimiter = ',')]
    pub exclude_outbound_cidrs: Vec<String>,
    /// Inbound ports to capture: `*` (all) or a list; an empty string captures none.
    #[arg(long, value_name = "PORTS", default_value = "*", value_delimiter = ',')]
    pub include_inbound_ports: Vec<String>,
    /// Outbound destination CIDRs to capture: `*` (all) or a list; empty captures none.
    #[arg(long, value_name = "CIDRS", default_value = "*", value_delimiter = ',')]
    pub include_outbound_cidrs: Vec<String>,
    /// Program ip6tables too.
    #[arg(long, value_enum, default_value_t = Ipv6::Auto)]
    pub ipv6: Ipv6,
    /// The iptables implementation to use.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
}

impl Default for CaptureArgs {
    fn default() -> Self {
        CaptureArgs {
            inbound_port: DEFAULT_INBOUND_PORT,
            outbound_port: DEFAULT_OUTBOUND_PORT,
            admin_port: DEFAULT_ADMIN_PORT,
            probes_port: DEFAULT_PROBES_PORT,
            proxy_uid: DEFAULT_PROXY_UID,
            proxy_gid: DEFAULT_PROXY_UID,
            exclude_inbound_ports: vec![],
            exclude_outbound_ports: vec![],
            exclude_outbound_cidrs: vec![],
            include_inbound_ports: vec!["*".into()],
            include_outbound_cidrs: vec!["*".into()],
            ipv6: Ipv6::Auto,
            backend: Backend::Auto,
        }
    }
}

/// The capture, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub proxy_uid: u32,
    pub proxy_gid: u32,
    /// Never captured inbound: ward's own ports first, then the user's.
    pub exclude_inbound_ports: Vec<Ports>,
    pub exclude_outbound_ports: Vec<Ports>,
    pub exclude_outbound_cidrs: Vec<IpNet>,
    pub include_inbound_ports: Include<Ports>,
    pub include_outbound_cidrs: Include<IpNet>,
}

impl Capture {
    /// Checks the options.
    pub fn from_args(a: &CaptureArgs) -> Result<Capture, IptablesError> {
        for (flag, port) in [
            ("--inbound-port", a.inbound_port),
            ("--outbound-port", a.outbound_port),
            ("--admin-port", a.admin_port),
            ("--probes-port", a.probes_port),
        ] {
            if port == 0 {
                return Err(IptablesError::BadPort {
                    flag,
                    value: "0".into(),
                });
            }
        }
        if a.inbound_port == a.outbound_port {
            return Err(IptablesError::Invalid(format!(
                "--inbound-port and --outbound-port are both {}: give ward's two listeners different ports",
                a.inbound_port
            )));
        }
        let mut exclude_inbound = Vec::new();
        for own in [
            a.inbound_port,
            a.outbound_port,
            a.admin_port,
            a.probes_port,
            TUNNEL_PORT,
        ] {
            if !exclude_inbound.contains(&Ports::one(own)) {
                exclude_inbound.push(Ports::one(own));
            }
        }
        for p in parse_ports("--exclude-inbound-ports", &a.exclude_inbound_ports)? {
            if !exclude_inbound.contains(&p) {
                exclude_inbound.push(p);
            }
        }
        Ok(Capture {
            inbound_port: a.inbound_port,
            outbound_port: a.outbound_port,
            proxy_uid: a.proxy_uid,
            proxy_gid: a.proxy_gid,
            exclude_inbound_ports: exclude_inbound,
            exclude_outbound_ports: parse_ports("--exclude-outbound-ports", &a.exclude_outbound_ports)?,
            exclude_outbound_cidrs: parse_cidrs("--exclude-outbound-cidrs", &a.exclude_outbound_cidrs)?,
            include_inbound_ports: parse_include(&a.include_inbound_ports, |v| {
                parse_ports("--include-inbound-ports", v)
            })?,
            include_outbound_cidrs: parse_include(&a.include_outbound_cidrs, |v| {
                parse_cidrs("--include-outbound-cidrs", v)
            })?,
        })
    }

    /// The rules for one address family.
    pub fn ruleset(&self, family: Family) -> Ruleset {
        let mut r = Ruleset {
            family,
            chains: vec![INBOUND, IN_REDIRECT, OUTPUT, REDIRECT],
            rules: Vec::new(),
        };
        // Where the captured traffic goes.
        r.add(
            IN_REDIRECT,
            format!("-p tcp -j REDIRECT --to-ports {}", self.inbound_port),
        );
        r.add(
            REDIRECT,
            format!("-p tcp -j REDIRECT --to-ports {}", self.outbound_port),
        );

        // Inbound: ward's own ports and excluded ports pass; included ports are captured.
        r.add("PREROUTING", format!("-p tcp -j {INBOUND}"));
        for p in &self.exclude_inbound_ports {
            r.add(INBOUND, format!("-p tcp -m tcp --dport {p} -j RETURN"));
        }
        match &self.include_inbound_ports {
            Include::All => r.add(INBOUND, format!("-p tcp -j {IN_REDIRECT}")),
            Include::Only(ports) => {
                for p in ports {
                    r.add(INBOUND, format!("-p tcp -m tcp --dport {p} -j {IN_REDIRECT}"));
                }
            }
        }

        // Outbound: ward's own traffic, loopback and exclusions pass; the rest is captured.
        r.add("OUTPUT", format!("-p tcp -j {OUTPUT}"));
        r.add(
            OUTPUT,
            format!("-m owner --uid-owner {} -j RETURN", self.proxy_uid),
        );
        r.add(
            OUTPUT,
            format!("-m owner --gid-owner {} -j RETURN", self.proxy_gid),
        );
        r.add(OUTPUT, "-o lo -j RETURN".to_owned());
        r.add(OUTPUT, format!("-d {} -j RETURN", family.loopback()));
        for p in &self.exclude_outbound_ports {
            r.add(OUTPUT, format!("-p tcp -m tcp --dport {p} -j RETURN"));
        }
        for net in self.exclude_outbound_cidrs.iter().filter(|n| family.holds(n)) {
            r.add(OUTPUT, format!("-d {net} -j RETURN"));
        }
        match &self.include_outbound_cidrs {
            Include::All => r.add(OUTPUT, format!("-j {REDIRECT}")),
            Include::Only(nets) => {
                for net in nets.iter().filter(|n| family.holds(n)) {
                    r.add(OUTPUT, format!("-d {net} -j {REDIRECT}"));
                }
            }
        }
        r
    }
}

/// One rule: `-A chain spec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: &'static str,
    pub spec: String,
}

/// The nat-table rules for one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub family: Family,
    /// The chains ward creates.
    pub chains: Vec<&'static str>,
    pub rules: Vec<Rule>,
}

impl Ruleset {
    fn add(&mut self, chain: &'static str, spec: String) {
        self.rules.push(Rule { chain, spec });
    }

    /// The chain and rule lines, without the `*nat`/`COMMIT` frame.
    fn body(&self) -> String {
        let mut out = String::new();
        for chain in &self.chains {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for rule in &self.rules {
            let _ = writeln!(out, "-A {} {}", rule.chain, rule.spec);
        }
        out
    }

    /// The rules as `iptables-restore --noflush` input.
    pub fn restore_input(&self) -> String {
        format!("*nat\n{}COMMIT\n", self.body())
    }
}

/// What `iptables-save` shows of ward: the jumps into its chains and the chains themselves.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Rules outside ward's chains that jump into them, as `chain spec` (for `-D`).
    pub jumps: Vec<String>,
    /// ward's chains.
    pub chains: Vec<String>,
}

impl Installed {
    /// Reads the nat table of an `iptables-save` output.
    pub fn parse(save: &str) -> Installed {
        let mut found = Installed::default();
        let mut in_nat = false;
        for line in save.lines().map(str::trim) {
            if let Some(table) = line.strip_prefix('*') {
                in_nat = table == "nat";
                continue;
            }
            if !in_nat {
                continue;
            }
            if let Some(chain) = line.strip_prefix(':') {
                let name = chain.split_whitespace().next().unwrap_or_default();
                if name.starts_with(CHAIN_PREFIX) && !found.chains.iter().any(|c| c == name) {
                    found.chains.push(name.to_owned());
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let chain = rule.split_whitespace().next().unwrap_or_default();
                let jumps_to_ward = rule
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .windows(2)
                    .any(|w| matches!(w[0], "-j" | "-g") && w[1].starts_with(CHAIN_PREFIX));
                if !chain.starts_with(CHAIN_PREFIX) && jumps_to_ward {
                    found.jumps.push(rule.to_owned());
                }
            }
        }
        found
    }

    pub fn is_empty(&self) -> bool {
        self.jumps.is_empty() && self.chains.is_empty()
    }

    /// Lines that take these out: delete the jumps, flush every chain, then delete the chains
    /// not in `keep` (which the caller re-declares, which flushes them too).
    fn removal(&self, keep: &[&str]) -> String {
        let mut out = String::new();
        for jump in &self.jumps {
            let _ = writeln!(out, "-D {jump}");
        }
        for chain in &self.chains {
            let _ = writeln!(out, "-F {chain}");
        }
        for chain in self.chains.iter().filter(|c| !keep.contains(&c.as_str())) {
            let _ = writeln!(out, "-X {chain}");
        }
        out
    }
}

/// `iptables-restore --noflush` input that replaces whatever ward had with `rules`: one
/// transaction, so install is idempotent and never leaves half a capture behind.
pub fn replace_input(installed: &Installed, rules: &Ruleset) -> String {
    format!(
        "*nat\n{}{}COMMIT\n",
        installed.removal(&rules.chains),
        rules.body()
    )
}

/// `iptables-restore --noflush` input that removes everything ward had.
pub fn removal_input(installed: &Installed) -> String {
    format!("*nat\n{}COMMIT\n", installed.removal(&[]))
}

/// The tools of one backend, for one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    pub save: String,
    pub restore: String,
}

/// The concrete backend: a variant, or the plain `iptables` when no variant is installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    Legacy,
    Nft,
    Plain,
}

impl Resolved {
    pub fn tools(self, family: Family) -> Tools {
        let base = family.tool();
        let variant = match self {
            Resolved::Legacy => "-legacy",
            Resolved::Nft => "-nft",
            Resolved::Plain => "",
        };
        Tools {
            save: format!("{base}{variant}-save"),
            restore: format!("{base}{variant}-restore"),
        }
    }
}

/// Number of rules in an `iptables-save` output.
pub fn count_rules(save: &str) -> usize {
    save.lines().filter(|l| l.starts_with("-A ")).count()
}

/// Auto detection, given which variants are installed and (for each installed one) how many
/// rules its `-save` shows: the one already in use wins; else nft; else plain iptables.
pub fn choose(legacy: Option<usize>, nft: Option<usize>, plain: bool) -> Option<Resolved> {
    match (legacy, nft) {
        (Some(l), Some(n)) if l > n => Some(Resolved::Legacy),
        (_, Some(_)) => Some(Resolved::Nft),
        (Some(_), None) => Some(Resolved::Legacy),
        (None, None) => plain.then_some(Resolved::Plain),
    }
}

/// Whether `name` is an executable on PATH.
fn on_path(name: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| d.join(name).is_file())
}

/// Runs a tool, with `stdin` as its input; its stdout, or an error naming the command.
fn run(tool: &str, args: &[&str], stdin: Option<&str>) -> Result<String, IptablesError> {
    let command = std::iter::once(tool)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let fail = |detail: String| IptablesError::Command {
        command: command.clone(),
        detail,
    };
    let mut child = Command::new(tool)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(fail(format!("{} ({err})", out.status)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Picks the backend to use.
pub fn resolve(backend: Backend) -> Result<Resolved, IptablesError> {
    let present = |r: Resolved| on_path(&r.tools(Family::V4).restore) && on_path(&r.tools(Family::V4).save);
    let check = |r: Resolved| {
        if present(r) {
            Ok(r)
        } else {
            Err(IptablesError::BackendMissing {
                backend,
                tool: r.tools(Family::V4).restore,
            })
        }
    };
    match backend {
        Backend::Legacy => check(Resolved::Legacy),
        Backend::Nft => check(Resolved::Nft),
        Backend::Auto => {
            let rules = |r: Resolved| {
                present(r).then(|| {
                    run(&r.tools(Family::V4).save, &[], None)
                        .map(|s| count_rules(&s))
                        .unwrap_or(0)
                })
            };
            choose(
                rules(Resolved::Legacy),
                rules(Resolved::Nft),
                present(Resolved::Plain),
            )
            .ok_or(IptablesError::NotFound)
        }
    }
}

/// The families to program.
fn families(resolved: Resolved, ipv6: Ipv6) -> Vec<Family> {
    let v6 = match ipv6 {
        Ipv6::On => true,
        Ipv6::Off => false,
        Ipv6::Auto => {
            let tools = resolved.tools(Family::V6);
            on_path(&tools.restore) && run(&tools.save, &["-t", "nat"], None).is_ok()
        }
    };
    if v6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}

/// What install or uninstall did, for the user.
#[derive(Debug, Clone)]
pub struct Report {
    pub backend: Resolved,
    pub families: Vec<Family>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tools: Vec<String> = self
            .families
            .iter()
            .map(|fam| self.backend.tools(*fam).restore)
            .collect();
        write!(f, "{}", tools.join(" and "))
    }
}

/// Installs the capture: replaces whatever ward had with the rules of `args`.
pub fn install(args: &CaptureArgs) -> Result<Report, IptablesError> {
    let capture = Capture::from_args(args)?;
    let backend = resolve(args.backend)?;
    let families = families(backend, args.ipv6);
    for family in &families {
        let tools = backend.tools(*family);
        let save = run(&tools.save, &["-t", "nat"], None)?;
        let input = replace_input(&Installed::parse(&save), &capture.ruleset(*family));
        run(&tools.restore, &["--noflush"], Some(&input))?;
    }
    Ok(Report { backend, families })
}

/// Removes every `WARD_*` chain and every jump to one.
pub fn uninstall(args: &CaptureArgs) -> Result<Report, IptablesError> {
    let backend = resolve(args.backend)?;
    let families = families(backend, args.ipv6);
    for family in &families {
        let tools = backend.tools(*family);
        let save = run(&tools.save, &["-t", "nat"], None)?;
        let installed = Installed::parse(&save);
        if !installed.is_empty() {
            run(&tools.restore, &["--noflush"], Some(&removal_input(&installed)))?;
        }
    }
    Ok(Report { backend, families })
}

/// The rules `install` would apply, in `iptables-restore` form; nothing is run.
pub fn print(args: &CaptureArgs) -> Result<String, IptablesError> {
    let capture = Capture::from_args(args)?;
    let mut out = String::from("# iptables-restore --noflush\n");
    out.push_str(&capture.ruleset(Family::V4).restore_input());
    if args.ipv6 != Ipv6::Off {
        let when = if args.ipv6 == Ipv6::Auto {
            " (applied when ip6tables works)"
        } else {
            ""
        };
        let _ = writeln!(out, "# ip6tables-restore --noflush{when}");
        out.push_str(&capture.ruleset(Family::V6).restore_input());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn capture(f: impl FnOnce(&mut CaptureArgs)) -> Capture {
        let mut a = CaptureArgs::default();
        f(&mut a);
        Capture::from_args(&a).unwrap()
    }

    fn lines(r: &Ruleset) -> Vec<String> {
        r.restore_input().lines().map(str::to_owned).collect()
    }

    #[test]
    fn default_rules_v4() {
        let got = capture(|_| {}).ruleset(Family::V4).restore_input();
        let want = "\
*nat
:WARD_INBOUND - [0:0]
:WARD_IN_REDIRECT - [0:0]
:WARD_OUTPUT - [0:0]
:WARD_REDIRECT - [0:0]
-A WARD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A WARD_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A PREROUTING -p tcp -j WARD_INBOUND
-A WARD_INBOUND -p tcp -m tcp --dport 15006 -j RETURN
-A WARD_INBOUND -p tcp -m tcp --dport 15001 -j RETURN
-A WARD_INBOUND -p tcp -m tcp --dport 15000 -j RETURN
-A WARD_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A WARD_INBOUND -p tcp -m tcp --dport 15008 -j RETURN
-A WARD_INBOUND -p tcp -j WARD_IN_REDIRECT
-A OUTPUT -p tcp -j WARD_OUTPUT
-A WARD_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A WARD_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A WARD_OUTPUT -o lo -j RETURN
-A WARD_OUTPUT -d 127.0.0.1/32 -j RETURN
-A WARD_OUTPUT -j WARD_REDIRECT
COMMIT
";
        assert_eq!(got, want);
    }

    #[test]
    fn v6_uses_v6_loopback_and_only_v6_cidrs() {
        let c = capture(|a| {
            a.exclude_outbound_cidrs = vec!["10.0.0.0/8,fd00::/8".into()];
        });
        let v6 = lines(&c.ruleset(Family::V6));
        assert!(
            v6.contains(&"-A WARD_OUTPUT -d ::1/128 -j RETURN".to_owned()),
            "{v6:?}"
        );
        assert!(
            v6.contains(&"-A WARD_OUTPUT -d fd00::/8 -j RETURN".to_owned()),
            "{v6:?}"
        );
        assert!(!v6.iter().any(|l| l.contains("10.0.0.0/8")), "{v6:?}");
        let v4 = lines(&c.ruleset(Family::V4));
        assert!(
            v4.contains(&"-A WARD_OUTPUT -d 10.0.0.0/8 -j RETURN".to_owned()),
            "{v4:?}"
        );
        assert!(!v4.iter().any(|l| l.contains("fd00")), "{v4:?}");
    }

    #[test]
    fn exclusions_come_before_the_redirect() {
        let c = capture(|a| {
            a.exclude_inbound_ports = vec!["22".into(), "9000-9010".into()];
            a.exclude_outbound_ports = vec!["5432,6379".into()];
            a.exclude_outbound_cidrs = vec!["169.254.169.254".into()];
            a.proxy_uid = 2000;
            a.proxy_gid = 3000;
            a.inbound_port = 16006;
        });
        let l = lines(&c.ruleset(Family::V4));
        let pos = |s: &str| {
            l.iter()
                .position(|x| x == s)
                .unwrap_or_else(|| panic!("missing {s:?} in {l:?}"))
        };
        let redirect_in = pos("-A WARD_INBOUND -p tcp -j WARD_IN_REDIRECT");
        assert!(pos("-A WARD_INBOUND -p tcp -m tcp --dport 22 -j RETURN") < redirect_in);
        assert!(pos("-A WARD_INBOUND -p tcp -m tcp --dport 9000:9010 -j RETURN") < redirect_in);
        assert!(pos("-A WARD_INBOUND -p tcp -m tcp --dport 16006 -j RETURN") < redirect_in);
        pos("-A WARD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006");
        let redirect_out = pos("-A WARD_OUTPUT -j WARD_REDIRECT");
        for s in [
            "-A WARD_OUTPUT -m owner --uid-owner 2000 -j RETURN",
            "-A WARD_OUTPUT -m owner --gid-owner 3000 -j RETURN",
            "-A WARD_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN",
            "-A WARD_OUTPUT -p tcp -m tcp --dport 6379 -j RETURN",
            "-A WARD_OUTPUT -d 169.254.169.254/32 -j RETURN",
        ] {
            assert!(pos(s) < redirect_out, "{s}");
        }
    }

    #[test]
    fn include_lists() {
        let c = capture(|a| {
            a.include_inbound_ports = vec!["8080".into(), "9090".into()];
            a.include_outbound_cidrs = vec!["10.96.0.0/12".into()];
        });
        let l = lines(&c.ruleset(Family::V4));
        assert!(l.contains(&"-A WARD_INBOUND -p tcp -m tcp --dport 8080 -j WARD_IN_REDIRECT".to_owned()));
        assert!(l.contains(&"-A WARD_INBOUND -p tcp -m tcp --dport 9090 -j WARD_IN_REDIRECT".to_owned()));
        assert!(!l.contains(&"-A WARD_INBOUND -p tcp -j WARD_IN_REDIRECT".to_owned()));
        assert!(l.contains(&"-A WARD_OUTPUT -d 10.96.0.0/12 -j WARD_REDIRECT".to_owned()));
        assert!(!l.contains(&"-A WARD_OUTPUT -j WARD_REDIRECT".to_owned()));
        // An IPv4-only include captures nothing over IPv6.
        let v6 = lines(&c.ruleset(Family::V6));
        assert!(!v6.iter().any(|l| l.contains("-j WARD_REDIRECT")), "{v6:?}");

        // Empty include: nothing captured in that direction.
        let none = capture(|a| {
            a.include_inbound_ports = vec![String::new()];
        });
        let l = lines(&none.ruleset(Family::V4));
        assert!(!l.iter().any(|l| l.contains("-j WARD_IN_REDIRECT")), "{l:?}");
    }

    #[test]
    fn every_chain_is_ward_s() {
        let r = capture(|_| {}).ruleset(Family::V4);
        for chain in &r.chains {
            assert!(chain.starts_with(CHAIN_PREFIX));
        }
        for rule in &r.rules {
            assert!(
                rule.chain.starts_with(CHAIN_PREFIX) || rule.spec.contains("-j WARD_"),
                "a rule in a built-in chain that is not a jump to ward: {rule:?}"
            );
        }
    }

    #[test]
    fn bad_options_are_refused_with_the_flag() {
        let bad = |f: fn(&mut CaptureArgs)| {
            let mut a = CaptureArgs::default();
            f(&mut a);
            Capture::from_args(&a).unwrap_err().to_string()
        };
        let e = bad(|a| a.exclude_inbound_ports = vec!["http".into()]);
        assert!(
            e.contains("--exclude-inbound-ports") && e.contains("\"http\""),
            "{e}"
        );
        let e = bad(|a| a.exclude_outbound_ports = vec!["70000".into()]);
        assert!(e.contains("--exclude-outbound-ports"), "{e}");
        let e = bad(|a| a.exclude_outbound_ports = vec!["9-1".into()]);
        assert!(e.contains("not a port"), "{e}");
        let e = bad(|a| a.exclude_outbound_cidrs = vec!["10.0.0.0/33".into()]);
        assert!(e.contains("--exclude-outbound-cidrs"), "{e}");
        let e = bad(|a| a.include_outbound_cidrs = vec!["example.com".into()]);
        assert!(e.contains("--include-outbound-cidrs"), "{e}");
        let e = bad(|a| a.outbound_port = a.inbound_port);
        assert!(e.contains("different ports"), "{e}");
    }

    const SAVED: &str = "\
# Generated by iptables-nft-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j WARD_NOT_NAT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:WARD_INBOUND - [0:0]
:WARD_IN_REDIRECT - [0:0]
:WARD_OLD - [0:0]
-A PREROUTING -j KUBE-SERVICES
-A PREROUTING -p tcp -j WARD_INBOUND
-A OUTPUT -p tcp -j WARD_OLD
-A WARD_INBOUND -p tcp -j WARD_IN_REDIRECT
-A WARD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
COMMIT
";

    #[test]
    fn installed_is_read_from_the_nat_table_only() {
        let i = Installed::parse(SAVED);
        assert_eq!(i.chains, ["WARD_INBOUND", "WARD_IN_REDIRECT", "WARD_OLD"]);
        assert_eq!(
            i.jumps,
            ["PREROUTING -p tcp -j WARD_INBOUND", "OUTPUT -p tcp -j WARD_OLD"]
        );
        assert!(Installed::parse("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n").is_empty());
        assert!(Installed::parse("").is_empty());
    }

    #[test]
    fn replace_removes_old_jumps_and_stale_chains_first() {
        let rules = capture(|_| {}).ruleset(Family::V4);
        let input = replace_input(&Installed::parse(SAVED), &rules);
        let l: Vec<&str> = input.lines().collect();
        assert_eq!(l[0], "*nat");
        assert_eq!(l[1], "-D PREROUTING -p tcp -j WARD_INBOUND");
        assert_eq!(l[2], "-D OUTPUT -p tcp -j WARD_OLD");
        assert_eq!(
            &l[3..6],
            ["-F WARD_INBOUND", "-F WARD_IN_REDIRECT", "-F WARD_OLD"]
        );
        assert_eq!(l[6], "-X WARD_OLD");
        assert_eq!(l[7], ":WARD_INBOUND - [0:0]");
        assert_eq!(*l.last().unwrap(), "COMMIT");
        // The new rules follow, once each.
        assert_eq!(input.matches("-A PREROUTING -p tcp -j WARD_INBOUND").count(), 1);
    }

    #[test]
    fn removal_deletes_everything() {
        let input = removal_input(&Installed::parse(SAVED));
        assert_eq!(
            input,
            "*nat\n-D PREROUTING -p tcp -j WARD_INBOUND\n-D OUTPUT -p tcp -j WARD_OLD\n-F WARD_INBOUND\n-F WARD_IN_REDIRECT\n-F WARD_OLD\n-X WARD_INBOUND\n-X WARD_IN_REDIRECT\n-X WARD_OLD\nCOMMIT\n"
        );
    }

    #[test]
    fn backend_choice() {
        // In use wins.
        assert_eq!(choose(Some(12), Some(0), true), Some(Resolved::Legacy));
        assert_eq!(choose(Some(0), Some(3), true), Some(Resolved::Nft));
        // Neither in use: nft.
        assert_eq!(choose(Some(0), Some(0), true), Some(Resolved::Nft));
        assert_eq!(choose(None, Some(0), true), Some(Resolved::Nft));
        assert_eq!(choose(Some(0), None, true), Some(Resolved::Legacy));
        assert_eq!(choose(None, None, true), Some(Resolved::Plain));
        assert_eq!(choose(None, None, false), None);
        assert_eq!(Resolved::Nft.tools(Family::V6).restore, "ip6tables-nft-restore");
        assert_eq!(Resolved::Legacy.tools(Family::V4).save, "iptables-legacy-save");
        assert_eq!(Resolved::Plain.tools(Family::V4).restore, "iptables-restore");
    }

    #[test]
    fn print_shows_both_families_unless_off() {
        let out = print(&CaptureArgs::default()).unwrap();
        assert!(out.starts_with("# iptables-restore --noflush\n*nat\n"), "{out}");
        assert!(out.contains("# ip6tables-restore --noflush (applied when ip6tables works)\n*nat\n"));
        assert_eq!(out.matches("COMMIT").count(), 2);
        let off = print(&CaptureArgs {
            ipv6: Ipv6::Off,
            ..CaptureArgs::default()
        })
        .unwrap();
        assert_eq!(off.matches("COMMIT").count(), 1);
        assert!(!off.contains("::1/128"));
    }
}
