//! Audit and access records: one JSON object a line, with a stable schema. Records are handed
//! to a writer thread through a bounded queue, so a slow disk never stalls a connection; if the
//! queue is full the record is dropped and counted, never blocking the proxy.

use std::borrow::Cow;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    /// An upgraded stream ended (WebSocket or another `Upgrade`, or HTTP/2 extended CONNECT):
    /// its request, the bytes each way after the switch, its duration and how it ended.
    Upgrade,
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
    /// The original client an HBONE peer named in its `forwarded` header (`src` is the peer's
    /// own address, as ward saw it): the peer's claim, recorded beside what ward knows.
    pub forwarded_for: Option<SocketAddr>,
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
    /// HBONE streams: the original client the peer named in `forwarded`.
    pub forwarded_for: Option<SocketAddr>,
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
            forwarded_for: self.forwarded_for,
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

/// RFC 3339 UTC with milliseconds (the `Serialize` form, which `Record::write_json` matches).
fn rfc3339_millis<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

// The audit line is written by hand rather than by serde_json: it is made for every request in
// both sidecars, and serde_json spent about 9,000 instructions on each (callgrind, 1 connection
// of keep-alive: 11-15% of each proxy's user-space instructions), most of it formatting the two
// socket addresses and the timestamp through core::fmt. The output is byte for byte serde_json's
// (`Serialize` stays as the reference; a property test holds the two to it).
impl Record {
    /// Appends the record as one JSON object, without a newline.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"timestamp\":\"");
        push_rfc3339_millis(out, self.timestamp);
        out.extend_from_slice(b"\",\"kind\":\"");
        out.extend_from_slice(match self.kind {
            Kind::Handshake => b"handshake",
            Kind::Authz => b"authz",
            Kind::Access => b"access",
            Kind::Request => b"request",
            Kind::Upgrade => b"upgrade",
            Kind::Error => b"error",
        });
        out.extend_from_slice(b"\",\"listener\":");
        push_str(out, &self.listener);
        out.extend_from_slice(match self.direction {
            Direction::Inbound => b",\"direction\":\"inbound\",\"peer_id\":",
            Direction::Outbound => b",\"direction\":\"outbound\",\"peer_id\":",
        });
        push_opt_str(out, self.peer_id.as_deref());
        out.extend_from_slice(b",\"peer_serial\":");
        push_opt_str(out, self.peer_serial.as_deref());
        out.extend_from_slice(b",\"src\":");
        push_addr(out, self.src);
        out.extend_from_slice(b",\"dst\":");
        push_addr(out, self.dst);
        out.extend_from_slice(b",\"forwarded_for\":");
        match self.forwarded_for {
            Some(a) => push_addr(out, a),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"rule\":");
        push_opt_str(out, self.rule.as_deref());
        out.extend_from_slice(match self.decision {
            Decision::Allow => b",\"decision\":\"allow\",\"reason\":",
            Decision::Deny => b",\"decision\":\"deny\",\"reason\":",
        });
        push_str(out, &self.reason);
        out.extend_from_slice(b",\"audit_rules\":[");
        for (i, rule) in self.audit_rules.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_str(out, rule);
        }
        out.extend_from_slice(b"],\"bytes_in\":");
        push_opt_int(out, self.bytes_in);
        out.extend_from_slice(b",\"bytes_out\":");
        push_opt_int(out, self.bytes_out);
        out.extend_from_slice(b",\"duration_ms\":");
        push_opt_int(out, self.duration_ms);
        out.extend_from_slice(b",\"method\":");
        push_opt_str(out, self.method.as_deref());
        out.extend_from_slice(b",\"path\":");
        push_opt_str(out, self.path.as_deref());
        out.extend_from_slice(b",\"authority\":");
        push_opt_str(out, self.authority.as_deref());
        out.extend_from_slice(b",\"status\":");
        push_opt_int(out, self.status);
        out.push(b'}');
    }
}

/// A JSON string, escaped as serde_json escapes: `"`, `\` and control characters only.
fn push_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.push(b'"');
    // Nearly every field needs no escape: one branch-free pass (the compiler vectorizes it)
    // decides, then the string is copied whole.
    if !bytes
        .iter()
        .fold(false, |esc, &b| esc | (b < 0x20) | (b == b'"') | (b == b'\\'))
    {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain..i]);
        plain = i + 1;
        if short.is_empty() {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(short);
        }
    }
    out.extend_from_slice(&bytes[plain..]);
    out.push(b'"');
}

fn push_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_opt_int<I: itoa::Integer>(out: &mut Vec<u8>, n: Option<I>) {
    match n {
        Some(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

/// `"a.b.c.d:port"`; IPv6 through its Display (`"[addr%scope]:port"`), as serde writes both.
fn push_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    out.push(b'"');
    match addr {
        SocketAddr::V4(v4) => {
            let mut num = itoa::Buffer::new();
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(num.format(octet).as_bytes());
            }
            out.push(b':');
            out.extend_from_slice(num.format(v4.port()).as_bytes());
        }
        SocketAddr::V6(v6) => {
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
    out.push(b'"');
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, as humantime's `format_rfc3339_millis` writes it, from the
/// civil-from-days conversion (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms").
/// A clock set before 1970 or past 9999 is written as the nearest of the two ends (where
/// humantime would panic or fail), so a line is always well formed.
fn push_rfc3339_millis(out: &mut Vec<u8>, t: SystemTime) {
    const LAST: Duration = Duration::new(253_402_300_799, 999_999_999); // 9999-12-31T23:59:59.999Z
    let since = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .min(LAST);
    let secs = since.as_secs();
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    // Days since 0000-03-01, in 400-year eras of 146,097 days.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let two =
        |out: &mut Vec<u8>, n: u64| out.extend_from_slice(&[b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]);
    two(out, year / 100);
    two(out, year % 100);
    out.push(b'-');
    two(out, month);
    out.push(b'-');
    two(out, day);
    out.push(b'T');
    two(out, of_day / 3_600);
    out.push(b':');
    two(out, of_day / 60 % 60);
    out.push(b':');
    two(out, of_day % 60);
    let ms = since.subsec_millis();
    out.extend_from_slice(&[
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
        b'Z',
    ]);
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
        record.write_json(line);
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

/// Formats Unix seconds as RFC 3339. Certificates may carry any date: ones outside what
/// RFC 3339 can say (before 1970 here, after 9999) are shown as such, never a panic.
pub fn rfc3339(unix: i64) -> String {
    const MAX: i64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    match unix {
        i64::MIN..0 => format!("{unix} (before 1970)"),
        0..=MAX => humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs()))
            .to_string(),
        _ => format!("{unix} (after 9999)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

    fn addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<u32>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))),
            (
                any::<u128>(),
                any::<u16>(),
                any::<u32>(),
                prop_oneof![Just(0u32), any::<u32>()]
            )
                .prop_map(|(ip, port, flow, scope)| SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(ip),
                    port,
                    flow,
                    scope
                ))),
        ]
    }

    /// Strings that exercise escaping: control characters, quotes, backslashes, non-ASCII.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![any::<String>(), "[\\x00-\\x7f\"\\\\é€😀]{0,40}"]
    }

    fn arc_text() -> impl Strategy<Value = Arc<str>> {
        text().prop_map(Arc::from)
    }

    prop_compose! {
        fn record()(
            secs in 0u64..=253_402_300_799,
            nanos in 0u32..1_000_000_000,
            kind in prop_oneof![Just(Kind::Handshake), Just(Kind::Authz), Just(Kind::Access), Just(Kind::Request), Just(Kind::Upgrade), Just(Kind::Error)],
            inbound in any::<bool>(),
            allow in any::<bool>(),
            listener in arc_text(),
            peer_id in proptest::option::of(arc_text()),
            peer_serial in proptest::option::of(arc_text()),
            src in addr(),
            dst in addr(),
            forwarded_for in proptest::option::of(addr()),
            rule in proptest::option::of(arc_text()),
            reason in text(),
            audit_rules in proptest::collection::vec(arc_text(), 0..3),
            bytes_in in proptest::option::of(any::<u64>()),
            bytes_out in proptest::option::of(any::<u64>()),
            duration_ms in proptest::option::of(any::<u64>()),
            method in proptest::option::of(text()),
            path in proptest::option::of(text()),
            authority in proptest::option::of(text()),
            status in proptest::option::of(any::<u16>()),
        ) -> Record {
            Record {
                timestamp: SystemTime::UNIX_EPOCH + Duration::new(secs, nanos),
                kind,
                listener,
                direction: if inbound { Direction::Inbound } else { Direction::Outbound },
                peer_id,
                peer_serial,
                src,
                dst,
                forwarded_for,
                rule,
                decision: if allow { Decision::Allow } else { Decision::Deny },
                reason: reason.into(),
                audit_rules,
                bytes_in,
                bytes_out,
                duration_ms,
                method,
                path,
                authority,
                status,
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The hand-written line is exactly what serde_json makes of the same record.
        #[test]
        fn write_json_matches_serde_json(r in record()) {
            let mut line = Vec::new();
            r.write_json(&mut line);
            let reference = serde_json::to_string(&r).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(String::from_utf8_lossy(&line), reference);
        }
    }

    #[test]
    fn timestamps_at_the_edges_of_the_calendar() {
        let line = |t: SystemTime| {
            let mut out = Vec::new();
            push_rfc3339_millis(&mut out, t);
            String::from_utf8(out).unwrap_or_default()
        };
        let epoch = SystemTime::UNIX_EPOCH;
        assert_eq!(line(epoch), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            line(epoch + Duration::from_millis(951_782_400_007)),
            "2000-02-29T00:00:00.007Z"
        );
        assert_eq!(
            line(epoch + Duration::from_secs(4_107_542_399)),
            "2100-02-28T23:59:59.000Z"
        );
        // A clock before 1970 or past 9999 does not panic and stays well formed.
        assert_eq!(line(epoch - Duration::from_secs(1)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            line(epoch + Duration::from_secs(300_000_000_000)),
            "9999-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn any_certificate_date_formats_without_panic() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert!(rfc3339(-1).contains("before 1970"));
        assert!(rfc3339(i64::MIN).contains("before 1970"));
        assert!(rfc3339(i64::MAX).contains("after 9999"));
        assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
    }
}
