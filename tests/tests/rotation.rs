#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Live SVID rotation through two real ward processes: the inbound's SVID is rotated five times
//! by a Kubernetes-style `..data` symlink swap while a client sends requests in a loop through
//! outbound → mTLS → inbound → app. No request fails, every new handshake after a rotation
//! shows the new serial within seconds, and a connection opened before the first rotation still
//! works after the last.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ward_certs::{IssuedSvid, SpiffeId};
use ward_e2e::*;

/// A Kubernetes projected volume as kubelet's AtomicWriter writes it: the payload in a
/// timestamped directory, `..data` a symlink to it, each file a symlink through `..data`; an
/// update renames a new `..data` symlink over the old one.
struct ProjectedVolume {
    dir: PathBuf,
    generation: u32,
}

impl ProjectedVolume {
    fn new(dir: &Path, files: &[(&str, String)]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut v = ProjectedVolume {
            dir: dir.to_owned(),
            generation: 0,
        };
        v.swap(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
        v
    }

    fn swap(&mut self, files: &[(&str, String)]) {
        self.generation += 1;
        let old = format!("..gen_{}", self.generation - 1);
        let new = format!("..gen_{}", self.generation);
        std::fs::create_dir(self.dir.join(&new)).unwrap();
        for (name, text) in files {
            std::fs::write(self.dir.join(&new).join(name), text).unwrap();
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&new, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        let _ = std::fs::remove_dir_all(self.dir.join(old));
    }
}

fn svid_files(pki: &Pki, svid: &IssuedSvid) -> Vec<(&'static str, String)> {
    vec![
        ("svid.pem", svid.cert_pem()),
        ("svid_key.pem", svid.key_pem()),
        ("bundle.pem", pki.ca.cert_pem()),
    ]
}

fn serial(svid: &IssuedSvid) -> String {
    ward_certs::svid::check_leaf(&svid.chain[0]).unwrap().serial
}

/// One request: connect, send, half-close, read the echo to EOF.
fn request(port: u16, msg: &[u8]) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&local(port), WAIT).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
    s.write_all(msg).map_err(|e| format!("write: {e}"))?;
    s.shutdown(Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut got = Vec::new();
    s.read_to_end(&mut got).map_err(|e| format!("read: {e}"))?;
    if got != msg {
        return Err(format!("echo mismatch: got {:?}", String::from_utf8_lossy(&got)));
    }
    Ok(())
}

/// Sends `msg` on a live connection and reads its echo.
fn ping(conn: &mut TcpStream, msg: &[u8]) {
    conn.write_all(msg).expect("write on the long-lived connection");
    let mut got = vec![0u8; msg.len()];
    conn.read_exact(&mut got)
        .expect("echo on the long-lived connection");
    assert_eq!(got, msg);
}

#[test]
fn svid_rotates_five_times_under_load_without_a_failed_request() {
    let pki = Pki::new("example.org");
    let frontend = pki.issue("frontend", FRONTEND);
    let backend_id = SpiffeId::parse(BACKEND).unwrap();
    let issue = || pki.ca.issue(&backend_id, Duration::from_secs(3600)).unwrap();

    let volume_dir = pki.dir.path().join("backend-volume");
    let first = issue();
    let mut volume = ProjectedVolume::new(&volume_dir, &svid_files(&pki, &first));

    let app = App::echo();
    let in_port = free_port();
    let body = format!(
        "identity:\n  files:\n    dir: {}\n{}",
        volume_dir.display(),
        inbound_yaml("backend", in_port, app.addr, &[("frontend", FRONTEND)])
    );
    let inbound = Ward::start(&body, &[in_port]);
    let (outbound, out_port) = start_outbound(&frontend, in_port, BACKEND, &[]);

    // A connection opened before the first rotation.
    let mut long_lived = TcpStream::connect(local(out_port)).unwrap();
    long_lived.set_read_timeout(Some(WAIT)).unwrap();
    ping(&mut long_lived, b"before the first rotation\n");

    // The client loop.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let client = {
        let (stop, sent, failures) = (stop.clone(), sent.clone(), failures.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let msg = format!("request {n}\n");
                if let Err(e) = request(out_port, msg.as_bytes()) {
                    failures.lock().unwrap().push(format!("request {n}: {e}"));
                }
                sent.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let is_authz = |r: &serde_json::Value| r["kind"] == "authz" && r["decision"] == "allow";
    // The first SVID is what handshakes see before any rotation.
    outbound.wait_record("authz with the first serial", |r| {
        is_authz(r) && r["peer_serial"] == serial(&first).as_str()
    });

    let mut serials = vec![serial(&first)];
    for round in 1..=5 {
        let skip = outbound.records().len();
        let next = issue();
        volume.swap(&svid_files(&pki, &next));
        let rotated_at = Instant::now();
        let s = serial(&next);
        let record =
            outbound.wait_record_after(skip, &format!("authz with serial {s} (rotation {round})"), |r| {
                is_authz(r) && r["peer_serial"] == s.as_str()
            });
        assert_eq!(record["peer_id"], BACKEND, "{record}");
        eprintln!(
            "rotation {round}: new serial seen after {:?}",
            rotated_at.elapsed()
        );
        serials.push(s);
        // Let a few requests run on the new identity before the next rotation.
        let at = sent.load(Ordering::SeqCst);
        let deadline = Instant::now() + WAIT;
        while sent.load(Ordering::SeqCst) < at + 5 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    stop.store(true, Ordering::SeqCst);
    client.join().unwrap();

    // The connection from before the first rotation still carries bytes both ways.
    ping(&mut long_lived, b"after the last rotation\n");
    drop(long_lived);

    let failures = failures.lock().unwrap().clone();
    let total = sent.load(Ordering::SeqCst);
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed: {failures:#?}",
        failures.len()
    );
    assert!(total >= 25, "the client loop ran ({total} requests)");

    // Handshakes never go back to an older SVID once a newer one was seen.
    let generation = |serial: &str| serials.iter().position(|s| s == serial);
    let mut highest = 0;
    for r in outbound.records().iter().filter(|r| is_authz(r)) {
        let serial = r["peer_serial"].as_str().unwrap_or_default();
        let g = generation(serial).unwrap_or_else(|| panic!("unknown serial {serial} in {r}"));
        assert!(
            g >= highest,
            "a handshake went back from SVID {highest} to {g}: {r}"
        );
        highest = highest.max(g);
    }
    assert_eq!(highest, 5);

    let err = inbound.stderr();
    assert!(!err.contains("refused"), "no identity update was refused:\n{err}");
    inbound.assert_no_panic();
    outbound.assert_no_panic();
}

/// Not ready until the first identity has loaded: with only an expired SVID in the volume,
/// ward refuses it, logs why and does not listen; once a valid SVID is swapped in, it does.
#[test]
fn listeners_open_only_once_a_valid_identity_has_loaded() {
    let pki = Pki::new("example.org");
    let backend_id = SpiffeId::parse(BACKEND).unwrap();
    let mut params = ward_certs::devca::svid_params(&backend_id).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(2);
    params.not_after = now - time::Duration::hours(1);
    let expired = pki.ca.sign(&params).unwrap();
    let volume_dir = pki.dir.path().join("backend-volume");
    let mut volume = ProjectedVolume::new(&volume_dir, &svid_files(&pki, &expired));

    let app = App::echo();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ward.yaml");
    std::fs::write(
        &config,
        format!(
            "identity:\n  files:\n    dir: {}\n{}log:\n  format: json\n  audit: {}\n",
            volume_dir.display(),
            inbound_yaml("backend", port, app.addr, &[("frontend", FRONTEND)]),
            dir.path().join("audit.log").display()
        ),
    )
    .unwrap();
    let stderr_path = dir.path().join("stderr.log");
    let mut child = KillOnDrop(
        std::process::Command::new(ward_bin())
            .args(["run", "-c"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let deadline = Instant::now() + WAIT;
    while !stderr().contains("expired") {
        assert!(Instant::now() < deadline, "no refusal logged:\n{}", stderr());
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "ward exited:\n{}",
            stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(!is_listening(port), "listening without a valid identity");
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "ward keeps waiting:\n{}",
        stderr()
    );

    let good = pki.ca.issue(&backend_id, Duration::from_secs(3600)).unwrap();
    volume.swap(&svid_files(&pki, &good));
    let deadline = Instant::now() + WAIT;
    while !is_listening(port) {
        assert!(
            Instant::now() < deadline,
            "not listening after a valid SVID arrived:\n{}",
            stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(child);
    assert!(stderr().contains(&serial(&good)), "{}", stderr());
}

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
