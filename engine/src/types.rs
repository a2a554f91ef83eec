//! Plain data types of the engine's public API: identities, records, limits and results.

use std::fmt;
use std::rc::Rc;

use bytes::Bytes;

/// Identifies a partition: a topic name plus a partition number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    /// Topic name (validated by [`crate::validate_topic_name`]).
    pub topic: Rc<str>,
    /// Partition number within the topic.
    pub partition: u32,
}

impl PartitionId {
    /// Builds an id (no validation; `Shard::open_partition` validates).
    pub fn new(topic: &str, partition: u32) -> Self {
        PartitionId {
            topic: Rc::from(topic),
            partition,
        }
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// A record header (key/value pair).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header key.
    pub key: Bytes,
    /// Header value.
    pub value: Bytes,
}

/// A record to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Optional key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Bytes,
    /// Timestamp in milliseconds since the Unix epoch (caller-provided).
    pub timestamp_ms: i64,
    /// Headers.
    pub headers: Vec<Header>,
}

/// Idempotent producer identity of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProducerSeq {
    /// Producer id.
    pub producer_id: u64,
    /// Sequence number of the batch's first record.
    pub sequence: u64,
}

/// When an append resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckLevel {
    /// After an fdatasync covers the batch.
    Durable,
    /// Once buffered; a sync is started but not awaited. Never readable before durable.
    Written,
}

/// A batch to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendBatch {
    /// Records, at least one.
    pub records: Vec<Record>,
    /// Producer id and sequence for idempotence.
    pub producer: Option<ProducerSeq>,
}

/// Result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Offset of the batch's first record.
    pub base_offset: u64,
    /// Records in the batch.
    pub record_count: u32,
    /// True when the batch was a retry of one already appended (original offsets returned).
    pub duplicate: bool,
}

/// Bounds on one read. At least one record is returned when one is available, even if it
/// alone exceeds `max_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Most bytes to return: for `read`, the records' encoded bytes as stored (key, value,
    /// headers and the per-record and per-header fixed fields; see
    /// [`crate::format::record_encoded_bytes`]); for `read_batches`, whole batch bytes.
    /// Records are added while the total is below it, so the last one may cross it.
    pub max_bytes: usize,
    /// Most records to return.
    pub max_records: usize,
}

/// A record read back, with its offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Offset of the record.
    pub offset: u64,
    /// Key, if any.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Bytes,
    /// Timestamp.
    pub timestamp_ms: i64,
    /// Headers.
    pub headers: Vec<Header>,
}

/// Records read plus the offset to read next.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadResult {
    /// Records, in offset order.
    pub records: Vec<StoredRecord>,
    /// Offset after the last record returned (the requested offset when none).
    pub next_offset: u64,
}

/// Whole encoded batches read plus the offset to read next.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BatchReadResult {
    /// Encoded batches exactly as stored.
    pub batches: Vec<Bytes>,
    /// Offset after the last batch returned.
    pub next_offset: u64,
}

/// Offsets of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    /// First offset still stored (moves forward with retention).
    pub log_start: u64,
    /// Offset the next appended record will get.
    pub log_end: u64,
    /// Offset below which every record is durable (and readable).
    pub durable: u64,
}

/// Per-partition configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionConfig {
    /// Roll the active segment when an append would take it past this size.
    pub segment_bytes_max: u64,
    /// Roll the active segment once it is this old (checked on append).
    pub segment_age_ms_max: u64,
    /// Delete the oldest sealed segments while the partition is larger than this.
    pub retention_bytes_max: Option<u64>,
    /// Delete sealed segments whose newest record is older than this.
    pub retention_age_ms_max: Option<u64>,
    /// Bytes of log between two sparse index entries.
    pub index_interval_bytes: u32,
    /// Write a checkpoint after this much new durable data (bounds recovery work).
    pub checkpoint_interval_bytes: u64,
    /// Keep the active segment zero-filled ahead of the writer, in the background, so sync
    /// rounds never allocate blocks.
    pub prezero_segments: bool,
    /// Reuse a file retired by retention as the next segment, as it is, under a new CRC salt
    /// (its blocks are written already, so writes into it allocate nothing) instead of
    /// deleting it.
    pub recycle_segments: bool,
}

impl Default for PartitionConfig {
    fn default() -> Self {
        PartitionConfig {
            segment_bytes_max: 128 * 1024 * 1024,
            segment_age_ms_max: 7 * 24 * 3600 * 1000,
            retention_bytes_max: None,
            retention_age_ms_max: None,
            index_interval_bytes: 16 * 1024,
            checkpoint_interval_bytes: 16 * 1024 * 1024,
            prezero_segments: true,
            recycle_segments: true,
        }
    }
}

/// Counters of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartitionStats {
    /// Records appended (duplicates excluded).
    pub appended_records: u64,
    /// Encoded bytes appended.
    pub appended_bytes: u64,
    /// Batches recognised as producer retries.
    pub duplicate_batches: u64,
    /// fdatasync calls completed.
    pub syncs: u64,
    /// Latency of the last write+fdatasync round, microseconds.
    pub last_sync_latency_us: u64,
    /// Largest write+fdatasync round latency seen, microseconds.
    pub sync_latency_us_max: u64,
    /// Segments rolled.
    pub segment_rolls: u64,
    /// Segments deleted by retention (recycled ones included).
    pub segments_deleted: u64,
    /// Segments started from a recycled file (see [`PartitionConfig::recycle_segments`]).
    pub segments_recycled: u64,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Read windows served from the last sync round's buffers (no page fault, no disk read).
    pub tail_reads_from_memory: u64,
}
