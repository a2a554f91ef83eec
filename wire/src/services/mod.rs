//! Standard gRPC services served next to shardlog's own: health checking,
//! server reflection and the interop `grpc.testing.TestService`.

pub mod health;
pub mod reflection;
pub mod testing;
