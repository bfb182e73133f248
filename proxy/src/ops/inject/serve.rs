//! `ward inject serve`: the injection webhook. The API server POSTs AdmissionReviews over
//! HTTPS to `/inject` (namespaces labelled `ward.dev/inject=enabled`) and `/inject/opt-in`
//! (other namespaces' pods annotated `ward.dev/inject: "true"`); [`super::review`] decides.
//!
//! The serving certificate comes from files (a mounted Secret) and is re-read every few
//! seconds: a renewed Secret (kubelet swaps the mount's symlink) is served from the next
//! handshake on, and a bad one is logged and counted while the last good one keeps serving.
//! A plain-HTTP probes listener answers `GET /live`, `/ready` and `/metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::document::PodArgs;
use super::pod::Options;
use super::review::{FailurePolicy, Mode, Reviewed, Settings, Verdict, review};
use crate::config::{LogConfig, LogFormat};

/// `ward inject serve` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Where the API server reaches the webhook (HTTPS).
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:9443")]
    pub listen: SocketAddr,
    /// Plain HTTP `GET /live`, `/ready` and `/metrics`, for kubelet and Prometheus.
    #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:15020")]
    pub probes: SocketAddr,
    /// The serving certificate chain (PEM), e.g. a mounted Secret's tls.crt; re-read on change.
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// The serving certificate's private key (PEM), e.g. tls.key; re-read on change.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// What to answer for a review or pod ward cannot use: `fail` denies the pod with the
    /// reason, `ignore` admits it unchanged with the reason as a warning. Set it as the
    /// MutatingWebhookConfiguration's `failurePolicy` is set.
    #[arg(long, value_enum, default_value_t = FailurePolicy::Fail)]
    pub failure_policy: FailurePolicy,
    /// The webhook's own namespace, whose pods are never injected.
    #[arg(long, env = "POD_NAMESPACE", value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Log as JSON lines or as text.
    #[arg(long, value_enum, default_value_t = LogStyle::Json)]
    pub log_format: LogStyle,
    #[command(flatten)]
    pub pod: PodArgs,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogStyle {
    Json,
    Text,
}

/// How often the certificate files are re-read.
pub const CERT_POLL: Duration = Duration::from_secs(2);
/// The largest review read: a pod is at most etcd's 1.5 MiB, and a review carries at most two.
pub const MAX_BODY: usize = 4 << 20;
/// A TLS handshake, a request head, and a request body must each arrive within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections beyond this are closed at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// How long in-flight reviews may take to finish after SIGTERM.
pub const DRAIN: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Metrics

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReviewLabels {
    endpoint: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The webhook's `ward_webhook_` families.
struct WebhookMetrics {
    registry: Registry,
    reviews: Family<ReviewLabels, Counter>,
    skips: Family<ReasonLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    refused: Counter,
}

impl WebhookMetrics {
    fn new() -> WebhookMetrics {
        let mut registry = Registry::with_prefix("ward_webhook");
        let reviews = Family::<ReviewLabels, Counter>::default();
        registry.register(
            "reviews",
            "AdmissionReviews answered, by endpoint and result (injected, skipped, not_requested, not_a_pod, ignored, denied, invalid)",
            reviews.clone(),
        );
        let skips = Family::<ReasonLabels, Counter>::default();
        registry.register("skips", "Pods left without ward, by reason", skips.clone());
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "cert_reloads",
            "Serving certificate loads from the files, by result (ok, error)",
            reloads.clone(),
        );
        let refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections closed at once because MAX_CONNECTIONS were open",
            refused.clone(),
        );
        WebhookMetrics {
            registry,
            reviews,
            skips,
            reloads,
            refused,
        }
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The serving certificate

/// The serving certificate, swapped in place when its files change.
#[derive(Debug)]
struct ServingCert {
    cert: PathBuf,
    key: PathBuf,
    current: ArcSwapOption<CertifiedKey>,
    /// The file contents last tried, so a bad pair is reported once, not every poll.
    last: Mutex<Vec<u8>>,
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

fn load_pair(cert: &Path, key: &Path, chain_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let chain = ward_certs::pem::certs(chain_pem, &cert.display().to_string()).map_err(|e| e.to_string())?;
    let private = ward_certs::pem::key(key_pem, &key.display().to_string()).map_err(|e| e.to_string())?;
    CertifiedKey::from_der(chain, private, &ward_certs::provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "{} does not hold the private key of {}'s certificate",
            key.display(),
            cert.display()
        ),
        other => format!("{}: unusable key: {other}", key.display()),
    })
}

impl ServingCert {
    /// Re-reads the files; loads them when they changed. Returns whether a load failed.
    fn refresh(&self, metrics: &WebhookMetrics) {
        let read = |p: &Path| ward_certs::pem::read_file(p).map_err(|e| e.to_string());
        let (chain_pem, key_pem) = match (read(&self.cert), read(&self.key)) {
            (Ok(c), Ok(k)) => (c, k),
            (Err(e), _) | (_, Err(e)) => {
                let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
                if last.as_slice() != e.as_bytes() {
                    *last = e.clone().into_bytes();
                    metrics
                        .reloads
                        .get_or_create(&ResultLabels { result: "error" })
                        .inc();
                    if self.current.load().is_some() {
                        tracing::warn!(error = %e, "serving certificate: cannot read it; the last good one keeps serving");
                    } else {
                        tracing::warn!(error = %e, "serving certificate: not there yet; not ready until it is");
                    }
                }
                return;
            }
        };
        let mut seen = chain_pem.clone();
        seen.extend_from_slice(&key_pem);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if *last == seen {
            return;
        }
        *last = seen;
        drop(last);
        match load_pair(&self.cert, &self.key, &chain_pem, &key_pem) {
            Ok(pair) => {
                let first = self.current.load().is_none();
                self.current.store(Some(Arc::new(pair)));
                metrics
                    .reloads
                    .get_or_create(&ResultLabels { result: "ok" })
                    .inc();
                tracing::info!(
                    cert = %self.cert.display(),
                    "serving certificate {}",
                    if first { "loaded" } else { "reloaded" }
                );
            }
            Err(e) => {
                metrics
                    .reloads
                    .get_or_create(&ResultLabels { result: "error" })
                    .inc();
                tracing::warn!(error = %e, "serving certificate: cannot use the new files; the last good one keeps serving");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Serving

struct State {
    settings: Settings,
    cert: ServingCert,
    metrics: WebhookMetrics,
    listening: std::sync::atomic::AtomicBool,
    draining: std::sync::atomic::AtomicBool,
    open: AtomicUsize,
}

impl State {
    fn ready(&self) -> Result<(), &'static str> {
        if self.cert.current.load().is_none() {
            return Err("no serving certificate loaded yet");
        }
        if !self.listening.load(Ordering::Acquire) {
            return Err("not listening yet");
        }
        if self.draining.load(Ordering::Acquire) {
            return Err("draining");
        }
        Ok(())
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

const TEXT: &str = "text/plain; charset=utf-8";

/// `GET /live`, `/ready`, `/metrics`: the probes listener, and the HTTPS one too.
fn probe(state: &State, method: &Method, path: &str) -> Option<Response<Full<Bytes>>> {
    let resp = match (method, path) {
        (&Method::GET, "/live") => respond(StatusCode::OK, TEXT, "live\n"),
        (&Method::GET, "/ready") => match state.ready() {
            Ok(()) => respond(StatusCode::OK, TEXT, "ready\n"),
            Err(why) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: {why}\n"),
            ),
        },
        (&Method::GET, "/metrics") => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.encode(),
        ),
        (_, "/live" | "/ready" | "/metrics") => {
            respond(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n")
        }
        _ => return None,
    };
    Some(resp)
}

/// Records and logs one verdict.
fn record(state: &State, endpoint: &'static str, v: &Verdict) {
    state
        .metrics
        .reviews
        .get_or_create(&ReviewLabels {
            endpoint,
            result: v.result.label(),
        })
        .inc();
    match v.result {
        Reviewed::Skipped(why) => {
            state
                .metrics
                .skips
                .get_or_create(&ReasonLabels { reason: why.label() })
                .inc();
            tracing::info!(
                uid = v.uid,
                pod = v.pod,
                endpoint,
                reason = why.label(),
                message = v.message,
                "pod skipped"
            );
        }
        Reviewed::Injected => {
            tracing::info!(
                uid = v.uid,
                pod = v.pod,
                endpoint,
                warnings = v.message,
                "pod injected"
            )
        }
        Reviewed::NotRequested => {
            tracing::debug!(uid = v.uid, pod = v.pod, endpoint, "pod did not ask for ward")
        }
        Reviewed::NotAPod => tracing::warn!(
            uid = v.uid,
            endpoint,
            message = v.message,
            "review is not a Pod CREATE"
        ),
        Reviewed::Ignored => tracing::warn!(
            uid = v.uid,
            pod = v.pod,
            endpoint,
            reason = v.message,
            "pod admitted without ward (failure policy Ignore)"
        ),
        Reviewed::Denied => tracing::warn!(
            uid = v.uid,
            pod = v.pod,
            endpoint,
            reason = v.message,
            "pod denied (failure policy Fail)"
        ),
        Reviewed::Invalid => {
            tracing::warn!(endpoint, reason = v.message, "request is not an AdmissionReview")
        }
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (endpoint, mode) = match req.uri().path() {
        "/inject" => ("/inject", Mode::Namespace),
        "/inject/opt-in" => ("/inject/opt-in", Mode::OptIn),
        path => {
            return probe(&state, req.method(), path).unwrap_or_else(|| {
                respond(
                    StatusCode::NOT_FOUND,
                    TEXT,
                    "not found: POST AdmissionReviews to /inject or /inject/opt-in\n",
                )
            });
        }
    };
    if req.method() != Method::POST {
        return respond(StatusCode::METHOD_NOT_ALLOWED, TEXT, "POST an AdmissionReview\n");
    }
    let body = Limited::new(req.into_body(), MAX_BODY);
    let bytes = match tokio::time::timeout(REQUEST_TIMEOUT, body.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            let too_big = e.downcast_ref::<http_body_util::LengthLimitError>().is_some();
            let (status, msg) = if too_big {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the review is larger than {MAX_BODY} bytes\n"),
                )
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}\n"),
                )
            };
            state
                .metrics
                .reviews
                .get_or_create(&ReviewLabels {
                    endpoint,
                    result: "invalid",
                })
                .inc();
            tracing::warn!(endpoint, reason = msg.trim_end(), "request refused");
            return respond(status, TEXT, msg);
        }
        Err(_) => {
            return respond(
                StatusCode::REQUEST_TIMEOUT,
                TEXT,
                "the request body took too long\n",
            );
        }
    };
    let verdict = review(&bytes, mode, &state.settings);
    record(&state, endpoint, &verdict);
    let content_type = if verdict.status == 200 {
        "application/json"
    } else {
        TEXT
    };
    let status = StatusCode::from_u16(verdict.status).unwrap_or(StatusCode::BAD_REQUEST);
    respond(status, content_type, verdict.body)
}

/// Holds one of the open-connection slots.
struct Slot(Arc<State>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

fn admit(state: &Arc<State>) -> Option<Slot> {
    if state.open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
        state.open.fetch_sub(1, Ordering::AcqRel);
        state.metrics.refused.inc();
        return None;
    }
    Some(Slot(state.clone()))
}

async fn serve_tls(state: Arc<State>, tcp: TcpStream, acceptor: tokio_rustls::TlsAcceptor) {
    let Some(_slot) = admit(&state) else { return };
    let tls = match tokio::time::timeout(REQUEST_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let service = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(state, req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64);
    let _ = builder.serve_connection(TokioIo::new(tls), service).await;
}

async fn serve_probe(state: Arc<State>, tcp: TcpStream) {
    let Some(_slot) = admit(&state) else { return };
    let service = service_fn(move |req: Request<Incoming>| {
        let resp = probe(&state, req.method(), req.uri().path()).unwrap_or_else(|| {
            respond(
                StatusCode::NOT_FOUND,
                TEXT,
                "not found: this port serves GET /live /ready /metrics\n",
            )
        });
        async move { Ok::<_, Infallible>(resp) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT);
    let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
}

async fn accept_loop<F, Fut>(listener: TcpListener, mut stop: watch::Receiver<bool>, each: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        tokio::task::spawn_local(each(tcp));
    }
}

/// `ward inject serve`.
pub fn run(args: &ServeArgs) -> Result<(), String> {
    crate::ops::logging::init_logging(&LogConfig {
        format: match args.log_format {
            LogStyle::Json => LogFormat::Json,
            LogStyle::Text => LogFormat::Text,
        },
        ..LogConfig::default()
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, serve(args))
}

async fn serve(args: &ServeArgs) -> Result<(), String> {
    let opts = Options::from(&args.pod);
    let state = Arc::new(State {
        settings: Settings {
            opts,
            own_namespace: args.namespace.clone().filter(|n| !n.is_empty()),
            failure_policy: args.failure_policy,
        },
        cert: ServingCert {
            cert: args.cert.clone(),
            key: args.key.clone(),
            current: ArcSwapOption::empty(),
            last: Mutex::new(Vec::new()),
        },
        metrics: WebhookMetrics::new(),
        listening: false.into(),
        draining: false.into(),
        open: AtomicUsize::new(0),
    });
    state.cert.refresh(&state.metrics);
    let resolver: Arc<dyn ResolvesServerCert> = Arc::new(Resolver(state.clone()));
    let mut tls = rustls::ServerConfig::builder_with_provider(ward_certs::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let bind = |addr: SocketAddr, what: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| format!("{what} {addr}: cannot listen there: {e}"))
    };
    let webhook = bind(args.listen, "--listen").await?;
    let probes = bind(args.probes, "--probes").await?;
    state.listening.store(true, Ordering::Release);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %args.listen,
        probes = %args.probes,
        failure_policy = ?args.failure_policy,
        namespace = args.namespace.as_deref().unwrap_or(""),
        image = %args.pod.image,
        init_image = %args.pod.init_image,
        identity = ?args.pod.identity,
        "ward injection webhook serving"
    );
    let (stop_tx, stop) = watch::channel(false);
    {
        let s = state.clone();
        tokio::task::spawn_local(accept_loop(webhook, stop.clone(), move |tcp| {
            serve_tls(s.clone(), tcp, acceptor.clone())
        }));
        let s = state.clone();
        tokio::task::spawn_local(accept_loop(probes, stop.clone(), move |tcp| {
            serve_probe(s.clone(), tcp)
        }));
        let (s, mut stop) = (state.clone(), stop.clone());
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(CERT_POLL);
            loop {
                tokio::select! {
                    _ = tick.tick() => s.cert.refresh(&s.metrics),
                    _ = stop.changed() => return,
                }
            }
        });
    }
    crate::running::wait_for_signal().await;
    state.draining.store(true, Ordering::Release);
    let _ = stop_tx.send(true);
    let deadline = tokio::time::Instant::now() + DRAIN;
    while state.open.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(
        cut = state.open.load(Ordering::Acquire),
        "ward injection webhook stopped"
    );
    Ok(())
}

/// The TLS resolver: the state's current serving certificate.
#[derive(Debug)]
struct Resolver(Arc<State>);

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.cert.resolve(hello)
    }
}
