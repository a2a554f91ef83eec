//! Fuzzes request decoding: arbitrary bytes decoded as each Log request type
//! never panic, and whatever decodes re-encodes and decodes to the same
//! message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use shardlog_wire::proto::shardlog::v1 as pb;

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(message) = M::decode(data) {
        let again = M::decode(message.encode_to_vec().as_slice()).expect("own encoding decodes");
        assert_eq!(again, message);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<pb::ProduceRequest>(data);
    round_trip::<pb::FetchRequest>(data);
    round_trip::<pb::SubscribeRequest>(data);
    round_trip::<pb::CreateTopicRequest>(data);
    round_trip::<pb::CommitOffsetRequest>(data);
});
