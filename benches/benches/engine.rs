//! Engine benches: batch codec, CRC, and append throughput on the real backend (glommio DMA,
//! O_DIRECT, io_uring) for 100-byte records in batches of 1, 100 and 1000, durable and not,
//! on 1, 64 and 1024 partitions of one shard (one core); plus 1 MiB durable batches next to a
//! plain `DmaFile` sequential write of the same size, to report the ratio to the disk.
//!
//! `cargo bench -p shardlog-benches --bench engine -- --warm-up-time 1 --measurement-time 3`

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use glommio::io::DmaFile;
use glommio::{LocalExecutorBuilder, Placement};
use shardlog_engine::format::{BatchView, encode_batch};
use shardlog_engine::{
    AckLevel, AppendBatch, DmaStorage, Partition, PartitionConfig, PartitionId, Record, Shard,
};

/// Appends in flight per scenario (closed loop): lets group commit batch syncs.
const APPENDERS: usize = 16;
/// Bytes of one raw sequential write (and of a "1 MiB" batch).
const MIB: usize = 1024 * 1024;
/// Raw writes in flight for the disk baseline (fio's depth 8).
const RAW_DEPTH: usize = 8;

fn records(n: usize, value_bytes: usize) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            key: None,
            value: Bytes::from(vec![(i % 251) as u8; value_bytes]),
            timestamp_ms: 1_700_000_000_000 + i as i64,
            headers: vec![],
        })
        .collect()
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let recs = records(1000, 100);
    let encoded = encode_batch(0, None, &recs);
    g.throughput(Throughput::Elements(1000));
    g.bench_function("encode_1000x100B", |b| {
        let mut out = vec![0u8; encoded.len()];
        b.iter(|| shardlog_engine::format::encode_batch_into(&mut out, 0, 7, None, &recs))
    });
    g.bench_function("decode_1000x100B", |b| {
        b.iter(|| {
            let view = BatchView::parse(&encoded).expect("valid");
            view.records()
                .map(|r| r.expect("valid").value.len())
                .sum::<usize>()
        })
    });
    let mib = vec![7u8; MIB];
    g.throughput(Throughput::Bytes(MIB as u64));
    g.bench_function("crc32_1MiB", |b| {
        b.iter(|| shardlog_engine::format::crc32(0, &mib))
    });
    g.finish();
}

/// One append scenario.
#[derive(Clone, Copy, Debug)]
struct Scenario {
    partitions: usize,
    records_per_batch: usize,
    value_bytes: usize,
    ack: AckLevel,
}

/// A glommio executor on its own thread, set up once, running `iters` appends on request.
struct Runner {
    requests: mpsc::Sender<u64>,
    replies: mpsc::Receiver<Duration>,
}

impl Runner {
    fn start(s: Scenario) -> Runner {
        let (req_tx, req_rx) = mpsc::channel::<u64>();
        let (rep_tx, rep_rx) = mpsc::channel::<Duration>();
        LocalExecutorBuilder::new(Placement::Unbound)
            .name("engine-bench")
            .spawn(move || async move {
                let dir = tempfile::tempdir_in(bench_dir()).expect("temp dir");
                let shard = Shard::new(dir.path().to_path_buf(), DmaStorage::new());
                let mut parts = Vec::new();
                for i in 0..s.partitions {
                    let id = PartitionId::new("bench", i as u32);
                    parts.push(
                        shard
                            .open_partition(id, PartitionConfig::default(), true)
                            .await
                            .expect("open"),
                    );
                }
                let batch = AppendBatch {
                    records: records(s.records_per_batch, s.value_bytes),
                    producer: None,
                };
                loop {
                    let iters = match req_rx.try_recv() {
                        Ok(n) => n,
                        Err(mpsc::TryRecvError::Empty) => {
                            glommio::timer::sleep(Duration::from_micros(200)).await;
                            continue;
                        }
                        Err(mpsc::TryRecvError::Disconnected) => break,
                    };
                    let took = run_appends(&parts, &batch, s.ack, iters).await;
                    if rep_tx.send(took).is_err() {
                        break;
                    }
                }
                shard.close().await.expect("close");
            })
            .expect("executor");
        Runner {
            requests: req_tx,
            replies: rep_rx,
        }
    }

    fn run(&self, iters: u64) -> Duration {
        self.requests.send(iters).expect("runner alive");
        self.replies.recv().expect("runner reply")
    }
}

fn bench_dir() -> PathBuf {
    std::env::var_os("SHARDLOG_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from)
}

/// `iters` batch appends spread over `APPENDERS` concurrent tasks and the partitions.
async fn run_appends(
    parts: &[Rc<Partition<DmaStorage>>],
    batch: &AppendBatch,
    ack: AckLevel,
    iters: u64,
) -> Duration {
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(APPENDERS);
    for t in 0..APPENDERS {
        let n = iters / APPENDERS as u64 + u64::from((t as u64) < iters % APPENDERS as u64);
        let parts: Vec<_> = parts.to_vec();
        let batch = batch.clone();
        tasks.push(glommio::spawn_local(async move {
            for k in 0..n {
                let p = &parts[(t + k as usize * APPENDERS) % parts.len()];
                p.append(batch.clone(), ack).await.expect("append");
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    if ack == AckLevel::Written {
        // Written acks return before the sync; count the syncs they started (concurrently).
        let syncs: Vec<_> = parts
            .iter()
            .map(|p| {
                let p = p.clone();
                glommio::spawn_local(async move { p.sync().await.expect("sync") })
            })
            .collect();
        for s in syncs {
            s.await;
        }
    }
    started.elapsed()
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    g.sample_size(10);
    for ack in [AckLevel::Durable, AckLevel::Written] {
        for partitions in [1, 64, 1024] {
            for records_per_batch in [1, 100, 1000] {
                let s = Scenario {
                    partitions,
                    records_per_batch,
                    value_bytes: 100,
                    ack,
                };
                let runner = Runner::start(s);
                g.throughput(Throughput::Elements(records_per_batch as u64));
                let name = format!(
                    "{}/{}p",
                    if ack == AckLevel::Durable {
                        "durable"
                    } else {
                        "written"
                    },
                    partitions
                );
                g.bench_with_input(
                    BenchmarkId::new(name, format!("{records_per_batch}x100B")),
                    &s,
                    |b, _| b.iter_custom(|iters| runner.run(iters)),
                );
            }
        }
    }
    g.finish();
}

/// 1 MiB durable batches vs the disk's own sequential write rate (plain DmaFile, depth 8).
fn mib_batches(c: &mut Criterion) {
    let mut g = c.benchmark_group("disk");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(MIB as u64));
    let s = Scenario {
        partitions: 1,
        records_per_batch: 1,
        value_bytes: MIB - 256,
        ack: AckLevel::Durable,
    };
    let runner = Runner::start(s);
    g.bench_function("append_durable_1MiB_batches", |b| {
        b.iter_custom(|iters| runner.run(iters))
    });
    drop(runner);
    let raw = RawWriter::start();
    g.bench_function("raw_dmafile_seq_write_1MiB", |b| {
        b.iter_custom(|iters| raw.run(iters))
    });
    g.finish();
}

/// Plain `DmaFile` sequential 1 MiB writes, `RAW_DEPTH` in flight, one fdatasync at the end.
struct RawWriter {
    requests: mpsc::Sender<u64>,
    replies: mpsc::Receiver<Duration>,
}

impl RawWriter {
    fn start() -> RawWriter {
        let (req_tx, req_rx) = mpsc::channel::<u64>();
        let (rep_tx, rep_rx) = mpsc::channel::<Duration>();
        LocalExecutorBuilder::new(Placement::Unbound)
            .spawn(move || async move {
                let dir = tempfile::tempdir_in(bench_dir()).expect("temp dir");
                let mut round = 0u64;
                loop {
                    let iters = match req_rx.try_recv() {
                        Ok(n) => n,
                        Err(mpsc::TryRecvError::Empty) => {
                            glommio::timer::sleep(Duration::from_micros(200)).await;
                            continue;
                        }
                        Err(mpsc::TryRecvError::Disconnected) => break,
                    };
                    round += 1;
                    let path = dir.path().join(format!("raw-{round}"));
                    let file = Rc::new(DmaFile::create(&path).await.expect("create"));
                    let started = Instant::now();
                    let mut tasks = Vec::new();
                    for d in 0..RAW_DEPTH as u64 {
                        let file = file.clone();
                        tasks.push(glommio::spawn_local(async move {
                            let mut i = d;
                            while i < iters {
                                let mut buf = file.alloc_dma_buffer(MIB);
                                buf.as_bytes_mut().fill(1);
                                file.write_at(buf, i * MIB as u64).await.expect("write");
                                i += RAW_DEPTH as u64;
                            }
                        }));
                    }
                    for t in tasks {
                        t.await;
                    }
                    file.fdatasync().await.expect("fdatasync");
                    let took = started.elapsed();
                    drop(file);
                    let _ = std::fs::remove_file(&path);
                    if rep_tx.send(took).is_err() {
                        break;
                    }
                }
            })
            .expect("executor");
        RawWriter {
            requests: req_tx,
            replies: rep_rx,
        }
    }

    fn run(&self, iters: u64) -> Duration {
        self.requests.send(iters).expect("raw writer alive");
        self.replies.recv().expect("raw writer reply")
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! { name = benches; config = config(); targets = codec, mib_batches, append }
criterion_main!(benches);
