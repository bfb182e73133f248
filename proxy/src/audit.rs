//! Audit and access records: one JSON object a line, with a stable schema. Records are handed
//! to a writer thread through a bounded queue, so a slow disk never stalls a connection; if the
//! queue is full the record is dropped and counted, never blocking the proxy.

use std::borrow::Cow;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, mpsc};
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
    /// ward could not do its part (no identity yet, an unreachable app, no original
    /// destination, a loop): a refusal that is not a policy decision.
    Error,
}

/// One line of the audit log. Every field is always present (null when it does not apply),
/// so the schema is the same for every record.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// When the record was made (a decision, a request's arrival, a connection's end); RFC
    /// 3339 UTC with milliseconds.
    #[serde(serialize_with = "rfc3339_millis")]
    pub timestamp: SystemTime,
    pub kind: Kind,
    pub listener: Arc<str>,
    pub direction: Direction,
    pub peer_id: Option<Arc<str>>,
    pub peer_serial: Option<Arc<str>>,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub rule: Option<Arc<str>>,
    pub decision: Decision,
    pub reason: Cow<'static, str>,
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
    pub peer_serial: Option<Arc<str>>,
}

impl ConnInfo {
    fn record(&self, kind: Kind, decision: Decision, reason: impl Into<Cow<'static, str>>) -> Record {
        Record {
            timestamp: SystemTime::now(),
            kind,
            listener: self.listener.clone(),
            direction: self.direction,
            peer_id: self.peer_id.clone(),
            peer_serial: self.peer_serial.clone(),
            src: self.src,
            dst: self.dst,
            rule: None,
            decision,
            reason: reason.into(),
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
        let mut r = self.record(Kind::Authz, verdict.decision, verdict.reason.record_text());
        r.rule = verdict.rule.clone();
        r.audit_rules = verdict.audit.clone();
        r
    }

    /// A refusal for a reason of ward's own, not of policy.
    pub fn failed(&self, reason: impl Into<Cow<'static, str>>) -> Record {
        self.record(Kind::Error, Decision::Deny, reason)
    }

    /// A decision not made by a policy rule (server_id checks, missing identity).
    pub fn decided(
        &self,
        decision: Decision,
        rule: Option<Arc<str>>,
        reason: impl Into<Cow<'static, str>>,
    ) -> Record {
        let mut r = self.record(Kind::Authz, decision, reason);
        r.rule = rule;
        r
    }

    /// A connection that ended before `who` (the peer, the app) sent a byte.
    pub fn silent(&self, who: &str, duration: Duration) -> Record {
        self.access(
            &format!("silent: the {who} sent nothing"),
            Some(0),
            Some(0),
            duration,
        )
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

/// RFC 3339 UTC with milliseconds, written straight into the record's line.
fn rfc3339_millis<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

/// Records waiting to be written are kept up to this size; past it they are dropped (and
/// counted) rather than letting a stuck disk grow memory without bound.
const MAX_PENDING: usize = 8 * 1024 * 1024;
/// Pending bytes that make the writer go at once rather than at its next tick.
const WRITE_AT: usize = 256 * 1024;
/// How long a record may wait to be written: the writer collects a tick's records into one
/// write, so a busy proxy wakes it a few times a second, not once per record.
const TICK: std::time::Duration = std::time::Duration::from_millis(50);

struct Writer {
    pending: Mutex<Vec<u8>>,
    wake: Condvar,
    out: Mutex<Box<dyn Write + Send>>,
}

impl Writer {
    /// Writes out whatever is pending.
    fn write_pending(&self, spare: &mut Vec<u8>) {
        if let Ok(mut pending) = self.pending.lock() {
            std::mem::swap(&mut *pending, spare);
        }
        if spare.is_empty() {
            return;
        }
        if let Ok(mut out) = self.out.lock()
            && let Err(e) = out.write_all(spare).and_then(|_| out.flush())
        {
            tracing::error!(error = %e, "cannot write the audit log");
        }
        spare.clear();
        if spare.capacity() > 4 * WRITE_AT {
            spare.shrink_to(WRITE_AT);
        }
    }

    fn run(&self) {
        let mut spare = Vec::with_capacity(WRITE_AT);
        loop {
            {
                let Ok(mut pending) = self.pending.lock() else {
                    return;
                };
                while pending.is_empty() {
                    pending = match self.wake.wait(pending) {
                        Ok(p) => p,
                        Err(_) => return,
                    };
                }
                if pending.len() < WRITE_AT {
                    // Let the tick's records gather into one write.
                    drop(self.wake.wait_timeout(pending, TICK));
                }
            }
            self.write_pending(&mut spare);
        }
    }
}

#[derive(Clone)]
enum Sink {
    Writer(Arc<Writer>),
    Channel(mpsc::SyncSender<String>),
}

/// Where records go; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    sink: Sink,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Starts the writer thread for `target`. A file is opened for appending (created 0640).
    pub fn open(target: &AuditTarget) -> std::io::Result<AuditLog> {
        let out: Box<dyn Write + Send> = match target {
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
        let writer = Arc::new(Writer {
            pending: Mutex::new(Vec::with_capacity(WRITE_AT)),
            wake: Condvar::new(),
            out: Mutex::new(out),
        });
        let w = writer.clone();
        std::thread::Builder::new()
            .name("ward-audit".into())
            .spawn(move || w.run())?;
        Ok(AuditLog {
            sink: Sink::Writer(writer),
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// An audit log whose lines arrive on a channel (the demo reads them).
    pub fn channel() -> (AuditLog, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::sync_channel(8192);
        (
            AuditLog {
                sink: Sink::Channel(tx),
                dropped: Arc::new(AtomicU64::new(0)),
            },
            rx,
        )
    }

    /// Queues one record; never blocks on I/O.
    pub fn write(&self, record: &Record) {
        thread_local! {
            // Each thread encodes into its own buffer, reused: no allocation per record.
            static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let reused = LINE.try_with(|line| match line.try_borrow_mut() {
            Ok(mut line) => {
                self.encode_and_queue(record, &mut line);
                true
            }
            // Only if encoding a record ever wrote another one (it does not).
            Err(_) => false,
        });
        // Not reused: the thread is exiting (a task dropped at shutdown), or the buffer is busy.
        if reused != Ok(true) {
            self.encode_and_queue(record, &mut Vec::new());
        }
    }

    fn encode_and_queue(&self, record: &Record, line: &mut Vec<u8>) {
        if line.capacity() > 64 * 1024 {
            // A huge record (a very long path) does not pin its buffer for good.
            *line = Vec::new();
        }
        line.clear();
        if let Err(e) = serde_json::to_writer(&mut *line, record) {
            tracing::error!(error = %e, "cannot encode an audit record");
            return;
        }
        line.push(b'\n');
        let line = &line[..];
        let queued = match &self.sink {
            Sink::Writer(w) => match w.pending.lock() {
                Ok(mut pending) if pending.len() + line.len() <= MAX_PENDING => {
                    let was_empty = pending.is_empty();
                    pending.extend_from_slice(line);
                    if was_empty || pending.len() >= WRITE_AT {
                        w.wake.notify_one();
                    }
                    true
                }
                _ => false,
            },
            Sink::Channel(tx) => tx.try_send(String::from_utf8_lossy(line).into_owned()).is_ok(),
        };
        if !queued {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(dropped = n, "audit log writer behind; records dropped");
            }
        }
    }

    /// Writes out every pending record now (at exit).
    pub fn flush(&self) {
        if let Sink::Writer(w) = &self.sink {
            w.write_pending(&mut Vec::new());
        }
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
