//! The client library end to end: create a topic, produce keyed records
//! with the batching idempotent producer, read them back with a consumer
//! that commits its position for a group.
//!
//! ```text
//! shardlog --listen 127.0.0.1:50051 &
//! cargo run -p shardlog-wire --example producer -- 127.0.0.1:50051
//! ```

use std::time::Duration;

use bytes::Bytes;
use shardlog_wire::client::{
    Client, ClientConfig, ClientError, GlommioRuntime, ProducerConfig, StartAt,
};

const TOPIC: &str = "example-orders";
const RECORDS: u32 = 1_000;

async fn run(addr: std::net::SocketAddr) -> Result<(), ClientError> {
    let client = Client::new(GlommioRuntime, addr, ClientConfig::default())?;
    let admin = client.admin();
    if !admin
        .list_topics()
        .await?
        .iter()
        .any(|topic| topic == TOPIC)
    {
        admin.create_topic(TOPIC, 4).await?;
    }

    // Batches of up to 100 records or 10 ms per partition, durable acks.
    let producer = client.producer(ProducerConfig {
        linger: Duration::from_millis(10),
        ..ProducerConfig::default()
    })?;
    let mut deliveries = Vec::new();
    for i in 0..RECORDS {
        let key = Bytes::from(format!("customer-{}", i % 10));
        let value = Bytes::from(format!("order {i}"));
        // Awaiting `send` waits only for buffer space; the returned future
        // resolves once the record is durable.
        deliveries.push(producer.send(TOPIC, Some(key), value).await?);
    }
    producer.flush().await;
    let mut last = None;
    for delivery in deliveries {
        last = Some(delivery.await?);
    }
    println!("produced {RECORDS} records, last at {last:?}");
    producer.close().await;

    // Resume partition 0 where the group left off; commit what was read.
    let start = StartAt::Committed {
        group: "example".into(),
        otherwise: 0,
    };
    let mut consumer = client.consumer(TOPIC, 0, start).await?;
    let records = consumer.poll(Duration::from_millis(100)).await?;
    println!(
        "read {} records of partition 0, next offset {}",
        records.len(),
        consumer.position()
    );
    consumer.commit().await?;
    Ok(())
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50051".to_owned())
        .parse()
        .expect("usage: producer HOST:PORT");
    let result = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || run(addr))
        .expect("executor")
        .join()
        .expect("executor thread");
    if let Err(error) = result {
        eprintln!("example failed: {error}");
        std::process::exit(1);
    }
}
