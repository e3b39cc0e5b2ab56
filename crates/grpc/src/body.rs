//! Request bodies that can be sent again, and the response body handed to the caller.
//!
//! A request body that is complete when the call starts and fits in the replay limit (a unary
//! call's one message: tonic encodes it at once) is kept as bytes and can be sent to any number
//! of instances. Any other body (a client stream, a message above the limit) is sent once: it
//! can still go to another instance when the first never received it (the connection could not
//! be opened, or hyper handed the request back unsent), but it is never retried after it left.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};
use waypost_client::{InstancePermit, OutlierDetector};
use waypost_core_types::{CallGuard, Outcome, ServiceInfo};

use crate::metrics::{CallOutcome, CallRecord};
use crate::pool::StreamGuard;
use crate::status::{counts_as_failure, instance_part, missing_status, normalize};

/// The boxed error of the bodies here.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body as the channel sends it.
#[derive(Debug)]
pub enum RequestBody {
    /// A complete body, sent again as is on a retry.
    Full {
        /// The data left to send.
        data: Option<Bytes>,
        /// The trailers, if the caller sent any.
        trailers: Option<HeaderMap>,
    },
    /// A body that is sent once: the frames read while checking whether it was complete, then
    /// the rest of the caller's body.
    Stream {
        /// Frames already read, sent first.
        prefix: std::collections::VecDeque<Frame<Bytes>>,
        /// The rest.
        rest: tonic::body::Body,
    },
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            RequestBody::Full { data, trailers } => {
                if let Some(d) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            RequestBody::Stream { prefix, rest } => {
                if let Some(f) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(f)));
                }
                Pin::new(rest)
                    .poll_frame(cx)
                    .map(|f| f.map(|r| r.map_err(|s| Box::new(s) as BoxError)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Full { data, trailers } => data.is_none() && trailers.is_none(),
            RequestBody::Stream { prefix, rest } => prefix.is_empty() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestBody::Stream { .. } => SizeHint::default(),
        }
    }
}

/// The caller's body, read as far as it is ready now.
pub(crate) enum Prepared {
    /// Complete and within the limit: replayable.
    Replayable(Bytes, Option<HeaderMap>),
    /// Not complete yet, or above the limit: sent once (`None` once it is out).
    Once(Option<RequestBody>),
}

impl Prepared {
    /// The body for one attempt: a copy of a replayable body, or the one-shot body if it has
    /// not been taken (or was given back unsent).
    pub(crate) fn take(&mut self) -> Option<RequestBody> {
        match self {
            Prepared::Replayable(data, trailers) => Some(RequestBody::Full {
                data: (!data.is_empty()).then(|| data.clone()),
                trailers: trailers.clone(),
            }),
            Prepared::Once(body) => body.take(),
        }
    }

    /// Gives back a body that was never sent (a one-shot body can then go to another instance).
    pub(crate) fn give_back(&mut self, body: RequestBody) {
        if let Prepared::Once(slot) = self {
            *slot = Some(body);
        }
    }

    /// The length of a replayable body (what every attempt sends), zero for a one-shot body
    /// (its length is not known before it is sent).
    pub(crate) fn replayable_len(&self) -> u64 {
        match self {
            Prepared::Replayable(data, _) => data.len() as u64,
            Prepared::Once(_) => 0,
        }
    }

    /// Whether the body can be sent again after it was sent.
    pub(crate) fn replayable(&self) -> bool {
        matches!(self, Prepared::Replayable(..))
    }
}

/// Reads the frames of `body` that are ready without waiting, up to `limit` bytes of data.
pub(crate) fn prepare(mut body: tonic::body::Body, limit: usize) -> Prepared {
    if body.is_end_stream() {
        return Prepared::Replayable(Bytes::new(), None);
    }
    let mut cx = Context::from_waker(Waker::noop());
    let mut buf = BytesMut::new();
    let mut frames = std::collections::VecDeque::new();
    let mut trailers = None;
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(None) => break,
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    buf.extend_from_slice(&data);
                    frames.push_back(Frame::data(data));
                    if buf.len() > limit {
                        return Prepared::Once(Some(RequestBody::Stream {
                            prefix: frames,
                            rest: body,
                        }));
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(t);
                    }
                    break;
                }
            },
            // An error of the caller's body: passed on by sending the body as it is, so the
            // call fails with it.
            Poll::Ready(Some(Err(e))) => {
                return Prepared::Once(Some(RequestBody::Stream {
                    prefix: frames,
                    rest: tonic::body::Body::new(ErrorBody(Some(e))),
                }))
            }
            Poll::Pending => {
                return Prepared::Once(Some(RequestBody::Stream {
                    prefix: frames,
                    rest: body,
                }))
            }
        }
    }
    Prepared::Replayable(buf.freeze(), trailers)
}

/// A body whose only frame is an error.
struct ErrorBody(Option<tonic::Status>);

impl Body for ErrorBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.get_mut().0.take().map(Err))
    }
}

/// Reports the end of a call to the balancer and the outlier detector when the response ends.
pub(crate) struct Finish {
    pub(crate) guard: CallGuard,
    pub(crate) permit: Option<(InstancePermit, Arc<OutlierDetector>)>,
    pub(crate) instance: String,
    /// Held while the call runs on a connection, so that a draining connection closes after it.
    pub(crate) stream: Option<StreamGuard>,
}

impl Finish {
    pub(crate) fn report(self, outcome: Outcome) {
        let Finish {
            guard,
            permit,
            instance,
            stream,
        } = self;
        drop(stream);
        guard.finish(outcome);
        if let Some((p, d)) = permit {
            p.finish(&d, &instance, outcome);
        }
    }
}

/// The response body: the server's, reporting the call's outcome when it ends (from the status
/// in its trailers), and bounded by the call's deadline.
pub struct ResponseBody {
    inner: Incoming,
    finish: Option<Finish>,
    deadline: Option<(Pin<Box<Sleep>>, String)>,
    /// Whether a status came (in the headers, or in trailers): if the body ends without one,
    /// trailers saying so are added.
    status_seen: bool,
    /// The service and the instance the response came from, named in error statuses.
    origin: (String, Arc<ServiceInfo>),
    /// The call's metrics, recorded when the response ends.
    record: Option<CallRecord>,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}

impl ResponseBody {
    /// `deadline` with the message of the `DEADLINE_EXCEEDED` status it ends the body with.
    pub(crate) fn new(
        inner: Incoming,
        finish: Finish,
        deadline: Option<(Instant, String)>,
        status_seen: bool,
        origin: (String, Arc<ServiceInfo>),
        record: CallRecord,
    ) -> Self {
        ResponseBody {
            inner,
            finish: Some(finish),
            deadline: deadline.map(|(at, msg)| (Box::pin(tokio::time::sleep_until(at)), msg)),
            status_seen,
            origin,
            record: Some(record),
        }
    }

    fn report(&mut self, outcome: Outcome) {
        if let Some(f) = self.finish.take() {
            f.report(outcome);
        }
    }

    /// Records the call's end (once).
    fn record(&mut self, outcome: CallOutcome) {
        if let Some(r) = self.record.take() {
            r.end(outcome);
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // Dropped before its end: the caller gave up on the call.
        self.record(CallOutcome::Cancelled);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.deadline = None;
                if this.status_seen {
                    this.report(Outcome::Success);
                    this.record(CallOutcome::Success);
                    return Poll::Ready(None);
                }
                // Not a gRPC response: no status at all. The caller gets one naming the origin.
                this.status_seen = true;
                this.report(Outcome::Failure);
                this.record(CallOutcome::of(tonic::Code::Internal));
                let at = instance_part(&this.origin.0, &this.origin.1);
                Poll::Ready(Some(Ok(Frame::trailers(missing_status(&at)))))
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_trailers() {
                Ok(mut t) => {
                    let mut code = normalize(&mut t, None, &this.origin.0, &this.origin.1);
                    if code.is_none() && !this.status_seen {
                        let at = instance_part(&this.origin.0, &this.origin.1);
                        t.extend(missing_status(&at));
                        code = Some(tonic::Code::Internal);
                    }
                    let failed = code.is_some_and(counts_as_failure);
                    this.status_seen = this.status_seen || code.is_some();
                    this.deadline = None;
                    this.report(if failed {
                        Outcome::Failure
                    } else {
                        Outcome::Success
                    });
                    this.record(CallOutcome::of(code.unwrap_or(tonic::Code::Ok)));
                    Poll::Ready(Some(Ok(Frame::trailers(t))))
                }
                Err(frame) => {
                    if let (Some(data), Some(r)) = (frame.data_ref(), &mut this.record) {
                        r.received += data.len() as u64;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
            },
            Poll::Ready(Some(Err(e))) => {
                this.deadline = None;
                this.report(Outcome::Failure);
                this.record(CallOutcome::TransportError);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Pending => {
                if let Some((sleep, msg)) = &mut this.deadline {
                    if sleep.as_mut().poll(cx).is_ready() {
                        let status = tonic::Status::deadline_exceeded(std::mem::take(msg));
                        this.deadline = None;
                        this.report(Outcome::Failure);
                        this.record(CallOutcome::Timeout);
                        return Poll::Ready(Some(Err(Box::new(status))));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.status_seen && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.status_seen {
            self.inner.size_hint()
        } else {
            SizeHint::default()
        }
    }
}

use std::future::Future as _;
