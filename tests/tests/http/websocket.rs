//! WebSocket on HTTP listeners, through a ward pair, with a real WebSocket library on both
//! ends (Python's `websockets`): the upgrade request gets the policy (a denied path: 403, the
//! app never sees it) and the identity header; 101 is relayed; messages flow both ways (a
//! 1 MB one too) over the sidecars' pooled HTTP/2 connection as an extended CONNECT; an h2c
//! app's own extended CONNECT (RFC 8441, a hyper client) works the same; the records name the
//! upgrade and its bytes; a stream outlives no SVID: when the client's expires, it is closed
//! with `peer_svid_expired`.

use std::time::Instant;

use super::*;

pub(super) const SERVER: &str = r#"
import asyncio, json, sys, websockets
async def handler(ws):
    await ws.send(json.dumps({"path": ws.path, "xfcc": ws.request_headers.get("x-forwarded-client-cert")}))
    async for m in ws:
        await ws.send(m)
async def main():
    async with websockets.serve(handler, "127.0.0.1", int(sys.argv[1]), max_size=None):
        await asyncio.Future()
asyncio.run(main())
"#;

const CLIENT: &str = r#"
import asyncio, json, os, sys, websockets
async def main():
    uri, mode = sys.argv[1], sys.argv[2]
    try:
        async with websockets.connect(uri, max_size=None, open_timeout=5) as ws:
            hello = json.loads(await ws.recv())
            if mode == "hold":
                n = 0
                try:
                    while n < 200:
                        await ws.send("ping")
                        await asyncio.wait_for(ws.recv(), 5)
                        n += 1
                        await asyncio.sleep(0.1)
                except websockets.exceptions.ConnectionClosed:
                    pass
                print(json.dumps({"hello": hello, "pings": n}))
                return
            for m in ["one", "two", os.urandom(1 << 20)]:
                await ws.send(m)
                assert await ws.recv() == m
            print(json.dumps({"hello": hello, "echoed": 3}))
    except websockets.exceptions.InvalidStatusCode as e:
        print(json.dumps({"status": e.status_code}))
asyncio.run(main())
"#;

/// The system python3 with `websockets` (the one `.ci/run` installs it for).
pub(super) fn python() -> &'static str {
    for p in ["/usr/bin/python3", "python3"] {
        let ok = Command::new(p)
            .args(["-c", "import websockets"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return p;
        }
    }
    panic!("the WebSocket tests need Python's websockets: apt-get install python3-websockets");
}

pub(super) fn ws_client(url: &str, mode: &str) -> Value {
    let out = run(
        Command::new(python()).args(["-c", CLIENT, url, mode]),
        b"",
        Duration::from_secs(30),
    );
    assert_eq!(out.code(), 0, "{url} {mode}: {}\n{}", out.stdout(), out.stderr());
    serde_json::from_str(out.stdout().trim()).unwrap_or_else(|e| panic!("{e}: {}", out.stdout()))
}

/// One WebSocket frame from the server (unmasked, FIN set), read by hand.
async fn read_frame(io: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 2];
    io.read_exact(&mut head).await.unwrap();
    let len = match head[1] & 0x7f {
        126 => usize::from(io.read_u16().await.unwrap()),
        127 => usize::try_from(io.read_u64().await.unwrap()).unwrap(),
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await.unwrap();
    payload
}

/// A masked text frame from the client.
fn text_frame(text: &str) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![0x81, 0x80 | u8::try_from(text.len()).unwrap()];
    f.extend(mask);
    f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[test]
fn websockets_cross_a_ward_pair_under_policy_with_records() {
    let ids = ids();
    let ws_port = free_port();
    let mut server = Daemon::start(
        "websockets server",
        Command::new(python()).args(["-c", SERVER, &ws_port.to_string()]),
        ws_port,
    );
    let rules = format!(
        "      - {{name: no-admin, action: deny, paths: [\"/admin/**\"]}}\n{}",
        allow_frontend()
    );
    let pair = start_pair(&ids, &[Route::http("ws", local(ws_port), &rules)]);
    let out = pair.out_ports[0];

    // HTTP/1.1 WebSocket from the app: 101, the hello with ward's XFCC, echoes.
    let got = ws_client(&format!("ws://127.0.0.1:{out}/chat?room=1"), "echo");
    assert_eq!(got["echoed"], 3, "{got}");
    assert_eq!(got["hello"]["path"], "/chat?room=1", "{got}");
    assert_eq!(got["hello"]["xfcc"], expected_xfcc(&ids), "{got}");
    // A denied path: 403, before the app.
    let got = ws_client(&format!("ws://127.0.0.1:{out}/admin/ws"), "echo");
    assert_eq!(got["status"], 403, "{got}");

    // The records: the upgrade request (101) and, at its end, the upgraded stream's bytes.
    let ups = pair
        .inbound
        .wait_records(1, "the upgrade record", |r| r["kind"] == "upgrade");
    let r = &ups[0];
    assert_eq!(
        (&r["path"], &r["method"], &r["peer_id"]),
        (&"/chat".into(), &"GET".into(), &FRONTEND.into()),
        "{r}"
    );
    assert!(r["bytes_in"].as_u64().unwrap() > 1_000_000, "{r}");
    assert!(r["bytes_out"].as_u64().unwrap() > 1_000_000, "{r}");
    let reqs = pair.inbound.records();
    let switched = reqs
        .iter()
        .find(|r| r["kind"] == "request" && r["path"] == "/chat")
        .unwrap();
    // Between the sidecars it was an extended CONNECT, answered 200; the app got its 101.
    assert_eq!(
        (&switched["status"], &switched["decision"]),
        (&200.into(), &"allow".into()),
        "{switched}"
    );
    let app_side = pair.outbound.wait_record("the app's upgrade request", |r| {
        r["kind"] == "request" && r["path"] == "/chat"
    });
    assert_eq!(
        (&app_side["status"], &app_side["peer_id"]),
        (&101.into(), &BACKEND.into()),
        "{app_side}"
    );
    let denied = pair.inbound.wait_record("the denied upgrade", |r| {
        r["kind"] == "request" && r["path"] == "/admin/ws"
    });
    assert_eq!(
        (&denied["status"], &denied["rule"]),
        (&403.into(), &"no-admin".into()),
        "{denied}"
    );
    pair.outbound
        .wait_record("the outbound's upgrade record", |r| r["kind"] == "upgrade");

    // h2c from the app: its own extended CONNECT (RFC 8441), answered 200, then frames.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(local(out)).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let mut req = http::Request::connect(format!("http://127.0.0.1:{out}/h2chat"))
            .header("sec-websocket-version", "13")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{resp:?}");
        let mut io = hyper_util::rt::TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
        let hello: Value = serde_json::from_slice(&read_frame(&mut io).await).unwrap();
        assert_eq!(hello["path"], "/h2chat", "{hello}");
        assert_eq!(hello["xfcc"], expected_xfcc(&ids), "{hello}");
        tokio::io::AsyncWriteExt::write_all(&mut io, &text_frame("over h2c"))
            .await
            .unwrap();
        assert_eq!(read_frame(&mut io).await, b"over h2c");
    });
    server.assert_running();
    pair.inbound.assert_no_panic();
    pair.outbound.assert_no_panic();
}

/// A WebSocket server behind an inbound sidecar (its policy: `rules`, then the frontend
/// allowed) and an outbound for `client`: the server, the inbound, its config for `rules`
/// (to rewrite), the outbound and its port.
struct WsPair {
    _server: Daemon,
    inbound: Ward,
    config: Box<dyn Fn(&str) -> String>,
    _outbound: Ward,
    port: u16,
}

fn ws_pair(ids: &Ids, client: &SvidFiles, rules: &str) -> WsPair {
    let ws_port = free_port();
    let server = Daemon::start(
        "websockets server",
        Command::new(python()).args(["-c", SERVER, &ws_port.to_string()]),
        ws_port,
    );
    let (inp, outp) = (free_port(), free_port());
    let identity = identity_yaml(&ids.backend, &[]);
    let config = move |rules: &str| {
        format!(
            "{identity}inbound:\n  - {{name: ws, listen: \"127.0.0.1:{inp}\", forward: \"127.0.0.1:{ws_port}\", protocol: http, policy: ws}}\npolicies:\n  ws:\n    default: deny\n    rules:\n{rules}{}",
            allow_frontend()
        )
    };
    let inbound = Ward::start(&config(rules), &[inp]);
    let body = format!(
        "{}outbound:\n  - {{name: ws, listen: \"127.0.0.1:{outp}\", forward: \"127.0.0.1:{inp}\", protocol: http, server_id: \"{BACKEND}\"}}\n",
        identity_yaml(client, &[]),
    );
    let outbound = Ward::start(&body, &[outp]);
    WsPair {
        _server: server,
        inbound,
        config: Box::new(config),
        _outbound: outbound,
        port: outp,
    }
}

/// A WebSocket whose client sidecar's SVID expires mid-stream is closed then, with the reason.
#[test]
fn a_websocket_is_closed_when_the_callers_svid_expires() {
    let ids = ids();
    let brief = ids.pki.brief("brief", FRONTEND, 4);
    let pair = ws_pair(&ids, &brief, "");
    let (inbound, outp) = (&pair.inbound, pair.port);
    let started = Instant::now();
    let got = ws_client(&format!("ws://127.0.0.1:{outp}/live"), "hold");
    let took = started.elapsed();
    let pings = got["pings"].as_u64().unwrap();
    assert!(pings > 5 && pings < 200, "{got}");
    assert!(took < Duration::from_secs(12), "closed after {took:?}");
    let r = inbound.wait_record("the expiry", |r| {
        r["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("peer_svid_expired")
    });
    assert_eq!(
        (&r["peer_id"], &r["peer_serial"]),
        (&FRONTEND.into(), &brief.serial.as_str().into()),
        "{r}"
    );
}

/// A reload whose policy now denies an upgraded stream's request closes the stream, with the
/// reason; the policy of before admitted it.
#[test]
fn a_reload_that_denies_the_upgrade_request_closes_the_stream() {
    let ids = ids();
    let pair = ws_pair(&ids, &ids.frontend, "");
    let (inbound, outp) = (&pair.inbound, pair.port);
    let url = format!("ws://127.0.0.1:{outp}/live");
    let holder = std::thread::spawn(move || ws_client(&url, "hold"));
    inbound.wait_record("the stream's switch", |r| {
        r["kind"] == "request" && r["path"] == "/live"
    });
    std::thread::sleep(Duration::from_millis(500));
    inbound.rewrite(&(pair.config)(
        "      - {name: no-live, action: deny, paths: [\"/live\"]}\n",
    ));
    let got = holder.join().unwrap();
    let pings = got["pings"].as_u64().unwrap();
    assert!(pings > 2 && pings < 200, "{got}");
    let r = inbound.wait_record("the revocation", |r| {
        r["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("revoked_policy")
    });
    assert_eq!(r["peer_id"], FRONTEND, "{r}");
    let up = inbound.wait_record("the upgrade record", |r| r["kind"] == "upgrade");
    assert!(
        up["reason"]
            .as_str()
            .unwrap()
            .starts_with("revoked: revoked_policy"),
        "{up}"
    );
}
