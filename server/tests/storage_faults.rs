//! Storage failures through the real binary: an fdatasync that returns EIO
//! (injected at the engine's storage boundary, where io_uring operations are
//! reachable) fails the covered produces with INTERNAL, stops that partition
//! taking writes, leaves other partitions working, and after a restart every
//! acknowledged record is there.

mod common;

use common::{Log, TestServer, block_on, produce_to, record};
use shardlog_wire::Code;

/// A server whose 12th fdatasync under topic `doomed` returns EIO (its config file in
/// `config_dir`).
fn start_with_doomed_eio(shards: usize, config_dir: &std::path::Path) -> TestServer {
    let faulty = config_dir.join("faulty.toml");
    std::fs::write(
        &faulty,
        "[testing]\nfdatasync_eio_path = \"topics/doomed/\"\nfdatasync_eio_nth = 12\n",
    )
    .expect("config");
    TestServer::start_with(shards, &["--config", faulty.to_str().expect("utf8")])
}

#[test]
fn fdatasync_eio_faults_one_partition_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = start_with_doomed_eio(2, dir.path());
    let addr = server.addr;
    let acknowledged = block_on(move || async move {
        let log = Log::connect(addr).await;
        log.create_topic("doomed", 1).await.expect("create doomed");
        log.create_topic("healthy", 2)
            .await
            .expect("create healthy");
        let mut acknowledged = Vec::new();
        let mut failure = None;
        for i in 0..200u32 {
            let value = format!("d{i}").into_bytes();
            match log
                .produce(produce_to("doomed", 0, vec![record(&value)]))
                .await
            {
                Ok(response) => acknowledged.push((response.base_offset, value)),
                Err(status) => {
                    failure = Some(status);
                    break;
                }
            }
        }
        let failure = failure.expect("the injected EIO surfaces");
        assert_eq!(failure.code(), Code::INTERNAL, "{failure:?}");
        assert!(failure.message().contains("doomed"), "{failure:?}");

        // The partition refuses further writes; it does not retry the sync.
        let again = log
            .produce(produce_to("doomed", 0, vec![record(b"after")]))
            .await;
        assert_eq!(again.expect_err("faulted partition").code(), Code::INTERNAL);
        let description = log.describe("doomed").await.expect("describe");
        assert!(
            !description.partitions[0].fault.is_empty(),
            "{description:?}"
        );

        // Other partitions carry on.
        for partition in 0..2 {
            let response = log
                .produce(produce_to("healthy", partition, vec![record(b"ok")]))
                .await;
            assert_eq!(response.expect("healthy produce").record_count, 1);
            assert_eq!(log.fetch_all("healthy", partition, 0).await.len(), 1);
        }
        acknowledged
    });
    assert!(
        !acknowledged.is_empty(),
        "some produces succeeded before the fault"
    );

    server.kill();
    server.set_extra_args(&[]);
    server.restart_after_kill();
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        let stored = log.fetch_all("doomed", 0, 0).await;
        for (offset, value) in &acknowledged {
            let found = stored
                .iter()
                .find(|r| r.offset == *offset)
                .expect("acknowledged offset");
            assert_eq!(&found.value[..], &value[..]);
        }
        // After recovery the partition takes writes again.
        log.produce(produce_to("doomed", 0, vec![record(b"recovered")]))
            .await
            .expect("produce after restart");
        assert_eq!(log.fetch_all("healthy", 0, 0).await.len(), 1);
    });
}

/// Produces single records to `topic`/0 until one fails; returns that failure.
async fn produce_until_failure(log: &Log, topic: &str) -> shardlog_wire::Status {
    for i in 0..200u32 {
        let value = format!("r{i}").into_bytes();
        if let Err(status) = log
            .produce(produce_to(topic, 0, vec![record(&value)]))
            .await
        {
            return status;
        }
    }
    panic!("the injected EIO never surfaced");
}

/// A partition faulted by a failed fdatasync keeps its durable records readable, but no
/// record will ever become durable there again: a Subscribe at its end (or a long-poll
/// Fetch) ends at once with INTERNAL naming the fault, rather than answering "nothing yet"
/// in a loop that never yields the core (which hung the whole shard).
#[test]
fn a_faulted_partition_ends_subscribe_and_long_poll_with_its_fault() {
    use common::expect_code;
    use shardlog_wire::client::CallOptions;
    use shardlog_wire::proto::shardlog::v1 as pb;
    use std::time::Duration;

    let dir = tempfile::tempdir().expect("temp dir");
    // One shard: a spinning Subscribe would stall every call.
    let server = start_with_doomed_eio(1, dir.path());
    let addr = server.addr;
    block_on(move || async move {
        let log = Log::connect(addr).await;
        log.create_topic("doomed", 1).await.expect("create doomed");
        log.create_topic("healthy", 1)
            .await
            .expect("create healthy");
        let failure = produce_until_failure(&log, "doomed").await;
        assert_eq!(failure.code(), Code::INTERNAL, "{failure:?}");
        let durable = log.describe("doomed").await.expect("describe").partitions[0].durable_offset;
        assert!(durable > 0, "some produces were acknowledged");

        // From the start: every durable record, then the fault.
        let options = CallOptions::default().with_timeout(Duration::from_secs(20));
        let request = pb::SubscribeRequest {
            topic: "doomed".into(),
            partition: 0,
            offset: 0,
            max_bytes: 0,
        };
        let mut stream = log
            .channel
            .server_streaming::<_, pb::FetchResponse>(
                "/shardlog.v1.Log/Subscribe",
                &request,
                options.clone(),
            )
            .await
            .expect("subscribe")
            .into_inner();
        let mut received = 0u64;
        let ended = loop {
            match stream.message().await {
                Ok(Some(response)) => received += response.records.len() as u64,
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => break status,
            }
        };
        assert_eq!(received, durable, "durable records stay readable");
        assert_eq!(ended.code(), Code::INTERNAL, "{ended:?}");
        assert!(
            ended.message().contains("faulted") && ended.message().contains("doomed/0"),
            "{ended:?}"
        );

        // A long poll at the durable end fails the same way instead of waiting it out.
        let long_poll = pb::FetchRequest {
            topic: "doomed".into(),
            partition: 0,
            offset: durable,
            max_wait_ms: 60_000,
            ..Default::default()
        };
        let fetched = log
            .channel
            .unary::<_, pb::FetchResponse>("/shardlog.v1.Log/Fetch", &long_poll, options)
            .await
            .map(|response| response.into_inner());
        let message = expect_code(fetched, Code::INTERNAL);
        assert!(message.contains("faulted"), "{message}");

        // The shard still serves everything else.
        log.produce(produce_to("healthy", 0, vec![record(b"ok")]))
            .await
            .expect("healthy produce");
        assert_eq!(log.fetch_all("healthy", 0, 0).await.len(), 1);
    });
}
