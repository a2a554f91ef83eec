//! shardlog's gRPC layer: gRPC over HTTP/2 on `h2` with `prost` messages.
//!
//! Layers, bottom up (each module's doc says its job):
//! - [`codec`]: length-prefixed message framing and gzip, pure and zero-copy;
//! - [`metadata`], [`headers`], [`status`]: the gRPC header formats;
//! - [`call`] types handlers and callers see ([`Request`], [`Response`],
//!   [`Streaming`], [`ResponseSink`], [`CallContext`]);
//! - [`server`]: routing, the four call shapes, HTTP/2 limits, timeouts,
//!   drain, plaintext and TLS listeners ([`tls`]: rustls setup, mTLS
//!   principal, reload); [`client`]: an h2 client with the same framing;
//! - [`proto`] (generated messages) and [`services`] (health, reflection,
//!   interop test service).
//!
//! `wire` does no disk I/O and knows nothing of the storage engine.

#![deny(missing_docs)]

pub mod call;
pub mod client;
pub mod codec;
mod error;
mod event;
pub mod headers;
pub mod metadata;
pub mod proto;
pub mod server;
pub mod services;
pub mod status;
pub mod tls;

pub use call::{
    CallContext, CancelToken, ConnectionInfo, Request, Response, ResponseSink, Streaming,
};
pub use codec::Encoding;
pub use error::WireError;
pub use metadata::{Metadata, MetadataError, MetadataValue};
pub use status::{Code, Status};
