//! Storage failures through the real binary: an fdatasync that returns EIO
//! (injected at the engine's storage boundary, where io_uring operations are
//! reachable) fails the covered produces with INTERNAL, stops that partition
//! taking writes, leaves other partitions working, and after a restart every
//! acknowledged record is there.

mod common;

use common::{Log, TestServer, block_on, produce_to, record};
use shardlog_wire::Code;

#[test]
fn fdatasync_eio_faults_one_partition_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let faulty = dir.path().join("faulty.toml");
    std::fs::write(
        &faulty,
        "[testing]\nfdatasync_eio_path = \"topics/doomed/\"\nfdatasync_eio_nth = 12\n",
    )
    .expect("config");
    let faulty = faulty.to_str().expect("utf8").to_owned();
    let mut server = TestServer::start_with(2, &["--config", &faulty]);
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
