//! The client library on tokio: the same producer as `producer.rs`, on a
//! current-thread runtime with a `LocalSet` (the client is `!Send`).
//!
//! ```text
//! shardlog --listen 127.0.0.1:50051 &
//! cargo run -p shardlog-wire --features tokio --example producer_tokio -- 127.0.0.1:50051
//! ```

use bytes::Bytes;
use shardlog_wire::client::{Client, ClientConfig, ClientError, ProducerConfig, TokioRuntime};

const TOPIC: &str = "example-tokio";

async fn run(addr: std::net::SocketAddr) -> Result<(), ClientError> {
    let client = Client::new(TokioRuntime, addr, ClientConfig::default())?;
    if !client
        .admin()
        .list_topics()
        .await?
        .iter()
        .any(|t| t == TOPIC)
    {
        client.admin().create_topic(TOPIC, 2).await?;
    }
    let producer = client.producer(ProducerConfig::default())?;
    let delivery = producer
        .send(
            TOPIC,
            Some(Bytes::from_static(b"k")),
            Bytes::from_static(b"hello from tokio"),
        )
        .await?;
    let ack = delivery.await?;
    println!(
        "stored at partition {} offset {}",
        ack.partition, ack.offset
    );
    producer.close().await;
    Ok(())
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50051".to_owned())
        .parse()
        .expect("usage: producer_tokio HOST:PORT");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = tokio::task::LocalSet::new().block_on(&runtime, run(addr));
    if let Err(error) = result {
        eprintln!("example failed: {error}");
        std::process::exit(1);
    }
}
