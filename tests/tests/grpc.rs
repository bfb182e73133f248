#![allow(clippy::unwrap_used, clippy::expect_used)]
//! gRPC through two real ward processes: a tonic client (and a raw hyper HTTP/2 client) →
//! outbound ward (h2c from the app; `protocol: http` and `auto`) → pooled HTTP/2 mTLS →
//! inbound ward → a gRPC app over h2c. Unary and server-streaming calls, trailers (grpc-status
//! and a custom one) intact, error statuses (in trailers and trailers-only) propagated.
//!
//! The app is a hand-written gRPC server on hyper so that it can send a custom trailer with a
//! successful status, which tonic's server cannot; the messages are prost derives (no protoc).

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::codegen::http::uri::PathAndQuery;
use ward_e2e::*;

#[derive(Clone, PartialEq, prost::Message)]
struct EchoRequest {
    #[prost(string, tag = "1")]
    text: String,
    /// Server-streaming: how many replies.
    #[prost(uint32, tag = "2")]
    count: u32,
    /// Size of each reply's payload.
    #[prost(uint32, tag = "3")]
    size: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EchoReply {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint32, tag = "2")]
    index: u32,
    /// The `x-forwarded-client-cert` the app received.
    #[prost(string, tag = "3")]
    xfcc: String,
    #[prost(bytes = "vec", tag = "4")]
    payload: Vec<u8>,
}

const UNARY: &str = "/ward.test.Echo/Unary";
const STREAM: &str = "/ward.test.Echo/Stream";
const FAIL: &str = "/ward.test.Echo/Fail";
const REFUSE: &str = "/ward.test.Echo/Refuse";

/// A length-prefixed gRPC message.
fn frame(msg: &impl prost::Message) -> Bytes {
    let body = msg.encode_to_vec();
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&body);
    out.into()
}

/// Every message in a gRPC body.
fn unframe<M: prost::Message + Default>(mut bytes: &[u8]) -> Vec<M> {
    let mut out = Vec::new();
    while bytes.len() >= 5 {
        assert_eq!(bytes[0], 0, "compressed messages are not expected");
        let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
        out.push(M::decode(&bytes[5..5 + len]).unwrap());
        bytes = &bytes[5 + len..];
    }
    assert!(bytes.is_empty(), "trailing bytes in a gRPC body");
    out
}

type AppBody = BoxBody<Bytes, Infallible>;

/// The gRPC app: h2c only (as a gRPC server is), recording every request it gets.
struct GrpcApp {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl GrpcApp {
    fn spawn() -> GrpcApp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((tcp, _)) = accepted else { continue };
                            let log = log.clone();
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(move |req| answer(req, log.clone()));
                                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                    .serve_connection(TokioIo::new(tcp), service)
                                    .await;
                            });
                        }
                        _ = &mut stopped => return,
                    }
                }
            });
        });
        GrpcApp {
            addr,
            seen,
            stop: Some(stop),
        }
    }

    fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for GrpcApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn trailers(pairs: &[(&'static str, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, HeaderValue::from_str(value).unwrap());
    }
    map
}

/// A gRPC response: headers, then `messages` a few ms apart, then `trailers`.
fn streamed(messages: Vec<Bytes>, trailers: HeaderMap) -> Response<AppBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(async move {
        for m in messages {
            if tx.send(Ok(Frame::data(m))).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let _ = tx.send(Ok(Frame::trailers(trailers))).await;
    });
    Response::builder()
        .header("content-type", "application/grpc")
        .header("x-app-header", "grpc-app")
        .body(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed())
        .unwrap()
}

async fn answer(
    req: Request<Incoming>,
    log: Arc<Mutex<Vec<SeenRequest>>>,
) -> Result<Response<AppBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    log.lock().unwrap().push(SeenRequest {
        method: parts.method.to_string(),
        target: parts.uri.path().to_owned(),
        version: format!("{:?}", parts.version),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("?").to_owned()))
            .collect(),
        body_len: bytes.len(),
    });
    let input = unframe::<EchoRequest>(&bytes)
        .into_iter()
        .next()
        .unwrap_or_default();
    let xfcc = parts
        .headers
        .get_all("x-forwarded-client-cert")
        .iter()
        .map(|v| v.to_str().unwrap_or("?"))
        .collect::<Vec<_>>()
        .join(" | ");
    let resp = match parts.uri.path() {
        UNARY => streamed(
            vec![frame(&EchoReply {
                text: format!("echo: {}", input.text),
                index: 0,
                xfcc,
                payload: Vec::new(),
            })],
            trailers(&[("grpc-status", "0".into()), ("x-trailer", "unary-done".into())]),
        ),
        STREAM => streamed(
            (0..input.count)
                .map(|i| {
                    frame(&EchoReply {
                        text: format!("{} #{i}", input.text),
                        index: i,
                        xfcc: xfcc.clone(),
                        payload: random_bytes(u64::from(i), input.size as usize),
                    })
                })
                .collect(),
            trailers(&[
                ("grpc-status", "0".into()),
                ("x-trailer", "stream-done".into()),
                ("x-count", input.count.to_string()),
            ]),
        ),
        FAIL => streamed(
            Vec::new(),
            trailers(&[
                ("grpc-status", "5".into()),
                ("grpc-message", "no%20such%20thing".into()),
                ("x-trailer", "fail-done".into()),
            ]),
        ),
        // Trailers-only: the status in the headers, no body.
        REFUSE => Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "7")
            .header("grpc-message", "go%20away")
            .header("x-trailer", "refuse-done")
            .body(Empty::new().boxed())
            .unwrap(),
        _ => Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "12")
            .body(Empty::new().boxed())
            .unwrap(),
    };
    Ok(resp)
}

type Codec = tonic_prost::ProstCodec<EchoRequest, EchoReply>;

fn meta<'a>(map: &'a tonic::metadata::MetadataMap, key: &str) -> Option<&'a str> {
    map.get(key).and_then(|v| v.to_str().ok())
}

/// A unary call, a server-streaming call (small and large messages), an error status in the
/// trailers and a trailers-only error, through an `http` and an `auto` outbound; trailers arrive
/// intact, the app gets h2c with XFCC and `te: trailers`, and the inbound records each call.
#[test]
fn grpc_calls_cross_both_sidecars_with_trailers_and_statuses() {
    let ids = ids();
    let app = GrpcApp::spawn();
    let rules = allow_frontend();
    let pair = start_pair(
        &ids,
        &[
            Route::http("grpc", app.addr, &rules),
            Route {
                protocol: ("auto", "auto"),
                ..Route::http("grpc-auto", app.addr, &rules)
            },
        ],
    );
    let xfcc = expected_xfcc(&ids);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ports = pair.out_ports.clone();
    let calls = rt.block_on(async {
        tokio::time::timeout(WAIT * 3, async {
            let mut calls = 0;
            for port in &ports {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                    .unwrap()
                    .connect_timeout(WAIT)
                    .connect()
                    .await
                    .unwrap();
                let mut grpc = tonic::client::Grpc::new(channel);

                // Unary: the reply, the app's header, the custom trailer.
                grpc.ready().await.unwrap();
                let resp = grpc
                    .unary(
                        tonic::Request::new(EchoRequest {
                            text: "hi".into(),
                            ..Default::default()
                        }),
                        PathAndQuery::from_static(UNARY),
                        Codec::default(),
                    )
                    .await
                    .unwrap_or_else(|s| panic!("unary via {port}: {s:?}"));
                assert_eq!(meta(resp.metadata(), "x-app-header"), Some("grpc-app"));
                assert_eq!(meta(resp.metadata(), "x-trailer"), Some("unary-done"), "{resp:?}");
                let reply = resp.into_inner();
                assert_eq!(reply.text, "echo: hi");
                assert_eq!(reply.xfcc, xfcc, "the app's XFCC for a gRPC call");
                calls += 1;

                // Server streaming: every message in order, then the trailers.
                for (count, size) in [(5u32, 0u32), (40, 16 * 1024)] {
                    grpc.ready().await.unwrap();
                    let mut stream = grpc
                        .server_streaming(
                            tonic::Request::new(EchoRequest {
                                text: "item".into(),
                                count,
                                size,
                            }),
                            PathAndQuery::from_static(STREAM),
                            Codec::default(),
                        )
                        .await
                        .unwrap()
                        .into_inner();
                    let mut got = 0;
                    while let Some(m) = stream.message().await.unwrap() {
                        assert_eq!(m.index, got);
                        assert_eq!(m.text, format!("item #{got}"));
                        assert!(
                            m.payload == random_bytes(u64::from(got), size as usize),
                            "payload {got} corrupted"
                        );
                        got += 1;
                    }
                    assert_eq!(got, count, "messages via {port}");
                    let t = stream.trailers().await.unwrap().expect("trailers");
                    assert_eq!(meta(&t, "x-trailer"), Some("stream-done"), "{t:?}");
                    assert_eq!(meta(&t, "x-count"), Some(count.to_string().as_str()), "{t:?}");
                    calls += 1;
                }

                // An error status in the trailers, with its message and the custom trailer.
                grpc.ready().await.unwrap();
                let status = grpc
                    .unary(
                        tonic::Request::new(EchoRequest::default()),
                        PathAndQuery::from_static(FAIL),
                        Codec::default(),
                    )
                    .await
                    .expect_err("Fail fails");
                assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
                assert_eq!(status.message(), "no such thing", "{status:?}");
                assert_eq!(
                    meta(status.metadata(), "x-trailer"),
                    Some("fail-done"),
                    "{status:?}"
                );
                calls += 1;

                // Trailers-only.
                grpc.ready().await.unwrap();
                let status = grpc
                    .unary(
                        tonic::Request::new(EchoRequest::default()),
                        PathAndQuery::from_static(REFUSE),
                        Codec::default(),
                    )
                    .await
                    .expect_err("Refuse fails");
                assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
                assert_eq!(status.message(), "go away", "{status:?}");
                calls += 1;
            }

            // A raw HTTP/2 client sees the trailers exactly as the app sent them.
            let tcp = tokio::net::TcpStream::connect(local(ports[0])).await.unwrap();
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            for (path, status, trailer) in [(UNARY, "0", "unary-done"), (FAIL, "5", "fail-done")] {
                let req = Request::post(format!("http://127.0.0.1:{}{path}", ports[0]))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers")
                    .body(Full::new(frame(&EchoRequest {
                        text: "raw".into(),
                        ..Default::default()
                    })))
                    .unwrap();
                let resp = send.send_request(req).await.unwrap();
                assert_eq!(resp.status(), 200);
                assert_eq!(resp.headers()["content-type"], "application/grpc");
                let body = resp.into_body().collect().await.unwrap();
                let t = body.trailers().cloned().expect("trailers");
                let replies = unframe::<EchoReply>(&body.to_bytes());
                assert_eq!(t.get("grpc-status").unwrap(), status, "{path}: {t:?}");
                assert_eq!(t.get("x-trailer").unwrap(), trailer, "{path}: {t:?}");
                if path == UNARY {
                    assert_eq!(replies.len(), 1);
                    assert_eq!(replies[0].text, "echo: raw");
                } else {
                    assert!(replies.is_empty());
                    assert_eq!(t.get("grpc-message").unwrap(), "no%20such%20thing");
                }
                calls += 1;
            }
            calls
        })
        .await
        .expect("the gRPC calls finish in time")
    });

    // The app: every call over h2c, with the gRPC headers and ward's XFCC only.
    let seen = app.seen();
    assert_eq!(seen.len(), calls, "{seen:?}");
    for s in &seen {
        assert_eq!(s.version, "HTTP/2.0", "gRPC goes to the app as h2c: {s:?}");
        assert_eq!(s.method, "POST", "{s:?}");
        assert_eq!(s.header("te"), ["trailers"], "{s:?}");
        assert!(
            s.header("content-type")
                .first()
                .is_some_and(|c| c.starts_with("application/grpc")),
            "{s:?}"
        );
        assert_eq!(s.header("x-forwarded-client-cert"), [xfcc.as_str()], "{s:?}");
    }

    // The inbound: one request record per call, HTTP status 200 (gRPC status is in trailers).
    let records = pair
        .inbound
        .wait_records(calls, "of kind request", |r| r["kind"] == "request");
    assert_eq!(records.len(), calls);
    for r in &records {
        assert_eq!(r["method"], "POST", "{r}");
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["peer_id"], FRONTEND, "{r}");
        assert!(r["path"].as_str().unwrap().starts_with("/ward.test.Echo/"), "{r}");
    }
    let big = records
        .iter()
        .map(|r| r["bytes_out"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(big > 40 * 16 * 1024, "the large stream's bytes: {big}");
    // Both listeners served, each over one pooled connection.
    for listener in ["grpc", "grpc-auto"] {
        let srcs: std::collections::BTreeSet<String> = records
            .iter()
            .filter(|r| r["listener"] == listener)
            .map(|r| r["src"].to_string())
            .collect();
        assert_eq!(srcs.len(), 1, "{listener}: {srcs:?}");
    }
    for w in [&pair.inbound, &pair.outbound] {
        w.assert_no_panic();
    }
}

/// A gRPC call the policy denies gets what gRPC clients expect: a trailers-only
/// PERMISSION_DENIED (status 7) naming the rule, relayed unchanged by the caller's sidecar, not
/// UNAVAILABLE; the app never sees it; the inbound records the denied call. A peer no rule
/// allows at all gets status 7 too, for each call, never a cut-off connection.
#[test]
fn a_denied_grpc_call_gets_permission_denied_not_unavailable() {
    let ids = ids();
    let app = GrpcApp::spawn();
    let rules = format!(
        "      - {{name: no-streams, action: deny, from: [\"{FRONTEND}\"], paths: [\"{STREAM}\"]}}\n\
         \x20     - {{name: frontend, action: allow, from: [\"{FRONTEND}\"]}}\n"
    );
    let pair = start_pair(&ids, &[Route::http("grpc", app.addr, &rules)]);
    let intruder = ids.pki.issue("intruder", INTRUDER);
    let intr_port = free_port();
    let body = format!(
        "{}outbound:\n  - {{name: grpc, listen: \"127.0.0.1:{intr_port}\", forward: \"127.0.0.1:{}\", protocol: http, server_id: \"{BACKEND}\"}}\n",
        identity_yaml(&intruder, &[]),
        pair.in_ports[0]
    );
    let _intruder_ward = Ward::start(&body, &[intr_port]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let call = |port: u16, path: &'static str| async move {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                .unwrap()
                .connect_timeout(WAIT)
                .connect()
                .await
                .unwrap();
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await.unwrap();
            grpc.unary::<_, EchoReply, _>(
                tonic::Request::new(EchoRequest {
                    text: "hi".into(),
                    ..Default::default()
                }),
                PathAndQuery::from_static(path),
                Codec::default(),
            )
            .await
        };
        let ok = call(pair.out_ports[0], UNARY).await.expect("an allowed call");
        assert_eq!(ok.into_inner().text, "echo: hi");
        let status = call(pair.out_ports[0], STREAM)
            .await
            .expect_err("a denied method");
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert_eq!(
            status.message(),
            "ward: access denied: deny_rule (rule \"no-streams\")"
        );
        for _ in 0..2 {
            let status = call(intr_port, UNARY).await.expect_err("a peer nothing allows");
            assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
            assert_eq!(status.message(), "ward: access denied: default_deny");
        }
    });
    assert_eq!(app.seen().len(), 1, "only the allowed call reached the app");
    let denied = pair.inbound.wait_records(3, "denied calls", |r| {
        r["kind"] == "request" && r["decision"] == "deny"
    });
    assert_eq!(denied[0]["path"], STREAM, "{}", denied[0]);
    assert_eq!(denied[0]["rule"], "no-streams", "{}", denied[0]);
    assert_eq!(denied[1]["peer_id"], INTRUDER, "{}", denied[1]);
    // Denied per call, never at the connection.
    let cut = pair
        .inbound
        .records()
        .into_iter()
        .filter(|r| r["kind"] == "authz")
        .count();
    assert_eq!(cut, 0, "a connection-level deny");
    pair.inbound.assert_no_panic();
}
