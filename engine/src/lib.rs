//! shardlog's storage engine: a durable, partitioned, append-only log on WAL segment files.
//!
//! A [`Shard`] owns a set of [`Partition`]s on one glommio executor (thread-per-core: nothing
//! here is `Send`, nothing on the append path takes a lock shared across cores). Appends are
//! encoded once into an aligned write buffer, written with O_DIRECT through io_uring and
//! acknowledged after a group-committed fdatasync. All I/O goes through the narrow
//! [`Storage`] trait: [`DmaStorage`] is the real backend, [`SimStorage`] a deterministic,
//! fault-injecting simulation used by the crash tests. The engine knows nothing of gRPC.
//!
//! See `docs/format.md` for the byte layout and `docs/architecture.md` ("The engine") for the map and invariants.
#![deny(missing_docs)]

mod checkpoint;
mod error;
pub mod format;
mod notify;
mod partition;
mod producer;
mod recovery;
mod segment;
mod shard;
pub mod storage;
mod types;

pub use error::{EngineError, Result};
pub use partition::{
    LatencyHistogram, Partition, SYNC_ROUND_BUCKETS_US, SyncRoundStats, ZERO_FILLS_PER_SHARD_MAX,
    ZeroFillStats,
};
pub use recovery::{SaltedSearch, ScanEnd, ScanOutcome, find_salted_batch, scan_batches};
pub use shard::Shard;
pub use storage::{DmaStorage, IoBuffer, OpenMode, SimConfig, SimStorage, Storage, StorageFile};
pub use types::{
    AckLevel, AppendBatch, Appended, BatchReadResult, Header, Offsets, PartitionConfig,
    PartitionId, PartitionStats, ProducerSeq, ReadLimits, ReadResult, Record, StoredRecord,
};

/// Longest topic name.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Checks a topic name: `[a-zA-Z0-9._-]{1,249}`, not `.` or `..` (so it is a safe path component).
pub fn validate_topic_name(name: &str) -> Result<()> {
    let reject = |reason| {
        Err(EngineError::InvalidTopicName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() || name.len() > TOPIC_NAME_BYTES_MAX {
        return reject("length must be 1..=249");
    }
    if name == "." || name == ".." {
        return reject("`.` and `..` are reserved");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return reject("allowed characters are a-z A-Z 0-9 . _ -");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        for ok in ["a", "A.b_c-9", &"x".repeat(249), "..."] {
            assert!(validate_topic_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(250), "é", "a\0"] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
    }
}
