//! Partition behaviour on the simulated backend: rolls, index, reads at every boundary,
//! faults (EIO, ENOSPC), corruption, retention, idempotent producers across restarts.

mod common;

use std::path::PathBuf;

use bytes::Bytes;
use common::{batch, fill, read_all, record, run};
use shardlog_engine::format::{BatchView, encode_batch, encode_salted_batch};
use shardlog_engine::{
    AckLevel, AppendBatch, EngineError, OpenMode, PartitionConfig, PartitionId, ProducerSeq,
    ReadLimits, Shard, SimConfig, SimStorage, Storage,
};

fn small_config() -> PartitionConfig {
    PartitionConfig {
        segment_bytes_max: 2048,
        index_interval_bytes: 256,
        checkpoint_interval_bytes: 4096,
        ..PartitionConfig::default()
    }
}

fn pid() -> PartitionId {
    PartitionId::new("orders", 3)
}

fn shard(sim: &SimStorage) -> Shard<SimStorage> {
    Shard::new(PathBuf::from("/data"), sim.clone())
}

#[test]
fn roll_index_and_read_at_every_offset() {
    run(|| async {
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        let p = s.open_partition(pid(), small_config(), true).await.unwrap();
        let batches = fill(&p, 40, 3, 1000).await;
        assert_eq!(p.offsets().log_end, 120);
        assert_eq!(p.offsets().durable, 120);
        assert!(
            p.stats().segment_rolls >= 4,
            "rolls: {}",
            p.stats().segment_rolls
        );
        for limits in [(1, 1), (1, 1000), (100_000, 5), (300, 1000)] {
            let limits = ReadLimits {
                max_bytes: limits.0,
                max_records: limits.1,
            };
            for offset in 0..120u64 {
                let r = p.read(offset, limits).await.unwrap();
                assert!(!r.records.is_empty() && r.records.len() <= limits.max_records);
                assert_eq!(r.records[0].offset, offset);
                let (b, i) = (offset / 3, offset % 3);
                assert_eq!(r.records[0].value, Bytes::from(format!("value-b{b}-{i}")));
                assert_eq!(r.next_offset, r.records.last().unwrap().offset + 1);
            }
        }
        let end = p
            .read(
                120,
                ReadLimits {
                    max_bytes: 10,
                    max_records: 10,
                },
            )
            .await
            .unwrap();
        assert!(end.records.is_empty() && end.next_offset == 120);
        assert!(matches!(
            p.read(
                121,
                ReadLimits {
                    max_bytes: 1,
                    max_records: 1
                }
            )
            .await,
            Err(EngineError::OffsetOutOfRange { requested: 121, .. })
        ));
        // Stored batch bytes are exactly the codec's encoding.
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
        assert_eq!(raw.batches.len(), 40);
        for ((base, prefix), bytes) in batches.iter().zip(&raw.batches) {
            assert_eq!(
                bytes,
                &encode_batch(*base, None, &batch(prefix, 3, 1000).records)
            );
        }
        assert_eq!(p.offset_for_timestamp(1000).await.unwrap(), Some(0));
        assert_eq!(p.offset_for_timestamp(1001).await.unwrap(), None);
        s.close().await.unwrap();
        // Reopen: same contents, appends continue at the same offset.
        let s = shard(&sim);
        let p = s
            .open_partition(pid(), small_config(), false)
            .await
            .unwrap();
        assert_eq!(p.fault(), None);
        assert_eq!(p.offsets().log_end, 120);
        assert_eq!(read_all(&p, 0).await.len(), 120);
        let a = p
            .append(batch("after", 2, 5), AckLevel::Durable)
            .await
            .unwrap();
        assert_eq!(a.base_offset, 120);
    });
}

#[test]
fn written_ack_is_not_readable_before_durable() {
    run(|| async {
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        let p = s.open_partition(pid(), small_config(), true).await.unwrap();
        let a = p.append(batch("w", 2, 1), AckLevel::Written).await.unwrap();
        assert_eq!(a.base_offset, 0);
        assert_eq!(p.offsets().durable, 0);
        assert!(
            p.read(
                0,
                ReadLimits {
                    max_bytes: 100,
                    max_records: 100
                }
            )
            .await
            .unwrap()
            .records
            .is_empty()
        );
        p.wait_for_durable_beyond(0).await.unwrap();
        assert_eq!(
            p.read(
                0,
                ReadLimits {
                    max_bytes: 100,
                    max_records: 100
                }
            )
            .await
            .unwrap()
            .records
            .len(),
            2
        );
    });
}

#[test]
fn group_commit_covers_concurrent_appends() {
    run(|| async {
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        let config = PartitionConfig {
            segment_bytes_max: 1 << 20,
            ..small_config()
        };
        let p = s.open_partition(pid(), config, true).await.unwrap();
        let mut tasks = Vec::new();
        for t in 0..50 {
            let p = p.clone();
            tasks.push(glommio::spawn_local(async move {
                p.append(batch(&format!("t{t}"), 1, 1), AckLevel::Durable)
                    .await
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(p.offsets().durable, 50);
        assert!(
            p.stats().syncs < 10,
            "50 concurrent appends took {} syncs",
            p.stats().syncs
        );
    });
}

#[test]
fn fdatasync_eio_fails_pending_acks_and_faults() {
    run(|| async {
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        let p = s.open_partition(pid(), small_config(), true).await.unwrap();
        fill(&p, 3, 2, 1).await;
        sim.fail_fsync_in(1);
        let mut tasks = Vec::new();
        for t in 0..5 {
            let p = p.clone();
            tasks.push(glommio::spawn_local(async move {
                p.append(batch(&format!("t{t}"), 1, 1), AckLevel::Durable)
                    .await
            }));
        }
        for t in tasks {
            assert!(matches!(t.await, Err(EngineError::PartitionFaulted { .. })));
        }
        assert!(p.fault().unwrap().contains("fdatasync"));
        assert!(matches!(
            p.append(batch("x", 1, 1), AckLevel::Durable).await,
            Err(EngineError::PartitionFaulted { .. })
        ));
        assert!(matches!(
            p.append(batch("x", 1, 1), AckLevel::Written).await,
            Err(EngineError::PartitionFaulted { .. })
        ));
        assert_eq!(
            p.offsets().durable,
            6,
            "durable point never moves past the failed sync"
        );
        assert_eq!(
            read_all(&p, 0).await.len(),
            6,
            "durable data stays readable"
        );
        drop(p);
        drop(s);
        sim.crash();
        let s = shard(&sim);
        let p = s
            .open_partition(pid(), small_config(), false)
            .await
            .unwrap();
        assert_eq!(p.fault(), None);
        let got = read_all(&p, 0).await;
        assert!(got.len() >= 6);
        assert_eq!(got[5].value, Bytes::from("value-b2-1"));
    });
}

/// Once a failed fdatasync faults the partition, nothing can become durable: a reader waiting
/// at the durable end is told so (the fault, named) instead of being woken with nothing to
/// read, and so is one that starts waiting afterwards. A closed partition ends waits too.
#[test]
fn waiting_for_durable_records_reports_a_fault_or_close() {
    run(|| async {
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        let p = s.open_partition(pid(), small_config(), true).await.unwrap();
        fill(&p, 2, 2, 1).await;
        let durable = p.offsets().durable;
        assert!(p.wait_for_durable_beyond(durable - 1).await.is_ok());
        let waiter = {
            let p = p.clone();
            glommio::spawn_local(async move { p.wait_for_durable_beyond(durable).await })
        };
        sim.fail_fsync_in(1);
        assert!(
            p.append(batch("lost", 1, 1), AckLevel::Durable)
                .await
                .is_err()
        );
        for result in [waiter.await, p.wait_for_durable_beyond(durable).await] {
            match result {
                Err(EngineError::PartitionFaulted { partition, reason }) => {
                    assert_eq!(partition, pid());
                    assert!(reason.contains("fdatasync"), "{reason}");
                }
                other => panic!("expected the fault, got {other:?}"),
            }
        }
        assert!(
            p.wait_for_durable_beyond(durable - 1).await.is_ok(),
            "durable records stay readable"
        );

        let other = PartitionId::new("orders", 4);
        let q = s
            .open_partition(other.clone(), small_config(), true)
            .await
            .unwrap();
        let waiter = {
            let q = q.clone();
            glommio::spawn_local(async move { q.wait_for_durable_beyond(0).await })
        };
        s.remove_partition(&other).await.unwrap();
        assert!(matches!(waiter.await, Err(EngineError::Closed { .. })));
    });
}

#[test]
fn enospc_is_reported_and_stops_writes() {
    run(|| async {
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        let config = PartitionConfig {
            prezero_segments: false,
            ..small_config()
        };
        let p = s.open_partition(pid(), config.clone(), true).await.unwrap();
        fill(&p, 2, 2, 1).await;
        sim.set_capacity_bytes(Some(0));
        let err = p
            .append(batch("full", 20, 1), AckLevel::Durable)
            .await
            .unwrap_err();
        assert!(
            matches!(err, EngineError::AppendedNotDurable { .. }),
            "{err:?}"
        );
        assert!(matches!(
            p.append(batch("x", 1, 1), AckLevel::Durable).await,
            Err(EngineError::NoSpace { .. })
        ));
        assert_eq!(read_all(&p, 0).await.len(), 4);
        drop(p);
        drop(s);
        sim.set_capacity_bytes(None);
        sim.crash();
        let s = shard(&sim);
        let p = s.open_partition(pid(), config, false).await.unwrap();
        assert_eq!(p.offsets().durable, 4);
        p.append(batch("again", 1, 1), AckLevel::Durable)
            .await
            .unwrap();
    });
}

fn segment_path(base: u64) -> PathBuf {
    PathBuf::from(format!("/data/topics/orders/3/{base:020}.log"))
}

#[test]
fn corruption_below_checkpoint_is_detected_on_read_not_truncated() {
    run(|| async {
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        let config = PartitionConfig {
            segment_bytes_max: 1 << 20,
            ..small_config()
        };
        let p = s.open_partition(pid(), config.clone(), true).await.unwrap();
        fill(&p, 10, 2, 1).await;
        s.close().await.unwrap();
        drop(p);
        let path = segment_path(0);
        assert!(sim.flip_bit(&path, 300, 3));
        let before = sim.file_contents(&path).unwrap();
        let s = shard(&sim);
        let p = s.open_partition(pid(), config, false).await.unwrap();
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
        let fault = p.fault().expect("corruption faults the partition");
        assert!(fault.contains("corruption"), "{fault}");
        assert!(matches!(
            p.append(batch("x", 1, 1), AckLevel::Durable).await,
            Err(EngineError::PartitionFaulted { .. })
        ));
        assert!(matches!(
            p.read(
                0,
                ReadLimits {
                    max_bytes: 1,
                    max_records: 1
                }
            )
            .await,
            Err(EngineError::PartitionFaulted { .. })
        ));
        assert_eq!(
            sim.file_contents(&path).unwrap(),
            before,
            "nothing was truncated or rewritten"
        );
    });
}

#[test]
fn corruption_past_checkpoint_with_later_synced_rounds_is_not_a_torn_tail() {
    run(|| async {
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        let config = PartitionConfig {
            segment_bytes_max: 64 << 20,
            checkpoint_interval_bytes: u64::MAX,
            prezero_segments: false,
            ..small_config()
        };
        let p = s.open_partition(pid(), config.clone(), true).await.unwrap();
        for i in 0..100 {
            let mut b = batch(&format!("big{i}"), 1, 1);
            b.records[0].value = Bytes::from(vec![i as u8; 100_000]);
            p.append(b, AckLevel::Durable).await.unwrap();
        }
        drop(p);
        drop(s);
        sim.crash(); // no close: the checkpoint is the one written at creation (offset 0)
        let path = segment_path(0);
        assert!(sim.flip_bit(&path, 5000, 1));
        let before = sim.file_contents(&path).unwrap();
        let s = shard(&sim);
        let p = s.open_partition(pid(), config, false).await.unwrap();
        let fault = p.fault().expect("acknowledged data is corrupt");
        assert!(fault.contains("later synced rounds"), "{fault}");
        assert_eq!(
            sim.file_contents(&path).unwrap(),
            before,
            "nothing was truncated or rewritten"
        );
    });
}

#[test]
fn corruption_in_sealed_segment_without_index_is_detected_on_open() {
    run(|| async {
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        let p = s.open_partition(pid(), small_config(), true).await.unwrap();
        fill(&p, 30, 2, 1).await;
        s.close().await.unwrap();
        drop(p);
        assert!(sim.remove_durably(&PathBuf::from(
            "/data/topics/orders/3/00000000000000000000.index"
        )));
        assert!(sim.flip_bit(&segment_path(0), 100, 0));
        let before = sim.file_contents(&segment_path(0)).unwrap();
        let s = shard(&sim);
        let p = s
            .open_partition(pid(), small_config(), false)
            .await
            .unwrap();
        assert!(p.fault().unwrap().contains("corruption"));
        assert_eq!(sim.file_contents(&segment_path(0)).unwrap(), before);
    });
}

#[test]
fn corruption_in_sealed_segment_is_detected_on_read_and_index_rebuilt() {
    run(|| async {
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        let p = s.open_partition(pid(), small_config(), true).await.unwrap();
        fill(&p, 30, 2, 1).await;
        s.close().await.unwrap();
        drop(p);
        // A missing index is rebuilt; a damaged one too.
        assert!(sim.remove_durably(&PathBuf::from(
            "/data/topics/orders/3/00000000000000000000.index"
        )));
        let names = sim.file_names();
        let second_index = names
            .iter()
            .find(|n| {
                n.extension().is_some_and(|e| e == "index")
                    && !n.ends_with("00000000000000000000.index")
            })
            .unwrap()
            .clone();
        sim.set_file_contents(&second_index, vec![1, 2, 3]);
        let s = shard(&sim);
        let p = s
            .open_partition(pid(), small_config(), false)
            .await
            .unwrap();
        assert_eq!(p.fault(), None);
        assert_eq!(read_all(&p, 0).await.len(), 60);
        s.close().await.unwrap();
        drop(p);
        assert!(
            sim.file_names()
                .iter()
                .any(|n| n.ends_with("00000000000000000000.index"))
        );
        // A flipped bit in a sealed segment: open is cheap (not scanned), the read detects it.
        assert!(sim.flip_bit(&segment_path(0), 100, 0));
        let s = shard(&sim);
        let p = s
            .open_partition(pid(), small_config(), false)
            .await
            .unwrap();
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
    });
}

#[test]
fn torn_tail_is_cut_and_appends_continue() {
    run(|| async {
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        let config = PartitionConfig {
            segment_bytes_max: 1 << 20,
            ..small_config()
        };
        let p = s.open_partition(pid(), config.clone(), true).await.unwrap();
        fill(&p, 5, 2, 1).await;
        // Garbage past the durable end, as a torn write would leave.
        let path = segment_path(0);
        let mut bytes = sim.file_contents(&path).unwrap();
        let end = p.size_bytes() as usize;
        if bytes.len() < end + 700 {
            bytes.resize(end + 700, 0);
        }
        for (i, b) in bytes[end..end + 700].iter_mut().enumerate() {
            *b = (i * 7 + 1) as u8;
        }
        drop(p);
        drop(s);
        sim.crash();
        sim.set_file_contents(&path, bytes);
        let s = shard(&sim);
        let p = s.open_partition(pid(), config, false).await.unwrap();
        assert_eq!(p.fault(), None);
        assert_eq!(p.offsets().log_end, 10);
        p.append(batch("next", 1, 1), AckLevel::Durable)
            .await
            .unwrap();
        assert_eq!(read_all(&p, 0).await.len(), 11);
    });
}

#[test]
fn retention_by_size_and_age_moves_log_start() {
    run(|| async {
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        let config = PartitionConfig {
            retention_bytes_max: Some(6000),
            ..small_config()
        };
        let p = s.open_partition(pid(), config, true).await.unwrap();
        fill(&p, 40, 3, 1000).await;
        // Retention runs after every roll; an explicit pass settles the last one.
        p.enforce_retention(2000).await.unwrap();
        p.wait_idle_for_tests().await;
        assert!(p.stats().segments_deleted > 0);
        assert!(p.size_bytes() <= 6000);
        let start = p.offsets().log_start;
        assert!(start > 0);
        let err = p
            .read(
                start - 1,
                ReadLimits {
                    max_bytes: 1,
                    max_records: 1,
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, EngineError::OffsetOutOfRange { log_start, .. } if log_start == start)
        );
        assert_eq!(
            p.read(
                start,
                ReadLimits {
                    max_bytes: 1,
                    max_records: 1
                }
            )
            .await
            .unwrap()
            .records[0]
                .offset,
            start
        );
        s.close().await.unwrap();
        drop(p);
        let config = PartitionConfig {
            retention_age_ms_max: Some(500),
            ..small_config()
        };
        let s = shard(&sim);
        let p = s.open_partition(pid(), config, false).await.unwrap();
        assert_eq!(p.offsets().log_start, start, "log start survives a restart");
        assert_eq!(
            p.enforce_retention(1200).await.unwrap(),
            0,
            "records are 200 ms old"
        );
        p.append(batch("new", 1, 5000), AckLevel::Durable)
            .await
            .unwrap();
        assert!(p.enforce_retention(1600).await.unwrap() > 0);
        assert_eq!(
            p.offsets().log_start,
            p.offsets().log_end - 1 - (p.offsets().log_end - 1 - p.offsets().log_start)
        );
        assert!(
            p.read(
                p.offsets().log_start,
                ReadLimits {
                    max_bytes: 1,
                    max_records: 1
                }
            )
            .await
            .is_ok()
        );
    });
}

fn idem(prefix: &str, n: usize, producer_id: u64, sequence: u64) -> AppendBatch {
    AppendBatch {
        producer: Some(ProducerSeq {
            producer_id,
            sequence,
        }),
        ..batch(prefix, n, 1)
    }
}

#[test]
fn idempotent_producer_dedup_survives_close_and_crash() {
    run(|| async {
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        let p = s.open_partition(pid(), small_config(), true).await.unwrap();
        fill(&p, 2, 1, 1).await;
        let a = p
            .append(idem("p", 3, 7, 0), AckLevel::Durable)
            .await
            .unwrap();
        assert_eq!((a.base_offset, a.duplicate), (2, false));
        let again = p
            .append(idem("p", 3, 7, 0), AckLevel::Durable)
            .await
            .unwrap();
        assert_eq!(
            (again.base_offset, again.record_count, again.duplicate),
            (2, 3, true)
        );
        let gap = p
            .append(idem("q", 1, 7, 9), AckLevel::Durable)
            .await
            .unwrap_err();
        assert!(matches!(
            gap,
            EngineError::SequenceGap {
                expected: 3,
                got: 9,
                ..
            }
        ));
        let unknown = p
            .append(idem("u", 1, 8, 4), AckLevel::Durable)
            .await
            .unwrap_err();
        assert!(
            matches!(
                unknown,
                EngineError::SequenceGap {
                    expected: 0,
                    got: 4,
                    ..
                }
            ),
            "an unknown producer must start at sequence 0: {unknown:?}"
        );
        p.append(idem("r", 2, 7, 3), AckLevel::Durable)
            .await
            .unwrap();
        s.close().await.unwrap();
        drop(p);
        // After a clean restart (checkpoint snapshot).
        let s = shard(&sim);
        let p = s
            .open_partition(pid(), small_config(), false)
            .await
            .unwrap();
        assert_eq!(
            p.append(idem("p", 3, 7, 0), AckLevel::Durable)
                .await
                .unwrap()
                .base_offset,
            2
        );
        let r = p
            .append(idem("r", 2, 7, 3), AckLevel::Durable)
            .await
            .unwrap();
        assert_eq!((r.base_offset, r.duplicate), (5, true));
        p.append(idem("s", 1, 7, 5), AckLevel::Durable)
            .await
            .unwrap();
        drop(p);
        drop(s);
        // After a crash (rebuilt from the log past the checkpoint).
        sim.crash();
        let s = shard(&sim);
        let p = s
            .open_partition(pid(), small_config(), false)
            .await
            .unwrap();
        let d = p
            .append(idem("s", 1, 7, 5), AckLevel::Durable)
            .await
            .unwrap();
        assert_eq!((d.base_offset, d.duplicate), (7, true));
        assert_eq!(p.offsets().log_end, 8);
        assert_eq!(p.stats().duplicate_batches, 1);
    });
}

#[test]
fn bad_input_is_rejected_with_typed_errors() {
    run(|| async {
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        assert!(matches!(
            s.open_partition(PartitionId::new("..", 0), small_config(), true)
                .await,
            Err(EngineError::InvalidTopicName { .. })
        ));
        assert!(matches!(
            s.open_partition(PartitionId::new("nope", 0), small_config(), false)
                .await,
            Err(EngineError::PartitionNotFound { .. })
        ));
        let p = s.open_partition(pid(), small_config(), true).await.unwrap();
        let empty = AppendBatch {
            records: vec![],
            producer: None,
        };
        assert!(matches!(
            p.append(empty, AckLevel::Durable).await,
            Err(EngineError::EmptyBatch { .. })
        ));
        let huge = AppendBatch {
            records: vec![common::record("x", 1); 1],
            producer: None,
        };
        let mut huge = huge;
        huge.records[0].value = Bytes::from(vec![0u8; 5 << 20]);
        assert!(matches!(
            p.append(huge, AckLevel::Durable).await,
            Err(EngineError::BatchTooLarge { .. })
        ));
        // A batch larger than a segment still fits (a segment holds at least one batch).
        let big = AppendBatch {
            records: vec![record("big", 1)],
            producer: None,
        };
        let mut big = big;
        big.records[0].value = Bytes::from(vec![7u8; 10_000]);
        p.append(big, AckLevel::Durable).await.unwrap();
        let got = p
            .read(
                0,
                ReadLimits {
                    max_bytes: 1,
                    max_records: 1,
                },
            )
            .await
            .unwrap();
        assert_eq!(got.records[0].value.len(), 10_000);
        let bytes = p
            .read_batches(
                0,
                ReadLimits {
                    max_bytes: 1,
                    max_records: 1,
                },
            )
            .await
            .unwrap();
        assert!(BatchView::parse(&bytes.batches[0]).is_ok());
        s.remove_partition(&pid()).await.unwrap();
        assert!(s.partition(&pid()).is_none());
        assert!(sim.file_names().is_empty(), "{:?}", sim.file_names());
    });
}

/// A record with `count` one-byte headers.
fn record_with_headers(count: usize) -> shardlog_engine::Record {
    let mut r = record("headers", 1);
    r.headers = (0..count)
        .map(|i| shardlog_engine::Header {
            key: Bytes::from(format!("h{i}")),
            value: Bytes::from_static(b"v"),
        })
        .collect();
    r
}

/// The decoder refuses a record with more than `RECORD_HEADERS_MAX` headers, so append refuses
/// it before anything is written: an acknowledged batch always reads back, before and after a
/// crash (recovery would otherwise take it for a torn tail and cut the log there).
#[test]
fn a_record_over_the_header_limit_is_refused_and_what_is_acknowledged_reads_back() {
    use shardlog_engine::format::RECORD_HEADERS_MAX;
    run(|| async {
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        let p = s.open_partition(pid(), small_config(), true).await.unwrap();
        let over = AppendBatch {
            records: vec![record("ok", 1), record_with_headers(RECORD_HEADERS_MAX + 1)],
            producer: None,
        };
        let refused = p.append(over, AckLevel::Durable).await.unwrap_err();
        assert!(
            matches!(
                refused,
                EngineError::TooManyHeaders {
                    record_index: 1,
                    header_count,
                    headers_max: RECORD_HEADERS_MAX,
                    ..
                } if header_count == RECORD_HEADERS_MAX + 1
            ),
            "{refused:?}"
        );
        assert_eq!(p.offsets().log_end, 0, "nothing of the batch was written");
        let at_limit = AppendBatch {
            records: vec![record_with_headers(RECORD_HEADERS_MAX)],
            producer: None,
        };
        p.append(at_limit, AckLevel::Durable).await.unwrap();
        p.append(batch("after", 2, 1), AckLevel::Durable)
            .await
            .unwrap();
        let got = read_all(&p, 0).await;
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].headers.len(), RECORD_HEADERS_MAX);
        drop(p);
        drop(s);
        sim.crash();
        let s = shard(&sim);
        let p = s
            .open_partition(pid(), small_config(), false)
            .await
            .unwrap();
        assert_eq!(p.fault(), None);
        assert_eq!(
            p.offsets().durable,
            3,
            "recovery keeps every acknowledged record"
        );
        assert_eq!(read_all(&p, 0).await[0].headers.len(), RECORD_HEADERS_MAX);
    });
}

/// A read's byte budget counts what the records take as stored (key, value, headers and their
/// framing): records made mostly of headers fill it as fast as any other. Counting only keys
/// and values, a read took a whole batch of them however large.
#[test]
fn read_budget_counts_headers_and_framing() {
    use shardlog_engine::format::record_encoded_bytes;
    run(|| async {
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        let p = s.open_partition(pid(), small_config(), true).await.unwrap();
        let heavy = |i: usize| {
            let mut r = record(&format!("heavy{i}"), 1);
            r.headers[0].value = Bytes::from(vec![b'h'; 1000]);
            r
        };
        let records: Vec<_> = (0..10).map(heavy).collect();
        let record_bytes = record_encoded_bytes(&records[0]);
        let batch = AppendBatch {
            records,
            producer: None,
        };
        p.append(batch, AckLevel::Durable).await.unwrap();
        let limits = ReadLimits {
            max_bytes: 2500,
            max_records: usize::MAX,
        };
        let got = p.read(0, limits).await.unwrap();
        // Added while the total is below the budget: the last one may cross it.
        let expected = 2500_usize.div_ceil(record_bytes);
        assert_eq!(
            got.records.len(),
            expected,
            "{record_bytes} bytes per record"
        );
        assert_eq!(got.next_offset, expected as u64);
        let one = ReadLimits {
            max_bytes: 1,
            max_records: usize::MAX,
        };
        assert_eq!(
            p.read(0, one).await.unwrap().records.len(),
            1,
            "at least one"
        );
    });
}

/// Appends started in order get offsets in that order even when some of them must wait: here
/// 1.5 MiB batches hit the 8 MiB unsynced-bytes bound while small batches behind them would
/// still fit. A later append never overtakes a waiting one.
#[test]
fn concurrent_appends_keep_call_order_when_some_must_wait() {
    run(|| async {
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        let config = PartitionConfig {
            segment_bytes_max: 64 << 20,
            ..small_config()
        };
        let p = s.open_partition(pid(), config, true).await.unwrap();
        let big = Bytes::from(vec![7u8; 1536 << 10]);
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let p = p.clone();
                let value = if i % 2 == 0 {
                    big.clone()
                } else {
                    Bytes::from(format!("small-{i}"))
                };
                let records = vec![shardlog_engine::Record {
                    key: None,
                    value,
                    timestamp_ms: 1,
                    headers: Vec::new(),
                }];
                let batch = AppendBatch {
                    records,
                    producer: None,
                };
                glommio::spawn_local(async move { p.append(batch, AckLevel::Written).await })
            })
            .collect();
        let mut last = None;
        for (i, task) in tasks.into_iter().enumerate() {
            let appended = task.await.expect("append");
            if let Some(last) = last {
                assert!(
                    appended.base_offset > last,
                    "append {i} overtook an earlier one"
                );
            }
            last = Some(appended.base_offset);
        }
    });
}

/// A batch of `n` records with 1,000-byte values (about 1 KiB each on disk).
fn kib_batch(prefix: &str, n: usize) -> AppendBatch {
    AppendBatch {
        records: (0..n)
            .map(|i| shardlog_engine::Record {
                key: Some(Bytes::from(format!("{prefix}-{i}"))),
                value: Bytes::from(vec![b'z'; 1000]),
                timestamp_ms: 1,
                headers: Vec::new(),
            })
            .collect(),
        producer: None,
    }
}

/// Waits (bounded) until the shard has no zero-fill in flight.
async fn zero_fills_settled(s: &Shard<SimStorage>) {
    for _ in 0..1000 {
        if s.zero_fill_stats().in_flight == 0 {
            return;
        }
        glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
    }
    panic!("zero-fills never settled: {:?}", s.zero_fill_stats());
}

#[test]
fn background_zero_fill_is_bounded_per_shard_and_skips_cold_partitions() {
    run(|| async {
        const PARTITIONS: u32 = 8;
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        let config = PartitionConfig {
            segment_bytes_max: 4 << 20,
            ..PartitionConfig::default()
        };
        let mut parts = Vec::new();
        for i in 0..PARTITIONS {
            let id = PartitionId::new("hot", i);
            parts.push(s.open_partition(id, config.clone(), true).await.unwrap());
        }
        // ~100 KiB each: well inside the zero-filled start of a new segment, so no partition
        // asks for a background fill yet (cold partitions never zero-fill).
        for p in &parts {
            p.append(kib_batch("cold", 100), AckLevel::Durable)
                .await
                .unwrap();
        }
        assert_eq!(s.zero_fill_stats().started, 0, "{:?}", s.zero_fill_stats());
        // Every partition crosses the low-water mark in the same instant: only the shard's
        // budget of fills may start; the rest skip.
        let tasks: Vec<_> = parts
            .iter()
            .map(|p| {
                let p = p.clone();
                glommio::spawn_local(async move {
                    p.append(kib_batch("warm", 40), AckLevel::Durable).await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        zero_fills_settled(&s).await;
        let max = shardlog_engine::ZERO_FILLS_PER_SHARD_MAX;
        let stats = s.zero_fill_stats();
        assert_eq!(stats.started, max as u64, "{stats:?}");
        assert_eq!(stats.in_flight_peak, max, "{stats:?}");
        assert_eq!(stats.skipped_busy, u64::from(PARTITIONS) - max as u64);
        // The skipped ones ask again on their next append and get their fill.
        for p in &parts {
            p.append(kib_batch("again", 1), AckLevel::Durable)
                .await
                .unwrap();
            zero_fills_settled(&s).await;
        }
        let stats = s.zero_fill_stats();
        assert_eq!(stats.started, u64::from(PARTITIONS), "{stats:?}");
        assert!(stats.in_flight_peak <= max, "{stats:?}");
        for p in &parts {
            assert_eq!(p.offsets().durable, 141);
        }
    });
}

#[test]
fn every_sync_round_is_timed_in_the_shard_histograms() {
    run(|| async {
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        let a = s.open_partition(pid(), small_config(), true).await.unwrap();
        let b = s
            .open_partition(PartitionId::new("orders", 4), small_config(), true)
            .await
            .unwrap();
        fill(&a, 10, 3, 1000).await;
        fill(&b, 7, 2, 1000).await;
        let rounds = a.stats().syncs + b.stats().syncs;
        assert!(
            rounds >= 17,
            "one round per durable batch at least: {rounds}"
        );
        let stats = s.sync_round_stats();
        for (phase, h) in [
            ("wait", stats.wait),
            ("write", stats.write),
            ("fdatasync", stats.fdatasync),
        ] {
            assert_eq!(h.count, rounds, "{phase}");
            assert_eq!(h.bucket_counts.iter().sum::<u64>(), rounds, "{phase}");
        }
    });
}

fn spare_exists(sim: &SimStorage) -> bool {
    sim.file_names()
        .iter()
        .any(|path| path.ends_with("topics/orders/3/recycled.spare"))
}

#[test]
fn retired_segments_are_recycled_as_later_segments() {
    run(|| async {
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        let config = PartitionConfig {
            retention_bytes_max: Some(6000),
            ..small_config()
        };
        let p = s.open_partition(pid(), config.clone(), true).await.unwrap();
        let batches = fill(&p, 80, 3, 1000).await;
        p.wait_idle_for_tests().await;
        let stats = p.stats();
        // Retention runs after every roll; each retired file it keeps becomes a later segment.
        assert!(stats.segment_rolls >= 6, "{stats:?}");
        assert!(stats.segments_recycled >= 3, "{stats:?}");
        assert!(
            stats.segments_deleted >= stats.segments_recycled,
            "{stats:?}"
        );
        assert!(p.size_bytes() <= 6000 + config.segment_bytes_max);
        let start = p.offsets().log_start;
        assert!(start > 0);
        let check = |records: Vec<shardlog_engine::StoredRecord>| {
            assert_eq!(records.len() as u64, 240 - start);
            for r in records {
                let (b, i) = (r.offset / 3, r.offset % 3);
                assert_eq!(batches[b as usize].0, b * 3);
                assert_eq!(r.value, Bytes::from(format!("value-b{b}-{i}")));
            }
        };
        check(read_all(&p, start).await);
        // A recycled active segment holds its earlier life's bytes past its data: a crash and
        // recovery see exactly the acknowledged log, and the spare (if any) is dropped on open.
        drop(p);
        drop(s);
        sim.crash();
        let s = shard(&sim);
        let p = s.open_partition(pid(), config, false).await.unwrap();
        assert_eq!(p.fault(), None);
        assert_eq!(p.offsets().log_start, start);
        assert_eq!(p.offsets().log_end, 240);
        assert!(!spare_exists(&sim));
        check(read_all(&p, start).await);
        p.append(batch("after", 2, 1000), AckLevel::Durable)
            .await
            .unwrap();
        assert_eq!(p.offsets().durable, 242);
    });
}

#[test]
fn a_retired_segment_a_reader_still_holds_is_deleted_not_recycled() {
    run(|| async {
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        let p = s.open_partition(pid(), small_config(), true).await.unwrap();
        fill(&p, 40, 3, 1000).await;
        s.close().await.unwrap();
        drop(p);
        // Reopened with an age limit every sealed segment is past.
        let config = PartitionConfig {
            retention_age_ms_max: Some(500),
            ..small_config()
        };
        let s = shard(&sim);
        let p = s.open_partition(pid(), config, false).await.unwrap();
        let mut held = Vec::new();
        let mut next = 0;
        while next < 120 {
            let r = p
                .read(
                    next,
                    ReadLimits {
                        max_bytes: 1,
                        max_records: 1,
                    },
                )
                .await
                .unwrap();
            next = r.next_offset;
            held.push(r);
        }
        assert!(p.enforce_retention(2000).await.unwrap() > 0);
        p.wait_idle_for_tests().await;
        assert!(
            !spare_exists(&sim),
            "a file a reader holds was kept for reuse"
        );
        for r in &held {
            let (b, i) = (r.records[0].offset / 3, r.records[0].offset % 3);
            assert_eq!(r.records[0].value, Bytes::from(format!("value-b{b}-{i}")));
        }
        assert_eq!(p.stats().segments_recycled, 0);
        drop(held);
        // With no reader left, segments retired after later rolls are reused.
        fill(&p, 40, 3, 1000).await;
        p.wait_idle_for_tests().await;
        assert!(p.stats().segments_recycled > 0, "{:?}", p.stats());
    });
}

#[test]
fn only_segments_rolled_full_are_recycled() {
    run(|| async {
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        let config = PartitionConfig {
            segment_age_ms_max: 100,
            retention_bytes_max: Some(1),
            ..small_config()
        };
        let p = s.open_partition(pid(), config, true).await.unwrap();
        // A cold partition: each segment rolls by age holding one small batch.
        for i in 0..6 {
            p.append(batch(&format!("cold{i}"), 1, 1000), AckLevel::Durable)
                .await
                .unwrap();
            sim.advance_clock_ms(200);
        }
        p.wait_idle_for_tests().await;
        let stats = p.stats();
        assert!(
            stats.segment_rolls >= 5 && stats.segments_deleted >= 4,
            "{stats:?}"
        );
        assert_eq!(stats.segments_recycled, 0, "a cold partition kept a spare");
        assert!(!spare_exists(&sim));
        // The same partition turning hot rolls full segments, and those are reused.
        fill(&p, 40, 3, 1000).await;
        p.wait_idle_for_tests().await;
        assert!(p.stats().segments_recycled > 0, "{:?}", p.stats());
    });
}

const SALT: u32 = 0x5a17_0001;
/// Past this many bytes after a torn tail, recovery looks for later synced data (8 MiB of
/// unsynced bytes at most, plus padding).
const PAST_TORN_ZONE: usize = 8 * 1024 * 1024 + 64 * 1024;

/// After a crash right after a roll to a recycled file: segment 0 sealed (cut to its data:
/// offsets 0..4) and `<4>.<SALT>.log` active, holding `active`.
struct RecycledRecovery {
    sim: SimStorage,
    /// The recycled file's bytes before recovery.
    before: Vec<u8>,
    _shard: Shard<SimStorage>,
    partition: std::rc::Rc<shardlog_engine::Partition<SimStorage>>,
}

/// Sets up the state above, then recovers the partition (64 MiB segments).
async fn recover_recycled_segment(active: Vec<u8>) -> RecycledRecovery {
    let sim = SimStorage::new(SimConfig::default());
    let config = PartitionConfig {
        segment_bytes_max: 64 << 20,
        ..small_config()
    };
    let s = shard(&sim);
    let p = s.open_partition(pid(), config.clone(), true).await.unwrap();
    fill(&p, 2, 2, 1).await;
    let data_bytes = p.size_bytes() as usize;
    s.close().await.unwrap();
    drop(p);
    let sealed = segment_path(0);
    let mut bytes = sim.file_contents(&sealed).unwrap();
    bytes.truncate(data_bytes);
    assert!(sim.set_file_contents(&sealed, bytes));
    let path = recycled_segment_path();
    sim.open(&path, OpenMode::CreateTruncate).await.unwrap();
    sim.sync_dir(path.parent().unwrap()).await.unwrap();
    assert!(sim.set_file_contents(&path, active.clone()));
    let shard = shard(&sim);
    let partition = shard.open_partition(pid(), config, false).await.unwrap();
    RecycledRecovery {
        sim,
        before: active,
        _shard: shard,
        partition,
    }
}

fn recycled_segment_path() -> PathBuf {
    PathBuf::from(format!("/data/topics/orders/3/{:020}.{SALT:08x}.log", 4))
}

/// An earlier life's bytes: old batches (offsets below 4), `len` bytes of them.
fn stale_bytes(len: usize) -> Vec<u8> {
    let mut old = batch("old", 1, 1);
    old.records[0].value = Bytes::from(vec![0x11; 4000]);
    let mut v = Vec::new();
    while v.len() < len {
        v.extend_from_slice(&encode_batch(0, None, &old.records));
    }
    v.truncate(len);
    v
}

#[test]
fn a_batch_planted_in_a_recycled_segments_stale_bytes_is_not_taken_for_later_data() {
    run(|| async {
        // The new life: two records (offsets 4, 5), then half a batch a crash cut.
        let mut active = encode_salted_batch(SALT, 4, None, &batch("kept", 2, 1).records).to_vec();
        let torn = encode_salted_batch(SALT, 6, None, &batch("torn", 2, 1).records);
        active.extend_from_slice(&torn[..torn.len() / 2]);
        // The earlier life, where a client's record value held a well-formed (unsalted) batch
        // with an offset that would plausibly follow: 7.
        let mut planted = batch("planted", 1, 1);
        planted.records[0].value = encode_batch(7, None, &batch("forged", 3, 1).records);
        let mut file = stale_bytes(PAST_TORN_ZONE);
        file[..active.len()].copy_from_slice(&active);
        file.extend_from_slice(&encode_batch(1, None, &planted.records));
        file.extend(stale_bytes(1 << 20));
        let RecycledRecovery {
            sim,
            before,
            partition: p,
            ..
        } = recover_recycled_segment(file).await;
        assert_eq!(
            p.fault(),
            None,
            "stale and planted bytes are not later data"
        );
        assert_eq!(
            sim.file_contents(&recycled_segment_path()).unwrap(),
            before,
            "no batch of this segment past the end: nothing is zero-filled"
        );
        assert_eq!(p.offsets().log_end, 6, "the torn batch is cut");
        let values: Vec<Bytes> = read_all(&p, 0).await.into_iter().map(|r| r.value).collect();
        assert_eq!(values.len(), 6);
        assert_eq!(values[4], Bytes::from("value-kept-0"));
        p.append(batch("next", 1, 1), AckLevel::Durable)
            .await
            .unwrap();
        let last = read_all(&p, 6).await;
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].value, Bytes::from("value-next-0"));
    });
}

#[test]
fn corruption_in_a_recycled_segment_with_later_synced_batches_is_not_a_torn_tail() {
    run(|| async {
        // Acknowledged batches of 64 KiB reaching past the torn zone, over stale bytes.
        let mut big = batch("big", 1, 1);
        big.records[0].value = Bytes::from(vec![7; 64 * 1024]);
        let mut active = Vec::new();
        let mut offset = 4;
        while active.len() < PAST_TORN_ZONE + (1 << 20) {
            active.extend_from_slice(&encode_salted_batch(SALT, offset, None, &big.records));
            offset += 1;
        }
        active.extend(stale_bytes(1 << 20));
        active[100_000] ^= 0x10; // inside the second batch
        let r = recover_recycled_segment(active).await;
        let fault = r.partition.fault().expect("acknowledged data is corrupt");
        assert!(fault.contains("later synced rounds"), "{fault}");
        let after = r.sim.file_contents(&recycled_segment_path()).unwrap();
        assert_eq!(after, r.before, "nothing was cut");
    });
}

#[test]
fn a_whole_batch_of_the_crashed_round_in_a_recycled_segment_is_cut_not_kept() {
    run(|| async {
        // The crashed round wrote offsets 6-7 and 8; a page in the middle of 6-7 never reached
        // the disk, so 8 is whole and valid but was never acknowledged.
        let mut round = batch("round", 2, 1);
        round.records[0].value = Bytes::from(vec![3; 6000]);
        let kept = encode_salted_batch(SALT, 4, None, &batch("kept", 2, 1).records).to_vec();
        let torn = encode_salted_batch(SALT, 6, None, &round.records).to_vec();
        let whole = encode_salted_batch(SALT, 8, None, &batch("whole", 1, 1).records).to_vec();
        let mut file = stale_bytes(2 << 20);
        let whole_at = kept.len() + torn.len();
        file[..kept.len()].copy_from_slice(&kept);
        file[kept.len()..whole_at].copy_from_slice(&torn);
        file[whole_at..whole_at + whole.len()].copy_from_slice(&whole);
        file[kept.len() + 3000..kept.len() + 4000].fill(0x11);
        let RecycledRecovery {
            sim, partition: p, ..
        } = recover_recycled_segment(file).await;
        assert_eq!(p.fault(), None);
        assert_eq!(p.offsets().log_end, 6);
        let after = sim.file_contents(&recycled_segment_path()).unwrap();
        assert!(
            after[whole_at..whole_at + whole.len()]
                .iter()
                .all(|b| *b == 0),
            "the unacknowledged batch was zero-filled, so it can never rejoin the log"
        );
        assert_eq!(
            &after[..kept.len()],
            &kept[..],
            "acknowledged bytes are kept"
        );
        // The same records appended again take the same place, and only they are read back.
        p.append(round.clone(), AckLevel::Durable).await.unwrap();
        let records = read_all(&p, 0).await;
        assert_eq!(records.len(), 8);
    });
}

#[test]
fn a_crash_during_retention_never_leaves_a_hole_in_the_log() {
    run(|| async {
        let config = PartitionConfig {
            segment_age_ms_max: 1000,
            ..small_config()
        };
        let mut recycled_a_later_segment = 0;
        for seed in 0..24u64 {
            for crash_after in 1..20u64 {
                let sim = SimStorage::new(SimConfig {
                    seed,
                    ..SimConfig::default()
                });
                let s = shard(&sim);
                let p = s.open_partition(pid(), config.clone(), true).await.unwrap();
                // The oldest segment rolled by age with one batch (too small to recycle), then
                // full ones: retention deletes the oldest and recycles the one after it.
                fill(&p, 1, 1, 1).await;
                sim.advance_clock_ms(2000);
                fill(&p, 50, 3, 1).await;
                s.close().await.unwrap();
                drop(p);
                let retained = PartitionConfig {
                    retention_bytes_max: Some(3000),
                    ..config.clone()
                };
                let s = shard(&sim);
                let p = s
                    .open_partition(pid(), retained.clone(), false)
                    .await
                    .unwrap();
                sim.crash_at_op(sim.op_count() + crash_after);
                // Another task's directory syncs may land between retention's changes.
                let syncer = glommio::spawn_local({
                    let sim = sim.clone();
                    async move {
                        let dir = PathBuf::from("/data/topics/orders/3");
                        while sim.sync_dir(&dir).await.is_ok() {
                            futures_lite::future::yield_now().await;
                        }
                    }
                });
                let retired = p.enforce_retention(sim.now_ms()).await;
                if retired.is_ok() && spare_exists(&sim) {
                    recycled_a_later_segment += 1;
                }
                sim.crash_at_op(0);
                syncer.await;
                drop(p);
                drop(s);
                sim.crash();
                let s = shard(&sim);
                let p = s.open_partition(pid(), retained, false).await.unwrap();
                assert_eq!(
                    p.fault(),
                    None,
                    "seed {seed}, crash after {crash_after} ops"
                );
                let start = p.offsets().log_start;
                let records = read_all(&p, start).await;
                assert_eq!(records.len() as u64, 151 - start, "seed {seed}");
            }
        }
        assert!(
            recycled_a_later_segment > 0,
            "no run got as far as keeping a spare"
        );
    });
}

/// A partition with room for background zero-fills (4 MiB segments, pre-zeroing on).
fn prezero_config() -> PartitionConfig {
    PartitionConfig {
        segment_bytes_max: 4 << 20,
        ..PartitionConfig::default()
    }
}

#[test]
fn a_failed_zero_fill_fdatasync_faults_the_partition_and_acks_nothing_after_it() {
    run(|| async {
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        let p = s
            .open_partition(pid(), prezero_config(), true)
            .await
            .unwrap();
        // 130 KiB crosses the low-water mark: a background zero-fill starts beside the round,
        // and its fdatasync is the next one. It fails after the round's write was issued, so
        // that write may be lost; the round's own later fdatasync proves nothing.
        sim.fail_fsync_in(1);
        let acked = p.append(kib_batch("lost", 130), AckLevel::Durable).await;
        p.wait_idle_for_tests().await;
        assert_eq!(s.zero_fill_stats().started, 1, "the fill ran");
        let fault = p.fault().expect("a failed fdatasync faults the partition");
        assert!(fault.contains("fdatasync"), "{fault}");
        assert!(
            matches!(acked, Err(EngineError::PartitionFaulted { .. })),
            "{acked:?}"
        );
        assert_eq!(
            p.offsets().durable,
            0,
            "nothing published after the failure"
        );
        drop(p);
        drop(s);
        sim.crash();
        let s = shard(&sim);
        let p = s
            .open_partition(pid(), prezero_config(), false)
            .await
            .unwrap();
        assert_eq!(p.fault(), None);
        let kept = read_all(&p, 0).await.len();
        if acked.is_ok() {
            assert_eq!(kept, 130, "an acknowledged batch was lost");
        }
    });
}

#[test]
fn sealing_waits_for_a_zero_fill_in_flight_so_the_sealed_file_matches_its_index() {
    run(|| async {
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        let config = PartitionConfig {
            segment_bytes_max: 300 * 1024,
            ..PartitionConfig::default()
        };
        let p = s.open_partition(pid(), config.clone(), true).await.unwrap();
        // The fill this batch starts (at 256 KiB, past the data) is slow to land; the next
        // batch does not fit, so the segment is sealed while the fill is in flight.
        assert!(sim.slow_writes_from(&segment_path(0), 256 * 1024, 10_000));
        p.append(kib_batch("a", 130), AckLevel::Written)
            .await
            .unwrap();
        p.append(kib_batch("b", 200), AckLevel::Durable)
            .await
            .unwrap();
        p.wait_idle_for_tests().await;
        assert!(s.zero_fill_stats().started >= 1, "the fill ran");
        assert_eq!(p.stats().segment_rolls, 1);
        let sealed = sim.file_contents(&segment_path(0)).unwrap();
        let data = encode_batch(0, None, &kib_batch("a", 130).records);
        assert_eq!(
            sealed.len(),
            data.len(),
            "no zeros landed past the sealed end"
        );
        assert_eq!(sealed, data);
        s.close().await.unwrap();
        drop(p);
        let s = shard(&sim);
        let p = s.open_partition(pid(), config, false).await.unwrap();
        assert_eq!(p.fault(), None);
        assert_eq!(read_all(&p, 0).await.len(), 330);
    });
}

#[test]
fn a_sealed_segment_with_zeros_past_its_index_is_accepted_and_trimmed() {
    run(|| async {
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        let p = s.open_partition(pid(), small_config(), true).await.unwrap();
        fill(&p, 20, 3, 1000).await;
        assert!(p.stats().segment_rolls >= 2);
        s.close().await.unwrap();
        drop(p);
        // What a zero-fill landing after the seal left behind (before seals waited for it).
        let sealed = sim.file_contents(&segment_path(0)).unwrap();
        let mut longer = sealed.clone();
        longer.resize(sealed.len() + 20_000, 0);
        assert!(sim.set_file_contents(&segment_path(0), longer));
        let s = shard(&sim);
        let p = s
            .open_partition(pid(), small_config(), false)
            .await
            .unwrap();
        assert_eq!(p.fault(), None);
        assert_eq!(read_all(&p, 0).await.len(), 60);
        assert_eq!(sim.file_contents(&segment_path(0)).unwrap(), sealed);
        s.close().await.unwrap();
        drop(p);
        // Non-zero bytes there are not explained by a late fill: the index is not trusted,
        // the segment is scanned, and the damage is reported.
        let mut damaged = sealed.clone();
        damaged.resize(sealed.len() + 4096, 0);
        *damaged.last_mut().unwrap() = 7;
        assert!(sim.set_file_contents(&segment_path(0), damaged));
        let s = shard(&sim);
        let p = s
            .open_partition(pid(), small_config(), false)
            .await
            .unwrap();
        assert!(p.fault().is_some());
    });
}

/// 1 MiB segments written without pre-zeroing: each round that passes the file's end grows it.
fn growing_config() -> PartitionConfig {
    PartitionConfig {
        segment_bytes_max: 1 << 20,
        prezero_segments: false,
        ..small_config()
    }
}

/// A simulated disk holding a closed partition (`growing_config`) of five 2-record batches.
async fn closed_after_five_batches() -> SimStorage {
    let sim = SimStorage::new(SimConfig::default());
    let s = shard(&sim);
    let p = s
        .open_partition(pid(), growing_config(), true)
        .await
        .unwrap();
    fill(&p, 5, 2, 1).await;
    s.close().await.unwrap();
    sim
}

#[test]
fn a_restart_on_a_full_disk_serves_reads_and_writes_resume_once_space_is_freed() {
    run(|| async {
        let sim = closed_after_five_batches().await;
        // The disk stays full across the restart: the checkpoint written at open fails.
        sim.set_capacity_bytes(Some(0));
        let s = shard(&sim);
        let p = s
            .open_partition(pid(), growing_config(), false)
            .await
            .expect("a full disk does not keep the partition from opening");
        assert_eq!(p.fault(), None);
        assert_eq!(read_all(&p, 0).await.len(), 10, "reads are served");
        // The first append is encoded, then finds the disk full: it says so, with its
        // offsets; the second encodes nothing.
        let err = p
            .append(kib_batch("full", 5), AckLevel::Durable)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                EngineError::AppendedNotDurable {
                    base_offset: 10,
                    end_offset: 15,
                    ..
                }
            ),
            "{err:?}"
        );
        let err = p
            .append(kib_batch("full", 5), AckLevel::Durable)
            .await
            .unwrap_err();
        assert!(matches!(err, EngineError::NoSpace { .. }), "{err:?}");
        assert_eq!(p.offsets().durable, 10);
        assert_eq!(
            read_all(&p, 0).await.len(),
            10,
            "nothing past the durable point"
        );
        // Space is back (retention or an operator freed some): the next append retries the
        // stuck round and goes through. The stuck round holds the first refused batch (it was
        // encoded before the disk was found full): like a cancelled append, its outcome was
        // unknown, and it is written now. The second refused append encoded nothing.
        sim.set_capacity_bytes(None);
        let a = p
            .append(batch("back", 2, 1), AckLevel::Durable)
            .await
            .unwrap();
        assert_eq!(p.fault(), None);
        assert_eq!(a.base_offset, 15);
        let records = read_all(&p, 0).await;
        assert_eq!(records.len(), 17);
        assert_eq!(records[10].key, Some(Bytes::from("full-0")));
        assert_eq!(records[16].value, Bytes::from("value-back-1"));
        s.close().await.unwrap();
        drop(p);
        sim.crash();
        let s = shard(&sim);
        let p = s
            .open_partition(pid(), growing_config(), false)
            .await
            .unwrap();
        assert_eq!(read_all(&p, 0).await, records);
    });
}

/// Caps the simulated disk at what its files hold now: writes that grow nothing still fit.
fn fill_disk(sim: &SimStorage) {
    let used: usize = sim
        .file_names()
        .iter()
        .filter_map(|path| sim.file_contents(path))
        .map(|bytes| bytes.len())
        .sum();
    sim.set_capacity_bytes(Some(used as u64));
}

#[test]
fn a_roll_that_runs_out_of_space_is_retried_once_space_is_freed() {
    run(|| async {
        let sim = SimStorage::new(SimConfig::default());
        let s = shard(&sim);
        let p = s.open_partition(pid(), small_config(), true).await.unwrap();
        fill(&p, 6, 2, 1).await;
        let rolls = p.stats().segment_rolls;
        fill_disk(&sim);
        // Batches that fit go into the active segment's written pages; the one that rolls
        // needs space (the sealed segment's index, the new segment's zero-filled start).
        let mut appended = 12;
        let err = loop {
            match p.append(batch("r", 2, 1), AckLevel::Durable).await {
                Ok(_) => appended += 2,
                Err(e) => break e,
            }
        };
        assert!(matches!(err, EngineError::NoSpace { .. }), "{err:?}");
        assert_eq!(p.offsets().log_end, appended as u64, "nothing encoded");
        assert!(matches!(
            p.append(batch("r", 2, 1), AckLevel::Written).await,
            Err(EngineError::NoSpace { .. })
        ));
        assert_eq!(p.stats().segment_rolls, rolls);
        assert_eq!(read_all(&p, 0).await.len(), appended, "reads go on");
        sim.set_capacity_bytes(None);
        p.append(batch("after", 2, 1), AckLevel::Durable)
            .await
            .unwrap();
        appended += 2;
        assert_eq!(p.stats().segment_rolls, rolls + 1);
        assert_eq!(p.fault(), None);
        let records = read_all(&p, 0).await;
        assert_eq!(records.len(), appended);
        assert_eq!(records[appended - 1].value, Bytes::from("value-after-1"));
        s.close().await.unwrap();
        drop(p);
        sim.crash();
        let s = shard(&sim);
        let p = s
            .open_partition(pid(), small_config(), false)
            .await
            .unwrap();
        assert_eq!(p.fault(), None);
        assert_eq!(read_all(&p, 0).await, records);
    });
}

#[test]
fn a_torn_tail_on_a_full_disk_is_cut_by_truncation() {
    run(|| async {
        let sim = closed_after_five_batches().await;
        // A crashed round's garbage past the log's end, reaching past an unaligned end of
        // file: zeroing the torn zone would grow the file, and the disk is full.
        let data_bytes = read_segment_data_bytes(&sim);
        let mut torn = sim.file_contents(&segment_path(0)).unwrap();
        torn.truncate(data_bytes);
        torn.resize(align_4k(data_bytes) + 100, 0xee);
        assert!(sim.set_file_contents(&segment_path(0), torn));
        sim.set_capacity_bytes(Some(0));
        let s = shard(&sim);
        let p = s
            .open_partition(pid(), growing_config(), false)
            .await
            .expect("a full disk does not keep the partition from opening");
        assert_eq!(p.fault(), None);
        assert_eq!(read_all(&p, 0).await.len(), 10);
        let cut = sim.file_contents(&segment_path(0)).unwrap();
        assert_eq!(cut.len(), data_bytes, "cut at the end of the log");
        sim.set_capacity_bytes(None);
        p.append(batch("after", 2, 1), AckLevel::Durable)
            .await
            .unwrap();
        drop(p);
        drop(s);
        sim.crash();
        let s = shard(&sim);
        let p = s
            .open_partition(pid(), growing_config(), false)
            .await
            .unwrap();
        assert_eq!(p.fault(), None);
        let records = read_all(&p, 0).await;
        assert_eq!(records.len(), 12);
        assert_eq!(records[11].value, Bytes::from("value-after-1"));
    });
}

/// Bytes of batches at the start of the only segment (where the zero padding begins).
fn read_segment_data_bytes(sim: &SimStorage) -> usize {
    let bytes = Bytes::from(sim.file_contents(&segment_path(0)).unwrap());
    let mut pos = 0;
    while let Ok(view) = BatchView::parse(&bytes.slice(pos..)) {
        pos += view.bytes().len();
    }
    pos
}

fn align_4k(n: usize) -> usize {
    n.div_ceil(4096) * 4096
}

#[test]
fn what_recovery_reads_after_a_process_crash_is_made_durable_before_it_is_served() {
    run(|| async {
        for seed in 0..16 {
            let sim = SimStorage::new(SimConfig {
                seed,
                ..SimConfig::default()
            });
            let s = shard(&sim);
            let p = s.open_partition(pid(), small_config(), true).await.unwrap();
            fill(&p, 3, 2, 1).await;
            p.wait_idle_for_tests().await;
            // The process dies after the next round's write, before its fdatasync.
            sim.crash_at_op(sim.op_count() + 2);
            p.append(batch("unsynced", 2, 1), AckLevel::Written)
                .await
                .unwrap();
            p.wait_idle_for_tests().await;
            assert!(sim.has_crashed() && p.offsets().durable == 6);
            drop(p);
            drop(s);
            // The next process reads the unsynced batch back (the kernel kept it) and serves
            // it as durable; then the power fails.
            sim.restart_process();
            let s = shard(&sim);
            let p = s
                .open_partition(pid(), small_config(), false)
                .await
                .unwrap();
            let served = read_all(&p, 0).await;
            assert_eq!(served.len(), 8, "seed {seed}");
            drop(p);
            drop(s);
            sim.crash();
            let s = shard(&sim);
            let p = s
                .open_partition(pid(), small_config(), false)
                .await
                .unwrap();
            assert_eq!(p.fault(), None, "seed {seed}");
            assert_eq!(p.offsets().log_end, 8, "seed {seed}: served records lost");
            assert_eq!(read_all(&p, 0).await, served, "seed {seed}");
        }
    });
}

#[test]
fn segment_names_a_crashed_process_never_synced_are_made_durable_by_recovery() {
    run(|| async {
        let mut acked_runs = 0;
        for seed in 0..8 {
            for crash_after in 1..16 {
                let sim = SimStorage::new(SimConfig {
                    seed,
                    ..SimConfig::default()
                });
                // The process dies while creating the partition: maybe after the segment file
                // was created and zero-filled, before the directory was synced.
                sim.crash_at_op(sim.op_count() + crash_after);
                let s = shard(&sim);
                let _ = s.open_partition(pid(), small_config(), true).await;
                drop(s);
                sim.restart_process();
                // A full disk: the checkpoint at open (which would sync the directory too) is
                // not written, yet appends fit in the segment's zero-filled start.
                fill_disk(&sim);
                let s = shard(&sim);
                let Ok(p) = s.open_partition(pid(), small_config(), true).await else {
                    continue; // crashed before the segment existed: creating needs space
                };
                let Ok(a) = p.append(batch("acked", 2, 1), AckLevel::Durable).await else {
                    continue; // its zero-filled start was not written: no room
                };
                acked_runs += 1;
                drop(p);
                drop(s);
                sim.crash();
                sim.set_capacity_bytes(None);
                let s = shard(&sim);
                let p = s
                    .open_partition(pid(), small_config(), false)
                    .await
                    .unwrap_or_else(|e| panic!("seed {seed}, crash after {crash_after}: {e}"));
                let records = read_all(&p, a.base_offset).await;
                assert_eq!(records.len(), 2, "seed {seed}, crash after {crash_after}");
            }
        }
        assert!(acked_runs > 0, "no run reached an acknowledged append");
    });
}

#[test]
fn retired_segments_a_crash_brings_back_are_unchanged_and_retired_again() {
    run(|| async {
        let config = PartitionConfig {
            segment_age_ms_max: 1000,
            ..small_config()
        };
        let retained = PartitionConfig {
            retention_bytes_max: Some(3000),
            ..config.clone()
        };
        let mut came_back = 0;
        for crash_after in 1..16u64 {
            let sim = SimStorage::new(SimConfig {
                seed: crash_after,
                ..SimConfig::default()
            });
            let s = shard(&sim);
            let p = s.open_partition(pid(), config.clone(), true).await.unwrap();
            fill(&p, 50, 3, 1).await;
            s.close().await.unwrap();
            drop(p);
            let s = shard(&sim);
            let p = s
                .open_partition(pid(), retained.clone(), false)
                .await
                .unwrap();
            let all = read_all(&p, 0).await;
            // Retention drops the segments from memory first (readers see the new log start
            // at once), then unlinks them and syncs the directory; the power fails between.
            sim.crash_at_op(sim.op_count() + crash_after);
            let _ = p.enforce_retention(sim.now_ms()).await;
            let start_seen = p.offsets().log_start;
            assert!(start_seen > 0, "retention retired something");
            drop(p);
            drop(s);
            sim.crash();
            let s = shard(&sim);
            let p = s
                .open_partition(pid(), retained.clone(), false)
                .await
                .unwrap();
            assert_eq!(p.fault(), None);
            let start = p.offsets().log_start;
            if start < start_seen {
                came_back += 1;
            }
            // The log start may have moved back, but what it shows again is what was there.
            assert_eq!(read_all(&p, start).await, all[start as usize..]);
            p.enforce_retention(sim.now_ms()).await.unwrap();
            assert!(p.offsets().log_start >= start_seen, "retired again");
        }
        assert!(came_back > 0, "no crash brought a retired segment back");
    });
}
