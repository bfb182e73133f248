//! Transparent capture in real network namespaces: two "pods" joined by a veth pair, each
//! with an app, ward running as UID 1337 and the rules of `ward iptables install`.
//!
//! Needs root (CI runs as root). Without it, or when `ip netns add` fails, each test prints why
//! and returns, unless `WARD_REQUIRE_NETNS=1` (set by `.ci/run`): then it fails.
//! Tools: ip (iproute2), iptables, setpriv (util-linux), tcpdump, python3, curl.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use ward_e2e::{FRONTEND, Pki, SvidFiles, require_tool, ward_bin};

const BACKEND: &str = ward_e2e::BACKEND;
const PROXY_UID: &str = "1337";

// ---------------------------------------------------------------------------------------------
// Namespaces

/// Whether network-namespace tests can run here; `None` means yes, `Some(why)` means skip
/// (or fail, under WARD_REQUIRE_NETNS=1).
fn netns_unavailable() -> Option<String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if uid.as_deref() != Some("0") {
        return Some(format!("not root (uid {})", uid.unwrap_or_else(|| "?".into())));
    }
    let probe = format!(
        "wardprobe-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    match Command::new("ip").args(["netns", "add", &probe]).output() {
        Ok(o) if o.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).output();
            None
        }
        Ok(o) => Some(format!(
            "`ip netns add` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run `ip`: {e}")),
    }
}

/// Returns false (after saying why) when the test should skip; panics under WARD_REQUIRE_NETNS=1.
fn netns_ok(test: &str) -> bool {
    match netns_unavailable() {
        None => {
            for tool in [
                "ip",
                "iptables-save",
                "iptables-restore",
                "setpriv",
                "tcpdump",
                "python3",
                "curl",
            ] {
                require_tool(tool);
            }
            true
        }
        Some(why) => {
            assert!(
                std::env::var("WARD_REQUIRE_NETNS").as_deref() != Ok("1"),
                "{test}: network namespaces are required (WARD_REQUIRE_NETNS=1) but unavailable: {why}"
            );
            eprintln!("{test}: skipped: network namespaces unavailable: {why}");
            false
        }
    }
}

/// Runs a command to completion; panics with its output unless it succeeds.
fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command's output and status, whatever it is.
fn try_sh(args: &[&str], timeout: Duration) -> (bool, String, String) {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]);
    let out = ward_e2e::run(&mut cmd, b"", timeout);
    (out.code() == 0, out.stdout(), out.stderr())
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A network namespace, deleted when dropped (after the processes in it are killed).
struct Netns {
    name: String,
    children: Vec<(String, Child)>,
}

impl Netns {
    fn new(name: String) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns {
            name,
            children: Vec::new(),
        }
    }

    /// `ip netns exec NAME args...` to completion.
    fn exec(&self, args: &[&str]) -> String {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        sh(&all)
    }

    fn try_exec(&self, args: &[&str], timeout: Duration) -> (bool, String, String) {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        try_sh(&all, timeout)
    }

    /// Starts `args` in the namespace; its output goes to `log`. Killed on drop.
    fn spawn(&mut self, what: &str, args: &[&str], log: &Path) -> u32 {
        let file = std::fs::File::create(log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let pid = child.id();
        self.children.push((what.to_owned(), child));
        pid
    }

    /// Kills one spawned process by name and waits for it.
    fn kill(&mut self, what: &str) {
        if let Some(i) = self.children.iter().position(|(w, _)| w == what) {
            let (_, mut child) = self.children.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Two namespaces joined by a veth pair: A at 10.250.X.1, B at 10.250.X.2.
struct Pair {
    a: Netns,
    b: Netns,
    a_ip: String,
    b_ip: String,
    subnet: String,
    b_if: String,
}

impl Pair {
    fn new() -> Pair {
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let a = Netns::new(format!("wardA-{pid}-{n}"));
        let b = Netns::new(format!("wardB-{pid}-{n}"));
        // Interface names are at most 15 characters.
        let (a_if, b_if) = (
            format!("wa{}x{n}", pid % 10_000_000),
            format!("wb{}x{n}", pid % 10_000_000),
        );
        sh(&[
            "ip", "link", "add", &a_if, "netns", &a.name, "type", "veth", "peer", "name", &b_if, "netns",
            &b.name,
        ]);
        let x = n % 250 + 1;
        let (a_ip, b_ip) = (format!("10.250.{x}.1"), format!("10.250.{x}.2"));
        sh(&[
            "ip",
            "-n",
            &a.name,
            "addr",
            "add",
            &format!("{a_ip}/24"),
            "dev",
            &a_if,
        ]);
        sh(&[
            "ip",
            "-n",
            &b.name,
            "addr",
            "add",
            &format!("{b_ip}/24"),
            "dev",
            &b_if,
        ]);
        sh(&["ip", "-n", &a.name, "link", "set", &a_if, "up"]);
        sh(&["ip", "-n", &b.name, "link", "set", &b_if, "up"]);
        Pair {
            a,
            b,
            a_ip,
            b_ip,
            subnet: format!("10.250.{x}.0/24"),
            b_if,
        }
    }
}

impl Pair {
    /// [`Pair::new`] plus IPv6: A at fd00:250:X::1, B at fd00:250:X::2 (no duplicate address
    /// detection, so the addresses work at once).
    fn dual_stack() -> (Pair, String, String, String) {
        let pair = Pair::new();
        let x = pair.subnet.split('.').nth(2).unwrap_or("1").to_owned();
        let (a6, b6) = (format!("fd00:250:{x}::1"), format!("fd00:250:{x}::2"));
        let a_if = pair.b_if.replacen("wb", "wa", 1);
        for (ns, ip, dev) in [(&pair.a, &a6, &a_if), (&pair.b, &b6, &pair.b_if)] {
            sh(&[
                "ip",
                "-n",
                &ns.name,
                "-6",
                "addr",
                "add",
                &format!("{ip}/64"),
                "dev",
                dev,
                "nodad",
            ]);
        }
        (pair, a6, b6, format!("fd00:250:{x}::/64"))
    }
}

// ---------------------------------------------------------------------------------------------
// Files readable by the proxy's UID

/// A directory everyone may read (and write: ward's audit log goes there).
fn open_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    dir
}

/// Makes an SVID's files readable by UID 1337 (test keys only).
fn share(svid: &SvidFiles) {
    let mut p = svid.dir.clone();
    while p.pop() {
        if p.as_os_str().len() <= 5 {
            break;
        }
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755));
    }
    std::fs::set_permissions(&svid.dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    for f in [&svid.cert, &svid.key, &svid.bundle] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).expect("chmod file");
    }
}

/// A CA and the frontend's and backend's SVIDs, readable by the proxy's UID. Keep the `Pki`:
/// it holds the files.
fn pod_svids() -> (Pki, SvidFiles, SvidFiles) {
    let pki = Pki::new("example.org");
    std::fs::set_permissions(pki.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let front = pki.issue("frontend", FRONTEND);
    let back = pki.issue("backend", BACKEND);
    share(&front);
    share(&back);
    (pki, front, back)
}

// ---------------------------------------------------------------------------------------------
// The apps

/// A tiny HTTP app on each given port: answers `<marker> port=<p> path=<path> xfcc=<header>`
/// and logs every request line (port, path) to `hits`.
const APP: &str = r#"
import sys, threading, http.server, socketserver
marker, hits, ports = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3:]]
lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        port = self.server.server_address[1]
        with lock, open(hits, "a") as f:
            f.write(f"{port} {self.path}\n")
        body = f"{marker} port={port} path={self.path} xfcc={self.headers.get('x-forwarded-client-cert', '')}\n".encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
servers = [S(("0.0.0.0", p), H) for p in ports]
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("listening", flush=True)
servers[0].serve_forever()
"#;

/// Waits until `pred` holds, or panics with `what` and `detail()`.
fn wait_for(what: &str, timeout: Duration, mut pred: impl FnMut() -> bool, detail: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while !pred() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            detail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether something listens on TCP `port` inside `ns` (any address).
fn listening(ns: &Netns, port: u16) -> bool {
    let (_, out, _) = ns.try_exec(
        &["ss", "-Htln", &format!("sport = :{port}")],
        Duration::from_secs(5),
    );
    !out.trim().is_empty()
}

/// ward's config for one pod: transparent inbound and outbound, admin on localhost.
fn pod_config(svid: &SvidFiles, audit: &Path, inbound: &str, outbound: &str, policies: &str) -> String {
    format!(
        "handshake_timeout: 2s\nconnect_timeout: 2s\nidentity:\n  files:\n    cert: {}\n    key: {}\n    bundle: {}\n{inbound}{outbound}{policies}admin:\n  listen: 127.0.0.1:15000\nlog:\n  format: json\n  audit: {}\n  level: info\n",
        svid.cert.display(),
        svid.key.display(),
        svid.bundle.display(),
        audit.display()
    )
}

/// One running sidecar in a namespace.
struct Sidecar {
    config: PathBuf,
    audit: PathBuf,
    log: PathBuf,
}

impl Sidecar {
    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn dump(&self) -> String {
        format!(
            "--- {} log ---\n{}\n--- audit ---\n{}",
            self.config.display(),
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            std::fs::read_to_string(&self.audit).unwrap_or_default()
        )
    }
}

/// Starts ward as UID/GID 1337 in `ns` and waits until it is ready.
fn start_ward(ns: &mut Netns, dir: &Path, name: &str, config_text: &str) -> Sidecar {
    let config = dir.join(format!("{name}.yaml"));
    let audit = dir.join(format!("{name}-audit.log"));
    let log = dir.join(format!("{name}.log"));
    std::fs::write(
        &config,
        config_text.replace("AUDIT_PATH", &audit.display().to_string()),
    )
    .expect("write config");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let bin = ward_bin();
    let bin = bin.to_str().expect("utf-8 path");
    let config_s = config.display().to_string();
    ns.spawn(
        name,
        &[
            "setpriv",
            &format!("--reuid={PROXY_UID}"),
            &format!("--regid={PROXY_UID}"),
            "--clear-groups",
            bin,
            "run",
            "-c",
            &config_s,
        ],
        &log,
    );
    let sidecar = Sidecar { config, audit, log };
    let ns_ref: &Netns = ns;
    wait_for(
        &format!("{name} to be ready"),
        Duration::from_secs(10),
        || {
            let (ok, out, _) = ns_ref.try_exec(
                &["curl", "-s", "-m", "1", "http://127.0.0.1:15000/ready"],
                Duration::from_secs(3),
            );
            ok && out.contains("ready") && !out.contains("not ready")
        },
        || sidecar.dump(),
    );
    sidecar
}

/// `curl` from inside `ns` (optionally as another UID); (exit status 0, body).
fn curl_in(ns: &Netns, url: &str, as_uid: Option<&str>) -> (bool, String, String) {
    let mut args: Vec<String> = Vec::new();
    if let Some(uid) = as_uid {
        args.extend([
            "setpriv".into(),
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".into(),
        ]);
    }
    args.extend(["curl".into(), "-sS".into(), "-m".into(), "4".into(), url.into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ns.try_exec(&refs, Duration::from_secs(8))
}

fn iptables_save_all(ns: &Netns) -> String {
    let mut out = String::new();
    for tool in [
        "iptables-save",
        "ip6tables-save",
        "iptables-nft-save",
        "iptables-legacy-save",
        "ip6tables-nft-save",
        "ip6tables-legacy-save",
    ] {
        if which(tool) {
            let (_, text, _) = ns.try_exec(&[tool], Duration::from_secs(10));
            out.push_str(&format!("## {tool}\n{text}"));
        }
    }
    out
}

fn which(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|d| d.join(tool).is_file())
}

// ---------------------------------------------------------------------------------------------
// Tests

/// install → rules present; install again → the same rules, once; uninstall → nothing left.
#[test]
fn iptables_install_is_idempotent_and_uninstall_leaves_nothing() {
    if !netns_ok("iptables_install_is_idempotent_and_uninstall_leaves_nothing") {
        return;
    }
    let ward = ward_bin();
    let ward = ward.to_str().unwrap();
    let mut backends = vec!["auto"];
    for b in ["nft", "legacy"] {
        if which(&format!("iptables-{b}-restore")) {
            backends.push(b);
        }
    }
    for backend in backends {
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let ns = Netns::new(format!("wardI-{pid}-{n}"));
        let save_tool = match backend {
            "auto" => "iptables-save".to_owned(),
            b => format!("iptables-{b}-save"),
        };
        let args = [
            ward,
            "iptables",
            "install",
            "--backend",
            backend,
            "--exclude-inbound-ports",
            "22,9000-9010",
            "--exclude-outbound-cidrs",
            "169.254.169.254/32",
        ];
        let out = ns.exec(&args);
        assert!(out.contains("installed"), "{out}");
        let first = ns.exec(&[&save_tool, "-t", "nat"]);
        let first = if backend == "auto" {
            // auto may have picked either variant; look at both.
            iptables_save_all(&ns)
        } else {
            first
        };
        for want in [
            ":WARD_INBOUND",
            ":WARD_OUTPUT",
            "-A PREROUTING -p tcp -j WARD_INBOUND",
            "-A OUTPUT -p tcp -j WARD_OUTPUT",
            "-A WARD_INBOUND -p tcp -m tcp --dport 15008 -j RETURN",
            "-A WARD_INBOUND -p tcp -m tcp --dport 9000:9010 -j RETURN",
            "-A WARD_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A WARD_OUTPUT -m owner --gid-owner 1337 -j RETURN",
            "-A WARD_OUTPUT -d 169.254.169.254/32 -j RETURN",
            "-A WARD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            "-A WARD_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        ] {
            assert!(first.contains(want), "{backend}: {want:?} missing from:\n{first}");
        }
        // `print` shows what install applied.
        let printed = sh(&[
            ward,
            "iptables",
            "print",
            "--exclude-inbound-ports",
            "22,9000-9010",
            "--exclude-outbound-cidrs",
            "169.254.169.254/32",
        ]);
        for line in printed
            .lines()
            .filter(|l| l.starts_with("-A ") && !l.contains("::1/128"))
        {
            if line.contains("fd") || line.contains("::") {
                continue;
            }
            assert!(
                first.contains(line),
                "{backend}: printed rule {line:?} was not installed:\n{first}"
            );
        }
        // Again: no duplicates.
        ns.exec(&args);
        let second = if backend == "auto" {
            iptables_save_all(&ns)
        } else {
            ns.exec(&[&save_tool, "-t", "nat"])
        };
        let strip = |s: &str| {
            s.lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            strip(&first),
            strip(&second),
            "{backend}: install twice differs from once"
        );
        assert_eq!(
            second.matches("-A PREROUTING -p tcp -j WARD_INBOUND").count(),
            first.matches("-A PREROUTING -p tcp -j WARD_INBOUND").count()
        );
        // IPv6 too (when ip6tables works here).
        let v6_save = match backend {
            "auto" => "ip6tables-save".to_owned(),
            b => format!("ip6tables-{b}-save"),
        };
        if which(&v6_save) && backend != "auto" {
            let v6 = ns.exec(&[&v6_save, "-t", "nat"]);
            assert!(
                v6.contains("-A WARD_OUTPUT -d ::1/128 -j RETURN"),
                "{backend}: ip6tables:\n{v6}"
            );
        }
        // Uninstall leaves nothing of ward, in any backend or family.
        let out = ns.exec(&[ward, "iptables", "uninstall", "--backend", backend]);
        assert!(out.contains("removed"), "{out}");
        let after = iptables_save_all(&ns);
        assert!(
            !after.contains("WARD_"),
            "{backend}: ward's rules are left after uninstall:\n{after}"
        );
        // Uninstalling nothing is fine.
        ns.exec(&[ward, "iptables", "uninstall", "--backend", backend]);
    }
}

/// The issue's end-to-end: two pods, capture both ways, mTLS on the wire, identity at the app,
/// per-port policy, no bypass, passthrough/deny for unrouted destinations, clean uninstall.
#[test]
fn two_pods_talk_through_transparent_sidecars() {
    if !netns_ok("two_pods_talk_through_transparent_sidecars") {
        return;
    }
    let mut pair = Pair::new();
    let dir = open_dir("ward-netns-");
    let (_pki, front, back) = pod_svids();
    let marker = format!("WARDAPPMARKER{}", std::process::id());
    let request_marker = format!("WARDREQMARKER{}", std::process::id());

    // B's app: 8080 (the service), 9090 (a port B's policy locks), 7070 (not captured).
    let hits = dir.path().join("b-hits.log");
    let app_log = dir.path().join("b-app.log");
    pair.b.spawn(
        "app",
        &[
            "python3",
            "-c",
            APP,
            &marker,
            hits.to_str().unwrap(),
            "8080",
            "9090",
            "7070",
        ],
        &app_log,
    );
    let b_ref = &pair.b;
    wait_for(
        "B's app",
        Duration::from_secs(10),
        || listening(b_ref, 8080) && listening(b_ref, 9090) && listening(b_ref, 7070),
        || std::fs::read_to_string(&app_log).unwrap_or_default(),
    );

    // B: transparent inbound, 9090 under a policy that admits nobody we have.
    let b_inbound = "inbound:\n  - name: pod\n    listen: 0.0.0.0:15006\n    transparent: true\n    protocol: auto\n    policy: web\n    ports:\n      9090: {protocol: auto, policy: locked}\n";
    let b_outbound = format!(
        "outbound:\n  - name: mesh\n    listen: 127.0.0.1:15001\n    transparent: true\n    routes:\n      - to: {}\n        server_id: \"{FRONTEND}\"\n    default: passthrough\n",
        pair.subnet
    );
    let b_policies = format!(
        "policies:\n  web:\n    default: deny\n    rules:\n      - name: frontend\n        action: allow\n        from: [\"{FRONTEND}\"]\n  locked:\n    default: deny\n    rules:\n      - name: ops-only\n        action: allow\n        from: [\"spiffe://example.org/ns/ops/sa/admin\"]\n"
    );
    let b_ward = start_ward(
        &mut pair.b,
        dir.path(),
        "ward-b",
        &pod_config(
            &back,
            Path::new("AUDIT_PATH"),
            b_inbound,
            &b_outbound,
            &b_policies,
        ),
    );

    // A: transparent outbound; B's 8080 and 9090 are mesh routes, anything else is `default`.
    let a_config = |default: &str| {
        let outbound = format!(
            "outbound:\n  - name: mesh\n    listen: 127.0.0.1:15001\n    transparent: true\n    routes:\n      - to: {subnet}:8080\n        server_id: \"{BACKEND}\"\n      - to: {subnet}:9090\n        server_id: \"{BACKEND}\"\n    default: {default}\n",
            subnet = pair.subnet
        );
        let inbound =
            "inbound:\n  - name: pod\n    listen: 0.0.0.0:15006\n    transparent: true\n    policy: web\n";
        let policies = format!(
            "policies:\n  web:\n    default: deny\n    rules:\n      - name: backend\n        action: allow\n        from: [\"{BACKEND}\"]\n"
        );
        pod_config(&front, Path::new("AUDIT_PATH"), inbound, &outbound, &policies)
    };
    let a_ward = start_ward(&mut pair.a, dir.path(), "ward-a", &a_config("passthrough"));

    // Capture rules in both pods (B's 7070 stays outside capture: the passthrough target).
    let ward = ward_bin();
    let ward = ward.to_str().unwrap();
    pair.a.exec(&[ward, "iptables", "install"]);
    pair.b
        .exec(&[ward, "iptables", "install", "--exclude-inbound-ports", "7070"]);

    // Watch the wire between the pods.
    let pcap = dir.path().join("veth.pcap");
    let tcpdump_log = dir.path().join("tcpdump.log");
    let b_if = pair.b_if.clone();
    let tcpdump_pid = pair.b.spawn(
        "tcpdump",
        &[
            "tcpdump",
            "-i",
            &b_if,
            "--immediate-mode",
            "-U",
            "-n",
            "-s",
            "0",
            "-w",
            pcap.to_str().unwrap(),
            "tcp",
        ],
        &tcpdump_log,
    );
    wait_for(
        "tcpdump to listen",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&tcpdump_log)
                .unwrap_or_default()
                .contains("listening on")
        },
        || std::fs::read_to_string(&tcpdump_log).unwrap_or_default(),
    );

    // 1. A's app calls B's IP in plain HTTP and gets B's answer, with A's SPIFFE ID at B's app.
    let url = format!("http://{}:8080/{request_marker}", pair.b_ip);
    let (ok, body, err) = curl_in(&pair.a, &url, None);
    assert!(
        ok && body.contains(&marker),
        "A -> B:8080 failed: {err}\nbody: {body}\n{}\n{}",
        a_ward.dump(),
        b_ward.dump()
    );
    assert!(body.contains(&format!("path=/{request_marker}")), "{body}");
    assert!(
        body.contains(FRONTEND),
        "B's app did not see A's SPIFFE ID in x-forwarded-client-cert: {body}"
    );
    // Audit records are written in batches, a few times a second.
    wait_for(
        "an allow record for A at B",
        Duration::from_secs(5),
        || {
            b_ward
                .records()
                .iter()
                .any(|r| r["decision"] == "allow" && r["peer_id"] == FRONTEND)
        },
        || b_ward.dump(),
    );

    // 2. B's per-port policy denies A on 9090: no app answer, and the app never sees it.
    let (_, body, _) = curl_in(
        &pair.a,
        &format!("http://{}:9090/locked-{request_marker}", pair.b_ip),
        None,
    );
    assert!(
        !body.contains(&marker),
        "B's 9090 policy should deny A, got: {body}"
    );
    wait_for(
        "a deny record for 9090 at B",
        Duration::from_secs(5),
        || {
            b_ward
                .records()
                .iter()
                .any(|r| r["decision"] == "deny" && r["peer_id"] == FRONTEND)
        },
        || b_ward.dump(),
    );

    // 3. A caller in A that bypasses its sidecar (runs as the proxy's UID) gets no plaintext
    //    answer from B: B's capture hands it to B's ward, which wants mTLS.
    let (_, body, _) = curl_in(
        &pair.a,
        &format!("http://{}:8080/bypass", pair.b_ip),
        Some(PROXY_UID),
    );
    assert!(
        !body.contains(&marker),
        "a bypassing caller got B's app answer: {body}"
    );

    // 4. A destination no route covers: passthrough, then (A restarted with default: deny) refused.
    let (ok, body, err) = curl_in(&pair.a, &format!("http://{}:7070/pass", pair.b_ip), None);
    assert!(
        ok && body.contains(&marker) && body.contains("port=7070"),
        "passthrough to B:7070 failed: {err} {body}\n{}",
        a_ward.dump()
    );
    pair.a.kill("ward-a");
    let a_ward = start_ward(&mut pair.a, dir.path(), "ward-a-deny", &a_config("deny"));
    let (_, body, _) = curl_in(&pair.a, &format!("http://{}:7070/denied", pair.b_ip), None);
    assert!(
        !body.contains(&marker),
        "default: deny let A reach B:7070: {body}"
    );
    wait_for(
        "a deny record for the unrouted destination at A",
        Duration::from_secs(5),
        || a_ward.records().iter().any(|r| r["decision"] == "deny"),
        || a_ward.dump(),
    );

    // B's app saw exactly the allowed calls and the passthrough.
    let seen = std::fs::read_to_string(&hits).unwrap_or_default();
    assert!(seen.contains(&format!("8080 /{request_marker}")), "{seen}");
    assert!(seen.contains("7070 /pass"), "{seen}");
    for never in ["locked-", "/bypass", "/denied"] {
        assert!(!seen.contains(never), "B's app saw {never:?}:\n{seen}");
    }

    // The wire: TLS records, and neither the request nor the answer in the clear.
    sh(&["kill", "-INT", &tcpdump_pid.to_string()]);
    std::thread::sleep(Duration::from_millis(500));
    pair.b.kill("tcpdump");
    let wire = std::fs::read(&pcap).expect("read pcap");
    assert!(wire.len() > 24 + 16, "tcpdump captured nothing on {b_if}");
    let has = |needle: &[u8]| wire.windows(needle.len()).any(|w| w == needle);
    assert!(
        has(&[0x16, 0x03, 0x01]) || has(&[0x16, 0x03, 0x03]),
        "no TLS handshake record on the wire"
    );
    assert!(has(&[0x17, 0x03, 0x03]), "no TLS application data on the wire");
    // The mesh calls carried the request marker (the bypass and passthrough calls did not):
    // it never crossed in the clear, and the app's answer did only for the passthrough call.
    assert!(
        !has(request_marker.as_bytes()),
        "a mesh request crossed the veth in plaintext"
    );
    let clear_answers: Vec<usize> = wire
        .windows(marker.len())
        .enumerate()
        .filter(|(_, w)| *w == marker.as_bytes())
        .map(|(i, _)| i)
        .collect();
    for at in clear_answers {
        assert!(
            wire[at + marker.len()..].starts_with(b" port=7070"),
            "an answer of B's app crossed the veth in plaintext: {:?}",
            String::from_utf8_lossy(&wire[at..(at + 120).min(wire.len())])
        );
    }

    // 5. Uninstall leaves iptables-save free of ward's rules.
    pair.a.exec(&[ward, "iptables", "uninstall"]);
    pair.b.exec(&[ward, "iptables", "uninstall"]);
    for ns in [&pair.a, &pair.b] {
        let saved = iptables_save_all(ns);
        assert!(
            !saved.contains("WARD_"),
            "ward's rules left in {}:\n{saved}",
            ns.name
        );
    }
    let _ = (&pair.a_ip, &a_ward);
}

// ---------------------------------------------------------------------------------------------
// A hostile neighbour: another pod that reaches this pod's address

/// Pod B runs its sidecar with the admin server bound to every address (as older configs did)
/// and the probes port beside it. From pod A, which reaches B's IP: the probes and `/ready`
/// answer, but `/config`, `/policy`, `/identity` and `POST /shutdown` are 403 and the sidecar
/// keeps running; the probes port serves nothing else. From inside B, a request with a foreign
/// `Host` (DNS rebinding) or a browser's `Origin` (CSRF) is 403 too.
#[test]
fn another_pod_cannot_use_the_admin_plane() {
    if !netns_ok("another_pod_cannot_use_the_admin_plane") {
        return;
    }
    let mut pair = Pair::new();
    let dir = open_dir("ward-netns-admin-");
    let (_pki, _, back) = pod_svids();
    let inbound =
        "inbound:\n  - name: pod\n    listen: 0.0.0.0:15006\n    transparent: true\n    policy: web\n";
    let policies = "policies:\n  web:\n    default: deny\n";
    let config = pod_config(&back, Path::new("AUDIT_PATH"), inbound, "", policies).replace(
        "admin:\n  listen: 127.0.0.1:15000\n",
        "admin:\n  listen: 0.0.0.0:15000\n  probes: 0.0.0.0:15020\n",
    );
    let b_ward = start_ward(&mut pair.b, dir.path(), "ward-b", &config);
    let b = &pair.b_ip;

    let status = |ns: &Netns, extra: &[&str], url: &str| -> String {
        let mut args = vec!["curl", "-sS", "-m", "4", "-o", "/dev/null", "-w", "%{http_code}"];
        args.extend_from_slice(extra);
        args.push(url);
        let (_, out, err) = ns.try_exec(&args, Duration::from_secs(8));
        format!("{out}{}", if out.is_empty() { err } else { String::new() })
    };
    for (extra, path, port, want) in [
        (&[][..], "/ready", 15000, "200"),
        (&[][..], "/metrics", 15000, "200"),
        (&[][..], "/config", 15000, "403"),
        (&[][..], "/policy", 15000, "403"),
        (&[][..], "/identity", 15000, "403"),
        (&["-X", "POST"][..], "/shutdown", 15000, "403"),
        (&[][..], "/ready", 15020, "200"),
        (&[][..], "/live", 15020, "200"),
        (&[][..], "/metrics", 15020, "200"),
        (&[][..], "/config", 15020, "404"),
        (&["-X", "POST"][..], "/shutdown", 15020, "404"),
    ] {
        let got = status(&pair.a, extra, &format!("http://{b}:{port}{path}"));
        assert_eq!(
            got,
            want,
            "from pod A: {extra:?} {path} on {port}\n{}",
            b_ward.dump()
        );
    }
    // Inside B, on loopback: a foreign Host or a browser's cross-site request is refused.
    let admin = "http://127.0.0.1:15000";
    for (extra, path) in [
        (&["-H", "Host: evil.example"][..], "/config"),
        (&["-H", "Host: evil.example:15000"][..], "/ready"),
        (
            &["-X", "POST", "-H", "Origin: https://evil.example"][..],
            "/shutdown",
        ),
        (
            &["-X", "POST", "-H", "Origin: http://127.0.0.1:15000"][..],
            "/shutdown",
        ),
        (
            &["-X", "POST", "-H", "Sec-Fetch-Site: cross-site"][..],
            "/shutdown",
        ),
    ] {
        let got = status(&pair.b, extra, &format!("{admin}{path}"));
        assert_eq!(got, "403", "inside B: {extra:?} {path}");
    }
    assert_eq!(status(&pair.b, &[], &format!("{admin}/config")), "200");
    // Still serving: nothing above stopped it.
    assert_eq!(
        status(&pair.b, &[], &format!("{admin}/ready")),
        "200",
        "{}",
        b_ward.dump()
    );
    let log = std::fs::read_to_string(&b_ward.log).unwrap_or_default();
    assert!(
        !log.contains("draining"),
        "the sidecar was asked to drain:\n{log}"
    );
    assert!(
        log.contains("admin request refused"),
        "refusals are logged:\n{log}"
    );
}

/// Inbound forwards to the original destination (B's pod IP), not to 127.0.0.1, so a port the
/// app bound to loopback only (a debug server on 6060) does not answer the mesh; a per-port
/// `app_host: 127.0.0.1` (here for 6061) opts one such port in, on purpose.
#[test]
fn loopback_only_app_ports_stay_private_to_the_pod() {
    if !netns_ok("loopback_only_app_ports_stay_private_to_the_pod") {
        return;
    }
    let mut pair = Pair::new();
    let dir = open_dir("ward-netns-lo-");
    let (_pki, front, back) = pod_svids();
    let marker = format!("WARDLOMARKER{}", std::process::id());
    // B's apps: 8080 on every address, 6060 and 6061 on loopback only.
    let hits = dir.path().join("b-hits.log");
    let public = APP.to_owned();
    let private = APP.replace("S((\"0.0.0.0\", p), H)", "S((\"127.0.0.1\", p), H)");
    assert_ne!(public, private, "the app's bind address moved");
    for (what, code, ports) in [
        ("app", &public, &["8080"][..]),
        ("debug", &private, &["6060", "6061"][..]),
    ] {
        let mut args = vec!["python3", "-c", code.as_str(), &marker, hits.to_str().unwrap()];
        args.extend_from_slice(ports);
        pair.b
            .spawn(what, &args, &dir.path().join(format!("b-{what}.log")));
    }
    let b_ref = &pair.b;
    wait_for(
        "B's apps",
        Duration::from_secs(10),
        || listening(b_ref, 8080) && listening(b_ref, 6060) && listening(b_ref, 6061),
        String::new,
    );
    let b_inbound = "inbound:\n  - name: pod\n    listen: 0.0.0.0:15006\n    transparent: true\n    protocol: auto\n    policy: web\n    ports:\n      6061: {app_host: 127.0.0.1}\n";
    let b_policies = format!(
        "policies:\n  web:\n    default: deny\n    rules:\n      - name: frontend\n        action: allow\n        from: [\"{FRONTEND}\"]\n"
    );
    let b_ward = start_ward(
        &mut pair.b,
        dir.path(),
        "ward-b",
        &pod_config(&back, Path::new("AUDIT_PATH"), b_inbound, "", &b_policies),
    );
    let a_outbound = format!(
        "outbound:\n  - name: mesh\n    listen: 127.0.0.1:15001\n    transparent: true\n    routes:\n      - to: {}\n        server_id: \"{BACKEND}\"\n    default: deny\n",
        pair.subnet
    );
    let a_ward = start_ward(
        &mut pair.a,
        dir.path(),
        "ward-a",
        &pod_config(&front, Path::new("AUDIT_PATH"), "", &a_outbound, ""),
    );
    let ward = ward_bin();
    let ward = ward.to_str().unwrap();
    pair.a.exec(&[ward, "iptables", "install"]);
    pair.b.exec(&[ward, "iptables", "install"]);

    let b = pair.b_ip.clone();
    let (ok, body, err) = curl_in(&pair.a, &format!("http://{b}:8080/public"), None);
    assert!(
        ok && body.contains(&marker),
        "8080: {err}\n{body}\n{}\n{}",
        a_ward.dump(),
        b_ward.dump()
    );
    assert!(body.contains("port=8080"), "{body}");
    let (ok, body, _) = curl_in(&pair.a, &format!("http://{b}:6060/debug/pprof"), None);
    assert!(
        !ok || !body.contains(&marker),
        "a loopback-only port answered the mesh: {body}"
    );
    let (ok, body, err) = curl_in(&pair.a, &format!("http://{b}:6061/opted-in"), None);
    assert!(
        ok && body.contains("port=6061"),
        "6061 (app_host: 127.0.0.1): {err}\n{body}\n{}",
        b_ward.dump()
    );
    // B's ward sent 6060's request to the pod IP, where nothing listens: 502.
    let dst = format!("{b}:6060");
    wait_for(
        "the record of the 6060 request",
        Duration::from_secs(5),
        || {
            b_ward
                .records()
                .iter()
                .any(|r| r["dst"] == dst.as_str() && r["status"] == 502)
        },
        || b_ward.dump(),
    );
    let hits = std::fs::read_to_string(&hits).unwrap_or_default();
    assert!(
        !hits.contains("/debug/pprof"),
        "the debug server saw the request: {hits}"
    );
}

/// A TCP echo server on port 7000, every address.
const ECHO: &str = r#"
import socket, threading
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 7000)); srv.listen(64)
def serve(c):
    with c:
        while True:
            d = c.recv(65536)
            if not d:
                return
            c.sendall(d)
print("listening", flush=True)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Connects to argv[1]:7000, sends a line, prints its own address and the echo.
const ECHO_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], 7000), timeout=4)
s.sendall(b"hello over the mesh")
got = b""
while len(got) < 19:
    d = s.recv(100)
    if not d:
        break
    got += d
print("%s:%d" % s.getsockname(), got.decode())
"#;

/// `tunnel: auto` between pods: opaque TCP to a peer whose IP answers HBONE on 15008 rides a
/// pooled tunnel there (B records it on its HBONE listener, with A's app as `forwarded_for`);
/// to an address of the same pod where nothing answers on 15008, it goes direct, captured into
/// B's transparent inbound as before.
#[test]
fn opaque_tcp_between_pods_rides_hbone_where_the_peer_has_it_and_goes_direct_where_not() {
    if !netns_ok("opaque_tcp_between_pods_rides_hbone_where_the_peer_has_it_and_goes_direct_where_not") {
        return;
    }
    let mut pair = Pair::new();
    let dir = open_dir("ward-netns-hbone-");
    let (_pki, front, back) = pod_svids();
    // A second address on B, where no HBONE listener is bound.
    let b_ip2 = format!("{}.3", pair.b_ip.rsplit_once('.').unwrap().0);
    let b_if = pair.b_if.clone();
    pair.b
        .exec(&["ip", "addr", "add", &format!("{b_ip2}/24"), "dev", &b_if]);
    pair.b
        .spawn("echo", &["python3", "-c", ECHO], &dir.path().join("b-echo.log"));
    let b_ref = &pair.b;
    wait_for(
        "B's echo app",
        Duration::from_secs(10),
        || listening(b_ref, 7000),
        String::new,
    );
    let b_inbound = format!(
        "inbound:\n  - name: pod\n    listen: 0.0.0.0:15006\n    transparent: true\n    policy: web\n    ports:\n      7000: {{protocol: tcp}}\n  - name: hbone\n    listen: {}:15008\n    hbone: true\n    policy: web\n    ports:\n      7000: {{protocol: tcp}}\n",
        pair.b_ip
    );
    let b_policies = format!(
        "policies:\n  web:\n    default: deny\n    rules:\n      - name: frontend\n        action: allow\n        from: [\"{FRONTEND}\"]\n"
    );
    let b_ward = start_ward(
        &mut pair.b,
        dir.path(),
        "ward-b",
        &pod_config(&back, Path::new("AUDIT_PATH"), &b_inbound, "", &b_policies),
    );
    let a_outbound = format!(
        "outbound:\n  - name: mesh\n    listen: 127.0.0.1:15001\n    transparent: true\n    routes:\n      - to: {}\n        server_id: \"{BACKEND}\"\n    default: deny\n",
        pair.subnet
    );
    let a_ward = start_ward(
        &mut pair.a,
        dir.path(),
        "ward-a",
        &pod_config(&front, Path::new("AUDIT_PATH"), "", &a_outbound, ""),
    );
    let ward = ward_bin();
    let ward = ward.to_str().unwrap();
    pair.a.exec(&[ward, "iptables", "install"]);
    pair.b.exec(&[ward, "iptables", "install"]);

    let call = |ip: &str| {
        let (ok, out, err) = pair
            .a
            .try_exec(&["python3", "-c", ECHO_CLIENT, ip], Duration::from_secs(8));
        assert!(
            ok && out.contains("hello over the mesh"),
            "A -> {ip}:7000: {err}\n{out}\n{}\n{}",
            a_ward.dump(),
            b_ward.dump()
        );
        out.split_whitespace().next().unwrap_or_default().to_owned()
    };
    let tunnelled_from = call(&pair.b_ip);
    let direct_from = call(&b_ip2);
    let allow_on = |listener: &str, dst: String| {
        wait_for(
            &format!("B's allow on {listener} for {dst}"),
            Duration::from_secs(5),
            || {
                b_ward.records().iter().any(|r| {
                    r["kind"] == "authz"
                        && r["decision"] == "allow"
                        && r["listener"] == listener
                        && r["dst"] == dst.as_str()
                })
            },
            || format!("{}\n{}", a_ward.dump(), b_ward.dump()),
        );
        b_ward
            .records()
            .into_iter()
            .find(|r| r["kind"] == "authz" && r["listener"] == listener && r["dst"] == dst.as_str())
            .unwrap()
    };
    let over_hbone = allow_on("hbone", format!("{}:7000", pair.b_ip));
    assert_eq!(over_hbone["peer_id"], FRONTEND);
    assert_eq!(
        over_hbone["forwarded_for"],
        tunnelled_from.as_str(),
        "B records A's app, named in the CONNECT's forwarded header"
    );
    let direct = allow_on("pod", format!("{b_ip2}:7000"));
    assert_eq!(direct["peer_id"], FRONTEND);
    assert!(direct["forwarded_for"].is_null(), "{direct}");
    assert!(!direct_from.is_empty());
    let a_log = std::fs::read_to_string(&a_ward.log).unwrap_or_default();
    assert!(a_log.contains("no HBONE listener there"), "{}", a_ward.dump());
}

// ---------------------------------------------------------------------------------------------
// IPv6

/// Two dual-stack pods: ward's inbound on `[::]:15006` (one socket for both families) and its
/// outbound on `127.0.0.1:15001` and `[::1]:15001` (where ip6tables' REDIRECT sends a pod's
/// own IPv6 connections). Calls both ways over IPv6, and over IPv4 on the same listeners, are
/// captured, cross the veth as TLS only, arrive with the peer's SPIFFE ID, and are recorded
/// with the original destination the caller dialled.
#[test]
fn ipv6_pods_talk_both_ways_through_captured_mtls() {
    if !netns_ok("ipv6_pods_talk_both_ways_through_captured_mtls") {
        return;
    }
    for tool in ["ip6tables-save", "ip6tables-restore"] {
        require_tool(tool);
    }
    let (mut pair, a6, b6, subnet6) = Pair::dual_stack();
    let dir = open_dir("ward-netns6-");
    let (_pki, front, back) = pod_svids();
    let marker = format!("WARDV6MARKER{}", std::process::id());
    let request_marker = format!("WARDV6REQ{}", std::process::id());

    // An app on 8080 in each pod, on both families (ward forwards to the address the peer
    // dialled).
    let app6 = APP.replace(
        "servers = [S((\"0.0.0.0\", p), H) for p in ports]",
        "class S6(S):\n    address_family = __import__('socket').AF_INET6\nservers = [S6((\"::\", p), H) for p in ports]",
    );
    assert_ne!(app6, APP);
    let mut hits = Vec::new();
    for (ns, name) in [(&mut pair.a, "a"), (&mut pair.b, "b")] {
        let h = dir.path().join(format!("{name}-hits.log"));
        let log = dir.path().join(format!("{name}-app.log"));
        let tag = format!("{marker}-{name}");
        ns.spawn(
            "app",
            &["python3", "-c", &app6, &tag, h.to_str().unwrap(), "8080"],
            &log,
        );
        hits.push(h);
    }
    for ns in [&pair.a, &pair.b] {
        wait_for(
            "the apps",
            Duration::from_secs(10),
            || listening(ns, 8080),
            String::new,
        );
    }

    // Each pod: its peer's v4 and v6 addresses are mesh routes with the peer's SPIFFE ID;
    // its inbound admits only the peer.
    let config = |svid: &SvidFiles, peer_id: &str, peer_v4: &str, peer_v6: &str| {
        let routes = format!(
            "    transparent: true\n    routes:\n      - to: {peer_v4}/32\n        server_id: \"{peer_id}\"\n      - to: {peer_v6}/128\n        server_id: \"{peer_id}\"\n    default: deny\n"
        );
        let outbound = format!(
            "outbound:\n  - name: mesh\n    listen: 127.0.0.1:15001\n{routes}  - name: mesh6\n    listen: \"[::1]:15001\"\n{routes}"
        );
        let inbound = "inbound:\n  - name: pod\n    listen: \"[::]:15006\"\n    transparent: true\n    protocol: auto\n    policy: web\n";
        let policies = format!(
            "policies:\n  web:\n    default: deny\n    rules:\n      - name: peer\n        action: allow\n        from: [\"{peer_id}\"]\n"
        );
        pod_config(svid, Path::new("AUDIT_PATH"), inbound, &outbound, &policies)
    };
    let a_ward = start_ward(
        &mut pair.a,
        dir.path(),
        "ward-a",
        &config(&front, BACKEND, &pair.b_ip, &b6),
    );
    let b_ward = start_ward(
        &mut pair.b,
        dir.path(),
        "ward-b",
        &config(&back, FRONTEND, &pair.a_ip, &a6),
    );
    let ward = ward_bin();
    let ward = ward.to_str().unwrap();
    let before: Vec<String> = [&pair.a, &pair.b]
        .iter()
        .map(|ns| iptables_save_all(ns))
        .collect();
    pair.a.exec(&[ward, "iptables", "install", "--ipv6", "on"]);
    pair.b.exec(&[ward, "iptables", "install", "--ipv6", "on"]);

    // Watch the wire.
    let pcap = dir.path().join("veth6.pcap");
    let tcpdump_log = dir.path().join("tcpdump6.log");
    let b_if = pair.b_if.clone();
    let tcpdump_pid = pair.b.spawn(
        "tcpdump",
        &[
            "tcpdump",
            "-i",
            &b_if,
            "--immediate-mode",
            "-U",
            "-n",
            "-s",
            "0",
            "-w",
            pcap.to_str().unwrap(),
            "tcp",
        ],
        &tcpdump_log,
    );
    wait_for(
        "tcpdump to listen",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&tcpdump_log)
                .unwrap_or_default()
                .contains("listening on")
        },
        || std::fs::read_to_string(&tcpdump_log).unwrap_or_default(),
    );

    let dump = || {
        let state = |ns: &Netns| {
            let (_, ss, _) = ns.try_exec(&["ss", "-tlnp"], Duration::from_secs(5));
            format!("--- {} ---\n{ss}{}", ns.name, iptables_save_all(ns))
        };
        format!(
            "{}\n{}\n{}\n{}",
            a_ward.dump(),
            b_ward.dump(),
            state(&pair.a),
            state(&pair.b)
        )
    };

    // A -> B and B -> A over IPv6, then over IPv4 through the same dual-stack inbound socket.
    let calls = [
        (
            &pair.a,
            &a_ward,
            &b_ward,
            format!("[{b6}]:8080"),
            "b",
            FRONTEND,
            a6.clone(),
        ),
        (
            &pair.b,
            &b_ward,
            &a_ward,
            format!("[{a6}]:8080"),
            "a",
            BACKEND,
            b6.clone(),
        ),
        (
            &pair.a,
            &a_ward,
            &b_ward,
            format!("{}:8080", pair.b_ip),
            "b",
            FRONTEND,
            pair.a_ip.clone(),
        ),
    ];
    for (from, caller, callee, dst, answers, caller_id, caller_ip) in &calls {
        let url = format!("http://{dst}/{request_marker}");
        let (ok, body, err) = curl_in(from, &url, None);
        assert!(
            ok && body.contains(&format!("{marker}-{answers}")),
            "{url}: {err}\nbody: {body}\n{}",
            dump()
        );
        assert!(
            body.contains(caller_id),
            "the app did not see the caller's SPIFFE ID: {body}"
        );
        // The callee records the caller's address and the destination the caller dialled.
        wait_for(
            &format!("the callee's allow for {dst}"),
            Duration::from_secs(5),
            || {
                callee.records().iter().any(|r| {
                    r["kind"] == "request"
                        && r["decision"] == "allow"
                        && r["peer_id"] == *caller_id
                        && r["dst"] == dst.as_str()
                        && r["src"].as_str().is_some_and(|s| s.contains(caller_ip.as_str()))
                })
            },
            dump,
        );
        // ... and so does the caller's outbound.
        wait_for(
            &format!("the caller's outbound record for {dst}"),
            Duration::from_secs(5),
            || caller.records().iter().any(|r| r["dst"] == dst.as_str()),
            dump,
        );
    }
    let seen_b = std::fs::read_to_string(&hits[1]).unwrap_or_default();
    assert_eq!(
        seen_b.matches(&format!("/{request_marker}")).count(),
        2,
        "{seen_b}"
    );

    // A caller that bypasses its sidecar (the proxy's UID) gets no plaintext answer over IPv6.
    let (_, body, _) = curl_in(&pair.a, &format!("http://[{b6}]:8080/bypass"), Some(PROXY_UID));
    assert!(
        !body.contains(&marker),
        "a bypassing IPv6 caller got B's answer: {body}"
    );
    // An IPv6 destination no route covers: default deny.
    let (_, body, _) = curl_in(&pair.a, "http://[fd00:250:ffff::9]:8080/unrouted", None);
    assert!(!body.contains(&marker), "{body}");

    // The wire carried TLS, never the request or an answer.
    sh(&["kill", "-INT", &tcpdump_pid.to_string()]);
    std::thread::sleep(Duration::from_millis(500));
    pair.b.kill("tcpdump");
    let wire = std::fs::read(&pcap).expect("read pcap");
    let has = |needle: &[u8]| wire.windows(needle.len()).any(|w| w == needle);
    assert!(has(&[0x17, 0x03, 0x03]), "no TLS application data on the wire");
    assert!(
        !has(request_marker.as_bytes()),
        "a request crossed the veth in plaintext"
    );
    assert!(!has(marker.as_bytes()), "an answer crossed the veth in plaintext");
    // IPv6 packets (ethertype 0x86dd) between the pods' addresses were among them.
    let b6_bytes: Vec<u8> = b6.parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec();
    assert!(has(&b6_bytes), "no packet to or from {b6} on the wire");
    let _ = &subnet6;

    // Uninstall leaves both families' rules and chains as they were (iptables-nft keeps the
    // now empty nat table it made, with its built-in chains at policy ACCEPT: no rule at all).
    pair.a.exec(&[ward, "iptables", "uninstall"]);
    pair.b.exec(&[ward, "iptables", "uninstall"]);
    for (ns, before) in [&pair.a, &pair.b].iter().zip(&before) {
        let after = iptables_save_all(ns);
        assert!(
            !after.contains("WARD_"),
            "ward's rules left in {}:\n{after}",
            ns.name
        );
        let strip = |t: &str| {
            t.lines()
                .filter(|l| l.starts_with('-') || (l.starts_with(':') && !l.contains(" ACCEPT ")))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        };
        assert_eq!(
            strip(&after),
            strip(before),
            "{}: the tables differ from before",
            ns.name
        );
    }
}
