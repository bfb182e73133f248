//! `ward demo`: a whole mesh on loopback with the dev CA, narrated step by step.
//!
//! An echo app sits behind the backend's inbound sidecar; a frontend and an intruder reach it
//! through outbound sidecars of their own. Each sidecar is a real proxy with its own SVID, in
//! this one process, started from a YAML config written next to the CA.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use ward_certs::{DevCa, TrustDomain};

use crate::audit::AuditLog;
use crate::config::{LogConfig, LogFormat};
use crate::running::{self, Running};

const TD: &str = "example.org";
const BACKEND: &str = "spiffe://example.org/ns/demo/sa/backend";
const FRONTEND: &str = "spiffe://example.org/ns/demo/sa/frontend";
const INTRUDER: &str = "spiffe://example.org/ns/demo/sa/intruder";
/// Short enough that the backend's SVID rotates during the demo (renewal at half life).
const BACKEND_TTL: &str = "6s";

struct Sidecar {
    running: Running,
    audit: Receiver<String>,
}

impl Sidecar {
    /// The next audit record this sidecar wrote, within a second.
    fn next_record(&self) -> Option<serde_json::Value> {
        let line = self.audit.recv_timeout(Duration::from_secs(1)).ok()?;
        serde_json::from_str(&line).ok()
    }

    /// Skips to the first record of kind `authz` or `handshake`.
    fn next_decision(&self) -> Option<serde_json::Value> {
        while let Some(r) = self.next_record() {
            if r["kind"] != "access" {
                return Some(r);
            }
        }
        None
    }

    fn serial(&self) -> String {
        self.running
            .store
            .current()
            .map(|t| t.identity.info().serial.clone())
            .unwrap_or_default()
    }
}

fn say(step: &str, text: &str) {
    println!("\n[{step}] {text}");
}

fn show(what: &str, r: &serde_json::Value) {
    let field = |k: &str| r[k].as_str().map(str::to_owned).unwrap_or_else(|| "-".into());
    println!(
        "      {what}: decision={} rule={} peer={} reason={}",
        field("decision"),
        field("rule"),
        field("peer_id"),
        field("reason")
    );
}

async fn start_sidecar(dir: &Path, name: &str, yaml: String) -> Result<Sidecar, String> {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, &yaml).map_err(|e| format!("{}: {e}", path.display()))?;
    let model = crate::config::load(&path).map_err(|e| e.to_string())?;
    let (audit, rx) = AuditLog::channel();
    let running = running::start(&model, audit).await.map_err(|e| e.to_string())?;
    Ok(Sidecar { running, audit: rx })
}

async fn echo_app() -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

/// Sends `msg` through `addr` and returns what came back before the connection ended.
async fn call(addr: SocketAddr, msg: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.write_all(msg.as_bytes()).await.map_err(|e| e.to_string())?;
    s.shutdown().await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    match read {
        Ok(Ok(_)) | Ok(Err(_)) => Ok(String::from_utf8_lossy(&out).into_owned()),
        Err(_) => Err("no answer within 5s".into()),
    }
}

fn outbound_yaml(ca: &Path, id: &str, name: &str, forward: SocketAddr, server_id: &str) -> String {
    format!(
        "# a {name} sidecar: the app calls the outbound listener in plaintext\n\
identity:\n  dev: {{ca: {ca}, id: \"{id}\", ttl: 1h}}\n\
outbound:\n  - name: {name}\n    listen: 127.0.0.1:0\n    forward: {forward}\n    protocol: tcp\n    server_id: \"{server_id}\"\n",
        ca = ca.display()
    )
}

/// Runs the walkthrough; with `keep`, leaves the mesh up until Ctrl-C.
pub fn run(keep: bool) -> Result<(), String> {
    crate::ops::logging::init_logging(&LogConfig {
        format: LogFormat::Text,
        level: Some("error".into()),
        ..LogConfig::default()
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(walkthrough(keep))
}

async fn walkthrough(keep: bool) -> Result<(), String> {
    let tmp = tempfile::Builder::new()
        .prefix("ward-demo-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let dir = tmp.path();
    println!(
        "ward demo: a mesh on loopback with the dev CA (files in {})",
        dir.display()
    );

    say("1", &format!("dev CA for trust domain {TD}"));
    let td = TrustDomain::new(TD).map_err(|e| e.to_string())?;
    let ca = DevCa::generate(&td).map_err(|e| e.to_string())?;
    let ca_dir = dir.join("ca");
    ca.save(&ca_dir).map_err(|e| e.to_string())?;
    println!("      {}", ca_dir.join("ca.pem").display());

    let app = echo_app().await?;
    say(
        "2",
        &format!("backend app (echo) on {app}, behind an inbound sidecar that only admits the frontend"),
    );
    let backend = start_sidecar(
        dir,
        "backend",
        format!(
            "# the backend's sidecar: mTLS in, plaintext to the app\n\
identity:\n  dev: {{ca: {ca}, id: \"{BACKEND}\", ttl: {BACKEND_TTL}}}\n\
inbound:\n  - name: backend\n    listen: 127.0.0.1:0\n    forward: {app}\n    protocol: tcp\n    policy: backend\n\
policies:\n  backend:\n    default: deny\n    rules:\n      - name: frontend-only\n        action: allow\n        from: [\"{FRONTEND}\"]\n",
            ca = ca_dir.display()
        ),
    )
    .await?;
    let inbound = backend
        .running
        .addr("backend")
        .ok_or("backend listener missing")?;
    println!(
        "      backend sidecar: inbound {inbound}, SVID {BACKEND} (serial {})",
        backend.serial()
    );

    let frontend = start_sidecar(
        dir,
        "frontend",
        outbound_yaml(&ca_dir, FRONTEND, "backend", inbound, BACKEND),
    )
    .await?;
    let front_out = frontend
        .running
        .addr("backend")
        .ok_or("frontend listener missing")?;
    let intruder = start_sidecar(
        dir,
        "intruder",
        outbound_yaml(&ca_dir, INTRUDER, "backend", inbound, BACKEND),
    )
    .await?;
    let intruder_out = intruder
        .running
        .addr("backend")
        .ok_or("intruder listener missing")?;
    let confused = start_sidecar(
        dir,
        "confused",
        outbound_yaml(
            &ca_dir,
            FRONTEND,
            "payments",
            inbound,
            "spiffe://example.org/ns/demo/sa/payments",
        ),
    )
    .await?;
    let confused_out = confused
        .running
        .addr("payments")
        .ok_or("confused listener missing")?;
    println!("      frontend sidecar: outbound {front_out} -> {inbound}, SVID {FRONTEND}");
    println!("      intruder sidecar: outbound {intruder_out} -> {inbound}, SVID {INTRUDER}");

    let mut failures = Vec::new();

    say(
        "3",
        "frontend app -> its sidecar (plaintext) -> mTLS -> backend sidecar -> echo app",
    );
    let reply = call(front_out, "hello from the frontend").await?;
    println!("      sent \"hello from the frontend\", got back {reply:?}");
    match backend.next_decision() {
        Some(r) => show("backend's audit", &r),
        None => failures.push("no audit record for the allowed call".to_owned()),
    }
    if reply != "hello from the frontend" {
        failures.push("the allowed call did not echo".into());
    }

    say(
        "4",
        "intruder app -> its sidecar -> mTLS -> backend sidecar: a valid SVID, but not allowed",
    );
    let reply = call(intruder_out, "let me in").await?;
    println!("      sent \"let me in\", got back {} bytes", reply.len());
    match backend.next_decision() {
        Some(r) => show("backend's audit", &r),
        None => failures.push("no audit record for the denied call".to_owned()),
    }
    if !reply.is_empty() {
        failures.push("the denied call got bytes back".into());
    }

    say(
        "5",
        "a sidecar that expects the payments service reaches the backend instead: it refuses to send",
    );
    let reply = call(confused_out, "card number").await?;
    println!("      sent \"card number\", got back {} bytes", reply.len());
    match confused.next_decision() {
        Some(r) => show("caller's audit", &r),
        None => failures.push("no audit record for the server_id mismatch".to_owned()),
    }

    say(
        "6",
        &format!("live rotation: the backend's SVID lives {BACKEND_TTL} and renews at half life"),
    );
    let long_lived = TcpStream::connect(front_out).await.map_err(|e| e.to_string())?;
    let before = backend.serial();
    let mut after = before.clone();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = backend.serial();
        if after != before {
            break;
        }
    }
    println!("      serial before {before}\n      serial after  {after}");
    if after == before {
        failures.push("the backend's SVID did not rotate".into());
    }
    let reply = call(front_out, "after rotation").await?;
    println!("      a new connection after the rotation: got back {reply:?}");
    let mut long_lived = long_lived;
    long_lived
        .write_all(b"still here")
        .await
        .map_err(|e| e.to_string())?;
    long_lived.shutdown().await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), long_lived.read_to_end(&mut buf)).await;
    println!(
        "      a connection opened before the rotation: got back {:?}",
        String::from_utf8_lossy(&buf)
    );
    if reply != "after rotation" || buf != b"still here" {
        failures.push("traffic across the rotation failed".into());
    }

    if keep {
        println!("\nThe mesh stays up. Try:");
        println!(
            "  echo hi | nc -q1 {} {}   # frontend: allowed",
            front_out.ip(),
            front_out.port()
        );
        println!(
            "  echo hi | nc -q1 {} {}   # intruder: denied",
            intruder_out.ip(),
            intruder_out.port()
        );
        println!("  configs and the CA: {}", dir.display());
        println!("Ctrl-C to stop.");
        running::wait_for_signal().await;
    }
    for s in [backend, frontend, intruder, confused] {
        s.running.stop().await;
    }
    if failures.is_empty() {
        println!("\nward demo: all steps behaved as expected.");
        Ok(())
    } else {
        Err(format!("demo steps failed: {}", failures.join("; ")))
    }
}
