//! The wire client half against a raw h2 server written in the test: the
//! exact request headers the client sends, and how it maps what a server
//! may answer (HTTP errors, wrong content-type, Trailers-Only, bad
//! trailers) to statuses.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use http::{HeaderMap, HeaderValue, StatusCode};
use shardlog_wire::client::{CallOptions, Channel};
use shardlog_wire::{Code, Encoding, Metadata, Response};
use tokio_util::compat::FuturesAsyncReadCompatExt as _;

/// Request headers the raw server saw, in arrival order.
type Seen = Rc<RefCell<Vec<HeaderMap>>>;

fn run<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .name("wire-core-client-test")
        .spawn(move || async move { test().await })
        .expect("spawn executor")
        .join()
        .expect("executor finished");
}

/// Serves connections with a raw h2 server whose answer depends on the
/// request path's method name.
fn start_raw_server(seen: Seen) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    glommio::spawn_local(async move {
        while let Ok(stream) = listener.accept().await {
            let seen = seen.clone();
            glommio::spawn_local(serve_raw(stream, seen)).detach();
        }
    })
    .detach();
    addr
}

async fn serve_raw(stream: TcpStream, seen: Seen) {
    let Ok(mut connection) = h2::server::handshake(stream.compat()).await else {
        return;
    };
    while let Some(Ok((request, respond))) = connection.accept().await {
        seen.borrow_mut().push(request.headers().clone());
        let method = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_owned();
        glommio::spawn_local(answer(method, request.into_body(), respond)).detach();
    }
}

fn grpc_head(status: StatusCode) -> http::Response<()> {
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

async fn answer(
    method: String,
    mut body: h2::RecvStream,
    mut respond: h2::server::SendResponse<Bytes>,
) {
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    match method.as_str() {
        "NotFound" => {
            let _ = respond.send_response(grpc_head(StatusCode::NOT_FOUND), true);
        }
        "Html" => {
            let mut head = http::Response::new(());
            head.headers_mut()
                .insert("content-type", HeaderValue::from_static("text/html"));
            let _ = respond.send_response(head, true);
        }
        "TrailersOnlyError" => {
            let mut head = grpc_head(StatusCode::OK);
            head.headers_mut()
                .insert("grpc-status", HeaderValue::from_static("7"));
            head.headers_mut().insert(
                "grpc-message",
                HeaderValue::from_static("no%20way%E2%98%BA"),
            );
            let _ = respond.send_response(head, true);
        }
        "NoStatus" => {
            let Ok(mut stream) = respond.send_response(grpc_head(StatusCode::OK), false) else {
                return;
            };
            let _ = stream.send_data(empty_frame(), false);
            let _ = stream.send_trailers(HeaderMap::new());
        }
        "TwoMessages" => {
            let Ok(mut stream) = respond.send_response(grpc_head(StatusCode::OK), false) else {
                return;
            };
            let _ = stream.send_data(empty_frame(), false);
            let _ = stream.send_data(empty_frame(), false);
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let _ = stream.send_trailers(trailers);
        }
        _ => {
            let Ok(mut stream) = respond.send_response(grpc_head(StatusCode::OK), false) else {
                return;
            };
            let _ = stream.send_data(empty_frame(), false);
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let _ = stream.send_trailers(trailers);
        }
    }
}

fn empty_frame() -> Bytes {
    let mut frame = BytesMut::new();
    shardlog_wire::codec::encode_raw(false, b"", &mut frame);
    frame.freeze()
}

async fn connect(addr: SocketAddr) -> Channel {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (channel, driver) = Channel::handshake(stream, &addr.to_string())
        .await
        .expect("handshake");
    glommio::spawn_local(driver).detach();
    channel
}

#[test]
fn client_sends_grpc_request_headers() {
    run(|| async {
        let seen = Seen::default();
        let addr = start_raw_server(seen.clone());
        let channel = connect(addr).await;
        let mut metadata = Metadata::new();
        metadata.insert("x-user", "alice").expect("valid");
        metadata.insert_bin("x-blob-bin", &[0x0a]).expect("valid");
        let options = CallOptions::default()
            .with_timeout(Duration::from_secs(5))
            .with_metadata(metadata)
            .with_compression(Encoding::Gzip);
        let _: Response<()> = channel
            .unary("/pkg.Svc/Ok", &(), options)
            .await
            .expect("ok call");
        let seen = seen.borrow();
        let headers = &seen[0];
        assert_eq!(headers.get("content-type").expect("ct"), "application/grpc");
        assert_eq!(headers.get("te").expect("te"), "trailers");
        assert_eq!(headers.get("grpc-encoding").expect("encoding"), "gzip");
        assert_eq!(headers.get("grpc-accept-encoding").expect("accept"), "gzip");
        let timeout = headers.get("grpc-timeout").expect("timeout").as_bytes();
        let timeout = shardlog_wire::metadata::parse_timeout(timeout).expect("valid timeout");
        assert_eq!(timeout, Duration::from_secs(5));
        assert_eq!(headers.get("x-user").expect("metadata"), "alice");
        assert_eq!(
            headers.get("x-blob-bin").expect("bin metadata"),
            "Cg",
            "unpadded"
        );
        assert!(headers.get("user-agent").is_some());
    });
}

#[test]
fn client_maps_server_answers_to_statuses() {
    run(|| async {
        let addr = start_raw_server(Seen::default());
        let channel = connect(addr).await;
        let cases = [
            ("/pkg.Svc/NotFound", Code::UNIMPLEMENTED),
            ("/pkg.Svc/Html", Code::UNKNOWN),
            ("/pkg.Svc/TrailersOnlyError", Code::PERMISSION_DENIED),
            ("/pkg.Svc/NoStatus", Code::INTERNAL),
            ("/pkg.Svc/TwoMessages", Code::INTERNAL),
        ];
        for (path, code) in cases {
            let error = channel
                .unary::<(), ()>(path, &(), CallOptions::default())
                .await
                .expect_err(path);
            assert_eq!(error.code(), code, "{path}: {error}");
            if path.ends_with("TrailersOnlyError") {
                assert_eq!(error.message(), "no way☺");
            }
        }
        let _: Response<()> = channel
            .unary("/pkg.Svc/Ok", &(), CallOptions::default())
            .await
            .expect("the channel still works");
    });
}
