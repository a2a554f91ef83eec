//! The measuring stick for the wire benchmark: `grpc.testing.TestService/EmptyCall`
//! on tonic 0.14 + tokio with one thread (current_thread runtime), the
//! server a Rust user would otherwise write. Pin it with `taskset -c 0`.
//!
//! Usage: `tonic-empty-server --port PORT` (127.0.0.1); runs until killed.
//! The service is written by hand on `tonic::server::Grpc` (no codegen),
//! as tonic's generated code would be: same codec, same routing cost.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use shardlog_wire::proto::grpc::testing::Empty;
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};

const EMPTY_CALL_PATH: &str = "/grpc.testing.TestService/EmptyCall";

/// `grpc.testing.TestService` with only `EmptyCall`.
#[derive(Clone, Copy, Debug, Default)]
struct EmptyTestService;

impl tonic::server::NamedService for EmptyTestService {
    const NAME: &'static str = "grpc.testing.TestService";
}

/// The unary handler: returns `Empty`.
struct EmptyCall;

impl tonic::server::UnaryService<Empty> for EmptyCall {
    type Response = Empty;
    type Future = BoxFuture<tonic::Response<Empty>, tonic::Status>;

    fn call(&mut self, _request: tonic::Request<Empty>) -> Self::Future {
        Box::pin(async { Ok(tonic::Response::new(Empty {})) })
    }
}

impl<B> Service<http::Request<B>> for EmptyTestService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() == EMPTY_CALL_PATH {
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(EmptyCall, request).await)
            })
        } else {
            Box::pin(async { Ok(tonic::Status::unimplemented("").into_http()) })
        }
    }
}

fn port_from_args() -> Result<u16, String> {
    let args: Vec<String> = std::env::args().collect();
    match args.as_slice() {
        [_, flag, port] if flag == "--port" => port.parse().map_err(|e| format!("port: {e}")),
        _ => Err("usage: tonic-empty-server --port PORT".into()),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = port_from_args()?;
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    runtime.block_on(async move {
        tonic::transport::Server::builder()
            .add_service(EmptyTestService)
            .serve(address)
            .await
    })?;
    Ok(())
}
