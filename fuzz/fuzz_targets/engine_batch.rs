//! Fuzzes the batch codec: arbitrary bytes never panic the decoder, a batch
//! that checks out yields exactly its record count, and records built from
//! the input round-trip through encode and decode unchanged.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use shardlog_engine::format::{BatchView, encode_batch};
use shardlog_engine::{Header, ProducerSeq, Record};

/// One record as the fuzzer builds it: key, value, timestamp, headers.
type RawRecord = (Option<Vec<u8>>, Vec<u8>, i64, Vec<(Vec<u8>, Vec<u8>)>);

#[derive(Debug, Arbitrary)]
struct Input {
    raw: Vec<u8>,
    base_offset: u32,
    producer: Option<(u64, u32)>,
    records: Vec<RawRecord>,
}

fn decode_arbitrary(raw: Vec<u8>) {
    let bytes = Bytes::from(raw);
    if let Ok(view) = BatchView::parse(&bytes) {
        let header = *view.header();
        let mut count = 0u32;
        for record in view.records() {
            let Ok(record) = record else { return };
            assert_eq!(record.offset, header.base_offset + u64::from(count));
            count += 1;
        }
        assert_eq!(
            count, header.record_count,
            "a valid batch yields its record count"
        );
    }
}

fn round_trip(input: &Input) {
    if input.records.is_empty() || input.records.len() > 64 {
        return;
    }
    let records: Vec<Record> = input
        .records
        .iter()
        .map(|(key, value, timestamp_ms, headers)| Record {
            key: key.clone().map(Bytes::from),
            value: Bytes::from(value.clone()),
            timestamp_ms: *timestamp_ms,
            headers: headers
                .iter()
                .map(|(k, v)| Header {
                    key: Bytes::from(k.clone()),
                    value: Bytes::from(v.clone()),
                })
                .collect(),
        })
        .collect();
    let producer = input.producer.map(|(producer_id, sequence)| ProducerSeq {
        producer_id: producer_id.max(1),
        sequence: u64::from(sequence),
    });
    let encoded = encode_batch(u64::from(input.base_offset), producer, &records);
    let view = BatchView::parse(&encoded).expect("own encoding parses");
    assert_eq!(view.header().record_count as usize, records.len());
    for (decoded, original) in view.records().zip(&records) {
        let decoded = decoded.expect("own encoding decodes");
        assert_eq!(decoded.key, original.key);
        assert_eq!(decoded.value, original.value);
        assert_eq!(decoded.timestamp_ms, original.timestamp_ms);
        assert_eq!(decoded.headers, original.headers);
    }
}

fuzz_target!(|input: Input| {
    round_trip(&input);
    decode_arbitrary(input.raw);
});
