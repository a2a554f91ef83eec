//! Stateful fuzzing of the partition log: the fuzzer picks a sequence of
//! operations (append durable or not, read, sync, retention with the clock
//! moved on, EIO on a coming fdatasync, crash at a coming storage operation,
//! crash and recover) against the simulated storage, and a simple model
//! checks after every step that acknowledged-durable records are never lost
//! or changed, reads never pass the durable offset, and nothing we did not
//! append ever appears.
#![no_main]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;

use arbitrary::Arbitrary;
use bytes::Bytes;
use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};
use libfuzzer_sys::fuzz_target;
use shardlog_engine::{
    AckLevel, AppendBatch, Partition, PartitionConfig, PartitionId, ReadLimits, Record, Shard,
    SimConfig, SimStorage, Storage,
};

/// Longest op sequence one input runs.
const OPS_MAX: usize = 64;

#[derive(Debug, Arbitrary)]
enum Op {
    Append { records: u8, pad: u8, durable: bool },
    Read { from: u16, max_records: u8 },
    Sync,
    Retention { advance_ms: u16 },
    FailFsyncIn { n: u8 },
    CrashAtStorageCall { after: u8 },
    CrashAndRecover,
}

#[derive(Debug, Arbitrary)]
struct Input {
    seed: u64,
    segment_bytes: u16,
    retention_bytes: u16,
    ops: Vec<Op>,
}

/// What the model knows: every acknowledged record by offset, and the end of
/// the prefix known to be durable.
#[derive(Default)]
struct Model {
    acknowledged: BTreeMap<u64, Bytes>,
    durable_end: u64,
    next_value: u64,
}

thread_local! {
    static EXECUTOR: LocalExecutor = LocalExecutorBuilder::new(Placement::Unbound)
        .make()
        .expect("glommio executor");
}

fn partition_id() -> PartitionId {
    PartitionId::new("fuzz", 0)
}

async fn open(
    sim: &SimStorage,
    config: &PartitionConfig,
) -> Option<(Shard<SimStorage>, Rc<Partition<SimStorage>>)> {
    let shard = Shard::new(PathBuf::from("/data"), sim.clone());
    let partition = shard
        .open_partition(partition_id(), config.clone(), true)
        .await
        .ok()?;
    Some((shard, partition))
}

/// Checks every stored record against the model and returns them all.
async fn check_stored(partition: &Partition<SimStorage>, model: &Model) -> u64 {
    let offsets = partition.offsets();
    assert!(offsets.log_start <= offsets.durable && offsets.durable <= offsets.log_end);
    let mut next = offsets.log_start;
    loop {
        let limits = ReadLimits {
            max_bytes: 1 << 16,
            max_records: 256,
        };
        let Ok(result) = partition.read(next, limits).await else {
            return next;
        };
        if result.records.is_empty() {
            return next;
        }
        for record in &result.records {
            assert_eq!(record.offset, next, "contiguous offsets");
            assert!(
                record.offset < partition.offsets().durable,
                "read past the durable offset"
            );
            if let Some(expected) = model.acknowledged.get(&record.offset) {
                assert_eq!(&record.value, expected, "offset {} changed", record.offset);
            } else {
                assert!(
                    record.value.starts_with(b"v"),
                    "garbage at offset {}",
                    record.offset
                );
            }
            next += 1;
        }
    }
}

async fn run(input: Input) {
    let sim = SimStorage::new(SimConfig {
        seed: input.seed,
        ..SimConfig::default()
    });
    let config = PartitionConfig {
        segment_bytes_max: 1024 + u64::from(input.segment_bytes % 8192),
        retention_bytes_max: (input.retention_bytes > 0)
            .then(|| 2048 + u64::from(input.retention_bytes)),
        retention_age_ms_max: Some(60_000),
        ..PartitionConfig::default()
    };
    let Some((mut shard, mut partition)) = open(&sim, &config).await else {
        return;
    };
    let mut model = Model::default();
    for op in input.ops.into_iter().take(OPS_MAX) {
        match op {
            Op::Append {
                records,
                pad,
                durable,
            } => {
                let count = 1 + u64::from(records % 8);
                let values: Vec<Bytes> = {
                    (0..count)
                        .map(|_| {
                            model.next_value += 1;
                            let mut value = format!("v{}|", model.next_value).into_bytes();
                            value.resize(value.len() + usize::from(pad), b'p');
                            Bytes::from(value)
                        })
                        .collect()
                };
                let batch = AppendBatch {
                    records: values
                        .iter()
                        .map(|value| Record {
                            key: None,
                            value: value.clone(),
                            timestamp_ms: 1,
                            headers: Vec::new(),
                        })
                        .collect(),
                    producer: None,
                };
                let ack = if durable {
                    AckLevel::Durable
                } else {
                    AckLevel::Written
                };
                if let Ok(appended) = partition.append(batch, ack).await {
                    for (i, value) in values.into_iter().enumerate() {
                        model
                            .acknowledged
                            .insert(appended.base_offset + i as u64, value);
                    }
                    if durable {
                        let end = appended.base_offset + u64::from(appended.record_count);
                        model.durable_end = model.durable_end.max(end);
                    }
                }
            }
            Op::Read { from, max_records } => {
                let offsets = partition.offsets();
                let from =
                    offsets.log_start + u64::from(from) % (offsets.log_end - offsets.log_start + 1);
                let limits = ReadLimits {
                    max_bytes: 1 << 14,
                    max_records: 1 + usize::from(max_records),
                };
                if let Ok(result) = partition.read(from, limits).await {
                    for record in &result.records {
                        assert!(
                            record.offset < partition.offsets().durable,
                            "read past the durable offset"
                        );
                        if let Some(expected) = model.acknowledged.get(&record.offset) {
                            assert_eq!(&record.value, expected);
                        }
                    }
                }
            }
            Op::Sync => {
                if let Ok(durable) = partition.sync().await {
                    model.durable_end = model.durable_end.max(durable);
                }
            }
            Op::Retention { advance_ms } => {
                sim.advance_clock_ms(i64::from(advance_ms) * 10);
                let _ = partition.enforce_retention(sim.now_ms()).await;
            }
            Op::FailFsyncIn { n } => sim.fail_fsync_in(1 + u64::from(n % 8)),
            Op::CrashAtStorageCall { after } => {
                sim.crash_at_op(sim.op_count() + 1 + u64::from(after))
            }
            Op::CrashAndRecover => {
                partition.wait_idle_for_tests().await;
                drop(partition);
                drop(shard);
                sim.crash();
                let (recovered_shard, recovered) =
                    open(&sim, &config).await.expect("recovery after a crash");
                assert_eq!(recovered.fault(), None, "recovery faulted");
                let offsets = recovered.offsets();
                assert!(
                    offsets.log_end >= model.durable_end,
                    "durable records lost: end {} < {}",
                    offsets.log_end,
                    model.durable_end
                );
                let start = offsets.log_start;
                model.acknowledged.retain(|&offset, _| offset >= start);
                check_stored(&recovered, &model).await;
                // What recovery kept is durable now; what it cut was never durable.
                let end = offsets.log_end;
                model.acknowledged.retain(|&offset, _| offset < end);
                model.durable_end = end;
                shard = recovered_shard;
                partition = recovered;
            }
        }
    }
    partition.wait_idle_for_tests().await;
}

fuzz_target!(|input: Input| {
    EXECUTOR.with(|executor| executor.run(run(input)));
});
