//! Interop proof: clients we did not write (grpcio's C core from Python,
//! @grpc/grpc-js from Node, the stock grpcio health and reflection clients)
//! drive the interop `grpc.testing.TestService`, health and reflection on
//! our stack. Each test starts its own server on a free port.

#[path = "interop/harness.rs"]
mod harness;

use harness::{TestServer, assert_client_passed, require_node, require_python, run_client};

/// The interop cases driven by grpcio (Python, C core).
#[test]
fn interop_grpcio_cases() {
    require_python();
    let server = TestServer::start();
    let port = server.port().to_string();
    let run = run_client("python3", &["interop_client.py", "--port", &port]);
    assert_client_passed("grpcio interop client", &run);
}

/// The basic interop cases driven by @grpc/grpc-js (Node).
#[test]
fn interop_grpc_js_cases() {
    require_node();
    let server = TestServer::start();
    let port = server.port().to_string();
    let run = run_client("node", &["node/interop_client.js", "--port", &port]);
    assert_client_passed("grpc-js interop client", &run);
}

/// Health (Check, Watch) and reflection (v1 and v1alpha) with the stock
/// grpcio-health-checking and grpcio-reflection clients.
#[test]
fn interop_health_and_reflection() {
    require_python();
    let server = TestServer::start();
    let port = server.port().to_string();
    let run = run_client("python3", &["health_reflection.py", "--port", &port]);
    assert_client_passed("health/reflection client", &run);
}
