//! The shardlog server: a shard-per-core runtime serving the `shardlog.v1.Log`
//! gRPC service over the `wire` crate, storing through the `engine` crate.
//!
//! This is the only crate that sees both gRPC and storage. Each shard (one
//! pinned glommio executor) owns a disjoint set of partitions; a request for a
//! partition owned elsewhere crosses a bounded cross-core queue ([`mesh`]).

#![deny(missing_docs)]

pub mod catalog;
pub mod config;
pub mod groups;
pub mod mesh;
pub mod meta_store;
pub mod metrics;
pub mod ops;
pub mod runtime;
pub mod security;
pub mod service;
pub mod shard;
pub mod storage;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}
