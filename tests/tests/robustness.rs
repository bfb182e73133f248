#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Malformed input never crashes ward: garbage configs for `ward check`, garbage certificates
//! for `ward certs inspect`, and garbage bytes and truncated ClientHellos at a running inbound
//! (and garbage answers to a running outbound).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use ward_e2e::*;

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

/// Exit 0 or 1, in time, never a signal or a panic message.
fn assert_clean_exit(out: &Output, what: &str) -> i32 {
    let code = out.code();
    assert!(
        code == 0 || code == 1,
        "{what}: exit {code}\nstdout:\n{}\nstderr:\n{}",
        out.stdout(),
        out.stderr()
    );
    assert!(!out.stderr().contains("panicked"), "{what}: {}", out.stderr());
    code
}

#[test]
fn check_survives_garbage_configs() {
    let pki = Pki::new("example.org");
    let svid = pki.issue("web", BACKEND);
    let dir = tempfile::tempdir().unwrap();
    let identity = identity_yaml(&svid, &[]);

    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    for seed in 0..8u64 {
        inputs.push((
            format!("random-{seed}"),
            random_bytes(seed + 100, 64 + seed as usize * 300),
        ));
    }
    // Printable garbage made of YAML's own punctuation.
    for seed in 0..6u64 {
        let alphabet = b" \n\n\t-:?[]{},&*!|>'\"%@`#abcxyz0123456789.";
        let bytes = random_bytes(seed + 200, 400)
            .into_iter()
            .map(|b| alphabet[b as usize % alphabet.len()])
            .collect();
        inputs.push((format!("punct-{seed}"), bytes));
    }
    // A valid config with one byte flipped at a time, in a few places.
    let good = format!(
        "{identity}{}",
        inbound_yaml("web", 17101, local(8080), &[("frontend", FRONTEND)])
    );
    for (i, at) in [3usize, 10, 40, 90, good.len() / 2, good.len() - 5]
        .into_iter()
        .enumerate()
    {
        let mut bytes = good.clone().into_bytes();
        let at = at.min(bytes.len() - 1);
        bytes[at] ^= 0x5a;
        inputs.push((format!("flipped-{i}"), bytes));
    }
    let crafted: &[(&str, &str)] = &[
        ("empty", ""),
        ("nul", "\0\0\0"),
        ("deep-seq", &"[".repeat(50_000)),
        (
            "deep-map",
            &format!("identity: {}1{}", "{a: ".repeat(5_000), "}".repeat(5_000)),
        ),
        ("tabs", "identity:\n\tfiles: x\n"),
        ("only-comment", "# nothing\n"),
        ("scalar", "42\n"),
        ("list", "- 1\n- 2\n"),
        ("dup-key", "identity: {}\nidentity: {}\n"),
        ("alias-loop", "a: &a [*a]\n"),
        ("undefined-alias", "identity: *nope\n"),
        (
            "bomb",
            "inbound: &a [[x,x,x,x,x,x,x,x,x],[x,x,x,x,x,x,x,x,x]]\noutbound: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\npolicies: &c {a: [*b,*b,*b,*b,*b,*b,*b,*b,*b], b: [*b,*b,*b,*b,*b,*b,*b,*b,*b]}\n",
        ),
        (
            "huge-int",
            "handshake_timeout: 999999999999999999999999999999999999999\n",
        ),
        ("huge-duration", "handshake_timeout: 99999999999999999999999h\n"),
        ("negative-duration", "handshake_timeout: -1s\n"),
        (
            "bad-listen",
            "inbound:\n  - {name: a, listen: 999.1.1.1:99999, forward: x, policy: p}\n",
        ),
        ("bad-utf8-key", "identit\u{fffd}y: 1\n"),
        (
            "dev-huge-ttl",
            "identity:\n  dev: {id: \"spiffe://example.org/a\", ttl: 500000000000h}\ninbound:\n  - {name: a, listen: 127.0.0.1:17102, forward: 127.0.0.1:1, protocol: tcp, policy: p}\npolicies:\n  p: {}\n",
        ),
        ("dev-bad-id", "identity:\n  dev: {id: \"spiffe://\", ttl: 1s}\n"),
        (
            "policy-garbage",
            "policies:\n  p: {default: maybe, rules: [{name: 1, action: [], from: {x: 1}}]}\n",
        ),
        (
            "pattern-garbage",
            "policies:\n  p:\n    rules:\n      - {name: r, action: allow, from: [\"spiffe://**\", \"spiffe://a.org/**/x\", \"spiffe://A..org/%zz\"]}\n",
        ),
    ];
    for (name, text) in crafted {
        inputs.push(((*name).to_owned(), text.as_bytes().to_vec()));
    }
    // Invalid UTF-8 inside an otherwise good config.
    let mut bad_utf8 = good.clone().into_bytes();
    bad_utf8.extend_from_slice(b"\n# \xff\xfe\xc3\x28\n");
    inputs.push(("invalid-utf8".into(), bad_utf8));

    for (name, bytes) in &inputs {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, bytes).unwrap();
        let out = ward(&["check", "-c", &s(&path)], WAIT);
        let code = assert_clean_exit(&out, name);
        if code == 1 {
            assert!(
                out.stderr().trim_start().starts_with("error:"),
                "{name}: a refusal says what is wrong: {}",
                out.stderr()
            );
        }
    }
}

#[test]
fn certs_inspect_survives_garbage_certificates() {
    let pki = Pki::new("example.org");
    let svid = pki.issue("web", BACKEND);
    let dir = tempfile::tempdir().unwrap();
    let b64 = |der: &[u8]| base64::engine::general_purpose::STANDARD.encode(der);
    let pem = |der: &[u8]| {
        let body = b64(der)
            .as_bytes()
            .chunks(64)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("\n");
        format!("-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n")
    };
    let real_pem = std::fs::read_to_string(&svid.cert).unwrap();
    let der = &svid.der;

    let mut inputs: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), Vec::new()),
        ("der".into(), der.clone()),
        ("der-truncated".into(), der[..der.len() / 2].to_vec()),
        ("random".into(), random_bytes(7, 900)),
        (
            "pem-truncated-text".into(),
            real_pem.as_bytes()[..real_pem.len() / 2].to_vec(),
        ),
        (
            "pem-of-truncated-der".into(),
            pem(&der[..der.len() - 10]).into_bytes(),
        ),
        (
            "pem-of-der-plus-trailing".into(),
            pem(&[der.as_slice(), b"\0\0\0\0"].concat()).into_bytes(),
        ),
        ("pem-of-random".into(), pem(&random_bytes(8, 600)).into_bytes()),
        ("pem-of-empty".into(), pem(&[]).into_bytes()),
        (
            "pem-bad-base64".into(),
            b"-----BEGIN CERTIFICATE-----\n!!!!not base64$$$$\n-----END CERTIFICATE-----\n".to_vec(),
        ),
        (
            "pem-no-end".into(),
            b"-----BEGIN CERTIFICATE-----\nMIIB\n".to_vec(),
        ),
        ("pem-key-only".into(), std::fs::read(&svid.key).unwrap()),
        ("ca-cert".into(), std::fs::read(pki.bundle_path()).unwrap()),
    ];
    // Single-byte corruptions of the DER, re-encoded as PEM.
    for (i, at) in [
        0usize,
        1,
        4,
        20,
        der.len() / 3,
        der.len() / 2,
        der.len() - 70,
        der.len() - 1,
    ]
    .into_iter()
    .enumerate()
    {
        let mut d = der.clone();
        d[at] ^= 0xff;
        inputs.push((format!("pem-flipped-{i}"), pem(&d).into_bytes()));
    }
    // Every prefix length class of the DER.
    for cut in [1usize, 2, 3, 10, 100, der.len() - 1] {
        inputs.push((format!("pem-prefix-{cut}"), pem(&der[..cut]).into_bytes()));
    }

    for (name, bytes) in &inputs {
        let path = dir.path().join(format!("{name}.pem"));
        std::fs::write(&path, bytes).unwrap();
        let out = ward(&["certs", "inspect", &s(&path)], WAIT);
        let code = assert_clean_exit(&out, name);
        // Without a bundle no signature is checked: a flip inside the signed part may leave a
        // well-formed SVID. Everything else is refused.
        if !name.starts_with("pem-flipped") {
            assert_eq!(
                code,
                1,
                "{name}: inspect of a broken certificate must fail: {}",
                out.stdout()
            );
        }
        // Against the right bundle, every broken certificate fails.
        let bundle = pki.bundle_path();
        let out = ward(&["certs", "inspect", &s(&path), "--bundle", &s(&bundle)], WAIT);
        let code = assert_clean_exit(&out, &format!("{name} with a bundle"));
        assert_eq!(code, 1, "{name} with a bundle must fail: {}", out.stdout());
        // Garbage as the bundle for a good certificate.
        let out = ward(&["certs", "inspect", &s(&svid.cert), "--bundle", &s(&path)], WAIT);
        let code = assert_clean_exit(&out, &format!("{name} as bundle"));
        // The CA certificate is the one input that is a good bundle.
        let want = if name == "ca-cert" { 0 } else { 1 };
        assert_eq!(code, want, "{name} as a bundle: {}", out.stdout());
    }
    // A missing file and a directory.
    for path in [dir.path().join("nope.pem"), dir.path().to_path_buf()] {
        let out = ward(&["certs", "inspect", &s(&path)], WAIT);
        assert_eq!(assert_clean_exit(&out, "missing"), 1);
    }
}

/// A real ClientHello, from openssl s_client connecting to a plain listener.
fn capture_client_hello() -> Vec<u8> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut client = Command::new(require_tool("openssl"))
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    let mut hello = Vec::new();
    let mut buf = [0u8; 4096];
    // A record header, then the record.
    while hello.len() < 5 || hello.len() < 5 + usize::from(u16::from_be_bytes([hello[3], hello[4]])) {
        let n = conn.read(&mut buf).expect("ClientHello from openssl");
        assert!(n > 0, "openssl closed before its ClientHello");
        hello.extend_from_slice(&buf[..n]);
    }
    let _ = client.kill();
    let _ = client.wait();
    assert_eq!(hello[0], 0x16, "not a handshake record");
    hello
}

/// Sends `bytes`, half-closes, and waits for ward to close (bounded).
fn poke(port: u16, bytes: &[u8]) {
    let mut c = TcpStream::connect(local(port)).unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    let _ = c.write_all(bytes);
    let _ = c.shutdown(Shutdown::Write);
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "ward did not close a garbage connection within {:?}",
                    started.elapsed()
                )
            }
            Err(_) => return,
        }
    }
}

#[test]
fn inbound_survives_garbage_and_truncated_client_hellos() {
    let pki = Pki::new("example.org");
    let backend = pki.issue("backend", BACKEND);
    let frontend = pki.issue("frontend", FRONTEND);
    let app = App::echo();
    let (mut inbound, in_port) = start_inbound(&backend, app.addr, &[("frontend-allowed", FRONTEND)], &[]);

    // A peer that opens a connection and says nothing: cut at the handshake timeout (2s).
    let mut silent = TcpStream::connect(local(in_port)).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    let silent_since = Instant::now();

    let hello = capture_client_hello();
    let mut probes: Vec<Vec<u8>> = Vec::new();
    for seed in 0..10u64 {
        probes.push(random_bytes(seed + 300, 1 + (seed as usize * 997) % 5000));
    }
    for cut in [1usize, 2, 3, 5, 6, 9, 40, hello.len() / 2, hello.len() - 1] {
        probes.push(hello[..cut].to_vec());
    }
    for seed in 0..20u64 {
        let mut h = hello.clone();
        let r = random_bytes(seed + 400, 8);
        for k in 0..1 + (r[0] % 3) as usize {
            let at = 5 + usize::from(u16::from_le_bytes([r[1 + 2 * k], r[2 + 2 * k]])) % (h.len() - 5);
            h[at] ^= r[7] | 1;
        }
        probes.push(h);
    }
    probes.push([hello.as_slice(), &random_bytes(500, 3000)].concat()); // then garbage records
    probes.push(vec![0x16, 0x03, 0x01, 0xff, 0xff]); // a record longer than TLS allows
    probes.push(vec![0x16, 0x03, 0x01, 0x00, 0x00]); // an empty handshake record
    probes.push(vec![0x80, 0x2e, 0x01, 0x00, 0x02]); // SSLv2-style hello
    probes.push(vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]); // an alert first
    probes.push(vec![
        0x17, 0x03, 0x03, 0x00, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);

    // A few at once, the rest one by one.
    std::thread::scope(|scope| {
        for p in probes.iter().take(8) {
            scope.spawn(|| poke(in_port, p));
        }
    });
    for p in probes.iter().skip(8) {
        poke(in_port, p);
    }

    // Every probe was refused with a handshake record; nothing was forwarded.
    let deadline = Instant::now() + WAIT;
    loop {
        let handshakes = inbound
            .records()
            .iter()
            .filter(|r| r["kind"] == "handshake")
            .count();
        if handshakes >= probes.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{handshakes} handshake records for {} garbage connections",
            probes.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        inbound
            .records()
            .iter()
            .all(|r| r["decision"] == "deny" && r["kind"] == "handshake"),
        "{:?}",
        inbound.records()
    );
    assert_eq!(app.connections(), 0);

    // The silent peer is cut at the handshake timeout, with a record that says so.
    let mut buf = [0u8; 64];
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "a silent peer got bytes");
    let waited = silent_since.elapsed();
    assert!(waited < Duration::from_secs(5), "silent peer held for {waited:?}");
    inbound.wait_record("handshake timeout", |r| {
        r["kind"] == "handshake" && r["reason"].as_str().unwrap_or_default().starts_with("timeout")
    });

    // Still alive, still serving.
    inbound.assert_alive();
    let (_outbound, out_port) = start_outbound(&frontend, in_port, BACKEND, &[]);
    assert_eq!(exchange(out_port, b"still serving"), b"still serving");
    inbound.assert_alive();
    inbound.assert_no_panic();
}

/// The outbound meets a "server" that answers its ClientHello with garbage.
#[test]
fn outbound_survives_garbage_servers() {
    let pki = Pki::new("example.org");
    let frontend = pki.issue("frontend", FRONTEND);
    let answers: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
        random_bytes(600, 2000),
        vec![0x16, 0x03, 0x03, 0x00, 0x30, 0x02, 0x00, 0x00, 0x2c, 0x03, 0x03],
        vec![0x16, 0x03, 0x03, 0xff, 0xff],
        vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28],
    ];
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_port = server.local_addr().unwrap().port();
    let replies = answers.clone();
    std::thread::spawn(move || {
        for (i, conn) in server.incoming().enumerate() {
            let Ok(mut conn) = conn else { continue };
            let reply = replies[i % replies.len()].clone();
            std::thread::spawn(move || {
                conn.set_read_timeout(Some(WAIT)).unwrap();
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf); // the ClientHello
                let _ = conn.write_all(&reply);
                let _ = conn.shutdown(Shutdown::Write);
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    let (mut outbound, out_port) = start_outbound(&frontend, server_port, BACKEND, &[]);
    for i in 0..answers.len() {
        let reply = exchange(out_port, b"secret");
        assert!(reply.is_empty(), "answer {i}: the app got {reply:?}");
        outbound.wait_record_after(i, &format!("handshake failure {i}"), |r| r["kind"] == "handshake");
    }
    assert!(
        outbound.records().iter().all(|r| r["decision"] == "deny"),
        "{:?}",
        outbound.records()
    );
    outbound.assert_alive();
    outbound.assert_no_panic();
}

/// `ward run` with broken identity material refuses to start, with a message, and no panic.
#[test]
fn run_refuses_broken_identity_material() {
    let pki = Pki::new("example.org");
    let other = Pki::new("example.org");
    let good = pki.issue("good", BACKEND);
    let expired = pki.sign(
        "expired",
        BACKEND,
        time::Duration::hours(-2),
        time::Duration::hours(-1),
    );
    let foreign = other.issue("foreign", BACKEND);
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, random_bytes(9, 500)).unwrap();

    let cases: Vec<(&str, SvidFiles)> = vec![
        ("expired own SVID", expired),
        // Our SVID does not chain to our own bundle.
        (
            "SVID from another CA",
            SvidFiles {
                bundle: good.bundle.clone(),
                ..foreign.clone()
            },
        ),
        // The key of another SVID.
        (
            "mismatched key",
            SvidFiles {
                key: foreign.key.clone(),
                ..good.clone()
            },
        ),
        (
            "garbage cert",
            SvidFiles {
                cert: garbage.clone(),
                ..good.clone()
            },
        ),
        (
            "garbage key",
            SvidFiles {
                key: garbage.clone(),
                ..good.clone()
            },
        ),
        (
            "garbage bundle",
            SvidFiles {
                bundle: garbage.clone(),
                ..good.clone()
            },
        ),
    ];
    // Either way is fine: exit 1 at once, or stay up waiting for a valid identity (a sidecar
    // whose files are still being written) without ever opening a listener. Never a panic,
    // always a message.
    std::thread::scope(|scope| {
        for (i, (what, svid)) in cases.iter().enumerate() {
            let dir = dir.path();
            scope.spawn(move || {
                let port = free_port();
                let config = dir.join(format!("ward-{i}.yaml"));
                std::fs::write(
                    &config,
                    format!(
                        "{}{}",
                        identity_yaml(svid, &[]),
                        inbound_yaml("backend", port, local(1), &[("f", FRONTEND)])
                    ),
                )
                .unwrap();
                let stderr_path = dir.join(format!("stderr-{i}.log"));
                let mut child = Command::new(ward_bin())
                    .args(["run", "-c", &s(&config)])
                    .env_remove("RUST_LOG")
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::fs::File::create(&stderr_path).unwrap())
                    .spawn()
                    .unwrap();
                let deadline = Instant::now() + WAIT;
                let outcome = loop {
                    let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                    assert!(
                        !is_listening(port),
                        "{what}: ward listens with broken identity:\n{err}"
                    );
                    if let Some(status) = child.try_wait().unwrap() {
                        assert_eq!(status.code(), Some(1), "{what}: {status}\n{err}");
                        break err;
                    }
                    if err.contains("ERROR") || err.contains("error:") {
                        // Give it a moment: it must still not open its listener.
                        std::thread::sleep(Duration::from_millis(300));
                        assert!(!is_listening(port), "{what}: ward listens with broken identity");
                        break std::fs::read_to_string(&stderr_path).unwrap_or_default();
                    }
                    if Instant::now() >= deadline {
                        let _ = child.kill();
                        panic!("{what}: within {WAIT:?} ward neither exited nor said what is wrong:\n{err}");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                };
                let _ = child.kill();
                let _ = child.wait();
                assert!(!outcome.contains("panicked"), "{what}: {outcome}");
                // `ward check` refuses it.
                let out = ward(&["check", "-c", &s(&config)], WAIT);
                assert_eq!(
                    out.code(),
                    1,
                    "{what}: ward check must refuse it: {}",
                    out.stdout()
                );
                assert!(!out.stderr().contains("panicked"), "{what}: {}", out.stderr());
            });
        }
    });
}
