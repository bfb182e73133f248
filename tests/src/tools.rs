//! External processes, each run bounded by a timeout: `ward` itself, curl and openssl
//! `s_client`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::pki::SvidFiles;
use crate::{WAIT, ward_bin};

/// An external tool the tests need; a missing tool fails the test (never a skip).
pub fn require_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // Servers (nginx, haproxy) live in sbin, which a non-login PATH may leave out.
    let sbin = ["/usr/sbin", "/sbin"].map(PathBuf::from);
    for dir in std::env::split_paths(&path).chain(sbin) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "the end-to-end tests need `{name}` on PATH and it is missing: install it (e.g. apt-get install {name})"
    );
}

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

/// A long-running real peer (nginx, haproxy, a Python server), killed when dropped.
pub struct Daemon {
    child: std::process::Child,
    name: String,
    log: tempfile::NamedTempFile,
}

impl Daemon {
    /// Starts `cmd` and waits until it listens on 127.0.0.1:`port`; panics with its output if
    /// it exits or does not listen within [`WAIT`].
    pub fn start(name: &str, cmd: &mut Command, port: u16) -> Daemon {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.reopen().expect("log"))
            .stderr(log.reopen().expect("log"))
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let mut d = Daemon {
            child,
            name: name.to_owned(),
            log,
        };
        let deadline = Instant::now() + WAIT;
        while !crate::is_listening(port) {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!(
                    "{name} exited ({status}) before listening on {port}:\n{}",
                    d.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{name} does not listen on {port}:\n{}",
                d.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to `timeout` for it to exit; `None` if it did not.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Panics, with its output, if it has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.name, self.output());
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
