//! An outbound toward mTLS servers that are not a ward: ward offers ALPN `h2` then
//! `http/1.1`, and speaks what the server chose. Real nginx and haproxy servers that require
//! a client certificate and pin the client's URI SAN (nginx through njs, haproxy on the
//! certificate's DER) answer through it: HTTP/1.1 over pooled keep-alive mTLS connections
//! (whatever the app spoke, HTTP/1.1 or h2c); a server that chose no ALPN (haproxy without
//! `alpn`, a ward `tcp` inbound) gets the app's bytes passed through; a WebSocket toward
//! haproxy is an HTTP/1.1 upgrade on a connection of its own.

use std::path::Path;

use super::*;

const OTHER: &str = "spiffe://example.org/ns/default/sa/other";
const NJS: &str = "/usr/lib/nginx/modules/ngx_http_js_module.so";

/// The DER of a subjectAltName extension holding exactly the URI `id`, in hex as haproxy's
/// `ssl_c_der,hex` writes it (upper case).
fn san_der_hex(id: &str) -> String {
    let len = |n: usize| -> Vec<u8> {
        match n {
            0..0x80 => vec![n as u8],
            0x80..0x100 => vec![0x81, n as u8],
            _ => vec![0x82, (n >> 8) as u8, n as u8],
        }
    };
    let uri = id.as_bytes();
    let mut gn = vec![0x86];
    gn.extend(len(uri.len()));
    gn.extend(uri);
    let mut seq = vec![0x30];
    seq.extend(len(gn.len()));
    seq.extend(&gn);
    let mut oct = vec![0x04];
    oct.extend(len(seq.len()));
    oct.extend(&seq);
    let mut ext = vec![0x06, 0x03, 0x55, 0x1d, 0x11];
    ext.extend(&oct);
    ext.iter().map(|b| format!("{b:02X}")).collect()
}

/// nginx requiring a client SVID and pinning the client's URI SAN to `FRONTEND`; it answers
/// with what it saw: the request, its protocol, its connection and how many requests that
/// connection carried, and the ALPN protocol.
fn nginx(dir: &Path, port: u16, server: &SvidFiles) -> Daemon {
    assert!(
        Path::new(NJS).is_file(),
        "the nginx tests need the njs module at {NJS} (apt-get install libnginx-mod-http-js)"
    );
    std::fs::write(
        dir.join("spiffe.js"),
        include_str!("../../../benches/load/spiffe.js"),
    )
    .unwrap();
    for d in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let d = dir.display();
    let conf = format!(
        "load_module {NJS};\ndaemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         \x20 js_path {d};\n  js_import spiffe from spiffe.js;\n  js_set $spiffe_peer_ok spiffe.peer_ok;\n  keepalive_timeout 60s;\n\
         \x20 server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_client_certificate {};\n    ssl_verify_client on;\n    ssl_protocols TLSv1.3;\n    set $spiffe_expected \"{FRONTEND}\";\n\
         \x20   location / {{\n      default_type text/plain;\n      if ($spiffe_peer_ok != \"1\") {{ return 403 \"nginx: forbidden\\n\"; }}\n      return 200 \"nginx $request_method $request_uri $server_protocol conn=$connection req=$connection_requests alpn=$ssl_alpn_protocol\\n\";\n    }}\n  }}\n}}\n",
        server.cert.display(),
        server.key.display(),
        server.bundle.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    Daemon::start(
        "nginx",
        Command::new(require_tool("nginx"))
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&path),
        port,
    )
}

/// haproxy requiring a client SVID and pinning its URI SAN: one frontend that chooses ALPN
/// `http/1.1`, one with no ALPN at all, and one (`http/1.1`) in front of a WebSocket server.
fn haproxy(dir: &Path, alpn: u16, none: u16, ws: (u16, u16), server: &SvidFiles) -> Daemon {
    let combined = dir.join("combined.pem");
    let pem = std::fs::read_to_string(&server.cert).unwrap() + &std::fs::read_to_string(&server.key).unwrap();
    std::fs::write(&combined, pem).unwrap();
    let bind = |port: u16, extra: &str| {
        format!(
            "  bind 127.0.0.1:{port} ssl crt {} ca-file {} verify required{extra}\n  tcp-request session reject unless {{ ssl_c_der,hex -m sub {} }}\n",
            combined.display(),
            server.bundle.display(),
            san_der_hex(FRONTEND)
        )
    };
    let conf = format!(
        "global\n  ssl-default-bind-options ssl-min-ver TLSv1.3\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         frontend alpn\n{}  http-request return status 200 content-type text/plain lf-string \"haproxy alpn=%[ssl_fc_alpn] %[method] %[path]\\n\"\n\
         frontend none\n{}  http-request return status 200 content-type text/plain lf-string \"haproxy alpn=%[ssl_fc_alpn] %[method] %[path]\\n\"\n\
         frontend ws\n{}  timeout tunnel 30s\n  default_backend ws\nbackend ws\n  server py 127.0.0.1:{}\n",
        bind(alpn, " alpn http/1.1"),
        bind(none, ""),
        bind(ws.0, " alpn http/1.1"),
        ws.1,
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf).unwrap();
    let d = Daemon::start(
        "haproxy",
        Command::new(require_tool("haproxy"))
            .arg("-db")
            .arg("-f")
            .arg(&path),
        alpn,
    );
    wait_until("haproxy listens on its second port", WAIT, || is_listening(none));
    d
}

#[test]
fn outbound_speaks_http1_to_nginx_and_haproxy_and_passes_bytes_to_opaque_servers() {
    let ids = ids();
    let intruder = ids.pki.issue("intruder", INTRUDER);
    let dir = ids.pki.dir.path().join("peers");
    std::fs::create_dir_all(&dir).unwrap();
    let (ng, ha_alpn, ha_none) = (free_port(), free_port(), free_port());
    let mut nginx = nginx(&dir, ng, &ids.backend);
    let ws_app = free_port();
    let _ws_server = Daemon::start(
        "websockets server",
        Command::new(super::websocket::python()).args(["-c", super::websocket::SERVER, &ws_app.to_string()]),
        ws_app,
    );
    let ha_ws = free_port();
    let mut haproxy = haproxy(&dir, ha_alpn, ha_none, (ha_ws, ws_app), &ids.backend);
    // A ward inbound with `protocol: tcp` in front of the echo app.
    let app = HttpApp::spawn();
    let tcp_in = free_port();
    let body = format!(
        "{}inbound:\n  - {{name: raw, listen: \"127.0.0.1:{tcp_in}\", forward: \"{}\", protocol: tcp, policy: raw}}\npolicies:\n  raw:\n    default: deny\n    rules:\n{}",
        identity_yaml(&ids.backend, &[]),
        app.addr,
        allow_frontend()
    );
    let raw = Ward::start(&body, &[tcp_in]);

    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let listener = |name: &str, port: u16, to: u16, protocol: &str, id: &str| {
        format!(
            "  - {{name: {name}, listen: \"127.0.0.1:{port}\", forward: \"127.0.0.1:{to}\", protocol: {protocol}, server_id: \"{id}\"}}\n"
        )
    };
    let body = format!(
        "{}outbound:\n{}{}{}{}{}{}",
        identity_yaml(&ids.frontend, &[]),
        listener("nginx", ports[0], ng, "http", BACKEND),
        listener("nginx-wrong-id", ports[1], ng, "http", OTHER),
        listener("haproxy", ports[2], ha_alpn, "http", BACKEND),
        listener("haproxy-no-alpn", ports[3], ha_none, "auto", BACKEND),
        listener("ward-tcp", ports[4], tcp_in, "http", BACKEND),
        listener("haproxy-ws", ports[5], ha_ws, "http", BACKEND),
    );
    let outbound = Ward::start(&body, &ports);
    let url = |port: u16, path: &str| format!("http://127.0.0.1:{port}{path}");

    // nginx: HTTP/1.1 over mTLS, whatever the app spoke; three app connections, one pooled
    // keep-alive connection to nginx.
    let mut conns = BTreeSet::new();
    for (i, version) in ["--http1.1", "--http2-prior-knowledge", "--http1.1"]
        .iter()
        .enumerate()
    {
        let got = curl(&[version, &url(ports[0], &format!("/n{i}?q=1"))]);
        assert_eq!(got.status, 200, "{version}: {got:?}");
        let want = format!("nginx GET /n{i}?q=1 HTTP/1.1 conn=");
        assert!(got.body.starts_with(&want), "{version}: {got:?}");
        assert!(
            got.body.contains(&format!("req={} alpn=http/1.1\n", i + 1)),
            "{got:?}"
        );
        conns.insert(
            got.body
                .split("conn=")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(conns.len(), 1, "one keep-alive connection to nginx: {conns:?}");
    // A server that proves the wrong ID is refused before any request.
    let got = curl(&[&url(ports[1], "/w")]);
    assert_eq!(got.status, 502, "{got:?}");
    assert!(got.body.contains("server_id_mismatch"), "{got:?}");
    // haproxy choosing http/1.1, and haproxy choosing no ALPN (the app's bytes passed through).
    let got = curl(&[&url(ports[2], "/h")]);
    assert_eq!(
        (got.status, got.body.as_str()),
        (200, "haproxy alpn=http/1.1 GET /h\n"),
        "{got:?}"
    );
    let got = curl(&[&url(ports[3], "/o")]);
    assert_eq!(
        (got.status, got.body.as_str()),
        (200, "haproxy alpn= GET /o\n"),
        "{got:?}"
    );
    // A ward `tcp` inbound: the bytes pass through to its app.
    let got = curl(&[&url(ports[4], "/t?x=1")]);
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.echo()["target"], "/t?x=1", "{got:?}");
    raw.wait_record("the tcp inbound's allow", |r| {
        r["kind"] == "authz" && r["decision"] == "allow"
    });
    // A WebSocket through haproxy (HTTP/1.1): the upgrade on an mTLS connection of its own.
    let got = super::websocket::ws_client(&url(ports[5], "/via-haproxy").replace("http:", "ws:"), "echo");
    assert_eq!(got["echoed"], 3, "{got}");
    assert_eq!(got["hello"]["path"], "/via-haproxy", "{got}");

    // The outbound's records: per request for HTTP/1.1 peers, with the server's ID; a
    // connection record for each passed-through one.
    let records = outbound.records();
    let nginx_reqs: Vec<&Value> = records
        .iter()
        .filter(|r| r["listener"] == "nginx" && r["kind"] == "request")
        .collect();
    assert_eq!(nginx_reqs.len(), 3, "{records:?}");
    for r in &nginx_reqs {
        assert_eq!(
            (&r["peer_id"], &r["status"]),
            (&BACKEND.into(), &200.into()),
            "{r}"
        );
    }
    for listener in ["haproxy-no-alpn", "ward-tcp"] {
        let r = outbound.wait_record(listener, |r| r["listener"] == listener && r["kind"] == "authz");
        assert_eq!(
            (&r["peer_id"], &r["reason"]),
            (&BACKEND.into(), &"server_id_match".into()),
            "{r}"
        );
    }

    // nginx's own 403 for a SPIFFE ID it does not pin is relayed unchanged.
    let intr = free_port();
    let body = format!(
        "{}outbound:\n{}",
        identity_yaml(&intruder, &[]),
        listener("nginx", intr, ng, "http", BACKEND)
    );
    let _intruder = Ward::start(&body, &[intr]);
    let got = curl(&[&url(intr, "/x")]);
    assert_eq!(
        (got.status, got.body.as_str()),
        (403, "nginx: forbidden\n"),
        "{got:?}"
    );

    nginx.assert_running();
    haproxy.assert_running();
    outbound.assert_no_panic();
}
