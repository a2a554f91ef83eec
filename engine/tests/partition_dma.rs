//! The same behaviours on the real backend (glommio DMA files in a temp dir): append, roll,
//! read at boundaries, reopen, retention, segment recycling, idempotent dedup across restart,
//! torn tail and corruption on real files.

mod common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::{batch, fill, read_all, run};
use shardlog_engine::format::encode_batch;
use shardlog_engine::{
    AckLevel, AppendBatch, DmaStorage, EngineError, PartitionConfig, PartitionId, ProducerSeq,
    ReadLimits, Shard,
};

fn config() -> PartitionConfig {
    PartitionConfig {
        segment_bytes_max: 64 * 1024,
        index_interval_bytes: 1024,
        ..PartitionConfig::default()
    }
}

fn pid() -> PartitionId {
    PartitionId::new("events", 1)
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let part = dir.join("topics/events/1");
    let mut v: Vec<PathBuf> = std::fs::read_dir(part)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

#[test]
fn dma_append_roll_read_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let s = Shard::new(root.clone(), DmaStorage::new());
        let p = s.open_partition(pid(), config(), true).await.unwrap();
        let mut batches = Vec::new();
        for i in 0..200 {
            let mut b = batch(&format!("b{i}"), 4, i);
            b.records[0].value = Bytes::from(vec![i as u8; 700]);
            let a = p.append(b.clone(), AckLevel::Durable).await.unwrap();
            assert_eq!(a.base_offset, i as u64 * 4);
            batches.push(b);
        }
        assert!(p.stats().segment_rolls >= 2);
        for offset in (0..800).step_by(7) {
            let r = p
                .read(
                    offset,
                    ReadLimits {
                        max_bytes: 1,
                        max_records: 1,
                    },
                )
                .await
                .unwrap();
            let b = &batches[(offset / 4) as usize];
            assert_eq!(r.records[0].value, b.records[(offset % 4) as usize].value);
        }
        let raw = p
            .read_batches(
                0,
                ReadLimits {
                    max_bytes: usize::MAX,
                    max_records: usize::MAX,
                },
            )
            .await
            .unwrap();
        assert_eq!(raw.batches.len(), 200);
        for (i, bytes) in raw.batches.iter().enumerate() {
            assert_eq!(
                bytes,
                &encode_batch(i as u64 * 4, None, &batches[i].records)
            );
        }
        s.close().await.unwrap();
        drop(p);
        let s = Shard::new(root.clone(), DmaStorage::new());
        let p = s.open_partition(pid(), config(), false).await.unwrap();
        assert_eq!(p.fault(), None);
        assert_eq!(p.offsets().log_end, 800);
        assert_eq!(read_all(&p, 0).await.len(), 800);
        p.append(batch("more", 2, 1), AckLevel::Durable)
            .await
            .unwrap();
        assert_eq!(p.offsets().durable, 802);
        s.close().await.unwrap();
    });
}

#[test]
fn dma_retention_and_dedup_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let cfg = PartitionConfig {
            retention_bytes_max: Some(100 * 1024),
            ..config()
        };
        let s = Shard::new(root.clone(), DmaStorage::new());
        let p = s.open_partition(pid(), cfg.clone(), true).await.unwrap();
        let idem = |seq| AppendBatch {
            producer: Some(ProducerSeq {
                producer_id: 9,
                sequence: seq,
            }),
            ..batch("p", 2, 1)
        };
        for i in 0..300u64 {
            let mut b = batch(&format!("b{i}"), 1, 1);
            b.records[0].value = Bytes::from(vec![1u8; 1000]);
            p.append(b, AckLevel::Written).await.unwrap();
        }
        let a = p.append(idem(0), AckLevel::Durable).await.unwrap();
        // Retention already ran after each roll; an explicit pass settles the last one.
        p.enforce_retention(0).await.unwrap();
        p.wait_idle_for_tests().await;
        assert!(p.stats().segments_deleted > 0);
        let start = p.offsets().log_start;
        assert!(start > 0 && p.size_bytes() <= 100 * 1024);
        assert!(matches!(
            p.read(
                0,
                ReadLimits {
                    max_bytes: 1,
                    max_records: 1
                }
            )
            .await,
            Err(EngineError::OffsetOutOfRange { .. })
        ));
        s.close().await.unwrap();
        drop(p);
        let s = Shard::new(root.clone(), DmaStorage::new());
        let p = s.open_partition(pid(), cfg, false).await.unwrap();
        assert_eq!(p.offsets().log_start, start);
        let dup = p.append(idem(0), AckLevel::Durable).await.unwrap();
        assert_eq!((dup.base_offset, dup.duplicate), (a.base_offset, true));
        assert!(matches!(
            p.append(idem(5), AckLevel::Durable).await,
            Err(EngineError::SequenceGap { .. })
        ));
        s.close().await.unwrap();
    });
}

#[test]
fn dma_torn_tail_cut_and_corruption_detected() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let cfg = PartitionConfig {
            segment_bytes_max: 1 << 20,
            ..config()
        };
        let s = Shard::new(root.clone(), DmaStorage::new());
        let p = s.open_partition(pid(), cfg.clone(), true).await.unwrap();
        fill(&p, 20, 3, 1).await;
        let end = p.size_bytes();
        s.close().await.unwrap();
        drop(p);
        drop(s);
        // Garbage past the durable end: a torn tail.
        let seg = segment_files(&root).pop().unwrap();
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes.truncate(end as usize);
        bytes.extend((0..3000).map(|i| (i * 13 + 5) as u8));
        std::fs::write(&seg, &bytes).unwrap();
        let s = Shard::new(root.clone(), DmaStorage::new());
        let p = s.open_partition(pid(), cfg.clone(), false).await.unwrap();
        assert_eq!(p.fault(), None);
        assert_eq!(p.offsets().log_end, 60);
        p.append(batch("after", 1, 1), AckLevel::Durable)
            .await
            .unwrap();
        assert_eq!(read_all(&p, 0).await.len(), 61);
        s.close().await.unwrap();
        drop(p);
        drop(s);
        // A flipped bit in acknowledged data: detected on read, never cut.
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[200] ^= 0x40;
        std::fs::write(&seg, &bytes).unwrap();
        let s = Shard::new(root.clone(), DmaStorage::new());
        let p = s.open_partition(pid(), cfg, false).await.unwrap();
        let err = p
            .read(
                0,
                ReadLimits {
                    max_bytes: 1 << 20,
                    max_records: 1000,
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, EngineError::Corruption { .. }), "{err:?}");
        assert!(p.fault().is_some());
        drop(p);
        drop(s);
        assert_eq!(
            std::fs::read(&seg).unwrap(),
            bytes,
            "corrupt file left untouched"
        );
    });
}

#[test]
fn dma_group_commit_covers_concurrent_appends() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let s = Shard::new(root.clone(), DmaStorage::new());
        let p = s.open_partition(pid(), config(), true).await.unwrap();
        let mut tasks = Vec::new();
        for t in 0..64 {
            let p = p.clone();
            tasks.push(glommio::spawn_local(async move {
                for i in 0..4 {
                    p.append(batch(&format!("t{t}-{i}"), 1, 1), AckLevel::Durable)
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await;
        }
        assert_eq!(p.offsets().durable, 256);
        let syncs = p.stats().syncs;
        eprintln!("256 durable appends from 64 tasks: {syncs} syncs");
        assert!(syncs < 64, "group commit: {syncs} syncs for 256 appends");
        s.close().await.unwrap();
    });
}

/// Child side of `dma_kill_9_loses_no_acknowledged_record`: appends forever, printing each
/// durable acknowledgement; does nothing unless the parent set the data-dir variable.
#[test]
fn dma_kill_child_appender() {
    let Some(root) = std::env::var_os("SHARDLOG_KILL_CHILD_DIR") else {
        return;
    };
    let root = PathBuf::from(root);
    run(move || async move {
        let s = Shard::new(root, DmaStorage::new());
        let p = s.open_partition(pid(), config(), true).await.unwrap();
        let mut tasks = Vec::new();
        for t in 0..8 {
            let p = p.clone();
            tasks.push(glommio::spawn_local(async move {
                // Bounded, so an orphaned child stops by itself.
                for i in 0..20_000 {
                    let b = batch(&format!("t{t}-{i}"), 3, 1);
                    let a = p.append(b, AckLevel::Durable).await.unwrap();
                    println!("acked {} t{t}-{i}", a.base_offset);
                }
            }));
        }
        for t in tasks {
            t.await;
        }
    });
}

#[test]
fn dma_kill_9_loses_no_acknowledged_record() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    /// Kills the child on every exit path (a failing assertion included).
    struct Killer(std::process::Child);
    impl Drop for Killer {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Killer(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "dma_kill_child_appender",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("SHARDLOG_KILL_CHILD_DIR", &root)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut acked = Vec::new();
    // Kept open until the kill: a child printing into a closed pipe would panic (EPIPE).
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("acked ") {
            let (offset, tag) = rest.split_once(' ').unwrap();
            acked.push((offset.parse::<u64>().unwrap(), tag.to_string()));
            if acked.len() == 300 {
                break;
            }
        }
    }
    drop(child); // SIGKILL: no close, no final checkpoint
    drop(lines);
    assert_eq!(acked.len(), 300, "the child acknowledged appends");
    run(move || async move {
        let s = Shard::new(root, DmaStorage::new());
        let p = s.open_partition(pid(), config(), false).await.unwrap();
        assert_eq!(p.fault(), None);
        let records = read_all(&p, 0).await;
        for (offset, tag) in acked {
            for k in 0..3 {
                let r = &records[(offset + k) as usize];
                assert_eq!(
                    r.value,
                    Bytes::from(format!("value-{tag}-{k}")),
                    "acked record at {}",
                    offset + k
                );
            }
        }
        p.append(batch("after", 1, 1), AckLevel::Durable)
            .await
            .unwrap();
    });
}

#[test]
fn dma_tailing_reader_sees_each_durable_batch_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let s = Shard::new(root.clone(), DmaStorage::new());
        let p = s.open_partition(pid(), config(), true).await.unwrap();
        let mut next = 0;
        for i in 0..300 {
            let b = batch(&format!("tail{i}"), 1 + i % 5, 1);
            p.append(b.clone(), AckLevel::Durable).await.unwrap();
            let r = p
                .read(
                    next,
                    ReadLimits {
                        max_bytes: 1 << 20,
                        max_records: 1000,
                    },
                )
                .await
                .unwrap();
            assert_eq!(r.records.len(), b.records.len(), "batch {i}");
            for (got, sent) in r.records.iter().zip(&b.records) {
                assert_eq!(got.offset, next);
                assert_eq!(got.value, sent.value);
                next += 1;
            }
            assert_eq!(r.next_offset, next);
        }
        assert!(
            p.stats().segment_rolls > 0,
            "the tail crossed segment rolls"
        );
        s.close().await.unwrap();
    });
}

#[test]
fn dma_retired_segments_are_recycled_as_salted_segments() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    run(move || async move {
        let cfg = PartitionConfig {
            retention_bytes_max: Some(128 * 1024),
            ..config()
        };
        let s = Shard::new(root.clone(), DmaStorage::new());
        let p = s.open_partition(pid(), cfg.clone(), true).await.unwrap();
        let value = |i: u64| Bytes::from(vec![(i % 251) as u8 + 1; 6000]);
        let is_salted =
            |f: &PathBuf| f.file_name().unwrap().to_str().unwrap().split('.').count() == 3;
        // Append until the active segment is a recycled file, a few records into it.
        let mut appended = 0u64;
        let mut salted_rolls = 0;
        while salted_rolls < 3 || p.stats().segments_recycled < 2 {
            let mut b = batch(&format!("b{appended}"), 1, 1);
            b.records[0].value = value(appended);
            p.append(b, AckLevel::Durable).await.unwrap();
            appended += 1;
            p.wait_idle_for_tests().await;
            let files = segment_files(&root);
            let active = files.last().unwrap();
            let data_bytes = p.size_bytes()
                - files[..files.len() - 1]
                    .iter()
                    .map(|f| f.metadata().unwrap().len())
                    .sum::<u64>();
            let name = active.file_name().unwrap().to_str().unwrap();
            let active_base: u64 = name[..20].parse().unwrap();
            if is_salted(active) && p.offsets().log_end == active_base + 2 {
                salted_rolls += 1;
                // Recycled as it was: past the new data lie the earlier life's bytes, unzeroed.
                let bytes = std::fs::read(active).unwrap();
                assert!(
                    bytes[(data_bytes as usize + 4096)..]
                        .iter()
                        .any(|b| *b != 0)
                );
            }
            assert!(
                appended < 1000,
                "no recycled active segment: {:?}",
                p.stats()
            );
        }
        let start = p.offsets().log_start;
        s.close().await.unwrap();
        drop(p);
        let s = Shard::new(root.clone(), DmaStorage::new());
        let p = s.open_partition(pid(), cfg, false).await.unwrap();
        assert_eq!(p.fault(), None);
        assert!(!root.join("topics/events/1/recycled.spare").exists());
        let records = read_all(&p, start).await;
        assert_eq!(records.len() as u64, appended - start);
        for r in records {
            assert_eq!(r.value, value(r.offset));
        }
        // Appends after the restart go on in the recycled segment and read back.
        let mut b = batch("after", 1, 1);
        b.records[0].value = value(appended);
        p.append(b, AckLevel::Durable).await.unwrap();
        let records = read_all(&p, start).await;
        assert_eq!(records.last().unwrap().value, value(appended));
        s.close().await.unwrap();
    });
}
