//! Audit and access records: one JSON object a line, with a stable schema. Records are handed
//! to a writer thread through a bounded queue, so a slow disk never stalls a connection; if the
//! queue is full the record is dropped and counted, never blocking the proxy.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use ward_filters::{Decision, Verdict};

use crate::config::AuditTarget;

/// Which way a connection goes through ward.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

/// What a record is about.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The TLS handshake failed: the peer was never identified.
    Handshake,
    /// A policy (or server_id) decision on an identified peer.
    Authz,
    /// A connection ended: bytes, duration and outcome.
    Access,
    /// One HTTP request: its policy decision, status, bytes and duration.
    Request,
}

/// One line of the audit log. Every field is always present (null when it does not apply),
/// so the schema is the same for every record.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub timestamp: String,
    pub kind: Kind,
    pub listener: Arc<str>,
    pub direction: Direction,
    pub peer_id: Option<Arc<str>>,
    pub peer_serial: Option<String>,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub rule: Option<Arc<str>>,
    pub decision: Decision,
    pub reason: String,
    pub audit_rules: Vec<Arc<str>>,
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
    pub duration_ms: Option<u64>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub authority: Option<String>,
    pub status: Option<u16>,
}

/// The fields every record of one connection shares.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub listener: Arc<str>,
    pub direction: Direction,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub peer_id: Option<Arc<str>>,
    pub peer_serial: Option<String>,
}

impl ConnInfo {
    fn record(&self, kind: Kind, decision: Decision, reason: String) -> Record {
        Record {
            timestamp: timestamp(),
            kind,
            listener: self.listener.clone(),
            direction: self.direction,
            peer_id: self.peer_id.clone(),
            peer_serial: self.peer_serial.clone(),
            src: self.src,
            dst: self.dst,
            rule: None,
            decision,
            reason,
            audit_rules: Vec::new(),
            bytes_in: None,
            bytes_out: None,
            duration_ms: None,
            method: None,
            path: None,
            authority: None,
            status: None,
        }
    }

    /// One HTTP request and the verdict it got; status, bytes and duration are filled in
    /// when the response ends.
    pub fn request(&self, verdict: &Verdict, method: &str, path: &str, authority: Option<&str>) -> Record {
        let mut r = self.authz(verdict);
        r.kind = Kind::Request;
        r.method = Some(method.to_owned());
        r.path = Some(path.to_owned());
        r.authority = authority.map(str::to_owned);
        r
    }

    /// A handshake that failed: always a deny.
    pub fn handshake_failed(&self, reason: &str, detail: &str) -> Record {
        self.record(Kind::Handshake, Decision::Deny, format!("{reason}: {detail}"))
    }

    /// A policy verdict.
    pub fn authz(&self, verdict: &Verdict) -> Record {
        let reason = format!("{}: {}", verdict.reason.label(), verdict.reason);
        let mut r = self.record(Kind::Authz, verdict.decision, reason);
        r.rule = verdict.rule.clone();
        r.audit_rules = verdict.audit.clone();
        r
    }

    /// A decision not made by a policy rule (server_id checks, missing identity).
    pub fn decided(&self, decision: Decision, rule: Option<Arc<str>>, reason: String) -> Record {
        let mut r = self.record(Kind::Authz, decision, reason);
        r.rule = rule;
        r
    }

    /// The end of a forwarded connection. `bytes_in` is what the accepting side sent (peer → app
    /// inbound, app → peer outbound); unknown (null) when the connection ended in an error.
    pub fn access(
        &self,
        outcome: &str,
        bytes_in: Option<u64>,
        bytes_out: Option<u64>,
        duration: Duration,
    ) -> Record {
        let mut r = self.record(Kind::Access, Decision::Allow, outcome.to_owned());
        r.bytes_in = bytes_in;
        r.bytes_out = bytes_out;
        r.duration_ms = Some(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
        r
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn timestamp() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

const QUEUE: usize = 8192;

/// Where records go; cheap to clone.
#[derive(Clone, Debug)]
pub struct AuditLog {
    tx: mpsc::SyncSender<String>,
    dropped: Arc<AtomicU64>,
}

impl AuditLog {
    /// Starts the writer thread for `target`. A file is opened for appending (created 0640).
    pub fn open(target: &AuditTarget) -> std::io::Result<AuditLog> {
        let mut out: Box<dyn Write + Send> = match target {
            AuditTarget::Stderr => Box::new(std::io::stderr()),
            AuditTarget::Stdout => Box::new(std::io::stdout()),
            AuditTarget::File(path) => {
                use std::os::unix::fs::OpenOptionsExt;
                Box::new(
                    std::fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .mode(0o640)
                        .open(path)?,
                )
            }
        };
        let (tx, rx) = mpsc::sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("ward-audit".into())
            .spawn(move || {
                // Lines queued together go out in one write: a busy proxy makes one syscall per
                // batch, not per record, and nothing waits longer than the queue is non-empty.
                let mut batch = Vec::with_capacity(64 * 1024);
                while let Ok(line) = rx.recv() {
                    batch.extend_from_slice(line.as_bytes());
                    while batch.len() < 64 * 1024 {
                        match rx.try_recv() {
                            Ok(line) => batch.extend_from_slice(line.as_bytes()),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = out.write_all(&batch).and_then(|_| out.flush()) {
                        tracing::error!(error = %e, "cannot write the audit log");
                    }
                    batch.clear();
                    if batch.capacity() > 256 * 1024 {
                        batch.shrink_to(64 * 1024);
                    }
                }
            })?;
        Ok(AuditLog {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// An audit log whose lines arrive on a channel (the demo reads them).
    pub fn channel() -> (AuditLog, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        (
            AuditLog {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            rx,
        )
    }

    /// Queues one record; never blocks.
    pub fn write(&self, record: &Record) {
        let mut line = match serde_json::to_string(record) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode an audit record");
                return;
            }
        };
        line.push('\n');
        if self.tx.try_send(line).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "audit queue full or closed; records dropped");
            }
        }
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
