//! End to end over real sockets with a real data dir: every Log RPC and the
//! error codes a client acts on, cross-shard routing, restarts and drain.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{
    Log, TestServer, block_on, expect_code, open_produce_stream, open_subscribe, produce_to, record,
};
use shardlog_wire::Code;
use shardlog_wire::client::CallOptions;
use shardlog_wire::proto::shardlog::v1 as pb;

#[test]
fn topic_admin_lifecycle_and_errors() {
    let server = TestServer::start(2);
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        let created = log
            .create_topic("orders.v1", 4)
            .await
            .expect("create")
            .topic
            .expect("description");
        assert_eq!(created.partition_count, 4);
        assert_eq!(created.partitions.len(), 4);
        let owners: std::collections::BTreeSet<u32> =
            created.partitions.iter().map(|p| p.owner_shard).collect();
        assert_eq!(owners.len(), 2, "4 partitions spread over both shards");

        expect_code(log.create_topic("orders.v1", 4).await, Code::ALREADY_EXISTS);
        for bad in ["..", ".", "a/b", "a\0b", "", "é", &"x".repeat(250)] {
            let message = expect_code(log.create_topic(bad, 1).await, Code::INVALID_ARGUMENT);
            assert!(!message.is_empty());
        }
        expect_code(log.create_topic("zero", 0).await, Code::INVALID_ARGUMENT);

        log.create_topic("other", 1).await.expect("create");
        let listed: pb::ListTopicsResponse = log
            .unary("ListTopics", &pb::ListTopicsRequest {})
            .await
            .expect("list");
        assert_eq!(
            listed.topics,
            vec!["orders.v1".to_owned(), "other".to_owned()]
        );

        let description = log.describe("orders.v1").await.expect("describe");
        assert!(
            description
                .partitions
                .iter()
                .all(|p| p.log_end_offset == 0 && p.fault.is_empty())
        );
        expect_code(log.describe("missing").await, Code::NOT_FOUND);

        let delete = pb::DeleteTopicRequest {
            topic: "orders.v1".into(),
        };
        let _: pb::DeleteTopicResponse = log.unary("DeleteTopic", &delete).await.expect("delete");
        expect_code(log.describe("orders.v1").await, Code::NOT_FOUND);
        expect_code(
            log.unary::<_, pb::DeleteTopicResponse>("DeleteTopic", &delete)
                .await,
            Code::NOT_FOUND,
        );
        // The name is free again.
        log.create_topic("orders.v1", 2).await.expect("re-create");
        assert_eq!(log.fetch_all("orders.v1", 0, 0).await.len(), 0);
    });
    // Nothing outside the data dir: the topic files live under it.
    assert!(server.data_dir().join("topics").join("orders.v1").is_dir());
}

/// A topic's own segment size is held to the bounds of the server's default (64 KiB to
/// 4 GiB; 0 = the default): one byte rolled a segment per batch and kept every sealed one's
/// file open until the process ran out of descriptors. Nothing is created for a refused one.
#[test]
fn create_topic_refuses_segment_sizes_out_of_bounds() {
    let server = TestServer::start(2);
    let addr = server.addr;
    let topics_dir = server.data_dir().join("topics");
    block_on(move || async move {
        let log = Log::connect(addr).await;
        let create = |topic: &str, segment_bytes: u64| pb::CreateTopicRequest {
            topic: topic.into(),
            partition_count: 2,
            retention: Some(pb::RetentionPolicy {
                retention_bytes: 1,
                retention_ms: 1,
                segment_bytes,
            }),
        };
        for (i, segment_bytes) in [1, (64 << 10) - 1, (4 << 30) + 1, u64::MAX]
            .into_iter()
            .enumerate()
        {
            let request = create(&format!("refused-{i}"), segment_bytes);
            let result = log
                .unary::<_, pb::CreateTopicResponse>("CreateTopic", &request)
                .await;
            let message = expect_code(result, Code::INVALID_ARGUMENT);
            assert!(
                message.contains("segment_bytes") && message.contains(&segment_bytes.to_string()),
                "{message}"
            );
        }
        for (topic, segment_bytes) in [("smallest", 64 << 10), ("largest", 4 << 30), ("default", 0)]
        {
            let created: pb::CreateTopicResponse = log
                .unary("CreateTopic", &create(topic, segment_bytes))
                .await
                .expect("within bounds");
            let retention = created.topic.expect("topic").retention.expect("retention");
            assert_eq!(retention.segment_bytes, segment_bytes);
        }
        let listed: pb::ListTopicsResponse = log
            .unary("ListTopics", &pb::ListTopicsRequest {})
            .await
            .expect("list");
        assert_eq!(listed.topics, vec!["default", "largest", "smallest"]);
    });
    let mut dirs: Vec<String> = std::fs::read_dir(topics_dir)
        .expect("topics dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    dirs.sort();
    assert_eq!(dirs, vec!["default", "largest", "smallest"]);
}

/// A DeleteTopic whose caller gives up half-way (here: its deadline expires while the delete
/// is under way) still runs to completion. Cut off after its catalog file was removed, it
/// left the topic served (and taking produces) with no catalog file, so the next startup
/// deleted acknowledged data. One shard, so the call always lands on the catalog shard.
#[test]
fn a_delete_topic_whose_caller_gives_up_still_completes() {
    const ATTEMPTS: i32 = 48;
    let server = TestServer::start(1);
    let addr = server.addr;
    let catalog_dir = server.data_dir().join("meta").join("topics");
    block_on(move || async move {
        let log = Log::connect(addr).await;
        let mut interrupted = 0;
        for attempt in 0..ATTEMPTS {
            let topic = format!("doomed-{attempt}");
            log.create_topic(&topic, 1).await.expect("create");
            log.produce(produce_to(&topic, 0, vec![record(b"x")]))
                .await
                .expect("produce");
            // Deadlines from 100 us to about 70 ms: some expire while the delete runs.
            let timeout_us = 100.0 * 1.15f64.powi(attempt);
            let options =
                CallOptions::default().with_timeout(Duration::from_micros(timeout_us as u64));
            let request = pb::DeleteTopicRequest {
                topic: topic.clone(),
            };
            let result = log
                .channel
                .unary::<_, pb::DeleteTopicResponse>(
                    "/shardlog.v1.Log/DeleteTopic",
                    &request,
                    options,
                )
                .await;
            let started = !catalog_dir.join(format!("{topic}.toml")).exists();
            if result.is_ok() || !started {
                continue;
            }
            interrupted += 1;
            // Begun when its caller gave up: it finishes on its own (ABORTED while it runs),
            // leaving nothing to delete and nothing to produce to.
            let mut again = None;
            for _ in 0..2_000 {
                match log
                    .unary::<_, pb::DeleteTopicResponse>("DeleteTopic", &request)
                    .await
                {
                    Err(status) if status.code() == Code::ABORTED => {
                        glommio::timer::sleep(Duration::from_millis(5)).await;
                    }
                    other => {
                        again = Some(other);
                        break;
                    }
                }
            }
            let again = again.expect("the interrupted delete finished");
            expect_code(again, Code::NOT_FOUND);
            expect_code(
                log.produce(produce_to(&topic, 0, vec![record(b"y")])).await,
                Code::NOT_FOUND,
            );
        }
        assert!(
            interrupted > 0,
            "no deadline expired while a delete was under way"
        );
    });
}

#[test]
fn produce_and_fetch_round_trip_byte_identical() {
    let server = TestServer::start(2);
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        log.create_topic("events", 3).await.expect("create");
        let records: Vec<pb::Record> = (0..50u32)
            .map(|i| pb::Record {
                key: (i % 2 == 0).then(|| format!("key-{i}").into_bytes().into()),
                value: vec![i as u8; (i * 37 % 300) as usize].into(),
                timestamp_ms: 1_700_000_000_000 + i64::from(i),
                headers: vec![pb::Header {
                    key: "trace".into(),
                    value: vec![0, 255, i as u8].into(),
                }],
            })
            .collect();
        let first = log
            .produce(produce_to("events", 1, records[..20].to_vec()))
            .await
            .expect("produce");
        assert_eq!(
            (first.partition, first.base_offset, first.record_count),
            (1, 0, 20)
        );
        let second = log
            .produce(produce_to("events", 1, records[20..].to_vec()))
            .await
            .expect("produce");
        assert_eq!((second.base_offset, second.record_count), (20, 30));

        let fetched = log.fetch_all("events", 1, 0).await;
        assert_eq!(fetched.len(), 50);
        for (offset, (got, sent)) in fetched.iter().zip(&records).enumerate() {
            assert_eq!(got.offset, offset as u64);
            assert_eq!(got.key, sent.key);
            assert_eq!(got.value, sent.value);
            assert_eq!(got.timestamp_ms, sent.timestamp_ms);
            assert_eq!(got.headers, sent.headers);
        }
        let middle = log
            .fetch("events", 1, 25)
            .await
            .expect("fetch from the middle");
        assert_eq!(middle.records[0].offset, 25);
        let description = log.describe("events").await.expect("describe");
        let partition = &description.partitions[1];
        assert_eq!(
            (partition.log_end_offset, partition.durable_offset),
            (50, 50)
        );
        assert!(partition.size_bytes > 0);
    });
}

#[test]
fn produce_errors_name_what_is_wrong() {
    let server = TestServer::start(1);
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        log.create_topic("t", 2).await.expect("create");
        expect_code(
            log.produce(produce_to("missing", 0, vec![record(b"x")]))
                .await,
            Code::NOT_FOUND,
        );
        let message = expect_code(
            log.produce(produce_to("t", 0, vec![])).await,
            Code::INVALID_ARGUMENT,
        );
        assert!(message.contains("empty"), "{message}");
        let message = expect_code(
            log.produce(produce_to("t", 7, vec![record(b"x")])).await,
            Code::NOT_FOUND,
        );
        assert!(message.contains("partition 7"), "{message}");
        let huge = record(&vec![0u8; (1 << 20) + 1]);
        expect_code(
            log.produce(produce_to("t", 0, vec![huge])).await,
            Code::RESOURCE_EXHAUSTED,
        );
        expect_code(log.fetch("t", 9, 0).await, Code::NOT_FOUND);
        expect_code(log.fetch("missing", 0, 0).await, Code::NOT_FOUND);
        let message = expect_code(log.fetch("t", 0, 5).await, Code::OUT_OF_RANGE);
        assert!(message.contains("t/0"), "{message}");
        let bad_ack = pb::ProduceRequest {
            ack: 9,
            ..produce_to("t", 0, vec![record(b"x")])
        };
        expect_code(log.produce(bad_ack).await, Code::INVALID_ARGUMENT);
        // Nothing above was stored.
        assert_eq!(
            log.describe("t").await.expect("describe").partitions[0].log_end_offset,
            0
        );
    });
}

#[test]
fn partition_choice_by_key_hash_and_round_robin() {
    let server = TestServer::start(2);
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        log.create_topic("k", 4).await.expect("create");
        let keyed = |key: &str| pb::ProduceRequest {
            topic: "k".into(),
            partition: None,
            records: vec![pb::Record {
                key: Some(key.as_bytes().to_vec().into()),
                ..record(b"v")
            }],
            ..Default::default()
        };
        let a = log.produce(keyed("user-1")).await.expect("produce");
        let b = log.produce(keyed("user-1")).await.expect("produce");
        assert_eq!(a.partition, b.partition, "same key, same partition");
        assert_eq!(b.base_offset, a.base_offset + 1);

        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..8 {
            let unkeyed = pb::ProduceRequest {
                topic: "k".into(),
                records: vec![record(b"v")],
                ..Default::default()
            };
            seen.insert(log.produce(unkeyed).await.expect("produce").partition);
        }
        assert_eq!(seen.len(), 4, "round robin visits every partition");
    });
}

#[test]
fn idempotent_producer_retry_returns_original_offsets() {
    let server = TestServer::start(1);
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        log.create_topic("idem", 1).await.expect("create");
        let batch = |sequence: u64, n: usize| pb::ProduceRequest {
            producer_id: 42,
            sequence: Some(sequence),
            ..produce_to("idem", 0, (0..n).map(|i| record(&[i as u8])).collect())
        };
        let first = log.produce(batch(0, 3)).await.expect("produce");
        let retry = log.produce(batch(0, 3)).await.expect("retry");
        assert_eq!(
            (retry.base_offset, retry.record_count),
            (first.base_offset, first.record_count)
        );
        assert!(retry.duplicate);
        let next = log.produce(batch(3, 2)).await.expect("next");
        assert_eq!(next.base_offset, 3);
        expect_code(log.produce(batch(9, 1)).await, Code::FAILED_PRECONDITION);
        let no_sequence = pb::ProduceRequest {
            sequence: None,
            ..batch(0, 1)
        };
        expect_code(log.produce(no_sequence).await, Code::INVALID_ARGUMENT);
        assert_eq!(
            log.fetch_all("idem", 0, 0).await.len(),
            5,
            "the retry stored nothing"
        );
    });
}

#[test]
fn produce_stream_pipelines_in_order_across_connections_and_shards() {
    const CONNECTIONS: usize = 16;
    const REQUESTS_PER_CONNECTION: u64 = 2_000;
    let server = TestServer::start_with(2, &["--metrics-listen", "127.0.0.1:0"]);
    let addr = server.addr;
    let totals = block_on(move || async move {
        let admin = Log::connect(addr).await;
        admin.create_topic("stream", 4).await.expect("create");
        let streams = (0..CONNECTIONS).map(|connection| async move {
            let log = Log::connect(addr).await;
            let partition = (connection % 4) as u32;
            let (mut sink, responses) = open_produce_stream(&log.channel)
                .await
                .expect("open stream");
            let sender = async move {
                for i in 0..REQUESTS_PER_CONNECTION {
                    let value = format!("{connection}:{i}");
                    sink.send(&produce_to(
                        "stream",
                        partition,
                        vec![record(value.as_bytes())],
                    ))
                    .await
                    .expect("send");
                }
                sink.finish().expect("half-close");
            };
            let receiver = async move {
                let mut responses = responses
                    .response()
                    .await
                    .expect("response headers")
                    .into_inner();
                let mut last = None;
                let mut count = 0u64;
                while let Some(response) = responses.message().await.expect("response") {
                    assert_eq!(response.partition, partition);
                    if let Some(last) = last {
                        assert!(
                            response.base_offset > last,
                            "offsets increase in request order"
                        );
                    }
                    last = Some(response.base_offset);
                    count += 1;
                }
                count
            };
            let ((), count) = futures_lite::future::zip(sender, receiver).await;
            (partition, count)
        });
        let mut per_partition = BTreeMap::new();
        for (partition, count) in futures_util::future::join_all(streams).await {
            assert_eq!(count, REQUESTS_PER_CONNECTION, "one response per request");
            *per_partition.entry(partition).or_insert(0u64) += count;
        }
        let mut stored = BTreeMap::new();
        for partition in 0..4 {
            let records = admin.fetch_all("stream", partition, 0).await;
            // Per connection, values arrive in the order sent.
            let mut next_index: BTreeMap<String, u64> = BTreeMap::new();
            for record in &records {
                let text = String::from_utf8(record.value.to_vec()).expect("utf8");
                let (connection, index) = text.split_once(':').expect("value format");
                let expected = next_index.entry(connection.to_owned()).or_insert(0);
                assert_eq!(index.parse::<u64>().expect("index"), *expected);
                *expected += 1;
            }
            stored.insert(partition, records.len() as u64);
        }
        (per_partition, stored)
    });
    assert_eq!(
        totals.0, totals.1,
        "everything acknowledged is stored exactly once"
    );
}

#[test]
fn append_stream_returns_a_summary() {
    let server = TestServer::start(2);
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        log.create_topic("ingest", 2).await.expect("create");
        let (mut sink, summary) = log
            .channel
            .client_streaming::<pb::ProduceRequest, pb::AppendSummary>(
                "/shardlog.v1.Log/Append",
                CallOptions::default(),
            )
            .await
            .expect("open");
        for i in 0..100u32 {
            // Envelope of an ingest pipeline: source id as key, event type
            // and ingest timestamp as headers, payload as value.
            let envelope = pb::Record {
                key: Some(format!("source-{}", i % 3).into_bytes().into()),
                value: format!("payload-{i}").into_bytes().into(),
                timestamp_ms: 1_700_000_000_000,
                headers: vec![pb::Header {
                    key: "event-type".into(),
                    value: b"click".to_vec().into(),
                }],
            };
            sink.send(&produce_to("ingest", i % 2, vec![envelope]))
                .await
                .expect("send");
        }
        sink.finish().expect("finish");
        let summary = summary.response().await.expect("summary").into_inner();
        assert_eq!((summary.request_count, summary.record_count), (100, 100));
        assert_eq!(summary.partitions.len(), 2);
        for partition in &summary.partitions {
            assert_eq!(
                (
                    partition.first_offset,
                    partition.last_offset,
                    partition.record_count
                ),
                (0, 49, 50)
            );
        }
    });
}

/// Sends `requests` on one ProduceStream, half-closes, and collects every
/// response until the stream ends; returns them with the final status (None: OK).
async fn run_produce_stream(
    log: &Log,
    requests: &[pb::ProduceRequest],
) -> (Vec<pb::ProduceResponse>, Option<shardlog_wire::Status>) {
    let (mut sink, responses) = open_produce_stream(&log.channel)
        .await
        .expect("open stream");
    for request in requests {
        sink.send(request).await.expect("send");
    }
    sink.finish().expect("half-close");
    let mut stream = match responses.response().await {
        Ok(response) => response.into_inner(),
        Err(status) => return (Vec::new(), Some(status)),
    };
    let mut received = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(response)) => received.push(response),
            Ok(None) => return (received, None),
            Err(status) => return (received, Some(status)),
        }
    }
}

fn values(records: &[pb::FetchedRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect()
}

/// A ProduceStream whose request is refused (unknown topic) after good ones: every good
/// request's response arrives, in order, before the status, which names what was written;
/// reading stopped at the refusal, so the requests after it were never written.
#[test]
fn produce_stream_delivers_every_started_response_before_a_refusal() {
    let server = TestServer::start(2);
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        log.create_topic("ordered", 1).await.expect("create");
        let good = |value: &str| produce_to("ordered", 0, vec![record(value.as_bytes())]);
        let mut requests: Vec<_> = (0..5).map(|i| good(&format!("g{i}"))).collect();
        requests.push(produce_to("missing", 0, vec![record(b"nowhere")]));
        requests.extend([good("late0"), good("late1")]);
        let (responses, status) = run_produce_stream(&log, &requests).await;
        let offsets: Vec<u64> = responses.iter().map(|r| r.base_offset).collect();
        assert_eq!(
            offsets,
            vec![0, 1, 2, 3, 4],
            "every good response, in order"
        );
        let status = status.expect("the stream ends with the refusal");
        assert_eq!(status.code(), Code::NOT_FOUND, "{status:?}");
        let message = status.message();
        assert!(
            message.contains("request 5")
                && message.contains("5 requests (5 records): ordered/0 offsets 0-4"),
            "{message}"
        );
        let stored = log.fetch_all("ordered", 0, 0).await;
        assert_eq!(values(&stored), vec!["g0", "g1", "g2", "g3", "g4"]);
    });
}

/// A produce that fails on the partition's owner (a sequence gap) in the middle of a
/// ProduceStream: the responses before it arrive in order, the stream ends with its
/// FAILED_PRECONDITION, and the message says which later requests, already started, were
/// written anyway: the read-back holds exactly those records.
#[test]
fn produce_stream_failing_on_the_owner_reports_what_was_written() {
    let server = TestServer::start(2);
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        log.create_topic("gapped", 1).await.expect("create");
        let idempotent = |sequence: u64, value: &str| pb::ProduceRequest {
            producer_id: 9,
            sequence: Some(sequence),
            ..produce_to("gapped", 0, vec![record(value.as_bytes())])
        };
        let requests = [
            idempotent(0, "a0"),
            idempotent(1, "a1"),
            idempotent(2, "a2"),
            idempotent(10, "gap"),
            idempotent(3, "a3"),
            idempotent(4, "a4"),
        ];
        let (responses, status) = run_produce_stream(&log, &requests).await;
        let offsets: Vec<u64> = responses.iter().map(|r| r.base_offset).collect();
        assert_eq!(offsets, vec![0, 1, 2]);
        let status = status.expect("the stream ends with the gap");
        assert_eq!(status.code(), Code::FAILED_PRECONDITION, "{status:?}");
        let message = status.message();
        assert!(message.contains("request 3"), "{message}");
        let written_after = match message.split_once("written too: ") {
            Some((_, rest)) => rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<usize>().ok())
                .expect("a request count"),
            None => 0,
        };
        let stored = values(&log.fetch_all("gapped", 0, 0).await);
        let expected = ["a0", "a1", "a2", "a3", "a4"];
        assert_eq!(stored, expected[..3 + written_after], "{message}");
    });
}

/// An Append whose request is refused after good ones ends with the refusal's status,
/// and its message names the records written before it (an Append has no other answer).
#[test]
fn append_refused_midway_names_what_it_wrote() {
    let server = TestServer::start(2);
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        log.create_topic("ingest", 1).await.expect("create");
        let (mut sink, summary) = log
            .channel
            .client_streaming::<pb::ProduceRequest, pb::AppendSummary>(
                "/shardlog.v1.Log/Append",
                CallOptions::default(),
            )
            .await
            .expect("open");
        for i in 0..3 {
            let value = format!("e{i}");
            sink.send(&produce_to("ingest", 0, vec![record(value.as_bytes())]))
                .await
                .expect("send");
        }
        sink.send(&produce_to("ingest", 7, vec![record(b"no such partition")]))
            .await
            .expect("send");
        sink.finish().expect("finish");
        let message = expect_code(summary.response().await, Code::NOT_FOUND);
        assert!(
            message.contains("request 3")
                && message.contains("3 requests (3 records): ingest/0 offsets 0-2"),
            "{message}"
        );
        let stored = log.fetch_all("ingest", 0, 0).await;
        assert_eq!(values(&stored), vec!["e0", "e1", "e2"]);
    });
}

#[test]
fn long_poll_fetch_and_subscribe_follow_new_records() {
    let server = TestServer::start(2);
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        log.create_topic("tail", 2).await.expect("create");
        let waiting = pb::FetchRequest {
            topic: "tail".into(),
            partition: 1,
            offset: 0,
            max_wait_ms: 10_000,
            ..Default::default()
        };
        let poller = log.clone();
        let poll = glommio::spawn_local(async move {
            poller
                .unary::<_, pb::FetchResponse>("Fetch", &waiting)
                .await
        })
        .detach();

        let subscribe = pb::SubscribeRequest {
            topic: "tail".into(),
            partition: 1,
            offset: 0,
            max_bytes: 0,
        };
        let mut stream = open_subscribe(&log.channel, &subscribe)
            .await
            .expect("subscribe")
            .into_inner();
        glommio::timer::sleep(Duration::from_millis(100)).await;
        log.produce(produce_to("tail", 1, vec![record(b"first")]))
            .await
            .expect("produce");

        let polled = poll.await.expect("task").expect("long poll");
        assert_eq!(polled.records.len(), 1);
        assert_eq!(&polled.records[0].value[..], b"first");

        let mut seen = Vec::new();
        while seen.is_empty() {
            let message = stream.message().await.expect("stream").expect("open");
            seen.extend(message.records.into_iter().map(|r| r.value));
        }
        for i in 0..20 {
            log.produce(produce_to(
                "tail",
                1,
                vec![record(format!("r{i}").as_bytes())],
            ))
            .await
            .expect("produce");
        }
        while seen.len() < 21 {
            let message = stream.message().await.expect("stream").expect("open");
            seen.extend(message.records.into_iter().map(|r| r.value));
        }
        assert_eq!(&seen[0][..], b"first");
        assert_eq!(&seen[20][..], b"r19");

        // Long poll with nothing arriving returns empty when the wait ends.
        let empty = pb::FetchRequest {
            topic: "tail".into(),
            partition: 0,
            offset: 0,
            max_wait_ms: 50,
            ..Default::default()
        };
        let response: pb::FetchResponse = log.unary("Fetch", &empty).await.expect("fetch");
        assert!(response.records.is_empty());
    });
}

/// Topic and group names of the longest valid length (249 characters) work end to end and
/// survive a restart. Their metadata files were written through `<name>.toml.tmp`, 258
/// bytes: over the file system's 255, so 247-249-character names failed with INTERNAL.
#[test]
fn the_longest_topic_and_group_names_work_and_survive_restart() {
    let mut server = TestServer::start(2);
    let addr = server.addr;
    let long_topic = "t".repeat(249);
    let long_group = "g".repeat(249);
    let commit = pb::CommitOffsetRequest {
        group: long_group.clone(),
        topic: long_topic.clone(),
        partition: 1,
        offset: 42,
        metadata: "m".into(),
    };
    let get = pb::GetCommittedOffsetRequest {
        group: long_group,
        topic: long_topic.clone(),
        partition: 1,
    };
    {
        let (topic, commit, get) = (long_topic.clone(), commit.clone(), get.clone());
        block_on(move || async move {
            let log = Log::connect(addr).await;
            log.create_topic(&topic, 2).await.expect("create");
            log.produce(produce_to(&topic, 1, vec![record(b"long")]))
                .await
                .expect("produce");
            let _: pb::CommitOffsetResponse =
                log.unary("CommitOffset", &commit).await.expect("commit");
            let got: pb::GetCommittedOffsetResponse =
                log.unary("GetCommittedOffset", &get).await.expect("get");
            assert_eq!(got.offset, Some(42));
        });
    }
    server.restart();
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        assert_eq!(log.fetch_all(&long_topic, 1, 0).await.len(), 1);
        let got: pb::GetCommittedOffsetResponse =
            log.unary("GetCommittedOffset", &get).await.expect("get");
        assert_eq!((got.offset, got.metadata.as_str()), (Some(42), "m"));
    });
}

#[test]
fn consumer_group_offsets_survive_restart() {
    let mut server = TestServer::start(2);
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        log.create_topic("g", 3).await.expect("create");
        for partition in 0..3 {
            let commit = pb::CommitOffsetRequest {
                group: "billing".into(),
                topic: "g".into(),
                partition,
                offset: 100 + u64::from(partition),
                metadata: format!("m{partition}"),
            };
            let _: pb::CommitOffsetResponse =
                log.unary("CommitOffset", &commit).await.expect("commit");
        }
        let bad_group = pb::CommitOffsetRequest {
            group: "../x".into(),
            topic: "g".into(),
            ..Default::default()
        };
        expect_code(
            log.unary::<_, pb::CommitOffsetResponse>("CommitOffset", &bad_group)
                .await,
            Code::INVALID_ARGUMENT,
        );
        let unknown_topic = pb::CommitOffsetRequest {
            group: "billing".into(),
            topic: "nope".into(),
            ..Default::default()
        };
        expect_code(
            log.unary::<_, pb::CommitOffsetResponse>("CommitOffset", &unknown_topic)
                .await,
            Code::NOT_FOUND,
        );
    });
    server.restart();
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        for partition in 0..3 {
            let get = pb::GetCommittedOffsetRequest {
                group: "billing".into(),
                topic: "g".into(),
                partition,
            };
            let committed: pb::GetCommittedOffsetResponse =
                log.unary("GetCommittedOffset", &get).await.expect("get");
            assert_eq!(committed.offset, Some(100 + u64::from(partition)));
            assert_eq!(committed.metadata, format!("m{partition}"));
        }
        let other = pb::GetCommittedOffsetRequest {
            group: "new".into(),
            topic: "g".into(),
            partition: 0,
        };
        let committed: pb::GetCommittedOffsetResponse =
            log.unary("GetCommittedOffset", &other).await.expect("get");
        assert_eq!(committed.offset, None);
    });
}

/// Produces `batches` durable batches of 10 records to each partition and
/// returns the acknowledged (partition, offset, value) triples.
async fn produce_acknowledged(
    log: &Log,
    topic: &str,
    partitions: u32,
    batches: u32,
) -> Vec<(u32, u64, Vec<u8>)> {
    let mut acknowledged = Vec::new();
    for batch in 0..batches {
        for partition in 0..partitions {
            let values: Vec<Vec<u8>> = (0..10)
                .map(|i| format!("{partition}-{batch}-{i}").into_bytes())
                .collect();
            let records = values.iter().map(|v| record(v)).collect();
            let response = log
                .produce(produce_to(topic, partition, records))
                .await
                .expect("produce");
            for (i, value) in values.into_iter().enumerate() {
                acknowledged.push((partition, response.base_offset + i as u64, value));
            }
        }
    }
    acknowledged
}

async fn assert_all_present(
    log: &Log,
    topic: &str,
    partitions: u32,
    acknowledged: &[(u32, u64, Vec<u8>)],
) {
    let mut stored = BTreeMap::new();
    for partition in 0..partitions {
        for record in log.fetch_all(topic, partition, 0).await {
            stored.insert((partition, record.offset), record.value.to_vec());
        }
    }
    for (partition, offset, value) in acknowledged {
        assert_eq!(
            stored.get(&(*partition, *offset)),
            Some(value),
            "acknowledged {partition}/{offset}"
        );
    }
}

#[test]
fn restart_keeps_every_acknowledged_record_after_sigterm_and_sigkill() {
    let mut server = TestServer::start(2);
    let addr = server.addr;
    let acknowledged = block_on(move || async move {
        let log = Log::connect(addr).await;
        log.create_topic("durable", 4).await.expect("create");
        produce_acknowledged(&log, "durable", 4, 5).await
    });
    server.restart();
    let addr = server.addr;
    let more = block_on(move || async move {
        let log = Log::connect(addr).await;
        assert_all_present(&log, "durable", 4, &acknowledged).await;
        let mut all = acknowledged;
        all.extend(produce_acknowledged(&log, "durable", 4, 3).await);
        all
    });
    // No clean shutdown this time: only fdatasync'd data can be there.
    server.kill();
    server.restart_after_kill();
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        assert_all_present(&log, "durable", 4, &more).await;
        let description = log.describe("durable").await.expect("describe");
        assert!(
            description
                .partitions
                .iter()
                .all(|p| p.log_end_offset == 80)
        );
    });
}

#[test]
fn sigterm_drain_loses_no_acknowledged_write() {
    let mut server = TestServer::start(2);
    let addr = server.addr;
    block_on(move || async move {
        Log::connect(addr)
            .await
            .create_topic("drain", 2)
            .await
            .expect("create");
    });
    // Producers run while SIGTERM arrives; whatever they got acknowledged
    // must be there after the restart.
    let producers = std::thread::spawn(move || {
        block_on(move || async move {
            let log = Log::connect(addr).await;
            let mut acknowledged = Vec::new();
            for i in 0..100_000u32 {
                let value = format!("v{i}").into_bytes();
                match log
                    .produce(produce_to("drain", i % 2, vec![record(&value)]))
                    .await
                {
                    Ok(response) => acknowledged.push((i % 2, response.base_offset, value)),
                    Err(_) => break,
                }
            }
            acknowledged
        })
    });
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(server.stop(), Some(0), "drain exits 0");
    let acknowledged = producers.join().expect("producer thread");
    assert!(!acknowledged.is_empty());
    server.restart_after_kill();
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        assert_all_present(&log, "drain", 2, &acknowledged).await;
    });
}

#[test]
fn metrics_endpoint_reports_calls_and_partitions() {
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let server = TestServer::start_with(2, &["--metrics-listen", &metrics_addr]);
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        log.create_topic("m", 2).await.expect("create");
        log.produce(produce_to("m", 1, vec![record(b"x")]))
            .await
            .expect("produce");
        let _ = log.fetch("missing", 0, 0).await;
        // Counted on the owning shard, whichever shard the connection is on.
        assert_eq!(log.fetch("m", 1, 0).await.expect("fetch").records.len(), 1);
    });
    let text = common::http_get(&metrics_addr, "/metrics");
    for needle in [
        "# TYPE grpc_requests_total counter",
        "method=\"Produce\",status=\"OK\"",
        "method=\"Fetch\",status=\"NOT_FOUND\"",
        "grpc_request_duration_seconds_bucket",
        "shardlog_partition_log_end_offset{shard=",
        "topic=\"m\",partition=\"1\"} 1",
        "shardlog_partition_fsync_latency_us",
        "# TYPE shardlog_partition_segments_recycled_total counter",
        "shardlog_partition_segment_rolls_total{shard=",
        "shardlog_shard_busy_seconds_total{shard=\"1\"}",
        "shardlog_connections_active{shard=",
        "shardlog_connections_refused_total{shard=\"0\",cap=\"source_ip\"} 0",
        "shardlog_connections_cut_total{shard=",
        "# TYPE shardlog_sync_round_fdatasync_seconds histogram",
        "shardlog_sync_round_write_seconds_bucket{shard=\"1\",le=\"0.001\"}",
        "shardlog_sync_round_wait_seconds_bucket{shard=\"1\",le=\"+Inf\"} 1",
        "shardlog_sync_round_fdatasync_seconds_count{shard=\"1\"} 1",
    ] {
        assert!(text.contains(needle), "metrics lack {needle:?}:\n{text}");
    }
    let fetched = text
        .lines()
        .find(|line| {
            line.starts_with("shardlog_partition_fetched_records_total{")
                && line.contains("topic=\"m\",partition=\"1\"}")
        })
        .unwrap_or_else(|| panic!("no fetch counter for m/1:\n{text}"));
    assert!(fetched.ends_with("} 1"), "{fetched}");
    // A counter: a second scrape never reads less than the first.
    let busy_seconds = |text: &str| -> f64 {
        let line = text
            .lines()
            .find(|line| line.starts_with("shardlog_shard_busy_seconds_total{shard=\"0\"}"))
            .unwrap_or_else(|| panic!("no busy counter:\n{text}"));
        line.rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a number")
    };
    let first = busy_seconds(&text);
    let second = busy_seconds(&common::http_get(&metrics_addr, "/metrics"));
    assert!(
        first > 0.0 && second >= first,
        "busy went {first} -> {second}"
    );
    assert!(common::http_get(&metrics_addr, "/nope").is_empty());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[test]
fn a_partition_whose_files_vanished_is_reported_not_recreated_empty() {
    let mut server = TestServer::start(1);
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        log.create_topic("gone", 2).await.expect("create");
        log.produce(produce_to("gone", 1, vec![record(b"kept")]))
            .await
            .expect("produce");
    });
    assert_eq!(server.stop(), Some(0));
    std::fs::remove_dir_all(server.data_dir().join("topics/gone/0")).expect("remove partition 0");
    server.restart_after_kill();
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        let message = expect_code(
            log.produce(produce_to("gone", 0, vec![record(b"x")])).await,
            Code::INTERNAL,
        );
        assert!(
            message.contains("gone/0") && message.contains("failed to open"),
            "{message}"
        );
        assert_eq!(
            log.fetch_all("gone", 1, 0).await.len(),
            1,
            "the other partition serves"
        );
    });
    assert!(
        !server.data_dir().join("topics/gone/0").exists(),
        "nothing recreated"
    );
}
