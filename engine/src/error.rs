//! The engine's error type: every variant names what failed and where.

use std::io;
use std::path::PathBuf;

use crate::format::FormatError;
use crate::types::PartitionId;

/// Errors returned by the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Topic name outside `[a-zA-Z0-9._-]{1,249}` or equal to `.`/`..`.
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName {
        /// The rejected name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// An append with no records.
    #[error("{partition}: empty batch")]
    EmptyBatch {
        /// Partition.
        partition: PartitionId,
    },
    /// An append whose encoding exceeds the batch limit.
    #[error(
        "{partition}: batch of {batch_bytes} bytes / {record_count} records exceeds {batch_bytes_max} bytes"
    )]
    BatchTooLarge {
        /// Partition.
        partition: PartitionId,
        /// Encoded size.
        batch_bytes: usize,
        /// Records.
        record_count: usize,
        /// Limit.
        batch_bytes_max: usize,
    },
    /// A record with more headers than the batch format holds (the decoder would refuse it, so
    /// it is refused before it is written).
    #[error(
        "{partition}: record {record_index} has {header_count} headers, more than the limit of {headers_max}"
    )]
    TooManyHeaders {
        /// Partition.
        partition: PartitionId,
        /// Index of the record in its batch.
        record_index: usize,
        /// Headers it has.
        header_count: usize,
        /// Limit ([`crate::format::RECORD_HEADERS_MAX`]).
        headers_max: usize,
    },
    /// A read outside `[log_start, log_end]`.
    #[error("{partition}: offset {requested} out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        /// Partition.
        partition: PartitionId,
        /// Requested offset.
        requested: u64,
        /// First stored offset.
        log_start: u64,
        /// Next offset to be assigned.
        log_end: u64,
    },
    /// An idempotent batch whose sequence skips ahead of the next expected one.
    #[error("{partition}: producer {producer_id} sequence gap: expected {expected}, got {got}")]
    SequenceGap {
        /// Partition.
        partition: PartitionId,
        /// Producer id.
        producer_id: u64,
        /// Next expected sequence.
        expected: u64,
        /// Sequence received.
        got: u64,
    },
    /// An idempotent batch older than the retained window that matches no retained batch.
    #[error("{partition}: producer {producer_id} stale sequence {got} (next expected {expected})")]
    StaleSequence {
        /// Partition.
        partition: PartitionId,
        /// Producer id.
        producer_id: u64,
        /// Next expected sequence.
        expected: u64,
        /// Sequence received.
        got: u64,
    },
    /// The partition refuses service after a storage failure or detected corruption.
    #[error("partition {partition} faulted: {reason}")]
    PartitionFaulted {
        /// Partition.
        partition: PartitionId,
        /// Why it faulted.
        reason: String,
    },
    /// Stored bytes that must be valid are not.
    #[error("{partition}: corruption in {path:?} at byte {position} (offset {offset}): {detail}")]
    Corruption {
        /// Partition.
        partition: PartitionId,
        /// File.
        path: PathBuf,
        /// Byte position in the file.
        position: u64,
        /// Offset expected there.
        offset: u64,
        /// What was wrong.
        detail: String,
    },
    /// An I/O operation failed.
    #[error("{op} {path:?}: {source}")]
    Io {
        /// Operation.
        op: &'static str,
        /// File or directory.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// A batch was appended (its offsets assigned, its bytes buffered) but could not be made
    /// durable because the file system is full. It is not lost: it is written once space is
    /// freed, and a retry with the same producer id and sequence gets these offsets.
    #[error(
        "{partition}: batch appended at offsets {base_offset}..{end_offset} but not durable: {op} {path:?}: no space left on device; it is written once space is freed"
    )]
    AppendedNotDurable {
        /// Partition.
        partition: PartitionId,
        /// The batch's first offset.
        base_offset: u64,
        /// Offset after its last record.
        end_offset: u64,
        /// Operation that failed.
        op: &'static str,
        /// File.
        path: PathBuf,
    },
    /// The file system is full.
    #[error("{op} {path:?}: no space left on device")]
    NoSpace {
        /// Operation.
        op: &'static str,
        /// File.
        path: PathBuf,
    },
    /// The partition or shard is closed (or being removed).
    #[error("{partition}: closed")]
    Closed {
        /// Partition.
        partition: PartitionId,
    },
    /// `open_partition(create = false)` on a partition with no files.
    #[error("{partition}: not found")]
    PartitionNotFound {
        /// Partition.
        partition: PartitionId,
    },
    /// A batch did not decode (reported for codec users; storage reports `Corruption`).
    #[error("bad batch: {0}")]
    Format(#[from] FormatError),
}

impl EngineError {
    /// Wraps an I/O error, mapping ENOSPC to [`EngineError::NoSpace`].
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            EngineError::NoSpace { op, path }
        } else {
            EngineError::Io { op, path, source }
        }
    }
}

/// Result alias.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
