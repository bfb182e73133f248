//! What each subcommand does. Every failure ends in a message that says what to fix and
//! exit status 1; nothing here panics on bad input.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ward_certs::{BundleSet, DevCa, SpiffeId, SvidVerifier, TrustBundle, TrustDomain};

use crate::audit::AuditLog;
use crate::audit::rfc3339;
use crate::config::Config;
use crate::ops::cli::{CertsCommand, Cli, Command, IptablesCommand, PolicyCommand};
use crate::ops::logging::init_logging;
use crate::running;

/// Runs one command line.
pub fn main(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Run { config, workers } => run(&config, workers),
        Command::Check { config, effective } => check(&config, effective),
        Command::Demo { keep } => crate::ops::demo::run(keep),
        Command::Certs(cmd) => certs(cmd),
        Command::Policy(PolicyCommand::Explain {
            config,
            listener,
            peer,
            method,
            path,
            headers,
            json,
        }) => explain(
            &config,
            &listener,
            &peer,
            method.as_deref(),
            path.as_deref(),
            &headers,
            json,
        ),
        Command::Iptables(cmd) => iptables(&cmd),
        Command::Inject(args) => crate::ops::inject::run(&args),
        Command::Shutdown { admin } => crate::ops::shutdown::request(admin),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The main thread's event loop: it accepts, runs the admin server, reloads and identity, and
/// serves connections; with more than one worker it is shard 0 of `shards` and hands the
/// connections it does not keep to the others, each a single-threaded event loop of its own.
fn runtime(workers: usize) -> Result<tokio::runtime::Runtime, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    crate::data::shards::start(workers)?;
    Ok(rt)
}

fn run(path: &Path, workers: usize) -> Result<(), String> {
    let model = crate::config::load(path).map_err(|e| format!("invalid config:\n{e}"))?;
    let config = &model.config;
    init_logging(&config.log);
    let audit = AuditLog::open(&config.log.audit.value).map_err(|e| format!("log.audit: {e}"))?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %model.json, "ward starting");
    for w in config.warnings(&path.display().to_string()) {
        tracing::warn!("{w}");
    }
    match crate::limits::raise_nofile() {
        Ok((before, after)) => tracing::info!(before, after, "descriptor limit (RLIMIT_NOFILE)"),
        Err((before, e)) => {
            tracing::warn!(limit = before, error = %e, "cannot raise the descriptor limit (RLIMIT_NOFILE)")
        }
    }
    let drain_timeout = config.drain_timeout;
    let final_flush = audit.clone();
    let result = runtime(workers)?.block_on(async {
        let running = tokio::select! {
            r = running::start(&model, audit) => r.map_err(|e| e.to_string())?,
            _ = running::wait_for_signal() => return Ok(()),
        };
        if let Some(tls) = running.store.current() {
            let info = tls.identity.info();
            tracing::info!(id = %info.id, serial = %info.serial, not_after = %rfc3339(info.not_after), "ready");
        }
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| format!("cannot install the SIGHUP handler: {e}"))?;
        let mut shutdown = running.shutdown_requested.clone();
        let mut last_text = std::fs::read(path).ok();
        let mut poll = tokio::time::interval(CONFIG_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut drain_timeout = drain_timeout;
        loop {
            tokio::select! {
                _ = running::wait_for_signal() => break,
                _ = shutdown.changed() => {
                    tracing::info!("POST /shutdown: draining");
                    break;
                }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the config and re-reading the identity");
                    // The identity material is re-read now (files at once, the Workload API
                    // reconnected, the dev CA re-issues); an update is still validated, and a
                    // bad one refused while the current identity keeps serving.
                    running.reload.trigger();
                    last_text = std::fs::read(path).ok();
                    if let Some(t) = reload_config(path, &running).await {
                        drain_timeout = t;
                    }
                }
                _ = poll.tick() => {
                    let text = std::fs::read(path).ok();
                    if text.is_some() && text != last_text {
                        last_text = text;
                        tracing::info!(config = %path.display(), "config file changed: reloading");
                        if let Some(t) = reload_config(path, &running).await {
                            drain_timeout = t;
                        }
                    }
                }
            }
        }
        let open = running.shared.open.get();
        tracing::info!(open, timeout = ?drain_timeout, "draining: not ready, no new connections");
        let left = running.drain(drain_timeout).await;
        if left > 0 {
            tracing::warn!(left, "drain timeout reached; closing the remaining connections");
        } else {
            tracing::info!("drained; exiting");
        }
        Ok(())
    });
    // The main event loop is gone (the runtime above was a temporary); end the workers' too.
    // Connections still open past drain_timeout are dropped with them, and the records of
    // their requests cut short are written before the exit.
    crate::data::shards::stop();
    final_flush.flush();
    result
}

/// How often `ward run` looks at its config file for changes (Kubernetes ConfigMaps change
/// by a symlink swap, which a content check sees whatever the file system does).
const CONFIG_POLL: Duration = Duration::from_secs(2);

/// Loads, checks and applies a changed config; a broken one is refused and counted, and the
/// last good config keeps serving. Returns the new drain timeout when applied.
async fn reload_config(path: &Path, running: &running::Running) -> Option<Duration> {
    let metrics = &running.shared.metrics;
    // Read, checked and compiled on a blocking thread: for a config with thousands of rules
    // that takes tens of milliseconds (about 90 for 10,000 rules), which would otherwise stall
    // the thread that accepts connections (and, with one worker, serves them).
    let owned = path.to_owned();
    let loaded = tokio::task::spawn_blocking(move || crate::config::load(&owned)).await;
    let model = match loaded {
        Ok(Ok(model)) => model,
        Ok(Err(e)) => {
            metrics.reload("invalid");
            tracing::error!(error = %e, "config reload refused; keeping the last good config");
            return None;
        }
        Err(e) => {
            metrics.reload("invalid");
            tracing::error!(error = %e, "config reload failed; keeping the last good config");
            return None;
        }
    };
    let drain_timeout = model.config.drain_timeout;
    let applied = running.apply(model).await;
    match applied {
        Ok(()) => {
            metrics.reload("applied");
            tracing::info!(config = %running.config_json(), "config reloaded");
            Some(drain_timeout)
        }
        Err(e) => {
            metrics.reload("refused");
            tracing::error!(error = %e, "config reload refused; keeping the last good config");
            None
        }
    }
}

fn check(path: &Path, effective: bool) -> Result<(), String> {
    let model = crate::config::load(path).map_err(|e| e.to_string())?;
    let config = &model.config;
    for w in config.warnings(&path.display().to_string()) {
        eprintln!("warning: {w}");
    }
    let updates = runtime(1)?.block_on(async {
        let mut rx = running::identity_source(config).map_err(|e| e.to_string())?;
        rx.recv()
            .await
            .ok_or_else(|| "the identity source produced nothing".to_owned())
    })?;
    let identity = updates.map_err(|e| format!("{}: identity: {e}", path.display()))?;
    let info = identity.info();
    println!(
        "{}: ok: {} inbound, {} outbound, {} policies; identity {} (serial {}, expires {}), trust domains: {}",
        path.display(),
        config.inbound.len(),
        config.outbound.len(),
        config.policies.len(),
        info.id,
        info.serial,
        rfc3339(info.not_after),
        identity.bundles().trust_domains().join(", ")
    );
    if effective {
        let json = serde_json::to_string_pretty(&model.json).map_err(|e| e.to_string())?;
        println!("{json}");
    }
    Ok(())
}

fn certs(cmd: CertsCommand) -> Result<(), String> {
    match cmd {
        CertsCommand::Ca { trust_domain, out } => {
            let td = TrustDomain::new(&trust_domain)
                .map_err(|e| format!("--trust-domain {trust_domain:?}: {e}"))?;
            let ca = DevCa::generate(&td).map_err(|e| e.to_string())?;
            ca.save(&out).map_err(|e| e.to_string())?;
            println!(
                "dev CA for {td} written to {} (ca.pem, ca_key.pem)",
                out.display()
            );
            Ok(())
        }
        CertsCommand::Issue { ca, id, ttl, out } => {
            let ca = DevCa::load(&ca).map_err(|e| format!("--ca: {e}"))?;
            let id = SpiffeId::parse(&id).map_err(|e| format!("--id {id:?}: {e}"))?;
            let svid = ca.issue(&id, ttl).map_err(|e| e.to_string())?;
            ca.write_svid(&svid, &out).map_err(|e| e.to_string())?;
            println!(
                "SVID for {id} valid for {} written to {} (svid.pem, svid_key.pem, bundle.pem)",
                humantime::format_duration(ttl),
                out.display()
            );
            Ok(())
        }
        CertsCommand::Inspect { file, bundle } => inspect(&file, bundle.as_deref()),
    }
}

fn inspect(file: &Path, bundle: Option<&Path>) -> Result<(), String> {
    let bytes = ward_certs::pem::read_file(file).map_err(|e| e.to_string())?;
    let chain = ward_certs::pem::certs(&bytes, &file.display().to_string()).map_err(|e| e.to_string())?;
    println!("file:        {}", file.display());
    println!("chain:       {} certificate(s)", chain.len());
    let info = ward_certs::svid::check_leaf(&chain[0]);
    let info = match info {
        Ok(info) => info,
        Err(e) => {
            println!("verdict:     not a valid X509-SVID: {e}");
            return Err(format!("{}: not a valid X509-SVID: {e}", file.display()));
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    println!("spiffe id:   {}", info.id);
    println!("serial:      {}", info.serial);
    println!("not before:  {}", rfc3339(info.not_before));
    let left = info.not_after - now;
    let when = if left >= 0 {
        format!(
            "in {}",
            humantime::format_duration(Duration::from_secs(left.unsigned_abs()))
        )
    } else {
        format!(
            "EXPIRED {} ago",
            humantime::format_duration(Duration::from_secs(left.unsigned_abs()))
        )
    };
    println!("not after:   {} ({when})", rfc3339(info.not_after));
    println!("leaf rules:  valid X509-SVID leaf");
    let Some(bundle_path) = bundle else {
        return if left < 0 {
            Err(format!("{}: expired", file.display()))
        } else {
            Ok(())
        };
    };
    let td = info.id.trust_domain();
    let tb = TrustBundle::load(td.clone(), bundle_path).map_err(|e| e.to_string())?;
    let mut set = BundleSet::new();
    set.insert(tb);
    let verifier = SvidVerifier::new(std::sync::Arc::new(set), &ward_certs::provider());
    match verifier.verify(
        &chain[0],
        &chain[1..],
        ward_certs::UnixTime::now(),
        ward_certs::svid_usage(),
    ) {
        Ok(_) => {
            println!(
                "verdict:     valid: chains to {} as the bundle of {td}",
                bundle_path.display()
            );
            Ok(())
        }
        Err(e) => {
            println!("verdict:     invalid: {e}");
            Err(format!("{}: {e}", file.display()))
        }
    }
}

fn explain(
    path: &Path,
    listener: &str,
    peer: &str,
    method: Option<&str>,
    req_path: Option<&str>,
    headers: &[String],
    json: bool,
) -> Result<(), String> {
    use ward_filters::{Peer, Request, normalize_target};
    // The model of the config, without looking at the files it names: explaining a policy
    // needs no identity.
    let model = Config::read(path)
        .and_then(|c| c.compile(&path.display().to_string()))
        .map_err(|e| e.to_string())?;
    let Some((policy_name, policy)) = model.settings.policy_for(listener, None) else {
        let names: Vec<&str> = model.inbound.iter().map(|l| &*l.name).collect();
        return Err(format!(
            "no inbound listener {listener:?} (inbound listeners: {})",
            names.join(", ")
        ));
    };
    let default_allows = model
        .config
        .policies
        .get(policy_name)
        .is_some_and(|spec| spec.value.default == ward_filters::DefaultAction::Allow);
    let peer_id = match peer {
        "unauthenticated" => None,
        id => Some(SpiffeId::parse(id).map_err(|e| format!("--peer {id:?}: {e}"))?),
    };
    let who = match &peer_id {
        Some(id) => Peer::Authenticated(id.as_str()),
        None => Peer::Unauthenticated,
    };
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(n, v)| (n.trim(), v.trim()))
                .ok_or_else(|| format!("--header {h:?}: write it as name:value"))
        })
        .collect::<Result<_, _>>()?;
    let pairs: &[(&str, &str)] = &pairs;
    let method = method.map(str::to_ascii_uppercase);
    let normalized = match req_path {
        Some(p) => Some(
            normalize_target(method.as_deref().unwrap_or("GET"), p)
                .map_err(|e| format!("--path {p:?}: ward answers 400: {e}"))?,
        ),
        None => None,
    };
    let request = match (&method, &normalized) {
        (None, None) => None,
        (m, p) => Some(Request {
            method: m.as_deref().unwrap_or("GET"),
            path: p.as_deref().unwrap_or("/"),
            headers: &pairs,
        }),
    };
    let explanation = policy.explain(who, request.as_ref());
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&explanation).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    let v = &explanation.verdict;
    // The path the decision was made on, and what it was normalized from when that differs.
    let asked = match (&request, req_path) {
        (Some(r), Some(raw)) if raw != r.path => {
            format!(", request {} {} (normalized from {raw})", r.method, r.path)
        }
        (Some(r), _) => format!(", request {} {}", r.method, r.path),
        (None, _) => String::new(),
    };
    println!("listener {listener} (policy {policy_name}), peer {who}{asked}");
    match &v.rule {
        Some(rule) => println!("decision: {} by rule {rule} ({})", v.decision, v.reason),
        None => println!("decision: {} ({})", v.decision, v.reason),
    }
    println!("rules, in order:");
    let width = explanation.rules.iter().map(|r| r.name.len()).max().unwrap_or(0);
    for r in &explanation.rules {
        let why = r.why_not.as_deref().unwrap_or("matches");
        println!("  {:width$}  {:5}  {why}", r.name, r.action.to_string());
    }
    println!("default: {}", if default_allows { "allow" } else { "deny" });
    Ok(())
}

/// `ward iptables install|uninstall|print`.
fn iptables(cmd: &IptablesCommand) -> Result<(), String> {
    use crate::ops::iptables::{install, print, uninstall};
    match cmd {
        IptablesCommand::Install(args) => {
            let report = install(args).map_err(|e| e.to_string())?;
            println!("ward capture rules installed with {report}");
        }
        IptablesCommand::Uninstall(args) => {
            let report = uninstall(args).map_err(|e| e.to_string())?;
            println!("ward capture rules removed with {report}");
        }
        IptablesCommand::Print(args) => print!("{}", print(args).map_err(|e| e.to_string())?),
    }
    Ok(())
}
