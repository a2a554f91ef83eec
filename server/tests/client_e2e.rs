//! End-to-end tests of the Rust client library (`shardlog_wire::client`)
//! against the real `shardlog` binary: admin, producer (batching, key
//! partitioning, error attribution), consumer (poll, subscribe, committed
//! offsets), and 10 concurrent producers read back exactly once.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use common::{Log, TestServer, block_on};
use shardlog_wire::Code;
use shardlog_wire::client::{
    Client, ClientConfig, ClientError, GlommioRuntime, ProducerConfig, StartAt, fnv1a_64,
};
use shardlog_wire::proto::shardlog::v1 as pb;

fn client(addr: std::net::SocketAddr) -> Client<GlommioRuntime> {
    Client::new(GlommioRuntime, addr, ClientConfig::default()).expect("client")
}

#[test]
fn client_admin_produce_and_consume_round_trip() {
    let server = TestServer::start(2);
    let addr = server.addr;
    block_on(move || async move {
        let config = ClientConfig {
            health_check_interval: Some(Duration::from_millis(50)),
            ..ClientConfig::default()
        };
        let client = Client::new(GlommioRuntime, addr, config).expect("client");
        let admin = client.admin();
        let created = admin.create_topic("orders", 4).await.expect("create");
        assert_eq!(created.partition_count, 4);
        assert!(
            admin
                .list_topics()
                .await
                .expect("list")
                .contains(&"orders".to_owned())
        );
        let config = ProducerConfig {
            batch_records_max: 10,
            linger: Duration::from_millis(5),
            ..ProducerConfig::default()
        };
        let producer = client.producer(config).expect("producer");
        let mut deliveries = Vec::new();
        for i in 0..200u32 {
            let key = Bytes::from(format!("key-{}", i % 7));
            let value = Bytes::from(format!("value-{i}"));
            let delivery = producer
                .send("orders", Some(key.clone()), value)
                .await
                .expect("send");
            deliveries.push((key, i, delivery));
        }
        producer.flush().await;
        let mut stored: BTreeMap<u32, BTreeMap<u64, String>> = BTreeMap::new();
        for (key, i, delivery) in deliveries {
            let ack = delivery.await.expect("acknowledged");
            assert_eq!(
                u64::from(ack.partition),
                fnv1a_64(&key) % 4,
                "key hash like the server"
            );
            let previous = stored
                .entry(ack.partition)
                .or_default()
                .insert(ack.offset, format!("value-{i}"));
            assert!(previous.is_none(), "offsets are unique");
        }
        // The server picks the same partition for a keyed record without one.
        let log = Log::connect(addr).await;
        let request = pb::ProduceRequest {
            topic: "orders".into(),
            records: vec![pb::Record {
                key: Some(Bytes::from_static(b"key-3")),
                value: Bytes::from_static(b"probe"),
                ..Default::default()
            }],
            ..Default::default()
        };
        let reply = log.produce(request).await.expect("produce");
        assert_eq!(u64::from(reply.partition), fnv1a_64(b"key-3") % 4);

        for (partition, expected) in &stored {
            let mut consumer = client
                .consumer(
                    "orders",
                    *partition,
                    StartAt::Committed {
                        group: "g".into(),
                        otherwise: 0,
                    },
                )
                .await
                .expect("consumer");
            let mut seen = BTreeMap::new();
            while seen.len() < expected.len() {
                for record in consumer
                    .poll(Duration::from_millis(500))
                    .await
                    .expect("poll")
                {
                    seen.insert(
                        record.offset,
                        String::from_utf8(record.value.to_vec()).expect("utf8"),
                    );
                }
            }
            let seen: BTreeMap<u64, String> = seen
                .into_iter()
                .filter(|(o, _)| expected.contains_key(o))
                .collect();
            assert_eq!(
                &seen, expected,
                "partition {partition} reads back what was acknowledged"
            );
            consumer.commit().await.expect("commit");
            let resumed = client
                .consumer(
                    "orders",
                    *partition,
                    StartAt::Committed {
                        group: "g".into(),
                        otherwise: 0,
                    },
                )
                .await
                .expect("consumer");
            assert_eq!(
                resumed.position(),
                consumer.position(),
                "resumes at the committed offset"
            );
        }
        // Subscribe streams the same records from an offset.
        let (partition, expected) = stored.iter().next().expect("a partition");
        let mut consumer = client
            .consumer("orders", *partition, StartAt::Offset(0))
            .await
            .expect("consumer");
        let mut subscription = consumer.subscribe();
        let mut streamed = Vec::new();
        while streamed.len() < expected.len() {
            streamed.extend(
                subscription
                    .next()
                    .await
                    .expect("subscribe")
                    .into_iter()
                    .map(|r| r.offset),
            );
        }
        assert_eq!(
            streamed[..expected.len()],
            expected.keys().copied().collect::<Vec<_>>()[..]
        );
        producer.close().await;
        // Background health probes (every 50 ms) keep the SERVING connection.
        glommio::timer::sleep(Duration::from_millis(300)).await;
        assert_eq!(client.pool().live_connections(), 1);
        admin.delete_topic("orders").await.expect("delete");
        assert!(
            !admin
                .list_topics()
                .await
                .expect("list")
                .contains(&"orders".to_owned())
        );
    });
}

#[test]
fn client_surfaces_caller_errors_on_the_batch_that_caused_them() {
    let server = TestServer::start(1);
    let addr = server.addr;
    block_on(move || async move {
        let client = client(addr);
        let unknown = client
            .producer(ProducerConfig::default())
            .expect("producer");
        let error = unknown
            .send("missing", None, Bytes::from_static(b"x"))
            .await
            .expect_err("no topic");
        assert_eq!(
            error.status().map(|s| s.code()),
            Some(Code::NOT_FOUND),
            "{error}"
        );
        let error = client
            .admin()
            .describe_topic("missing")
            .await
            .expect_err("no topic");
        assert_eq!(error.status().map(|s| s.code()), Some(Code::NOT_FOUND));

        client.admin().create_topic("t", 1).await.expect("create");
        // One batch per record: the oversize one is rejected by the server
        // (record limit 1 MiB) while the records around it are stored.
        let config = ProducerConfig {
            batch_records_max: 1,
            batch_bytes_max: 3 << 20,
            ..ProducerConfig::default()
        };
        let producer = client.producer(config).expect("producer");
        let mut deliveries = Vec::new();
        for i in 0..9u8 {
            let value = if i == 4 {
                Bytes::from(vec![i; 3 << 19])
            } else {
                Bytes::from(vec![i; 8])
            };
            deliveries.push(producer.send_to("t", 0, None, value).await.expect("send"));
        }
        producer.flush().await;
        let mut offsets = Vec::new();
        for (i, delivery) in deliveries.into_iter().enumerate() {
            match delivery.await {
                Ok(ack) => offsets.push(ack.offset),
                Err(error) => {
                    assert_eq!(i, 4, "only the oversize record fails: {error}");
                    assert_eq!(
                        error.status().map(|s| s.code()),
                        Some(Code::RESOURCE_EXHAUSTED),
                        "{error}"
                    );
                }
            }
        }
        assert_eq!(
            offsets,
            (0..8).collect::<Vec<u64>>(),
            "the others are stored once, in order"
        );
        let error = producer
            .send_to("t", 5, None, Bytes::new())
            .await
            .expect_err("bad partition");
        assert!(matches!(error, ClientError::Topic { .. }), "{error}");
        producer.close().await;
        let error = producer
            .send_to("t", 0, None, Bytes::new())
            .await
            .expect_err("closed");
        assert!(matches!(error, ClientError::Closed(_)), "{error}");
    });
}

/// 10 producers x 100,000 records, concurrently on one executor, each
/// with its own connection: everything reads back exactly once.
#[test]
fn client_ten_concurrent_producers_read_back_exactly_once() {
    const PRODUCERS: u32 = 10;
    const RECORDS_PER_PRODUCER: u32 = 100_000;
    const PARTITIONS: u32 = 4;
    let server = TestServer::start(2);
    let addr = server.addr;
    block_on(move || async move {
        let admin_client = client(addr);
        admin_client
            .admin()
            .create_topic("many", PARTITIONS)
            .await
            .expect("create");
        let mut tasks = Vec::new();
        for producer_index in 0..PRODUCERS {
            tasks.push(glommio::spawn_local(async move {
                let client = client(addr);
                let config = ProducerConfig {
                    batch_records_max: 5_000,
                    linger: Duration::from_millis(20),
                    ..ProducerConfig::default()
                };
                let producer = client.producer(config).expect("producer");
                let mut deliveries = Vec::with_capacity(RECORDS_PER_PRODUCER as usize);
                for i in 0..RECORDS_PER_PRODUCER {
                    let value = Bytes::from(
                        (producer_index * RECORDS_PER_PRODUCER + i)
                            .to_le_bytes()
                            .to_vec(),
                    );
                    deliveries.push(producer.send("many", None, value).await.expect("send"));
                }
                producer.close().await;
                for delivery in deliveries {
                    delivery.await.expect("acknowledged");
                }
            }));
        }
        for task in tasks {
            task.await;
        }
        let log = Log::connect(addr).await;
        let mut seen = HashSet::new();
        let mut total = 0usize;
        for partition in 0..PARTITIONS {
            for record in log.fetch_all("many", partition, 0).await {
                total += 1;
                let value: [u8; 4] = record.value[..].try_into().expect("4-byte value");
                assert!(
                    seen.insert(u32::from_le_bytes(value)),
                    "no record is stored twice"
                );
            }
        }
        assert_eq!(total, (PRODUCERS * RECORDS_PER_PRODUCER) as usize);
        assert_eq!(seen.len(), total);
    });
}

#[test]
fn keyless_records_fill_one_partitions_batch_before_moving_on() {
    let server = TestServer::start(2);
    let addr = server.addr;
    block_on(move || async move {
        let client = client(addr);
        client
            .admin()
            .create_topic("sticky", 4)
            .await
            .expect("create");
        let config = ProducerConfig {
            batch_records_max: 10,
            linger: Duration::from_secs(60),
            ..ProducerConfig::default()
        };
        let producer = client.producer(config).expect("producer");
        let mut deliveries = Vec::new();
        for i in 0..40u32 {
            let value = Bytes::from(format!("value-{i}"));
            deliveries.push(producer.send("sticky", None, value).await.expect("send"));
        }
        producer.close().await;
        let mut partitions = Vec::new();
        for delivery in deliveries {
            partitions.push(delivery.await.expect("acknowledged").partition);
        }
        let runs: Vec<(u32, usize)> = partitions
            .chunk_by(|a, b| a == b)
            .map(|run| (run[0], run.len()))
            .collect();
        assert_eq!(runs.len(), 4, "one full batch per partition: {runs:?}");
        assert!(runs.iter().all(|(_, records)| *records == 10), "{runs:?}");
        let used: HashSet<u32> = runs.iter().map(|(partition, _)| *partition).collect();
        assert_eq!(used.len(), 4, "every partition took a batch: {runs:?}");
    });
}
