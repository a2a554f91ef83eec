//! Crash torture on the simulated backend: for each seed, concurrent appenders run until a
//! random storage operation "crashes" the process; the simulator keeps a random, possibly
//! torn prefix of unsynced writes (some seeds also fail an fdatasync with EIO before the
//! crash); the partition is recovered (sometimes crashing again in the
//! middle of recovery) and checked:
//! - every acknowledged durable batch is present at its acknowledged offsets, intact (unless
//!   retention, on in half the seeds, deleted it: then the log starts after it);
//! - every visible record is one that was appended, whole batches only, in per-writer order,
//!   never duplicated, with contiguous offsets (no partial or garbage record is visible);
//! - with retention on, retired segment files are recycled in most seeds: crashes hit the
//!   spare's rename and the roll that renames it in under a new salt;
//! - a second recovery yields the same state; the same seed yields the same result.
//!
//! `SHARDLOG_TORTURE_SEEDS` overrides the seed count (default 2,000);
//! `SHARDLOG_TORTURE_FIRST_SEED` the first seed (to replay a failing one alone).

mod common;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;
use common::run;
use shardlog_engine::{
    AckLevel, AppendBatch, PartitionConfig, PartitionId, ProducerSeq, ReadLimits, Record, Shard,
    SimConfig, SimStorage, StoredRecord,
};

const SEEDS_DEFAULT: u64 = 2_000;
const WRITERS: u64 = 3;
const BATCHES_PER_WRITER: u64 = 12;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn id() -> PartitionId {
    PartitionId::new("torture", 0)
}

/// Record value: "w<writer>-b<batch>-r<record>/<records in batch>" plus padding.
/// Batch `batch` of `writer`; when idempotent, its first record's number under the writer's
/// producer id is `sequence` (the records the writer appended before it).
fn make_batch(
    writer: u64,
    batch: u64,
    records: u64,
    pad: usize,
    sequence: Option<u64>,
) -> AppendBatch {
    let records = (0..records)
        .map(|r| {
            let mut v = format!("w{writer}-b{batch}-r{r}/{records}|").into_bytes();
            v.resize(v.len() + pad, b'a' + (batch % 26) as u8);
            Record {
                key: None,
                value: Bytes::from(v),
                timestamp_ms: batch as i64,
                headers: vec![],
            }
        })
        .collect();
    let producer = sequence.map(|sequence| ProducerSeq {
        producer_id: writer,
        sequence,
    });
    AppendBatch { records, producer }
}

fn parse(value: &Bytes) -> (u64, u64, u64, u64) {
    let text = std::str::from_utf8(value).expect("utf8 value");
    let head = text.split('|').next().expect("head");
    let nums: Vec<u64> = head
        .split(['w', '-', 'b', 'r', '/'])
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("number"))
        .collect();
    (nums[0], nums[1], nums[2], nums[3])
}

#[derive(Default)]
struct Acks {
    durable: Vec<(u64, AppendBatch)>,
}

async fn read_everything(p: &shardlog_engine::Partition<SimStorage>) -> Vec<StoredRecord> {
    let mut out = Vec::new();
    let mut next = p.offsets().log_start;
    loop {
        let r = p
            .read(
                next,
                ReadLimits {
                    max_bytes: 2048,
                    max_records: 50,
                },
            )
            .await
            .expect("read after recovery");
        if r.records.is_empty() {
            return out;
        }
        next = r.next_offset;
        out.extend(r.records);
    }
}

/// Checks the log read from `log_start` (the first offset retention kept).
fn check_log(records: &[StoredRecord], acks: &Acks, log_start: u64) {
    let mut last_batch: BTreeMap<u64, u64> = BTreeMap::new();
    let mut i = 0;
    while i < records.len() {
        assert_eq!(
            records[i].offset,
            log_start + i as u64,
            "offsets contiguous from the log start"
        );
        let (w, b, r, n) = parse(&records[i].value);
        assert_eq!(r, 0, "a batch starts with its first record");
        assert!(
            last_batch.get(&w).is_none_or(|last| b > *last),
            "writer {w} batch {b} out of order or duplicated"
        );
        last_batch.insert(w, b);
        for k in 0..n {
            let rec = records.get(i + k as usize).expect("whole batches only");
            assert_eq!(parse(&rec.value), (w, b, k, n), "batch is whole");
        }
        i += n as usize;
    }
    for (base, batch) in acks.durable.iter().filter(|(base, _)| *base >= log_start) {
        for (k, sent) in batch.records.iter().enumerate() {
            let got = records
                .get((*base - log_start) as usize + k)
                .expect("acknowledged record lost");
            assert_eq!(got.value, sent.value, "acknowledged record changed");
        }
    }
}

async fn open(
    sim: &SimStorage,
    config: &PartitionConfig,
) -> Option<(
    Shard<SimStorage>,
    Rc<shardlog_engine::Partition<SimStorage>>,
)> {
    let shard = Shard::new(PathBuf::from("/data"), sim.clone());
    let p = shard
        .open_partition(id(), config.clone(), true)
        .await
        .ok()?;
    Some((shard, p))
}

async fn workload(
    p: Rc<shardlog_engine::Partition<SimStorage>>,
    rng: &mut Rng,
    idempotent: bool,
) -> Rc<RefCell<Acks>> {
    let acks = Rc::new(RefCell::new(Acks::default()));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let plan: Vec<(u64, usize, bool)> = (0..BATCHES_PER_WRITER)
            .map(|_| (1 + rng.below(4), rng.below(300) as usize, rng.below(4) != 0))
            .collect();
        let (p, acks) = (p.clone(), acks.clone());
        tasks.push(glommio::spawn_local(async move {
            let mut sequence = 0;
            for (b, (n, pad, durable)) in plan.into_iter().enumerate() {
                let batch = make_batch(w, b as u64, n, pad, idempotent.then_some(sequence));
                sequence += n;
                let ack = if durable {
                    AckLevel::Durable
                } else {
                    AckLevel::Written
                };
                match p.append(batch.clone(), ack).await {
                    Ok(a) if durable => acks.borrow_mut().durable.push((a.base_offset, batch)),
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    acks
}

/// What one seed did.
struct SeedOutcome {
    /// Digest of the recovered log (for the determinism check).
    digest: u64,
    records: usize,
    /// Segments the workload started from a recycled file before the crash.
    recycled: u64,
}

/// Runs one seed.
async fn run_seed(seed: u64) -> SeedOutcome {
    let mut rng = Rng(seed ^ 0x5eed);
    let sim = SimStorage::new(SimConfig {
        seed,
        ..SimConfig::default()
    });
    let config = PartitionConfig {
        segment_bytes_max: 1024 + rng.below(6000),
        index_interval_bytes: 64 + rng.below(512) as u32,
        checkpoint_interval_bytes: 512 + rng.below(4096),
        prezero_segments: rng.below(2) == 0,
        recycle_segments: rng.below(4) != 0,
        ..PartitionConfig::default()
    };
    let config = PartitionConfig {
        retention_bytes_max: (rng.below(2) == 0)
            .then(|| config.segment_bytes_max * (2 + rng.below(3))),
        ..config
    };
    let idempotent = rng.below(2) == 0;
    let (shard, p) = open(&sim, &config).await.expect("fresh open");
    sim.crash_at_op(sim.op_count() + 1 + rng.below(400));
    if rng.below(8) == 0 {
        // An fdatasync fails first: pending acks fail, the partition stops taking writes.
        sim.fail_fsync_in(1 + rng.below(12));
    }
    let acks = workload(p.clone(), &mut rng, idempotent).await;
    p.wait_idle_for_tests().await;
    let recycled = p.stats().segments_recycled;
    drop(p);
    drop(shard);
    sim.crash();
    if rng.below(4) == 0 {
        // Crash again in the middle of recovery.
        sim.crash_at_op(sim.op_count() + 1 + rng.below(40));
        let _ = open(&sim, &config).await;
        sim.crash();
    }
    let (shard, p) = open(&sim, &config).await.expect("recovery open");
    assert_eq!(p.fault(), None, "seed {seed}: recovery faulted");
    let offsets = p.offsets();
    assert_eq!(offsets.durable, offsets.log_end, "seed {seed}");
    let records = read_everything(&p).await;
    assert_eq!(
        records.len() as u64,
        offsets.log_end - offsets.log_start,
        "seed {seed}"
    );
    check_log(&records, &acks.borrow(), offsets.log_start);
    drop(p);
    drop(shard);
    // A second recovery (after a clean crash) sees the same log.
    sim.crash();
    let (_shard, p) = open(&sim, &config).await.expect("second recovery");
    let again = read_everything(&p).await;
    assert_eq!(again, records, "seed {seed}: second recovery differs");
    let digest = records.iter().fold(0u64, |h, r| {
        h.rotate_left(5) ^ crc32fast_like(&r.value) ^ r.offset
    });
    SeedOutcome {
        digest,
        records: records.len(),
        recycled,
    }
}

fn crc32fast_like(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn torture_crash_recovery_over_many_seeds() {
    let seeds: u64 = std::env::var("SHARDLOG_TORTURE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEEDS_DEFAULT);
    // Replays a failing seed alone: SHARDLOG_TORTURE_FIRST_SEED=N SHARDLOG_TORTURE_SEEDS=1.
    let first: u64 = std::env::var("SHARDLOG_TORTURE_FIRST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    run(move || async move {
        let (mut total_records, mut total_recycled) = (0, 0);
        for seed in first..first + seeds {
            let outcome = run_seed(seed).await;
            total_records += outcome.records;
            total_recycled += outcome.recycled;
        }
        assert!(total_records > 0, "the workload wrote something");
        assert!(
            seeds < 100 || total_recycled > 0,
            "no seed recycled a segment"
        );
    });
}

#[test]
fn torture_same_seed_same_result() {
    run(|| async {
        for seed in [3, 17, 99, 1234] {
            let (first, second) = (run_seed(seed).await, run_seed(seed).await);
            assert_eq!(
                (first.digest, first.records),
                (second.digest, second.records),
                "seed {seed}"
            );
        }
    });
}
