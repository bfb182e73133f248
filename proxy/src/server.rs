//! Starting a proxy from a checked config: identity first, then every listener, then serve
//! until told to stop.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use ward_certs::{
    Backoff, CredentialStore, DevCa, DevSource, Federation, FilesSource, FilesTiming, IdentityUpdates,
    Reload, SpiffeId, TlsOptions, TrustDomain, UpdateResult, WorkloadApiSource,
};
use ward_filters::{Pattern, Policy};

use crate::audit::AuditLog;
use crate::config::Config;
use crate::forward::Shared;
use crate::inbound::{self, Inbound};
use crate::outbound::{self, Outbound};
use crate::pool::{AppClient, PeerPool};

/// Why the proxy could not start.
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

/// A running proxy.
pub struct Running {
    /// Bound addresses by listener name (useful when a config asks for port 0).
    pub listeners: Vec<(String, SocketAddr)>,
    pub store: Arc<CredentialStore>,
    /// Makes the identity source re-read now (SIGHUP): see [`crate::reload`].
    pub reload: Reload,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Running {
    /// The bound address of a listener.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    /// Stops accepting; connections already open run on until they end.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
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

/// Loads the first identity, binds every listener and starts serving.
pub async fn start(config: &Config, audit: AuditLog) -> Result<Running, StartError> {
    let mut policies = std::collections::HashMap::new();
    for (name, spec) in &config.policies {
        let policy = Policy::compile(name, &spec.value).map_err(|e| StartError::Config(e.to_string()))?;
        policies.insert(name.clone(), Arc::new(policy));
    }

    let store = Arc::new(CredentialStore::new(TlsOptions::default()));
    let mut updates = identity_source(config)?;
    let reload = updates.reload();
    // Not ready, and nothing listens, until a first valid identity has loaded: a refused one
    // is logged (by the store) and counted, and we wait for the next.
    loop {
        match updates.recv().await {
            Some(update) => {
                if store.apply(update) == UpdateResult::Applied {
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
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let rotation_store = store.clone();
    let mut stop_rotation = shutdown_rx.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                update = updates.recv() => match update {
                    Some(update) => { rotation_store.apply(update); }
                    None => return,
                },
                _ = stop_rotation.changed() => return,
            }
        }
    });

    let shared = Arc::new(Shared {
        store: store.clone(),
        audit,
        connect_timeout: config.connect_timeout,
    });
    let mut listeners = Vec::new();
    for l in &config.inbound {
        let l = &l.value;
        let listener = bind(&l.name, l.listen).await?;
        listeners.push((l.name.clone(), listener.local_addr().unwrap_or(l.listen)));
        let policy = policies
            .get(&l.policy)
            .cloned()
            .ok_or_else(|| StartError::Config(format!("inbound {:?}: no policy {:?}", l.name, l.policy)))?;
        let ib = Arc::new(Inbound {
            name: Arc::from(l.name.as_str()),
            forward: l.forward,
            protocol: l.protocol,
            mtls: l.mtls,
            policy,
            handshake_timeout: l.handshake_timeout.unwrap_or(config.handshake_timeout),
            detect_timeout: config.detect_timeout,
            xfcc: l.xfcc,
            app_protocol: l.app_protocol,
            app: AppClient::new(l.forward, config.connect_timeout),
        });
        tasks.spawn(inbound::serve(listener, ib, shared.clone(), shutdown_rx.clone()));
    }
    for l in &config.outbound {
        let l = &l.value;
        let server_id = Pattern::parse_spiffe(&l.server_id)
            .map_err(|e| StartError::Config(format!("outbound {:?}: server_id: {e}", l.name)))?;
        let listener = bind(&l.name, l.listen).await?;
        listeners.push((l.name.clone(), listener.local_addr().unwrap_or(l.listen)));
        let handshake_timeout = l.handshake_timeout.unwrap_or(config.handshake_timeout);
        let ob = Arc::new(Outbound {
            name: Arc::from(l.name.as_str()),
            forward: l.forward,
            server_id_rule: Arc::from(format!("server_id {}", l.server_id)),
            pool: PeerPool::new(
                l.forward,
                server_id.clone(),
                store.clone(),
                config.connect_timeout,
                handshake_timeout,
            ),
            server_id,
            handshake_timeout,
            protocol: l.protocol,
            detect_timeout: config.detect_timeout,
        });
        tasks.spawn(outbound::serve(listener, ob, shared.clone(), shutdown_rx.clone()));
    }
    for (name, addr) in &listeners {
        tracing::info!(listener = %name, %addr, "listening");
    }
    Ok(Running {
        listeners,
        store,
        reload,
        shutdown,
        tasks,
    })
}

async fn bind(name: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind {
        name: name.to_owned(),
        addr,
        source,
    })
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
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
}
