//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::future::Future;

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use shardlog_engine::{
    AckLevel, AppendBatch, Header, Partition, ReadLimits, Record, Storage, StoredRecord,
};

/// Runs `fut` to completion on a fresh, unpinned glommio executor.
pub fn run<T: Send + 'static, F: Future<Output = T> + 'static>(
    make: impl FnOnce() -> F + Send + 'static,
) -> T {
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(make)
        .expect("spawn executor")
        .join()
        .expect("executor thread")
}

/// A record whose value encodes `tag` (so tests can tell records apart).
pub fn record(tag: &str, ts: i64) -> Record {
    Record {
        key: Some(Bytes::from(format!("k-{tag}"))),
        value: Bytes::from(format!("value-{tag}")),
        timestamp_ms: ts,
        headers: vec![Header {
            key: Bytes::from_static(b"h"),
            value: Bytes::from(tag.to_string()),
        }],
    }
}

/// A batch of `n` records tagged `prefix-0..n`.
pub fn batch(prefix: &str, n: usize, ts: i64) -> AppendBatch {
    AppendBatch {
        records: (0..n)
            .map(|i| record(&format!("{prefix}-{i}"), ts))
            .collect(),
        producer: None,
    }
}

/// Appends `n` batches of `per` records, durably; returns (base offset, tag prefix) of each.
pub async fn fill<S: Storage>(
    p: &Partition<S>,
    n: usize,
    per: usize,
    ts: i64,
) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for i in 0..n {
        let prefix = format!("b{i}");
        let a = p
            .append(batch(&prefix, per, ts), AckLevel::Durable)
            .await
            .expect("append");
        out.push((a.base_offset, prefix));
    }
    out
}

/// Reads every durable record from `from`.
pub async fn read_all<S: Storage>(p: &Partition<S>, from: u64) -> Vec<StoredRecord> {
    let mut out = Vec::new();
    let mut next = from;
    loop {
        let r = p
            .read(
                next,
                ReadLimits {
                    max_bytes: 4096,
                    max_records: 37,
                },
            )
            .await
            .expect("read");
        if r.records.is_empty() {
            return out;
        }
        for (i, rec) in r.records.iter().enumerate() {
            assert_eq!(rec.offset, next + i as u64, "offsets are contiguous");
        }
        next = r.next_offset;
        out.extend(r.records);
    }
}
