//! Errors of the client library and the retry classification of gRPC
//! statuses: which failures a retry can fix and which go to the caller.

use crate::status::{Code, Status};

/// What to do about a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClass {
    /// Transient: the server was unreachable, overloaded, shutting down or
    /// slow. Retry after a backoff (idempotent sequences make it safe).
    Retry,
    /// The request itself is wrong for the server's state (bad argument,
    /// unknown topic, too large, sequence gap): retrying cannot help.
    Fatal,
}

/// Classifies a gRPC status code: UNAVAILABLE (connection loss maps here)
/// and DEADLINE_EXCEEDED are retried, everything else is surfaced.
pub fn classify(code: Code) -> RetryClass {
    match code {
        Code::UNAVAILABLE | Code::DEADLINE_EXCEEDED => RetryClass::Retry,
        _ => RetryClass::Fatal,
    }
}

/// Errors of the client library. `Clone` because one batch failure is
/// reported to every record of the batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a non-OK status.
    #[error("{operation}: {status}")]
    Status {
        /// The RPC or step that failed.
        operation: &'static str,
        /// The server's (or the transport's) status.
        status: Status,
    },
    /// No connection could be established.
    #[error("connect to {addr}: {reason}")]
    Connect {
        /// The server address.
        addr: String,
        /// The I/O or handshake error.
        reason: String,
    },
    /// The producer's buffer is full and the producer is set to fail
    /// rather than wait.
    #[error(
        "producer buffer full: {buffered_records} records / {buffered_bytes} bytes buffered \
         (limits {buffer_records_max} records / {buffer_bytes_max} bytes); \
         the server is not keeping up or unreachable"
    )]
    BufferFull {
        /// Records buffered now.
        buffered_records: usize,
        /// Bytes buffered now.
        buffered_bytes: usize,
        /// The configured record bound.
        buffer_records_max: usize,
        /// The configured byte bound.
        buffer_bytes_max: usize,
    },
    /// One record is larger than a whole batch may be.
    #[error("record of {record_bytes} bytes exceeds batch_bytes_max {batch_bytes_max}")]
    RecordTooLarge {
        /// The record's key + value bytes.
        record_bytes: usize,
        /// The configured batch byte bound.
        batch_bytes_max: usize,
    },
    /// A batch ran out of retries or past its delivery deadline; it may or
    /// may not have been stored (the partition continues under a new
    /// producer id, so later records are unaffected).
    #[error(
        "delivery to {topic}/{partition} gave up after {attempts} attempts in {elapsed_ms} ms: {last_error}"
    )]
    DeliveryFailed {
        /// The batch's topic.
        topic: String,
        /// The batch's partition.
        partition: u32,
        /// Failed attempts in a row.
        attempts: u32,
        /// Time since the batch was sealed.
        elapsed_ms: u64,
        /// The last transient failure.
        last_error: String,
    },
    /// The topic does not exist or reports no partitions.
    #[error("topic {topic:?}: {reason}")]
    Topic {
        /// The topic name.
        topic: String,
        /// What is wrong.
        reason: String,
    },
    /// The producer or client was closed.
    #[error("closed: {0}")]
    Closed(&'static str),
    /// A configuration value is out of range.
    #[error("invalid client setting {setting}: {reason}")]
    InvalidConfig {
        /// The setting's field name.
        setting: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
}

impl ClientError {
    /// The error's retry class: transient statuses and connect failures
    /// are retryable, everything else is not.
    pub fn retry_class(&self) -> RetryClass {
        match self {
            ClientError::Status { status, .. } => classify(status.code()),
            ClientError::Connect { .. } => RetryClass::Retry,
            _ => RetryClass::Fatal,
        }
    }

    /// The gRPC status behind this error, if it came from a call.
    pub fn status(&self) -> Option<&Status> {
        match self {
            ClientError::Status { status, .. } => Some(status),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_codes_retry_and_caller_errors_do_not() {
        for code in [Code::UNAVAILABLE, Code::DEADLINE_EXCEEDED] {
            assert_eq!(classify(code), RetryClass::Retry, "{code:?}");
        }
        for code in [
            Code::INVALID_ARGUMENT,
            Code::NOT_FOUND,
            Code::RESOURCE_EXHAUSTED,
            Code::FAILED_PRECONDITION,
            Code::ALREADY_EXISTS,
            Code::OUT_OF_RANGE,
            Code::INTERNAL,
            Code::UNIMPLEMENTED,
            Code::PERMISSION_DENIED,
            Code(99),
        ] {
            assert_eq!(classify(code), RetryClass::Fatal, "{code:?}");
        }
        let connect = ClientError::Connect {
            addr: "127.0.0.1:1".into(),
            reason: "refused".into(),
        };
        assert_eq!(connect.retry_class(), RetryClass::Retry);
        let status = ClientError::Status {
            operation: "Produce",
            status: Status::new(Code::RESOURCE_EXHAUSTED, "oversize"),
        };
        assert_eq!(status.retry_class(), RetryClass::Fatal);
    }
}
