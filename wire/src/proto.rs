//! Generated protobuf messages (prost) for every `.proto` under `wire/proto/`,
//! and the encoded file descriptor set they were generated from.

/// The encoded `google.protobuf.FileDescriptorSet` of every compiled `.proto`
/// file; server reflection answers from it.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/file_descriptor_set.bin"));

/// Package `shardlog.*`.
pub mod shardlog {
    /// Package `shardlog.v1`: the Log service.
    pub mod v1 {
        #![allow(missing_docs)]
        include!(concat!(env!("OUT_DIR"), "/shardlog.v1.rs"));

        /// Trailer of a FAILED_PRECONDITION produce refused for its idempotence
        /// sequence: [`SEQUENCE_GAP`] or [`SEQUENCE_STALE`], so a client can act
        /// without parsing the message.
        pub const SEQUENCE_ERROR_TRAILER: &str = "shardlog-sequence-error";
        /// The batch's sequence is past the next expected one (or the partition
        /// does not know the producer and the sequence is not 0): nothing of this
        /// batch, nor of any later one under the same producer id, was appended.
        pub const SEQUENCE_GAP: &str = "gap";
        /// The batch's sequence is older than the batches the partition remembers
        /// for the producer: it may have been appended long ago.
        pub const SEQUENCE_STALE: &str = "stale";
    }
}

/// Packages `grpc.*`: the standard services and the interop test service.
pub mod grpc {
    /// Package `grpc.health.*`.
    pub mod health {
        /// Package `grpc.health.v1`: the standard health checking protocol.
        pub mod v1 {
            #![allow(missing_docs)]
            include!(concat!(env!("OUT_DIR"), "/grpc.health.v1.rs"));
        }
    }

    /// Package `grpc.reflection.*`.
    pub mod reflection {
        /// Package `grpc.reflection.v1`: server reflection.
        pub mod v1 {
            #![allow(missing_docs)]
            include!(concat!(env!("OUT_DIR"), "/grpc.reflection.v1.rs"));
        }

        /// Package `grpc.reflection.v1alpha`: server reflection, the older
        /// name that many clients still ask for.
        pub mod v1alpha {
            #![allow(missing_docs)]
            include!(concat!(env!("OUT_DIR"), "/grpc.reflection.v1alpha.rs"));
        }
    }

    /// Package `grpc.testing`: the interop suite's `TestService` messages.
    pub mod testing {
        #![allow(missing_docs)]
        include!(concat!(env!("OUT_DIR"), "/grpc.testing.rs"));
    }
}
