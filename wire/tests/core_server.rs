//! End-to-end tests of the wire server and client over real loopback
//! sockets: the wire crate's client against its server on one glommio
//! executor (Placement::Unbound, port 0), plus raw h2 requests for what the
//! client cannot send (unknown encodings, server-side deadlines).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use prost_types::Any;
use shardlog_wire::client::{CallOptions, Channel};
use shardlog_wire::server::{CallObserver, Router, Server, ServerConfig};
use shardlog_wire::{
    CallContext, Code, Encoding, Metadata, Request, Response, ResponseSink, Status, Streaming,
};
use tokio_util::compat::FuturesAsyncReadCompatExt as _;

const UNARY: &str = "/test.Echo/Unary";
const SERVER_STREAM: &str = "/test.Echo/ServerStream";
const CLIENT_STREAM: &str = "/test.Echo/ClientStream";
const BIDI: &str = "/test.Echo/Bidi";
const EMPTY: &str = "/test.Echo/Empty";
const FLOOD: &str = "/test.Echo/Flood";

/// Messages the flood handler tries to send, of `FLOOD_MESSAGE_BYTES` each.
const FLOOD_MESSAGES: u32 = 200;
const FLOOD_MESSAGE_BYTES: usize = 64 * 1024;

/// Upper bound on any wait for an asynchronous effect in these tests.
const EVENTUALLY_MAX: Duration = Duration::from_secs(10);

/// What the handlers observed, for assertions.
#[derive(Default)]
struct Probes {
    started: Cell<u32>,
    /// Messages the flood handler has sent so far.
    flood_sent: Cell<u32>,
    /// Handler futures dropped before completing (cancelled).
    dropped: Cell<u32>,
    last_context: RefCell<Option<CallContext>>,
}

/// Marks a handler as dropped unless it completed.
struct DropProbe {
    probes: Rc<Probes>,
    completed: bool,
}

impl Drop for DropProbe {
    fn drop(&mut self) {
        if !self.completed {
            self.probes.dropped.set(self.probes.dropped.get() + 1);
        }
    }
}

fn any(command: &str, value: impl Into<Vec<u8>>) -> Any {
    Any {
        type_url: command.to_owned(),
        value: value.into(),
    }
}

async fn unary_handler(probes: Rc<Probes>, request: Request<Any>) -> Result<Response<Any>, Status> {
    let (metadata, context, message) = request.into_parts();
    match message.type_url.as_str() {
        "status" => {
            let code = Code(i32::from(message.value[0]));
            let text = String::from_utf8(message.value[1..].to_vec()).expect("utf-8 message");
            let mut status = Status::new(code, text);
            status
                .metadata_mut()
                .insert_bin("x-detail-bin", &[0, 1, 2, 255])
                .expect("valid metadata");
            Err(status)
        }
        "panic" => panic!("handler panics on purpose"),
        "sleep" => {
            probes.started.set(probes.started.get() + 1);
            *probes.last_context.borrow_mut() = Some(context);
            let mut probe = DropProbe {
                probes: probes.clone(),
                completed: false,
            };
            glommio::timer::sleep(Duration::from_secs(60)).await;
            probe.completed = true;
            Ok(Response::new(message))
        }
        "slow" => {
            probes.started.set(probes.started.get() + 1);
            glommio::timer::sleep(Duration::from_millis(300)).await;
            Ok(Response::new(message))
        }
        "gzip" => {
            let encoding = metadata
                .get("grpc-encoding")
                .unwrap_or("identity")
                .to_owned();
            let mut response = Response::new(any(&encoding, message.value));
            response.set_compression(Encoding::Gzip);
            Ok(response)
        }
        _ => {
            let mut response = Response::new(message);
            if let Some(value) = metadata.get("x-echo") {
                response
                    .metadata_mut()
                    .insert("x-echo", value)
                    .expect("valid");
                response
                    .trailers_mut()
                    .insert("x-echo-trailer", value)
                    .expect("valid");
            }
            if let Some(value) = metadata.get_bin("x-echo-bin") {
                let value = value.expect("valid base64");
                response
                    .metadata_mut()
                    .insert_bin("x-echo-bin", &value)
                    .expect("valid");
                response
                    .trailers_mut()
                    .insert_bin("x-trailer-bin", &value)
                    .expect("valid");
            }
            Ok(response)
        }
    }
}

async fn server_stream_handler(
    request: Request<Any>,
    mut sink: ResponseSink<Any>,
) -> Result<(), Status> {
    let message = request.into_inner();
    if message.type_url == "gzip" {
        sink.set_compression(Encoding::Gzip);
    }
    let count = message.value.first().copied().unwrap_or(0);
    for index in 0..count {
        sink.send(any("item", vec![index; 1000])).await?;
    }
    sink.trailers_mut()
        .insert("x-sent", &count.to_string())
        .expect("valid");
    Ok(())
}

async fn client_stream_handler(request: Request<Streaming<Any>>) -> Result<Response<Any>, Status> {
    let mut stream = request.into_inner();
    let (mut count, mut total_bytes) = (0usize, 0usize);
    while let Some(message) = stream.message().await? {
        count += 1;
        total_bytes += message.value.len();
    }
    Ok(Response::new(any(&format!("{count}:{total_bytes}"), [])))
}

async fn bidi_handler(
    request: Request<Streaming<Any>>,
    mut sink: ResponseSink<Any>,
) -> Result<(), Status> {
    let mut stream = request.into_inner();
    while let Some(message) = stream.message().await? {
        sink.send(message).await?;
    }
    Ok(())
}

async fn flood_handler(
    probes: Rc<Probes>,
    _request: Request<()>,
    mut sink: ResponseSink<Any>,
) -> Result<(), Status> {
    for _ in 0..FLOOD_MESSAGES {
        sink.send(any("flood", vec![1u8; FLOOD_MESSAGE_BYTES]))
            .await?;
        probes.flood_sent.set(probes.flood_sent.get() + 1);
    }
    Ok(())
}

fn test_router(probes: Rc<Probes>) -> Router {
    let mut router = Router::new();
    let flood_probes = probes.clone();
    router.server_streaming(FLOOD, move |request: Request<()>, sink| {
        flood_handler(flood_probes.clone(), request, sink)
    });
    router
        .unary(UNARY, move |request: Request<Any>| {
            unary_handler(probes.clone(), request)
        })
        .server_streaming(SERVER_STREAM, server_stream_handler)
        .client_streaming(CLIENT_STREAM, client_stream_handler)
        .bidi_streaming(BIDI, bidi_handler)
        .unary(EMPTY, |_request: Request<()>| async {
            Ok(Response::new(()))
        });
    router
}

struct Harness {
    server: Server,
    channel: Channel,
    addr: SocketAddr,
    probes: Rc<Probes>,
}

async fn start(config: ServerConfig) -> Harness {
    start_with(config, None).await
}

async fn start_with(config: ServerConfig, observer: Option<Rc<dyn CallObserver>>) -> Harness {
    let probes = Rc::new(Probes::default());
    let router = test_router(probes.clone());
    let server = match observer {
        Some(observer) => Server::with_observer(router, config, observer),
        None => Server::new(router, config),
    };
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let addr = listener.local_addr().expect("local addr");
    let serving = server.clone();
    glommio::spawn_local(async move { serving.serve(listener).await.expect("serve") }).detach();
    let channel = connect(addr).await;
    Harness {
        server,
        channel,
        addr,
        probes,
    }
}

async fn connect(addr: SocketAddr) -> Channel {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (channel, driver) = Channel::handshake(stream, &addr.to_string())
        .await
        .expect("handshake");
    glommio::spawn_local(driver).detach();
    channel
}

/// Runs `test` on a fresh unpinned glommio executor and waits for it.
fn run<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .name("wire-core-test")
        .spawn(move || async move { test().await })
        .expect("spawn executor")
        .join()
        .expect("executor finished");
}

/// Waits (bounded) until `condition` holds.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < EVENTUALLY_MAX,
            "timed out waiting for: {what}"
        );
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
}

fn options() -> CallOptions {
    CallOptions::default()
}

#[test]
fn unary_round_trip_including_empty_messages() {
    run(|| async {
        let h = start(ServerConfig::default()).await;
        let response: Response<Any> = h
            .channel
            .unary(UNARY, &any("echo", b"hello".to_vec()), options())
            .await
            .expect("unary call");
        assert_eq!(response.get_ref(), &any("echo", b"hello".to_vec()));
        let empty: Response<()> = h.channel.unary(EMPTY, &(), options()).await.expect("empty");
        assert_eq!(empty.into_inner(), ());
        // A default Any encodes to zero bytes: a zero-length message.
        let zero: Response<Any> = h
            .channel
            .unary(UNARY, &Any::default(), options())
            .await
            .expect("zero-length message");
        assert_eq!(zero.into_inner(), Any::default());
        h.server.shutdown().await;
    });
}

#[test]
fn server_streaming_sends_every_message_then_trailers() {
    run(|| async {
        let h = start(ServerConfig::default()).await;
        let mut response: Response<Streaming<Any>> = h
            .channel
            .server_streaming(SERVER_STREAM, &any("count", [50u8]), options())
            .await
            .expect("server streaming call");
        let stream = response.get_mut();
        let mut received = 0u8;
        while let Some(message) = stream.message().await.expect("message") {
            assert_eq!(message.value, vec![received; 1000]);
            received += 1;
        }
        assert_eq!(received, 50);
        let trailers = stream.trailers().expect("trailers after the end");
        assert_eq!(trailers.get("x-sent"), Some("50"));
        // Zero messages: the server may answer Trailers-Only with OK.
        let mut response: Response<Streaming<Any>> = h
            .channel
            .server_streaming(SERVER_STREAM, &any("count", [0u8]), options())
            .await
            .expect("empty stream");
        assert!(response.get_mut().message().await.expect("ok").is_none());
        h.server.shutdown().await;
    });
}

#[test]
fn client_streaming_beyond_the_window_releases_capacity() {
    run(|| async {
        let h = start(ServerConfig::default()).await;
        let (mut sink, response) = h
            .channel
            .client_streaming::<Any, Any>(CLIENT_STREAM, options())
            .await
            .expect("open client stream");
        // 6 MiB through a 1 MiB stream window: stalls unless the server
        // releases capacity as it consumes.
        let chunk = any("part", vec![7u8; 64 * 1024]);
        for _ in 0..96 {
            sink.send(&chunk).await.expect("send");
        }
        sink.finish().expect("half-close");
        let response = response.response().await.expect("response");
        assert_eq!(
            response.get_ref().type_url,
            format!("96:{}", 96 * 64 * 1024)
        );
        h.server.shutdown().await;
    });
}

#[test]
fn bidi_ping_pong_in_lockstep() {
    run(|| async {
        let h = start(ServerConfig::default()).await;
        let (mut sink, response) = h
            .channel
            .bidi_streaming::<Any, Any>(BIDI, options())
            .await
            .expect("open bidi");
        sink.send(&any("ping", [0u8])).await.expect("first send");
        let mut response = response.response().await.expect("headers");
        let stream = response.get_mut();
        assert_eq!(
            stream.message().await.expect("ok"),
            Some(any("ping", [0u8]))
        );
        for round in 1..20u8 {
            sink.send(&any("ping", [round])).await.expect("send");
            let echoed = stream.message().await.expect("ok").expect("echo");
            assert_eq!(echoed.value, vec![round]);
        }
        sink.finish().expect("half-close");
        assert_eq!(stream.message().await.expect("clean end"), None);
        h.server.shutdown().await;
    });
}

#[test]
fn metadata_round_trips_ascii_and_binary_both_ways() {
    run(|| async {
        let h = start(ServerConfig::default()).await;
        let mut metadata = Metadata::new();
        metadata
            .insert("x-echo", "value with spaces")
            .expect("valid");
        metadata
            .insert_bin("x-echo-bin", &[0xff, 0x00, 0xfe, 0x0a])
            .expect("valid");
        let response: Response<Any> = h
            .channel
            .unary(UNARY, &any("echo", []), options().with_metadata(metadata))
            .await
            .expect("call");
        assert_eq!(response.metadata().get("x-echo"), Some("value with spaces"));
        assert_eq!(
            response.metadata().get_bin("x-echo-bin"),
            Some(Ok(vec![0xff, 0x00, 0xfe, 0x0a]))
        );
        assert_eq!(
            response.trailers().get("x-echo-trailer"),
            Some("value with spaces")
        );
        assert_eq!(
            response.trailers().get_bin("x-trailer-bin"),
            Some(Ok(vec![0xff, 0x00, 0xfe, 0x0a]))
        );
        h.server.shutdown().await;
    });
}

#[test]
fn status_and_message_round_trip_byte_exact_as_trailers_only() {
    run(|| async {
        let h = start(ServerConfig::default()).await;
        let message = "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n 100% done";
        let mut payload = vec![2u8];
        payload.extend_from_slice(message.as_bytes());
        let error = h
            .channel
            .unary::<Any, Any>(UNARY, &any("status", payload), options())
            .await
            .expect_err("handler error");
        assert_eq!(error.code(), Code::UNKNOWN);
        assert_eq!(error.message(), message);
        assert_eq!(
            error.metadata().get_bin("x-detail-bin"),
            Some(Ok(vec![0, 1, 2, 255]))
        );
        // On the wire: one HEADERS frame with END_STREAM (Trailers-Only).
        let mut body = BytesMut::new();
        shardlog_wire::codec::encode_message(&any("status", [5u8, b'x']), &mut body);
        let raw = raw_call(h.addr, UNARY, &[], body.freeze()).await;
        assert!(raw.head_ends_stream, "Trailers-Only");
        assert_eq!(raw.head.get("grpc-status").expect("status"), "5");
        assert_eq!(
            raw.head.get("content-type").expect("ct"),
            "application/grpc"
        );
        h.server.shutdown().await;
    });
}

#[test]
fn unknown_method_and_service_are_unimplemented() {
    run(|| async {
        let h = start(ServerConfig::default()).await;
        for path in ["/test.Echo/Nope", "/test.Nope/Unary", "/bad"] {
            let error = h
                .channel
                .unary::<Any, Any>(path, &any("echo", []), options())
                .await
                .expect_err("unimplemented");
            assert_eq!(error.code(), Code::UNIMPLEMENTED, "{path}: {error}");
        }
        let raw = raw_call(h.addr, "/test.Nope/Unary", &[], Bytes::new()).await;
        assert!(raw.head_ends_stream, "Trailers-Only");
        assert_eq!(raw.head.get("grpc-status").expect("status"), "12");
        h.server.shutdown().await;
    });
}

#[test]
fn unary_with_zero_or_two_request_messages_is_unimplemented() {
    run(|| async {
        let h = start(ServerConfig::default()).await;
        for count in [0, 2] {
            let (mut sink, response) = h
                .channel
                .client_streaming::<Any, Any>(UNARY, options())
                .await
                .expect("open");
            for _ in 0..count {
                sink.send(&any("echo", [])).await.expect("send");
            }
            sink.finish().expect("half-close");
            let error = response.response().await.expect_err("cardinality");
            assert_eq!(
                error.code(),
                Code::UNIMPLEMENTED,
                "{count} messages: {error}"
            );
        }
        h.server.shutdown().await;
    });
}

#[test]
fn unparsable_request_is_internal() {
    run(|| async {
        let h = start(ServerConfig::default()).await;
        // Field 1 of Any is a string; a varint there does not decode.
        let garbage = prost_types::Duration {
            seconds: 5,
            nanos: 1,
        };
        let error = h
            .channel
            .unary::<_, Any>(UNARY, &garbage, options())
            .await
            .expect_err("garbage");
        assert_eq!(error.code(), Code::INTERNAL, "{error}");
        let ok: Response<Any> = h
            .channel
            .unary(UNARY, &any("echo", []), options())
            .await
            .expect("next");
        assert_eq!(ok.get_ref().type_url, "echo");
        h.server.shutdown().await;
    });
}

#[test]
fn oversize_message_is_resource_exhausted_and_the_connection_lives() {
    run(|| async {
        let config = ServerConfig {
            max_message_bytes: 64 * 1024,
            ..ServerConfig::default()
        };
        let h = start(config).await;
        // The raw path sends a 5 MiB prefix with only part of the body:
        // the server must answer from the prefix alone.
        let mut body = BytesMut::new();
        body.put_u8(0);
        body.put_u32(5 * 1024 * 1024);
        body.put_slice(&[0u8; 1024]);
        let raw = raw_call(h.addr, UNARY, &[], body.freeze()).await;
        assert_eq!(raw.status_code(), "8");
        let big = any("echo", vec![1u8; 100 * 1024]);
        let error = h
            .channel
            .unary::<Any, Any>(UNARY, &big, options())
            .await
            .expect_err("too big");
        assert_eq!(error.code(), Code::RESOURCE_EXHAUSTED, "{error}");
        let ok: Response<Any> = h
            .channel
            .unary(UNARY, &any("echo", []), options())
            .await
            .expect("next");
        assert_eq!(ok.get_ref().type_url, "echo");
        h.server.shutdown().await;
    });
}

#[test]
fn unknown_encoding_is_unimplemented_with_accept_encoding() {
    run(|| async {
        let h = start(ServerConfig::default()).await;
        let raw = raw_call(h.addr, UNARY, &[("grpc-encoding", "snappy")], Bytes::new()).await;
        assert!(raw.head_ends_stream);
        assert_eq!(raw.head.get("grpc-status").expect("status"), "12");
        let accept = raw
            .head
            .get("grpc-accept-encoding")
            .expect("accept-encoding");
        assert!(accept.to_str().expect("ascii").contains("gzip"));
        h.server.shutdown().await;
    });
}

#[test]
fn gzip_in_both_directions() {
    run(|| async {
        let h = start(ServerConfig::default()).await;
        let payload = vec![b'z'; 10_000];
        let response: Response<Any> = h
            .channel
            .unary(
                UNARY,
                &any("gzip", payload.clone()),
                options().with_compression(Encoding::Gzip),
            )
            .await
            .expect("compressed call");
        // The handler saw a gzip request and asked for a gzip response.
        assert_eq!(response.get_ref().type_url, "gzip");
        assert_eq!(response.get_ref().value, payload);
        assert_eq!(response.metadata().get("grpc-encoding"), Some("gzip"));
        let mut streamed: Response<Streaming<Any>> = h
            .channel
            .server_streaming(SERVER_STREAM, &any("gzip", [3u8]), options())
            .await
            .expect("compressed stream");
        assert_eq!(streamed.metadata().get("grpc-encoding"), Some("gzip"));
        let mut count = 0;
        while let Some(message) = streamed.get_mut().message().await.expect("message") {
            assert_eq!(message.value.len(), 1000);
            count += 1;
        }
        assert_eq!(count, 3);
        h.server.shutdown().await;
    });
}

#[test]
fn server_deadline_cancels_the_handler_and_answers_deadline_exceeded() {
    run(|| async {
        let h = start(ServerConfig::default()).await;
        let mut body = BytesMut::new();
        shardlog_wire::codec::encode_message(&any("sleep", []), &mut body);
        let raw = raw_call(h.addr, UNARY, &[("grpc-timeout", "50m")], body.freeze()).await;
        assert_eq!(raw.status_code(), "4");
        assert_eq!(h.probes.started.get(), 1);
        eventually("handler dropped", || h.probes.dropped.get() == 1).await;
        let context = h.probes.last_context.borrow().clone().expect("context");
        assert!(context.is_cancelled());
        assert!(context.deadline().is_some());
        // The client half enforces its deadline too.
        let error = h
            .channel
            .unary::<Any, Any>(
                UNARY,
                &any("sleep", []),
                options().with_timeout(Duration::from_millis(50)),
            )
            .await
            .expect_err("deadline");
        assert_eq!(error.code(), Code::DEADLINE_EXCEEDED);
        eventually("second handler dropped", || h.probes.dropped.get() == 2).await;
        h.server.shutdown().await;
    });
}

#[test]
fn client_cancel_cancels_the_handler() {
    run(|| async {
        let h = start(ServerConfig::default()).await;
        let channel = h.channel.clone();
        let call = glommio::spawn_local(async move {
            let _ = channel
                .unary::<Any, Any>(UNARY, &any("sleep", []), options())
                .await;
        });
        eventually("handler started", || h.probes.started.get() == 1).await;
        // Dropping the call's task drops its h2 handles: RST_STREAM(CANCEL).
        drop(call.cancel());
        eventually("handler dropped", || h.probes.dropped.get() == 1).await;
        let context = h.probes.last_context.borrow().clone().expect("context");
        assert!(context.is_cancelled());
        assert!(context.cancel_token().is_cancelled(), "cross-core view");
        context.cancelled().await;
        h.server.shutdown().await;
    });
}

#[test]
fn handler_panic_is_unknown_and_the_connection_lives() {
    run(|| async {
        let h = start(ServerConfig::default()).await;
        let error = h
            .channel
            .unary::<Any, Any>(UNARY, &any("panic", []), options())
            .await
            .expect_err("panic");
        assert_eq!(error.code(), Code::UNKNOWN);
        let ok: Response<Any> = h
            .channel
            .unary(UNARY, &any("echo", b"after".to_vec()), options())
            .await
            .expect("same connection still serves");
        assert_eq!(ok.get_ref().value, b"after");
        h.server.shutdown().await;
    });
}

#[test]
fn drain_finishes_in_flight_calls_and_refuses_new_ones() {
    run(|| async {
        let h = start(ServerConfig::default()).await;
        let channel = h.channel.clone();
        let in_flight = glommio::spawn_local(async move {
            channel
                .unary::<Any, Any>(UNARY, &any("slow", b"x".to_vec()), options())
                .await
        });
        eventually("slow handler started", || h.probes.started.get() == 1).await;
        let server = h.server.clone();
        let shutdown = glommio::spawn_local(async move { server.shutdown().await });
        eventually("draining", || h.server.is_draining()).await;
        let refused = h
            .channel
            .unary::<Any, Any>(UNARY, &any("echo", []), options())
            .await
            .expect_err("new call during drain");
        assert_eq!(refused.code(), Code::UNAVAILABLE, "{refused}");
        let finished = in_flight.await.expect("in-flight call finishes");
        assert_eq!(finished.get_ref().value, b"x");
        shutdown.await;
        assert_eq!(h.server.active_connections(), 0);
        // Nothing accepts any more: a fresh connection is refused or closed.
        if let Ok(stream) = TcpStream::connect(h.addr).await
            && let Ok((channel, driver)) = Channel::handshake(stream, &h.addr.to_string()).await
        {
            glommio::spawn_local(driver).detach();
            let _ = channel
                .unary::<Any, Any>(
                    UNARY,
                    &any("echo", []),
                    options().with_timeout(Duration::from_millis(200)),
                )
                .await
                .expect_err("no server");
        }
    });
}

#[test]
fn many_concurrent_streams_share_one_connection() {
    run(|| async {
        let h = start(ServerConfig::default()).await;
        let calls = (0..200u32).map(|index| {
            let channel = h.channel.clone();
            async move {
                let message = any("echo", index.to_be_bytes().to_vec());
                let response: Response<Any> = channel
                    .unary(UNARY, &message, options())
                    .await
                    .expect("call");
                assert_eq!(response.into_inner(), message);
            }
        });
        futures_util::future::join_all(calls).await;
        assert_eq!(h.server.active_connections(), 1);
        h.server.shutdown().await;
    });
}

/// What a raw h2 request got back.
struct RawResponse {
    head: http::HeaderMap,
    head_ends_stream: bool,
    trailers: Option<http::HeaderMap>,
}

impl RawResponse {
    fn status_code(&self) -> String {
        let value = self
            .head
            .get("grpc-status")
            .or_else(|| self.trailers.as_ref().and_then(|t| t.get("grpc-status")))
            .expect("grpc-status in headers or trailers");
        value.to_str().expect("ascii").to_owned()
    }
}

/// Sends one gRPC request with raw h2 (any headers, any body bytes).
async fn raw_call(
    addr: SocketAddr,
    path: &str,
    extra_headers: &[(&str, &str)],
    body: Bytes,
) -> RawResponse {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut client, connection) = h2::client::handshake(stream.compat()).await.expect("h2");
    glommio::spawn_local(async move {
        let _ = connection.await;
    })
    .detach();
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in extra_headers {
        request = request.header(*name, *value);
    }
    let request = request.body(()).expect("request");
    let (response, mut send) = client.send_request(request, false).expect("send request");
    let _ = send.send_data(body, true);
    let response = response.await.expect("response");
    let (parts, mut body) = response.into_parts();
    let head_ends_stream = body.is_end_stream();
    while let Some(chunk) = body.data().await {
        if chunk.is_err() {
            break;
        }
    }
    let trailers = body.trailers().await.ok().flatten();
    RawResponse {
        head: parts.headers,
        head_ends_stream,
        trailers,
    }
}

#[test]
fn idle_connection_is_closed_after_the_idle_timeout() {
    run(|| async {
        let config = ServerConfig {
            idle_timeout: Some(Duration::from_millis(100)),
            ..ServerConfig::default()
        };
        let h = start(config).await;
        let _: Response<()> = h.channel.unary(EMPTY, &(), options()).await.expect("call");
        assert_eq!(h.server.active_connections(), 1);
        eventually("idle connection closed", || {
            h.server.active_connections() == 0
        })
        .await;
        let error = h
            .channel
            .unary::<(), ()>(EMPTY, &(), options())
            .await
            .expect_err("connection is gone");
        assert_eq!(error.code(), Code::UNAVAILABLE, "{error}");
        h.server.shutdown().await;
    });
}

#[test]
fn silent_connection_hits_the_handshake_timeout() {
    run(|| async {
        let config = ServerConfig {
            handshake_timeout: Duration::from_millis(100),
            ..ServerConfig::default()
        };
        let h = start(config).await;
        let silent = TcpStream::connect(h.addr).await.expect("connect");
        eventually("handshake started", || h.server.active_connections() == 2).await;
        eventually("silent connection dropped", || {
            h.server.active_connections() == 1
        })
        .await;
        drop(silent);
        h.server.shutdown().await;
    });
}

#[test]
fn keepalive_pings_are_answered_and_keep_the_connection() {
    run(|| async {
        let config = ServerConfig {
            keepalive_interval: Some(Duration::from_millis(20)),
            keepalive_timeout: Duration::from_millis(500),
            ..ServerConfig::default()
        };
        let h = start(config).await;
        glommio::timer::sleep(Duration::from_millis(200)).await;
        let _: Response<()> = h.channel.unary(EMPTY, &(), options()).await.expect("alive");
        assert_eq!(h.server.active_connections(), 1);
        h.server.shutdown().await;
    });
}

#[test]
fn connections_beyond_the_limit_wait_for_a_free_slot() {
    run(|| async {
        let config = ServerConfig {
            max_connections: 1,
            ..ServerConfig::default()
        };
        let h = start(config).await;
        let _: Response<()> = h.channel.unary(EMPTY, &(), options()).await.expect("first");
        let second = connect(h.addr).await;
        let waiting = second
            .unary::<(), ()>(
                EMPTY,
                &(),
                options().with_timeout(Duration::from_millis(100)),
            )
            .await
            .expect_err("not served while the first connection is open");
        assert_eq!(waiting.code(), Code::DEADLINE_EXCEEDED);
        // Dropping the only handle lets the first connection close.
        drop(h.channel);
        let _: Response<()> = second
            .unary(EMPTY, &(), options())
            .await
            .expect("served now");
        h.server.shutdown().await;
    });
}

#[test]
fn drain_grace_bounds_stuck_calls() {
    run(|| async {
        let config = ServerConfig {
            drain_grace: Duration::from_millis(100),
            ..ServerConfig::default()
        };
        let h = start(config).await;
        let channel = h.channel.clone();
        let stuck = glommio::spawn_local(async move {
            channel
                .unary::<Any, Any>(UNARY, &any("sleep", []), options())
                .await
        });
        eventually("handler started", || h.probes.started.get() == 1).await;
        h.server.shutdown().await;
        assert_eq!(h.server.active_connections(), 0);
        assert_eq!(
            h.probes.dropped.get(),
            1,
            "stuck handler dropped at the deadline"
        );
        let error = stuck.await.expect_err("stuck call fails");
        assert!(
            [Code::CANCELLED, Code::UNAVAILABLE].contains(&error.code()),
            "{error}"
        );
    });
}

#[test]
fn advertised_stream_limit_queues_extra_calls_on_the_client() {
    run(|| async {
        let config = ServerConfig {
            max_concurrent_streams: 2,
            ..ServerConfig::default()
        };
        let h = start(config).await;
        let calls = (0..20).map(|_| {
            let channel = h.channel.clone();
            async move {
                let _: Response<()> = channel.unary(EMPTY, &(), options()).await.expect("call");
            }
        });
        futures_util::future::join_all(calls).await;
        h.server.shutdown().await;
    });
}

#[test]
fn grpc_timeout_extremes_and_malformed_values() {
    run(|| async {
        let h = start(ServerConfig::default()).await;
        let mut body = BytesMut::new();
        shardlog_wire::codec::encode_message(&any("echo", []), &mut body);
        let body = body.freeze();
        let longest = raw_call(
            h.addr,
            UNARY,
            &[("grpc-timeout", "99999999H")],
            body.clone(),
        )
        .await;
        assert_eq!(longest.status_code(), "0");
        let expired = raw_call(h.addr, UNARY, &[("grpc-timeout", "0n")], body.clone()).await;
        assert!(["0", "4"].contains(&expired.status_code().as_str()));
        let malformed = raw_call(h.addr, UNARY, &[("grpc-timeout", "123456789S")], body).await;
        assert_eq!(malformed.status_code(), "13");
        h.server.shutdown().await;
    });
}

#[test]
fn response_sink_waits_for_a_slow_reader() {
    run(|| async {
        let h = start(ServerConfig::default()).await;
        let mut response: Response<Streaming<Any>> = h
            .channel
            .server_streaming(FLOOD, &(), options())
            .await
            .expect("flood call");
        eventually("flood started", || h.probes.flood_sent.get() > 0).await;
        // Not reading: windows (1 MiB) plus the send buffer (1 MiB) hold
        // about 32 messages; the handler must stall far below 200.
        glommio::timer::sleep(Duration::from_millis(200)).await;
        let sent_while_stalled = h.probes.flood_sent.get();
        assert!(
            sent_while_stalled < FLOOD_MESSAGES / 2,
            "handler ran ahead of the reader: {sent_while_stalled} sent"
        );
        let mut received = 0;
        while let Some(message) = response.get_mut().message().await.expect("message") {
            assert_eq!(message.value.len(), FLOOD_MESSAGE_BYTES);
            received += 1;
        }
        assert_eq!(received, FLOOD_MESSAGES);
        h.server.shutdown().await;
    });
}

/// Records every reported call outcome.
#[derive(Default)]
struct Outcomes {
    seen: RefCell<Vec<(Option<&'static str>, Code)>>,
}

impl CallObserver for Outcomes {
    fn call_finished(&self, method: Option<&'static str>, code: Code, _elapsed: Duration) {
        self.seen.borrow_mut().push((method, code));
    }
}

#[test]
fn observer_sees_handler_and_library_statuses() {
    run(|| async {
        let outcomes = Rc::new(Outcomes::default());
        let h = start_with(ServerConfig::default(), Some(outcomes.clone())).await;
        let _: Response<Any> = h
            .channel
            .unary(UNARY, &any("echo", []), options())
            .await
            .expect("ok");
        let _ = h
            .channel
            .unary::<Any, Any>("/test.Echo/Nope", &any("x", []), options())
            .await;
        let _ = h
            .channel
            .unary::<Any, Any>(UNARY, &any("panic", []), options())
            .await;
        let quick = options().with_timeout(Duration::from_millis(30));
        let _ = h
            .channel
            .unary::<Any, Any>(UNARY, &any("sleep", []), quick)
            .await;
        let mut streamed: Response<Streaming<Any>> = h
            .channel
            .server_streaming(SERVER_STREAM, &any("count", [2u8]), options())
            .await
            .expect("stream");
        while streamed
            .get_mut()
            .message()
            .await
            .expect("message")
            .is_some()
        {}
        eventually("five outcomes", || outcomes.seen.borrow().len() == 5).await;
        let seen = outcomes.seen.borrow().clone();
        assert_eq!(seen[0], (Some(UNARY), Code::OK));
        assert_eq!(seen[1], (None, Code::UNIMPLEMENTED));
        assert_eq!(seen[2], (Some(UNARY), Code::UNKNOWN));
        // The client's own deadline may fire first: then the server sees the reset.
        assert!(
            seen[3] == (Some(UNARY), Code::DEADLINE_EXCEEDED)
                || seen[3] == (Some(UNARY), Code::CANCELLED),
            "{:?}",
            seen[3]
        );
        assert_eq!(seen[4], (Some(SERVER_STREAM), Code::OK));
        h.server.shutdown().await;
    });
}

#[test]
fn interceptor_rejects_before_the_handler_and_records_the_principal() {
    run(|| async {
        let mut router = Router::new();
        router
            .unary(UNARY, |request: Request<Any>| async move {
                let principal = request.context().principal().unwrap_or("-").to_owned();
                Ok(Response::new(any("principal", principal)))
            })
            .intercept(|context: &CallContext, metadata: &Metadata| {
                if metadata.get("x-token").is_some_and(|token| token == "good") {
                    context.set_principal(Rc::from("alice"));
                    return Ok(());
                }
                Err(Status::new(Code::UNAUTHENTICATED, "missing token"))
            });
        let server = Server::new(router, ServerConfig::default());
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let addr = listener.local_addr().expect("local addr");
        let serving = server.clone();
        glommio::spawn_local(async move { serving.serve(listener).await.expect("serve") }).detach();
        let channel = connect(addr).await;

        let refused = channel
            .unary::<Any, Any>(UNARY, &any("echo", b"x".to_vec()), options())
            .await
            .expect_err("no token");
        assert_eq!(refused.code(), Code::UNAUTHENTICATED);
        assert_eq!(refused.message(), "missing token");

        let mut metadata = Metadata::new();
        metadata.insert("x-token", "good").expect("valid metadata");
        let admitted: Response<Any> = channel
            .unary(
                UNARY,
                &any("echo", b"x".to_vec()),
                options().with_metadata(metadata),
            )
            .await
            .expect("token accepted");
        assert_eq!(admitted.get_ref(), &any("principal", b"alice".to_vec()));
        server.shutdown().await;
    });
}
