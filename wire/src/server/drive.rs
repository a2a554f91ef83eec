//! Call drivers, one per call shape: run the handler (panics caught) raced
//! against the deadline and a client reset, then write the response —
//! headers, message(s), trailers, or Trailers-Only for errors.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt as _;
use futures_util::future::{LocalBoxFuture, poll_fn};

use crate::call::{CallContext, Request, Response, ResponseSink, SendPhase, SinkState, Streaming};
use crate::codec::{self, Encoding};
use crate::headers;
use crate::server::dispatch::{CallResponse, IncomingCall, Method, Report, send_trailers_only};
use crate::status::{Code, Status};

/// Longest `grpc-timeout` that arms a timer (30 days); longer ones, up to
/// the 99,999,999 hours the format allows, are treated as no deadline.
const DEADLINE_TIMER_MAX: Duration = Duration::from_secs(30 * 24 * 3600);

/// The framed zero-length message (flag 0, length 0): sent without allocating.
const EMPTY_MESSAGE_FRAME: &[u8] = &[0; codec::HEADER_BYTES];

/// How a raced call ended.
enum Outcome<T> {
    /// The work finished with this value.
    Done(T),
    /// The client reset the stream.
    Reset,
    /// The response waited for send capacity beyond the stall timeout.
    Stalled,
    /// The deadline passed first.
    DeadlineExceeded,
}

/// Runs `work` until it finishes, `poll_abort` reports a client reset or
/// a send stall, or `timeout` passes. `work` is dropped before this returns, so a handler is
/// cancelled before any response is written.
///
/// `work` is pinned by the caller: passing the (large) call future by
/// value would store it twice in this future's state.
async fn race<F, R>(
    mut work: Pin<&mut F>,
    mut poll_abort: R,
    timeout: Option<Duration>,
) -> Outcome<F::Output>
where
    F: Future,
    R: FnMut(&mut Context<'_>) -> Poll<Abort>,
{
    // Beyond the cap a deadline is as good as none (and would overflow timers).
    let timeout = timeout.filter(|timeout| *timeout <= DEADLINE_TIMER_MAX);
    let mut timer = timeout.map(glommio::timer::Timer::new);
    poll_fn(|cx| {
        if let Poll::Ready(output) = work.as_mut().poll(cx) {
            return Poll::Ready(Outcome::Done(output));
        }
        match poll_abort(cx) {
            Poll::Ready(Abort::Reset) => return Poll::Ready(Outcome::Reset),
            Poll::Ready(Abort::Stalled) => return Poll::Ready(Outcome::Stalled),
            Poll::Pending => {}
        }
        match timer.as_mut().map(|timer| Pin::new(timer).poll(cx)) {
            Some(Poll::Ready(_)) => Poll::Ready(Outcome::DeadlineExceeded),
            _ => Poll::Pending,
        }
    })
    .await
}

/// Why a call stops before its work finished.
enum Abort {
    /// The client reset the stream.
    Reset,
    /// The response waited for send capacity beyond the stall timeout.
    Stalled,
}

/// Calls the handler, turning a panic (while building or polling its
/// future) into UNKNOWN. The connection and the process live on.
async fn invoke<T, Fut>(start: impl FnOnce() -> Fut) -> Result<T, Status>
where
    Fut: Future<Output = Result<T, Status>>,
{
    let panicked = |_| Status::unknown("handler panicked");
    let future = std::panic::catch_unwind(AssertUnwindSafe(start)).map_err(panicked)?;
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(panicked)?
}

/// Cancels the context unless the call completed: a driver dropped with its
/// connection still tells work queued elsewhere to stop.
struct CancelOnDrop {
    context: CallContext,
    completed: bool,
}

impl CancelOnDrop {
    fn new(context: &CallContext) -> CancelOnDrop {
        CancelOnDrop {
            context: context.clone(),
            completed: false,
        }
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.completed {
            self.context.cancel();
        }
    }
}

/// Drives a call whose response is one message (unary, client streaming).
async fn drive_single_response<Resp, W>(
    response: CallResponse,
    context: &CallContext,
    work: Pin<&mut W>,
) where
    Resp: prost::Message,
    W: Future<Output = Result<Response<Resp>, Status>>,
{
    let mut guard = CancelOnDrop::new(context);
    let CallResponse {
        mut respond,
        timeout,
        accept_encoding_gzip,
        max_message_bytes,
        report,
        send_stall_timeout,
        stalled_streams,
    } = response;
    let poll_reset = |cx: &mut Context<'_>| respond.poll_reset(cx).map(|_| Abort::Reset);
    let outcome = race(work, poll_reset, timeout).await;
    let code = match outcome {
        Outcome::Done(Ok(message)) => {
            let limits = (max_message_bytes, send_stall_timeout);
            let sent = send_single_response(respond, message, accept_encoding_gzip, limits).await;
            if sent == Sent::Stalled {
                stalled_streams.set(stalled_streams.get() + 1);
            }
            sent.code()
        }
        Outcome::Done(Err(status)) => {
            let code = status.code();
            send_trailers_only(respond, status);
            code
        }
        Outcome::DeadlineExceeded => {
            context.cancel();
            send_trailers_only(respond, Status::deadline_exceeded("deadline exceeded"));
            Code::DEADLINE_EXCEEDED
        }
        Outcome::Reset | Outcome::Stalled => {
            context.cancel();
            Code::CANCELLED
        }
    };
    guard.completed = true;
    if let Some(report) = report {
        report.finish(code);
    }
}

/// How a single-message response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Sent with this status.
    Status(Code),
    /// The client went away (reset or closed) first.
    Gone,
    /// The client read nothing for the stall timeout: the stream was reset.
    Stalled,
}

impl Sent {
    /// The code reported for the call.
    fn code(self) -> Code {
        match self {
            Sent::Status(code) => code,
            Sent::Gone | Sent::Stalled => Code::CANCELLED,
        }
    }
}

/// Writes a single-message response: headers, the message as DATA within
/// flow control, trailers. `(max_message_bytes, send_stall_timeout)`.
async fn send_single_response<Resp: prost::Message>(
    mut respond: h2::server::SendResponse<Bytes>,
    response: Response<Resp>,
    accept_encoding_gzip: bool,
    (max_message_bytes, send_stall_timeout): (usize, Option<Duration>),
) -> Sent {
    let encoding = match response.compression() {
        Encoding::Gzip if accept_encoding_gzip => Encoding::Gzip,
        _ => Encoding::Identity,
    };
    let (metadata, message, trailers) = response.into_parts();
    let frame = match encode_response(&message, encoding, max_message_bytes) {
        Ok(frame) => frame,
        Err(status) => {
            let code = status.code();
            send_trailers_only(respond, status);
            return Sent::Status(code);
        }
    };
    let head = headers::response_head(encoding, metadata);
    let Ok(mut stream) = respond.send_response(head, false) else {
        return Sent::Gone;
    };
    match send_within_capacity(&mut stream, frame, send_stall_timeout).await {
        Sent::Status(_) => {}
        Sent::Stalled => {
            stream.send_reset(h2::Reason::CANCEL);
            return Sent::Stalled;
        }
        Sent::Gone => return Sent::Gone,
    }
    let _ = stream.send_trailers(headers::ok_trailers(trailers));
    Sent::Status(Code::OK)
}

/// Sends `data` no faster than the client's windows admit, so h2 never
/// queues more for a stream than its window (a client that does not read
/// cannot make the server hold its responses). Capacity is usually there
/// at once; waiting longer than `stall_timeout` gives [`Sent::Stalled`].
async fn send_within_capacity(
    stream: &mut h2::SendStream<Bytes>,
    mut data: Bytes,
    stall_timeout: Option<Duration>,
) -> Sent {
    let mut stall = StallWatch::new(stall_timeout);
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let mut waiting_since = None;
        let capacity = poll_fn(|cx| {
            loop {
                let capacity = stream.capacity();
                if capacity > 0 {
                    return Poll::Ready(Ok(capacity));
                }
                match stream.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(_))) => continue,
                    Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(Err(Sent::Gone)),
                    Poll::Pending => break,
                }
            }
            let since = *waiting_since.get_or_insert_with(Instant::now);
            stall.poll(cx, Some(since)).map(|_| Err(Sent::Stalled))
        })
        .await;
        let capacity = match capacity {
            Ok(capacity) => capacity,
            Err(sent) => return sent,
        };
        let chunk = data.split_to(capacity.min(data.len()));
        if stream.send_data(chunk, false).is_err() {
            return Sent::Gone;
        }
    }
    Sent::Status(Code::OK)
}

/// Frames one response message, refusing it beyond the size limit.
fn encode_response<Resp: prost::Message>(
    message: &Resp,
    encoding: Encoding,
    max_message_bytes: usize,
) -> Result<Bytes, Status> {
    let body_bytes = message.encoded_len();
    if body_bytes > max_message_bytes {
        return Err(Status::resource_exhausted(format!(
            "response message of {body_bytes} bytes exceeds the limit of {max_message_bytes} bytes"
        )));
    }
    if body_bytes == 0 && encoding == Encoding::Identity {
        return Ok(Bytes::from_static(EMPTY_MESSAGE_FRAME));
    }
    let mut frame = BytesMut::with_capacity(codec::HEADER_BYTES + body_bytes);
    codec::encode_message_with(message, encoding, &mut frame).map_err(|e| e.to_status())?;
    Ok(frame.freeze())
}

/// Drives a call whose response is a stream (server streaming, bidi).
async fn drive_streamed_response<W>(
    state: Rc<RefCell<SinkState>>,
    limits: StreamedLimits,
    context: &CallContext,
    work: Pin<&mut W>,
) where
    W: Future<Output = Result<(), Status>>,
{
    let mut guard = CancelOnDrop::new(context);
    let mut stall = StallWatch::new(limits.send_stall_timeout);
    // The handler may hold `trailers_mut()` across an await: skip the
    // checks for that poll rather than panic on the borrow.
    let poll_abort = |cx: &mut Context<'_>| match state.try_borrow_mut() {
        Ok(mut state) => match state.poll_reset(cx) {
            Poll::Ready(()) => Poll::Ready(Abort::Reset),
            Poll::Pending => stall.poll(cx, state.capacity_wait_since),
        },
        Err(_) => Poll::Pending,
    };
    let code = match race(work, poll_abort, limits.timeout).await {
        Outcome::Done(result) => {
            let status = result.err().unwrap_or_else(Status::ok);
            let code = status.code();
            finish_sink(&state, status);
            code
        }
        Outcome::DeadlineExceeded => {
            context.cancel();
            finish_sink(&state, Status::deadline_exceeded("deadline exceeded"));
            Code::DEADLINE_EXCEEDED
        }
        Outcome::Reset => {
            context.cancel();
            Code::CANCELLED
        }
        Outcome::Stalled => {
            context.cancel();
            reset_stalled(&state);
            limits.stalled_streams.set(limits.stalled_streams.get() + 1);
            Code::CANCELLED
        }
    };
    guard.completed = true;
    if let Some(report) = limits.report {
        report.finish(code);
    }
}

/// Fires when a response has waited for send capacity, without a break,
/// for the stall timeout.
struct StallWatch {
    timeout: Option<Duration>,
    /// The wait being timed (its start) and its timer.
    armed: Option<(Instant, glommio::timer::Timer)>,
}

impl StallWatch {
    fn new(timeout: Option<Duration>) -> StallWatch {
        StallWatch {
            timeout,
            armed: None,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>, waiting_since: Option<Instant>) -> Poll<Abort> {
        let (Some(timeout), Some(since)) = (self.timeout, waiting_since) else {
            self.armed = None;
            return Poll::Pending;
        };
        let timer = match &mut self.armed {
            Some((armed_for, timer)) if *armed_for == since => timer,
            slot => {
                let left = timeout.saturating_sub(since.elapsed());
                &mut slot.insert((since, glommio::timer::Timer::new(left))).1
            }
        };
        Pin::new(timer).poll(cx).map(|_| Abort::Stalled)
    }
}

/// Resets a stream whose client stopped reading: h2 drops what it had
/// buffered for it.
fn reset_stalled(state: &RefCell<SinkState>) {
    let Ok(mut state) = state.try_borrow_mut() else {
        return;
    };
    if let SendPhase::Open(mut stream) = std::mem::replace(&mut state.phase, SendPhase::Closed) {
        tracing::debug!("response stalled on a client that does not read: stream reset");
        stream.send_reset(h2::Reason::CANCEL);
    }
}

/// Ends a streamed response with `status` (Trailers-Only if nothing was sent).
fn finish_sink(state: &RefCell<SinkState>, status: Status) {
    // Only a sink moved out of the handler (into another task) can still be
    // borrowed here; its stream is then reset when that task drops it.
    let Ok(mut state) = state.try_borrow_mut() else {
        tracing::warn!("response sink still in use after its handler returned");
        return;
    };
    let trailers = std::mem::take(&mut state.trailers);
    match std::mem::replace(&mut state.phase, SendPhase::Closed) {
        SendPhase::Pending(mut respond) => {
            let _ = respond.send_response(headers::trailers_only(status, trailers), true);
        }
        SendPhase::Open(mut stream) => {
            let _ = stream.send_trailers(headers::trailers(status, trailers));
        }
        SendPhase::Closed => {}
    }
}

/// The limits and outcome report of a streamed response.
struct StreamedLimits {
    timeout: Option<Duration>,
    report: Option<Report>,
    send_stall_timeout: Option<Duration>,
    stalled_streams: Rc<Cell<u32>>,
}

/// The shared response state of a streamed response and the handler's sink.
fn sink<Resp: prost::Message>(
    response: CallResponse,
) -> (Rc<RefCell<SinkState>>, StreamedLimits, ResponseSink<Resp>) {
    let state = SinkState::new(
        response.respond,
        response.accept_encoding_gzip,
        response.max_message_bytes,
    );
    let state = Rc::new(RefCell::new(state));
    let sink = ResponseSink::new(state.clone());
    let limits = StreamedLimits {
        timeout: response.timeout,
        report: response.report,
        send_stall_timeout: response.send_stall_timeout,
        stalled_streams: response.stalled_streams,
    };
    (state, limits, sink)
}

macro_rules! method_struct {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub(crate) struct $name<Req, Resp, H> {
            handler: H,
            _types: PhantomData<fn(Req) -> Resp>,
        }

        impl<Req, Resp, H> $name<Req, Resp, H> {
            pub(crate) fn new(handler: H) -> Self {
                $name {
                    handler,
                    _types: PhantomData,
                }
            }
        }
    };
}

method_struct!(
    /// A unary method.
    UnaryMethod
);
method_struct!(
    /// A server-streaming method.
    ServerStreamingMethod
);
method_struct!(
    /// A client-streaming method.
    ClientStreamingMethod
);
method_struct!(
    /// A bidirectional-streaming method.
    BidiStreamingMethod
);

impl<Req, Resp, H, Fut> Method for UnaryMethod<Req, Resp, H>
where
    Req: prost::Message + Default + 'static,
    Resp: prost::Message + 'static,
    H: Fn(Request<Req>) -> Fut + 'static,
    Fut: Future<Output = Result<Response<Resp>, Status>> + 'static,
{
    fn call(self: Rc<Self>, call: IncomingCall) -> LocalBoxFuture<'static, ()> {
        Box::pin(async move {
            let IncomingCall { request, response } = call;
            let context = request.context.clone();
            let work = pin!(async {
                let request = request.single::<Req>().await?;
                invoke(|| (self.handler)(request)).await
            });
            drive_single_response(response, &context, work).await;
        })
    }
}

impl<Req, Resp, H, Fut> Method for ClientStreamingMethod<Req, Resp, H>
where
    Req: prost::Message + Default + 'static,
    Resp: prost::Message + 'static,
    H: Fn(Request<Streaming<Req>>) -> Fut + 'static,
    Fut: Future<Output = Result<Response<Resp>, Status>> + 'static,
{
    fn call(self: Rc<Self>, call: IncomingCall) -> LocalBoxFuture<'static, ()> {
        Box::pin(async move {
            let IncomingCall { request, response } = call;
            let context = request.context.clone();
            let work = pin!(invoke(|| (self.handler)(request.streaming::<Req>())));
            drive_single_response(response, &context, work).await;
        })
    }
}

impl<Req, Resp, H, Fut> Method for ServerStreamingMethod<Req, Resp, H>
where
    Req: prost::Message + Default + 'static,
    Resp: prost::Message + 'static,
    H: Fn(Request<Req>, ResponseSink<Resp>) -> Fut + 'static,
    Fut: Future<Output = Result<(), Status>> + 'static,
{
    fn call(self: Rc<Self>, call: IncomingCall) -> LocalBoxFuture<'static, ()> {
        Box::pin(async move {
            let IncomingCall { request, response } = call;
            let context = request.context.clone();
            let (state, limits, sink) = sink::<Resp>(response);
            let work = pin!(async {
                let request = request.single::<Req>().await?;
                invoke(|| (self.handler)(request, sink)).await
            });
            drive_streamed_response(state, limits, &context, work).await;
        })
    }
}

impl<Req, Resp, H, Fut> Method for BidiStreamingMethod<Req, Resp, H>
where
    Req: prost::Message + Default + 'static,
    Resp: prost::Message + 'static,
    H: Fn(Request<Streaming<Req>>, ResponseSink<Resp>) -> Fut + 'static,
    Fut: Future<Output = Result<(), Status>> + 'static,
{
    fn call(self: Rc<Self>, call: IncomingCall) -> LocalBoxFuture<'static, ()> {
        Box::pin(async move {
            let IncomingCall { request, response } = call;
            let context = request.context.clone();
            let (state, limits, sink) = sink::<Resp>(response);
            let work = pin!(invoke(|| {
                (self.handler)(request.streaming::<Req>(), sink)
            }));
            drive_streamed_response(state, limits, &context, work).await;
        })
    }
}
