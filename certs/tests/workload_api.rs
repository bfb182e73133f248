#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Workload API identity source against a SPIFFE Workload API server inside the test: the
//! standard's `FetchX509SVID` (messages written by hand with prost derives, no protoc) served
//! with tonic over a Unix socket, enforcing the `workload.spiffe.io: true` metadata as SPIRE
//! agents do.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tempfile::TempDir;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use ward_certs::source::Update;
use ward_certs::{
    Backoff, CredentialStore, IdentityUpdates, IssuedSvid, SpiffeId, TlsOptions, UpdateResult,
    WorkloadApiSource,
};

const WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// The standard's messages (workload.proto), by hand.

#[derive(Clone, PartialEq, prost::Message)]
pub struct X509SvidRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct X509SvidResponse {
    #[prost(message, repeated, tag = "1")]
    pub svids: Vec<X509Svid>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub crl: Vec<Vec<u8>>,
    #[prost(map = "string, bytes", tag = "3")]
    pub federated_bundles: HashMap<String, Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct X509Svid {
    #[prost(string, tag = "1")]
    pub spiffe_id: String,
    #[prost(bytes = "vec", tag = "2")]
    pub x509_svid: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub x509_svid_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub bundle: Vec<u8>,
    #[prost(string, tag = "5")]
    pub hint: String,
}

const FETCH_X509_SVID: &str = "/SpiffeWorkloadAPI/FetchX509SVID";

// ---------------------------------------------------------------------------------------------
// The server.

#[derive(Default)]
struct State {
    /// What FetchX509SVID streams: the current response, then every change.
    response: Mutex<Option<watch::Sender<Option<X509SvidResponse>>>>,
    /// Answer every call with this status instead.
    fail: Mutex<Option<tonic::Code>>,
    calls: AtomicUsize,
    without_header: AtomicUsize,
}

impl State {
    fn subscribe(&self) -> watch::Receiver<Option<X509SvidResponse>> {
        let mut guard = self.response.lock().unwrap();
        guard.get_or_insert_with(|| watch::channel(None).0).subscribe()
    }
}

/// The tonic service, written as tonic-build would generate it for one method.
#[derive(Clone)]
struct WorkloadApiService {
    state: Arc<State>,
    stop: watch::Receiver<bool>,
}

impl tonic::server::NamedService for WorkloadApiService {
    const NAME: &'static str = "SpiffeWorkloadAPI";
}

type ResponseStream = ReceiverStream<Result<X509SvidResponse, tonic::Status>>;

impl tonic::server::ServerStreamingService<X509SvidRequest> for WorkloadApiService {
    type Response = X509SvidResponse;
    type ResponseStream = ResponseStream;
    type Future = tonic::codegen::BoxFuture<tonic::Response<ResponseStream>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<X509SvidRequest>) -> Self::Future {
        let state = self.state.clone();
        let mut stop = self.stop.clone();
        Box::pin(async move {
            state.calls.fetch_add(1, Ordering::SeqCst);
            // The SPIFFE Workload Endpoint standard: refuse calls without the security header.
            if request
                .metadata()
                .get("workload.spiffe.io")
                .and_then(|v| v.to_str().ok())
                != Some("true")
            {
                state.without_header.fetch_add(1, Ordering::SeqCst);
                return Err(tonic::Status::invalid_argument(
                    "security header missing from request",
                ));
            }
            if let Some(code) = *state.fail.lock().unwrap() {
                return Err(tonic::Status::new(code, "told to fail"));
            }
            let mut responses = state.subscribe();
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                loop {
                    let current = responses.borrow_and_update().clone();
                    if let Some(r) = current
                        && tx.send(Ok(r)).await.is_err()
                    {
                        return;
                    }
                    tokio::select! {
                        changed = responses.changed() => if changed.is_err() { return },
                        _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                            let _ = tx.send(Err(tonic::Status::unavailable("agent shutting down"))).await;
                            return;
                        }
                    }
                }
            });
            Ok(tonic::Response::new(ReceiverStream::new(rx)))
        })
    }
}

impl<B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for WorkloadApiService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        if req.uri().path() != FETCH_X509_SVID {
            let path = req.uri().path().to_owned();
            return Box::pin(async move { Ok(tonic::Status::unimplemented(path).into_http()) });
        }
        let svc = self.clone();
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<X509SvidResponse, X509SvidRequest>::default();
            let mut grpc = tonic::server::Grpc::new(codec);
            Ok(grpc.server_streaming(svc, req).await)
        })
    }
}

/// A Workload API server on a Unix socket that can be stopped and started again.
struct Agent {
    _dir: TempDir,
    socket: PathBuf,
    state: Arc<State>,
    running: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

impl Agent {
    fn new() -> Agent {
        let dir = TempDir::new().unwrap();
        let socket = dir.path().join("agent.sock");
        let mut agent = Agent {
            _dir: dir,
            socket,
            state: Arc::default(),
            running: None,
        };
        agent.start();
        agent
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn start(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let listener = tokio::net::UnixListener::bind(&self.socket).unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let svc = WorkloadApiService {
            state: self.state.clone(),
            stop: stop_rx.clone(),
        };
        let mut shutdown = stop_rx;
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .serve_with_incoming_shutdown(svc, UnixListenerStream::new(listener), async move {
                    let _ = shutdown.wait_for(|s| *s).await;
                })
                .await;
        });
        self.running = Some((stop_tx, task));
    }

    /// Ends every stream with Unavailable, closes the socket and waits for the server to end.
    async fn stop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            let _ = stop.send(true);
            tokio::time::timeout(WAIT, task)
                .await
                .expect("server stops")
                .unwrap();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Sets what every stream sends (now and to later callers).
    fn push(&self, response: X509SvidResponse) {
        let mut guard = self.state.response.lock().unwrap();
        let sender = guard.get_or_insert_with(|| watch::channel(None).0);
        sender.send_replace(Some(response));
    }

    fn fail_with(&self, code: Option<tonic::Code>) {
        *self.state.fail.lock().unwrap() = code;
    }

    fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn entry(ca: &TestCa, svid: &IssuedSvid, hint: &str) -> X509Svid {
    X509Svid {
        spiffe_id: svid.id.to_string(),
        x509_svid: svid.chain.iter().flat_map(|c| c.to_vec()).collect(),
        x509_svid_key: svid.key.secret_pkcs8_der().to_vec(),
        bundle: ca.cert().to_vec(),
        hint: hint.to_owned(),
    }
}

fn response(svids: Vec<X509Svid>, federated: &[(&str, &TestCa)]) -> X509SvidResponse {
    X509SvidResponse {
        svids,
        crl: Vec::new(),
        federated_bundles: federated
            .iter()
            .map(|(td, ca)| (format!("spiffe://{td}"), ca.cert().to_vec()))
            .collect(),
    }
}

fn fast_source(agent: &Agent, hint: Option<&str>) -> IdentityUpdates {
    WorkloadApiSource {
        endpoint: agent.endpoint(),
        hint: hint.map(str::to_owned),
        federation: ward_certs::Federation::default(),
        backoff: Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
        },
    }
    .spawn()
}

async fn next(updates: &mut IdentityUpdates) -> Update {
    tokio::time::timeout(WAIT, updates.recv())
        .await
        .expect("an identity update within 5s")
        .expect("the source is still running")
}

/// The next valid identity, skipping refusals (e.g. "unavailable" while the agent is down).
async fn next_ok(updates: &mut IdentityUpdates, store: &CredentialStore) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let up = tokio::time::timeout_at(deadline, updates.recv())
            .await
            .expect("a valid identity within 5s")
            .expect("the source is still running");
        if let UpdateResult::Applied = store.apply(up) {
            return store.current().unwrap().identity.info().serial.clone();
        }
    }
}

fn serial(svid: &IssuedSvid) -> String {
    ward_certs::svid::check_leaf(&svid.chain[0]).unwrap().serial
}

fn partner_id() -> SpiffeId {
    id("spiffe://partner.org/ns/billing/sa/client")
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn the_security_header_is_required_and_sent() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue(&web_id());
    let agent = Agent::new();
    agent.push(response(vec![entry(&ca, &svid, "")], &[]));

    // A client without the header is refused with InvalidArgument, as by SPIRE.
    let endpoint = spiffe::transport::Endpoint::parse(&agent.endpoint()).unwrap();
    let channel = spiffe::transport::connect(&endpoint).await.unwrap();
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.unwrap();
    let refused = raw
        .server_streaming(
            tonic::Request::new(X509SvidRequest {}),
            tonic::codegen::http::uri::PathAndQuery::from_static(FETCH_X509_SVID),
            tonic_prost::ProstCodec::<X509SvidRequest, X509SvidResponse>::default(),
        )
        .await
        .expect_err("a call without the header is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(agent.state.without_header.load(Ordering::SeqCst), 1);

    // ward's source sends it, and gets its SVID.
    let mut updates = fast_source(&agent, None);
    let id = next(&mut updates).await.unwrap();
    assert_eq!(id.info().serial, serial(&svid));
    assert_eq!(
        agent.state.without_header.load(Ordering::SeqCst),
        1,
        "ward sent the header"
    );
}

#[tokio::test]
async fn the_first_svid_is_served_and_a_pushed_rotation_is_taken() {
    let ca = TestCa::new(OUR_TD);
    let web = ca.issue(&web_id());
    let other = ca.issue(&id("spiffe://example.org/ns/default/sa/other"));
    let agent = Agent::new();
    agent.push(response(vec![entry(&ca, &web, ""), entry(&ca, &other, "")], &[]));
    let mut updates = fast_source(&agent, None);
    let store = CredentialStore::new(TlsOptions::default());
    let first = next(&mut updates).await.unwrap();
    assert_eq!(first.id(), &web_id(), "the first SVID is the default one");
    assert_eq!(first.info().serial, serial(&web));
    assert_eq!(store.apply(Ok(first)), UpdateResult::Applied);

    for _ in 0..3 {
        let rotated = ca.issue(&web_id());
        agent.push(response(vec![entry(&ca, &rotated, "")], &[]));
        let up = next(&mut updates).await;
        assert_eq!(store.apply(up), UpdateResult::Applied);
        assert_eq!(store.current().unwrap().identity.info().serial, serial(&rotated));
    }
    assert_eq!(agent.calls(), 1, "one stream carried every rotation");
}

#[tokio::test]
async fn the_hint_selects_the_svid() {
    let ca = TestCa::new(OUR_TD);
    let internal = ca.issue(&id("spiffe://example.org/ns/default/sa/internal"));
    let external = ca.issue(&id("spiffe://example.org/ns/default/sa/external"));
    let agent = Agent::new();
    agent.push(response(
        vec![
            entry(&ca, &internal, "internal"),
            entry(&ca, &external, "external"),
        ],
        &[],
    ));
    let mut updates = fast_source(&agent, Some("external"));
    let got = next(&mut updates).await.unwrap();
    assert_eq!(got.info().serial, serial(&external));

    let mut missing = fast_source(&agent, Some("payments"));
    let err = next(&mut missing).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("\"payments\"") && text.contains("internal, external"),
        "{text}"
    );
}

#[tokio::test]
async fn a_federated_bundle_is_trusted_then_dropped_when_no_longer_sent() {
    let ca = TestCa::new(OUR_TD);
    let partner = TestCa::new(PARTNER_TD);
    let web = ca.issue(&web_id());
    let partner_svid = partner.issue(&partner_id());
    let agent = Agent::new();
    agent.push(response(vec![entry(&ca, &web, "")], &[(PARTNER_TD, &partner)]));
    let mut updates = fast_source(&agent, None);
    let store = CredentialStore::new(TlsOptions::default());

    let peer_verdict = |store: &CredentialStore| {
        let bundles = store.current().unwrap().identity.bundles().clone();
        let v = ward_certs::SvidVerifier::new(bundles, &ward_certs::provider());
        verify(&v, &partner_svid.chain)
    };

    assert_eq!(store.apply(next(&mut updates).await), UpdateResult::Applied);
    assert_eq!(
        store.current().unwrap().identity.bundles().trust_domains(),
        [OUR_TD, PARTNER_TD]
    );
    assert_eq!(
        peer_verdict(&store).unwrap().id,
        partner_id(),
        "the partner's SVID is trusted"
    );

    // The next message no longer carries the partner's bundle: it is dropped.
    let rotated = ca.issue(&web_id());
    agent.push(response(vec![entry(&ca, &rotated, "")], &[]));
    assert_eq!(store.apply(next(&mut updates).await), UpdateResult::Applied);
    assert_eq!(
        store.current().unwrap().identity.bundles().trust_domains(),
        [OUR_TD]
    );
    assert!(
        matches!(
            peer_verdict(&store),
            Err(ward_certs::VerifyError::UnknownTrustDomain(_))
        ),
        "the partner is no longer trusted"
    );
}

#[tokio::test]
async fn a_restart_of_the_agent_is_ridden_out_with_the_last_good_svid() {
    let ca = TestCa::new(OUR_TD);
    let first = ca.issue(&web_id());
    let mut agent = Agent::new();
    agent.push(response(vec![entry(&ca, &first, "")], &[]));
    let mut updates = fast_source(&agent, None);
    let store = CredentialStore::new(TlsOptions::default());
    assert_eq!(next_ok(&mut updates, &store).await, serial(&first));

    agent.stop().await;
    // The outage is reported (once) and refused: the last good SVID keeps serving.
    let down = next(&mut updates).await;
    assert_eq!(store.apply(down), UpdateResult::Refused("unavailable"));
    tokio::time::sleep(Duration::from_millis(300)).await; // several reconnect attempts
    assert_eq!(store.current().unwrap().identity.info().serial, serial(&first));

    let second = ca.issue(&web_id());
    agent.push(response(vec![entry(&ca, &second, "")], &[]));
    agent.start();
    assert_eq!(
        next_ok(&mut updates, &store).await,
        serial(&second),
        "reconnected after the restart"
    );
    assert!(agent.calls() >= 2);
}

#[tokio::test]
async fn unavailable_and_permission_denied_are_retried() {
    let ca = TestCa::new(OUR_TD);
    let svid = ca.issue(&web_id());
    let agent = Agent::new();
    agent.push(response(vec![entry(&ca, &svid, "")], &[]));
    agent.fail_with(Some(tonic::Code::PermissionDenied));
    let mut updates = fast_source(&agent, None);
    let err = next(&mut updates).await.unwrap_err();
    assert_eq!(err.reason(), "unavailable");
    agent.fail_with(Some(tonic::Code::Unavailable));
    let err = next(&mut updates).await.unwrap_err();
    assert_eq!(err.reason(), "unavailable");
    agent.fail_with(None);
    let store = CredentialStore::new(TlsOptions::default());
    assert_eq!(next_ok(&mut updates, &store).await, serial(&svid));
    assert!(agent.calls() >= 3);
}

#[tokio::test]
async fn invalid_argument_stops_the_source() {
    let agent = Agent::new();
    agent.fail_with(Some(tonic::Code::InvalidArgument));
    let mut updates = fast_source(&agent, None);
    let err = next(&mut updates).await.unwrap_err();
    assert!(
        err.to_string().contains("refused the request as invalid"),
        "{err}"
    );
    let end = tokio::time::timeout(WAIT, updates.recv())
        .await
        .expect("the source ends");
    assert!(end.is_none(), "no retry after InvalidArgument");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(agent.calls(), 1);
}

#[tokio::test]
async fn an_unusable_push_is_refused_and_the_stream_goes_on() {
    let ca = TestCa::new(OUR_TD);
    let first = ca.issue(&web_id());
    let agent = Agent::new();
    agent.push(response(vec![entry(&ca, &first, "")], &[]));
    let mut updates = fast_source(&agent, None);
    let store = CredentialStore::new(TlsOptions::default());
    assert_eq!(next_ok(&mut updates, &store).await, serial(&first));

    // Garbage in place of the certificate.
    let mut garbage = entry(&ca, &first, "");
    garbage.x509_svid = b"not DER".to_vec();
    agent.push(response(vec![garbage], &[]));
    assert!(matches!(
        store.apply(next(&mut updates).await),
        UpdateResult::Refused(_)
    ));
    // A key that is not the SVID's.
    let other = ca.issue(&web_id());
    let mut mismatched = entry(&ca, &other, "");
    mismatched.x509_svid_key = ca.issue(&web_id()).key.secret_pkcs8_der().to_vec();
    agent.push(response(vec![mismatched], &[]));
    assert!(matches!(
        store.apply(next(&mut updates).await),
        UpdateResult::Refused(_)
    ));
    // Another trust domain (signed by our CA, with our CA as its bundle).
    let foreign = ca.issue(&id("spiffe://partner.org/ns/default/sa/web"));
    agent.push(response(vec![entry(&ca, &foreign, "")], &[]));
    assert_eq!(
        store.apply(next(&mut updates).await),
        UpdateResult::Refused("wrong_trust_domain")
    );
    assert_eq!(store.current().unwrap().identity.info().serial, serial(&first));

    let good = ca.issue(&web_id());
    agent.push(response(vec![entry(&ca, &good, "")], &[]));
    assert_eq!(store.apply(next(&mut updates).await), UpdateResult::Applied);
    assert_eq!(store.current().unwrap().identity.info().serial, serial(&good));
    assert_eq!(agent.calls(), 1, "refusals did not cost the stream");
}
