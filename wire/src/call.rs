//! The typed view of one call that handlers (server) and callers (client)
//! see: [`Request`], [`Response`], inbound [`Streaming`] messages, the
//! outbound [`ResponseSink`], and the [`CallContext`] carrying deadline and
//! cancellation.
//!
//! All of it is `!Send`: a call lives on the executor of its connection.

use std::cell::{OnceCell, RefCell};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::future::poll_fn;
use h2::RecvStream;
use h2::server::SendResponse;

use crate::codec::{self, CodecError, Encoding, MessageDecoder};
use crate::event::{Event, EventWait};
use crate::headers;
use crate::metadata::Metadata;
use crate::status::{Code, Status};

/// A boxed timer future (client-side deadlines).
pub(crate) type Sleep = Pin<Box<dyn Future<Output = ()>>>;

/// What a handler knows about its call besides the message: the method, the
/// deadline, the peer, and whether the call was cancelled.
///
/// Cheap to clone (one `Rc`); clone it into work queued elsewhere (e.g. the
/// engine) so that work can be dropped once the caller is gone.
#[derive(Clone)]
pub struct CallContext {
    inner: Rc<ContextInner>,
}

struct ContextInner {
    method: &'static str,
    deadline: Option<Instant>,
    connection: Rc<ConnectionInfo>,
    /// Who the call acts for, once an interceptor authenticated it.
    principal: OnceCell<Rc<str>>,
    cancelled: Event,
    /// Created on first request: the cross-core view of `cancelled`.
    cancel_token: OnceCell<CancelToken>,
}

/// A `Send` view of a call's cancellation, for work queued on another core
/// (the `CallContext` itself is `!Send`). Cheap to clone; polling it is one
/// atomic load.
#[derive(Debug, Clone, Default)]
pub struct CancelToken {
    cancelled: Arc<AtomicBool>,
}

impl CancelToken {
    /// Whether the call was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }
}

/// What the transport knows about the peer of a connection; shared by every
/// call on it.
#[derive(Debug, Clone, Default)]
pub struct ConnectionInfo {
    /// The peer's socket address, when the transport has one.
    pub peer_addr: Option<SocketAddr>,
    /// Whether the connection is encrypted (TLS).
    pub tls: bool,
    /// The client's identity from a verified TLS client certificate (mTLS),
    /// if it presented one.
    pub tls_principal: Option<Rc<str>>,
}

impl ConnectionInfo {
    /// A plaintext connection from `peer_addr`.
    pub fn plaintext(peer_addr: Option<SocketAddr>) -> ConnectionInfo {
        ConnectionInfo {
            peer_addr,
            ..ConnectionInfo::default()
        }
    }
}

impl CallContext {
    /// A context for `method` with an optional deadline and peer.
    pub fn new(
        method: &'static str,
        deadline: Option<Instant>,
        peer_addr: Option<SocketAddr>,
    ) -> CallContext {
        let connection = Rc::new(ConnectionInfo::plaintext(peer_addr));
        CallContext::on_connection(method, deadline, connection)
    }

    /// A context for `method` on the connection described by `connection`.
    pub fn on_connection(
        method: &'static str,
        deadline: Option<Instant>,
        connection: Rc<ConnectionInfo>,
    ) -> CallContext {
        CallContext {
            inner: Rc::new(ContextInner {
                method,
                deadline,
                connection,
                principal: OnceCell::new(),
                cancelled: Event::new(),
                cancel_token: OnceCell::new(),
            }),
        }
    }

    /// The method path, e.g. `/shardlog.v1.Log/Produce`.
    pub fn method(&self) -> &'static str {
        self.inner.method
    }

    /// When the caller stops waiting (from `grpc-timeout`), if it said.
    pub fn deadline(&self) -> Option<Instant> {
        self.inner.deadline
    }

    /// The peer's socket address, when the transport has one.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.inner.connection.peer_addr
    }

    /// What the transport knows about the call's connection (TLS, client
    /// certificate identity).
    pub fn connection(&self) -> &ConnectionInfo {
        &self.inner.connection
    }

    /// Who the call acts for, as set by an [`Interceptor`](crate::server::Interceptor)
    /// that authenticated it; `None` when nothing did.
    pub fn principal(&self) -> Option<&str> {
        self.inner.principal.get().map(|principal| &**principal)
    }

    /// Records who the call acts for. The first value set stays: a call is
    /// authenticated once. Returns whether this call set it.
    pub fn set_principal(&self, principal: Rc<str>) -> bool {
        self.inner.principal.set(principal).is_ok()
    }

    /// Whether the call was cancelled (client reset, deadline, shutdown).
    pub fn is_cancelled(&self) -> bool {
        self.inner.cancelled.is_set()
    }

    /// Resolves once the call is cancelled. The handler's own future is
    /// dropped on cancellation; this is for work it handed elsewhere.
    pub fn cancelled(&self) -> impl Future<Output = ()> + '_ {
        EventWait::new(&self.inner.cancelled)
    }

    /// A `Send` token that reports this call's cancellation on any core.
    pub fn cancel_token(&self) -> CancelToken {
        let token = self.inner.cancel_token.get_or_init(|| {
            let token = CancelToken::default();
            if self.is_cancelled() {
                token.cancel();
            }
            token
        });
        token.clone()
    }

    /// Marks the call cancelled and wakes every `cancelled()` waiter.
    pub fn cancel(&self) {
        self.inner.cancelled.set();
        if let Some(token) = self.inner.cancel_token.get() {
            token.cancel();
        }
    }
}

impl fmt::Debug for CallContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallContext")
            .field("method", &self.inner.method)
            .field("deadline", &self.inner.deadline)
            .field("connection", &self.inner.connection)
            .field("principal", &self.inner.principal.get())
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

/// A request as a handler receives it: metadata, context and message (or
/// the inbound [`Streaming`] for client-streaming and bidi calls).
#[derive(Debug)]
pub struct Request<T> {
    metadata: Metadata,
    context: CallContext,
    message: T,
}

impl<T> Request<T> {
    /// A request with empty metadata and a context for method `""` (tests).
    pub fn new(message: T) -> Request<T> {
        Request::from_parts(Metadata::new(), CallContext::new("", None, None), message)
    }

    /// Assembles a request.
    pub fn from_parts(metadata: Metadata, context: CallContext, message: T) -> Request<T> {
        Request {
            metadata,
            context,
            message,
        }
    }

    /// The request headers (custom metadata plus protocol headers such as
    /// `content-type` and `user-agent`).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The call's context (deadline, cancellation, peer, method).
    pub fn context(&self) -> &CallContext {
        &self.context
    }

    /// The message.
    pub fn get_ref(&self) -> &T {
        &self.message
    }

    /// The message, mutably.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.message
    }

    /// Takes the message.
    pub fn into_inner(self) -> T {
        self.message
    }

    /// Splits into metadata, context and message.
    pub fn into_parts(self) -> (Metadata, CallContext, T) {
        (self.metadata, self.context, self.message)
    }
}

/// A response: leading metadata, the message (or inbound [`Streaming`] on
/// the client), trailing metadata, and the compression wished for it.
#[derive(Debug)]
pub struct Response<T> {
    metadata: Metadata,
    message: T,
    trailers: Metadata,
    compression: Encoding,
}

impl<T> Response<T> {
    /// A response carrying `message` and no metadata.
    pub fn new(message: T) -> Response<T> {
        Response {
            metadata: Metadata::new(),
            message,
            trailers: Metadata::new(),
            compression: Encoding::Identity,
        }
    }

    pub(crate) fn from_parts(metadata: Metadata, message: T, trailers: Metadata) -> Response<T> {
        Response {
            metadata,
            message,
            trailers,
            compression: Encoding::Identity,
        }
    }

    /// Leading metadata (response headers).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Leading metadata, mutably (server: sent before the message).
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    /// Trailing metadata (sent with `grpc-status`).
    pub fn trailers(&self) -> &Metadata {
        &self.trailers
    }

    /// Trailing metadata, mutably.
    pub fn trailers_mut(&mut self) -> &mut Metadata {
        &mut self.trailers
    }

    /// The message.
    pub fn get_ref(&self) -> &T {
        &self.message
    }

    /// The message, mutably (e.g. a client's inbound [`Streaming`]).
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.message
    }

    /// Takes the message.
    pub fn into_inner(self) -> T {
        self.message
    }

    /// Splits into leading metadata, message and trailing metadata.
    pub fn into_parts(self) -> (Metadata, T, Metadata) {
        (self.metadata, self.message, self.trailers)
    }

    /// Server: asks to compress the response message with `encoding`; used
    /// only if the client's `grpc-accept-encoding` lists it.
    pub fn set_compression(&mut self, encoding: Encoding) {
        self.compression = encoding;
    }

    /// The compression asked for with [`set_compression`](Self::set_compression).
    pub fn compression(&self) -> Encoding {
        self.compression
    }
}

/// Which side reads a [`Streaming`]: the client also reads trailers.
enum StreamRole {
    Server,
    /// Boxed: keeps the server's call futures small.
    Client(Box<ClientRole>),
}

/// What only the client side of a [`Streaming`] carries.
struct ClientRole {
    trailers: Option<Metadata>,
    deadline: Option<Sleep>,
}

/// Inbound messages of a streaming call, decoded lazily: the next DATA
/// chunk is pulled from h2 (and its flow-control capacity released) only
/// when the caller asks for a message, so at most one message plus one
/// chunk is buffered and an idle reader back-pressures the peer.
pub struct Streaming<T> {
    recv: RecvStream,
    decoder: MessageDecoder,
    encoding: Encoding,
    max_message_bytes: usize,
    role: StreamRole,
    finished: bool,
    _message: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Streaming<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streaming")
            .field("encoding", &self.encoding)
            .field("buffered_bytes", &self.decoder.buffered_bytes())
            .field("finished", &self.finished)
            .finish()
    }
}

impl<T: prost::Message + Default> Streaming<T> {
    pub(crate) fn server(recv: RecvStream, encoding: Encoding, max_message_bytes: usize) -> Self {
        Streaming::with_role(recv, encoding, max_message_bytes, StreamRole::Server)
    }

    pub(crate) fn client(
        recv: RecvStream,
        encoding: Encoding,
        max_message_bytes: usize,
        deadline: Option<Sleep>,
    ) -> Self {
        let role = StreamRole::Client(Box::new(ClientRole {
            trailers: None,
            deadline,
        }));
        Streaming::with_role(recv, encoding, max_message_bytes, role)
    }

    /// A client stream whose response was Trailers-Only with status OK.
    pub(crate) fn client_trailers_only(recv: RecvStream, trailers: Metadata) -> Self {
        let role = StreamRole::Client(Box::new(ClientRole {
            trailers: Some(trailers),
            deadline: None,
        }));
        let mut stream = Streaming::with_role(recv, Encoding::Identity, 0, role);
        stream.finished = true;
        stream
    }

    fn with_role(
        recv: RecvStream,
        encoding: Encoding,
        max_message_bytes: usize,
        role: StreamRole,
    ) -> Self {
        Streaming {
            recv,
            decoder: MessageDecoder::new(max_message_bytes),
            encoding,
            max_message_bytes,
            role,
            finished: false,
            _message: PhantomData,
        }
    }

    /// The next message; `Ok(None)` once the peer half-closed cleanly.
    ///
    /// Errors: INTERNAL for bad framing or protobuf, RESOURCE_EXHAUSTED for
    /// an over-limit message, CANCELLED when the peer reset the stream; on
    /// the client, the server's non-OK status and DEADLINE_EXCEEDED.
    pub async fn message(&mut self) -> Result<Option<T>, Status> {
        loop {
            if self.finished {
                return Ok(None);
            }
            if let Some(message) = self.decode_buffered()? {
                return Ok(Some(message));
            }
            let deadline = match &mut self.role {
                StreamRole::Client(client) => client.deadline.as_mut(),
                StreamRole::Server => None,
            };
            let recv = &mut self.recv;
            let chunk = match deadline {
                Some(deadline) => race_deadline(poll_fn(|cx| recv.poll_data(cx)), deadline).await?,
                None => poll_fn(|cx| recv.poll_data(cx)).await,
            };
            match chunk {
                Some(Ok(chunk)) => {
                    // Release as consumed: the decoder holds at most one
                    // message plus this chunk before the caller takes it.
                    let _ = self.recv.flow_control().release_capacity(chunk.len());
                    self.decoder.push(chunk);
                }
                Some(Err(error)) => {
                    self.finished = true;
                    return Err(status_from_h2(&error));
                }
                None => return self.finish().await.map(|()| None),
            }
        }
    }

    /// Client: the trailers, once [`message`](Self::message) returned `Ok(None)`.
    pub fn trailers(&self) -> Option<&Metadata> {
        match &self.role {
            StreamRole::Client(client) => client.trailers.as_ref(),
            StreamRole::Server => None,
        }
    }

    fn decode_buffered(&mut self) -> Result<Option<T>, Status> {
        let raw = match self.decoder.decode() {
            Ok(Some(raw)) => raw,
            Ok(None) => return Ok(None),
            Err(error) => return Err(self.fail(&error)),
        };
        let decoded = codec::plain_body(raw, self.encoding, self.max_message_bytes)
            .and_then(codec::decode_message::<T>);
        decoded.map(Some).map_err(|error| self.fail(&error))
    }

    fn fail(&mut self, error: &CodecError) -> Status {
        self.finished = true;
        error.to_status()
    }

    async fn finish(&mut self) -> Result<(), Status> {
        self.finished = true;
        if let Err(error) = self.decoder.finish() {
            return Err(error.to_status());
        }
        let StreamRole::Client(client) = &mut self.role else {
            return Ok(());
        };
        let ClientRole { trailers, deadline } = &mut **client;
        let recv = &mut self.recv;
        let received = match deadline {
            Some(deadline) => race_deadline(recv.trailers(), deadline).await?,
            None => recv.trailers().await,
        };
        let map = received.map_err(|error| status_from_h2(&error))?;
        let Some(map) = map else {
            return Err(Status::internal(
                "server closed the stream without grpc-status",
            ));
        };
        let status = headers::status_from_trailers(&map);
        *trailers = Some(Metadata::from_headers(map));
        match status {
            Some(status) if status.code() == Code::OK => Ok(()),
            Some(status) => Err(status.with_metadata(trailers.clone().unwrap_or_default())),
            None => Err(Status::internal("trailers without grpc-status")),
        }
    }
}

/// Awaits `future` unless `deadline` fires first (DEADLINE_EXCEEDED).
pub(crate) async fn race_deadline<F: Future>(
    future: F,
    deadline: &mut Sleep,
) -> Result<F::Output, Status> {
    let mut future = std::pin::pin!(future);
    poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Status::deadline_exceeded("deadline exceeded"))),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Maps an h2 stream or connection error to the status a caller sees.
pub(crate) fn status_from_h2(error: &h2::Error) -> Status {
    let code = match error.reason() {
        Some(h2::Reason::CANCEL) => Code::CANCELLED,
        Some(h2::Reason::REFUSED_STREAM) => Code::UNAVAILABLE,
        Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::RESOURCE_EXHAUSTED,
        Some(h2::Reason::INADEQUATE_SECURITY) => Code::PERMISSION_DENIED,
        Some(h2::Reason::NO_ERROR) if error.is_go_away() => Code::UNAVAILABLE,
        _ if error.is_io() || error.is_go_away() => Code::UNAVAILABLE,
        _ => Code::INTERNAL,
    };
    let status = Status::new(code, format!("http2: {error}"));
    if error.is_io() || error.is_go_away() {
        status.with_connection_lost()
    } else {
        status
    }
}

/// The response half a server-streaming or bidi handler writes to, shared
/// with the call driver (which sends the trailers once the handler returns,
/// and watches for the client resetting the stream).
pub(crate) struct SinkState {
    pub(crate) phase: SendPhase,
    pub(crate) trailers: Metadata,
    pub(crate) encoding: Encoding,
    pub(crate) accept_encoding_gzip: bool,
    pub(crate) max_message_bytes: usize,
    /// Since when [`ResponseSink::send`] has been waiting for flow-control
    /// capacity, if it is (the driver's send-stall timeout reads it).
    pub(crate) capacity_wait_since: Option<Instant>,
}

/// Where a response stands on the wire.
pub(crate) enum SendPhase {
    /// Nothing sent yet: an error still goes out as Trailers-Only.
    Pending(SendResponse<Bytes>),
    /// Headers sent; messages and then trailers go on this stream.
    Open(h2::SendStream<Bytes>),
    /// Trailers sent (or the stream is gone).
    Closed,
}

impl SinkState {
    pub(crate) fn new(
        respond: SendResponse<Bytes>,
        accept_encoding_gzip: bool,
        max_message_bytes: usize,
    ) -> SinkState {
        SinkState {
            phase: SendPhase::Pending(respond),
            trailers: Metadata::new(),
            encoding: Encoding::Identity,
            accept_encoding_gzip,
            max_message_bytes,
            capacity_wait_since: None,
        }
    }

    /// Sends the response headers if not yet sent.
    pub(crate) fn open(
        &mut self,
        metadata: Metadata,
    ) -> Result<&mut h2::SendStream<Bytes>, Status> {
        if let SendPhase::Pending(_) = self.phase {
            let SendPhase::Pending(mut respond) =
                std::mem::replace(&mut self.phase, SendPhase::Closed)
            else {
                unreachable!("checked Pending above");
            };
            let head = headers::response_head(self.encoding, metadata);
            let stream = respond
                .send_response(head, false)
                .map_err(|error| status_from_h2(&error))?;
            self.phase = SendPhase::Open(stream);
        }
        match &mut self.phase {
            SendPhase::Open(stream) => Ok(stream),
            _ => Err(Status::cancelled("response already finished")),
        }
    }

    /// Polls whether the client reset the stream (CANCEL, etc.).
    pub(crate) fn poll_reset(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.phase {
            SendPhase::Pending(respond) => respond.poll_reset(cx).map(drop),
            SendPhase::Open(stream) => stream.poll_reset(cx).map(drop),
            SendPhase::Closed => Poll::Pending,
        }
    }
}

/// Outbound messages of a server-streaming or bidi call.
///
/// [`send`](Self::send) waits for HTTP/2 send capacity (flow-control
/// backpressure), so a slow client slows the handler instead of growing a
/// buffer. The trailers go out when the handler returns.
pub struct ResponseSink<T> {
    state: Rc<RefCell<SinkState>>,
    _message: PhantomData<fn(T)>,
}

impl<T> fmt::Debug for ResponseSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseSink").finish_non_exhaustive()
    }
}

impl<T: prost::Message> ResponseSink<T> {
    pub(crate) fn new(state: Rc<RefCell<SinkState>>) -> ResponseSink<T> {
        ResponseSink {
            state,
            _message: PhantomData,
        }
    }

    /// Sends the response headers now, with `metadata`. Optional: the first
    /// [`send`](Self::send) sends them (empty) otherwise. Errors if they
    /// were already sent.
    pub fn send_headers(&mut self, metadata: Metadata) -> Result<(), Status> {
        let mut state = self.state.borrow_mut();
        if !matches!(state.phase, SendPhase::Pending(_)) {
            return Err(Status::internal("response headers already sent"));
        }
        state.open(metadata).map(drop)
    }

    /// Compresses the messages with `encoding` if the client accepts it.
    /// Only before the headers are sent; later calls are ignored.
    pub fn set_compression(&mut self, encoding: Encoding) {
        let mut state = self.state.borrow_mut();
        let accepted = encoding == Encoding::Identity || state.accept_encoding_gzip;
        if accepted && matches!(state.phase, SendPhase::Pending(_)) {
            state.encoding = encoding;
        }
    }

    /// Trailing metadata sent with the final status.
    pub fn trailers_mut(&mut self) -> std::cell::RefMut<'_, Metadata> {
        std::cell::RefMut::map(self.state.borrow_mut(), |state| &mut state.trailers)
    }

    /// Sends one message once the stream has send capacity. Errors with
    /// CANCELLED when the client went away, RESOURCE_EXHAUSTED when the
    /// message exceeds the limit.
    pub async fn send(&mut self, message: T) -> Result<(), Status> {
        let frame = self.encode(&message)?;
        let frame_bytes = frame.len();
        self.state
            .borrow_mut()
            .open(Metadata::new())?
            .reserve_capacity(frame_bytes);
        poll_fn(|cx| self.poll_capacity(cx)).await?;
        let mut state = self.state.borrow_mut();
        let stream = state.open(Metadata::new())?;
        stream
            .send_data(frame, false)
            .map_err(|error| status_from_h2(&error))
    }

    fn encode(&self, message: &T) -> Result<Bytes, Status> {
        let state = self.state.borrow();
        let body_bytes = message.encoded_len();
        if body_bytes > state.max_message_bytes {
            return Err(Status::resource_exhausted(format!(
                "response message of {body_bytes} bytes exceeds the limit of {} bytes",
                state.max_message_bytes
            )));
        }
        let mut buf = BytesMut::with_capacity(codec::HEADER_BYTES + body_bytes);
        codec::encode_message_with(message, state.encoding, &mut buf)
            .map_err(|error| error.to_status())?;
        Ok(buf.freeze())
    }

    fn poll_capacity(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        let mut state = self.state.borrow_mut();
        let SinkState {
            phase,
            capacity_wait_since,
            ..
        } = &mut *state;
        let SendPhase::Open(stream) = phase else {
            return Poll::Ready(Err(Status::cancelled("response already finished")));
        };
        let ready = loop {
            if stream.capacity() > 0 {
                break Ok(());
            }
            match stream.poll_capacity(cx) {
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(Some(Err(error))) => break Err(status_from_h2(&error)),
                Poll::Ready(None) => break Err(Status::cancelled("client went away")),
                Poll::Pending => {
                    capacity_wait_since.get_or_insert_with(Instant::now);
                    return Poll::Pending;
                }
            }
        };
        *capacity_wait_since = None;
        Poll::Ready(ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_stream_or_a_peer_status_is_not_a_lost_connection() {
        let refused = status_from_h2(&h2::Error::from(h2::Reason::REFUSED_STREAM));
        assert_eq!(refused.code(), Code::UNAVAILABLE);
        assert!(!refused.connection_lost(), "the connection still serves");
        assert!(!Status::unavailable("overloaded").connection_lost());
    }

    #[test]
    fn cancel_reaches_tokens_made_before_and_after() {
        let context = CallContext::new("/a.S/M", None, None);
        let early = context.cancel_token();
        assert!(!early.is_cancelled() && !context.is_cancelled());
        context.cancel();
        assert!(early.is_cancelled() && context.is_cancelled());
        assert!(context.cancel_token().is_cancelled());
        let late_context = CallContext::new("/a.S/M", None, None);
        late_context.cancel();
        assert!(late_context.cancel_token().is_cancelled());
    }
}
