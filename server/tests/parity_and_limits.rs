//! Parity between the in-process engine and the gRPC path, the memory bound
//! of a subscriber that never reads, health during drain, the interop
//! TestService switch, and cross-shard routing.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Log, TestServer, block_on, open_subscribe, produce_to};
use shardlog_engine::{
    AckLevel, AppendBatch, DmaStorage, Header, PartitionConfig, PartitionId, ReadLimits, Record,
    Shard,
};
use shardlog_wire::client::CallOptions;
use shardlog_wire::proto::grpc::health::v1::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
};
use shardlog_wire::proto::shardlog::v1 as pb;

/// The records both paths store: keys, headers, explicit timestamps.
fn parity_records() -> Vec<pb::Record> {
    (0..40u32)
        .map(|i| pb::Record {
            key: (i % 3 != 0).then(|| Bytes::from(format!("key-{i}"))),
            value: Bytes::from(vec![(i * 11) as u8; (i * 29 % 500) as usize]),
            timestamp_ms: 1_700_000_000_000 + i64::from(i) * 1000,
            headers: (0..i % 3)
                .map(|h| pb::Header {
                    key: format!("h{h}"),
                    value: Bytes::from(vec![h as u8, 0xff]),
                })
                .collect(),
        })
        .collect()
}

fn engine_record(record: &pb::Record) -> Record {
    Record {
        key: record.key.clone(),
        value: record.value.clone(),
        timestamp_ms: record.timestamp_ms,
        headers: record
            .headers
            .iter()
            .map(|h| Header {
                key: Bytes::from(h.key.clone()),
                value: h.value.clone(),
            })
            .collect(),
    }
}

/// Raw stored batches of `topic`/0 under `data_dir`, read with the engine.
fn stored_batches(data_dir: std::path::PathBuf) -> Vec<Bytes> {
    block_on(move || async move {
        let shard = Shard::new(data_dir, DmaStorage::new());
        let partition = shard
            .open_partition(
                PartitionId::new("parity", 0),
                PartitionConfig::default(),
                false,
            )
            .await
            .expect("open stored partition");
        let limits = ReadLimits {
            max_bytes: 64 << 20,
            max_records: usize::MAX,
        };
        let batches = partition
            .read_batches(0, limits)
            .await
            .expect("read batches")
            .batches;
        shard.close().await.expect("close");
        batches
    })
}

#[test]
fn in_process_and_grpc_appends_store_identical_bytes() {
    let records = parity_records();
    let mut server = TestServer::start(1);
    let addr = server.addr;
    let over_grpc = records.clone();
    block_on(move || async move {
        let log = Log::connect(addr).await;
        log.create_topic("parity", 1).await.expect("create");
        log.produce(produce_to("parity", 0, over_grpc[..25].to_vec()))
            .await
            .expect("produce");
        log.produce(produce_to("parity", 0, over_grpc[25..].to_vec()))
            .await
            .expect("produce");
    });
    assert_eq!(server.stop(), Some(0));
    let grpc_batches = stored_batches(server.data_dir().to_owned());

    let library_dir = tempfile::tempdir().expect("temp dir");
    let library_path = library_dir.path().to_owned();
    let in_process = records.clone();
    block_on(move || async move {
        let shard = Shard::new(library_path, DmaStorage::new());
        let partition = shard
            .open_partition(
                PartitionId::new("parity", 0),
                PartitionConfig::default(),
                true,
            )
            .await
            .expect("create partition");
        for chunk in [&in_process[..25], &in_process[25..]] {
            let batch = AppendBatch {
                records: chunk.iter().map(engine_record).collect(),
                producer: None,
            };
            partition
                .append(batch, AckLevel::Durable)
                .await
                .expect("append");
        }
        shard.close().await.expect("close");
    });
    let library_batches = stored_batches(library_dir.path().to_owned());

    assert_eq!(grpc_batches.len(), 2);
    assert_eq!(
        grpc_batches, library_batches,
        "both paths store byte-identical batches"
    );
}

fn rss_anon_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("RssAnon:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("RssAnon")
}

#[test]
fn subscriber_that_never_reads_does_not_grow_server_memory() {
    const BATCHES: u32 = 320;
    const VALUE_BYTES: usize = 200 << 10;
    let server = TestServer::start(1);
    let addr = server.addr;
    let pid = server.pid();
    let (before_kib, after_kib) = block_on(move || async move {
        let log = Log::connect(addr).await;
        let create = pb::CreateTopicRequest {
            topic: "firehose".into(),
            partition_count: 1,
            retention: Some(pb::RetentionPolicy {
                segment_bytes: 8 << 20,
                ..Default::default()
            }),
        };
        let _: pb::CreateTopicResponse = log.unary("CreateTopic", &create).await.expect("create");
        // Warm up allocator arenas and buffers before the baseline.
        let value = Bytes::from(vec![7u8; VALUE_BYTES]);
        let batch = || {
            produce_to(
                "firehose",
                0,
                vec![pb::Record {
                    value: value.clone(),
                    ..common::record(b"")
                }],
            )
        };
        for _ in 0..20 {
            log.produce(batch()).await.expect("produce");
        }
        let subscribe = pb::SubscribeRequest {
            topic: "firehose".into(),
            partition: 0,
            offset: 0,
            max_bytes: 0,
        };
        // A subscriber on its own connection that never reads its stream.
        let stalled = Log::connect(addr).await;
        let stream = open_subscribe(&stalled.channel, &subscribe)
            .await
            .expect("subscribe");
        glommio::timer::sleep(Duration::from_millis(300)).await;
        let before = rss_anon_kib(pid);
        for _ in 0..BATCHES {
            log.produce(batch()).await.expect("produce");
        }
        glommio::timer::sleep(Duration::from_millis(500)).await;
        let after = rss_anon_kib(pid);
        drop(stream);
        (before, after)
    });
    let produced_kib = u64::from(BATCHES) * (VALUE_BYTES as u64) / 1024;
    let growth_kib = after_kib.saturating_sub(before_kib);
    assert!(
        growth_kib < produced_kib / 3,
        "server anonymous memory grew {growth_kib} KiB while {produced_kib} KiB went to a stalled subscriber"
    );
}

#[test]
fn health_serves_then_turns_not_serving_when_the_drain_starts() {
    let mut server = TestServer::start(2);
    let addr = server.addr;
    let pid = server.pid();
    block_on(move || async move {
        let log = Log::connect(addr).await;
        for service in ["", "shardlog.v1.Log"] {
            let check = HealthCheckRequest {
                service: service.into(),
            };
            let response: HealthCheckResponse = log
                .channel
                .unary(
                    "/grpc.health.v1.Health/Check",
                    &check,
                    CallOptions::default(),
                )
                .await
                .expect("health check")
                .into_inner();
            assert_eq!(response.status, ServingStatus::Serving as i32);
        }
        let unknown = HealthCheckRequest {
            service: "nope".into(),
        };
        let result = log
            .channel
            .unary::<_, HealthCheckResponse>(
                "/grpc.health.v1.Health/Check",
                &unknown,
                CallOptions::default(),
            )
            .await;
        assert_eq!(
            result.expect_err("unknown service").code(),
            shardlog_wire::Code::NOT_FOUND
        );

        // A watcher sees SERVING, then NOT_SERVING as soon as the drain starts.
        let watch = HealthCheckRequest {
            service: "shardlog.v1.Log".into(),
        };
        let mut updates = log
            .channel
            .server_streaming::<_, HealthCheckResponse>(
                "/grpc.health.v1.Health/Watch",
                &watch,
                CallOptions::default(),
            )
            .await
            .expect("watch")
            .into_inner();
        let first = updates
            .message()
            .await
            .expect("watch update")
            .expect("open");
        assert_eq!(first.status, ServingStatus::Serving as i32);
        // SAFETY: signalling the server child process this test owns.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let next = updates
            .message()
            .await
            .expect("watch update")
            .expect("open");
        assert_eq!(next.status, ServingStatus::NotServing as i32);
    });
    server.wait_exit();
}

#[test]
fn grpc_testing_switch_serves_the_interop_service() {
    use shardlog_wire::proto::grpc::testing::Empty;
    let plain = TestServer::start(1);
    let with_testing = TestServer::start_with(1, &["--grpc-testing"]);
    let (plain_addr, testing_addr) = (plain.addr, with_testing.addr);
    block_on(move || async move {
        let path = "/grpc.testing.TestService/EmptyCall";
        let off = common::connect(plain_addr).await;
        let result = off
            .unary::<_, Empty>(path, &Empty {}, CallOptions::default())
            .await;
        assert_eq!(
            result.expect_err("not served").code(),
            shardlog_wire::Code::UNIMPLEMENTED
        );
        let on = common::connect(testing_addr).await;
        on.unary::<_, Empty>(path, &Empty {}, CallOptions::default())
            .await
            .expect("EmptyCall");
    });
}

#[test]
fn requests_cross_shards_and_replies_come_back() {
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let server = TestServer::start_with(2, &["--metrics-listen", &metrics_addr]);
    let addr = server.addr;
    block_on(move || async move {
        Log::connect(addr)
            .await
            .create_topic("x", 4)
            .await
            .expect("create");
        // SO_REUSEPORT spreads connections over both shards; every connection
        // writes to all four partitions (two per shard) and reads back.
        let connections = (0..16u32).map(|connection| async move {
            let log = Log::connect(addr).await;
            for partition in 0..4 {
                let value = format!("{connection}");
                log.produce(produce_to(
                    "x",
                    partition,
                    vec![common::record(value.as_bytes())],
                ))
                .await
                .expect("produce");
            }
            for partition in 0..4 {
                let records = log.fetch_all("x", partition, 0).await;
                assert!(
                    records
                        .iter()
                        .any(|r| r.value.as_ref() == connection.to_string().as_bytes())
                );
            }
        });
        futures_util::future::join_all(connections).await;
    });
    let text = common::http_get(&metrics_addr, "/metrics");
    for shard in 0..2 {
        let needle = format!("shardlog_cross_core_calls_total{{shard=\"{shard}\"}} ");
        let line = text
            .lines()
            .find(|line| line.starts_with(&needle))
            .unwrap_or_else(|| panic!("{needle} missing:\n{text}"));
        let calls: u64 = line[needle.len()..].trim().parse().expect("count");
        assert!(calls > 0, "shard {shard} sent no cross-core call:\n{text}");
    }
}

/// Writes a TOML config into the server's temp area and returns its path.
fn config_file(contents: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shardlog.toml");
    std::fs::write(&path, contents).expect("write config");
    let path = path.to_str().expect("utf8").to_owned();
    (dir, path)
}

/// Creates a one-partition topic with 64 KiB segments and 256 KiB of retention.
async fn create_short_lived_topic(log: &Log, topic: &str) {
    let create = pb::CreateTopicRequest {
        topic: topic.into(),
        partition_count: 1,
        retention: Some(pb::RetentionPolicy {
            retention_bytes: 256 << 10,
            retention_ms: 0,
            segment_bytes: 64 << 10,
        }),
    };
    let _: pb::CreateTopicResponse = log.unary("CreateTopic", &create).await.expect("create");
}

#[test]
fn retention_moves_log_start_and_old_offsets_are_out_of_range() {
    let (_dir, config) = config_file("[storage]\nretention_check_interval_ms = 100\n");
    let server = TestServer::start_with(1, &["--config", &config]);
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        create_short_lived_topic(&log, "short").await;
        let value = Bytes::from(vec![1u8; 8 << 10]);
        for _ in 0..200 {
            let record = pb::Record {
                value: value.clone(),
                ..common::record(b"")
            };
            log.produce(produce_to("short", 0, vec![record]))
                .await
                .expect("produce");
        }
        // Retention runs after every roll, in the background: wait until it has settled (the
        // same log start twice, 50 ms apart), so the fetches below see that log start.
        let mut log_start = 0;
        for _ in 0..100 {
            let now = log.describe("short").await.expect("describe").partitions[0].log_start_offset;
            if now > 0 && now == log_start {
                break;
            }
            log_start = now;
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
        assert!(log_start > 0, "retention deleted old segments");
        let description = log.describe("short").await.expect("describe");
        assert!(
            description.partitions[0].size_bytes < 1 << 20,
            "{description:?}"
        );
        let message = common::expect_code(
            log.fetch("short", 0, 0).await,
            shardlog_wire::Code::OUT_OF_RANGE,
        );
        assert!(
            message.contains("short/0") || message.contains("short"),
            "{message}"
        );
        let first = log
            .fetch("short", 0, log_start)
            .await
            .expect("fetch at log start");
        assert_eq!(first.records[0].offset, log_start);
        assert_eq!(first.log_start_offset, log_start);
    });
}

#[test]
fn overload_is_refused_unavailable_and_nothing_refused_is_stored() {
    let (_dir, config) = config_file("[limits]\ncross_core_inflight_max = 1\n");
    let server = TestServer::start_with(2, &["--config", &config]);
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        log.create_topic("busy", 4).await.expect("create");
        let attempts = (0..256u32).map(|i| {
            let log = log.clone();
            async move {
                let value = format!("{i}");
                let result = log
                    .produce(produce_to(
                        "busy",
                        i % 4,
                        vec![common::record(value.as_bytes())],
                    ))
                    .await;
                (i, result)
            }
        });
        let mut acknowledged = std::collections::BTreeSet::new();
        let mut refused = 0;
        for (i, result) in futures_util::future::join_all(attempts).await {
            match result {
                Ok(_) => {
                    acknowledged.insert(i.to_string().into_bytes());
                }
                Err(status) => {
                    assert_eq!(
                        status.code(),
                        shardlog_wire::Code::UNAVAILABLE,
                        "{status:?}"
                    );
                    assert!(
                        status.message().contains("nothing was written"),
                        "{status:?}"
                    );
                    refused += 1;
                }
            }
        }
        assert!(
            refused > 0,
            "a 1-deep cross-core bound refuses some of 256 concurrent calls"
        );
        let mut stored = std::collections::BTreeSet::new();
        for partition in 0..4 {
            for record in log.fetch_all("busy", partition, 0).await {
                stored.insert(record.value.to_vec());
            }
        }
        assert_eq!(
            stored, acknowledged,
            "exactly the acknowledged records are stored"
        );
    });
}

#[test]
fn expired_deadline_is_deadline_exceeded() {
    let server = TestServer::start(1);
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        log.create_topic("late", 1).await.expect("create");
        let options = CallOptions {
            timeout: Some(Duration::from_micros(1)),
            ..CallOptions::default()
        };
        let request = produce_to("late", 0, vec![common::record(b"x")]);
        let result = log
            .channel
            .unary::<_, pb::ProduceResponse>("/shardlog.v1.Log/Produce", &request, options)
            .await;
        assert_eq!(
            result.expect_err("expired").code(),
            shardlog_wire::Code::DEADLINE_EXCEEDED
        );
    });
}

#[test]
fn produce_beyond_the_in_flight_byte_budget_is_shed_not_buffered() {
    // 64 concurrent 200 KiB produces against a 1 MiB budget.
    burst_is_shed_not_buffered("produce_inflight_bytes_max = 1048576\n", 64, 200 << 10);
}

#[test]
fn produce_beyond_the_in_flight_request_bound_is_shed_not_buffered() {
    // 256 concurrent one-record produces against a bound of 4 requests: small records never
    // reach the byte budget, so the count is what sheds them.
    burst_is_shed_not_buffered("produce_inflight_requests_max = 4\n", 256, 16);
}

/// Fires `produces` concurrent one-record produces of `value_bytes` each at a server with
/// the given `[limits]` line: some must be refused UNAVAILABLE ("overloaded"), exactly the
/// acknowledged records must be stored, and the budget must come back afterwards.
fn burst_is_shed_not_buffered(limit: &str, produces: u32, value_bytes: usize) {
    let (_dir, config) = config_file(&format!(
        "[limits]\nmessage_bytes_max = 1048576\nrecord_bytes_max = 458752\nfetch_bytes_max = 458752\n{limit}"
    ));
    let server = TestServer::start_with(1, &["--config", &config]);
    let addr = server.addr;
    let limit = limit.to_owned();
    block_on(move || async move {
        let log = Log::connect(addr).await;
        log.create_topic("shed", 1).await.expect("create");
        let attempts = (0..produces).map(|i| {
            let log = log.clone();
            async move {
                let mut value = format!("{i}:").into_bytes();
                value.resize(value_bytes.max(value.len()), b'x');
                let result = log
                    .produce(produce_to("shed", 0, vec![common::record(&value)]))
                    .await;
                (value, result)
            }
        });
        let mut acknowledged = std::collections::BTreeSet::new();
        let mut shed = 0;
        for (value, result) in futures_util::future::join_all(attempts).await {
            match result {
                Ok(_) => {
                    acknowledged.insert(value);
                }
                Err(status) => {
                    assert_eq!(
                        status.code(),
                        shardlog_wire::Code::UNAVAILABLE,
                        "{status:?}"
                    );
                    assert!(status.message().contains("overloaded"), "{status:?}");
                    shed += 1;
                }
            }
        }
        assert!(
            shed > 0,
            "{produces} concurrent produces with {limit:?} shed some"
        );
        assert!(!acknowledged.is_empty());
        let stored: std::collections::BTreeSet<Vec<u8>> = log
            .fetch_all("shed", 0, 0)
            .await
            .into_iter()
            .map(|r| r.value.to_vec())
            .collect();
        assert_eq!(
            stored, acknowledged,
            "exactly the acknowledged records are stored"
        );
        // The budget comes back: a produce after the burst succeeds.
        log.produce(produce_to("shed", 0, vec![common::record(b"after")]))
            .await
            .expect("budget returned");
    });
}

#[test]
fn retired_segments_are_recycled_and_kept_records_survive_a_crash() {
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut server = TestServer::start_with(1, &["--metrics-listen", &metrics_addr]);
    let value = |i: u64| {
        let mut v = vec![(i % 251) as u8; 8 << 10];
        v[..8].copy_from_slice(&i.to_le_bytes());
        Bytes::from(v)
    };
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        create_short_lived_topic(&log, "reuse").await;
        for i in 0..200 {
            let record = pb::Record {
                value: value(i),
                ..common::record(b"")
            };
            log.produce(produce_to("reuse", 0, vec![record]))
                .await
                .expect("produce");
        }
    });
    // Retention runs after each roll, and the files it retires become later segments.
    let text = common::http_get(&metrics_addr, "/metrics");
    let recycled: u64 = text
        .lines()
        .find(|line| {
            line.starts_with("shardlog_partition_segments_recycled_total{")
                && line.contains("topic=\"reuse\"")
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no recycle counter:\n{text}"));
    assert!(recycled > 0, "{text}");
    // A crash, then recovery of a recycled active segment: every record kept by retention is
    // back, intact, and nothing after it.
    server.kill();
    server.restart_after_kill();
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        let partition = log.describe("reuse").await.expect("describe").partitions[0].clone();
        assert_eq!(partition.log_end_offset, 200);
        assert!(partition.log_start_offset > 0);
        let mut next = partition.log_start_offset;
        while next < 200 {
            let fetched = log.fetch("reuse", 0, next).await.expect("fetch");
            assert!(!fetched.records.is_empty());
            for record in fetched.records {
                assert_eq!(record.offset, next);
                assert_eq!(record.value, value(next));
                next += 1;
            }
        }
    });
}

/// A record with `count` headers of `value_bytes` each.
fn record_with_headers(count: usize, value_bytes: usize) -> pb::Record {
    pb::Record {
        headers: (0..count)
            .map(|i| pb::Header {
                key: format!("h{i}"),
                value: Bytes::from(vec![b'v'; value_bytes]),
            })
            .collect(),
        ..common::record(b"with headers")
    }
}

/// The batch format holds at most 1024 headers per record: one more is refused
/// INVALID_ARGUMENT (naming the record and the limit) with nothing of the batch
/// written, and a record at the limit is acknowledged and reads back, also
/// after a restart (nothing acknowledged is unreadable or cut by recovery).
#[test]
fn a_record_over_the_header_limit_is_refused_and_one_at_it_reads_back() {
    let mut server = TestServer::start(1);
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        log.create_topic("headers", 1).await.expect("create");
        let over = vec![record_with_headers(1, 1), record_with_headers(1025, 1)];
        let message = common::expect_code(
            log.produce(produce_to("headers", 0, over)).await,
            shardlog_wire::Code::INVALID_ARGUMENT,
        );
        assert!(
            message.contains("record 1") && message.contains("1025") && message.contains("1024"),
            "{message}"
        );
        log.produce(produce_to("headers", 0, vec![record_with_headers(1024, 1)]))
            .await
            .expect("a record at the limit");
        log.produce(produce_to("headers", 0, vec![common::record(b"after")]))
            .await
            .expect("produce after");
        let stored = log.fetch_all("headers", 0, 0).await;
        assert_eq!(stored.len(), 2, "only the two acknowledged records");
        assert_eq!(stored[0].headers.len(), 1024);
    });
    server.restart();
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        let stored = log.fetch_all("headers", 0, 0).await;
        assert_eq!(stored.len(), 2, "recovery kept every acknowledged record");
        assert_eq!(stored[0].headers.len(), 1024);
        assert_eq!(&stored[1].value[..], b"after");
    });
}

/// Fetch and Subscribe size their answers by what the records take in the response, headers
/// and framing included. Counting only keys and values, a read starting in a small batch
/// took all of the next, large one too (records made of headers look empty): an answer over
/// the 4 MiB message limit, refused RESOURCE_EXHAUSTED on every try, so those offsets could
/// never be read.
#[test]
fn records_made_of_headers_are_fetched_within_the_message_limit() {
    let server = TestServer::start(1);
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        log.create_topic("heavy", 1).await.expect("create");
        // 900 KiB of headers, then one batch of 4 x 950 KiB (3.7 MiB).
        let first = vec![record_with_headers(9, 100 << 10)];
        log.produce(produce_to("heavy", 0, first))
            .await
            .expect("small batch");
        let second = (0..4).map(|_| record_with_headers(10, 95 << 10)).collect();
        log.produce(produce_to("heavy", 0, second))
            .await
            .expect("large batch");

        let stored = log.fetch_all("heavy", 0, 0).await;
        let offsets: Vec<u64> = stored.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![0, 1, 2, 3, 4]);
        assert!(stored.iter().all(|r| r.headers.len() >= 9));

        let request = pb::SubscribeRequest {
            topic: "heavy".into(),
            partition: 0,
            offset: 0,
            max_bytes: 0,
        };
        let mut stream = open_subscribe(&log.channel, &request)
            .await
            .expect("subscribe")
            .into_inner();
        let mut followed = 0;
        while followed < 5 {
            let response = stream.message().await.expect("within the limit");
            let response = response.expect("the stream stays open");
            assert!(
                response.records.len() <= 2,
                "1 MiB per answer, plus one record"
            );
            followed += response.records.len();
        }
    });
}

/// Sum over shards of one per-shard metric family (the samples labelled
/// only by shard).
fn shard_metric_sum(metrics_addr: &str, family: &str) -> u64 {
    let text = common::http_get(metrics_addr, "/metrics");
    let prefix = format!("{family}{{shard=\"");
    text.lines()
        .filter(|line| line.starts_with(&prefix))
        .filter_map(|line| line.rsplit_once(' '))
        .map(|(_, value)| value.trim().parse::<u64>().expect("sample value"))
        .sum()
}

/// Polls (at most `POLLS_MAX` times, yielding between polls) until `family`
/// sums to `want` over the shards; returns the last sum seen.
async fn await_shard_metric(metrics_addr: &str, family: &str, want: u64) -> u64 {
    const POLLS_MAX: u32 = 500;
    let mut seen = shard_metric_sum(metrics_addr, family);
    for _ in 0..POLLS_MAX {
        if seen == want {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(10)).await;
        seen = shard_metric_sum(metrics_addr, family);
    }
    seen
}

#[test]
fn cancelled_long_polls_on_another_shard_do_not_pile_up_there() {
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let (_dir, config) = config_file("[limits]\ncross_core_inflight_max = 4\n");
    let server =
        TestServer::start_with(2, &["--config", &config, "--metrics-listen", &metrics_addr]);
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        // One partition per shard: whichever shard serves this connection,
        // exactly one of the two partitions is owned by the other one.
        log.create_topic("idle", 2).await.expect("create");
        let served = "shardlog_cross_core_served_running";
        // More cancelled calls than the origin's in-flight bound (4).
        for round in 0..12 {
            let polls: Vec<_> = (0..2u32)
                .map(|partition| {
                    let log = log.clone();
                    glommio::spawn_local(async move {
                        let request = pb::FetchRequest {
                            topic: "idle".to_owned(),
                            partition,
                            offset: 0,
                            max_wait_ms: 60_000,
                            ..Default::default()
                        };
                        // No deadline: only the RST_STREAM ends the wait.
                        let _ = log
                            .channel
                            .unary::<_, pb::FetchResponse>(
                                "/shardlog.v1.Log/Fetch",
                                &request,
                                CallOptions::default(),
                            )
                            .await;
                    })
                })
                .collect();
            let waiting = await_shard_metric(&metrics_addr, served, 1).await;
            assert_eq!(waiting, 1, "round {round}: the remote long poll runs");
            // Dropping the calls resets their streams.
            drop(polls);
            let left = await_shard_metric(&metrics_addr, served, 0).await;
            assert_eq!(
                left, 0,
                "round {round}: the cancelled poll ends on its owner"
            );
        }
        let inflight = await_shard_metric(&metrics_addr, "shardlog_cross_core_inflight", 0).await;
        assert_eq!(inflight, 0, "no cross-core slot stays taken");
        for partition in 0..2 {
            log.produce(produce_to("idle", partition, vec![common::record(b"v")]))
                .await
                .expect("a produce after the cancelled polls is served, not shed");
            assert_eq!(log.fetch_all("idle", partition, 0).await.len(), 1);
        }
    });
}

#[test]
fn describe_topic_makes_one_call_per_shard_and_never_reports_a_refusal_as_ok() {
    const PARTITIONS: u32 = 64;
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    // One call in flight per shard: a fan-out per partition cannot fit.
    let (_dir, config) = config_file("[limits]\ncross_core_inflight_max = 1\n");
    let server =
        TestServer::start_with(2, &["--config", &config, "--metrics-listen", &metrics_addr]);
    let addr = server.addr;
    let refused = "shardlog_cross_core_refused_total";
    let (description, ends) = block_on(move || async move {
        let log = Log::connect(addr).await;
        log.create_topic("wide", PARTITIONS).await.expect("create");
        // Partition p holds p % 3 records, so every partition's end is known.
        let mut ends = Vec::new();
        for partition in 0..PARTITIONS {
            let records = (0..partition % 3).map(|_| common::record(b"r")).collect();
            if partition % 3 > 0 {
                log.produce(produce_to("wide", partition, records))
                    .await
                    .expect("produce");
            }
            ends.push(u64::from(partition % 3));
        }
        let description = log.describe("wide").await.expect("describe");
        (description, ends)
    });
    let offsets: Vec<(u32, u64, u64, String)> = description
        .partitions
        .iter()
        .map(|p| {
            (
                p.partition,
                p.log_end_offset,
                p.durable_offset,
                p.fault.clone(),
            )
        })
        .collect();
    let expected: Vec<(u32, u64, u64, String)> = (0..PARTITIONS)
        .map(|p| (p, ends[p as usize], ends[p as usize], String::new()))
        .collect();
    assert_eq!(
        offsets, expected,
        "every partition described from its owner"
    );
    assert_eq!(
        shard_metric_sum(&metrics_addr, refused),
        0,
        "a describe alone sheds nothing"
    );
    block_on(move || async move {
        let log = Log::connect(addr).await;
        // Concurrent describes on one connection contend for the single
        // slot: each is either complete or UNAVAILABLE, never a partial OK.
        let describes = (0..8).map(|_| log.describe("wide"));
        for result in futures_util::future::join_all(describes).await {
            match result {
                Ok(description) => {
                    assert_eq!(description.partitions.len(), PARTITIONS as usize);
                    for partition in &description.partitions {
                        assert_eq!(partition.fault, "", "{partition:?}");
                        assert_eq!(
                            partition.log_end_offset,
                            u64::from(partition.partition % 3),
                            "{partition:?}"
                        );
                    }
                }
                Err(status) => assert_eq!(status.code(), shardlog_wire::Code::UNAVAILABLE),
            }
        }
    });
}
