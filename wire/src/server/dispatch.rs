//! From an accepted HTTP/2 stream to a call driver: validation of the request
//! head (method, content-type, drain, route, encoding, timeout) with the
//! immediate answers the protocol asks for, and the request/response halves
//! handed to the method's driver (see `drive`).

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderValue, Method as HttpMethod, StatusCode};

use crate::call::{CallContext, ConnectionInfo, Request, Streaming};
use crate::codec::{ACCEPT_ENCODING, Encoding};
use crate::headers::{self, GRPC_ACCEPT_ENCODING, GRPC_ENCODING, GRPC_TIMEOUT};
use crate::metadata::{Metadata, parse_timeout};
use crate::server::{CallObserver, ServerShared, service_of};
use crate::status::{Code, Status};

/// A registered method, type-erased: turns a call into its driver future.
pub(crate) trait Method {
    fn call(self: Rc<Self>, call: IncomingCall) -> LocalBoxFuture<'static, ()>;
}

/// A validated call, split into what the handler reads and what the driver
/// writes.
pub(crate) struct IncomingCall {
    pub(crate) request: CallRequest,
    pub(crate) response: CallResponse,
}

/// The inbound half: metadata, context and the body stream.
pub(crate) struct CallRequest {
    pub(crate) context: CallContext,
    metadata: Metadata,
    body: RecvStream,
    encoding: Encoding,
    max_message_bytes: usize,
}

/// The outbound half and the limits the driver enforces.
pub(crate) struct CallResponse {
    pub(crate) respond: SendResponse<Bytes>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) accept_encoding_gzip: bool,
    pub(crate) max_message_bytes: usize,
    pub(crate) report: Option<Report>,
    /// How long a streamed response may wait for send capacity.
    pub(crate) send_stall_timeout: Option<Duration>,
    /// The connection's count of streams reset for stalling.
    pub(crate) stalled_streams: Rc<Cell<u32>>,
}

/// A call's outcome on its way to the server's [`CallObserver`].
pub(crate) struct Report {
    observer: Rc<dyn CallObserver>,
    method: Option<&'static str>,
    started_at: Instant,
}

impl Report {
    fn new(shared: &ServerShared, method: Option<&'static str>) -> Option<Report> {
        let observer = shared.observer.clone()?;
        Some(Report {
            observer,
            method,
            started_at: Instant::now(),
        })
    }

    /// Reports the call as ended with `code`.
    pub(crate) fn finish(self, code: Code) {
        let elapsed = self.started_at.elapsed();
        self.observer.call_finished(self.method, code, elapsed);
    }
}

impl CallRequest {
    /// Reads exactly one request message (cardinality violations are
    /// UNIMPLEMENTED, as statuscodes.md says).
    pub(crate) async fn single<Req: prost::Message + Default>(
        self,
    ) -> Result<Request<Req>, Status> {
        let mut stream = Streaming::<Req>::server(self.body, self.encoding, self.max_message_bytes);
        let Some(message) = stream.message().await? else {
            return Err(Status::unimplemented("unary request without a message"));
        };
        if stream.message().await?.is_some() {
            return Err(Status::unimplemented(
                "unary request with more than one message",
            ));
        }
        Ok(Request::from_parts(self.metadata, self.context, message))
    }

    /// The request as a stream of messages.
    pub(crate) fn streaming<Req: prost::Message + Default>(self) -> Request<Streaming<Req>> {
        let stream = Streaming::server(self.body, self.encoding, self.max_message_bytes);
        Request::from_parts(self.metadata, self.context, stream)
    }
}

/// Why a request is answered without reaching a handler.
enum Rejection {
    /// Not a gRPC request at all: a plain HTTP status.
    Http(StatusCode),
    /// A gRPC error, sent Trailers-Only.
    Grpc(Status),
    /// Unsupported `grpc-encoding`: UNIMPLEMENTED plus `grpc-accept-encoding`.
    Encoding(Status),
}

impl Rejection {
    /// The gRPC code sent, if the answer is a gRPC status.
    fn code(&self) -> Option<Code> {
        match self {
            Rejection::Http(_) => None,
            Rejection::Grpc(status) | Rejection::Encoding(status) => Some(status.code()),
        }
    }
}

/// What validation learned about an acceptable request.
struct Accepted {
    method_path: &'static str,
    method: Rc<dyn Method>,
    encoding: Encoding,
    timeout: Option<Duration>,
    accept_encoding_gzip: bool,
}

/// Validates and routes a new stream. Returns the call's driver future, or
/// `None` when the stream was answered at once.
pub(crate) fn prepare_call(
    shared: &ServerShared,
    request: http::Request<RecvStream>,
    respond: SendResponse<Bytes>,
    connection: &Rc<ConnectionInfo>,
    stalled_streams: &Rc<Cell<u32>>,
) -> Option<LocalBoxFuture<'static, ()>> {
    let (parts, body) = request.into_parts();
    let accepted = match check_request(shared, &parts) {
        Ok(accepted) => accepted,
        Err(rejection) => {
            if let Some(code) = rejection.code() {
                let method = shared.router.route(parts.uri.path()).map(|(path, _)| path);
                if let Some(report) = Report::new(shared, method) {
                    report.finish(code);
                }
            }
            reject(respond, rejection);
            return None;
        }
    };
    let deadline = accepted
        .timeout
        .and_then(|timeout| Instant::now().checked_add(timeout));
    let context = CallContext::on_connection(accepted.method_path, deadline, connection.clone());
    let metadata = Metadata::from_headers(parts.headers);
    if let Some(interceptor) = shared.router.interceptor()
        && let Err(status) = interceptor.intercept(&context, &metadata)
    {
        if let Some(report) = Report::new(shared, Some(accepted.method_path)) {
            report.finish(status.code());
        }
        reject(respond, Rejection::Grpc(status));
        return None;
    }
    let max_message_bytes = shared.config.max_message_bytes;
    let call = IncomingCall {
        request: CallRequest {
            context,
            metadata,
            body,
            encoding: accepted.encoding,
            max_message_bytes,
        },
        response: CallResponse {
            respond,
            timeout: accepted.timeout,
            accept_encoding_gzip: accepted.accept_encoding_gzip,
            max_message_bytes,
            report: Report::new(shared, Some(accepted.method_path)),
            send_stall_timeout: shared.config.send_stall_timeout,
            stalled_streams: stalled_streams.clone(),
        },
    };
    Some(accepted.method.call(call))
}

fn check_request(
    shared: &ServerShared,
    parts: &http::request::Parts,
) -> Result<Accepted, Rejection> {
    if parts.method != HttpMethod::POST {
        return Err(Rejection::Http(StatusCode::METHOD_NOT_ALLOWED));
    }
    let content_type = parts.headers.get(http::header::CONTENT_TYPE);
    if !content_type.is_some_and(|value| headers::is_grpc_content_type(value.as_bytes())) {
        return Err(Rejection::Http(StatusCode::UNSUPPORTED_MEDIA_TYPE));
    }
    if shared.drain.is_set() {
        let status = Status::unavailable("server is shutting down");
        return Err(Rejection::Grpc(status));
    }
    let path = parts.uri.path();
    let Some((method_path, method)) = shared.router.route(path) else {
        return Err(Rejection::Grpc(unimplemented_status(shared, path)));
    };
    let accept_encoding_gzip = parts
        .headers
        .get(&GRPC_ACCEPT_ENCODING)
        .is_some_and(|value| Encoding::Gzip.is_accepted_by(value.as_bytes()));
    Ok(Accepted {
        method_path,
        method: method.clone(),
        encoding: request_encoding(parts.headers.get(&GRPC_ENCODING))?,
        timeout: request_timeout(parts.headers.get(&GRPC_TIMEOUT))?,
        accept_encoding_gzip,
    })
}

fn request_encoding(value: Option<&HeaderValue>) -> Result<Encoding, Rejection> {
    let Some(value) = value else {
        return Ok(Encoding::Identity);
    };
    Encoding::from_header(value.as_bytes()).ok_or_else(|| {
        let name = String::from_utf8_lossy(value.as_bytes());
        Rejection::Encoding(Status::unimplemented(format!(
            "grpc-encoding {name:?} is not supported (accepted: identity, {ACCEPT_ENCODING})"
        )))
    })
}

fn request_timeout(value: Option<&HeaderValue>) -> Result<Option<Duration>, Rejection> {
    let Some(value) = value else {
        return Ok(None);
    };
    parse_timeout(value.as_bytes())
        .map(Some)
        .map_err(|_| Rejection::Grpc(Status::internal("malformed grpc-timeout")))
}

fn unimplemented_status(shared: &ServerShared, path: &str) -> Status {
    match service_of(path) {
        Some(service) if shared.router.has_service(service) => {
            Status::unimplemented(format!("unknown method {path}"))
        }
        Some(service) => Status::unimplemented(format!("unknown service {service}")),
        None => Status::unimplemented(format!("malformed method path {path:?}")),
    }
}

/// Answers a rejected stream. The stream may already be gone (client
/// reset): then there is nobody to tell and the send error is ignored.
fn reject(mut respond: SendResponse<Bytes>, rejection: Rejection) {
    let response = match rejection {
        Rejection::Http(status) => {
            let mut response = http::Response::new(());
            *response.status_mut() = status;
            response
        }
        Rejection::Grpc(status) => headers::trailers_only(status, Metadata::new()),
        Rejection::Encoding(status) => {
            let mut response = headers::trailers_only(status, Metadata::new());
            let accepted = HeaderValue::from_static(ACCEPT_ENCODING);
            response
                .headers_mut()
                .insert(GRPC_ACCEPT_ENCODING, accepted);
            response
        }
    };
    let _ = respond.send_response(response, true);
}

/// Sends `status` as a Trailers-Only response.
pub(crate) fn send_trailers_only(mut respond: SendResponse<Bytes>, status: Status) {
    let response = headers::trailers_only(status, Metadata::new());
    let _ = respond.send_response(response, true);
}
