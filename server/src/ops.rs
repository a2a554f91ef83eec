//! The operations a shard executes, for itself or for another shard, and
//! their outcomes. Everything here is `Send`: it crosses the mesh.

use shardlog_engine::{
    AckLevel, AppendBatch, Appended, EngineError, Offsets, PartitionConfig, ReadLimits, ReadResult,
};
use shardlog_wire::proto::shardlog::v1 as pb;
use shardlog_wire::{Code, Status};

use crate::catalog::{TopicMeta, TopicRetention};
use crate::groups::{CommittedOffset, GroupError};
use crate::security::quota::QuotaTicket;

/// Trailer giving a throttled client the milliseconds to wait before a retry.
pub const RETRY_AFTER_MS_TRAILER: &str = "retry-after-ms";

/// One operation, addressed to the shard that owns its subject.
pub enum Op {
    /// Append a batch to a local partition.
    Append {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: u32,
        /// The records and producer identity.
        batch: AppendBatch,
        /// When to acknowledge.
        ack: AckLevel,
        /// Whose produce quota it uses, if one applies.
        quota: Option<QuotaTicket>,
        /// Key, value and header bytes of the batch, as summed when the
        /// request was admitted: what the produce quota charges.
        record_bytes: usize,
    },
    /// Read records from a local partition, optionally waiting for new ones.
    Read {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: u32,
        /// First offset wanted.
        offset: u64,
        /// Size bounds of the answer.
        limits: ReadLimits,
        /// Wait up to this long for records at `offset`.
        wait_ms: u64,
        /// Whose fetch quota it uses, if one applies.
        quota: Option<QuotaTicket>,
    },
    /// Describe a topic's partitions owned here (one call per owner, not per
    /// partition, so a wide topic cannot use up the cross-core bound).
    Describe {
        /// Topic name.
        topic: String,
        /// Partition numbers this shard owns.
        partitions: Vec<u32>,
    },
    /// Create (or open) local partitions of a topic.
    OpenPartitions {
        /// Topic name.
        topic: String,
        /// Partition numbers this shard owns.
        partitions: Vec<u32>,
        /// Segment and retention settings.
        config: PartitionConfig,
    },
    /// Close and delete local partitions of a topic.
    RemovePartitions {
        /// Topic name.
        topic: String,
        /// Partition numbers this shard owns.
        partitions: Vec<u32>,
    },
    /// Catalog change broadcast by shard 0.
    CatalogUpsert(TopicMeta),
    /// Catalog removal broadcast by shard 0.
    CatalogRemove(String),
    /// Create a topic (only shard 0 executes this).
    CreateTopic {
        /// Topic name.
        name: String,
        /// Partition count.
        partition_count: u32,
        /// Retention settings.
        retention: TopicRetention,
    },
    /// Delete a topic (only shard 0 executes this).
    DeleteTopic {
        /// Topic name.
        name: String,
    },
    /// Commit a consumer-group offset on the group's owner.
    CommitOffset {
        /// Group name.
        group: String,
        /// What to commit.
        entry: CommittedOffset,
    },
    /// Look up a committed offset on the group's owner.
    GetCommitted {
        /// Group name.
        group: String,
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: u32,
    },
    /// This shard's metrics in Prometheus text format.
    Metrics,
}

impl Op {
    /// Topic and partition management, catalog broadcasts and metrics: never
    /// shed under load (a lost catalog broadcast would leave shards with
    /// different catalogs).
    pub fn is_control_plane(&self) -> bool {
        matches!(
            self,
            Op::OpenPartitions { .. }
                | Op::RemovePartitions { .. }
                | Op::CatalogUpsert(_)
                | Op::CatalogRemove(_)
                | Op::CreateTopic { .. }
                | Op::DeleteTopic { .. }
                | Op::Metrics
        )
    }
}

/// A partition as `DescribeTopic` reports it.
#[derive(Debug, Clone)]
pub struct PartitionState {
    /// Offsets.
    pub offsets: Offsets,
    /// Bytes on disk.
    pub size_bytes: u64,
    /// Why the partition refuses service, if it does.
    pub fault: Option<String>,
}

/// The successful outcome of an [`Op`].
pub enum Reply {
    /// Append result.
    Appended(Appended),
    /// Read result with the partition's offsets after the read.
    Read(ReadResult, Offsets),
    /// Describe result: each asked partition's state, or why it has none
    /// (not open on its owner), in the order asked.
    Described(Vec<(u32, Result<PartitionState, Failure>)>),
    /// A topic's metadata.
    Topic(TopicMeta),
    /// Committed offset and metadata, if any.
    Committed(Option<(u64, String)>),
    /// Metrics text.
    Metrics(String),
    /// Done, nothing to report.
    Done,
}

/// A failed [`Op`]: a gRPC code and a message naming what was involved.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The gRPC status code.
    pub code: Code,
    /// What went wrong, for humans.
    pub message: String,
    /// For a throttled call: when a retry would be admitted (sent as the
    /// [`RETRY_AFTER_MS_TRAILER`] trailer).
    pub retry_after_ms: Option<u64>,
    /// For a produce refused for its idempotence sequence: which refusal (sent as the
    /// [`pb::SEQUENCE_ERROR_TRAILER`] trailer).
    pub sequence_error: Option<&'static str>,
}

impl Failure {
    /// A failure with `code` and `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: None,
            sequence_error: None,
        }
    }

    /// NOT_FOUND for a topic.
    pub fn unknown_topic(topic: &str) -> Self {
        Self::new(Code::NOT_FOUND, format!("topic {topic:?} does not exist"))
    }

    /// A reply of the wrong kind: a bug, reported as INTERNAL.
    pub fn unexpected_reply(op: &str) -> Self {
        Self::new(
            Code::INTERNAL,
            format!("{op}: unexpected reply kind from the owning shard"),
        )
    }
}

impl From<Failure> for Status {
    fn from(failure: Failure) -> Self {
        let mut status = Status::new(failure.code, failure.message);
        if let Some(retry_after_ms) = failure.retry_after_ms {
            // A decimal number is always a valid metadata value.
            let _ = status
                .metadata_mut()
                .insert(RETRY_AFTER_MS_TRAILER, &retry_after_ms.to_string());
        }
        if let Some(kind) = failure.sequence_error {
            // A fixed ASCII word is always a valid metadata value.
            let _ = status
                .metadata_mut()
                .insert(pb::SEQUENCE_ERROR_TRAILER, kind);
        }
        status
    }
}

impl From<EngineError> for Failure {
    fn from(error: EngineError) -> Self {
        let sequence_error = match error {
            EngineError::SequenceGap { .. } => Some(pb::SEQUENCE_GAP),
            EngineError::StaleSequence { .. } => Some(pb::SEQUENCE_STALE),
            _ => None,
        };
        Self {
            sequence_error,
            ..Self::new(engine_error_code(&error), error.to_string())
        }
    }
}

impl From<GroupError> for Failure {
    fn from(error: GroupError) -> Self {
        let code = match error {
            GroupError::Limit { .. } => Code::RESOURCE_EXHAUSTED,
            GroupError::Meta(_) => Code::INTERNAL,
        };
        Self::new(code, error.to_string())
    }
}

/// The gRPC code a client can act on for each engine error.
pub fn engine_error_code(error: &EngineError) -> Code {
    match error {
        EngineError::InvalidTopicName { .. } => Code::INVALID_ARGUMENT,
        EngineError::EmptyBatch { .. } => Code::INVALID_ARGUMENT,
        EngineError::BatchTooLarge { .. } => Code::RESOURCE_EXHAUSTED,
        EngineError::OffsetOutOfRange { .. } => Code::OUT_OF_RANGE,
        EngineError::SequenceGap { .. } | EngineError::StaleSequence { .. } => {
            Code::FAILED_PRECONDITION
        }
        EngineError::PartitionNotFound { .. } => Code::NOT_FOUND,
        EngineError::Format(_) => Code::INVALID_ARGUMENT,
        EngineError::NoSpace { .. } | EngineError::AppendedNotDurable { .. } => {
            Code::RESOURCE_EXHAUSTED
        }
        EngineError::TooManyHeaders { .. } => Code::INVALID_ARGUMENT,
        EngineError::Closed { .. } => Code::UNAVAILABLE,
        _ => Code::INTERNAL,
    }
}
