//! The command line: `ward run|check|demo|certs|policy|iptables|inject|shutdown`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// ward: a sidecar proxy that puts SPIFFE workload identity on every connection.
///
/// It terminates and originates mutual TLS with short-lived X.509-SVIDs and checks the peer's
/// SPIFFE ID against policy before it forwards a byte, writing an audit record of each decision.
#[derive(Debug, Parser)]
#[command(name = "ward", version, propagate_version = true)]
#[command(
    after_help = "Quick start:\n  ward demo                 a whole mesh on loopback with the dev CA\n  ward check -c ward.yaml   validate a config\n  ward run -c ward.yaml     run the proxy"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    #[command(after_help = "Example:\n  ward run -c /etc/ward/ward.yaml")]
    Run {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Worker threads. The default, 1, serves every connection on the main thread's event
        /// loop (at most one core). N > 1 starts N workers, each its own single-threaded event
        /// loop with its own links to peers and pool to the app; each accepted connection goes
        /// to the worker serving the fewest. Give a busy service's sidecar 2 or more.
        #[arg(long, env = "WARD_WORKERS", default_value_t = 1)]
        workers: usize,
    },
    /// Validate a config, its policies and identity material; exit 0, or 1 with every problem.
    #[command(
        after_help = "Examples:\n  ward check -c ward.yaml && echo ok\n  ward check -c ward.yaml --effective   also print the config with every default filled in"
    )]
    Check {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Print the effective config (every default filled in, as `ward run` logs it) as
        /// JSON after the check.
        #[arg(long)]
        effective: bool,
    },
    /// A whole mesh on loopback with the dev CA: an app, two sidecars, allowed and denied
    /// calls and a live rotation, printed step by step.
    #[command(
        after_help = "Examples:\n  ward demo          run it and exit\n  ward demo --keep   leave the mesh up to explore (Ctrl-C to stop)"
    )]
    Demo {
        /// Leave the mesh running after the walkthrough.
        #[arg(long)]
        keep: bool,
    },
    /// Development certificates: a CA, SVIDs from it, and inspection of any certificate.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Ask a config's policies questions.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Transparent capture for a pod: the nat-table rules that send its TCP through ward.
    #[command(subcommand)]
    Iptables(IptablesCommand),
    /// Add the ward sidecar and capture init container to Kubernetes workloads.
    #[command(
        after_help = "Examples:\n  ward inject -f app.yaml | kubectl apply -f -\n  kubectl get deploy web -o yaml | ward inject -f - --identity spire | kubectl apply -f -\n\nAnnotations on a pod template: ward.dev/inject: \"false\" skips it; ward.dev/exclude-inbound-ports,\nward.dev/exclude-outbound-ports, ward.dev/exclude-outbound-cidrs, ward.dev/include-inbound-ports and\nward.dev/include-outbound-cidrs pass on to `ward iptables install`."
    )]
    Inject(crate::ops::inject::InjectArgs),
    /// Ask a running ward to drain and exit (POST /shutdown on its admin port); for preStop hooks.
    #[command(after_help = "Example:\n  ward shutdown --admin 127.0.0.1:15000")]
    Shutdown {
        /// ward's admin address.
        #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:15000")]
        admin: std::net::SocketAddr,
    },
}

#[derive(Debug, Subcommand)]
pub enum IptablesCommand {
    /// Install the capture rules (replacing any ward rules already there).
    #[command(
        after_help = "Examples:\n  ward iptables install\n  ward iptables install --exclude-inbound-ports 22 --exclude-outbound-cidrs 169.254.169.254/32"
    )]
    Install(crate::ops::iptables::CaptureArgs),
    /// Remove every WARD_* chain and every jump to one.
    #[command(after_help = "Example:\n  ward iptables uninstall")]
    Uninstall(crate::ops::iptables::CaptureArgs),
    /// Print the rules `install` would apply, in iptables-restore form; nothing is changed.
    #[command(after_help = "Example:\n  ward iptables print --exclude-outbound-ports 5432 --ipv6 off")]
    Print(crate::ops::iptables::CaptureArgs),
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// The decision for a peer (and request) on a listener, the rule that made it, and why
    /// each other rule did not match.
    #[command(
        after_help = "Examples:\n  ward policy explain -c ward.yaml --listener web --peer spiffe://example.org/ns/default/sa/frontend\n  ward policy explain -c ward.yaml --listener web --peer spiffe://example.org/ns/default/sa/frontend --method GET --path /api/users\n  ward policy explain -c ward.yaml --listener web --peer unauthenticated --method POST --path /login --header x-tenant:acme"
    )]
    Explain {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// An inbound listener's name.
        #[arg(long)]
        listener: String,
        /// The peer's SPIFFE ID, or `unauthenticated` for a plaintext peer.
        #[arg(long)]
        peer: String,
        /// HTTP method (with --path: a request-level question).
        #[arg(long)]
        method: Option<String>,
        /// HTTP path; normalized as ward normalizes it.
        #[arg(long)]
        path: Option<String>,
        /// A request header, `name:value`; repeatable.
        #[arg(long = "header", value_name = "NAME:VALUE")]
        headers: Vec<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create a development CA (ca.pem, ca_key.pem) for a trust domain.
    #[command(after_help = "Example:\n  ward certs ca --trust-domain example.org --out ./ca")]
    Ca {
        /// The trust domain, e.g. example.org.
        #[arg(long)]
        trust_domain: String,
        /// Directory to write ca.pem and ca_key.pem into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Issue an X509-SVID (svid.pem, svid_key.pem, bundle.pem) from a development CA.
    #[command(
        after_help = "Example:\n  ward certs issue --ca ./ca --id spiffe://example.org/ns/default/sa/web --ttl 1h --out ./web"
    )]
    Issue {
        /// The CA directory made by `ward certs ca`.
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The SPIFFE ID to issue.
        #[arg(long)]
        id: String,
        /// Lifetime, e.g. 30m or 1h.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        /// Directory to write svid.pem, svid_key.pem and bundle.pem into.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Show a certificate's SPIFFE ID, serial and validity, and check it as an X509-SVID.
    #[command(
        after_help = "Examples:\n  ward certs inspect web/svid.pem\n  ward certs inspect web/svid.pem --bundle web/bundle.pem"
    )]
    Inspect {
        /// A PEM file with the certificate (leaf first, then intermediates).
        file: PathBuf,
        /// A trust bundle (PEM or SPIFFE JWKS) to validate the chain against.
        #[arg(long, value_name = "FILE")]
        bundle: Option<PathBuf>,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 30m or 1h: {e}"))
}
