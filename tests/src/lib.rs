//! Shared helpers for ward's end-to-end tests: the real `ward` binary, certificates from the
//! dev CA, small TCP apps, audit-log readers and external tools (curl, openssl) with timeouts.
//!
//! Everything here panics with a clear message on failure: it only runs inside tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use ward_certs::devca::svid_params;
use ward_certs::{DevCa, IssuedSvid, SpiffeId, TrustDomain};

/// The bound every wait in these tests is held to.
pub const WAIT: Duration = Duration::from_secs(5);

/// The SPIFFE IDs of the test mesh.
pub const BACKEND: &str = "spiffe://example.org/ns/default/sa/backend";
pub const FRONTEND: &str = "spiffe://example.org/ns/default/sa/frontend";
pub const INTRUDER: &str = "spiffe://example.org/ns/default/sa/intruder";
pub const PAYMENTS: &str = "spiffe://example.org/ns/default/sa/payments";
pub const PARTNER_CLIENT: &str = "spiffe://partner.org/ns/billing/sa/client";

/// The `ward` binary next to the test executable (target/debug/ward).
pub fn ward_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/<test>-<hash> → target/debug/ward
    let deps = exe.parent().expect("test executable has a directory");
    let bin = deps.parent().expect("deps has a parent").join("ward");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p ward` first (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// An external tool the tests need; a missing tool fails the test (never a skip).
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "the end-to-end tests need `{name}` on PATH and it is missing: install it (e.g. apt-get install {name})"
    );
}

/// A free loopback port: bind :0, take the port, drop the listener. Ports already handed out
/// in this process are never handed out again.
pub fn free_port() -> u16 {
    // Ports below the kernel's ephemeral range (32768+ by default), handed out once per
    // process: a port given to one ward can then never be taken meanwhile by a listener or
    // client socket the kernel numbers itself (apps bound to port 0, outgoing connections).
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 12) as u16 * 1000;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < 1000, "free_port: this test binary used up its 1000 ports");
        let port = base + n;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Deterministic pseudo-random bytes (xorshift64*), different per seed.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// FNV-1a, to name a large payload in assertion messages.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// An SVID written to disk: `svid.pem`, `svid_key.pem`, `bundle.pem`.
#[derive(Debug, Clone)]
pub struct SvidFiles {
    pub id: String,
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
    /// The leaf's serial as ward prints it (lowercase hex).
    pub serial: String,
    /// The leaf certificate, DER.
    pub der: Vec<u8>,
}

/// A dev CA for one trust domain, with a directory to write SVIDs into.
pub struct Pki {
    pub ca: DevCa,
    pub dir: TempDir,
}

impl Pki {
    pub fn new(trust_domain: &str) -> Pki {
        let td = TrustDomain::new(trust_domain).expect("trust domain");
        let ca = DevCa::generate(&td).expect("dev CA");
        let dir = tempfile::Builder::new()
            .prefix("ward-e2e-pki-")
            .tempdir()
            .expect("tempdir");
        ca.save(&dir.path().join("ca")).expect("save CA");
        Pki { ca, dir }
    }

    /// The CA directory (`ca.pem`, `ca_key.pem`).
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    /// This CA's certificate as a bundle file.
    pub fn bundle_path(&self) -> PathBuf {
        self.ca_dir().join("ca.pem")
    }

    /// A valid SVID for `id`, valid for an hour.
    pub fn issue(&self, name: &str, id: &str) -> SvidFiles {
        let id = SpiffeId::parse(id).expect("SPIFFE ID");
        let svid = self.ca.issue(&id, Duration::from_secs(3600)).expect("issue");
        self.write(name, &svid)
    }

    /// An SVID for `id` (any trust domain: the CA signs what it is given) valid between
    /// `not_before` and `not_after`, relative to now.
    pub fn sign(
        &self,
        name: &str,
        id: &str,
        not_before: time::Duration,
        not_after: time::Duration,
    ) -> SvidFiles {
        let id = SpiffeId::parse(id).expect("SPIFFE ID");
        let mut params = svid_params(&id).expect("svid params");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + not_before;
        params.not_after = now + not_after;
        let svid = self.ca.sign(&params).expect("sign");
        self.write(name, &svid)
    }

    fn write(&self, name: &str, svid: &IssuedSvid) -> SvidFiles {
        let dir = self.dir.path().join(name);
        self.ca.write_svid(svid, &dir).expect("write SVID");
        let serial = ward_certs::svid::check_leaf(&svid.chain[0])
            .map(|i| i.serial)
            .unwrap_or_default();
        SvidFiles {
            id: svid.id.to_string(),
            cert: dir.join("svid.pem"),
            key: dir.join("svid_key.pem"),
            bundle: dir.join("bundle.pem"),
            dir,
            serial,
            der: svid.chain[0].to_vec(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Config

/// The `identity:` section for an SVID, with federated bundles.
pub fn identity_yaml(svid: &SvidFiles, federation: &[(&str, &Path)]) -> String {
    let mut y = format!(
        "identity:\n  files:\n    cert: {}\n    key: {}\n    bundle: {}\n",
        svid.cert.display(),
        svid.key.display(),
        svid.bundle.display()
    );
    if !federation.is_empty() {
        y.push_str("  federation:\n");
        for (td, path) in federation {
            writeln!(y, "    {td}: {}", path.display()).unwrap();
        }
    }
    y
}

/// One tcp inbound listener with a `default: deny` policy that allows `allow` (one rule each,
/// named `allow-<n>` unless a name is given with `name=ID`).
pub fn inbound_yaml(name: &str, listen: u16, forward: SocketAddr, allow: &[(&str, &str)]) -> String {
    let mut y = format!(
        "inbound:\n  - name: {name}\n    listen: 127.0.0.1:{listen}\n    forward: {forward}\n    protocol: tcp\n    mtls: strict\n    policy: {name}\npolicies:\n  {name}:\n    default: deny\n    rules:\n"
    );
    for (rule, id) in allow {
        write!(
            y,
            "      - name: {rule}\n        action: allow\n        from: [\"{id}\"]\n"
        )
        .unwrap();
    }
    y
}

/// One tcp outbound listener.
pub fn outbound_yaml(name: &str, listen: u16, forward: SocketAddr, server_id: &str) -> String {
    format!(
        "outbound:\n  - name: {name}\n    listen: 127.0.0.1:{listen}\n    forward: {forward}\n    protocol: tcp\n    server_id: \"{server_id}\"\n"
    )
}

// ---------------------------------------------------------------------------------------------
// The ward process

/// A running `ward run`, killed when dropped. Its stdout/stderr and audit log are files in its
/// own temporary directory.
pub struct Ward {
    child: Child,
    pub dir: TempDir,
    pub config: PathBuf,
    pub audit: PathBuf,
    stderr: PathBuf,
    stdout: PathBuf,
}

impl Ward {
    /// Writes `body` (identity, listeners, policies) plus a JSON audit log section to a config,
    /// starts `ward run -c` on it and waits until every port in `ports` is listening.
    pub fn start(body: &str, ports: &[u16]) -> Ward {
        Ward::start_with(body, ports, &[])
    }

    /// [`Ward::start`] with more `ward run` arguments (`--workers 1`).
    pub fn start_with(body: &str, ports: &[u16], args: &[&str]) -> Ward {
        Ward::start_wrapped(body, ports, args, &[])
    }

    /// [`Ward::start_with`], run through `wrapper` (a command and its arguments that take the
    /// ward command line after them, like `prlimit --nofile=400:400`).
    pub fn start_wrapped(body: &str, ports: &[u16], args: &[&str], wrapper: &[&str]) -> Ward {
        let dir = tempfile::Builder::new()
            .prefix("ward-e2e-run-")
            .tempdir()
            .expect("tempdir");
        let audit = dir.path().join("audit.log");
        let config = dir.path().join("ward.yaml");
        std::fs::write(&config, ward_yaml(body, &audit)).expect("write config");
        let stderr = dir.path().join("stderr.log");
        let stdout = dir.path().join("stdout.log");
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(require_tool(program));
                c.args(rest).arg(ward_bin());
                c
            }
            None => Command::new(ward_bin()),
        };
        let child = cmd
            .arg("run")
            .arg("-c")
            .arg(&config)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn ward");
        let mut ward = Ward {
            child,
            dir,
            config,
            audit,
            stderr,
            stdout,
        };
        ward.wait_listening(ports);
        ward
    }

    fn wait_listening(&mut self, ports: &[u16]) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "ward exited before it was ready ({status}); stderr:\n{}",
                    self.stderr()
                );
            }
            if ports.iter().all(|p| is_listening(*p)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ward did not listen on {ports:?} within {WAIT:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything ward wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Everything ward wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Panics unless the process is still running.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("ward exited ({status}); stderr:\n{}", self.stderr());
        }
    }

    /// Panics if ward's stderr mentions a panic.
    pub fn assert_no_panic(&self) {
        let err = self.stderr();
        assert!(!err.contains("panicked"), "ward panicked; stderr:\n{err}");
    }

    /// Every audit record written so far, in order. A line that is not JSON fails the test.
    pub fn records(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.audit).unwrap_or_default();
        let mut out = Vec::new();
        for line in text.split_inclusive('\n') {
            // A line still being written has no newline yet; read it next time.
            let Some(line) = line.strip_suffix('\n') else {
                break;
            };
            let record: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("audit line is not JSON ({e}): {line:?}"));
            out.push(record);
        }
        out
    }

    /// Waits (at most [`WAIT`]) for an audit record that `pred` accepts, among the records after
    /// the first `skip`.
    pub fn wait_record_after(&self, skip: usize, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(r) = self.records().into_iter().skip(skip).find(|r| pred(r)) {
                return r;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no audit record {what} within {WAIT:?}; records:\n{}\nstderr:\n{}",
                    self.records()
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n"),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for any record that `pred` accepts.
    pub fn wait_record(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_record_after(0, what, pred)
    }

    /// Waits for a `kind: handshake`, `decision: deny` record whose reason starts with `reason`,
    /// after the first `skip` records.
    pub fn wait_handshake_deny(&self, skip: usize, reason: &str) -> Value {
        let r = self.wait_record_after(skip, &format!("of kind handshake ({reason})"), |r| {
            r["kind"] == "handshake"
        });
        assert_eq!(r["decision"], "deny", "{r}");
        let got = r["reason"].as_str().unwrap_or_default();
        assert!(
            got.starts_with(reason),
            "handshake record reason should start with {reason:?}, got {got:?}: {r}"
        );
        r
    }
}

impl Drop for Ward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- ward {} stderr ---\n{}\n--- audit ---\n{}",
                self.config.display(),
                self.stderr(),
                std::fs::read_to_string(&self.audit).unwrap_or_default()
            );
        }
    }
}

/// Whether something listens on 127.0.0.1:`port`, read from /proc/net/tcp so that polling
/// opens no connection (a probe would show up in audit logs and at the apps).
pub fn is_listening(port: u16) -> bool {
    match std::fs::read_to_string("/proc/net/tcp") {
        Ok(table) => {
            let want = format!("0100007F:{port:04X}");
            table.lines().skip(1).any(|line| {
                let mut cols = line.split_whitespace();
                let local = cols.nth(1);
                let state = cols.nth(1);
                local == Some(want.as_str()) && state == Some("0A")
            })
        }
        Err(_) => TcpStream::connect_timeout(&local(port), Duration::from_millis(200)).is_ok(),
    }
}

// ---------------------------------------------------------------------------------------------
// Apps behind an inbound

/// A plaintext TCP app on 127.0.0.1 that runs `handler` for each connection on its own thread
/// and counts connections and bytes received.
pub struct App {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub bytes: Arc<AtomicUsize>,
}

impl App {
    pub fn spawn<F>(handler: F) -> App
    where
        F: Fn(TcpStream, &AtomicUsize) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind app");
        let addr = listener.local_addr().expect("app addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let (c, b) = (connections.clone(), bytes.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
                let (h, b) = (handler.clone(), b.clone());
                std::thread::spawn(move || h(stream, &b));
            }
        });
        App {
            addr,
            connections,
            bytes,
        }
    }

    /// Echoes every byte back; at EOF shuts down writing.
    pub fn echo() -> App {
        App::spawn(|mut s, bytes| {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        bytes.fetch_add(n, Ordering::SeqCst);
                        if s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = s.shutdown(Shutdown::Write);
        })
    }

    /// A minimal HTTP/1.1 responder: reads the request head, answers `200 ok`, closes.
    pub fn http_ok() -> App {
        App::spawn(|mut s, bytes| {
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        bytes.fetch_add(n, Ordering::SeqCst);
                        head.extend_from_slice(&buf[..n]);
                    }
                }
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            let _ = s.shutdown(Shutdown::Write);
            // Drain until the client closes, so the close is orderly.
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        })
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::SeqCst)
    }
}

/// For hand-written apps: reads from `s` into `buf` until a request head is complete, takes
/// the head (without its blank line) out of `buf`, and returns it; `None` at EOF or an error.
/// Bytes after the head stay in `buf`.
pub fn read_request_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Connects to `port`, sends `data`, half-closes, and reads until EOF. A reset counts as the
/// end of the reply. Every step is bounded by [`WAIT`].
pub fn exchange(port: u16, data: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect_timeout(&local(port), WAIT).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    // The peer may close before taking everything we send: write errors are not failures.
    let _ = s.write_all(data);
    let _ = s.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "no EOF within {WAIT:?} from 127.0.0.1:{port} (got {} bytes)",
                    out.len()
                )
            }
            Err(_) => break,
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// External processes

/// What a bounded run of an external process produced.
#[derive(Debug)]
pub struct Output {
    /// `None` when the process was killed at the deadline.
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// The exit code; panics if the process was killed or died of a signal.
    pub fn code(&self) -> i32 {
        match self.status {
            None => panic!(
                "the process did not finish in time\nstdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            ),
            Some(s) => s.code().unwrap_or_else(|| {
                panic!(
                    "the process died of a signal ({s})\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                )
            }),
        }
    }
}

/// Runs `cmd` with `stdin` fed to it, killing it after `timeout`.
pub fn run(cmd: &mut Command, stdin: &[u8], timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = feeder.join();
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// `ward <args>`, bounded by `timeout`.
pub fn ward(args: &[&str], timeout: Duration) -> Output {
    run(
        Command::new(ward_bin()).args(args).env_remove("RUST_LOG"),
        b"",
        timeout,
    )
}

/// `openssl s_client` to 127.0.0.1:`port` with the given client certificate (or none), stdin at
/// EOF at once: the handshake runs, then the client closes.
pub fn s_client_once(port: u16, client: Option<&SvidFiles>, ca: &Path) -> Output {
    let openssl = require_tool("openssl");
    let mut cmd = Command::new(openssl);
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-CAfile"])
        .arg(ca);
    if let Some(c) = client {
        cmd.arg("-cert").arg(&c.cert).arg("-key").arg(&c.key);
    }
    run(&mut cmd, b"", WAIT)
}

/// `openssl s_client -quiet` with a client certificate: writes `msg` and collects what comes
/// back until it contains `msg` (an echo), the connection ends, or [`WAIT`] passes; then the
/// client is killed. Returns stdout and stderr.
pub fn s_client_echo(port: u16, client: &SvidFiles, ca: &Path, msg: &[u8]) -> (Vec<u8>, String) {
    let openssl = require_tool("openssl");
    let mut child = Command::new(openssl)
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-quiet",
            "-CAfile",
        ])
        .arg(ca)
        .arg("-cert")
        .arg(&client.cert)
        .arg("-key")
        .arg(&client.key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openssl");
    let mut stdin = child.stdin.take().expect("stdin");
    let _ = stdin.write_all(msg);
    let _ = stdin.flush();
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while !got.windows(msg.len()).any(|w| w == msg) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => got.extend_from_slice(&chunk),
            Err(_) => break, // ended or timed out
        }
    }
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    (got, stderr)
}

/// `curl -sS -k https://127.0.0.1:port/` with the given client certificate (or none).
pub fn curl(port: u16, client: Option<&SvidFiles>, ca: &Path) -> Output {
    let curl = require_tool("curl");
    let mut cmd = Command::new(curl);
    cmd.args(["-sS", "-k", "--max-time", "5", "--cacert"]).arg(ca);
    if let Some(c) = client {
        cmd.arg("--cert").arg(&c.cert).arg("--key").arg(&c.key);
    }
    cmd.arg(format!("https://127.0.0.1:{port}/"));
    run(&mut cmd, b"", Duration::from_secs(8))
}

// ---------------------------------------------------------------------------------------------
// Sidecars

/// Starts an inbound ward (listener `backend`) with `svid`, forwarding to `app`, whose policy
/// allows the `(rule, id)` pairs. Returns it and its port.
pub fn start_inbound(
    svid: &SvidFiles,
    app: SocketAddr,
    allow: &[(&str, &str)],
    federation: &[(&str, &Path)],
) -> (Ward, u16) {
    let port = free_port();
    let body = format!(
        "{}{}",
        identity_yaml(svid, federation),
        inbound_yaml("backend", port, app, allow)
    );
    (Ward::start(&body, &[port]), port)
}

/// Starts an outbound ward (listener `upstream`) with `svid`, to the inbound on `upstream`,
/// requiring `server_id`. Returns it and its port.
pub fn start_outbound(
    svid: &SvidFiles,
    upstream: u16,
    server_id: &str,
    federation: &[(&str, &Path)],
) -> (Ward, u16) {
    let port = free_port();
    let body = format!(
        "{}{}",
        identity_yaml(svid, federation),
        outbound_yaml("upstream", port, local(upstream), server_id)
    );
    (Ward::start(&body, &[port]), port)
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// Hex SHA-256 (lowercase), e.g. of a certificate's DER as XFCC's `Hash=` carries it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest.as_ref().iter().fold(String::new(), |mut s, b| {
        write!(s, "{b:02x}").unwrap();
        s
    })
}

impl Ward {
    /// Waits (at most [`WAIT`]) until at least `n` audit records satisfy `pred`, and returns
    /// all that do.
    pub fn wait_records(&self, n: usize, what: &str, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let found: Vec<Value> = self.records().into_iter().filter(|r| pred(r)).collect();
            if found.len() >= n {
                return found;
            }
            if Instant::now() >= deadline {
                panic!(
                    "only {} of {n} audit records {what} within {WAIT:?}; records:\n{}\nstderr:\n{}",
                    found.len(),
                    self.records()
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n"),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One request as [`HttpApp`] saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    /// The request target as it arrived: path and query.
    pub target: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Every header line, names lowercase, in order.
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
}

impl SeenRequest {
    /// Every value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The request as JSON: `{method, target, version, headers: {name: [values]}, body_len}`.
    pub fn to_json(&self) -> Value {
        let mut headers = serde_json::Map::new();
        for (n, v) in &self.headers {
            headers
                .entry(n.clone())
                .or_insert_with(|| Value::Array(Vec::new()))
                .as_array_mut()
                .unwrap()
                .push(Value::String(v.clone()));
        }
        serde_json::json!({
            "method": self.method,
            "target": self.target,
            "version": self.version,
            "headers": headers,
            "body_len": self.body_len,
        })
    }
}

/// A plaintext HTTP app on 127.0.0.1 (hyper: HTTP/1.1 keep-alive and h2c prior knowledge on
/// the same port) that records every request and answers `200` with the request as JSON
/// ([`SeenRequest::to_json`]). Query options: `delay_ms=N` answers after N ms; `hop=1` (over
/// HTTP/1.1) adds hop-by-hop response headers (`Connection: x-app-hop`, `x-app-hop`,
/// `Keep-Alive`) that a proxy must not pass on. Stops when dropped.
pub struct HttpApp {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl HttpApp {
    pub fn spawn() -> HttpApp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind HTTP app");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("app addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let log = seen.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("app runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                loop {
                    tokio::select! {
                        accepted = listener.accept() => {
                            let Ok((tcp, _)) = accepted else { continue };
                            let log = log.clone();
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(move |req| {
                                    http_app_answer(req, log.clone())
                                });
                                let _ = hyper_util::server::conn::auto::Builder::new(
                                    hyper_util::rt::TokioExecutor::new(),
                                )
                                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                                .await;
                            });
                        }
                        _ = &mut stopped => return,
                    }
                }
            });
        });
        HttpApp {
            addr,
            seen,
            stop: Some(stop),
        }
    }

    /// Every request seen so far, in arrival order.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for HttpApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn http_app_answer(
    req: http::Request<hyper::body::Incoming>,
    log: Arc<Mutex<Vec<SeenRequest>>>,
) -> Result<http::Response<http_body_util::Full<bytes::Bytes>>, std::convert::Infallible> {
    use http_body_util::BodyExt as _;
    let (parts, body) = req.into_parts();
    let body_len = body.collect().await.map(|c| c.to_bytes().len()).unwrap_or(0);
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let seen = SeenRequest {
        method: parts.method.to_string(),
        version: format!("{:?}", parts.version),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body_len,
        target,
    };
    log.lock().unwrap().push(seen.clone());
    let query = parts.uri.query().unwrap_or_default();
    let option = |key: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
    };
    if let Some(ms) = option("delay_ms").and_then(|v| v.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut resp = http::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("x-app", "echo");
    if option("hop").as_deref() == Some("1") && parts.version == http::Version::HTTP_11 {
        resp = resp
            .header("connection", "x-app-hop")
            .header("x-app-hop", "1")
            .header("keep-alive", "timeout=30");
    }
    let body = bytes::Bytes::from(seen.to_json().to_string());
    Ok(resp.body(http_body_util::Full::new(body)).unwrap())
}

/// Sends `data` to 127.0.0.1:`port` as is and reads what comes back until the server closes
/// (`true`) or nothing more arrives for `quiet` (`false`). Bounded by [`WAIT`] overall.
pub fn raw_exchange(port: u16, data: &[u8], quiet: Duration) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect_timeout(&local(port), WAIT).expect("connect");
    s.set_write_timeout(Some(WAIT)).unwrap();
    s.set_read_timeout(Some(quiet)).unwrap();
    let _ = s.write_all(data);
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (out, false);
            }
            // A reset: the server closed (perhaps before reading all we sent).
            Err(_) => return (out, true),
        }
        if Instant::now() >= deadline {
            return (out, false);
        }
    }
}

/// The status codes of every HTTP/1.x response head in `raw` (e.g. `[200, 400]`).
pub fn response_statuses(raw: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(raw);
    text.match_indices("HTTP/1.")
        .filter(|(i, _)| *i == 0 || text[..*i].ends_with('\n'))
        .filter_map(|(i, _)| text[i..].split(' ').nth(1)?.get(..3)?.parse().ok())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// HTTP sidecar pairs

/// The HTTP mesh's certificates: the backend's (inbound ward) and the frontend's (outbound ward).
pub struct Ids {
    pub pki: Pki,
    pub backend: SvidFiles,
    pub frontend: SvidFiles,
}

pub fn ids() -> Ids {
    let pki = Pki::new("example.org");
    let backend = pki.issue("backend", BACKEND);
    let frontend = pki.issue("frontend", FRONTEND);
    Ids {
        pki,
        backend,
        frontend,
    }
}

/// One route through the pair: an inbound listener (and its policy, both named `name`) in front
/// of `forward`, and an outbound listener of the same name that points at it.
pub struct Route<'a> {
    pub name: &'a str,
    pub forward: SocketAddr,
    /// `protocol:` of the inbound and of the outbound listener.
    pub protocol: (&'a str, &'a str),
    /// More lines for the inbound listener, e.g. `    xfcc: false\n`.
    pub extra: &'a str,
    /// The policy's rules, YAML list items indented by 6.
    pub rules: &'a str,
}

impl<'a> Route<'a> {
    pub fn http(name: &'a str, forward: SocketAddr, rules: &'a str) -> Self {
        Route {
            name,
            forward,
            protocol: ("http", "http"),
            extra: "",
            rules,
        }
    }
}

/// An inbound ward (backend's SVID) and an outbound ward (frontend's SVID) with one listener
/// each per route; `in_ports[i]`/`out_ports[i]` belong to `routes[i]`.
pub struct Pair {
    pub inbound: Ward,
    pub outbound: Ward,
    pub in_ports: Vec<u16>,
    pub out_ports: Vec<u16>,
}

pub fn start_pair(ids: &Ids, routes: &[Route<'_>]) -> Pair {
    start_pair_with(ids, routes, &[])
}

/// [`start_pair`] with more `ward run` arguments for both wards.
pub fn start_pair_with(ids: &Ids, routes: &[Route<'_>], args: &[&str]) -> Pair {
    let in_ports: Vec<u16> = routes.iter().map(|_| free_port()).collect();
    let out_ports: Vec<u16> = routes.iter().map(|_| free_port()).collect();
    let mut body = identity_yaml(&ids.backend, &[]);
    body.push_str("inbound:\n");
    for (r, port) in routes.iter().zip(&in_ports) {
        body.push_str(&format!(
            "  - name: {}\n    listen: 127.0.0.1:{port}\n    forward: {}\n    protocol: {}\n    policy: {}\n{}",
            r.name, r.forward, r.protocol.0, r.name, r.extra
        ));
    }
    body.push_str("policies:\n");
    for r in routes {
        body.push_str(&format!(
            "  {}:\n    default: deny\n    rules:\n{}",
            r.name, r.rules
        ));
    }
    let inbound = Ward::start_with(&body, &in_ports, args);

    let mut body = identity_yaml(&ids.frontend, &[]);
    body.push_str("outbound:\n");
    for ((r, port), upstream) in routes.iter().zip(&out_ports).zip(&in_ports) {
        body.push_str(&format!(
            "  - name: {}\n    listen: 127.0.0.1:{port}\n    forward: 127.0.0.1:{upstream}\n    protocol: {}\n    server_id: \"{BACKEND}\"\n",
            r.name, r.protocol.1
        ));
    }
    let outbound = Ward::start_with(&body, &out_ports, args);
    Pair {
        inbound,
        outbound,
        in_ports,
        out_ports,
    }
}

/// A rule allowing the frontend everything.
pub fn allow_frontend() -> String {
    format!("      - {{name: frontend, action: allow, from: [\"{FRONTEND}\"]}}\n")
}

/// The XFCC value the inbound must set for the frontend's SVID.
pub fn expected_xfcc(ids: &Ids) -> String {
    format!(
        "By={BACKEND};Hash={};URI={FRONTEND}",
        sha256_hex(&ids.frontend.der)
    )
}

// ---------------------------------------------------------------------------------------------
// Operations: config rewrites, signals, exit, the admin server and its metrics

/// The whole config [`Ward::start`] writes for `body`: a 2 s handshake timeout, then `body`,
/// then a JSON audit log to `audit`.
pub fn ward_yaml(body: &str, audit: &Path) -> String {
    format!(
        "handshake_timeout: 2s\n{body}log:\n  format: json\n  audit: {}\n  level: info\n",
        audit.display()
    )
}

/// Replaces `path` atomically (a temporary file renamed over it), so a reader polling the file
/// never sees half of it.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, text).expect("write temporary file");
    std::fs::rename(&tmp, path).expect("rename over the file");
}

impl Ward {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`TERM`, `INT`, `HUP`, …) with `kill -s`.
    pub fn signal(&self, signal: &str) {
        let kill = require_tool("kill");
        let out = run(
            Command::new(kill)
                .args(["-s", signal])
                .arg(self.pid().to_string()),
            b"",
            WAIT,
        );
        assert_eq!(out.code(), 0, "kill -s {signal}: {}", out.stderr());
    }

    /// Rewrites the config file with a new `body` (same wrapping as [`Ward::start`]), atomically.
    pub fn rewrite(&self, body: &str) {
        write_atomic(&self.config, &ward_yaml(body, &self.audit));
    }

    /// Writes `text` as the config file verbatim (e.g. a broken config), atomically.
    pub fn rewrite_raw(&self, text: &str) {
        write_atomic(&self.config, text);
    }

    /// Waits at most `timeout` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (at most `timeout`) until ward's stderr contains `needle`.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let err = self.stderr();
            if err.contains(needle) {
                return err;
            }
            assert!(
                Instant::now() < deadline,
                "ward's stderr did not show {needle:?} within {timeout:?}:\n{err}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header lines, names lowercase, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Reads one HTTP/1.1 response from `s` (`Content-Length`, chunked, or until close). `None`
/// when the connection ends (or fails) before a whole response head arrived.
pub fn read_response(s: &mut TcpStream) -> Option<HttpResponse> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut rest = buf[head_end..].to_vec();
    let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let mut fill = |rest: &mut Vec<u8>, want: usize| -> bool {
        while rest.len() < want {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return false,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
            }
        }
        true
    };
    // 1xx, 204 and 304 never have a body (RFC 9112 section 6.3).
    let body = if status / 100 == 1 || status == 204 || status == 304 {
        Vec::new()
    } else if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        fill(&mut rest, len);
        rest.truncate(len);
        rest
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = rest.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                let more = rest.len() + 1;
                if !fill(&mut rest, more) {
                    return None;
                }
            };
            let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            rest.drain(..line_end + 2);
            if size == 0 {
                break;
            }
            fill(&mut rest, size + 2);
            body.extend_from_slice(&rest[..size.min(rest.len())]);
            rest.drain(..(size + 2).min(rest.len()));
        }
        body
    } else {
        let _ = s.read_to_end(&mut rest);
        rest
    };
    Some(HttpResponse {
        status,
        headers,
        body,
    })
}

/// Sends one HTTP/1.1 request (`Connection: close`) to 127.0.0.1:`port` and reads the answer.
pub fn http_request(port: u16, method: &str, path: &str) -> HttpResponse {
    let mut s = TcpStream::connect_timeout(&local(port), WAIT)
        .unwrap_or_else(|e| panic!("connect 127.0.0.1:{port}: {e}"));
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    read_response(&mut s)
        .unwrap_or_else(|| panic!("no HTTP response to {method} {path} from 127.0.0.1:{port}"))
}

/// `GET path` on an admin server.
pub fn admin_get(port: u16, path: &str) -> HttpResponse {
    http_request(port, "GET", path)
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses the Prometheus/OpenMetrics text format (comments skipped). Panics on a line it
/// cannot read: the exposition must be well formed.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("metric line without a value: {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|e| panic!("bad metric value in {line:?}: {e}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), Vec::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unterminated labels: {line:?}"));
                let mut labels = Vec::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (k, after) = rest
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label in {line:?}"));
                    // Values here never contain an escaped quote.
                    let end = after
                        .find('"')
                        .unwrap_or_else(|| panic!("bad label value in {line:?}"));
                    labels.push((k.to_owned(), after[..end].replace("\\\\", "\\")));
                    rest = after[end + 1..].trim_start_matches(',');
                }
                (name.to_owned(), labels)
            }
        };
        out.push(Sample { name, labels, value });
    }
    out
}

/// The metrics of a running ward, from its admin server.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// `GET /metrics` on the admin server at 127.0.0.1:`admin_port`.
    pub fn scrape(admin_port: u16) -> Metrics {
        let resp = admin_get(admin_port, "/metrics");
        assert_eq!(resp.status, 200, "/metrics: {}", resp.text());
        let text = resp.text();
        Metrics {
            samples: parse_metrics(&text),
            text,
        }
    }

    /// The sum of every sample named `name` whose labels include all of `labels`; `None` when
    /// no sample matches.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            })
            .map(|s| s.value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// Like [`Metrics::get`], 0 when absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

/// Scrapes until `pred` accepts the metrics (at most [`WAIT`]); returns the accepted scrape.
pub fn wait_metrics(admin_port: u16, what: &str, pred: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = Metrics::scrape(admin_port);
        if pred(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed {what} within {WAIT:?}:\n{}",
            m.text
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A directory whose files change all at once, as Kubernetes' AtomicWriter does it: the files
/// live in a generation directory, `..data` points at it, each file is a symlink through
/// `..data`; an update renames a new `..data` over the old one.
pub struct AtomicDir {
    pub dir: PathBuf,
    generation: u32,
}

impl AtomicDir {
    pub fn new(dir: &Path, files: &[(&str, String)]) -> AtomicDir {
        std::fs::create_dir_all(dir).expect("create dir");
        let mut d = AtomicDir {
            dir: dir.to_owned(),
            generation: 0,
        };
        d.swap(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).expect("symlink");
        }
        d
    }

    pub fn swap(&mut self, files: &[(&str, String)]) {
        self.generation += 1;
        let old = format!("..gen_{}", self.generation - 1);
        let new = format!("..gen_{}", self.generation);
        std::fs::create_dir(self.dir.join(&new)).expect("generation dir");
        for (name, text) in files {
            std::fs::write(self.dir.join(&new).join(name), text).expect("write file");
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&new, &tmp).expect("symlink");
        std::fs::rename(&tmp, self.dir.join("..data")).expect("rename ..data");
        let _ = std::fs::remove_dir_all(self.dir.join(old));
    }
}

/// The files of an SVID directory (`svid.pem`, `svid_key.pem`, `bundle.pem`) for `svid`
/// signed by `pki`'s CA.
pub fn svid_dir_files(pki: &Pki, svid: &IssuedSvid) -> Vec<(&'static str, String)> {
    vec![
        ("svid.pem", svid.cert_pem()),
        ("svid_key.pem", svid.key_pem()),
        ("bundle.pem", pki.ca.cert_pem()),
    ]
}
