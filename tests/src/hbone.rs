//! The tests' own HBONE peers, written from the wire format (Istio's ztunnel speaks it), with
//! the `h2` crate and rustls, not with ward's code: a client ([`HboneClient`]) that opens
//! HTTP/2 `CONNECT` streams ([`Tunnel`]) over one mTLS connection to a ward HBONE listener,
//! and a server ([`HboneServer`]) that answers a ward outbound's CONNECTs and echoes the
//! tunnelled bytes, recording what each CONNECT carried ([`SeenConnect`]).
//!
//! Wire format: TCP to port 15008 (any port here), TLS 1.3, ALPN `h2`, no SNI, both sides
//! present X.509-SVIDs (each verified against the other's bundle, and its URI SAN read);
//! one CONNECT per tunnelled connection, `:authority` = `IP:port` of the destination; 200,
//! then bytes both ways in DATA frames; 400, 401, 403 or 503 otherwise.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rustls::RootCertStore;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};

use crate::pki::SvidFiles;

/// ztunnel's flow-control windows: 4 MiB a stream, 16 MiB a connection.
pub const HBONE_STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub const HBONE_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// An SVID's chain, key and trust bundle, read from its files.
struct Credentials {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

fn credentials(svid: &SvidFiles) -> Credentials {
    let chain: Vec<_> = CertificateDer::pem_file_iter(&svid.cert)
        .expect("SVID file")
        .collect::<Result<_, _>>()
        .expect("SVID PEM");
    let key = PrivateKeyDer::from_pem_file(&svid.key).expect("SVID key PEM");
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&svid.bundle).expect("bundle file") {
        roots.add(ca.expect("bundle PEM")).expect("bundle CA");
    }
    Credentials {
        chain,
        key,
        roots: Arc::new(roots),
    }
}

/// The SPIFFE ID (the URI SAN) of a DER certificate.
pub fn spiffe_id_of(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
        _ => None,
    })
}

/// Verifies a server's SVID: its chain to the bundle (rustls' WebPKI path building, the
/// server name ignored: SVIDs carry a SPIFFE ID, not a DNS name) and its URI SAN.
#[derive(Debug)]
struct SpiffeServer {
    roots: Arc<RootCertStore>,
    expect: String,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        match spiffe_id_of(end_entity) {
            Some(id) if id == self.expect => Ok(ServerCertVerified::assertion()),
            other => Err(rustls::Error::General(format!(
                "the server is {other:?}, not {}",
                self.expect
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A TLS 1.3 client config presenting `svid`, offering `alpn`, sending no SNI, and
/// accepting only a server that proves `server_id`.
fn client_config(svid: &SvidFiles, server_id: &str, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let creds = credentials(svid);
    let provider = provider();
    let verifier = SpiffeServer {
        roots: creds.roots,
        expect: server_id.to_owned(),
        algs: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(creds.chain, creds.key)
        .expect("client certificate");
    config.enable_sni = false;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// What the TLS handshake of a client showed.
#[derive(Debug)]
pub struct Handshake {
    /// The ALPN protocol the server chose.
    pub alpn: Option<Vec<u8>>,
    /// The server's SPIFFE ID.
    pub peer_id: Option<String>,
}

/// A TLS connection as the HBONE client makes it, for tests of what a server does with one
/// that does not go on to speak HBONE (`alpn` other than `h2`). `Err` if the handshake fails.
pub async fn tls_dial(
    addr: SocketAddr,
    svid: &SvidFiles,
    server_id: &str,
    alpn: &[&[u8]],
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Handshake), String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(svid, server_id, alpn)));
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_nodelay(true).ok();
    let name = ServerName::try_from("hbone.invalid").expect("a name");
    let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_owned())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let conn = tls.get_ref().1;
    let handshake = Handshake {
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        peer_id: conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| spiffe_id_of(c)),
    };
    Ok((tls, handshake))
}

/// One HBONE connection from the tests to a server: mTLS with ALPN `h2`, then HTTP/2 with
/// ztunnel's windows. Streams are opened with [`HboneClient::connect`].
pub struct HboneClient {
    send: h2::client::SendRequest<Bytes>,
    pub handshake: Handshake,
    /// Resolves when the HTTP/2 connection has ended.
    ended: Option<tokio::sync::oneshot::Receiver<()>>,
}

/// What a stream could not do.
#[derive(Debug)]
pub enum StreamError {
    /// The server reset the stream (or refused it) with this HTTP/2 error code.
    Reset(h2::Reason),
    /// The connection failed.
    Other(String),
}

fn stream_error(e: &h2::Error) -> StreamError {
    match e.reason() {
        Some(r) if e.is_reset() || e.is_remote() => StreamError::Reset(r),
        _ => StreamError::Other(e.to_string()),
    }
}

impl HboneClient {
    /// Dials `addr` presenting `svid`, requiring the server to prove `server_id`.
    pub async fn dial(addr: SocketAddr, svid: &SvidFiles, server_id: &str) -> Result<HboneClient, String> {
        let (tls, handshake) = tls_dial(addr, svid, server_id, &[b"h2"]).await?;
        if handshake.alpn.as_deref() != Some(b"h2") {
            return Err(format!("the server chose ALPN {:?}, not h2", handshake.alpn));
        }
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(HBONE_STREAM_WINDOW)
            .initial_connection_window_size(HBONE_CONNECTION_WINDOW)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        let (done, ended) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = conn.await;
            let _ = done.send(());
        });
        Ok(HboneClient {
            send,
            handshake,
            ended: Some(ended),
        })
    }

    /// Opens a CONNECT stream to `authority` (`None`: without `:authority`) with `headers`,
    /// and waits for the answer.
    pub async fn connect(
        &self,
        authority: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Tunnel, StreamError> {
        let uri = authority.unwrap_or("/");
        self.request(http::Method::CONNECT, uri, headers).await
    }

    /// Any request (a `GET` where a CONNECT belongs), answered as a [`Tunnel`].
    pub async fn request(
        &self,
        method: http::Method,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> Result<Tunnel, StreamError> {
        let mut req = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(()).map_err(|e| StreamError::Other(e.to_string()))?;
        let mut send = self.send.clone().ready().await.map_err(|e| stream_error(&e))?;
        let (answer, stream) = send.send_request(req, false).map_err(|e| stream_error(&e))?;
        let resp = tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .map_err(|_| StreamError::Other("no answer within 10 s".into()))?
            .map_err(|e| stream_error(&e))?;
        Ok(Tunnel {
            status: resp.status().as_u16(),
            send: stream,
            recv: resp.into_body(),
        })
    }

    /// Waits (at most `timeout`) for the server to end the HTTP/2 connection; true if it did.
    pub async fn wait_closed(&mut self, timeout: Duration) -> bool {
        match self.ended.take() {
            Some(ended) => tokio::time::timeout(timeout, ended).await.is_ok(),
            None => true,
        }
    }
}

/// One CONNECT stream: its answer, then its bytes.
pub struct Tunnel {
    pub status: u16,
    send: h2::SendStream<Bytes>,
    recv: h2::RecvStream,
}

impl Tunnel {
    /// Sends `data` (flow control permitting; h2 buffers what does not fit yet).
    pub fn write(&mut self, data: &[u8]) -> Result<(), StreamError> {
        self.send
            .send_data(Bytes::copy_from_slice(data), false)
            .map_err(|e| stream_error(&e))
    }

    /// Ends our direction (END_STREAM).
    pub fn finish(&mut self) -> Result<(), StreamError> {
        self.send
            .send_data(Bytes::new(), true)
            .map_err(|e| stream_error(&e))
    }

    /// Resets the stream (RST_STREAM CANCEL), as a client whose app went away does.
    pub fn reset(&mut self) {
        self.send.send_reset(h2::Reason::CANCEL);
    }

    /// The next DATA frame's bytes; `Ok(None)` at END_STREAM.
    pub async fn read(&mut self) -> Result<Option<Bytes>, StreamError> {
        match tokio::time::timeout(Duration::from_secs(10), self.recv.data()).await {
            Err(_) => Err(StreamError::Other("no data within 10 s".into())),
            Ok(None) => Ok(None),
            Ok(Some(Err(e))) => Err(stream_error(&e)),
            Ok(Some(Ok(b))) => {
                let _ = self.recv.flow_control().release_capacity(b.len());
                Ok(Some(b))
            }
        }
    }

    /// Reads until `n` bytes have come (or the stream ended).
    pub async fn read_exact(&mut self, n: usize) -> Result<Vec<u8>, StreamError> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.read().await? {
                Some(b) => out.extend_from_slice(&b),
                None => break,
            }
        }
        Ok(out)
    }

    /// Reads until END_STREAM.
    pub async fn read_to_end(&mut self) -> Result<Vec<u8>, StreamError> {
        let mut out = Vec::new();
        while let Some(b) = self.read().await? {
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    /// The answer's body (the reason of a refusal), as text.
    pub async fn text(&mut self) -> String {
        String::from_utf8_lossy(&self.read_to_end().await.unwrap_or_default()).into_owned()
    }
}

/// One CONNECT the tests' HBONE server received.
#[derive(Debug, Clone)]
pub struct SeenConnect {
    /// Which TLS connection (0, 1, ... in accept order) carried it.
    pub conn: usize,
    /// The client's SPIFFE ID, from its certificate.
    pub peer_id: Option<String>,
    /// The SNI the client sent (HBONE sends none).
    pub sni: Option<String>,
    pub alpn: Option<Vec<u8>>,
    pub method: String,
    /// `:authority`.
    pub authority: Option<String>,
    pub headers: Vec<(String, String)>,
}

impl SeenConnect {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Answer = dyn Fn(&SeenConnect) -> u16 + Send + Sync;

#[derive(Default)]
struct ServerState {
    seen: Mutex<Vec<SeenConnect>>,
    opened: AtomicUsize,
    closed: AtomicUsize,
    bytes: AtomicUsize,
}

/// An HBONE server of the tests' own on a loopback port: it requires a client SVID from its
/// bundle, answers each CONNECT with what `answer` says, and for a 200 echoes the stream's
/// bytes back until the client ends its side. Runs on its own thread; stops when dropped.
pub struct HboneServer {
    pub port: u16,
    state: Arc<ServerState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HboneServer {
    /// Presents `svid`; `answer` gives each CONNECT's status.
    pub fn spawn(
        svid: &SvidFiles,
        answer: impl Fn(&SeenConnect) -> u16 + Send + Sync + 'static,
    ) -> HboneServer {
        let creds = credentials(svid);
        let provider = provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(creds.roots.clone(), provider.clone())
            .build()
            .expect("client verifier");
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_client_cert_verifier(verifier)
            .with_single_cert(creds.chain, creds.key)
            .expect("server certificate");
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("local addr").port();
        let state = Arc::new(ServerState::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let answer: Arc<Answer> = Arc::new(answer);
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("listener");
                let accept = async {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        let (acceptor, st, answer) = (acceptor.clone(), st.clone(), answer.clone());
                        tokio::spawn(async move { serve_conn(acceptor, tcp, st, answer).await });
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stopped => {}
                }
            });
            rt.shutdown_timeout(Duration::from_millis(100));
        });
        HboneServer {
            port,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Every CONNECT so far.
    pub fn seen(&self) -> Vec<SeenConnect> {
        self.state.seen.lock().expect("seen").clone()
    }

    /// TLS connections that completed the handshake and HTTP/2's preface.
    pub fn connections_opened(&self) -> usize {
        self.state.opened.load(Ordering::SeqCst)
    }

    /// Of those, the ones that have ended.
    pub fn connections_closed(&self) -> usize {
        self.state.closed.load(Ordering::SeqCst)
    }

    /// Bytes echoed back through tunnels.
    pub fn bytes_echoed(&self) -> usize {
        self.state.bytes.load(Ordering::SeqCst)
    }
}

impl Drop for HboneServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve_conn(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    st: Arc<ServerState>,
    answer: Arc<Answer>,
) {
    tcp.set_nodelay(true).ok();
    let Ok(tls) = acceptor.accept(tcp).await else {
        return;
    };
    let (sni, alpn, peer_id) = {
        let c = tls.get_ref().1;
        (
            c.server_name().map(str::to_owned),
            c.alpn_protocol().map(<[u8]>::to_vec),
            c.peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| spiffe_id_of(c)),
        )
    };
    let Ok(mut h2) = h2::server::Builder::new()
        .initial_window_size(HBONE_STREAM_WINDOW)
        .initial_connection_window_size(HBONE_CONNECTION_WINDOW)
        .max_concurrent_streams(100)
        .handshake::<_, Bytes>(tls)
        .await
    else {
        return;
    };
    let conn = st.opened.fetch_add(1, Ordering::SeqCst);
    while let Some(Ok((req, mut respond))) = h2.accept().await {
        let seen = SeenConnect {
            conn,
            peer_id: peer_id.clone(),
            sni: sni.clone(),
            alpn: alpn.clone(),
            method: req.method().to_string(),
            authority: req.uri().authority().map(|a| a.as_str().to_owned()),
            headers: req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
        };
        let status = answer(&seen);
        st.seen.lock().expect("seen").push(seen);
        let resp = http::Response::builder()
            .status(status)
            .body(())
            .expect("response");
        if status != 200 {
            let _ = respond.send_response(resp, true);
            continue;
        }
        let Ok(mut send) = respond.send_response(resp, false) else {
            continue;
        };
        let mut recv = req.into_body();
        let st = st.clone();
        tokio::spawn(async move {
            while let Some(Ok(data)) = recv.data().await {
                let _ = recv.flow_control().release_capacity(data.len());
                st.bytes.fetch_add(data.len(), Ordering::SeqCst);
                if send.send_data(data, false).is_err() {
                    return;
                }
            }
            let _ = send.send_data(Bytes::new(), true);
        });
    }
    st.closed.fetch_add(1, Ordering::SeqCst);
}
