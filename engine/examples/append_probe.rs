//! Quick append-throughput probe (not a benchmark harness): durable appends of `RECORDS`
//! 100-byte records per batch from `APPENDERS` concurrent tasks into one partition, printing
//! records/s and how many appends each fdatasync covered.
//!
//! `cargo run --release -p shardlog-engine --example append_probe -- [records] [appenders] [seconds]`

use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use shardlog_engine::{
    AckLevel, AppendBatch, DmaStorage, PartitionConfig, PartitionId, Record, Shard,
};

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let records = args.first().copied().unwrap_or(1000) as usize;
    let appenders = args.get(1).copied().unwrap_or(16) as usize;
    let seconds = args.get(2).copied().unwrap_or(3);
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let dir = tempfile::tempdir().expect("temp dir");
            let shard = Shard::new(dir.path().to_path_buf(), DmaStorage::new());
            let p = shard.open_partition(PartitionId::new("probe", 0), PartitionConfig::default(), true).await.expect("open");
            let batch = AppendBatch {
                records: (0..records)
                    .map(|i| Record { key: None, value: Bytes::from(vec![i as u8; 100]), timestamp_ms: 1, headers: vec![] })
                    .collect(),
                producer: None,
            };
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let started = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..appenders {
                let (p, batch) = (p.clone(), batch.clone());
                tasks.push(glommio::spawn_local(async move {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        p.append(batch.clone(), AckLevel::Durable).await.expect("append");
                        n += 1;
                    }
                    n
                }));
            }
            let mut batches = 0;
            for t in tasks {
                batches += t.await;
            }
            let secs = started.elapsed().as_secs_f64();
            let stats = p.stats();
            println!(
                "{records} rec/batch, {appenders} appenders: {:.0} records/s, {:.1} MB/s, {} syncs, {:.1} batches/sync, last sync {} us, max {} us",
                (batches * records as u64) as f64 / secs,
                stats.appended_bytes as f64 / secs / 1e6,
                stats.syncs,
                batches as f64 / stats.syncs.max(1) as f64,
                stats.last_sync_latency_us,
                stats.sync_latency_us_max,
            );
            shard.close().await.expect("close");
        })
        .expect("executor")
        .join()
        .expect("join");
}
