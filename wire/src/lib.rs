//! shardlog's gRPC layer: gRPC over HTTP/2 on `h2` with `prost` messages.

pub mod proto;
