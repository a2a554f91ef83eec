//! Recovery time per GiB: how long the real binary takes from exec to its
//! listening line with N GiB in a few partitions, after (a) a clean SIGTERM
//! and (b) a SIGKILL in the middle of a produce burst, each with the data
//! files' pages in the page cache (warm) and evicted from it (cold, through
//! `posix_fadvise(DONTNEED)`; the files are clean after the syncs).
//!
//! A measurement, not a CI check: `#[ignore]`d. Run it on the release build:
//! `SHARDLOG_RECOVERY_GIB=1 cargo test --release -p shardlog-server --test
//! recovery_time -- --ignored --nocapture` (figures in docs/reliability.md).

mod common;

use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Log, TestServer, block_on, produce_to};
use shardlog_wire::proto::shardlog::v1 as pb;

const SHARDS: usize = 2;
const PARTITIONS: u32 = 4;
const GIB_DEFAULT: u64 = 1;
/// Each produce carries this many records of `VALUE_BYTES`: 2 MiB.
const RECORDS_PER_BATCH: usize = 32;
const VALUE_BYTES: usize = 64 << 10;
/// Produces in flight while filling.
const FILL_CONCURRENCY: usize = 8;
/// Produces in flight when the SIGKILL lands.
const KILL_CONCURRENCY: usize = 8;
/// Starts measured per scenario; the median is reported.
const REPEATS: usize = 5;
const KILL_AFTER: Duration = Duration::from_millis(1_000);

fn batch(partition: u32, value: &Bytes) -> pb::ProduceRequest {
    let records = (0..RECORDS_PER_BATCH)
        .map(|_| pb::Record {
            value: value.clone(),
            ..common::record(b"")
        })
        .collect();
    produce_to("recovery", partition, records)
}

/// Produces `batches` batches, `FILL_CONCURRENCY` at a time.
async fn fill(log: &Log, batches: u64) {
    let value = Bytes::from(vec![0x5a; VALUE_BYTES]);
    let workers = (0..FILL_CONCURRENCY as u64).map(|worker| {
        let (log, value) = (log.clone(), value.clone());
        async move {
            let mut next = worker;
            while next < batches {
                let partition = (next % u64::from(PARTITIONS)) as u32;
                log.produce(batch(partition, &value))
                    .await
                    .expect("fill produce");
                next += FILL_CONCURRENCY as u64;
            }
        }
    });
    futures_util::future::join_all(workers).await;
}

/// The sum of the partitions' durable offsets (records stored).
async fn durable_records(log: &Log) -> u64 {
    let description = log.describe("recovery").await.expect("describe");
    description
        .partitions
        .iter()
        .map(|partition| partition.durable_offset)
        .sum()
}

/// Drops every data file's pages from the page cache.
fn evict_page_cache(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            evict_page_cache(&path);
        } else if let Ok(file) = std::fs::File::open(&path) {
            // SAFETY: a valid descriptor; advice only, no memory is touched.
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| match entry.metadata() {
                    Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
                    Ok(meta) => meta.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Starts the stopped server again and returns exec-to-listening time.
fn timed_start(server: &mut TestServer) -> Duration {
    let started = Instant::now();
    server.restart_after_kill();
    started.elapsed()
}

/// Checks the restarted server holds at least `records` durable records.
fn check_records(server: &TestServer, records: u64) -> u64 {
    let addr = server.addr;
    let stored = block_on(move || async move { durable_records(&Log::connect(addr).await).await });
    assert!(
        stored >= records,
        "{stored} records after restart, {records} acknowledged before"
    );
    stored
}

/// SIGKILLs the server while `KILL_CONCURRENCY` producers are mid-burst.
fn kill_mid_burst(server: &mut TestServer) {
    let (addr, pid) = (server.addr, server.pid());
    block_on(move || async move {
        let log = Log::connect(addr).await;
        let value = Bytes::from(vec![0xa5; VALUE_BYTES]);
        // Producers that keep going until the kill breaks their connection.
        let producers: Vec<_> = (0..KILL_CONCURRENCY as u32)
            .map(|worker| {
                let (log, value) = (log.clone(), value.clone());
                glommio::spawn_local(async move {
                    while log
                        .produce(batch(worker % PARTITIONS, &value))
                        .await
                        .is_ok()
                    {}
                })
            })
            .collect();
        glommio::timer::sleep(KILL_AFTER).await;
        // SAFETY: SIGKILL to the server child process this test owns.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        for producer in producers {
            producer.await;
        }
    });
    server.kill();
}

#[test]
#[ignore = "a measurement (minutes, GiBs of disk): run by hand on the release build"]
fn recovery_time_per_gib() {
    let gib = std::env::var("SHARDLOG_RECOVERY_GIB")
        .ok()
        .and_then(|gib| gib.parse().ok())
        .unwrap_or(GIB_DEFAULT);
    let batch_bytes = (RECORDS_PER_BATCH * VALUE_BYTES) as u64;
    let batches = (gib << 30) / batch_bytes;
    // Baseline: an empty data dir.
    let mut server = TestServer::start(SHARDS);
    server.stop();
    let empty_start = timed_start(&mut server);
    let addr = server.addr;
    let fill_started = Instant::now();
    let acknowledged = block_on(move || async move {
        let log = Log::connect(addr).await;
        log.create_topic("recovery", PARTITIONS)
            .await
            .expect("create");
        fill(&log, batches).await;
        durable_records(&log).await
    });
    let fill_s = fill_started.elapsed().as_secs_f64();
    let data_bytes = dir_bytes(server.data_dir());
    let data_gib = data_bytes as f64 / f64::from(1u32 << 30);
    eprintln!(
        "recovery: filled {data_gib:.2} GiB ({acknowledged} records) in {fill_s:.1} s; empty-dir start {:.0} ms",
        empty_start.as_secs_f64() * 1e3
    );
    let mut lines = Vec::new();
    for (scenario, cold) in [
        ("SIGTERM", false),
        ("SIGTERM", true),
        ("SIGKILL", false),
        ("SIGKILL", true),
    ] {
        let mut took_ms = Vec::new();
        let mut records = 0;
        let mut data_gib = 0.0;
        for _ in 0..REPEATS {
            let before = check_records(&server, acknowledged);
            if scenario == "SIGTERM" {
                assert_eq!(server.stop(), Some(0), "clean shutdown");
            } else {
                kill_mid_burst(&mut server);
            }
            if cold {
                evict_page_cache(server.data_dir());
            }
            data_gib = dir_bytes(server.data_dir()) as f64 / f64::from(1u32 << 30);
            took_ms.push(timed_start(&mut server).as_secs_f64() * 1e3);
            records = check_records(&server, before);
        }
        took_ms.sort_by(f64::total_cmp);
        let median_ms = took_ms[took_ms.len() / 2];
        let cache = if cold { "cold" } else { "warm" };
        let line = format!(
            "recovery after {scenario} ({cache} cache), {data_gib:.2} GiB in {PARTITIONS} partitions on {SHARDS} shards: exec to listening median {median_ms:.0} ms of {REPEATS} (min {:.0}, max {:.0}) = {:.0} ms per GiB; {records} records",
            took_ms[0],
            took_ms[took_ms.len() - 1],
            median_ms / data_gib
        );
        eprintln!("{line}");
        lines.push(line);
    }
    assert_eq!(lines.len(), 4);
}
