//! Bodies: a request body that counts its bytes on the way to the upstream ([`Counted`]), and
//! the one type of every response body ward sends ([`ResponseBody`]), which counts the bytes
//! it sends, hands a pooled app connection back when the upstream's body has ended, and
//! writes its request's audit record at its end.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::audit::Record;
use crate::metrics::ListenerMetrics;
use crate::state::Shared;

/// A short text response of ward's own.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody {
        inner: Either::Right(Full::new(body.into())),
        on_end: None,
        record: None,
    });
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

pin_project_lite::pin_project! {
    /// A request body that counts the bytes of its data frames into a shared counter.
    pub struct Counted<B> {
        #[pin]
        inner: B,
        count: Arc<AtomicU64>,
    }
}

impl<B> Counted<B> {
    pub fn new(inner: B, count: Arc<AtomicU64>) -> Self {
        Counted { inner, count }
    }
}

impl<B: Body<Data = Bytes>> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What to do once an upstream's body has ended (a pooled HTTP/1.1 connection to the app
/// goes back to its pool). Not called when the body fails or is dropped before its end: the
/// connection then closes with it.
pub type OnEnd = Box<dyn FnOnce() + Send>;

/// Every response body ward sends: the upstream's (the app's or a peer sidecar's), streamed,
/// or a short one of ward's own ([`text`]). It counts the bytes it sends, runs its [`OnEnd`]
/// when the upstream's body has ended, and writes its request's record at its end (or, via
/// [`PendingRecord`]'s drop, when it is dropped before: the client went away).
pub struct ResponseBody {
    inner: Either<Incoming, Full<Bytes>>,
    on_end: Option<OnEnd>,
    record: Option<PendingRecord>,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("upstream", &matches!(self.inner, Either::Left(_)))
            .field("on_end", &self.on_end.is_some())
            .finish_non_exhaustive()
    }
}

impl ResponseBody {
    /// The body of an upstream's response, streamed.
    pub fn upstream(inner: Incoming) -> Self {
        ResponseBody {
            inner: Either::Left(inner),
            on_end: None,
            record: None,
        }
    }

    /// Runs `f` once this upstream's body has ended.
    pub fn on_end(&mut self, f: OnEnd) {
        self.on_end = Some(f);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        // Every field is Unpin (hyper's Incoming, Full, boxes): no projection needed.
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        // The record is written at the end of the stream, or when hyper drops the body after
        // its last frame (PendingRecord's drop): after the response is on its way, never in
        // front of its last bytes.
        let ended = match &polled {
            Poll::Ready(None) => {
                if let Some(mut r) = this.record.take() {
                    r.write(0);
                }
                true
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(r)) = (frame.data_ref(), this.record.as_mut()) {
                    r.bytes_out += data.len() as u64;
                }
                // hyper's servers stop polling once a body says it has ended, or after trailers.
                frame.is_trailers() || this.inner.is_end_stream()
            }
            Poll::Ready(Some(Err(_))) => {
                this.on_end = None;
                if let Some(mut r) = this.record.take() {
                    r.write(0);
                }
                false
            }
            Poll::Pending => false,
        };
        if ended && let Some(f) = this.on_end.take() {
            f();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The record of one request, written once when its response body ends or is dropped.
pub struct PendingRecord {
    record: Option<Record>,
    shared: Arc<Shared>,
    metrics: Arc<ListenerMetrics>,
    started: Instant,
    bytes_in: Arc<AtomicU64>,
    bytes_out: u64,
}

impl PendingRecord {
    pub fn new(
        record: Record,
        shared: Arc<Shared>,
        metrics: Arc<ListenerMetrics>,
        started: Instant,
        bytes_in: Arc<AtomicU64>,
    ) -> Self {
        PendingRecord {
            record: Some(record),
            shared,
            metrics,
            started,
            bytes_in,
            bytes_out: 0,
        }
    }

    fn write(&mut self, status: u16) {
        if let Some(mut r) = self.record.take() {
            r.status = r.status.or(Some(status));
            r.bytes_in = Some(self.bytes_in.load(Ordering::Relaxed));
            r.bytes_out = Some(self.bytes_out);
            let elapsed = self.started.elapsed();
            r.duration_ms = Some(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
            self.metrics.request_duration.observe(elapsed.as_secs_f64());
            self.shared.record(&r);
        }
    }

    /// The record, to complete before the response is attached (who the peer proved to be,
    /// once the request found a connection).
    pub fn record_mut(&mut self) -> Option<&mut Record> {
        self.record.as_mut()
    }

    /// Puts the record in the response's body, which writes it when it ends.
    pub fn attach(mut self, mut resp: Response<ResponseBody>) -> Response<ResponseBody> {
        if let Some(r) = self.record.as_mut() {
            r.status = Some(resp.status().as_u16());
        }
        resp.body_mut().record = Some(self);
        resp
    }
}

impl Drop for PendingRecord {
    fn drop(&mut self) {
        // A response dropped before its end (client went away) is still recorded.
        self.write(499);
    }
}

/// hyper services never fail: every error becomes a response.
pub type ServiceResult = Result<Response<ResponseBody>, Infallible>;
