//! `grpc.testing.TestService`, the service the gRPC interop suite
//! (grpc/grpc doc/interop-test-descriptions.md) drives, so stock clients can
//! prove our stack conforms. The server enables it only behind an explicit
//! switch (`--grpc-testing`); it does no disk I/O and holds no state.
//!
//! Behaviour, per the interop descriptions:
//! - `x-grpc-test-echo-initial` comes back as initial metadata and
//!   `x-grpc-test-echo-trailing-bin` as trailing metadata, on every method.
//! - `response_status` with a non-zero code ends the call with that code and
//!   message (byte-exact).
//! - Payloads are `response_size` zero bytes; `interval_us` delays each
//!   streamed response.
//! - `response_compressed` asks for a gzip response (if the client accepts
//!   gzip); `expect_compressed` makes the server refuse (INVALID_ARGUMENT) a
//!   request that did not arrive compressed.
//!
//! Every size, count and delay a client controls is bounded by a named limit.

use std::time::Duration;

use bytes::Bytes;

use crate::codec::Encoding;
use crate::metadata::Metadata;
use crate::proto::grpc::testing::{
    EchoStatus, Empty, Payload, PayloadType, ResponseParameters, SimpleRequest, SimpleResponse,
    StreamingInputCallRequest, StreamingInputCallResponse, StreamingOutputCallRequest,
    StreamingOutputCallResponse,
};
use crate::server::Router;
use crate::status::{Code, Status};
use crate::{Request, Response, ResponseSink, Streaming};

/// Fully-qualified name of the interop test service.
pub const SERVICE_NAME: &str = "grpc.testing.TestService";

/// Largest payload the service sends in one response, in bytes (the 4 MiB
/// message limit minus room for the message's own fields).
pub const RESPONSE_PAYLOAD_BYTES_MAX: usize = 4 * 1024 * 1024 - 64;

/// Most `response_parameters` one request may carry.
pub const RESPONSE_PARAMETERS_MAX: usize = 1024;

/// Longest `interval_us` honoured before one streamed response (10 s).
pub const RESPONSE_INTERVAL_US_MAX: u64 = 10_000_000;

/// Most requests a `HalfDuplexCall` buffers before answering.
pub const HALF_DUPLEX_REQUESTS_MAX: usize = 1024;

/// Metadata echoed back as initial metadata.
pub const ECHO_INITIAL_KEY: &str = "x-grpc-test-echo-initial";

/// Binary metadata echoed back as trailing metadata.
pub const ECHO_TRAILING_KEY: &str = "x-grpc-test-echo-trailing-bin";

/// Zero bytes that payloads slice (static: building a payload allocates
/// nothing). Lives in `.bss`, so it costs no binary size.
static ZEROS: [u8; RESPONSE_PAYLOAD_BYTES_MAX] = [0; RESPONSE_PAYLOAD_BYTES_MAX];

/// Registers every `grpc.testing.TestService` method on `router`.
pub fn register(router: &mut Router) {
    router
        .unary(
            "/grpc.testing.TestService/EmptyCall",
            |request: Request<Empty>| async move { empty_call(request) },
        )
        .unary(
            "/grpc.testing.TestService/UnaryCall",
            |request: Request<SimpleRequest>| async move { unary_call(request) },
        )
        .unary(
            "/grpc.testing.TestService/CacheableUnaryCall",
            |request: Request<SimpleRequest>| async move { unary_call(request) },
        )
        .server_streaming(
            "/grpc.testing.TestService/StreamingOutputCall",
            streaming_output_call,
        )
        .client_streaming(
            "/grpc.testing.TestService/StreamingInputCall",
            streaming_input_call,
        )
        .bidi_streaming("/grpc.testing.TestService/FullDuplexCall", full_duplex_call)
        .bidi_streaming("/grpc.testing.TestService/HalfDuplexCall", half_duplex_call)
        .unary(
            "/grpc.testing.TestService/UnimplementedCall",
            |_request: Request<Empty>| async move {
                Err::<Response<Empty>, _>(Status::unimplemented(
                    "grpc.testing.TestService/UnimplementedCall is never implemented",
                ))
            },
        );
}

/// The echo metadata a request asked for.
#[derive(Debug, Default)]
struct Echo {
    initial: Option<String>,
    trailing: Option<Vec<u8>>,
}

impl Echo {
    fn from_request(metadata: &Metadata) -> Result<Echo, Status> {
        let trailing = match metadata.get_bin(ECHO_TRAILING_KEY) {
            Some(Ok(value)) => Some(value),
            Some(Err(error)) => return Err(Status::invalid_argument(error.to_string())),
            None => None,
        };
        Ok(Echo {
            initial: metadata.get(ECHO_INITIAL_KEY).map(str::to_owned),
            trailing,
        })
    }

    fn initial(&self) -> Result<Metadata, Status> {
        let mut metadata = Metadata::new();
        if let Some(value) = &self.initial {
            metadata
                .insert(ECHO_INITIAL_KEY, value)
                .map_err(|error| Status::internal(error.to_string()))?;
        }
        Ok(metadata)
    }

    fn write_trailing(&self, trailers: &mut Metadata) -> Result<(), Status> {
        if let Some(value) = &self.trailing {
            trailers
                .insert_bin(ECHO_TRAILING_KEY, value)
                .map_err(|error| Status::internal(error.to_string()))?;
        }
        Ok(())
    }

    /// Adds the echo to a response (initial and trailing metadata).
    fn apply<T>(&self, response: &mut Response<T>) -> Result<(), Status> {
        *response.metadata_mut() = self.initial()?;
        self.write_trailing(response.trailers_mut())
    }

    /// Adds the echo to an error status (Trailers-Only carries both).
    fn apply_to_status(&self, mut status: Status) -> Status {
        if let Ok(initial) = self.initial() {
            for (name, value) in initial.iter() {
                if let crate::metadata::MetadataValue::Ascii(value) = value {
                    let _ = status.metadata_mut().insert(name, value);
                }
            }
        }
        let _ = self.write_trailing(status.metadata_mut());
        status
    }
}

/// A `size`-byte zero payload (borrowed from [`ZEROS`]).
fn payload(size: i32) -> Result<Payload, Status> {
    let size_bytes = usize::try_from(size)
        .map_err(|_| Status::invalid_argument(format!("negative payload size {size}")))?;
    if size_bytes > RESPONSE_PAYLOAD_BYTES_MAX {
        return Err(Status::resource_exhausted(format!(
            "payload of {size_bytes} bytes exceeds {RESPONSE_PAYLOAD_BYTES_MAX}"
        )));
    }
    Ok(Payload {
        r#type: PayloadType::Compressable.into(),
        body: Bytes::from_static(&ZEROS[..size_bytes]),
    })
}

/// The status a request asked to be answered with, if any (code 0 = none).
fn requested_status(echo_status: Option<&EchoStatus>) -> Option<Status> {
    let echo_status = echo_status?;
    (echo_status.code != Code::OK.0)
        .then(|| Status::new(Code(echo_status.code), echo_status.message.clone()))
}

/// Whether the request arrived compressed: the call's `grpc-encoding` names
/// a real compression (messages of such calls carry the compressed flag).
fn request_was_compressed(metadata: &Metadata) -> bool {
    metadata
        .get("grpc-encoding")
        .is_some_and(|encoding| encoding != Encoding::Identity.as_str())
}

fn empty_call(request: Request<Empty>) -> Result<Response<Empty>, Status> {
    let echo = Echo::from_request(request.metadata())?;
    let mut response = Response::new(Empty {});
    echo.apply(&mut response)?;
    Ok(response)
}

fn unary_call(request: Request<SimpleRequest>) -> Result<Response<SimpleResponse>, Status> {
    let (metadata, _context, message) = request.into_parts();
    let echo = Echo::from_request(&metadata)?;
    simple_response(&metadata, &message).map_or_else(
        |status| Err(echo.apply_to_status(status)),
        |mut response| {
            echo.apply(&mut response)?;
            Ok(response)
        },
    )
}

fn simple_response(
    metadata: &Metadata,
    request: &SimpleRequest,
) -> Result<Response<SimpleResponse>, Status> {
    let expects_compressed = request.expect_compressed.is_some_and(|flag| flag.value);
    if expects_compressed && !request_was_compressed(metadata) {
        return Err(Status::invalid_argument(
            "expect_compressed is set but the request was not compressed",
        ));
    }
    if let Some(status) = requested_status(request.response_status.as_ref()) {
        return Err(status);
    }
    let mut response = Response::new(SimpleResponse {
        payload: Some(payload(request.response_size)?),
        ..SimpleResponse::default()
    });
    if request.response_compressed.is_some_and(|flag| flag.value) {
        response.set_compression(Encoding::Gzip);
    }
    Ok(response)
}

fn check_parameters(parameters: &[ResponseParameters]) -> Result<(), Status> {
    if parameters.len() > RESPONSE_PARAMETERS_MAX {
        return Err(Status::invalid_argument(format!(
            "{} response_parameters exceed {RESPONSE_PARAMETERS_MAX}",
            parameters.len()
        )));
    }
    Ok(())
}

/// Sends the responses one request's `response_parameters` ask for, each
/// after its `interval_us`.
async fn send_responses(
    sink: &mut ResponseSink<StreamingOutputCallResponse>,
    request: &StreamingOutputCallRequest,
) -> Result<(), Status> {
    if let Some(status) = requested_status(request.response_status.as_ref()) {
        return Err(status);
    }
    check_parameters(&request.response_parameters)?;
    for parameters in &request.response_parameters {
        let interval_us = u64::try_from(parameters.interval_us).unwrap_or(0);
        if interval_us > 0 {
            let interval_us = interval_us.min(RESPONSE_INTERVAL_US_MAX);
            glommio::timer::sleep(Duration::from_micros(interval_us)).await;
        }
        let response = StreamingOutputCallResponse {
            payload: Some(payload(parameters.size)?),
        };
        sink.send(response).await?;
    }
    Ok(())
}

/// Streams compressed when the first response asks for it (the compression
/// of a stream is chosen before its headers go out).
fn choose_stream_compression(
    sink: &mut ResponseSink<StreamingOutputCallResponse>,
    request: &StreamingOutputCallRequest,
) {
    let first_compressed = request
        .response_parameters
        .first()
        .and_then(|parameters| parameters.compressed)
        .is_some_and(|flag| flag.value);
    if first_compressed {
        sink.set_compression(Encoding::Gzip);
    }
}

/// Sends the echo's initial metadata now (when asked) and stages its
/// trailing metadata.
fn start_stream<T: prost::Message>(sink: &mut ResponseSink<T>, echo: &Echo) -> Result<(), Status> {
    if echo.initial.is_some() {
        sink.send_headers(echo.initial()?)?;
    }
    echo.write_trailing(&mut sink.trailers_mut())
}

async fn streaming_output_call(
    request: Request<StreamingOutputCallRequest>,
    mut sink: ResponseSink<StreamingOutputCallResponse>,
) -> Result<(), Status> {
    let (metadata, _context, message) = request.into_parts();
    let echo = Echo::from_request(&metadata)?;
    choose_stream_compression(&mut sink, &message);
    start_stream(&mut sink, &echo)?;
    send_responses(&mut sink, &message).await
}

async fn streaming_input_call(
    request: Request<Streaming<StreamingInputCallRequest>>,
) -> Result<Response<StreamingInputCallResponse>, Status> {
    let (metadata, _context, mut requests) = request.into_parts();
    let echo = Echo::from_request(&metadata)?;
    let mut aggregated_bytes: u64 = 0;
    while let Some(message) = requests.message().await? {
        if message.expect_compressed.is_some_and(|flag| flag.value)
            && !request_was_compressed(&metadata)
        {
            return Err(echo.apply_to_status(Status::invalid_argument(
                "expect_compressed is set but the request was not compressed",
            )));
        }
        let body_bytes = message.payload.map_or(0, |payload| payload.body.len());
        aggregated_bytes = aggregated_bytes.saturating_add(body_bytes as u64);
    }
    let mut response = Response::new(StreamingInputCallResponse {
        aggregated_payload_size: i32::try_from(aggregated_bytes).unwrap_or(i32::MAX),
    });
    echo.apply(&mut response)?;
    Ok(response)
}

async fn full_duplex_call(
    request: Request<Streaming<StreamingOutputCallRequest>>,
    mut sink: ResponseSink<StreamingOutputCallResponse>,
) -> Result<(), Status> {
    let (metadata, _context, mut requests) = request.into_parts();
    let echo = Echo::from_request(&metadata)?;
    let mut first = true;
    while let Some(message) = requests.message().await? {
        if first {
            choose_stream_compression(&mut sink, &message);
            start_stream(&mut sink, &echo)?;
            first = false;
        }
        send_responses(&mut sink, &message)
            .await
            .map_err(|status| echo.apply_to_status(status))?;
    }
    if first {
        start_stream(&mut sink, &echo)?;
    }
    Ok(())
}

async fn half_duplex_call(
    request: Request<Streaming<StreamingOutputCallRequest>>,
    mut sink: ResponseSink<StreamingOutputCallResponse>,
) -> Result<(), Status> {
    let (metadata, _context, mut requests) = request.into_parts();
    let echo = Echo::from_request(&metadata)?;
    let mut buffered = Vec::new();
    while let Some(message) = requests.message().await? {
        if buffered.len() == HALF_DUPLEX_REQUESTS_MAX {
            return Err(Status::resource_exhausted(format!(
                "HalfDuplexCall buffers at most {HALF_DUPLEX_REQUESTS_MAX} requests"
            )));
        }
        buffered.push(message);
    }
    start_stream(&mut sink, &echo)?;
    for message in &buffered {
        send_responses(&mut sink, message)
            .await
            .map_err(|status| echo.apply_to_status(status))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::grpc::testing::BoolValue;

    fn request(message: SimpleRequest) -> Request<SimpleRequest> {
        Request::new(message)
    }

    #[test]
    fn unary_call_sizes_payload_and_asks_compression() {
        let response = unary_call(request(SimpleRequest {
            response_size: 314_159,
            response_compressed: Some(BoolValue { value: true }),
            ..SimpleRequest::default()
        }))
        .expect("ok");
        let body = &response.get_ref().payload.as_ref().expect("payload").body;
        assert_eq!(body.len(), 314_159);
        assert!(body.iter().all(|b| *b == 0));
        assert_eq!(response.compression(), Encoding::Gzip);
    }

    #[test]
    fn unary_call_echoes_status_byte_exact() {
        let message =
            "\t\ntest with whitespace\r\nand Unicode BMP \u{263a} and non-BMP \u{1f608}\t\n";
        let status = unary_call(request(SimpleRequest {
            response_status: Some(EchoStatus {
                code: 2,
                message: message.into(),
            }),
            ..SimpleRequest::default()
        }))
        .expect_err("asked for an error");
        assert_eq!(status.code(), Code::UNKNOWN);
        assert_eq!(status.message(), message);
    }

    #[test]
    fn unary_call_refuses_uncompressed_when_compression_expected() {
        let status = unary_call(request(SimpleRequest {
            expect_compressed: Some(BoolValue { value: true }),
            ..SimpleRequest::default()
        }))
        .expect_err("not compressed");
        assert_eq!(status.code(), Code::INVALID_ARGUMENT);
    }

    #[test]
    fn payload_sizes_are_bounded() {
        assert_eq!(
            payload(-1).expect_err("negative").code(),
            Code::INVALID_ARGUMENT
        );
        let too_big = i32::try_from(RESPONSE_PAYLOAD_BYTES_MAX + 1).expect("fits");
        assert_eq!(
            payload(too_big).expect_err("too big").code(),
            Code::RESOURCE_EXHAUSTED
        );
        assert_eq!(payload(0).expect("empty").body.len(), 0);
    }

    #[test]
    fn echo_metadata_round_trips() {
        let mut metadata = Metadata::new();
        metadata.insert(ECHO_INITIAL_KEY, "v").expect("valid");
        metadata
            .insert_bin(ECHO_TRAILING_KEY, b"\x0a\x0b")
            .expect("valid");
        let response = empty_call(Request::from_parts(
            metadata,
            crate::CallContext::new("", None, None),
            Empty {},
        ))
        .expect("ok");
        assert_eq!(response.metadata().get(ECHO_INITIAL_KEY), Some("v"));
        let trailing = response.trailers().get_bin(ECHO_TRAILING_KEY);
        assert_eq!(trailing.and_then(Result::ok), Some(b"\x0a\x0b".to_vec()));
    }
}
