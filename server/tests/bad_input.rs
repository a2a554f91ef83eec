//! The bad-input matrix against the running server: every case gets its
//! exact gRPC status, and afterwards the stored data is unchanged and no
//! file exists outside the data dir.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{Log, TestServer, block_on, expect_code, open_produce_stream, produce_to, record};
use shardlog_wire::client::CallOptions;
use shardlog_wire::proto::shardlog::v1 as pb;
use shardlog_wire::{Code, Status};

/// A message with the field numbers of `ProduceRequest` but the wrong wire
/// types or contents, to send what no generated client would.
#[derive(Clone, PartialEq, prost::Message)]
struct RawProduce {
    #[prost(bytes = "vec", tag = "1")]
    topic: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    partition_as_bytes: Vec<u8>,
    #[prost(bytes = "vec", repeated, tag = "3")]
    records: Vec<Vec<u8>>,
}

async fn snapshot(log: &Log) -> Vec<(u32, u64, Vec<u8>)> {
    let mut all = Vec::new();
    for partition in 0..2 {
        for r in log.fetch_all("keep", partition, 0).await {
            all.push((partition, r.offset, r.value.to_vec()));
        }
    }
    all
}

async fn raw_produce(
    log: &Log,
    raw: &RawProduce,
) -> Result<pb::ProduceResponse, shardlog_wire::Status> {
    log.channel
        .unary::<_, pb::ProduceResponse>("/shardlog.v1.Log/Produce", raw, CallOptions::default())
        .await
        .map(|response| response.into_inner())
}

#[test]
fn every_bad_input_gets_its_status_and_changes_nothing() {
    let server = TestServer::start(2);
    let addr = server.addr;
    let data_parent = server.data_dir().parent().expect("temp parent").to_owned();
    block_on(move || async move {
        let log = Log::connect(addr).await;
        log.create_topic("keep", 2).await.expect("create");
        for partition in 0..2 {
            let records = (0..5)
                .map(|i| record(format!("{partition}-{i}").as_bytes()))
                .collect();
            log.produce(produce_to("keep", partition, records))
                .await
                .expect("seed");
        }
        let before = snapshot(&log).await;

        for name in [
            "..",
            ".",
            "a/b",
            "a\0b",
            "",
            "é",
            &"x".repeat(250),
            "../../etc/passwd",
        ] {
            expect_code(log.create_topic(name, 1).await, Code::INVALID_ARGUMENT);
            expect_code(
                log.produce(produce_to(name, 0, vec![record(b"x")])).await,
                Code::INVALID_ARGUMENT,
            );
            expect_code(log.fetch(name, 0, 0).await, Code::INVALID_ARGUMENT);
        }
        expect_code(
            log.produce(produce_to("keep", 2, vec![record(b"x")])).await,
            Code::NOT_FOUND,
        );
        expect_code(
            log.produce(produce_to("keep", u32::MAX, vec![record(b"x")]))
                .await,
            Code::NOT_FOUND,
        );
        expect_code(
            log.produce(produce_to("keep", 0, Vec::new())).await,
            Code::INVALID_ARGUMENT,
        );
        expect_code(
            log.produce(produce_to(
                "keep",
                0,
                vec![record(&vec![1u8; (1 << 20) + 1])],
            ))
            .await,
            Code::RESOURCE_EXHAUSTED,
        );
        // Over the 4 MiB message limit: refused from the length prefix.
        let huge: Vec<pb::Record> = (0..5).map(|_| record(&vec![2u8; 1 << 20])).collect();
        expect_code(
            log.produce(produce_to("keep", 0, huge)).await,
            Code::RESOURCE_EXHAUSTED,
        );
        // Truncated or garbage protobuf, wrong field types.
        let invalid_utf8 = RawProduce {
            topic: vec![0xff, 0xfe, 0x80],
            ..Default::default()
        };
        expect_code(raw_produce(&log, &invalid_utf8).await, Code::INTERNAL);
        let wrong_type = RawProduce {
            topic: b"keep".to_vec(),
            partition_as_bytes: vec![1, 2, 3],
            records: vec![b"\x0a\x02hi".to_vec()],
        };
        expect_code(raw_produce(&log, &wrong_type).await, Code::INTERNAL);
        let garbage_record = RawProduce {
            topic: b"keep".to_vec(),
            records: vec![vec![0xff; 7]],
            ..Default::default()
        };
        expect_code(raw_produce(&log, &garbage_record).await, Code::INTERNAL);
        // Offsets far past the end, and sequence gaps.
        expect_code(log.fetch("keep", 0, u64::MAX).await, Code::OUT_OF_RANGE);
        expect_code(log.fetch("keep", 0, 6).await, Code::OUT_OF_RANGE);
        let gap = pb::ProduceRequest {
            producer_id: 77,
            sequence: Some(5),
            ..produce_to("keep", 0, vec![record(b"gap")])
        };
        let first = pb::ProduceRequest {
            sequence: Some(0),
            ..gap.clone()
        };
        let unknown = log.produce(gap.clone()).await;
        let sequence_error = |result: &Result<pb::ProduceResponse, Status>| {
            let status = result.as_ref().expect_err("refused");
            assert_eq!(status.code(), Code::FAILED_PRECONDITION, "{status:?}");
            status
                .metadata()
                .get(pb::SEQUENCE_ERROR_TRAILER)
                .map(str::to_owned)
        };
        assert_eq!(
            sequence_error(&unknown).as_deref(),
            Some(pb::SEQUENCE_GAP),
            "an unknown producer must start at sequence 0"
        );
        let first_ack = log.produce(first).await.expect("sequence 0");
        let skipped = log.produce(gap).await;
        assert_eq!(sequence_error(&skipped).as_deref(), Some(pb::SEQUENCE_GAP));
        // A deadline that expires before the server can do anything.
        let hurried = CallOptions {
            timeout: Some(Duration::from_micros(1)),
            ..CallOptions::default()
        };
        let result = log
            .channel
            .unary::<_, pb::ProduceResponse>(
                "/shardlog.v1.Log/Produce",
                &produce_to("keep", 1, vec![record(b"late")]),
                hurried,
            )
            .await;
        assert_eq!(result.expect_err("expired").code(), Code::DEADLINE_EXCEEDED);

        // A client cancelling a ProduceStream midway: the connection and
        // the server live on.
        let (mut sink, responses) = open_produce_stream(&log.channel)
            .await
            .expect("open stream");
        sink.send(&produce_to("keep", 1, vec![record(b"streamed")]))
            .await
            .expect("send");
        let mut responses = responses.response().await.expect("headers").into_inner();
        let streamed = responses.message().await.expect("response").expect("one");
        sink.cancel();
        drop(responses);

        // Only the one idempotent batch and the one streamed record were added.
        let after = snapshot(&log).await;
        let mut expected = before.clone();
        expected.push((0, first_ack.base_offset, b"gap".to_vec()));
        expected.push((1, streamed.base_offset, b"streamed".to_vec()));
        expected.sort();
        let mut after_sorted = after.clone();
        after_sorted.sort();
        assert_eq!(after_sorted, expected, "bad input changed stored data");
    });
    // Nothing was created outside the data dir.
    let entries: Vec<String> = std::fs::read_dir(&data_parent)
        .expect("temp parent")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        entries,
        vec!["data".to_owned()],
        "files outside the data dir: {entries:?}"
    );
    let topics: Vec<String> = std::fs::read_dir(server.data_dir().join("topics"))
        .expect("topics dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(topics, vec!["keep".to_owned()]);
}

#[test]
fn idle_connections_and_byte_at_a_time_headers_do_not_stop_service() {
    const IDLE_CONNECTIONS: usize = 2_000;
    let server = TestServer::start(2);
    let addr = server.addr;
    // Thousands of connections that never speak, and one that dribbles the
    // HTTP/2 preface and a HEADERS frame one byte at a time.
    let idle: Vec<std::net::TcpStream> = (0..IDLE_CONNECTIONS)
        .map(|_| std::net::TcpStream::connect(addr).expect("idle connect"))
        .collect();
    let dribbler = std::thread::spawn(move || {
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // empty SETTINGS
        bytes.extend_from_slice(&[0, 0, 8, 1, 4, 0, 0, 0, 1]); // HEADERS, END_HEADERS
        bytes.extend_from_slice(&[0x83, 0x86, 0x44, 0x04, b'/', b'x', b'/', b'y']);
        let started = Instant::now();
        for byte in bytes {
            if stream.write_all(&[byte]).is_err() || started.elapsed() > Duration::from_secs(5) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    block_on(move || async move {
        let log = Log::connect(addr).await;
        log.create_topic("busy", 2)
            .await
            .expect("create while idle connections are open");
        for i in 0..50u32 {
            log.produce(produce_to("busy", i % 2, vec![record(b"x")]))
                .await
                .expect("produce");
        }
        assert_eq!(log.fetch_all("busy", 0, 0).await.len(), 25);
    });
    dribbler.join().expect("dribbler");
    drop(idle);
}
