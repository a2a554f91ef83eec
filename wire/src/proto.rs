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
    }
}
