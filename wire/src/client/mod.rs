//! The gRPC client half: [`Channel`], an h2 client with the same framing
//! as the server, and on top of it shardlog's client library: [`Client`]
//! (connection [`Pool`], retries with [`Backoff`]), the batching idempotent
//! [`Producer`], the [`Consumer`] and the [`Admin`] API, generic over the
//! [`Runtime`] (glommio, or tokio with the `tokio` feature).
//!
//! Generic over the I/O stream (any futures `AsyncRead + AsyncWrite`); the
//! HTTP/2 connection driver is returned as a future for the caller to spawn
//! on its runtime. Deadlines are sent as `grpc-timeout` and enforced locally
//! with the configured [`Timer`] (glommio's by default).
//!
//! ```no_run
//! use std::time::Duration;
//! use shardlog_wire::client::{CallOptions, Channel};
//! use shardlog_wire::Response;
//!
//! glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
//!     .spawn(|| async {
//!         let stream = glommio::net::TcpStream::connect("127.0.0.1:50051").await.unwrap();
//!         let (channel, driver) = Channel::handshake(stream, "127.0.0.1:50051").await.unwrap();
//!         glommio::spawn_local(driver).detach();
//!         let options = CallOptions::default().with_timeout(Duration::from_secs(1));
//!         let reply: Response<()> = channel.unary("/demo.Echo/Ping", &(), options).await.unwrap();
//!         println!("{:?}", reply.metadata());
//!     })
//!     .unwrap()
//!     .join()
//!     .unwrap();
//! ```

mod accumulator;
pub mod admin;
pub mod backoff;
mod connect;
pub mod consumer;
mod error;
pub mod pool;
pub mod producer;
pub mod runtime;
mod sync;
#[cfg(test)]
mod tests;

pub use accumulator::{
    Ack, DeliveryFuture, HEADER_OVERHEAD_BYTES, RECORD_OVERHEAD_BYTES, fnv1a_64,
};
pub use admin::Admin;
pub use backoff::{Backoff, Jitter};
pub use connect::{Client, ClientConfig, RetryPolicy};
pub use consumer::{Consumer, StartAt, Subscription};
pub use error::{ClientError, RetryClass, classify};
pub use pool::Pool;
pub use producer::{Producer, ProducerConfig, ProducerStats, WhenFull};
pub use runtime::{GlommioRuntime, LocalBoxFuture, Runtime};
#[cfg(feature = "tokio")]
pub use runtime::{TokioRuntime, TokioTimer};

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::poll_fn;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue, TE, USER_AGENT};
use http::uri::{Authority, PathAndQuery, Scheme};
use tokio_util::compat::FuturesAsyncReadCompatExt as _;

use crate::call::{Response, Sleep, Streaming, race_deadline, status_from_h2};
use crate::codec::{self, ACCEPT_ENCODING, Encoding, MESSAGE_BYTES_MAX_DEFAULT};
use crate::error::WireError;
use crate::headers::{self, CONTENT_TYPE_GRPC, GRPC_ACCEPT_ENCODING, GRPC_ENCODING, GRPC_TIMEOUT};
use crate::metadata::{Metadata, encode_timeout};
use crate::status::{Code, Status};

/// A source of sleeps for client-side deadlines, so the client does not
/// depend on one runtime.
pub trait Timer: Send + Sync + 'static {
    /// A future resolving after `duration`.
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()>>>;
}

/// [`Timer`] on glommio's timers (must be used inside a glommio executor).
#[derive(Debug, Clone, Copy, Default)]
pub struct GlommioTimer;

impl Timer for GlommioTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()>>> {
        Box::pin(glommio::timer::sleep(duration))
    }
}

/// Settings of one client connection.
#[derive(Clone)]
pub struct ChannelConfig {
    /// Largest message body received or sent. Default 4 MiB.
    pub max_message_bytes: usize,
    /// Initial per-stream receive window. Default 1 MiB.
    pub initial_stream_window_bytes: u32,
    /// Connection-level receive window. Default 16 MiB.
    pub initial_connection_window_bytes: u32,
    /// SETTINGS_MAX_FRAME_SIZE advertised. Default 16 KiB.
    pub max_frame_size_bytes: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE advertised. Default 16 KiB.
    pub max_header_list_size_bytes: u32,
    /// Streams opened before the server's SETTINGS say how many it allows.
    /// Default 100 (the minimum RFC 9113 recommends servers allow).
    pub initial_max_send_streams: usize,
    /// `user-agent` sent with every call.
    pub user_agent: String,
    /// Timer enforcing deadlines locally. Default [`GlommioTimer`].
    pub timer: Arc<dyn Timer>,
}

impl Default for ChannelConfig {
    fn default() -> ChannelConfig {
        ChannelConfig {
            max_message_bytes: MESSAGE_BYTES_MAX_DEFAULT,
            initial_stream_window_bytes: 1024 * 1024,
            initial_connection_window_bytes: 16 * 1024 * 1024,
            max_frame_size_bytes: 16 * 1024,
            max_header_list_size_bytes: 16 * 1024,
            initial_max_send_streams: 100,
            user_agent: concat!("shardlog-wire/", env!("CARGO_PKG_VERSION")).to_owned(),
            timer: Arc::new(GlommioTimer),
        }
    }
}

impl fmt::Debug for ChannelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelConfig")
            .field("max_message_bytes", &self.max_message_bytes)
            .field(
                "initial_stream_window_bytes",
                &self.initial_stream_window_bytes,
            )
            .field(
                "initial_connection_window_bytes",
                &self.initial_connection_window_bytes,
            )
            .field("max_frame_size_bytes", &self.max_frame_size_bytes)
            .field(
                "max_header_list_size_bytes",
                &self.max_header_list_size_bytes,
            )
            .field("user_agent", &self.user_agent)
            .finish_non_exhaustive()
    }
}

/// Per-call options.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Deadline from the call's start: sent as `grpc-timeout` and enforced
    /// locally (DEADLINE_EXCEEDED).
    pub timeout: Option<Duration>,
    /// Custom request metadata.
    pub metadata: Metadata,
    /// Compression of the request messages.
    pub compression: Encoding,
}

impl CallOptions {
    /// Builder-style: sets the timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> CallOptions {
        self.timeout = Some(timeout);
        self
    }

    /// Builder-style: sets the request metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> CallOptions {
        self.metadata = metadata;
        self
    }

    /// Builder-style: sets the request compression.
    pub fn with_compression(mut self, compression: Encoding) -> CallOptions {
        self.compression = compression;
        self
    }
}

struct ChannelShared {
    authority: Authority,
    config: ChannelConfig,
    user_agent: HeaderValue,
}

/// One HTTP/2 connection to a gRPC server. Cheap to clone; clones share
/// the connection (calls are multiplexed as streams).
#[derive(Clone)]
pub struct Channel {
    send_request: SendRequest<Bytes>,
    shared: Arc<ChannelShared>,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("authority", &self.shared.authority)
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// Handshakes HTTP/2 over `io` with default settings. Returns the
    /// channel and the connection driver, which the caller must spawn (no
    /// call makes progress without it).
    pub async fn handshake<IO>(
        io: IO,
        authority: &str,
    ) -> Result<(Channel, impl Future<Output = ()> + 'static), WireError>
    where
        IO: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
    {
        Channel::handshake_with(io, authority, ChannelConfig::default()).await
    }

    /// [`handshake`](Self::handshake) with explicit settings.
    pub async fn handshake_with<IO>(
        io: IO,
        authority: &str,
        config: ChannelConfig,
    ) -> Result<(Channel, impl Future<Output = ()> + 'static), WireError>
    where
        IO: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin + 'static,
    {
        crate::server::validate_http2_sizes(
            config.max_frame_size_bytes,
            config.initial_stream_window_bytes,
            config.initial_connection_window_bytes,
        )?;
        let invalid = || WireError::InvalidAuthority(authority.to_owned());
        let parsed_authority: Authority = authority.parse().map_err(|_| invalid())?;
        let user_agent = HeaderValue::from_str(&config.user_agent).map_err(|_| invalid())?;
        let (send_request, connection) = h2::client::Builder::new()
            .initial_window_size(config.initial_stream_window_bytes)
            .initial_connection_window_size(config.initial_connection_window_bytes)
            .max_frame_size(config.max_frame_size_bytes)
            .max_header_list_size(config.max_header_list_size_bytes)
            .initial_max_send_streams(config.initial_max_send_streams)
            .enable_push(false)
            .handshake::<_, Bytes>(io.compat())
            .await
            .map_err(WireError::Handshake)?;
        let driver = async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "client connection ended with an error");
            }
        };
        let shared = ChannelShared {
            authority: parsed_authority,
            config,
            user_agent,
        };
        let channel = Channel {
            send_request,
            shared: Arc::new(shared),
        };
        Ok((channel, driver))
    }

    /// A unary call: one request message, one response message.
    pub async fn unary<Req, Resp>(
        &self,
        path: &str,
        message: &Req,
        options: CallOptions,
    ) -> Result<Response<Resp>, Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let mut deadline = self.deadline(&options);
        let frame = self.encode(message, options.compression)?;
        let call = async {
            let mut attempts_left = REFUSED_RETRIES_MAX;
            loop {
                match self
                    .unary_attempt(path, frame.clone(), options.clone())
                    .await
                {
                    Err(Attempt::Refused(_)) if attempts_left > 0 => attempts_left -= 1,
                    Err(Attempt::Refused(status) | Attempt::Failed(status)) => return Err(status),
                    Ok(response) => return Ok(response),
                }
            }
        };
        match &mut deadline {
            Some(deadline) => race_deadline(call, deadline).await?,
            None => call.await,
        }
    }

    /// One try of a unary call; `Attempt::Refused` if the server refused
    /// the stream unprocessed (safe to retry).
    async fn unary_attempt<Resp>(
        &self,
        path: &str,
        frame: Bytes,
        options: CallOptions,
    ) -> Result<Response<Resp>, Attempt>
    where
        Resp: prost::Message + Default,
    {
        let (response, mut send) = self.start(path, options).await?;
        // One message bounded by max_message_bytes: h2 queues what the
        // window does not yet admit.
        send.send_data(frame, true)
            .map_err(|error| status_from_h2(&error))?;
        let response = response.await.map_err(|error| {
            let status = status_from_h2(&error);
            if error.reason() == Some(h2::Reason::REFUSED_STREAM) {
                Attempt::Refused(status)
            } else {
                Attempt::Failed(status)
            }
        })?;
        let (metadata, mut stream) = self.read_head::<Resp>(response, None)?;
        let Some(message) = stream.message().await? else {
            return Err(Attempt::Failed(Status::internal(
                "unary response without a message",
            )));
        };
        if stream.message().await?.is_some() {
            return Err(Attempt::Failed(Status::internal(
                "unary response with more than one message",
            )));
        }
        let trailers = stream.trailers().cloned().unwrap_or_default();
        Ok(Response::from_parts(metadata, message, trailers))
    }

    /// A server-streaming call. Resolves once the response headers arrive;
    /// the [`Streaming`] then yields the messages and checks the status.
    pub async fn server_streaming<Req, Resp>(
        &self,
        path: &str,
        message: &Req,
        options: CallOptions,
    ) -> Result<Response<Streaming<Resp>>, Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let mut deadline = self.deadline(&options);
        let frame = self.encode(message, options.compression)?;
        let start = async {
            let (response, mut send) = self.start(path, options).await?;
            send.send_data(frame, true)
                .map_err(|error| status_from_h2(&error))?;
            response.await.map_err(|error| status_from_h2(&error))
        };
        let response = match &mut deadline {
            Some(sleep) => race_deadline(start, sleep).await??,
            None => start.await?,
        };
        let (metadata, stream) = self.read_head::<Resp>(response, deadline)?;
        Ok(Response::from_parts(metadata, stream, Metadata::new()))
    }

    /// A client-streaming call: send with the [`RequestSink`] (then
    /// [`finish`](RequestSink::finish) it), await the [`ResponseFuture`].
    pub async fn client_streaming<Req, Resp>(
        &self,
        path: &str,
        options: CallOptions,
    ) -> Result<(RequestSink<Req>, ResponseFuture<Resp>), Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let (sink, response) = self.open_streaming(path, options).await?;
        let future = ResponseFuture {
            channel: self.clone(),
            response,
            _message: PhantomData,
        };
        Ok((sink, future))
    }

    /// A bidirectional-streaming call.
    pub async fn bidi_streaming<Req, Resp>(
        &self,
        path: &str,
        options: CallOptions,
    ) -> Result<(RequestSink<Req>, StreamingResponseFuture<Resp>), Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let (sink, response) = self.open_streaming(path, options).await?;
        let future = StreamingResponseFuture {
            channel: self.clone(),
            response,
            _message: PhantomData,
        };
        Ok((sink, future))
    }

    async fn open_streaming<Req: prost::Message>(
        &self,
        path: &str,
        options: CallOptions,
    ) -> Result<(RequestSink<Req>, PendingResponse), Status> {
        let mut deadline = self.deadline(&options);
        let compression = options.compression;
        let (response, send) = match &mut deadline {
            Some(sleep) => race_deadline(self.start(path, options), sleep).await??,
            None => self.start(path, options).await?,
        };
        let sink = RequestSink {
            send,
            encoding: compression,
            max_message_bytes: self.shared.config.max_message_bytes,
            finished: false,
            _message: PhantomData,
        };
        Ok((sink, PendingResponse { response, deadline }))
    }

    fn deadline(&self, options: &CallOptions) -> Option<Sleep> {
        options
            .timeout
            .map(|timeout| self.shared.config.timer.sleep(timeout))
    }

    fn encode<M: prost::Message>(&self, message: &M, encoding: Encoding) -> Result<Bytes, Status> {
        encode_request(message, encoding, self.shared.config.max_message_bytes)
    }

    /// Opens a stream: waits for a stream slot, sends the request headers.
    async fn start(
        &self,
        path: &str,
        options: CallOptions,
    ) -> Result<(h2::client::ResponseFuture, SendStream<Bytes>), Status> {
        let request = self.build_request(path, options)?;
        let mut send_request = self.send_request.clone();
        poll_fn(|cx| send_request.poll_ready(cx))
            .await
            .map_err(|error| status_from_h2(&error))?;
        send_request
            .send_request(request, false)
            .map_err(|error| status_from_h2(&error))
    }

    fn build_request(&self, path: &str, options: CallOptions) -> Result<http::Request<()>, Status> {
        let path = PathAndQuery::try_from(path)
            .map_err(|_| Status::internal(format!("invalid method path {path:?}")))?;
        let uri = http::Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.shared.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|error| Status::internal(format!("invalid request uri: {error}")))?;
        let mut request = http::Request::new(());
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_GRPC));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        headers.insert(USER_AGENT, self.shared.user_agent.clone());
        headers.insert(
            GRPC_ACCEPT_ENCODING,
            HeaderValue::from_static(ACCEPT_ENCODING),
        );
        if options.compression != Encoding::Identity {
            let encoding = HeaderValue::from_static(options.compression.as_str());
            headers.insert(GRPC_ENCODING, encoding);
        }
        if let Some(timeout) = options.timeout
            && let Ok(value) = HeaderValue::from_str(&encode_timeout(timeout))
        {
            headers.insert(GRPC_TIMEOUT, value);
        }
        options.metadata.write_custom_into(headers);
        Ok(request)
    }

    /// Checks the response headers; a Trailers-Only error becomes `Err`.
    fn read_head<T: prost::Message + Default>(
        &self,
        response: http::Response<RecvStream>,
        deadline: Option<Sleep>,
    ) -> Result<(Metadata, Streaming<T>), Status> {
        let (parts, body) = response.into_parts();
        read_response_head(parts, body, self.shared.config.max_message_bytes, deadline)
    }
}

fn encode_request<M: prost::Message>(
    message: &M,
    encoding: Encoding,
    max_message_bytes: usize,
) -> Result<Bytes, Status> {
    let body_bytes = message.encoded_len();
    if body_bytes > max_message_bytes {
        return Err(Status::resource_exhausted(format!(
            "request message of {body_bytes} bytes exceeds the limit of {max_message_bytes} bytes"
        )));
    }
    let mut frame = BytesMut::with_capacity(codec::HEADER_BYTES + body_bytes);
    codec::encode_message_with(message, encoding, &mut frame).map_err(|error| error.to_status())?;
    Ok(frame.freeze())
}

fn read_response_head<T: prost::Message + Default>(
    parts: http::response::Parts,
    body: RecvStream,
    max_message_bytes: usize,
    deadline: Option<Sleep>,
) -> Result<(Metadata, Streaming<T>), Status> {
    if parts.status != http::StatusCode::OK {
        let code = headers::code_from_http_status(parts.status);
        return Err(Status::new(code, format!("http status {}", parts.status)));
    }
    if let Some(status) = headers::status_from_trailers(&parts.headers) {
        // Trailers-Only: the headers are the trailers; the stream is over.
        let trailers = Metadata::from_headers(parts.headers);
        if status.code() != Code::OK {
            return Err(status.with_metadata(trailers));
        }
        let stream = Streaming::client_trailers_only(body, trailers);
        return Ok((Metadata::new(), stream));
    }
    let content_type = parts.headers.get(CONTENT_TYPE);
    if !content_type.is_some_and(|value| headers::is_grpc_content_type(value.as_bytes())) {
        return Err(Status::unknown(
            "response content-type is not application/grpc",
        ));
    }
    let encoding = response_encoding(&parts.headers)?;
    let metadata = Metadata::from_headers(parts.headers);
    let stream = Streaming::client(body, encoding, max_message_bytes, deadline);
    Ok((metadata, stream))
}

fn response_encoding(headers: &HeaderMap) -> Result<Encoding, Status> {
    match headers.get(&GRPC_ENCODING) {
        None => Ok(Encoding::Identity),
        Some(value) => Encoding::from_header(value.as_bytes()).ok_or_else(|| {
            Status::internal(format!("unsupported response grpc-encoding {value:?}"))
        }),
    }
}

/// Times a unary call is re-sent after the server refused its stream
/// unprocessed (REFUSED_STREAM, e.g. before the client saw the server's
/// SETTINGS_MAX_CONCURRENT_STREAMS).
const REFUSED_RETRIES_MAX: u32 = 3;

/// How one try of a call failed.
enum Attempt {
    /// The server refused the stream before processing it: retryable.
    Refused(Status),
    /// Any other failure.
    Failed(Status),
}

impl From<Status> for Attempt {
    fn from(status: Status) -> Attempt {
        Attempt::Failed(status)
    }
}

/// The response of a streaming-request call, before its headers arrived.
struct PendingResponse {
    response: h2::client::ResponseFuture,
    deadline: Option<Sleep>,
}

impl PendingResponse {
    async fn head<T: prost::Message + Default>(
        mut self,
        max_message_bytes: usize,
    ) -> Result<(Metadata, Streaming<T>), Status> {
        let response = match &mut self.deadline {
            Some(sleep) => race_deadline(&mut self.response, sleep).await?,
            None => (&mut self.response).await,
        };
        let (parts, body) = response
            .map_err(|error| status_from_h2(&error))?
            .into_parts();
        read_response_head(parts, body, max_message_bytes, self.deadline)
    }
}

/// The single response of a client-streaming call.
pub struct ResponseFuture<T> {
    channel: Channel,
    response: PendingResponse,
    _message: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<T: prost::Message + Default> ResponseFuture<T> {
    /// Waits for the response message and the OK status.
    pub async fn response(self) -> Result<Response<T>, Status> {
        let max_message_bytes = self.channel.shared.config.max_message_bytes;
        let (metadata, mut stream) = self.response.head::<T>(max_message_bytes).await?;
        let Some(message) = stream.message().await? else {
            return Err(Status::internal("response without a message"));
        };
        if stream.message().await?.is_some() {
            return Err(Status::internal("response with more than one message"));
        }
        let trailers = stream.trailers().cloned().unwrap_or_default();
        Ok(Response::from_parts(metadata, message, trailers))
    }
}

/// The response stream of a bidi call, before its headers arrived.
pub struct StreamingResponseFuture<T> {
    channel: Channel,
    response: PendingResponse,
    _message: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for StreamingResponseFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamingResponseFuture")
            .finish_non_exhaustive()
    }
}

impl<T: prost::Message + Default> StreamingResponseFuture<T> {
    /// Waits for the response headers; messages then come from the
    /// [`Streaming`].
    pub async fn response(self) -> Result<Response<Streaming<T>>, Status> {
        let max_message_bytes = self.channel.shared.config.max_message_bytes;
        let (metadata, stream) = self.response.head::<T>(max_message_bytes).await?;
        Ok(Response::from_parts(metadata, stream, Metadata::new()))
    }
}

/// Outbound messages of a client-streaming or bidi call.
pub struct RequestSink<T> {
    send: SendStream<Bytes>,
    encoding: Encoding,
    max_message_bytes: usize,
    finished: bool,
    _message: PhantomData<fn(T)>,
}

impl<T> fmt::Debug for RequestSink<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestSink")
            .field("encoding", &self.encoding)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl<T: prost::Message> RequestSink<T> {
    /// Sends one message once the stream has send capacity (backpressure).
    /// Fails when the server ended or reset the call; its status then comes
    /// from the response.
    pub async fn send(&mut self, message: &T) -> Result<(), Status> {
        if self.finished {
            return Err(Status::internal("request stream already finished"));
        }
        let frame = encode_request(message, self.encoding, self.max_message_bytes)?;
        self.send.reserve_capacity(frame.len());
        poll_fn(|cx| self.poll_capacity(cx)).await?;
        self.send
            .send_data(frame, false)
            .map_err(|error| status_from_h2(&error))
    }

    fn poll_capacity(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        loop {
            if self.send.capacity() > 0 {
                return Poll::Ready(Ok(()));
            }
            match self.send.poll_capacity(cx) {
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(status_from_h2(&error))),
                Poll::Ready(None) => {
                    return Poll::Ready(Err(Status::cancelled("stream closed by the server")));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// Half-closes the request stream (END_STREAM): no more messages.
    pub fn finish(&mut self) -> Result<(), Status> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        self.send
            .send_data(Bytes::new(), true)
            .map_err(|error| status_from_h2(&error))
    }

    /// Cancels the call: RST_STREAM(CANCEL); the server's handler is
    /// cancelled.
    pub fn cancel(&mut self) {
        self.finished = true;
        self.send.send_reset(h2::Reason::CANCEL);
    }
}
