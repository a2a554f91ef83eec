//! The wire client half against grpcio's C-core server (Python), a stack we
//! did not write: all four call shapes, metadata both ways, status and
//! message round trip, deadline, gzip both ways.
//!
//! Needs `python3` with `grpcio` and `protobuf`
//! (`pip install -r wire/tests/interop/requirements.txt`); fails naming that
//! command when they are missing.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use glommio::net::TcpStream;
use glommio::{LocalExecutorBuilder, Placement};
use prost_types::Any;
use shardlog_wire::client::{CallOptions, Channel};
use shardlog_wire::{Code, Encoding, Metadata, Response, Streaming};

const PIP_INSTALL: &str = "pip install -r wire/tests/interop/requirements.txt";

/// The Python server process; killed when dropped.
struct GrpcioServer {
    child: Child,
    port: u16,
}

impl GrpcioServer {
    fn start(extra_args: &[&str]) -> GrpcioServer {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/core_grpcio_server.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(extra_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("python3 not runnable ({error}): {PIP_INSTALL}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the port");
        let Ok(port) = line.trim().parse() else {
            let _ = child.kill();
            panic!("grpcio server did not start (got {line:?}): {PIP_INSTALL}");
        };
        GrpcioServer { child, port }
    }
}

impl Drop for GrpcioServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_against(
    server: &GrpcioServer,
    test: fn(Channel) -> std::pin::Pin<Box<dyn Future<Output = ()>>>,
) {
    let port = server.port;
    LocalExecutorBuilder::new(Placement::Unbound)
        .name("wire-core-grpcio")
        .spawn(move || async move {
            let address = format!("127.0.0.1:{port}");
            let stream = TcpStream::connect(&address).await.expect("connect");
            let (channel, driver) = Channel::handshake(stream, &address)
                .await
                .expect("handshake");
            glommio::spawn_local(driver).detach();
            test(channel).await;
        })
        .expect("spawn executor")
        .join()
        .expect("executor finished");
}

fn any(type_url: &str, value: impl Into<Vec<u8>>) -> Any {
    Any {
        type_url: type_url.to_owned(),
        value: value.into(),
    }
}

fn options() -> CallOptions {
    CallOptions::default().with_timeout(Duration::from_secs(10))
}

async fn all_shapes(channel: Channel) {
    let mut metadata = Metadata::new();
    metadata.insert("x-echo", "ascii value").expect("valid");
    metadata
        .insert_bin("x-echo-bin", &[0, 0xff, 0x10])
        .expect("valid");
    let response: Response<Any> = channel
        .unary(
            "/echo.Echo/Unary",
            &any("u", b"payload".to_vec()),
            options().with_metadata(metadata),
        )
        .await
        .expect("unary");
    assert_eq!(response.get_ref(), &any("u", b"payload".to_vec()));
    assert_eq!(response.metadata().get("x-echo"), Some("ascii value"));
    assert_eq!(
        response.metadata().get_bin("x-echo-bin"),
        Some(Ok(vec![0, 0xff, 0x10]))
    );
    assert_eq!(
        response.trailers().get("x-echo-trailer"),
        Some("ascii value")
    );
    assert_eq!(
        response.trailers().get_bin("x-trailer-bin"),
        Some(Ok(vec![0, 0xff, 0x10]))
    );

    let mut streamed: Response<Streaming<Any>> = channel
        .server_streaming("/echo.Echo/ServerStream", &any("25", []), options())
        .await
        .expect("server streaming");
    let mut received = 0;
    while let Some(message) = streamed.get_mut().message().await.expect("message") {
        assert_eq!(message.value, vec![received as u8; 100]);
        received += 1;
    }
    assert_eq!(received, 25);

    let (mut sink, reply) = channel
        .client_streaming::<Any, Any>("/echo.Echo/ClientStream", options())
        .await
        .expect("client streaming");
    for _ in 0..10 {
        sink.send(&any("part", vec![1u8; 1000]))
            .await
            .expect("send");
    }
    sink.finish().expect("half-close");
    assert_eq!(
        reply.response().await.expect("reply").get_ref().type_url,
        "10:10000"
    );

    let (mut sink, reply) = channel
        .bidi_streaming::<Any, Any>("/echo.Echo/Bidi", options())
        .await
        .expect("bidi");
    sink.send(&any("ping", [0u8])).await.expect("send");
    let mut reply = reply.response().await.expect("headers");
    for round in 0..10u8 {
        if round > 0 {
            sink.send(&any("ping", [round])).await.expect("send");
        }
        let echoed = reply.get_mut().message().await.expect("ok").expect("echo");
        assert_eq!(echoed.value, vec![round]);
    }
    sink.finish().expect("half-close");
    assert_eq!(reply.get_mut().message().await.expect("clean end"), None);
}

async fn status_deadline_and_compression(channel: Channel) {
    let text = "\t\ntest with whitespace\r\nand Unicode BMP ☺ and non-BMP 😈\t\n";
    let error = channel
        .unary::<Any, Any>(
            "/echo.Echo/Fail",
            &any("3", text.as_bytes().to_vec()),
            options(),
        )
        .await
        .expect_err("aborted");
    assert_eq!(error.code(), Code::INVALID_ARGUMENT);
    assert_eq!(error.message(), text);

    let error = channel
        .unary::<Any, Any>(
            "/echo.Echo/Sleep",
            &any("s", []),
            CallOptions::default().with_timeout(Duration::from_millis(200)),
        )
        .await
        .expect_err("deadline");
    assert_eq!(error.code(), Code::DEADLINE_EXCEEDED);

    let error = channel
        .unary::<Any, Any>("/echo.Echo/Nope", &any("n", []), options())
        .await
        .expect_err("unknown method");
    assert_eq!(error.code(), Code::UNIMPLEMENTED);

    let payload = vec![b'g'; 20_000];
    let response: Response<Any> = channel
        .unary(
            "/echo.Echo/Unary",
            &any("gzip", payload.clone()),
            options().with_compression(Encoding::Gzip),
        )
        .await
        .expect("gzip request");
    assert_eq!(
        response.get_ref().type_url,
        "gzip",
        "server saw a gzip request"
    );
    assert_eq!(response.get_ref().value, payload);
    assert_eq!(
        response.metadata().get("grpc-encoding"),
        Some("gzip"),
        "gzip response"
    );
}

#[test]
fn client_against_grpcio_all_call_shapes_and_metadata() {
    let server = GrpcioServer::start(&[]);
    run_against(&server, |channel| Box::pin(all_shapes(channel)));
}

#[test]
fn client_against_grpcio_status_deadline_and_gzip() {
    let server = GrpcioServer::start(&["--gzip"]);
    run_against(&server, |channel| {
        Box::pin(status_deadline_and_compression(channel))
    });
}
