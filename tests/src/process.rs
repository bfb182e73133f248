//! The ward process: starting `ward run`, reading its output and audit log, signalling it,
//! rewriting its config and waiting for its exit.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::dirs::write_atomic;
use crate::tools::{require_tool, run};
use crate::yaml::ward_yaml;
use crate::{WAIT, local, ward_bin};

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
