//! Running a proxy from a checked config: the admin server first (so `/live` answers and
//! `/ready` says why not), then the first valid identity, then every listener. A reload swaps
//! policies and settings atomically and restarts only listeners whose spec changed; drain
//! stops accepting and lets open connections finish.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;
use ward_certs::{
    Backoff, CredentialStore, DevCa, DevSource, Federation, FilesSource, FilesTiming, IdentityUpdates,
    Reload, SpiffeId, TlsOptions, TrustDomain, UpdateResult, WorkloadApiSource,
};

use crate::admin::{self, AdminState};
use crate::audit::{AuditLog, Direction};
use crate::config::{Config, InboundModel, Model, OutboundModel};
use crate::data::accept::OpenCount;
use crate::data::inbound::{self, Inbound};
use crate::data::outbound::{self, Outbound};
use crate::metrics::Metrics;
use crate::pools::AppClient;
use crate::state::Shared;

/// Why the proxy could not start (or a reload was refused).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("identity: {0}")]
    Identity(String),
    #[error("listener {name:?}: cannot listen on {addr}: {source} (is another process using the port?)")]
    Bind {
        name: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A listener as compiled, compared across reloads.
#[derive(Debug, Clone, PartialEq)]
enum Spec {
    Inbound(InboundModel),
    Outbound(OutboundModel),
}

impl Spec {
    fn listen(&self) -> SocketAddr {
        match self {
            Spec::Inbound(l) => l.spec.listen,
            Spec::Outbound(l) => l.spec.listen,
        }
    }
}

struct ListenerHandle {
    spec: Spec,
    /// Open connections, counted against `max_connections`; kept across a restart by reload
    /// so connections from before it still count.
    open: Arc<std::sync::atomic::AtomicUsize>,
    addr: SocketAddr,
    socket: Arc<TcpListener>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// A running proxy.
pub struct Running {
    pub store: Arc<CredentialStore>,
    pub shared: Arc<Shared>,
    /// Makes the identity source re-read now (SIGHUP): see [`crate::ops::reload`].
    pub reload: Reload,
    /// The admin server's bound address, when `admin.listen` is set.
    pub admin_addr: Option<SocketAddr>,
    /// Flips when `POST /shutdown` asks ward to drain and exit.
    pub shutdown_requested: watch::Receiver<bool>,
    shutdown_tx: watch::Sender<bool>,
    listeners: Mutex<HashMap<String, ListenerHandle>>,
    config_json: Arc<ArcSwap<serde_json::Value>>,
    stop_background: watch::Sender<bool>,
    background: Vec<JoinHandle<()>>,
}

/// Starts the identity source named by the config.
pub fn identity_source(config: &Config) -> Result<IdentityUpdates, StartError> {
    let id = &config.identity.value;
    let mut federation = Federation::default();
    for (td, path) in &id.federation {
        let td = TrustDomain::new(td).map_err(|e| StartError::Identity(format!("federation {td:?}: {e}")))?;
        federation.0.push((td, path.clone()));
    }
    if let Some(files) = &id.files {
        let layout = files.value.layout().map_err(StartError::Identity)?;
        return Ok(FilesSource {
            layout,
            federation,
            timing: FilesTiming::default(),
        }
        .spawn());
    }
    if let Some(api) = &id.workload_api {
        let endpoint = api.value.endpoint().ok_or_else(|| {
            StartError::Identity(format!(
                "workload_api.socket is not set and neither is {}",
                ward_certs::source::ENDPOINT_ENV
            ))
        })?;
        tracing::info!(%endpoint, hint = api.value.hint.as_deref(), "identity from the SPIFFE Workload API");
        return Ok(WorkloadApiSource {
            endpoint,
            hint: api.value.hint.clone(),
            federation,
            backoff: Backoff::default(),
        }
        .spawn());
    }
    if let Some(dev) = &id.dev {
        let spiffe_id = SpiffeId::parse(&dev.id).map_err(|e| StartError::Identity(format!("dev.id: {e}")))?;
        let ca = match &dev.ca {
            Some(dir) => DevCa::load(dir),
            None => DevCa::generate(&spiffe_id.trust_domain()),
        }
        .map_err(|e| StartError::Identity(format!("dev CA: {e}")))?;
        tracing::warn!("identity.dev: using a development CA; never use it in production");
        return Ok(DevSource {
            ca: Arc::new(ca),
            id: spiffe_id,
            ttl: dev.ttl,
            federation,
        }
        .spawn());
    }
    Err(StartError::Identity("no identity source configured".into()))
}

/// The model's listeners, by name.
fn specs(model: &Model) -> Vec<(String, Spec)> {
    let ins = model
        .inbound
        .iter()
        .map(|l| (l.name.to_string(), Spec::Inbound(l.clone())));
    let outs = model
        .outbound
        .iter()
        .map(|l| (l.name.to_string(), Spec::Outbound(l.clone())));
    ins.chain(outs).collect()
}

async fn bind(name: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind {
        name: name.to_owned(),
        addr,
        source,
    })
}

/// Starts the accept loop of one listener on an already bound socket.
fn launch(
    name: &str,
    spec: Spec,
    socket: Arc<TcpListener>,
    open: Arc<std::sync::atomic::AtomicUsize>,
    shared: &Arc<Shared>,
) -> Result<ListenerHandle, StartError> {
    let addr = socket.local_addr().unwrap_or(spec.listen());
    let (stop, stop_rx) = watch::channel(false);
    let task = match &spec {
        Spec::Inbound(l) => {
            let c = &l.spec;
            let ib = Arc::new(Inbound {
                name: l.name.clone(),
                spec: c.clone(),
                handshake_timeout: l.handshake_timeout,
                // One app pool per worker shard: a shard never drives another's connections.
                app: c.forward.map(|f| {
                    let timeout = shared.settings.load().connect_timeout;
                    (0..crate::data::shards::count())
                        .map(|_| AppClient::new(f, timeout))
                        .collect()
                }),
                metrics: Arc::new(shared.metrics.listener(name, Direction::Inbound)),
                open: open.clone(),
                max_connections: c
                    .max_connections
                    .unwrap_or_else(|| crate::config::default_max_connections(crate::limits::nofile())),
                pending: Arc::default(),
            });
            if c.hbone {
                tokio::spawn(crate::hbone::server::serve(
                    socket.clone(),
                    ib,
                    shared.clone(),
                    stop_rx,
                ))
            } else {
                tokio::spawn(inbound::serve(socket.clone(), ib, shared.clone(), stop_rx))
            }
        }
        Spec::Outbound(l) => {
            let ob = Outbound::new(
                l,
                shared.metrics.listener(name, Direction::Outbound),
                shared.metrics.hbone(name, Direction::Outbound),
                open.clone(),
            );
            tokio::spawn(outbound::serve(
                socket.clone(),
                Arc::new(ob),
                shared.clone(),
                stop_rx,
            ))
        }
    };
    tracing::info!(listener = %name, %addr, "listening");
    Ok(ListenerHandle {
        spec,
        open,
        addr,
        socket,
        stop,
        task,
    })
}

/// Starts the admin server (if configured), loads the first valid identity, binds every
/// listener and starts serving.
pub async fn start(model: &Model, audit: AuditLog) -> Result<Running, StartError> {
    let (config, settings, json) = (&model.config, model.settings.clone(), model.json.clone());
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(CredentialStore::new(TlsOptions::default()));
    let (stop_background, stop_rx) = watch::channel(false);
    let (draining, _) = watch::channel(false);
    let mut background = Vec::new();
    let shared = Arc::new(Shared {
        store: store.clone(),
        audit,
        metrics: metrics.clone(),
        settings: ArcSwap::from_pointee(settings),
        policy_gen: watch::channel(0).0,
        draining,
        open: Arc::new(OpenCount::default()),
        live: Arc::default(),
    });
    // One task decides, on every new identity and every applied reload, which live
    // connections must close. Should it ever panic, it is started again (with a log line):
    // without it no live connection would be re-checked.
    background.push({
        let shared = Arc::downgrade(&shared);
        tokio::spawn(async move {
            loop {
                let Some(s) = shared.upgrade() else { return };
                let (live, store, policy) = (s.live.clone(), s.store.clone(), s.policy_gen.subscribe());
                drop(s);
                let settings = shared.clone();
                let watch = live.watch(store, policy, move || settings.upgrade().map(|s| s.settings()));
                // Aborted with this task (at finish), not left running on its own.
                struct AbortOnDrop(tokio::task::AbortHandle);
                impl Drop for AbortOnDrop {
                    fn drop(&mut self) {
                        self.0.abort();
                    }
                }
                let task = tokio::spawn(watch);
                let _abort = AbortOnDrop(task.abort_handle());
                match task.await {
                    Err(e) if e.is_panic() => {
                        tracing::error!(error = %e, "the live-connection re-check failed; starting it again");
                    }
                    _ => return,
                }
            }
        })
    });
    let config_json = Arc::new(ArcSwap::from_pointee(json));
    let (listening_tx, listening_rx) = watch::channel(false);
    let (shutdown_tx, shutdown_requested) = watch::channel(false);

    let admin_addr = match &config.admin {
        Some(a) => {
            let socket = admin::bind(a.value.listen)
                .await
                .map_err(|source| StartError::Bind {
                    name: "admin".into(),
                    addr: a.value.listen,
                    source,
                })?;
            let addr = socket.local_addr().unwrap_or(a.value.listen);
            let state = Arc::new(AdminState {
                store: store.clone(),
                metrics: metrics.clone(),
                audit: shared.audit.clone(),
                config: config_json.clone(),
                listening: listening_rx,
                draining: shared.draining.subscribe(),
                shutdown: shutdown_tx.clone(),
            });
            if let Some(probes) = a.value.probes {
                let socket = admin::bind(probes).await.map_err(|source| StartError::Bind {
                    name: "admin.probes".into(),
                    addr: probes,
                    source,
                })?;
                let at = socket.local_addr().unwrap_or(probes);
                background.push(tokio::spawn(admin::serve(
                    socket,
                    admin::Plane::Probes,
                    state.clone(),
                    stop_rx.clone(),
                )));
                tracing::info!(addr = %at, "probes server listening (GET /live /ready /metrics)");
            }
            background.push(tokio::spawn(admin::serve(
                socket,
                admin::Plane::Admin,
                state,
                stop_rx.clone(),
            )));
            tracing::info!(%addr, "admin server listening");
            Some(addr)
        }
        None => None,
    };

    let mut updates = identity_source(config)?;
    let reload = updates.reload();
    // Not ready, and nothing listens, until a first valid identity has loaded: a refused one
    // is logged (by the store) and counted, and we wait for the next.
    loop {
        match updates.recv().await {
            Some(update) => {
                let result = store.apply(update);
                count_rotation(&metrics, &store, result);
                if result == UpdateResult::Applied {
                    break;
                }
                tracing::warn!("waiting for a valid identity before opening the listeners");
            }
            None => {
                return Err(StartError::Identity(
                    "the identity source stopped before it produced a valid identity".into(),
                ));
            }
        }
    }
    let rotation_store = store.clone();
    let rotation_metrics = metrics.clone();
    let mut stop_rotation = stop_rx.clone();
    background.push(tokio::spawn(async move {
        loop {
            tokio::select! {
                update = updates.recv() => match update {
                    Some(update) => {
                        let result = rotation_store.apply(update);
                        count_rotation(&rotation_metrics, &rotation_store, result);
                    }
                    None => return,
                },
                _ = stop_rotation.changed() => return,
            }
        }
    }));

    let mut listeners = HashMap::new();
    for (name, spec) in specs(model) {
        let socket = Arc::new(bind(&name, spec.listen()).await?);
        listeners.insert(
            name.clone(),
            launch(&name, spec, socket, Arc::default(), &shared)?,
        );
    }
    let _ = listening_tx.send(true);
    background.push(tokio::spawn(async move {
        // Keep the sender alive for the admin's readiness view.
        let _keep = listening_tx;
        std::future::pending::<()>().await;
    }));
    Ok(Running {
        store,
        shared,
        reload,
        admin_addr,
        shutdown_requested,
        shutdown_tx,
        listeners: Mutex::new(listeners),
        config_json,
        stop_background,
        background,
    })
}

fn count_rotation(metrics: &Metrics, store: &CredentialStore, result: UpdateResult) {
    match result {
        UpdateResult::Applied => metrics.rotation("applied"),
        UpdateResult::Refused(reason) => metrics.rotation(reason),
    }
    if let Some(not_after) = store.not_after() {
        metrics.identity_expiry.set(not_after);
    }
}

impl Running {
    /// The effective config now running, as `/config` shows it.
    pub fn config_json(&self) -> Arc<serde_json::Value> {
        self.config_json.load_full()
    }

    /// The bound address of a listener.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.try_lock().ok()?.get(name).map(|l| l.addr)
    }

    /// Applies a new, checked config: policies and settings swap atomically; listeners whose
    /// spec changed restart (keeping their socket when the address is the same); new ones
    /// bind; removed ones stop accepting. Refused whole when anything fails; live connections
    /// are then re-checked against the new policies.
    pub async fn apply(&self, model: Model) -> Result<(), StartError> {
        let wanted = specs(&model);
        let Model {
            settings, json: new, ..
        } = model;
        // What a reload cannot change: the identity source, the admin server and the logs are
        // set up once. Refusing says so, instead of showing a config in /config that is not
        // the one running.
        let running = self.config_json.load();
        let fixed: Vec<&str> = ["identity", "admin", "log"]
            .into_iter()
            .filter(|k| new.get(*k) != running.get(*k))
            .collect();
        if !fixed.is_empty() {
            return Err(StartError::Config(format!(
                "{} changed; these take effect only when ward restarts (nothing was applied)",
                fixed.join(", ")
            )));
        }
        let mut current = self.listeners.lock().await;
        // Bind what is new first, so a bind failure leaves everything as it was.
        let mut sockets: HashMap<String, Arc<TcpListener>> = HashMap::new();
        for (name, spec) in &wanted {
            match current.get(name) {
                Some(l) if l.spec == *spec => {}
                Some(l) if l.spec.listen() == spec.listen() => {
                    sockets.insert(name.clone(), l.socket.clone());
                }
                _ => {
                    let reuse = current
                        .values()
                        .find(|l| l.spec.listen() == spec.listen() && spec.listen().port() != 0);
                    let socket = match reuse {
                        Some(l) => l.socket.clone(),
                        None => Arc::new(bind(name, spec.listen()).await?),
                    };
                    sockets.insert(name.clone(), socket);
                }
            }
        }
        self.shared.settings.store(Arc::new(settings));
        let names: Vec<&String> = wanted.iter().map(|(n, _)| n).collect();
        current.retain(|name, l| {
            let keep = names.contains(&name);
            if !keep {
                tracing::info!(listener = %name, "listener removed by reload");
                let _ = l.stop.send(true);
            }
            keep
        });
        for (name, spec) in wanted {
            if let Some(socket) = sockets.remove(&name) {
                let open = match current.remove(&name) {
                    Some(old) => {
                        let _ = old.stop.send(true);
                        tracing::info!(listener = %name, "listener restarted by reload");
                        old.open
                    }
                    None => Arc::default(),
                };
                let handle = launch(&name, spec, socket, open, &self.shared)?;
                current.insert(name, handle);
            }
        }
        self.config_json.store(Arc::new(new));
        self.shared.policy_gen.send_modify(|g| *g += 1);
        Ok(())
    }

    /// Drains: not ready, listeners stop accepting, HTTP connections finish their requests and
    /// close, and open connections get up to `timeout` to end. Returns how many were still
    /// open when the time ran out.
    pub async fn drain(self, timeout: Duration) -> usize {
        let _ = self.shared.draining.send(true);
        self.close_listeners().await;
        let open = self.shared.open.clone();
        let left = match tokio::time::timeout(timeout, open.wait_zero()).await {
            Ok(()) => 0,
            Err(_) => open.get(),
        };
        self.finish().await;
        left
    }

    /// Stops every accept loop and closes the listening sockets, so new connections are
    /// refused at once instead of waiting in the backlog.
    async fn close_listeners(&self) {
        let handles: Vec<ListenerHandle> = self.listeners.lock().await.drain().map(|(_, l)| l).collect();
        for l in &handles {
            let _ = l.stop.send(true);
        }
        for l in handles {
            drop(l.socket);
            let _ = l.task.await;
        }
    }

    /// Stops accepting at once; connections already open run on until they end.
    pub async fn stop(self) {
        self.close_listeners().await;
        self.finish().await;
    }

    /// Asks for a drain, as `POST /shutdown` does.
    pub fn request_shutdown(&self) {
        let _ = self.shutdown_tx.send(true);
    }

    async fn finish(self) {
        let _ = self.stop_background.send(true);
        self.shared.audit.flush();
        let handles: Vec<JoinHandle<()>> = self
            .listeners
            .into_inner()
            .into_values()
            .map(|l| l.task)
            .collect();
        for h in handles {
            let _ = h.await;
        }
        for h in self.background {
            h.abort();
        }
    }
}

/// Waits for SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; stop ward with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
}
